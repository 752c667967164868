"""Multi-replica evaluation and prediction use the checkpointed statistics.

Under MirroredStrategy the batch-norm moving statistics are ON_READ
variables: each replica updates its own copy from its own batches and the
checkpoint saves their mean. One tiny3d run is trained on 2 replicas (module
fixture `mirrored_run`), with a batch-norm momentum low enough for the copies
to drift apart in 2 steps; what it evaluates (`train_and_eval`) and predicts
must equal what a single-device model restored from its checkpoint gives.
"""

import functools
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from spl import evaluation
from spl import input_pipeline
from spl import loop
from spl import optimization
from spl import prediction
from spl import train_lib
from spl.models import factory
from tests import distribute_utils
from tests import test_train_lib as base

NUM_CLASSES = base.NUM_CLASSES
NUM_EVAL_CLIPS = 8
DATASET_FN = functools.partial(input_pipeline.make_dataset, **base.TINY_DATA)
# pylint: disable=protected-access
_colour_clips = base._colour_clips
_prediction_probs = base._prediction_probs
# pylint: enable=protected-access


def _bn_model(num_classes, input_shape):
  """tiny3d (two conv-BN-ReLU blocks) whose moving statistics move fast."""
  return factory.build_classifier('tiny3d', num_classes=num_classes,
                                  input_shape=input_shape, dropout_rate=0.0,
                                  norm_momentum=0.5)


def _run(**kwargs):
  args = dict(
      model_fn=_bn_model, num_classes=NUM_CLASSES, global_batch_size=4,
      dataset_fn=DATASET_FN, train_steps=2,
      loop=loop.LoopConfig(steps_per_loop=2, checkpoint_every_steps=2),
      learning_rate_fn=functools.partial(optimization.build_learning_rate,
                                         base_learning_rate=0.05,
                                         base_batch_size=None))
  args.update(kwargs)
  return train_lib.run(**args)


def _moving_statistics(model):
  return [v for v in model.non_trainable_variables if 'moving_' in v.name]


def _replica_copies(model):
  """Per variable, the replicas' own values [replicas, ...]."""
  return [np.stack([c.numpy() for c in v.values])
          for v in _moving_statistics(model)]


@pytest.fixture(scope='module')
def mirrored_run(tmp_path_factory):
  """A 2-replica train_and_eval run, its replicas' copies at evaluation.

  Then `prediction.predict` on the run's model with the copies put back as
  training left them (the evaluation has averaged them since).

  Returns:
    Dict: 'model_dir', 'eval_data', 'eval' (eval_details.json), 'copies'
    (per moving statistic, [2, channels] at the start of the evaluation),
    'predictions' (clip index -> class probabilities).
  """
  tf_keras.utils.set_random_seed(0)
  root = tmp_path_factory.mktemp('replica_statistics')
  # Clips of 3 colours: each replica's batches give conv channels of means
  # of their own.
  train = _colour_clips(str(root / 'train'), 8, seed=5)
  eval_data = _colour_clips(str(root / 'eval'), NUM_EVAL_CLIPS, seed=6)
  model_dir = str(root / 'mirrored')
  strategy = distribute_utils.mirrored_strategy(
      [d.name for d in tf.config.list_logical_devices('CPU')[:2]])
  copies = []
  real_evaluate = evaluation.evaluate

  def evaluate(model, *args, **kwargs):
    copies.append(_replica_copies(model))
    return real_evaluate(model, *args, **kwargs)

  with pytest.MonkeyPatch.context() as monkeypatch:
    monkeypatch.setattr(evaluation, 'evaluate', evaluate)
    result = _run(mode='train_and_eval', model_dir=model_dir,
                  strategy=strategy, train_file_pattern=train,
                  eval_file_pattern=eval_data)
  assert len(copies) == 1  # One evaluation: at the end, before the save.
  model = result['model']
  for v, c in zip(_moving_statistics(model), copies[0]):
    for component, value in zip(v.values, c):
      component.assign(value)
  out_dir = str(root / 'mirrored_predictions')
  prediction.predict(model, strategy, DATASET_FN, eval_data, out_dir,
                     num_classes=NUM_CLASSES, global_batch_size=4,
                     top_k=NUM_CLASSES)
  with open(os.path.join(model_dir, evaluation.EVAL_DETAILS_FILENAME)) as f:
    details = json.load(f)
  return {'model_dir': model_dir, 'eval_data': eval_data, 'eval': details,
          'copies': copies[0],
          'predictions': _prediction_probs(out_dir)}


def test_replica_statistics_differ_and_the_checkpoint_holds_their_mean(
    mirrored_run):
  """The premise of the other tests: without averaging, the replicas would
  evaluate different models, none of them the checkpoint's."""
  copies = mirrored_run['copies']
  assert len(copies) == 4  # Mean and variance of bn1 and bn2.
  for c in copies:
    assert c.shape[0] == 2
    assert np.abs(c[0] - c[1]).max() > 0.05 * np.abs(c).max()
  restored = _bn_model(NUM_CLASSES, (4, 32, 32, 3))
  restored(tf.zeros((1, 4, 32, 32, 3)), training=False)
  tf.train.Checkpoint(model=restored).read(
      tf.train.latest_checkpoint(mirrored_run['model_dir'])).expect_partial()
  for v, c in zip(_moving_statistics(restored), copies):
    np.testing.assert_allclose(v.numpy(), c.mean(axis=0), rtol=1e-5,
                               atol=1e-6)


def test_multi_replica_eval_equals_the_checkpoint_on_one_device(
    mirrored_run, tmp_path):
  """A train_and_eval evaluation on 2 replicas reports what the saved model
  scores on one device; not what each replica's own statistics give."""
  _run(mode='eval', model_dir=str(tmp_path / 'single'),
       strategy=tf.distribute.OneDeviceStrategy('/cpu:0'),
       eval_file_pattern=mirrored_run['eval_data'],
       init_checkpoint=mirrored_run['model_dir'])
  with open(tmp_path / 'single' / evaluation.EVAL_DETAILS_FILENAME) as f:
    reference = json.load(f)
  got = mirrored_run['eval']
  assert got['num_clips'] == reference['num_clips'] == NUM_EVAL_CLIPS
  assert got['confusion_matrix'] == reference['confusion_matrix']
  for key, value in reference.items():
    if isinstance(value, float):
      assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_multi_replica_predict_equals_the_checkpoint_on_one_device(
    mirrored_run, tmp_path):
  """`predict` on the trained 2-replica model writes the probabilities the
  saved model gives on one device."""
  out_dir = str(tmp_path / 'single')
  _run(mode='predict', model_dir=str(tmp_path / 'm'),
       strategy=tf.distribute.OneDeviceStrategy('/cpu:0'),
       predict_file_pattern=mirrored_run['eval_data'],
       init_checkpoint=mirrored_run['model_dir'], predictions_dir=out_dir,
       predict_top_k=NUM_CLASSES)
  reference = _prediction_probs(out_dir)
  got = mirrored_run['predictions']
  assert sorted(got) == sorted(reference) == list(range(NUM_EVAL_CLIPS))
  for clip, probs in reference.items():
    np.testing.assert_allclose(got[clip], probs, rtol=1e-5, atol=1e-6,
                               err_msg=f'clip {clip}')


@pytest.mark.slow
@pytest.mark.parametrize('num_clips', [5, 6])
def test_multi_replica_eval_and_predict_of_a_short_last_step(
    mirrored_run, tmp_path, num_clips):
  """5 or 6 clips at a global batch of 4 over 2 replicas: one replica's last
  batch is empty (unpadded, oneDNN's CPU Conv3D returns an empty batch with
  its input's shape and the next batch norm fails); every clip is still
  evaluated and predicted once, as on one device."""
  data = _colour_clips(str(tmp_path / 'data'), num_clips, seed=7)
  two = distribute_utils.mirrored_strategy(
      [d.name for d in tf.config.list_logical_devices('CPU')[:2]])
  one = tf.distribute.OneDeviceStrategy('/cpu:0')
  got = {}
  for name, strategy in (('two', two), ('one', one)):
    _run(mode='eval', model_dir=str(tmp_path / name), strategy=strategy,
         eval_file_pattern=data, init_checkpoint=mirrored_run['model_dir'])
    with open(tmp_path / name / evaluation.EVAL_DETAILS_FILENAME) as f:
      details = json.load(f)
    out_dir = str(tmp_path / f'{name}_predictions')
    _run(mode='predict', model_dir=str(tmp_path / f'{name}_p'),
         strategy=strategy, predict_file_pattern=data,
         init_checkpoint=mirrored_run['model_dir'], predictions_dir=out_dir,
         predict_top_k=NUM_CLASSES)
    got[name] = details, _prediction_probs(out_dir)
  (two_eval, two_probs), (one_eval, one_probs) = got['two'], got['one']
  assert two_eval['num_clips'] == one_eval['num_clips'] == num_clips
  assert two_eval['confusion_matrix'] == one_eval['confusion_matrix']
  assert two_eval['loss'] == pytest.approx(one_eval['loss'], rel=1e-5)
  assert sorted(two_probs) == sorted(one_probs) == list(range(num_clips))
  for clip, probs in one_probs.items():
    np.testing.assert_allclose(two_probs[clip], probs, rtol=1e-5, atol=1e-6)
