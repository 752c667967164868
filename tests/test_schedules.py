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


@pytest.mark.parametrize('warmup,total,start', [
    (0, 1, 0.0),   # the shortest run: one step at the peak, then the end
    (1, 10, 0.1),  # one warmup step trains at exactly the start rate
    (1, 10, 0.0),  # ... or at the peak when warming up from zero
    (5, 6, 0.1),   # a one-step cosine reaches the end rate at `total`
    (6, 6, 0.1),   # no cosine at all: the end rate right after the warmup
    (4, 10, 0.8),  # a warmup start equal to the peak: a flat warmup
])
def test_edge_lengths_match_the_formula(warmup, total, start):
  """Protects the boundary cases of the step counts and the warmup start."""
  schedule = optimization.WarmupCosineDecay(
      0.8, warmup, total, end_learning_rate=0.05, warmup_start=start)
  steps = range(0, total + 3)
  want = np.array([_reference(s, peak=0.8, warmup=warmup, total=total,
                              end=0.05, start=start) for s in steps])
  np.testing.assert_allclose(_rates(schedule, steps), want, rtol=1e-6,
                             atol=1e-7)
  assert float(schedule(total + 1)) == pytest.approx(0.05, rel=1e-6)
  if warmup:
    assert float(schedule(0)) == pytest.approx(start or 0.8 / warmup,
                                               rel=1e-6)


def test_warmup_cosine_decay_defaults_warm_up_from_and_decay_to_zero():
  """Without the optional rates: warmup from zero, cosine down to zero."""
  schedule = optimization.WarmupCosineDecay(0.8, 4, 20)
  steps = range(0, 23)
  want = np.array([_reference(s, peak=0.8, warmup=4, total=20, end=0.0,
                              start=0.0) for s in steps])
  np.testing.assert_allclose(_rates(schedule, steps), want, rtol=1e-6,
                             atol=1e-7)


def test_warmup_cosine_decay_refuses_bad_arguments():
  """Protects the limits: peak > 0, total >= 1, warmup in [0, total]."""
  with pytest.raises(ValueError, match='peak_learning_rate'):
    optimization.WarmupCosineDecay(0.0, 0, 10)
  with pytest.raises(ValueError, match='total_steps'):
    optimization.WarmupCosineDecay(0.8, 0, 0)
  with pytest.raises(ValueError, match='warmup_steps'):
    optimization.WarmupCosineDecay(0.8, 11, 10)
  with pytest.raises(ValueError, match='warmup_start'):
    optimization.WarmupCosineDecay(0.8, 4, 10, warmup_start=0.81)


def test_build_defaults_are_goyal_linear_scaling_without_warmup():
  """The defaults: Goyal et al.'s 0.1 per 256 clips, no warmup, decay to 0."""
  # Goyal et al. 2017: lr = 0.1 * batch / 256; a batch of 512 peaks at 0.2.
  # No warmup unless asked (SoccerNet fine-tuning: "learning rate of 0.005
  # for 20 epochs" from the first step); the cosine decays to zero.
  kwargs = dict(global_batch_size=512, steps_per_epoch=3, total_steps=12)
  schedule = optimization.build_learning_rate(**kwargs)
  explicit = optimization.build_learning_rate(
      base_learning_rate=0.1, base_batch_size=256, warmup_epochs=0,
      warmup_learning_rate=0.0, end_learning_rate=0.0, constant=False,
      **kwargs)
  steps = range(0, 14)
  want = np.array([_reference(s, peak=0.1 * 512 / 256, warmup=0, total=12,
                              end=0.0, start=0.0) for s in steps])
  np.testing.assert_allclose(_rates(schedule, steps), want, rtol=1e-6,
                             atol=1e-7)
  np.testing.assert_allclose(_rates(explicit, steps), want, rtol=1e-6,
                             atol=1e-7)


def test_build_accepts_batches_and_epochs_of_one_step():
  """Protects the limits: sizes of 1 are valid, 0 warmup epochs too."""
  # Batch 1 at a base of 1 (or 2): the rate as given (or halved); one step
  # per epoch, so one warmup epoch is one step, at the warmup start.
  for base_batch_size, peak in ((1, 0.4), (2, 0.2)):
    schedule = optimization.build_learning_rate(
        base_learning_rate=0.4, global_batch_size=1, steps_per_epoch=1,
        total_steps=6, base_batch_size=base_batch_size, warmup_epochs=1,
        warmup_learning_rate=0.1, end_learning_rate=0.01)
    want = np.array([_reference(s, peak=peak, warmup=1, total=6, end=0.01,
                                start=0.1 * peak / 0.4) for s in range(8)])
    np.testing.assert_allclose(_rates(schedule, range(8)), want, rtol=1e-6,
                               atol=1e-7)
  no_warmup = optimization.build_learning_rate(
      base_learning_rate=0.4, global_batch_size=8, steps_per_epoch=2,
      total_steps=6, base_batch_size=8, warmup_epochs=0,
      end_learning_rate=0.01)
  want = np.array([_reference(s, peak=0.4, warmup=0, total=6, end=0.01,
                              start=0.0) for s in range(8)])
  np.testing.assert_allclose(_rates(no_warmup, range(8)), want, rtol=1e-6,
                             atol=1e-7)


@pytest.mark.parametrize('name,value', [
    ('global_batch_size', 0), ('steps_per_epoch', 0), ('base_batch_size', 0),
    ('warmup_epochs', -1)])
def test_build_refuses_bad_sizes_naming_the_argument(name, value):
  """Protects the > 0 checks and that the error names the bad argument."""
  kwargs = dict(base_learning_rate=0.1, global_batch_size=8,
                steps_per_epoch=2, total_steps=10, base_batch_size=8)
  kwargs[name] = value
  with pytest.raises(ValueError, match=f'`{name}` must be'):
    optimization.build_learning_rate(**kwargs)
