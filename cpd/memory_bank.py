"""Distributed memory bank of CPD: one 256-d row per training clip and modality.

Two modes behind one interface, both used from single-replica step code:

* `replicated`: every replica holds the whole bank. Each step the replicas
  all-gather the global batch's (indices, features) and apply the same update,
  so the copies stay bit-identical (the published implementations update each
  copy with its own local batch only, and the copies drift apart).
* `sharded`: replica r owns rows [r*S, (r+1)*S) (S = ceil(N / replicas)).
  Negatives are drawn per shard (m / replicas from each), the queries are
  all-gathered and scored where the rows live, the scores are gathered back;
  positives are fetched from their owner; updates are applied by the owner.
  Memory per replica is about N*d*4 bytes / replicas. Gradients flow through
  the gathers (the gradient of `all_gather` sums over replicas).

Every cross-replica operation of CPD goes through `CrossReplica`, which has a
plain single-replica path and reads the replica id from the replica context
(works under Mirrored, MultiWorkerMirrored and TPU strategies).

The bank variables are `ON_READ` variables: each replica writes its own copy
(or shard) with plain resource ops, no implicit all-reduce. Checkpoints hold
the full [N, d] bank whatever the mode and number of replicas, so a run can be
resumed with another replica count or mode. Under MultiWorkerMirroredStrategy
a worker holds only its own replicas' shards: saving a sharded bank gathers
the others' (a collective, so every worker saves, as `spl.loop` does), and
each worker initialises and restores the shards of its global replica ids.
"""

import math

import tensorflow as tf

REPLICATED = 'replicated'
SHARDED = 'sharded'
MODES = (REPLICATED, SHARDED)


class CrossReplica:
  """All cross-replica communication of CPD, with a plain single-replica path.

  Build it inside the replica function (`strategy.run`); outside any strategy
  the default replica context has one replica and every method is identity.
  """

  def __init__(self):
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
      raise ValueError('CrossReplica must be built in a replica context '
                       '(inside strategy.run or outside any strategy).')
    self._ctx = ctx
    self.num_replicas = ctx.num_replicas_in_sync
    if self.num_replicas == 1:
      self.replica_id = tf.constant(0, tf.int32)
    else:
      self.replica_id = tf.cast(ctx.replica_id_in_sync_group, tf.int32)

  def all_gather(self, x):
    """Concatenates every replica's `x` along axis 0, in replica order."""
    if self.num_replicas == 1:
      return x
    return self._ctx.all_gather(x, axis=0)

  def sum(self, x):
    """Sum of `x` over replicas."""
    if self.num_replicas == 1:
      return x
    return self._ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)

  def local_rows(self, x, local_size):
    """This replica's block of `local_size` rows of a gathered tensor."""
    if self.num_replicas == 1:
      return x
    begin = self.replica_id * local_size
    return x[begin:begin + local_size]


def _mul32(h, c):
  """(h * c) mod 2**32 for int64 h < 2**32 without int64 overflow."""
  lo, hi = c & 0xffff, c >> 16
  return (h * lo + tf.bitwise.left_shift(
      tf.bitwise.bitwise_and(h * hi, 0xffff), 16)) & 0xffffffff


def _fmix32(h):
  """MurmurHash3 finaliser on int64 values in [0, 2**32)."""
  h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16))
  h = _mul32(h, 0x85ebca6b)
  h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 13))
  h = _mul32(h, 0xc2b2ae35)
  return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16))


def initial_rows(seed, start, num_rows, dim):
  """Initial bank rows [start, start+num_rows), uniform in +-1/sqrt(dim/3).

  A counter-based hash of (seed, row, column) rather than a random op, so that
  any shard can make its own rows and every mode and replica count starts from
  the same bank (the lemniscate / CPD initialisation, made deterministic).

  Args:
    seed: Python int.
    start: first row (int or scalar tensor).
    num_rows: number of rows (Python int).
    dim: row width (Python int).

  Returns:
    float32 [num_rows, dim].
  """
  rows = tf.cast(start, tf.int64) + tf.range(num_rows, dtype=tf.int64)
  cols = tf.range(dim, dtype=tf.int64)
  counter = (rows[:, None] * dim + cols[None, :]) & 0xffffffff
  h = _fmix32(tf.bitwise.bitwise_xor(counter, (seed * 0x9e3779b9) & 0xffffffff))
  h = _fmix32(h ^ ((seed >> 32) & 0xffffffff) ^ 0x5bd1e995)
  u = tf.cast(h, tf.float64) / 4294967296.0
  stdv = 1.0 / math.sqrt(dim / 3.0)
  return tf.cast((2.0 * u - 1.0) * stdv, tf.float32)


def _local_replica_ids(strategy, num_local):
  """Global replica ids of this process's `num_local` replicas, in order.

  All of them in one process (0, 1, ...); under MultiWorkerMirroredStrategy
  a worker's replicas only, read from their replica contexts.
  """
  if num_local == strategy.num_replicas_in_sync:
    return list(range(num_local))
  ids = tf.function(lambda: strategy.run(
      lambda: tf.distribute.get_replica_context().replica_id_in_sync_group))()
  return [int(i) for i in strategy.experimental_local_results(ids)]


def _l2_normalize(x):
  return x / tf.norm(x, axis=-1, keepdims=True)


class MemoryBank(tf.__internal__.tracking.Trackable):
  """A bank of `num_rows` feature rows, replicated or sharded over replicas.

  Build it in cross-replica context under the strategy scope (where the
  trainer builds its models); call `lookup`, `negative_scores` and `update`
  from the replica function. All three take this replica's local batch.
  """

  def __init__(self, num_rows, dim=256, mode=REPLICATED, momentum=0.5,
               seed=0, name='memory_bank'):
    """Creates the bank.

    Args:
      num_rows: N, number of training clips (rows), > 0.
      dim: feature width, > 0.
      mode: 'replicated' or 'sharded'.
      momentum: mu of row <- normalise(mu*row + (1-mu)*feature), in [0, 1).
      seed: seed of the deterministic initial rows.
      name: variable name prefix.
    """
    if num_rows <= 0:
      raise ValueError(f'`num_rows` must be > 0, got {num_rows}')
    if dim <= 0:
      raise ValueError(f'`dim` must be > 0, got {dim}')
    if mode not in MODES:
      raise ValueError(f'`mode` must be one of {MODES}, got {mode!r}')
    if not 0.0 <= momentum < 1.0:
      raise ValueError(f'`momentum` must be in [0, 1), got {momentum}')
    if tf.distribute.in_cross_replica_context() is False and (
        tf.distribute.has_strategy()):
      raise ValueError('MemoryBank must be built in cross-replica context.')
    strategy = tf.distribute.get_strategy()
    self._strategy = strategy
    self.num_rows = int(num_rows)
    self.dim = int(dim)
    self.mode = mode
    self.momentum = float(momentum)
    self.seed = int(seed)
    self.num_shards = strategy.num_replicas_in_sync if mode == SHARDED else 1
    self.rows_per_shard = -(-self.num_rows // self.num_shards)
    if (self.num_shards - 1) * self.rows_per_shard >= self.num_rows:
      raise ValueError(f'`num_rows` ({num_rows}) too small to give each of '
                       f'{self.num_shards} shards a row')
    if mode == REPLICATED:
      init = lambda: initial_rows(self.seed, 0, self.num_rows, self.dim)
      shape = [self.num_rows, self.dim]
    else:
      # One scratch row at the end takes the writes of rows owned elsewhere,
      # so that updates keep static shapes (no boolean masks; TPU friendly).
      shape = [self.rows_per_shard + 1, self.dim]
      init = lambda: tf.zeros(shape, tf.float32)
    self._variable = tf.Variable(
        init, trainable=False, name=name,
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self._replica_ids = _local_replica_ids(strategy, len(self._components()))
    self._gather_fn = None
    if mode == SHARDED:
      self._assign_components(self._shard_values(
          lambda r, n: initial_rows(self.seed, r * self.rows_per_shard, n,
                                    self.dim)))

  # ---- Layout ----

  def shard_range(self, shard):
    """(first row, number of valid rows) of shard `shard` (Python ints)."""
    start = shard * self.rows_per_shard
    return start, max(0, min(self.rows_per_shard, self.num_rows - start))

  def stratum_bounds(self, num_strata):
    """Python lists (starts, sizes) of `num_strata` contiguous row ranges."""
    if num_strata <= 0 or num_strata > self.num_rows:
      raise ValueError(f'`num_strata` must be in [1, {self.num_rows}], '
                       f'got {num_strata}')
    size = -(-self.num_rows // num_strata)
    if (num_strata - 1) * size >= self.num_rows:
      raise ValueError(f'`num_strata` ({num_strata}) leaves a stratum of '
                       f'{self.num_rows} rows empty')
    starts = [s * size for s in range(num_strata)]
    sizes = [min(size, self.num_rows - b) for b in starts]
    return starts, sizes

  def _components(self):
    return self._strategy.experimental_local_results(self._variable)

  def _shard_values(self, make_rows):
    values = []
    for r in range(self.num_shards):
      _, n = self.shard_range(r)
      values.append(tf.concat(
          [make_rows(r, n),
           tf.zeros([self.rows_per_shard + 1 - n, self.dim], tf.float32)], 0))
    return values

  def _assign_components(self, values):
    """Gives each local component `values[its global replica id]` (sharded)
    or `values[0]` (replicated)."""
    ops = []
    for replica, component in zip(self._replica_ids, self._components()):
      with tf.device(component.device):
        ops.append(component.assign(
            values[replica if self.mode == SHARDED else 0]))
    return tf.group(ops)

  def _gather_shards(self):
    """Every replica's shard rows, [shards * S, d], from every worker.

    A collective: every worker must call it, in the same order.
    """
    if self._gather_fn is None:
      def gather():
        rows = self._variable.read_value()[:self.rows_per_shard]
        return tf.distribute.get_replica_context().all_gather(rows, axis=0)
      self._gather_fn = tf.function(lambda: self._strategy.run(gather))
    return self._strategy.experimental_local_results(self._gather_fn())[0]

  # ---- Cross-replica context: whole-bank access ----

  def read_all(self):
    """The full [N, d] bank (cross-replica context; for tests, eval, saving).

    Under MultiWorkerMirroredStrategy a sharded bank is gathered from every
    worker: a collective, which every worker must call.
    """
    components = self._components()
    if self.mode == REPLICATED:
      return tf.convert_to_tensor(components[0].read_value())
    if len(components) < self.num_shards:
      return self._gather_shards()[:self.num_rows]
    parts = [c.read_value()[:self.rows_per_shard] for c in components]
    return tf.concat(parts, 0)[:self.num_rows]

  def read_replicas(self):
    """Each local replica's copy (replicated) or shard (sharded), as tensors.

    All replicas in one process; under MultiWorkerMirroredStrategy this
    worker's, in the order of their global replica ids.
    """
    return [tf.convert_to_tensor(c.read_value()) for c in self._components()]

  def assign_all(self, rows):
    """Sets the full bank from an [N, d] tensor (cross-replica context)."""
    rows = tf.convert_to_tensor(rows, tf.float32)
    if self.mode == REPLICATED:
      return self._assign_components([rows])
    return self._assign_components(self._shard_values(
        lambda r, n: rows[r * self.rows_per_shard:r * self.rows_per_shard + n]))

  def _serialize_to_tensors(self):
    return {'rows': self.read_all()}

  def _restore_from_tensors(self, restored_tensors):
    return self.assign_all(restored_tensors['rows'])

  # ---- Replica context: the step ----

  def gather_rows(self, indices):
    """Rows of this replica's copy or shard (local row ids; replica ctx)."""
    return tf.raw_ops.ResourceGather(
        resource=self._variable.handle, indices=indices, dtype=tf.float32)

  def _owned(self, comm, indices):
    """(shard-local row or scratch row, is-owned mask) of global indices."""
    local = indices - comm.replica_id * self.rows_per_shard
    owned = (local >= 0) & (local < self.rows_per_shard)
    return tf.where(owned, local, self.rows_per_shard), owned

  def lookup(self, indices, comm=None):
    """Rows of this replica's batch indices, fetched from their owners.

    Args:
      indices: int32 [B] global row ids of this replica's batch.
      comm: a `CrossReplica` (made if None).

    Returns:
      float32 [B, d], no gradient.
    """
    indices = tf.cast(indices, tf.int32)
    if self.mode == REPLICATED:
      return self.gather_rows(indices)
    comm = comm or CrossReplica()
    all_indices = comm.all_gather(indices)
    local, owned = self._owned(comm, all_indices)
    # Select, not multiply: the scratch row may hold a non-finite foreign
    # write (normalise(0)), and NaN * 0 is NaN.
    rows = self.gather_rows(local)
    rows = tf.where(owned[:, None], rows, tf.zeros_like(rows))
    # Exactly one replica contributes a non-zero row: the sum is exact.
    return comm.local_rows(comm.sum(rows), tf.shape(indices)[0])

  def negative_scores(self, queries, negatives, comm=None):
    """Dot products of this replica's queries with their negatives' rows.

    Args:
      queries: float32 [B, d] (gradients flow back to them).
      negatives: from `NegativeSampler.sample`: in replicated mode the global
        row ids, int32 [B, m] (per sample) or [m] (shared); in sharded mode
        this replica's shard-local row ids of the GLOBAL batch, [B*R, m/R] or
        [m/R].
      comm: a `CrossReplica` (made if None).

    Returns:
      float32 [B, m] scores, negatives in stratum (= shard) order.
    """
    return negative_scores([self], [queries], negatives, comm)[0]

  def update(self, indices, features, comm=None):
    """row <- normalise(mu*row + (1-mu)*feature) for the GLOBAL batch.

    Every replica applies the same update for the rows it holds, so replicated
    copies stay bit-identical. Indices are assumed unique within a global
    batch (one epoch visits each clip once).

    Args:
      indices: int32 [B] global row ids of this replica's batch.
      features: [B, d] this replica's features (gradient stopped here).
      comm: a `CrossReplica` (made if None).

    Returns:
      The update op.
    """
    comm = comm or CrossReplica()
    indices = comm.all_gather(tf.cast(indices, tf.int32))
    features = comm.all_gather(
        tf.stop_gradient(tf.cast(features, tf.float32)))
    if self.mode == SHARDED:
      indices, _ = self._owned(comm, indices)
    rows = self.gather_rows(indices)
    new_rows = _l2_normalize(self.momentum * rows +
                             (1.0 - self.momentum) * features)
    return tf.raw_ops.ResourceScatterUpdate(
        resource=self._variable.handle, indices=indices, updates=new_rows)


def negative_scores(banks, queries, negatives, comm=None):
  """`MemoryBank.negative_scores` of several banks in one exchange.

  Scoring both directions of CPD together matters in sharded mode beyond the
  saved round trips: the gradients of the all-gathers are collectives too,
  and two independent gradient chains could be traced in a different order
  on different replicas (mismatched collectives). One chain cannot.

  Args:
    banks: list of `MemoryBank`s with the same mode and layout.
    queries: list of float32 [B, d], one per bank.
    negatives: shared row ids for all banks (see `MemoryBank.negative_scores`).
    comm: a `CrossReplica` (made if None).

  Returns:
    List of float32 [B, m], one per bank.
  """
  if len(banks) != len(queries) or not banks:
    raise ValueError('`banks` and `queries` must be non-empty, same length')
  if len({(b.mode, b.num_rows, b.num_shards) for b in banks}) != 1:
    raise ValueError('`banks` must share mode and layout')
  queries = [tf.convert_to_tensor(q, tf.float32) for q in queries]
  if banks[0].mode == REPLICATED:
    return [_scores(q, b.gather_rows(negatives))
            for b, q in zip(banks, queries)]
  comm = comm or CrossReplica()
  batch = queries[0].shape[0]
  num = len(banks)
  all_queries = comm.all_gather(tf.stack(queries, axis=1))  # [B*R, K, d]
  local = tf.stack(
      [_scores(all_queries[:, k], b.gather_rows(negatives))
       for k, b in enumerate(banks)], axis=0)  # [K, B*R, m/R]
  # [m/R, K, B*R] per shard -> [m, K, B*R] in shard order -> local rows.
  gathered = comm.all_gather(tf.transpose(local, [2, 0, 1]))
  scores = comm.local_rows(tf.transpose(gathered, [2, 1, 0]),
                           tf.shape(queries[0])[0])  # [B, K, m]
  scores = tf.reshape(scores, [-1 if batch is None else batch, num,
                               negatives.shape[-1] * banks[0].num_shards])
  return tf.unstack(scores, axis=1)


def _scores(queries, rows):
  """[B, d] x ([B, m, d] | [m, d]) -> [B, m]."""
  if rows.shape.rank == 3:
    return tf.einsum('bd,bmd->bm', queries, rows)
  return tf.matmul(queries, rows, transpose_b=True)


class NegativeSampler(tf.Module):
  """Uniform negatives (noise distribution 1/N), reproducible from its state.

  Draws are stratified: m/K negatives from each of K contiguous row ranges
  (K = shards in sharded mode, so each shard scores its own draws; 1 by
  default in replicated mode). Every replica computes the same draws from
  (seed, step) with stateless ops, so the negatives of a sample do not depend
  on the replica count and no sampler state needs synchronising. The step
  counter is checkpointed; a resumed run draws the same negatives.
  """

  PER_SAMPLE = 'per_sample'
  SHARED = 'shared'

  def __init__(self, num_negatives=4096, sharing=PER_SAMPLE, seed=0,
               name='negative_sampler'):
    """Creates the sampler.

    Args:
      num_negatives: m, > 0.
      sharing: 'per_sample' (the papers' code: m draws per sample) or 'shared'
        (one set of m per step for the whole global batch).
      seed: Python int.
      name: module name.
    """
    super().__init__(name=name)
    if num_negatives <= 0:
      raise ValueError(f'`num_negatives` must be > 0, got {num_negatives}')
    if sharing not in (self.PER_SAMPLE, self.SHARED):
      raise ValueError(f'`sharing` must be {self.PER_SAMPLE!r} or '
                       f'{self.SHARED!r}, got {sharing!r}')
    self.num_negatives = int(num_negatives)
    self.sharing = sharing
    self.seed = int(seed)
    self.step = tf.Variable(
        0, dtype=tf.int64, trainable=False, name='step',
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

  def _draw(self, step, stratum, start, size, rows, num_strata):
    shape = [self.num_negatives // num_strata]
    if rows is not None:
      shape = [rows] + shape
    bits = tf.random.stateless_uniform(
        shape, seed=tf.stack([step, self.seed * 65536 + tf.cast(
            stratum, tf.int64)]), minval=None, maxval=None, dtype=tf.int64)
    # Modulo bias is size / 2**63: negligible.
    return tf.cast(tf.math.floormod(bits, tf.cast(size, tf.int64)) +
                   tf.cast(start, tf.int64), tf.int32)

  def sample(self, bank, local_batch_size, num_strata=1, comm=None):
    """Draws this step's negatives for `bank` and advances the step.

    Args:
      bank: the `MemoryBank` whose rows are drawn.
      local_batch_size: B, this replica's batch size (Python int).
      num_strata: K for a replicated bank (must divide m); a sharded bank
        always uses its shards.
      comm: a `CrossReplica` (made if None).

    Returns:
      Row ids in the layout `MemoryBank.negative_scores` expects.
    """
    comm = comm or CrossReplica()
    if bank.mode == SHARDED:
      num_strata = bank.num_shards
    if self.num_negatives % num_strata:
      raise ValueError(f'`num_negatives` ({self.num_negatives}) must be a '
                       f'multiple of the number of strata ({num_strata})')
    step = tf.convert_to_tensor(self.step.read_value())
    self.step.assign_add(1)
    per_sample = self.sharing == self.PER_SAMPLE
    global_batch = local_batch_size * comm.num_replicas
    if bank.mode == SHARDED:
      start, _ = bank.shard_range(0)
      _, sizes = zip(*[bank.shard_range(r) for r in range(bank.num_shards)])
      size = tf.gather(tf.constant(sizes, tf.int64), comm.replica_id)
      return self._draw(step, comm.replica_id, start, size,
                        global_batch if per_sample else None, num_strata)
    starts, sizes = bank.stratum_bounds(num_strata)
    draws = [self._draw(step, s, starts[s], sizes[s],
                        global_batch if per_sample else None, num_strata)
             for s in range(num_strata)]
    draws = tf.concat(draws, axis=-1)
    if per_sample:
      draws = comm.local_rows(draws, local_batch_size)
    return draws
