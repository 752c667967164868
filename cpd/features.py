"""Feature extraction from a CPD video model: sharded, resumable, exact.

For every clip record, the eval input pipeline gives V = clips x crops views
(e.g. 10 temporal clips x 3 crops). Each view goes through the backbone
(pooled features, e.g. 512-d for slow-only R34) and the video head (the 256-d
unit embedding); both are averaged over the record's views on the replica,
then `spl.metrics.gather_across_replicas` brings each record to the host
once. Records of one video (a video cut into several clip records) are
averaged by `load_features(..., by_video=True)`, across output shards.

Output: one `features-<i>-of-<n>.npz` per input shard i of n (sorted), with
per-record rows sorted by clip index:

  clip_index int64 [R], clip_key str [R], video_id str [R], label int64 [R],
  embedding float32 [R, d], backbone float32 [R, D], num_views int64 [R],
  text_embedding float32 [R, d] (if a text function is given: the caption),
  meta: JSON string (what produced the shard).

A shard is written to a temporary name and renamed, and checked to hold
every record of its input exactly once, so an existing output is complete; a
rerun skips it (after checking that its `meta` matches, so stale features of
another checkpoint are never mixed in). The directory follows
`tfrecords_tools.completion`: the in-progress marker until the last shard is
written, then `summary.json` listing the shards; `load_features` reads it
through `file_patterns.match`, so an unfinished or mixed directory is refused.

Progress (`tfrecords_tools.progress`, INFO): after the first batch and then
every 10 s, records done of this worker's total (estimated, `~`, until every
shard was opened), shards done, records/s and an ETA, with the current
shard's records done of its count; the job ends with its counters.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

from cpd import zero_shot
from spl import input_pipeline
from spl import metrics
from tfrecords_tools import atomic_files
from tfrecords_tools import completion
from tfrecords_tools import file_patterns
from tfrecords_tools import progress as progress_lib
from tfrecords_tools import schema

FEATURES_PREFIX = 'features'
JOB = 'extract_features'  # In the completion record and in-progress marker.
FEATURES_SUFFIX = '.npz'
CLIP_INDEX = 'clip_index'
CLIP_KEY = 'clip_key'
VIDEO_ID = 'video_id'
LABEL = 'label'
EMBEDDING = 'embedding'
BACKBONE = 'backbone'
TEXT_EMBEDDING = 'text_embedding'
NUM_VIEWS = 'num_views'
META = 'meta'
FLOAT_FIELDS = (EMBEDDING, BACKBONE, TEXT_EMBEDDING)


def features_shard_name(index: int, num_shards: int) -> str:
  """`features-00003-of-00016.npz`."""
  if not 0 <= index < num_shards:
    raise ValueError(f'`index` must be in [0, {num_shards}), got {index}')
  return (f'{FEATURES_PREFIX}-{index:05d}-of-{num_shards:05d}'
          f'{FEATURES_SUFFIX}')


def make_view_embedder(backbone: tf_keras.Model,
                       head: Optional[Callable[[tf.Tensor], tf.Tensor]]
                       ) -> Callable[[tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]:
  """Single-replica function: views [B, V, ...] -> per-record means.

  Args:
    backbone: clips [N, T, H, W, 3] -> pooled features [N, D]; run with
      `training=False` (batch-norm moving statistics, frozen).
    head: pooled [N, D] -> embedding [N, d], or None (then the embedding is
      the pooled features).

  Returns:
    fn(views) -> (embedding [B, d], pooled [B, D]) float32, each averaged
    over the V views of each record.
  """
  def fn(views):
    num_views = tf.shape(views)[1]
    flat = tf.reshape(views, tf.concat([[-1], tf.shape(views)[2:]], 0))
    pooled = tf.cast(backbone(flat, training=False), tf.float32)
    emb = pooled if head is None else tf.cast(head(pooled), tf.float32)

    def per_record(x):
      return tf.reduce_mean(
          tf.reshape(x, tf.stack([-1, num_views, tf.shape(x)[-1]])), axis=1)
    return per_record(emb), per_record(pooled)
  return fn


def _slim(element):
  return {**input_pipeline.video_features(element),
          input_pipeline.CLIP_INDEX: element[input_pipeline.CLIP_INDEX]}


def make_embed_step(embed_fn, strategy: tf.distribute.Strategy, *,
                    distributed: bool = True):
  """The per-batch step of `embed_records`; build once, reuse for all shards.

  Args:
    embed_fn: from `make_view_embedder`.
    strategy: the run's strategy; the model was built in its scope.
    distributed: split each batch over the replicas and gather the results
      (the one cross-replica helper, `spl.metrics.gather_across_replicas`).
      False runs on this worker alone, for multi-worker jobs where workers
      hold different shards and no collective may run.

  Returns:
    A `tf.function` batch -> (clip index [B], embedding [B, d],
    pooled [B, D], views [B]).
  """
  def replica_fn(inputs):
    inputs = input_pipeline.finish_features(inputs)
    emb, pooled = embed_fn(inputs[input_pipeline.VIDEO])
    views = tf.fill(tf.shape(inputs[input_pipeline.CLIP_INDEX]),
                    tf.cast(tf.shape(inputs[input_pipeline.VIDEO])[1],
                            tf.int64))
    return inputs[input_pipeline.CLIP_INDEX], emb, pooled, views

  if not distributed:
    return tf.function(replica_fn, reduce_retracing=True)

  @tf.function(reduce_retracing=True)
  def step(inputs):
    return metrics.gather_across_replicas(
        strategy, strategy.run(replica_fn, args=(inputs,)))
  step.distributed = True
  return step


def embed_records(step, strategy: tf.distribute.Strategy,
                  dataset: tf.data.Dataset,
                  on_batch: Optional[Callable[[int], None]] = None
                  ) -> Dict[str, np.ndarray]:
  """Runs a `make_embed_step` step over a batched eval dataset.

  Args:
    step: from `make_embed_step`.
    strategy: the strategy `step` was made with.
    dataset: per-host batches of `spl.input_pipeline` eval dicts (VIDEO
      [B, V, T, H, W, 3], CLIP_INDEX [B]).
    on_batch: called with each batch's record count (progress).

  Returns:
    {CLIP_INDEX [R], EMBEDDING [R, d], BACKBONE [R, D], NUM_VIEWS [R]}, each
    record once, in the order batches came.
  """
  dataset = dataset.map(_slim)
  if getattr(step, 'distributed', False):
    dataset = strategy.experimental_distribute_dataset(dataset)
  parts: List[Tuple[np.ndarray, ...]] = []
  for inputs in dataset:
    parts.append(tuple(t.numpy() for t in step(inputs)))
    if on_batch is not None:
      on_batch(len(parts[-1][0]))
  if not parts:
    raise ValueError('the dataset gave no batch')
  idx, emb, pooled, views = (np.concatenate(p) for p in zip(*parts))
  return {CLIP_INDEX: idx.astype(np.int64), EMBEDDING: emb, BACKBONE: pooled,
          NUM_VIEWS: views.astype(np.int64)}


def read_shard_context(path: str, label_key: str = schema.LABEL_INDEX_KEY
                       ) -> Dict[int, Dict[str, Any]]:
  """clip/index -> {clip_key, video_id, label, caption} of one shard.

  Context only (frames are not parsed), so it is cheap next to the model.
  """
  context = {schema.CLIP_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64),
             schema.CLIP_KEY_KEY: tf.io.FixedLenFeature([], tf.string),
             schema.VIDEO_ID_KEY: tf.io.FixedLenFeature([], tf.string),
             schema.CAPTION_KEY: tf.io.FixedLenFeature([], tf.string, b''),
             label_key: tf.io.FixedLenFeature([], tf.int64, -1)}
  ds = tf.data.TFRecordDataset(path).map(
      lambda s: tf.io.parse_single_sequence_example(s, context)[0]).batch(4096)
  out: Dict[int, Dict[str, Any]] = {}
  for b in ds:
    for i, k, v, c, l in zip(b[schema.CLIP_INDEX_KEY].numpy(),
                             b[schema.CLIP_KEY_KEY].numpy(),
                             b[schema.VIDEO_ID_KEY].numpy(),
                             b[schema.CAPTION_KEY].numpy(),
                             b[label_key].numpy()):
      if int(i) in out:
        raise ValueError(f'{path!r}: clip index {int(i)} appears twice')
      out[int(i)] = {CLIP_KEY: k.decode('utf-8'),
                     VIDEO_ID: v.decode('utf-8'), LABEL: int(l),
                     'caption': c.decode('utf-8')}
  return out


def _write_npz_atomic(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  atomic_files.write(path, buffer.getvalue())


def _read_npz(path: str) -> Dict[str, np.ndarray]:
  with tf.io.gfile.GFile(path, 'rb') as f:
    data = np.load(io.BytesIO(f.read()), allow_pickle=False)
    return {k: data[k] for k in data.files}


def _meta_json(meta: Optional[Mapping[str, Any]]) -> str:
  return json.dumps(dict(meta or {}), sort_keys=True, default=str)


def extract_features(embed_fn, strategy: tf.distribute.Strategy,
                     dataset_fn: Callable[[str], tf.data.Dataset],
                     file_pattern: str, output_dir: str, *,
                     text_fn: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
                     label_key: str = schema.LABEL_INDEX_KEY,
                     meta: Optional[Mapping[str, Any]] = None,
                     worker_index: int = 0, num_workers: int = 1
                     ) -> List[str]:
  """Writes one feature shard per input shard; skips finished ones.

  Args:
    embed_fn: from `make_view_embedder` (model built in `strategy.scope()`).
    strategy: the run's strategy.
    dataset_fn: path -> batched eval dataset of that one shard
      (`spl.input_pipeline.make_dataset` with `is_training=False`,
      `repeat=False`, `drop_remainder=False` and the test views bound).
    file_pattern: glob of the clip-record shards.
    output_dir: where `features-*.npz` go.
    text_fn: optional [B] tf.string -> [B, d]; embeds each record's caption
      (for video-text retrieval).
    label_key: context key of the label stored with the features.
    meta: JSON-able description of the run (checkpoint, views, ...), stored
      in each shard; an existing shard with different meta is an error.
    worker_index: this worker (shard i is done by worker i % num_workers).
    num_workers: workers sharing the job; > 1 runs each worker on its own
      (no collective), as its shards differ from the others'.

  Returns:
    The paths written by this call (skipped shards excluded).
  """
  files = file_patterns.match(file_pattern)
  if num_workers <= 0 or not 0 <= worker_index < num_workers:
    raise ValueError(f'`worker_index` must be in [0, `num_workers`='
                     f'{num_workers}), got {worker_index}')
  names = [features_shard_name(i, len(files)) for i in range(len(files))]
  meta_json = _meta_json(meta)
  mine = [i for i in range(len(files)) if i % num_workers == worker_index]
  done = set()
  # Before the directory is marked in progress: a refused run leaves it as
  # it was.
  for i in mine:
    out = os.path.join(output_dir, names[i])
    if tf.io.gfile.exists(out):
      old = str(_read_npz(out)[META])
      if old != meta_json:
        raise ValueError(f'{out!r} was written with meta {old} but this run '
                         f'has {meta_json}: use a new `output_dir`')
      done.add(i)
  completion.begin(output_dir, JOB, outputs=names,
                   concurrent_writers=num_workers > 1)
  step = make_embed_step(embed_fn, strategy, distributed=num_workers == 1)
  written = []
  for i in sorted(done):
    logging.info('features: %s exists, skipped',
                 os.path.join(output_dir, names[i]))
  todo = [i for i in mine if i not in done]
  progress = progress_lib.ShardProgress('features', 'records', len(todo),
                                        worker=worker_index,
                                        num_workers=num_workers)
  for i in todo:
    path, out = files[i], os.path.join(output_dir, names[i])
    context = read_shard_context(path, label_key)
    progress.open_shard(path, len(context))
    rows = embed_records(step, strategy, dataset_fn(path), progress.add)
    idx = rows[CLIP_INDEX]
    if len(np.unique(idx)) != len(idx) or set(idx.tolist()) != set(context):
      raise RuntimeError(
          f'features of {path!r}: {len(idx)} rows for {len(context)} records '
          f'({len(np.unique(idx))} distinct clip indices): a record was '
          'missed or counted twice')
    order = np.argsort(idx, kind='stable')
    rows = {k: v[order] for k, v in rows.items()}
    ctx = [context[int(c)] for c in rows[CLIP_INDEX]]
    rows[CLIP_KEY] = np.array([c[CLIP_KEY] for c in ctx], dtype=str)
    rows[VIDEO_ID] = np.array([c[VIDEO_ID] for c in ctx], dtype=str)
    rows[LABEL] = np.array([c[LABEL] for c in ctx], np.int64)
    if text_fn is not None:
      rows[TEXT_EMBEDDING] = zero_shot.embed_texts(
          [c['caption'] for c in ctx], text_fn)
    rows[META] = np.array(meta_json)
    _write_npz_atomic(out, rows)
    written.append(out)
    progress.shard_done()
    logging.info('features: wrote %s (%d records)', out, len(idx))
  progress.finish()
  # The last worker to finish sees every shard and writes the record.
  if completion.outputs_complete(output_dir, names):
    completion.finish(output_dir, schema.SUMMARY_FILENAME,
                      {'inputs': files, 'meta': json.loads(meta_json)}, names,
                      job=JOB)
  return written


def load_features(output_dir: str, *, by_video: bool = True
                  ) -> Dict[str, np.ndarray]:
  """Reads every feature shard; optionally averages the records of a video.

  Args:
    output_dir: written by `extract_features` (all shards must be there).
    by_video: average the float fields over the records of each
      (video, label), across shards (`spl.metrics.average_by_video`), so each
      video is one row whatever the number of its records.

  Returns:
    Dict of arrays: VIDEO_ID, LABEL, EMBEDDING, BACKBONE (and TEXT_EMBEDDING
    if extracted); per record also CLIP_INDEX and CLIP_KEY; with `by_video`
    NUM_VIEWS is the number of views summed over the video's records.
  """
  # The completion check refuses an unfinished or mixed directory.
  try:
    paths = file_patterns.match(
        os.path.join(output_dir,
                     f'{FEATURES_PREFIX}-?????-of-?????{FEATURES_SUFFIX}'),
        'features')
  except file_patterns.NoMatchingFilesError as e:
    raise ValueError(f'no feature shards in {output_dir!r}') from e
  shards = [_read_npz(p) for p in paths]
  keys = [k for k in shards[0] if k != META]
  rows = {k: np.concatenate([s[k] for s in shards]) for k in keys}
  if not by_video:
    return rows
  _, video_int = np.unique(rows[VIDEO_ID], return_inverse=True)
  out: Dict[str, np.ndarray] = {}
  for k in FLOAT_FIELDS:
    if k in rows:
      out[k], labels = metrics.average_by_video(rows[k], rows[LABEL],
                                                video_int.reshape(-1))
  out[LABEL] = labels
  # Same grouping as `average_by_video`: (video, label), first appearance.
  group_keys = np.stack([video_int.reshape(-1), rows[LABEL]], axis=1)
  _, first, inverse = np.unique(group_keys, axis=0, return_index=True,
                                return_inverse=True)
  order = np.argsort(first)
  out[VIDEO_ID] = rows[VIDEO_ID][first[order]]
  views = np.bincount(inverse.reshape(-1), weights=rows[NUM_VIEWS],
                      minlength=len(first))
  out[NUM_VIEWS] = views[order].astype(np.int64)
  return out
