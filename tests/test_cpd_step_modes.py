"""The CPD train step runs each model in the mode training needs.

Batch norm and dropout behave differently in training mode: the video model
and the text head must run with `training=True` (batch norm updates its
moving statistics, as the authors' `model.train()`), the text encoder as the
curriculum says (inference mode while frozen in stage 1, training mode in
stage 2). A step that ran the video model in inference mode would still
learn on models without batch norm, so the differential tests cannot see it.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cpd import curriculum as curriculum_lib
from cpd import heads
from cpd import nce
from cpd import train_step

N, D, IN = 12, 4, 5


class _Mode(tf_keras.layers.Layer):
  """Identity that records the `training` value of each call (at tracing)."""

  def __init__(self, seen, **kwargs):
    super().__init__(**kwargs)
    self.seen = seen

  def call(self, x, training=None):
    self.seen.append(training)
    return x


@pytest.mark.parametrize('stage', [1, 2])
def test_models_run_in_the_mode_of_their_stage(stage):
  seen = {'video': [], 'text_encoder': [], 'text_head': []}
  video_model = tf_keras.Sequential([
      tf_keras.Input([IN]), _Mode(seen['video']), heads.VideoHead(D)])
  text_encoder = tf_keras.Sequential([
      tf_keras.Input([IN]), _Mode(seen['text_encoder']),
      tf_keras.layers.Dense(6)])
  text_head = tf_keras.Sequential([
      tf_keras.Input([6]), _Mode(seen['text_head']), heads.VideoHead(D)])
  for s in seen.values():
    s.clear()  # Calls made while building.
  loss_module = nce.CrossModalNCE(N, D, num_negatives=3, bank_momentum=0.25)
  curriculum = curriculum_lib.Curriculum()
  optimizers = {group: tf_keras.optimizers.SGD(0.1)
                for group in curriculum.learning_rates(stage)}
  rng = np.random.default_rng(0)
  clips = tf.constant(rng.normal(size=(4, IN)), tf.float32)
  titles = tf.constant(rng.normal(size=(4, IN)), tf.float32)
  metrics = train_step.cpd_train_step(loss_module, video_model, text_encoder,
                               text_head, curriculum, optimizers, clips,
                               titles, tf.constant([0, 3, 7, 11]), stage)
  assert np.isfinite(float(metrics['nce/loss']))
  assert seen['video'] == [True]
  assert seen['text_head'] == [True]
  assert seen['text_encoder'] == [curriculum.text_encoder_training(stage)]
  assert seen['text_encoder'] == [stage == 2]


def test_video_batch_norm_statistics_move_in_a_step():
  """With a real batch-norm layer: its moving mean leaves zero after a step."""
  bn = tf_keras.layers.BatchNormalization(momentum=0.5)
  video_model = tf_keras.Sequential([tf_keras.Input([IN]), bn,
                                     heads.VideoHead(D)])
  text_encoder = tf_keras.layers.Dense(6)
  text_head = heads.VideoHead(D)
  text_head(text_encoder(tf.zeros([1, IN])))
  curriculum = curriculum_lib.Curriculum()
  optimizers = {group: tf_keras.optimizers.SGD(0.1)
                for group in curriculum.learning_rates(1)}
  rng = np.random.default_rng(1)
  clips = tf.constant(rng.normal(3.0, 1.0, size=(4, IN)), tf.float32)
  titles = tf.constant(rng.normal(size=(4, IN)), tf.float32)
  train_step.cpd_train_step(nce.CrossModalNCE(N, D, num_negatives=3), video_model,
                     text_encoder, text_head, curriculum, optimizers, clips,
                     titles, tf.constant([1, 2, 5, 8]), 1)
  np.testing.assert_allclose(bn.moving_mean.numpy(),
                             0.5 * clips.numpy().mean(axis=0), rtol=1e-5)


# ---- The step's other contract terms (mutation survivors of cpd_train_step) --


def _models(seed):
  tf_keras.utils.set_random_seed(seed)
  video_model = tf_keras.Sequential([
      tf_keras.Input([IN]), tf_keras.layers.Dense(6), heads.VideoHead(D)])
  text_encoder = tf_keras.Sequential([
      tf_keras.Input([IN]), tf_keras.layers.Dense(6)])
  text_head = tf_keras.Sequential([tf_keras.Input([6]), heads.VideoHead(D)])
  return video_model, text_encoder, text_head


def _step(stage=2, optimizers=None, lr=0.1, **kwargs):
  """One step on fresh models, loss state and batch; returns (metrics,
  weights before, weights after, the variables)."""
  video_model, text_encoder, text_head = _models(0)
  loss_module = nce.CrossModalNCE(N, D, num_negatives=3, bank_momentum=0.25)
  curriculum = curriculum_lib.Curriculum()
  if optimizers is None:
    optimizers = {group: tf_keras.optimizers.SGD(lr)
                  for group in curriculum.learning_rates(stage)}
  variables = (video_model.trainable_variables +
               text_encoder.trainable_variables +
               text_head.trainable_variables)
  before = [v.numpy().copy() for v in variables]
  rng = np.random.default_rng(0)
  metrics = train_step.cpd_train_step(
      loss_module, video_model, text_encoder, text_head, curriculum,
      optimizers, tf.constant(rng.normal(size=(4, IN)), tf.float32),
      tf.constant(rng.normal(size=(4, IN)), tf.float32),
      tf.constant([0, 3, 7, 11]), stage, **kwargs)
  return metrics, before, [v.numpy() for v in variables], variables


def test_weight_decay_is_the_coupled_l2_term_and_off_by_default():
  # SGD with coupled decay: w <- w - lr (g + wd w) for kernels, so the step
  # with decay differs from the one without by exactly -lr wd w on every
  # kernel and not at all on biases; leaving `weight_decay` out is no decay.
  lr, wd = 0.1, 0.05
  _, before, plain, variables = _step(lr=lr, weight_decay=0.0)
  _, _, default, _ = _step(lr=lr)
  _, _, decayed, _ = _step(lr=lr, weight_decay=wd)
  kernels = 0
  for v, w0, a, b, c in zip(variables, before, plain, default, decayed):
    np.testing.assert_allclose(b, a, rtol=0, atol=0)
    expected = -lr * wd * w0 if 'kernel' in v.name else np.zeros_like(w0)
    kernels += 'kernel' in v.name
    np.testing.assert_allclose(c - a, expected, rtol=1e-4, atol=1e-7,
                               err_msg=v.name)
  assert kernels == 4


def test_a_missing_optimizer_group_is_refused():
  with pytest.raises(ValueError, match=r"lacks groups \['text_encoder'\]"):
    _step(stage=2, optimizers={'rest': tf_keras.optimizers.SGD(0.1)})


def test_clipping_adds_the_norm_to_the_loss_metrics():
  plain, _, _, _ = _step()
  clipped, _, _, _ = _step(clip_norm=1e6)
  assert set(clipped) == set(plain) | {'gradient_norm'}
  assert 'nce/loss' in plain
  for name in plain:
    np.testing.assert_allclose(float(clipped[name]), float(plain[name]),
                               rtol=1e-6)
  assert float(clipped['gradient_norm']) > 0
