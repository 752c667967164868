"""Long jobs show progress while they work (issue: what a user sees).

`tfrecords_tools.progress` itself, then the writer and relabel as real
subprocesses (a progress line with a rate and an ETA arrives while the job
still runs, before its final counters), prediction and feature extraction in
process (lines inside a shard, before the shard is written).
"""

import csv
import functools
import json
import logging
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from cpd import features
from spl import evaluation
from spl import input_pipeline
from spl import prediction
from spl.models import factory
from tests import test_cpd_eval_features
from tests import test_relabel
from tfrecords_tools import progress as progress_lib
from tfrecords_tools import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Clock:

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


@pytest.fixture
def clock(monkeypatch):
  c = _Clock()
  monkeypatch.setattr(progress_lib.time, 'monotonic', c)
  return c


def test_lines_at_the_first_unit_every_period_and_the_end(clock):
  lines = []
  p = progress_lib.Progress('job', {'videos': 10, 'clips': None},
                            every=10.0, log=lines.append)
  clock.now += 2
  p.add(videos=1, clips=3)  # First unit: a line.
  assert lines == ['job: 1/10 videos (10%), 3 clips; 0.5 videos/s, '
                   '1.5 clips/s; 2 s elapsed, ETA 18 s']
  clock.now += 5
  p.add(videos=1, clips=3)  # Within the period: none.
  assert len(lines) == 1
  clock.now += 6
  p.add(clips=1, detail='video 3')
  assert lines[-1] == ('job: 2/10 videos (20%), 7 clips; 0.154 videos/s, '
                       '0.538 clips/s; 13 s elapsed, ETA 52 s; video 3')
  p.add(videos=8)  # The total reached: a line at once.
  assert len(lines) == 3 and lines[-1].startswith('job: 10/10 videos (100%)')
  clock.now += 1
  assert p.finish() == ('job done: 10 videos, 7 clips in 14 s '
                        '(0.714 videos/s, 0.5 clips/s)')


def test_estimated_totals_eta_by_bytes_and_formats(clock):
  lines = []
  p = progress_lib.Progress(
      'copy', {'shards': 4, 'bytes': 4e9}, eta_by='bytes', log=lines.append,
      estimated={'shards': True}, rates=('bytes',))
  clock.now += 10
  p.add(bytes=1e9)
  assert lines == ['copy: 0/~4 shards (0%), 1.0 GB/4.0 GB; 100.0 MB/s; '
                   '10 s elapsed, ETA 30 s']
  assert progress_lib.format_seconds(75) == '1 min 15 s'
  assert progress_lib.format_seconds(7380) == '2 h 03 min'
  with pytest.raises(KeyError, match='unknown counter'):
    p.add(clips=1)


def test_beam_counters_are_shared_per_process_and_honest_elsewhere():
  run = progress_lib.BeamRun.create('DirectRunner', 4)
  a = run.progress('stage', {'videos': 8})
  assert run.progress('stage', {'videos': 8}) is a  # Every thread's DoFn.
  assert a.what == 'stage'
  # Another run in the same process (a test, a notebook) never mixes in.
  assert progress_lib.BeamRun.create('DirectRunner', 4).progress(
      'stage', {'videos': 8}) is not a
  # A DoFn in a worker process counts its own ~1/W share, and says so.
  elsewhere = progress_lib.BeamRun('r', os.getpid() + 1, 4)
  b = elsewhere.progress('stage', {'videos': 8})
  assert b.what == f'stage [worker pid {os.getpid()}, its ~1/4 share]'
  b.add(videos=1)
  assert '1/~2 videos' in b.line()
  # On other runners the share is unknown: no total, no ETA.
  remote = progress_lib.BeamRun('s', os.getpid() + 1, None)
  c = remote.progress('stage', {'videos': 8})
  c.add(videos=1)
  assert '1 videos' in c.line() and 'ETA' not in c.line()


# ---- Jobs as subprocesses: lines arrive while they run ----

_PREFIX = r'I\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] '


def _stream(cmd):
  """Runs `cmd`; (stderr lines, each with whether the job still ran, stdout)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:
    lines.append((line.rstrip('\n'), proc.poll() is None))
  stdout = proc.stdout.read()
  assert proc.wait(timeout=300) == 0, '\n'.join(l for l, _ in lines)[-3000:]
  return lines, stdout


def _first(lines, pattern):
  for i, (line, running) in enumerate(lines):
    if re.search(pattern, line):
      return i, running
  raise AssertionError(f'no line matches {pattern!r}:\n' +
                       '\n'.join(l for l, _ in lines)[-3000:])


def _no_optional_dependency_warnings(lines):
  text = '\n'.join(l for l, _ in lines)
  assert 'GCSFileSystem' not in text and 'apitools' not in text, text[:2000]
  # Beam's own INFO chatter (channels, servers) is not shown either.
  assert 'control server' not in text and 'Data channel' not in text


def test_the_writer_shows_progress_while_it_works(tmp_path):
  rows = []
  for i in range(4):
    testing.write_test_video(str(tmp_path / f'v{i}.mp4'), seconds=2.0, fps=10)
    rows.append((f'v{i}.mp4', 'ab'[i % 2], f't{i}', f'v{i}'))
  with open(tmp_path / 'm.csv', 'w', newline='', encoding='utf-8') as f:
    w = csv.writer(f)
    w.writerow(('path', 'label', 'title', 'video_id'))
    w.writerows(rows)
  lines, stdout = _stream([
      sys.executable, '-m', 'tfrecords_tools.write_clips',
      f'--manifest={tmp_path / "m.csv"}', f'--output_dir={tmp_path / "out"}',
      '--num_shards=2', '--clip_seconds=1', '--fps=5', '--short_side=32'])
  _no_optional_dependency_warnings(lines)
  end, _ = _first(lines, _PREFIX + r'write_clips: \d+ clips, \d+ frames from 4 '
                  r'videos in [\d.]+ s')
  for pattern in (r'write_clips probe: \d/4 videos \(\d+%\); [\d.]+ videos/s',
                  r'write_clips decode: \d/4 videos \(\d+%\), \d+ clips; '
                  r'[\d.]+ videos/s, [\d.]+ clips/s; \d+ s elapsed',
                  r'write_clips shards: \d/2 shards \(\d+%\), \d+ clips, '
                  r'[\d.]+ kB; [\d.]+ clips/s, [\d.]+ .B/s; \d+ s elapsed'):
    i, running = _first(lines, _PREFIX + pattern)
    assert running and i < end, lines[i]
  assert re.search(r'write_clips decode: 4/4 videos .* ETA 0 s',
                   '\n'.join(l for l, _ in lines))
  assert 'clips per class' in stdout


def test_relabel_shows_each_pass_while_it_works(tmp_path):
  rec_pattern, pred_pattern, _ = test_relabel.make_inputs(
      str(tmp_path), num_clips=40, num_shards=4)
  lines, stdout = _stream([
      sys.executable, '-m', 'tfrecords_tools.relabel',
      f'--records={rec_pattern}', f'--predictions={pred_pattern}',
      '--variant=spl', f'--output_dir={tmp_path / "out"}'])
  _no_optional_dependency_warnings(lines)
  start, _ = _first(lines, _PREFIX + r'relabel: 4 shards \([\d.]+ MB\), 1 '
                    r'prediction files, N=3, variant spl -> ')
  end, _ = _first(lines, _PREFIX + r'relabel timing \(s\): prepare [\d.]+, '
                  r'construct [\d.]+, run [\d.]+, .*pass2_rewrite')
  for pattern in (r'relabel pass 1 \(contexts\): 1/4 shards \(25%\), 10 '
                  r'records; \d+ records/s; \d+ s elapsed, ETA \d+ s',
                  r'relabel pass 2 \(rewrite\): 1/4 shards \(25%\), 10 clips, '
                  r'[\d.]+ kB/[\d.]+ kB; \d+ clips/s, [\d.]+ .B/s; \d+ s '
                  r'elapsed, ETA \d+ s'):
    i, running = _first(lines, _PREFIX + pattern)
    assert running and start < i < end, lines[i]
  # The counters at the end: per-phase times, then what the job produced.
  _first(lines, _PREFIX + r'relabel: spl-\w+: 9 classes .* clips in 40, '
         r'written 40, dropped 0')
  assert 'clips in 40' in stdout


# ---- Prediction and feature extraction: lines inside a shard ----


def _messages(caplog):
  return [r.getMessage() for r in caplog.records]


def _index(messages, pattern):
  for i, m in enumerate(messages):
    if re.search(pattern, m):
      return i
  raise AssertionError(f'no message matches {pattern!r}: {messages}')


def _tiny_classifier_and_records(data, num_clips):
  """A 3-class tiny3d classifier, its eval dataset_fn and 2 record shards."""
  testing.write_fake_clip_records(data, num_clips=num_clips, num_shards=2,
                                  num_classes=3)
  model = factory.build_classifier('tiny3d', num_classes=3,
                                   input_shape=(4, 32, 32, 3))
  model(tf.zeros((1, 4, 32, 32, 3)))
  dataset_fn = functools.partial(
      input_pipeline.make_dataset, num_frames=4, stride=1, crop_size=32,
      num_test_clips=1, deterministic=True)
  return model, dataset_fn, os.path.join(data, 'clips-*')


def test_prediction_shows_clips_per_second_inside_a_shard(tmp_path, caplog):
  model, dataset_fn, pattern = _tiny_classifier_and_records(
      str(tmp_path / 'web'), num_clips=8)
  caplog.set_level(logging.INFO)
  prediction.predict(model, tf.distribute.OneDeviceStrategy('/cpu:0'),
                     dataset_fn, pattern,
                     str(tmp_path / 'pred'), num_classes=3,
                     global_batch_size=2, top_k=2)
  messages = _messages(caplog)
  # The first batch of the first shard: 2 of its 4 clips, the total
  # estimated from the shards opened so far.
  first = _index(messages, r'^predict: 2/~8 clips \(25%\), 0/2 shards; '
                 r'[\d.]+ clips/s; \d+ s elapsed, ETA ~\d+ s; shard 1/2 '
                 r'\(clips-00000-of-00002.tfrecord\): 2/4 clips$')
  assert first < _index(messages, r'^predict: wrote 4 clips to .*'
                        r'predictions-00000-of-00002')
  # Every clip counted once, and the final counters.
  last = _index(messages, r'^predict: 8/8 clips \(100%\), 1/2 shards;')
  assert last < _index(messages, r'^predict done: 8 clips, 2 shards in \d+ s '
                       r'\([\d.]+ clips/s\)$')


def test_feature_extraction_shows_records_per_second_inside_a_shard(
    tmp_path, caplog):
  records = str(tmp_path / 'records')
  testing.write_fake_clip_records(records, num_clips=10, num_shards=2,
                                  num_classes=1, num_frames=6)
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  # pylint: disable=protected-access
  backbone, head = test_cpd_eval_features._build(strategy)
  caplog.set_level(logging.INFO)
  features.extract_features(
      features.make_view_embedder(backbone, head), strategy,
      test_cpd_eval_features._dataset_fn,
      os.path.join(records, 'clips-*'), str(tmp_path / 'features'))
  messages = _messages(caplog)
  # 5 records per shard in batches of 3.
  first = _index(messages, r'^features: 3/~10 records \(30%\), 0/2 shards; '
                 r'[\d.]+ records/s; \d+ s elapsed, ETA ~\d+ s; shard 1/2 '
                 r'\(clips-00000-of-00002.tfrecord\): 3/5 records$')
  assert first < _index(messages, r'^features: wrote .*features-00000-of-00002')
  _index(messages, r'^features done: 10 records, 2 shards in \d+ s')


def test_evaluation_shows_clips_per_second_and_an_eta(tmp_path, caplog):
  data = str(tmp_path / 'val')
  model, dataset_fn, pattern = _tiny_classifier_and_records(data, num_clips=6)

  def run():
    caplog.clear()
    evaluation.evaluate(model, tf.distribute.OneDeviceStrategy('/cpu:0'),
                        dataset_fn, pattern, num_classes=3,
                        global_batch_size=2)
    return _messages(caplog)

  caplog.set_level(logging.INFO)
  # No summary.json beside the shards: counts and rate, no total or ETA.
  assert evaluation.expected_records(pattern) is None
  messages = run()
  first = _index(messages, r'^eval: 2 clips; [\d.]+ clips/s; \d+ s elapsed$')
  assert first < _index(messages, r'^eval done: 6 clips in \d+ s '
                        r'\([\d.]+ clips/s\)$')
  # The writer's summary gives the total: percentages and an ETA.
  with open(os.path.join(data, 'summary.json'), 'w') as f:
    json.dump({'clips': 6, 'num_shards': 2}, f)
  assert evaluation.expected_records(pattern) == 6
  messages = run()
  first = _index(messages, r'^eval: 2/6 clips \(33%\); [\d.]+ clips/s; '
                 r'\d+ s elapsed, ETA \d+ s$')
  assert first < _index(messages, r'^eval: 6/6 clips \(100%\);')
  _index(messages, r'^eval done: 6 clips in \d+ s')
  # A subset of the shards: the summary's count is not theirs.
  assert evaluation.expected_records(
      os.path.join(data, 'clips-00000-*')) is None
