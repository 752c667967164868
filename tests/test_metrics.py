"""Tests of spl.metrics: numpy metrics and the cross-replica gather."""

import numpy as np
import pytest
import tensorflow as tf

from spl import metrics
from tests import distribute_utils

_mirrored = distribute_utils.mirrored_strategy


def _brute_force_ap(scores, positives):
  order = sorted(range(len(scores)), key=lambda i: -scores[i])
  hits, total = 0, 0.0
  for rank, i in enumerate(order, 1):
    if positives[i]:
      hits += 1
      total += hits / rank
  return total / max(1, sum(positives))


def test_top_k_and_confusion_matrix():
  probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.1, 0.5, 0.4],
                    [0.5, 0.2, 0.3]], np.float32)
  labels = np.array([0, 2, 2, 1])
  out = metrics.classification_metrics(probs, labels, num_classes=3,
                                       top_k=(1, 2))
  assert out['clip/top_1'] == pytest.approx(0.5)
  assert out['clip/top_2'] == pytest.approx(0.75)
  np.testing.assert_array_equal(out['confusion_matrix'],
                                [[1, 0, 0], [1, 0, 0], [0, 1, 1]])
  assert out['per_class_accuracy'] == [1.0, 0.0, 0.5]
  assert out['mean_class_accuracy'] == pytest.approx(0.5)


def test_per_class_accuracy_is_none_for_absent_class():
  probs = np.eye(3, dtype=np.float32)[[0, 1]]
  out = metrics.classification_metrics(probs, np.array([0, 1]), num_classes=3)
  assert out['per_class_accuracy'] == [1.0, 1.0, None]


def test_video_level_averages_clips_of_a_video():
  # Video 7: two clips, one wrong, but the average is right.
  probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]], np.float32)
  labels = np.array([0, 0, 1])
  videos = np.array([7, 7, 9])
  out = metrics.classification_metrics(probs, labels, videos, num_classes=2,
                                       top_k=(1,))
  assert out['clip/top_1'] == pytest.approx(2 / 3)
  assert out['video/top_1'] == pytest.approx(1.0)
  assert out['num_videos'] == 2


def test_average_by_video_splits_a_video_with_two_labels():
  probs = np.array([[0.9, 0.1], [0.4, 0.6]], np.float32)
  vprobs, vlabels = metrics.average_by_video(probs, np.array([0, 1]),
                                             np.array([3, 3]))
  np.testing.assert_array_equal(vlabels, [0, 1])
  np.testing.assert_allclose(vprobs, probs)


def test_map_matches_brute_force_and_excludes_background():
  rng = np.random.default_rng(0)
  probs = rng.random((40, 4)).astype(np.float32)
  labels = rng.integers(0, 4, 40)
  aps = [_brute_force_ap(probs[:, c], labels == c) for c in range(4)]
  assert metrics.mean_average_precision(probs, labels) == pytest.approx(
      np.mean(aps))
  assert metrics.mean_average_precision(
      probs, labels, background_class=0) == pytest.approx(np.mean(aps[1:]))
  out = metrics.classification_metrics(probs, labels, num_classes=4,
                                       background_class=0)
  assert out['map'] == pytest.approx(np.mean(aps[1:]))
  assert out['map_all'] == pytest.approx(np.mean(aps))


def test_perfect_ranking_has_map_one():
  probs = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
  assert metrics.mean_average_precision(probs, np.array([0, 1, 2, 0])) == 1.0


@pytest.mark.parametrize('kwargs,match', [
    (dict(num_classes=4), r'\[N, 4\]'),
    (dict(num_classes=2, labels=np.array([0, 5])), 'labels must be'),
])
def test_classification_metrics_rejects_bad_input(kwargs, match):
  labels = kwargs.pop('labels', np.array([0, 1]))
  with pytest.raises(ValueError, match=match):
    metrics.classification_metrics(np.full((2, 2), 0.5, np.float32), labels,
                                   **kwargs)


def test_average_views_means_probabilities_per_record():
  logits = tf.constant([[0.0, 10.0], [10.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
  got = metrics.average_views(logits, 2).numpy()
  np.testing.assert_allclose(got, [[0.5, 0.5], [0.5, 0.5]], atol=1e-4)


def test_gather_across_replicas_with_uneven_batches(logical_cpus):
  strategy = _mirrored(logical_cpus[:2])
  # 5 records over 2 replicas: the last step has a partial batch.
  ds = tf.data.Dataset.range(5).batch(4)
  dist = strategy.experimental_distribute_dataset(ds)

  @tf.function
  def step(x):
    return metrics.gather_across_replicas(
        strategy, strategy.run(lambda v: v * 10, args=(x,)))

  got = np.concatenate([step(x).numpy() for x in dist])
  np.testing.assert_array_equal(np.sort(got), [0, 10, 20, 30, 40])


def test_loss_is_the_mean_cross_entropy_of_the_records():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(9, 4))
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  labels = rng.integers(0, 4, size=9)
  expected = np.mean([-np.log(probs[i, labels[i]]) for i in range(9)])
  out = metrics.classification_metrics(probs, labels, num_classes=4)
  assert out['loss'] == pytest.approx(expected, rel=1e-6)
