"""Bootstrap confidence intervals over videos for the demos' accuracies.

The demos evaluate every method on the same validation videos, so:

* an accuracy is the mean of per-video scores (1 when the video's clip
  probabilities, averaged, rank its class first: the evaluation's video
  top-1; `video_correct`), and its interval is the percentile bootstrap over
  videos (`bootstrap_mean`);
* a difference between two methods is the mean of per-video differences, and
  its interval resamples the same videos for both (`paired_difference`): a
  video that is hard for one method is usually hard for the other, so the
  paired interval is narrower than two separate ones would suggest.

Scores may come from several training seeds on the same videos ([seeds,
videos]). The estimate is then the mean over seeds and videos; the interval
resamples videos, and with `resample_seeds` also the seeds (a two-level
bootstrap: the seed-to-seed spread of training enters the interval as well).

Percentile bootstrap (Efron & Tibshirani 1993, ch. 13): the interval is the
(1 - c) / 2 and (1 + c) / 2 quantiles of the resampled estimates. Everything
is float64 and seeded: the same inputs and seed give the same interval.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000

HELD = 'held'
REVERSED = 'reversed'
NOT_RESOLVED = 'not resolved'
CONSISTENT = 'consistent'  # The paper reports no difference; none resolved.
DIFFERS = 'differs'  # The paper reports no difference; one is resolved.


@dataclasses.dataclass(frozen=True)
class Interval:
  """A point estimate with its bootstrap confidence interval."""
  estimate: float
  low: float
  high: float
  confidence: float
  resamples: int

  def contains(self, value: float) -> bool:
    return self.low <= value <= self.high

  def as_dict(self) -> Dict[str, float]:
    return dataclasses.asdict(self)


def _check(confidence: float, resamples: int) -> None:
  if not 0.0 < confidence < 1.0:
    raise ValueError(f'`confidence` must be in (0, 1), got {confidence}')
  if resamples < 1:
    raise ValueError(f'`resamples` must be >= 1, got {resamples}')


def _as_matrix(scores, name: str) -> np.ndarray:
  """[videos] or [seeds, videos] -> float64 [seeds, videos]."""
  x = np.asarray(scores, np.float64)
  if x.ndim == 1:
    x = x[None, :]
  if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
    raise ValueError(f'`{name}` must be [videos] or [seeds, videos] with at '
                     f'least one of each, got shape {np.shape(scores)}')
  if not np.isfinite(x).all():
    raise ValueError(f'`{name}` holds a non-finite score')
  return x


def _resampled_means(x: np.ndarray, rng: np.random.Generator, resamples: int,
                     resample_seeds: bool) -> np.ndarray:
  """Means of `resamples` bootstrap draws of the columns (and rows) of x."""
  num_seeds, num_videos = x.shape
  out = np.empty(resamples, np.float64)
  # Chunks keep the [seeds, chunk, videos] gather small.
  chunk = max(1, 2_000_000 // (num_seeds * num_videos))
  for start in range(0, resamples, chunk):
    n = min(chunk, resamples - start)
    videos = rng.integers(0, num_videos, size=(n, num_videos))
    per_seed = x[:, videos].mean(axis=-1)  # [seeds, n]
    if resample_seeds and num_seeds > 1:
      seeds = rng.integers(0, num_seeds, size=(n, num_seeds))
      out[start:start + n] = per_seed[seeds, np.arange(n)[:, None]].mean(
          axis=1)
    else:
      out[start:start + n] = per_seed.mean(axis=0)
  return out


def _interval(estimate: float, draws: np.ndarray, confidence: float
              ) -> Interval:
  alpha = 1.0 - confidence
  low, high = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
  return Interval(float(estimate), float(low), float(high), confidence,
                  int(len(draws)))


def bootstrap_mean(scores, *, confidence: float = CONFIDENCE,
                   resamples: int = RESAMPLES, seed: int = 0,
                   resample_seeds: bool = False) -> Interval:
  """Percentile bootstrap interval of the mean score over videos.

  Args:
    scores: [videos] or [seeds, videos] per-video scores (e.g. 0/1 top-1).
    confidence: Coverage of the interval.
    resamples: Bootstrap draws.
    seed: Seeds the draws.
    resample_seeds: With [seeds, videos], also resample the seeds.

  Returns:
    An `Interval` around the mean of all scores.
  """
  _check(confidence, resamples)
  x = _as_matrix(scores, 'scores')
  rng = np.random.default_rng(seed)
  return _interval(x.mean(), _resampled_means(x, rng, resamples,
                                              resample_seeds), confidence)


def paired_difference(scores_a, scores_b, *, confidence: float = CONFIDENCE,
                      resamples: int = RESAMPLES, seed: int = 0,
                      resample_seeds: bool = False) -> Interval:
  """Paired bootstrap interval of mean(a) - mean(b) on the same videos.

  Both methods were evaluated on the same videos in the same order (and,
  with [seeds, videos], with the same seeds in the same order): each draw
  resamples one set of videos (and seeds) for both.
  """
  _check(confidence, resamples)
  a = _as_matrix(scores_a, 'scores_a')
  b = _as_matrix(scores_b, 'scores_b')
  if a.shape != b.shape:
    raise ValueError(f'paired scores must have one shape, got {a.shape} and '
                     f'{b.shape}')
  d = a - b
  rng = np.random.default_rng(seed)
  return _interval(d.mean(), _resampled_means(d, rng, resamples,
                                              resample_seeds), confidence)


def video_correct(probs, labels, video_ids) -> Tuple[np.ndarray, np.ndarray,
                                                     np.ndarray]:
  """Video top-1 correctness, as the evaluation computes video accuracy.

  Args:
    probs: float [clips, classes] clip probabilities (views averaged).
    labels: int [clips].
    video_ids: [clips] any hashable id per clip (strings are fine).

  Returns:
    (correct float64 [videos] in {0, 1}, the video ids [videos], labels
    [videos]), videos sorted by id: the order every method shares.
  """
  from spl import metrics  # pylint: disable=g-import-not-at-top
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels).astype(np.int64).reshape(-1)
  ids = np.asarray(video_ids)
  if probs.ndim != 2 or len(probs) != len(labels) or len(ids) != len(labels):
    raise ValueError(f'`probs` [clips, classes], `labels` and `video_ids` '
                     f'[clips] must agree, got {probs.shape}, {labels.shape}, '
                     f'{ids.shape}')
  names, index = np.unique(ids, return_inverse=True)
  index = index.reshape(-1)
  # Clips sorted by video: `average_by_video` keeps the order of first
  # appearance, which is then the sorted ids.
  order = np.argsort(index, kind='stable')
  vprobs, vlabels = metrics.average_by_video(probs[order], labels[order],
                                             index[order])
  if len(vlabels) != len(names):
    raise ValueError('a video has clips with different labels')
  correct = metrics.top_k_correct(vprobs, vlabels, 1).astype(np.float64)
  return correct, names, vlabels


def verdict(difference: Interval, expected_sign: int) -> str:
  """Whether a paired difference agrees with the paper's direction.

  Args:
    difference: Interval of (row - reference).
    expected_sign: +1 (the paper has the row above the reference), -1
      (below) or 0 (the paper reports them as comparable).

  Returns:
    HELD / REVERSED / NOT_RESOLVED for a sign, CONSISTENT / DIFFERS for 0.
  """
  if expected_sign not in (-1, 0, 1):
    raise ValueError(f'`expected_sign` must be -1, 0 or 1, got '
                     f'{expected_sign}')
  above, below = difference.low > 0, difference.high < 0
  if expected_sign == 0:
    return DIFFERS if (above or below) else CONSISTENT
  if (above and expected_sign > 0) or (below and expected_sign < 0):
    return HELD
  if above or below:
    return REVERSED
  return NOT_RESOLVED


def format_interval(iv: Optional[Interval], scale: float = 100.0,
                    signed: bool = False) -> str:
  """'62.5 [55.0, 69.5]' (percentage points by default)."""
  if iv is None:
    return '-'
  f = '{:+.1f}' if signed else '{:.1f}'
  return (f.format(scale * iv.estimate) + ' [' + f.format(scale * iv.low) +
          ', ' + f.format(scale * iv.high) + ']')
