"""The geometry of a clip's views, shared by both pixel paths.

Both the host path (`spl.inputs.pixels`: float32 pixels finished on the
host) and the device path (uint8 windows finished by `spl.inputs.finish` on
the accelerator) decode the same window of the same frames and cut the same
views; only what happens to the decoded pixels differs, and that is the
`resize` a caller passes in.
"""

from typing import Callable, Tuple

import tensorflow as tf

from spl.inputs import decode
from spl.inputs import sample
from spl.inputs.options import AugmentationOptions


def training_window(frames: tf.Tensor, crop_size: int,
                    opts: AugmentationOptions,
                    draws: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """A training clip's decoded window and flip.

  Args:
    frames: the kept JPEG frames, [T] string.
    crop_size: the output size.
    opts: augmentation options.
    draws: the clip's random draws (`sample.clip_draws`).

  Returns:
    (decoded uint8 [T, h, w, 3] of the source window, the window
    [y, x, h, w] in source pixels, flip bool scalar).
  """
  window = sample.train_window(frames[0], crop_size, opts, draws)
  decoded = decode.decode_window(frames, window, opts.dct_method)
  flip = tf.constant(False)
  if opts.random_flip:
    flip = draws[sample.FLIP] < 0.5
  return decoded, window, flip


def evaluation_views(frames: tf.Tensor, *, crop_size: int, num_crops: int,
                     num_clips: int, num_frames: int,
                     opts: AugmentationOptions,
                     resize: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
                     ) -> tf.Tensor:
  """An evaluation record's views, clip-major.

  The union of the crops is decoded once, `resize(decoded, size)` maps it to
  its resized `size` (in the caller's dtype and pixel work), and the crops
  are cut from that.

  Args:
    frames: the kept JPEG frames of all test clips, [num_clips * T] string.
    crop_size: the output size S.
    num_crops: spatial crops per clip (1 or 3).
    num_clips: test clips.
    num_frames: frames per clip T.
    opts: augmentation options (`min_resize`, `dct_method`).
    resize: (decoded uint8 [K*T, h, w, 3], size [2]) -> [K*T, H', W', 3].

  Returns:
    [num_clips, num_crops, T, S, S, 3]; view k * num_crops + j is test clip
    k, crop j.
  """
  s = crop_size
  window, size, ys, xs = sample.eval_window(frames[0], s, num_crops, opts)
  union = resize(decode.decode_window(frames, window, opts.dct_method), size)
  crops = [union[:, ys[j]:ys[j] + s, xs[j]:xs[j] + s, :]
           for j in range(num_crops)]
  # [C, K*T, S, S, 3] -> [K, C, T, S, S, 3].
  video = tf.reshape(tf.stack(crops, 0),
                     [num_crops, num_clips, num_frames, s, s, 3])
  return tf.transpose(video, [1, 0, 2, 3, 4, 5])
