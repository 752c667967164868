"""Clip records serialised in pure Python, byte-identical to TensorFlow's.

Why this exists: the clip writer's workers only need to turn JPEG frames and a
few context values into `tf.train.SequenceExample` bytes. Importing
TensorFlow for that costs each Beam worker process seconds of start-up (and
memory), more than a short job's whole work. The encoding here produces
exactly the bytes of `records.make_clip_example(...).SerializeToString(
deterministic=True)` (tests/test_write_clips.py checks that, and that TF
parses them), so shards are the same whichever path wrote them.

A record is split in two so the frames are serialised once, by the worker
that decoded them, and the small context (which holds the dataset-wide
`clip/index`, known only after every video is decoded) is added when a shard
is assembled:

  record = context_field(...)         # field 1: tf.train.Features
         + frames_field(frames)       # field 2: tf.train.FeatureLists

Wire format used (tensorflow/core/example/{example,feature}.proto):
  Features      { map<string, Feature> feature = 1; }  entries sorted by key
  Feature       { oneof: BytesList bytes_list = 1; FloatList float_list = 2;
                         Int64List int64_list = 3; }
  BytesList     { repeated bytes value = 1; }
  FloatList     { repeated float value = 1 [packed]; }
  Int64List     { repeated int64 value = 1 [packed]; }
  FeatureLists  { map<string, FeatureList> feature_list = 1; }
  FeatureList   { repeated Feature feature = 1; }
"""

from __future__ import annotations

import struct
from typing import Dict, Optional, Sequence, Tuple, Union

from tfrecords_tools import schema

_LEN1 = 0x0a  # Field 1, length-delimited.
_LEN2 = 0x12  # Field 2, length-delimited.
_LEN3 = 0x1a  # Field 3, length-delimited.

Value = Union[int, float, str, bytes]

# Feature kinds of `clip_context`.
INT64, FLOAT, BYTES = 'int64', 'float', 'bytes'


def _varint(value: int) -> bytes:
  if value < 0:
    value += 1 << 64  # int64 two's complement, as protobuf writes it.
  out = bytearray()
  while value > 0x7f:
    out.append((value & 0x7f) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
  return bytes([tag]) + _varint(len(payload)) + payload


def _bytes_feature(values: Sequence[Union[str, bytes]]) -> bytes:
  body = b''.join(
      _field(_LEN1, v.encode('utf-8') if isinstance(v, str) else bytes(v))
      for v in values)
  return _field(_LEN1, body)


def _float_feature(values: Sequence[float]) -> bytes:
  packed = struct.pack(f'<{len(values)}f', *values)
  return _field(_LEN2, _field(_LEN1, packed) if values else b'')


def _int64_feature(values: Sequence[int]) -> bytes:
  packed = b''.join(_varint(int(v)) for v in values)
  return _field(_LEN3, _field(_LEN1, packed) if values else b'')


def _features(feature: Dict[str, bytes]) -> bytes:
  """A `Features` message from serialised `Feature`s (deterministic order)."""
  return b''.join(
      _field(_LEN1, _field(_LEN1, k.encode('utf-8')) + _field(_LEN2, v))
      for k, v in sorted(feature.items(), key=lambda kv: kv[0].encode('utf-8')))


def frames_field(frames: Sequence[bytes],
                 key: str = schema.IMAGE_KEY) -> bytes:
  """The record's `feature_lists` field: one bytes feature per frame.

  Lengths are computed first so the frames are copied once (nesting
  `_field`s would copy the ~0.5 MB of a clip once per nesting level).
  """
  if not frames:
    raise ValueError('`frames` must not be empty')
  parts = [b'']  # The prefix, filled in below.
  list_len = 0
  for f in frames:
    n = len(f)
    bytes_list = 1 + len(_varint(n)) + n  # BytesList { value: f }
    feature = 1 + len(_varint(bytes_list)) + bytes_list  # Feature {...}
    parts.append(bytes([_LEN1]) + _varint(feature) + bytes([_LEN1]) +
                 _varint(bytes_list) + bytes([_LEN1]) + _varint(n))
    parts.append(f)
    list_len += 1 + len(_varint(feature)) + feature
  key_bytes = key.encode('utf-8')
  entry = 1 + len(_varint(len(key_bytes))) + len(key_bytes) + 1 + len(
      _varint(list_len)) + list_len
  lists = 1 + len(_varint(entry)) + entry
  parts[0] = (bytes([_LEN2]) + _varint(lists) + bytes([_LEN1]) +
              _varint(entry) + bytes([_LEN1]) + _varint(len(key_bytes)) +
              key_bytes + bytes([_LEN2]) + _varint(list_len))
  return b''.join(parts)


def clip_context(
    *,
    clip_index: int,
    video_id: str,
    start: float,
    end: float,
    frame_rate: float,
    num_frames: int,
    height: int,
    width: int,
    label_index: int,
    label_text: str,
    caption: str = '',
    clip_key: Optional[str] = None,
    weak_label_index: Optional[int] = None,
    weak_label_text: Optional[str] = None,
) -> Dict[str, Tuple[str, list]]:
  """Every context feature a written clip carries, as `(kind, values)`.

  The one definition of a clip's context: this module's encoder and the
  TensorFlow one (`records.make_clip_example`, which adds the teacher and
  label-space fields of relabelled records) both build from it.
  """
  if clip_key is None:
    clip_key = schema.make_clip_key(video_id, start)
  if weak_label_index is None:
    weak_label_index = label_index
  if weak_label_text is None:
    weak_label_text = label_text
  return {
      schema.SCHEMA_VERSION_KEY: (INT64, [schema.SCHEMA_VERSION]),
      schema.CLIP_INDEX_KEY: (INT64, [clip_index]),
      schema.CLIP_KEY_KEY: (BYTES, [clip_key]),
      schema.VIDEO_ID_KEY: (BYTES, [video_id]),
      schema.CLIP_START_KEY: (FLOAT, [start]),
      schema.CLIP_END_KEY: (FLOAT, [end]),
      schema.FRAME_RATE_KEY: (FLOAT, [frame_rate]),
      schema.NUM_FRAMES_KEY: (INT64, [num_frames]),
      schema.IMAGE_HEIGHT_KEY: (INT64, [height]),
      schema.IMAGE_WIDTH_KEY: (INT64, [width]),
      schema.LABEL_INDEX_KEY: (INT64, [label_index]),
      schema.LABEL_TEXT_KEY: (BYTES, [label_text]),
      schema.WEAK_LABEL_INDEX_KEY: (INT64, [weak_label_index]),
      schema.WEAK_LABEL_TEXT_KEY: (BYTES, [weak_label_text]),
      schema.CAPTION_KEY: (BYTES, [caption]),
  }


_ENCODERS = {INT64: _int64_feature, FLOAT: _float_feature,
             BYTES: _bytes_feature}


def context_field(**fields) -> bytes:
  """The record's `context` field; `fields` as `clip_context`."""
  return _field(_LEN1, _features({
      key: _ENCODERS[kind](values)
      for key, (kind, values) in clip_context(**fields).items()}))


def serialize_clip(*, frames: Sequence[bytes], **context) -> bytes:
  """A whole clip record (tests and small callers); see `context_field`."""
  return (context_field(num_frames=len(frames), **context) +
          frames_field(frames))

