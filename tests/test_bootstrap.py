"""The demos' bootstrap intervals: nominal coverage on planted data."""

import math

import numpy as np
import pytest

from spl import bootstrap
from spl import metrics

REPETITIONS = 400
# Coverage of REPETITIONS independent 95% intervals is Binomial(400, 0.95)/400:
# standard deviation 0.011; 3.5 of them either side.
TOLERANCE = 3.5 * math.sqrt(0.95 * 0.05 / REPETITIONS)


@pytest.mark.parametrize('p,num_videos', [(0.7, 200), (0.5, 300)])
def test_accuracy_interval_covers_the_true_accuracy(p, num_videos):
  rng = np.random.default_rng(1)
  covered = 0
  for r in range(REPETITIONS):
    correct = (rng.random(num_videos) < p).astype(float)
    iv = bootstrap.bootstrap_mean(correct, resamples=1000, seed=r)
    covered += iv.contains(p)
  assert abs(covered / REPETITIONS - 0.95) < TOLERANCE, covered


def _planted_pair(rng, num_videos, p_a=0.7, delta=0.05):
  """Two methods on the same videos: B is A with some correct videos lost.

  Videos differ in difficulty (a latent per video), so the two methods'
  outcomes are strongly correlated; E[a - b] = delta exactly.
  """
  difficulty = rng.random(num_videos)
  a = (difficulty < p_a).astype(float)
  lost = rng.random(num_videos) < delta / p_a
  b = a * (1 - lost)
  return a, b


def test_paired_interval_covers_the_true_difference():
  rng = np.random.default_rng(2)
  covered = 0
  for r in range(REPETITIONS):
    a, b = _planted_pair(rng, 250)
    covered += bootstrap.paired_difference(a, b, resamples=1000,
                                           seed=r).contains(0.05)
  assert abs(covered / REPETITIONS - 0.95) < TOLERANCE, covered


def test_paired_interval_is_narrower_than_unpaired_on_correlated_data():
  rng = np.random.default_rng(3)
  a, b = _planted_pair(rng, 250)
  paired = bootstrap.paired_difference(a, b, seed=0)
  ia, ib = (bootstrap.bootstrap_mean(x, seed=s) for s, x in ((1, a), (2, b)))
  # Independent resampling of the two methods (what ignoring the pairing
  # amounts to).
  draws = rng.integers(0, len(a), (2000, len(a)))
  draws_b = rng.integers(0, len(a), (2000, len(a)))
  unpaired = a[draws].mean(1) - b[draws_b].mean(1)
  unpaired_width = np.subtract(*np.quantile(unpaired, [0.975, 0.025]))
  assert paired.high - paired.low < 0.6 * unpaired_width
  assert paired.high - paired.low < 0.6 * math.hypot(ia.high - ia.low,
                                                     ib.high - ib.low)
  assert paired.low > 0  # The planted +5 points are resolved.


def test_estimates_are_float64_means():
  rng = np.random.default_rng(4)
  a = rng.random((3, 201)).astype(np.float32)
  b = rng.random((3, 201)).astype(np.float32)
  ref_a = math.fsum(float(x) for x in a.ravel()) / a.size
  ref_d = math.fsum(float(x) - float(y) for x, y in zip(a.ravel(),
                                                         b.ravel())) / a.size
  assert bootstrap.bootstrap_mean(a).estimate == pytest.approx(ref_a,
                                                               abs=1e-15)
  assert bootstrap.paired_difference(a, b).estimate == pytest.approx(
      ref_d, abs=1e-15)


def test_seeded_and_contains_its_estimate():
  x = np.random.default_rng(5).random(120)
  one = bootstrap.bootstrap_mean(x, seed=7)
  assert one == bootstrap.bootstrap_mean(x, seed=7)
  assert one != bootstrap.bootstrap_mean(x, seed=8)
  assert one.contains(one.estimate)
  assert one.resamples == bootstrap.RESAMPLES and one.confidence == 0.95


def test_seed_rows():
  """Identical seeds: the two-level bootstrap adds nothing; differing seeds
  widen it."""
  rng = np.random.default_rng(6)
  row = (rng.random(200) < 0.6).astype(float)
  same = np.stack([row] * 3)
  assert bootstrap.bootstrap_mean(same, resample_seeds=True, seed=1) == (
      bootstrap.bootstrap_mean(row, seed=1))
  spread = np.stack([row, (rng.random(200) < 0.3).astype(float),
                     (rng.random(200) < 0.9).astype(float)])
  videos_only = bootstrap.bootstrap_mean(spread, seed=1)
  both = bootstrap.bootstrap_mean(spread, seed=1, resample_seeds=True)
  assert both.estimate == videos_only.estimate == pytest.approx(spread.mean())
  assert both.high - both.low > 2 * (videos_only.high - videos_only.low)


def test_video_correct_is_the_evaluations_video_top1():
  rng = np.random.default_rng(7)
  num_videos, clips, classes = 40, 3, 5
  labels_v = rng.integers(0, classes, num_videos)
  ids = np.repeat([f'v{i:03d}' for i in range(num_videos)], clips)
  labels = np.repeat(labels_v, clips)
  probs = rng.dirichlet(np.ones(classes), num_videos * clips)
  shuffle = rng.permutation(len(ids))
  correct, names, vlabels = bootstrap.video_correct(
      probs[shuffle], labels[shuffle], ids[shuffle])
  assert list(names) == sorted(set(ids))
  np.testing.assert_array_equal(vlabels, labels_v)
  hashes = np.unique(ids, return_inverse=True)[1]
  expected = metrics.classification_metrics(
      probs, labels, hashes, num_classes=classes, top_k=(1,))['video/top_1']
  assert correct.mean() == pytest.approx(expected)
  for v in range(num_videos):
    mean = probs[v * clips:(v + 1) * clips].mean(0)
    assert correct[v] == float(mean.argmax() == labels_v[v])


def test_verdicts():
  def iv(lo, hi):
    return bootstrap.Interval(0.5 * (lo + hi), lo, hi, 0.95, 10)

  assert bootstrap.verdict(iv(0.01, 0.05), 1) == bootstrap.HELD
  assert bootstrap.verdict(iv(-0.05, -0.01), -1) == bootstrap.HELD
  assert bootstrap.verdict(iv(-0.05, -0.01), 1) == bootstrap.REVERSED
  assert bootstrap.verdict(iv(-0.01, 0.05), 1) == bootstrap.NOT_RESOLVED
  assert bootstrap.verdict(iv(-0.01, 0.05), 0) == bootstrap.CONSISTENT
  assert bootstrap.verdict(iv(0.01, 0.05), 0) == bootstrap.DIFFERS
  assert bootstrap.format_interval(iv(0.01, 0.05), signed=True) == (
      '+3.0 [+1.0, +5.0]')


def test_bad_arguments_named():
  with pytest.raises(ValueError, match='confidence'):
    bootstrap.bootstrap_mean([1.0, 0.0], confidence=1.0)
  with pytest.raises(ValueError, match='resamples'):
    bootstrap.bootstrap_mean([1.0, 0.0], resamples=0)
  with pytest.raises(ValueError, match='one shape'):
    bootstrap.paired_difference([1.0, 0.0], [1.0])
  with pytest.raises(ValueError, match='scores'):
    bootstrap.bootstrap_mean([])
  with pytest.raises(ValueError, match='non-finite'):
    bootstrap.bootstrap_mean([1.0, float('nan')])
  with pytest.raises(ValueError, match='expected_sign'):
    bootstrap.verdict(bootstrap.Interval(0, 0, 0, 0.95, 1), 2)
