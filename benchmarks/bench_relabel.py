r"""Relabel throughput against a plain TFRecord copy of the same shards.

  python -m benchmarks.bench_relabel          # 8 shards of ~250 MB, ~2 GB
  python -m benchmarks.bench_relabel --num_shards=16 --repeats=3
  TMPDIR=/dev/shm python -m benchmarks.bench_relabel --nocold_start \
      --direct_num_workers=2 --dask_workers=2   # the other local runners

Makes realistic shards in a temp dir (600 clips x 32 JPEG frames of ~13 KB
per shard, ~250 MB: real datasets are hundreds of GB in shards of 100 MB to
1 GB), fake teacher predictions, then times, in one process, each method in
turn within every repeat (best of `--repeats` kept, shards in the page cache):

* copy_tf:   tf.data.TFRecordDataset (CRC-checked read) -> tf.io.TFRecordWriter
* copy_py:   tfrecord_io framing read (CRC-checked) -> write
* relabel:   `relabel.rewrite_shard` over every shard (the relabel pass:
             context-only rewrite, frames copied through, CRC checked)
* pass1:     `relabel.read_shard_contexts` over every shard (contexts only)
* beam_job:  the whole `relabel.relabel` job on the DirectRunner (pass 1,
             pass 2, label space, stats, plots), with its per-phase times
* beam_startup: the same job on a 1-shard, 2-clip dataset: the fixed cost
* beam_job_direct (`--direct_num_workers=W`, W > 1): the job on the
             DirectRunner's multi-processing mode with W worker processes
* beam_job_dask (`--dask_workers=W`): the job on the Dask runner over a local
             cluster of W one-thread worker processes (warmed up once):
             which local runner is the fastest

MB/s count input bytes. Ratios are against the faster copy (the stricter
reference); targets: relabel >= 0.8x, beam_job >= 0.5x (end to end). Also
printed: the job without its start-up (its per-byte rate), the data size
from which the job reaches 0.5x end to end (start-up and per-byte rate
extrapolated: a derived figure, not a measurement), the cold start of a fresh
relabel process (imports), and which CRC-32C implementation every path uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

from absl import app
from absl import flags
from apache_beam.io import tfrecordio
import google_crc32c
import numpy as np
import tensorflow as tf

from tfrecords_tools import label_spaces
from tfrecords_tools import records
from tfrecords_tools import relabel
from tfrecords_tools import schema
from tfrecords_tools import tfrecord_io

_NUM_SHARDS = flags.DEFINE_integer('num_shards', 8, 'Shards to make.')
_CLIPS = flags.DEFINE_integer('clips_per_shard', 600,
                              'Clips per shard (~0.4 MB each).')
_FRAMES = flags.DEFINE_integer('frames', 32, 'Frames per clip.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timings per method (best kept).')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 20, 'N.')
_VARIANT = flags.DEFINE_string('variant', 'spl_m', 'Label-space variant.')
_COLD_START = flags.DEFINE_bool(
    'cold_start', True, 'Also time a fresh relabel process on a tiny dataset.')
_DIRECT_WORKERS = flags.DEFINE_integer(
    'direct_num_workers', 0, 'If > 1, also time the job on the DirectRunner '
    'with this many worker processes (beam_job_direct).')
_DASK_WORKERS = flags.DEFINE_integer(
    'dask_workers', 0, 'If > 0, also time the job on the Dask runner over a '
    'local cluster of this many one-thread worker processes (beam_job_dask; '
    'the `dask` extra).')

# 128x160 RGB noise at JPEG quality 75 is ~15 KB, like a 256-pixel web frame.
_FRAME_SHAPE = (128, 160, 3)
_FRAME_POOL = 64


def make_data(root: str, num_shards: int, clips_per_shard: int,
              num_frames: int, num_classes: int) -> Dict[str, str]:
  """Writes clip shards, a label map and teacher predictions under `root`."""
  rng = np.random.RandomState(0)
  pool = [tf.io.encode_jpeg(rng.randint(0, 256, _FRAME_SHAPE, np.uint8),
                            quality=75).numpy() for _ in range(_FRAME_POOL)]
  clip_dir = os.path.join(root, 'clips')
  os.makedirs(clip_dir)
  records.write_label_map(os.path.join(clip_dir, schema.LABEL_MAP_FILENAME),
                          [f'class_{i:03d}' for i in range(num_classes)])
  preds = []
  for s in range(num_shards):
    path = os.path.join(clip_dir, schema.shard_name(s, num_shards))
    with tf.io.TFRecordWriter(path) as w:
      for j in range(clips_per_shard):
        c = s * clips_per_shard + j
        weak = c % num_classes
        frames = [pool[(c * 7 + t) % _FRAME_POOL] for t in range(num_frames)]
        w.write(records.make_clip_example(
            frames=frames, clip_index=c, video_id=f'vid_{c:06d}', start=0.0,
            end=num_frames / 25, frame_rate=25.0, height=_FRAME_SHAPE[0],
            width=_FRAME_SHAPE[1], label_index=weak,
            label_text=f'class_{weak:03d}', caption=f'title {c}'
        ).SerializeToString())
        # Teacher: agrees half the time, otherwise a skewed confusion.
        teacher = weak if rng.rand() < 0.5 else int(
            min(num_classes - 1, rng.geometric(0.3) - 1))
        preds.append(records.make_prediction_example(
            clip_index=c, clip_key=schema.make_clip_key(f'vid_{c:06d}', 0.0),
            num_classes=num_classes, top_k_index=[teacher],
            top_k_score=[0.9]).SerializeToString())
  pred_dir = os.path.join(root, 'pred')
  os.makedirs(pred_dir)
  with tf.io.TFRecordWriter(os.path.join(pred_dir, 'pred-0.tfrecord')) as w:
    for p in preds:
      w.write(p)
  return {'records': os.path.join(clip_dir, schema.shard_pattern()),
          'predictions': os.path.join(pred_dir, '*.tfrecord')}


def copy_tf(shards: List[str], out_dir: str) -> None:
  for path in shards:
    with tf.io.TFRecordWriter(
        os.path.join(out_dir, os.path.basename(path))) as w:
      for r in tf.data.TFRecordDataset([path]):
        w.write(r.numpy())


def copy_py(shards: List[str], out_dir: str) -> None:
  for path in shards:
    with open(path, 'rb') as fin, open(
        os.path.join(out_dir, os.path.basename(path)), 'wb') as fout:
      for data in tfrecord_io.read_records(fin, path):
        tfrecord_io.write_record(fout, data)


def read_contexts(shards: List[str]) -> int:
  """Pass 1's reading alone: the contexts of every shard, parsed."""
  n = 0
  for path in shards:
    for item in relabel.read_shard_contexts(path):
      n += not hasattr(item, 'tag')
  return n


def _time_all(methods: Dict[str, Callable[[str], Any]], root: str,
              repeats: int) -> Dict[str, tuple]:
  """Best (wall time, return value) of every method.

  Methods take turns within each repeat, starting one later every repeat,
  so load from other processes on a shared machine and the kernel's
  write-back of the previous method's output hit them alike.
  """
  best = {name: (float('inf'), None) for name in methods}
  names = list(methods)
  for r in range(repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      fn = methods[name]
      out = os.path.join(root, f'{name}_{r}')
      os.makedirs(out)
      t0 = time.perf_counter()
      value = fn(out)
      t = time.perf_counter() - t0
      if t < best[name][0]:
        best[name] = (t, value)
      shutil.rmtree(out)
  return best


_COLD_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
from tfrecords_tools import relabel
t1 = time.perf_counter()
relabel.relabel(records_pattern=sys.argv[1], predictions_pattern=sys.argv[2],
                variant=sys.argv[3], output_dir=sys.argv[4], **json.loads(sys.argv[5]))
print(json.dumps({'imports': t1 - t0, 'job': time.perf_counter() - t1}))
"""


def cold_start(data: Dict[str, str], out: str, kw: Dict[str, Any]
               ) -> Dict[str, float]:
  """A fresh process: interpreter + imports (TF, Beam) + the tiny job."""
  t0 = time.perf_counter()
  proc = subprocess.run(
      [sys.executable, '-c', _COLD_SCRIPT, data['records'],
       data['predictions'], _VARIANT.value, out, json.dumps(kw)],
      capture_output=True, text=True, check=True,
      env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  result['process'] = time.perf_counter() - t0
  return result


def crc_implementations() -> Dict[str, str]:
  """Which CRC-32C code every path runs."""
  tfrecordio._default_crc32c_fn(b'probe')  # pylint: disable=protected-access
  beam_fn = tfrecordio._default_crc32c_fn.fn  # pylint: disable=protected-access
  ours = f'google_crc32c ({google_crc32c.implementation})'
  return {
      'copy_tf': 'TensorFlow C++ (tsl::crc32c)',
      'copy_py': ours,
      'relabel pass / beam_job (pass 1 lengths, pass 2, predictions)': ours,
      'beam tfrecordio (not used by the job)':
          f'{beam_fn.__module__}.{beam_fn.__name__}',
  }


def main(argv):
  del argv
  root = tempfile.mkdtemp(prefix='bench_relabel_')
  try:
    t0 = time.perf_counter()
    data = make_data(root, _NUM_SHARDS.value, _CLIPS.value, _FRAMES.value,
                     _NUM_CLASSES.value)
    shards = sorted(tf.io.gfile.glob(data['records']))
    size_mb = sum(os.path.getsize(p) for p in shards) / 1e6
    print(f'data: {len(shards)} shards, {size_mb:.0f} MB '
          f'({size_mb / len(shards):.0f} MB/shard), made in '
          f'{time.perf_counter() - t0:.1f} s; load average '
          f'{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs')

    # The label space and teachers the one-process relabel pass uses.
    teachers, weak = {}, {}
    for p in tf.data.TFRecordDataset(
        sorted(tf.io.gfile.glob(data['predictions']))):
      pred = records.parse_prediction_example(p.numpy())
      c = pred[schema.CLIP_INDEX_KEY]
      teachers[c] = (pred[schema.PREDICTION_TOP_K_INDEX_KEY][0],
                     pred[schema.PREDICTION_TOP_K_SCORE_KEY][0])
      weak[c] = c % _NUM_CLASSES.value
    order = sorted(teachers)
    confusion = label_spaces.confusion_matrix(
        [weak[c] for c in order], [teachers[c][0] for c in order],
        _NUM_CLASSES.value)
    kw = {'target_scr': 0.8} if _VARIANT.value in label_spaces.K_VARIANTS else {}
    space = label_spaces.make_label_space(
        _VARIANT.value, confusion,
        [f'class_{i:03d}' for i in range(_NUM_CLASSES.value)], **kw)
    per_shard = [{c: teachers[c] for c in range(
        s * _CLIPS.value, (s + 1) * _CLIPS.value)} for s in range(len(shards))]

    def relabel_pass(out):
      for path, shard_teachers in zip(shards, per_shard):
        relabel.rewrite_shard(path, os.path.join(out, os.path.basename(path)),
                              shard_teachers, space)

    def job(patterns, **runner):
      return lambda out: relabel.relabel(
          records_pattern=patterns['records'],
          predictions_pattern=patterns['predictions'], variant=_VARIANT.value,
          output_dir=out, **kw, **runner)['timing_s']

    tiny = make_data(os.path.join(root, 'tiny'), 1, 2, 2, _NUM_CLASSES.value)
    methods = {'copy_tf': lambda out: copy_tf(shards, out),
               'copy_py': lambda out: copy_py(shards, out),
               'relabel': relabel_pass,
               'pass1': lambda out: read_contexts(shards),
               'beam_job': job(data),
               'beam_startup': job(tiny)}
    runners = []
    if _DIRECT_WORKERS.value > 1:
      methods['beam_job_direct'] = job(
          data, direct_num_workers=_DIRECT_WORKERS.value,
          beam_args=['--direct_running_mode=multi_processing'])
      runners.append(('beam_job_direct', f'DirectRunner, '
                      f'{_DIRECT_WORKERS.value} worker processes'))
    with contextlib.ExitStack() as stack:
      if _DASK_WORKERS.value > 0:
        from tfrecords_tools import dask_cluster  # pylint: disable=g-import-not-at-top
        cluster = stack.enter_context(
            dask_cluster.local_cluster(_DASK_WORKERS.value))
        dask_job = job(data, runner='DaskRunner', beam_args=[
            f'--dask_client_address={cluster.address}'])
        dask_job(os.path.join(root, 'dask_warm_up'))  # Workers import.
        shutil.rmtree(os.path.join(root, 'dask_warm_up'))
        methods['beam_job_dask'] = dask_job
        runners.append(('beam_job_dask', f'Dask runner, '
                        f'{_DASK_WORKERS.value} worker processes'))
      best = _time_all(methods, root, _REPEATS.value)
    times = {name: t for name, (t, _) in best.items()}
    startup = times['beam_startup']
    ref = min(times['copy_tf'], times['copy_py'])
    results: Dict[str, Any] = {}
    print(f'{"method":12s} {"seconds":>8s} {"MB/s":>8s} {"x faster copy":>14s}'
          f' {"x copy_tf":>10s}')
    for name in ('copy_tf', 'copy_py', 'relabel', 'pass1', 'beam_job',
                 *(name for name, _ in runners)):
      t = times[name]
      results[name] = {'seconds': round(t, 3), 'mb_per_s': round(size_mb / t, 1),
                       'ratio_vs_copy': round(ref / t, 3),
                       'ratio_vs_copy_tf': round(times['copy_tf'] / t, 3)}
      print(f'{name:12s} {t:8.3f} {size_mb / t:8.1f} {ref / t:14.2f} '
            f'{times["copy_tf"] / t:10.2f}')
    marginal = times['beam_job'] - startup
    results['beam_startup_s'] = round(startup, 3)
    print(f'beam_job start-up (same job on 2 clips): {startup:.3f} s')
    if marginal > 0:
      results['beam_job_without_startup'] = {
          'seconds': round(marginal, 3),
          'mb_per_s': round(size_mb / marginal, 1),
          'ratio_vs_copy': round(ref / marginal, 3)}
      print(f'beam_job without start-up: {marginal:.3f} s, '
            f'{size_mb / marginal:.1f} MB/s = {ref / marginal:.2f}x of the '
            f'faster copy')
      # job(S) = startup + S / job_rate >= ... 0.5x means job(S) <= 2 S / ref
      # rate: S >= startup / (2 / ref_rate - 1 / job_rate).
      margin = 2 * ref / size_mb - marginal / size_mb
      if margin > 0:
        even_gb = startup / margin / 1e3
        results['beam_job_0.5x_from_gb'] = round(even_gb, 2)
        print(f'beam_job reaches 0.5x end to end from ~{even_gb:.1f} GB '
              f'(extrapolated from the two lines above)')
    phases = best['beam_job'][1]
    work = sum(phases.get(k, 0.0) for k in (
        'pass1_contexts', 'pass1_predictions', 'pass2_rewrite', 'finish'))
    phases['runner_overhead'] = phases['run'] - work
    results['beam_job_phases_s'] = {k: round(v, 3) for k, v in phases.items()}
    print('beam_job phases (s): ' + ', '.join(
        f'{k} {v:.3f}' for k, v in phases.items()))
    print('  (runner_overhead: run minus the DoFns\' own work: the join and '
          'group-bys, stage set-up, pipeline translation)')
    if _COLD_START.value:
      cold = cold_start(tiny, os.path.join(root, 'cold'), kw)
      results['cold_start_s'] = {k: round(v, 3) for k, v in cold.items()}
      print(f'cold start, fresh process on 2 clips: {cold["process"]:.2f} s '
            f'(imports {cold["imports"]:.2f} s, job {cold["job"]:.2f} s)')
    crcs = crc_implementations()
    results['crc32c'] = crcs
    for path, impl in crcs.items():
      print(f'CRC-32C {path}: {impl}')
    for name, what in runners:
      print(f'{name}: {what}')
    print(f'targets: relabel >= 0.8x -> '
          f'{"OK" if ref / times["relabel"] >= 0.8 else "MISSED"}; '
          f'beam_job >= 0.5x end to end -> '
          f'{"OK" if ref / times["beam_job"] >= 0.5 else "MISSED"}')
    print(json.dumps({'size_mb': round(size_mb, 1),
                      'load_average': os.getloadavg()[0], 'results': results}))
  finally:
    shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
  app.run(main)
