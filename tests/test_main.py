"""End-to-end tests of `python -m spl.main`: gin, errors, resume, multi-worker."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import gin
import numpy as np
import pytest
import tensorflow as tf

from spl import main
from spl import train_lib
from spl.models import factory
from tfrecords_tools import records
from tfrecords_tools import schema
from tfrecords_tools import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER = os.path.join(ROOT, 'gin_configs', 'runs', 'train_teacher.gin')
TINY = os.path.join(ROOT, 'gin_configs', 'tiny.gin')


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


@pytest.fixture(scope='module')
def pattern(tmp_path_factory):
  root = tmp_path_factory.mktemp('data')
  testing.write_fake_clip_records(str(root), num_clips=8, num_shards=2,
                                  num_classes=3)
  return str(root / schema.shard_pattern())


def _bindings(pattern, *extra):
  return [f"TRAIN_FILES = '{pattern}'", f"EVAL_FILES = '{pattern}'",
          'NUM_TRAIN_EXAMPLES = 8', 'NUM_CLASSES = 3', *extra]


def test_two_steps_from_gin_with_tiny_overlay(pattern, tmp_path):
  model_dir = str(tmp_path / 'model')
  result = main.run([TEACHER, TINY], _bindings(pattern), model_dir=model_dir,
                    mode='train_and_eval',
                    strategy=tf.distribute.OneDeviceStrategy('/cpu:0'))
  assert result['step'] == 2
  assert result['model'].backbone.name == 'tiny3d'
  with open(os.path.join(model_dir, main.CONFIG_FILENAME)) as f:
    config = f.read()
  # The operative config: what the run used, not merely what was bound.
  assert "build_classifier.backbone = 'tiny3d'" in config
  assert 'NUM_FRAMES = 4' in config
  assert 'make_dataset.num_frames = %NUM_FRAMES' in config
  with open(os.path.join(model_dir, train_lib.METRICS_FILENAME)) as f:
    metrics = json.load(f)
  assert metrics['eval']['num_clips'] == 8


@pytest.mark.parametrize('binding,match', [
    ('run.global_batch_size = ', 'bad gin config'),
    ('run.no_such_parameter = 1', 'no_such_parameter'),
    ('no_such_function.x = 1', 'no_such_function'),
    ("TRAIN_FILES = %gin.REQUIRED", 'REQUIRED'),
])
def test_bad_gin_fails_before_anything_is_built(pattern, tmp_path, binding,
                                                match):
  model_dir = tmp_path / 'model'
  with pytest.raises(ValueError, match=match):
    main.run([TEACHER, TINY], _bindings(pattern, binding),
             model_dir=str(model_dir), mode='train',
             strategy=tf.distribute.OneDeviceStrategy('/cpu:0'))
  assert not model_dir.exists()


def test_missing_gin_file_is_named(tmp_path):
  with pytest.raises(ValueError, match='nope.gin'):
    main.parse_gin([str(tmp_path / 'nope.gin')], [])


def test_cli_names_the_gin_file_and_line_of_a_missing_import(tmp_path):
  """The command's one line of error names the file and line (each kind of
  error: tests/test_gin_errors.py), with no traceback; it used to be a bare
  ModuleNotFoundError."""
  bad = tmp_path / 'bad.gin'
  bad.write_text("# overlay\nimport no_such_module_for_gin\n")
  model_dir = tmp_path / 'model'
  done = subprocess.run(
      [sys.executable, '-m', 'spl.main', f'--gin_file={bad}',
       f'--model_dir={model_dir}'], cwd=str(tmp_path), env=_env(),
      capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode != 0
  last = done.stderr.strip().splitlines()[-1]
  assert last == (
      f"spl.main: bad gin config (files ['{bad}'], bindings []): file "
      f"'{bad}', line 2: No module named 'no_such_module_for_gin'"), (
          done.stderr[-3000:])
  assert 'Traceback' not in done.stderr
  assert not model_dir.exists()


def test_strategies_are_built_by_name():
  assert isinstance(main.build_strategy('one_device'),
                    tf.distribute.OneDeviceStrategy)
  with pytest.raises(ValueError, match='strategy'):
    main.build_strategy('horovod')


def _command(pattern, model_dir, *bindings):
  cmd = [sys.executable, '-m', 'spl.main', f'--gin_file={TEACHER}',
         f'--gin_file={TINY}', f'--model_dir={model_dir}', '--mode=train']
  return cmd + [f'--gin_bindings={b}' for b in _bindings(pattern, *bindings)]


def _env(**extra):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=ROOT)
  env.update(extra)
  return env


def _checkpoint_steps(model_dir):
  state = tf.train.get_checkpoint_state(str(model_dir))
  return [int(p.rsplit('-', 1)[1]) for p in state.all_model_checkpoint_paths]


def _iterations(model_dir):
  """The optimizer's step counter in the latest checkpoint of `model_dir`."""
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir)))
  return int(reader.get_tensor('optimizer/_iterations/.ATTRIBUTES/'
                               'VARIABLE_VALUE'))


def _loss_steps(model_dir, pid):
  """Steps of the training-loss summaries written by process `pid`."""
  steps = []
  # events.out.tfevents.<time>.<host>.<pid>.<n>.v2
  for path in tf.io.gfile.glob(os.path.join(str(model_dir), 'train',
                                            'events.*')):
    if os.path.basename(path).split('.')[-3] == str(pid):
      steps += [e.step for e in tf.compat.v1.train.summary_iterator(path)
                for v in e.summary.value if v.tag == 'loss']
  return sorted(steps)


def _run_to_end(cmd):
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    _, err = proc.communicate(timeout=600)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-3000:]
  return proc.pid, err


@pytest.mark.slow
def test_rerun_after_kill_resumes(pattern, tmp_path):
  """A killed run, rerun, ends at exactly its target step; a third run no-ops.

  151 steps, 2 a loop, a checkpoint every 3: loops end at steps 2 and 0 mod
  3 (k+2, k+3 from a checkpoint k), and at 151, off the period. Protects
  against a resume that restarts or overruns the step count, drops the final
  checkpoint, or trains again once finished.
  """
  model_dir = tmp_path / 'model'
  cmd = _command(pattern, model_dir, 'run.train_steps = 151',
                 'loop.steps_per_loop = 2', 'loop.checkpoint_every_steps = 3')
  proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  deadline = time.time() + 240
  try:
    while time.time() < deadline:
      latest = tf.train.latest_checkpoint(str(model_dir))
      if latest and int(latest.rsplit('-', 1)[1]) >= 6:
        break
      assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
      time.sleep(0.1)
    else:
      pytest.fail('no checkpoint within the deadline')
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  killed_at = int(tf.train.latest_checkpoint(str(model_dir)).rsplit('-', 1)[1])
  assert killed_at < 150 and killed_at % 3 == 0
  pid, err = _run_to_end(cmd)
  start, end = re.search(r'training from step (\d+) to (\d+)', err).groups()
  assert (int(start), int(end)) == (killed_at, 151)
  assert _loss_steps(model_dir, pid) == [
      s for s in range(killed_at + 1, 151) if s % 3 != 1] + [151]
  assert _checkpoint_steps(model_dir) == [150, 151]  # Keeps 2 (tiny.gin).
  assert _iterations(model_dir) == 151
  with open(model_dir / train_lib.METRICS_FILENAME) as f:
    written = json.load(f)
  assert written['step'] == written['train']['step'] == 151
  # Rerunning the finished run trains nothing.
  pid, err = _run_to_end(cmd)
  assert 'training from step 151 to 151' in err
  assert not _loss_steps(model_dir, pid)
  assert _checkpoint_steps(model_dir) == [150, 151]
  assert _iterations(model_dir) == 151


_WORKER = """
import sys
import numpy as np
from spl import main
strategy = main.build_strategy('multi_worker_mirrored')
result = main.run(sys.argv[1:3], sys.argv[4:], model_dir=sys.argv[3],
                  mode='train', strategy=strategy)
np.savez(sys.argv[3] + '_weights_%d.npz' % strategy.cluster_resolver.task_id,
         *[w.numpy() for w in result['model'].weights])
"""


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(('localhost', 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


@pytest.mark.slow
def test_multi_worker_mirrored_workers_end_with_same_weights(pattern,
                                                             tmp_path):
  model_dir = str(tmp_path / 'model')
  cluster = {'worker': [f'localhost:{p}' for p in _free_ports(2)]}
  procs = []
  for i in range(2):
    tf_config = json.dumps({'cluster': cluster,
                            'task': {'type': 'worker', 'index': i}})
    procs.append(subprocess.Popen(
        [sys.executable, '-c', _WORKER, TEACHER, TINY, model_dir,
         *_bindings(pattern, 'run.train_steps = 5', 'loop.steps_per_loop = 2',
                    'loop.checkpoint_every_steps = 3')],
        cwd=ROOT, env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT))
  try:
    outs = [p.communicate(timeout=400)[0].decode() for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  a = np.load(model_dir + '_weights_0.npz')
  b = np.load(model_dir + '_weights_1.npz')
  assert len(a.files) == len(b.files) > 0
  for key in a.files:
    np.testing.assert_array_equal(a[key], b[key])
  # The chief wrote the checkpoints, the last at the end, off the period
  # (every worker takes part in every save, this one too); the other
  # worker's scratch checkpoints are gone.
  assert _checkpoint_steps(model_dir) == [3, 5]
  assert _iterations(model_dir) == 5
  assert not [n for n in os.listdir(model_dir) if n.startswith('.worker')]


PREDICT = os.path.join(ROOT, 'gin_configs', 'runs', 'predict_teacher.gin')


@pytest.mark.slow
def test_multi_worker_predict_covers_every_clip_once(pattern, tmp_path):
  # 7 clips over 3 shards (3 + 2 + 2): worker 0 gets shards 0 and 2, worker 1
  # shard 1, so the workers do unequal work and must never wait for each
  # other.
  data = tmp_path / 'web'
  testing.write_fake_clip_records(str(data), num_clips=7, num_shards=3,
                                  num_classes=3)
  web = str(data / schema.shard_pattern())
  # A teacher checkpoint of the tiny overlay's model (untrained: only
  # coverage is checked here), written directly to save a training run.
  model_dir = str(tmp_path / 'teacher')
  teacher = factory.build_classifier('tiny3d', num_classes=3,
                                     input_shape=(4, 32, 32, 3))
  tf.train.CheckpointManager(
      tf.train.Checkpoint(model=teacher, backbone=teacher.backbone),
      model_dir, max_to_keep=1).save()
  out_dir = tmp_path / 'predictions'

  def predict_with_two_workers():
    cluster = {'worker': [f'localhost:{p}' for p in _free_ports(2)]}
    procs = []
    for i in range(2):
      tf_config = json.dumps({'cluster': cluster,
                              'task': {'type': 'worker', 'index': i}})
      procs.append(subprocess.Popen(
          [sys.executable, '-m', 'spl.main', f'--gin_file={PREDICT}',
           f'--gin_file={TINY}', f'--model_dir={model_dir}',
           '--mode=predict', '--strategy=multi_worker_mirrored',
           f"--gin_bindings=PREDICT_FILES = '{web}'",
           f"--gin_bindings=PREDICTIONS_DIR = '{out_dir}'",
           '--gin_bindings=NUM_CLASSES = 3',
           '--gin_bindings=run.predict_top_k = 2'],
          cwd=ROOT, env=_env(TF_CONFIG=tf_config), stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT))
    try:
      outs = [p.communicate(timeout=300)[0].decode() for p in procs]
    finally:
      for p in procs:
        if p.poll() is None:
          p.kill()
    for p, out in zip(procs, outs):
      assert p.returncode == 0, out[-3000:]
    return outs

  predict_with_two_workers()
  clips = {c[schema.CLIP_INDEX_KEY]: c[schema.CLIP_KEY_KEY]
           for c in testing.parse_all(web)}
  names = [schema.shard_name(i, 3, prefix='predictions') for i in range(3)]
  # The shards and the completion record (tfrecords_tools.completion).
  assert sorted(os.listdir(out_dir)) == sorted(
      names + [schema.SUMMARY_FILENAME])
  preds = [records.parse_prediction_example(r) for r in
           testing.read_records(str(out_dir / 'predictions-*'))]
  assert sorted(p[schema.CLIP_INDEX_KEY] for p in preds) == list(range(7))
  for p in preds:
    assert p[schema.CLIP_KEY_KEY] == clips[p[schema.CLIP_INDEX_KEY]]
    assert len(p[schema.PREDICTION_TOP_K_INDEX_KEY]) == 2
  # Output shard i holds exactly the clips of input shard i.
  for i, path in enumerate(sorted(tf.io.gfile.glob(web))):
    expected = sorted(c[schema.CLIP_INDEX_KEY]
                      for c in testing.parse_all(path))
    got = sorted(records.parse_prediction_example(r)[schema.CLIP_INDEX_KEY]
                 for r in testing.read_records(str(out_dir / names[i])))
    assert got == expected
  # A rerun after losing worker 1's shard redoes only that one: worker 0 has
  # nothing left to do and must still exit cleanly.
  finished = {n: (out_dir / n).stat().st_mtime_ns for n in names}
  (out_dir / names[1]).unlink()
  outs = predict_with_two_workers()
  assert sorted(os.listdir(out_dir)) == sorted(
      names + [schema.SUMMARY_FILENAME])
  for n in (names[0], names[2]):
    assert (out_dir / n).stat().st_mtime_ns == finished[n]
  assert len(testing.read_records(str(out_dir / names[1]))) == 2
  assert 'exists, skipped' in outs[0]


def test_runs_from_any_working_directory(pattern, tmp_path):
  """`spl.main` started elsewhere: repository-relative gin files and their
  `include`s resolve against the shipped gin_configs, and a missing include
  names itself."""
  cwd = tmp_path / 'elsewhere'
  cwd.mkdir()
  model_dir = tmp_path / 'model'
  cmd = [sys.executable, '-m', 'spl.main',
         '--gin_file=gin_configs/runs/train_teacher.gin',
         '--gin_file=gin_configs/tiny.gin', f'--model_dir={model_dir}',
         '--mode=train'] + [f'--gin_bindings={b}' for b in _bindings(pattern)]
  done = subprocess.run(cmd, cwd=str(cwd), env=_env(), capture_output=True,
                        text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert tf.train.latest_checkpoint(str(model_dir)).endswith('ckpt-2')
  bad = cwd / 'overlay.gin'
  bad.write_text("include 'gin_configs/models/no_such_model.gin'\n")
  done = subprocess.run(cmd + [f'--gin_file={bad}'], cwd=str(cwd),
                        env=_env(), capture_output=True, text=True,
                        timeout=600, check=False)
  assert done.returncode != 0
  last = done.stderr.strip().splitlines()[-1]
  assert 'no_such_model.gin' in last and f"'{bad}', line 1" in last, last
