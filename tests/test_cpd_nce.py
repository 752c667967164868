"""CPD NCE loss (Eq. 5) against a float64 numpy implementation.

The self-instance baseline (Eq. 2 by NCE) is tested in test_cpd_objectives.py.
"""

import numpy as np
import pytest
import tensorflow as tf

from cpd import memory_bank as mb
from cpd import nce
from tests import distribute_utils

# MU: bank momentum, not the symmetric 0.5, so that swapping mu and 1 - mu
# (or dropping either term) changes the updated rows.
N, B, M, D, TAU, MU = 50, 5, 8, 6, 0.07, 0.25


def _unit(rng, *shape):
  x = rng.randn(*shape)
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _numpy_direction(q, pos_rows, neg_rows, z, m, n, tau):
  """Eq. 5 for one direction; returns (loss, dL/ds_pos, dL/ds_neg, z)."""
  s_pos = np.einsum('bd,bd->b', q, pos_rows)
  s_neg = np.einsum('bd,bmd->bm', q, neg_rows)
  if z is None:  # first-batch estimate (lemniscate): N * mean exp(s/tau).
    z = n * np.mean(np.concatenate([np.exp(s_pos / tau)[:, None],
                                    np.exp(s_neg / tau)], 1))
  p_pos, p_neg = np.exp(s_pos / tau) / z, np.exp(s_neg / tau) / z
  h_pos, h_neg = p_pos / (p_pos + m / n), p_neg / (p_neg + m / n)
  batch = q.shape[0]
  loss = np.mean(-np.log(h_pos) - np.sum(np.log(1.0 - h_neg), axis=1))
  return loss, -(1.0 - h_pos) / tau / batch, h_neg / tau / batch, z, h_pos


@pytest.mark.parametrize('z_policy,positive_source,sharing', [
    ('first_batch', 'bank', 'per_sample'),
    ('constant', 'bank', 'per_sample'),
    ('first_batch', 'feature', 'per_sample'),
    ('constant', 'feature', 'shared'),
])
def test_loss_gradients_and_update_match_numpy(z_policy, positive_source,
                                                sharing):
  rng = np.random.RandomState(1)
  loss_fn = nce.CrossModalNCE(
      N, D, M, TAU, bank_momentum=MU, z_policy=z_policy, z_constant=7.0 * N,
      positive_source=positive_source, negative_sharing=sharing, seed=3)
  video_bank, text_bank = _unit(rng, N, D), _unit(rng, N, D)
  loss_fn.video_bank.assign_all(video_bank)
  loss_fn.text_bank.assign_all(text_bank)
  v, t = _unit(rng, B, D), _unit(rng, B, D)
  idx = rng.permutation(N)[:B].astype(np.int32)
  neg = mb.NegativeSampler(M, sharing, seed=3).sample(
      loss_fn.text_bank, B).numpy()
  if sharing == 'shared':
    neg = np.broadcast_to(neg, (B, M))
  vt, tt = tf.constant(v), tf.constant(t)
  with tf.GradientTape() as tape:
    tape.watch([vt, tt])
    loss, metrics = loss_fn(vt, tt, idx)
  grad_v, grad_t = tape.gradient(loss, [vt, tt])

  f64 = lambda x: x.astype(np.float64)
  v64, t64 = f64(v), f64(t)
  vb64, tb64 = f64(video_bank), f64(text_bank)
  z0 = None if z_policy == 'first_batch' else 7.0 * N
  pos_t = t64 if positive_source == 'feature' else tb64[idx]
  pos_v = v64 if positive_source == 'feature' else vb64[idx]
  l1, gp1, gn1, z1, h1 = _numpy_direction(v64, pos_t, tb64[neg], z0, M, N, TAU)
  l2, gp2, gn2, z2, _ = _numpy_direction(t64, pos_v, vb64[neg], z0, M, N, TAU)
  want_gv = gp1[:, None] * pos_t + np.einsum('bm,bmd->bd', gn1, tb64[neg])
  want_gt = gp2[:, None] * pos_v + np.einsum('bm,bmd->bd', gn2, vb64[neg])
  if positive_source == 'feature':  # the positive is the other query too.
    want_gv += gp2[:, None] * t64
    want_gt += gp1[:, None] * v64

  np.testing.assert_allclose(loss.numpy(), l1 + l2, rtol=1e-5)
  np.testing.assert_allclose(metrics['nce/v2t/loss'].numpy(), l1, rtol=1e-5)
  np.testing.assert_allclose(metrics['nce/t2v/z'].numpy(), z2, rtol=1e-5)
  np.testing.assert_allclose(metrics['nce/v2t/z'].numpy(), z1, rtol=1e-5)
  np.testing.assert_allclose(metrics['nce/v2t/positive_h'].numpy(),
                             h1.mean(), rtol=1e-5)
  np.testing.assert_allclose(grad_v.numpy(), want_gv, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grad_t.numpy(), want_gt, rtol=1e-4, atol=1e-6)
  # Both banks move after scoring: row <- normalise(mu row + (1 - mu) f),
  # the video bank with the video features, the text bank with the titles'.
  for bank, rows, feats in ((loss_fn.video_bank, vb64, v64),
                            (loss_fn.text_bank, tb64, t64)):
    want_rows = rows.copy()
    new = MU * rows[idx] + (1.0 - MU) * feats
    want_rows[idx] = new / np.linalg.norm(new, axis=1, keepdims=True)
    np.testing.assert_allclose(bank.read_all().numpy(), want_rows, atol=1e-6)
  assert int(loss_fn.sampler.step.numpy()) == 1


def test_ema_z_follows_the_batch_estimates():
  # Z_1 = estimate_1, then Z_s = mu Z_{s-1} + (1 - mu) estimate_s, each
  # estimate N * mean exp(s / tau) of that step's scores (numpy, float64,
  # from the banks as they are before the step). mu = 0.8: a swapped or
  # dropped term, or the momentum not reaching Z, gives another Z.
  rng = np.random.RandomState(4)
  mu = 0.8
  loss_fn = nce.CrossModalNCE(N, D, M, TAU, z_policy='ema', z_momentum=mu,
                              seed=3)
  sampler = mb.NegativeSampler(M, 'per_sample', seed=3)
  want = {}
  for _ in range(3):
    vb64 = loss_fn.video_bank.read_all().numpy().astype(np.float64)
    tb64 = loss_fn.text_bank.read_all().numpy().astype(np.float64)
    v, t = _unit(rng, B, D), _unit(rng, B, D)
    idx = rng.permutation(N)[:B].astype(np.int32)
    neg = sampler.sample(loss_fn.text_bank, B).numpy()
    _, metrics = loss_fn(v, t, idx)
    estimates = {
        'v2t': _numpy_direction(v.astype(np.float64), tb64[idx], tb64[neg],
                                None, M, N, TAU)[3],
        't2v': _numpy_direction(t.astype(np.float64), vb64[idx], vb64[neg],
                                None, M, N, TAU)[3]}
    for name, estimate in estimates.items():
      want[name] = (estimate if name not in want else
                    mu * want[name] + (1.0 - mu) * estimate)
      np.testing.assert_allclose(metrics[f'nce/{name}/z'].numpy(),
                                 want[name], rtol=1e-5, err_msg=name)
  # The estimates moved (the banks did): an EMA frozen at Z_1 would differ.
  assert abs(want['v2t'] - estimates['v2t']) > 1e-3 * want['v2t']


def test_loss_is_float32_and_finite_with_float16_inputs():
  rng = np.random.RandomState(0)
  loss_fn = nce.CrossModalNCE(N, D, M, TAU, seed=0)
  v = tf.constant(_unit(rng, B, D), tf.float16)
  t = tf.constant(_unit(rng, B, D), tf.float16)
  loss, metrics = loss_fn(v, t, np.arange(B))
  assert loss.dtype == tf.float32 and np.isfinite(loss.numpy())
  assert all(np.isfinite(x.numpy()) for x in metrics.values())
  # Perfectly aligned scores of 1/0.07 do not overflow either.
  terms = nce.nce_terms(tf.ones([2]), tf.ones([2, 4]), 1.0, TAU, 10)
  assert np.all(np.isfinite(terms['loss'].numpy()))


def test_z_policies():
  rng = np.random.RandomState(0)
  first = nce.NormalisationConstant('first_batch')
  ema = nce.NormalisationConstant('ema', momentum=0.9)
  const = nce.NormalisationConstant('constant', constant=3.0)
  assert first(lambda _: tf.constant(5.0)).numpy() == 5.0
  assert first(lambda _: tf.constant(9.0)).numpy() == 5.0  # frozen
  assert ema(lambda _: tf.constant(5.0)).numpy() == 5.0
  np.testing.assert_allclose(ema(lambda _: tf.constant(15.0)).numpy(), 6.0)
  assert const(lambda _: tf.constant(9.0)).numpy() == 3.0
  with pytest.raises(ValueError, match='z_constant'):
    nce.NormalisationConstant('constant')
  with pytest.raises(ValueError, match='z_policy'):
    nce.NormalisationConstant('median')
  del rng


def test_sampler_is_uniform_and_stratified():
  bank = mb.MemoryBank(1000, 4)
  sampler = mb.NegativeSampler(4000, 'shared', seed=0)
  draws = np.concatenate([sampler.sample(bank, 2, num_strata=4).numpy()
                          for _ in range(5)])
  assert draws.min() >= 0 and draws.max() < 1000
  counts = np.bincount(draws, minlength=1000)
  assert counts.min() > 0 and counts.max() < 50  # mean 20
  # Stratum s holds the columns [s*m/4, (s+1)*m/4).
  one = sampler.sample(bank, 2, num_strata=4).numpy()
  for s in range(4):
    block = one[s * 1000:(s + 1) * 1000]
    assert block.min() >= 250 * s and block.max() < 250 * (s + 1)
  with pytest.raises(ValueError, match='num_negatives'):
    sampler.sample(bank, 2, num_strata=3)


def _assert_tiles(blocks, num_rows):
  """Each block's rows are one contiguous range; in order they tile [0, N)."""
  expected_start = 0
  for k, block in enumerate(blocks):
    rows = np.unique(block)
    assert rows[0] == expected_start, (k, rows)
    np.testing.assert_array_equal(rows, np.arange(rows[0], rows[-1] + 1))
    expected_start = rows[-1] + 1
  assert expected_start == num_rows


@pytest.mark.parametrize('num_rows,num_strata', [
    (10, 4),  # strata of 3, 3, 3 and 1 rows
    (11, 4),
    (13, 3),
    (7, 7),
])
@pytest.mark.parametrize('sharing', ['per_sample', 'shared'])
def test_strata_of_a_bank_that_does_not_split_evenly(num_rows, num_strata,
                                                     sharing):
  # Every draw is a row of the bank, and stratum s (columns
  # [s*m/K, (s+1)*m/K)) reaches exactly its own contiguous rows: all of
  # them, none of another stratum's, none past the end (an even split's
  # last stratum would read rows N.. of a bank of N).
  per_stratum = 40
  bank = mb.MemoryBank(num_rows, 2)
  sampler = mb.NegativeSampler(per_stratum * num_strata, sharing, seed=2)
  draws = np.stack([sampler.sample(bank, 3, num_strata=num_strata).numpy()
                    for _ in range(10)])
  if sharing == 'per_sample':
    assert draws.shape == (10, 3, per_stratum * num_strata)
  assert draws.min() >= 0 and draws.max() < num_rows
  _assert_tiles([draws[..., s * per_stratum:(s + 1) * per_stratum]
                 for s in range(num_strata)], num_rows)
  starts, sizes = bank.stratum_bounds(num_strata)
  assert sum(sizes) == num_rows and min(sizes) > 0
  assert starts == list(np.cumsum([0] + sizes[:-1]))


def test_too_many_strata_for_the_bank_are_refused():
  # 10 rows in strata of ceil(10/6) = 2 would leave the sixth one empty.
  with pytest.raises(ValueError, match='empty'):
    mb.MemoryBank(10, 2).stratum_bounds(6)
  with pytest.raises(ValueError, match='num_strata'):
    mb.MemoryBank(10, 2).stratum_bounds(11)


@pytest.mark.parametrize('num_rows', [10, 11, 14])
@pytest.mark.parametrize('sharing', ['per_sample', 'shared'])
def test_sharded_draws_of_a_bank_that_does_not_split_over_replicas(
    num_rows, sharing, logical_cpus):
  # 4 shards of ceil(N/4) rows, the last one shorter (1, 2 or 2 rows): each
  # replica draws shard-local rows of its own shard only, all of them and
  # none of the padding/scratch rows, and the scores are the dot products
  # with those (global) rows.
  strategy = distribute_utils.mirrored_strategy(logical_cpus[:4])
  local_batch, per_shard = 2, 30
  with strategy.scope():
    bank = mb.MemoryBank(num_rows, D, mode='sharded', seed=5)
    sampler = mb.NegativeSampler(4 * per_shard, sharing, seed=1)
  rng = np.random.RandomState(0)
  queries = _unit(rng, 4 * local_batch, D)

  @tf.function
  def step(q):
    def replica_fn(q):
      negatives = sampler.sample(bank, local_batch)
      return negatives, bank.negative_scores(q, negatives)
    return strategy.run(replica_fn, args=(q,))

  inputs = distribute_utils.split_global_batch(strategy, queries)
  rows = bank.read_all().numpy()
  shard = -(-num_rows // 4)
  global_draws = [[] for _ in range(4)]
  for _ in range(8):
    negatives, scores = step(inputs)
    negatives = [n.numpy() for n in
                 strategy.experimental_local_results(negatives)]
    scores = [s.numpy() for s in strategy.experimental_local_results(scores)]
    for r, local in enumerate(negatives):
      assert local.min() >= 0 and r * shard + local.max() < num_rows
      global_draws[r].append(r * shard + local)
    # Replica r's queries against the rows drawn in every shard, in shard
    # order (per sample: the rows of each of the global batch's samples).
    for r in range(4):
      want = []
      for owner, local in enumerate(negatives):
        ids = owner * shard + local
        if sharing == 'per_sample':
          ids = ids[r * local_batch:(r + 1) * local_batch]
          want.append(np.einsum('bd,bmd->bm', queries[r * local_batch:(
              r + 1) * local_batch], rows[ids]))
        else:
          want.append(queries[r * local_batch:(r + 1) * local_batch] @
                      rows[ids].T)
      np.testing.assert_allclose(scores[r], np.concatenate(want, axis=1),
                                 atol=1e-6)
  _assert_tiles([np.concatenate(d) for d in global_draws], num_rows)


def test_argument_validation():
  with pytest.raises(ValueError, match='num_rows'):
    nce.CrossModalNCE(0)
  with pytest.raises(ValueError, match='positive_source'):
    nce.CrossModalNCE(10, positive_source='both')
  with pytest.raises(ValueError, match='mode'):
    mb.MemoryBank(10, mode='mirrored')
  with pytest.raises(ValueError, match='sharing'):
    mb.NegativeSampler(4, sharing='global')
