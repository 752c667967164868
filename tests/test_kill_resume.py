"""Kill tests: real processes killed (SIGKILL) at random points and rerun.

A `loop.deterministic` run that is killed any number of times and rerun with
the same command ends with the checkpoint of an uninterrupted run, bit for
bit: SPL training on one device and under MirroredStrategy over 2 logical
CPUs (dropout included), CPD pre-training (memory banks, Z and the negative
sampler included), and prediction (its output files). Training runs are
killed after a checkpoint past a random step, prediction at a random time
within the uninterrupted run's duration; the seed is printed on failure.
"""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tfrecords_tools import schema
from tfrecords_tools import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = os.path.join(ROOT, 'gin_configs', 'runs')
TINY = os.path.join(ROOT, 'gin_configs', 'tiny.gin')
KILLS = 2

# argv: replicas, mode, model_dir, gin files (comma-separated), bindings...
_DRIVER = """
import sys
import tensorflow as tf
replicas, mode, model_dir, files = sys.argv[1:5]
cpus = tf.config.list_physical_devices('CPU')
tf.config.set_logical_device_configuration(
    cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
from spl import main
from tests import distribute_utils
strategy = (distribute_utils.mirrored_strategy(['/cpu:0', '/cpu:1'])
            if replicas == '2' else tf.distribute.OneDeviceStrategy('/cpu:0'))
main.run(files.split(','), sys.argv[5:], model_dir=model_dir, mode=mode,
         strategy=strategy)
"""


def _env():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', CUDA_VISIBLE_DEVICES='')
  env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
  return env


def _command(replicas, mode, model_dir, files, bindings):
  return [sys.executable, '-c', _DRIVER, str(replicas), mode, str(model_dir),
          ','.join(files), *bindings]


def _run_to_end(cmd):
  done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True,
                        text=True, timeout=900, check=False)
  assert done.returncode == 0, done.stderr[-3000:]


def _kill_and_rerun(cmd, waits):
  """Runs `cmd` once per wait, killing it when the wait returns (SIGKILL),
  then to the end. A wait gets the running process."""
  for wait in waits:
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  _run_to_end(cmd)


def _random_times(duration, rng):
  """`KILLS` waits of a random share of the uninterrupted run's duration."""
  return [lambda proc: time.sleep(rng.uniform(0.3, 1.0) * duration)
          for _ in range(KILLS)]


def _latest_step(model_dir):
  steps = [int(name[len('ckpt-'):-len('.index')])
           for name in os.listdir(model_dir)
           if name.startswith('ckpt-') and name.endswith('.index')]
  return max(steps, default=0)


def _in_training(model_dir, duration, rng, steps):
  """`KILLS` waits that end while the run trains.

  Training is a small part of a tiny run (start-up dominates), so kills at
  random times rarely interrupt it: each wait here lasts until a checkpoint
  past a random step (later for every kill), then up to 50 ms more, so the
  kill lands during the next steps or the next save and every rerun resumes
  from the middle of the run.
  """
  # Room after the last target: the kill lands before the run ends.
  targets = sorted(rng.sample(range(1, steps - 10), KILLS))

  def until(target):
    def wait(proc):
      deadline = time.monotonic() + 3 * duration + 60
      while (not os.path.isdir(model_dir) or
             _latest_step(model_dir) < target):
        assert proc.poll() is None, (
            f'the run ended (rc {proc.returncode}) before step {target}')
        assert time.monotonic() < deadline, f'no checkpoint past {target}'
        time.sleep(0.005)
      time.sleep(rng.uniform(0.0, 0.05))
    return wait
  return [until(t) for t in targets]


def _timed(cmd):
  start = time.perf_counter()
  _run_to_end(cmd)
  return time.perf_counter() - start


def _checkpoint_tensors(model_dir):
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
          if not k.startswith('save_counter')}


def _assert_same_checkpoint(straight_dir, killed_dir):
  straight = _checkpoint_tensors(straight_dir)
  killed = _checkpoint_tensors(killed_dir)
  assert sorted(straight) == sorted(killed)
  for key, value in straight.items():
    np.testing.assert_array_equal(killed[key], value, err_msg=key)


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
  root = tmp_path_factory.mktemp('clips')
  testing.write_fake_clip_records(str(root), num_clips=16, num_shards=4,
                                  num_classes=3)
  return str(root / schema.shard_pattern())


def _spl_bindings(pattern, steps):
  return [f"TRAIN_FILES='{pattern}'", f"EVAL_FILES='{pattern}'",
          'NUM_TRAIN_EXAMPLES=16', 'NUM_CLASSES=3',
          f'run.train_steps={steps}', 'loop.deterministic=True',
          'loop.seed=7', 'loop.steps_per_loop=2',
          'loop.checkpoint_every_steps=3', 'loop.max_checkpoints_to_keep=2']


@pytest.mark.slow
@pytest.mark.parametrize('replicas', [1, 2])
def test_killed_spl_training_ends_like_an_uninterrupted_run(
    clips, tmp_path, replicas):
  seed = random.SystemRandom().randrange(1 << 30)
  rng = random.Random(seed)
  files = [os.path.join(RUNS, 'train_teacher.gin'), TINY]
  bindings = _spl_bindings(clips, steps=40)
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  duration = _timed(_command(replicas, 'train', straight, files, bindings))
  _kill_and_rerun(_command(replicas, 'train', killed, files, bindings),
                  _in_training(str(killed), duration, rng, steps=40))
  try:
    _assert_same_checkpoint(str(straight), str(killed))
  except AssertionError as e:
    raise AssertionError(f'kill seed {seed}: {e}') from e


@pytest.fixture(scope='module')
def cpd_data(tmp_path_factory):
  root = tmp_path_factory.mktemp('cpd')
  testing.write_fake_clip_records(str(root / 'train'), num_clips=16,
                                  num_shards=2)
  testing.write_fake_clip_records(str(root / 'val'), num_clips=6,
                                  num_shards=1)
  # Fake captions are 'title of clip <index>' (tfrecords_tools.testing).
  words = ['title', 'of', 'clip'] + [str(i) for i in range(16)]
  rng = np.random.RandomState(0)
  w2v = root / 'vectors.txt'
  w2v.write_text('\n'.join([f'{len(words)} 6'] + [
      w + ' ' + ' '.join(f'{x:.4f}' for x in rng.randn(6)) for w in words])
                 + '\n')
  return {'train': str(root / 'train' / schema.shard_pattern()),
          'val': str(root / 'val' / schema.shard_pattern()),
          'w2v': str(w2v)}


@pytest.mark.slow
def test_killed_cpd_pretraining_ends_like_an_uninterrupted_run(
    cpd_data, tmp_path):
  seed = random.SystemRandom().randrange(1 << 30)
  rng = random.Random(seed)
  files = [os.path.join(RUNS, 'cpd_pretrain_w2v.gin'), TINY]
  bindings = [f"TRAIN_FILES='{cpd_data['train']}'",
              f"EVAL_FILES='{cpd_data['val']}'", 'NUM_TRAIN_EXAMPLES=16',
              f"WORD2VEC_PATH='{cpd_data['w2v']}'", 'cpd_run.train_steps=40',
              'loop.deterministic=True', 'loop.seed=7',
              'loop.steps_per_loop=2', 'loop.checkpoint_every_steps=3',
              'loop.max_checkpoints_to_keep=2']
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  duration = _timed(_command(1, 'train', straight, files, bindings))
  _kill_and_rerun(_command(1, 'train', killed, files, bindings),
                  _in_training(str(killed), duration, rng, steps=40))
  try:
    _assert_same_checkpoint(str(straight), str(killed))
  except AssertionError as e:
    raise AssertionError(f'kill seed {seed}: {e}') from e


def _files(directory):
  out = {}
  for folder, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(folder, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out


@pytest.mark.slow
def test_killed_prediction_ends_with_the_files_of_an_uninterrupted_run(
    clips, tmp_path):
  seed = random.SystemRandom().randrange(1 << 30)
  rng = random.Random(seed)
  files = [os.path.join(RUNS, 'train_teacher.gin'), TINY]
  model_dir = tmp_path / 'teacher'
  _run_to_end(_command(1, 'train', model_dir, files,
                       _spl_bindings(clips, steps=2)))

  def predict(out):
    return _command(1, 'predict', model_dir, files, _spl_bindings(
        clips, steps=2) + [f"PREDICT_FILES='{clips}'",
                           f"run.predictions_dir='{out}'"])
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  duration = _timed(predict(straight))
  _kill_and_rerun(predict(killed), _random_times(duration, rng))
  expected = _files(str(straight))
  assert expected
  got = _files(str(killed))
  assert sorted(got) == sorted(expected), f'kill seed {seed}'
  for name, data in expected.items():
    assert got[name] == data, f'kill seed {seed}: {name} differs'
