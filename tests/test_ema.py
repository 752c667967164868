"""Tests of spl.ema through the trainer (`run.ema_decay`) and spl.export.

The shadows are checked against a float64 NumPy recursion over the raw
weights of every step (each step is a checkpoint), on one device and on 2
replicas; resume, evaluation and export against models loaded with the
checkpoint's shadows, read by key and assigned here (not by `spl.ema`).
"""

import functools
import json
import os
import shutil

import gin
import numpy as np
import pytest
import tensorflow as tf

from spl import ema as ema_lib
from spl import evaluation
from spl import export
from spl import input_pipeline
from spl import loop
from spl import main
from spl import optimization
from spl import train_lib
from spl.models import factory
from tests import test_train_lib as base
from tfrecords_tools import schema
from tfrecords_tools import testing

NUM_CLASSES = base.NUM_CLASSES
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Large enough for the weights to move far beyond the tolerances each step;
# constant, so that a run of 2 steps takes the steps of a run of 4.
LEARNING_RATE = functools.partial(optimization.build_learning_rate,
                                  base_learning_rate=0.2, base_batch_size=None,
                                  constant=True)


def _every_step(steps, **kwargs):
  """A loop of single-step loops, each step checkpointed and kept."""
  return loop.LoopConfig(steps_per_loop=1, checkpoint_every_steps=1,
                         max_checkpoints_to_keep=steps + 1, **kwargs)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp('ema_data')
  testing.write_fake_clip_records(str(root), num_clips=7, num_shards=2,
                                  num_classes=NUM_CLASSES)
  return str(root / schema.shard_pattern())


def _shadow_key(i):
  return f'{ema_lib.CHECKPOINT_KEY}/shadows/{i}/.ATTRIBUTES/VARIABLE_VALUE'


def _checkpoint_state(path, model_fn=base._tiny_model,
                      input_shape=(4, 32, 32, 3)):
  """(raw trainable weights, shadows, model holding the raw weights) of a
  checkpoint; the shadows read by key, in `trainable_variables` order."""
  model = model_fn(NUM_CLASSES, input_shape)
  model(tf.zeros((1,) + input_shape), training=False)
  tf.train.Checkpoint(model=model).read(path).expect_partial()
  reader = tf.train.load_checkpoint(path)
  raw = [v.numpy() for v in model.trainable_variables]
  shadows = ([reader.get_tensor(_shadow_key(i)) for i in range(len(raw))]
             if ema_lib.in_checkpoint(path) else None)
  return raw, shadows, model


def _step_checkpoints(model_dir):
  return {int(p[:-len('.index')].rsplit('-', 1)[1]): p[:-len('.index')]
          for p in tf.io.gfile.glob(os.path.join(model_dir, 'ckpt-*.index'))}


def _reference(initial, raws, decay, dynamic, first_step=1):
  """The EMA recursion in float64 from `initial` over `raws` (step
  first_step, first_step + 1, ...)."""
  shadow = [w.astype(np.float64) for w in initial]
  out = []
  for t, weights in enumerate(raws, start=first_step):
    d = min(decay, (1 + t) / (10 + t)) if dynamic else decay
    shadow = [d * s + (1 - d) * w.astype(np.float64)
              for s, w in zip(shadow, weights)]
    out.append(shadow)
  return out


def _max_diff(a, b):
  return max(float(np.abs(np.asarray(x, np.float64) - y).max())
             for x, y in zip(a, b))


def _capturing_model_fn(models):
  def model_fn(num_classes, input_shape):
    models.append(base._tiny_model(num_classes, input_shape))
    return models[-1]
  return model_fn


@pytest.mark.parametrize('dynamic', [False, True])
def test_shadows_follow_the_float64_recursion_over_the_raw_weights(
    data, tmp_path, dynamic):
  """s_t = d_t s_{t-1} + (1 - d_t) w_t from s_0 = w_0, over 4 steps.

  w_0 is read when the run has initialised (`setup_done`), w_t and s_t from
  the checkpoint of step t. Fails for a shadow updated before the step
  (w_{t-1}), with another decay or schedule, started at zero, or holding
  batch-norm statistics.
  """
  decay, steps = 0.7, 4
  models, initial = [], []
  model_dir = str(tmp_path / 'run')
  base._run(mode='train', model_dir=model_dir, train_file_pattern=data,
            model_fn=_capturing_model_fn(models), train_steps=steps,
            loop=_every_step(steps), learning_rate_fn=LEARNING_RATE,
            ema_decay=decay, ema_dynamic_decay=dynamic,
            setup_done=lambda: initial.extend(
                v.numpy() for v in models[0].trainable_variables))
  paths = _step_checkpoints(model_dir)
  assert sorted(paths) == list(range(1, steps + 1))
  states = [_checkpoint_state(paths[t]) for t in range(1, steps + 1)]
  raws = [raw for raw, _, _ in states]
  expected = _reference(initial, raws, decay, dynamic)
  reader = tf.train.load_checkpoint(paths[steps])
  # One shadow per trainable weight (batch-norm statistics have none).
  assert len(initial) == len(models[0].trainable_variables) < len(
      models[0].variables)
  assert not reader.has_tensor(_shadow_key(len(initial)))
  for t, (_, shadows, _) in enumerate(states):
    for got, want in zip(shadows, expected[t]):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Each step moves the weights far beyond the tolerance, and the decay
  # (schedule) matters: the test tells the alternatives apart.
  for before, after in zip([initial] + raws, raws):
    assert _max_diff(before, after) > 1e-3
  other = _reference(initial, raws, decay, not dynamic)
  assert _max_diff(other[-1], expected[-1]) > 1e-3
  lagged = _reference(initial, [initial] + raws[:-1], decay, dynamic)
  assert _max_diff(lagged[-1], expected[-1]) > 1e-3


class _Recorded(ema_lib.WeightAverage):
  """Keeps every average the trainer makes (their live per-replica copies)."""
  made = []

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.made.append(self)


def _replica_values(variable):
  values = getattr(variable, 'values', None)
  return [v.numpy() for v in values] if values else [variable.numpy()]


def test_mirrored_two_replicas_equals_one_device(tmp_path, logical_cpus,
                                                 monkeypatch):
  """Shadows on 2 replicas: equal on both replicas and to one device's.

  Without batch norm, so the raw weights of the two runs agree. Fails for an
  update that runs on one replica's copy only, or on replica-local weights.
  """
  monkeypatch.setattr(ema_lib, 'WeightAverage', _Recorded)
  _Recorded.made = []
  (tmp_path / 'x.tfrecord').write_bytes(b'')
  results = {}
  for name, strategy in (
      ('one', tf.distribute.OneDeviceStrategy(logical_cpus[0])),
      ('mirrored', base._mirrored(logical_cpus[:2]))):
    results[name] = base._run(
        mode='train', model_dir=str(tmp_path / name), strategy=strategy,
        model_fn=base._no_bn_model, dataset_fn=base._memory_dataset,
        train_file_pattern=str(tmp_path / 'x.tfrecord'), train_steps=4,
        loop=loop.LoopConfig(steps_per_loop=2, checkpoint_every_steps=4),
        learning_rate_fn=functools.partial(
            optimization.build_learning_rate, base_learning_rate=20.0),
        ema_decay=0.6)
  one, mirrored = _Recorded.made
  assert len(one.shadows) == len(results['one']['model'].trainable_variables)
  for a, b, w in zip(one.shadows, mirrored.shadows,
                     results['one']['model'].trainable_variables):
    copies = _replica_values(b)
    assert len(copies) == 2
    np.testing.assert_array_equal(copies[0], copies[1])
    np.testing.assert_allclose(copies[0], a.numpy(), rtol=1e-5, atol=1e-6)
  # The shadows are not the weights: the comparison above can fail.
  assert _max_diff([s.numpy() for s in one.shadows],
                   [w.numpy() for w in results['one']['model']
                    .trainable_variables]) > 1e-2
  # The checkpoint holds what the replicas hold.
  reader = tf.train.load_checkpoint(
      tf.train.latest_checkpoint(str(tmp_path / 'mirrored')))
  for i, s in enumerate(mirrored.shadows):
    np.testing.assert_array_equal(reader.get_tensor(_shadow_key(i)),
                                  _replica_values(s)[0])


def test_resume_restores_the_shadows(data, tmp_path):
  """Taken back to step 2 of 4 and rerun, a deterministic run ends with the
  shadows (and weights) of the uninterrupted run, bit for bit; a run
  resumed from a checkpoint written without an EMA starts its shadows from
  that checkpoint's weights; a checkpoint without shadows still evaluates,
  saying its raw weights were evaluated."""
  steps, decay = 4, 0.5

  def train(name, **kwargs):
    return base._run(mode='train', model_dir=str(tmp_path / name),
                     train_file_pattern=data, train_steps=steps,
                     learning_rate_fn=LEARNING_RATE,
                     loop=_every_step(steps, deterministic=True, seed=3),
                     **kwargs)

  train('straight', ema_decay=decay)
  shutil.copytree(tmp_path / 'straight', tmp_path / 'resumed')
  base._back_to_checkpoint(str(tmp_path / 'resumed'), 2)
  train('resumed', ema_decay=decay)
  final = {name: _checkpoint_state(
      _step_checkpoints(str(tmp_path / name))[steps])
           for name in ('straight', 'resumed')}
  for a, b in zip(final['straight'][0] + final['straight'][1],
                  final['resumed'][0] + final['resumed'][1]):
    np.testing.assert_array_equal(a, b)

  # The first 2 steps without an EMA, then 2 with: the average starts at
  # w_2 (the raw weights are the straight run's: the EMA does not train).
  base._run(mode='train', model_dir=str(tmp_path / 'late'),
            train_file_pattern=data, train_steps=2,
            learning_rate_fn=LEARNING_RATE,
            loop=_every_step(steps, deterministic=True, seed=3))
  assert not ema_lib.in_checkpoint(
      _step_checkpoints(str(tmp_path / 'late'))[2])
  result = base._run(mode='eval', model_dir=str(tmp_path / 'late'),
                     eval_file_pattern=data, ema_decay=decay)
  assert result['eval'][train_lib.EMA_RESULT_KEY] is False
  plain = base._run(mode='eval', model_dir=str(tmp_path / 'late'),
                    eval_file_pattern=data)
  assert train_lib.EMA_RESULT_KEY not in plain['eval']
  assert result['eval'] == dict(plain['eval'],
                                **{train_lib.EMA_RESULT_KEY: False})
  train('late', ema_decay=decay)
  late = _step_checkpoints(str(tmp_path / 'late'))
  states = {t: _checkpoint_state(late[t]) for t in (2, 3, 4)}
  for a, b in zip(states[4][0], final['straight'][0]):
    np.testing.assert_array_equal(a, b)
  expected = _reference(states[2][0], [states[3][0], states[4][0]], decay,
                        False, first_step=3)
  for got, want in zip(states[4][1], expected[-1]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert _max_diff(final['straight'][1], expected[-1]) > 1e-3


def test_evaluation_uses_the_shadows_and_training_the_raw_weights(
    data, tmp_path):
  """'train_and_eval' evaluates the shadows at every step (its result equals
  `evaluate` of a model loaded with the checkpoint's shadows, not of one
  with its raw weights) and swaps back: its weights and shadows are those
  of the same run without evaluations, bit for bit."""
  steps, decay = 3, 0.5
  runs = {}
  for mode in ('train_and_eval', 'train'):
    model_dir = str(tmp_path / mode)
    runs[mode] = model_dir
    base._run(mode=mode, model_dir=model_dir, train_file_pattern=data,
              eval_file_pattern=data, train_steps=steps,
              learning_rate_fn=LEARNING_RATE, ema_decay=decay,
              loop=_every_step(steps, deterministic=True, seed=4))
  for t in range(1, steps + 1):
    evaluated = _checkpoint_state(_step_checkpoints(runs['train_and_eval'])[t])
    plain = _checkpoint_state(_step_checkpoints(runs['train'])[t])
    for a, b in zip(evaluated[0] + evaluated[1], plain[0] + plain[1]):
      np.testing.assert_array_equal(a, b)

  with open(os.path.join(runs['train_and_eval'],
                         train_lib.METRICS_FILENAME)) as f:
    written = json.load(f)['eval']
  with open(os.path.join(runs['train_and_eval'],
                         evaluation.EVAL_DETAILS_FILENAME)) as f:
    details = json.load(f)
  assert written[train_lib.EMA_RESULT_KEY] is True
  assert details['step'] == steps and details[train_lib.EMA_RESULT_KEY]

  raw, shadows, model = evaluated
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  dataset_fn = functools.partial(input_pipeline.make_dataset,
                                 **base.TINY_DATA)

  def evaluate():
    return evaluation.evaluate(model, strategy, dataset_fn, data,
                               num_classes=NUM_CLASSES, global_batch_size=4)

  raw_result = evaluate()
  for v, s in zip(model.trainable_variables, shadows):
    v.assign(s)
  ema_result = evaluate()
  for key, value in ema_result.items():
    if isinstance(value, float):
      assert details[key] == pytest.approx(value, rel=1e-5), key
  assert details['confusion_matrix'] == ema_result['confusion_matrix']
  assert abs(raw_result['loss'] - ema_result['loss']) > 1e-3

  # 'eval' mode evaluates the shadows of the run's checkpoint too.
  again = base._run(mode='eval', model_dir=runs['train'],
                    eval_file_pattern=data, ema_decay=decay)
  assert again['eval'][train_lib.EMA_RESULT_KEY] is True
  assert again['eval']['loss'] == pytest.approx(ema_result['loss'], rel=1e-5)


@pytest.fixture(scope='module')
def ema_run(data, tmp_path_factory):
  """A teacher run (`spl.main`, gin) with `run.ema_decay`: its model dir."""
  model_dir = str(tmp_path_factory.mktemp('ema_run') / 'model')
  gin.clear_config()
  try:
    main.run([os.path.join(ROOT, 'gin_configs', 'runs', 'train_teacher.gin'),
              os.path.join(ROOT, 'gin_configs', 'tiny.gin')],
             [f"TRAIN_FILES='{data}'", f"EVAL_FILES='{data}'",
              'NUM_TRAIN_EXAMPLES=8', f'NUM_CLASSES={NUM_CLASSES}',
              'run.ema_decay = 0.5'],
             model_dir=model_dir, mode='train_and_eval',
             strategy=tf.distribute.OneDeviceStrategy('/cpu:0'))
  finally:
    gin.clear_config()
  assert ema_lib.in_checkpoint(tf.train.latest_checkpoint(model_dir))
  return model_dir


def test_export_gives_the_ema_model_or_on_request_the_raw_one(ema_run,
                                                              tmp_path):
  """`spl.export` of a run with `run.ema_decay` (set in gin) serves the
  model loaded with the checkpoint's shadows; `ema_weights=False` the raw
  one; the two differ."""
  model_dir = ema_run
  path = tf.train.latest_checkpoint(model_dir)

  configs, served = {}, {}
  video = None
  for ema_weights in (True, False):
    out = str(tmp_path / f'export_{ema_weights}')
    configs[ema_weights] = export.export(model_dir, out,
                                         ema_weights=ema_weights)
    view = export.EvalView.from_json(configs[ema_weights]['eval_view'])
    if video is None:
      video = np.random.default_rng(0).integers(
          0, 256, (3,) + view.clip_shape).astype(np.uint8)
    served[ema_weights] = tf.saved_model.load(out).signatures[
        'serving_default'](video=tf.constant(video))['probabilities'].numpy()
  assert configs[True]['weights'] == 'ema'
  assert configs[False]['weights'] == 'raw'

  # The expected models: raw weights restored, then the shadows assigned.
  model = factory.classifier_from_config_file(
      os.path.join(model_dir, factory.MODEL_CONFIG_FILENAME))
  model(tf.zeros((1,) + view.clip_shape), training=False)
  tf.train.Checkpoint(model=model).read(path).expect_partial()
  reader = tf.train.load_checkpoint(path)
  clips = export.normalize_clips(tf.constant(video), view)
  for ema_weights in (False, True):
    if ema_weights:
      for i, v in enumerate(model.trainable_variables):
        v.assign(reader.get_tensor(_shadow_key(i)))
    expected = tf.nn.softmax(model(clips, training=False)).numpy()
    np.testing.assert_allclose(served[ema_weights], expected, atol=1e-6,
                               rtol=1e-5)
  assert np.abs(served[True] - served[False]).max() > 1e-4


def test_finetuning_starts_from_the_ema_backbone(ema_run, tmp_path, caplog):
  """`init_checkpoint` of a run with `run.ema_decay` gives the backbone the
  checkpoint's shadows (read by key here), its batch-norm statistics the raw
  model's; `ema_weights=False`, or a checkpoint without the `model.json`
  the shadows follow, the raw backbone (the latter with a warning)."""
  path = tf.train.latest_checkpoint(ema_run)
  config = os.path.join(ema_run, factory.MODEL_CONFIG_FILENAME)
  reader = tf.train.load_checkpoint(path)
  expected = factory.classifier_from_config_file(config)
  expected(tf.zeros((1, 4, 32, 32, 3)), training=False)
  tf.train.Checkpoint(model=expected).read(path).expect_partial()
  raw = [w.numpy() for w in expected.backbone.weights]
  for i, v in enumerate(expected.trainable_variables):
    v.assign(reader.get_tensor(_shadow_key(i)))
  averaged = [w.numpy() for w in expected.backbone.weights]
  assert max(np.abs(a - b).max() for a, b in zip(averaged, raw)) > 1e-4

  def fine_tuned(init, **kwargs):
    target = factory.classifier_from_config_file(config)  # A new head too.
    target(tf.zeros((1, 4, 32, 32, 3)), training=False)
    train_lib.restore_backbone(target, init, **kwargs)
    return [w.numpy() for w in target.backbone.weights]

  for got, want in ((fine_tuned(ema_run), averaged),
                    (fine_tuned(ema_run, ema_weights=False), raw)):
    assert len(got) == len(want)
    for a, b in zip(got, want):
      np.testing.assert_array_equal(a, b)
  copy = tmp_path / 'no_model_json'
  shutil.copytree(ema_run, copy)
  os.remove(copy / factory.MODEL_CONFIG_FILENAME)
  with caplog.at_level('WARNING'):
    got = fine_tuned(str(copy))
  assert 'starts from its raw backbone weights' in caplog.text
  for a, b in zip(got, raw):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('decay', [0.0, 1.0, -0.5, 1.5, '0.9'])
def test_decay_outside_the_open_unit_interval_is_refused(tmp_path, decay):
  with pytest.raises(ValueError, match='`ema_decay` must be in'):
    base._run(mode='train', model_dir=str(tmp_path / 'm'), ema_decay=decay)
