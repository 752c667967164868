"""TFRecord framing and SequenceExample surgery without a full proto parse.

Why this exists: a clip record is ~0.5 MB of JPEG frames and a few hundred
bytes of context. Relabelling changes one integer of the context; parsing and
re-serialising every frame is the slow way to do it. Here a record is split
at the protobuf field level: a `tf.train.SequenceExample` is

  field 1 (length-delimited): context   `tf.train.Features`
  field 2 (length-delimited): feature_lists `tf.train.FeatureLists`

so only the context is parsed and rebuilt, and the feature_lists bytes are
copied through untouched; the concatenation is a valid SequenceExample (the
proto wire format allows fields in any order and merges repeated occurrences
of a message field, which `_split_fields` honours).

CRC-32C: every checksum here goes through `google_crc32c` (C extension,
~20 GB/s). Beam's `tfrecordio` picks python-snappy, then google-crc32c, then
crcmod (`apache_beam.io.tfrecordio._default_crc32c_fn.fn` tells which one it
bound); without any of them its pure-Python fallback runs at ~6 MB/s.
TensorFlow's own `TFRecordDataset` / `TFRecordWriter` use their C++ crc32c.

TFRecord framing (little endian):
  uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)
"""

from __future__ import annotations

import logging
import struct
from typing import BinaryIO, Iterator, List, Optional, Sequence, Tuple

import google_crc32c

if google_crc32c.implementation != 'c':
  logging.warning('google_crc32c runs its pure-Python implementation (%s): '
                  'TFRecord CRC checks will be very slow',
                  google_crc32c.implementation)

_HEADER = struct.Struct('<QI')
_CRC = struct.Struct('<I')
_LEN = struct.Struct('<Q')
_MASK_DELTA = 0xa282ead8

# SequenceExample top-level field numbers (tensorflow/core/example/example.proto).
CONTEXT_FIELD = 1
FEATURE_LISTS_FIELD = 2
_WIRE_LEN = 2


class CorruptRecordError(ValueError):
  """A TFRecord file whose framing or checksums are wrong."""


def _mask(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xffffffff


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC-32C of `data`."""
  return _mask(google_crc32c.value(data))


def _masked_crc_parts(parts: Sequence[bytes]) -> int:
  crc = 0
  for p in parts:
    crc = google_crc32c.extend(crc, p)
  return _mask(crc)


def _record_length(header: bytes, path: str, offset: int) -> int:
  """Checks a 12-byte record header and returns the record's data length."""
  if len(header) != 12:
    raise CorruptRecordError(f'{path}: truncated record header at byte '
                             f'{offset}')
  length, length_crc = _HEADER.unpack(header)
  if masked_crc32c(header[:8]) != length_crc:
    raise CorruptRecordError(f'{path}: length checksum mismatch at byte '
                             f'{offset}')
  return length


def read_records(f: BinaryIO, path: str = '<file>',
                 check_crc: bool = True) -> Iterator[bytes]:
  """Yields the payload of every record of an open TFRecord file.

  Args:
    f: binary file object positioned at a record boundary.
    path: file name for error messages.
    check_crc: verify both checksums of every record (on by default).

  Raises:
    CorruptRecordError: truncated file or checksum mismatch, naming `path`
      and the byte offset.
  """
  offset = 0
  while True:
    header = f.read(12)
    if not header:
      return
    if len(header) != 12:
      raise CorruptRecordError(f'{path}: truncated record header at byte '
                               f'{offset}')
    length, length_crc = _HEADER.unpack(header)
    if check_crc and masked_crc32c(header[:8]) != length_crc:
      raise CorruptRecordError(f'{path}: length checksum mismatch at byte '
                               f'{offset}')
    data = f.read(length)
    crc = f.read(4)
    if len(data) != length or len(crc) != 4:
      raise CorruptRecordError(f'{path}: truncated record at byte {offset} '
                               f'(length {length})')
    if check_crc and masked_crc32c(data) != _CRC.unpack(crc)[0]:
      raise CorruptRecordError(f'{path}: data checksum mismatch in the record '
                               f'at byte {offset}')
    offset += 16 + length
    yield data


def write_record(f: BinaryIO, data: bytes) -> int:
  """Appends one record; returns the bytes written."""
  return write_record_parts(f, (data,))


def write_record_parts(f: BinaryIO, parts: Sequence[bytes]) -> int:
  """Appends one record whose payload is the concatenation of `parts`.

  The parts are written one after the other (no join copy); the checksum is
  extended part by part.

  Returns:
    The bytes written (payload + 16 bytes of framing).
  """
  length = 0
  crc = 0
  for p in parts:
    length += len(p)
    crc = google_crc32c.extend(crc, p)
  length_bytes = _LEN.pack(length)
  f.write(length_bytes + _CRC.pack(masked_crc32c(length_bytes)))
  for p in parts:
    f.write(p)
  f.write(_CRC.pack(_mask(crc)))
  return length + 16


# ---- Protobuf wire-level helpers ----


def _varint(buf: bytes, pos: int, end: int, what: str) -> Tuple[int, int]:
  result = 0
  shift = 0
  while True:
    if pos >= end or shift > 63:
      raise ValueError(f'malformed protobuf varint in {what}')
    b = buf[pos]
    pos += 1
    result |= (b & 0x7f) << shift
    if not b & 0x80:
      return result, pos
    shift += 7


def encode_varint(value: int) -> bytes:
  """Protobuf base-128 varint of a non-negative integer."""
  if value < 0:
    raise ValueError(f'`value` must be >= 0, got {value}')
  out = bytearray()
  while True:
    b = value & 0x7f
    value >>= 7
    if value:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


_CONTEXT_TAG = CONTEXT_FIELD << 3 | _WIRE_LEN


def _leading_context(head: bytes, length: int) -> Optional[Tuple[int, int]]:
  """(payload start, payload size) if a record starts with its context field.

  `head` is the record's first bytes (up to 11: tag + a 10-byte varint);
  `length` the record's length. None for any other layout, which callers
  handle by a full split. One- and two-byte lengths (every clip context)
  are decoded inline: this runs once per record.
  """
  if len(head) < 2 or head[0] != _CONTEXT_TAG:
    return None
  b = head[1]
  if b < 0x80:
    size, pos = b, 2
  elif len(head) > 2 and head[2] < 0x80:
    size, pos = (b & 0x7f) | (head[2] << 7), 3
  else:
    try:
      size, pos = _varint(head, 1, len(head), 'length')
    except ValueError:
      return None
  return (pos, size) if pos + size <= length else None


def _split_fields(data: bytes) -> List[Tuple[int, int, int, int]]:
  """Top-level fields of a SequenceExample: (field, start, payload_start, end)."""
  fields = []
  pos, end = 0, len(data)
  while pos < end:
    start = pos
    tag, pos = _varint(data, pos, end, 'SequenceExample tag')
    field, wire = tag >> 3, tag & 7
    if wire != _WIRE_LEN or field not in (CONTEXT_FIELD, FEATURE_LISTS_FIELD):
      raise ValueError(f'not a SequenceExample: unexpected field {field} '
                       f'(wire type {wire}) at byte {start}')
    size, pos = _varint(data, pos, end, 'SequenceExample field length')
    if pos + size > end:
      raise ValueError(f'not a SequenceExample: field {field} at byte {start} '
                       f'runs past the end of the record')
    fields.append((field, start, pos, pos + size))
    pos += size
  return fields


def split_sequence_example(data: bytes) -> Tuple[bytes, List[bytes]]:
  """Splits a serialized SequenceExample into (context payload, other fields).

  Returns:
    The serialized `tf.train.Features` of the context (all context
    occurrences concatenated, which protobuf parses as their merge), and the
    remaining top-level fields as serialized (tag + length + payload) chunks,
    in record order. In the common case (context first, one feature_lists
    field) this is one slice of the record.
  """
  fields = _split_fields(data)
  context = [data[p:e] for f, _, p, e in fields if f == CONTEXT_FIELD]
  others = [(s, e) for f, s, _, e in fields if f != CONTEXT_FIELD]
  # Merge adjacent non-context chunks so the usual record yields one slice.
  merged: List[List[int]] = []
  for s, e in others:
    if merged and merged[-1][1] == s:
      merged[-1][1] = e
    else:
      merged.append([s, e])
  rest = [data[s:e] for s, e in merged]
  return (context[0] if len(context) == 1 else b''.join(context)), rest


def context_field(context_payload: bytes) -> bytes:
  """The top-level field bytes (tag + length) that hold a context payload."""
  return (bytes([CONTEXT_FIELD << 3 | _WIRE_LEN]) +
          encode_varint(len(context_payload)) + context_payload)


def _file_size(f: BinaryIO) -> int:
  # tell() after the seek: not every file object's seek() returns the
  # position (tf.io.gfile.GFile's returns None).
  pos = f.tell()
  f.seek(0, 2)
  size = f.tell()
  f.seek(pos)
  return size


# Bytes read with a record header in one call: tag + length of the context
# field and, usually, the whole context (a clip context is a few hundred
# bytes), so the context-only reader makes one small read per record.
_CONTEXT_PEEK = 1024


def read_contexts(f: BinaryIO, path: str = '<file>') -> Iterator[bytes]:
  """Yields the context payload of every SequenceExample in a TFRecord file.

  Reads only the context bytes and seeks over the frames, so it costs a few
  hundred bytes per clip whatever the clip size. The length checksum is
  verified, and every record must end inside the file (a truncated shard is
  an error, not a shorter shard); the data checksum is not verified (whoever
  reads the full record checks it). Falls back to reading the whole record
  when the context is not its first field.

  Args:
    f: seekable binary file object at a record boundary.
    path: file name for error messages.

  Raises:
    CorruptRecordError: bad length checksum, a record that runs past the end
      of the file, or a record that is not a SequenceExample, naming `path`
      and the byte offset.
  """
  offset = f.tell()
  size = _file_size(f)
  while offset < size:
    f.seek(offset)
    buf = f.read(12 + _CONTEXT_PEEK)
    length = _record_length(buf[:12], path, offset)
    if offset + 16 + length > size:
      raise CorruptRecordError(f'{path}: truncated record at byte {offset} '
                               f'(length {length}, file ends at byte {size})')
    head = buf[12:12 + length]
    found = _leading_context(head[:11], length)
    if found:
      pos, n = found
      payload = head[pos:pos + n]
      if len(payload) < n:
        payload += f.read(n - len(payload))
      if len(payload) != n:
        raise CorruptRecordError(f'{path}: truncated record at byte {offset}')
    else:
      f.seek(offset + 12)
      data = f.read(length)
      if len(data) != length:
        raise CorruptRecordError(f'{path}: truncated record at byte {offset}')
      try:
        payload, _ = split_sequence_example(data)
      except ValueError as e:
        raise CorruptRecordError(f'{path}: record at byte {offset}: {e}') from e
    offset += 16 + length
    yield payload


def read_split_records(f: BinaryIO, path: str = '<file>'
                       ) -> Iterator[Tuple[bytes, List[bytes], int]]:
  """Like `read_records` + `split_sequence_example`, without copying frames.

  When the context is the record's first field (what every protobuf
  serialiser writes), the context and the rest are read as two separate
  reads, so the ~0.5 MB of frames are never sliced out of a bigger buffer;
  both checksums are still verified (the data CRC is extended over the two
  pieces). Other layouts fall back to a full read and split.

  Yields:
    (context payload, other top-level fields as byte chunks, record length).
  """
  offset = 0
  while True:
    header = f.read(12)
    if not header:
      return
    length = _record_length(header, path, offset)
    head = f.read(min(length, 11))
    found = _leading_context(head, length)
    if found:
      pos, size = found
      context = head[pos:] + f.read(max(0, pos + size - len(head)))
      context = context[:size]
      # Bytes of the context field read past `size` (tiny contexts) belong
      # to the rest of the record.
      spill = head[pos + size:] if pos + size < len(head) else b''
      rest = f.read(length - max(len(head), pos + size))
      crc = f.read(4)
      pieces = [head[:pos], context, spill, rest]
      if sum(len(p) for p in pieces) != length or len(crc) != 4:
        raise CorruptRecordError(f'{path}: truncated record at byte {offset}')
      if _masked_crc_parts(pieces) != _CRC.unpack(crc)[0]:
        raise CorruptRecordError(f'{path}: data checksum mismatch in the '
                                 f'record at byte {offset}')
      others = [p for p in (spill, rest) if p]
      if len(others) == 2:
        others = [spill + rest]
      # The rest must itself be well-formed top-level fields (this walks
      # field headers only, not the frames).
      if others:
        try:
          _split_fields(others[0])
        except ValueError as e:
          raise CorruptRecordError(
              f'{path}: record at byte {offset}: {e}') from e
    else:
      data = head + f.read(length - len(head))
      crc = f.read(4)
      if len(data) != length or len(crc) != 4:
        raise CorruptRecordError(f'{path}: truncated record at byte {offset}')
      if masked_crc32c(data) != _CRC.unpack(crc)[0]:
        raise CorruptRecordError(f'{path}: data checksum mismatch in the '
                                 f'record at byte {offset}')
      try:
        context, others = split_sequence_example(data)
      except ValueError as e:
        raise CorruptRecordError(f'{path}: record at byte {offset}: {e}') from e
    offset += 16 + length
    yield context, others, length


# Public name for the other record tools (tfrecords_tools/holdout.py).
read_varint = _varint
