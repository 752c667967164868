r"""Relabel clip records with an SPL label space (Apache Beam).

  python -m tfrecords_tools.relabel \
      --records='/data/web/clips-*.tfrecord' \
      --predictions='/data/web_pred/predictions-*.tfrecord' \
      --variant=spl_m --scr=0.9 --output_dir=/data/web_spl_m \
      [--direct_num_workers=W] [-- BEAM_OPTIONS]

`spl_m` / `spl_d` are sized by exactly one of `--k=K`, `--scr=S` (the smallest
K reaching that samples cover ratio) or `--num_classes=C` (the N diagonal
cells plus the C - N most frequent off-diagonal ones, C in [N, N^2]: Figure
4's 400 / 1600 / 4500 classes for N = 200, i.e. K = 2 / 8 / 22.5). The job
reports the SCR reached and the synthetic noise ratio of Table 2 (share of
clips off the diagonal of the confusion matrix) for every variant.

Beam pipeline options other than `--runner`, `--direct_num_workers` and
`--direct_running_mode` go after `--` (`tfrecords_tools.cli`), e.g.
`--runner=DataflowRunner -- --project=P --region=R`; an unknown flag is an
error, never handed to Beam.

Pass 1 reads only the context of every clip record (weak label, clip index,
clip key: a few hundred bytes per clip, the frames are seeked over), joins it
with the teacher predictions on `clip/index` (in buckets of consecutive
indices, so Beam moves one element per file and bucket, not one per clip),
checks the join, and builds the confusion matrix and the label space
(`tfrecords_tools.label_spaces`), kept for pass 2 and the finish step in a
hidden temporary file of the output directory (not a side input: the same
pipeline runs on every runner, Beam's Dask runner included; see
`build_pipeline`). Pass 2 rewrites each shard as one unit (one DoFn call),
so output shards keep the input names and record order: every kept record
gets `clip/teacher/index`, `clip/teacher/score`, the new `clip/label/index`
and `clip/label/text`, and `clip/label_space/id`; the weak label stays. Only
the context is re-serialised; the frame bytes are copied through with their
CRC checked (`tfrecord_io`, google-crc32c), which is what makes the pass as
fast as a plain copy. Dropped clips are counted; the job checks input =
written + dropped per shard and overall. Every file is read by our own
framing code, never by Beam's `tfrecordio` (whose CRC falls back to pure
Python when no C implementation is installed).

Outputs in `--output_dir`: the shards (each written under a temporary name,
then renamed), and, only when the job succeeded, the plots, `label_map.json`
of the new classes (name -> class id), `label_space.json` and, last,
`relabel_stats.json`: the completion record, listing the shards
(`tfrecords_tools.completion`). The job starts by marking the directory in
progress (`_IN_PROGRESS.json`, deleted by a successful finish) and deleting
what a killed or earlier run left: temporaries, shards this run does not
overwrite, the old `label_space.json` and `relabel_stats.json`; readers
refuse a directory that is in progress, failed or mixed. A rerun with the
same inputs writes identical bytes. Input problems (a record without a
prediction, a prediction for an unknown clip, a teacher with a different
number of classes, duplicates, a record of a newer schema version, a
truncated or corrupt shard) stop the job before any shard is written and are
listed in `relabel_stats.json` (status 'failed') and in the raised
`RelabelError`; a frame byte that fails its CRC in pass 2, or a write that
fails (a full disk), fails the job naming the shard (no partial shard is
left, under its final name or a temporary one).

What the job shows while it works (INFO, `tfrecords_tools.progress`): pass 1
logs shards read of all, records read, records/s and an ETA; pass 2 shards
rewritten of all, clips, MB/s and an ETA by bytes, at their first shard and
every 10 s (job-wide when the DirectRunner's workers are threads or in
process, per worker process in multi_processing mode). At the end: the wall
time of every phase and the summary line (label space, SCR, noise ratio,
clips in / written / dropped).

Speed (`python -m benchmarks.bench_relabel`): the relabel pass runs at about
the speed of a plain TFRecord copy; the job adds a fixed start-up of about a
second (pipeline construction, ~10 DirectRunner stages, three matplotlib
plots) whatever the data size.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import posixpath
import sys
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.metrics.metric import Metrics
from apache_beam.metrics.metric import MetricsFilter
import numpy as np
import tensorflow as tf

from tfrecords_tools import atomic_files
from tfrecords_tools import beam_utils
from tfrecords_tools import cli
from tfrecords_tools import completion
from tfrecords_tools import file_patterns
from tfrecords_tools import label_spaces
from tfrecords_tools import progress as progress_lib
from tfrecords_tools import records
from tfrecords_tools import schema
from tfrecords_tools import tfrecord_io

# The job's completion record (`completion.RECORD_FILENAMES` names it too).
STATS_FILENAME = 'relabel_stats.json'
CONFUSION_PNG = 'confusion_matrix.png'
CLASS_COUNTS_PNG = 'class_counts.png'
SCR_CURVE_PNG = 'scr_vs_k.png'

# How many problem messages the error report lists (all are counted).
_MAX_ERROR_MESSAGES = 20

# Records between two progress updates inside a shard (cheap either way).
_PROGRESS_RECORDS = 256


# Beam metrics namespace of the per-phase wall times (microseconds).
_TIMING = 'relabel_timing'


class RelabelError(RuntimeError):
  """The inputs of the relabel job do not fit together."""


def _record_time(phase: str, seconds: float) -> None:
  """Adds a phase's wall time to the job's metrics (main thread only)."""
  Metrics.distribution(_TIMING, phase).update(int(seconds * 1e6))


# ---- Context access ----


def _int(feature_map, key: str, where: str) -> int:
  if key not in feature_map or not feature_map[key].int64_list.value:
    raise ValueError(f'{where}: clip record has no int64 {key!r}')
  return int(feature_map[key].int64_list.value[0])


def _text(feature_map, key: str) -> str:
  if key not in feature_map or not feature_map[key].bytes_list.value:
    return ''
  return feature_map[key].bytes_list.value[0].decode('utf-8', 'replace')


# ---- Pass 1: contexts and predictions ----

# Pass 1 joins clips and predictions on `clip/index` in buckets of this many
# consecutive indices: one Beam element per (file, bucket), not per clip (a
# per-clip element costs the runner more than copying the clip's frames), and
# still one group per bucket for a distributed runner to spread.
_BUCKET = 1 << 15

# First item of the values joined on the bucket.
_CLIP, _PRED = 0, 1


def _error(kind: str, message: str) -> beam.pvalue.TaggedOutput:
  return beam.pvalue.TaggedOutput('error', ('error', kind, message))


def read_shard_contexts(path: str,
                        progress: Optional[progress_lib.Progress] = None
                        ) -> Iterable[Any]:
  """Yields `(bucket, (_CLIP, path, rows))` for the clips of a shard.

  `rows` lists `(clip_index, clip_key, weak)` of the shard's clips whose index
  falls in `bucket` (`clip_index // _BUCKET`). Only the contexts are read
  (`tfrecord_io.read_contexts`); the frames are seeked over, and their
  checksum is verified by pass 2, which reads them anyway. Problems come out
  as `_error` outputs; a corrupt or truncated shard is one problem naming the
  file and byte offset. `progress` (pass 1's) counts the records and, at
  the end, the shard.
  """
  start = time.perf_counter()
  buckets: Dict[int, List[Tuple[int, str, int]]] = {}
  unreported = 0
  try:
    with beam_utils.open_file(path) as f:
      for i, payload in enumerate(tfrecord_io.read_contexts(f, path)):
        where = f'{path} record {i}'
        unreported += 1
        if progress is not None and unreported == _PROGRESS_RECORDS:
          progress.add(records=unreported)
          unreported = 0
        try:
          feature_map = tf.train.Features.FromString(payload).feature
          # First: a newer schema may have renamed the other keys.
          version = _int(feature_map, schema.SCHEMA_VERSION_KEY, where)
          if version > schema.SCHEMA_VERSION:
            yield _error('schema_version', f'{where}: schema/version '
                         f'{version} is newer than this code reads '
                         f'({schema.SCHEMA_VERSION}): update the code or '
                         f'rewrite the records')
            continue
          clip_index = _int(feature_map, schema.CLIP_INDEX_KEY, where)
          weak = _int(feature_map, schema.WEAK_LABEL_INDEX_KEY, where)
        except Exception as e:  # pylint: disable=broad-except
          yield _error('bad_record', str(e))
          continue
        buckets.setdefault(clip_index // _BUCKET, []).append(
            (clip_index, _text(feature_map, schema.CLIP_KEY_KEY), weak))
  except tfrecord_io.CorruptRecordError as e:
    yield _error('corrupt_shard', str(e))
  if progress is not None:
    progress.add(records=unreported, shards=1)
  for bucket, rows in sorted(buckets.items()):
    yield bucket, (_CLIP, path, rows)
  _record_time('pass1_contexts', time.perf_counter() - start)


def read_prediction_file(path: str) -> Iterable[Any]:
  """Yields `(bucket, (_PRED, path, rows))` for the predictions of a file.

  `rows` lists `(clip_index, clip_key, num_classes, top-1, score)`. The
  records are CRC-checked by `tfrecord_io` (google-crc32c), like every other
  read of the job.
  """
  start = time.perf_counter()
  buckets: Dict[int, List[Tuple[int, str, int, int, float]]] = {}
  try:
    with beam_utils.open_file(path) as f:
      for i, serialized in enumerate(tfrecord_io.read_records(f, path)):
        try:
          p = records.parse_prediction_example(serialized)
        except Exception as e:  # pylint: disable=broad-except
          yield _error('bad_prediction', f'{path} record {i}: unreadable '
                       f'prediction record: {e}')
          continue
        clip_index = p[schema.CLIP_INDEX_KEY]
        buckets.setdefault(clip_index // _BUCKET, []).append((
            clip_index, p[schema.CLIP_KEY_KEY],
            p[schema.PREDICTION_NUM_CLASSES_KEY],
            p[schema.PREDICTION_TOP_K_INDEX_KEY][0],
            p[schema.PREDICTION_TOP_K_SCORE_KEY][0]))
  except tfrecord_io.CorruptRecordError as e:
    yield _error('corrupt_predictions', str(e))
  for bucket, rows in sorted(buckets.items()):
    yield bucket, (_PRED, path, rows)
  _record_time('pass1_predictions', time.perf_counter() - start)


class _MatchClips(beam.DoFn):
  """Checks the clip indices of one bucket; yields the matched clips by shard.

  Every index needs one record and one prediction with the same clip key and
  N. Main output: `(shard path, [(clip_index, weak, teacher, score)])`.
  """

  def __init__(self, num_classes: int):
    self._n = num_classes

  def process(self, element):
    _, chunks = element
    clips: Dict[int, List[Tuple[str, str, int]]] = {}
    preds: Dict[int, List[Tuple[str, int, int, float]]] = {}
    for kind, path, rows in chunks:
      if kind == _CLIP:
        for clip_index, key, weak in rows:
          clips.setdefault(clip_index, []).append((path, key, weak))
      else:
        for clip_index, *pred in rows:
          preds.setdefault(clip_index, []).append(tuple(pred))
    by_shard: Dict[str, List[Tuple[int, int, int, float]]] = {}
    for clip_index in sorted(clips.keys() | preds.keys()):
      error = self._check(clip_index, sorted(clips.get(clip_index, ())),
                          sorted(preds.get(clip_index, ())))
      if error:
        yield _error(*error)
        continue
      (path, _, weak), = clips[clip_index]
      (_, _, teacher, score), = preds[clip_index]
      by_shard.setdefault(path, []).append((clip_index, weak, teacher, score))
    yield from sorted(by_shard.items())

  def _check(self, clip_index, clips, preds) -> Optional[Tuple[str, str]]:
    """(kind, message) of the first problem of one clip index, or None."""
    if not clips:
      keys = [key for key, *_ in preds]
      return ('unknown_clip', f'prediction for unknown clip: clip/index '
              f'{clip_index} (key {keys[0]!r}) is in no clip record')
    if len(clips) > 1:
      return ('duplicate_clip', f'clip/index {clip_index} appears in '
              f'{len(clips)} records: {[c[:2] for c in clips]}')
    path, clip_key, weak = clips[0]
    if not preds:
      return ('missing_prediction', f'record without prediction: clip/index '
              f'{clip_index} (key {clip_key!r}) in {path}')
    if len(preds) > 1:
      return ('duplicate_prediction', f'clip/index {clip_index} has '
              f'{len(preds)} predictions')
    pred_key, num_classes, teacher, _ = preds[0]
    if pred_key != clip_key:
      return ('unknown_clip', f'prediction for unknown clip: clip/index '
              f'{clip_index} has key {pred_key!r} in the predictions but '
              f'{clip_key!r} in {path}')
    if num_classes != self._n:
      return ('num_classes', f'teacher with a different N: clip/index '
              f'{clip_index} was predicted over prediction/num_classes='
              f'{num_classes} classes, the label map has {self._n}')
    if not 0 <= teacher < self._n or not 0 <= weak < self._n:
      return ('out_of_range', f'clip/index {clip_index}: weak label {weak} '
              f'or teacher class {teacher} not in [0, {self._n})')
    return None


class _ShardClips(beam.DoFn):
  """One shard's matched clips, sorted, and the shard's confusion counts.

  The main output feeds pass 2 (one element per shard with matched clips,
  so a shard is rewritten by one DoFn call); the `confusion` output is the
  shard's part of C[weak, teacher], summed by `_Pass1Fn`: per-shard, not
  per-clip, elements.
  """

  def __init__(self, num_classes: int):
    self._n = num_classes

  def process(self, element):
    path, values = element
    clips = sorted(c for chunk in values if chunk is not None for c in chunk)
    confusion = np.zeros((self._n, self._n), np.int64)
    if clips:
      pairs = np.array([(w, t) for _, w, t, _ in clips], np.int64)
      np.add.at(confusion, (pairs[:, 0], pairs[:, 1]), 1)
    yield beam.pvalue.TaggedOutput('confusion', ('confusion', confusion))
    yield path, clips


class _Pass1Fn(beam.CombineFn):
  """Sums the confusion matrix and counts the problems of pass 1.

  Inputs are `('confusion', [N, N] counts)` or `('error', kind, message)`.
  The first `_MAX_ERROR_MESSAGES` messages (in sorted order) are kept, all
  are counted.
  """

  def __init__(self, num_classes: int):
    self._n = num_classes

  def create_accumulator(self):
    return np.zeros((self._n, self._n), np.int64), {}, []

  def add_input(self, acc, item):
    confusion, counts, messages = acc
    if item[0] == 'confusion':
      return confusion + item[1], counts, messages
    _, kind, message = item
    counts = dict(counts)
    counts[kind] = counts.get(kind, 0) + 1
    return confusion, counts, sorted(messages + [message])[:_MAX_ERROR_MESSAGES]

  def merge_accumulators(self, accs):
    confusion, counts, messages = self.create_accumulator()
    for c, n, m in accs:
      confusion = confusion + c
      for k, v in n.items():
        counts[k] = counts.get(k, 0) + v
      messages = sorted(messages + m)[:_MAX_ERROR_MESSAGES]
    return confusion, counts, messages

  def extract_output(self, acc):
    confusion, counts, messages = acc
    return {'confusion': confusion.tolist(),
            'errors': {'count': sum(counts.values()),
                       'by_kind': dict(sorted(counts.items())),
                       'first': messages}}


def _with_label_space(summary: Dict[str, Any], variant: str,
                      names: Sequence[str], k: Optional[int],
                      target_scr: Optional[float],
                      num_classes: Optional[int] = None) -> Dict[str, Any]:
  """Adds the label space to the pass-1 summary (None if pass 1 failed)."""
  space = None
  if not summary['errors']['count']:
    space = label_spaces.make_label_space(
        variant, np.asarray(summary['confusion'], np.int64), names, k=k,
        target_scr=target_scr, num_classes=num_classes)
  return dict(summary, space=space)


# ---- Pass 2: rewrite one shard ----


def rewrite_shard(in_path: str, out_path: str,
                  teachers: Mapping[int, Tuple[int, float]],
                  space: Mapping[str, Any],
                  progress: Optional[progress_lib.Progress] = None
                  ) -> Dict[str, Any]:
  """Rewrites one shard with the label space; the relabel pass itself.

  Args:
    in_path: input shard.
    out_path: output shard, written under a temporary name then renamed.
    teachers: clip index -> (teacher top-1 class, its score) for every clip
      of the shard.
    space: the label space dict.
    progress: pass 2's counters (clips, input bytes, then the shard).

  Returns:
    Per-shard statistics: input / written / dropped clips, bytes in / out,
    written clips per new class.
  """
  # Everything per record that does not depend on the record is built once:
  # the loop below runs once per clip and is what the pass costs beyond
  # copying bytes.
  n = len(space['input_classes'])
  table = label_spaces.relabel_lookup(space).tolist()
  label_features = [records.int64_feature([c['index']])
                    for c in space['classes']]
  text_features = [records.bytes_feature([c['name']])
                   for c in space['classes']]
  teacher_features = [records.int64_feature([t]) for t in range(n)]
  id_feature = records.bytes_feature([space['id']])
  class_counts = [0] * space['num_classes']
  stats = {'shard': posixpath.basename(out_path), 'input': 0, 'written': 0,
           'dropped': 0, 'bytes_in': 0, 'bytes_out': 0}
  seen = set()
  unreported = [0, 0]  # clips, bytes in
  # A write error (a full disk) deletes the temporary and names the shard.
  with atomic_files.naming(out_path), \
      atomic_files.replacing(out_path, atomic_files.BEAM) as tmp:
    with beam_utils.open_file(in_path) as fin, beam_utils.create(tmp) as fout:
      for i, (ctx_payload, rest, length) in enumerate(
          tfrecord_io.read_split_records(fin, in_path)):
        stats['input'] += 1
        stats['bytes_in'] += length + 16
        if progress is not None:
          unreported[0] += 1
          unreported[1] += length + 16
          if unreported[0] == _PROGRESS_RECORDS:
            progress.add(clips=unreported[0], bytes=unreported[1])
            unreported = [0, 0]
        context = tf.train.Features.FromString(ctx_payload)
        feature_map = context.feature
        try:
          clip_index = feature_map[schema.CLIP_INDEX_KEY].int64_list.value[0]
          weak = feature_map[schema.WEAK_LABEL_INDEX_KEY].int64_list.value[0]
        except IndexError:
          # Pass 1 read the same contexts, so only a changed file gets here.
          _int(feature_map, schema.CLIP_INDEX_KEY, f'{in_path} record {i}')
          _int(feature_map, schema.WEAK_LABEL_INDEX_KEY,
               f'{in_path} record {i}')
          raise
        if clip_index not in teachers or clip_index in seen:
          raise RelabelError(f'{in_path} record {i}: clip/index {clip_index} '
                             f'was not seen exactly once in pass 1 (file '
                             f'changed during the job?)')
        seen.add(clip_index)
        teacher, score = teachers[clip_index]
        new = table[weak][teacher]
        if new == label_spaces.DROP:
          stats['dropped'] += 1
          continue
        feature_map[schema.TEACHER_INDEX_KEY].CopyFrom(
            teacher_features[teacher])
        feature_map[schema.TEACHER_SCORE_KEY].float_list.value[:] = [score]
        feature_map[schema.LABEL_INDEX_KEY].CopyFrom(label_features[new])
        feature_map[schema.LABEL_TEXT_KEY].CopyFrom(text_features[new])
        feature_map[schema.LABEL_SPACE_ID_KEY].CopyFrom(id_feature)
        new_context = context.SerializeToString(deterministic=True)
        stats['bytes_out'] += tfrecord_io.write_record_parts(
            fout, [tfrecord_io.context_field(new_context)] + rest)
        stats['written'] += 1
        class_counts[new] += 1
    if len(seen) != len(teachers):
      raise RelabelError(f'{in_path}: pass 1 saw {len(teachers)} clips, pass 2 '
                         f'read {len(seen)}')
    if stats['input'] != stats['written'] + stats['dropped']:
      raise RelabelError(f'{in_path}: {stats["input"]} clips in, '
                         f'{stats["written"]} written + {stats["dropped"]} '
                         f'dropped')
  stats['class_counts'] = class_counts
  if progress is not None:
    progress.add(clips=unreported[0], bytes=unreported[1], shards=1)
  return stats


def render_plots(space: Mapping[str, Any],
                 confusion: Sequence[Sequence[int]]) -> Dict[str, bytes]:
  """PNG bytes of the plots, by file name: the confusion matrix, the class
  counts and, for the variants with a size K (spl_m, spl_d), SCR vs K."""
  # pylint: disable=g-import-not-at-top
  # matplotlib is imported when plots are drawn, not by every user of this
  # module.
  from tfrecords_tools import label_space_plots
  # pylint: enable=g-import-not-at-top
  plots = {
      CONFUSION_PNG: label_space_plots.confusion_matrix_png(
          confusion, space['input_classes']),
      CLASS_COUNTS_PNG: label_space_plots.class_counts_png(space),
  }
  if label_space_plots.has_scr_curve(space):
    # `scr` is the SCR reached, also at a fractional K (a class count that
    # is not a multiple of N).
    plots[SCR_CURVE_PNG] = label_space_plots.scr_curve_png(
        label_spaces.scr_curve(confusion), space['k'], space['target_scr'],
        chosen_scr=space['scr'], variant=space['variant'],
        scr_by_count=label_spaces.scr_by_num_classes(confusion))
  return plots


# Tags of the values joined on a shard path for pass 2 (`_RewriteShard`).
_CLIPS, _PASS1_FILE = 'clips', 'pass1_file'


def pass1_file_path(output_dir: str, run_id: str) -> str:
  """Where a run keeps pass 1's result for pass 2 and the finish step.

  A hidden temporary named like `atomic_files`' own, so a failed or killed
  run's file is deleted with theirs (`remove_temporaries`,
  `completion.begin`).
  """
  return beam_utils.join(output_dir, f'.relabel_pass1.pickle.tmp-{run_id}')


def _save_pass1(pass1: Mapping[str, Any], pass1_file: str,
                shards: Sequence[str]) -> Iterable[Tuple[str, Any]]:
  """Writes pass 1's result (`_with_label_space`); `(shard, file)` per shard.

  Every shard gets one element, so every shard reaches pass 2 (which skips
  it when pass 1 found problems) and the finish step always runs.
  """
  beam_utils.write_bytes_atomic(pass1_file, pickle.dumps(pass1))
  for path in shards:
    yield path, (_PASS1_FILE, pass1_file)


def _read_pass1(pass1_file: str) -> Dict[str, Any]:
  return pickle.loads(beam_utils.read_bytes(pass1_file))


class _RewriteShard(beam.DoFn):
  """Pass 2 for one whole shard (one element), unless pass 1 found problems.

  Its element is `(shard path, [(_CLIPS, the shard's matched clips) unless
  it has none, (_PASS1_FILE, pass 1's file)])`: the label space reaches the
  workers through the output directory (one file, read once per bundle),
  not as a side input, which Beam's Dask runner recomputes, with all of
  pass 1, in every task that reads it. Every shard gives exactly one output
  element, so the finish step always runs.
  """

  def __init__(self, output_dir: str,
               run: Optional[progress_lib.BeamRun] = None,
               num_shards: Optional[int] = None,
               input_bytes: Optional[int] = None):
    self._output_dir = output_dir
    self._run = run or progress_lib.BeamRun.create('DirectRunner', 1)
    self._totals = {'shards': num_shards, 'clips': None, 'bytes': input_bytes}

  def setup(self):
    self._progress = self._run.progress(
        'relabel pass 2 (rewrite)', self._totals, rates=('clips', 'bytes'),
        eta_by='bytes' if self._totals['bytes'] else None)

  def start_bundle(self):
    self._spaces = {}  # Pass 1's file -> its label space, for this bundle.

  def process(self, element):
    path, values = element
    # A shard without a matched clip (an empty one) has no `_CLIPS`.
    clips = [c for tag, v in values if tag == _CLIPS for c in v]
    (pass1_file,) = [v for tag, v in values if tag == _PASS1_FILE]
    if pass1_file not in self._spaces:
      self._spaces[pass1_file] = _read_pass1(pass1_file)['space']
    space = self._spaces[pass1_file]
    if space is None:
      yield {'shard': posixpath.basename(path), 'skipped': True}
      return
    start = time.perf_counter()
    teachers = {idx: (teacher, score) for idx, _, teacher, score in clips}
    dest = beam_utils.join(self._output_dir, posixpath.basename(path))
    stats = rewrite_shard(path, dest, teachers, space,
                          progress=self._progress)
    _record_time('pass2_rewrite', time.perf_counter() - start)
    yield stats


# ---- Finish: check the totals, write the side files ----


def _finish(shard_stats: List[Dict[str, Any]], pass1: Mapping[str, Any],
            output_dir: str, num_shards: int) -> None:
  """Checks input = written + dropped and writes the side files.

  Writes `relabel_stats.json` (also when pass 1 failed, with the problems
  and status 'failed': the in-progress marker stays); on success the plots,
  the label map, `label_space.json` and, last, `relabel_stats.json` as the
  completion record listing the shards (`completion.finish`).
  """
  errors, space, confusion = pass1['errors'], pass1['space'], pass1['confusion']
  stats: Dict[str, Any] = {'errors': errors}
  if errors['count']:
    stats['status'] = 'failed'
    records.write_json_atomic(beam_utils.join(output_dir, STATS_FILENAME), stats)
    return
  shard_stats = sorted(shard_stats, key=lambda s: s['shard'])
  totals = {k: sum(s[k] for s in shard_stats)
            for k in ('input', 'written', 'dropped', 'bytes_in', 'bytes_out')}
  class_counts = np.sum([s['class_counts'] for s in shard_stats] or
                        [np.zeros(space['num_classes'], np.int64)], axis=0)
  problems = []
  if len(shard_stats) != num_shards:
    problems.append(f'{len(shard_stats)} shards written of {num_shards}')
  if totals['input'] != totals['written'] + totals['dropped']:
    problems.append(f'{totals["input"]} clips in != {totals["written"]} '
                    f'written + {totals["dropped"]} dropped')
  if totals['input'] != space['num_clips']:
    problems.append(f'pass 2 read {totals["input"]} clips, the confusion '
                    f'matrix counts {space["num_clips"]}')
  if totals['dropped'] != space['num_dropped_clips']:
    problems.append(f'dropped {totals["dropped"]} clips, the label space '
                    f'expects {space["num_dropped_clips"]}')
  if class_counts.tolist() != [c['num_clips'] for c in space['classes']]:
    problems.append('per-class written counts differ from the label space')
  if problems:
    raise RelabelError('relabel totals do not add up: ' + '; '.join(problems))
  stats.update({
      'status': 'ok',
      'label_space_id': space['id'],
      'variant': space['variant'],
      'sized_by': space['sized_by'],
      'k': space['k'],
      'target_scr': space['target_scr'],
      'scr': space['scr'],
      # Table 2's synthetic noise ratio: off-diagonal / all clips of C.
      'noise_ratio': space['noise_ratio'],
      'num_classes': space['num_classes'],
      'clips': totals,
      'class_counts': class_counts.tolist(),
      'shards': shard_stats,
      'confusion_matrix': confusion,
      'scr_by_k': label_spaces.scr_curve(confusion),
  })
  start = time.perf_counter()
  for name, png in sorted(render_plots(space, confusion).items()):
    beam_utils.write_bytes_atomic(beam_utils.join(output_dir, name), png)
  _record_time('finish_plots', time.perf_counter() - start)
  # Name -> class id; ids are the label space's (N*w + t for spl), so the
  # names need not sort in id order.
  records.write_json_atomic(
      beam_utils.join(output_dir, schema.LABEL_MAP_FILENAME),
      {c['name']: c['index'] for c in space['classes']})
  records.write_json_atomic(beam_utils.join(output_dir, schema.LABEL_SPACE_FILENAME),
                            space)
  # Last: the completion record; the in-progress marker goes.
  completion.finish(output_dir, STATS_FILENAME, stats,
                    [s['shard'] for s in shard_stats], atomic_files.BEAM,
                    job='relabel')


def _finish_gathered(shard_stats: List[Dict[str, Any]], output_dir: str,
                     num_shards: int, pass1_file: str) -> None:
  """`_finish` of every shard's stats, with pass 1 read from its file."""
  start = time.perf_counter()
  _finish(shard_stats, _read_pass1(pass1_file), output_dir, num_shards)
  # A finished run's temporaries, this file among them, are gone
  # (`completion.finish`); a failed pass 1 leaves it.
  if beam_utils.exists(pass1_file):
    beam_utils.delete(pass1_file)
  _record_time('finish', time.perf_counter() - start)


# ---- The pipeline ----


def _match_shards(pattern: str, what: str) -> List[str]:
  return file_patterns.match_beam(pattern, f'`{what}` pattern')


def _tag_shard_clips(path_clips):
  path, clips = path_clips
  return path, (_CLIPS, clips)


def build_pipeline(pipeline: beam.Pipeline, *, shards: Sequence[str],
                   prediction_files: Sequence[str], names: Sequence[str],
                   variant: str, k: Optional[int], target_scr: Optional[float],
                   output_dir: str, reshuffle: bool = True,
                   num_classes: Optional[int] = None,
                   run: Optional[progress_lib.BeamRun] = None,
                   input_bytes: Optional[int] = None) -> None:
  """Adds pass 1, pass 2 and the finish step to `pipeline`.

  Few stages on purpose (each costs the DirectRunner a bundle): per-clip
  elements only where the join on `clip/index` needs them, per-shard
  elements everywhere else, one combine for the confusion matrix and the
  problems of pass 1.

  Only single-output ParDos, GroupByKeys, Flattens and a combine, no side
  input, one last step that depends on every other: what every runner runs
  alike, Beam's Dask runner included (`beam_utils._dask_runner`). Pass 1's
  result goes to a file in the output directory (`_save_pass1`), whose name
  is joined with each shard's clips on the shard path for pass 2
  (`_RewriteShard`); the finish step gathers the shard stats and reads pass
  1 from the file.

  Args:
    reshuffle: spread the shard list over workers before pass 1 (what a
      distributed runner wants; a one-process DirectRunner does not).
    run: names the run's progress counters.
    input_bytes: the shards' total size (pass 2's ETA), if known.
    (The others as in `relabel`.)
  """
  n = len(names)
  run = run or progress_lib.BeamRun.create('DirectRunner', 1)
  paths = pipeline | 'Shards' >> beam.Create(list(shards), reshuffle=reshuffle)
  contexts = paths | 'ReadContexts' >> beam_utils.ParDoByTag(
      beam_utils.ReadShards(read_shard_contexts, 'relabel pass 1 (contexts)',
                             run, len(shards)), 'error', main='clips')
  preds = (pipeline
           | 'PredictionFiles' >> beam.Create(list(prediction_files),
                                              reshuffle=reshuffle)
           | 'ReadPredictions' >> beam_utils.ParDoByTag(
               read_prediction_file, 'error', main='preds'))
  matched = ((contexts['clips'], preds['preds'])
             | 'FlattenClipsAndPredictions' >> beam.Flatten()
             | 'JoinOnBucket' >> beam.GroupByKey()
             | 'Match' >> beam_utils.ParDoByTag(_MatchClips(n), 'error',
                                                main='ok'))
  # Shards without a matched clip are not here: every shard reaches pass 2
  # through pass 1's file (`_save_pass1`).
  by_shard = (matched['ok']
              | 'GroupByShard' >> beam.GroupByKey()
              | 'ShardClips' >> beam_utils.ParDoByTag(
                  _ShardClips(n), 'confusion', main='clips'))
  # Pass 1 has a result even when no shard has a clip.
  no_clips = pipeline | 'NoClips' >> beam.Create(
      [('confusion', np.zeros((n, n), np.int64))])
  pass1 = ((contexts['error'], preds['error'], matched['error'],
            by_shard['confusion'], no_clips)
           | 'FlattenPass1' >> beam.Flatten()
           | 'Pass1' >> beam.CombineGlobally(_Pass1Fn(n)).without_defaults()
           | 'LabelSpace' >> beam.Map(_with_label_space, variant, names, k,
                                      target_scr, num_classes))
  pass1_file = pass1_file_path(output_dir, run.run_id)
  pass1_files = pass1 | 'SavePass1' >> beam.FlatMap(
      _save_pass1, pass1_file, list(shards))
  # Last, and after everything else: the Dask runner runs only what the
  # last step needs.
  _ = ((by_shard['clips'] | 'TagClips' >> beam.Map(_tag_shard_clips),
        pass1_files)
       | 'WithPass1' >> beam.Flatten()
       | 'JoinOnShard' >> beam.GroupByKey()
       | 'Rewrite' >> beam.ParDo(_RewriteShard(output_dir, run, len(shards),
                                               input_bytes))
       | 'Collect' >> beam_utils.Gather()
       | 'Finish' >> beam.Map(_finish_gathered, output_dir, len(shards),
                              pass1_file))


def _phase_seconds(result: Any) -> Dict[str, float]:
  """Per-phase wall-time sums from the job's Beam metrics, if reported."""
  try:
    found = result.metrics().query(
        MetricsFilter().with_namespace(_TIMING))['distributions']
  except Exception:  # pylint: disable=broad-except
    return {}  # A runner without metrics support: phases are optional.
  return {m.key.metric.name: m.committed.sum / 1e6 for m in found
          if m.committed is not None}


def relabel(*, records_pattern: str, predictions_pattern: str, variant: str,
            output_dir: str, k: Optional[int] = None,
            target_scr: Optional[float] = None,
            num_classes: Optional[int] = None, runner: str = 'DirectRunner',
            direct_num_workers: int = 1,
            beam_args: Sequence[str] = ()) -> Dict[str, Any]:
  """Runs the relabel job and returns its statistics.

  Args:
    records_pattern: file pattern of the clip-record shards; their
      `label_map.json` must sit next to them (one directory).
    predictions_pattern: file pattern of the teacher-prediction shards.
    variant: one of `tfrecords_tools.label_spaces.VARIANTS`.
    output_dir: where relabelled shards and side files go; must not be the
      input directory.
    k: K for `spl_m` / `spl_d`.
    target_scr: alternatively, the target SCR K is chosen from (flag `scr`).
    num_classes: alternatively, the total class count of `spl_m` / `spl_d`,
      in [N, N^2]; checked against N before anything is written.
    runner: Beam runner.
    direct_num_workers: DirectRunner parallelism (worker processes unless
      `--direct_running_mode` in `beam_args` says otherwise).
    beam_args: further Beam pipeline options.

  Returns:
    The content of `relabel_stats.json`, plus `timing_s`: wall seconds of
    `prepare` (checks, globbing), `construct` (building the pipeline),
    `run` (the runner, all passes), `total`, and, where the runner reports
    Beam metrics, the per-phase sums `pass1_contexts`, `pass1_predictions`,
    `pass2_rewrite` (over shards), `finish` and, within it, `finish_plots`.
    Timings are not written to the file:
    a rerun must give identical bytes.

  Raises:
    RelabelError: the inputs do not fit together (details in the message).
  """
  start = time.perf_counter()
  if variant not in label_spaces.VARIANTS:
    raise ValueError(f'`variant` must be one of {label_spaces.VARIANTS}, got '
                     f'{variant!r}')
  sizing = f'k={k}, scr={target_scr}, num_classes={num_classes}'
  num_sizes = sum(x is not None for x in (k, target_scr, num_classes))
  if variant in label_spaces.K_VARIANTS:
    if num_sizes != 1:
      raise ValueError(f'`variant` {variant!r} needs exactly one of `k`, '
                       f'`scr` and `num_classes`, got {sizing}')
  elif num_sizes:
    raise ValueError(f'`k` / `scr` / `num_classes` only apply to '
                     f'{label_spaces.K_VARIANTS}, not {variant!r}; got '
                     f'{sizing}')
  if target_scr is not None and not 0 < target_scr <= 1:
    raise ValueError(f'`scr` must be in (0, 1], got {target_scr}')
  if direct_num_workers < 1:
    raise ValueError(f'`direct_num_workers` must be >= 1, got '
                     f'{direct_num_workers}')
  if not output_dir:
    raise ValueError('`output_dir` must be set')
  shards = _match_shards(records_pattern, 'records')
  prediction_files = _match_shards(predictions_pattern, 'predictions')
  input_dirs = {os.path.dirname(p) for p in shards}
  if len(input_dirs) != 1:
    raise ValueError(f'`records` must match shards of one directory (the one '
                     f'with {schema.LABEL_MAP_FILENAME}), got {sorted(input_dirs)}')
  input_dir = input_dirs.pop()
  if '://' not in output_dir and os.path.realpath(
      output_dir) == os.path.realpath(input_dir):
    raise ValueError(f'`output_dir` {output_dir!r} is the input directory: '
                     f'the job would overwrite the shards it reads')
  names = records.read_label_map(beam_utils.join(input_dir, schema.LABEL_MAP_FILENAME))
  # K and the class count need N: checked here, before anything is written.
  label_spaces.check_sizing(variant, len(names), k=k, target_scr=target_scr,
                            num_classes=num_classes)
  # Marks the directory in progress (a read-only one fails here, by name);
  # removes a killed run's temporaries, another run's shards and the files
  # whose presence says a run finished.
  completion.begin(output_dir, 'relabel',
                   outputs=[posixpath.basename(p) for p in shards],
                   record=STATS_FILENAME, fs=atomic_files.BEAM,
                   also_remove=[schema.LABEL_SPACE_FILENAME])
  input_bytes = beam_utils.total_size(shards)
  logging.info('relabel: %d shards (%s), %d prediction files, N=%d, variant '
               '%s -> %s', len(shards),
               'size unknown' if input_bytes is None else
               f'{input_bytes / 1e6:.1f} MB', len(prediction_files),
               len(names), variant, output_dir)
  prepared = time.perf_counter()
  # More than one DirectRunner worker: processes unless `beam_args` names a
  # mode (Beam's default, in_memory, would run one worker and warn).
  pipeline = beam_utils.make_pipeline(runner, direct_num_workers, beam_args,
                                      running_mode='multi_processing')
  build_pipeline(pipeline, shards=shards, prediction_files=prediction_files,
                 names=names, variant=variant, k=k, target_scr=target_scr,
                 num_classes=num_classes, output_dir=output_dir,
                 reshuffle=runner not in ('DirectRunner', 'direct') or
                 direct_num_workers > 1,
                 run=progress_lib.BeamRun.create(runner, direct_num_workers),
                 input_bytes=input_bytes)
  built = time.perf_counter()
  try:
    result = pipeline.run()
    result.wait_until_finish()
  except BaseException:
    # A failed run (a full disk, a corrupt frame) leaves no temporary; the
    # marker stays, so readers refuse the directory until a rerun completes.
    atomic_files.remove_temporaries(output_dir, atomic_files.BEAM)
    raise
  done = time.perf_counter()
  timing = {'prepare': prepared - start, 'construct': built - prepared,
            'run': done - built}
  timing.update(_phase_seconds(result))
  with beam_utils.open_file(beam_utils.join(output_dir, STATS_FILENAME)) as f:
    stats = json.loads(f.read().decode('utf-8'))
  timing['total'] = time.perf_counter() - start
  logging.info('relabel timing (s): %s', ', '.join(
      f'{k} {v:.3f}' for k, v in timing.items()))
  stats['timing_s'] = timing
  if stats['status'] != 'ok':
    e = stats['errors']
    raise RelabelError(
        f'relabel: {e["count"]} input problems {e["by_kind"]}, no shard '
        f'written; first ones:\n  ' + '\n  '.join(e['first']))
  logging.info('relabel: %s', summary_line(stats))
  return stats


def summary_line(stats: Mapping[str, Any]) -> str:
  """What a run produced, in one line: size, how it was chosen, SCR, noise."""
  sized_by = stats.get('sized_by')
  if sized_by == 'scr':
    how = f'target SCR {stats["target_scr"]} -> K={stats["k"]}'
  elif sized_by == 'num_classes':
    how = f'class count, K={stats["k"]:g}'
  elif sized_by == 'k':
    how = f'K={stats["k"]}'
  else:
    how = 'fixed size'
  clips = stats['clips']
  return (f'{stats["label_space_id"]}: {stats["num_classes"]} classes '
          f'({how}), SCR reached {stats["scr"]:.4f}, noise ratio '
          f'{stats["noise_ratio"]:.4f}; clips in {clips["input"]}, written '
          f'{clips["written"]}, dropped {clips["dropped"]}')


# ---- Command line ----

_FLAG_NAMES = ('records', 'predictions', 'variant', 'k', 'scr', 'num_classes',
               'output_dir', 'runner', 'direct_num_workers',
               'direct_running_mode')


def _define_flags(fv) -> None:
  """Flags exist only when the module runs as a tool, never on import."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('records', None, 'File pattern of the clip records.',
                      flag_values=fv)
  flags.DEFINE_string('predictions', None,
                      'File pattern of the teacher predictions.',
                      flag_values=fv)
  flags.DEFINE_enum('variant', None, list(label_spaces.VARIANTS),
                    'Label-space variant.', flag_values=fv)
  flags.DEFINE_integer('k', None, 'K for spl_m / spl_d.', flag_values=fv)
  flags.DEFINE_float('scr', None,
                     'Target samples cover ratio for spl_m / spl_d (K is the '
                     'smallest that reaches it).', flag_values=fv)
  flags.DEFINE_integer('num_classes', None,
                       'Total class count for spl_m / spl_d, in [N, N^2]: '
                       'the N diagonal cells plus the most frequent '
                       'off-diagonal ones (Figure 4: 400 / 1600 / 4500).',
                       flag_values=fv)
  flags.DEFINE_string('output_dir', None, 'Output directory.', flag_values=fv)
  cli.define_beam_flags(fv, workers_help='DirectRunner workers.',
                        default_mode='multi_processing')


TOOL = cli.Tool(name='relabel', command='python -m tfrecords_tools.relabel',
                doc=__doc__, define_flags=_define_flags,
                required=('records', 'predictions', 'variant', 'output_dir'),
                beam=True)


def main(args: cli.Args) -> int:
  """Runs the job for a parsed command line; returns the exit status."""
  fv = args.flags
  try:
    beam_utils.write_run_config(fv.output_dir, 'relabel', fv, _FLAG_NAMES,
                                args.beam_args)
    stats = relabel(
        records_pattern=fv.records, predictions_pattern=fv.predictions,
        variant=fv.variant, output_dir=fv.output_dir, k=fv.k,
        target_scr=fv.scr, num_classes=fv.num_classes, runner=fv.runner,
        direct_num_workers=fv.direct_num_workers,
        beam_args=args.beam_pipeline_args())
  except (RelabelError, ValueError, OSError, RuntimeError) as e:
    # One line naming the file or directory (no traceback).
    print(f'relabel failed: {e}', file=sys.stderr)
    return 1
  print(f'{summary_line(stats)}; output in {fv.output_dir}')
  return 0


def run(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point: parses the command line (`cli`), runs; the exit status."""
  return cli.run(TOOL, main, argv)


if __name__ == '__main__':
  # Run the imported module's copy, so pickled DoFns name
  # `tfrecords_tools.relabel`, which worker processes can import.
  from tfrecords_tools import relabel as _relabel  # pylint: disable=g-import-not-at-top,import-self
  sys.exit(_relabel.run())
