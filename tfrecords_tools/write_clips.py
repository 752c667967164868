r"""The clip writer: web videos + manifest -> sharded clip TFRecords (Beam).

  python -m tfrecords_tools.write_clips --manifest=videos/manifest.csv \
      --output_dir=records/web --num_shards=64 --clip_seconds=10 --fps=25 \
      --direct_num_workers=8 [-- BEAM_OPTIONS]

Pipeline (every stage is a Beam transform, so it runs on the DirectRunner
locally, on a Dask cluster and on Dataflow/Flink/Spark unchanged; no side
input, no multi-output ParDo: see `build_pipeline`):

  manifest rows (read and validated in the driver)
    -> probe each video (duration, rate, size, rotation; time-limited)
    -> plan clip windows (global: the per-class budget needs all videos, so
       the probes are gathered into one element, which emits every video
       with its windows)
    -> decode + resample + resize + JPEG each clip (time-limited, per video,
       in the worker's decoder child process); the worker writes the
       serialised frames to a per-video temporary file next to the output
       and passes on only small `ClipPiece` metadata (no frame is shuffled)
    -> clip indices: contiguous over written clips, in (manifest row, time)
       order, computed after decoding so a failed video leaves no gap (one
       element gathers the clip counts; each video's first index is joined
       with its pieces on its ordinal)
    -> group pieces by shard (crc32 of the clip key), sort by clip index,
       build each record's context and copy its frames from the temp file
       into `clips-SSSSS-of-NNNNN.tfrecord` under a temporary name, rename
    -> rejects.jsonl (every video not written and why); delete the run's
       temp files; last, summary.json: the completion record, listing the
       shards (`tfrecords_tools.completion`)

No TensorFlow in the job: records are serialised by `clip_proto` (byte-
identical to TF's deterministic serialisation) and files go through Beam's
FileSystems (local, gs://, ...): a worker process costs a Beam import,
not seconds of TensorFlow import. On the DirectRunner the workers are
threads by default (the heavy work is in their decoder processes), which
start in well under a second.

Determinism: nothing depends on worker count, timing or hash seeds: clip
windows, indices and shard assignment are functions of the inputs and flags
and each shard is sorted, so reruns give byte-identical shards.

Temporary space: the frames of every decoded clip sit under
OUTPUT_DIR/.write_clips-temp/RUN/ until all shards are written (about the
size of the output). A failed run deletes them (a full disk included: the
error names the file it could not write); a rerun deletes what a killed run
left there.

Reruns: the job starts by marking the directory in progress
(`_IN_PROGRESS.json`, deleted when summary.json is written) and deleting a
killed run's temporaries and the shards of an earlier run that this one
does not overwrite (another `--num_shards`), so a directory never mixes two
runs; readers refuse a directory that is in progress, crashed or holds
shards summary.json does not list (`file_patterns.match`). A killed run is
finished by running the same command again (byte-identical shards).

Progress: each stage (probe, decode, shards) logs how many videos / shards
it has done of how many, clips/s and an ETA, at its first unit and then
every 10 s (`tfrecords_tools.progress`: job-wide on the DirectRunner's
worker threads, per process otherwise); the job ends with its counters.
Command line: `tfrecords_tools.cli` (Beam options after `--`).
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import json
import logging
import os
import sys
import threading
import time
import uuid
import zlib
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from absl import flags
import apache_beam as beam

from tfrecords_tools import atomic_files
from tfrecords_tools import beam_utils
from tfrecords_tools import cli
from tfrecords_tools import clip_proto
from tfrecords_tools import completion
from tfrecords_tools import manifest as manifest_lib
from tfrecords_tools import progress as progress_lib
from tfrecords_tools import schema
from tfrecords_tools import tfrecord_io
from tfrecords_tools import video as video_lib

FLAGS = flags.FLAGS

_NAMESPACE = 'write_clips'
JOB = 'write_clips'  # In the completion record and the in-progress marker.
# Under the output dir; one subdirectory per run, removed when the run ends.
TEMP_DIRNAME = '.write_clips-temp'


def _counter(name: str):
  return beam.metrics.Metrics.counter(_NAMESPACE, name)


class WriterConfig:
  """Plain settings of one writer run (picklable, shipped to workers)."""

  def __init__(self, *, output_dir: str, num_shards: int = 16,
               clip_seconds: float = 10.0, fps: float = 25.0,
               short_side: int = 256, jpeg_quality: int = 90,
               clips_per_video: Optional[int] = None,
               clips_per_class: Optional[int] = None,
               min_clip_seconds: Optional[float] = None,
               video_timeout: float = 600.0, num_workers: int = 1,
               decode_threads: int = 0):
    if num_shards <= 0:
      raise ValueError(f'`num_shards` must be > 0, got {num_shards}')
    if clip_seconds <= 0:
      raise ValueError(f'`clip_seconds` must be > 0, got {clip_seconds}')
    if fps <= 0:
      raise ValueError(f'`fps` must be > 0, got {fps}')
    if short_side < 0:
      raise ValueError(f'`short_side` must be >= 0, got {short_side}')
    if not 1 <= jpeg_quality <= 100:
      raise ValueError(f'`jpeg_quality` must be in [1, 100], got {jpeg_quality}')
    if clips_per_video is not None and clips_per_class is not None:
      raise ValueError('give `clips_per_video` or `clips_per_class`, not both')
    if clips_per_video is not None and clips_per_video <= 0:
      raise ValueError(
          f'`clips_per_video` must be > 0 (or "all"), got {clips_per_video}')
    if clips_per_class is not None and clips_per_class <= 0:
      raise ValueError(f'`clips_per_class` must be > 0, got {clips_per_class}')
    self.output_dir = output_dir
    self.num_shards = num_shards
    self.clip_seconds = clip_seconds
    self.fps = fps
    self.short_side = short_side
    self.jpeg_quality = jpeg_quality
    self.clips_per_video = clips_per_video
    self.clips_per_class = clips_per_class
    self.min_clip_seconds = (clip_seconds / 2 if min_clip_seconds is None
                             else min_clip_seconds)
    if not 0 < self.min_clip_seconds <= clip_seconds:
      raise ValueError('`min_clip_seconds` must be in (0, clip_seconds], got '
                       f'{self.min_clip_seconds}')
    if decode_threads < 0:
      raise ValueError(f'`decode_threads` must be >= 0, got {decode_threads}')
    self.video_timeout = video_timeout
    self.num_workers = max(1, num_workers)
    self.decode_threads = decode_threads

  def as_dict(self) -> Dict:
    return dict(vars(self))


def _segment(entry: manifest_lib.VideoEntry,
             info: video_lib.VideoInfo) -> Tuple[float, float]:
  start = entry.start or 0.0
  end = info.duration if entry.end is None else min(entry.end, info.duration)
  return start, max(start, end)


_POOL_LOCK = threading.Lock()
_IDLE_DECODERS: Dict[float, List[video_lib.TimeLimitedDecoder]] = {}


def _acquire_decoder(timeout: float) -> video_lib.TimeLimitedDecoder:
  """An idle decoder child of this process, or a new one.

  Decoder children outlive bundles and stages: the probe stage's child
  decodes in the next stage, so each worker process starts one (Python +
  PyAV + OpenCV imports) instead of one per DoFn. One bundle uses a decoder
  at a time, so threads of one worker never share a child.
  """
  with _POOL_LOCK:
    idle = _IDLE_DECODERS.get(timeout)
    if idle:
      return idle.pop()
  return video_lib.TimeLimitedDecoder(timeout)


def _release_decoder(timeout: float,
                     decoder: video_lib.TimeLimitedDecoder) -> None:
  with _POOL_LOCK:
    _IDLE_DECODERS.setdefault(timeout, []).append(decoder)


@atexit.register
def _close_decoders():
  with _POOL_LOCK:
    for idle in _IDLE_DECODERS.values():
      for decoder in idle:
        decoder.close()
    _IDLE_DECODERS.clear()


class _DecoderDoFn(beam.DoFn):
  """A DoFn that holds a pooled decoder child for each bundle."""

  def __init__(self, config: WriterConfig, total: int,
               run: Optional[progress_lib.BeamRun] = None):
    self._config = config
    self._total = total
    self._run = run or progress_lib.BeamRun.create('DirectRunner', 1)
    self._decoder = None

  def start_bundle(self):
    self._decoder = _acquire_decoder(self._config.video_timeout)

  def finish_bundle(self):
    _release_decoder(self._config.video_timeout, self._decoder)
    self._decoder = None

  def teardown(self):
    # A bundle that failed never reached finish_bundle: its child may be
    # mid-message, so it is closed rather than reused.
    if self._decoder is not None:
      self._decoder.close()
      self._decoder = None


class ProbeFn(_DecoderDoFn):
  """entry -> (entry, info, capacity) or a reject on the 'rejects' output."""

  def setup(self):
    self._progress = self._run.progress('write_clips probe',
                                        {'videos': self._total})

  def process(self, entry: manifest_lib.VideoEntry):
    c = self._config
    try:
      info = self._decoder.probe(entry.path)
      segment = _segment(entry, info)
      capacity = video_lib.window_capacity(segment, c.clip_seconds,
                                           c.min_clip_seconds)
      if capacity == 0:
        raise video_lib.VideoError(
            video_lib.TOO_SHORT,
            f'{entry.path}: usable length {segment[1] - segment[0]:.2f} s is '
            f'shorter than one clip (min {c.min_clip_seconds:g} s)')
    except video_lib.VideoError as e:
      _counter('videos_rejected').inc()
      yield beam.pvalue.TaggedOutput('rejects', manifest_lib.make_reject(
          row=entry.row, path=entry.path, video_id=entry.video_id,
          reason=e.reason, message=e.message))
      return
    finally:
      self._progress.add(videos=1)
    yield entry, info, capacity


def plan_all(probed: Sequence[Tuple], config: WriterConfig
             ) -> Dict[int, List[Tuple[float, float]]]:
  """Clip windows of every probed video, keyed by entry ordinal."""
  probed = sorted(probed, key=lambda p: p[0].ordinal)
  counts: Dict[int, Optional[int]] = {}
  if config.clips_per_class is not None:
    by_class = collections.defaultdict(list)
    for entry, _, capacity in probed:
      by_class[entry.label_index].append((entry.ordinal, capacity))
    for members in by_class.values():
      alloc = video_lib.allocate_budget([cap for _, cap in members],
                                        config.clips_per_class)
      counts.update({o: a for (o, _), a in zip(members, alloc)})
  plan = {}
  for entry, info, _ in probed:
    num = counts[entry.ordinal] if counts else config.clips_per_video
    if num == 0:
      plan[entry.ordinal] = []
      continue
    plan[entry.ordinal] = video_lib.plan_windows(
        _segment(entry, info), clip_seconds=config.clip_seconds,
        num_clips=num, min_clip_seconds=config.min_clip_seconds)
  return plan


@dataclasses.dataclass(frozen=True)
class ClipPiece:
  """Where one decoded clip's frames wait for their shard (small, shuffled).

  `path`[`offset`:`offset + length`] holds the record's serialised
  `feature_lists` field (`clip_proto.frames_field`); the shard writer adds
  the context once clip indices are known.
  """
  ordinal: int  # The video's manifest ordinal.
  k: int  # Clip number within the video.
  entry: manifest_lib.VideoEntry
  start: float
  end: float
  height: int
  width: int
  num_frames: int
  path: str
  offset: int
  length: int


class DecodeFn(_DecoderDoFn):
  """(entry, info, capacity) -> (shard, ClipPiece) for each written clip.

  Also (ordinal, clips written) on 'counts' and reasons on 'rejects'.

  The frames go to a per-video temporary file under the run's temp dir,
  never through the shuffle: only `ClipPiece`s (a few hundred bytes) travel
  between workers. A retried bundle writes a new file (unique name) and the
  pieces of the failed attempt are never emitted.
  """

  def __init__(self, config: WriterConfig, total: int, temp_dir: str,
               run: Optional[progress_lib.BeamRun] = None):
    super().__init__(config, total, run)
    self._temp_dir = temp_dir

  def setup(self):
    # The total is the probed videos, known once the plan is (`process`).
    self._progress = self._run.progress(
        'write_clips decode', {'videos': None, 'clips': None},
        rates=('videos', 'clips'))
    self._total_set = False

  def process(self, element, plan):
    """Decodes one probed video, `(entry, info, capacity)`, by `plan`.

    `plan` holds the windows of every probed video (`plan_all`).
    """
    entry, info, _ = element
    yield from self._decode(entry, info, plan.get(entry.ordinal, []),
                            len(plan))

  def _decode(self, entry: manifest_lib.VideoEntry,
              info: video_lib.VideoInfo,
              windows: Sequence[Tuple[float, float]], num_videos: int):
    if not self._total_set:
      self._run.set_total(self._progress, 'videos', num_videos)
      self._total_set = True
    c = self._config
    if not windows:
      _counter('videos_without_clips_by_budget').inc()
      self._progress.add(videos=1)
      return
    path = beam_utils.join(
        self._temp_dir, f'v{entry.ordinal:09d}-{uuid.uuid4().hex}.frames')
    pieces: List[Tuple[int, ClipPiece]] = []
    reject = None
    frames = 0
    out = None
    offset = 0
    try:
      for clip in self._decoder.decode(
          entry.path, windows, fps=c.fps, short_side=c.short_side,
          jpeg_quality=c.jpeg_quality, min_clip_seconds=c.min_clip_seconds,
          rotation=info.rotation, threads=c.decode_threads):
        body = clip_proto.frames_field(clip.frames)
        with atomic_files.naming(path):  # A full disk names the file.
          if out is None:
            out = beam_utils.create(path)
          out.write(body)
        key = schema.make_clip_key(entry.video_id, clip.start)
        shard = zlib.crc32(key.encode('utf-8')) % c.num_shards
        pieces.append((shard, ClipPiece(
            ordinal=entry.ordinal, k=len(pieces), entry=entry,
            start=clip.start, end=clip.end, height=clip.height,
            width=clip.width, num_frames=len(clip.frames), path=path,
            offset=offset, length=len(body))))
        offset += len(body)
        frames += len(clip.frames)
        self._progress.add(clips=1)
      if len(pieces) < len(windows):
        reason = video_lib.PARTIAL if pieces else video_lib.NO_FRAMES
        raise video_lib.VideoError(
            reason, f'{entry.path}: decoded {len(pieces)} of {len(windows)} '
            'planned clips (stream ended early or is corrupt)')
    except video_lib.VideoError as e:
      written = len(pieces)
      _counter('videos_rejected' if not written else 'videos_partial').inc()
      reject = manifest_lib.make_reject(
          row=entry.row, path=entry.path, video_id=entry.video_id,
          reason=e.reason, message=e.message + (
              f' ({written} clips kept)' if written else ''))
    finally:
      if out is not None:
        with atomic_files.naming(path):
          out.close()  # Complete on disk before any piece names it.
    _counter('clips').inc(len(pieces))
    _counter('frames').inc(frames)
    if pieces:
      _counter('videos_written').inc()
    self._progress.add(videos=1)
    yield from pieces
    if pieces:
      yield beam.pvalue.TaggedOutput('counts', (entry.ordinal, len(pieces)))
    if reject is not None:
      yield beam.pvalue.TaggedOutput('rejects', reject)


class PlannedDecodeFn(DecodeFn):
  """`DecodeFn` on `planned_videos`' elements: each carries its windows.

  What the pipeline runs: the plan reaches every video as data rather than
  as a side input (see `build_pipeline`).
  """

  def process(self, element):  # pylint: disable=arguments-differ
    entry, info, windows, num_videos = element
    yield from self._decode(entry, info, windows, num_videos)


def planned_videos(probed: Sequence[Tuple], config: WriterConfig
                   ) -> Iterable[Tuple]:
  """`(entry, info, windows, number of probed videos)` of every probed video.

  `probed` holds every video's `(entry, info, capacity)` (`ProbeFn`); the
  windows are `plan_all`'s.
  """
  plan = plan_all(probed, config)
  for entry, info, _ in sorted(probed, key=lambda p: p[0].ordinal):
    yield entry, info, plan[entry.ordinal], len(plan)


def clip_offsets(counts: Iterable[Tuple[int, int]]) -> Dict[int, int]:
  """First clip index of each video: cumulative counts in ordinal order."""
  offsets, total = {}, 0
  for ordinal, n in sorted(counts):
    offsets[ordinal] = total
    total += n
  return offsets


class WriteShardFn(beam.DoFn):
  """(shard, [(clip index, piece)]) -> one complete shard file, renamed.

  Records are assembled in clip-index order: the context (with the now
  known clip index) is built here and the frames are copied from the
  per-video temp files, so any number of workers gives the same bytes.
  """

  def __init__(self, config: WriterConfig,
               run: Optional[progress_lib.BeamRun] = None):
    self._config = config
    self._run = run or progress_lib.BeamRun.create('DirectRunner', 1)

  def setup(self):
    self._progress = self._run.progress(
        'write_clips shards', {'shards': self._config.num_shards,
                               'clips': None, 'bytes': None},
        rates=('clips', 'bytes'))

  def process(self, element):
    shard, numbered = element
    c = self._config
    # `(clip index, piece)`s (`number_clips`), and None for the shard itself.
    items = sorted((x for x in numbered if x is not None), key=lambda x: x[0])
    path = beam_utils.join(c.output_dir,
                           schema.shard_name(shard, c.num_shards))
    stats = {'shard': shard, 'clips': 0, 'frames': 0, 'bytes': 0,
             'clips_per_class': collections.Counter(), 'videos': set()}
    src, src_path = None, None
    # One writer per shard in a run: a fixed temporary name, which a rerun
    # overwrites when a killed run left it. A write error (a full disk)
    # deletes it and names the shard.
    try:
      with atomic_files.naming(path), \
          atomic_files.replacing(path, atomic_files.BEAM,
                                 unique=False) as tmp, \
          beam_utils.create(tmp) as out:
        for clip_index, p in items:
          entry = p.entry
          if p.path != src_path:
            if src is not None:
              src.close()
            src, src_path = beam_utils.open_file(p.path), p.path
          src.seek(p.offset)
          body = src.read(p.length)
          if len(body) != p.length:
            raise IOError(f'{p.path}: temporary frames file is shorter than '
                          f'expected ({len(body)} < {p.length} bytes at '
                          f'{p.offset})')
          context = clip_proto.context_field(
              clip_index=clip_index, video_id=entry.video_id, start=p.start,
              end=p.end, frame_rate=c.fps, num_frames=p.num_frames,
              height=p.height, width=p.width, label_index=entry.label_index,
              label_text=entry.label, caption=entry.title)
          size = tfrecord_io.write_record_parts(out, (context, body)) - 16
          stats['clips'] += 1
          stats['frames'] += p.num_frames
          stats['bytes'] += size
          self._progress.add(clips=1, bytes=size)
          stats['clips_per_class'][entry.label] += 1
          stats['videos'].add(entry.ordinal)
    finally:
      if src is not None:
        src.close()
    stats['clips_per_class'] = dict(stats['clips_per_class'])
    stats['videos'] = sorted(stats['videos'])
    self._progress.add(shards=1)
    yield stats


def write_summary(_, shard_stats, rejects, *, config: WriterConfig,
                  class_names: Sequence[str], num_videos: int,
                  manifest_rejects: Sequence[Dict], notes: Dict) -> Dict:
  """Writes rejects.jsonl, drops the temp dir, then writes summary.json.

  Runs after every shard is in place (it reads all shard stats), so the
  temporary frame files are no longer needed. summary.json is the run's
  completion record (`completion.finish`): written last, it lists the
  shards, and the in-progress marker goes.
  """
  all_rejects = sorted(list(manifest_rejects) + list(rejects),
                       key=lambda r: (r['row'] or 0, r['path'], r['reason']))
  per_class = collections.Counter()
  written_videos = set()
  for s in shard_stats:
    per_class.update(s['clips_per_class'])
    written_videos.update(s['videos'])
  partial = sum(1 for r in rejects if r['reason'] == video_lib.PARTIAL)
  summary = {
      'schema_version': schema.SCHEMA_VERSION,
      'num_classes': len(class_names),
      'videos_in_manifest': num_videos + len(manifest_rejects),
      'videos_written': len(written_videos),
      'videos_rejected': len(all_rejects) - partial,
      'videos_partial': partial,
      'videos_without_clips_by_budget': (
          num_videos - len(written_videos) - (len(rejects) - partial)),
      'rejects_by_reason': dict(collections.Counter(
          r['reason'] for r in all_rejects)),
      'clips': sum(s['clips'] for s in shard_stats),
      'frames': sum(s['frames'] for s in shard_stats),
      'bytes': sum(s['bytes'] for s in shard_stats),
      'clips_per_class': {n: per_class.get(n, 0) for n in class_names},
      'num_shards': config.num_shards,
      'shard_pattern': schema.shard_pattern(),
      'notes': notes,
      'config': config.as_dict(),
  }
  out = config.output_dir
  beam_utils.write_bytes_atomic(
      beam_utils.join(out, schema.REJECTS_FILENAME),
      ''.join(json.dumps(r, ensure_ascii=False, sort_keys=True) + '\n'
              for r in all_rejects).encode('utf-8'))
  beam_utils.delete_tree(temp_root(out))
  return completion.finish(out, schema.SUMMARY_FILENAME, summary,
                           shard_names(config.num_shards), atomic_files.BEAM,
                           job=JOB)


def shard_names(num_shards: int) -> List[str]:
  """The names of a run's shards, `clips-00000-of-<num_shards>.tfrecord` on."""
  return [schema.shard_name(i, num_shards) for i in range(num_shards)]


def temp_root(output_dir: str) -> str:
  """Where runs keep temporary frame files (one subdirectory per run)."""
  return beam_utils.join(output_dir, TEMP_DIRNAME)


# Tags of the elements joined on a video's ordinal (`number_clips`) and of
# those gathered for the summary (`summarise`).
_PIECE, _OFFSET = 'piece', 'offset'
_STATS, _REJECT = 'stats', 'reject'


def _ordinal(element) -> int:
  """The manifest ordinal of an entry or of a planned video."""
  entry = element if isinstance(element, manifest_lib.VideoEntry) else (
      element[0])
  return entry.ordinal


def _piece_by_video(shard_piece):
  return shard_piece[1].ordinal, (_PIECE, shard_piece)


def _offsets_by_video(counts):
  for ordinal, offset in sorted(clip_offsets(counts).items()):
    yield ordinal, (_OFFSET, offset)


def number_clips(element) -> Iterable[Tuple[int, Tuple[int, ClipPiece]]]:
  """(ordinal, [its pieces and its first clip index]) -> (shard, (index, piece)).

  A video's clips are numbered from the video's offset (`clip_offsets`),
  in the order the decoder wrote them (`ClipPiece.k`).
  """
  _, values = element
  (offset,) = [v for tag, v in values if tag == _OFFSET]
  for tag, value in values:
    if tag == _PIECE:
      shard, piece = value
      yield shard, (offset + piece.k, piece)


def _tagged(value, tag):
  return tag, value


def summarise(items, **kwargs) -> Dict:
  """`write_summary` of the gathered `(_STATS, stats)` / `(_REJECT, r)`."""
  return write_summary(None, [v for tag, v in items if tag == _STATS],
                       [v for tag, v in items if tag == _REJECT], **kwargs)


def build_pipeline(pipeline: beam.Pipeline,
                   entries: Sequence[manifest_lib.VideoEntry],
                   manifest_rejects: Sequence[Dict],
                   class_names: Sequence[str], config: WriterConfig,
                   notes: Dict, temp_dir: str,
                   run: Optional[progress_lib.BeamRun] = None):
  """Adds the writer's transforms to `pipeline`.

  `temp_dir` (new for each run, under `temp_root(output_dir)`) holds the
  frames of decoded clips until their shards are written; `run` names the
  run's progress counters.

  Only single-output ParDos, GroupByKeys and Flattens, no side input, one
  last step that depends on every other: what every runner runs alike,
  Beam's Dask runner included (`beam_utils._dask_runner`). Global steps (the
  plan, the clip offsets, the summary) `Gather` their input into one
  element; the offsets reach the clips by a join on the video's ordinal.
  """
  total = len(entries)
  probed = (
      pipeline
      # Spread over workers (a `Create` reshuffles, or on Dask splits its
      # elements evenly over partitions).
      | 'Entries' >> beam.Create(list(entries))
      | 'Probe' >> beam_utils.ParDoByTag(ProbeFn(config, total, run),
                                         'rejects', main='ok'))
  decoded = (
      probed['ok']
      | 'GatherProbes' >> beam_utils.Gather()
      | 'Plan' >> beam.FlatMap(planned_videos, config)
      | 'SpreadDecode' >> beam_utils.Spread(_ordinal)
      | 'Decode' >> beam_utils.ParDoByTag(
          PlannedDecodeFn(config, total, temp_dir, run), 'rejects', 'counts',
          main='clips'))
  offsets = (decoded['counts']
             | 'GatherCounts' >> beam_utils.Gather()
             | 'Offsets' >> beam.FlatMap(_offsets_by_video))
  numbered = (
      (decoded['clips'] | 'PieceByVideo' >> beam.Map(_piece_by_video),
       offsets)
      | 'WithOffsets' >> beam.Flatten()
      | 'ByVideo' >> beam.GroupByKey()
      | 'Number' >> beam.FlatMap(number_clips))
  # Every shard exists, even an empty one, so the shard pattern is complete.
  empty = pipeline | 'EveryShard' >> beam.Create(
      [(s, None) for s in range(config.num_shards)])
  shard_stats = (
      (numbered, empty)
      | 'WithEmpty' >> beam.Flatten()
      | 'ByShard' >> beam.GroupByKey()
      | 'WriteShard' >> beam.ParDo(WriteShardFn(config, run)))
  # Last, and after everything else: the Dask runner runs only what the
  # last step needs.
  _ = (
      (shard_stats | 'TagStats' >> beam.Map(_tagged, _STATS),
       probed['rejects'] | 'TagProbeRejects' >> beam.Map(_tagged, _REJECT),
       decoded['rejects'] | 'TagDecodeRejects' >> beam.Map(_tagged, _REJECT))
      | 'ForSummary' >> beam.Flatten()
      | 'GatherAll' >> beam_utils.Gather()
      | 'Summary' >> beam.Map(
          summarise, config=config, class_names=list(class_names),
          num_videos=total, manifest_rejects=list(manifest_rejects),
          notes=notes))


def run_writer(manifest_path: str, config: WriterConfig, *,
               labels_path: Optional[str] = None, runner: str = 'DirectRunner',
               pipeline_args: Sequence[str] = ()) -> Dict:
  """Runs the whole job; returns the summary dict (also in summary.json).

  Raises:
    RuntimeError: no clip could be written (the summary and rejects are
      still written and name every reason).
  """
  labels = (manifest_lib.read_label_list(labels_path) if labels_path
            else None)
  entries, manifest_rejects, class_names, notes = manifest_lib.read_manifest(
      manifest_path, labels)
  if not class_names:
    raise ValueError(f'manifest {manifest_path!r}: no usable class label')
  # Marks the directory in progress (a read-only one fails here, by name),
  # removes a killed run's temporaries and another run's shards.
  completion.begin(config.output_dir, JOB,
                   outputs=shard_names(config.num_shards),
                   record=schema.SUMMARY_FILENAME, fs=atomic_files.BEAM)
  # `records.write_label_map`'s format, written without TensorFlow.
  beam_utils.write_json_atomic(
      beam_utils.join(config.output_dir, schema.LABEL_MAP_FILENAME),
      schema.label_map(class_names))
  # Temp files of an earlier run that crashed are never read (each run has
  # its own directory); remove them so they do not pile up.
  beam_utils.delete_tree(temp_root(config.output_dir))
  temp_dir = beam_utils.join(temp_root(config.output_dir), uuid.uuid4().hex)
  logging.info('write_clips: %d videos, %d classes, %d manifest rejects -> %s',
               len(entries), len(class_names), len(manifest_rejects),
               config.output_dir)
  t0 = time.monotonic()
  # Decoding, resizing and JPEG encoding run in each worker's decoder child
  # process, so DirectRunner workers can be threads of this process: they
  # start in well under a second where worker processes each import Beam
  # (seconds). `--direct_running_mode=multi_processing` still works.
  run = progress_lib.BeamRun.create(runner, config.num_workers)
  try:
    with beam_utils.make_pipeline(runner, config.num_workers, pipeline_args,
                                  running_mode='multi_threading') as pipeline:
      build_pipeline(pipeline, entries, manifest_rejects, class_names, config,
                     notes, temp_dir, run)
  except BaseException:
    # A failed run (a full disk, a killed worker) removes its temporary
    # frames and half-written shards; the marker stays, so readers refuse
    # the directory until a rerun completes it.
    beam_utils.delete_tree(temp_root(config.output_dir))
    atomic_files.remove_temporaries(config.output_dir, atomic_files.BEAM)
    raise
  elapsed = time.monotonic() - t0
  summary = json.loads(beam_utils.read_bytes(
      beam_utils.join(config.output_dir, schema.SUMMARY_FILENAME)))
  logging.info('write_clips: %d clips, %d frames from %d videos in %.1f s '
               '(%.0f frames/s); %d rejected', summary['clips'],
               summary['frames'], summary['videos_written'], elapsed,
               summary['frames'] / max(elapsed, 1e-9),
               summary['videos_rejected'])
  if summary['clips'] == 0:
    raise RuntimeError(
        f'no clip could be written from {manifest_path!r}: every video was '
        f'rejected ({summary["rejects_by_reason"]}); see '
        f'{os.path.join(config.output_dir, schema.REJECTS_FILENAME)}')
  return summary


def format_summary(summary: Dict) -> str:
  """A short human-readable table of a writer summary."""
  lines = [
      f"videos: {summary['videos_written']} written, "
      f"{summary['videos_rejected']} rejected, "
      f"{summary['videos_partial']} partial "
      f"(of {summary['videos_in_manifest']} in the manifest)",
      f"clips: {summary['clips']}  frames: {summary['frames']}  "
      f"bytes: {summary['bytes'] / 1e6:.1f} MB  shards: {summary['num_shards']}",
  ]
  if summary['rejects_by_reason']:
    lines.append('rejects: ' + ', '.join(
        f'{k}={v}' for k, v in sorted(summary['rejects_by_reason'].items())))
  width = max([len(n) for n in summary['clips_per_class']] + [5])
  lines.append('clips per class:')
  for name, n in summary['clips_per_class'].items():
    lines.append(f'  {name:<{width}}  {n}')
  return '\n'.join(lines)


# ---- Command line ----

# The tool's flags, in the order `config_write_clips.flags` lists them.
_FLAG_NAMES = ('manifest', 'output_dir', 'num_shards', 'clip_seconds',
               'min_clip_seconds', 'fps', 'short_side', 'jpeg_quality',
               'clips_per_video', 'clips_per_class', 'labels', 'video_timeout',
               'decode_threads', 'runner', 'direct_num_workers',
               'direct_running_mode')


def _define_flags(fv: flags.FlagValues) -> None:
  """Flags exist only when the module runs as a tool, never on import."""
  flags.DEFINE_string('manifest', None, 'CSV (header row) or JSONL manifest.',
                      flag_values=fv)
  flags.DEFINE_string('output_dir', None, 'Where shards and JSON files go.',
                      flag_values=fv)
  flags.DEFINE_integer('num_shards', 16, 'Number of output shards.',
                       flag_values=fv)
  flags.DEFINE_float('clip_seconds', 10.0, 'Clip length in seconds.',
                     flag_values=fv)
  flags.DEFINE_float('min_clip_seconds', None,
                     'A video (segment) shorter than one clip but at least this '
                     'long gives one shorter clip; default clip_seconds / 2.',
                     flag_values=fv)
  flags.DEFINE_float('fps', 25.0, 'Output frame rate.', flag_values=fv)
  flags.DEFINE_integer('short_side', 256, 'Resize so the short side is this '
                       '(0 keeps the size).', flag_values=fv)
  flags.DEFINE_integer('jpeg_quality', 90, 'JPEG quality, 1..100.',
                       flag_values=fv)
  flags.DEFINE_string('clips_per_video', 'all',
                      '"all" (every non-overlapping clip) or a number K (at most '
                      'K non-overlapping clips, evenly spread).',
                      flag_values=fv)
  flags.DEFINE_integer('clips_per_class', None,
                       'Per-class clip budget split evenly over the class\'s '
                       'videos (overrides --clips_per_video).', flag_values=fv)
  flags.DEFINE_string('labels', None, 'File of class names, one per line; '
                      'derived from the manifest (sorted) when absent.',
                      flag_values=fv)
  flags.DEFINE_float('video_timeout', 600.0,
                     'Seconds one video may take to probe or decode before it '
                     'is rejected as hung.', flag_values=fv)
  flags.DEFINE_integer('decode_threads', 0,
                       'FFmpeg threads per video (0: FFmpeg decides). Use 1 '
                       'when worker processes already fill the cores.',
                       flag_values=fv)
  cli.define_beam_flags(
      fv, default_mode='multi_threading',
      workers_help='DirectRunner workers, each with its own decoder process '
      '(worker threads unless --direct_running_mode=multi_processing).')


TOOL = cli.Tool(
    name='write_clips', command='python -m tfrecords_tools.write_clips',
    doc=__doc__, define_flags=_define_flags,
    required=('manifest', 'output_dir'), beam=True)


def main(args: cli.Args) -> int:
  """Runs the writer for a parsed command line; returns the exit status."""
  fv = args.flags
  cpv = fv.clips_per_video.strip().lower()
  if fv.clips_per_class is not None:
    clips_per_video = None
  elif cpv == 'all':
    clips_per_video = None
  else:
    try:
      clips_per_video = int(cpv)
    except ValueError:
      print(f'write_clips: error: --clips_per_video must be "all" or an '
            f'integer, got {cpv!r}', file=sys.stderr)
      return 2
  try:
    config = WriterConfig(
        output_dir=fv.output_dir, num_shards=fv.num_shards,
        clip_seconds=fv.clip_seconds, fps=fv.fps,
        short_side=fv.short_side, jpeg_quality=fv.jpeg_quality,
        clips_per_video=clips_per_video, clips_per_class=fv.clips_per_class,
        min_clip_seconds=fv.min_clip_seconds,
        video_timeout=fv.video_timeout,
        num_workers=fv.direct_num_workers,
        decode_threads=fv.decode_threads)
    beam_utils.write_run_config(
        fv.output_dir, 'write_clips', fv, _FLAG_NAMES, args.beam_args)
    summary = run_writer(fv.manifest, config, labels_path=fv.labels,
                         runner=fv.runner,
                         pipeline_args=args.beam_pipeline_args())
  except (ValueError, OSError, RuntimeError) as e:
    # One line: the message names the file or directory (no traceback).
    print(f'write_clips: error: {e}', file=sys.stderr)
    return 1
  print(format_summary(summary))
  return 0


def run(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point (also the `write-clips` console script): the exit status."""
  return cli.run(TOOL, main, argv)


if __name__ == '__main__':
  # Run the imported module's copy, so pickled elements (`ClipPiece`) name
  # `tfrecords_tools.write_clips`, which worker processes can import.
  from tfrecords_tools import write_clips as _write_clips  # pylint: disable=g-import-not-at-top,import-self
  sys.exit(_write_clips.run())
