"""Learning-rate schedules against float64 references written from the formula.

Every rate here is non-zero at both ends (warmup start, end of the cosine)
and distinct from the others, so a dropped term, a swapped coefficient or a
scaled end rate shows; spl.optimization's docstrings give the formula:

  warmup (s < W): s0 + (peak - s0) * s / W, or peak * (s + 1) / W if s0 = 0
  then:           end + (peak - end) / 2 * (1 + cos(pi * min(1, (s - W) /
                  (T - W))))
"""

import math

import numpy as np
import pytest

from spl import optimization


def _reference(step, *, peak, warmup, total, end, start):
  """The schedule's rate at `step`, float64, from the formula above."""
  if step < warmup:
    if start > 0:
      return start + (peak - start) * step / warmup
    return peak * (step + 1) / warmup
  progress = min(1.0, (step - warmup) / max(total - warmup, 1))
  return end + 0.5 * (peak - end) * (1.0 + math.cos(math.pi * progress))


def _rates(schedule, steps):
  return np.array([float(schedule(s)) for s in steps])


@pytest.mark.parametrize('warmup,start', [(10, 0.1), (10, 0.0), (0, 0.0)])
def test_warmup_cosine_decay_matches_the_formula(warmup, start):
  hp = dict(peak=0.8, warmup=warmup, total=50, end=0.05, start=start)
  schedule = optimization.WarmupCosineDecay(
      0.8, warmup, 50, end_learning_rate=0.05, warmup_start=start)
  steps = range(0, 60)  # past the end too: held at the end rate
  want = np.array([_reference(s, **hp) for s in steps])
  np.testing.assert_allclose(_rates(schedule, steps), want, rtol=1e-6,
                             atol=1e-7)
  assert float(schedule(50)) == pytest.approx(0.05, rel=1e-6)
  assert float(schedule(warmup)) == pytest.approx(0.8, rel=1e-6)


def test_build_scales_peak_and_warmup_start_but_not_the_end_rate():
  # Batch 96 at a base of 64: peak 0.3 * 1.5, warmup start 0.02 * 1.5; the
  # end rate is taken as given. 0.7 epochs of 7 steps: 4.9 -> 5 warmup steps.
  schedule = optimization.build_learning_rate(
      base_learning_rate=0.3, global_batch_size=96, steps_per_epoch=7,
      total_steps=40, base_batch_size=64, warmup_epochs=0.7,
      warmup_learning_rate=0.02, end_learning_rate=0.01)
  steps = range(0, 45)
  want = np.array([_reference(s, peak=0.45, warmup=5, total=40, end=0.01,
                              start=0.03) for s in steps])
  np.testing.assert_allclose(_rates(schedule, steps), want, rtol=1e-6,
                             atol=1e-7)
  # Unscaled (base_batch_size None): the rates as given.
  plain = optimization.build_learning_rate(
      base_learning_rate=0.3, global_batch_size=96, steps_per_epoch=7,
      total_steps=40, base_batch_size=None, warmup_epochs=0.7,
      warmup_learning_rate=0.02, end_learning_rate=0.01)
  want = np.array([_reference(s, peak=0.3, warmup=5, total=40, end=0.01,
                              start=0.02) for s in steps])
  np.testing.assert_allclose(_rates(plain, steps), want, rtol=1e-6, atol=1e-7)


def test_constant_schedule_warms_up_then_holds_the_peak():
  # `constant` ignores the end rate: no decay after the warmup.
  schedule = optimization.build_learning_rate(
      base_learning_rate=0.2, global_batch_size=32, steps_per_epoch=4,
      total_steps=20, base_batch_size=16, warmup_epochs=1,
      warmup_learning_rate=0.05, end_learning_rate=0.01, constant=True)
  want = [0.1 + (0.4 - 0.1) * s / 4 for s in range(4)] + [0.4] * 18
  np.testing.assert_allclose(_rates(schedule, range(22)), want, rtol=1e-6)


def test_warmup_longer_than_training_is_cut_at_the_end():
  # 3 epochs of warmup in 10 steps: the whole run is the warmup ramp from
  # zero, over 10 steps, never the cosine.
  schedule = optimization.build_learning_rate(
      base_learning_rate=0.5, global_batch_size=8, steps_per_epoch=5,
      total_steps=10, base_batch_size=8, warmup_epochs=3,
      end_learning_rate=0.02)
  want = [0.5 * (s + 1) / 10 for s in range(10)]
  np.testing.assert_allclose(_rates(schedule, range(10)), want, rtol=1e-6)
  assert float(schedule(10)) == pytest.approx(0.5, rel=1e-6)
