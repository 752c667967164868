"""Evaluation of a classifier over every record once (`evaluate`).

Under any strategy: views averaged per clip, predictions gathered from every
replica and grouped per video (`spl.metrics`), static-shape batches where
TPUs need them (`pad_batches`). Used by SPL's training task and
`spl.main --mode=eval`; `spl.prediction` and CPD's validation reuse its
batch padding and replica statistics.

Progress (`tfrecords_tools.progress`, INFO): after the first batch and then
every 10 s, clips done, clips/s and, when the records' `summary.json` gives
their count (every shard of the writer's or relabeller's directory matched),
the total and an ETA; the evaluation ends with its counters.
"""

from typing import Any, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from spl import input_pipeline
from spl import loop as loop_lib
from spl import metrics
from tfrecords_tools import completion
from tfrecords_tools import file_patterns
from tfrecords_tools import progress as progress_lib

EVAL_DETAILS_FILENAME = 'eval_details.json'

# Only these features go to the replicas: strings cannot go to a TPU, and
# every extra tensor costs a host-to-device copy per step.
_VIDEO_HASH = 'video_id_hash'
# 1 for real records, 0 for the padding of `pad_batches` (int32: all-gathers
# take no bool).
VALID = 'valid'


def eval_features(element):
  label = element[input_pipeline.LABEL]
  return {**input_pipeline.video_features(element),
          input_pipeline.LABEL: label,
          _VIDEO_HASH: tf.strings.to_hash_bucket_fast(
              element[input_pipeline.VIDEO_ID], 2**62),
          VALID: tf.ones_like(label, tf.int32)}


def pad_batches(dataset: tf.data.Dataset,
                batch_size: int) -> tf.data.Dataset:
  """Static-shape batches: the last one padded, then padding forever.

  TPUs compile one program per input shape, so an evaluation that must see
  every record cannot drop the last partial batch and cannot let it change
  shape either. Every batch is padded to `batch_size` with zero examples
  whose `VALID` is 0, and all-padding batches follow without end, so
  every replica of every host gets a full batch at every step however the
  records are split over input pipelines. The caller stops at the first step
  in which no replica holds a real record (decided on the all-gathered mask,
  so all hosts stop together) and drops padding before any metric or output.

  Args:
    dataset: Batches of dicts that carry `VALID` ([batch] int32).
    batch_size: The batch size of `dataset`.

  Returns:
    An infinite dataset of batches with static leading dimension.
  """
  def pad(batch):
    missing = batch_size - tf.shape(batch[VALID])[0]

    def pad_one(t):
      t = tf.pad(t, [[0, missing]] + [[0, 0]] * (t.shape.rank - 1))
      return tf.ensure_shape(t, [batch_size] + t.shape.as_list()[1:])
    return tf.nest.map_structure(pad_one, batch)

  padded = dataset.map(pad)
  dummy = tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype),
                                padded.element_spec)
  return padded.concatenate(tf.data.Dataset.from_tensors(dummy).repeat())


def expected_records(file_pattern: str) -> Optional[int]:
  """The records `file_pattern` matches, from their directories' summaries
  (`tfrecords_tools.completion.record_count`); None when not known."""
  try:
    files = file_patterns.match(file_pattern)
  except (ValueError, tf.errors.OpError):
    return None
  return completion.record_count(files)


def is_tpu(strategy: tf.distribute.Strategy) -> bool:
  return isinstance(strategy, (tf.distribute.TPUStrategy,
                               tf.distribute.experimental.TPUStrategy))


def average_replica_statistics(*modules: tf.Module) -> None:
  """Gives every replica the cross-replica mean of each ON_READ variable.

  Batch-norm moving statistics are ON_READ: each replica updates its own copy
  in training and the checkpoint saves their mean. Evaluating with the local
  copies would make a record's output depend on the replica that runs it, and
  differ from the saved model's; call this (cross-replica context) before an
  evaluation so every replica evaluates the model the checkpoint holds. A
  no-op with one replica.
  """
  for module in modules:
    for v in module.variables:
      if v.synchronization == tf.VariableSynchronization.ON_READ:
        v.assign(v.read_value())


def evaluate(model: tf_keras.Model,
             strategy: tf.distribute.Strategy,
             dataset_fn: input_pipeline.DatasetFn,
             file_pattern: str,
             *,
             num_classes: int,
             global_batch_size: int,
             top_k: Sequence[int] = (1, 5),
             background_class: Optional[int] = None,
             pad: bool = False) -> Dict[str, Any]:
  """Evaluates `model` on every record of `file_pattern` exactly once.

  Args:
    model: Classifier built under `strategy.scope()`.
    strategy: The run's strategy.
    dataset_fn: `input_pipeline.make_dataset`-like callable.
    file_pattern: Eval records.
    num_classes: Classifier width.
    global_batch_size: Records per step summed over replicas.
    top_k: Accuracies to report.
    background_class: Class left out of `map` (SoccerNet).
    pad: Static-shape batches (`pad_batches`), as a TPU needs.

  Returns:
    `metrics.classification_metrics` of the whole set.
  """
  loop_lib.check_positive(global_batch_size=global_batch_size)
  average_replica_statistics(model)

  def make(ctx: tf.distribute.InputContext):
    batch_size = ctx.get_per_replica_batch_size(global_batch_size)
    ds = dataset_fn(
        file_pattern, is_training=False, batch_size=batch_size,
        input_context=ctx, num_classes=num_classes, repeat=False,
        drop_remainder=False).map(eval_features)
    return pad_batches(ds, batch_size) if pad else ds

  spec_ds = make(tf.distribute.InputContext())
  views_shape = spec_ds.element_spec[input_pipeline.VIDEO].shape
  num_views = views_shape[1]
  if num_views is None:
    raise ValueError(f'eval clips must have a static number of views, got '
                     f'{views_shape}')
  dist = strategy.distribute_datasets_from_function(make)

  def replica_fn(inputs):
    inputs = input_pipeline.finish_features(inputs)
    video = inputs[input_pipeline.VIDEO]
    flat = tf.reshape(video, tf.concat([[-1], tf.shape(video)[2:]], 0))
    logits = tf.cast(model(flat, training=False), tf.float32)
    return (metrics.average_views(logits, num_views),
            inputs[input_pipeline.LABEL], inputs[_VIDEO_HASH], inputs[VALID])

  @tf.function(reduce_retracing=True)
  def step(inputs):
    return metrics.gather_across_replicas(
        strategy, strategy.run(replica_fn, args=(inputs,)))

  progress = progress_lib.Progress(
      'eval', {'clips': expected_records(file_pattern)})
  probs, labels, videos = [], [], []
  for inputs in dist:
    p, l, v, valid = (t.numpy() for t in step(inputs))
    valid = valid.astype(bool)
    if not valid.any():
      break  # Only padding is left (`pad_batches`).
    probs.append(p[valid])
    labels.append(l[valid])
    videos.append(v[valid])
    progress.add(clips=int(valid.sum()))
  progress.finish()
  if not probs:
    raise ValueError(f'eval records {file_pattern!r} gave no batch')
  return metrics.classification_metrics(
      np.concatenate(probs), np.concatenate(labels), np.concatenate(videos),
      num_classes=num_classes, top_k=top_k, background_class=background_class)
