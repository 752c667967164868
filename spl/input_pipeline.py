"""tf.data input pipeline: clip records to model-ready batches.

One public entry, `make_dataset`, for training (one augmented clip per record),
evaluation (several views per record, stacked so predictions can be averaged
per video) and the image experiment of the SPL paper (`image_mode`). The code
is single-replica: under a `tf.distribute` strategy call it from the function
given to `strategy.distribute_datasets_from_function` and pass the
`tf.distribute.InputContext` along.

Phases (dmvr / Model Garden style), per record:

1. read: shards matching `file_pattern` (a glob, or several separated by
   commas), interleaved in parallel; each record keeps its file name and
   record number so every error names them.
2. parse: `tf.io.parse_single_sequence_example` with the keys of
   `tfrecords_tools.schema`; validate (required keys present with one value,
   label in range).
3. sample: frame indices *before* decoding (only kept frames are decoded).
4. decode: one crop window per clip, computed from the JPEG header
   (`tf.io.extract_jpeg_shape` of the first kept frame); every kept frame is
   decoded with `tf.io.decode_and_crop_jpeg`, so only the rows and columns
   that survive the crop are decoded (libjpeg still entropy-decodes the rows
   above the window).
5. pixels: flip, photometric jitter, clip and normalisation of the decoded
   uint8 window in one XLA-fused pass (per-pixel affine maps commute with
   bilinear resizing, and the window has at most as many pixels as the
   output), then one bilinear resize of the window to the output size.
   With `device_finishing=True` (what the gin run files use for training)
   this phase is left to the consumer's step on the accelerator (see below).
6. batch.

Device finishing
----------------
JPEG decoding at training frame sizes is mostly entropy decoding, which
libjpeg does for every row and column whatever the window, so decoding the
crop window alone saves only ~10-20% of the decode; the float32 resize,
colour and normalisation of 16x224x224x3 outputs cost more than that on the
host. With `device_finishing=True` the host emits the decoded uint8 window
(training: zero-padded at the bottom right to `crop_size` by `padded_batch`;
evaluation: the views resized and cut on the host, rounded to uint8) and a
VIDEO_FINISH row of 14 floats per record (window size, flip, the colour draw,
mean, std), all drawn here from the seed. `finish_features` (or
`finish_video`), called first in every consumer's step, does the bilinear
resize (the same sampling as `tf.image.resize`, as two batched matmuls, flip
folded in), the colour matrix, the clip and the normalisation: the papers'
order. 4x fewer bytes cross to the device; the host does about as much work
per clip as reading and fully decoding the frames. `finish_features` leaves
float batches (host finishing) as they are, so consumers call it always.

Temporal sampling
-----------------
A window is `num_frames` frames `stride` apart, spanning
`L = (num_frames - 1) * stride + 1` frames of a clip with `n` frames.

* Training: start uniform in `[0, n - L]`.
* Evaluation: `num_test_clips` windows with starts evenly spaced over
  `[0, n - L]` (rounded), so the first starts at frame 0 and the last ends at
  frame `n - 1`; with one test clip, the middle window (start `(n - L) // 2`).
* Clips shorter than the window (`n < L`) are LOOPED, deterministically:
  start 0 and frame `i` of the window is frame `(i * stride) mod n` of the
  clip, in training and evaluation alike (Model Garden loops too).
* Image mode samples one frame: uniform in training, the middle one
  (`(n - 1) // 2`) in evaluation; image records have exactly one frame.

Spatial processing
------------------
* Training (per clip, the same for every frame): the short side is resized
  to a size drawn uniformly from `scale_jitter` (default
  `[crop * 8/7, crop * 10/7]`, i.e. [256, 320] for 224 and [128, 160] for
  112), then a random `crop_size` square is cut, then flipped left-right with
  probability 1/2. Implemented as: pick the square window in source pixels
  (`crop_size / scale`, rounded to a multiple of `window_quantum` = 4 so
  that XLA compiles for a dozen window sizes, not fifty: the scale moves in
  ~2% steps), decode only that window, resize it (bilinear).
* Evaluation: short side resized to `min_resize` (default `crop * 8/7`), then
  `num_test_crops` crops: 1 = centre; 3 = start, centre and end of the long
  side (centred on the short side), as in SlowFast/X3D 3-crop testing.
  Only the union of the crops is decoded and resized (up to sub-pixel
  rounding of that window, the same as resizing the whole frame).

Photometric jitter and normalisation
------------------------------------
In training, with probability `color_jitter_prob` (default 0.8) a clip gets
brightness (factor in `[1 - b, 1 + b]`), contrast (blend with the clip's mean
grey level, estimated on every 16th pixel, factor in `[1 - c, 1 + c]`),
saturation (blend with each pixel's grey level, factor in `[1 - s, 1 + s]`)
and hue (rotation of the chroma plane in YIQ space by `2 * pi * h'`, `h'` in
`[-h, h]`: not the HSV hexcone shift of `tf.image.adjust_hue`; for small `h'`
colours move the same way, by about as much, see the tests), applied in that
order with
one draw per clip (defaults b = c = s = 0.4, h = 0.1). All four are linear, so
they are fused into one 3x3 colour matrix plus offset; the result is clipped
to the valid range once at the end (not after each step). Then every pixel is
normalised as `(x / 255 - mean) / std` with ImageNet's
`mean = (0.485, 0.456, 0.406)`, `std = (0.229, 0.224, 0.225)` (configurable).

Output
------
A dict per batch (B = per-replica batch size):

* `VIDEO` float32 (uint8 with `device_finishing`, float32 after
  `finish_features`): training `[B, T, H, W, 3]` (`[B, H, W, 3]` in image mode);
  evaluation `[B, V, T, H, W, 3]` (`[B, V, H, W, 3]` in image mode) with
  `V = num_test_clips * num_test_crops` views, clip-major
  (view `k * num_test_crops + j` = test clip `k`, crop `j`).
* `LABEL` int32 `[B]` (from `label_key`), `CLIP_INDEX` int64 `[B]`
  (`clip/index`, the memory-bank row), `CLIP_KEY`, `VIDEO_ID`, `CAPTION`
  tf.string `[B]`.
* `VIDEO_FINISH` float32 `[B, 14]`, only with `device_finishing`.

Distribution
------------
With an `input_context`, the sorted file list is sharded by
`input_pipeline_id` (file `i` goes to pipeline `i mod num_input_pipelines`)
when there are at least as many files as pipelines; otherwise every pipeline
reads all files in the same fixed order and keeps every
`num_input_pipelines`-th record. Either way each record goes to exactly one
pipeline, so evaluation with `repeat=False` sees every record exactly once
across replicas (the last batches may be partial, or empty on some replicas).
Balanced shards (same number of records per file) keep replicas in step.

Bad input
---------
Records with a missing required key (`image/encoded` frames, `label_key`,
`clip/index`, `clip/key`, `video/id`, `caption/string`; each must hold one
value), a label outside `[0, num_classes)` (or negative when `num_classes` is
None), or frames that fail to decode (corrupt / truncated JPEG, frames of
different sizes, malformed protos) are as below. Only the frames a view
keeps are decoded, so a corrupt frame outside the sampled window goes
unnoticed in that epoch (evaluation with enough test clips touches all).

* `on_bad_record='error'` (default): an `InvalidArgumentError` is raised when
  the record is reached, whose message names the file, the record number in
  the file and the key / reason.
* `on_bad_record='skip'`: the record is dropped, a warning naming file,
  record and reason is logged, and it is counted (each time it is met, so
  once per epoch when repeating). `num_skipped_records()`
  returns the number skipped in this process since the last
  `reset_skipped_records()`; `skipped_record_messages()` the messages (the
  last 1000). The count is kept on the host in Python, so it works under any
  strategy whose input pipeline runs in this process.

A pattern that matches no file raises `ValueError` naming the pattern, at
call time. A label is never silently replaced or clipped.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from tfrecords_tools import file_patterns
from tfrecords_tools import schema

# ---- Output feature names ----
VIDEO = 'video'
LABEL = 'label'
CLIP_INDEX = 'clip_index'
CLIP_KEY = 'clip_key'
VIDEO_ID = 'video_id'
CAPTION = 'caption'
# With `device_finishing`: per-clip parameters of `finish_video`.
VIDEO_FINISH = 'video_finish'

# ImageNet statistics of [0, 1] RGB pixels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_ERROR = '_error'  # Internal: '' for a good record, else the reason.
# Internal, set by `_protected`: position of the record in its task (-1: the
# end-of-task sentinel) and the records lost (processing raised) before it.
_POSITION = '_position'
_LOST = '_lost'
_LOST_SEPARATOR = '\n'
_LOST_REASON = (
    'could not be parsed or decoded (malformed record, corrupt or truncated '
    'JPEG, or frames of different sizes). tf.data logs the TensorFlow error '
    'as a C++ warning, shown when TF_CPP_MIN_LOG_LEVEL < 2; if every record '
    'fails, that error is the cause, not the data')
_AUTOTUNE = tf.data.AUTOTUNE
# The dataset functions have no Python control flow on tensors: AutoGraph
# would only slow tracing down (and re-read this file's source).
_plain = tf.autograph.experimental.do_not_convert

# Rec. 601 luma, the grey level used by contrast and saturation.
_LUMA = (0.299, 0.587, 0.114)
# Row-vector RGB -> YIQ and its exact inverse (hue rotation 0 = identity).
_RGB_TO_YIQ = np.array([[0.299, 0.596, 0.211],
                        [0.587, -0.274, -0.523],
                        [0.114, -0.322, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


@dataclasses.dataclass(frozen=True)
class AugmentationOptions:
  """Knobs accepted as `**augmentation_kwargs` of `make_dataset`.

  Attributes:
    scale_jitter: training short-side size range `(min, max)` in pixels before
      the random crop; None: `(round(crop * 8/7), round(crop * 10/7))`.
    min_resize: evaluation short-side size; None: `round(crop * 8/7)`.
    random_flip: random left-right flip in training.
    brightness, contrast, saturation, hue: photometric jitter strengths (see
      module docstring); 0 disables one.
    color_jitter_prob: probability that a training clip is colour-jittered.
    mean, std: per-channel normalisation of [0, 1] pixels.
    shuffle_buffer_size: records in the training shuffle buffer (serialized
      records, so memory is this times the record size).
    file_cycle_length: files read concurrently.
    dct_method: JPEG IDCT ('' = libjpeg default, 'INTEGER_FAST' is faster
      and slightly less accurate).
    use_xla: compile the per-pixel colour/normalisation pass with XLA (one
      fused pass instead of ~10 TF ops); False runs the same ops unfused.
    window_quantum: training crop windows (in source pixels) are rounded to a
      multiple of this, so XLA compiles the colour pass for a few window
      sizes only (~12 for 224 crops of 256-pixel frames, ~0.3 s each, once
      per process); the scale jitter moves in steps of ~2% instead of
      continuously. 1: exact sizes.
    parallel_clips: clips processed concurrently (parse, decode, augment);
      None: tf.data's AUTOTUNE (the number of cores).
    records_per_task: records one parallel task processes in turn, inside
      one error-catching nested dataset (see `_protected`). Larger amortises
      the nested dataset's cost (measured on 8x112^2 clips: 1 record per
      task cost ~0.7 ms more CPU per clip than 8, out of ~2.5 ms; 32 gained
      nothing more) and makes the first batch come a little later.
  """
  scale_jitter: Optional[Tuple[int, int]] = None
  min_resize: Optional[int] = None
  random_flip: bool = True
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4
  hue: float = 0.1
  color_jitter_prob: float = 0.8
  mean: Tuple[float, float, float] = IMAGENET_MEAN
  std: Tuple[float, float, float] = IMAGENET_STD
  shuffle_buffer_size: int = 64
  file_cycle_length: int = 8
  dct_method: str = ''
  use_xla: bool = True
  parallel_clips: Optional[int] = None
  window_quantum: int = 4
  records_per_task: int = 8


# ---- Skip counting (host side) ----
_skip_lock = threading.Lock()
_skip_count = 0
_skip_messages: collections.deque = collections.deque(maxlen=1000)


def num_skipped_records() -> int:
  """Records skipped with `on_bad_record='skip'` since the last reset."""
  with _skip_lock:
    return _skip_count


def skipped_record_messages() -> List[str]:
  """Why the last (up to 1000) skipped records were skipped."""
  with _skip_lock:
    return list(_skip_messages)


def reset_skipped_records() -> None:
  """Sets the skip count to 0 and forgets the messages."""
  global _skip_count
  with _skip_lock:
    _skip_count = 0
    _skip_messages.clear()


def _record_skip(message: tf.Tensor) -> tf.Tensor:
  _count_skip(message.numpy().decode('utf-8', errors='replace'))
  return tf.constant(True)


def _count_skip(text: str) -> None:
  global _skip_count
  with _skip_lock:
    _skip_count += 1
    _skip_messages.append(text)
    count = _skip_count
  if count <= 100 or count % 1000 == 0:
    logging.warning('Skipping bad record (%d so far): %s', count, text)


# ---- Argument checks ----


def _list_files(file_pattern: str) -> List[str]:
  return file_patterns.match(file_pattern, '`file_pattern`')


def _make_options(crop_size: int,
                  kwargs: Dict[str, Any]) -> AugmentationOptions:
  known = {f.name for f in dataclasses.fields(AugmentationOptions)}
  unknown = sorted(set(kwargs) - known)
  if unknown:
    raise TypeError(
        f'make_dataset got unknown augmentation arguments {unknown}; '
        f'known: {sorted(known)}')
  opts = AugmentationOptions(**kwargs)
  if opts.scale_jitter is None:
    opts = dataclasses.replace(opts, scale_jitter=(
        round(crop_size * 8 / 7), round(crop_size * 10 / 7)))
  if opts.min_resize is None:
    opts = dataclasses.replace(opts, min_resize=round(crop_size * 8 / 7))
  lo, hi = opts.scale_jitter
  if not crop_size <= lo <= hi:
    raise ValueError(
        f'`scale_jitter` must satisfy crop_size ({crop_size}) <= min <= max, '
        f'got {opts.scale_jitter}')
  if opts.min_resize < crop_size:
    raise ValueError(
        f'`min_resize` must be >= crop_size ({crop_size}), got '
        f'{opts.min_resize}')
  for name in ('brightness', 'contrast', 'saturation'):
    v = getattr(opts, name)
    if not 0 <= v <= 1:
      raise ValueError(f'`{name}` must be in [0, 1], got {v}')
  if not 0 <= opts.hue <= 0.5:
    raise ValueError(f'`hue` must be in [0, 0.5], got {opts.hue}')
  if not 0 <= opts.color_jitter_prob <= 1:
    raise ValueError(
        f'`color_jitter_prob` must be in [0, 1], got {opts.color_jitter_prob}')
  if len(opts.mean) != 3 or len(opts.std) != 3 or min(opts.std) <= 0:
    raise ValueError(
        f'`mean` and `std` must have 3 values, std > 0; got {opts.mean}, '
        f'{opts.std}')
  if opts.shuffle_buffer_size < 1:
    raise ValueError(
        f'`shuffle_buffer_size` must be >= 1, got {opts.shuffle_buffer_size}')
  if opts.parallel_clips is not None and opts.parallel_clips < 1:
    raise ValueError(
        f'`parallel_clips` must be >= 1 or None, got {opts.parallel_clips}')
  if opts.records_per_task < 1:
    raise ValueError(
        f'`records_per_task` must be >= 1, got {opts.records_per_task}')
  if opts.window_quantum < 1:
    raise ValueError(
        f'`window_quantum` must be >= 1, got {opts.window_quantum}')
  if opts.file_cycle_length < 1:
    raise ValueError(
        f'`file_cycle_length` must be >= 1, got {opts.file_cycle_length}')
  return opts


# ---- Phase 2: parse and validate ----


def _parse(serialized: tf.Tensor, label_key: str) -> Dict[str, tf.Tensor]:
  context_spec = {
      label_key: tf.io.VarLenFeature(tf.int64),
      schema.CLIP_INDEX_KEY: tf.io.VarLenFeature(tf.int64),
      schema.CLIP_KEY_KEY: tf.io.VarLenFeature(tf.string),
      schema.VIDEO_ID_KEY: tf.io.VarLenFeature(tf.string),
      schema.CAPTION_KEY: tf.io.VarLenFeature(tf.string),
  }
  sequence_spec = {
      schema.IMAGE_KEY: tf.io.FixedLenSequenceFeature(
          (), tf.string, allow_missing=True),
  }
  context, sequence = tf.io.parse_single_sequence_example(
      serialized, context_spec, sequence_spec)
  out = {k: v.values for k, v in context.items()}
  out[schema.IMAGE_KEY] = sequence[schema.IMAGE_KEY]
  return out


_REQUIRED_KEYS = (schema.CLIP_INDEX_KEY, schema.CLIP_KEY_KEY,
                  schema.VIDEO_ID_KEY, schema.CAPTION_KEY)


def _label_upper(num_classes: Optional[int]) -> int:
  return num_classes if num_classes is not None else 2**31 - 1


def _validate(parsed: Dict[str, tf.Tensor], label_key: str,
              num_classes: Optional[int]) -> tf.Tensor:
  """'' if `parsed` is usable, else why not (first problem found).

  A few integer checks per record; the message is formatted only for a bad
  one (string ops on every record cost ~5% of a small clip's CPU time).
  """
  sizes = tf.stack([tf.size(parsed[k])
                    for k in (label_key,) + _REQUIRED_KEYS])
  label = parsed[label_key]
  ok = tf.reduce_all([
      tf.reduce_all(tf.equal(sizes, 1)),
      tf.size(parsed[schema.IMAGE_KEY]) > 0,
      tf.reduce_all(label >= 0),
      tf.reduce_all(label < _label_upper(num_classes))])
  return tf.cond(ok, lambda: tf.constant(''),
                 lambda: _describe_problem(parsed, label_key, num_classes))


def _describe_problem(parsed: Dict[str, tf.Tensor], label_key: str,
                      num_classes: Optional[int]) -> tf.Tensor:
  """Why `parsed` is not usable (the first problem found)."""
  error = tf.constant('')

  def first(error, bad, message):
    return tf.where(tf.logical_and(tf.equal(error, ''), bad), message, error)

  for key in (label_key,) + _REQUIRED_KEYS:
    n = tf.size(parsed[key])
    error = first(error, tf.equal(n, 0), f'missing required key `{key}`')
    error = first(
        error, n > 1,
        tf.strings.join([f'key `{key}` has ', tf.strings.as_string(n),
                         ' values, expected 1']))
  error = first(error, tf.equal(tf.size(parsed[schema.IMAGE_KEY]), 0),
                f'missing required key `{schema.IMAGE_KEY}` (no frames)')
  label = tf.concat([parsed[label_key], tf.zeros([1], tf.int64)], 0)[0]
  upper = _label_upper(num_classes)
  bad_label = tf.logical_or(label < 0, label >= upper)
  error = first(
      error, tf.logical_and(tf.size(parsed[label_key]) > 0, bad_label),
      tf.strings.join([
          f'label `{label_key}` = ', tf.strings.as_string(label),
          f' is out of range [0, {upper})'
          + ('' if num_classes is not None else ' (num_classes not set)')]))
  return error


# ---- Phase 3: temporal sampling ----


def _frame_indices(num_available: tf.Tensor, *, num_frames: int, stride: int,
                   is_training: bool, num_clips: int,
                   seed: Optional[tf.Tensor]) -> tf.Tensor:
  """Indices of the frames to keep, `[num_clips * num_frames]` int32."""
  n = tf.cast(num_available, tf.int32)
  window = (num_frames - 1) * stride + 1
  max_start = n - window
  if is_training:
    start = tf.random.stateless_uniform(
        [], seed, minval=0, maxval=tf.maximum(max_start, 0) + 1,
        dtype=tf.int32)
    starts = start[None]
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


# ---- Phase 4: decode + spatial ----


def _decode_window(frames: tf.Tensor, window: tf.Tensor,
                   dct_method: str) -> tf.Tensor:
  """Decodes `window` ([y, x, h, w]) of every JPEG in `frames` -> uint8.

  With a static number of frames (up to 64) the decodes are unrolled: a
  `map_fn` while loop costs ~8% of a 16-frame clip's decode time.
  """
  n = frames.shape[0]
  if n is not None and n <= 64:
    return tf.stack([tf.io.decode_and_crop_jpeg(
        frames[i], window, channels=3, dct_method=dct_method)
                     for i in range(n)])
  return tf.map_fn(
      lambda b: tf.io.decode_and_crop_jpeg(
          b, window, channels=3, dct_method=dct_method),
      frames, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))


def _train_window(first_frame: tf.Tensor, crop_size: int,
                  opts: AugmentationOptions, seed: tf.Tensor) -> tf.Tensor:
  """Random square [y, x, size, size] in source pixels: scale jitter + crop.

  Resizing the short side to `target` and cutting a `crop_size` square is the
  same as cutting a `crop_size * short / target` square of the source and
  resizing it to `crop_size`; only that square is decoded.
  """
  shape = tf.io.extract_jpeg_shape(first_frame)
  h, w = shape[0], shape[1]
  short = tf.cast(tf.minimum(h, w), tf.float32)
  lo, hi = opts.scale_jitter
  target = tf.random.stateless_uniform(
      [], tf.random.experimental.stateless_fold_in(seed, 1),
      minval=float(lo), maxval=float(hi) + 1e-3)
  size = crop_size * short / target
  if opts.window_quantum > 1:
    size = tf.round(size / opts.window_quantum) * opts.window_quantum
  size = tf.clip_by_value(tf.cast(tf.round(size), tf.int32), 1,
                          tf.minimum(h, w))
  offsets = tf.random.stateless_uniform(
      [2], tf.random.experimental.stateless_fold_in(seed, 2), 0.0, 1.0)
  y = tf.cast(offsets[0] * tf.cast(h - size + 1, tf.float32), tf.int32)
  x = tf.cast(offsets[1] * tf.cast(w - size + 1, tf.float32), tf.int32)
  return tf.stack([tf.minimum(y, h - size), tf.minimum(x, w - size), size,
                   size])


def _eval_window(first_frame: tf.Tensor, crop_size: int, num_crops: int,
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


# ---- Phase 5: colour + normalisation ----


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


def _colour_params(opts: AugmentationOptions, seed: Optional[tf.Tensor],
                   is_training: bool) -> tf.Tensor:
  """[apply, brightness, contrast, saturation, hue] of one clip."""
  jitter = is_training and opts.color_jitter_prob > 0 and any(
      (opts.brightness, opts.contrast, opts.saturation, opts.hue))
  if not jitter:
    return tf.constant([0.0, 1.0, 1.0, 1.0, 0.0])

  def draw(i, lo, hi):
    return tf.random.stateless_uniform(
        [], tf.random.experimental.stateless_fold_in(seed, 10 + i), lo, hi)

  apply = tf.cast(draw(0, 0.0, 1.0) < opts.color_jitter_prob, tf.float32)
  return tf.stack([
      apply,
      draw(1, 1.0 - opts.brightness, 1.0 + opts.brightness),
      draw(2, 1.0 - opts.contrast, 1.0 + opts.contrast),
      draw(3, 1.0 - opts.saturation, 1.0 + opts.saturation),
      draw(4, -opts.hue, opts.hue)])


def _colour_affine(colour: tf.Tensor,
                   grey_mean: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Per-clip colour jitter as row-vector `x @ matrix + offset`, batched.

  Args:
    colour: `[B, 5]` rows of `_colour_params`.
    grey_mean: `[B]` mean grey level of each clip (before jitter).

  Returns:
    matrix `[B, 3, 3]` and offset `[B, 3]`, in [0, 255] pixel units.
  """
  apply, b, c, s, hue = tf.unstack(colour, axis=-1)
  luma = tf.constant(_LUMA, tf.float32)
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


def _pixel_transform(frames: tf.Tensor, flip: tf.Tensor, colour: tf.Tensor,
                     mean: tf.Tensor, std: tf.Tensor) -> tf.Tensor:
  """uint8 [..., H, W, 3] -> normalised float32: flip, colour, clip, normalise.

  Per pixel and linear up to the clip, so it commutes with the (bilinear,
  convex) resize that follows; it runs before the resize because the decoded
  window has at most as many pixels as the output. XLA fuses it into one pass.
  """
  x = tf.cast(frames, tf.float32)
  x = tf.where(flip, tf.reverse(x, [-2]), x)
  luma = tf.constant(_LUMA, tf.float32)
  # Clip mean grey level for contrast, from a subsample (every 16th pixel).
  sub = tf.reshape(x, [-1, 3])[::16]
  grey_mean = tf.reduce_sum(tf.reduce_mean(sub, 0) * luma)
  matrix, offset = _colour_affine(colour[None], grey_mean[None])
  matrix, offset = matrix[0], offset[0]
  scale = 1.0 / (255.0 * std)
  shift = -mean / std
  channels = []
  for j in range(3):
    v = (x[..., 0] * matrix[0, j] + x[..., 1] * matrix[1, j] +
         x[..., 2] * matrix[2, j] + offset[j])
    channels.append(tf.clip_by_value(v, 0.0, 255.0) * scale[j] + shift[j])
  return tf.stack(channels, -1)


_pixel_transform_xla = tf.function(_pixel_transform, jit_compile=True,
                                   reduce_retracing=True, autograph=False)


def _transform_and_resize(frames: tf.Tensor, size: tf.Tensor, flip: tf.Tensor,
                          colour: tf.Tensor, opts: AugmentationOptions):
  mean = tf.constant(opts.mean, tf.float32)
  std = tf.constant(opts.std, tf.float32)
  fn = _pixel_transform_xla if opts.use_xla else _pixel_transform
  video = fn(frames, flip, colour, mean, std)
  return tf.image.resize(video, size, method='bilinear')


# ---- Finishing on the accelerator (`device_finishing`) ----

# VIDEO_FINISH row: window height and width (valid pixels at the top left of
# the padded uint8 frame), flip, the 5 `_colour_params`, mean (3), std (3).
_FINISH_SIZE = 14


def _finish_row(valid_hw: tf.Tensor, flip: tf.Tensor, colour: tf.Tensor,
                opts: AugmentationOptions) -> tf.Tensor:
  return tf.concat([
      tf.cast(valid_hw, tf.float32), tf.cast(flip, tf.float32)[None], colour,
      tf.constant(opts.mean, tf.float32), tf.constant(opts.std, tf.float32)],
                   0)


def _interp_matrix(valid: tf.Tensor, size: int) -> tf.Tensor:
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
    rows = _interp_matrix(valid_h, height)
    cols = _interp_matrix(valid_w, width)
    cols = tf.where(flip[:, None, None], tf.reverse(cols, [1]), cols)
    y = tf.einsum('bip,bfpwc->bfiwc', rows, x)
    return tf.einsum('bjq,bfiqc->bfijc', cols, y)

  # Evaluation views (and windows resized on the host) need no resampling.
  identity = tf.reduce_all(tf.logical_and(
      tf.logical_and(tf.equal(valid_h, height), tf.equal(valid_w, width)),
      tf.logical_not(flip)))
  x = tf.cond(identity, lambda: x, resample)
  luma = tf.constant(_LUMA, tf.float32)
  grey_mean = tf.reduce_mean(
      tf.tensordot(x[:, :, ::4, ::4, :], luma, [[4], [0]]), [1, 2, 3])
  matrix, offset = _colour_affine(colour, grey_mean)
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


def clip_shape(dataset: tf.data.Dataset, leading: int) -> Tuple[int, ...]:
  """The static clip shape of a dataset's videos, after `leading` batch dims.

  The trainers probe their pipelines with it to build the model before the
  first step; a pipeline that does not give a static shape is refused.
  """
  shape = dataset.element_spec[VIDEO].shape
  clip = tuple(shape.as_list()[leading:])
  if not clip or any(d is None for d in clip):
    raise ValueError(f'the input pipeline must give a static clip shape, got '
                     f'{shape} for {VIDEO!r}')
  return clip


def video_features(element: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
  """VIDEO and, if present, VIDEO_FINISH of a batch (for feature selection)."""
  return {k: element[k] for k in (VIDEO, VIDEO_FINISH) if k in element}


# ---- Putting a record together ----


def _to_uint8(x: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)


def _read_file(path: tf.Tensor) -> tf.data.Dataset:
  return tf.data.TFRecordDataset(path).enumerate().map(_plain(
      lambda i, r: {'path': path, 'record': i, 'serialized': r}))


class _RecordProcessor:
  """serialized record (+ seed) -> output dict with an `_ERROR` field."""

  def __init__(self, *, is_training, num_frames, stride, crop_size,
               num_classes, label_key, num_test_clips, num_test_crops,
               image_mode, opts, device_finishing=False):
    self.device_finishing = device_finishing
    self.is_training = is_training
    self.num_frames = 1 if image_mode else num_frames
    self.stride = stride
    self.crop_size = crop_size
    self.num_classes = num_classes
    self.label_key = label_key
    self.num_clips = 1 if (is_training or image_mode) else num_test_clips
    self.num_crops = 1 if is_training else num_test_crops
    self.image_mode = image_mode
    self.opts = opts

  @property
  def pads_in_batch(self) -> bool:
    """Training windows of `device_finishing` are padded by `padded_batch`.

    The frames are copied once, into the batch, instead of padded and then
    copied again by `batch`.
    """
    return self.device_finishing and self.is_training

  @property
  def video_shape(self) -> List[int]:
    s = self.crop_size
    shape = [s, s, 3] if self.image_mode else [self.num_frames, s, s, 3]
    if not self.is_training:
      shape = [self.num_clips * self.num_crops] + shape
    return shape

  def _prefix(self, element):
    return tf.strings.join([element['path'], ' record #',
                            tf.strings.as_string(element['record']), ': '])

  def placeholder(self, element, error) -> Dict[str, tf.Tensor]:
    extra = {}
    if self.device_finishing:
      extra[VIDEO_FINISH] = tf.ones([_FINISH_SIZE])
    return {
        **extra,
        VIDEO: tf.zeros(self.video_shape,
                        tf.uint8 if self.device_finishing else tf.float32),
        LABEL: tf.constant(-1, tf.int32),
        CLIP_INDEX: tf.constant(-1, tf.int64),
        CLIP_KEY: tf.constant(''),
        VIDEO_ID: tf.constant(''),
        CAPTION: tf.constant(''),
        _ERROR: tf.strings.join([self._prefix(element), error]),
    }

  def __call__(self, element) -> Dict[str, tf.Tensor]:
    parsed = _parse(element['serialized'], self.label_key)
    error = _validate(parsed, self.label_key, self.num_classes)
    return tf.cond(tf.equal(error, ''),
                   lambda: self._process(element, parsed),
                   lambda: self.placeholder(element, error))

  def _decode_uint8(self, kept, seed) -> Tuple[tf.Tensor, tf.Tensor]:
    """Host half of `device_finishing`: uint8 frames and the VIDEO_FINISH row.

    Training: the decoded crop window, zero-padded at the bottom right to
    `crop_size` (resized on the host first only if it is larger, i.e. frames
    stored bigger than the scale jitter expects); resize, flip and colour are
    left to `finish_video`. Evaluation: the views resized and cut on the host,
    rounded to uint8; `finish_video` only normalises.
    """
    s = self.crop_size
    if self.is_training:
      window = _train_window(kept[0], s, self.opts, seed)
      decoded = _decode_window(kept, window, self.opts.dct_method)
      too_big = tf.reduce_any(window[2:] > s)
      decoded = tf.cond(too_big, lambda: _to_uint8(tf.image.resize(
          decoded, [s, s], method='bilinear')), lambda: decoded)
      valid = tf.minimum(window[2:], s)
      video = decoded  # Padded to crop_size at the bottom right when batched.
      flip = tf.constant(False)
      if self.opts.random_flip:
        flip = tf.random.stateless_uniform(
            [], tf.random.experimental.stateless_fold_in(seed, 3)) < 0.5
      colour = _colour_params(self.opts, seed, is_training=True)
      return video, _finish_row(valid, flip, colour, self.opts)
    window, size, ys, xs = _eval_window(kept[0], s, self.num_crops, self.opts)
    decoded = _decode_window(kept, window, self.opts.dct_method)
    union = _to_uint8(tf.image.resize(decoded, size, method='bilinear'))
    crops = [union[:, ys[j]:ys[j] + s, xs[j]:xs[j] + s, :]
             for j in range(self.num_crops)]
    video = tf.reshape(tf.stack(crops, 0), [self.num_crops, self.num_clips,
                                            self.num_frames, s, s, 3])
    video = tf.transpose(video, [1, 0, 2, 3, 4, 5])
    colour = _colour_params(self.opts, None, is_training=False)
    return video, _finish_row(tf.constant([s, s]), tf.constant(False), colour,
                              self.opts)

  def _process(self, element, parsed) -> Dict[str, tf.Tensor]:
    seed = element.get('seed')
    frames = parsed[schema.IMAGE_KEY]
    t_seed = (None if seed is None else
              tf.random.experimental.stateless_fold_in(seed, 0))
    indices = _frame_indices(
        tf.shape(frames)[0], num_frames=self.num_frames, stride=self.stride,
        is_training=self.is_training, num_clips=self.num_clips, seed=t_seed)
    if self.image_mode and not self.is_training:
      n = tf.shape(frames)[0]
      indices = ((n - 1) // 2)[None]
    kept = tf.gather(frames, indices)
    s = self.crop_size
    extra = {}
    if self.device_finishing:
      video, extra[VIDEO_FINISH] = self._decode_uint8(kept, seed)
    elif self.is_training:
      window = _train_window(kept[0], s, self.opts, seed)
      decoded = _decode_window(kept, window, self.opts.dct_method)
      flip = tf.constant(False)
      if self.opts.random_flip:
        flip = tf.random.stateless_uniform(
            [], tf.random.experimental.stateless_fold_in(seed, 3)) < 0.5
      video = _transform_and_resize(
          decoded, [s, s], flip,
          _colour_params(self.opts, seed, is_training=True), self.opts)
    else:
      window, size, ys, xs = _eval_window(kept[0], s, self.num_crops,
                                          self.opts)
      decoded = _decode_window(kept, window, self.opts.dct_method)
      union = _transform_and_resize(
          decoded, size, tf.constant(False),
          _colour_params(self.opts, None, is_training=False), self.opts)
      crops = [union[:, ys[j]:ys[j] + s, xs[j]:xs[j] + s, :]
               for j in range(self.num_crops)]
      # [C, K*T, S, S, 3] -> [K*C, T, S, S, 3], clip-major.
      video = tf.reshape(tf.stack(crops, 0), [self.num_crops, self.num_clips,
                                              self.num_frames, s, s, 3])
      video = tf.transpose(video, [1, 0, 2, 3, 4, 5])
    if self.pads_in_batch:
      video = video[0] if self.image_mode else video
    else:
      video = tf.reshape(video, self.video_shape)
    return {
        **extra,
        VIDEO: video,
        LABEL: tf.cast(parsed[self.label_key][0], tf.int32),
        CLIP_INDEX: parsed[schema.CLIP_INDEX_KEY][0],
        CLIP_KEY: parsed[schema.CLIP_KEY_KEY][0],
        VIDEO_ID: parsed[schema.VIDEO_ID_KEY][0],
        CAPTION: parsed[schema.CAPTION_KEY][0],
        _ERROR: tf.constant(''),
    }


def _protected(processor: _RecordProcessor):
  """A task of records (batched) -> their outputs; none lost silently.

  TF graphs cannot catch errors, but a dataset can drop an element whose
  map raised (`ignore_errors`). The task's records are processed one after
  another in one nested dataset that does so; a `scan` over what comes out
  finds the gaps (records carry their position) and names the lost records
  in `_LOST` of the next output, or of an end-of-task sentinel (position
  -1, dropped later). One nested dataset per task of `records_per_task`
  records, not per record: per record it cost ~0.7 ms of CPU per 8x112^2
  clip, a quarter of what the whole pipeline spends on it.
  """
  def fn(task):
    n = tf.shape(task['record'], out_type=tf.int64)[0]
    names = tf.strings.join([task['path'], ' record #',
                             tf.strings.as_string(task['record'])])

    def process(element):
      out = processor(element)
      out[_POSITION] = element[_POSITION]
      return out

    def sentinel(element):
      out = processor.placeholder(element, '')
      out[_ERROR] = tf.constant('')
      out[_POSITION] = tf.constant(-1, tf.int64)
      return out

    def find_lost(expected, out):
      position = tf.where(out[_POSITION] < 0, n, out[_POSITION])
      out = dict(out)
      out[_LOST] = tf.strings.reduce_join(names[expected:position],
                                          separator=_LOST_SEPARATOR)
      return position + 1, out

    records = tf.data.Dataset.from_tensor_slices(
        dict(task, **{_POSITION: tf.range(n)}))
    good = records.map(_plain(process)).ignore_errors(log_warning=True)
    end = records.take(1).map(_plain(sentinel))
    return good.concatenate(end).scan(tf.constant(0, tf.int64),
                                      _plain(find_lost))
  return fn


def _raise_if_bad(element):
  element = dict(element)
  error = element.pop(_ERROR)
  lost = element.pop(_LOST)
  checks = [
      tf.debugging.Assert(tf.equal(error, ''), [error], summarize=1),
      tf.debugging.Assert(
          tf.equal(lost, ''),
          [tf.strings.join([lost, ': ', _LOST_REASON])], summarize=1)]
  with tf.control_dependencies(checks):
    element[LABEL] = tf.identity(element[LABEL])
  return element


def _record_lost(lost: tf.Tensor) -> tf.Tensor:
  for name in lost.numpy().decode('utf-8', errors='replace').split(
      _LOST_SEPARATOR):
    _count_skip(f'{name}: {_LOST_REASON}')
  return tf.constant(True)


def _keep_if_good(element):
  bad = tf.not_equal(element[_ERROR], '')
  counted = [
      tf.cond(bad,
              lambda: tf.py_function(_record_skip, [element[_ERROR]], tf.bool),
              lambda: tf.constant(False)),
      tf.cond(tf.not_equal(element[_LOST], ''),
              lambda: tf.py_function(_record_lost, [element[_LOST]], tf.bool),
              lambda: tf.constant(False))]
  with tf.control_dependencies(counted):
    return tf.logical_and(tf.logical_not(bad), element[_POSITION] >= 0)


def _is_output(element):
  return element[_POSITION] >= 0


def _drop_internal(element):
  return {k: v for k, v in element.items()
          if k not in (_ERROR, _LOST, _POSITION)}


def make_dataset(file_pattern: str, *, is_training: bool, batch_size: int,
                 num_frames: int = 16, stride: int = 4, crop_size: int = 224,
                 num_classes: Optional[int] = None,
                 label_key: str = schema.LABEL_INDEX_KEY,
                 num_test_clips: int = 1, num_test_crops: int = 1,
                 image_mode: bool = False, deterministic: bool = False,
                 seed: Optional[int] = None,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 on_bad_record: str = 'error',
                 drop_remainder: Optional[bool] = None,
                 repeat: Optional[bool] = None,
                 device_finishing: bool = False,
                 **augmentation_kwargs) -> tf.data.Dataset:
  """Batches of model-ready clips from clip records (see module docstring).

  Args:
    file_pattern: glob of TFRecord shards (several globs: comma-separated).
    is_training: training (random clip + augmentation, shuffled, repeated) or
      evaluation (`num_test_clips * num_test_crops` views per record).
    batch_size: per-replica batch size.
    num_frames: frames per clip (T).
    stride: temporal stride between kept frames.
    crop_size: output height and width.
    num_classes: labels must be in `[0, num_classes)`; None: only `>= 0`.
    label_key: context key the label is read from.
    num_test_clips: evaluation clips per record, evenly spaced.
    num_test_crops: evaluation spatial crops per clip, 1 or 3.
    image_mode: single-frame records, VIDEO without the time axis.
    deterministic: reproducible order and augmentation (seed 0 if `seed` is
      None).
    seed: seed of shuffling and augmentation; with an input context each
      pipeline derives its own.
    input_context: from `distribute_datasets_from_function`.
    on_bad_record: 'error' or 'skip' (see module docstring).
    drop_remainder: drop the last partial batch; default: `is_training`.
    repeat: repeat forever; default: `is_training`.
    device_finishing: VIDEO is uint8 and the per-pixel float work (training:
      resize, flip, colour jitter; always: normalisation) is left to
      `finish_features` in the consumer's step, on the accelerator, driven
      by a VIDEO_FINISH feature drawn here (so seeds still fix everything).
      4x fewer bytes to the device and ~1.5x the clips per host CPU-second.
      For accelerators: on a CPU-only machine the resampling matmuls cost
      more than the host path saves.
    **augmentation_kwargs: fields of `AugmentationOptions`.

  Returns:
    A `tf.data.Dataset` of dicts keyed by VIDEO, LABEL, CLIP_INDEX, CLIP_KEY,
    VIDEO_ID, CAPTION.
  """
  if batch_size < 1:
    raise ValueError(f'`batch_size` must be > 0, got {batch_size}')
  if num_frames < 1:
    raise ValueError(f'`num_frames` must be > 0, got {num_frames}')
  if stride < 1:
    raise ValueError(f'`stride` must be > 0, got {stride}')
  if crop_size < 1:
    raise ValueError(f'`crop_size` must be > 0, got {crop_size}')
  if num_classes is not None and num_classes < 1:
    raise ValueError(f'`num_classes` must be > 0 or None, got {num_classes}')
  if num_test_clips < 1:
    raise ValueError(f'`num_test_clips` must be > 0, got {num_test_clips}')
  if num_test_crops not in (1, 3):
    raise ValueError(f'`num_test_crops` must be 1 or 3, got {num_test_crops}')
  if image_mode and num_test_clips != 1:
    raise ValueError(
        f'`num_test_clips` must be 1 in image mode, got {num_test_clips}')
  if on_bad_record not in ('error', 'skip'):
    raise ValueError(
        f"`on_bad_record` must be 'error' or 'skip', got {on_bad_record!r}")
  opts = _make_options(crop_size, augmentation_kwargs)
  files = _list_files(file_pattern)
  if drop_remainder is None:
    drop_remainder = is_training
  if repeat is None:
    repeat = is_training
  if deterministic and seed is None:
    seed = 0

  num_pipelines, pipeline_id = 1, 0
  if input_context is not None:
    num_pipelines = input_context.num_input_pipelines
    pipeline_id = input_context.input_pipeline_id
  shard_records = num_pipelines > 1 and len(files) < num_pipelines
  if num_pipelines > 1 and not shard_records:
    files = files[pipeline_id::num_pipelines]
  pipeline_seed = None if seed is None else seed * 1_000_003 + pipeline_id

  ds = tf.data.Dataset.from_tensor_slices(files)
  if is_training and not shard_records and len(files) > 1:
    ds = ds.shuffle(len(files), seed=pipeline_seed,
                    reshuffle_each_iteration=True)
  cycle = min(len(files), opts.file_cycle_length)
  ds = ds.interleave(
      _plain(_read_file), cycle_length=cycle, block_length=1,
      num_parallel_calls=cycle if cycle > 1 else None,
      deterministic=(bool(deterministic or shard_records) if cycle > 1
                     else None))
  if shard_records:
    ds = ds.shard(num_pipelines, pipeline_id)
  if is_training:
    ds = ds.shuffle(opts.shuffle_buffer_size, seed=pipeline_seed,
                    reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  if is_training:
    seeds = tf.data.Dataset.random(
        seed=None if pipeline_seed is None else pipeline_seed + 1).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds)).map(
        _plain(lambda e, s: dict(e, seed=s)))

  processor = _RecordProcessor(
      is_training=is_training, num_frames=num_frames, stride=stride,
      crop_size=crop_size, num_classes=num_classes, label_key=label_key,
      num_test_clips=num_test_clips, num_test_crops=num_test_crops,
      image_mode=image_mode, opts=opts, device_finishing=device_finishing)
  ds = ds.batch(opts.records_per_task).interleave(
      _plain(_protected(processor)),
      cycle_length=opts.parallel_clips or _AUTOTUNE,
      block_length=1, num_parallel_calls=_AUTOTUNE,
      deterministic=deterministic)
  if on_bad_record == 'error':
    ds = ds.map(_plain(_raise_if_bad)).filter(_plain(_is_output))
  else:
    ds = ds.filter(_plain(_keep_if_good))
  ds = ds.map(_plain(_drop_internal))
  if processor.pads_in_batch:
    shapes = {k: v.shape for k, v in ds.element_spec.items()}
    shapes[VIDEO] = processor.video_shape
    ds = ds.padded_batch(batch_size, padded_shapes=shapes,
                         drop_remainder=drop_remainder)
  else:
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  ds = ds.prefetch(_AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = deterministic
  ds = ds.with_options(options)
  return ds
