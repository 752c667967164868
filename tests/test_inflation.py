"""Tests of I3D inflation: a static clip through the inflated 3D network gives
the 2D network's features on that frame, whatever the 2D checkpoint format;
ResNet-50 into the bottleneck backbones, Model Garden's ResNet-34 into
'slowonly_r34' (exact into 'slowonly_r34_mg'), and each refused for the
other's backbones."""

# Tests look inside layers.
# pylint: disable=protected-access

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official.vision.modeling import classification_model
from official.vision.modeling.backbones import resnet as mg_resnet
from official.vision.modeling.layers import nn_blocks_3d
from spl import input_pipeline
from spl import models
from spl.models import factory
from spl.models import inflation

SIZE = 32
# The SPL paper's R3D-50-G (Table 8).
R3D50 = 'r3d50_g'
R3D50_GATES = 16  # a gate in every residual block


def randomise_batch_norms(model, with_bias=False):
  """Random BN parameters and statistics (and conv biases), so that a test
  fails if the 3D network does not get them or gets them unconverted."""
  rng = np.random.default_rng(0)
  for w in model.weights:
    if 'gamma' in w.name or 'moving_variance' in w.name:
      w.assign(rng.uniform(0.5, 1.5, w.shape))
    elif 'beta' in w.name or 'moving_mean' in w.name or (
        with_bias and w.name.endswith('bias:0')):
      w.assign(rng.normal(0.0, 0.1, w.shape))


@pytest.fixture(scope='module')
def resnet2d():
  """An r2d50 backbone (Model Garden's ResNet-50) with random BN values."""
  model = models.build_backbone('r2d50', input_shape=(SIZE, SIZE, 3))
  randomise_batch_norms(model)
  return model


@pytest.fixture(scope='module')
def checkpoints(resnet2d, tmp_path_factory):
  """The Model Garden ResNet-50 weights in every accepted TF/r2d50 format."""
  d = tmp_path_factory.mktemp('r2d50')
  paths = {'h5': str(d / 'weights.h5'), 'keras_tf': str(d / 'keras' / 'w')}
  resnet2d.save_weights(paths['h5'])
  resnet2d.save_weights(paths['keras_tf'])
  resnet = resnet2d.get_layer('resnet2d')
  paths['mg_backbone'] = tf.train.Checkpoint(backbone=resnet).write(
      str(d / 'mg' / 'ckpt'))
  paths['directory'] = str(d / 'keras')
  paths['mg_trainer'] = model_garden_trainer_checkpoint(
      resnet, d / 'mg_trainer')
  return paths


def model_garden_trainer_checkpoint(backbone, directory) -> str:
  """What Model Garden's trainer writes: the classification model around
  `backbone`, the optimizer with its slots, the step; a directory of
  `ckpt-N`. Returns the directory."""
  classifier = classification_model.ClassificationModel(
      backbone, num_classes=5,
      input_specs=tf_keras.layers.InputSpec(shape=[None, SIZE, SIZE, 3]))
  optimizer = tf_keras.optimizers.SGD(0.1, momentum=0.9)
  optimizer.build(classifier.trainable_variables)
  trainer = tf.train.Checkpoint(
      global_step=tf.Variable(7, dtype=tf.int64), model=classifier,
      optimizer=optimizer)
  tf.train.CheckpointManager(trainer, str(directory), 1).save()
  return str(directory)


@pytest.fixture(scope='module')
def keras_resnet50(tmp_path_factory):
  """Keras Applications' ResNet-50 (random, no download) and its files."""
  model = tf_keras.applications.ResNet50(weights=None, include_top=True,
                                         input_shape=(SIZE, SIZE, 3),
                                         classes=7)
  randomise_batch_norms(model, with_bias=True)
  d = tmp_path_factory.mktemp('keras')
  paths = {'weights': str(d / 'resnet50.h5'),
           'whole_model': str(d / 'resnet50_model.h5')}
  model.save_weights(paths['weights'])
  model.save(paths['whole_model'])
  return model, paths


@pytest.fixture
def frames():
  return tf.random.stateless_uniform([2, SIZE, SIZE, 3], seed=(1, 2)) * 2 - 1


def _static_clip(frames, t):
  return tf.repeat(frames[:, None], t, axis=1)


def _assert_close(actual, expected):
  np.testing.assert_allclose(actual, expected, rtol=1e-4,
                             atol=1e-4 * np.abs(expected).max())


# ---- Model Garden / r2d50 checkpoints ----


@pytest.mark.parametrize('fmt', ['h5', 'directory', 'mg_backbone',
                                 'mg_trainer'])
def test_reads_every_model_garden_format(resnet2d, checkpoints, fmt):
  read = inflation.read_2d_resnet50(checkpoints[fmt])
  layers2d = inflation._conv_bn_layers(resnet2d)
  assert [l.name for l in read.layers] == list(inflation.RESNET50_LAYER_NAMES)
  assert len(read.layers) == len(layers2d) == 106
  for l2, (_, layer) in zip(read.layers, layers2d):
    for value, w in zip(l2.weights.values(), layer.weights):
      np.testing.assert_array_equal(value, w.numpy())
    if l2.is_conv:
      assert l2.strides == tuple(layer.strides)  # Model Garden's: checked.


def test_center_inflation_matches_2d_on_static_clip(resnet2d, checkpoints,
                                                   frames):
  # A classifier: the backbone is inflated, the head is left alone.
  model = models.build_classifier('slowonly_r50', num_classes=3,
                                  input_shape=(4, SIZE, SIZE, 3))
  head_before = [w.numpy() for w in model.head.weights]
  assert inflation.inflate_from_2d(model, checkpoints['keras_tf'],
                                   method='center') == 106
  expected = resnet2d(frames, training=False).numpy()
  actual = model.backbone(_static_clip(frames, 4), training=False).numpy()
  _assert_close(actual, expected)
  for before, after in zip(head_before, model.head.weights):
    np.testing.assert_array_equal(before, after.numpy())


def test_i3d_mean_inflation(resnet2d, checkpoints, frames):
  # Slow-only R50 has 9 temporal 3x1x1 convs (res4, res5); zero padding only
  # reaches the 9 border frames on each side, so the middle of 19 frames must
  # equal the 2D feature map exactly.
  t = 19
  backbone = models.build_backbone('slowonly_r50',
                                   input_shape=(t, SIZE, SIZE, 3))
  inflation.inflate_from_2d(backbone, checkpoints['h5'])

  pairs = list(zip(inflation._conv_bn_layers(backbone),
                   inflation._conv_bn_layers(resnet2d)))
  temporal = [(l3, l2) for (_, l3), (_, l2) in pairs
              if isinstance(l3, tf_keras.layers.Conv3D) and
              l3.kernel.shape[0] == 3]
  assert len(temporal) == 9  # res4 (6 blocks) and res5 (3 blocks).
  for l3, l2 in temporal:
    kernel, kernel2d = l3.kernel.numpy(), l2.kernel.numpy()
    assert kernel.shape == (3,) + kernel2d.shape
    for i in range(3):
      np.testing.assert_allclose(kernel[i], kernel2d / 3, rtol=1e-6)

  fmap2d = tf_keras.Model(resnet2d.input,
                          resnet2d.get_layer('global_pool').input)
  fmap3d = tf_keras.Model(backbone.input,
                          backbone.get_layer('global_pool').input)
  expected = fmap2d(frames, training=False).numpy()
  actual = fmap3d(_static_clip(frames, t), training=False).numpy()
  _assert_close(actual[:, t // 2], expected)
  # The border frames do see the zero padding: the test can tell.
  assert np.abs(actual[:, 0] - expected).max() > 1e-2


def test_r3d50_without_gating_matches_2d(resnet2d, checkpoints, frames):
  # Without self-gating the R3D-50 mirrors the 2D ResNet-50 exactly.
  plain = models.build_backbone(R3D50, input_shape=(4, SIZE, SIZE, 3),
                                use_self_gating=False)
  inflation.inflate_from_2d(plain, checkpoints['mg_trainer'],
                            method='center')
  _assert_close(plain(_static_clip(frames, 4), training=False).numpy(),
                resnet2d(frames, training=False).numpy())


def test_2d_target_is_a_plain_copy(resnet2d, checkpoints, frames):
  # The image experiment's r2d50 takes an ImageNet initialisation too.
  target = models.build_backbone('r2d50', input_shape=(SIZE, SIZE, 3))
  inflation.inflate_from_2d(target, checkpoints['mg_backbone'])
  for a, b in zip(target.weights, resnet2d.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_epsilon_of_the_checkpoint_is_converted(resnet2d, checkpoints,
                                                frames):
  # A Model Garden ImageNet ResNet-50 trained with epsilon 1e-5 (its
  # `resnet_imagenet` experiment) into a 3D network with 1e-3: the same
  # inference output as the 2D network with its own epsilon.
  source = models.build_backbone('r2d50', input_shape=(SIZE, SIZE, 3),
                                 norm_epsilon=1e-5)
  source.set_weights(resnet2d.get_weights())
  plain = models.build_backbone(R3D50, input_shape=(4, SIZE, SIZE, 3),
                                use_self_gating=False)
  inflation.inflate_from_2d(plain, checkpoints['mg_backbone'],
                            method='center', checkpoint_norm_epsilon=1e-5)
  expected = source(frames, training=False).numpy()
  _assert_close(plain(_static_clip(frames, 4), training=False).numpy(),
                expected)
  # Without the conversion the output differs: the test can tell.
  inflation.inflate_from_2d(plain, checkpoints['mg_backbone'],
                            method='center')
  assert np.abs(plain(_static_clip(frames, 4), training=False).numpy() -
                expected).max() > 1e-3 * np.abs(expected).max()


@pytest.mark.slow
def test_r3d50_inflation_keeps_gates(resnet2d, checkpoints):
  # The gates have no 2D counterpart and keep their initialisation.
  gated = models.build_backbone(R3D50, input_shape=(4, SIZE, SIZE, 3))
  gates = [l._self_gating for l in gated.get_layer('resnet3d').layers
           if isinstance(l, nn_blocks_3d.BottleneckBlock3D) and
           l._self_gating is not None]
  assert len(gates) == R3D50_GATES
  gate_weights = [w.numpy() for g in gates for w in g.weights]
  inflation.inflate_from_2d(gated, checkpoints['h5'])
  for before, w in zip(gate_weights, [w for g in gates for w in g.weights]):
    np.testing.assert_array_equal(before, w.numpy())
  stem = gated.get_layer('resnet3d').layers[1]
  stem2d = resnet2d.get_layer('resnet2d').layers[1]
  assert stem.kernel.shape == (5, 7, 7, 3, 64)
  np.testing.assert_allclose(stem.kernel.numpy()[2],
                             stem2d.kernel.numpy() / 5, rtol=1e-6)


# ---- Keras Applications ResNet-50 ----


def _to_caffe(pixels):
  """Keras Applications' 'caffe' input of [0, 255] RGB pixels."""
  return pixels[..., ::-1] - np.asarray(inflation.KERAS_CAFFE_MEAN_BGR,
                                        np.float32)


def _to_ours(pixels):
  mean = np.asarray(input_pipeline.IMAGENET_MEAN, np.float32)
  std = np.asarray(input_pipeline.IMAGENET_STD, np.float32)
  return (pixels / 255.0 - mean) / std


@pytest.mark.parametrize('fmt', ['weights', 'whole_model'])
def test_keras_stem_on_static_clip_equals_keras_stem(keras_resnet50, fmt):
  # Function-level proof of the bias folding, epsilon rescaling and colour
  # conversion: with method='center' the inflated 3D stem (conv, BN, ReLU) on
  # a static clip of normalised RGB frames gives Keras's stem on the same
  # frames in Keras's BGR 'caffe' convention.
  keras_model, paths = keras_resnet50
  backbone = models.build_backbone(R3D50, input_shape=(4, SIZE, SIZE, 3))
  inflation.inflate_from_2d(backbone, paths[fmt], method='center')
  (_, conv3d), (_, bn3d) = inflation._conv_bn_layers(backbone)[:2]
  pixels = np.random.default_rng(3).uniform(
      0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
  clip = _static_clip(tf.constant(_to_ours(pixels)), 4)
  ours = tf.nn.relu(bn3d(conv3d(clip), training=False)).numpy()

  pad, conv, bn = (keras_model.get_layer(n)
                   for n in ('conv1_pad', 'conv1_conv', 'conv1_bn'))

  def keras_stem(caffe):
    return tf.nn.relu(bn(conv(caffe), training=False)).numpy()

  # 1. Keras's own stem (symmetric zero padding 3 of the caffe input). Model
  # Garden's 'same' pads (2, 3), so output pixel i of ours sees input rows
  # 2i-2..2i+4, Keras's 2i-3..2i+3: Keras on the image shifted by one pixel,
  # away from the borders.
  expected = keras_stem(pad(_to_caffe(pixels[:, 1:, 1:])))
  inner = slice(2, 14)
  for t in range(4):
    _assert_close(ours[:, t, inner, inner], expected[:, inner, inner])
  # The border differs (the test can tell), by the shift and the padding.
  assert np.abs(ours[:, 0] - expected).max() > 1e-2 * np.abs(expected).max()
  # 2. Everywhere, borders included, when Keras's conv sees Model Garden's
  # padding with the pixel our zero stands for (ImageNet's mean pixel).
  mean_pixel = 255.0 * np.asarray(input_pipeline.IMAGENET_MEAN, np.float32)
  padded = np.pad(pixels - mean_pixel, [[0, 0], [2, 3], [2, 3], [0, 0]])
  expected = keras_stem(_to_caffe(padded + mean_pixel))
  for t in range(4):
    _assert_close(ours[:, t], expected)


def test_keras_layers_compute_keras_functions(keras_resnet50):
  # Every conv + BN pair of the inflated network computes Keras's conv + BN
  # (bias folded, epsilon rescaled) on a static clip, except where ResNet v1
  # (Keras) and v1.5 (Model Garden) put the stride 2 differently.
  keras_model, paths = keras_resnet50
  plain = models.build_backbone(R3D50, input_shape=(4, SIZE, SIZE, 3),
                                use_self_gating=False)
  inflation.inflate_from_2d(plain, paths['weights'], method='center')
  layers3d = inflation._conv_bn_layers(plain)
  rng = np.random.default_rng(4)
  other_stride = []
  for i in range(2, len(layers3d), 2):
    name = inflation.RESNET50_LAYER_NAMES[i]
    conv2d = keras_model.get_layer(name)
    bn2d = keras_model.get_layer(name.replace('_conv', '_bn'))
    (_, conv3d), (_, bn3d) = layers3d[i], layers3d[i + 1]
    if tuple(conv2d.strides) != tuple(conv3d.strides)[1:]:
      other_stride.append(name)
      continue
    x = rng.normal(size=(1, 6, 6, conv2d.kernel.shape[2])).astype(np.float32)
    expected = bn2d(conv2d(x), training=False).numpy()
    actual = bn3d(conv3d(_static_clip(tf.constant(x), 3)),
                  training=False).numpy()
    for t in range(3):
      _assert_close(actual[:, t], expected)
  assert other_stride == [f'conv{s}_block1_{c}_conv' for s in (3, 4, 5)
                          for c in (1, 2)]


def test_keras_conversions_in_numbers(keras_resnet50):
  keras_model, paths = keras_resnet50
  read = inflation.read_2d_resnet50(paths['weights'])
  layers = {l.name: l for l in read.layers}
  stem = keras_model.get_layer('conv1_conv')
  std = np.asarray(input_pipeline.IMAGENET_STD)
  np.testing.assert_allclose(
      layers['conv1_conv'].weights['kernel'],
      stem.kernel.numpy()[:, :, ::-1, :] * 255.0 * std[:, None], rtol=1e-6)
  conv = keras_model.get_layer('conv4_block2_2_conv')
  bn = keras_model.get_layer('conv4_block2_2_bn')
  np.testing.assert_array_equal(layers['conv4_block2_2_conv'].weights[
      'kernel'], conv.kernel.numpy())
  np.testing.assert_allclose(
      layers['conv4_block2_2_bn'].weights['moving_mean'],
      bn.moving_mean.numpy() - conv.bias.numpy(), rtol=1e-6, atol=1e-7)
  assert layers['conv4_block2_2_bn'].epsilon == pytest.approx(1.001e-5)
  assert all(l.strides is None for l in read.layers)  # Paired by shape only.


# ---- Model Garden ResNet-34 -> slowonly_r34 ----


def _resnet34(identity_res2_projection=False):
  """Model Garden's ResNet-34 with random BN values; optionally with its res2
  projection shortcut made the identity (1x1 kernel I, BN that passes its
  input), i.e. the network the inflated slowonly_r34 computes."""
  model = mg_resnet.ResNet(model_id=34, input_specs=tf_keras.layers.InputSpec(
      shape=[None, SIZE, SIZE, 3]))
  randomise_batch_norms(model)
  if identity_res2_projection:
    block = [l for l in model.layers if l.name.startswith('residual_block')][0]
    block._shortcut.kernel.assign(np.eye(64, dtype=np.float32)[None, None])
    bn = block._norm0
    bn.gamma.assign(tf.sqrt(bn.moving_variance + bn.epsilon))
    bn.beta.assign(bn.moving_mean)
  return model


def _resnet34_checkpoints(model, directory):
  """`model` in the layouts Model Garden writes a ResNet-34 in."""
  paths = {'mg_backbone': tf.train.Checkpoint(backbone=model).write(
      str(directory / 'mg' / 'ckpt'))}
  model.save_weights(str(directory / 'weights' / 'w'))
  paths['mg_save_weights'] = str(directory / 'weights' / 'w')
  paths['mg_trainer'] = model_garden_trainer_checkpoint(
      model, directory / 'mg_trainer')
  return paths


@pytest.fixture(scope='module')
def resnet34(tmp_path_factory):
  """Model Garden's ResNet-34 and its checkpoints in every layout."""
  model = _resnet34()
  return model, _resnet34_checkpoints(model, tmp_path_factory.mktemp('r34'))


def _without_res2_projection(layers2d):
  """The 2D layers that have a slowonly_r34 counterpart, in order."""
  return layers2d[:2] + layers2d[4:]


@pytest.mark.parametrize('fmt', ['mg_trainer', 'mg_backbone',
                                 'mg_save_weights'])
def test_reads_every_model_garden_resnet34_format(resnet34, fmt):
  model, paths = resnet34
  read = inflation.read_2d_resnet50(paths[fmt])  # train_lib's entry point.
  assert read.depth == 34 and read.architecture == '2D ResNet-34'
  layout = inflation.RESNET_LAYOUTS[34]
  assert [l.name for l in read.layers] == [n for n, _, _ in layout]
  layers2d = inflation._conv_bn_layers(model)
  assert len(read.layers) == len(layers2d) == 74
  for l2, (_, layer) in zip(read.layers, layers2d):
    for value, w in zip(l2.weights.values(), layer.weights):
      np.testing.assert_array_equal(value, w.numpy())
  assert read.layers[2].name == 'conv2_block1_0_conv'  # The res2 projection.


@pytest.mark.parametrize('method', ['mean', 'center'])
def test_resnet34_kernels_inflated_into_slowonly_r34(resnet34, method):
  model, paths = resnet34
  backbone = models.build_backbone('slowonly_r34',
                                   input_shape=(4, SIZE, SIZE, 3))
  assigned = inflation.inflate_from_2d(backbone, paths['mg_trainer'],
                                       method=method)
  layers3d = inflation._conv_bn_layers(backbone)
  layers2d = _without_res2_projection(inflation._conv_bn_layers(model))
  assert assigned == len(layers3d) == len(layers2d) == 72
  temporal = 0
  for (p3, l3), (_, l2) in zip(layers3d, layers2d):
    if isinstance(l3, tf_keras.layers.BatchNormalization):
      for a, b in zip(l3.weights, l2.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
      continue
    kernel, kernel2d = l3.kernel.numpy(), l2.kernel.numpy()
    t = kernel.shape[0]
    assert kernel.shape == (t,) + kernel2d.shape, p3
    assert tuple(l3.strides)[1:] == tuple(l2.strides), p3
    if t == 1:
      np.testing.assert_array_equal(kernel[0], kernel2d)
      continue
    temporal += 1
    for i in range(t):
      if method == 'mean':
        np.testing.assert_allclose(kernel[i], kernel2d / t, rtol=1e-6)
      elif i == t // 2:
        np.testing.assert_array_equal(kernel[i], kernel2d)
      else:
        assert not kernel[i].any()
  assert temporal == 9  # conv_a of res4 (6 blocks) and res5 (3 blocks).


def _endpoint(model, layer_name):
  return tf_keras.Model(model.input, model.get_layer(layer_name).output)


def test_resnet34_static_clip_through_stem_and_res2(resnet34, frames,
                                                   tmp_path):
  # Stem to res3 have temporal kernel 1: both methods copy the 2D network
  # there, every frame (no temporal padding involved).
  model, paths = resnet34
  t = 3
  backbone = models.build_backbone('slowonly_r34',
                                   input_shape=(t, SIZE, SIZE, 3))
  inflation.inflate_from_2d(backbone, paths['mg_backbone'], method='mean')
  clip = _static_clip(frames, t)
  stem2d = tf_keras.Model(model.input, [
      l for l in model.layers
      if isinstance(l, tf_keras.layers.MaxPooling2D)][0].output)
  stem = _endpoint(backbone, 'stem_pool')(clip, training=False).numpy()
  expected = stem2d(frames, training=False).numpy()
  for i in range(t):
    _assert_close(stem[:, i], expected)
  # res2: Model Garden's block 1 adds BN(1x1 conv(x)), ours x (the dropped
  # projection), so res2 differs from this 2D network ...
  res2 = _endpoint(backbone, 'res2_block3')(clip, training=False).numpy()
  res2_2d = model(frames, training=False)['2'].numpy()
  assert np.abs(res2[:, 0] - res2_2d).max() > 1e-2 * np.abs(res2_2d).max()
  # ... and equals it, frame by frame, up to the pooled res5 features (with
  # 'center', exact on every frame), once that projection is the identity.
  identity = _resnet34(identity_res2_projection=True)
  path = tf.train.Checkpoint(backbone=identity).write(str(tmp_path / 'id'))
  inflation.inflate_from_2d(backbone, path, method='center')
  expected = identity(frames, training=False)
  actual = _endpoint(backbone, 'res2_block3')(clip, training=False).numpy()
  for i in range(t):
    _assert_close(actual[:, i], expected['2'].numpy())
  _assert_close(backbone(clip, training=False).numpy(),
                tf.reduce_mean(expected['5'], axis=(1, 2)).numpy())


def test_resnet34_into_slowonly_r34_mg_is_exact(resnet34, frames,
                                                 monkeypatch):
  # CPD Table 4's backbone ('slowonly_r34_mg'): the projection pairs with
  # Model Garden's, nothing is dropped, and 'center' gives the 2D network on
  # every frame of a static clip, at every stage's end and after the pool.
  model, paths = resnet34
  warnings = []
  monkeypatch.setattr(inflation.logging, 'warning',
                      lambda *a: warnings.append(a))
  t = 3
  classifier = models.build_classifier('slowonly_r34_mg', num_classes=3,
                                       input_shape=(t, SIZE, SIZE, 3))
  head_before = [w.numpy() for w in classifier.head.weights]
  assert inflation.inflate_from_2d(classifier, paths['mg_trainer'],
                                   method='center') == 74
  assert not warnings
  backbone = classifier.backbone
  block = backbone.get_layer('res2_block1')
  block2d = [l for l in model.layers
             if l.name.startswith('residual_block')][0]
  np.testing.assert_array_equal(block._shortcut.kernel.numpy()[0],
                                block2d._shortcut.kernel.numpy())
  for a, b in zip(block._norm0.weights, block2d._norm0.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  clip = _static_clip(frames, t)
  expected = model(frames, training=False)
  for level, last in (('2', 'res2_block3'), ('3', 'res3_block4'),
                      ('4', 'res4_block6'), ('5', 'res5_block3')):
    actual = _endpoint(backbone, last)(clip, training=False).numpy()
    for i in range(t):
      _assert_close(actual[:, i], expected[level].numpy())
  _assert_close(backbone(clip, training=False).numpy(),
                tf.reduce_mean(expected['5'], axis=(1, 2)).numpy())
  for b, w in zip(head_before, classifier.head.weights):
    np.testing.assert_array_equal(b, w.numpy())


def test_resnet34_into_plain_slowonly_r34_warns_of_the_drop(resnet34,
                                                           monkeypatch):
  _, paths = resnet34
  warnings = []
  monkeypatch.setattr(inflation.logging, 'warning',
                      lambda *a: warnings.append(a))
  backbone = models.build_backbone('slowonly_r34',
                                   input_shape=(2, SIZE, SIZE, 3))
  assert inflation.inflate_from_2d(backbone, paths['mg_backbone']) == 72
  assert len(warnings) == 1
  message = warnings[0][0] % warnings[0][1:]
  assert "['conv2_block1_0_conv', 'conv2_block1_0_bn']" in message
  assert "'slowonly_r34_mg'" in message


@pytest.mark.parametrize('backbone', ['slowonly_r50', 'r2d50'])
def test_resnet34_for_a_resnet50_backbone_is_refused(resnet34, backbone):
  _, paths = resnet34
  shape = (SIZE, SIZE, 3) if backbone == 'r2d50' else (2, SIZE, SIZE, 3)
  target = models.build_classifier(backbone, num_classes=3, input_shape=shape)
  before = [w.numpy() for w in target.weights]
  with pytest.raises(ValueError, match=(
      r"mg_trainer/ckpt-1' holds a 2D ResNet-34 .*backbone "
      rf"'{backbone}' is inflated from a 2D ResNet-50.*"
      r"\['slowonly_r34', 'slowonly_r34_mg'\]")):
    inflation.inflate(target, inflation.read_2d_resnet50(paths['mg_trainer']))
  for b, w in zip(before, target.weights):
    np.testing.assert_array_equal(b, w.numpy())


# ---- Bad checkpoints ----


@pytest.mark.parametrize('backbone,needs', [('slowonly_r18', 18),
                                             ('slowonly_r34', 34)])
def test_resnet50_for_a_basic_block_backbone_is_refused(checkpoints, backbone,
                                                        needs):
  target = models.build_backbone(backbone, input_shape=(2, SIZE, SIZE, 3))
  before = [w.numpy() for w in target.weights]
  with pytest.raises(ValueError, match=(
      f"weights.h5' holds a 2D ResNet-50 .*backbone '{backbone}' is inflated "
      f'from a 2D ResNet-{needs}')):
    inflation.inflate_from_2d(target, checkpoints['h5'])
  for b, w in zip(before, target.weights):
    np.testing.assert_array_equal(b, w.numpy())  # Nothing assigned.


def test_mismatching_structure_names_first_layer(checkpoints):
  # A network of no known depth is compared layer by layer.
  backbone = models.build_backbone('tiny3d', input_shape=(2, SIZE, SIZE, 3))
  before = [w.numpy() for w in backbone.weights]
  with pytest.raises(ValueError, match=r'#0 tiny3d/.*does not match 2D '
                     r'.*conv2d.*\(conv, \(7, 7, 3, 64\)\)'):
    inflation.inflate_from_2d(backbone, checkpoints['h5'])
  for b, w in zip(before, backbone.weights):
    np.testing.assert_array_equal(b, w.numpy())


def test_bad_checkpoints_and_arguments(checkpoints, tmp_path):
  backbone = models.build_backbone('tiny3d', input_shape=(2, SIZE, SIZE, 3))
  missing = str(tmp_path / 'missing')
  with pytest.raises(FileNotFoundError, match=f'{missing}.*does not exist'):
    inflation.inflate_from_2d(backbone, missing)
  with pytest.raises(FileNotFoundError, match='missing.h5.*does not exist'):
    inflation.inflate_from_2d(backbone, str(tmp_path / 'missing.h5'))
  with pytest.raises(FileNotFoundError, match='without a TF checkpoint'):
    inflation.inflate_from_2d(backbone, str(tmp_path))
  with pytest.raises(ValueError, match='`method` must be one of'):
    inflation.inflate_from_2d(backbone, checkpoints['h5'], method='zeros')
  text = tmp_path / 'notes.txt'
  text.write_text('not a checkpoint')
  with pytest.raises(ValueError, match='notes.txt.*not an HDF5 file'):
    inflation.read_2d_resnet50(str(text))
  # A checkpoint of another architecture: a 3D model's.
  other = tf.train.Checkpoint(backbone=backbone).write(str(tmp_path / 'tiny'))
  with pytest.raises(ValueError, match='tiny.*holds no 2D ResNet-50.*3D'):
    inflation.inflate_from_2d(backbone, other)


def test_truncated_files_are_named(keras_resnet50, checkpoints, tmp_path):
  _, paths = keras_resnet50
  for name, source in (('keras.h5', paths['weights']),
                       ('r2d50.h5', checkpoints['h5'])):
    data = open(source, 'rb').read()
    cut = tmp_path / name
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=f'{cut}.*(truncated|corrupt)'):
      inflation.read_2d_resnet50(str(cut))
  # A TF checkpoint whose data file lost its second half.
  prefix = tf.train.latest_checkpoint(checkpoints['mg_trainer'])
  copy = tmp_path / 'ckpt-1'
  for suffix in ('.index', '.data-00000-of-00001'):
    data = open(prefix + suffix, 'rb').read()
    if suffix.startswith('.data'):
      data = data[:len(data) // 2]
    open(str(copy) + suffix, 'wb').write(data)
  with pytest.raises(ValueError, match=f'{copy}'):
    inflation.read_2d_resnet50(str(copy))


def test_keras_files_of_other_architectures(tmp_path):
  mobilenet = tf_keras.applications.MobileNet(
      weights=None, alpha=0.25, input_shape=(SIZE, SIZE, 3), classes=3)
  path = str(tmp_path / 'mobilenet.h5')
  mobilenet.save_weights(path)
  with pytest.raises(ValueError,
                     match='mobilenet.h5.*not a Keras Applications ResNet-50'
                     '.*missing'):
    inflation.read_2d_resnet50(path)


def test_model_garden_resnet18_is_refused(tmp_path):
  resnet18 = mg_resnet.ResNet(
      model_id=18, input_specs=tf_keras.layers.InputSpec(
          shape=[None, SIZE, SIZE, 3]))
  classifier = classification_model.ClassificationModel(
      resnet18, num_classes=3,
      input_specs=tf_keras.layers.InputSpec(shape=[None, SIZE, SIZE, 3]))
  path = tf.train.Checkpoint(model=classifier).save(str(tmp_path / 'ckpt'))
  with pytest.raises(ValueError, match='ckpt-1.*has 21 2D conv kernels where a '
                     'ResNet-50 has 53'):
    inflation.read_2d_resnet50(str(tmp_path))
  assert os.path.exists(path + '.index')


@pytest.mark.slow
def test_keras_resnet101_is_refused(tmp_path):
  resnet101 = tf_keras.applications.ResNet101(
      weights=None, include_top=False, input_shape=(SIZE, SIZE, 3))
  path = str(tmp_path / 'resnet101.h5')
  resnet101.save_weights(path)
  with pytest.raises(ValueError, match=r'resnet101.h5.*layers with weights '
                     r'that a ResNet-50 does not have.*conv4_block'):
    inflation.read_2d_resnet50(path)
