r"""Hold out validation video-text pairs from clip records, by video (Beam).

  python -m tfrecords_tools.holdout \
      --records='WS/records/k210k/clips-*.tfrecord' --num_pairs=1000 \
      --output_dir=WS/records/k210k_split [-- BEAM_OPTIONS]

writes

  WS/records/k210k_split/train/  clips-*.tfrecord (the input shard names),
                                 label_map.json, summary.json
  WS/records/k210k_split/val/    clips-00000-of-00001.tfrecord (--num_val_shards),
                                 label_map.json, summary.json
  WS/records/k210k_split/holdout.json   the split, written last: its presence
                                        says both record sets are complete

and CPD pre-training reads TRAIN_FILES='.../train/clips-*.tfrecord',
EVAL_FILES='.../val/clips-*.tfrecord', NUM_TRAIN_EXAMPLES = `clips` of
train/summary.json. `label_space.json` is copied too when the input has one.

What N counts. The CPD paper (4.2) validates retrieval on "1k unseen
video-text pairs". A pair here is one clip with its title, one per video:
`--num_pairs=N` holds out N videos and takes from each its middle clip (by
start time, then clip key) among its clips with a non-empty title. The other
clips of a held-out video go to neither set, so no frame of a validation video
is trained on; a video with no titled clip is never held out (it has no pair).
The validation set has exactly N records.

Which videos. The N titled videos with the smallest SHA-256 of
"<seed>:<video id>" (`--seed`, default 0): a function of the video ids alone,
not of the shard layout, the record order, the worker count or a RNG, so the
same inputs and flags give the same split and byte-identical outputs.

`clip/index`. CPD's memory banks have one row per training clip, indexed by
`clip/index`, which must be contiguous in [0, NUM_TRAIN_EXAMPLES)
(`cpd.memory_bank`; the trainer asserts it). Removing videos leaves gaps, so
every training clip gets the rank of its old index among the kept clips
(0..M-1, the old relative order kept) and the validation pairs get 0..N-1 in
the order of their old indices. Nothing else in a record changes: only the
context is re-serialised (byte-identical to TensorFlow's deterministic
serialisation), the frames are copied through byte for byte with their CRC
checked.

Bad inputs stop the job before any output file is written: `--num_pairs`
larger than the number of titled videos, or a split that leaves no training
clip (both name `--num_pairs`), a duplicate `clip/index` or `clip/key`, a
record without `clip/index` / `clip/key` / `video/id`, a truncated or corrupt
shard; flags are checked before the job starts. Every output file is written
under a temporary name and renamed; a rerun replaces the outputs of an
earlier one (and refuses an output directory that holds shards it would not
overwrite).

Why Beam. Users have hundreds of thousands of clips, about a terabyte of JPEG
frames: the job is a copy of every byte, which one streaming process does at
disk speed (an hour or more per terabyte, and `gs://` through one machine),
while Beam spreads the shards over workers and runs on Dataflow unchanged,
like `relabel`. The shape follows `relabel`: pass 1 reads only the record
contexts (a few hundred bytes per clip, frames seeked over), one step plans
the split over all clips (about 100 bytes of metadata per clip: tens of MB
for 300k clips), pass 2 rewrites each input shard in one DoFn call. No frame
goes through Beam's shuffle: pass 2 appends the held-out pairs to small
temporary files under OUTPUT_DIR/.holdout-temp/RUN/, the validation shards
are assembled from them in index order, and the temporary files are deleted
at the end. The steps pass data only through keys (`GroupByKey`: no side
inputs, no multi-output ParDo, one last step that needs every other), so it
runs unchanged on Beam's Dask runner too (`--runner=DaskRunner --
--dask_client_address=...`), giving the DirectRunner's bytes. No TensorFlow in the job (record I/O is `tfrecord_io` and
`clip_proto`, files go through Beam's FileSystems). Beam options other than
`--runner`, `--direct_num_workers` and `--direct_running_mode` go after `--`
(`--runner=DataflowRunner -- --project=...`, `tfrecords_tools.cli`); an
unknown flag is an error. Pass 1 and pass 2 log their progress (shards done
of all, records or MB per second, ETA) at their first shard and every 10 s
(`tfrecords_tools.progress`).
"""

from __future__ import annotations

import collections
import fnmatch
import hashlib
import json
import logging
import os
import posixpath
import struct
import sys
import time
import uuid
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from tfrecords_tools import atomic_files
from tfrecords_tools import beam_utils
from tfrecords_tools import cli
from tfrecords_tools import clip_proto
from tfrecords_tools import file_patterns
from tfrecords_tools import progress as progress_lib
from tfrecords_tools import schema
from tfrecords_tools import tfrecord_io

TRAIN_DIRNAME = 'train'
VAL_DIRNAME = 'val'
HOLDOUT_FILENAME = 'holdout.json'
# Under the output dir; one subdirectory per run, removed when the run ends.
TEMP_DIRNAME = '.holdout-temp'
_REPORT_FILENAME = 'report.json'
# Side files of the input directory copied next to both outputs.
_COPIED_FILES = (schema.LABEL_MAP_FILENAME, schema.LABEL_SPACE_FILENAME)
# How many problem messages the error lists (all are counted).
_MAX_ERROR_MESSAGES = 20
# Records between two progress updates inside a shard.
_PROGRESS_RECORDS = 256

SELECTION_RULE = (
    'the num_pairs videos with a titled clip and the smallest '
    'sha256("<seed>:<video id>"); one pair per video: its middle titled clip '
    'by (start, clip key); the other clips of those videos are in neither set')


class HoldoutError(ValueError):
  """The inputs and flags of the hold-out job do not fit together."""


# ---- Context of a clip record at the protobuf wire level (no TensorFlow) ----


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
  return tfrecord_io.read_varint(buf, pos, len(buf), 'a record header')


def _fields(buf: bytes) -> Iterator[Tuple[int, int, Any]]:
  """(field number, wire type, value) of each field of a message."""
  pos, end = 0, len(buf)
  while pos < end:
    tag, pos = _varint(buf, pos)
    field, wire = tag >> 3, tag & 7
    if wire == 0:
      value, pos = _varint(buf, pos)
    elif wire in (1, 2, 5):
      if wire == 2:
        size, pos = _varint(buf, pos)
      else:
        size = 8 if wire == 1 else 4
      if pos + size > end:
        raise ValueError(f'protobuf field {field} runs past the end')
      value = buf[pos:pos + size]
      pos += size
    else:
      raise ValueError(f'unsupported protobuf wire type {wire}')
    yield field, wire, value


def parse_context(payload: bytes) -> Dict[str, bytes]:
  """A context (`tf.train.Features` bytes) -> {key: `tf.train.Feature` bytes}.

  The feature values stay serialised: the job reads a few of them and copies
  the rest through. As protobuf does for a map, the last entry of a key wins.
  """
  entries = {}
  for field, wire, entry in _fields(payload):
    if field != 1 or wire != 2:
      raise ValueError(f'not a tf.train.Features message (field {field}, '
                       f'wire type {wire})')
    key, value = b'', b''
    for f, w, v in _fields(entry):
      if f == 1 and w == 2:
        key = v
      elif f == 2 and w == 2:
        value = v
    entries[key.decode('utf-8')] = value
  return entries


def _list_values(feature: bytes, kind: int) -> Iterator[Tuple[int, Any]]:
  """(wire type, value) of the `value` field of a Feature's list of `kind`."""
  for f, w, inner in _fields(feature):
    if f == kind and w == 2:
      for f2, w2, v in _fields(inner):
        if f2 == 1:
          yield w2, v


def int64_values(feature: bytes) -> List[int]:
  values = []
  for wire, v in _list_values(feature, 3):
    if wire == 2:  # Packed.
      pos = 0
      while pos < len(v):
        x, pos = _varint(v, pos)
        values.append(x)
    elif wire == 0:
      values.append(v)
  return [x - (1 << 64) if x >= 1 << 63 else x for x in values]


def float_values(feature: bytes) -> List[float]:
  values = []
  for wire, v in _list_values(feature, 2):
    if wire == 2:  # Packed.
      values.extend(struct.unpack(f'<{len(v) // 4}f', v))
    elif wire == 5:
      values.append(struct.unpack('<f', v)[0])
  return values


def bytes_values(feature: bytes) -> List[bytes]:
  return [v for wire, v in _list_values(feature, 1) if wire == 2]


def context_with_index(entries: Mapping[str, bytes], clip_index: int) -> bytes:
  """The context with `clip/index` replaced, serialised as TF would."""
  # pylint: disable=protected-access
  # clip_proto's encoders are the project's one definition of a Feature's
  # bytes (byte-identical to TF's deterministic serialisation).
  new = dict(entries)
  new[schema.CLIP_INDEX_KEY] = clip_proto._int64_feature([clip_index])
  return clip_proto._features(new)
  # pylint: enable=protected-access


# ---- Pass 1: the clips of every shard ----

# Fields of a clip row of pass 1; the plan appends the shard path.
_INDEX, _KEY, _VIDEO, _START, _TITLED, _LABEL, _PATH = range(7)


def clip_row(payload: bytes, where: str) -> Tuple[int, str, str, float, bool,
                                                  Optional[int]]:
  """(clip index, clip key, video id, start, has a title, label) of a clip."""
  entries = parse_context(payload)

  def first(key, decode, required):
    values = decode(entries[key]) if key in entries else []
    if not values and required:
      raise ValueError(f'{where}: clip record has no {key!r}')
    return values[0] if values else None

  clip_index = first(schema.CLIP_INDEX_KEY, int64_values, True)
  clip_key = first(schema.CLIP_KEY_KEY, bytes_values, True).decode(
      'utf-8', 'replace')
  video_id = first(schema.VIDEO_ID_KEY, bytes_values, True).decode(
      'utf-8', 'replace')
  start = first(schema.CLIP_START_KEY, float_values, False)
  caption = first(schema.CAPTION_KEY, bytes_values, False) or b''
  label = first(schema.LABEL_INDEX_KEY, int64_values, False)
  return (clip_index, clip_key, video_id, 0.0 if start is None else start,
          bool(caption.strip()), label)


def _error(kind: str, message: str) -> beam.pvalue.TaggedOutput:
  return beam.pvalue.TaggedOutput('error', (kind, message))


def read_shard_clips(path: str,
                     progress: Optional[progress_lib.Progress] = None
                     ) -> Iterable[Any]:
  """Yields `(path, rows)` (`clip_row`s) of a shard, and problems as errors.

  Only the contexts are read (`tfrecord_io.read_contexts`: the frames are
  seeked over; pass 2 verifies their checksums when it copies them).
  `progress` (pass 1's) counts the records and the shard.
  """
  start = time.perf_counter()
  rows = []
  unreported = 0
  try:
    with beam_utils.open_file(path) as f:
      for i, payload in enumerate(tfrecord_io.read_contexts(f, path)):
        unreported += 1
        if progress is not None and unreported == _PROGRESS_RECORDS:
          progress.add(records=unreported)
          unreported = 0
        try:
          rows.append(clip_row(payload, f'{path} record {i}'))
        except ValueError as e:
          yield _error('bad_record', str(e))
  except tfrecord_io.CorruptRecordError as e:
    yield _error('corrupt_shard', str(e))
  if progress is not None:
    progress.add(records=unreported, shards=1)
  logging.debug('holdout pass 1: %s: %d clips (%.1f s)',
                posixpath.basename(path), len(rows),
                time.perf_counter() - start)
  yield path, rows


# ---- The plan: which clips go where, with which new index ----


def _video_rank(seed: int, video_id: str) -> bytes:
  return hashlib.sha256(f'{seed}:{video_id}'.encode('utf-8')).digest()


def _errors(problems: Sequence[Tuple[str, str]]) -> Dict[str, Any]:
  return {'count': len(problems),
          'by_kind': dict(sorted(collections.Counter(
              k for k, _ in problems).items())),
          'first': sorted(m for _, m in problems)[:_MAX_ERROR_MESSAGES]}


def _per_class(clips: Iterable[Tuple], names: Mapping[int, str]) -> Dict:
  counts = collections.Counter(c[_LABEL] for c in clips)
  return {names.get(k, str(k)): n for k, n in sorted(
      counts.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))}


def make_plan(shard_rows: Iterable[Tuple[str, Sequence[Tuple]]],
              errors: Iterable[Tuple[str, str]], *, num_pairs: int,
              seed: int, num_val_shards: int,
              class_names: Optional[Mapping[int, str]] = None
              ) -> Tuple[Dict[str, Any], Dict[str, Dict[str, Any]]]:
  """Chooses the held-out videos and numbers both outputs.

  Args:
    shard_rows: `(shard path, clip rows)` of every input shard.
    errors: `(kind, message)` problems of pass 1.
    num_pairs: validation pairs = held-out videos.
    seed: salt of the video hash.
    num_val_shards: validation shards; pair i goes to shard
      i * num_val_shards // num_pairs.
    class_names: label index -> name, for the per-class counts.

  Returns:
    (report, plans): the report (`status` 'ok' or 'failed' with `errors`,
    counts, the held-out video ids); on success `plans` maps every shard
    path to {'train': {old index: new}, 'val': {old index: (new, val shard)},
    'drop': [old indices]}, else it is empty.
  """
  names = dict(class_names or {})
  problems = [tuple(e) for e in errors]
  paths = []
  clips = []
  for path, rows in shard_rows:
    paths.append(path)
    clips.extend(tuple(r) + (path,) for r in rows)
  clips.sort(key=lambda c: (c[_INDEX], c[_KEY], c[_PATH]))
  for kind, field, what in (('duplicate_index', _INDEX, 'clip/index'),
                            ('duplicate_key', _KEY, 'clip/key')):
    seen = collections.defaultdict(list)
    for c in clips:
      seen[c[field]].append(c)
    for value, group in seen.items():
      if len(group) > 1:
        problems.append((kind, f'{what} {value!r} appears in {len(group)} '
                         f'records: ' + ', '.join(
                             f'{c[_KEY]!r} in {c[_PATH]}' for c in group)))
  videos = collections.defaultdict(list)
  for c in clips:
    videos[c[_VIDEO]].append(c)
  # The pair of a video: its middle titled clip by start time.
  pairs = {}
  for video_id, group in videos.items():
    titled = sorted((c for c in group if c[_TITLED]),
                    key=lambda c: (c[_START], c[_KEY]))
    if titled:
      pairs[video_id] = titled[(len(titled) - 1) // 2]
  counts = {'clips': len(clips), 'videos': len(videos),
            'titled_videos': len(pairs), 'shards': len(paths)}
  held: List[str] = []
  train: List[Tuple] = []
  if not problems:
    if num_pairs > len(pairs):
      problems.append(('num_pairs', (
          f'`--num_pairs`={num_pairs} is more than the {len(pairs)} videos '
          f'with a title in the records ({len(videos)} videos, {len(clips)} '
          f'clips): every validation pair is a video of its own')))
    else:
      held = sorted(pairs, key=lambda v: (_video_rank(seed, v), v))[:num_pairs]
      held_set = set(held)
      train = [c for c in clips if c[_VIDEO] not in held_set]
      if not train:
        problems.append(('num_pairs', (
            f'`--num_pairs`={num_pairs} holds out every one of the '
            f'{len(videos)} videos: no training clip would be left')))
  report: Dict[str, Any] = {
      'num_pairs': num_pairs, 'seed': seed, 'selection': SELECTION_RULE,
      'input': counts, 'errors': _errors(problems)}
  if problems:
    report['status'] = 'failed'
    return report, {}
  val = sorted((pairs[v] for v in held), key=lambda c: c[_INDEX])
  plans = {p: {'train': {}, 'val': {}, 'drop': []} for p in paths}
  for new, c in enumerate(train):
    plans[c[_PATH]]['train'][c[_INDEX]] = new
  val_index = {}
  for new, c in enumerate(val):
    shard = new * num_val_shards // num_pairs
    plans[c[_PATH]]['val'][c[_INDEX]] = (new, shard)
    val_index[c[_INDEX]] = new
  held_set = set(held)
  dropped = [c for c in clips
             if c[_VIDEO] in held_set and c[_INDEX] not in val_index]
  for c in dropped:
    plans[c[_PATH]]['drop'].append(c[_INDEX])
  report.update({
      'status': 'ok',
      'train': {'clips': len(train), 'videos': len(videos) - len(held),
                'num_shards': len(paths),
                'clips_per_class': _per_class(train, names)},
      'val': {'pairs': len(val), 'num_shards': num_val_shards,
              'clips_per_class': _per_class(val, names)},
      'dropped_clips': len(dropped),
      # In validation-index order.
      'val_clip_keys': [c[_KEY] for c in val],
      'val_video_ids': [c[_VIDEO] for c in val],
  })
  return report, plans


def _tagged(value, tag):
  return tag, value


def _untag(gathered, tag):
  """The values of `(tag, value)` pairs with this tag."""
  return [value for t, value in gathered if t == tag]


class _Plan(beam.DoFn):
  """Runs `make_plan` once; emits one plan per shard and every val shard.

  Its one input is pass 1 gathered: `('clips', (path, rows))` of every shard
  and `('error', (kind, message))` of every problem.
  """

  def __init__(self, *, num_pairs, seed, num_val_shards, class_names,
               output_dir):
    self._kwargs = dict(num_pairs=num_pairs, seed=seed,
                        num_val_shards=num_val_shards,
                        class_names=class_names)
    self._output_dir = output_dir

  def process(self, gathered):
    shard_rows, errors = _untag(gathered, 'clips'), _untag(gathered, 'error')
    start = time.perf_counter()
    report, plans = make_plan(shard_rows, errors, **self._kwargs)
    logging.info('holdout plan: %s (%.1f s)', summary_line(report),
                 time.perf_counter() - start)
    yield beam.pvalue.TaggedOutput('report', report)
    if report['status'] != 'ok':
      return
    # From here the outputs change: an earlier run's marker goes first.
    marker = beam_utils.join(self._output_dir, HOLDOUT_FILENAME)
    if beam_utils.exists(marker):
      FileSystems.delete([marker])
    for shard in range(report['val']['num_shards']):
      yield beam.pvalue.TaggedOutput('val_shards', (shard, None))
    yield from sorted(plans.items())


# ---- Pass 2: rewrite one shard ----


def rewrite_shard(in_path: str, out_path: str, part_path: str,
                  plan: Mapping[str, Any],
                  progress: Optional[progress_lib.Progress] = None
                  ) -> Tuple[Dict[str, Any], List]:
  """Writes a shard's training clips; appends its pairs to `part_path`.

  Args:
    in_path: input shard.
    out_path: training shard (temporary name, renamed when complete).
    part_path: temporary file for the shard's validation pairs (written only
      if it has any).
    plan: this shard's part of `make_plan`'s plans.
    progress: pass 2's counters (clips, input bytes, then the shard).

  Returns:
    (stats, pieces): per-shard counts; `(val shard, (new index, part_path,
    byte offset))` of every validation pair.
  """
  start = time.perf_counter()
  train, val, drop = plan['train'], plan['val'], set(plan['drop'])
  expected = len(train) + len(val) + len(drop)
  stats = {'shard': posixpath.basename(out_path), 'train': 0, 'val': 0,
           'dropped': 0, 'bytes_in': 0, 'bytes_out': 0}
  pieces = []
  seen = set()
  part, part_bytes = None, 0
  unreported = [0, 0]  # clips, bytes in
  try:
    with atomic_files.replacing(out_path, atomic_files.BEAM) as tmp, \
        beam_utils.open_file(in_path) as fin, beam_utils.create(tmp) as fout:
      for i, (context, rest, length) in enumerate(
          tfrecord_io.read_split_records(fin, in_path)):
        stats['bytes_in'] += length + 16
        if progress is not None:
          unreported[0] += 1
          unreported[1] += length + 16
          if unreported[0] == _PROGRESS_RECORDS:
            progress.add(clips=unreported[0], bytes=unreported[1])
            unreported = [0, 0]
        entries = parse_context(context)
        values = int64_values(entries.get(schema.CLIP_INDEX_KEY, b''))
        old = values[0] if values else None
        if old in seen or not (old in train or old in val or old in drop):
          raise HoldoutError(f'{in_path} record {i}: clip/index {old} was not '
                             f'seen exactly once in pass 1 (file changed '
                             f'during the job?)')
        seen.add(old)
        if old in train:
          stats['bytes_out'] += tfrecord_io.write_record_parts(fout, [
              tfrecord_io.context_field(context_with_index(entries,
                                                           train[old]))] + rest)
          stats['train'] += 1
        elif old in val:
          new, shard = val[old]
          if part is None:
            part = beam_utils.create(part_path)
          pieces.append((shard, (new, part_path, part_bytes)))
          part_bytes += tfrecord_io.write_record_parts(part, [
              tfrecord_io.context_field(context_with_index(entries, new))] +
                                                       rest)
          stats['val'] += 1
        else:
          stats['dropped'] += 1
      if len(seen) != expected:
        raise HoldoutError(f'{in_path}: pass 1 saw {expected} clips, pass 2 '
                           f'read {len(seen)} (file changed during the job?)')
      if part is not None:
        part.close()
        part = None
  finally:
    if part is not None:
      part.close()
  if progress is not None:
    progress.add(clips=unreported[0], bytes=unreported[1], shards=1)
  logging.debug('holdout pass 2: %s: %d training, %d validation, %d dropped '
                'clips, %.1f MB (%.1f s)', stats['shard'], stats['train'],
                stats['val'], stats['dropped'], stats['bytes_in'] / 1e6,
                time.perf_counter() - start)
  return stats, pieces


class _RewriteShard(beam.DoFn):

  def __init__(self, train_dir: str, temp_dir: str,
               run: Optional[progress_lib.BeamRun] = None,
               num_shards: Optional[int] = None,
               input_bytes: Optional[int] = None):
    self._train_dir = train_dir
    self._temp_dir = temp_dir
    self._run = run or progress_lib.BeamRun.create('DirectRunner', 1)
    self._totals = {'shards': num_shards, 'clips': None, 'bytes': input_bytes}

  def setup(self):
    self._progress = self._run.progress(
        'holdout pass 2 (rewrite)', self._totals, rates=('clips', 'bytes'),
        eta_by='bytes' if self._totals['bytes'] else None)

  def process(self, element):
    path, plan = element
    name = posixpath.basename(path)
    stats, pieces = rewrite_shard(
        path, beam_utils.join(self._train_dir, name),
        beam_utils.join(self._temp_dir, f'val-part-{name}'), plan,
        progress=self._progress)
    for piece in pieces:
      yield beam.pvalue.TaggedOutput('val', piece)
    yield stats


class _WriteValShard(beam.DoFn):
  """(val shard, pieces) -> one validation shard, pairs in index order."""

  def __init__(self, val_dir: str, num_val_shards: int):
    self._val_dir = val_dir
    self._num = num_val_shards

  def process(self, element):
    shard, pieces = element
    items = sorted(p for p in pieces if p is not None)
    path = beam_utils.join(self._val_dir, schema.shard_name(shard, self._num))
    src, src_path = None, None
    try:
      with atomic_files.replacing(path, atomic_files.BEAM) as tmp, \
          beam_utils.create(tmp) as out:
        for _, part_path, offset in items:
          if part_path != src_path:
            if src is not None:
              src.close()
            src, src_path = beam_utils.open_file(part_path), part_path
          src.seek(offset)
          tfrecord_io.write_record(
              out, next(tfrecord_io.read_records(src, part_path)))
    finally:
      if src is not None:
        src.close()
    yield {'shard': posixpath.basename(path),
           'indices': [new for new, _, _ in items]}


# ---- Finish: check the totals, write the side files ----


def _summary(report: Mapping[str, Any], role: str, *, shard_pattern: str,
             num_classes: Optional[int], records_pattern: str) -> Dict:
  part = report[role]
  clips = part['clips'] if role == 'train' else part['pairs']
  return {
      'schema_version': schema.SCHEMA_VERSION,
      'clips': clips,
      'videos': part['videos'] if role == 'train' else part['pairs'],
      'num_classes': num_classes,
      'num_shards': part['num_shards'],
      'shard_pattern': shard_pattern,
      'clips_per_class': part['clips_per_class'],
      'holdout': {'role': 'train' if role == 'train' else 'validation',
                  'records': records_pattern,
                  'num_pairs': report['num_pairs'], 'seed': report['seed'],
                  'selection': report['selection'],
                  'held_out_videos': report['val']['pairs'],
                  'dropped_clips': report['dropped_clips']},
  }


def finish(unused_element, report, train_stats, val_stats, *, output_dir: str,
           temp_dir: str, side_files: Mapping[str, bytes],
           num_classes: Optional[int], records_pattern: str,
           train_pattern: str) -> None:
  """Checks the totals; writes the side files and, last, `holdout.json`.

  Always writes the report into the run's temporary directory, where the
  driver reads it (a failed plan writes nothing else).
  """
  if report['status'] == 'ok':
    problems = []
    totals = {k: sum(s[k] for s in train_stats)
              for k in ('train', 'val', 'dropped')}
    if len(train_stats) != report['input']['shards']:
      problems.append(f'{len(train_stats)} training shards written of '
                      f'{report["input"]["shards"]}')
    if totals['train'] != report['train']['clips']:
      problems.append(f'{totals["train"]} training clips written, the plan '
                      f'has {report["train"]["clips"]}')
    if totals['dropped'] != report['dropped_clips']:
      problems.append(f'{totals["dropped"]} clips dropped, the plan drops '
                      f'{report["dropped_clips"]}')
    indices = sorted(i for s in val_stats for i in s['indices'])
    if (totals['val'] != report['num_pairs'] or
        indices != list(range(report['num_pairs']))):
      problems.append(f'{len(indices)} validation pairs written '
                      f'({totals["val"]} held out), expected '
                      f'{report["num_pairs"]} numbered 0..N-1')
    if problems:
      raise HoldoutError('holdout totals do not add up: ' +
                         '; '.join(problems))
    for role, dirname, pattern in (
        ('train', TRAIN_DIRNAME, train_pattern),
        ('val', VAL_DIRNAME, schema.shard_pattern())):
      directory = beam_utils.join(output_dir, dirname)
      for name, data in sorted(side_files.items()):
        beam_utils.write_bytes_atomic(beam_utils.join(directory, name), data)
      beam_utils.write_json_atomic(
          beam_utils.join(directory, schema.SUMMARY_FILENAME),
          _summary(report, role, shard_pattern=pattern,
                   num_classes=num_classes, records_pattern=records_pattern))
    # Last: its presence says both record sets are complete.
    beam_utils.write_json_atomic(beam_utils.join(output_dir, HOLDOUT_FILENAME),
                                 dict(report, records=records_pattern))
  beam_utils.write_json_atomic(beam_utils.join(temp_dir, _REPORT_FILENAME),
                               report)


def _finish_gathered(gathered, **kwargs) -> None:
  """`finish` of the plan's report and pass 2's stats, gathered and tagged."""
  (report,) = _untag(gathered, 'report')
  finish(None, report, _untag(gathered, 'train_stats'),
         _untag(gathered, 'val_stats'), **kwargs)


def _shard_path(plan):
  return plan[0]


# ---- The pipeline ----


def build_pipeline(pipeline: beam.Pipeline, *, shards: Sequence[str],
                   num_pairs: int, seed: int, num_val_shards: int,
                   class_names: Mapping[int, str], output_dir: str,
                   temp_dir: str, side_files: Mapping[str, bytes],
                   num_classes: Optional[int], records_pattern: str,
                   spread: bool, run: Optional[progress_lib.BeamRun] = None,
                   input_bytes: Optional[int] = None) -> None:
  """Adds pass 1, the plan, pass 2, the validation shards and the finish.

  Per-shard elements everywhere but the plan (one element that sees every
  clip's metadata); frames never leave the worker that copies them.

  Args:
    spread: reshuffle the shard list over workers (a distributed runner or
      several DirectRunner workers).
    run: names the run's progress counters.
    input_bytes: the shards' total size (pass 2's ETA), if known.
    (The others as in `holdout`.)
  """
  run = run or progress_lib.BeamRun.create('DirectRunner', 1)
  paths = pipeline | 'Shards' >> beam.Create(list(shards), reshuffle=spread)
  planned = (paths
             | 'ReadContexts' >> beam.ParDo(beam_utils.TagOutputs(
                 beam_utils.ReadShards(read_shard_clips,
                                       'holdout pass 1 (contexts)', run,
                                       len(shards)), main='clips'))
             | 'GatherPass1' >> beam_utils.Gather()
             | 'Plan' >> beam_utils.ParDoByTag(
                 _Plan(num_pairs=num_pairs, seed=seed,
                       num_val_shards=num_val_shards,
                       class_names=dict(class_names), output_dir=output_dir),
                 'report', 'val_shards', main='plans'))
  plans = planned['plans']
  if spread:
    plans = plans | 'SpreadPlans' >> beam_utils.Spread(_shard_path)
  rewritten = plans | 'Rewrite' >> beam_utils.ParDoByTag(_RewriteShard(
      beam_utils.join(output_dir, TRAIN_DIRNAME), temp_dir, run, len(shards),
      input_bytes), 'val', main='stats')
  val_stats = ((rewritten['val'], planned['val_shards'])
               | 'WithEveryValShard' >> beam.Flatten()
               | 'ByValShard' >> beam.GroupByKey()
               | 'WriteVal' >> beam.ParDo(_WriteValShard(
                   beam_utils.join(output_dir, VAL_DIRNAME), num_val_shards)))
  train_pattern = schema.shard_pattern()
  if not all(fnmatch.fnmatch(posixpath.basename(s), train_pattern)
             for s in shards):
    train_pattern = '*'
  # One last step that needs every other (Beam's Dask runner runs only
  # what its last transform needs), fed by keys, not side inputs.
  _ = ((planned['report'] | 'TagReport' >> beam.Map(_tagged, 'report'),
        rewritten['stats'] | 'TagTrainStats' >> beam.Map(
            _tagged, 'train_stats'),
        val_stats | 'TagValStats' >> beam.Map(_tagged, 'val_stats'))
       | 'FlattenForFinish' >> beam.Flatten()
       | 'Collect' >> beam_utils.Gather()
       | 'Finish' >> beam.Map(
           _finish_gathered, output_dir=output_dir, temp_dir=temp_dir,
           side_files=dict(side_files), num_classes=num_classes,
           records_pattern=records_pattern, train_pattern=train_pattern))


def _match_shards(pattern: str) -> List[str]:
  return file_patterns.match_beam(pattern, '`--records` pattern')


def _dirname(path: str) -> str:
  return posixpath.dirname(path) if '://' in path else os.path.dirname(path)


def _same_dir(a: str, b: str) -> bool:
  if '://' in a or '://' in b:
    return a.rstrip('/') == b.rstrip('/')
  return os.path.realpath(a) == os.path.realpath(b)


def _check_output_dir(output_dir: str, input_dir: str, shards: Sequence[str],
                      num_val_shards: int) -> None:
  """Refuses an output that would overwrite the input or mix with old shards."""
  for sub in ('', TRAIN_DIRNAME, VAL_DIRNAME):
    target = beam_utils.join(output_dir, sub) if sub else output_dir
    if _same_dir(target, input_dir):
      raise ValueError(f'`--output_dir` {output_dir!r}: {target!r} is the '
                       f'input directory; the job would overwrite the shards '
                       f'it reads')
  expected = {
      TRAIN_DIRNAME: {posixpath.basename(s) for s in shards},
      VAL_DIRNAME: {schema.shard_name(i, num_val_shards)
                    for i in range(num_val_shards)}}
  for sub, names in expected.items():
    pattern = beam_utils.join(output_dir, sub, '*' + schema.SHARD_SUFFIX)
    found = {posixpath.basename(m.path)
             for m in FileSystems.match([pattern])[0].metadata_list}
    stale = sorted(found - names)
    if stale:
      raise ValueError(
          f'`--output_dir` {output_dir!r} holds shards this split would not '
          f'overwrite ({sub}/{stale[0]}, {len(stale)} in all): readers would '
          f'mix them in; use an empty directory')


def holdout(*, records_pattern: str, num_pairs: int, output_dir: str,
            seed: int = 0, num_val_shards: int = 1,
            runner: str = 'DirectRunner', direct_num_workers: int = 1,
            beam_args: Sequence[str] = ()) -> Dict[str, Any]:
  """Runs the hold-out job; returns its report (also `holdout.json`).

  Args:
    records_pattern: file pattern of the clip-record shards of one directory
      (with its `label_map.json`).
    num_pairs: validation pairs N = held-out videos, one pair each.
    output_dir: gets `train/`, `val/` and `holdout.json`; must not be (or
      contain as `train/` or `val/`) the input directory.
    seed: salt of the video hash: another seed, another split.
    num_val_shards: shards of the validation set, in [1, num_pairs].
    runner: Beam runner.
    direct_num_workers: DirectRunner workers (processes unless
      `--direct_running_mode` in `beam_args` says otherwise).
    beam_args: further Beam pipeline options.

  Returns:
    The report: counts of input, training and validation clips, the dropped
    clips of held-out videos, the held-out clip keys and video ids in
    validation-index order, and `timing_s` (not written to any file: a
    rerun gives identical bytes).

  Raises:
    HoldoutError: the inputs do not allow the split (a `--num_pairs` larger
      than the titled videos, or one that leaves no training clip), or are
      broken (duplicates, missing keys, corrupt shards); nothing is written.
    ValueError, FileNotFoundError: bad flags, before the job starts.
  """
  start = time.perf_counter()
  if num_pairs is None or num_pairs < 1:
    raise ValueError(f'`--num_pairs` must be >= 1, got {num_pairs}')
  if num_val_shards is None or not 1 <= num_val_shards <= num_pairs:
    raise ValueError(f'`--num_val_shards` must be in [1, num_pairs='
                     f'{num_pairs}], got {num_val_shards}')
  if direct_num_workers < 1:
    raise ValueError(f'`--direct_num_workers` must be >= 1, got '
                     f'{direct_num_workers}')
  if not output_dir:
    raise ValueError('`--output_dir` must be set')
  shards = _match_shards(records_pattern)
  input_dirs = {_dirname(p) for p in shards}
  if len(input_dirs) != 1:
    raise ValueError(f'`--records` must match shards of one directory (the '
                     f'one with {schema.LABEL_MAP_FILENAME}), got '
                     f'{sorted(input_dirs)}')
  input_dir = input_dirs.pop()
  label_map_path = beam_utils.join(input_dir, schema.LABEL_MAP_FILENAME)
  if not beam_utils.exists(label_map_path):
    raise FileNotFoundError(f'`--records`: no {schema.LABEL_MAP_FILENAME} '
                            f'next to the shards ({label_map_path!r})')
  _check_output_dir(output_dir, input_dir, shards, num_val_shards)
  side_files = {}
  for name in _COPIED_FILES:
    path = beam_utils.join(input_dir, name)
    if beam_utils.exists(path):
      side_files[name] = beam_utils.read_bytes(path)
  label_map = json.loads(side_files[schema.LABEL_MAP_FILENAME])
  class_names = {int(i): n for n, i in label_map.items()}
  num_classes = len(label_map)
  summary_path = beam_utils.join(input_dir, schema.SUMMARY_FILENAME)
  if beam_utils.exists(summary_path):
    num_classes = json.loads(beam_utils.read_bytes(summary_path)).get(
        'num_classes', num_classes)

  existed = beam_utils.exists(output_dir)
  temp_root = beam_utils.join(output_dir, TEMP_DIRNAME)
  # A crashed run's temporary files are never read (each run has its own
  # directory); remove them so they do not pile up.
  beam_utils.delete_tree(temp_root)
  temp_dir = beam_utils.join(temp_root, uuid.uuid4().hex)
  input_bytes = beam_utils.total_size(shards)
  logging.info('holdout: %d shards in %s (%s), %d validation pairs (seed %d) '
               '-> %s', len(shards), input_dir,
               'size unknown' if input_bytes is None else
               f'{input_bytes / 1e6:.1f} MB', num_pairs, seed, output_dir)
  prepared = time.perf_counter()
  try:
    pipeline = beam_utils.make_pipeline(runner, direct_num_workers, beam_args)
    build_pipeline(pipeline, shards=shards, num_pairs=num_pairs, seed=seed,
                   num_val_shards=num_val_shards, class_names=class_names,
                   output_dir=output_dir, temp_dir=temp_dir,
                   side_files=side_files, num_classes=num_classes,
                   records_pattern=records_pattern,
                   spread=runner not in ('DirectRunner', 'direct') or
                   direct_num_workers > 1,
                   run=progress_lib.BeamRun.create(runner, direct_num_workers),
                   input_bytes=input_bytes)
    pipeline.run().wait_until_finish()
    report = json.loads(beam_utils.read_bytes(
        beam_utils.join(temp_dir, _REPORT_FILENAME)))
  finally:
    beam_utils.delete_tree(temp_root)
    if not existed:
      _remove_if_empty(output_dir)
  done = time.perf_counter()
  report['timing_s'] = {'prepare': prepared - start, 'run': done - prepared}
  logging.info('holdout timing (s): prepare %.3f, run %.3f',
               prepared - start, done - prepared)
  if report['status'] != 'ok':
    e = report['errors']
    raise HoldoutError(
        f'holdout: {e["count"]} problem(s) {e["by_kind"]}, nothing '
        f'written:\n  ' + '\n  '.join(e['first']))
  logging.info('holdout: %s', summary_line(report))
  return report


def _remove_if_empty(path: str) -> None:
  """Removes a local directory this run created and left empty."""
  if '://' not in path and os.path.isdir(path) and not os.listdir(path):
    os.rmdir(path)


def summary_line(report: Mapping[str, Any]) -> str:
  """What a run produced (or why not), in one line."""
  counts = report['input']
  line = (f'{counts["clips"]} clips of {counts["videos"]} videos '
          f'({counts["titled_videos"]} with a title) in {counts["shards"]} '
          f'shards')
  if report['status'] != 'ok':
    return f'{line}: failed, {report["errors"]["count"]} problems'
  return (f'{line}: {report["train"]["clips"]} training clips of '
          f'{report["train"]["videos"]} videos, {report["val"]["pairs"]} '
          f'validation pairs (one per held-out video), '
          f'{report["dropped_clips"]} other clips of held-out videos dropped')


# ---- Command line ----


def _define_flags(fv) -> None:
  """Flags exist only when the module runs as a tool, never on import."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('records', None, 'File pattern of the clip records.',
                      flag_values=fv)
  flags.DEFINE_integer('num_pairs', None,
                       'Validation pairs: held-out videos, one clip with its '
                       'title each (the CPD paper: 1000).', flag_values=fv)
  flags.DEFINE_string('output_dir', None,
                      'Gets train/, val/ and holdout.json.', flag_values=fv)
  flags.DEFINE_integer('seed', 0, 'Salt of the video hash (another split).',
                       flag_values=fv)
  flags.DEFINE_integer('num_val_shards', 1, 'Shards of the validation set.',
                       flag_values=fv)
  cli.define_beam_flags(fv, workers_help='DirectRunner workers.',
                        default_mode='multi_processing')


TOOL = cli.Tool(name='holdout', command='python -m tfrecords_tools.holdout',
                doc=__doc__, define_flags=_define_flags,
                required=('records', 'num_pairs', 'output_dir'), beam=True)


def main(args: cli.Args) -> int:
  """Runs the job for a parsed command line; returns the exit status."""
  fv = args.flags
  try:
    report = holdout(
        records_pattern=fv.records, num_pairs=fv.num_pairs,
        output_dir=fv.output_dir, seed=fv.seed,
        num_val_shards=fv.num_val_shards, runner=fv.runner,
        direct_num_workers=fv.direct_num_workers,
        beam_args=args.beam_pipeline_args())
  except (ValueError, OSError) as e:
    # One line naming the flag, file or directory (no traceback).
    print(f'holdout failed: {e}', file=sys.stderr)
    return 1
  print(f'{summary_line(report)}; output in {fv.output_dir} '
        f'(NUM_TRAIN_EXAMPLES={report["train"]["clips"]})')
  return 0


def run(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point: parses the command line (`cli`), runs; the exit status."""
  return cli.run(TOOL, main, argv)


if __name__ == '__main__':
  # Run the imported module's copy, so pickled functions name
  # `tfrecords_tools.holdout`, which worker processes can import.
  from tfrecords_tools import holdout as _holdout  # pylint: disable=g-import-not-at-top,import-self
  sys.exit(_holdout.run())
