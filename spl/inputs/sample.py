"""Phase 3 and the spatial choices of phase 4: which frames of a clip, and
which window of them is decoded (see `spl.input_pipeline`'s docstring)."""

from typing import Optional

import tensorflow as tf

from spl.inputs.options import AugmentationOptions

# A training clip's random choices: uniforms in [0, 1) drawn in one call on
# the clip's stateless seed (`clip_draws`), indexed by these. One draw per
# clip instead of a fold-in and a draw per choice: ~60 fewer ops of the ~400
# a clip's processing runs (per-op cost decides at small clip sizes).
START = 0  # first frame of the window
SCALE = 1  # scale jitter
OFFSET = 2  # y, x of the crop window (2 draws)
FLIP = 4
COLOUR = 5  # apply, brightness, contrast, saturation, hue (5 draws)
NUM_DRAWS = 10


def clip_draws(seed: tf.Tensor) -> tf.Tensor:
  """The `[NUM_DRAWS]` uniforms of a clip's random choices (see above)."""
  return tf.random.stateless_uniform([NUM_DRAWS], seed)


def frame_indices(num_available: tf.Tensor, *, num_frames: int, stride: int,
                   is_training: bool, num_clips: int,
                   draws: Optional[tf.Tensor]) -> tf.Tensor:
  """Indices of the frames to keep, `[num_clips * num_frames]` int32.

  `draws` (`clip_draws`) places a training window; unused in evaluation.
  """
  n = tf.cast(num_available, tf.int32)
  window = (num_frames - 1) * stride + 1
  max_start = n - window
  if is_training:
    last = tf.maximum(max_start, 0)
    start = tf.cast(draws[START] * tf.cast(last + 1, tf.float32), tf.int32)
    starts = tf.minimum(start, last)[None]
  elif num_clips == 1:
    starts = (max_start // 2)[None]
  else:
    starts = tf.cast(tf.round(tf.linspace(
        0.0, tf.cast(tf.maximum(max_start, 0), tf.float32), num_clips)),
                     tf.int32)
  starts = tf.where(max_start >= 0, starts, tf.zeros_like(starts))
  offsets = tf.range(num_frames, dtype=tf.int32) * stride
  indices = starts[:, None] + offsets[None, :]
  return tf.reshape(indices % n, [-1])


def train_window(first_frame: tf.Tensor, crop_size: int,
                  opts: AugmentationOptions, draws: tf.Tensor) -> tf.Tensor:
  """Random square [y, x, size, size] in source pixels: scale jitter + crop.

  Resizing the short side to `target` and cutting a `crop_size` square is the
  same as cutting a `crop_size * short / target` square of the source and
  resizing it to `crop_size`; only that square is decoded.
  """
  shape = tf.io.extract_jpeg_shape(first_frame)
  h, w = shape[0], shape[1]
  short = tf.cast(tf.minimum(h, w), tf.float32)
  lo, hi = opts.scale_jitter
  target = float(lo) + draws[SCALE] * (float(hi) + 1e-3 - float(lo))
  size = crop_size * short / target
  if opts.window_quantum > 1:
    size = tf.round(size / opts.window_quantum) * opts.window_quantum
  size = tf.clip_by_value(tf.cast(tf.round(size), tf.int32), 1,
                          tf.minimum(h, w))
  offsets = draws[OFFSET:OFFSET + 2]
  y = tf.cast(offsets[0] * tf.cast(h - size + 1, tf.float32), tf.int32)
  x = tf.cast(offsets[1] * tf.cast(w - size + 1, tf.float32), tf.int32)
  return tf.stack([tf.minimum(y, h - size), tf.minimum(x, w - size), size,
                   size])


def eval_window(first_frame: tf.Tensor, crop_size: int, num_crops: int,
                 opts: AugmentationOptions):
  """Source window to decode, its resized size and the crops' offsets in it.

  The frame is resized so its short side is `min_resize`; the crops are
  `crop_size` squares of that (1: centre; 3: start / centre / end of the long
  side). Only the union of the crops is decoded and resized.
  """
  shape = tf.io.extract_jpeg_shape(first_frame)
  h, w = shape[0], shape[1]
  hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
  scale = opts.min_resize / tf.minimum(hf, wf)
  rh = tf.maximum(tf.cast(tf.round(hf * scale), tf.int32), crop_size)
  rw = tf.maximum(tf.cast(tf.round(wf * scale), tf.int32), crop_size)
  cy, cx = (rh - crop_size) // 2, (rw - crop_size) // 2
  if num_crops == 1:
    ys, xs = cy[None], cx[None]
  else:
    landscape = rw >= rh
    along_y = tf.stack([0, cy, rh - crop_size])
    along_x = tf.stack([0, cx, rw - crop_size])
    ys = tf.where(landscape, tf.fill([3], cy), along_y)
    xs = tf.where(landscape, along_x, tf.fill([3], cx))
  # Union of the crops, in resized pixels, and the source window covering it.
  uy0, ux0 = tf.reduce_min(ys), tf.reduce_min(xs)
  uy1, ux1 = tf.reduce_max(ys) + crop_size, tf.reduce_max(xs) + crop_size

  def to_source(v, fn, limit):
    return tf.clip_by_value(
        tf.cast(fn(tf.cast(v, tf.float32) / scale), tf.int32), 0, limit)

  sy0, sx0 = to_source(uy0, tf.floor, h - 1), to_source(ux0, tf.floor, w - 1)
  sy1 = tf.maximum(to_source(uy1, tf.math.ceil, h), sy0 + 1)
  sx1 = tf.maximum(to_source(ux1, tf.math.ceil, w), sx0 + 1)
  window = tf.stack([sy0, sx0, sy1 - sy0, sx1 - sx0])
  return window, tf.stack([uy1 - uy0, ux1 - ux0]), ys - uy0, xs - ux0
