"""Data Parameters (Saxena et al., NeurIPS 2019): a learned curriculum baseline.

Every class c and every training clip i gets a learnable temperature, stored
as its log (the reference's `class_parameters` / `inst_parameters`, here
`class_log_sigma` / `instance_log_sigma`). The logits z_i of clip i with label
y_i are divided by

  sigma_i = exp(class_log_sigma[y_i]) + exp(instance_log_sigma[i])

(only one of the two terms when only one kind is learned). A large sigma
flattens the softmax and so shrinks the gradient a clip sends to the network:
the model learns to down-weight classes and clips it finds hard or
mislabelled, which is exactly the noise SPL tackles, hence the baseline. Data
parameters only act in training; evaluation and prediction use the plain
logits.

What the reference code (apple/ml-data-parameters: `main_cifar.py`,
`main_imagenet.py`, `utils.py`, `optimizer/sparse_sgd.py`) does, and this
module does the same:

* Loss of a batch B (`train_for_one_epoch`, `apply_weight_decay_data_
  parameters`): the mean cross-entropy plus an L2 penalty on the log-
  parameters gathered for the batch, one term per EXAMPLE:

    L = mean_i CE(z_i / sigma_i, y_i)
        + wd_class / 2 * sum_i class_log_sigma[y_i]^2
        + wd_inst / 2 * sum_i instance_log_sigma[i]^2

  So weight decay reaches only the classes and clips in the batch, a class
  present n times is decayed n times, and it pulls every term towards
  sigma = 1. The trainer averages what `__call__` returns over the global
  batch of G examples, so each example carries G times its share of the
  penalty (G = this replica's batch size * replicas in sync, the trainer's
  global batch size as its training batches are evenly split).
* Optimiser (`SparseSGD(lr, momentum=0.9, skip_update_zero_grad=True)`, one
  per table, its own weight decay 0, constant learning rate): with g the
  gradient of L over the table,
    buf <- momentum * buf + g;  p <- p - lr * buf
  and every row whose gradient is exactly 0 (absent from the batch) gets back
  its previous value AND momentum: absent classes and clips never move, and
  a row's momentum waits frozen until its next visit.
* After each step every log-parameter is clamped to [log(1/20), log(20)].
* Initialisation: each table at the log of its own initial value
  (`--init_class_param`, `--init_inst_param`, both 1.0 by default, so a joint
  run starts at sigma = 2). The README's joint recipe uses 1.0 and 0.001 so
  that "their initial sum is close to 1.0"; 0.001 is below the clamp floor,
  so the first step's whole-table clamp lifts every instance term to 1/20.
  Here sigma starts at `init_sigma` (1: the plain cross-entropy) whatever is
  learned: jointly, the instance term starts at `joint_instance_sigma` (1/20,
  where the reference's instance terms sit from its first step on) and the
  class term at the rest.

The SPL paper gives no Data Parameters setting; the one departure from the
reference is the joint start above (exactly `init_sigma`, not 1.001 then
about 1.05 once the clamp has lifted the instance terms).

The object follows the trainer's loss protocol (`spl.losses`): it is called
as `loss(labels, logits, *, epoch, features)` and returns the per-example
loss; `build(num_classes=)` creates its variables (the trainer calls it under
`strategy.scope()`, so they are mirrored); `trainable_variables` are
checkpointed; `apply_gradients(grads)` is called by the trainer in replica
context with this replica's gradients, and sums them over replicas itself
(one `merge_call`, like a Keras optimizer) before updating, so every replica
applies the same update of the whole global batch and the tables stay
identical. A `clip/index` outside the table fails an in-graph check (not on
TPU, and XLA drops it under `jit_compile`).
"""

from __future__ import annotations

import math
from typing import Any, List, Mapping, Optional, Sequence

import tensorflow as tf

from spl import input_pipeline

# Where the reference's instance terms sit from its first step on (its README
# starts them at 0.001, which its clamp lifts to 1/20).
JOINT_INSTANCE_SIGMA = 1.0 / 20.0


def _check_range(name: str, value: float, low: float, high: float,
                 low_open: bool = False):
  bad = value is None or not (low < value if low_open else low <= value)
  if bad or value > high:
    raise ValueError(f'`{name}` must be in {"(" if low_open else "["}{low}, '
                     f'{high}], got {value!r}')


class DataParameters(tf.Module):
  """Per-class and per-instance learned temperatures on the logits.

  Args:
    num_instances: Size of the instance table: every `clip/index` of the
      training records must be below it (the number of training clips when
      indices are contiguous). Required when `learn_instance`.
    learn_class: Learn one temperature per class.
    learn_instance: Learn one temperature per training clip.
    class_learning_rate: Learning rate of the class parameters.
    instance_learning_rate: Learning rate of the instance parameters.
    class_weight_decay: L2 coefficient on the class log-temperatures, once
      per example of the batch (the reference's `wd_class_param`).
    instance_weight_decay: Same for the instance log-temperatures
      (`wd_inst_param`).
    momentum: SGD momentum of both tables (0.9 in the reference).
    init_sigma: Temperature every example starts with (1.0: the plain
      cross-entropy); with both kinds learned, the sum of the two terms.
    joint_instance_sigma: With both kinds learned, the instance term's
      starting temperature; the class term starts at `init_sigma -
      joint_instance_sigma`. Unused otherwise.
    min_sigma: Lower clamp of every temperature term.
    max_sigma: Upper clamp.
    name: Module name (checkpoint paths do not depend on it).
  """

  def __init__(self, *,
               num_instances: Optional[int] = None,
               learn_class: bool = True,
               learn_instance: bool = True,
               class_learning_rate: float = 0.1,
               instance_learning_rate: float = 0.1,
               class_weight_decay: float = 0.0,
               instance_weight_decay: float = 0.0,
               momentum: float = 0.9,
               init_sigma: float = 1.0,
               joint_instance_sigma: float = JOINT_INSTANCE_SIGMA,
               min_sigma: float = 1.0 / 20.0,
               max_sigma: float = 20.0,
               name: str = 'data_parameters'):
    super().__init__(name=name)
    if not (learn_class or learn_instance):
      raise ValueError('at least one of `learn_class` and `learn_instance` '
                       'must be True')
    if learn_instance and (num_instances is None or num_instances <= 0):
      raise ValueError(f'`num_instances` must be > 0 when `learn_instance`, '
                       f'got {num_instances!r}')
    for arg, value in (('class_learning_rate', class_learning_rate),
                       ('instance_learning_rate', instance_learning_rate),
                       ('class_weight_decay', class_weight_decay),
                       ('instance_weight_decay', instance_weight_decay)):
      _check_range(arg, value, 0.0, math.inf)
    _check_range('momentum', momentum, 0.0, 1.0)
    _check_range('min_sigma', min_sigma, 0.0, math.inf, low_open=True)
    _check_range('max_sigma', max_sigma, min_sigma, math.inf)
    if learn_class and learn_instance:
      _check_range('joint_instance_sigma', joint_instance_sigma, min_sigma,
                   max_sigma)
      class_sigma = init_sigma - joint_instance_sigma
      if not min_sigma <= class_sigma <= max_sigma:
        raise ValueError(
            f'`init_sigma` - `joint_instance_sigma` (the class term\'s start) '
            f'must be in [{min_sigma}, {max_sigma}], got {init_sigma!r} - '
            f'{joint_instance_sigma!r}')
      instance_sigma = joint_instance_sigma
    else:
      _check_range('init_sigma', init_sigma, min_sigma, max_sigma)
      class_sigma = instance_sigma = init_sigma
    self.num_instances = int(num_instances) if learn_instance else None
    self.learn_class = bool(learn_class)
    self.learn_instance = bool(learn_instance)
    self.class_learning_rate = float(class_learning_rate)
    self.instance_learning_rate = float(instance_learning_rate)
    self.class_weight_decay = float(class_weight_decay)
    self.instance_weight_decay = float(instance_weight_decay)
    self.momentum = float(momentum)
    self.init_sigma = float(init_sigma)
    self.init_class_log_sigma = math.log(class_sigma)
    self.init_instance_log_sigma = math.log(instance_sigma)
    self.min_log_sigma = math.log(min_sigma)
    self.max_log_sigma = math.log(max_sigma)
    self.num_classes = None
    self.class_log_sigma = None
    self.class_momentum = None
    self.instance_log_sigma = None
    self.instance_momentum = None

  # ---- Variables ----

  def build(self, *, num_classes: int) -> None:
    """Creates the tables; call under the run's `strategy.scope()`.

    The trainer calls it with the classifier's width, so the class table
    always matches the label space the model is trained on.
    """
    if num_classes is None or num_classes <= 0:
      raise ValueError(f'`num_classes` must be > 0, got {num_classes!r}')
    if self.num_classes is not None:
      if num_classes != self.num_classes:
        raise ValueError(f'data parameters were built for {self.num_classes} '
                         f'classes, got `num_classes`={num_classes}')
      return
    self.num_classes = int(num_classes)

    def table(name, size, value, trainable):
      return tf.Variable(tf.fill([size], tf.constant(value, tf.float32)),
                         trainable=trainable, name=name)

    if self.learn_class:
      self.class_log_sigma = table('class_log_sigma', num_classes,
                                   self.init_class_log_sigma, True)
      self.class_momentum = table('class_momentum', num_classes, 0.0, False)
    if self.learn_instance:
      self.instance_log_sigma = table('instance_log_sigma', self.num_instances,
                                      self.init_instance_log_sigma, True)
      self.instance_momentum = table('instance_momentum', self.num_instances,
                                     0.0, False)

  @property
  def trainable_variables(self) -> List[tf.Variable]:
    """[class table][, instance table]: the order `apply_gradients` expects."""
    if self.num_classes is None:
      raise ValueError('DataParameters.build(num_classes=...) was not called')
    return [v for v in (self.class_log_sigma, self.instance_log_sigma)
            if v is not None]

  # ---- Forward ----

  def _batch_log_sigmas(self, labels, clip_index):
    """The batch's (class, instance) log-temperatures, [B] or None each."""
    if self.num_classes is None:
      raise ValueError('DataParameters.build(num_classes=...) was not called')
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    class_ls = instance_ls = None
    if self.learn_class:
      class_ls = tf.gather(self.class_log_sigma, labels)
    if self.learn_instance:
      if clip_index is None:
        raise ValueError(f'instance data parameters need '
                         f'`features[{input_pipeline.CLIP_INDEX!r}]`')
      index = tf.cast(tf.reshape(clip_index, [-1]), tf.int32)
      if not isinstance(tf.distribute.get_strategy(),
                        tf.distribute.TPUStrategy):
        tf.debugging.assert_non_negative(
            index, message='data parameters: negative clip/index')
        tf.debugging.assert_less(
            index, self.num_instances,
            message='data parameters: a clip/index is >= `num_instances` '
                    '(NUM_TRAIN_EXAMPLES too small for these records)')
      instance_ls = tf.gather(self.instance_log_sigma, index)
    return class_ls, instance_ls

  def sigma(self, labels: tf.Tensor,
            clip_index: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Temperature of every example, float32 [B]."""
    terms = [tf.exp(t) for t in self._batch_log_sigmas(labels, clip_index)
             if t is not None]
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]

  def __call__(self, labels: tf.Tensor, logits: tf.Tensor, *,
               epoch: Optional[tf.Tensor] = None,
               features: Optional[Mapping[str, Any]] = None) -> tf.Tensor:
    """Per-example cross-entropy of `logits / sigma` plus its weight decay.

    Args:
      labels: Integer class ids [B].
      logits: float32 logits [B, C].
      epoch: Unused; part of the trainer's loss signature.
      features: The batch; `features['clip_index']` indexes the instance
        table.

    Returns:
      float32 [B]: CE_i + G / 2 * (class_weight_decay * class_log_sigma[y_i]^2
      + instance_weight_decay * instance_log_sigma[i]^2), G the global batch
      size, so that its mean over the global batch is the reference's loss.
    """
    del epoch
    logits = tf.convert_to_tensor(logits)
    if logits.dtype != tf.float32:
      raise ValueError(f'`logits` must be float32, got {logits.dtype.name}')
    if logits.shape.rank != 2:
      raise ValueError(f'`logits` must be [batch, classes], got '
                       f'{logits.shape}')
    labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
    clip_index = None
    if self.learn_instance:
      if features is None or input_pipeline.CLIP_INDEX not in features:
        raise ValueError(f'instance data parameters need '
                         f'`features[{input_pipeline.CLIP_INDEX!r}]`')
      clip_index = features[input_pipeline.CLIP_INDEX]
    class_ls, instance_ls = self._batch_log_sigmas(labels, clip_index)
    terms = [tf.exp(t) for t in (class_ls, instance_ls) if t is not None]
    sigma = terms[0] if len(terms) == 1 else terms[0] + terms[1]
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=logits / sigma[:, tf.newaxis])
    penalty = []
    if class_ls is not None and self.class_weight_decay > 0:
      penalty.append(self.class_weight_decay * tf.square(class_ls))
    if instance_ls is not None and self.instance_weight_decay > 0:
      penalty.append(self.instance_weight_decay * tf.square(instance_ls))
    if not penalty:
      return loss
    return loss + 0.5 * _global_batch_size(labels) * tf.add_n(penalty)

  # ---- Update ----

  def apply_gradients(self, grads: Sequence[Any]) -> None:
    """Sums `grads` over replicas and applies one SparseSGD step per table.

    Args:
      grads: This replica's gradients, aligned with `trainable_variables`;
        normally `tf.IndexedSlices` (from the gathers). Call in replica
        context (inside `strategy.run`) or with no strategy.
    """
    grads = list(grads)
    variables = self.trainable_variables
    if len(grads) != len(variables):
      raise ValueError(f'`grads` must have {len(variables)} entries (one per '
                       f'trainable variable), got {len(grads)}')
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
      raise ValueError('DataParameters.apply_gradients must be called in '
                       'replica context (inside `strategy.run`)')
    ctx.merge_call(self._merge_apply, args=(grads,))

  def _merge_apply(self, strategy: tf.distribute.Strategy, grads) -> None:
    variables = self.trainable_variables
    # One reduction for both tables; IndexedSlices stay sparse (their rows
    # are concatenated, duplicates summed below).
    reduced = strategy.extended.batch_reduce_to(
        tf.distribute.ReduceOp.SUM, list(zip(grads, variables)))
    for variable, grad in zip(variables, reduced):
      fn = (self._update_class if variable is self.class_log_sigma else
            self._update_instance)
      strategy.extended.update(variable, fn, args=(grad,), group=False)

  # Run once per device (update context): the momentum variables resolve to
  # this device's copy.
  def _update_class(self, variable, grad):
    return self._sparse_sgd(variable, self.class_momentum, grad,
                            self.class_learning_rate)

  def _update_instance(self, variable, grad):
    return self._sparse_sgd(variable, self.instance_momentum, grad,
                            self.instance_learning_rate)

  def _sparse_sgd(self, variable, momentum, grad, learning_rate):
    if isinstance(grad, tf.IndexedSlices):
      # One row per example (and replica), so rows repeat: every position
      # gets the sum over its row's duplicates, which then write the same
      # value. An [n, n] equality mask keeps the shapes static (XLA, TPUs:
      # `tf.unique`'s output shape depends on the values), and a masked sum,
      # not a matmul, keeps the sum exact in float32 where TPU matmuls round
      # to bfloat16. n is the global batch: n^2 is small beside a step.
      rows = tf.cast(grad.indices, tf.int32)
      values = grad.values[tf.newaxis, :]  # The tables are vectors.
      same = tf.equal(rows[:, tf.newaxis], rows[tf.newaxis, :])
      values = tf.reduce_sum(tf.where(same, values, tf.zeros_like(values)),
                             axis=1)
    else:
      grad = tf.convert_to_tensor(grad)
      rows = tf.range(tf.shape(grad)[0])
      values = grad
    finite = tf.reduce_all(tf.math.is_finite(values))

    def step():
      param = tf.gather(variable, rows)
      buf = tf.gather(momentum, rows)
      new_buf = self.momentum * buf + values
      new_param = tf.clip_by_value(param - learning_rate * new_buf,
                                   self.min_log_sigma, self.max_log_sigma)
      # SparseSGD's skip_update_zero_grad: a row with an exactly zero
      # gradient keeps its value and its momentum.
      has_grad = tf.not_equal(values, 0.0)
      momentum.scatter_update(
          tf.IndexedSlices(tf.where(has_grad, new_buf, buf), rows))
      variable.scatter_update(
          tf.IndexedSlices(tf.where(has_grad, new_param, param), rows))
      return tf.constant(True)

    # A float16 loss-scale overflow step is skipped, as the main optimizer
    # skips it.
    return tf.cond(finite, step, lambda: tf.constant(False))


def _global_batch_size(labels: tf.Tensor) -> tf.Tensor:
  """Examples in the global batch: this replica's times the replicas."""
  ctx = tf.distribute.get_replica_context()
  replicas = ctx.num_replicas_in_sync if ctx is not None else 1
  return tf.cast(tf.shape(labels)[0] * replicas, tf.float32)
