"""tfrecords_tools.atomic_files: complete under the final name, or not at all."""

import os
import subprocess
import sys

import pytest

from tfrecords_tools import atomic_files

FILE_SYSTEMS = [pytest.param(atomic_files.TF, id='tf'),
                pytest.param(atomic_files.BEAM, id='beam')]


@pytest.mark.parametrize('fs', FILE_SYSTEMS)
@pytest.mark.parametrize('data', [b'\x00\xffbytes', 'text \u00e9\n'])
def test_write_replaces_and_leaves_no_temporary(tmp_path, fs, data):
  path = str(tmp_path / 'out.bin')
  with open(path, 'wb') as f:
    f.write(b'old')
  atomic_files.write(path, data, fs)
  with open(path, 'rb') as f:
    assert f.read() == (data if isinstance(data, bytes)
                        else data.encode('utf-8'))
  assert os.listdir(tmp_path) == ['out.bin']


@pytest.mark.parametrize('fs', FILE_SYSTEMS)
def test_an_error_keeps_the_old_file_and_removes_the_temporary(tmp_path, fs):
  path = str(tmp_path / 'out.bin')
  with open(path, 'wb') as f:
    f.write(b'old')
  with pytest.raises(RuntimeError, match='half way'):
    with atomic_files.replacing(path, fs) as tmp:
      with open(tmp, 'wb') as f:
        f.write(b'half')
      raise RuntimeError('half way')
  with open(path, 'rb') as f:
    assert f.read() == b'old'
  assert os.listdir(tmp_path) == ['out.bin']


def test_temporary_names(tmp_path):
  path = str(tmp_path / 'clips-00000-of-00002.tfrecord')
  # One writer per file: fixed, so a rerun overwrites a killed run's file.
  assert atomic_files.temporary_name(path) == path + '.tmp-partial'
  # Beam attempts of one bundle may overlap: hidden, one per attempt.
  first, second = (atomic_files.temporary_name(path, atomic_files.BEAM)
                   for _ in range(2))
  assert first != second
  for name in (first, second):
    assert os.path.dirname(name) == str(tmp_path)
    assert os.path.basename(name).startswith(
        '.clips-00000-of-00002.tfrecord.tmp-')
  assert atomic_files.temporary_name(
      path, atomic_files.BEAM, unique=False) == path + '.tmp-partial'
  assert atomic_files.temporary_name(
      'gs://b/d/x.json', atomic_files.BEAM).startswith('gs://b/d/.x.json.tmp-')


def test_beam_writes_do_not_import_tensorflow(tmp_path):
  path = str(tmp_path / 'summary.json')
  code = ('import sys\n'
          'from tfrecords_tools import atomic_files\n'
          f'atomic_files.write({path!r}, "{{}}", atomic_files.BEAM)\n'
          'assert "tensorflow" not in sys.modules, "TF imported"\n')
  subprocess.run([sys.executable, '-c', code], check=True)
  with open(path) as f:
    assert f.read() == '{}'


@pytest.mark.parametrize('fs', FILE_SYSTEMS)
def test_record_run_config_makes_the_directory_and_logs_the_path(
    tmp_path, fs, caplog):
  caplog.set_level('INFO')
  directory = tmp_path / 'new' / 'out'
  path = atomic_files.record_run_config(str(directory), 'config_x.flags',
                                        '--a=1\n', fs)
  assert path == str(directory / 'config_x.flags')
  assert os.listdir(directory) == ['config_x.flags']
  assert (directory / 'config_x.flags').read_text() == '--a=1\n'
  assert f'run config recorded in {path}' in caplog.text
  # A rerun replaces it (the directory exists now).
  atomic_files.record_run_config(str(directory), 'config_x.flags', '--a=2\n',
                                 fs)
  assert (directory / 'config_x.flags').read_text() == '--a=2\n'


@pytest.mark.parametrize('fs', FILE_SYSTEMS)
def test_remove_temporaries_removes_only_temporaries(tmp_path, fs):
  """What `temporary_name` makes, of either file system, and nothing else;
  `keep` spares the fixed temporaries of files other workers write."""
  final = str(tmp_path / 'clips-00000-of-00002.tfrecord')
  leftovers = [atomic_files.temporary_name(final),
               atomic_files.temporary_name(final, atomic_files.BEAM),
               str(tmp_path / '.summary.json.tmp-0123abcd')]
  kept = str(tmp_path / 'clips-00001-of-00002.tfrecord.tmp-partial')
  others = [final, str(tmp_path / 'notes.tmp'), str(tmp_path / '.hidden'),
            str(tmp_path / 'x.tmp-partial.bak')]
  for path in leftovers + others + [kept]:
    with open(path, 'wb') as f:
      f.write(b'x')
  removed = atomic_files.remove_temporaries(
      str(tmp_path), fs, keep=['clips-00001-of-00002.tfrecord'])
  assert removed == sorted(leftovers)
  assert sorted(os.listdir(tmp_path)) == sorted(
      os.path.basename(p) for p in others + [kept])
  assert all(atomic_files.is_temporary(os.path.basename(p))
             for p in leftovers + [kept])


@pytest.mark.parametrize('fs', FILE_SYSTEMS)
def test_write_into_names_a_directory_it_cannot_make(tmp_path, fs):
  path = atomic_files.write_into(str(tmp_path / 'new'), 'a.json', '{}', fs)
  assert path == str(tmp_path / 'new' / 'a.json')
  (tmp_path / 'file').write_text('')
  with pytest.raises(atomic_files.OutputDirectoryError) as e:
    atomic_files.write_into(str(tmp_path / 'file' / 'out'), 'a.json', '{}', fs)
  assert str(e.value).startswith(
      f"output directory '{tmp_path / 'file' / 'out'}' cannot be created: ")
  assert '\n' not in str(e.value)
