"""1x1x1 3D convolutions computed as the matrix products they are.

A `Conv3D` with a 1x1x1 kernel maps every voxel's C_in features to C_out
features with the same matrix: [B*T*H*W, C_in] x [C_in, C_out] (with stride s
and 'same' or 'valid' padding, on the voxels `x[:, ::s_t, ::s_h, ::s_w]`).
Run as a convolution it takes the general convolution kernels' path; on CPU
(oneDNN) that reorders activations and the kernel into blocked layouts and
back on every forward and backward call, and the backward pass of a 3D
convolution is its slowest part. R3D-50 has 31 such layers (the bottlenecks'
expanding and reducing convolutions, the shortcuts' projections and the
self-gates, whose input is a pooled [B, 1, 1, 1, C] volume). Measured on CPU
(R3D-50, 8x112^2 clips, batch 2, one training step): the gates' convolutions
took 42 ms of 514 ms of op time, and the step with matrix products was ~8%
faster than with convolutions (`benchmarks/bench_model_garden` compares the
trainer with Model Garden's task, which runs them as convolutions).

`PointwiseConv3D` is `tf_keras.layers.Conv3D` with only `convolution_op`
replaced: the same variables (kernel [1, 1, 1, C_in, C_out], bias), names,
config, initialisers and checkpoints; outputs equal to float round-off.
`use_matmul_for_pointwise_convs(model)` converts every eligible `Conv3D` of a
built model (e.g. Model Garden's `ResNet3D`, whose blocks create plain
`Conv3D`s) in place.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras


@tf_keras.utils.register_keras_serializable(package='spl')
class PointwiseConv3D(tf_keras.layers.Conv3D):
  """A 1x1x1 `Conv3D` (channels last, no dilation or groups) as a matmul."""

  def convolution_op(self, inputs, kernel):
    if not is_pointwise(self):
      raise ValueError(
          f'{self.name}: PointwiseConv3D needs a 1x1x1 kernel, no dilation, '
          f'groups=1, channels_last and padding same/valid; got kernel '
          f'{self.kernel_size}, dilation {self.dilation_rate}, groups '
          f'{self.groups}, {self.data_format}, padding {self.padding!r}')
    if any(s != 1 for s in self.strides):
      # With a 1x1x1 kernel, 'same' padding adds nothing (its total padding
      # max((ceil(n/s) - 1) * s + 1 - n, 0) is 0) and 'valid' drops nothing
      # but the voxels between strides.
      t, h, w = self.strides
      inputs = inputs[:, ::t, ::h, ::w, :]
    c_in, c_out = kernel.shape[-2], kernel.shape[-1]
    outputs = tf.linalg.matmul(tf.reshape(inputs, [-1, c_in]),
                               tf.reshape(kernel, [c_in, c_out]))
    outputs = tf.reshape(
        outputs, tf.concat([tf.shape(inputs)[:-1], [c_out]], axis=0))
    outputs.set_shape(inputs.shape[:-1].concatenate([c_out]))
    return outputs


def is_pointwise(layer: tf_keras.layers.Layer) -> bool:
  """Whether `layer` is a 3D convolution `PointwiseConv3D` computes exactly."""
  return (isinstance(layer, tf_keras.layers.Conv3D) and
          not isinstance(layer, tf_keras.layers.Conv3DTranspose) and
          tuple(layer.kernel_size) == (1, 1, 1) and
          tuple(layer.dilation_rate) == (1, 1, 1) and
          layer.groups == 1 and
          layer.data_format == 'channels_last' and
          layer.padding in ('same', 'valid'))


def use_matmul_for_pointwise_convs(model: tf_keras.layers.Layer) -> int:
  """Makes every 1x1x1 `Conv3D` in `model` (or `model` itself) pointwise.

  Only the class changes (`PointwiseConv3D` adds no state and keeps the
  parent's call signature), so the variables, the checkpoint object graph and
  the model's other layers are untouched; a model converted this way and one
  that is not restore each other's checkpoints.

  Returns:
    The number of layers converted.
  """
  converted = 0
  for layer in (model,) + tuple(model.submodules):
    if type(layer) is tf_keras.layers.Conv3D and is_pointwise(layer):  # pylint: disable=unidiomatic-typecheck
      layer.__class__ = PointwiseConv3D
      converted += 1
  return converted
