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
  metrics = nce.cpd_train_step(loss_module, video_model, text_encoder,
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
  nce.cpd_train_step(nce.CrossModalNCE(N, D, num_negatives=3), video_model,
                     text_encoder, text_head, curriculum, optimizers, clips,
                     titles, tf.constant([1, 2, 5, 8]), 1)
  np.testing.assert_allclose(bn.moving_mean.numpy(),
                             0.5 * clips.numpy().mean(axis=0), rtol=1e-5)
