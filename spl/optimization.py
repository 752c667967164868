"""Optimiser, learning-rate schedule and weight decay of the trainer.

The papers give schedules in epochs and learning rates for a reference batch
size; here both become steps and a learning rate scaled linearly with the
global batch (Goyal et al. 2017), so one gin file serves any number of
replicas.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras


class WarmupCosineDecay(tf_keras.optimizers.schedules.LearningRateSchedule):
  """Linear warmup from `warmup_start` to `peak`, then cosine decay to `end`.

  With `warmup_start` 0, warmup step s trains with peak * (s + 1) / warmup (the
  first step does not waste a batch on a zero learning rate); with a
  starting rate s0 > 0 (the SPL paper: "warm up ... with starting learning
  rate as 0.04"), step s trains with s0 + (peak - s0) * s / warmup, so the
  first step uses exactly s0. The cosine runs from `warmup_steps` to `total`.
  """

  def __init__(self, peak_learning_rate: float, warmup_steps: int,
               total_steps: int, end_learning_rate: float = 0.0,
               warmup_start: float = 0.0):
    super().__init__()
    if peak_learning_rate <= 0:
      raise ValueError(
          f'`peak_learning_rate` must be > 0, got {peak_learning_rate}')
    if total_steps <= 0:
      raise ValueError(f'`total_steps` must be > 0, got {total_steps}')
    if not 0 <= warmup_steps <= total_steps:
      raise ValueError(f'`warmup_steps` must be in [0, total_steps='
                       f'{total_steps}], got {warmup_steps}')
    if warmup_steps and not 0 <= warmup_start <= peak_learning_rate:
      raise ValueError(f'`warmup_start` must be in [0, peak_learning_rate='
                       f'{peak_learning_rate}], got {warmup_start}')
    self.peak_learning_rate = float(peak_learning_rate)
    self.warmup_steps = int(warmup_steps)
    self.total_steps = int(total_steps)
    self.end_learning_rate = float(end_learning_rate)
    self.warmup_start = float(warmup_start)

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    peak = self.peak_learning_rate
    end = self.end_learning_rate
    warmup = float(self.warmup_steps)
    decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
    progress = tf.clip_by_value((step - warmup) / decay_steps, 0.0, 1.0)
    cosine = end + 0.5 * (peak - end) * (1.0 + tf.cos(math.pi * progress))
    if self.warmup_steps == 0:
      return cosine
    start = self.warmup_start
    if start > 0:
      linear = start + (peak - start) * step / warmup
    else:
      linear = peak * (step + 1.0) / warmup
    return tf.where(step < warmup, linear, cosine)

  def get_config(self):
    return dict(peak_learning_rate=self.peak_learning_rate,
                warmup_steps=self.warmup_steps, total_steps=self.total_steps,
                end_learning_rate=self.end_learning_rate,
                warmup_start=self.warmup_start)


def build_learning_rate(*,
                        base_learning_rate: float = 0.1,
                        global_batch_size: int,
                        steps_per_epoch: int,
                        total_steps: int,
                        base_batch_size: Optional[int] = 256,
                        warmup_epochs: float = 0.0,
                        warmup_learning_rate: float = 0.0,
                        end_learning_rate: float = 0.0,
                        constant: bool = False
                        ) -> WarmupCosineDecay:
  """Warmup + cosine schedule with the learning rate scaled by batch size.

  Args:
    base_learning_rate: Learning rate at `base_batch_size`.
    global_batch_size: Batch size summed over all replicas (set by the
      trainer, never by gin).
    steps_per_epoch: Steps of one epoch at `global_batch_size` (trainer).
    total_steps: Length of training (trainer).
    base_batch_size: Batch size `base_learning_rate` is given for; None: the
      rate is used as given, whatever the batch (a paper's rate for a batch
      it does not state unambiguously).
    warmup_epochs: Linear warmup length in epochs.
    warmup_learning_rate: Rate of the first warmup step (scaled like the
      base rate); 0: warm up from zero.
    end_learning_rate: Final learning rate, not scaled.
    constant: No decay: the (scaled) base rate after warmup until the end.

  Returns:
    A `tf_keras` learning-rate schedule.
  """
  for name, value in (('global_batch_size', global_batch_size),
                      ('steps_per_epoch', steps_per_epoch)):
    if int(value) <= 0:
      raise ValueError(f'`{name}` must be > 0, got {value}')
  if base_batch_size is not None and int(base_batch_size) <= 0:
    raise ValueError(f'`base_batch_size` must be > 0 or None, got '
                     f'{base_batch_size}')
  if warmup_epochs < 0:
    raise ValueError(f'`warmup_epochs` must be >= 0, got {warmup_epochs}')
  scale = (1.0 if base_batch_size is None else
           global_batch_size / base_batch_size)
  peak = base_learning_rate * scale
  warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), total_steps)
  return WarmupCosineDecay(peak, warmup_steps, total_steps,
                           peak if constant else end_learning_rate,
                           warmup_start=warmup_learning_rate * scale)


class PlateauDecay(tf.Module,
                   tf_keras.optimizers.schedules.LearningRateSchedule):
  """A constant learning rate multiplied by `factor` when evaluation stalls.

  The trainer calls `report(eval_result)` after every evaluation; after
  `patience` evaluations without an improvement of `metric` by more than
  `min_delta` (higher is better with `mode='max'`, lower with 'min'), the
  rate drops by `factor`, at most `max_drops` times (the CPD paper's
  fine-tuning: "divided by 10 twice when validation loss saturates"). The
  state is in variables, so it is checkpointed with the optimizer and a
  resumed run keeps its drops.
  """

  def __init__(self, learning_rate: float, *, factor: float = 0.1,
               patience: int = 2, metric: str = 'video/top_1',
               min_delta: float = 0.0, min_learning_rate: float = 0.0,
               mode: str = 'max', max_drops: Optional[int] = None):
    tf.Module.__init__(self, name='plateau_decay')
    if mode not in ('max', 'min'):
      raise ValueError(f"`mode` must be 'max' or 'min', got {mode!r}")
    if max_drops is not None and max_drops < 0:
      raise ValueError(f'`max_drops` must be >= 0 or None, got {max_drops}')
    if learning_rate <= 0:
      raise ValueError(f'`learning_rate` must be > 0, got {learning_rate}')
    if not 0 < factor < 1:
      raise ValueError(f'`factor` must be in (0, 1), got {factor}')
    if patience < 1:
      raise ValueError(f'`patience` must be >= 1, got {patience}')
    self.initial_learning_rate = float(learning_rate)
    self.factor = float(factor)
    self.patience = int(patience)
    self.metric = metric
    self.min_delta = float(min_delta)
    self.min_learning_rate = float(min_learning_rate)
    self.mode = mode
    self.max_drops = None if max_drops is None else int(max_drops)
    # Internally higher is better: a 'min' metric is negated.
    self._sign = 1.0 if mode == 'max' else -1.0
    self.scale = tf.Variable(1.0, trainable=False, name='scale')
    self.best = tf.Variable(-math.inf, trainable=False, name='best')
    self.drops = tf.Variable(0, trainable=False, name='drops')
    self.bad_evaluations = tf.Variable(0, trainable=False,
                                       name='bad_evaluations')

  def __call__(self, step):
    del step
    return tf.maximum(self.initial_learning_rate * self.scale,
                      self.min_learning_rate)

  def report(self, eval_result) -> bool:
    """Takes one evaluation's metrics; returns True if the rate dropped."""
    if self.metric not in eval_result:
      raise KeyError(f'plateau metric {self.metric!r} is not among the '
                     f'evaluation metrics {sorted(eval_result)}')
    # Compared at the precision `best` is stored in (float32), so a repeat of
    # the best value is a stall, not an improvement.
    value = float(np.float32(self._sign * float(eval_result[self.metric])))
    if value > float(self.best.numpy()) + self.min_delta:
      self.best.assign(value)
      self.bad_evaluations.assign(0)
      return False
    self.bad_evaluations.assign_add(1)
    if int(self.bad_evaluations.numpy()) < self.patience:
      return False
    self.bad_evaluations.assign(0)
    if self.max_drops is not None and int(self.drops.numpy()) >= self.max_drops:
      return False
    self.scale.assign(self.scale * self.factor)
    self.drops.assign_add(1)
    return True

  def get_config(self):
    return dict(learning_rate=self.initial_learning_rate, factor=self.factor,
                patience=self.patience, metric=self.metric,
                min_delta=self.min_delta,
                min_learning_rate=self.min_learning_rate, mode=self.mode,
                max_drops=self.max_drops)


def build_plateau_learning_rate(*, base_learning_rate: float = 0.01,
                                global_batch_size: int,
                                steps_per_epoch: int, total_steps: int,
                                base_batch_size: int = 256,
                                factor: float = 0.1, patience: int = 2,
                                metric: str = 'video/top_1',
                                mode: str = 'max',
                                max_drops: Optional[int] = None
                                ) -> PlateauDecay:
  """Learning rate scaled by batch size, dropped on evaluation plateaus.

  Args:
    base_learning_rate: Learning rate at `base_batch_size`.
    global_batch_size: Set by the trainer.
    steps_per_epoch: Set by the trainer (unused: plateaus are counted in
      evaluations).
    total_steps: Set by the trainer (unused).
    base_batch_size: Batch size `base_learning_rate` is given for.
    factor: Multiplier at each drop.
    patience: Evaluations without improvement before a drop.
    metric: Evaluation metric watched, e.g. 'video/top_1' or 'loss' (the
      evaluation set's cross-entropy).
    mode: 'max' (higher is better) or 'min' (lower is better, e.g. a loss).
    max_drops: At most this many drops; None: no limit.
  """
  del steps_per_epoch, total_steps
  if int(global_batch_size) <= 0 or int(base_batch_size) <= 0:
    raise ValueError('`global_batch_size` and `base_batch_size` must be > 0')
  return PlateauDecay(base_learning_rate * global_batch_size / base_batch_size,
                      factor=factor, patience=patience, metric=metric,
                      mode=mode, max_drops=max_drops)


def build_sgd(learning_rate, *, momentum: float = 0.9,
              nesterov: bool = False) -> tf_keras.optimizers.Optimizer:
  """SGD with momentum, as in both papers.

  Weight decay is not the optimiser's (decoupled) decay but an L2 term on the
  loss (`l2_weight_decay`), i.e. PyTorch's coupled `weight_decay` that the
  papers' hyper-parameters were tuned with.
  """
  if not 0.0 <= momentum < 1.0:
    raise ValueError(f'`momentum` must be in [0, 1), got {momentum}')
  return FusedSGD(learning_rate=learning_rate, momentum=momentum,
                  nesterov=nesterov)


class FusedSGD(tf_keras.optimizers.SGD):
  """`tf_keras.optimizers.SGD` with the dense update in one fused kernel.

  The Keras 3-style SGD updates each variable with a handful of small ops
  (read lr, two multiplies, an add, two assigns); `ResourceApplyKerasMomentum`
  (what the legacy SGD and Model Garden's default optimiser run) does the same
  arithmetic in one kernel:

      m <- momentum * m - lr * g;   w <- w + m
      (nesterov: w <- w + momentum * m - lr * g)

  On an R3D-50 (~300 variables) that is ~5% of a CPU training step. Same
  variables, slot names and config as the parent, so checkpoints are
  interchangeable; sparse gradients (`tf.IndexedSlices`) take the parent's
  path.
  """

  def update_step(self, gradient, variable):
    if isinstance(gradient, tf.IndexedSlices):
      return super().update_step(gradient, variable)
    m = self.momentums[self._index_dict[self._var_key(variable)]]
    return tf.raw_ops.ResourceApplyKerasMomentum(
        var=variable.handle, accum=m.handle,
        lr=tf.cast(self.learning_rate, variable.dtype),
        grad=tf.cast(gradient, variable.dtype),
        momentum=tf.cast(self.momentum, variable.dtype),
        use_nesterov=self.nesterov)


DEFAULT_NO_DECAY = ('bias', 'beta', 'gamma', 'batch_norm', '/bn')


def decayed_variables(variables: Iterable[tf.Variable],
                      exclude: Sequence[str] = DEFAULT_NO_DECAY
                      ) -> list:
  """The variables weight decay applies to: all but norm and bias ones."""
  return [v for v in variables
          if not any(pattern in v.name for pattern in exclude)]


def check_weight_decay_and_clip(weight_decay: float,
                                clip_norm: Optional[float] = None) -> None:
  """ValueError unless weight_decay >= 0 and clip_norm is None or > 0."""
  if not weight_decay >= 0:
    raise ValueError(f'`weight_decay` must be >= 0, got {weight_decay}')
  if clip_norm is not None and not clip_norm > 0:
    raise ValueError(f'`clip_norm` must be > 0 or None, got {clip_norm}')


def add_weight_decay(grads: Sequence[Optional[tf.Tensor]],
                     variables: Sequence[tf.Variable],
                     decayed: Sequence[tf.Variable],
                     weight_decay: float,
                     scale: float = 1.0) -> list:
  """Adds `scale * weight_decay * w` to the gradient of every decayed `w`.

  That is the gradient of an L2 term `0.5 * weight_decay * sum ||w||^2` on
  the loss (PyTorch's coupled `weight_decay`, which the papers'
  hyper-parameters were tuned with), added directly instead of
  differentiating the term: two elementwise passes over the weights instead
  of the forward square-and-sum and its backward (~8% of a CPU step of an
  R3D-50, measured by `benchmarks/bench_model_garden`). `scale` is
  1 / replicas when the gradients are summed over replicas afterwards.
  """
  check_weight_decay_and_clip(weight_decay)
  if weight_decay == 0:
    return list(grads)
  refs = {v.ref() for v in decayed}
  coefficient = float(scale) * float(weight_decay)
  return [g + tf.cast(coefficient, g.dtype) * tf.cast(v, g.dtype)
          if g is not None and v.ref() in refs else g
          for g, v in zip(grads, variables)]


def all_reduce_and_clip(grads: Sequence[Optional[tf.Tensor]],
                        clip_norm: float):
  """Sums gradients over replicas, then clips them to a global norm.

  Call in replica context with this replica's gradients (of a loss already
  divided by the number of replicas); apply the result with
  `skip_gradients_aggregation=True`, since it is already the sum. Clipping
  after the all-reduce is what clipping on one device does: the norm is that
  of the whole update, not of one replica's share.

  Args:
    grads: per-replica gradients; None entries (variables off the loss path)
      stay None and do not count.
    clip_norm: the largest global norm let through (> 0).

  Returns:
    (gradients summed over replicas and scaled by min(1, clip_norm / norm),
    norm of the summed gradients before clipping).
  """
  check_weight_decay_and_clip(0.0, clip_norm)
  present = [g for g in grads if g is not None]
  summed = tf.distribute.get_replica_context().all_reduce(
      tf.distribute.ReduceOp.SUM, present)
  clipped, norm = tf.clip_by_global_norm(summed, clip_norm)
  it = iter(clipped)
  return [None if g is None else next(it) for g in grads], norm


def wrap_for_mixed_precision(optimizer: tf_keras.optimizers.Optimizer,
                             mixed_precision: Optional[str]
                             ) -> tf_keras.optimizers.Optimizer:
  """fp16 needs dynamic loss scaling; bf16 has fp32's range and does not."""
  if mixed_precision == 'float16':
    return tf_keras.mixed_precision.LossScaleOptimizer(optimizer)
  return optimizer
