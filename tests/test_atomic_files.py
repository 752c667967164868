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
