"""The CPD memory bank (cpd/memory_bank.py) against float64 NumPy references.

The references are written here, not taken from the code: the initial rows
from MurmurHash3's 32-bit finaliser (Appleby's published fmix32) and the
lemniscate / CPD initialisation (uniform in +-stdv, stdv = 1 / sqrt(d / 3));
the update from row <- normalise(mu row + (1 - mu) f); the scores as dot
products with the drawn rows. The sharded layout is checked over 2 and 4
replicas made of logical CPUs (conftest.py): ownership of each shard's first
and last rows, the scratch row, the static batch of the gathered scores.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from cpd import memory_bank as mb
from tests import distribute_utils

N, D, B, M, MU = 7, 3, 2, 4, 0.3
_MASK32 = 0xffffffff


def _unit(rng, *shape):
  x = rng.randn(*shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _fmix32(h):
  """MurmurHash3's 32-bit finaliser (fmix32), arithmetic mod 2**32."""
  h ^= h >> 16
  h = (h * 0x85ebca6b) & _MASK32
  h ^= h >> 13
  h = (h * 0xc2b2ae35) & _MASK32
  h ^= h >> 16
  return h


def _initial_rows(seed, start, num_rows, dim):
  """float64 reference of `mb.initial_rows`: a hash of (seed, row, column).

  The counter row*dim + column is keyed with the seed's low word (times the
  golden-ratio constant 0x9e3779b9) and mixed with fmix32, then the seed's
  high word and MurmurHash2's constant 0x5bd1e995 are mixed in with a second
  fmix32; u = h / 2**32 in [0, 1) maps to uniform in [-stdv, stdv).
  """
  key, high = (seed * 0x9e3779b9) & _MASK32, (seed >> 32) & _MASK32
  stdv = 1.0 / math.sqrt(dim / 3.0)
  out = np.empty([num_rows, dim])
  for i in range(num_rows):
    for j in range(dim):
      counter = ((start + i) * dim + j) & _MASK32
      h = _fmix32(_fmix32(counter ^ key) ^ high ^ 0x5bd1e995)
      out[i, j] = (2.0 * (h / 2.0**32) - 1.0) * stdv
  return out


def _momentum_update(rows, indices, features, momentum):
  """row <- normalise(mu row + (1 - mu) f) for the rows of `indices`."""
  rows = rows.copy()
  new = momentum * rows[indices] + (1.0 - momentum) * features
  rows[indices] = new / np.linalg.norm(new, axis=-1, keepdims=True)
  return rows


def test_fmix32_reference_matches_published_test_vectors():
  """The test's fmix32 is MurmurHash3's: MurmurHash3_x86_32 of the empty
  input is fmix32(seed), published as 0, 0x514e28b7 and 0x81f16f39 for the
  seeds 0, 1 and 0xffffffff."""
  assert _fmix32(0) == 0
  assert _fmix32(1) == 0x514e28b7
  assert _fmix32(0xffffffff) == 0x81f16f39


@pytest.mark.parametrize('seed', [0, 1, 2**31 + 12345, 0x123456789abc])
def test_initial_rows_are_the_murmur_hash_of_seed_row_and_column(seed):
  """Initial rows: the documented hash and distribution, for any start.

  Protects every constant, shift and mask of the hash (fmix32, the 32-bit
  multiply, the counter and both seed words: the last seed has a non-zero
  high word), the u = h / 2**32 scaling and stdv = 1 / sqrt(d / 3).
  """
  num_rows, dim = 40, 64
  want = _initial_rows(seed, 0, num_rows, dim)
  got = mb.initial_rows(seed, 0, num_rows, dim).numpy()
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want.astype(np.float32))
  # Any block of rows, from a Python or a tensor start, is that block.
  np.testing.assert_array_equal(
      mb.initial_rows(seed, tf.constant(13), 5, dim).numpy(), got[13:18])
  # Uniform on [-stdv, stdv): variance stdv**2 / 3 = 1 / d.
  stdv = 1.0 / math.sqrt(dim / 3.0)
  assert -stdv <= want.min() < -0.99 * stdv and 0.99 * stdv < want.max() < stdv
  assert abs(want.mean()) < 0.05 * stdv
  np.testing.assert_allclose(want.var(), 1.0 / dim, rtol=0.1)


def test_defaults_are_the_papers_lemniscates_and_seed_zero():
  """256-d rows and m = 4096 per-sample draws (the CPD paper), bank
  momentum 0.5 (lemniscate's), seed 0."""
  bank = mb.MemoryBank(2)
  np.testing.assert_array_equal(
      bank.read_all().numpy(), _initial_rows(0, 0, 2, 256).astype(np.float32))
  rng = np.random.RandomState(0)
  features = _unit(rng, 1, 256)
  bank.update([1], features)
  want = _momentum_update(_initial_rows(0, 0, 2, 256), [1], features, 0.5)
  np.testing.assert_allclose(bank.read_all().numpy(), want, atol=1e-6)

  big = mb.MemoryBank(10000, 2)
  draws = mb.NegativeSampler().sample(big, 3).numpy()
  assert draws.shape == (3, 4096)
  explicit = mb.NegativeSampler(4096, 'per_sample', seed=0)
  np.testing.assert_array_equal(draws, explicit.sample(big, 3).numpy())


@pytest.mark.parametrize('mode,momentum,sharing', [
    ('replicated', MU, 'per_sample'),
    ('replicated', 0.0, 'shared'),
    ('sharded', MU, 'shared'),
    ('sharded', 0.0, 'per_sample'),
])
def test_one_replica_bank_matches_numpy(mode, momentum, sharing):
  """Lookup, scores and update of a bank outside any strategy.

  The sharded bank is then one shard (replica id 0) and must behave exactly
  as the replicated one; momentum 0 replaces a row with the normalised
  feature. Float64 NumPy queries are scored as float32. `assign_all` also
  runs inside a tf.function.
  """
  rng = np.random.RandomState(3)
  bank = mb.MemoryBank(N, D, mode=mode, momentum=momentum, seed=5)
  np.testing.assert_array_equal(bank.read_all().numpy(),
                                _initial_rows(5, 0, N, D).astype(np.float32))
  rows = _unit(rng, N, D)

  @tf.function
  def assign(x):
    bank.assign_all(x)

  assign(tf.constant(rows, tf.float32))
  rows = rows.astype(np.float32).astype(np.float64)
  np.testing.assert_array_equal(bank.read_all().numpy(), rows)

  indices = np.array([6, 0], np.int32)  # the last and the first row
  np.testing.assert_array_equal(bank.lookup(indices).numpy(), rows[indices])
  sampler = mb.NegativeSampler(M, sharing, seed=1)
  negatives = sampler.sample(bank, B).numpy()
  assert negatives.shape == ((B, M) if sharing == 'per_sample' else (M,))
  assert negatives.min() >= 0 and negatives.max() < N
  queries = rng.randn(B, D)  # float64
  scores = bank.negative_scores(queries, negatives)
  assert scores.dtype == tf.float32
  want = (np.einsum('bd,bmd->bm', queries, rows[negatives])
          if sharing == 'per_sample' else queries @ rows[negatives].T)
  np.testing.assert_allclose(scores.numpy(), want, rtol=1e-5, atol=1e-6)

  features = rng.randn(B, D)
  bank.update(indices, features)
  np.testing.assert_allclose(
      bank.read_all().numpy(),
      _momentum_update(rows, indices, features, momentum), atol=1e-6)


def test_sharded_bank_over_two_replicas_matches_numpy(logical_cpus):
  """Shards of 4 and 3 rows: ownership, scratch row, scores and updates.

  Row 0 and row 4 (S) are the first rows of their shards: each must be
  looked up and updated by its owner only. Step 1 writes foreign features
  into each replica's scratch row, so a replica that also claimed row S (its
  scratch row) would add them to the lookup of step 2. The scores keep the
  static batch size, and a batch unknown at trace time works too. The
  bank methods make their own `CrossReplica`.
  """
  strategy = distribute_utils.mirrored_strategy(logical_cpus[:2])
  with strategy.scope():
    bank = mb.MemoryBank(N, D, mode='sharded', momentum=MU, seed=5)
    sampler = mb.NegativeSampler(M, 'per_sample', seed=1)
  np.testing.assert_array_equal(bank.read_all().numpy(),
                                _initial_rows(5, 0, N, D).astype(np.float32))
  rng = np.random.RandomState(0)
  rows = _unit(rng, N, D).astype(np.float32)
  bank.assign_all(rows)
  rows = rows.astype(np.float64)
  np.testing.assert_array_equal(bank.read_all().numpy(), rows)
  shards = [s.numpy() for s in bank.read_replicas()]
  np.testing.assert_array_equal(shards[0], np.concatenate([rows[:4],
                                                           np.zeros([1, D])]))
  np.testing.assert_array_equal(shards[1], np.concatenate([rows[4:],
                                                           np.zeros([2, D])]))

  static_shapes = []

  @tf.function
  def step(inputs, unknown_batch):
    def replica_fn(indices, features, queries):
      if unknown_batch:
        queries = tf.compat.v1.placeholder_with_default(queries, [None, D])
      negatives = sampler.sample(bank, B)
      scores = bank.negative_scores(queries, negatives)
      static_shapes.append(scores.shape.as_list())
      positives = bank.lookup(indices)
      bank.update(indices, features)
      return negatives, scores, positives
    return strategy.run(replica_fn, args=inputs)

  local = strategy.experimental_local_results
  for indices, unknown_batch in (([0, 5, 4, 2], False),
                                 ([4, 0, 3, 6], True)):
    indices = np.array(indices, np.int32)
    features = rng.randn(2 * B, D).astype(np.float32)
    queries = rng.randn(2 * B, D).astype(np.float32)
    negatives, scores, positives = step(
        distribute_utils.split_global_batch(
            strategy, (indices, features, queries)), unknown_batch)
    negatives = [n.numpy() for n in local(negatives)]
    assert negatives[0].max() < 4 and negatives[1].max() < 3  # valid rows
    for r in range(2):
      mine = slice(r * B, (r + 1) * B)
      np.testing.assert_allclose(local(positives)[r].numpy(),
                                 rows[indices[mine]], atol=1e-6)
      # Replica r's queries against its samples' draws in shard 0 then 1.
      ids = np.concatenate([negatives[0][mine], 4 + negatives[1][mine]], 1)
      np.testing.assert_allclose(
          local(scores)[r].numpy(),
          np.einsum('bd,bmd->bm', queries[mine], rows[ids]), atol=1e-6)
    rows = _momentum_update(rows, indices, features, MU)
    np.testing.assert_allclose(bank.read_all().numpy(), rows, atol=1e-6)
  assert static_shapes == [[B, M]] * 2 + [[None, M]] * 2
  assert int(sampler.step.numpy()) == 2


def test_sharded_lookup_ignores_a_non_finite_scratch_row(logical_cpus):
  """A foreign all-zero feature must not turn owned lookups into NaN.

  Each replica writes the features of rows it does not own into its scratch
  row; an all-zero feature normalises to NaN there (0 / 0). The lookup must
  select the owner's row, not multiply the scratch row by zero (NaN * 0 is
  NaN, and the sum across replicas spreads it to every replica).
  """
  strategy = distribute_utils.mirrored_strategy(logical_cpus[:2])
  with strategy.scope():
    bank = mb.MemoryBank(4, 2, mode='sharded', momentum=MU)
  rows = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.float32)
  bank.assign_all(rows)

  @tf.function
  def step(indices, features):
    def replica_fn(i, f):
      positives = bank.lookup(i)  # the CPD step's order: look up, then update
      with tf.control_dependencies([positives]):
        bank.update(i, f)
      return positives
    return strategy.run(replica_fn, args=(indices, features))

  # Replica 0 updates row 0 with a zero feature (its own row: normalise(mu
  # row) is the row); replica 1 updates row 2. Both write the other's feature
  # into their scratch rows: replica 1's scratch row becomes NaN.
  indices = np.array([0, 2], np.int32)
  features = np.array([[0, 0], [1, 0]], np.float32)
  step(*distribute_utils.split_global_batch(strategy, (indices, features)))
  shards = [s.numpy() for s in bank.read_replicas()]
  assert np.isnan(shards[1][-1]).all()  # the condition under test
  expected = _momentum_update(rows.astype(np.float64), indices, features, MU)
  np.testing.assert_allclose(bank.read_all().numpy(), expected, atol=1e-6)
  # Lookups of rows 0 and 2 now meet replica 1's NaN scratch row.
  positives = step(*distribute_utils.split_global_batch(
      strategy, (indices, np.array([[1, 0], [-1, 0]], np.float32))))
  looked_up = np.concatenate(
      [p.numpy() for p in strategy.experimental_local_results(positives)])
  np.testing.assert_allclose(looked_up, expected[indices], atol=1e-6)


def test_replica_count_only_shards_a_sharded_bank(logical_cpus):
  """Replicated banks ignore the replica count; shards must all hold rows.

  Over 4 replicas a sharded bank of 6 rows (shards of 2: the last empty) is
  refused and one of 7 rows is not (the last shard holds 1 row; a shard past
  the last holds none); a replicated bank is one shard, may have fewer rows
  than replicas, and `assign_all` sets every replica's copy.
  """
  strategy = distribute_utils.mirrored_strategy(logical_cpus[:4])
  with strategy.scope():
    with pytest.raises(ValueError, match='too small'):
      mb.MemoryBank(6, D, mode='sharded')
    sharded = mb.MemoryBank(7, D, mode='sharded')
    replicated = mb.MemoryBank(3, D)
    single = mb.MemoryBank(1, D)
  assert [sharded.shard_range(r) for r in range(5)] == [
      (0, 2), (2, 2), (4, 2), (6, 1), (8, 0)]
  assert replicated.shard_range(0) == (0, 3)
  assert replicated.shard_range(1) == (3, 0)
  rows = _unit(np.random.RandomState(1), 3, D).astype(np.float32)
  replicated.assign_all(rows)
  for copy in replicated.read_replicas():
    np.testing.assert_array_equal(copy.numpy(), rows)
  assert single.read_all().shape == (1, D)


def test_bank_and_sampler_state_is_not_trained_by_gradients():
  """The bank moves by momentum only: no tape watches it, no optimizer sees
  the sampler's step; gradients reach the queries through the scores."""
  bank = mb.MemoryBank(N, D, seed=2)
  sampler = mb.NegativeSampler(M, seed=0)
  queries = tf.constant(_unit(np.random.RandomState(2), B, D), tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(queries)
    rows = bank.read_all()
    negatives = sampler.sample(bank, B)
    total = tf.reduce_sum(bank.negative_scores(queries, negatives))
  assert tape.watched_variables() == ()
  assert sampler.trainable_variables == ()
  assert len(sampler.variables) == 1 and sampler.variables[0] is sampler.step
  np.testing.assert_allclose(
      tape.gradient(total, queries).numpy(),
      rows.numpy()[negatives.numpy()].sum(axis=1), rtol=1e-6)


def test_argument_validation():
  """Each bad argument is refused with its own message; the smallest valid
  sizes (1 row, 1 dimension, 1 negative, momentum 0) are accepted."""
  with pytest.raises(ValueError, match='`num_rows` must be > 0'):
    mb.MemoryBank(0, D)
  with pytest.raises(ValueError, match='`dim` must be > 0'):
    mb.MemoryBank(N, 0)
  with pytest.raises(ValueError, match='momentum'):
    mb.MemoryBank(N, D, momentum=1.0)
  with pytest.raises(ValueError, match='`num_negatives` must be > 0'):
    mb.NegativeSampler(0)
  bank = mb.MemoryBank(N, D)
  for num_strata in (0, N + 1):
    with pytest.raises(ValueError, match='num_strata'):
      bank.stratum_bounds(num_strata)
  queries = tf.zeros([B, D])
  with pytest.raises(ValueError, match='same length'):
    mb.negative_scores([bank, bank], [queries], tf.zeros([M], tf.int32))
  with pytest.raises(ValueError, match='non-empty'):
    mb.negative_scores([], [], tf.zeros([M], tf.int32))
  with pytest.raises(ValueError, match='layout'):
    mb.negative_scores([bank, mb.MemoryBank(N + 1, D)], [queries, queries],
                       tf.zeros([M], tf.int32))

  tiny = mb.MemoryBank(1, 1, momentum=0.0)
  np.testing.assert_array_equal(tiny.read_all().numpy(),
                                _initial_rows(0, 0, 1, 1).astype(np.float32))
  tiny.update([0], [[-2.0]])
  np.testing.assert_array_equal(tiny.read_all().numpy(), [[-1.0]])
  draws = mb.NegativeSampler(1, seed=0).sample(tiny, B).numpy()
  np.testing.assert_array_equal(draws, np.zeros([B, 1]))
