"""SPL's job behind `spl.main`: training, evaluation and prediction (`run`).

Everything here takes a `tf.distribute.Strategy` made by the entry point and
writes single-replica step code (STYLE rule 7): the model, optimizer and
metrics are created under `strategy.scope()`, each replica computes
`sum(per-example loss) / global_batch_size` (so gradients summed over replicas
are those of the global batch), and the only cross-replica code is
`metrics.gather_across_replicas` plus the optimizer's own all-reduce.

An optional exponential moving average of the weights (`run.ema_decay`,
`spl.ema`) is updated after each step on every replica's own copies (no
communication), checkpointed, and swapped in for evaluation and prediction.

The loop itself (steps per loop, progress, summaries, checkpoints, resume,
metrics.json) is `spl.loop.Controller`; `ClassificationTask` is what SPL
gives it. Evaluation is `spl.evaluation`, prediction `spl.prediction`.

No gin here: `spl/configurables.py` makes `run` configurable.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf
import tf_keras

from spl import ema as ema_lib
from spl import evaluation
from spl import input_pipeline
from spl import loop as loop_lib
from spl import losses
from spl import optimization
from spl import prediction
from spl import tb_images
from spl.models import classifier
from spl.models import factory
from spl.models import inflation
from tfrecords_tools import label_spaces
from tfrecords_tools import records
from tfrecords_tools import schema
from tfrecords_tools import tfrecord_io

MODES = ('train', 'eval', 'train_and_eval', 'predict')
MIXED_PRECISION = (None, 'bfloat16', 'float16')
METRICS_FILENAME = loop_lib.METRICS_FILENAME
# In eval (and predict) results when `ema_decay` is set: whether the EMA
# weights were used (a bool; metrics.json and TensorBoard see 1/0).
EMA_RESULT_KEY = 'ema_weights'


# ---- Checks ----


def check_label_range(file_pattern: str, num_classes: int) -> None:
  """Refuses records whose label map has more classes than the classifier.

  Reading `label_map.json` next to the shards catches the mistake before any
  step; the input pipeline checks every record's label as well (`num_classes`
  is passed to it), which catches what a label map cannot.
  """
  files = loop_lib.list_files(file_pattern, 'file_pattern')
  for directory in sorted({os.path.dirname(f) for f in files}):
    path = os.path.join(directory, schema.LABEL_MAP_FILENAME)
    if tf.io.gfile.exists(path):
      names = records.read_label_map(path)
      if len(names) > num_classes:
        raise ValueError(
            f'records in {directory!r} have {len(names)} classes '
            f'({schema.LABEL_MAP_FILENAME}) but the classifier has '
            f'`num_classes`={num_classes}')


def read_label_space(path: str) -> Dict[str, Any]:
  """Reads and validates `label_space.json` (local or any tf.io.gfile path)."""
  if not tf.io.gfile.exists(path):
    raise ValueError(f'`label_space_path` {path!r} does not exist')
  with tf.io.gfile.GFile(path, 'r') as f:
    return label_spaces.parse_label_space(f.read(), source=path)


def _record_label_space_ids(path: str):
  """Yields the `clip/label_space/id` of every record (None if absent)."""
  with tf.io.gfile.GFile(path, 'rb') as f:
    for payload in tfrecord_io.read_contexts(f, path):
      values = tf.train.Features.FromString(payload).feature[
          schema.LABEL_SPACE_ID_KEY].bytes_list.value
      yield values[0] if values else None


def check_label_space(file_pattern: str, space: Dict[str, Any],
                      label_space_path: str) -> int:
  """Refuses records relabelled into another label space, before any step.

  Records of another label space have labels of the same range but another
  meaning, so nothing downstream would notice: the only guard is the id the
  relabel job writes into every record. Reads only the record contexts
  (frames are seeked over), a few hundred bytes per clip.

  Returns:
    The number of records checked.
  """
  total = 0
  for path in loop_lib.list_files(file_pattern, 'file_pattern'):
    try:
      total += label_spaces.check_label_space_ids(
          space, _record_label_space_ids(path))
    except ValueError as e:
      raise ValueError(
          f'records {path!r} do not belong to the label space of '
          f'{label_space_path!r} (id {space["id"]!r}): {e}') from e
  return total


# ---- Model and checkpoint ----


def _build_model(model_fn, *, num_classes: int,
                 input_shape: Tuple[Optional[int], ...],
                 example_shape: Tuple[int, ...]) -> tf_keras.Model:
  model = model_fn(num_classes=num_classes, input_shape=input_shape)
  # Creates every variable now, so that a checkpoint restore is checked
  # against the full model and not deferred to the first step.
  model(tf.zeros((1,) + tuple(example_shape)), training=False)
  out = model.output_shape if hasattr(model, 'output_shape') else None
  if out is not None and out[-1] != num_classes:
    raise ValueError(f'`model_fn` built {out[-1]} logits, expected '
                     f'`num_classes`={num_classes}')
  return model


def _read_imagenet_checkpoint(
    imagenet_checkpoint: Optional[str], method: str,
    norm_epsilon: Optional[float], *, training: bool, model_dir: str,
    init_checkpoint: Optional[str]) -> Optional[inflation.ResNet50Weights]:
  """Reads the ImageNet ResNet-50 a fresh training run is inflated from.

  Called before anything is built, so that a missing, truncated or foreign
  file fails the run at once. None when there is nothing to inflate: no
  `imagenet_checkpoint`, not training, or `model_dir` already holds a
  checkpoint (a resumed run must not overwrite its trained backbone).
  """
  if method not in inflation.INFLATION_METHODS:
    raise ValueError(f'`inflation_method` must be one of '
                     f'{inflation.INFLATION_METHODS}, got {method!r}')
  if norm_epsilon is not None and not norm_epsilon > 0:
    raise ValueError(f'`imagenet_norm_epsilon` must be > 0 or None, got '
                     f'{norm_epsilon!r}')
  if not imagenet_checkpoint or not training:
    return None
  if init_checkpoint:
    raise ValueError(
        f'set `init_checkpoint` ({init_checkpoint!r}, fine-tuning) or '
        f'`imagenet_checkpoint` ({imagenet_checkpoint!r}, ImageNet '
        'initialisation), not both: they initialise the same backbone')
  resume_from = tf.train.latest_checkpoint(model_dir)
  if resume_from:
    logging.info('`imagenet_checkpoint` %s not read: the run resumes from %s',
                 imagenet_checkpoint, resume_from)
    return None
  try:
    weights = inflation.read_2d_resnet50(imagenet_checkpoint,
                                         checkpoint_norm_epsilon=norm_epsilon)
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f'`imagenet_checkpoint`: {e}') from e
  logging.info('read the ImageNet ResNet-50 %s (%s)', weights.path,
               weights.format)
  return weights


def restore_backbone(model: tf_keras.Model, init_checkpoint: str,
                     ema_weights: bool = True) -> str:
  """Initialises `model.backbone` from a (pre-training) checkpoint.

  Only the backbone is read, so the head (and its number of classes) is new;
  checkpoints written by this trainer carry a `backbone` edge for this. A
  checkpoint with a moving average of its weights (`run.ema_decay`) gives
  the averaged backbone (the weights its run evaluated) when `ema_weights`:
  the shadows follow the pre-training model's weight order, so that model is
  rebuilt from the `model.json` next to the checkpoint, restored with them,
  and its backbone copied. Without a `model.json` the raw backbone is read,
  with a warning.
  """
  path = loop_lib.checkpoint_path(init_checkpoint)
  if ema_weights and ema_lib.in_checkpoint(path):
    config = os.path.join(os.path.dirname(path), factory.MODEL_CONFIG_FILENAME)
    if tf.io.gfile.exists(config):
      source = factory.classifier_from_config_file(config)
      source(tf.zeros((1,) + _built_clip_shape(model)), training=False)
      loop_lib.restore_model_weights(source, path)
      _copy_weights(source.backbone, model.backbone, f'{path} ({config})')
      logging.info('backbone initialised from the EMA weights of %s', path)
      return path
    logging.warning('init_checkpoint %s also holds an EMA of its weights '
                    '(run.ema_decay) but no %s next to it to rebuild the '
                    'model they follow: fine-tuning starts from its raw '
                    'backbone weights', path, factory.MODEL_CONFIG_FILENAME)
  loop_lib.restore(tf.train.Checkpoint(backbone=model.backbone), path,
                   'the backbone', partial=True)
  return path


def _built_clip_shape(model: tf_keras.Model) -> Tuple[int, ...]:
  """The model's clip shape, with 4 frames where the time axis is open."""
  shape = list(model.input_shape[1:])
  return tuple(4 if d is None else d for d in shape)


def _copy_weights(source: tf_keras.Model, target: tf_keras.Model,
                  where: str) -> None:
  """Every weight of `source` into `target`'s (same architecture)."""
  shapes = [[tuple(w.shape) for w in m.weights] for m in (source, target)]
  if shapes[0] != shapes[1]:
    first = next((k for k, (a, b) in enumerate(zip(*shapes)) if a != b),
                 min(map(len, shapes)))
    raise ValueError(
        f'cannot initialise the backbone from {where}: another architecture '
        f'({len(shapes[0])} weights there, {len(shapes[1])} here; they '
        f'differ from weight #{first}: {shapes[0][first:first + 1]} there, '
        f'{shapes[1][first:first + 1]} here)')
  for a, b in zip(source.weights, target.weights):
    b.assign(a)


# ---- Datasets ----


def _train_features(element):
  return {**input_pipeline.video_features(element),
          input_pipeline.LABEL: element[input_pipeline.LABEL],
          input_pipeline.CLIP_INDEX: element[input_pipeline.CLIP_INDEX]}


# ---- Training ----


class ClassificationTask(loop_lib.Task):
  """SPL's task for `spl.loop.Controller`: the classifier's train step.

  The step is single-replica code: each replica computes `sum(per-example
  loss) / global_batch_size`, so gradients summed over replicas are those of
  the global batch. `run_steps` runs `num_steps` steps in one `tf.function`.
  With an `average` (`spl.ema.WeightAverage` of the model's trainable
  weights) every step ends by moving its shadows (`run.ema_decay`).
  """

  def __init__(self, *, strategy, model, optimizer, loss_fn, num_classes,
               global_batch_size, steps_per_epoch, weight_decay,
               mixed_precision, jit_compile, clip_norm=None, checkpoint=None,
               dataset_fn=None, train_file_pattern=None, do_eval=None,
               lr_schedule=None, do_predict=None, input_seed=None,
               average=None, label_space_path=None):
    self.strategy = strategy
    self.model = model
    self.optimizer = optimizer
    self.loss_fn = loss_fn
    self.num_classes = num_classes
    self.global_batch_size = global_batch_size
    self.steps_per_epoch = steps_per_epoch
    self.mixed_precision = mixed_precision
    self.weight_decay = weight_decay
    self.clip_norm = clip_norm
    self.checkpoint = checkpoint
    self.dataset_fn = dataset_fn
    self.train_file_pattern = train_file_pattern
    self.input_seed = input_seed
    self.do_eval = do_eval
    self.do_predict = do_predict
    self.lr_schedule = lr_schedule
    self.average = average
    self.label_space_path = label_space_path
    self.eval_result: Optional[Dict[str, Any]] = None
    if optimizer is None:
      # Evaluation or prediction only: no step, no training state. (With a
      # worker-local model for multi-worker prediction nothing may be
      # created under the strategy: it could start a collective.)
      self.step_counter = None
      return
    self.step_counter = optimizer.iterations
    self.variables = list(model.trainable_variables) + list(
        getattr(loss_fn, 'trainable_variables', ()))
    # A loss with `apply_gradients` updates its own variables (own learning
    # rates, sparse rows); the main optimizer gets only the others.
    self.num_main_variables = (len(model.trainable_variables)
                               if _loss_owns_update(loss_fn) else
                               len(self.variables))
    self.decayed = optimization.decayed_variables(model.trainable_variables)
    with strategy.scope():
      self.loss_metric = tf_keras.metrics.Mean('loss')
      self.accuracy = tf_keras.metrics.SparseCategoricalAccuracy('accuracy')
      self.gradient_norm = tf_keras.metrics.Mean('gradient_norm')
    self._grads = tf.function(self._compute_gradients,
                              jit_compile=bool(jit_compile))
    self._loop = tf.function(self._train_loop)

  def _compute_gradients(self, video, labels, features):
    num_replicas = self.strategy.num_replicas_in_sync
    epoch = tf.cast(self.optimizer.iterations, tf.float32) / float(
        self.steps_per_epoch)
    with tf.GradientTape() as tape:
      logits = tf.cast(self.model(video, training=True), tf.float32)
      per_example = self.loss_fn(labels, logits, epoch=epoch,
                                 features=features)
      loss = tf.reduce_sum(per_example) / float(self.global_batch_size)
      total = loss
      if self.model.losses:
        # Summed over replicas by the all-reduce, so divided here.
        total += tf.add_n([tf.cast(l, tf.float32)
                           for l in self.model.losses]) / num_replicas
      if self.mixed_precision == 'float16':
        total = self.optimizer.get_scaled_loss(total)
    grads = tape.gradient(total, self.variables)
    if self.mixed_precision == 'float16':
      grads = self.optimizer.get_unscaled_gradients(grads)
    grads = optimization.add_weight_decay(
        grads, self.variables, self.decayed, self.weight_decay,
        scale=1.0 / num_replicas)
    return grads, logits, loss * num_replicas

  def _replica_step(self, inputs):
    inputs = input_pipeline.finish_features(inputs)
    labels = inputs[input_pipeline.LABEL]
    if not isinstance(self.strategy, tf.distribute.TPUStrategy):
      # Out-of-range labels give NaN on GPU instead of an error. (On TPU the
      # input pipeline's own check, which gets `num_classes`, has to do.)
      tf.debugging.assert_less(
          tf.cast(labels, tf.int32), self.num_classes,
          message='a label exceeds the classifier\'s num_classes')
    grads, logits, loss = self._grads(inputs[input_pipeline.VIDEO], labels,
                                      inputs)
    n = self.num_main_variables
    main = grads[:n]
    if self.clip_norm is not None:
      # A loss that owns its update (Data Parameters) is not clipped.
      main, norm = optimization.all_reduce_and_clip(main, self.clip_norm)
      self.gradient_norm.update_state(norm)
    self.optimizer.apply_gradients(
        zip(main, self.variables[:n]),
        skip_gradients_aggregation=self.clip_norm is not None)
    if self.average is not None:
      self.average.update(self.optimizer.iterations)
    if n < len(self.variables):
      self.loss_fn.apply_gradients(grads[n:])
    self.loss_metric.update_state(loss)
    self.accuracy.update_state(labels, logits)

  def _train_loop(self, iterator, num_steps):
    for _ in tf.range(num_steps):
      self.strategy.run(self._replica_step, args=(next(iterator),))

  def run_steps(self, iterator, num_steps: int):
    self._loop(iterator, tf.constant(num_steps, tf.int32))

  def reset_metrics(self):
    self.loss_metric.reset_state()
    self.accuracy.reset_state()
    self.gradient_norm.reset_state()

  # ---- The `loop.Task` interface ----

  def train_iterator(self, step):
    return loop_lib.training_input(
        self.strategy, self.dataset_fn, self.train_file_pattern,
        global_batch_size=self.global_batch_size, step=step,
        seed=self.input_seed, map_fn=_train_features,
        num_classes=self.num_classes)

  def train_steps(self, iterator, num_steps):
    self.run_steps(iterator, num_steps)
    step = int(self.optimizer.iterations.numpy())
    result = {'loss': float(self.loss_metric.result()),
              'accuracy': float(self.accuracy.result()),
              'learning_rate': _learning_rate(self.optimizer, step - 1)}
    if self.clip_norm is not None:
      result['gradient_norm'] = float(self.gradient_norm.result())
    self.reset_metrics()
    return result

  def progress(self, result):
    line = f'acc {result["accuracy"]:.3f}  lr {result["learning_rate"]:.5f}'
    if 'gradient_norm' in result:
      line += f'  grad norm {result["gradient_norm"]:.3f}'
    return line

  def end_loop(self, step, checkpoint_due):
    if checkpoint_due and self.do_eval is not None:
      self.eval_result = self.do_eval(step)
      _report_to_schedule(self.lr_schedule, self.eval_result)
    return False

  def end_without_steps(self, step):
    if self.do_eval is not None:
      self.eval_result = self.do_eval(step)

  def summary(self):
    if self.eval_result is None:
      return {}
    return {'eval': loop_lib.scalars(self.eval_result)}

  def images(self):
    """Sample training clips as the model sees them (a batch of a separate
    pipeline: the run's input is not touched), and the relabel job's plots
    of the label space trained on."""
    ds = self.dataset_fn(self.train_file_pattern, is_training=True,
                         batch_size=4, input_context=None,
                         num_classes=self.num_classes)
    batch = next(iter(ds))
    if input_pipeline.VIDEO_FINISH in batch:  # `device_finishing`.
      batch = input_pipeline.finish_features(batch)
    out = {'training_clips': tb_images.clip_strip(
        batch[input_pipeline.VIDEO].numpy())}
    if self.label_space_path:
      folder = os.path.dirname(self.label_space_path)
      for name in LABEL_SPACE_PLOTS:
        image = tb_images.png_image(os.path.join(folder, name))
        if image is not None:
          out[f'label_space/{name[:-len(".png")]}'] = image
    return out

  def evaluate(self, step):
    return self.do_eval(step)

  def predict(self):
    return self.do_predict()


# The plots the relabel job draws beside `label_space.json`
# (`tfrecords_tools.relabel.CONFUSION_PNG`, `CLASS_COUNTS_PNG`; not imported:
# relabel brings Beam in).
LABEL_SPACE_PLOTS = ('confusion_matrix.png', 'class_counts.png')


def _loss_owns_update(loss_fn) -> bool:
  return (hasattr(loss_fn, 'trainable_variables') and
          hasattr(loss_fn, 'apply_gradients'))


def _report_to_schedule(schedule, eval_result) -> None:
  """Lets a schedule that watches evaluations (PlateauDecay) see this one."""
  report = getattr(schedule, 'report', None)
  if report is not None and eval_result is not None:
    if report(loop_lib.scalars(eval_result)):
      logging.info('evaluation plateau: learning rate dropped to %.6f',
                   float(schedule(0)))


def _learning_rate(optimizer, step: int) -> float:
  inner = getattr(optimizer, 'inner_optimizer', optimizer)
  lr = inner.learning_rate
  if isinstance(lr, tf_keras.optimizers.schedules.LearningRateSchedule):
    return float(lr(step))
  return float(tf.convert_to_tensor(lr))


def run(*,
        mode: str,
        model_dir: str,
        strategy: tf.distribute.Strategy,
        model_fn: Callable[..., tf_keras.Model],
        global_batch_size: Optional[int] = None,
        per_replica_batch_size: Optional[int] = None,
        num_classes: Optional[int] = None,
        label_space_path: Optional[str] = None,
        label_space_variant: Optional[str] = None,
        dataset_fn: input_pipeline.DatasetFn = input_pipeline.make_dataset,
        eval_dataset_fn: Optional[input_pipeline.DatasetFn] = None,
        train_file_pattern: Optional[str] = None,
        eval_file_pattern: Optional[str] = None,
        predict_file_pattern: Optional[str] = None,
        predictions_dir: Optional[str] = None,
        eval_global_batch_size: Optional[int] = None,
        num_train_examples: Optional[int] = None,
        train_epochs: Optional[float] = None,
        train_steps: Optional[int] = None,
        learning_rate_fn: Callable[..., Any] = (
            optimization.build_learning_rate),
        optimizer_fn: Callable[..., Any] = optimization.build_sgd,
        weight_decay: float = 1e-4,
        clip_norm: Optional[float] = None,
        ema_decay: Optional[float] = None,
        ema_dynamic_decay: bool = False,
        loss_fn: Callable[..., tf.Tensor] = losses.softmax_cross_entropy,
        mixed_precision: Optional[str] = None,
        jit_compile: bool = False,
        loop: Optional[loop_lib.LoopConfig] = None,
        init_checkpoint: Optional[str] = None,
        init_checkpoint_ema: bool = True,
        imagenet_checkpoint: Optional[str] = None,
        inflation_method: str = 'mean',
        imagenet_norm_epsilon: Optional[float] = None,
        eval_top_k: Sequence[int] = (1, 5),
        eval_background_class: Optional[int] = None,
        predict_top_k: int = 5,
        pad_eval_batches: Optional[bool] = None,
        setup_done: Optional[Callable[[], None]] = None) -> Dict[str, Any]:
  """Trains, evaluates or predicts; the whole job behind `spl.main`.

  Args:
    mode: One of `MODES`. 'train_and_eval' evaluates every new checkpoint.
    model_dir: Checkpoints, summaries, `metrics.json`.
    strategy: Built by the entry point; everything is created in its scope.
    model_fn: `model_fn(num_classes=, input_shape=)` -> classifier with
      `.backbone` (e.g. `models.factory.build_classifier` with its backbone
      bound by gin). `input_shape` comes from the input pipeline.
    num_classes: Classifier width; records with larger labels are refused.
      Optional with `label_space_path` (then only a cross-check).
    label_space_path: `label_space.json` of the relabel job: sizes the
      classifier, and every training / eval record must carry its id.
    label_space_variant: The variant an experiment declares (e.g. 'spl_b');
      a label space of another variant (or, with `num_classes`, another
      size) is refused before any step. Needs `label_space_path`.
    global_batch_size: Training batch summed over replicas.
    per_replica_batch_size: Alternatively, the batch of one replica (the
      global batch is this times the replicas): for a paper that gives a
      per-device batch and no device count. Exactly one of the two.
    dataset_fn: `input_pipeline.make_dataset`-like; called with the file
      pattern, `is_training`, per-replica `batch_size`, `input_context`,
      `num_classes` (and `repeat`/`drop_remainder` for eval and predict).
    eval_dataset_fn: Same for evaluation and prediction; default
      `dataset_fn` (gin gives them different scopes, e.g. test views).
    train_file_pattern: Training records.
    eval_file_pattern: Evaluation records.
    predict_file_pattern: Records to predict ('predict' mode).
    predictions_dir: Where predictions go; default `model_dir/predictions`.
    eval_global_batch_size: Default `global_batch_size`.
    num_train_examples: Clips per epoch; with `global_batch_size` gives
      the steps of an epoch (schedules are in epochs).
    train_epochs: Length of training in epochs.
    train_steps: Overrides `train_epochs` (smoke runs).
    learning_rate_fn: Called with `global_batch_size`, `steps_per_epoch`,
      `total_steps`; returns a learning rate or schedule.
    optimizer_fn: Called with the learning rate; returns a `tf_keras`
      optimizer.
    weight_decay: Coupled L2 coefficient (gradient += weight_decay * w) on
      all weights except norm and bias variables.
    clip_norm: If set, the gradients of the model (summed over replicas,
      weight decay included) are scaled down to this global norm when larger;
      the norm before clipping is logged as 'gradient_norm'. Neither paper
      clips; off by default.
    ema_decay: If set (in (0, 1)), an exponential moving average of the
      model's trainable weights (`spl.ema`): after every optimizer step
      `shadow = ema_decay * shadow + (1 - ema_decay) * weight`. The shadows
      start as the initialised weights, are checkpointed (under 'ema') and
      resumed, and evaluation (also during 'train_and_eval') and prediction
      swap them in (training goes on with the raw weights); batch-norm
      moving statistics are the raw model's (not averaged). Eval results
      then carry `ema_weights` (True: the shadows were evaluated; False: the
      checkpoint evaluated holds none, its raw weights were). A run resumed
      from a checkpoint without shadows starts them from its weights.
      `spl.export` exports the shadows of a checkpoint that holds them.
      Neither paper uses an EMA: None (off) by default.
    ema_dynamic_decay: Model Garden's dynamic decay: at optimizer step t
      (1 = first) the decay is `min(ema_decay, (1 + t) / (10 + t))`.
    loss_fn: Per-example loss with the signature of `spl.losses`. A loss
      object may also have `build(num_classes=)` (called under the strategy
      scope), `trainable_variables` (checkpointed; optimised by the main
      optimizer unless it has) `apply_gradients(grads)` (called in replica
      context with its own per-replica gradients; e.g.
      `spl.data_parameters.DataParameters`).
    mixed_precision: None, 'bfloat16' (TPU) or 'float16' (GPU, with dynamic
      loss scaling). Logits and losses stay float32.
    jit_compile: XLA-compile the forward/backward pass. Off by default: it
      made an R3D-50 step 3-6x slower on CPU.
    loop: Steps per loop, checkpoint period and retention
      (`spl.loop.LoopConfig`, gin `loop.*`; default its defaults).
    init_checkpoint: Checkpoint (prefix or directory) whose backbone
      initialises a fresh run (fine-tuning); ignored when `model_dir` already
      holds a checkpoint (the run resumes instead).
    init_checkpoint_ema: fine-tuning from a checkpoint with a moving average
      of its weights (its run's `ema_decay`) starts from the averaged
      backbone (`restore_backbone`); False: from the raw one.
    imagenet_checkpoint: A 2D ResNet-50 trained on ImageNet (Keras
      Applications' HDF5 weights file, or a Model Garden checkpoint or
      directory: `spl.models.inflation`) whose weights are inflated into the
      backbone of a fresh training run (SPL paper 4.3). It is read and
      checked (exists, readable, a ResNet-50) before anything is built, and
      paired with the backbone before any step. Not read when `model_dir`
      already holds a checkpoint (the run resumes from it, whatever this
      file has become) nor when evaluating or predicting. Setting it and
      `init_checkpoint` for training is an error: the two initialise the
      same backbone.
    inflation_method: How 2D kernels become 3D: 'mean' (I3D: repeated over
      time, divided by the temporal size) or 'center' (central tap only).
    imagenet_norm_epsilon: Batch-norm epsilon the ImageNet network was
      trained with, when the checkpoint does not say: None reads it from a
      Keras file (1.001e-5) and assumes the backbone's own for a TF
      checkpoint; Model Garden's `resnet_imagenet` experiment used 1e-5.
    eval_top_k: Top-k accuracies reported.
    eval_background_class: Class id excluded from mAP (SoccerNet).
    predict_top_k: Classes kept per clip in predictions.
    pad_eval_batches: Evaluate and predict with static-shape batches (the
      last one padded, padding ignored; `pad_batches`). None: under a
      TPUStrategy (which needs them) or with more than one replica.
    setup_done: Called once everything is built and restored, before the
      first step (the entry point writes the operative gin config there).

  Returns:
    The metrics also written to `model_dir/metrics.json`; after training also
    the trained model under 'model' (for callers that inspect weights).
  """
  if mode not in MODES:
    raise ValueError(f'`mode` must be one of {MODES}, got {mode!r}')
  if mixed_precision not in MIXED_PRECISION:
    raise ValueError(f'`mixed_precision` must be one of {MIXED_PRECISION}, '
                     f'got {mixed_precision!r}')
  optimization.check_weight_decay_and_clip(weight_decay, clip_norm)
  ema_lib.check_decay(ema_decay)
  if not model_dir:
    raise ValueError('`model_dir` must be set')
  space = None
  if label_space_variant is not None and not label_space_path:
    raise ValueError(f'`label_space_variant`={label_space_variant!r} needs '
                     '`label_space_path` (the label_space.json to check)')
  if label_space_path:
    space = read_label_space(label_space_path)
    label_spaces.check_expected_label_space(
        space, source=label_space_path, variant=label_space_variant)
    if num_classes is not None and num_classes != space['num_classes']:
      raise ValueError(
          f'`num_classes`={num_classes} disagrees with the '
          f'{space["num_classes"]} classes of label space {space["id"]!r} '
          f'({label_space_path!r}); leave `num_classes` unset')
    num_classes = space['num_classes']
  if num_classes is None:
    raise ValueError('set `num_classes` or `label_space_path`')
  num_replicas = strategy.num_replicas_in_sync
  if (global_batch_size is None) == (per_replica_batch_size is None):
    raise ValueError('set exactly one of `global_batch_size` and '
                     f'`per_replica_batch_size`, got {global_batch_size} and '
                     f'{per_replica_batch_size}')
  if per_replica_batch_size is not None:
    loop_lib.check_positive(per_replica_batch_size=per_replica_batch_size)
    global_batch_size = per_replica_batch_size * num_replicas
  loop = loop or loop_lib.LoopConfig()
  loop.check()
  loop_lib.check_positive(num_classes=num_classes,
                          global_batch_size=global_batch_size)
  if global_batch_size % num_replicas:
    raise ValueError(f'`global_batch_size`={global_batch_size} must be a '
                     f'multiple of the {num_replicas} replicas')
  eval_dataset_fn = eval_dataset_fn or dataset_fn
  eval_global_batch_size = eval_global_batch_size or global_batch_size
  if pad_eval_batches is None:
    # A TPU needs static shapes. With several replicas a short last step can
    # leave a replica an empty batch, which oneDNN's CPU convolutions (TF 2.20)
    # return with the input's shape, breaking the next layer: pad there too.
    pad_eval_batches = (evaluation.is_tpu(strategy) or
                        strategy.num_replicas_in_sync > 1)
  training = mode in ('train', 'train_and_eval')
  evaluating = mode in ('eval', 'train_and_eval')
  if (evaluating or pad_eval_batches) and eval_global_batch_size % num_replicas:
    # Evaluation splits its batch evenly over replicas; padded prediction
    # must too, or the replicas' shapes would not be static.
    raise ValueError(f'`eval_global_batch_size`={eval_global_batch_size} '
                     f'must be a multiple of the {num_replicas} replicas')

  # ---- Everything that can be wrong is checked before any step ----
  if training:
    loop_lib.list_files(train_file_pattern, 'train_file_pattern')
    check_label_range(train_file_pattern, num_classes)
    if train_steps is None and (train_epochs is None or
                                num_train_examples is None):
      raise ValueError('training needs `train_epochs` and '
                       '`num_train_examples`, or `train_steps`')
  if evaluating:
    loop_lib.list_files(eval_file_pattern, 'eval_file_pattern')
    check_label_range(eval_file_pattern, num_classes)
  if space is not None:
    patterns = ([train_file_pattern] if training else []) + (
        [eval_file_pattern] if evaluating else [])
    for pattern in patterns:
      checked = check_label_space(pattern, space, label_space_path)
      logging.info('%d records of %s are in label space %s', checked,
                   pattern, space['id'])
  if mode == 'predict':
    loop_lib.list_files(predict_file_pattern, 'predict_file_pattern')
  if init_checkpoint:
    init_checkpoint = loop_lib.checkpoint_path(init_checkpoint)
  imagenet_weights = _read_imagenet_checkpoint(
      imagenet_checkpoint, inflation_method, imagenet_norm_epsilon,
      training=training, model_dir=model_dir,
      init_checkpoint=init_checkpoint)
  shapes = []
  if training:
    probe = dataset_fn(train_file_pattern, is_training=True, batch_size=1,
                       input_context=None, num_classes=num_classes)
    shapes.append(input_pipeline.clip_shape(probe, 1))
  if not training or evaluating:
    pattern = eval_file_pattern if evaluating else predict_file_pattern
    probe = eval_dataset_fn(loop_lib.list_files(pattern, 'file pattern')[0],
                            is_training=False, batch_size=1,
                            input_context=None, num_classes=None,
                            repeat=False, drop_remainder=False)
    shapes.append(input_pipeline.clip_shape(probe, 2))
  del probe
  # Training and evaluation clips may differ (SPL: 16x224^2 crops in
  # training, 64 frames of 256^2 at test): the model is then built with
  # those dimensions unknown (every backbone is fully convolutional up to
  # its global pool); each step still sees static shapes.
  clip_shape = tuple(d if all(s[i] == d for s in shapes) else None
                     for i, d in enumerate(shapes[0]))

  chief = loop_lib.is_chief(strategy)
  worker, num_workers = loop_lib.worker_info(strategy)
  # Multi-worker prediction: workers predict different shards and finish at
  # different times, so they must never meet in a collective. A mirrored
  # model would (reading batch-norm moving statistics, ON_READ variables,
  # outside a replica is an all-reduce), so each worker gets a model of its
  # own, outside the strategy.
  local_model = mode == 'predict' and num_workers > 1
  if chief:
    tf.io.gfile.makedirs(model_dir)
  previous_policy = tf_keras.mixed_precision.global_policy()
  if mixed_precision:
    tf_keras.mixed_precision.set_global_policy(
        'mixed_bfloat16' if mixed_precision == 'bfloat16' else 'mixed_float16')
  end_seeding = loop.seed_job()
  try:
    with contextlib.nullcontext() if local_model else strategy.scope():
      model = _build_model(model_fn, num_classes=num_classes,
                           input_shape=clip_shape, example_shape=shapes[0])
      if hasattr(loss_fn, 'build'):
        # Loss variables (e.g. Data Parameters) sized by the classifier and
        # mirrored like the model's.
        loss_fn.build(num_classes=num_classes)
      steps_per_epoch = total_steps = 1
      optimizer = lr = None
      if training:
        steps_per_epoch = max(1, (num_train_examples or 0) //
                              global_batch_size) if num_train_examples else 0
        if train_steps is not None:
          loop_lib.check_positive(train_steps=train_steps)
          total_steps = int(train_steps)
          steps_per_epoch = steps_per_epoch or total_steps
        else:
          loop_lib.check_positive(train_epochs=train_epochs,
                          num_train_examples=num_train_examples)
          total_steps = int(math.ceil(train_epochs * steps_per_epoch))
        lr = learning_rate_fn(global_batch_size=global_batch_size,
                              steps_per_epoch=steps_per_epoch,
                              total_steps=total_steps)
        optimizer = optimization.wrap_for_mixed_precision(
            optimizer_fn(lr), mixed_precision)
        inner = getattr(optimizer, 'inner_optimizer', optimizer)
        trainable = list(model.trainable_variables)
        if not _loss_owns_update(loss_fn):
          trainable += list(getattr(loss_fn, 'trainable_variables', ()))
        inner.build(trainable)
      items = dict(model=model, backbone=model.backbone)
      if optimizer is not None:
        items['optimizer'] = optimizer
        if isinstance(lr, tf.Module):
          items['learning_rate'] = lr  # E.g. a plateau schedule's state.
      if hasattr(loss_fn, 'trainable_variables'):
        items['loss'] = loss_fn
      average = None
      if ema_decay is not None:
        average = ema_lib.WeightAverage(model.trainable_variables, ema_decay,
                                        dynamic_decay=ema_dynamic_decay)
        items[ema_lib.CHECKPOINT_KEY] = average
      checkpoint = tf.train.Checkpoint(**items)
    if chief and training and isinstance(model, classifier.VideoClassifier):
      factory.write_model_config(
          os.path.join(model_dir, factory.MODEL_CONFIG_FILENAME), model)

    # Restore: the run's own checkpoint first (resume), else the backbone.
    # Shadows are restored where the checkpoint has them (one written
    # without `ema_decay` restores without); `ema_restored` says if they were.
    latest = tf.train.latest_checkpoint(model_dir)
    ema_restored = bool(average is not None and latest and
                        ema_lib.in_checkpoint(latest))
    restored_from = loop_lib.resume(
        checkpoint if ema_restored or average is None else
        tf.train.Checkpoint(**{k: v for k, v in items.items()
                               if k != ema_lib.CHECKPOINT_KEY}),
        model_dir, 'the run state', training)
    if restored_from:
      pass  # Resuming (loop.resume logged it): nothing else initialises.
    elif mode in ('eval', 'predict'):
      if not init_checkpoint:
        raise ValueError(f'`model_dir` {model_dir!r} holds no checkpoint to '
                         f'{mode} and no `init_checkpoint` is set')
      restored = dict(model=model)
      if average is not None and ema_lib.in_checkpoint(init_checkpoint):
        restored[ema_lib.CHECKPOINT_KEY] = average
        ema_restored = True
      loop_lib.restore(tf.train.Checkpoint(**restored), init_checkpoint,
                       'the model', partial=True)
      restored_from = init_checkpoint
    elif init_checkpoint:
      restored_from = restore_backbone(model, init_checkpoint,
                                       init_checkpoint_ema)
      logging.info('backbone initialised from %s', restored_from)
    elif imagenet_weights is not None:
      try:
        inflation.inflate(model, imagenet_weights, method=inflation_method)
      except ValueError as e:
        raise ValueError(
            f'`imagenet_checkpoint` {imagenet_checkpoint!r} cannot initialise '
            f'backbone {model.backbone.name!r}: {e}') from e
      restored_from = imagenet_weights.path
      imagenet_weights = None  # ~100 MB of arrays.
      logging.info('backbone inflated (%s) from ImageNet checkpoint %s',
                   inflation_method, restored_from)
    if average is not None and not ema_restored:
      if training:
        # A fresh run (now initialised), or one resumed from a checkpoint
        # written without `ema_decay`: the average starts here.
        average.reset()
        if latest:
          logging.warning('checkpoint %s holds no EMA weights: the average '
                          'starts from its weights', latest)
      else:
        logging.warning('checkpoint %s holds no EMA weights (trained without '
                        '`ema_decay`): its raw weights are used', restored_from)
    # Evaluation and prediction use the shadows whenever there are any.
    swap_in = average is not None and (training or ema_restored)

    def ema_weights():
      return average.swapped() if swap_in else contextlib.nullcontext()

    eval_writer = (tf.summary.create_file_writer(
        os.path.join(model_dir, 'eval')) if chief and evaluating
                   else tf.summary.create_noop_writer())

    def do_eval(step):
      with ema_weights():
        result = evaluation.evaluate(
            model, strategy, eval_dataset_fn, eval_file_pattern,
            num_classes=num_classes, global_batch_size=eval_global_batch_size,
            top_k=eval_top_k, background_class=eval_background_class,
            pad=pad_eval_batches)
      if average is not None:
        result[EMA_RESULT_KEY] = swap_in
      if chief:
        loop_lib.record_evaluation(model_dir, evaluation.EVAL_DETAILS_FILENAME,
                                   step, result, eval_writer, 'eval')
      return result

    out_dir = predictions_dir or os.path.join(model_dir,
                                              prediction.PREDICTIONS_PREFIX)

    def do_predict():
      with ema_weights():
        written = prediction.predict(
            model, strategy, eval_dataset_fn, predict_file_pattern, out_dir,
            num_classes=num_classes, global_batch_size=eval_global_batch_size,
            top_k=predict_top_k, pad=pad_eval_batches)
      result = {'predictions_dir': out_dir, 'written': written}
      if average is not None:
        result[EMA_RESULT_KEY] = swap_in
      return result

    task = ClassificationTask(
        strategy=strategy, model=model, optimizer=optimizer, loss_fn=loss_fn,
        num_classes=num_classes, global_batch_size=global_batch_size,
        steps_per_epoch=steps_per_epoch, weight_decay=weight_decay,
        mixed_precision=mixed_precision, jit_compile=jit_compile,
        clip_norm=clip_norm, checkpoint=checkpoint, dataset_fn=dataset_fn,
        train_file_pattern=train_file_pattern,
        do_eval=do_eval if evaluating else None, lr_schedule=lr,
        do_predict=do_predict, input_seed=loop.input_seed,
        average=average if training else None,
        label_space_path=label_space_path)
    controller = loop_lib.Controller(
        strategy=strategy, task=task, model_dir=model_dir, config=loop,
        total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    if mode == 'predict':
      return controller.predict(restored_from, setup_done)
    if mode == 'eval':
      name = restored_from.rsplit('-', 1)[-1]
      return controller.evaluate(int(name) if name.isdigit() else 0,
                                 restored_from, setup_done)
    summary = controller.train(setup_done)
    summary['model'] = model
    return summary
  finally:
    tf_keras.mixed_precision.set_global_policy(previous_policy)
    end_seeding()
