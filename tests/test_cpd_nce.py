"""CPD NCE loss (Eq. 5) against a float64 numpy implementation.

The self-instance baseline (Eq. 2 by NCE) is tested in test_cpd_objectives.py.
"""

import numpy as np
import pytest
import tensorflow as tf

from cpd import memory_bank as mb
from cpd import nce

N, B, M, D, TAU = 50, 5, 8, 6, 0.07


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
      N, D, M, TAU, z_policy=z_policy, z_constant=7.0 * N,
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
  # Bank update after scoring: row <- normalise(0.5 row + 0.5 f).
  want_vb = vb64.copy()
  new = 0.5 * vb64[idx] + 0.5 * v64
  want_vb[idx] = new / np.linalg.norm(new, axis=1, keepdims=True)
  np.testing.assert_allclose(loss_fn.video_bank.read_all().numpy(), want_vb,
                             atol=1e-6)
  assert int(loss_fn.sampler.step.numpy()) == 1


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


def test_argument_validation():
  with pytest.raises(ValueError, match='num_rows'):
    nce.CrossModalNCE(0)
  with pytest.raises(ValueError, match='positive_source'):
    nce.CrossModalNCE(10, positive_source='both')
  with pytest.raises(ValueError, match='mode'):
    mb.MemoryBank(10, mode='mirrored')
  with pytest.raises(ValueError, match='sharing'):
    mb.NegativeSampler(4, sharing='global')
