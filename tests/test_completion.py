"""tfrecords_tools.completion: a job's outputs are complete, or not read.

The jobs' own tests (test_write_clips, test_relabel) run the protocol end to
end; here are its pieces against hand-made directories, prediction's use of
it, and what the readers' check costs.
"""

import errno
import functools
import json
import os
import re
import time

import pytest
import tensorflow as tf

from spl import input_pipeline
from spl import prediction
from spl.models import factory
from tfrecords_tools import atomic_files
from tfrecords_tools import completion
from tfrecords_tools import file_patterns
from tfrecords_tools import relabel
from tfrecords_tools import schema
from tfrecords_tools import testing

MATCHES = [pytest.param(file_patterns.match, id='tf'),
           pytest.param(file_patterns.match_beam, id='beam')]
FILE_SYSTEMS = [pytest.param(atomic_files.TF, id='tf'),
                pytest.param(atomic_files.BEAM, id='beam')]


def _touch(directory, *names):
  os.makedirs(directory, exist_ok=True)
  for name in names:
    with open(os.path.join(directory, name), 'wb') as f:
      f.write(name.encode())


def _shards(total, indices=None, prefix='clips'):
  return [schema.shard_name(i, total, prefix=prefix)
          for i in (range(total) if indices is None else indices)]


def _record(directory, name=schema.SUMMARY_FILENAME, **content):
  with open(os.path.join(directory, name), 'w') as f:
    json.dump(content, f)


# ---- Readers: directories without a completion record ----


@pytest.mark.parametrize('match', MATCHES)
def test_hand_made_directories_keep_working(tmp_path, match):
  """Names of no shard set, a whole shard set, and a pattern that asks for
  part of a set are read as before."""
  _touch(tmp_path / 'mine', 'a.tfrecord', 'pred-0.tfrecord', 'x-1-of-2.rec')
  assert len(match(str(tmp_path / 'mine' / '*'))) == 3
  _touch(tmp_path / 'set', *_shards(4))
  assert len(match(str(tmp_path / 'set' / 'clips-*.tfrecord'))) == 4
  one = str(tmp_path / 'set' / schema.shard_name(2, 4))
  assert match(one) == [one]
  assert len(match(str(tmp_path / 'set' / 'clips-0000[01]-of-*'))) == 2
  # A record without a file list (written by a tool that has none).
  _record(str(tmp_path / 'set'), clips=3)
  assert len(match(str(tmp_path / 'set' / '*.tfrecord'))) == 4


@pytest.mark.parametrize('match', MATCHES)
def test_a_partial_or_mixed_shard_set_is_refused(tmp_path, match):
  d = tmp_path / 'partial'
  _touch(d, *_shards(4, [0, 1, 3]))
  with pytest.raises(file_patterns.IncompleteOutputError) as e:
    match(str(d / 'clips-*.tfrecord'), '`TRAIN_FILES`')
  assert str(e.value) == (
      f'`TRAIN_FILES`: {d} has 3 of the 4 shards clips-?????-of-00004.tfrecord '
      f'(missing: clips-00002-of-00004.tfrecord) and no completion record: an '
      f'unfinished run? Rerun the job that writes it')
  # Asking for shards that are there is fine.
  assert len(match(f'{d}/clips-00000-*,{d}/clips-00003-*')) == 2
  d = tmp_path / 'mixed'
  _touch(d, *_shards(2), *_shards(3))
  with pytest.raises(file_patterns.IncompleteOutputError,
                     match=re.escape(
                         f'{d} mixes shard sets of different sizes '
                         f'(clips-*-of-00002.tfrecord, '
                         f'clips-*-of-00003.tfrecord)')):
    match(str(d / schema.shard_pattern()))
  # Each part of a comma-separated pattern, each directory.
  with pytest.raises(file_patterns.IncompleteOutputError, match='mixes'):
    match(f'{tmp_path}/partial/clips-00000-*,{d}/clips-*')


# ---- Readers: directories with a completion record or a marker ----


@pytest.mark.parametrize('match', MATCHES)
def test_files_must_match_the_completion_record(tmp_path, match):
  d = str(tmp_path)
  _touch(d, *_shards(3), 'label_map.json')
  _record(d, files=_shards(3), job='write_clips')
  pattern = os.path.join(d, schema.shard_pattern())
  assert len(match(pattern)) == 3
  _touch(d, schema.shard_name(0, 2))  # A stale shard of another run.
  with pytest.raises(file_patterns.IncompleteOutputError,
                     match=re.escape(
                         f'{d} holds 1 files that its completion record '
                         f'summary.json does not list '
                         f'(clips-00000-of-00002.tfrecord)')):
    match(pattern)
  # Only when read: a pattern that does not match it is fine.
  assert len(match(os.path.join(d, 'clips-*-of-00003.tfrecord'))) == 3
  os.remove(os.path.join(d, schema.shard_name(0, 2)))
  os.remove(os.path.join(d, schema.shard_name(1, 3)))
  with pytest.raises(file_patterns.IncompleteOutputError,
                     match=re.escape(
                         f'{d} lacks 1 of the 3 files its completion record '
                         f'summary.json lists (clips-00001-of-00003.tfrecord)'
                     )):
    match(pattern)
  # A pattern that does not ask for the missing one reads.
  assert len(match(os.path.join(d, 'clips-00002-*'))) == 1
  # Reading a side file as data is refused too.
  with pytest.raises(file_patterns.IncompleteOutputError, match='label_map'):
    match(os.path.join(d, '*.json'))


@pytest.mark.parametrize('match', MATCHES)
def test_a_marker_or_a_failed_status_is_refused(tmp_path, match):
  d = str(tmp_path)
  _touch(d, *_shards(2))
  _record(d, 'relabel_stats.json', status='failed', errors={'count': 1})
  with pytest.raises(file_patterns.IncompleteOutputError, match=re.escape(
      f"{d}/relabel_stats.json says its run ended with status 'failed'")):
    match(os.path.join(d, '*.tfrecord'))
  _record(d, 'relabel_stats.json', status='ok', files=_shards(2))
  assert len(match(os.path.join(d, '*.tfrecord'))) == 2
  _record(d, completion.MARKER_FILENAME, job='relabel', host='h',
          started='2025-05-01T10:00:00+00:00')
  with pytest.raises(file_patterns.IncompleteOutputError) as e:
    match(os.path.join(d, '*.tfrecord'), '`--records` pattern')
  assert str(e.value) == (
      f'`--records` pattern: {d} holds an unfinished run of relabel (started '
      f'2025-05-01T10:00:00+00:00 on h; _IN_PROGRESS.json stays until the run '
      f'completes): rerun the same command to finish it, or delete the '
      f'directory')
  with open(os.path.join(d, completion.MARKER_FILENAME), 'w') as f:
    f.write('{not json')
  with pytest.raises(file_patterns.IncompleteOutputError,
                     match='is not valid JSON'):
    match(os.path.join(d, '*.tfrecord'))


def test_glob_regex_selects_what_tensorflow_globs(tmp_path):
  """What decides which listed files a pattern asks for."""
  d = str(tmp_path)
  names = ('clips-00000-of-00002.tfrecord', 'clips-00001-of-00002.tfrecord',
           'x?y', 'xzy', 'a.b', '[x]', 'sub/clips-00001-of-00002.tfrecord')
  os.makedirs(os.path.join(d, 'sub'))
  _touch(d, *names)
  files = [os.path.join(d, n) for n in names]
  for pattern in ('*', 'clips-*', 'clips-0000[!0]-*', 'clips-0000[0-1]-*',
                  'x?y', 'a?b', '*/clips-*', '[[]x]', 'clips-*[*'):
    regex = completion._glob_regex(  # pylint: disable=protected-access
        os.path.join(d, pattern))
    assert [f for f in files if regex.fullmatch(f)] == [
        f for f in files if f in tf.io.gfile.glob(os.path.join(d, pattern))
    ], pattern


# ---- Writers: begin and finish ----


@pytest.mark.parametrize('fs', FILE_SYSTEMS)
def test_begin_cleans_up_and_marks_the_directory(tmp_path, fs):
  d = str(tmp_path / 'out')
  old = _shards(3) + _shards(2, prefix='predictions')
  leftovers = [f'{schema.shard_name(0, 2)}.tmp-partial',
               f'.{schema.shard_name(1, 2)}.tmp-{"0" * 32}',
               f'.summary.json.tmp-{"1" * 32}']
  _touch(d, *old, *leftovers, 'notes.txt', 'clips-00000-of-00002.tfrecord.bak')
  _record(d, files=_shards(3), job='write_clips')
  completion.begin(d, 'write_clips', outputs=_shards(2), fs=fs)
  # The other run's shards of this job's sets, temporaries and the old
  # record are gone; other files (another prefix, user files) stay.
  assert sorted(os.listdir(d)) == sorted(
      [completion.MARKER_FILENAME, 'notes.txt',
       'clips-00000-of-00002.tfrecord.bak'] + _shards(2, prefix='predictions'))
  with open(os.path.join(d, completion.MARKER_FILENAME)) as f:
    marker = json.load(f)
  assert marker['job'] == 'write_clips' and marker['pid'] == os.getpid()
  _touch(d, *_shards(2))
  record = completion.finish(d, schema.SUMMARY_FILENAME, {'clips': 4},
                             reversed(_shards(2)), fs, job='write_clips')
  assert record == {'clips': 4, 'files': _shards(2), 'job': 'write_clips'}
  with open(os.path.join(d, schema.SUMMARY_FILENAME)) as f:
    assert json.load(f) == record
  assert completion.MARKER_FILENAME not in os.listdir(d)
  assert len(file_patterns.match(os.path.join(d, 'clips-*.tfrecord'))) == 2


def test_begin_of_a_worker_keeps_what_other_workers_write(tmp_path):
  d = str(tmp_path)
  mine = f'{schema.shard_name(1, 2, prefix="features")}.tmp-partial'
  killed = f'{schema.shard_name(0, 3, prefix="features")}.tmp-partial'
  _touch(d, mine, killed)
  names = [schema.shard_name(i, 2, prefix='features') for i in range(2)]
  completion.begin(d, 'extract_features', outputs=names,
                   concurrent_writers=True)
  assert sorted(os.listdir(d)) == [completion.MARKER_FILENAME, mine]
  assert not completion.outputs_complete(d, names)
  _touch(d, *names)
  assert completion.outputs_complete(d, names)


def test_begin_refuses_another_jobs_directory_and_unwritable_ones(tmp_path):
  d = str(tmp_path / 'out')
  _touch(d, *_shards(1))
  _record(d, files=_shards(1), job='predict')
  with pytest.raises(atomic_files.OutputDirectoryError, match=re.escape(
      f"output directory '{d}' holds the outputs (or a run) of predict "
      f"(summary.json), not write_clips: write to another directory")):
    completion.begin(d, 'write_clips', outputs=_shards(1))
  _record(d, completion.MARKER_FILENAME, job='relabel')
  with pytest.raises(atomic_files.OutputDirectoryError,
                     match=r'of relabel \(_IN_PROGRESS.json\)'):
    completion.begin(d, 'predict', outputs=_shards(1))
  assert len(os.listdir(d)) == 3  # Nothing deleted.
  # Records written before they named their job: the writer's and relabel's.
  os.remove(os.path.join(d, completion.MARKER_FILENAME))
  _record(d, clips=1)
  with pytest.raises(atomic_files.OutputDirectoryError,
                     match=r'of write_clips \(summary.json\), not predict'):
    completion.begin(d, 'predict', outputs=_shards(1))
  completion.begin(d, 'write_clips', outputs=_shards(1))
  blocker = tmp_path / 'file'
  blocker.write_text('')
  for fs in (atomic_files.TF, atomic_files.BEAM):
    with pytest.raises(atomic_files.OutputDirectoryError, match=re.escape(
        f"output directory '{blocker / 'out'}' cannot be created: ")):
      completion.begin(str(blocker / 'out'), 'predict', outputs=[], fs=fs)


def test_naming_puts_the_path_on_errors_that_name_none(tmp_path):
  path = str(tmp_path / 'clips-00000-of-00001.tfrecord')
  with pytest.raises(OSError) as e:
    with atomic_files.naming(path):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  assert str(e.value) == f"[Errno 28] No space left on device: '{path}'"
  assert e.value.errno == errno.ENOSPC
  with pytest.raises(FileNotFoundError, match='other'):
    with atomic_files.naming(path):
      raise FileNotFoundError(errno.ENOENT, 'gone', 'other')
  with pytest.raises(OSError, match='^plain$'):
    with atomic_files.naming(path):
      raise OSError('plain')


# ---- Prediction (spl.predict) ----


def test_predict_writes_the_record_and_a_rerun_replaces_another_shard_count(
    tmp_path):
  data = str(tmp_path / 'web')
  testing.write_fake_clip_records(data, num_clips=5, num_shards=2,
                                  num_classes=3)
  model = factory.build_classifier('tiny3d', num_classes=3,
                                   input_shape=(4, 32, 32, 3))
  model(tf.zeros((1, 4, 32, 32, 3)))
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  dataset_fn = functools.partial(
      input_pipeline.make_dataset, num_frames=4, stride=1, crop_size=32,
      num_test_clips=1, deterministic=True)
  out = str(tmp_path / 'pred')
  names = [schema.shard_name(i, 2, prefix='predictions') for i in range(2)]
  # What a predict run of 3 shards, killed, left.
  _touch(out, *[schema.shard_name(i, 3, prefix='predictions')
                for i in range(2)], names[1] + '.tmp-partial')
  _record(out, completion.MARKER_FILENAME, job='predict')
  run = functools.partial(prediction.predict, model, strategy, dataset_fn,
                          os.path.join(data, 'clips-*'), out, num_classes=3,
                          global_batch_size=2, top_k=2)
  assert [os.path.basename(p) for p in run()] == names
  assert sorted(os.listdir(out)) == names + [schema.SUMMARY_FILENAME]
  with open(os.path.join(out, schema.SUMMARY_FILENAME)) as f:
    record = json.load(f)
  assert record == {'files': names, 'inputs': sorted(
      tf.io.gfile.glob(os.path.join(data, 'clips-*'))), 'job': 'predict',
                    'num_classes': 3, 'top_k': 2}
  assert len(testing.read_records(os.path.join(out, '*.tfrecord'))) == 5
  # A rerun skips every shard and completes the directory again.
  assert run() == []
  assert sorted(os.listdir(out)) == names + [schema.SUMMARY_FILENAME]


# ---- Cost ----


def _timed(monkeypatch, module, names):
  """Wraps `module`'s functions `names`; returns their summed seconds."""
  spent = {}
  for name in names:
    real = getattr(module, name)

    def wrapper(*args, _real=real, _name=name, **kwargs):
      start = time.perf_counter()
      try:
        return _real(*args, **kwargs)
      finally:
        spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - start

    monkeypatch.setattr(module, name, wrapper)
  return spent


@pytest.mark.slow
def test_the_check_costs_little(tmp_path, monkeypatch):
  """What the completion protocol costs (prints the figures; `pytest -s`):

  * `file_patterns.match` with the check vs the bare glob, on a directory of
    4096 shards with its record;
  * the share of a (tiny, so a worst case) relabel job spent in `begin`,
    `finish` and the readers' checks: under 2%.
  """
  n = 4096
  d = str(tmp_path / 'records')
  _touch(d, *_shards(n))
  _record(d, files=_shards(n), job='write_clips', clips=n * 100)
  pattern = os.path.join(d, schema.shard_pattern())
  results = {}
  for name, fn in (
      ('glob only', lambda: file_patterns.expand(
          pattern, 'p', tf.io.gfile.glob)),
      ('match', lambda: file_patterns.match(pattern)),
      ('glob only (beam)', lambda: file_patterns.expand(
          pattern, 'p', file_patterns._beam_glob)),  # pylint: disable=protected-access
      ('match_beam', lambda: file_patterns.match_beam(pattern)),
      ('one shard', lambda: file_patterns.match(
          os.path.join(d, schema.shard_name(7, n))))):
    fn()
    best = float('inf')
    for _ in range(5):
      start = time.perf_counter()
      fn()
      best = min(best, time.perf_counter() - start)
    results[name] = best
  for name, seconds in results.items():
    print(f'{name:>18}: {seconds * 1e3:8.2f} ms for {n} shards')
  # Generous bounds (a loaded CI machine): the check is milliseconds, a
  # batch job over 4096 shards hours.
  assert results['match'] - results['glob only'] < 0.5
  assert results['match_beam'] - results['glob only (beam)'] < 0.5

  from tests import test_relabel  # pylint: disable=g-import-not-at-top
  rec, pred, _ = test_relabel.make_inputs(str(tmp_path / 'job'), num_clips=48,
                                          num_shards=8)
  kw = dict(records_pattern=rec, predictions_pattern=pred, variant='spl')
  relabel.relabel(output_dir=str(tmp_path / 'warm_up'), **kw)
  spent = _timed(monkeypatch, completion, ('check_matched', 'begin', 'finish'))
  start = time.perf_counter()
  relabel.relabel(output_dir=str(tmp_path / 'out'), **kw)
  total = time.perf_counter() - start
  share = sum(spent.values()) / total
  print(f'relabel of 48 clips in 8 shards: {total:.2f} s, of which '
        f'{sum(spent.values()) * 1e3:.1f} ms ({share:.2%}) completion: ' +
        ', '.join(f'{k} {v * 1e3:.1f} ms' for k, v in sorted(spent.items())))
  assert share < 0.02
