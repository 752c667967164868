"""Tests of spl.models: backbones, heads, classifier, config round trips."""

# Tests look inside layers.
# pylint: disable=protected-access

import functools

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official.vision.modeling.layers import nn_blocks_3d
from spl import models
from spl.models import classifier as classifier_lib
from spl.models import heads
from spl.models import resnet3d_basic
from tests import distribute_utils

CLIP = (4, 32, 32, 3)
IMAGE = (32, 32, 3)

FEATURE_DIMS = {
    'r3d50_g': 2048,
    'r3d50_mg': 2048,
    'slowonly_r18': 512,
    'slowonly_r34': 512,
    'slowonly_r34_mg': 512,
    'slowonly_r50': 2048,
    'r2d50': 2048,
    'tiny3d': 16,
}


def _shape(name):
  return IMAGE if name == 'r2d50' else CLIP


@functools.lru_cache(maxsize=None)
def _backbone(name):
  """Each big backbone is built once per test session (builds take seconds)."""
  return models.build_backbone(name, input_shape=_shape(name))


@pytest.fixture
def mixed_bfloat16():
  tf_keras.mixed_precision.set_global_policy('mixed_bfloat16')
  try:
    yield
  finally:
    tf_keras.mixed_precision.set_global_policy('float32')


def test_every_backbone_has_a_feature_dim():
  assert set(FEATURE_DIMS) == set(models.BACKBONES)


@pytest.mark.parametrize('name', models.BACKBONES)
def test_backbone_pooled_output_shape(name):
  backbone = _backbone(name)
  x = tf.random.uniform((2,) + _shape(name))
  features = backbone(x, training=False)
  assert backbone.name == name
  assert features.shape == (2, FEATURE_DIMS[name])
  assert features.dtype == tf.float32
  assert np.all(np.isfinite(features.numpy()))
  # The pool is over T, H, W: features are the mean of the last feature map.
  pre_pool = tf_keras.Model(backbone.input,
                            backbone.get_layer('global_pool').input)
  fmap = tf.cast(pre_pool(x, training=False), tf.float32)
  axes = tuple(range(1, len(fmap.shape) - 1))
  np.testing.assert_allclose(
      features.numpy(), tf.reduce_mean(fmap, axes).numpy(), rtol=1e-5,
      atol=1e-5)


@pytest.mark.parametrize('name', ['tiny3d', 'slowonly_r18'])
def test_backbone_accepts_unknown_number_of_frames(name):
  backbone = models.build_backbone(name, input_shape=(None, 32, 32, 3))
  for t in (2, 5):
    assert backbone(tf.zeros([1, t, 32, 32, 3])).shape == (
        1, FEATURE_DIMS[name])


def test_slowonly_keeps_every_frame():
  backbone = models.build_backbone('slowonly_r18', input_shape=(6, 32, 32, 3))
  fmap = backbone.get_layer('global_pool').input
  # No temporal downsampling; 32 / 32 spatially.
  assert tuple(fmap.shape) == (None, 6, 1, 1, 512)
  kernels = [l.kernel.shape[0] for l in backbone.layers
             if isinstance(l, resnet3d_basic.BasicBlock3D)
             for l in [l._conv_a]]
  assert kernels == [1, 1, 1, 1, 3, 3, 3, 3]


def test_slowonly_r34_mg_layout():
  # Model Garden's 2D ResNet-34 layout (CPD Table 4's ImageNet inflation):
  # a 1x1x1 conv + BN shortcut in res2's first block, created before conv_a.
  plain = _backbone('slowonly_r34')
  backbone = _backbone('slowonly_r34_mg')
  block = backbone.get_layer('res2_block1')
  assert block._use_projection and block.get_config()['use_projection']
  assert tuple(block._shortcut.kernel.shape) == (1, 1, 1, 64, 64)
  assert tuple(block._shortcut.strides) == (1, 1, 1)
  assert tuple(block._norm0.gamma.shape) == (64,)
  assert [l.name for l in block._flatten_layers(include_self=False,
                                                recursive=False)][:3] == [
                                                    'shortcut', 'norm0',
                                                    'conv_a']
  assert not plain.get_layer('res2_block1')._use_projection
  projected = [l.name for l in backbone.layers
               if isinstance(l, resnet3d_basic.BasicBlock3D) and
               l._use_projection]
  assert projected == ['res2_block1', 'res3_block1', 'res4_block1',
                       'res5_block1']
  # Only the projection's 5 variables are new: every other name and shape is
  # the plain network's, whose checkpoints stay as they are.
  shapes = lambda m: {w.name: tuple(w.shape) for w in m.weights}
  extra = shapes(backbone).items() - shapes(plain).items()
  assert len(extra) == 5 and all('res2_block1/' in n for n, _ in extra)
  assert shapes(plain).items() <= shapes(backbone).items()
  fmap = backbone.get_layer('global_pool').input
  assert tuple(fmap.shape) == (None, CLIP[0], 1, 1, 512)
  assert backbone(tf.random.uniform((2,) + CLIP)).shape == (2, 512)


def test_slowonly_r50_layout():
  net = _backbone('slowonly_r50').get_layer('resnet3d')
  config = net.get_config()
  assert config['stem_conv_temporal_kernel_size'] == 1
  assert config['stem_conv_temporal_stride'] == 1
  assert config['stem_pool_temporal_stride'] == 1
  assert config['temporal_strides'] == [1, 1, 1, 1]
  assert config['temporal_kernel_sizes'] == [[1] * 3, [1] * 4, [3] * 6,
                                             [3] * 3]
  assert net.output_specs['5'][1] == CLIP[0]


# Table 8 at 1/4 of the frames and 64^2 instead of 224^2 crops, small enough
# for a CPU forward pass; the stride pattern is the same.
LAYOUT_CLIP = (16, 64, 64, 3)


@functools.lru_cache(maxsize=None)
def _layout_backbone(name):
  return models.build_backbone(name, input_shape=LAYOUT_CLIP)


def _r3d50_layout(name):
  """Stem, pool, blocks per stage and endpoint shapes read off the model.

  Everything comes from the built layers and a forward pass, not from
  `factory`'s constants, so a wrong wiring of the constants shows.
  """
  backbone = _layout_backbone(name)
  net = backbone.get_layer('resnet3d')
  stem = [l for l in net.layers if isinstance(l, tf_keras.layers.Conv3D)]
  pools = [l for l in net.layers if isinstance(l, tf_keras.layers.MaxPool3D)]
  assert len(stem) == 1 and len(pools) == 1
  stages = {}
  for block in net.layers:
    if isinstance(block, nn_blocks_3d.BottleneckBlock3D):
      stages.setdefault(block._filters, []).append(block)
  assert sorted(stages) == [64, 128, 256, 512]
  probe = tf_keras.Model(
      net.input, [pools[0].input, pools[0].output] +
      [net.output[str(level)] for level in range(2, 6)])
  shapes = [tuple(y.shape[1:]) for y in probe(
      tf.zeros((1,) + LAYOUT_CLIP), training=False)]
  return {
      'stem': stem[0],
      'pool': pools[0],
      'blocks': [stages[f] for f in sorted(stages)],
      'endpoint_shapes': shapes,
      'pooled': backbone(tf.zeros((1,) + LAYOUT_CLIP)).shape,
  }


def test_r3d50_g_is_table_8():
  layout = _r3d50_layout('r3d50_g')
  stem, pool = layout['stem'], layout['pool']
  assert tuple(stem.kernel.shape) == (5, 7, 7, 3, 64)  # conv1 5x7^2
  assert tuple(stem.strides) == (1, 2, 2)  # stride 1x2^2
  assert tuple(pool.pool_size) == (1, 3, 3)  # pool1 1x3^2
  assert tuple(pool.strides) == (1, 2, 2)  # stride 1x2^2
  blocks = layout['blocks']
  # res2: t = 3 everywhere; res3..res5: t = 3 on odd blocks, 1 on even ones.
  assert [tuple(b._temporal_conv.kernel.shape[0] for b in stage)
          for stage in blocks] == [(3, 3, 3), (3, 1, 3, 1),
                                   (3, 1, 3, 1, 3, 1), (3, 1, 3)]
  for stage in blocks:
    for b in stage:
      assert tuple(b._temporal_conv.kernel.shape[1:3]) == (1, 1)
      assert tuple(b._spatial_conv.kernel.shape[:3]) == (1, 3, 3)
      assert tuple(b._expand_conv.kernel.shape[:3]) == (1, 1, 1)
      # No temporal down-sampling in any block.
      assert b._temporal_conv.strides[0] == 1
      assert b._spatial_conv.strides[0] == 1
  # A feature gate after every residual block, built (it has weights).
  gates = [b._self_gating for stage in blocks for b in stage]
  assert len(gates) == 16
  assert all(g is not None and g.weights for g in gates)
  # T stays 16; space /2 (conv1), /4 (pool1, res2), /8, /16, /32.
  t, size = LAYOUT_CLIP[0], LAYOUT_CLIP[1]
  assert layout['endpoint_shapes'] == [
      (t, size // 2, size // 2, 64), (t, size // 4, size // 4, 64),
      (t, size // 4, size // 4, 256), (t, size // 8, size // 8, 512),
      (t, size // 16, size // 16, 1024), (t, size // 32, size // 32, 2048)]
  assert layout['pooled'] == (1, 2048)


def test_r3d50_mg_is_model_gardens_kinetics_r3d50():
  layout = _r3d50_layout('r3d50_mg')
  stem, pool = layout['stem'], layout['pool']
  assert tuple(stem.kernel.shape) == (5, 7, 7, 3, 64)
  assert tuple(stem.strides) == (2, 2, 2)
  assert tuple(pool.pool_size) == (3, 3, 3)
  assert tuple(pool.strides) == (2, 2, 2)
  blocks = layout['blocks']
  assert [tuple(b._temporal_conv.kernel.shape[0] for b in stage)
          for stage in blocks] == [(3, 3, 3), (3, 1, 3, 1),
                                   (3, 1, 3, 1, 3, 1), (1, 3, 1)]
  # Model Garden gates only the last block of each stage.
  assert [[b._self_gating is not None for b in stage] for stage in blocks
          ] == [[False] * (len(stage) - 1) + [True] for stage in blocks]
  t, size = LAYOUT_CLIP[0], LAYOUT_CLIP[1]
  assert [s[0] for s in layout['endpoint_shapes']] == [
      t // 2, t // 4, t // 4, t // 4, t // 4, t // 4]
  assert layout['endpoint_shapes'][-1] == (t // 4, size // 32, size // 32,
                                           2048)


def test_r3d50_g_config_round_trip():
  net = _backbone('r3d50_g').get_layer('resnet3d')
  config = net.get_config()
  clone = type(net).from_config(config)
  assert type(clone) is type(net)  # pylint: disable=unidiomatic-typecheck
  assert clone.get_config() == config
  gated = [l for l in clone.layers
           if isinstance(l, nn_blocks_3d.BottleneckBlock3D) and
           l._self_gating is not None]
  assert len(gated) == 16
  clone.set_weights(net.get_weights())
  x = tf.random.uniform((1,) + CLIP)
  np.testing.assert_allclose(clone(x, training=False)['5'].numpy(),
                             net(x, training=False)['5'].numpy(), rtol=1e-4,
                             atol=1e-5)


def test_backbone_bad_arguments():
  with pytest.raises(ValueError, match='r3d50_g.*tiny3d'):
    models.build_backbone('resnet3d', input_shape=CLIP)
  with pytest.raises(ValueError, match='input_shape'):
    models.build_backbone('tiny3d', input_shape=(32, 32, 3))
  with pytest.raises(ValueError, match='input_shape'):
    models.build_backbone('r2d50', input_shape=CLIP)
  with pytest.raises(ValueError, match='input_shape'):
    models.build_backbone('tiny3d', input_shape=(4, 32, 0, 3))
  with pytest.raises(ValueError, match="'use_self_gating'.*valid"):
    models.build_backbone('tiny3d', input_shape=CLIP, use_self_gating=True)
  with pytest.raises(ValueError, match='filters'):
    models.build_backbone('tiny3d', input_shape=CLIP, filters=())


def test_norm_kwargs_reach_batch_norm():
  backbone = models.build_backbone('slowonly_r18', input_shape=CLIP,
                                   norm_momentum=0.9, norm_epsilon=1e-5)
  block = backbone.get_layer('res3_block1')
  for bn in (backbone.get_layer('stem_bn'), block._norm0, block._norm2):
    assert bn.momentum == 0.9
    assert bn.epsilon == 1e-5


def test_classifier_outputs_and_parts():
  model = models.build_classifier('tiny3d', num_classes=7, input_shape=CLIP,
                                  projection='mlp', projection_dim=32)
  x = tf.random.uniform((3,) + CLIP)
  logits = model(x, training=False)
  assert logits.shape == (3, 7)
  assert logits.dtype == tf.float32
  assert isinstance(model.backbone, tf_keras.Model)
  assert model.backbone.name == 'tiny3d'
  assert isinstance(model.head, heads.ClassificationHead)
  assert model.head.projection is not None
  # Backbone + head own every variable of the model, and nothing is shared.
  ids = lambda vs: {id(v) for v in vs}
  assert ids(model.backbone.weights) | ids(model.head.weights) == ids(
      model.weights)
  assert not ids(model.backbone.weights) & ids(model.head.weights)
  np.testing.assert_allclose(
      model.head(model.backbone(x, training=False), training=False).numpy(),
      logits.numpy(), rtol=1e-5, atol=1e-6)
  # The projection has projection_dim outputs, then the classifier.
  assert model.head.classifier.kernel.shape == (32, 7)


def test_classifier_dropout_only_in_training():
  model = models.build_classifier('tiny3d', num_classes=4, input_shape=CLIP,
                                  dropout_rate=0.5)
  x = tf.random.uniform((2,) + CLIP)
  a = model(x, training=False).numpy()
  np.testing.assert_array_equal(a, model(x, training=False).numpy())
  assert not np.allclose(a, model(x, training=True).numpy())
  assert model.head.projection is None
  assert model.head.classifier.kernel.shape == (16, 4)


def test_classifier_bad_arguments():
  with pytest.raises(ValueError, match='`num_classes` must be > 0, got 0'):
    models.build_classifier('tiny3d', num_classes=0, input_shape=CLIP)
  with pytest.raises(ValueError, match='dropout_rate'):
    models.build_classifier('tiny3d', num_classes=3, input_shape=CLIP,
                            dropout_rate=1.0)
  with pytest.raises(ValueError, match='projection_dim'):
    models.build_classifier('tiny3d', num_classes=3, input_shape=CLIP,
                            projection_dim=0)
  with pytest.raises(ValueError, match='slowonly_r34'):
    models.build_classifier('r3d', num_classes=3, input_shape=CLIP)


@pytest.mark.parametrize('name', ['tiny3d', 'slowonly_r18'])
def test_logits_float32_under_mixed_bfloat16(name, mixed_bfloat16):
  del mixed_bfloat16
  model = models.build_classifier(name, num_classes=5, input_shape=CLIP,
                                  projection='mlp', projection_dim=8)
  convs = [l for l in model.backbone.layers
           if isinstance(l, tf_keras.layers.Conv3D)]
  assert convs[0].compute_dtype == 'bfloat16'  # The policy is in effect.
  x = tf.random.uniform((2,) + CLIP)
  assert model.backbone(x).dtype == tf.float32
  logits = model(x, training=True)
  assert logits.dtype == tf.float32
  assert np.all(np.isfinite(logits.numpy()))
  assert model.head.classifier.kernel.dtype == tf.float32


def test_tiny3d_train_step_learns():
  # Its speed is measured in benchmarks/bench_trainer.py ('tiny'), as a
  # same-run ratio: a wall-clock bound here fails on a busy machine.
  model = models.build_classifier('tiny3d', num_classes=5, input_shape=CLIP)
  optimizer = tf_keras.optimizers.SGD(0.1, momentum=0.9)
  x = tf.random.uniform((2,) + CLIP)
  y = tf.constant([1, 3])

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
          y, model(x, training=True)))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  first = float(step())
  for _ in range(10):
    loss = float(step())
  assert loss < first  # It learns the two examples.


def test_backbone_restores_into_classifier_with_other_head(tmp_path):
  pretrain = models.build_classifier('tiny3d', num_classes=12,
                                     input_shape=CLIP, projection='mlp',
                                     projection_dim=8)
  x = tf.random.uniform((2,) + CLIP)
  pretrain(x, training=True)  # Moves the BN statistics away from init.
  path = tf.train.Checkpoint(model=pretrain).write(str(tmp_path / 'ckpt'))
  finetune = models.build_classifier('tiny3d', num_classes=3,
                                     input_shape=CLIP)
  status = tf.train.Checkpoint(
      model=tf.train.Checkpoint(backbone=finetune.backbone)).read(path)
  status.expect_partial().assert_existing_objects_matched()
  np.testing.assert_array_equal(
      finetune.backbone(x, training=False).numpy(),
      pretrain.backbone(x, training=False).numpy())
  assert finetune(x).shape == (2, 3)


def _assert_layer_round_trip(layer, input_shape):
  config = layer.get_config()
  clone = type(layer).from_config(config)
  assert clone.get_config() == config
  x = tf.random.uniform(input_shape)
  layer(x)
  clone(x)
  clone.set_weights(layer.get_weights())
  np.testing.assert_allclose(clone(x, training=False).numpy(),
                             layer(x, training=False).numpy(), rtol=1e-5,
                             atol=1e-6)


def test_layer_config_round_trips():
  _assert_layer_round_trip(
      resnet3d_basic.BasicBlock3D(8, temporal_kernel_size=3, spatial_strides=2,
                                  use_projection=True, norm_momentum=0.9),
      (2, 3, 8, 8, 4))
  _assert_layer_round_trip(heads.ProjectionHead(6, hidden_dim=10), (3, 5))
  _assert_layer_round_trip(
      heads.ClassificationHead(4, dropout_rate=0.2, projection='mlp',
                               projection_dim=6), (3, 5))


@pytest.mark.parametrize('name', ['tiny3d', 'slowonly_r18'])
def test_backbone_config_round_trip(name):
  backbone = models.build_backbone(name, input_shape=CLIP)
  clone = tf_keras.Model.from_config(backbone.get_config())
  clone.set_weights(backbone.get_weights())
  x = tf.random.uniform((1,) + CLIP)
  np.testing.assert_allclose(clone(x, training=False).numpy(),
                             backbone(x, training=False).numpy(), rtol=1e-5,
                             atol=1e-6)


def test_classifier_config_round_trip():
  model = models.build_classifier('tiny3d', num_classes=6, input_shape=CLIP,
                                  dropout_rate=0.1, projection='linear',
                                  projection_dim=8,
                                  filters=(4, 8))
  config = model.get_config()
  clone = classifier_lib.VideoClassifier.from_config(config)
  assert clone.get_config() == config
  # Also through Keras' registry of serializable objects.
  again = tf_keras.layers.deserialize(tf_keras.layers.serialize(model))
  assert isinstance(again, classifier_lib.VideoClassifier)
  assert again.backbone.get_layer('conv1').filters == 4
  clone.set_weights(model.get_weights())
  x = tf.random.uniform((2,) + CLIP)
  np.testing.assert_allclose(clone(x).numpy(), model(x).numpy(), rtol=1e-5,
                             atol=1e-6)


def test_classifier_under_mirrored_strategy(logical_cpus):
  strategy = distribute_utils.mirrored_strategy(logical_cpus[:2])
  with strategy.scope():
    model = models.build_classifier('tiny3d', num_classes=3,
                                    input_shape=CLIP, projection='linear',
                                    projection_dim=4)
  assert isinstance(model.head.classifier.kernel,
                    tf.distribute.DistributedValues)
  x = tf.random.uniform((4,) + CLIP)
  dataset = strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors(x).unbatch().batch(4))
  per_replica = strategy.run(
      tf.function(lambda clips: model(clips, training=False)),
      args=(next(iter(dataset)),))
  logits = tf.concat(strategy.experimental_local_results(per_replica), 0)
  np.testing.assert_allclose(logits.numpy(), model(x).numpy(), rtol=1e-5,
                             atol=1e-6)


def test_linear_projection_is_one_dense_layer_of_the_features_width():
  # SPL A.2: "a linear projection head during the pre-training"; its width
  # is not in the paper, so it defaults to the backbone's.
  model = models.build_classifier('tiny3d', num_classes=5, input_shape=CLIP,
                                   projection='linear', dropout_rate=0.0)
  projection = model.head.projection
  kernels = [w for w in projection.weights if 'kernel' in w.name]
  assert len(kernels) == 1
  width = model.backbone.output_shape[-1]
  assert tuple(kernels[0].shape) == (width, width)
  assert not any(isinstance(l, tf_keras.layers.BatchNormalization)
                 for l in projection._flatten_layers())
  features = tf.random.normal((3, width))
  expected = features @ kernels[0] + projection.weights[1]
  np.testing.assert_allclose(projection(features), expected, rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match='needs `projection`'):
    models.build_classifier('tiny3d', num_classes=5, input_shape=CLIP,
                             projection_dim=8)
  with pytest.raises(ValueError, match='projection'):
    models.build_classifier('tiny3d', num_classes=5, input_shape=CLIP,
                             projection='nonlinear')
