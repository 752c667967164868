"""Slow-only 3D ResNet-18/34 with basic blocks (the CPD paper's video encoder).

Model Garden only has bottleneck 3D ResNets, so the basic-block variant lives
here. The layout follows SlowFast's slow pathway (Feichtenhofer et al. 2019)
with basic blocks:

  stem  conv 1x7x7/ (1,2,2), BN, ReLU, max-pool 1x3x3 / (1,2,2)
  res2  64 ch, blocks with conv_a 1x3x3
  res3  128 ch, first block spatial stride 2, conv_a 1x3x3
  res4  256 ch, first block spatial stride 2, conv_a 3x3x3
  res5  512 ch, first block spatial stride 2, conv_a 3x3x3

Temporal convolutions only in res4/res5 and no temporal downsampling anywhere,
so T output frames = T input frames. A basic block is
conv_a [t,3,3] - BN - ReLU - conv_b [1,3,3] - BN - add shortcut - ReLU, with a
1x1x1 projection shortcut (+BN) where the width or the resolution changes.
He et al.'s ResNet-34 has an identity shortcut in res2's first block (64 ->
64, stride 1); Model Garden's 2D `ResNet` projects there too (a 1x1 conv +
BN), and `res2_projection=True` (factory's 'slowonly_r34_mg') adds that
projection, so that a Model Garden ImageNet ResNet-34 inflates into the exact
same network (CPD Table 4).
The sublayers are created in the order of Model Garden's 2D `ResidualBlock`
(shortcut, norm0, conv1, norm1, conv2, norm2), so `inflation.inflate_from_2d`
can match them to a 2D network of the same layout.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf
import tf_keras

# Blocks per stage (res2..res5).
BASIC_RESNET_SPECS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
}
STAGE_FILTERS = (64, 128, 256, 512)
# Slow-only: temporal kernels only in res4 and res5.
SLOWONLY_TEMPORAL_KERNELS = (1, 1, 3, 3)


@tf_keras.utils.register_keras_serializable(package='spl')
class BasicBlock3D(tf_keras.layers.Layer):
  """3D ResNet basic block with a temporal kernel in its first conv."""

  def __init__(self,
               filters: int,
               temporal_kernel_size: int = 1,
               spatial_strides: int = 1,
               use_projection: bool = False,
               norm_momentum: float = 0.99,
               norm_epsilon: float = 1e-3,
               kernel_initializer: str = 'VarianceScaling',
               **kwargs):
    """Initializes the block.

    Args:
      filters: Output channels of both convs.
      temporal_kernel_size: Temporal extent of the first conv (1 or 3 in
        slow-only networks).
      spatial_strides: Spatial stride of the first conv and of the shortcut.
      use_projection: Whether the shortcut is a 1x1x1 conv + BN (needed when
        the width or the resolution changes).
      norm_momentum: Batch-norm momentum.
      norm_epsilon: Batch-norm epsilon.
      kernel_initializer: Initializer of the conv kernels.
      **kwargs: Passed to `tf_keras.layers.Layer`.
    """
    super().__init__(**kwargs)
    if int(filters) <= 0:
      raise ValueError(f'`filters` must be > 0, got {filters!r}')
    if int(temporal_kernel_size) <= 0:
      raise ValueError('`temporal_kernel_size` must be > 0, got '
                       f'{temporal_kernel_size!r}')
    if int(spatial_strides) <= 0:
      raise ValueError(
          f'`spatial_strides` must be > 0, got {spatial_strides!r}')
    self._filters = int(filters)
    self._temporal_kernel_size = int(temporal_kernel_size)
    self._spatial_strides = int(spatial_strides)
    self._use_projection = bool(use_projection)
    self._norm_momentum = norm_momentum
    self._norm_epsilon = norm_epsilon
    self._kernel_initializer = kernel_initializer

  def _bn(self, name):
    return tf_keras.layers.BatchNormalization(
        momentum=self._norm_momentum, epsilon=self._norm_epsilon, name=name)

  def _conv(self, kernel_size, strides, name):
    return tf_keras.layers.Conv3D(
        self._filters, kernel_size=kernel_size, strides=strides,
        padding='same', use_bias=False,
        kernel_initializer=tf_keras.initializers.get(self._kernel_initializer),
        name=name)

  def build(self, input_shape):
    s = self._spatial_strides
    if self._use_projection:
      self._shortcut = self._conv([1, 1, 1], [1, s, s], 'shortcut')
      self._norm0 = self._bn('norm0')
    self._conv_a = self._conv([self._temporal_kernel_size, 3, 3], [1, s, s],
                              'conv_a')
    self._norm1 = self._bn('norm1')
    self._conv_b = self._conv([1, 3, 3], [1, 1, 1], 'conv_b')
    self._norm2 = self._bn('norm2')
    super().build(input_shape)

  def call(self, inputs, training=None):
    shortcut = inputs
    if self._use_projection:
      shortcut = self._norm0(self._shortcut(inputs), training=training)
    x = self._conv_a(inputs)
    x = tf.nn.relu(self._norm1(x, training=training))
    x = self._norm2(self._conv_b(x), training=training)
    return tf.nn.relu(x + shortcut)

  def get_config(self):
    config = super().get_config()
    config.update({
        'filters': self._filters,
        'temporal_kernel_size': self._temporal_kernel_size,
        'spatial_strides': self._spatial_strides,
        'use_projection': self._use_projection,
        'norm_momentum': self._norm_momentum,
        'norm_epsilon': self._norm_epsilon,
        'kernel_initializer': self._kernel_initializer,
    })
    return config


def build_slowonly_basic(model_id: int,
                         input_shape: Sequence[int],
                         *,
                         norm_momentum: float = 0.99,
                         norm_epsilon: float = 1e-3,
                         res2_projection: bool = False,
                         name: str | None = None) -> tf_keras.Model:
  """Builds a slow-only basic-block 3D ResNet with pooled outputs.

  Args:
    model_id: 18 or 34.
    input_shape: (T, H, W, C) of one clip; T, H, W may be None.
    norm_momentum: Batch-norm momentum.
    norm_epsilon: Batch-norm epsilon.
    res2_projection: Whether res2's first block has a 1x1x1 conv + BN
      projection shortcut (Model Garden's 2D ResNet layout) instead of the
      identity (He et al.'s). Off by default: checkpoints of the plain network
      have no such variables.
    name: Model name; defaults to 'slowonly_r{model_id}'.

  Returns:
    A functional `tf_keras.Model` mapping [B, T, H, W, C] clips to float32
    pooled features [B, 512].
  """
  if model_id not in BASIC_RESNET_SPECS:
    raise ValueError(f'`model_id` must be one of {sorted(BASIC_RESNET_SPECS)}'
                     f', got {model_id!r}')
  bn = dict(momentum=norm_momentum, epsilon=norm_epsilon)
  inputs = tf_keras.Input(shape=tuple(input_shape), name='video')
  x = tf_keras.layers.Conv3D(
      64, kernel_size=[1, 7, 7], strides=[1, 2, 2], padding='same',
      use_bias=False, name='stem_conv')(inputs)
  x = tf_keras.layers.BatchNormalization(name='stem_bn', **bn)(x)
  x = tf_keras.layers.ReLU(name='stem_relu')(x)
  x = tf_keras.layers.MaxPool3D(
      pool_size=[1, 3, 3], strides=[1, 2, 2], padding='same',
      name='stem_pool')(x)
  in_filters = 64
  for stage, (repeats, filters, t) in enumerate(
      zip(BASIC_RESNET_SPECS[model_id], STAGE_FILTERS,
          SLOWONLY_TEMPORAL_KERNELS)):
    for i in range(repeats):
      strides = 2 if (i == 0 and stage > 0) else 1
      projection = strides != 1 or in_filters != filters or (
          res2_projection and stage == 0 and i == 0)
      x = BasicBlock3D(
          filters, temporal_kernel_size=t, spatial_strides=strides,
          use_projection=projection,
          norm_momentum=norm_momentum, norm_epsilon=norm_epsilon,
          name=f'res{stage + 2}_block{i + 1}')(x)
      in_filters = filters
  outputs = tf_keras.layers.GlobalAveragePooling3D(
      dtype='float32', name='global_pool')(x)
  return tf_keras.Model(inputs, outputs, name=name or f'slowonly_r{model_id}')
