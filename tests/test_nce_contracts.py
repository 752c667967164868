"""Contracts of cpd/nce.py the maths tests (test_cpd_nce.py) leave open.

The paper's defaults, the documented argument domains of the NCE modules and
of Z, the `skip` callback of `NormalisationConstant`, Z under `tf.function`
(the trainer always compiles its step), the metric names, which state is
trainable, and the seeding of the two banks. References are float64 NumPy
from the NCE equations (Eq. 5 of the CPD paper, uniform noise 1/N).
"""

import numpy as np
import pytest
import tensorflow as tf

from cpd import memory_bank as mb
from cpd import nce

D, TAU = 4, 0.07


def _unit(rng, *shape):
  x = rng.randn(*shape)
  return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize('cls', [nce.CrossModalNCE, nce.SelfInstanceNCE])
def test_defaults_are_the_papers(cls):
  """The defaults are the paper's 256-d space, m = 4096 and tau = 0.07."""
  loss_fn = cls(8)
  # Sec. 3.1 / Fig. 1: "the visual and textual features are mapped into a
  # common 256-dimensional space" (the banks hold those features).
  assert loss_fn.video_bank.dim == 256 and loss_fn.text_bank.dim == 256
  # Sec. 4.2: "We set temperature parameter tau = 0.07 and noise frequency m
  # to 4096."
  assert loss_fn.sampler.num_negatives == 4096
  assert loss_fn.temperature == 0.07


@pytest.mark.parametrize('cls', [nce.CrossModalNCE, nce.SelfInstanceNCE])
def test_one_row_and_one_negative_are_valid(cls):
  """N = 1 and m = 1 (the bounds of "> 0") build and give Eq. 5's loss.

  With one row the only negative is the positive's own row, so both score
  s; the first-batch Z is N mean exp(s / tau) = exp(s / tau), P = 1,
  h = P / (P + m/N) = 1/2 and each query's loss -log h - log(1 - h) is
  2 log 2 (per direction for the cross-pair loss).
  """
  rng = np.random.RandomState(0)
  loss_fn = cls(1, D, 1, TAU, seed=1)
  loss, metrics = loss_fn(_unit(rng, 1, D), _unit(rng, 1, D), [0])
  directions = 2 if cls is nce.CrossModalNCE else 1
  np.testing.assert_allclose(loss.numpy(), directions * 2 * np.log(2.0),
                             rtol=1e-5)
  for name, value in metrics.items():
    if name.endswith('positive_h'):
      np.testing.assert_allclose(value.numpy(), 0.5, rtol=1e-5)


def test_z_argument_domains():
  """Z momentum in [0, 1) and a constant Z > 0, as documented."""
  # Momentum 0: the EMA Z_s = mu Z_{s-1} + (1 - mu) estimate_s is the
  # latest estimate.
  ema = nce.NormalisationConstant('ema', momentum=0.0)
  assert ema(lambda _: tf.constant(5.0)).numpy() == 5.0
  assert ema(lambda _: tf.constant(15.0)).numpy() == 15.0
  with pytest.raises(ValueError, match='z_momentum'):
    nce.NormalisationConstant('ema', momentum=1.0)
  with pytest.raises(ValueError, match='z_momentum'):
    nce.NormalisationConstant('ema', momentum=-0.1)
  with pytest.raises(ValueError, match='z_constant'):
    nce.NormalisationConstant('constant', constant=0.0)
  small = nce.NormalisationConstant('constant', constant=0.5)
  assert small(lambda _: tf.constant(9.0)).numpy() == 0.5


def test_z_estimate_is_told_to_skip_once_frozen():
  """`estimate_fn` gets skip = true exactly when its estimate is unused.

  The documented callback contract that spares the exp over the B x m score
  matrix (twice a step) once the first-batch Z is frozen.
  """
  seen = []

  def estimate(skip):
    seen.append(skip)
    return tf.constant(5.0)

  first = nce.NormalisationConstant('first_batch')
  first(estimate)
  first(estimate)
  assert [s is not None and bool(s) for s in seen] == [False, True]
  # EMA uses every estimate: never skipped.
  seen.clear()
  ema = nce.NormalisationConstant('ema', momentum=0.5)
  ema(estimate)
  ema(estimate)
  assert len(seen) == 2 and not any(s is not None and bool(s) for s in seen)


@pytest.mark.parametrize('policy', ['first_batch', 'ema'])
def test_z_policies_in_a_compiled_step(policy):
  """Z of a `tf.function` step: N mean exp(s / tau), frozen or an EMA."""
  mu, n = 0.6, 20
  z_state = nce.NormalisationConstant(policy, momentum=mu)

  @tf.function
  def z_step(pos, neg):
    comm = mb.CrossReplica()
    return z_state(lambda skip: nce.estimate_z(pos, neg, TAU, n, comm, skip))

  rng = np.random.RandomState(3)
  want = None
  for _ in range(3):
    pos, neg = rng.uniform(-1, 1, [3]), rng.uniform(-1, 1, [3, 5])
    estimate = n * np.mean(np.exp(np.concatenate([pos, neg.ravel()]) / TAU))
    if want is None:
      want = estimate
    elif policy == 'ema':
      want = mu * want + (1.0 - mu) * estimate
    got = z_step(tf.constant(pos, tf.float32), tf.constant(neg, tf.float32))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


def test_cross_modal_metric_names():
  """The documented metrics, and 'nce/loss' is the loss: both directions."""
  rng = np.random.RandomState(1)
  loss, metrics = nce.CrossModalNCE(10, D, 3, TAU, seed=2)(
      _unit(rng, 2, D), _unit(rng, 2, D), [1, 7])
  assert set(metrics) == {'nce/loss'} | {
      f'nce/{d}/{k}' for d in ('v2t', 't2v')
      for k in ('loss', 'z', 'positive_prob', 'positive_h')}
  assert metrics['nce/loss'].numpy() == loss.numpy()
  np.testing.assert_allclose(
      loss.numpy(),
      metrics['nce/v2t/loss'].numpy() + metrics['nce/t2v/loss'].numpy(),
      rtol=1e-6)


@pytest.mark.parametrize('cls', [nce.CrossModalNCE, nce.SelfInstanceNCE])
def test_loss_state_is_not_trainable(cls):
  """Z (value, estimated flag) is state, never a parameter to optimise.

  Trainers optimise a loss module's `trainable_variables` (spl.train_lib);
  Z is gradient-free, estimated from the scores.
  """
  loss_fn = cls(6, D, 2, TAU)
  zs = [loss_fn.z] if cls is nce.SelfInstanceNCE else [loss_fn.z_v2t,
                                                       loss_fn.z_t2v]
  for z in zs:
    assert not z.value.trainable and not z.estimated.trainable
  assert not loss_fn.trainable_variables


@pytest.mark.parametrize('cls', [nce.CrossModalNCE, nce.SelfInstanceNCE])
def test_each_bank_has_its_own_seeded_initialisation(cls):
  """`seed` seeds both banks: the two modalities never start from the same
  rows, and another seed gives each modality other rows."""
  banks = {}
  for seed in range(3):
    loss_fn = cls(6, D, 2, TAU, seed=seed)
    banks[seed] = (loss_fn.video_bank.read_all().numpy(),
                   loss_fn.text_bank.read_all().numpy())
    assert not np.array_equal(*banks[seed]), seed
  for modality in range(2):
    for a in range(3):
      for b in range(a):
        assert not np.array_equal(banks[a][modality], banks[b][modality]), (
            modality, a, b)
