"""Tests of I3D inflation: a static clip through the inflated 3D network gives
the 2D network's features on that frame, whatever the 2D checkpoint format."""

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
  # What Model Garden's trainer writes: the classification model, the
  # optimizer with its slots, the step; a directory of `ckpt-N`.
  classifier = classification_model.ClassificationModel(
      resnet, num_classes=5,
      input_specs=tf_keras.layers.InputSpec(shape=[None, SIZE, SIZE, 3]))
  optimizer = tf_keras.optimizers.SGD(0.1, momentum=0.9)
  optimizer.build(classifier.trainable_variables)
  trainer = tf.train.Checkpoint(
      global_step=tf.Variable(7, dtype=tf.int64), model=classifier,
      optimizer=optimizer)
  tf.train.CheckpointManager(trainer, str(d / 'mg_trainer'), 1).save()
  paths['mg_trainer'] = str(d / 'mg_trainer')
  return paths


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


# ---- Bad checkpoints ----


def test_mismatching_structure_names_first_layer(checkpoints):
  backbone = models.build_backbone('slowonly_r18',
                                   input_shape=(2, SIZE, SIZE, 3))
  before = [w.numpy() for w in backbone.weights]
  # Stem conv and BN pair up; res2 of the basic-block net has no projection,
  # where the bottleneck's first block starts with one.
  with pytest.raises(ValueError, match=r'#2 slowonly_r18/res2_block1/conv_a'):
    inflation.inflate_from_2d(backbone, checkpoints['h5'])
  for b, w in zip(before, backbone.weights):
    np.testing.assert_array_equal(b, w.numpy())  # Nothing assigned.


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
