"""Phase 2 and the decode of phase 4: parse and validate a clip record;
decode a window of its JPEG frames.

A record must say which schema version wrote it (`schema/version`, one value
in `[1, schema.SCHEMA_VERSION]`). A newer version is refused by name, before
any other check: a newer schema may rename or reinterpret keys, so its records
could otherwise train on the wrong values, or fail with a misleading missing
key. A record without the key is refused like any missing required key, not
read as version 1: every writer of this codebase (`clip_proto.clip_context`,
behind the clip writer and `records.make_clip_example`; the relabel, holdout
and title-tree jobs copy the context) has written it since the schema's first
version, so a record without it was not written by this project.
"""

from typing import Dict, Optional

import tensorflow as tf

from tfrecords_tools import schema


def parse(serialized: tf.Tensor, label_key: str) -> Dict[str, tf.Tensor]:
  context_spec = {
      label_key: tf.io.VarLenFeature(tf.int64),
      schema.SCHEMA_VERSION_KEY: tf.io.VarLenFeature(tf.int64),
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
_VERSION = schema.SCHEMA_VERSION_KEY


def _label_upper(num_classes: Optional[int]) -> int:
  return num_classes if num_classes is not None else 2**31 - 1


def is_valid(parsed: Dict[str, tf.Tensor], label_key: str,
             num_classes: Optional[int]) -> tf.Tensor:
  """Whether `parsed` is usable: a few integer checks, no strings.

  `describe_problem` says why not; a caller formats that only for a bad
  record (string ops on every record cost ~5% of a small clip's CPU time).
  """
  sizes = tf.stack([tf.size(parsed[k])
                    for k in (_VERSION, label_key) + _REQUIRED_KEYS])
  label = parsed[label_key]
  version = parsed[_VERSION]
  ok = tf.reduce_all([
      tf.reduce_all(tf.equal(sizes, 1)),
      tf.reduce_all(version >= 1),
      tf.reduce_all(version <= schema.SCHEMA_VERSION),
      tf.size(parsed[schema.IMAGE_KEY]) > 0,
      tf.reduce_all(label >= 0),
      tf.reduce_all(label < _label_upper(num_classes))])
  return ok


def describe_problem(parsed: Dict[str, tf.Tensor], label_key: str,
                     num_classes: Optional[int]) -> tf.Tensor:
  """Why `parsed` is not usable (the first problem found)."""
  error = tf.constant('')

  def first(error, bad, message):
    return tf.where(tf.logical_and(tf.equal(error, ''), bad), message, error)

  # The version first: a newer schema may have renamed the other keys.
  version = tf.concat([parsed[_VERSION], tf.ones([1], tf.int64)], 0)[0]
  error = first(
      error, version > schema.SCHEMA_VERSION,
      tf.strings.join([
          f'{_VERSION} ', tf.strings.as_string(version),
          f' is newer than this code reads ({schema.SCHEMA_VERSION}): update '
          'the code or rewrite the records']))
  error = first(
      error, version < 1,
      tf.strings.join([f'{_VERSION} ', tf.strings.as_string(version),
                       ' is not a version (versions start at 1)']))
  for key in (_VERSION, label_key) + _REQUIRED_KEYS:
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


def decode_window(frames: tf.Tensor, window: tf.Tensor,
                   dct_method: str) -> tf.Tensor:
  """Decodes `window` ([y, x, h, w]) of every JPEG in `frames` -> uint8.

  With a static number of frames (up to 64) the decodes are unrolled: a
  `map_fn` while loop costs ~8% of a 16-frame clip's decode time.
  """
  n = frames.shape[0]
  if n is not None and n <= 64:
    return tf.stack([tf.io.decode_and_crop_jpeg(
        frame, window, channels=3, dct_method=dct_method)
                     for frame in tf.unstack(frames, num=n)])
  return tf.map_fn(
      lambda b: tf.io.decode_and_crop_jpeg(
          b, window, channels=3, dct_method=dct_method),
      frames, fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
