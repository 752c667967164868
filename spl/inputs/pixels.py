"""Phase 5 on the host: flip, colour jitter, clip and normalisation."""

import math
from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from spl.inputs import sample
from spl.inputs.options import AugmentationOptions

# Rec. 601 luma, the grey level used by contrast and saturation.
LUMA = (0.299, 0.587, 0.114)
# Row-vector RGB -> YIQ and its exact inverse (hue rotation 0 = identity).
_RGB_TO_YIQ = np.array([[0.299, 0.596, 0.211],
                        [0.587, -0.274, -0.523],
                        [0.114, -0.322, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def _yiq_hue_matrix(delta: tf.Tensor) -> tf.Tensor:
  """Row-vector RGB->RGB matrix rotating hue by `delta` turns (YIQ space)."""
  to_yiq = tf.constant(_RGB_TO_YIQ, tf.float32)
  to_rgb = tf.constant(_YIQ_TO_RGB, tf.float32)
  theta = 2.0 * math.pi * delta
  c, s = tf.cos(theta), tf.sin(theta)
  # Row vectors: positive delta turns the way tf.image.adjust_hue does.
  rot = tf.stack([tf.stack([1.0, 0.0, 0.0]),
                  tf.stack([0.0, c, -s]),
                  tf.stack([0.0, s, c])])
  return to_yiq @ rot @ to_rgb


def colour_params(opts: AugmentationOptions, draws: Optional[tf.Tensor],
                   is_training: bool) -> tf.Tensor:
  """[apply, brightness, contrast, saturation, hue] of one clip.

  `draws`: the clip's random draws (`sample.clip_draws`); each factor is
  uniform in its range, applied with probability `color_jitter_prob`.
  """
  jitter = is_training and opts.color_jitter_prob > 0 and any(
      (opts.brightness, opts.contrast, opts.saturation, opts.hue))
  if not jitter:
    return tf.constant([0.0, 1.0, 1.0, 1.0, 0.0])
  u = draws[sample.COLOUR:sample.COLOUR + 5]
  lo = tf.constant([0.0, 1.0 - opts.brightness, 1.0 - opts.contrast,
                    1.0 - opts.saturation, -opts.hue])
  hi = tf.constant([0.0, 1.0 + opts.brightness, 1.0 + opts.contrast,
                    1.0 + opts.saturation, opts.hue])
  apply = tf.cast(u[:1] < opts.color_jitter_prob, tf.float32)
  return tf.concat([apply, (lo + (hi - lo) * u)[1:]], 0)


def colour_affine(colour: tf.Tensor,
                   grey_mean: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Per-clip colour jitter as row-vector `x @ matrix + offset`, batched.

  Args:
    colour: `[B, 5]` rows of `colour_params`.
    grey_mean: `[B]` mean grey level of each clip (before jitter).

  Returns:
    matrix `[B, 3, 3]` and offset `[B, 3]`, in [0, 255] pixel units.
  """
  apply, b, c, s, hue = tf.unstack(colour, axis=-1)
  luma = tf.constant(LUMA, tf.float32)
  eye = tf.eye(3, batch_shape=tf.shape(colour)[:1])
  grey = tf.broadcast_to(luma[:, None] * tf.ones([1, 3]), tf.shape(eye))
  sat = s[:, None, None] * eye + (1.0 - s)[:, None, None] * grey
  hue_m = tf.map_fn(_yiq_hue_matrix, hue)
  colour_matrix = sat @ hue_m
  # Brightness then contrast: x -> c * b * x + (1 - c) * b * grey_mean.
  matrix = (b * c)[:, None, None] * colour_matrix
  offset = ((1.0 - c) * b * grey_mean)[:, None] * tf.reduce_sum(
      colour_matrix, 1)
  matrix = apply[:, None, None] * matrix + (1.0 - apply)[:, None, None] * eye
  offset = apply[:, None] * offset
  return matrix, offset


def pixel_transform(frames: tf.Tensor, flip: tf.Tensor, colour: tf.Tensor,
                     mean: tf.Tensor, std: tf.Tensor) -> tf.Tensor:
  """uint8 [..., H, W, 3] -> normalised float32: flip, colour, clip, normalise.

  Per pixel and linear up to the clip, so it commutes with the (bilinear,
  convex) resize that follows; it runs before the resize because the decoded
  window has at most as many pixels as the output. XLA fuses it into one pass.
  """
  x = tf.cast(frames, tf.float32)
  x = tf.where(flip, tf.reverse(x, [-2]), x)
  luma = tf.constant(LUMA, tf.float32)
  # Clip mean grey level for contrast, from a subsample (every 16th pixel).
  sub = tf.reshape(x, [-1, 3])[::16]
  grey_mean = tf.reduce_sum(tf.reduce_mean(sub, 0) * luma)
  matrix, offset = colour_affine(colour[None], grey_mean[None])
  matrix, offset = matrix[0], offset[0]
  scale = 1.0 / (255.0 * std)
  shift = -mean / std
  channels = []
  for j in range(3):
    v = (x[..., 0] * matrix[0, j] + x[..., 1] * matrix[1, j] +
         x[..., 2] * matrix[2, j] + offset[j])
    channels.append(tf.clip_by_value(v, 0.0, 255.0) * scale[j] + shift[j])
  return tf.stack(channels, -1)


pixel_transform_xla = tf.function(pixel_transform, jit_compile=True,
                                   reduce_retracing=True, autograph=False)


def transform_and_resize(frames: tf.Tensor, size: tf.Tensor, flip: tf.Tensor,
                          colour: tf.Tensor, opts: AugmentationOptions):
  mean = tf.constant(opts.mean, tf.float32)
  std = tf.constant(opts.std, tf.float32)
  fn = pixel_transform_xla if opts.use_xla else pixel_transform
  video = fn(frames, flip, colour, mean, std)
  return tf.image.resize(video, size, method='bilinear')
