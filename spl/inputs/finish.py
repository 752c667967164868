"""Phase 5 on the accelerator (`device_finishing`): the pixel work of a batch
of uint8 windows, inside the consumer's step."""

from typing import Dict

import tensorflow as tf

from spl.inputs import pixels
from spl.inputs.features import VIDEO
from spl.inputs.features import VIDEO_FINISH
from spl.inputs.options import AugmentationOptions

# VIDEO_FINISH row: window height and width (valid pixels at the top left of
# the padded uint8 frame), flip, the 5 `colour_params`, mean (3), std (3).
FINISH_SIZE = 14


def finish_row(valid_hw: tf.Tensor, flip: tf.Tensor, colour: tf.Tensor,
                opts: AugmentationOptions) -> tf.Tensor:
  return tf.concat([
      tf.cast(valid_hw, tf.float32), tf.cast(flip, tf.float32)[None], colour,
      tf.constant(opts.mean, tf.float32), tf.constant(opts.std, tf.float32)],
                   0)


def interp_matrix(valid: tf.Tensor, size: int) -> tf.Tensor:
  """`[B, size, size]` bilinear resampling of `valid` inputs to `size` outputs.

  Row `i` weighs the inputs of output `i` exactly as `tf.image.resize`
  (bilinear, half-pixel centres, no antialias) does when resizing `valid`
  pixels to `size`; inputs at or past `valid` (padding) get weight 0.
  """
  valid = tf.cast(valid, tf.float32)[:, None]
  src = (tf.range(size, dtype=tf.float32)[None] + 0.5) * valid / size - 0.5
  src = tf.clip_by_value(src, 0.0, valid - 1.0)
  lo = tf.floor(src)
  frac = (src - lo)[..., None]
  hi = tf.minimum(lo + 1.0, valid - 1.0)
  return (tf.one_hot(tf.cast(lo, tf.int32), size) * (1.0 - frac) +
          tf.one_hot(tf.cast(hi, tf.int32), size) * frac)


def finish_video(video: tf.Tensor, finish: tf.Tensor) -> tf.Tensor:
  """uint8 pipeline output + VIDEO_FINISH -> the model's float32 input.

  Runs the per-pixel work that `device_finishing=True` leaves out of the host
  pipeline, inside the (XLA-compilable) step on the accelerator: the bilinear
  resize of each clip's decoded window (two batched matmuls with
  interpolation matrices; the flip reverses one of them), the colour jitter
  as one 3x3 matrix + offset per clip, the clip to [0, 255] and the
  normalisation. Same augmentation as the host path, in the papers' order
  (resize before colour); the host path only swaps the two to work on fewer
  pixels, which differs near saturated pixels only.

  Args:
    video: uint8 `[B, ..., S, S, 3]` (`[B, T, S, S, 3]`, `[B, V, T, S, S, 3]`,
      `[B, S, S, 3]`, `[B, V, S, S, 3]`), static S.
    finish: float32 `[B, 14]`, the VIDEO_FINISH feature.

  Returns:
    float32 of the shape of `video`.
  """
  if video.dtype != tf.uint8:
    raise ValueError(f'finish_video wants the uint8 video of '
                     f'`device_finishing=True`, got {video.dtype}')
  height, width = video.shape[-3], video.shape[-2]
  if height is None or width is None:
    raise ValueError(f'finish_video needs static frame sizes, got '
                     f'{video.shape}')
  shape = tf.shape(video)
  x = tf.reshape(tf.cast(video, tf.float32),
                 tf.stack([shape[0], -1, height, width, 3]))
  finish = tf.cast(finish, tf.float32)
  valid_h, valid_w, flip = finish[:, 0], finish[:, 1], finish[:, 2] > 0.5
  colour, mean, std = finish[:, 3:8], finish[:, 8:11], finish[:, 11:14]
  # All-zero rows (padding examples of static-shape eval batches): finite.
  std = tf.where(std > 0, std, tf.ones_like(std))

  def resample():
    rows = interp_matrix(valid_h, height)
    cols = interp_matrix(valid_w, width)
    cols = tf.where(flip[:, None, None], tf.reverse(cols, [1]), cols)
    y = tf.einsum('bip,bfpwc->bfiwc', rows, x)
    return tf.einsum('bjq,bfiqc->bfijc', cols, y)

  # Evaluation views (and windows resized on the host) need no resampling.
  identity = tf.reduce_all(tf.logical_and(
      tf.logical_and(tf.equal(valid_h, height), tf.equal(valid_w, width)),
      tf.logical_not(flip)))
  x = tf.cond(identity, lambda: x, resample)
  luma = tf.constant(pixels.LUMA, tf.float32)
  grey_mean = tf.reduce_mean(
      tf.tensordot(x[:, :, ::4, ::4, :], luma, [[4], [0]]), [1, 2, 3])
  matrix, offset = pixels.colour_affine(colour, grey_mean)
  x = tf.einsum('bfhwc,bcd->bfhwd', x, matrix) + offset[:, None, None, None]
  x = tf.clip_by_value(x, 0.0, 255.0)
  x = (x / 255.0 - mean[:, None, None, None]) / std[:, None, None, None]
  return tf.reshape(x, shape)


def finish_features(features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """`features` with VIDEO finished if it carries VIDEO_FINISH, else as is.

  Every consumer of the pipeline's batches calls this first in its step (on
  the accelerator), so it works with either setting of `device_finishing`.
  """
  if VIDEO_FINISH not in features:
    return features
  out = dict(features)
  out[VIDEO] = finish_video(out[VIDEO], out.pop(VIDEO_FINISH))
  return out


def video_features(element: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """VIDEO and, if present, VIDEO_FINISH of a batch (for feature selection)."""
  return {k: element[k] for k in (VIDEO, VIDEO_FINISH) if k in element}
