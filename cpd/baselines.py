"""The two baseline objectives of the CPD paper's Table 1a.

* Ranking loss (Eq. 4): `ranking_loss`, below.
* Self-instance discrimination (Eq. 2): it needs the memory banks, sampler and
  normalising constant of the cross-pair NCE, so it lives beside it as
  `cpd.nce.SelfInstanceNCE` and is re-exported here.
"""

import tensorflow as tf

from cpd import nce

SelfInstanceNCE = nce.SelfInstanceNCE

# delta of Eq. 4. Not in the paper (nor in the authors' code, which has no
# ranking loss): VSE++ (Faghri et al. 2018, fartashf/vsepp train.py
# `--margin` default), the max-margin video/image-text baseline Eq. 4 is
# modelled on, also with cosine similarities of unit embeddings.
RANKING_MARGIN = 0.2


def ranking_loss(video_embeddings, text_embeddings, margin=RANKING_MARGIN):
  """Eq. 4 of the CPD paper in both directions, negatives from the batch.

  With S the cosine similarity and n the batch size, for the video anchor
  v_i and the text anchor t_i

    L(v_i) = n^-1 sum_{j != i} max(0, delta + S(t_j, v_i) - S(t_i, v_i)),
    L(t_i) = n^-1 sum_{j != i} max(0, delta + S(v_j, t_i) - S(v_i, t_i)),

  each averaged over the batch's anchors; the loss is their sum. Note the
  n^-1 (the paper's, not (n-1)^-1): a batch of one has no negative and a zero
  loss. S is computed as a cosine here, so the value is Eq. 4's whatever the
  norm of the inputs (the CPD heads emit unit vectors anyway).

  Negatives are this replica's batch: no bank, no communication; n is the
  per-replica batch, like the per-GPU batch of a data-parallel run.

  Args:
    video_embeddings: [n, d] video features f^v.
    text_embeddings: [n, d] text features f^t of the same pairs.
    margin: delta, >= 0. Not given in the paper; the default 0.2 is VSE++'s
      (see `RANKING_MARGIN`).

  Returns:
    (loss, metrics): scalar float32 and a dict with the loss per direction
    ('ranking/v2t/loss': mean of L(v_i), 'ranking/t2v/loss': mean of
    L(t_i)) and their sum 'ranking/loss'.
  """
  if margin < 0:
    raise ValueError(f'`margin` must be >= 0, got {margin}')
  video = tf.math.l2_normalize(tf.cast(video_embeddings, tf.float32), -1)
  text = tf.math.l2_normalize(tf.cast(text_embeddings, tf.float32), -1)
  # sim[i, j] = S(v_i, t_j): row i holds the video anchor's candidates,
  # column i the text anchor's.
  sim = tf.matmul(video, text, transpose_b=True)
  n = tf.shape(sim)[0]
  positive = tf.linalg.diag_part(sim)
  off_diagonal = 1.0 - tf.eye(n, dtype=tf.float32)
  n = tf.cast(n, tf.float32)
  v2t = tf.nn.relu(margin + sim - positive[:, None]) * off_diagonal
  t2v = tf.nn.relu(margin + sim - positive[None, :]) * off_diagonal
  v2t = tf.reduce_mean(tf.reduce_sum(v2t, axis=1) / n)
  t2v = tf.reduce_mean(tf.reduce_sum(t2v, axis=0) / n)
  loss = v2t + t2v
  return loss, {'ranking/v2t/loss': v2t, 'ranking/t2v/loss': t2v,
                'ranking/loss': loss}


# ---- As loss modules of the CPD trainer ----
# (video, text, indices) -> (loss, metrics), like `cpd.nce.CrossModalNCE`;
# the trainer calls each with `num_rows` (bank rows = training clips) and
# `dim` (embedding width); gin binds the rest.


class RankingLoss(tf.Module):
  """The ranking-loss baseline (Eq. 4, both directions) as a loss module.

  `ranking_loss`: in-batch negatives, no bank, no state.
  """

  def __init__(self, *, num_rows: int, dim: int,
               margin: float = RANKING_MARGIN,
               name: str = 'ranking_loss'):
    """Creates the loss.

    Args:
      num_rows: unused (no bank); the trainer passes it to every loss.
      dim: unused, as `num_rows`.
      margin: delta of Eq. 4, >= 0. Not in the paper: 0.2, the margin of
        VSE++ (Faghri et al. 2018), as the CPD authors' code has no ranking
        loss to take it from.
      name: module name.
    """
    super().__init__(name=name)
    del num_rows, dim
    if margin < 0:
      raise ValueError(f'`margin` must be >= 0, got {margin}')
    self.margin = float(margin)

  def __call__(self, video_embeddings, text_embeddings, indices):
    del indices
    return ranking_loss(video_embeddings, text_embeddings,
                                  self.margin)


class VideoSelfInstance(tf.Module):
  """The self-instance baseline (Eq. 2) as a loss module: video AND text.

  Each video-text pair is a class scored with both modalities against both
  banks (`cpd.nce.SelfInstanceNCE`); the name is historical (gin:
  `cpd_self_instance`).
  """

  def __init__(self, *, num_rows: int, dim: int, name: str = 'self_instance',
               **kwargs):
    """Creates the loss; kwargs are `cpd.nce.SelfInstanceNCE`'s options."""
    super().__init__(name=name)
    self.instance = nce.SelfInstanceNCE(num_rows, dim, **kwargs)

  def __call__(self, video_embeddings, text_embeddings, indices):
    return self.instance(video_embeddings, text_embeddings, indices)
