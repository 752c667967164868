"""Classification losses: softmax cross-entropy and anchor loss.

Every loss here returns the PER-EXAMPLE loss [B] in float32. The train step
sums it and divides by the global batch size, which is what makes the loss
(and so the gradient) independent of how the batch is split over replicas; a
loss that averaged over its own (per-replica) batch would silently scale the
gradients by the number of replicas.

The signature every trainer loss follows, so that other losses (e.g. Data
Parameters, which also need `features['clip_index']`) plug in unchanged:

  loss_fn(labels, logits, *, epoch, features) -> per-example loss [B]

`labels` int [B], `logits` float32 [B, C], `epoch` a float scalar tensor (the
fraction of epochs done, for schedules inside the loss), `features` the batch
dict. A loss that owns trainable variables exposes them as
`loss_fn.trainable_variables`; the trainer then checkpoints them and optimises
them with the main optimizer, unless the loss also has
`apply_gradients(grads)`, which the trainer then calls in replica context with
the gradients of those variables (own learning rates, sparse updates: see
`spl.data_parameters`). A loss with `build(num_classes=)` is built by the
trainer under the strategy scope, so its variables are distributed like the
model's.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import tensorflow as tf


def _check_inputs(labels: tf.Tensor, logits: tf.Tensor):
  logits = tf.convert_to_tensor(logits)
  if logits.dtype != tf.float32:
    # Losses are computed in float32 under mixed precision; accepting bf16
    # logits here would hide a missing cast in the model.
    raise ValueError(f'`logits` must be float32, got {logits.dtype.name}')
  if logits.shape.rank != 2:
    raise ValueError(f'`logits` must be [batch, classes], got {logits.shape}')
  labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
  return labels, logits


def softmax_cross_entropy(labels: tf.Tensor,
                          logits: tf.Tensor,
                          *,
                          label_smoothing: float = 0.0,
                          epoch: Optional[tf.Tensor] = None,
                          features: Optional[Mapping[str, Any]] = None
                          ) -> tf.Tensor:
  """Per-example softmax cross-entropy.

  Args:
    labels: Integer class ids [B].
    logits: float32 logits [B, C].
    label_smoothing: Mass spread uniformly over all classes, in [0, 1).
    epoch: Unused; part of the trainer's loss signature.
    features: Unused; part of the trainer's loss signature.

  Returns:
    float32 [B].
  """
  del epoch, features
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(
        f'`label_smoothing` must be in [0, 1), got {label_smoothing}')
  labels, logits = _check_inputs(labels, logits)
  if label_smoothing == 0.0:
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=logits)
  num_classes = tf.shape(logits)[-1]
  onehot = tf.one_hot(labels, num_classes, dtype=tf.float32)
  smooth = onehot * (1.0 - label_smoothing) + label_smoothing / tf.cast(
      num_classes, tf.float32)
  return tf.nn.softmax_cross_entropy_with_logits(labels=smooth, logits=logits)


def anchor_loss(labels: tf.Tensor,
                logits: tf.Tensor,
                *,
                gamma: float = 0.5,
                slack: float = 0.05,
                warmup_epochs: float = 0.0,
                epoch: Optional[tf.Tensor] = None,
                features: Optional[Mapping[str, Any]] = None) -> tf.Tensor:
  """Anchor loss (Ryou et al., ICCV 2019), per example.

  As the reference code (slryou41/AnchorLoss `anchor_loss.py`, `AnchorLoss`
  with its default `anchor='neg'`): every class is an independent SIGMOID
  (a sum of binary cross-entropies, not a softmax), the target class keeps its
  plain BCE and every negative class's BCE is scaled by a modulator:

    p_k = sigmoid(x_k)                                      (`pt`)
    BCE_k = -y_k log p_k - (1 - y_k) log(1 - p_k)           (`bce_loss`)
    q* = stop_gradient(max(p_t - slack, 0))                 (`pt_pos`)
    L = -log p_t - sum_{k != t} (1 + p_k - q*)^gamma log(1 - p_k)

  The modulator (`scaling_neg`) applies to EVERY negative, not only those
  with p_k > q*: it is above 1 (pushed harder) for negatives scored above the
  anchor and below 1 for easy ones; the gradient flows through it (only q* is
  detached). While `epoch < warmup_epochs` the loss is the plain softmax
  cross-entropy (the reference's `nn.CrossEntropyLoss` warm-up, 5 epochs when
  `warm_up=True`), as anchor loss needs a sensible p_t to anchor on. The two
  phases are different losses (softmax vs. per-class sigmoid), so the loss
  value jumps at the switch, as in the reference.

  Args:
    labels: Integer class ids [B].
    logits: float32 logits [B, C].
    gamma: Exponent of the negatives' modulator (reference default 0.5).
    slack: Margin subtracted from the target probability to make the anchor
      (reference default 0.05).
    warmup_epochs: Plain softmax cross-entropy while `epoch < warmup_epochs`.
    epoch: Fraction of epochs done (scalar); required when
      `warmup_epochs > 0`.
    features: Unused; part of the trainer's loss signature.

  Returns:
    float32 [B]: the loss summed over classes (the reference then averages
    over the batch, as the trainer does).
  """
  del features
  if gamma < 0:
    raise ValueError(f'`gamma` must be >= 0, got {gamma}')
  if not 0.0 <= slack < 1.0:
    raise ValueError(f'`slack` must be in [0, 1), got {slack}')
  if warmup_epochs < 0:
    raise ValueError(f'`warmup_epochs` must be >= 0, got {warmup_epochs}')
  if warmup_epochs > 0 and epoch is None:
    raise ValueError('`epoch` is required when `warmup_epochs` > 0')
  labels, logits = _check_inputs(labels, logits)
  onehot = tf.one_hot(labels, tf.shape(logits)[-1], dtype=tf.float32)
  bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=onehot, logits=logits)
  probs = tf.sigmoid(logits)
  anchor = tf.stop_gradient(tf.maximum(
      tf.reduce_sum(onehot * probs, axis=-1, keepdims=True) - slack, 0.0))
  # 1 + p_k - q* > p_k > 0; the floor only keeps the power's gradient finite
  # where p_k underflows to 0 with q* = 1 (slack 0).
  modulator = tf.pow(
      tf.maximum(1.0 + probs - anchor, 2.0**-126), gamma)
  anchored = tf.reduce_sum(onehot * bce + (1.0 - onehot) * modulator * bce,
                           axis=-1)
  if warmup_epochs <= 0:
    return anchored
  ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                      logits=logits)
  in_warmup = tf.cast(epoch, tf.float32) < float(warmup_epochs)
  return tf.where(in_warmup, ce, anchored)
