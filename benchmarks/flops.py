"""FLOPs of one training step of a classifier, for the benchmarks' GFLOP/s.

Counted once per architecture and clip shape, not measured per side: both
sides of a benchmark run the same network, so the same count converts each
side's clips/s into GFLOP/s.

How: TF's graph profiler (`tf.compat.v1.profiler`, float operations) on the
graph of one forward pass (inference mode, batch 1), times 3 for forward +
backward (the backward pass of a convolution or matmul is two products of
the forward's size: gradients with respect to the input and to the kernel).
The profiler counts 2 FLOPs per multiply-add of the convolutions and matrix
products (our 1x1x1 convolutions run as `MatMul`, counted the same as the
`Conv3D` they replace) plus the element-wise ops it knows; fused batch norms
have no registered count and are left out (<1% of an R3D-50's FLOPs).
"""

from typing import Sequence

import tensorflow as tf
import tf_keras


def training_flops_per_clip(model: tf_keras.Model,
                            clip_shape: Sequence[int]) -> float:
  """FLOPs of one forward + backward training step, per clip.

  Args:
    model: A built classifier or backbone taking [B, *clip_shape].
    clip_shape: (T, H, W, 3), all known.

  Returns:
    3 x the profiled FLOPs of a forward pass of one clip.
  """
  if any(d is None or d <= 0 for d in clip_shape):
    raise ValueError(f'`clip_shape` must be fully known, got {clip_shape!r}')
  forward = tf.function(lambda x: model(x, training=False))
  graph = forward.get_concrete_function(
      tf.TensorSpec((1,) + tuple(clip_shape), tf.float32)).graph
  options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
  options['output'] = 'none'
  profile = tf.compat.v1.profiler.profile(graph=graph, options=options)
  return 3.0 * profile.total_float_ops
