"""CPD train step and memory bank under MirroredStrategy on logical CPUs.

Every test drives the real step (`cpd.train_step.cpd_train_step`, through
`distribute_utils.CpdStepRun`: linear models, plain SGD) on replicas made of
logical CPUs (see conftest.py). Replicated copies stay bit-identical; sharded
== replicated for the same negatives; one replica == many for the same global
batch (weights, losses, Z, banks: a loss or weight decay not divided by the
number of replicas multiplies the update by it); a resumed run continues
exactly like an uninterrupted one, on the same or another replica count.
"""

import functools

import numpy as np
import pytest

from cpd import nce
from tests import distribute_utils

N, D, M, GLOBAL_B = 64, 8, 16, 8


@functools.lru_cache(maxsize=None)
def _strategy(num):
  """One strategy per device count (see tests/distribute_utils.py)."""
  return distribute_utils.mirrored_strategy([f'/cpu:{i}' for i in range(num)])


def _batch(step, num_rows=N):
  rng = np.random.RandomState(1000 + step)
  v = rng.randn(GLOBAL_B, D).astype(np.float32)
  t = rng.randn(GLOBAL_B, D).astype(np.float32)
  return v, t, rng.permutation(num_rows)[:GLOBAL_B].astype(np.int32)


def _build(strategy, weight_seed=0, num_rows=N, **kwargs):
  # Bank momentum 0.3, not the symmetric default 0.5.
  kwargs.setdefault('bank_momentum', 0.3)
  return distribute_utils.CpdStepRun(
      strategy, lambda: nce.CrossModalNCE(num_rows, D, M, seed=7, **kwargs),
      dim=D, input_dim=D, weight_seed=weight_seed)


def _run(run, steps, **step_kwargs):
  """(per-step metrics by name, per-step weights) of steps `steps`."""
  num_rows = run.loss_module.num_rows
  metrics, weights = run.run([_batch(s, num_rows) for s in steps],
                             **step_kwargs)
  return {k: np.array([m[k] for m in metrics]) for k in metrics[0]}, weights


def _banks(run):
  loss = run.loss_module
  return np.stack([loss.video_bank.read_all().numpy(),
                   loss.text_bank.read_all().numpy()])


def _assert_same_training(got, want, initial, rtol=1e-5):
  """Same metrics, and each step moved every weight by the same amount."""
  (got_metrics, got_weights), (want_metrics, want_weights) = got, want
  assert sorted(got_metrics) == sorted(want_metrics)
  for name in want_metrics:
    np.testing.assert_allclose(got_metrics[name], want_metrics[name],
                               rtol=rtol, err_msg=name)
  previous = initial
  for step, (g, w) in enumerate(zip(got_weights, want_weights)):
    for k, (gv, wv, pv) in enumerate(zip(g, w, previous)):
      np.testing.assert_allclose(gv - pv, wv - pv, rtol=1e-4, atol=1e-6,
                                 err_msg=f'step {step}, variable {k}')
    previous = w


def _initial_weights(run):
  return [v.numpy() for v in run.variables]


def test_replicated_banks_and_weights_stay_bit_identical():
  strategy = _strategy(2)
  run = _build(strategy)
  metrics, _ = _run(run, range(40))
  assert np.all(np.isfinite(metrics['nce/loss']))
  for bank in (run.loss_module.video_bank, run.loss_module.text_bank):
    copies = [c.numpy() for c in bank.read_replicas()]
    assert np.array_equal(copies[0], copies[1])
  loss = run.loss_module
  for variable in [loss.z_v2t.value, loss.sampler.step] + run.variables:
    values = [c.numpy() for c in
              strategy.experimental_local_results(variable)]
    assert np.array_equal(values[0], values[1])
  assert int(loss.sampler.step.numpy()) == 40


@pytest.mark.parametrize('sharing', ['per_sample', 'shared'])
def test_sharded_equals_replicated_for_same_negatives(sharing):
  strategy = _strategy(2)
  replicated = _build(strategy, negative_sharing=sharing, num_strata=2)
  sharded = _build(strategy, negative_sharing=sharing, bank_mode='sharded')
  np.testing.assert_array_equal(_banks(replicated), _banks(sharded))
  initial = _initial_weights(replicated)
  want = _run(replicated, range(6))
  got = _run(sharded, range(6))
  _assert_same_training(got, want, initial)
  np.testing.assert_allclose(_banks(sharded), _banks(replicated), atol=1e-6)
  # Each replica holds only its shard (+ one scratch row).
  shards = sharded.loss_module.video_bank.read_replicas()
  assert [s.shape for s in shards] == [(N // 2 + 1, D)] * 2


@pytest.mark.parametrize(
    'mode,replicas,strata,num_rows,loss_kwargs,step_kwargs', [
        ('replicated', 2, 1, N, {}, {}),
        ('sharded', 4, 4, N, {}, {'weight_decay': 0.3}),
        # Shards (and strata) of 16, 16, 16 and 14 rows: the last shard's
        # padding row must never be drawn, looked up or scored.
        ('sharded', 4, 4, N - 2, {}, {}),
        # Strata of 31 and 30 rows; Z an EMA of all replicas' estimates.
        ('replicated', 4, 2, N - 3, {'z_policy': 'ema', 'z_momentum': 0.7},
         {}),
    ])
def test_one_replica_equals_many_for_same_global_batch(
    mode, replicas, strata, num_rows, loss_kwargs, step_kwargs):
  """R replicas train exactly as one replica on the same global batches.

  Catches a loss or weight decay not scaled by 1/replicas (R times the
  update), per-replica Z or bank updates, and misplaced shard rows.
  """
  reference = _build(_strategy(1), num_rows=num_rows, num_strata=strata,
                     **loss_kwargs)
  tested = _build(_strategy(replicas), num_rows=num_rows, bank_mode=mode,
                  num_strata=strata, **loss_kwargs)
  initial = _initial_weights(reference)
  for a, b in zip(initial, _initial_weights(tested)):
    np.testing.assert_array_equal(a, b)
  want = _run(reference, range(5), **step_kwargs)
  got = _run(tested, range(5), **step_kwargs)
  # The trained weights (video model and text head) moved far beyond the
  # tolerance, the frozen text encoder (stage 1) did not move at all.
  moved = [np.abs(w - i).max() for w, i in zip(want[1][-1], initial)]
  assert min(moved[:2] + moved[4:]) > 1e-3 and moved[2:4] == [0.0, 0.0]
  _assert_same_training(got, want, initial)
  np.testing.assert_allclose(_banks(tested), _banks(reference), atol=1e-6)


def test_clipped_gradient_is_the_global_one_over_replicas():
  # Clipping to a quarter of the global gradient norm: the 4-replica step
  # must clip the all-reduced gradient exactly as one replica clips its own.
  reference = _build(_strategy(1))
  initial = _initial_weights(reference)
  probe, _ = _build(_strategy(1)).run([_batch(0)], clip_norm=1e9)
  clip = probe[0]['gradient_norm'] / 4
  want = _run(reference, range(3), clip_norm=clip)
  got = _run(_build(_strategy(4)), range(3), clip_norm=clip)
  assert want[0]['gradient_norm'][0] > 3 * clip  # It did clip.
  _assert_same_training(got, want, initial)


@pytest.mark.parametrize('mode', ['replicated', 'sharded'])
def test_resume_continues_identically(mode, tmp_path):
  strategy = _strategy(2)
  full_metrics, full_weights = _run(_build(strategy, bank_mode=mode),
                                    range(6))

  first = _build(strategy, bank_mode=mode)
  _run(first, range(3))
  path = first.checkpoint().write(str(tmp_path / 'ckpt'))
  # Other initial weights: only the restore can make them equal.
  resumed = _build(strategy, weight_seed=1, bank_mode=mode)
  resumed.checkpoint().read(path).assert_consumed()
  assert int(resumed.loss_module.sampler.step.numpy()) == 3
  rest_metrics, rest_weights = _run(resumed, range(3, 6))
  for name, values in rest_metrics.items():
    np.testing.assert_array_equal(values, full_metrics[name][3:], name)
  for got, want in zip(rest_weights, full_weights[3:]):
    for g, w in zip(got, want):
      np.testing.assert_array_equal(g, w)

  # The checkpoint holds the full bank: it restores into any mode and
  # replica count, and one replica continues as the two did (drawing from
  # the same strata: one per shard of the sharded bank).
  single = _build(_strategy(1), weight_seed=2,
                  num_strata=2 if mode == 'sharded' else 1)
  single.checkpoint().read(path).assert_consumed()
  np.testing.assert_array_equal(_banks(single), _banks(first))
  _assert_same_training(_run(single, range(3, 6)),
                        (rest_metrics, rest_weights),
                        [v.numpy() for v in first.variables])
