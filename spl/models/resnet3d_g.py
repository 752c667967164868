"""R3D-50-G, the SPL paper's backbone (Table 8): a feature gate in every block.

Model Garden's `ResNet3D` can only gate the last block of a stage (its
`_block_group` hard-codes that), while the SPL paper (appendix A.2) adds "a
feature gating module ... after each residual block". `ResNet3DG` is
Model Garden's `ResNet3D` with `_block_group` replaced by one that gives every
`BottleneckBlock3D` of a gated stage `use_self_gating=True`; everything else
(stem, pool, blocks, endpoints, config) is Model Garden's, so the layers are
created in the same order as there and as in the 2D ResNet-50, which
`spl.models.inflation` relies on to pair them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf
import tf_keras

from official.vision.modeling.backbones import resnet_3d as mg_resnet_3d
from official.vision.modeling.layers import nn_blocks_3d


@tf_keras.utils.register_keras_serializable(package='spl')
class ResNet3DG(mg_resnet_3d.ResNet3D):
  """Model Garden's `ResNet3D`, self-gating in every block of a gated stage.

  Takes exactly `ResNet3D`'s arguments; `use_self_gating[i]` now gates every
  block of stage i + 2 instead of only its last block.
  """

  def _block_group(self,
                   inputs: tf.Tensor,
                   filters: int,
                   temporal_kernel_sizes: Sequence[int],
                   temporal_strides: int,
                   spatial_strides: int,
                   block_fn: Callable[
                       ..., tf_keras.layers.Layer] = (
                           nn_blocks_3d.BottleneckBlock3D),
                   block_repeats: int = 1,
                   stochastic_depth_drop_rate: float = 0.0,
                   use_self_gating: bool = False,
                   name: str = 'block_group') -> tf.Tensor:
    """One stage; the same blocks as Model Garden's, each gated if asked."""
    if len(temporal_kernel_sizes) != block_repeats:
      raise ValueError(
          f'`temporal_kernel_sizes` of {name} must have one entry per block '
          f'({block_repeats}), got {list(temporal_kernel_sizes)}')
    x = inputs
    for i in range(block_repeats):
      # Only the first block of a stage strides (Model Garden's layout).
      x = block_fn(
          filters=filters,
          temporal_kernel_size=temporal_kernel_sizes[i],
          temporal_strides=temporal_strides if i == 0 else 1,
          spatial_strides=spatial_strides if i == 0 else 1,
          stochastic_depth_drop_rate=stochastic_depth_drop_rate,
          use_self_gating=use_self_gating,
          se_ratio=self._se_ratio,
          kernel_initializer=self._kernel_initializer,
          kernel_regularizer=self._kernel_regularizer,
          bias_regularizer=self._bias_regularizer,
          activation=self._activation,
          use_sync_bn=self._use_sync_bn,
          norm_momentum=self._norm_momentum,
          norm_epsilon=self._norm_epsilon)(x)
    return tf.identity(x, name=name)
