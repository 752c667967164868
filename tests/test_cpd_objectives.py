"""CPD's baseline objectives (Table 1a) against float64 NumPy references.

The references are written from the paper's equations, not from our code:
Eq. 4 (ranking loss, both directions) with explicit loops, and Eq. 2
(self-instance discrimination) approximated as in Eq. 5 (NCE with uniform
noise 1/N, m negatives, Z) for given bank contents, negative indices and Z.
Gradients are checked against central finite differences of the references.
The old bugs each test would catch: a sum over j instead of Eq. 4's n^-1
(ranking); video-only scoring, a bank update of one modality only, the bank
momentum swapped (mu = 0.25, not the symmetric 0.5) and scoring after the
update (self-instance).
"""

import functools

import numpy as np
import pytest
import tensorflow as tf

from cpd import baselines
from cpd import memory_bank as mb
from cpd import nce
from tests import distribute_utils

N, B, M, D, TAU, MU = 50, 5, 8, 6, 0.07, 0.25


def _unit(rng, *shape):
  x = rng.randn(*shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _f32(x):
  """x rounded to float32, as float64: TF and NumPy see the same point."""
  return np.asarray(x, np.float32).astype(np.float64)


def _finite_differences(fn, arrays, eps=1e-6):
  """d fn / d arrays[k] for every k, by central differences (float64)."""
  grads = []
  for k, array in enumerate(arrays):
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
      plus = [a.copy() for a in arrays]
      minus = [a.copy() for a in arrays]
      plus[k][index] += eps
      minus[k][index] -= eps
      grad[index] = (fn(*plus) - fn(*minus)) / (2 * eps)
    grads.append(grad)
  return grads


# ---- Eq. 4: ranking loss ----


def _cosine(a, b):
  return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def _eq4(v, t, delta):
  """(mean_i L(v_i), mean_i L(t_i)) of Eq. 4, S the cosine, n the batch."""
  n = len(v)
  loss_v, loss_t = [], []
  for i in range(n):
    loss_v.append(sum(max(0.0, delta + _cosine(t[j], v[i]) -
                          _cosine(t[i], v[i]))
                      for j in range(n) if j != i) / n)
    loss_t.append(sum(max(0.0, delta + _cosine(v[j], t[i]) -
                          _cosine(v[i], t[i]))
                      for j in range(n) if j != i) / n)
  return np.mean(loss_v), np.mean(loss_t)


def _hinge_arguments(v, t, delta):
  """Every hinge's argument, to keep the test points off the kinks."""
  n = len(v)
  return np.array([delta + _cosine(a[j], b[i]) - _cosine(a[i], b[i])
                   for a, b in ((t, v), (v, t))
                   for i in range(n) for j in range(n) if j != i])


@pytest.mark.parametrize('n,delta,unit', [
    (1, 0.2, True),  # no negative: zero loss, zero gradient.
    (2, 0.0, True),
    (5, 0.2, True),
    (8, 0.5, False),  # S is the cosine even of non-unit inputs.
    (16, 0.2, True),
    (6, 2.5, True),  # every hinge active: the loss is linear in S.
])
def test_ranking_loss_is_eq4(n, delta, unit):
  rng = np.random.RandomState(n)
  v = _f32(_unit(rng, n, D) if unit else 3.0 * rng.randn(n, D))
  t = _f32(_unit(rng, n, D) if unit else 0.5 * rng.randn(n, D))
  if n > 1:
    assert np.min(np.abs(_hinge_arguments(v, t, delta))) > 1e-4
  vt, tt = tf.constant(v, tf.float32), tf.constant(t, tf.float32)
  with tf.GradientTape() as tape:
    tape.watch([vt, tt])
    loss, metrics = baselines.ranking_loss(vt, tt, delta)
  grad_v, grad_t = tape.gradient(loss, [vt, tt])

  want_v, want_t = _eq4(v, t, delta)
  np.testing.assert_allclose(metrics['ranking/v2t/loss'].numpy(), want_v,
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(metrics['ranking/t2v/loss'].numpy(), want_t,
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(loss.numpy(), want_v + want_t, rtol=1e-6,
                             atol=1e-7)
  assert metrics['ranking/loss'].numpy() == loss.numpy()
  want_gv, want_gt = _finite_differences(
      lambda a, b: sum(_eq4(a, b, delta)), [v, t])
  np.testing.assert_allclose(grad_v.numpy(), want_gv, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad_t.numpy(), want_gt, rtol=1e-5, atol=1e-6)


def test_ranking_loss_module_and_margin():
  rng = np.random.RandomState(0)
  v, t = _unit(rng, 4, D), _unit(rng, 4, D)
  module = baselines.RankingLoss(num_rows=10, dim=D, margin=0.3)
  loss, metrics = module(v.astype(np.float32), t.astype(np.float32),
                         np.arange(4))
  np.testing.assert_allclose(loss.numpy(), sum(_eq4(v, t, 0.3)), rtol=1e-6)
  assert 'ranking/loss' in metrics
  # The default delta (VSE++'s, not in the paper) is the one gin binds.
  assert baselines.RankingLoss(num_rows=1, dim=1).margin == 0.2
  assert baselines.RANKING_MARGIN == 0.2
  with pytest.raises(ValueError, match='margin'):
    baselines.ranking_loss(v, t, -0.1)
  with pytest.raises(ValueError, match='margin'):
    baselines.RankingLoss(num_rows=1, dim=1, margin=-1.0)


# ---- Eq. 2 by NCE (Eq. 5): self-instance discrimination ----


def _eq2_nce(v, t, video_bank, text_bank, idx, neg, z, m, n_rows, tau):
  """Self-instance NCE loss of a batch; returns (loss, Z, h(i), P(i)).

  Pair j is class j; for the query pair (v, t) the exponent of Eq. 2 is
  (vb_j.v + tb_j.t) / tau, so P(j) = exp((vb_j.v + tb_j.t) / tau) / Z, the
  noise P_n(j) = 1/N and h(j) = P(j) / (P(j) + m/N). Z None: N times the
  mean of exp(score / tau) over the batch's positives and negatives.
  """
  batch = len(v)

  def exponent(i, j):
    return (video_bank[j] @ v[i] + text_bank[j] @ t[i]) / tau

  pos = np.array([exponent(i, idx[i]) for i in range(batch)])
  negs = np.array([[exponent(i, j) for j in neg[i]] for i in range(batch)])
  if z is None:
    z = n_rows * np.mean(np.exp(np.concatenate([pos, negs.ravel()])))
  h = lambda e: np.exp(e) / z / (np.exp(e) / z + m / n_rows)
  per_pair = -np.log(h(pos)) - np.sum(np.log(1.0 - h(negs)), axis=1)
  return np.mean(per_pair), z, h(pos), np.exp(pos) / z


def _bank_update(bank, idx, features, mu):
  """row <- (mu row + (1 - mu) f) / ||.|| for the batch's rows."""
  bank = bank.copy()
  rows = mu * bank[idx] + (1.0 - mu) * features
  bank[idx] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
  return bank


def _self_instance(z_policy='first_batch', sharing='per_sample', seed=5):
  return nce.SelfInstanceNCE(N, D, M, TAU, bank_momentum=MU,
                             z_policy=z_policy, z_constant=7.0 * N,
                             negative_sharing=sharing, seed=seed)


@pytest.mark.parametrize('z_policy,sharing', [
    ('first_batch', 'per_sample'),
    ('constant', 'per_sample'),
    ('first_batch', 'shared'),
])
def test_self_instance_is_eq2_nce(z_policy, sharing):
  rng = np.random.RandomState(2)
  loss_fn = _self_instance(z_policy, sharing)
  video_bank, text_bank = _f32(_unit(rng, N, D)), _f32(_unit(rng, N, D))
  loss_fn.video_bank.assign_all(video_bank)
  loss_fn.text_bank.assign_all(text_bank)
  sampler = mb.NegativeSampler(M, sharing, seed=5)
  z = None if z_policy == 'first_batch' else 7.0 * N
  for step in range(2):  # the second step scores the updated banks.
    v, t = _f32(_unit(rng, B, D)), _f32(_unit(rng, B, D))
    idx = rng.permutation(N)[:B].astype(np.int32)
    neg = np.broadcast_to(sampler.sample(loss_fn.video_bank, B).numpy(),
                          (B, M))
    vt, tt = tf.constant(v, tf.float32), tf.constant(t, tf.float32)
    with tf.GradientTape() as tape:
      tape.watch([vt, tt])
      loss, metrics = loss_fn(vt, tt, idx)
    grad_v, grad_t = tape.gradient(loss, [vt, tt])

    want, z, h_pos, p_pos = _eq2_nce(v, t, video_bank, text_bank, idx, neg,
                                     z, M, N, TAU)
    np.testing.assert_allclose(loss.numpy(), want, rtol=2e-6)
    assert metrics['instance/loss'].numpy() == loss.numpy()
    # Z: estimated on the first batch and frozen (or the constant).
    np.testing.assert_allclose(metrics['instance/z'].numpy(), z, rtol=2e-6)
    np.testing.assert_allclose(metrics['instance/positive_h'].numpy(),
                               h_pos.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics['instance/positive_prob'].numpy(),
                               p_pos.mean(), rtol=1e-5)
    # Z is a constant of the step (no gradient through its estimate).
    want_gv, want_gt = _finite_differences(
        lambda a, b, z=z, idx=idx, neg=neg: _eq2_nce(
            a, b, video_bank, text_bank, idx, neg, z, M, N, TAU)[0], [v, t])
    # float32 logits of size ~1/tau: the error scales with the largest entry.
    for got, want_g in ((grad_v, want_gv), (grad_t, want_gt)):
      np.testing.assert_allclose(got.numpy(), want_g, rtol=1e-5,
                                 atol=1e-5 * np.abs(want_g).max())

    # Both modalities' banks move, after scoring, with momentum mu on the row.
    video_bank = _bank_update(video_bank, idx, v, MU)
    text_bank = _bank_update(text_bank, idx, t, MU)
    np.testing.assert_allclose(loss_fn.video_bank.read_all().numpy(),
                               video_bank, atol=1e-6)
    np.testing.assert_allclose(loss_fn.text_bank.read_all().numpy(),
                               text_bank, atol=1e-6)
    video_bank = loss_fn.video_bank.read_all().numpy().astype(np.float64)
    text_bank = loss_fn.text_bank.read_all().numpy().astype(np.float64)
  assert int(loss_fn.sampler.step.numpy()) == 2


def _module(seed):
  return baselines.VideoSelfInstance(num_rows=N, dim=D, num_negatives=M,
                                   temperature=TAU, bank_momentum=MU,
                                   seed=seed)


def test_self_instance_module_trains_both_encoders(tmp_path):
  rng = np.random.RandomState(3)
  module = _module(seed=5)
  reference = _self_instance()
  v = tf.constant(_unit(rng, B, D), tf.float32)
  t = tf.constant(_unit(rng, B, D), tf.float32)
  idx = np.arange(B)
  with tf.GradientTape() as tape:
    tape.watch([v, t])
    loss, metrics = module(v, t, idx)
  grad_v, grad_t = tape.gradient(loss, [v, t])
  want, _ = reference(v, t, idx)
  np.testing.assert_allclose(loss.numpy(), want.numpy(), rtol=1e-6)
  assert set(metrics) == {'instance/loss', 'instance/z',
                          'instance/positive_prob', 'instance/positive_h'}
  assert np.abs(grad_v.numpy()).max() > 0
  assert np.abs(grad_t.numpy()).max() > 0  # the titles are part of Eq. 2
  # Checkpointed state: both banks, Z and the sampler's step.
  path = tf.train.Checkpoint(loss=module).save(str(tmp_path / 'ckpt'))
  restored = _module(seed=6)
  tf.train.Checkpoint(loss=restored).restore(path).assert_consumed()
  for name in ('video_bank', 'text_bank'):
    np.testing.assert_array_equal(
        getattr(restored.instance, name).read_all().numpy(),
        getattr(module.instance, name).read_all().numpy())
  assert restored.instance.z.value.numpy() == module.instance.z.value.numpy()
  assert restored.instance.z.estimated.numpy()
  assert restored.instance.sampler.step.numpy() == 1


def test_self_instance_argument_validation():
  with pytest.raises(ValueError, match='num_rows'):
    nce.SelfInstanceNCE(0)
  with pytest.raises(ValueError, match='temperature'):
    nce.SelfInstanceNCE(10, temperature=0.0)
  with pytest.raises(ValueError, match='momentum'):
    nce.SelfInstanceNCE(10, bank_momentum=1.0)
  with pytest.raises(ValueError, match='z_policy'):
    nce.SelfInstanceNCE(10, z_policy='median')
  loss_fn = nce.SelfInstanceNCE(10, 4, 2)
  with pytest.raises(ValueError, match='video_embeddings'):
    tf.function(loss_fn).get_concrete_function(
        tf.TensorSpec([None, 4]), tf.TensorSpec([None, 4]),
        tf.TensorSpec([None], tf.int32))


# ---- Across replicas: the conventions of the cross-pair NCE ----

DN, DM, GLOBAL_B = 32, 8, 8


@functools.lru_cache(maxsize=None)
def _strategy(num):
  return distribute_utils.mirrored_strategy([f'/cpu:{i}' for i in range(num)])


def _distributed_run(strategy, loss_module_fn, steps=3):
  """Per-step metrics and weights of the real train step (linear models)."""
  run = distribute_utils.CpdStepRun(strategy, loss_module_fn, dim=D,
                                    input_dim=D)
  initial = [v.numpy() for v in run.variables]
  batches = []
  for s in range(steps):
    rng = np.random.RandomState(100 + s)
    batches.append((rng.randn(GLOBAL_B, D).astype(np.float32),
                    rng.randn(GLOBAL_B, D).astype(np.float32),
                    rng.permutation(DN)[:GLOBAL_B].astype(np.int32)))
  metrics, weights = run.run(batches)
  return run.loss_module, metrics, initial, weights


def test_self_instance_across_replicas():
  """1 replica == 2 replicas (replicated or sharded banks), same negatives.

  Through `cpd_train_step`: a loss not divided by the number of replicas
  would double the 2-replica updates.
  """
  runs = {}
  for replicas, mode in ((1, 'replicated'), (2, 'replicated'),
                         (2, 'sharded')):
    loss_fn, metrics, initial, weights = _distributed_run(
        _strategy(replicas), lambda mode=mode: nce.SelfInstanceNCE(
            DN, D, DM, TAU, bank_momentum=MU, bank_mode=mode, num_strata=2,
            seed=9))
    banks = [loss_fn.video_bank.read_all().numpy(),
             loss_fn.text_bank.read_all().numpy()]
    if mode == 'replicated':
      for bank in (loss_fn.video_bank, loss_fn.text_bank):
        copies = bank.read_replicas()
        assert all(np.array_equal(c, copies[0]) for c in copies)
    runs[replicas, mode] = metrics, initial, weights, banks
  want_metrics, initial, want_weights, want_banks = runs[1, 'replicated']
  assert np.all(np.isfinite([m['instance/loss'] for m in want_metrics]))
  # The trained weights (video model, text head) moved.
  assert all(np.abs(w - i).max() > 1e-3 for k, (w, i) in
             enumerate(zip(want_weights[-1], initial)) if k not in (2, 3))
  for key in ((2, 'replicated'), (2, 'sharded')):
    metrics, start, weights, banks = runs[key]
    for got, want in zip(metrics, want_metrics):
      assert sorted(got) == sorted(want)
      for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5,
                                   err_msg=f'{key}: {name}')
    previous = start
    for got, want in zip(weights, want_weights):
      for g, w, p in zip(got, want, previous):
        np.testing.assert_allclose(g - p, w - p, rtol=1e-4, atol=1e-6,
                                   err_msg=str(key))
      previous = want
    for got, want in zip(banks, want_banks):
      np.testing.assert_allclose(got, want, atol=1e-6)
