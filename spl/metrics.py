"""Evaluation metrics: clip/video top-k, mAP, per-class accuracy, confusion.

Evaluation is split in two phases so that it is exact under any strategy:

1. in the graph, per replica: multi-view logits -> per-record probabilities
   (`average_views`), then `gather_across_replicas` brings every record's
   probabilities, label and video id to every host (an all-gather, so uneven
   last batches and several hosts are counted exactly once);
2. on the host, in numpy: `classification_metrics` over the whole eval set.
   Video-level numbers average the probabilities of all records of a video,
   which a running per-replica mean could not do (a video's clips land on
   different replicas).

An eval set of 50k records x 700 classes is 140 MB of float32: host memory
is not the constraint, and exact numbers matter more than a streaming mean.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf


def average_views(logits: tf.Tensor, num_views: int) -> tf.Tensor:
  """Softmax probabilities averaged over the views of each record.

  Args:
    logits: float32 [B * num_views, C], the views of a record consecutive.
    num_views: Views (clips x crops) per record.

  Returns:
    float32 [B, C].
  """
  if num_views <= 0:
    raise ValueError(f'`num_views` must be > 0, got {num_views}')
  probs = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
  probs = tf.reshape(probs, [-1, num_views, tf.shape(probs)[-1]])
  return tf.reduce_mean(probs, axis=1)


def gather_across_replicas(strategy: tf.distribute.Strategy,
                           per_replica: Any) -> Any:
  """Concatenates per-replica tensors along axis 0 over all replicas/hosts.

  Call in cross-replica context on the output of `strategy.run`. With one
  replica this is the identity, so single-device code pays nothing.
  """
  if strategy.num_replicas_in_sync == 1:
    return tf.nest.map_structure(
        lambda t: strategy.experimental_local_results(t)[0], per_replica)
  return tf.nest.map_structure(
      lambda t: strategy.gather(t, axis=0), per_replica)


def top_k_correct(probs: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
  """Boolean [N]: is the label among the k highest probabilities."""
  k = min(k, probs.shape[1])
  top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
  return (top == labels[:, None]).any(axis=1)


def average_by_video(probs: np.ndarray, labels: np.ndarray,
                     video_ids: np.ndarray):
  """Mean probabilities of the records of each (video, label).

  A video whose records carry different labels (clips of one web video can
  be relabelled differently by SPL) counts once per label, never with a label
  that some of its clips do not have.

  Returns:
    (probs [V, C], labels [V]); groups in order of first appearance.
  """
  keys = np.stack([np.asarray(video_ids).astype(np.int64),
                   labels.astype(np.int64)], axis=1)
  _, first, inverse = np.unique(keys, axis=0, return_index=True,
                                return_inverse=True)
  inverse = inverse.reshape(-1)
  num_videos = len(first)
  sums = np.zeros((num_videos, probs.shape[1]), np.float64)
  np.add.at(sums, inverse, probs)
  counts = np.bincount(inverse, minlength=num_videos)
  order = np.argsort(first)
  return ((sums / counts[:, None])[order].astype(np.float32),
          labels[first][order])


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
  """Non-interpolated AP of one class (mean precision at each positive)."""
  num_pos = int(positives.sum())
  if num_pos == 0:
    return float('nan')
  order = np.argsort(-scores, kind='stable')
  hits = positives[order].astype(np.float64)
  precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
  return float((precision * hits).sum() / num_pos)


def mean_average_precision(probs: np.ndarray, labels: np.ndarray, *,
                           background_class: Optional[int] = None) -> float:
  """mAP over the classes that have positives, optionally without background.

  SoccerNet reports mAP without its background class, which would otherwise
  dominate (most clips are background and it is easy).
  """
  num_classes = probs.shape[1]
  if background_class is not None and not 0 <= background_class < num_classes:
    raise ValueError(f'`background_class` must be in [0, {num_classes}), '
                     f'got {background_class}')
  aps = []
  for c in range(num_classes):
    if c == background_class:
      continue
    ap = average_precision(probs[:, c], labels == c)
    if not np.isnan(ap):
      aps.append(ap)
  return float(np.mean(aps)) if aps else float('nan')


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray,
                     num_classes: int) -> np.ndarray:
  """int64 [C, C], rows true class, columns predicted class."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
  return matrix


def classification_metrics(probs: np.ndarray,
                           labels: np.ndarray,
                           video_ids: Optional[np.ndarray] = None,
                           *,
                           num_classes: int,
                           top_k: Sequence[int] = (1, 5),
                           background_class: Optional[int] = None
                           ) -> Dict[str, Any]:
  """All eval numbers of one eval set.

  Args:
    probs: float [N, C] per-record probabilities (views already averaged).
    labels: int [N].
    video_ids: int [N] video id (hashes), for video-level numbers; None skips
      them.
    num_classes: C, checked against `probs`.
    top_k: The k of the top-k accuracies.
    background_class: Excluded from `map` (also reported with it as
      `map_all`).

  Returns:
    Dict of floats (`clip/top_1`, `video/top_1`, `map`, `loss`: the mean
    cross-entropy of the records' probabilities, ...), plus
    `per_class_accuracy` (list, NaN for classes without records) and
    `confusion_matrix` (nested list) and `num_clips` / `num_videos`.
  """
  probs = np.asarray(probs, np.float32)
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  if probs.ndim != 2 or probs.shape[1] != num_classes:
    raise ValueError(f'`probs` must be [N, {num_classes}], got {probs.shape}')
  if len(labels) != len(probs):
    raise ValueError(f'`labels` has {len(labels)} entries, `probs` '
                     f'{len(probs)}')
  if len(labels) == 0:
    raise ValueError('no records to evaluate')
  if labels.min() < 0 or labels.max() >= num_classes:
    raise ValueError(f'labels must be in [0, {num_classes}), got '
                     f'[{labels.min()}, {labels.max()}]')
  out: Dict[str, Any] = {'num_clips': int(len(labels))}
  # The validation loss a plateau schedule can watch (CPD fine-tuning).
  true_probs = probs[np.arange(len(labels)), labels].astype(np.float64)
  out['loss'] = float(-np.log(np.maximum(true_probs, 1e-12)).mean())
  for k in top_k:
    out[f'clip/top_{k}'] = float(top_k_correct(probs, labels, k).mean())
  if video_ids is not None:
    vprobs, vlabels = average_by_video(probs, labels, np.asarray(video_ids))
    out['num_videos'] = int(len(vlabels))
    for k in top_k:
      out[f'video/top_{k}'] = float(top_k_correct(vprobs, vlabels, k).mean())
  out['map'] = mean_average_precision(probs, labels,
                                      background_class=background_class)
  if background_class is not None:
    out['map_all'] = mean_average_precision(probs, labels)
  predictions = probs.argmax(axis=1)
  matrix = confusion_matrix(labels, predictions, num_classes)
  support = matrix.sum(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    per_class = np.diag(matrix) / support
  out['mean_class_accuracy'] = float(np.nanmean(per_class))
  out['per_class_accuracy'] = [None if np.isnan(a) else float(a)
                               for a in per_class]
  out['confusion_matrix'] = matrix.tolist()
  return out
