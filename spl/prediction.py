"""Teacher predictions for every clip of record shards (`predict`).

One prediction shard per record shard (clip index, key, top-k classes and
scores), written under a temporary name and renamed; multi-worker runs split
the shards over workers. What `spl.main --mode=predict` runs.

The output directory follows `tfrecords_tools.completion`: the in-progress
marker while shards are missing, and `summary.json` listing every shard once
the last one is written (by whichever worker writes it), so relabel refuses
predictions of an unfinished or mixed run.

Progress (`tfrecords_tools.progress`, INFO): after the first batch and then
every 10 s, clips done of this worker's total, shards done, clips/s and an
ETA, with the current shard's clips done of its count; the total is exact
once every shard was opened and estimated (`~`, from the mean clips per
shard so far) before. The job ends with its counters.
"""

import os
from typing import Dict, List

from absl import logging
import tensorflow as tf
import tf_keras

from spl import evaluation
from spl import input_pipeline
from spl import loop as loop_lib
from spl import metrics
from tfrecords_tools import atomic_files
from tfrecords_tools import completion
from tfrecords_tools import progress as progress_lib
from tfrecords_tools import records
from tfrecords_tools import schema

PREDICTIONS_PREFIX = 'predictions'
JOB = 'predict'  # In the completion record and the in-progress marker.


def predict_features(element):
  index = element[input_pipeline.CLIP_INDEX]
  return {**input_pipeline.video_features(element),
          input_pipeline.CLIP_INDEX: index,
          evaluation.VALID: tf.ones_like(index, tf.int32)}


def _clip_keys(path: str) -> Dict[int, str]:
  """clip/index -> clip/key of every record of one shard (no JPEG decode)."""
  context = {schema.CLIP_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64),
             schema.CLIP_KEY_KEY: tf.io.FixedLenFeature([], tf.string)}
  ds = tf.data.TFRecordDataset(path).map(
      lambda s: tf.io.parse_single_sequence_example(s, context)[0],
      num_parallel_calls=tf.data.AUTOTUNE).batch(4096)
  out: Dict[int, str] = {}
  for batch in ds:
    for i, k in zip(batch[schema.CLIP_INDEX_KEY].numpy(),
                    batch[schema.CLIP_KEY_KEY].numpy()):
      if int(i) in out:
        raise ValueError(f'{path!r}: clip index {int(i)} appears twice')
      out[int(i)] = k.decode('utf-8')
  return out


def predict(model: tf_keras.Model,
            strategy: tf.distribute.Strategy,
            dataset_fn: input_pipeline.DatasetFn,
            file_pattern: str,
            output_dir: str,
            *,
            num_classes: int,
            global_batch_size: int,
            top_k: int = 5,
            pad: bool = False) -> List[str]:
  """Writes teacher predictions: one output shard per input shard.

  Each output is `predictions-<i>-of-<n>.tfrecord` for input shard i of n
  (sorted), its clips in clip-index order and deterministically serialised
  (the same bytes from every run), written under a temporary name and
  renamed, so a finished shard is never partial and a rerun skips it. Every shard's output is checked to
  hold each clip of the input exactly once before it is renamed. With
  several workers, worker w takes shards w, w + W, ...; within a worker the
  batch is split over its replicas. `pad` gives static-shape batches
  (`pad_batches`), as a TPU needs. The worker that finds every shard
  written writes `summary.json`, the completion record
  (`tfrecords_tools.completion`); prediction shards of another shard count
  are deleted when the run starts.

  Returns:
    The output paths this worker wrote (skipped ones excluded).
  """
  loop_lib.check_positive(global_batch_size=global_batch_size, top_k=top_k)
  files = loop_lib.list_files(file_pattern, 'predict_file_pattern')
  evaluation.average_replica_statistics(model)
  worker, num_workers = loop_lib.worker_info(strategy)
  k = min(top_k, num_classes)
  names = [schema.shard_name(i, len(files), prefix=PREDICTIONS_PREFIX)
           for i in range(len(files))]
  completion.begin(output_dir, JOB, outputs=names,
                   concurrent_writers=num_workers > 1)

  def replica_fn(inputs):
    inputs = input_pipeline.finish_features(inputs)
    video = inputs[input_pipeline.VIDEO]
    num_views = video.shape[1]
    flat = tf.reshape(video, tf.concat([[-1], tf.shape(video)[2:]], 0))
    probs = metrics.average_views(
        tf.cast(model(flat, training=False), tf.float32), num_views)
    scores, classes = tf.math.top_k(probs, k=k)
    return (inputs[input_pipeline.CLIP_INDEX], classes, scores,
            inputs[evaluation.VALID])

  if num_workers == 1:
    @tf.function(reduce_retracing=True)
    def step(inputs):
      return metrics.gather_across_replicas(
          strategy, strategy.run(replica_fn, args=(inputs,)))
  else:
    # Workers hold different shards, so no collective may run: each worker
    # runs its own model (built outside the strategy by `run`) on its own.
    step = tf.function(replica_fn, reduce_retracing=True)

  written = []
  todo = []
  for i in range(worker, len(files), num_workers):
    if tf.io.gfile.exists(os.path.join(output_dir, names[i])):
      logging.info('predict: %s exists, skipped',
                   os.path.join(output_dir, names[i]))
    else:
      todo.append(i)
  progress = progress_lib.ShardProgress('predict', 'clips', len(todo),
                                        worker=worker, num_workers=num_workers)
  for i in todo:
    path = files[i]
    out = os.path.join(output_dir, names[i])
    keys = _clip_keys(path)
    progress.open_shard(path, len(keys))
    ds = dataset_fn(path, is_training=False, batch_size=global_batch_size,
                    input_context=None, num_classes=None, repeat=False,
                    drop_remainder=False).map(predict_features)
    if pad:
      ds = evaluation.pad_batches(ds, global_batch_size)
    if num_workers == 1:
      ds = strategy.experimental_distribute_dataset(ds)
    # Every clip's prediction, written in clip-index order once the shard
    # is done: the file is the same bytes whatever order the pipeline gave.
    predicted = {}
    for inputs in ds:
      idx, classes, scores, valid = (t.numpy() for t in step(inputs))
      valid = valid.astype(bool)
      if not valid.any():
        break  # Only padding is left (`pad_batches`).
      for c, cls, sc in zip(idx[valid], classes[valid], scores[valid]):
        c = int(c)
        if c in predicted or c not in keys:
          raise RuntimeError(f'predict: clip {c} of {path!r} predicted '
                             'twice or unknown')
        predicted[c] = ([int(x) for x in cls], [float(x) for x in sc])
      progress.add(int(valid.sum()))
    missing = sorted(set(keys) - set(predicted))
    if missing:
      raise RuntimeError(f'predict: {len(missing)} clips of {path!r} got '
                         f'no prediction (first: {missing[:5]}); the input '
                         'pipeline skipped records')
    with atomic_files.replacing(out) as tmp, \
        tf.io.TFRecordWriter(tmp) as writer:
      for c in sorted(predicted):
        top_k_index, top_k_score = predicted[c]
        writer.write(records.make_prediction_example(
            clip_index=c, clip_key=keys[c], num_classes=num_classes,
            top_k_index=top_k_index,
            top_k_score=top_k_score).SerializeToString(deterministic=True))
    written.append(out)
    progress.shard_done()
    logging.info('predict: wrote %d clips to %s', len(predicted), out)
  progress.finish()
  # The last worker to finish sees every shard (a finished worker's shards
  # are renamed into place before it looks).
  if completion.outputs_complete(output_dir, names):
    completion.finish(output_dir, schema.SUMMARY_FILENAME,
                      {'inputs': files, 'num_classes': num_classes,
                       'top_k': k}, names, job=JOB)
  return written
