"""Data Parameters against a float64 simulation of the reference code.

The reference is apple/ml-data-parameters (`main_cifar.py`, `utils.py`,
`optimizer/sparse_sgd.py`); the simulation below is written from its maths,
not from spl.data_parameters. The trainer part: spl.main end to end,
checkpoint/resume, and the tables identical on both replicas of a
MirroredStrategy.
"""

import functools
import math
import os

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from spl import data_parameters
from spl import input_pipeline
from spl import loop
from spl import main
from spl import optimization
from spl import train_lib
from tests import label_space_data
from tests import test_train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_PARAMS_GIN = os.path.join(ROOT, 'gin_configs', 'runs',
                               'pretrain_data_params.gin')
TINY = os.path.join(ROOT, 'gin_configs', 'tiny.gin')
NUM_CLASSES = 3
NUM_INSTANCES = 10
# Starting log-temperatures of a joint run: the instance term at 1/20, the
# class term at the rest of sigma = 1.
JOINT_CLASS_INIT = math.log(0.95)
JOINT_INSTANCE_INIT = math.log(0.05)
# Shared with the trainer tests: its own collective keys per MirroredStrategy
# (several in one process collide otherwise), a model without batch norm and
# an in-memory dataset whose batch i holds clip/index 4i..4i+3.
# pylint: disable=protected-access
_MIRRORED = test_train_lib._mirrored
_NO_BN_MODEL = test_train_lib._no_bn_model
_MEMORY_DATASET = test_train_lib._memory_dataset
# pylint: enable=protected-access


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def _built(num_classes=NUM_CLASSES, **kwargs):
  args = dict(num_instances=NUM_INSTANCES, class_learning_rate=0.5,
              instance_learning_rate=0.5)
  args.update(kwargs)
  dp = data_parameters.DataParameters(**args)
  dp.build(num_classes=num_classes)
  return dp


def _features(index):
  return {input_pipeline.CLIP_INDEX: tf.constant(index, tf.int64)}


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _np_loss(labels, logits, sigma):
  log_p = np.log(_softmax(logits / sigma[:, None]))
  return -log_p[np.arange(len(labels)), labels]


@pytest.mark.parametrize('learn_class,learn_instance', [
    (True, True), (True, False), (False, True)])
def test_forward_equals_numpy_reference(learn_class, learn_instance):
  dp = _built(learn_class=learn_class, learn_instance=learn_instance)
  rng = np.random.default_rng(0)
  labels = np.array([0, 2, 1, 2])
  index = np.array([3, 9, 0, 3])
  logits = rng.normal(size=(4, NUM_CLASSES)).astype(np.float32) * 3
  # Fresh tables: sigma = 1 in every mode, i.e. the plain cross-entropy
  # (the reference's own defaults, 1.0 per table, would start a joint run
  # at 2).
  np.testing.assert_allclose(
      dp.sigma(labels, index).numpy(), np.ones(4), rtol=1e-6)
  np.testing.assert_allclose(
      dp(tf.constant(labels), tf.constant(logits),
         features=_features(index)).numpy(),
      _np_loss(labels, logits, np.ones(4)), rtol=1e-5, atol=1e-6)
  class_ls = rng.uniform(-1, 1, NUM_CLASSES).astype(np.float32)
  inst_ls = rng.uniform(-1, 1, NUM_INSTANCES).astype(np.float32)
  sigma = np.zeros(4)
  if learn_class:
    dp.class_log_sigma.assign(class_ls)
    sigma += np.exp(class_ls[labels])
  if learn_instance:
    dp.instance_log_sigma.assign(inst_ls)
    sigma += np.exp(inst_ls[index])
  got = dp(tf.constant(labels), tf.constant(logits), epoch=tf.constant(0.0),
           features=_features(index))
  np.testing.assert_allclose(got.numpy(), _np_loss(labels, logits, sigma),
                             rtol=1e-5, atol=1e-6)


def test_joint_tables_start_with_the_instance_term_at_one_twentieth():
  dp = _built()
  np.testing.assert_allclose(np.exp(dp.class_log_sigma.numpy()), 0.95)
  np.testing.assert_allclose(np.exp(dp.instance_log_sigma.numpy()), 0.05)
  dp = _built(init_sigma=2.0, joint_instance_sigma=0.5)
  np.testing.assert_allclose(np.exp(dp.class_log_sigma.numpy()), 1.5)
  np.testing.assert_allclose(np.exp(dp.instance_log_sigma.numpy()), 0.5)


@pytest.mark.parametrize('learn_class,init_sigma', [(True, 3.0),
                                                    (False, 0.4)])
def test_one_table_starts_at_init_sigma(learn_class, init_sigma):
  # Learning one kind only, that table alone makes sigma: it starts at
  # `init_sigma` (here not 1, where log sigma = 0 would hide a dropped init).
  dp = _built(learn_class=learn_class, learn_instance=not learn_class,
              init_sigma=init_sigma)
  table = dp.class_log_sigma if learn_class else dp.instance_log_sigma
  np.testing.assert_allclose(table.numpy(), math.log(init_sigma), rtol=1e-6)
  labels, index = np.array([0, 2]), np.array([1, 8])
  np.testing.assert_allclose(dp.sigma(labels, index).numpy(),
                             [init_sigma] * 2, rtol=1e-6)
  logits = np.array([[1.0, -0.5, 2.0], [0.3, 0.0, -1.2]], np.float32)
  np.testing.assert_allclose(
      dp(tf.constant(labels), tf.constant(logits),
         features=_features(index)).numpy(),
      _np_loss(labels, logits, np.full(2, init_sigma)), rtol=1e-5)


def test_gradients_flow_to_class_and_instance_parameters():
  dp = _built()
  labels = tf.constant([0, 1, 1])
  logits = tf.constant([[2.0, 0.0, -1.0], [0.5, 0.2, 3.0], [1.0, 1.0, 0.0]])
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(dp(labels, logits, features=_features([4, 7, 1])))
  g_class, g_inst = tape.gradient(loss, dp.trainable_variables)
  g_class = tf.convert_to_tensor(g_class).numpy()
  g_inst = tf.convert_to_tensor(g_inst).numpy()
  assert np.all(g_class[:2] != 0) and g_class[2] == 0  # class 2 not in batch
  assert np.all(g_inst[[4, 7, 1]] != 0)
  assert np.all(np.delete(g_inst, [4, 7, 1]) == 0)


# ---- Float64 simulation of the reference ----

# Different per table and momentum not 0.5 (= 1 - momentum), so a swapped
# coefficient or a dampened momentum shows.
HPARAMS = dict(class_learning_rate=0.5, instance_learning_rate=0.3,
               class_weight_decay=0.03, instance_weight_decay=0.2,
               momentum=0.7)


class _Reference:
  """The reference's training of data parameters, float64.

  `train_for_one_epoch` (main_cifar.py): logits / (exp(class_parameters[y])
  + exp(inst_parameters[i])), `nn.CrossEntropyLoss` (batch mean) plus
  `utils.apply_weight_decay_data_parameters` (0.5 * wd * sum over the batch's
  examples of the gathered log-parameters squared); one SparseSGD per table
  (`skip_update_zero_grad=True`, weight_decay 0, dampening 0): buf = m * buf +
  g, p -= lr * buf, rows with g == 0 get p and buf back; then
  `utils.clamp_data_parameters` clamps both whole tables to
  [log(1/20), log(20)].
  """

  def __init__(self, num_classes, num_instances, learn_class, learn_instance,
               class_init, instance_init, hp):
    self.learn = dict(cls=learn_class, inst=learn_instance)
    self.p = dict(cls=np.full(num_classes, class_init),
                  inst=np.full(num_instances, instance_init))
    self.buf = {k: np.zeros_like(v) for k, v in self.p.items()}
    self.lr = dict(cls=hp['class_learning_rate'],
                   inst=hp['instance_learning_rate'])
    self.wd = dict(cls=hp['class_weight_decay'],
                   inst=hp['instance_weight_decay'])
    self.momentum = hp['momentum']

  def loss_and_grads(self, labels, logits, index):
    x = logits.astype(np.float64)
    rows = dict(cls=np.asarray(labels), inst=np.asarray(index))
    batch = {k: self.p[k][rows[k]] for k in self.p}
    sigma = sum(np.exp(batch[k]) for k in self.p if self.learn[k])
    y = np.eye(x.shape[1])[labels]
    p = _softmax(x / sigma[:, None])
    loss = np.mean(-np.log(np.sum(p * y, 1)))
    # d mean-CE / d sigma_i, with z = x / sigma: -(p - y).x / sigma^2 / B.
    d_sigma = -np.sum((p - y) * x, 1) / sigma**2 / len(labels)
    grads = {}
    for k in self.p:
      if not self.learn[k]:
        continue
      loss += 0.5 * self.wd[k] * np.sum(batch[k]**2)
      grads[k] = np.zeros_like(self.p[k])
      np.add.at(grads[k], rows[k],
                d_sigma * np.exp(batch[k]) + self.wd[k] * batch[k])
    return loss, grads

  def step(self, labels, logits, index):
    loss, grads = self.loss_and_grads(labels, logits, index)
    for k, g in grads.items():
      buf = self.momentum * self.buf[k] + g
      new = self.p[k] - self.lr[k] * buf
      no_grad = g == 0
      new[no_grad] = self.p[k][no_grad]
      buf[no_grad] = self.buf[k][no_grad]
      self.p[k] = np.clip(new, math.log(1 / 20), math.log(20))
      self.buf[k] = buf
    return loss


# (labels, clip indices) of four steps over 6 classes and 12 clips: classes
# and clips come and go (classes 2, 4, 5 sit out step 2 with momentum), some
# are several times in one batch (class 0 three times, clip 8 twice, clip 3
# twice), so per-example weight decay and frozen momentum both show.
STEPS = (([0, 0, 2, 4, 5], [1, 3, 5, 7, 9]),
         ([1, 0, 0, 0, 3], [3, 8, 8, 0, 11]),
         ([4, 2, 2, 1, 0], [1, 2, 10, 5, 6]),
         ([5, 5, 3, 3, 1], [9, 4, 3, 3, 7]))
SIM_CLASSES, SIM_INSTANCES = 6, 12


def _reference_for(learn_class, learn_instance):
  joint = learn_class and learn_instance
  return _Reference(SIM_CLASSES, SIM_INSTANCES, learn_class, learn_instance,
                    JOINT_CLASS_INIT if joint else 0.0,
                    JOINT_INSTANCE_INIT if joint else 0.0, HPARAMS)


def _tables(dp, replica=None):
  """{'cls'|'inst': (log sigma, momentum)} of the learned tables, numpy."""
  def read(v):
    return (v.values[replica] if replica is not None else v).numpy()
  out = {}
  if dp.learn_class:
    out['cls'] = (read(dp.class_log_sigma), read(dp.class_momentum))
  if dp.learn_instance:
    out['inst'] = (read(dp.instance_log_sigma), read(dp.instance_momentum))
  return out


def _check_step(before, after, reference, labels, index):
  present = dict(cls=set(labels), inst=set(index))
  for k, (value, momentum) in after.items():
    absent = np.array([r not in present[k] for r in range(len(value))])
    # Absent rows: value and momentum untouched, bit for bit.
    np.testing.assert_array_equal(value[absent], before[k][0][absent])
    np.testing.assert_array_equal(momentum[absent], before[k][1][absent])
    assert np.all(value[~absent] != before[k][0][~absent])
    np.testing.assert_allclose(value, reference.p[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(momentum, reference.buf[k], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize('learn_class,learn_instance', [
    (True, True), (True, False), (False, True)])
def test_steps_match_float64_reference(learn_class, learn_instance):
  dp = _built(SIM_CLASSES, num_instances=SIM_INSTANCES,
              learn_class=learn_class, learn_instance=learn_instance,
              **HPARAMS)
  reference = _reference_for(learn_class, learn_instance)
  rng = np.random.default_rng(4)
  for labels, index in STEPS:
    logits = (rng.normal(size=(len(labels), SIM_CLASSES)) * 3).astype(
        np.float32)
    before = _tables(dp)
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(dp(tf.constant(labels), tf.constant(logits),
                               features=_features(index)))
    dp.apply_gradients(tape.gradient(loss, dp.trainable_variables))
    want_loss = reference.step(labels, logits, index)
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-5)
    _check_step(before, _tables(dp), reference, labels, index)


def test_replicas_combine_rows_like_one_global_batch(logical_cpus):
  # Each replica holds half of every global batch; the same class and the
  # same clip on both replicas must add up as in one batch of 6.
  steps = (([0, 1, 1, 1, 4, 0], [2, 5, 7, 2, 9, 11]),
           ([3, 0, 5, 3, 0, 3], [5, 0, 6, 1, 5, 4]),
           ([2, 2, 1, 4, 4, 0], [11, 3, 8, 8, 10, 0]))
  strategy = _MIRRORED(logical_cpus[:2])
  with strategy.scope():
    dp = _built(SIM_CLASSES, num_instances=SIM_INSTANCES, **HPARAMS)
  reference = _reference_for(True, True)

  def split(values):
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(np.split(values, 2)[
            ctx.replica_id_in_sync_group]))

  def replica_step(labels, logits, index):
    with tf.GradientTape() as tape:
      per_example = dp(labels, logits, features={
          input_pipeline.CLIP_INDEX: index})
      # The trainer's loss: the replica's sum over the global batch size.
      loss = tf.reduce_sum(per_example) / 6.0
    dp.apply_gradients(tape.gradient(loss, dp.trainable_variables))

  train_step = tf.function(lambda *args: strategy.run(replica_step, args))
  rng = np.random.default_rng(5)
  for labels, index in steps:
    logits = (rng.normal(size=(6, SIM_CLASSES)) * 3).astype(np.float32)
    before = _tables(dp, replica=0)
    train_step(split(np.array(labels, np.int32)), split(logits),
               split(np.array(index, np.int64)))
    reference.step(labels, logits, index)
    for replica in (0, 1):
      _check_step(before, _tables(dp, replica), reference, labels, index)


def test_dense_gradients_move_only_their_non_zero_rows():
  # A densified gradient (e.g. by a cross-replica sum) marks the batch by its
  # non-zero rows, as SparseSGD does: rows at 0 keep value and momentum.
  dp = _built(momentum=0.7)
  dp.apply_gradients([tf.constant([0.2, -0.1, 0.3]),
                      tf.constant(np.linspace(-0.5, 0.5, NUM_INSTANCES),
                                  tf.float32)])
  before = _tables(dp)
  class_grad = np.array([0.0, 0.4, 0.0], np.float32)
  inst_grad = np.zeros(NUM_INSTANCES, np.float32)
  inst_grad[[2, 6]] = [0.1, -0.2]
  dp.apply_gradients([tf.constant(class_grad), tf.constant(inst_grad)])
  after = _tables(dp)
  for k, g in (('cls', class_grad), ('inst', inst_grad)):
    assert np.all(before[k][1] != 0)  # every row has momentum
    zero = g == 0
    np.testing.assert_array_equal(after[k][0][zero], before[k][0][zero])
    np.testing.assert_array_equal(after[k][1][zero], before[k][1][zero])
    np.testing.assert_allclose(after[k][1][~zero],
                               0.7 * before[k][1][~zero] + g[~zero],
                               rtol=1e-6)


def test_sigma_is_clamped_to_one_twentieth_and_twenty():
  dp = _built(class_learning_rate=1e4, instance_learning_rate=1e4,
              momentum=0.0)
  logits = np.array([[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]], np.float32)
  # Label 0 correct (confident: sigma shrinks), label 1 wrong (sigma grows).
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(dp(tf.constant([0, 1]), tf.constant(logits),
                            features=_features([0, 1])))
  dp.apply_gradients(tape.gradient(loss, dp.trainable_variables))
  inst = dp.instance_log_sigma.numpy()
  cls = dp.class_log_sigma.numpy()
  np.testing.assert_allclose(np.exp(inst[[0, 1]]), [1 / 20, 20], rtol=1e-5)
  np.testing.assert_allclose(np.exp(cls[[0, 1]]), [1 / 20, 20], rtol=1e-5)
  assert cls[2] == np.float32(JOINT_CLASS_INIT)
  assert np.all(inst[2:] == np.float32(JOINT_INSTANCE_INIT))


def test_clamp_uses_its_own_bounds():
  # Bounds not symmetric in log space (log 0.1 != -log 5), so a lower bound
  # taken from the upper one, or the defaults used, shows.
  dp = _built(class_learning_rate=1e4, instance_learning_rate=1e4,
              momentum=0.0, min_sigma=0.1, max_sigma=5.0,
              joint_instance_sigma=0.25)
  logits = np.array([[5.0, 0.0, 0.0], [5.0, 0.0, 0.0]], np.float32)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(dp(tf.constant([0, 1]), tf.constant(logits),
                            features=_features([0, 1])))
  dp.apply_gradients(tape.gradient(loss, dp.trainable_variables))
  np.testing.assert_allclose(np.exp(dp.instance_log_sigma.numpy()[[0, 1]]),
                             [0.1, 5.0], rtol=1e-5)
  np.testing.assert_allclose(np.exp(dp.class_log_sigma.numpy()[[0, 1]]),
                             [0.1, 5.0], rtol=1e-5)
  np.testing.assert_allclose(np.exp(dp.class_log_sigma.numpy()[2]), 0.75,
                             rtol=1e-6)


def test_non_finite_gradients_skip_the_update():
  dp = _built()
  grads = [tf.constant([np.nan, 0.0, 0.0]),
           tf.IndexedSlices(tf.constant([np.inf]), tf.constant([3]),
                            tf.constant([NUM_INSTANCES]))]
  dp.apply_gradients(grads)
  assert np.all(dp.class_log_sigma.numpy() == np.float32(JOINT_CLASS_INIT))
  assert np.all(dp.instance_log_sigma.numpy() ==
                np.float32(JOINT_INSTANCE_INIT))


@pytest.mark.parametrize('kwargs,match', [
    (dict(num_instances=None), '`num_instances`'),
    (dict(learn_class=False, learn_instance=False), 'at least one'),
    (dict(num_instances=4, min_sigma=0.0), '`min_sigma`'),
    (dict(num_instances=4, momentum=1.5), '`momentum`'),
    (dict(num_instances=4, instance_learning_rate=-1.0),
     '`instance_learning_rate`'),
    (dict(num_instances=4, init_sigma=30.0), '`init_sigma`'),
    (dict(num_instances=4, init_sigma=0.08), '`joint_instance_sigma`'),
    (dict(num_instances=4, joint_instance_sigma=0.01),
     '`joint_instance_sigma`'),
    (dict(learn_instance=False, init_sigma=30.0), '`init_sigma`'),
    # Each error names its own argument (backticks included).
    (dict(num_instances=0), '`num_instances`'),
    (dict(num_instances=4, class_learning_rate=-1.0),
     '`class_learning_rate`'),
    (dict(num_instances=4, class_weight_decay=-1.0), '`class_weight_decay`'),
    (dict(num_instances=4, instance_weight_decay=-1.0),
     '`instance_weight_decay`'),
    (dict(num_instances=4, min_sigma=0.5, max_sigma=0.25), '`max_sigma`'),
])
def test_arguments_are_validated(kwargs, match):
  with pytest.raises(ValueError, match=match):
    data_parameters.DataParameters(**kwargs)


def test_missing_clip_index_and_unbuilt_tables_are_named():
  with pytest.raises(ValueError, match='build'):
    _ = data_parameters.DataParameters(num_instances=4).trainable_variables
  dp = _built()
  with pytest.raises(ValueError, match='clip_index'):
    dp(tf.constant([0]), tf.zeros([1, NUM_CLASSES]), features={})
  with pytest.raises(tf.errors.InvalidArgumentError, match='num_instances'):
    dp(tf.constant([0]), tf.zeros([1, NUM_CLASSES]),
       features=_features([NUM_INSTANCES]))



@pytest.mark.parametrize('kwargs,class_sigma,instance_sigma', [
    # Joint: the class term's start (init_sigma - joint_instance_sigma)
    # exactly on the floor, then exactly on the ceiling.
    (dict(init_sigma=0.75, joint_instance_sigma=0.5), 0.25, 0.5),
    (dict(init_sigma=4.5, joint_instance_sigma=0.5), 4.0, 0.5),
    # One kind: init_sigma exactly on the ceiling, then on the floor.
    (dict(learn_instance=False, init_sigma=4.0), 4.0, None),
    (dict(learn_class=False, init_sigma=0.25), None, 0.25),
])
def test_sigma_on_the_clamp_bounds_is_a_valid_start(kwargs, class_sigma,
                                                    instance_sigma):
  """The ranges are closed, [min_sigma, max_sigma], as their errors say."""
  # Dyadic values: the subtraction above is exact.
  dp = _built(min_sigma=0.25, max_sigma=4.0, **kwargs)
  for table, sigma in ((dp.class_log_sigma, class_sigma),
                       (dp.instance_log_sigma, instance_sigma)):
    if sigma is None:
      assert table is None
    else:
      np.testing.assert_allclose(np.exp(table.numpy()), sigma, rtol=1e-6)
  np.testing.assert_allclose(dp.sigma([0, 2], [1, 8]).numpy(),
                             [kwargs['init_sigma']] * 2, rtol=1e-6)


def test_tables_of_one_row_are_valid_and_empty_ones_refused():
  """One class / one clip is a real table; zero or no width is an error."""
  dp = data_parameters.DataParameters(num_instances=1)
  dp.build(num_classes=1)
  assert dp.class_log_sigma.shape == [1]
  assert dp.instance_log_sigma.shape == [1]
  np.testing.assert_allclose(dp.sigma([0, 0], [0, 0]).numpy(), [1.0, 1.0],
                             rtol=1e-6)
  for num_classes in (0, None):
    with pytest.raises(ValueError, match='`num_classes` must be > 0'):
      data_parameters.DataParameters(num_instances=4).build(
          num_classes=num_classes)


def test_build_again_keeps_the_tables_and_refuses_another_width():
  """The trainer may build twice: same width is a no-op, another an error."""
  dp = _built()
  tables = dp.trainable_variables + [dp.class_momentum, dp.instance_momentum]
  dp.class_log_sigma.assign([0.1, 0.2, 0.3])
  dp.build(num_classes=NUM_CLASSES)
  again = dp.trainable_variables + [dp.class_momentum, dp.instance_momentum]
  assert all(a is b for a, b in zip(again, tables))
  np.testing.assert_allclose(dp.class_log_sigma.numpy(), [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match=f'built for {NUM_CLASSES} classes'):
    dp.build(num_classes=NUM_CLASSES + 1)


@pytest.mark.parametrize('learn_class', [True, False])
def test_one_kind_learned_creates_nothing_for_the_other(learn_class):
  """No table, no momentum and no `num_instances` for the unlearned kind."""
  kwargs = dict(learn_class=learn_class, learn_instance=not learn_class,
                init_sigma=2.0)
  if not learn_class:
    kwargs['num_instances'] = NUM_INSTANCES
  # A class-only run needs no `num_instances` (and no clip/index feature).
  dp = data_parameters.DataParameters(**kwargs)
  assert dp.init_sigma == 2.0
  dp.build(num_classes=NUM_CLASSES)
  learned = ('class_log_sigma', 'class_momentum')
  other = ('instance_log_sigma', 'instance_momentum')
  if not learn_class:
    learned, other = other, learned
    assert dp.num_instances == NUM_INSTANCES
  else:
    assert dp.num_instances is None
  assert all(isinstance(getattr(dp, a), tf.Variable) for a in learned)
  assert all(getattr(dp, a) is None for a in other)
  labels, logits = [0, 2], np.array([[1.0, -0.5, 2.0], [0.3, 0.0, -1.2]],
                                    np.float32)
  features = None if learn_class else _features([4, 9])
  np.testing.assert_allclose(
      dp(tf.constant(labels), tf.constant(logits), features=features).numpy(),
      _np_loss(np.array(labels), logits, np.full(2, 2.0)), rtol=1e-5)


def test_momentum_tables_are_not_trainable():
  """Only the log-temperatures are trainable, also as a parent module sees.

  A trainable momentum table would be collected (and optimised, decayed or
  watched by a tape) by anything gathering trainable variables the usual
  way, i.e. walking the module tree rather than calling our property.
  """
  for learn_class, learn_instance in ((True, True), (True, False),
                                      (False, True)):
    dp = _built(learn_class=learn_class, learn_instance=learn_instance)
    momenta = [v for v in (dp.class_momentum, dp.instance_momentum)
               if v is not None]
    assert momenta and not any(v.trainable for v in momenta)
    assert all(v.trainable for v in dp.trainable_variables)
    parent = tf.Module()
    parent.loss = dp
    assert ({id(v) for v in parent.trainable_variables} ==
            {id(v) for v in dp.trainable_variables})
    assert len(parent.variables) == 2 * len(dp.trainable_variables)


# apple/ml-data-parameters' code defaults (argparse of main_cifar.py and
# main_imagenet.py: --lr_class_param 0.1, --lr_inst_param 0.1,
# --wd_class_param 0, --wd_inst_param 0; utils.py: SparseSGD momentum 0.9).
REFERENCE_DEFAULTS = dict(class_learning_rate=0.1, instance_learning_rate=0.1,
                          class_weight_decay=0.0, instance_weight_decay=0.0,
                          momentum=0.9)


def test_default_hyperparameters_are_the_reference_code_defaults():
  """Left unset, steps follow the reference run with its own defaults."""
  dp = data_parameters.DataParameters(num_instances=SIM_INSTANCES)
  dp.build(num_classes=SIM_CLASSES)
  reference = _Reference(SIM_CLASSES, SIM_INSTANCES, True, True,
                         JOINT_CLASS_INIT, JOINT_INSTANCE_INIT,
                         REFERENCE_DEFAULTS)
  rng = np.random.default_rng(6)
  for labels, index in STEPS[:2]:
    logits = (rng.normal(size=(len(labels), SIM_CLASSES)) * 3).astype(
        np.float32)
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(dp(tf.constant(labels), tf.constant(logits),
                               features=_features(index)))
    dp.apply_gradients(tape.gradient(loss, dp.trainable_variables))
    np.testing.assert_allclose(loss.numpy(),
                               reference.step(labels, logits, index),
                               rtol=1e-5)
    # (Instance rows pushed below the 1/20 floor they start on stay there.)
    for k, (value, momentum) in _tables(dp).items():
      np.testing.assert_allclose(value, reference.p[k], rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(momentum, reference.buf[k], rtol=1e-5,
                                 atol=1e-6)


def test_weight_decay_outside_replica_context_counts_one_replica():
  """Under `strategy.scope()` (no replica context) G is this batch's size."""
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  with strategy.scope():
    dp = _built(class_weight_decay=0.03, instance_weight_decay=0.2)
    class_ls = np.array([0.4, -0.7, 1.1], np.float32)
    inst_ls = np.linspace(-1.5, 1.0, NUM_INSTANCES).astype(np.float32)
    dp.class_log_sigma.assign(class_ls)
    dp.instance_log_sigma.assign(inst_ls)
    labels, index = np.array([0, 2, 2]), np.array([3, 9, 0])
    logits = np.array([[1.0, -0.5, 2.0], [0.3, 0.0, -1.2], [2.0, 1.0, 0.0]],
                      np.float32)
    assert tf.distribute.get_replica_context() is None
    got = dp(tf.constant(labels), tf.constant(logits),
             features=_features(index)).numpy()
  c, i = class_ls[labels].astype(np.float64), inst_ls[index].astype(np.float64)
  want = (_np_loss(labels, logits, np.exp(c) + np.exp(i)) +
          0.5 * len(labels) * (0.03 * c**2 + 0.2 * i**2))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_zero_weight_decay_is_off_not_zero_times_the_penalty():
  """Like the reference (`wd > 0`), 0 drops the term: no 0 * inf = NaN.

  Each example has one log-temperature at -3e19: its square overflows
  float32 while its exp is 0 and the other term keeps sigma finite.
  """
  dp = _built()
  dp.class_log_sigma.assign([-3e19, 0.0, 0.0])
  inst_ls = np.zeros(NUM_INSTANCES, np.float32)
  inst_ls[5] = -3e19
  dp.instance_log_sigma.assign(inst_ls)
  labels, index = np.array([0, 1]), np.array([2, 5])
  logits = np.array([[1.0, -0.5, 2.0], [0.3, 0.0, -1.2]], np.float32)
  got = dp(tf.constant(labels), tf.constant(logits),
           features=_features(index)).numpy()
  np.testing.assert_allclose(got, _np_loss(labels, logits, np.ones(2)),
                             rtol=1e-5)


def test_clip_index_outside_the_table_fails_naming_the_problem():
  """Both in-graph checks fire with their own message."""
  dp = _built()
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'\bdata parameters: negative clip/index\b'):
    dp(tf.constant([0, 1]), tf.zeros([2, NUM_CLASSES]),
       features=_features([2, -1]))
  with pytest.raises(
      tf.errors.InvalidArgumentError,
      match=r'\bdata parameters: a clip/index is >= `num_instances` '
            r'\(NUM_TRAIN_EXAMPLES too small for these records\)'):
    dp(tf.constant([0, 1]), tf.zeros([2, NUM_CLASSES]),
       features=_features([NUM_INSTANCES - 1, NUM_INSTANCES]))


# ---- In the trainer ----


def test_spl_main_two_steps_checkpoints_data_parameters(tmp_path):
  clips, preds = label_space_data.write_clips_and_predictions(str(tmp_path))
  pattern, space = label_space_data.relabelled(str(tmp_path), clips, preds,
                                               'weak')
  model_dir = str(tmp_path / 'model')
  result = main.run(
      [DATA_PARAMS_GIN, TINY],
      [f"TRAIN_FILES = '{pattern}'", f"LABEL_SPACE = '{space}'",
       'NUM_TRAIN_EXAMPLES = 8'],
      model_dir=model_dir, mode='train',
      strategy=tf.distribute.OneDeviceStrategy('/cpu:0'))
  assert result['step'] == 2
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  names = reader.get_variable_to_shape_map()
  key = 'loss/instance_log_sigma/.ATTRIBUTES/VARIABLE_VALUE'
  assert names[key] == [8]
  assert names['loss/class_log_sigma/.ATTRIBUTES/VARIABLE_VALUE'] == [3]
  assert 'loss/instance_momentum/.ATTRIBUTES/VARIABLE_VALUE' in names
  inst = reader.get_tensor(key)
  momentum = reader.get_tensor(
      'loss/instance_momentum/.ATTRIBUTES/VARIABLE_VALUE')
  # Two steps of batch 4 over 8 clips: 4 to 8 rows got a gradient (their
  # momentum; a value can be pushed below the clamp floor it starts on and
  # clamped back, so values alone undercount), none out of range.
  assert 4 <= np.sum(momentum != 0) <= 8
  assert np.all((inst != np.float32(JOINT_INSTANCE_INIT)) <= (momentum != 0))
  assert np.all(np.abs(inst) <= math.log(20) + 1e-6)


def _run_with(dp, strategy, model_dir, *, train_steps):
  # The memory dataset ignores the file; the trainer only checks it exists.
  data_file = model_dir.parent / 'x.tfrecord'
  data_file.write_bytes(b'')
  return train_lib.run(
      mode='train', model_dir=str(model_dir), strategy=strategy,
      model_fn=_NO_BN_MODEL, dataset_fn=_MEMORY_DATASET,
      train_file_pattern=str(data_file),
      num_classes=test_train_lib.NUM_CLASSES, global_batch_size=4,
      train_steps=train_steps,
      loop=loop.LoopConfig(steps_per_loop=2, checkpoint_every_steps=2),
      loss_fn=dp,
      learning_rate_fn=functools.partial(optimization.build_learning_rate,
                                         base_learning_rate=1.0))


def _dp16():
  return data_parameters.DataParameters(
      num_instances=16, class_learning_rate=2.0, instance_learning_rate=1.5,
      class_weight_decay=3e-2, instance_weight_decay=1e-2)


def test_resume_restores_data_parameters(tmp_path):
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  first = _dp16()
  _run_with(first, strategy, tmp_path / 'm', train_steps=2)
  trained = first.instance_log_sigma.numpy()
  # Rows 0..7 of the memory dataset moved.
  assert np.sum(trained != np.float32(JOINT_INSTANCE_INIT)) == 8
  second = _dp16()
  result = _run_with(second, strategy, tmp_path / 'm', train_steps=2)
  assert result['step'] == 2  # nothing left to train: only the restore ran
  np.testing.assert_array_equal(second.instance_log_sigma.numpy(), trained)
  np.testing.assert_array_equal(second.class_log_sigma.numpy(),
                                first.class_log_sigma.numpy())
  np.testing.assert_array_equal(second.instance_momentum.numpy(),
                                first.instance_momentum.numpy())


def test_mirrored_replicas_hold_identical_tables(tmp_path, logical_cpus):
  tables = {}
  for name, strategy in (
      ('one', tf.distribute.OneDeviceStrategy(logical_cpus[0])),
      ('mirrored', _MIRRORED(logical_cpus[:2]))):
    tf_keras.utils.set_random_seed(1)
    dp = _dp16()
    _run_with(dp, strategy, tmp_path / name, train_steps=2)
    tables[name] = dp
  mirrored = tables['mirrored']
  copies = [v.numpy() for v in mirrored.instance_log_sigma.values]
  assert len(copies) == 2
  np.testing.assert_array_equal(copies[0], copies[1])
  momenta = [v.numpy() for v in mirrored.instance_momentum.values]
  np.testing.assert_array_equal(momenta[0], momenta[1])
  classes = [v.numpy() for v in mirrored.class_log_sigma.values]
  np.testing.assert_array_equal(classes[0], classes[1])
  # Both replicas' clips moved (rows 0..7 over 2 steps), the others did not.
  init = np.float32(JOINT_INSTANCE_INIT)
  assert np.all(copies[0][:8] != init) and np.all(copies[0][8:] == init)
  # The all-reduced update equals the one-device update of the same batches
  # (per-example weight decay included: it needs the global batch size).
  np.testing.assert_allclose(copies[0], tables['one'].instance_log_sigma
                             .numpy(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(classes[0], tables['one'].class_log_sigma
                             .numpy(), rtol=1e-4, atol=1e-6)
