"""Exponential moving average (EMA) of a model's trainable weights.

After every optimizer step each trainable weight `w` of the model moves its
shadow `s`:

    s <- decay * s + (1 - decay) * w

and evaluation, prediction and export use the shadows in place of the raw
weights (training goes on with the raw ones). Model Garden's
`ExponentialMovingAverage` optimizer wrapper and MMAction2 (MMEngine's
`ExponentialMovingAverage` hook) offer the same; neither SPL nor CPD paper
uses it, so the trainer's `run.ema_decay` is None (off) by default.

What is averaged and how:

* Trainable weights only. Batch-norm moving statistics are not averaged nor
  copied: the EMA model evaluates with the raw model's moving statistics (as
  Model Garden's default `trainable_weights_only=True` and MMEngine's default
  `update_buffers=False` do). The statistics are already a moving average of
  batch statistics; they were collected with the raw weights, a mismatch
  both libraries accept. A loss's own variables (Data Parameters) are not
  averaged either: evaluation never uses them.
* The shadows start as the weights of step 0 (after any initialisation: the
  trainer calls `reset` once a fresh run is initialised), as MMEngine does;
  Model Garden starts them at zero, which biases early averages towards 0.
* `dynamic_decay` (Model Garden's switch, off here by default) uses
  `min(decay, (1 + t) / (10 + t))` at the update of optimizer step t (t = 1
  for the first step: the optimizer's `iterations` after the step), so early
  averages forget their start quickly.
* The update runs in replica context right after the optimizer's, through
  the strategy's `extended.update` (the optimizer's own path): each replica
  moves its copy of a shadow with its copy of the weight, which after the
  all-reduced step is the same on every replica, so the copies stay equal
  with no communication. Shadows are created under the strategy's scope,
  so they are mirrored like the weights.
* A float16 step that the loss scaler skips (non-finite gradients) still
  moves the shadows toward the (unchanged) weights, as in Model Garden.

Checkpoints hold the shadows under `CHECKPOINT_KEY`, in the order of
`model.trainable_variables` (a rebuilt model of the same architecture has
the same order; a restore checks every shape).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import tensorflow as tf

# The checkpoint edge of the shadows: `ema/shadows/<i>/...`.
CHECKPOINT_KEY = 'ema'


def check_decay(decay: Optional[float]) -> None:
  """ValueError unless `decay` is None (off) or in (0, 1)."""
  if decay is not None and not (isinstance(decay, (int, float)) and
                                0.0 < decay < 1.0):
    raise ValueError(f'`ema_decay` must be in (0, 1) or None, got {decay!r}')


def in_checkpoint(path: str) -> bool:
  """Whether the checkpoint `path` (a prefix) holds EMA shadows; False for
  one that cannot be read (its restore then says why)."""
  prefix = CHECKPOINT_KEY + '/'
  try:
    names = [name for name, _ in tf.train.list_variables(path)]
  except (tf.errors.OpError, ValueError):
    return False
  return any(name.startswith(prefix) for name in names)


class _Untracked:
  """Holds the model's weights without making them checkpoint children of
  the average (they are saved once, under the model)."""

  def __init__(self, variables):
    self.variables = list(variables)


class WeightAverage(tf.Module):
  """Shadows of `variables` (a model's trainable weights) and their update.

  Create it under the scope of the strategy the variables were made in;
  `update` in replica context after each optimizer step; `swap` / `swapped`
  and `reset` outside any replica context.
  """

  def __init__(self, variables: Sequence[tf.Variable],
               decay: Optional[float], *, dynamic_decay: bool = False,
               name: str = 'ema'):
    """Makes the shadows, equal to the variables' current values.

    Args:
      variables: the weights averaged (e.g. `model.trainable_variables`).
      decay: weight of the old shadow at each update, in (0, 1); None for an
        average that is only restored and swapped in (export), never
        updated.
      dynamic_decay: use `min(decay, (1 + t) / (10 + t))` at step t.
      name: module name.
    """
    super().__init__(name=name)
    check_decay(decay)
    if not variables:
      raise ValueError('`variables` must not be empty')
    self.decay = None if decay is None else float(decay)
    self.dynamic_decay = bool(dynamic_decay)
    self._weights = _Untracked(variables)
    self._strategy = tf.distribute.get_strategy()
    self.shadows = [
        tf.Variable(v.read_value(), trainable=False, dtype=v.dtype,
                    name=f'ema_{i}') for i, v in enumerate(variables)]

  @property
  def weights(self):
    return self._weights.variables

  def decay_at(self, step) -> tf.Tensor:
    """The decay of the update after optimizer step `step` (1 = first)."""
    if self.decay is None:
      raise ValueError('this average has no `decay`: it is not updated')
    decay = tf.constant(self.decay, tf.float32)
    if self.dynamic_decay:
      t = tf.cast(step, tf.float32)
      decay = tf.minimum(decay, (1.0 + t) / (10.0 + t))
    return decay

  def update(self, step) -> None:
    """Moves every shadow toward its weight; call in replica context right
    after the optimizer step that made `step` (its `iterations`)."""
    decay = self.decay_at(step)

    def move(shadow, weight, decay):
      rate = tf.cast(1.0 - decay, shadow.dtype)
      return shadow.assign_sub(rate * (shadow - tf.cast(weight, shadow.dtype)))

    def update_all(strategy, decay):
      for shadow, weight in zip(self.shadows, self.weights):
        strategy.extended.update(shadow, move, args=(weight, decay),
                                 group=False)

    tf.__internal__.distribute.interim.maybe_merge_call(
        update_all, tf.distribute.get_strategy(), decay)

  def _per_device(self, fn) -> None:
    """Runs `fn(shadow, weight)` on each device's copies (cross-replica):
    no copy crosses devices."""
    strategy = self._strategy
    with strategy.scope():
      for shadow, weight in zip(self.shadows, self.weights):
        strategy.extended.update(shadow, fn, args=(weight,), group=False)

  def reset(self) -> None:
    """Shadows <- the weights (a fresh run, once initialised)."""
    self._per_device(lambda s, w: s.assign(tf.cast(w, s.dtype)))

  def copy_to_weights(self) -> None:
    """Weights <- the shadows (export: the model becomes the EMA model)."""
    self._per_device(lambda s, w: w.assign(tf.cast(s, w.dtype)))

  def swap(self) -> None:
    """Exchanges weights and shadows, exactly (through a copy, not Model
    Garden's add-and-subtract, which rounds): twice restores both."""
    def exchange(s, w):
      raw = tf.identity(w.read_value())
      w.assign(tf.cast(s, w.dtype))
      s.assign(tf.cast(raw, s.dtype))
    self._per_device(exchange)

  @contextlib.contextmanager
  def swapped(self) -> Iterator[None]:
    """The model holds the EMA weights inside, the raw ones after (also
    when the body raises)."""
    self.swap()
    try:
      yield
    finally:
      self.swap()
