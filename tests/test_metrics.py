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
  # Video A: two clips around one of video B, one wrong, but the average is
  # right. Hash-like ids, B's below A's: not in id order.
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]], np.float32)
  labels = np.array([0, 1, 0])
  videos = np.array([2**61 + 977, 2**58 + 13, 2**61 + 977], np.int64)
  out = metrics.classification_metrics(probs, labels, videos, num_classes=2,
                                       top_k=(1,))
  assert out['clip/top_1'] == pytest.approx(2 / 3)
  assert out['video/top_1'] == pytest.approx(1.0)
  assert out['num_videos'] == 2


def test_average_by_video_splits_a_video_with_two_labels():
  probs = np.array([[0.9, 0.1], [0.4, 0.6]], np.float32)
  vprobs, vlabels = metrics.average_by_video(probs, np.array([1, 0]),
                                             np.array([2**62 - 3] * 2))
  np.testing.assert_array_equal(vlabels, [1, 0])
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


# ---- Video-level aggregation on ids like the trainer's (hashes) ----


def _hashed_video_clips():
  """Clips of 6 videos with hash-like ids, the clips of a video scattered.

  Video v has label `labels[v]` and mean probabilities `means[v]` (its label
  on top); each of its clips is `means[v]` plus a zero-sum perturbation that
  puts another class on top of some clips. Returns (probs, labels, ids,
  per-video (id, label, mean) in order of first appearance).
  """
  rng = np.random.default_rng(11)
  ids = rng.integers(2**40, 2**62, size=6, dtype=np.int64)
  # Two videos of one label with ids one apart: equal as float64, distinct
  # as the int64 hashes are.
  ids[1] = ids[0] ^ 1
  assert float(ids[1]) == float(ids[0])
  labels = np.array([3, 3, 2, 1, 0, 2])
  means = np.full((6, 4), 0.1)
  for v, y in enumerate(labels):
    means[v, y] = 0.4
    means[v, (y + 1 + v % 3) % 4] = 0.3
  clips_per_video = [3, 2, 2, 3, 1, 2]
  rows = []
  for v, n in enumerate(clips_per_video):
    bumps = np.zeros((n, 4))
    if n > 1:  # Clip 0 favours another class, the others make up for it.
      wrong = (labels[v] + 1 + v % 3) % 4
      bumps[0, wrong], bumps[0, labels[v]] = 0.2, -0.2
      bumps[1:, wrong] -= 0.2 / (n - 1)
      bumps[1:, labels[v]] += 0.2 / (n - 1)
    rows += [(v, means[v] + b) for b in bumps]
  order = rng.permutation(len(rows))
  rows = [rows[i] for i in order]
  video = np.array([v for v, _ in rows])
  probs = np.array([p for _, p in rows], np.float32)
  # Not contiguous: some video's clips are interleaved with another's.
  assert any(len(set(video[i:i + 2])) == 2 and video[i] == video[i + 2]
             for i in range(len(video) - 2))
  seen = list(dict.fromkeys(video.tolist()))
  assert seen != sorted(seen, key=lambda v: ids[v])  # Not in id order.
  return (probs, labels[video], ids[video],
          [(ids[v], labels[v], means[v]) for v in seen])


def test_average_by_video_pairs_each_video_with_its_own_label():
  probs, labels, ids, videos = _hashed_video_clips()
  vprobs, vlabels = metrics.average_by_video(probs, labels, ids)
  np.testing.assert_array_equal(vlabels, [y for _, y, _ in videos])
  np.testing.assert_allclose(vprobs, [m for _, _, m in videos], atol=1e-6)


def test_video_top_k_on_hashed_shuffled_ids():
  probs, labels, ids, _ = _hashed_video_clips()
  out = metrics.classification_metrics(probs, labels, ids, num_classes=4,
                                       top_k=(1, 2))
  # Every video's mean has its label on top; 8 of the 13 clips do.
  assert out['num_videos'] == 6
  assert out['video/top_1'] == 1.0
  assert out['video/top_2'] == 1.0
  assert out['clip/top_1'] == pytest.approx(8 / 13)


def test_video_with_two_labels_is_split_on_hashed_ids():
  # One video's clips relabelled two ways, between the clips of another.
  ids = np.array([2**61 + 5, 2**60 + 3, 2**61 + 5, 2**61 + 5], np.int64)
  labels = np.array([1, 0, 2, 1])
  probs = np.array([[0.1, 0.6, 0.3], [0.7, 0.2, 0.1], [0.2, 0.1, 0.7],
                    [0.3, 0.4, 0.3]], np.float32)
  vprobs, vlabels = metrics.average_by_video(probs, labels, ids)
  np.testing.assert_array_equal(vlabels, [1, 0, 2])
  np.testing.assert_allclose(
      vprobs, [(probs[0] + probs[3]) / 2, probs[1], probs[2]], atol=1e-7)


# ---- Top-k edges ----


def test_top_k_with_k_at_or_beyond_the_number_of_classes():
  # Record 0's label has the lowest probability: only k >= C finds it.
  probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.7, 0.2], [0.3, 0.5, 0.2]],
                   np.float32)
  labels = np.array([2, 1, 0])
  ids = np.array([2**61 + 9, 2**59 + 1, 2**61 + 9], np.int64)
  for k, want in ((2, [False, True, True]), (3, [True] * 3),
                  (4, [True] * 3), (10, [True] * 3)):
    np.testing.assert_array_equal(
        metrics.top_k_correct(probs, labels, k), want, err_msg=f'k={k}')
  out = metrics.classification_metrics(probs, labels, ids, num_classes=3,
                                       top_k=(1, 2, 3, 5))
  assert out['clip/top_2'] == pytest.approx(2 / 3)
  assert out['clip/top_3'] == 1.0 and out['clip/top_5'] == 1.0
  assert out['video/top_3'] == 1.0 and out['video/top_5'] == 1.0


def test_average_views_is_the_mean_of_softmaxes_not_of_logits():
  # Asymmetric views: averaging logits (or views of another record) differs.
  logits = np.array([[2.0, 0.0, -1.0], [-1.0, 1.0, 0.5], [0.3, 3.0, 0.0],
                     [0.0, 0.0, 4.0], [1.0, -2.0, 0.0], [0.5, 0.5, 2.5]])
  softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  want = softmax.reshape(2, 3, 3).mean(1)  # 2 records of 3 views
  got = metrics.average_views(tf.constant(logits, tf.float32), 3).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_gather_with_one_replica_returns_the_replica_values(logical_cpus):
  """The one-replica shortcut (single-device runs) keeps every record."""
  for strategy in (tf.distribute.get_strategy(), _mirrored(logical_cpus[:1])):
    with strategy.scope():
      @tf.function
      def step(x):
        return metrics.gather_across_replicas(
            strategy, strategy.run(lambda v: {'x': v * 10}, args=(x,)))

      got = step(tf.constant([3, 1, 2]))
    np.testing.assert_array_equal(got['x'].numpy(), [30, 10, 20])


def test_average_views_with_one_view_is_the_softmax():
  logits = np.array([[0.0, 1.0, 3.0], [2.0, -1.0, 0.5]], np.float32)
  want = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  np.testing.assert_allclose(metrics.average_views(logits, 1).numpy(), want,
                             rtol=1e-6)
  with pytest.raises(ValueError, match='num_views'):
    metrics.average_views(logits, 0)


def test_average_precision_of_a_class_with_one_positive():
  # The positive ranked 3rd of 4: precision at its rank is 1/3.
  scores = np.array([0.9, 0.8, 0.7, 0.1])
  assert metrics.average_precision(scores, np.array([0, 0, 1, 0]) == 1) == (
      pytest.approx(1 / 3))
  assert np.isnan(metrics.average_precision(scores, np.zeros(4, bool)))


def test_map_without_any_positive_class_is_nan_and_background_is_checked():
  probs = np.full((2, 3), 1 / 3)
  # Every record is background: no other class has a positive.
  assert np.isnan(metrics.mean_average_precision(
      probs, np.array([2, 2]), background_class=2))
  with pytest.raises(ValueError, match='background_class'):
    metrics.mean_average_precision(probs, np.array([0, 1]), background_class=3)


def test_one_record_and_the_label_range():
  probs = np.array([[0.2, 0.7, 0.1]])
  out = metrics.classification_metrics(probs, [1], [123456789], num_classes=3)
  assert out['num_clips'] == 1 and out['num_videos'] == 1
  assert out['clip/top_1'] == 1.0 and out['video/top_1'] == 1.0
  assert out['confusion_matrix'] == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
  assert all(isinstance(v, int) for row in out['confusion_matrix'] for v in row)
  with pytest.raises(ValueError, match='labels must be in'):
    metrics.classification_metrics(probs, [3], num_classes=3)
  with pytest.raises(ValueError, match='no records'):
    metrics.classification_metrics(np.zeros((0, 3)), [], num_classes=3)


def test_top_k_against_a_full_sort():
  """Top-k from the partition equals the rank of the label in a full sort."""
  rng = np.random.default_rng(11)
  probs = rng.random((400, 60))
  labels = rng.integers(0, 60, size=400)
  ranks = (probs > probs[np.arange(400), labels][:, None]).sum(axis=1)
  for k in (1, 2, 5, 17):
    np.testing.assert_array_equal(metrics.top_k_correct(probs, labels, k),
                                  ranks < k)
