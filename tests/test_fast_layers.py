"""Tests of spl.models.fast_layers: pointwise convs as matmuls, 4D-view BN."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official.vision.modeling.backbones import resnet_3d as mg_resnet_3d
from spl import models
from spl.models import factory
from spl.models import fast_layers
from spl.models import resnet3d_g


def _pair(**kwargs):
  """A plain Conv3D and a converted copy with the same weights."""
  conv = tf_keras.layers.Conv3D(**kwargs)
  fast = tf_keras.layers.Conv3D(**kwargs)
  assert fast_layers.use_fast_layers(fast)['PointwiseConv3D'] == 1
  assert isinstance(fast, fast_layers.PointwiseConv3D)
  return conv, fast


def _value_and_grads(layer, x):
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x)
    # A loss that weights every output differently.
    loss = tf.reduce_sum(tf.reshape(y, [-1]) * tf.cos(
        tf.range(tf.size(y), dtype=y.dtype)))
  return [y] + tape.gradient(loss, [x] + layer.trainable_variables)


@pytest.mark.parametrize('strides', [(1, 1, 1), (1, 2, 2), (2, 2, 2),
                                     (2, 1, 3)])
@pytest.mark.parametrize('padding', ['same', 'valid'])
@pytest.mark.parametrize('use_bias', [True, False])
def test_matches_conv3d_values_and_gradients(strides, padding, use_bias):
  conv, fast = _pair(filters=6, kernel_size=1, strides=strides,
                     padding=padding, use_bias=use_bias,
                     bias_initializer='random_normal', activation='relu')
  # Odd sizes, so strides do not divide them.
  x = tf.random.stateless_normal((2, 5, 7, 9, 4), seed=(1, 2))
  conv(x)
  fast(x)
  fast.set_weights(conv.get_weights())
  expected = _value_and_grads(conv, x)
  got = _value_and_grads(fast, x)
  assert got[0].shape == expected[0].shape
  assert len(got) == len(expected) == (4 if use_bias else 3)
  for e, g in zip(expected, got):
    np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-5, atol=1e-5)


def test_unknown_dims_keep_static_shape_where_known():
  _, fast = _pair(filters=3, kernel_size=(1, 1, 1), strides=(1, 2, 2),
                  padding='same')

  @tf.function(input_signature=[
      tf.TensorSpec([None, None, 8, None, 5], tf.float32)])
  def call(x):
    y = fast(x)
    assert y.shape.as_list() == [None, None, 4, None, 3], y.shape
    return y

  y = call(tf.ones((1, 3, 8, 7, 5)))
  assert y.shape == (1, 3, 4, 4, 3)


def test_mixed_precision_computes_in_bfloat16():
  tf_keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    conv, fast = _pair(filters=8, kernel_size=1)
  finally:
    tf_keras.mixed_precision.set_global_policy('float32')
  x = tf.random.stateless_normal((2, 2, 4, 4, 16), seed=(3, 4))
  conv(x)
  fast(x)
  fast.set_weights(conv.get_weights())
  y = fast(x)
  assert y.dtype == tf.bfloat16
  assert fast.kernel.dtype == tf.float32  # Variables stay float32.
  np.testing.assert_allclose(
      tf.cast(y, tf.float32).numpy(),
      tf.cast(conv(x), tf.float32).numpy(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize('kwargs', [
    dict(kernel_size=(3, 1, 1)),
    dict(kernel_size=1, dilation_rate=2),
    dict(kernel_size=1, groups=2),
])
def test_other_convolutions_are_left_alone(kwargs):
  layer = tf_keras.layers.Conv3D(filters=4, **kwargs)
  layer(tf.ones((1, 4, 4, 4, 4)))
  assert not fast_layers.is_pointwise(layer)
  assert fast_layers.use_fast_layers(layer)['PointwiseConv3D'] == 0
  assert type(layer) is tf_keras.layers.Conv3D  # pylint: disable=unidiomatic-typecheck
  transpose = tf_keras.layers.Conv3DTranspose(filters=4, kernel_size=1)
  assert not fast_layers.is_pointwise(transpose)
  assert fast_layers.use_fast_layers(transpose)['PointwiseConv3D'] == 0


def test_ineligible_layer_names_the_problem():
  layer = fast_layers.PointwiseConv3D(filters=2, kernel_size=3, name='bad')
  with pytest.raises(ValueError, match=r'bad: PointwiseConv3D needs a 1x1x1'):
    layer(tf.ones((1, 3, 3, 3, 2)))


def _unconverted_r3d50(name, shape):
  """The network as `factory` builds it, before `use_fast_layers`."""
  specs = tf_keras.layers.InputSpec(shape=(None,) + shape)
  if name == 'r3d50_mg':  # Model Garden's own construction.
    return mg_resnet_3d.ResNet3D(
        model_id=50, temporal_strides=[1, 1, 1, 1],
        temporal_kernel_sizes=[list(k)
                               for k in factory.R3D50_MG_TEMPORAL_KERNELS],
        use_self_gating=[True] * 4, input_specs=specs, name='resnet3d')
  return resnet3d_g.ResNet3DG(
      model_id=50, temporal_strides=[1, 1, 1, 1],
      temporal_kernel_sizes=[list(k)
                             for k in factory.R3D50_G_TEMPORAL_KERNELS],
      use_self_gating=[True] * 4, input_specs=specs,
      stem_conv_temporal_kernel_size=5, stem_conv_temporal_stride=1,
      stem_pool_temporal_stride=1, name='resnet3d')


# name, bottlenecks with temporal kernel 1 (their reducing conv is 1x1x1),
# gates.
@pytest.mark.parametrize('name,t1_blocks,gates',
                         [('r3d50_g', 6, 16), ('r3d50_mg', 7, 4)])
def test_r3d50_uses_matmuls_and_shares_checkpoints(name, t1_blocks, gates,
                                                   tmp_path):
  # 8x64x64 clips, so that res5 still has 2x2 positions: in training mode
  # batch norm over fewer values amplifies float round-off without bound.
  shape = (8, 64, 64, 3)
  ours = models.build_backbone(name, input_shape=shape)
  net = ours.get_layer('resnet3d')
  convs = [l for l in net.submodules
           if isinstance(l, tf_keras.layers.Conv3D)]
  fast = [l for l in convs if isinstance(l, fast_layers.PointwiseConv3D)]
  # Per bottleneck: the reducing conv when its temporal kernel is 1, the
  # expanding conv (16); 4 projection shortcuts; the gates. (Model Garden
  # creates a shortcut conv in every block but builds and calls it only in
  # the 4 projection blocks.)
  assert len([l for l in fast if l.built]) == t1_blocks + 16 + 4 + gates
  assert all(fast_layers.is_pointwise(l) == (l in fast) for l in convs)
  norms = [l for l in net.submodules
           if isinstance(l, tf_keras.layers.BatchNormalization)]
  # Stem + 3 per bottleneck + 4 projection shortcuts, all built and 5D.
  assert len([l for l in norms if l.built]) == 1 + 3 * 16 + 4
  assert all(isinstance(l, fast_layers.FlatBatchNormalization) == l.built
             for l in norms)

  reference = _unconverted_r3d50(name, shape)
  path = tf.train.Checkpoint(net=reference).write(str(tmp_path / 'mg'))
  tf.train.Checkpoint(net=net).read(path).assert_consumed()
  x = tf.random.stateless_uniform((2,) + shape, seed=(5, 6))
  # Training mode normalises by batch statistics through 53 batch norms,
  # which amplify the round-off of the reordered sums (up to ~1e-4 of the
  # output scale seen); a wrong layout or statistic differs by O(1).
  for training, tolerance in ((False, 1e-4), (True, 2e-3)):
    expected = reference(x, training=training)['5'].numpy()
    np.testing.assert_allclose(net(x, training=training)['5'].numpy(),
                               expected, rtol=0,
                               atol=tolerance * np.abs(expected).max())
  # And back: our checkpoint restores into the unconverted network.
  path = tf.train.Checkpoint(net=net).write(str(tmp_path / 'ours'))
  again = _unconverted_r3d50(name, shape)
  tf.train.Checkpoint(net=again).read(path).assert_consumed()
  assert len(again.weights) == len(net.weights)
  for a, b in zip(again.weights, net.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize('name', ['slowonly_r18', 'slowonly_r50', 'tiny3d'])
def test_other_3d_backbones_convert_their_layers(name):
  net = models.build_backbone(name, input_shape=(4, 32, 32, 3))
  convs = [l for l in net.submodules if isinstance(l, tf_keras.layers.Conv3D)]
  assert all(isinstance(l, fast_layers.PointwiseConv3D) ==
             fast_layers.is_pointwise(l) for l in convs)
  norms = [l for l in net.submodules
           if isinstance(l, tf_keras.layers.BatchNormalization) and l.built]
  assert norms and all(
      isinstance(l, fast_layers.FlatBatchNormalization) for l in norms)


def test_2d_backbone_is_left_alone():
  net = models.build_backbone('r2d50', input_shape=(32, 32, 3))
  assert not any(isinstance(l, (fast_layers.PointwiseConv3D,
                                fast_layers.FlatBatchNormalization))
                 for l in net.submodules)


def _bn_pair(**kwargs):
  """A plain 5D BatchNormalization and a converted copy, same weights."""
  x = tf.random.stateless_normal((2, 3, 5, 7, 4), seed=(7, 8)) * 3.0 + 1.0
  norm = tf_keras.layers.BatchNormalization(**kwargs)
  flat = tf_keras.layers.BatchNormalization(**kwargs)
  norm(x)
  flat(x)
  assert fast_layers.use_fast_layers(flat)['FlatBatchNormalization'] == 1
  assert isinstance(flat, fast_layers.FlatBatchNormalization)
  rng = np.random.RandomState(0)
  weights = [w + rng.uniform(0.1, 0.5, w.shape).astype(np.float32)
             for w in norm.get_weights()]
  norm.set_weights(weights)
  flat.set_weights(weights)
  return norm, flat, x


@pytest.mark.parametrize('kwargs', [dict(), dict(center=False, scale=False),
                                    dict(momentum=0.9, epsilon=1e-5)])
def test_flat_batch_norm_matches_values_gradients_and_statistics(kwargs):
  norm, flat, x = _bn_pair(**kwargs)
  for training in (True, False):
    results = []
    for layer in (norm, flat):
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.reshape(y, [-1]) * tf.cos(
            tf.range(tf.size(y), dtype=y.dtype)))
      results.append([y] + tape.gradient(
          loss, [x] + layer.trainable_variables) +
                     [v.numpy() for v in layer.non_trainable_variables])
    expected, got = results
    assert got[0].shape == expected[0].shape == x.shape
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
      # Moving statistics too: updated the same way in training mode.
      np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-4,
                                 atol=1e-4)


def test_flat_batch_norm_inside_a_function_with_unknown_dims():
  _, flat, _ = _bn_pair()

  @tf.function(input_signature=[
      tf.TensorSpec([None, None, 5, None, 4], tf.float32)])
  def call(x):
    y = flat(x, training=True)
    assert y.shape.as_list() == [None, None, 5, None, 4], y.shape
    return y

  x = tf.random.stateless_normal((3, 2, 5, 6, 4), seed=(1, 1))
  y = call(x).numpy().reshape(-1, 4)
  # Training mode: each channel normalised over all B*T*H*W values.
  np.testing.assert_allclose(
      (y - flat.beta.numpy()) / flat.gamma.numpy(),
      _normalised(x.numpy().reshape(-1, 4), flat.epsilon), atol=1e-4)


def _normalised(x, epsilon):
  return (x - x.mean(0)) / np.sqrt(x.var(0) + epsilon)


def test_other_batch_norms_are_left_alone():
  four_d = tf_keras.layers.BatchNormalization()
  four_d(tf.ones((2, 3, 3, 4)))
  unbuilt = tf_keras.layers.BatchNormalization()
  not_fused = tf_keras.layers.BatchNormalization(fused=False)
  not_fused(tf.ones((2, 2, 3, 3, 4)))
  for layer in (four_d, unbuilt, not_fused):
    assert not fast_layers.is_flattenable_batch_norm(layer)
    assert fast_layers.use_fast_layers(layer)['FlatBatchNormalization'] == 0


def test_flat_batch_norm_built_directly_and_on_other_ranks():
  # As `from_config` of a converted functional model creates it.
  x5 = tf.random.stateless_normal((2, 3, 4, 4, 6), seed=(2, 3))
  for x in (x5, tf.reshape(x5, (6, 4, 4, 6))):
    direct = fast_layers.FlatBatchNormalization()
    plain = tf_keras.layers.BatchNormalization()
    np.testing.assert_allclose(direct(x, training=True).numpy(),
                               plain(x, training=True).numpy(), atol=1e-5)


# ---- The switch and the private API it relies on ----


def test_the_private_tf_keras_api_the_rewrites_rely_on_is_there():
  # Fails by name when a tf_keras upgrade moves what the subclasses override.
  problems = fast_layers.check_private_api()
  assert not problems, 'tf_keras changed under spl.models.fast_layers: ' + (
      '; '.join(problems))


def test_a_changed_private_api_is_named(monkeypatch):
  monkeypatch.setattr(tf_keras.layers.Conv3D, 'convolution_op', None)
  assert fast_layers.check_private_api() == [fast_layers.PRIVATE_API[2]]
  monkeypatch.undo()
  monkeypatch.setattr(tf_keras.layers.BatchNormalization, '_fused_batch_norm',
                      None)
  assert fast_layers.check_private_api() == [fast_layers.PRIVATE_API[0]]


def _converted(mode, **kwargs):
  net = models.build_backbone('tiny3d', input_shape=(2, 8, 8, 3),
                              fast_layers=mode, **kwargs)
  return sum(isinstance(l, (fast_layers.PointwiseConv3D,
                            fast_layers.FlatBatchNormalization))
             for l in net.submodules)


def test_switch_on_off_and_auto_by_device(monkeypatch):
  assert _converted('on') > 0
  assert _converted('off') == 0
  # 'auto': measured on CPU only, so not where an accelerator is present.
  monkeypatch.setattr(fast_layers, 'accelerators_present', lambda: False)
  assert _converted('auto') == _converted('on')
  monkeypatch.setattr(fast_layers, 'accelerators_present', lambda: True)
  assert _converted('auto') == 0
  assert _converted('on') > 0
  with pytest.raises(ValueError, match="`fast_layers` must be one of"):
    _converted('fast')
  with pytest.raises(ValueError, match="`fast_layers` must be one of"):
    models.build_backbone('r2d50', input_shape=(32, 32, 3),
                          fast_layers='yes')


def test_a_changed_api_turns_auto_off_and_on_into_an_error(monkeypatch,
                                                           caplog):
  monkeypatch.setattr(fast_layers, 'accelerators_present', lambda: False)
  monkeypatch.setattr(fast_layers, '_API_PROBLEMS',
                      [fast_layers.PRIVATE_API[1]])
  assert _converted('auto') == 0
  assert '_data_format' in caplog.text
  with pytest.raises(RuntimeError, match='BatchNormalization._data_format'):
    _converted('on')


def test_classifier_config_keeps_the_switch():
  model = factory.build_classifier('tiny3d', num_classes=3,
                                   input_shape=(2, 8, 8, 3), fast_layers='off')
  rebuilt = type(model).from_config(model.get_config())
  for m in (model, rebuilt):
    assert not any(isinstance(l, fast_layers.PointwiseConv3D)
                   for l in m.submodules)
