"""tf.data input pipeline: clip records to model-ready batches.

One public entry, `make_dataset`, for training (one augmented clip per record),
evaluation (several views per record, stacked so predictions can be averaged
per video) and the image experiment of the SPL paper (`image_mode`). The code
is single-replica: under a `tf.distribute` strategy call it from the function
given to `strategy.distribute_datasets_from_function` and pass the
`tf.distribute.InputContext` along.

Phases (dmvr / Model Garden style), per record; each has its module in
`spl/inputs/` (features, options, decode, sample, geometry, pixels, finish:
see its `__init__`) and this one reads files, runs them per record with
error catching, and batches:

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

A damaged shard (truncated, random bytes, a record whose CRC does not
match) is read up to the damage; the bytes its records account for are then
compared with the file's size (stat'ed once per shard when the dataset is
made), so the damage is found at the end of that file's records.

* `on_bad_record='error'` (default): an `InvalidArgumentError` is raised when
  the record is reached, whose message names the file, the record number in
  the file and the key / reason; for a damaged shard, the file, the byte
  offset and the first record not read.
* `on_bad_record='skip'`: the record is dropped, a warning naming file,
  record and reason is logged, and it is counted (each time it is met, so
  once per epoch when repeating); of a damaged shard the records before the
  damage are used and the file is counted once. The counts live on the host
  (`spl.inputs.bad_input`; re-exported here: `num_skipped_records()`,
  `skipped_record_messages()` (the last 1000), `damaged_files()`,
  `reset_skipped_records()`), so they work under any strategy whose input
  pipeline runs in this process; the training loop reports them.

How a record that fails to decode is found: records are processed in
parallel but in order, and one whose processing raises is dropped
(`ignore_errors`; a TF graph cannot catch an error). Every record carries the
names of the `lost_records_named` (default 16) records before it, so the
next one that comes out names what is missing (a finite stream ends with a
marker that cannot fail, so the last records are found too); more lost in a
row are counted and said to be unnamed. A damaged shard's message travels as
an element and is raised after processing, for the same reason.

A pattern that matches no file raises `ValueError` naming the pattern, at
call time. A label is never silently replaced or clipped.
"""

from __future__ import annotations

import concurrent.futures
from typing import Callable, Dict, List, Optional, Tuple

import tensorflow as tf

from spl.inputs import bad_input
from spl.inputs import decode
from spl.inputs import geometry
from spl.inputs import options as options_lib
from spl.inputs import pixels
from spl.inputs import sample
# The pipeline's public names, defined by its phases (re-exported).
# pylint: disable=unused-import
from spl.inputs.features import CAPTION
from spl.inputs.features import CLIP_INDEX
from spl.inputs.features import CLIP_KEY
from spl.inputs.features import IMAGENET_MEAN
from spl.inputs.features import IMAGENET_STD
from spl.inputs.features import LABEL
from spl.inputs.features import VIDEO
from spl.inputs.features import VIDEO_FINISH
from spl.inputs.features import VIDEO_ID
from spl.inputs.finish import finish_features
from spl.inputs.finish import finish_row
from spl.inputs.finish import finish_video
from spl.inputs.finish import FINISH_SIZE
from spl.inputs.finish import video_features
from spl.inputs.options import AugmentationOptions
from tfrecords_tools import file_patterns
from tfrecords_tools import schema

_ERROR = '_error'  # Internal: '' for a good record, else the reason.
# Internal, set by `_LossFinder.remember` before processing and carried
# through it: the record's file (index into the pipeline's files) and number,
# its place in the stream, whether it is the end-of-stream marker or a damaged
# shard's message, and the place, file and number of the records before it.
_FILE = '_file'
_RECORD = '_record'
_SEQ = '_seq'
_END = '_end'
_DAMAGED = '_damaged'
_PREV_SEQ = '_prev_seq'
_PREV_FILE = '_prev_file'
_PREV_RECORD = '_prev_record'
_CARRIED = (_FILE, _RECORD, _SEQ, _END, _DAMAGED, _PREV_SEQ, _PREV_FILE,
            _PREV_RECORD)
_KEEP = '_keep'  # Set by `_LossFinder.check` when some outputs are dropped.
_LOST_REASON = (
    'could not be parsed or decoded (malformed record, corrupt or truncated '
    'JPEG, or frames of different sizes). tf.data logs the TensorFlow error '
    'as a C++ warning, shown when TF_CPP_MIN_LOG_LEVEL < 2; if every record '
    'fails, that error is the cause, not the data')
_AUTOTUNE = tf.data.AUTOTUNE
# What the trainers take as a dataset function: `make_dataset`'s signature.
DatasetFn = Callable[..., tf.data.Dataset]
# The dataset functions have no Python control flow on tensors: AutoGraph
# would only slow tracing down (and re-read this file's source).
_plain = tf.autograph.experimental.do_not_convert

# ---- Host-side counts of what `on_bad_record='skip'` dropped ----
num_skipped_records = bad_input.num_skipped_records
skipped_record_messages = bad_input.skipped_record_messages
damaged_files = bad_input.damaged_files
reset_skipped_records = bad_input.reset


# ---- Argument checks ----


def _list_files(file_pattern: str) -> List[str]:
  return file_patterns.match(file_pattern, '`file_pattern`')


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


# ---- Putting a record together ----


def _to_uint8(x: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)


# A TFRecord is framed by 16 bytes: length (8), its CRC (4), data CRC (4).
_FRAMING_BYTES = 16
_DAMAGE_REASON = (
    'the rest of the file cannot be read: it is truncated, a record is '
    'corrupt (CRC mismatch) or it is not a TFRecord file')


def _file_sizes(files: List[str]) -> List[int]:
  """Sizes of the shards, stat'ed in parallel (a GCS stat is a request)."""
  with concurrent.futures.ThreadPoolExecutor(
      min(32, max(1, len(files)))) as pool:
    return list(pool.map(lambda f: tf.io.gfile.stat(f).length, files))


def _damage_message(path, offset, size, record):
  return tf.strings.join([
      path, ': damaged at byte ', tf.strings.as_string(offset), ' of ',
      tf.strings.as_string(size), ' (record #', tf.strings.as_string(record),
      ' onwards): ', _DAMAGE_REASON])


def _record_damage(path: tf.Tensor, message: tf.Tensor) -> tf.Tensor:
  bad_input.count_damaged_file(
      path.numpy().decode('utf-8', errors='replace'),
      message.numpy().decode('utf-8', errors='replace'))
  return tf.constant(True)


def _read_file(file_index: tf.Tensor, path: tf.Tensor, size: tf.Tensor,
               on_bad_record: str) -> tf.data.Dataset:
  """The records of one shard, numbered; damage is found, never fatal.

  The reader stops at the first damaged byte (`ignore_errors` ends a
  TFRecordDataset there). An end-of-file marker then compares the bytes the
  records account for with the file's size: a shortfall is damage at that
  offset, raised naming the file, offset and record ('error') or counted
  once per file, keeping the records before it ('skip'). A file cut exactly
  at a record boundary is not detectable here (the writers' completion
  records list their files for that).
  """
  records = tf.data.TFRecordDataset(path).ignore_errors(log_warning=True)
  marked = records.map(_plain(lambda r: (r, False))).concatenate(
      tf.data.Dataset.from_tensors((tf.constant(''), True)))

  def number(state, element):
    """Numbers the records; at the end marker, checks the byte count."""
    offset, index = state
    serialized, end = element
    def damage_found():
      message = _damage_message(path, offset, size, index)
      if on_bad_record == 'skip':
        with tf.control_dependencies([tf.py_function(
            _record_damage, [path, message], tf.bool)]):
          return tf.constant('')
      return message

    # The message is built only for a damaged file (strings cost per record).
    # In 'error' mode it travels as an element and is raised after
    # processing: the processing's `ignore_errors` would swallow it here.
    damage = tf.cond(tf.logical_and(end, offset != size), damage_found,
                     lambda: tf.constant(''))
    out = {'file': file_index, 'record': index, 'serialized': serialized,
           'end': end, 'damage': damage}
    length = tf.cast(tf.strings.length(serialized), tf.int64)
    return (offset + length + _FRAMING_BYTES, index + 1), out

  zero = tf.constant(0, tf.int64)
  return marked.scan((zero, zero), _plain(number)).filter(
      _plain(lambda e: tf.logical_or(tf.logical_not(e['end']),
                                     tf.not_equal(e['damage'], ''))))


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

  def placeholder(self, element, error) -> Dict[str, tf.Tensor]:
    extra = {}
    if self.device_finishing:
      extra[VIDEO_FINISH] = tf.ones([FINISH_SIZE])
    return {
        **extra,
        VIDEO: tf.zeros(self.video_shape,
                        tf.uint8 if self.device_finishing else tf.float32),
        LABEL: tf.constant(-1, tf.int32),
        CLIP_INDEX: tf.constant(-1, tf.int64),
        CLIP_KEY: tf.constant(''),
        VIDEO_ID: tf.constant(''),
        CAPTION: tf.constant(''),
        # The record is named by `_LossFinder.check`; a damaged shard's
        # message names the file and offset itself.
        _ERROR: tf.where(tf.equal(element['damage'], ''), error,
                         element['damage']),
    }

  def __call__(self, element) -> Dict[str, tf.Tensor]:
    parsed = decode.parse(element['serialized'], self.label_key)
    ok = decode.is_valid(parsed, self.label_key, self.num_classes)
    # One branch per record; the problem is described only for a bad one.
    return tf.cond(
        tf.logical_and(ok, tf.equal(element['damage'], '')),
        lambda: self._process(element, parsed),
        lambda: self.placeholder(element, decode.describe_problem(
            parsed, self.label_key, self.num_classes)))

  def _host_pixels(self, kept, draws) -> tf.Tensor:
    """float32 views: the pixel work on the host (`spl.inputs.pixels`)."""
    s, opts = self.crop_size, self.opts
    if self.is_training:
      decoded, _, flip = geometry.training_window(kept, s, opts, draws)
      return pixels.transform_and_resize(
          decoded, [s, s], flip,
          pixels.colour_params(opts, draws, is_training=True), opts)
    colour = pixels.colour_params(opts, None, is_training=False)
    return self._views(kept, lambda decoded, size: pixels.transform_and_resize(
        decoded, size, tf.constant(False), colour, opts))

  def _device_pixels(self, kept, draws) -> Tuple[tf.Tensor, tf.Tensor]:
    """Host half of `device_finishing`: uint8 frames and the VIDEO_FINISH row.

    Training: the decoded crop window, zero-padded at the bottom right to
    `crop_size` (resized on the host first only if it is larger, i.e. frames
    stored bigger than the scale jitter expects); resize, flip and colour are
    left to `finish_video`. Evaluation: the views resized and cut on the host,
    rounded to uint8; `finish_video` only normalises.
    """
    s, opts = self.crop_size, self.opts
    if self.is_training:
      decoded, window, flip = geometry.training_window(kept, s, opts, draws)
      too_big = tf.reduce_any(window[2:] > s)
      video = tf.cond(too_big, lambda: _to_uint8(tf.image.resize(
          decoded, [s, s], method='bilinear')), lambda: decoded)
      # Padded to crop_size at the bottom right when batched.
      colour = pixels.colour_params(opts, draws, is_training=True)
      return video, finish_row(tf.minimum(window[2:], s), flip, colour, opts)
    video = self._views(kept, lambda decoded, size: _to_uint8(
        tf.image.resize(decoded, size, method='bilinear')))
    colour = pixels.colour_params(opts, None, is_training=False)
    return video, finish_row(tf.constant([s, s]), tf.constant(False), colour,
                             opts)

  def _views(self, kept, resize) -> tf.Tensor:
    return geometry.evaluation_views(
        kept, crop_size=self.crop_size, num_crops=self.num_crops,
        num_clips=self.num_clips, num_frames=self.num_frames, opts=self.opts,
        resize=resize)

  def _process(self, element, parsed) -> Dict[str, tf.Tensor]:
    seed = element.get('seed')
    draws = None if seed is None else sample.clip_draws(seed)
    frames = parsed[schema.IMAGE_KEY]
    indices = sample.frame_indices(
        tf.shape(frames)[0], num_frames=self.num_frames, stride=self.stride,
        is_training=self.is_training, num_clips=self.num_clips, draws=draws)
    if self.image_mode and not self.is_training:
      n = tf.shape(frames)[0]
      indices = ((n - 1) // 2)[None]
    kept = tf.gather(frames, indices)
    extra = {}
    if self.device_finishing:
      video, extra[VIDEO_FINISH] = self._device_pixels(kept, draws)
    else:
      video = self._host_pixels(kept, draws)
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


def _end_marker(spec) -> Dict[str, tf.Tensor]:
  """The element that ends a finite stream: record -1, nothing to parse.

  It is processed like a record (an empty record: a placeholder, never an
  error raised), so the records lost just before the end are found.
  """
  return {k: (tf.constant(-1, tf.int64) if k == 'record' else
              tf.zeros(v.shape, v.dtype)) for k, v in spec.items()}


def _protected(processor: _RecordProcessor):
  """`processor` carrying `_LossFinder.remember`'s fields through."""
  def fn(element):
    out = processor(element)
    out.update({k: element[k] for k in _CARRIED})
    return out
  return fn


class _LossFinder:
  """Finds the records whose processing raised, names and reports them.

  Processing runs in parallel but in order, and a record whose processing
  raises is dropped (`ignore_errors`): a TF graph cannot catch an error.
  `remember` (a scan before processing) numbers the stream and gives each
  record the place, file and number of the `window` records before it;
  `check` (a scan after) sees which numbers are missing before each output
  and names them from that window. Only integers travel with a record; the
  names and messages are built, in one `tf.cond`, for a record that has a
  problem. (A nested dataset per task of records, its outputs scanned for
  gaps, cost ~15% of a small clip's CPU time.) `check` also reports the bad
  records (invalid, damaged shard): 'error' raises naming the record, 'skip'
  counts it on the host (`spl.inputs.bad_input`) and drops it.
  """

  def __init__(self, files: List[str], on_bad_record: str, window: int,
               finite: bool):
    self.files = files
    self.skip = on_bad_record == 'skip'
    self.window = window
    # Some outputs are dropped (skipped records, the end marker).
    self.filters = self.skip or finite

  def first_state(self):
    none = tf.fill([self.window], tf.constant(-1, tf.int64))
    return tf.constant(0, tf.int64), none, none, none

  def remember(self, state, element):
    seq, prev_seq, prev_file, prev_record = state
    out = {k: v for k, v in element.items()
           if k not in ('file', 'record', 'end')}
    out.update({
        _FILE: element['file'], _RECORD: element['record'], _SEQ: seq,
        _END: element['record'] < 0,
        _DAMAGED: tf.not_equal(element['damage'], ''),
        _PREV_SEQ: prev_seq, _PREV_FILE: prev_file,
        _PREV_RECORD: prev_record})

    def push(window, value):
      return tf.concat([window[1:], value[None]], 0)

    return (seq + 1, push(prev_seq, seq), push(prev_file, element['file']),
            push(prev_record, element['record'])), out

  def _names(self, file_indices, records):
    return tf.strings.join([
        tf.gather(tf.constant(self.files), file_indices), ' record #',
        tf.strings.as_string(records)])

  def check(self, expected, out):
    """Reports what is missing before `out` and `out` itself if bad."""
    seq = out[_SEQ]
    lost = out[_PREV_SEQ] >= expected
    num_lost = seq - expected
    end = out[_END]
    bad = tf.logical_and(tf.not_equal(out[_ERROR], ''), tf.logical_not(end))

    def report():
      named = self._names(tf.boolean_mask(out[_PREV_FILE], lost),
                          tf.boolean_mask(out[_PREV_RECORD], lost))
      unnamed = num_lost - tf.size(named, out_type=tf.int64)
      error = tf.where(out[_DAMAGED], out[_ERROR], tf.strings.join([
          self._names(out[_FILE], out[_RECORD]), ': ', out[_ERROR]]))
      if self.skip:
        return tf.py_function(_count_skipped,
                              [named, unnamed, tf.where(bad, error, '')],
                              tf.bool)
      with tf.control_dependencies([tf.debugging.Assert(
          False, [_problem_text(named, unnamed, bad, error)], summarize=1)]):
        return tf.constant(True)

    reported = tf.cond(tf.logical_or(bad, num_lost > 0), report,
                       lambda: tf.constant(True))
    with tf.control_dependencies([reported]):
      clean = {k: tf.identity(v) for k, v in out.items()
               if k not in _CARRIED and k != _ERROR}
    if self.filters:
      clean[_KEEP] = tf.logical_not(tf.logical_or(bad, end))
    return seq + 1, clean


def _unnamed_text(unnamed, before):
  return tf.strings.join([
      tf.strings.as_string(unnamed), ' more records lost in a row before ',
      before, ' (only `lost_records_named` in a row are named)'])


def _problem_text(named, unnamed, bad, error):
  """'error' mode's message: the lost records, then the bad one."""
  parts = tf.strings.join([tf.strings.reduce_join(named, separator=', '),
                           ': ', _LOST_REASON])
  parts = tf.where(tf.size(named) > 0, parts, '')
  first = tf.concat([named, ['']], 0)[0]
  parts = tf.where(unnamed > 0, tf.strings.join(
      [parts, '; and ', _unnamed_text(unnamed, first)]), parts)
  return tf.where(bad, tf.strings.join([
      parts, tf.where(tf.equal(parts, ''), '', '; '), error]), parts)


def _count_skipped(named: tf.Tensor, unnamed: tf.Tensor,
                   error: tf.Tensor) -> tf.Tensor:
  """'skip' mode: counts the lost records and the bad one on the host."""
  names = [n.decode('utf-8', errors='replace') for n in named.numpy()]
  for name in names:
    bad_input.count_record(f'{name}: {_LOST_REASON}')
  if unnamed.numpy():
    text = _unnamed_text(unnamed, names[0] if names else '').numpy().decode(
        'utf-8', errors='replace')
    bad_input.count_record(f'{text}: {_LOST_REASON}', int(unnamed.numpy()))
  if error.numpy():
    bad_input.count_record(error.numpy().decode('utf-8', errors='replace'))
  return tf.constant(True)


def _kept(element):
  return element[_KEEP]


def _without_keep(element):
  return {k: v for k, v in element.items() if k != _KEEP}


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
                 skip_batches: int = 0,
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
    skip_batches: start this many batches into the stream, by skipping
      `skip_batches * batch_size` records after their order and augmentation
      seeds are drawn and before anything is parsed or decoded (a resumed
      deterministic run: the skipped records are read, not decoded). With
      `deterministic` and no record dropped (`on_bad_record='error'`, or no
      bad record before that point) the output equals
      `make_dataset(...).skip(skip_batches)`; a record dropped by 'skip' mode
      shifts every later batch by one record. Damaged shards are read only
      to the damage either way, so they shift nothing.
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
  if skip_batches < 0:
    raise ValueError(f'`skip_batches` must be >= 0, got {skip_batches}')
  opts = options_lib.make_options(crop_size, augmentation_kwargs)
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

  ds = tf.data.Dataset.from_tensor_slices(
      (tf.range(len(files), dtype=tf.int64), files,
       tf.constant(_file_sizes(files), tf.int64)))
  if is_training and not shard_records and len(files) > 1:
    ds = ds.shuffle(len(files), seed=pipeline_seed,
                    reshuffle_each_iteration=True)
  cycle = min(len(files), opts.file_cycle_length)
  ds = ds.interleave(
      _plain(lambda i, path, size: _read_file(i, path, size, on_bad_record)),
      cycle_length=cycle, block_length=1,
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
        _plain(lambda e, s: dict(e, seed=tf.ensure_shape(s, [2]))))
  if skip_batches:
    ds = ds.skip(skip_batches * batch_size)

  processor = _RecordProcessor(
      is_training=is_training, num_frames=num_frames, stride=stride,
      crop_size=crop_size, num_classes=num_classes, label_key=label_key,
      num_test_clips=num_test_clips, num_test_crops=num_test_crops,
      image_mode=image_mode, opts=opts, device_finishing=device_finishing)
  finder = _LossFinder(files, on_bad_record, opts.lost_records_named,
                       finite=not repeat)
  if not repeat:
    ds = ds.concatenate(tf.data.Dataset.from_tensors(
        _end_marker(ds.element_spec)))
  ds = ds.scan(finder.first_state(), _plain(finder.remember))
  # In order (`_LossFinder` relies on it), in parallel.
  ds = ds.map(_plain(_protected(processor)),
              num_parallel_calls=opts.parallel_clips or _AUTOTUNE,
              deterministic=True).ignore_errors(log_warning=True)
  ds = ds.scan(tf.constant(0, tf.int64), _plain(finder.check))
  if finder.filters:
    ds = ds.filter(_plain(_kept)).map(_plain(_without_keep))
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
