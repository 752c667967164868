"""Tests of spl.losses against numpy references."""

import numpy as np
import pytest
import tensorflow as tf

from spl import losses


def _softmax(x):
  e = np.exp(x - x.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _anchor_reference(labels, logits, gamma, slack, anchor=None):
  """Anchor loss per example and its gradient, float64.

  Written from slryou41/AnchorLoss `anchor_loss.py` (anchor='neg'): per-class
  sigmoid p, BCE_k = softplus(x_k) - y_k x_k, q* = max(p_t - slack, 0)
  detached, loss = sum_k y_k BCE_k + (1 - y_k) (1 + p_k - q*)^gamma BCE_k.
  `anchor` overrides q* (to check the gradient by finite differences).
  """
  x = logits.astype(np.float64)
  rows = np.arange(len(labels))
  y = np.eye(x.shape[1])[labels]
  p = _sigmoid(x)
  bce = np.logaddexp(0.0, x) - y * x
  if anchor is None:
    anchor = np.maximum(p[rows, labels] - slack, 0.0)[:, None]
  base = 1.0 + p - anchor
  loss = np.sum(y * bce + (1 - y) * base**gamma * bce, axis=1)
  # d/dx_k: target p_t - 1; negative (1 + p_k - q*)^gamma p_k plus the
  # modulator's own derivative gamma base^(gamma - 1) p_k (1 - p_k) BCE_k.
  grad = y * (p - 1) + (1 - y) * (
      base**gamma * p + gamma * base**(gamma - 1) * p * (1 - p) * bce)
  return loss, grad, anchor


def _softmax_ce_reference(labels, logits):
  x = logits.astype(np.float64)
  y = np.eye(x.shape[1])[labels]
  p = _softmax(x)
  return -np.log(p[np.arange(len(labels)), labels]), p - y


def _tf_loss_and_grad(labels, logits, **kwargs):
  x = tf.constant(logits)
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = losses.anchor_loss(labels, x, **kwargs)
    total = tf.reduce_sum(loss)
  return loss.numpy(), tape.gradient(total, x).numpy()


def test_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(5, 4)).astype(np.float32)
  labels = np.array([0, 3, 1, 2, 3])
  got = losses.softmax_cross_entropy(labels, logits).numpy()
  want = -np.log(_softmax(logits)[np.arange(5), labels])
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_label_smoothing_matches_numpy():
  # Several examples with different labels (not only class 0) and 4 classes:
  # the label keeps 1 - 0.3 + 0.3 / 4, every class gets 0.3 / 4.
  logits = np.array([[2.0, 0.0, -1.0, 0.5], [0.1, -2.0, 1.5, 0.0],
                     [-0.3, 0.8, 0.0, 2.2]], np.float32)
  labels = np.array([0, 2, 1])
  got = losses.softmax_cross_entropy(labels, logits,
                                     label_smoothing=0.3).numpy()
  target = np.full((3, 4), 0.3 / 4)
  target[np.arange(3), labels] += 0.7
  log_p = np.log(_softmax(logits.astype(np.float64)))
  np.testing.assert_allclose(got, -(target * log_p).sum(1), rtol=1e-5)


def test_numpy_anchor_gradient_matches_finite_differences():
  # Guards the reference itself: its analytic gradient (q* held fixed, as
  # detached) against central differences of its value.
  rng = np.random.default_rng(2)
  x = rng.normal(size=(3, 4)) * 2
  labels = np.array([0, 3, 1])
  _, grad, anchor = _anchor_reference(labels, x, 0.5, 0.05)
  eps = 1e-6
  numeric = np.zeros_like(x)
  for i in range(3):
    for k in range(4):
      d = np.zeros_like(x)
      d[i, k] = eps
      up = _anchor_reference(labels, x + d, 0.5, 0.05, anchor)[0][i]
      down = _anchor_reference(labels, x - d, 0.5, 0.05, anchor)[0][i]
      numeric[i, k] = (up - down) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize('gamma,slack', [
    (0.5, 0.05), (2.0, 0.0), (0.0, 0.1), (0.5, 0.3)])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_anchor_loss_and_gradient_match_float64_reference(gamma, slack, seed):
  rng = np.random.default_rng(seed)
  logits = (rng.normal(size=(8, 6)) * 3).astype(np.float32)
  labels = rng.integers(0, 6, size=8)
  # A target far below zero: p_t < slack, so q* is clamped to 0.
  logits[0, labels[0]] = -6.0
  want_loss, want_grad, anchor = _anchor_reference(labels, logits, gamma,
                                                   slack)
  p = _sigmoid(logits.astype(np.float64))
  negative = np.eye(6)[labels] == 0
  # The inputs hold negatives on both sides of the anchor (a modulator only
  # above it, or a softmax, would not match) and, with slack, a clamped q*.
  assert np.any(negative & (p > anchor)) and np.any(negative & (p < anchor))
  if slack > 0:
    assert p[0, labels[0]] < slack
  got_loss, got_grad = _tf_loss_and_grad(labels, logits, gamma=gamma,
                                         slack=slack)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_grad, want_grad, rtol=1e-5, atol=1e-6)


def test_anchor_loss_is_softmax_cross_entropy_during_warmup():
  rng = np.random.default_rng(3)
  logits = (rng.normal(size=(5, 4)) * 3).astype(np.float32)
  labels = rng.integers(0, 4, size=5)
  ce_loss, ce_grad = _softmax_ce_reference(labels, logits)
  anchor_loss, anchor_grad, _ = _anchor_reference(labels, logits, 0.5, 0.05)
  loss_fn = tf.function(losses.anchor_loss)
  for epoch, (want_loss, want_grad) in ((0.0, (ce_loss, ce_grad)),
                                        (4.99, (ce_loss, ce_grad)),
                                        (5.0, (anchor_loss, anchor_grad)),
                                        (7.5, (anchor_loss, anchor_grad))):
    x = tf.constant(logits)
    with tf.GradientTape() as tape:
      tape.watch(x)
      loss = loss_fn(labels, x, warmup_epochs=5, epoch=tf.constant(epoch))
      total = tf.reduce_sum(loss)
    grad = tape.gradient(total, x)
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad.numpy(), want_grad, rtol=1e-5, atol=1e-6)


def test_anchor_loss_defaults_are_the_reference_codes():
  """gamma 0.5 and slack 0.05 when not given (slryou41/AnchorLoss defaults)."""
  rng = np.random.default_rng(4)
  logits = (rng.normal(size=(6, 5)) * 2).astype(np.float32)
  labels = rng.integers(0, 5, size=6)
  want, _, _ = _anchor_reference(labels, logits, 0.5, 0.05)
  np.testing.assert_allclose(losses.anchor_loss(labels, logits).numpy(), want,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('warmup_epochs', [0.5, 1, 3])
def test_anchor_loss_warmup_of_at_most_one_epoch(warmup_epochs):
  """Short warm-ups (one epoch, a fraction of one) are warm-ups too."""
  rng = np.random.default_rng(5)
  logits = (rng.normal(size=(4, 3)) * 2).astype(np.float32)
  labels = rng.integers(0, 3, size=4)
  ce, _ = _softmax_ce_reference(labels, logits)
  anchored, _, _ = _anchor_reference(labels, logits, 0.5, 0.05)
  for epoch, want in ((0.0, ce), (warmup_epochs - 0.25, ce),
                      (warmup_epochs, anchored)):
    got = losses.anchor_loss(labels, logits, warmup_epochs=warmup_epochs,
                             epoch=tf.constant(epoch))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('smoothing', [1.0, -0.1, 1.5])
def test_label_smoothing_outside_zero_one_is_refused(smoothing):
  with pytest.raises(ValueError, match='label_smoothing'):
    losses.softmax_cross_entropy([0], tf.zeros((1, 3)),
                                 label_smoothing=smoothing)


def test_anchor_loss_pushes_hard_negatives_harder():
  # Against the plain sum of BCEs (gamma 0): a negative scored above the
  # anchor costs more, one far below it costs less.
  hard = np.array([[1.0, 2.0, -4.0]], np.float32)
  easy = np.array([[1.0, -3.0, -4.0]], np.float32)
  for logits, sign in ((hard, 1.0), (easy, -1.0)):
    gap = (losses.anchor_loss([0], logits) -
           losses.anchor_loss([0], logits, gamma=0.0)).numpy()[0]
    assert sign * gap > 0.01


def test_anchor_loss_gradient_is_finite_in_graph():
  logits = tf.Variable([[30.0, -30.0, 0.0]])

  @tf.function
  def grad():
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(losses.anchor_loss([1], logits))
    return tape.gradient(loss, logits)

  assert np.all(np.isfinite(grad().numpy()))
  # q* = 1 (slack 0, p_t = 1) and a negative's p_k = 0: the modulator's base
  # would be 0.
  x = tf.constant([[200.0, -200.0, 0.0]])
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.reduce_sum(losses.anchor_loss([0], x, slack=0.0))
  assert np.isfinite(loss.numpy())
  assert np.all(np.isfinite(tape.gradient(loss, x).numpy()))


@pytest.mark.parametrize('kwargs,match', [
    (dict(gamma=-1.0), 'gamma'),
    (dict(slack=1.0), 'slack'),
    (dict(warmup_epochs=1.0), 'epoch'),
])
def test_anchor_loss_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    losses.anchor_loss([0], np.zeros((1, 3), np.float32), **kwargs)


def test_losses_refuse_low_precision_logits():
  with pytest.raises(ValueError, match='float32'):
    losses.softmax_cross_entropy([0], tf.zeros((1, 3), tf.bfloat16))
