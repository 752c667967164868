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
