"""The one training loop of both methods, in the style of orbit's Controller.

`Controller` owns what every training run does the same way: steps per
compiled loop, the progress line, TensorBoard scalars, checkpoints (period,
retention, the chief / non-chief directories), resume from the run's own
latest checkpoint, and `metrics.json`. A method supplies a `Task`: its models
and state, its input iterator, the compiled steps, what happens at a loop
boundary (evaluation, a schedule that watches it, a curriculum), and its
evaluation and prediction. SPL classification (`spl.train_lib`) and CPD
pre-training (`cpd.trainer`) are two tasks; neither writes a loop of its own.
Every mode of `spl.main` runs through the Controller: `train` (and
'train_and_eval'), `evaluate` ('eval'), `predict`.

Loops follow orbit's pattern: a task's `train_steps` runs `num_steps` steps
in one `tf.function` call (a `tf.range` loop), so Python is entered once per
loop, not once per step; this is what keeps the trainer at the speed of a
bare `tf.function` step (`benchmarks/bench_trainer.py`).

Bad input: with `on_bad_record='skip'` the records and damaged shards the
input pipeline skipped (`spl.inputs.bad_input`) are counted in the progress
line, as TensorBoard scalars `input/skipped_records` and
`input/damaged_files`, and under 'input' in `metrics.json` (which files).

Faults: a `tf.train.CheckpointManager` saves the task's checkpoint (with its
step counter) every `checkpoint_every_steps` and at the last step; rerunning
the same command restores the latest checkpoint and continues. Under
MultiWorkerMirroredStrategy every worker must take part in a save (batch-norm
moving statistics are ON_READ variables, reading them is a collective), so
non-chief workers save to a scratch directory that is deleted at the end.

No gin here: `spl/configurables.py` registers `LoopConfig` as `loop`, so
`loop.steps_per_loop = ...` sets it for both methods.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging as std_logging
import math
import os
import shutil
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import config as tf_config
import tf_keras

from spl import ema as ema_lib
from spl import tb_images
from spl.inputs import bad_input
from tfrecords_tools import file_patterns
from tfrecords_tools import records

METRICS_FILENAME = 'metrics.json'
# The per-step progress line ('step N/M ... clips/s eta'), on a logger of
# its own so that a caller can show it alone (the demos do).
PROGRESS_LOGGER = 'spl.loop.progress'
_PROGRESS_LOG = std_logging.getLogger(PROGRESS_LOGGER)


# ---- Cluster roles ----


def worker_info(strategy: tf.distribute.Strategy) -> Tuple[int, int]:
  """(index of this worker, number of workers); (0, 1) unless multi-worker."""
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return 0, 1
  resolver = strategy.cluster_resolver
  spec = resolver.cluster_spec()
  jobs = spec.jobs
  chiefs = spec.num_tasks('chief') if 'chief' in jobs else 0
  workers = spec.num_tasks('worker') if 'worker' in jobs else 0
  if resolver.task_type == 'chief':
    return 0, chiefs + workers
  return chiefs + int(resolver.task_id or 0), chiefs + workers


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes checkpoints, summaries and files."""
  return worker_info(strategy)[0] == 0


# ---- Checks and files shared by the jobs ----


def check_positive(**kwargs) -> None:
  for name, value in kwargs.items():
    if value is None or value <= 0:
      raise ValueError(f'`{name}` must be > 0, got {value!r}')


def list_files(file_pattern: Optional[str], what: str) -> List[str]:
  """The files of a (comma-separated) pattern a mode needs; refuses none."""
  if not file_pattern:
    raise ValueError(f'`{what}` must be set for this mode')
  return file_patterns.match(file_pattern, f'`{what}`')


def write_json(path: str, obj: Any) -> None:
  records.write_json_atomic(path, obj)


def scalars(d: Dict[str, Any]) -> Dict[str, float]:
  """The int and float entries of a result (what summaries can hold)."""
  return {k: v for k, v in d.items() if isinstance(v, (int, float))}


def write_metrics(model_dir: str, summary: Dict[str, Any],
                  chief: bool) -> None:
  """`model_dir/metrics.json` (chief only), the job's result."""
  if chief:
    write_json(os.path.join(model_dir, METRICS_FILENAME), summary)


def _previous_train_result(model_dir: str, step: int) -> Dict[str, Any]:
  """The 'train' entry of `metrics.json` if it was written at `step`."""
  path = os.path.join(model_dir, METRICS_FILENAME)
  if not tf.io.gfile.exists(path):
    return {}
  try:
    with tf.io.gfile.GFile(path) as f:
      previous = json.load(f)
  except ValueError:
    return {}
  train = previous.get('train') if isinstance(previous, dict) else None
  if isinstance(train, dict) and train.get('step') == step:
    return train
  return {}


def record_evaluation(model_dir: str, filename: str, step: int,
                      result: Dict[str, Any], writer, what: str) -> None:
  """Where an evaluation's result goes (chief only): its scalars to the
  TensorBoard `writer` at `step`, the whole result with the step to
  `model_dir/filename`, and one log line headed `what`."""
  values = scalars(result)
  with writer.as_default(step=step):
    for k, v in values.items():
      tf.summary.scalar(k, v)
    # The confusion matrix and per-class accuracy, as images.
    tb_images.write(tb_images.evaluation_images(result), step, 'details')
  writer.flush()
  write_json(os.path.join(model_dir, filename), dict(result, step=step))
  logging.info('%s at step %d: %s', what, step,
               ' '.join(f'{k}={v:.4f}' for k, v in sorted(values.items())))


# ---- Checkpoints ----


def checkpoint_path(path: str) -> str:
  """Resolves a checkpoint prefix or a directory holding checkpoints."""
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise ValueError(f'checkpoint directory {path!r} holds no checkpoint')
    return latest
  if not tf.io.gfile.exists(path + '.index'):
    raise ValueError(f'checkpoint {path!r} does not exist (no {path}.index)')
  return path


def restore(checkpoint: tf.train.Checkpoint, path: str, what: str,
            partial: bool) -> None:
  """Restores `path` and checks that it matches, naming the file on error."""
  try:
    tf.train.load_checkpoint(path)  # Reads the index: catches corrupt files.
    status = checkpoint.read(path)
    status.assert_existing_objects_matched()
    if partial:
      status.expect_partial()
  except (tf.errors.OpError, AssertionError, ValueError) as e:
    raise ValueError(
        f'cannot restore {what} from checkpoint {path!r}: it is corrupt or '
        f'was written for a different architecture (backbone, '
        f'`num_classes`, projection, optimizer). Underlying error: '
        f'{str(e)[:800]}') from e


def restore_model_weights(model: tf_keras.Model, path: str,
                          ema_weights: bool = True) -> str:
  """Restores `model` as the trainers save it (`Checkpoint(model=...)`), then
  the checkpoint's moving average of its trainable weights over them when it
  has one (`run.ema_decay`: the weights the trainer evaluated) and
  `ema_weights`; returns 'ema' or 'raw'. Batch-norm statistics are the raw
  model's (the average covers trainable weights only)."""
  restore(tf.train.Checkpoint(model=model), path, 'the model', partial=True)
  if not (ema_weights and ema_lib.in_checkpoint(path)):
    return 'raw'
  average = ema_lib.WeightAverage(model.trainable_variables, None)
  restore(tf.train.Checkpoint(**{ema_lib.CHECKPOINT_KEY: average}), path,
          'the EMA weights', partial=True)
  average.copy_to_weights()
  return 'ema'


def resume(checkpoint: tf.train.Checkpoint, model_dir: str, what: str,
           training: bool) -> Optional[str]:
  """Restores the run's own latest checkpoint, if any; returns its path.

  Evaluation restores partially (the optimizer's slots may be absent from
  what it builds); training restores everything.
  """
  latest = tf.train.latest_checkpoint(model_dir)
  if latest:
    restore(checkpoint, latest, what, partial=not training)
    logging.info('restored %s', latest)
  return latest


def average_replica_means(strategy: tf.distribute.Strategy,
                          root: Any) -> None:
  """Gives every replica the cross-replica mean of each ON_READ variable with
  MEAN aggregation reachable from `root` (batch-norm moving statistics).

  A checkpoint saves such a variable as that mean and a restore gives it to
  every replica, while an uninterrupted run keeps each replica's own copy:
  the two runs' statistics then differ by float rounding. Averaging before
  every save (deterministic runs) makes the saved state the running state,
  so a resume continues bit for bit; what evaluation reads (the mean) is
  unchanged up to rounding. A no-op with one replica.
  """
  if strategy.num_replicas_in_sync < 2:
    return
  for obj in tf.train.TrackableView(root).descendants():
    if (isinstance(obj, tf.Variable) and
        obj.synchronization == tf.VariableSynchronization.ON_READ and
        obj.aggregation == tf.VariableAggregation.MEAN):
      obj.assign(obj.read_value())


def random_layer_generators(strategy: tf.distribute.Strategy,
                            root: Any) -> List[tf.random.Generator]:
  """The `tf.random.Generator` of every Keras layer reachable from `root`
  that draws random numbers in training (dropout, Model Garden's included),
  created now under `strategy` if the layer has not drawn yet.

  Only layers built while Keras's generator mode is on (`LoopConfig.seed_job`
  in deterministic runs) have one: the default (legacy stateful ops) keeps
  its position inside the kernels, which no checkpoint holds, so a resumed
  run would draw other masks than the uninterrupted one from its first step.
  The order is the checkpoint's object order, the same in every process.
  Only built layers are found (a Dropout inside a Model Garden block is
  created when the block is built): both tasks build every variable before
  training starts (the SPL classifier is functional, `cpd.trainer.CpdModels`
  calls its models once). Reads tf_keras's private `_random_generator`
  (pinned in setup.py).
  """
  # pylint: disable=protected-access
  rngs = [obj._random_generator
          for obj in tf.train.TrackableView(root).descendants()
          if isinstance(obj, tf_keras.layers.Layer) and
          getattr(obj, '_random_generator', None) is not None]
  stateful = [rng for rng in rngs if rng._rng_type == rng.RNG_STATEFUL]
  with strategy.scope():
    for rng in stateful:
      rng._maybe_init()
  return [rng._generator for rng in stateful]


def reseed_generators(generators: List[tf.random.Generator], seed: int,
                      step: int) -> None:
  """Puts every generator at a position given by (`seed`, its index,
  `step`): called at every loop start, the random draws of a loop depend on
  the step it starts at, not on how many loops this process ran, so a run
  resumed from a checkpoint (always at a loop start) draws what the
  uninterrupted run drew. Replicas still draw different masks (the
  generator folds in the replica)."""
  for i, generator in enumerate(generators):
    generator.reset_from_seed(np.array([seed, i, step], np.int64))


# ---- The loop ----


@dataclasses.dataclass
class LoopConfig:
  """How the loop runs, the same for every method (gin: `loop.*`).

  Attributes:
    steps_per_loop: steps per compiled `tf.function` call, and per progress
      line and summary point.
    checkpoint_every_steps: checkpoint period (a task may save more often,
      e.g. CPD at every epoch end); also at the last step.
    max_checkpoints_to_keep: older checkpoints are deleted.
    seed: seeds the process (weight initialisation, dropout: Python, NumPy
      and TensorFlow's global seed) in every run, and with `deterministic`
      the input order and augmentation.
    deterministic: exact runs: op determinism on for the job, the input
      order and augmentation fixed by `seed`, a resumed run starts the
      input where the checkpoint stopped (`training_input`), and replicas'
      batch-norm statistics are averaged before each save
      (`average_replica_means`), so a run killed at any point and rerun
      ends with the weights of an uninterrupted run.
      Off by default: deterministic kernels and a fixed input order cost
      speed on accelerators (not measured here: no GPU runs this stack).
  """
  steps_per_loop: int = 100
  checkpoint_every_steps: int = 1000
  max_checkpoints_to_keep: int = 5
  seed: int = 0
  deterministic: bool = False

  def check(self) -> None:
    check_positive(steps_per_loop=self.steps_per_loop,
                   checkpoint_every_steps=self.checkpoint_every_steps,
                   max_checkpoints_to_keep=self.max_checkpoints_to_keep)
    if not isinstance(self.seed, int) or self.seed < 0:
      raise ValueError(f'`seed` (gin loop.seed) must be an int >= 0, got '
                       f'{self.seed!r}')

  @property
  def input_seed(self) -> Optional[int]:
    """The input pipeline's seed: `seed` when deterministic, else None."""
    return self.seed if self.deterministic else None

  def seed_job(self) -> Callable[[], None]:
    """Seeds the process (and turns op determinism on when deterministic)
    before a job builds anything; returns what undoes op determinism."""
    tf_keras.utils.set_random_seed(self.seed)
    was_deterministic = tf_config.is_op_determinism_enabled()
    had_generators = tf_keras.backend.experimental.is_tf_random_generator_enabled()
    if self.deterministic:
      tf.config.experimental.enable_op_determinism()
      # Dropout draws from tf.random.Generator objects, which the Controller
      # reseeds by step at every loop (`reseed_generators`).
      tf_keras.backend.experimental.enable_tf_random_generator()

    def restore():
      if not was_deterministic:
        tf_config.disable_op_determinism()
      if not had_generators:
        tf_keras.backend.experimental.disable_tf_random_generator()
    return restore


def training_input(strategy: tf.distribute.Strategy,
                   dataset_fn: Callable[..., tf.data.Dataset],
                   file_pattern: str, *, global_batch_size: int, step: int,
                   seed: Optional[int], map_fn: Callable[[Any], Any],
                   **kwargs) -> Iterator[Any]:
  """The distributed training input of a run that starts at `step`.

  With a `seed` (`LoopConfig.input_seed`) the order and augmentation are
  fixed by it and a resumed run starts where the checkpoint stopped: each
  pipeline skips the records of the `step` steps done (it feeds
  `replicas / pipelines` batches a step) before decoding anything
  (`make_dataset`'s `skip_batches`). The input position is thus part of the
  checkpoint through the step counter, at the cost of reading (not
  decoding) the consumed records once when resuming. Without a seed a
  resumed run starts a fresh random order.

  The input repeats forever, and says so: tf.data cannot infer it (the
  decode interleave's cardinality is unknown), and a multi-worker strategy
  would otherwise hand out batches of unknown size, in case the last ones
  were partial (CPD's step needs the static batch size).
  """
  def make(ctx: tf.distribute.InputContext):
    extra = {}
    if seed is not None:
      extra = dict(deterministic=True, seed=seed)
      if step:
        per_pipeline = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        extra['skip_batches'] = step * per_pipeline
    ds = dataset_fn(file_pattern, is_training=True,
                    batch_size=ctx.get_per_replica_batch_size(
                        global_batch_size),
                    input_context=ctx, **kwargs, **extra)
    return ds.map(map_fn).apply(tf.data.experimental.assert_cardinality(
        tf.data.INFINITE_CARDINALITY))

  return iter(strategy.distribute_datasets_from_function(make))


class Task(abc.ABC):
  """What a method gives the `Controller`: the two abstract methods, and
  overrides of the others where its loop needs them.

  Attributes:
    checkpoint: the `tf.train.Checkpoint` of the whole run state.
    step_counter: the variable counting optimizer steps (e.g. the main
      optimizer's `iterations`).
    global_batch_size: clips per step (for clips/s).
    loops_end_at_epochs: whether a loop must stop at every epoch end (CPD:
      validation and the curriculum act there).
  """
  checkpoint: tf.train.Checkpoint
  step_counter: tf.Variable
  global_batch_size: int
  loops_end_at_epochs: bool = False

  @abc.abstractmethod
  def train_iterator(self, step: int) -> Iterator[Any]:
    """The distributed training input, for a run starting at `step`."""

  @abc.abstractmethod
  def train_steps(self, iterator: Iterator[Any],
                  num_steps: int) -> Dict[str, Any]:
    """Runs `num_steps` steps; returns their scalars, 'loss' among them."""

  def progress(self, result: Dict[str, Any]) -> str:
    """The task's part of the progress line (default: every other scalar)."""
    return '  '.join(f'{k} {v:.4g}' for k, v in sorted(result.items())
                     if k not in _LOOP_KEYS and isinstance(v, (int, float)))

  def end_loop(self, step: int, checkpoint_due: bool) -> bool:
    """Called after every loop, before a save; True forces a save now.

    `checkpoint_due`: the loop saves after this call (period or last step);
    a task evaluates here so that the checkpoint holds what the evaluation
    changed (a schedule's state) and a resume matches an uninterrupted run.
    """
    del step, checkpoint_due
    return False

  def end_without_steps(self, step: int) -> None:
    """Called when the run was already at its last step (a finished run
    rerun): e.g. evaluate once, as an uninterrupted run did at the end."""
    del step

  def summary(self) -> Dict[str, Any]:
    """What the task adds to `metrics.json` (e.g. the last evaluation)."""
    return {}

  def images(self) -> Dict[str, Any]:
    """Images for TensorBoard when training starts (e.g. sample input
    clips, the label space's plots): name -> uint8 [1, H, W, C]."""
    return {}

  # A method without evaluation or prediction (CPD predicts nothing) keeps
  # these: the mode is refused by name.
  def evaluate(self, step: int) -> Dict[str, Any]:
    """One evaluation of the current state (mode 'eval'); its result."""
    raise NotImplementedError(f'{type(self).__name__} does not evaluate')

  def predict(self) -> Dict[str, Any]:
    """Predictions of the current model (mode 'predict'); what it wrote."""
    raise NotImplementedError(f'{type(self).__name__} does not predict')


# Entries the Controller adds to every train result.
_LOOP_KEYS = ('step', 'epoch', 'loss', 'clips_per_second')
# Counts of skipped input (`on_bad_record='skip'`) shown as they grow.
_SKIP_KEYS = ('skipped_records', 'damaged_files')


def _skip_line(skipped: Dict[str, Any]) -> str:
  if not skipped:
    return ''
  return (f'  skipped {skipped["skipped_records"]} records, '
          f'{skipped["damaged_files"]} damaged files (metrics.json: input)')


class Controller:
  """Runs a `Task`: training to `total_steps`, one evaluation, or prediction.

  Every mode of `spl.main` runs through it: `train` (also 'train_and_eval':
  the task evaluates at its boundaries), `evaluate` ('eval') and `predict`.
  The state is built and restored by the job before (`resume`).
  """

  def __init__(self, *, strategy: tf.distribute.Strategy, task: Task,
               model_dir: str, config: Optional[LoopConfig] = None,
               total_steps: int = 0, steps_per_epoch: int = 1,
               name: str = 'training'):
    self.config = config or LoopConfig()
    self.config.check()
    self.strategy = strategy
    self.task = task
    self.model_dir = model_dir
    self.total_steps = total_steps
    self.steps_per_epoch = steps_per_epoch
    self.name = name
    self.chief = is_chief(strategy)
    worker, _ = worker_info(strategy)
    self._ckpt_dir = model_dir if self.chief else os.path.join(
        model_dir, f'.worker_{worker}_scratch')

  def evaluate(self, step: int, checkpoint: Optional[str],
               setup_done=None) -> Dict[str, Any]:
    """Mode 'eval': one evaluation of the restored state, as of `step`.

    Its scalars and the checkpoint evaluated go to `metrics.json`.
    """
    if setup_done:
      setup_done()
    logging.info('evaluating %s (step %d)', checkpoint, step)
    bad_input.reset()
    summary = {'eval': scalars(self.task.evaluate(step)),
               'checkpoint': checkpoint}
    if bad_input.report():
      summary['input'] = bad_input.report()
    write_metrics(self.model_dir, summary, self.chief)
    return summary

  def predict(self, checkpoint: Optional[str],
              setup_done=None) -> Dict[str, Any]:
    """Mode 'predict': the task's predictions of the restored model.

    `metrics.json` is left alone (it holds the training run's metrics).
    """
    if setup_done:
      setup_done()
    logging.info('predicting with %s', checkpoint)
    return dict(self.task.predict(), checkpoint=checkpoint)

  def _loop_size(self, step: int) -> int:
    every = self.config.checkpoint_every_steps
    sizes = [self.config.steps_per_loop, self.total_steps - step,
             every - step % every]
    if self.task.loops_end_at_epochs:
      sizes.append(self.steps_per_epoch - step % self.steps_per_epoch)
    return min(sizes)

  def train(self, setup_done=None) -> Dict[str, Any]:
    """Trains to `total_steps`; returns (and writes) the metrics summary.

    Args:
      setup_done: called once the input exists, before the first step.
    """
    task = self.task
    manager = tf.train.CheckpointManager(
        task.checkpoint, self._ckpt_dir,
        max_to_keep=self.config.max_checkpoints_to_keep,
        step_counter=task.step_counter)
    step = int(task.step_counter.numpy())
    bad_input.reset()  # This job's skips, reported as they grow.
    iterator = task.train_iterator(step)
    writer = (tf.summary.create_file_writer(
        os.path.join(self.model_dir, 'train')) if self.chief
              else tf.summary.create_noop_writer())
    if setup_done:
      setup_done()
    if self.chief and step < self.total_steps:
      with writer.as_default():
        tb_images.write(task.images(), step, 'inputs')
    logging.info('%s from step %d to %d (%d steps/epoch, global batch %d '
                 'over %d replicas)', self.name, step, self.total_steps,
                 self.steps_per_epoch, task.global_batch_size,
                 self.strategy.num_replicas_in_sync)
    generators = (random_layer_generators(self.strategy, task.checkpoint)
                  if self.config.deterministic else [])
    result: Dict[str, Any] = {}
    while step < self.total_steps:
      num = self._loop_size(step)
      reseed_generators(generators, self.config.seed, step)
      start = time.perf_counter()
      metrics = task.train_steps(iterator, num)
      elapsed = time.perf_counter() - start
      step = int(task.step_counter.numpy())
      loss = float(metrics.get('loss', float('nan')))
      if not math.isfinite(loss):
        raise FloatingPointError(f'training loss is {loss} at step {step}')
      result = dict(metrics, step=step, loss=loss,
                    epoch=step / self.steps_per_epoch,
                    clips_per_second=num * task.global_batch_size / elapsed)
      skipped = bad_input.report()
      with writer.as_default(step=step):
        for k, v in scalars(result).items():
          if k != 'step':
            tf.summary.scalar(k, v)
        for k in _SKIP_KEYS:
          if skipped:
            tf.summary.scalar(f'input/{k}', skipped[k])
      writer.flush()
      _PROGRESS_LOG.info('step %d/%d  epoch %.2f  loss %.4f  %s  %.1f clips/s  '
                         'eta %.0fs%s', step, self.total_steps,
                         result['epoch'], loss, task.progress(result),
                         result['clips_per_second'],
                         (self.total_steps - step) * elapsed / max(num, 1),
                         _skip_line(skipped))
      due = (step % self.config.checkpoint_every_steps == 0 or
             step == self.total_steps)
      if task.end_loop(step, due) or due:
        if self.config.deterministic:
          average_replica_means(self.strategy, task.checkpoint)
        # Every worker saves (ON_READ variables need a collective read).
        manager.save(checkpoint_number=step)
    if not result:
      # A finished run rerun: keep the training result it wrote.
      task.end_without_steps(step)
      result = _previous_train_result(self.model_dir, step)
    if not self.chief:
      shutil.rmtree(self._ckpt_dir, ignore_errors=True)
    summary = dict({'train': result, 'step': step}, **task.summary())
    if bad_input.report():
      summary['input'] = bad_input.report()
    write_metrics(self.model_dir, summary, self.chief)
    return summary
