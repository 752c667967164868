"""Faster exact equivalents of two Keras layers in 3D networks (CPU steps).

Both are subclasses that change only how a layer computes, not what it holds:
the same variables, names, config, initialisers and checkpoints, outputs equal
to float round-off. `use_fast_layers(model)` converts the eligible layers of
a built model in place (only their class changes; e.g. Model Garden's
`ResNet3D`, whose blocks create plain Keras layers). Measured on CPU (R3D-50,
8x112^2 clips, batch 2, training step; `benchmarks/bench_model_garden`
compares the trainer with Model Garden's task, which runs the plain layers).

**1x1x1 convolutions as matrix products** (`PointwiseConv3D`). A `Conv3D`
with a 1x1x1 kernel maps every voxel's C_in features to C_out features with
the same matrix: [B*T*H*W, C_in] x [C_in, C_out] (with stride s and 'same' or
'valid' padding, on the voxels `x[:, ::s_t, ::s_h, ::s_w]`). Run as a
convolution it takes the general convolution kernels' path; on CPU (oneDNN)
that reorders activations and the kernel into blocked layouts and back on
every forward and backward call, and the backward pass of a 3D convolution is
its slowest part. Model Garden's R3D-50 ('r3d50_mg') has 31 such layers, the
paper's R3D-50-G 42 (the bottlenecks' expanding and
reducing convolutions, the shortcuts' projections and the self-gates, whose
input is a pooled [B, 1, 1, 1, C] volume). The gates' convolutions alone took
42 ms of 514 ms of op time; with matrix products the step was ~8% faster.

**Batch norm of 5D tensors on their 4D view** (`FlatBatchNormalization`).
Batch norm over channels-last [B, T, H, W, C] normalises each channel over
B*T*H*W values, exactly what it does on the [B*T, H, W, C] view; TF's fused
kernel is ~1.5x faster on the 4D view on CPU (forward + backward, R3D-50
shapes: 11.3 vs 16.7 ms); in the benchmark's training loop the ratio to Model
Garden went from ~1.08 (matmuls alone) to ~1.16.

**The switch** (`MODES`, the backbones' `fast_layers` argument): 'auto', the
default, converts only where the rewrites were measured to help, i.e. when the
process sees no GPU and no TPU (nothing was measured on accelerators, where
cuDNN and XLA choose their own layouts); 'on' and 'off' force it. Both
rewrites rely on private parts of `tf_keras` (`PRIVATE_API`); when
`check_private_api` finds one missing or changed, 'auto' leaves the layers as
they are (with a warning) and 'on' raises, naming it.
"""

from __future__ import annotations

from typing import Dict, List

from absl import logging
import tensorflow as tf
import tf_keras

MODES = ('auto', 'on', 'off')
# What the subclasses rely on beyond tf_keras's public API.
PRIVATE_API = (
    'BatchNormalization._fused_batch_norm (the method FlatBatchNormalization '
    'overrides; the parent must call it for fused batch norms)',
    "BatchNormalization._data_format (a fused channels-last 5D batch norm "
    "holds 'NDHWC')",
    'Conv3D.convolution_op (the method PointwiseConv3D overrides; the parent '
    'must call it)',
)


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


@tf_keras.utils.register_keras_serializable(package='spl')
class FlatBatchNormalization(tf_keras.layers.BatchNormalization):
  """Fused batch norm of channels-last 5D inputs, run on their 4D view.

  Built on a channels-last 5D input (or converted by `use_fast_layers` from a
  built `BatchNormalization`), the fused kernel gets the [B*T, H, W, C] view;
  any other input takes the parent's path. `_fused_batch_norm` is the only
  method the parent reads the kernel's data format in.
  """

  def build(self, input_shape):
    super().build(input_shape)
    self._use_4d_view()

  def _use_4d_view(self):
    # What the parent chose for a channels-last 5D input; the only state.
    if getattr(self, '_data_format', None) == 'NDHWC':
      self._data_format = 'NHWC'

  def _fused_batch_norm(self, inputs, mask, training):
    if inputs.shape.rank != 5 or self._data_format != 'NHWC':
      return super()._fused_batch_norm(inputs, mask, training)
    shape = tf.shape(inputs)
    flat = tf.reshape(inputs, tf.concat([[-1], shape[2:]], axis=0))
    outputs = tf.reshape(super()._fused_batch_norm(flat, mask, training),
                         shape)
    outputs.set_shape(inputs.shape)
    return outputs


def is_flattenable_batch_norm(layer: tf_keras.layers.Layer) -> bool:
  """Whether `layer` is a built fused channels-last 5D batch norm."""
  return (type(layer) is tf_keras.layers.BatchNormalization and  # pylint: disable=unidiomatic-typecheck
          layer.built and bool(layer.fused) and
          getattr(layer, '_data_format', None) == 'NDHWC' and
          layer.virtual_batch_size is None)


def use_fast_layers(model: tf_keras.layers.Layer) -> Dict[str, int]:
  """Converts `model`'s eligible layers (and `model` itself) in place.

  Every 1x1x1 `Conv3D` becomes a `PointwiseConv3D`, every built fused 5D
  `BatchNormalization` a `FlatBatchNormalization`. Only the class changes
  (plus the batch norms' fused-kernel data format; the subclasses keep the
  parents' call signatures and variables), so the
  variables, the checkpoint object graph and the model's other layers are
  untouched; a converted model and an unconverted one restore each other's
  checkpoints.

  Returns:
    How many layers were converted, by new class name.
  """
  counts = {PointwiseConv3D.__name__: 0, FlatBatchNormalization.__name__: 0}
  for layer in (model,) + tuple(model.submodules):
    if type(layer) is tf_keras.layers.Conv3D and is_pointwise(layer):  # pylint: disable=unidiomatic-typecheck
      layer.__class__ = PointwiseConv3D
    elif is_flattenable_batch_norm(layer):
      layer.__class__ = FlatBatchNormalization
      layer._use_4d_view()  # pylint: disable=protected-access
    else:
      continue
    counts[type(layer).__name__] += 1
  return counts


def check_private_api() -> List[str]:
  """The entries of `PRIVATE_API` this tf_keras no longer provides (empty
  when the rewrites are safe); builds two tiny layers to check behaviour."""
  problems = []
  bn_class = tf_keras.layers.BatchNormalization
  if not callable(getattr(bn_class, '_fused_batch_norm', None)):
    problems.append(PRIVATE_API[0])
  if not callable(getattr(tf_keras.layers.Conv3D, 'convolution_op', None)):
    problems.append(PRIVATE_API[2])
  if problems:
    return problems
  calls = []

  class _SpyNorm(bn_class):

    def _fused_batch_norm(self, *args, **kwargs):
      calls.append('bn')
      return super()._fused_batch_norm(*args, **kwargs)

  class _SpyConv(tf_keras.layers.Conv3D):

    def convolution_op(self, *args, **kwargs):
      calls.append('conv')
      return super().convolution_op(*args, **kwargs)

  x = tf.zeros([1, 1, 1, 1, 2])
  norm = _SpyNorm()
  norm(x, training=True)
  if 'bn' not in calls:
    problems.append(PRIVATE_API[0])
  if getattr(norm, '_data_format', None) != 'NDHWC':
    problems.append(PRIVATE_API[1])
  _SpyConv(1, 1)(x)
  if 'conv' not in calls:
    problems.append(PRIVATE_API[2])
  return problems


def accelerators_present() -> bool:
  return bool(tf.config.list_logical_devices('GPU') or
              tf.config.list_logical_devices('TPU'))


_API_PROBLEMS = None


def maybe_use_fast_layers(model: tf_keras.layers.Layer,
                          mode: str = 'auto') -> Dict[str, int]:
  """`use_fast_layers` as `mode` (see the module docstring) says.

  Returns:
    How many layers were converted, by new class name (empty when none).
  """
  global _API_PROBLEMS
  if mode not in MODES:
    raise ValueError(f'`fast_layers` must be one of {MODES}, got {mode!r}')
  if mode == 'off' or (mode == 'auto' and accelerators_present()):
    return {}
  if _API_PROBLEMS is None:
    _API_PROBLEMS = check_private_api()
  if _API_PROBLEMS:
    message = ('spl.models.fast_layers: this tf_keras lacks what the '
               'rewrites rely on: ' + '; '.join(_API_PROBLEMS))
    if mode == 'on':
      raise RuntimeError(message)
    logging.warning('%s; the layers stay as they are', message)
    return {}
  return use_fast_layers(model)
