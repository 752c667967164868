"""Cross-pair NCE of CPD (Eq. 5 of the paper) with memory banks.

For a query q (a clip's video feature) and the text row k_j of clip j:
P(j|q) = exp(k_j.q / tau) / Z, noise distribution P_n = 1/N, and
h(j, q) = P(j|q) / (P(j|q) + m/N). The per-query loss is

  -log h(i, q) - sum_{j in m negatives} log(1 - h(j, q)),

and the same with the roles of video and text swapped. Since
h = sigmoid(s/tau - log(Z*m/N)), we evaluate log h and log(1 - h) with
`log_sigmoid`: no exp(1/0.07) in the graph, no overflow, exact in float32.
Logits, loss and banks are float32 whatever the mixed-precision policy
(exp(1/0.07) overflows float16).

`CrossModalNCE` is the single-replica building block of a CPD train step:
call it inside `strategy.run` with this replica's embeddings and clip indices;
it samples negatives, scores, returns the loss and every NCE term, and updates
the banks after scoring. `SelfInstanceNCE`, the paper's self-instance baseline
(Eq. 2), is the same NCE over the same banks with a joint score per pair.
"""

import tensorflow as tf

from cpd import memory_bank as mb

Z_FIRST_BATCH = 'first_batch'
Z_EMA = 'ema'
Z_CONSTANT = 'constant'
Z_POLICIES = (Z_FIRST_BATCH, Z_EMA, Z_CONSTANT)
POSITIVE_FROM_BANK = 'bank'
POSITIVE_FROM_FEATURE = 'feature'


def nce_log_h(scores, z, temperature, num_negatives, num_rows):
  """(log h, log(1 - h)) of similarity scores, computed stably.

  Args:
    scores: float32 tensor of dot products.
    z: the normalisation constant Z (scalar, > 0).
    temperature: tau.
    num_negatives: m.
    num_rows: N, the noise distribution is 1/N.

  Returns:
    Two tensors shaped like `scores`.
  """
  logits = scores / temperature - tf.math.log(
      tf.cast(z, tf.float32) * (num_negatives / num_rows))
  return tf.math.log_sigmoid(logits), tf.math.log_sigmoid(-logits)


def nce_terms(positive_scores, negative_scores, z, temperature, num_rows):
  """The NCE loss of one direction and what it is made of.

  Args:
    positive_scores: float32 [B].
    negative_scores: float32 [B, m].
    z: scalar Z.
    temperature: tau.
    num_rows: N.

  Returns:
    Dict: 'loss' [B] per-query loss, 'positive_h' [B], 'positive_prob' [B]
    (P(i|q) = exp(s/tau)/Z).
  """
  num_negatives = negative_scores.shape[-1]
  log_h_pos, _ = nce_log_h(positive_scores, z, temperature, num_negatives,
                           num_rows)
  _, log_1mh_neg = nce_log_h(negative_scores, z, temperature, num_negatives,
                             num_rows)
  return {
      'loss': -log_h_pos - tf.reduce_sum(log_1mh_neg, axis=-1),
      'positive_h': tf.exp(log_h_pos),
      'positive_prob': tf.exp(positive_scores / temperature) / z,
  }


def estimate_z(positive_scores, negative_scores, temperature, num_rows, comm,
               skip=None):
  """Z = N * mean(exp(s / tau)) over the global batch's scores (lemniscate).

  Args:
    positive_scores: float32 [B].
    negative_scores: float32 [B, m].
    temperature: tau.
    num_rows: N.
    comm: `CrossReplica`, averages over replicas.
    skip: optional scalar bool tensor, the same on every replica: when true
      the exp over the score matrix is skipped (Z already frozen) and the
      result is meaningless. The all-reduce stays outside the branch so that
      every replica issues the same collectives.

  Returns:
    Scalar float32, gradient stopped.
  """
  pos = tf.stop_gradient(positive_scores)
  neg = tf.stop_gradient(negative_scores)

  def local_sums():
    total = (tf.reduce_sum(tf.exp(pos / temperature)) +
             tf.reduce_sum(tf.exp(neg / temperature)))
    count = tf.cast(tf.size(pos) + tf.size(neg), tf.float32)
    return tf.stack([total, count])

  if skip is None:
    sums = local_sums()
  else:
    sums = tf.cond(skip, lambda: tf.ones([2], tf.float32), local_sums)
  total, count = tf.unstack(comm.sum(sums))
  return total / count * num_rows


class NormalisationConstant(tf.Module):
  """Z of one direction: frozen after the first batch, an EMA, or a constant.

  The value and whether it has been estimated are checkpointed, so a resumed
  run keeps the frozen Z. Every replica computes the same (all-reduced) Z,
  so each writes its own copy.
  """

  def __init__(self, policy=Z_FIRST_BATCH, momentum=0.99, constant=None,
               name='z'):
    """Creates Z.

    Args:
      policy: 'first_batch', 'ema' or 'constant'.
      momentum: EMA momentum (policy 'ema'), in [0, 1).
      constant: the value for policy 'constant', > 0.
      name: module name.
    """
    super().__init__(name=name)
    if policy not in Z_POLICIES:
      raise ValueError(f'`z_policy` must be one of {Z_POLICIES}, got '
                       f'{policy!r}')
    if not 0.0 <= momentum < 1.0:
      raise ValueError(f'`z_momentum` must be in [0, 1), got {momentum}')
    if policy == Z_CONSTANT and (constant is None or constant <= 0):
      raise ValueError(f'`z_constant` must be > 0 for policy "constant", '
                       f'got {constant}')
    self.policy = policy
    self.momentum = float(momentum)
    sync = dict(synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                trainable=False)
    self.value = tf.Variable(float(constant or 0.0), dtype=tf.float32,
                             name='value', **sync)
    self.estimated = tf.Variable(policy == Z_CONSTANT, dtype=tf.bool,
                                 name='estimated', **sync)

  def __call__(self, estimate_fn):
    """Returns Z for this step, updating the state.

    Args:
      estimate_fn: callable (skip) -> this batch's estimate; `skip` is a bool
        tensor, true when the estimate will not be used (frozen Z). Not
        called for policy 'constant'.

    Returns:
      Scalar float32.
    """
    if self.policy == Z_CONSTANT:
      return tf.convert_to_tensor(self.value.read_value())
    skip = None
    if self.policy == Z_FIRST_BATCH:
      skip = tf.convert_to_tensor(self.estimated.read_value())
    estimate = estimate_fn(skip)
    current = self.value.read_value()
    if self.policy == Z_FIRST_BATCH:
      z = tf.where(self.estimated.read_value(), current, estimate)
    else:
      z = tf.where(self.estimated.read_value(),
                   self.momentum * current + (1.0 - self.momentum) * estimate,
                   estimate)
    self.value.assign(z)
    self.estimated.assign(True)
    return z


def _validate_common(num_rows, num_negatives, temperature):
  if num_rows <= 0:
    raise ValueError(f'`num_rows` must be > 0, got {num_rows}')
  if num_negatives <= 0:
    raise ValueError(f'`num_negatives` must be > 0, got {num_negatives}')
  if temperature <= 0:
    raise ValueError(f'`temperature` must be > 0, got {temperature}')


# ---- Shared by the cross-pair and the self-instance objective ----


def _pair_banks(num_rows, dim, bank_mode, bank_momentum, seed):
  """(video bank, text bank): one row per video-text pair and modality."""
  return (mb.MemoryBank(num_rows, dim, bank_mode, bank_momentum,
                        seed=2 * seed, name='video_bank'),
          mb.MemoryBank(num_rows, dim, bank_mode, bank_momentum,
                        seed=2 * seed + 1, name='text_bank'))


def _float32_batch(video_embeddings, text_embeddings, indices):
  """(video, text, indices) as float32, float32, int32; static batch size."""
  video = tf.cast(video_embeddings, tf.float32)
  text = tf.cast(text_embeddings, tf.float32)
  if video.shape[0] is None:
    raise ValueError('`video_embeddings` needs a static batch size')
  return video, text, tf.cast(indices, tf.int32)


def _nce_with_z(positive_scores, negative_scores, z_state, temperature,
                num_rows, comm):
  """(NCE terms, Z) of one kind of query; Z is this step's, gradient-free."""
  z = z_state(lambda skip: estimate_z(positive_scores, negative_scores,
                                      temperature, num_rows, comm, skip))
  terms = nce_terms(positive_scores, negative_scores, tf.stop_gradient(z),
                    temperature, num_rows)
  return terms, z


def _nce_metrics(prefix, terms, z):
  """Batch means of `nce_terms` and Z, named '<prefix>/loss' etc."""
  return {f'{prefix}/loss': tf.reduce_mean(terms['loss']),
          f'{prefix}/z': z,
          f'{prefix}/positive_prob': tf.reduce_mean(terms['positive_prob']),
          f'{prefix}/positive_h': tf.reduce_mean(terms['positive_h'])}


class CrossModalNCE(tf.Module):
  """Cross-pair discrimination loss, both directions, with two memory banks.

  Build under the strategy scope; call from the replica function:

    loss, metrics = nce(video_embeddings, text_embeddings, clip_indices)

  `loss` is the mean over this replica's batch of the sum of both directions;
  divide it by `num_replicas_in_sync` before taking gradients, as for any
  per-replica loss. The banks are updated after scoring (inside the call).
  """

  def __init__(self, num_rows, dim=256, num_negatives=4096, temperature=0.07,
               bank_momentum=0.5, z_policy=Z_FIRST_BATCH, z_momentum=0.99,
               z_constant=None, positive_source=POSITIVE_FROM_BANK,
               negative_sharing=mb.NegativeSampler.PER_SAMPLE,
               bank_mode=mb.REPLICATED, num_strata=1, seed=0,
               name='cross_modal_nce'):
    """Creates the banks, Z of each direction and the negative sampler.

    Args:
      num_rows: N, number of training clips.
      dim: embedding width.
      num_negatives: m.
      temperature: tau.
      bank_momentum: mu of the bank update.
      z_policy: 'first_batch' (papers), 'ema' or 'constant'.
      z_momentum: EMA momentum for 'ema'.
      z_constant: Z for 'constant'.
      positive_source: 'bank' (score the positive against the other
        modality's bank row, original code) or 'feature' (its current
        feature; gradients then reach both encoders through the positive).
      negative_sharing: 'per_sample' or 'shared'.
      bank_mode: 'replicated' or 'sharded'.
      num_strata: strata of the negative draws for a replicated bank (a
        sharded bank uses one per shard).
      seed: seeds bank initialisation and negative draws.
      name: module name.
    """
    super().__init__(name=name)
    _validate_common(num_rows, num_negatives, temperature)
    if positive_source not in (POSITIVE_FROM_BANK, POSITIVE_FROM_FEATURE):
      raise ValueError(f'`positive_source` must be "bank" or "feature", got '
                       f'{positive_source!r}')
    self.num_rows = int(num_rows)
    self.temperature = float(temperature)
    self.positive_source = positive_source
    self.num_strata = int(num_strata)
    self.video_bank, self.text_bank = _pair_banks(
        num_rows, dim, bank_mode, bank_momentum, seed)
    self.sampler = mb.NegativeSampler(num_negatives, negative_sharing, seed)
    self.z_v2t = NormalisationConstant(z_policy, z_momentum, z_constant,
                                       name='z_v2t')
    self.z_t2v = NormalisationConstant(z_policy, z_momentum, z_constant,
                                       name='z_t2v')

  def _direction(self, queries, positives, neg, z_state, comm):
    pos = tf.reduce_sum(queries * positives, axis=-1)
    return _nce_with_z(pos, neg, z_state, self.temperature, self.num_rows,
                       comm)

  def __call__(self, video_embeddings, text_embeddings, indices):
    """One step's loss and bank update (replica context).

    Args:
      video_embeddings: [B, d] L2-normalised (any float dtype).
      text_embeddings: [B, d] L2-normalised.
      indices: int [B] clip indices (bank rows).

    Returns:
      (loss, metrics): scalar float32 loss (mean over this replica's batch)
      and a dict of scalar float32 metrics per direction: loss, z,
      positive_prob, positive_h, and the total 'nce/loss'.
    """
    comm = mb.CrossReplica()
    video, text, indices = _float32_batch(video_embeddings, text_embeddings,
                                          indices)
    negatives = self.sampler.sample(self.text_bank, video.shape[0],
                                    self.num_strata, comm)
    if self.positive_source == POSITIVE_FROM_BANK:
      text_pos = self.text_bank.lookup(indices, comm)
      video_pos = self.video_bank.lookup(indices, comm)
    else:
      text_pos, video_pos = text, video
    neg_v2t, neg_t2v = mb.negative_scores(
        [self.text_bank, self.video_bank], [video, text], negatives, comm)
    v2t, z_v2t = self._direction(video, text_pos, neg_v2t, self.z_v2t, comm)
    t2v, z_t2v = self._direction(text, video_pos, neg_t2v, self.z_t2v, comm)
    self.video_bank.update(indices, video, comm)
    self.text_bank.update(indices, text, comm)
    metrics = {**_nce_metrics('nce/v2t', v2t, z_v2t),
               **_nce_metrics('nce/t2v', t2v, z_t2v)}
    loss = metrics['nce/v2t/loss'] + metrics['nce/t2v/loss']
    metrics['nce/loss'] = loss
    return loss, metrics


class SelfInstanceNCE(tf.Module):
  """Self-instance discrimination baseline (Eq. 2 of the CPD paper), by NCE.

  Every video-text pair i is a class. The memory banks hold both modalities'
  features of every pair, (b^v_j, b^t_j) for pair j, and play the class
  weights of Eq. 1 (the non-parametric classifier of Wu et al. 2018), so
  Eq. 2 is

    p(i|(v, t)) = exp(b^v_i.f^v / tau + b^t_i.f^t / tau)
                  / sum_j exp(b^v_j.f^v / tau + b^t_j.f^t / tau):

  the video feature is compared with video rows and the text feature with
  text rows (self-correlation), never across modalities. It is approximated
  as the cross-pair loss is (Eq. 5): with the joint score
  s_j = b^v_j.f^v + b^t_j.f^t, P(j|(v, t)) = exp(s_j / tau) / Z, uniform
  noise P_n = 1/N, h(j) = P(j) / (P(j) + m/N), and per pair

    -log h(i) - sum_{j in m negatives} log(1 - h(j)),

  the negatives being m pairs drawn uniformly from the banks (both rows of a
  drawn pair), the positive the pair's own bank rows. One Z (one joint
  query, where `CrossModalNCE` has one per direction), estimated, frozen and
  checkpointed as there. Both banks are updated with the pair's features
  after scoring. Banks, sampler, Z and replica conventions are
  `CrossModalNCE`'s: call it from the replica function with this replica's
  batch; the loss is the mean over this replica's batch, to be divided by
  `num_replicas_in_sync` before taking gradients.
  """

  def __init__(self, num_rows, dim=256, num_negatives=4096, temperature=0.07,
               bank_momentum=0.5, z_policy=Z_FIRST_BATCH, z_momentum=0.99,
               z_constant=None, negative_sharing=mb.NegativeSampler.PER_SAMPLE,
               bank_mode=mb.REPLICATED, num_strata=1, seed=0,
               name='self_instance_nce'):
    """Creates both banks, Z and the sampler; arguments as `CrossModalNCE`'s.

    Args:
      num_rows: N, number of training pairs (classes).
      dim: embedding width.
      num_negatives: m.
      temperature: tau.
      bank_momentum: mu of the bank update of both modalities.
      z_policy: 'first_batch' (papers), 'ema' or 'constant'.
      z_momentum: EMA momentum for 'ema'.
      z_constant: Z for 'constant'.
      negative_sharing: 'per_sample' or 'shared'.
      bank_mode: 'replicated' or 'sharded'.
      num_strata: strata of the negative draws for a replicated bank.
      seed: seeds bank initialisation and negative draws.
      name: module name.
    """
    super().__init__(name=name)
    _validate_common(num_rows, num_negatives, temperature)
    self.num_rows = int(num_rows)
    self.temperature = float(temperature)
    self.num_strata = int(num_strata)
    self.video_bank, self.text_bank = _pair_banks(
        num_rows, dim, bank_mode, bank_momentum, seed)
    self.sampler = mb.NegativeSampler(num_negatives, negative_sharing, seed)
    self.z = NormalisationConstant(z_policy, z_momentum, z_constant)

  def __call__(self, video_embeddings, text_embeddings, indices):
    """One step's loss and update of both banks (replica context).

    Args:
      video_embeddings: [B, d] L2-normalised (any float dtype).
      text_embeddings: [B, d] L2-normalised, the same pairs' titles.
      indices: int [B] pair indices (bank rows).

    Returns:
      (loss, metrics): scalar float32 loss (mean over this replica's batch)
      and scalar float32 metrics 'instance/loss', 'instance/z',
      'instance/positive_prob', 'instance/positive_h'.
    """
    comm = mb.CrossReplica()
    video, text, indices = _float32_batch(video_embeddings, text_embeddings,
                                          indices)
    negatives = self.sampler.sample(self.video_bank, video.shape[0],
                                    self.num_strata, comm)
    pos = (tf.reduce_sum(video * self.video_bank.lookup(indices, comm), -1) +
           tf.reduce_sum(text * self.text_bank.lookup(indices, comm), -1))
    neg_video, neg_text = mb.negative_scores(
        [self.video_bank, self.text_bank], [video, text], negatives, comm)
    terms, z = _nce_with_z(pos, neg_video + neg_text, self.z,
                           self.temperature, self.num_rows, comm)
    self.video_bank.update(indices, video, comm)
    self.text_bank.update(indices, text, comm)
    metrics = _nce_metrics('instance', terms, z)
    return metrics['instance/loss'], metrics
