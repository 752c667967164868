"""CPD pre-training: video and title encoders, memory banks, curriculum.

`run_cpd` is the job behind `python -m spl.main` with a CPD gin file
(`gin_configs/runs/cpd_pretrain.gin`). It runs in the loop SPL runs in
(`spl.loop.Controller`: steps per loop, progress, summaries, checkpoints,
resume, metrics.json) as `CpdTask`: the
strategy comes from the entry point, everything is built under its scope, and
the step is single-replica code (`cpd.train_step.cpd_train_step`) run by
`strategy.run`.

Titles are cleaned and tokenised in the input pipeline, after batching
(the text encoder's `tokenize`: string ops and vocabulary look-ups run on
the host in `tf.data`), so the training and validation steps take fixed-shape
int32 tokens only, as a TPU needs; the memory-bank indices stay in the same
batch element as their titles' tokens.

What a checkpoint holds: the video model (with a `backbone` edge, so
`spl.main` fine-tuning runs can start from it via `init_checkpoint`), text
encoder and head, both optimizers, the loss module (memory banks, Z of each
direction, the negative sampler's step) and the curriculum (stage and
early-switch bookkeeping). Rerunning the same command resumes from the latest
checkpoint with all of it; with `loop.deterministic` also from the same input
position (`spl.loop.training_input`), so it ends exactly like an
uninterrupted run.

Loop: a `tf.function` runs up to `loop.steps_per_loop` steps; loops stop at
epoch boundaries, where validation retrieval runs (`train_and_eval`, every
`validate_every_epochs`) and the curriculum may switch to stage 2 (one
compiled loop per stage: the trained variable lists differ). A switch is
checkpointed at once, so the stage survives a restart.

No gin here: `spl/configurables.py` registers `run_cpd` and the factories.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Dict, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

from cpd import curriculum as curriculum_lib
from cpd import heads
from cpd import model_config
from cpd import nce
from cpd import retrieval
from cpd import text_cleaning
from cpd import text_encoders
from cpd import train_step
from spl import evaluation
from spl import input_pipeline
from spl import loop as loop_lib
from spl import metrics as spl_metrics
from spl import optimization
from spl.models import factory

MODES = ('train', 'eval', 'train_and_eval')
MIXED_PRECISION = (None, 'bfloat16')
RETRIEVAL_FILENAME = 'retrieval.json'
TITLES = 'titles'


# ---- Text encoders: () -> layer with `tokenize` (titles -> tokens) and
# `call` (tokens or titles -> [B, H]) ----


def word2vec_text_encoder(path: str, *, binary: Optional[bool] = None,
                          limit: Optional[int] = None, lowercase: bool = True,
                          max_words: int = 64
                          ) -> text_encoders.Word2VecAverageEncoder:
  """Averaged word vectors read from a word2vec file at `path`."""
  if not path:
    raise ValueError('`path` of the word2vec file must be set')
  if not tf.io.gfile.exists(path):
    raise ValueError(f'word2vec file {path!r} does not exist')
  return text_encoders.Word2VecAverageEncoder.from_file(
      path, binary=binary, limit=limit, lowercase=lowercase,
      max_words=max_words, name='text_encoder')


def hf_text_encoder(model_dir: str, *, max_length: int = 32,
                    pooling: str = text_encoders.MASKED_MEAN,
                    dropout: Optional[float] = None, lower_case: bool = True
                    ) -> text_encoders.TransformerTextEncoder:
  """A BERT-family encoder from a Hugging Face directory at `model_dir`."""
  if not model_dir or not tf.io.gfile.isdir(model_dir):
    raise ValueError(f'`model_dir` of the text encoder must be an existing '
                     f'directory, got {model_dir!r}')
  return text_encoders.transformer_from_hf_directory(
      model_dir, max_length=max_length, pooling=pooling, dropout=dropout,
      lower_case=lower_case)


# ---- The models ----


class CpdModels:
  """Everything CPD trains, built under the strategy scope.

  `run_cpd` also attaches the run's `loss_module` (banks, Z, sampler) and
  `curriculum`, so that callers of a finished run can inspect them.
  """

  def __init__(self, *, video_backbone: str, clip_shape, text_encoder_fn,
               embedding_dim: int, text_hidden_dim: int):
    backbone = factory.build_backbone(video_backbone, input_shape=clip_shape)
    self.video_model = heads.build_video_embedding_model(backbone,
                                                         embedding_dim)
    self.text_encoder = text_encoder_fn()
    if not callable(getattr(self.text_encoder, 'tokenize', None)):
      raise ValueError(
          f'the text encoder must have a `tokenize` method (titles -> '
          f'tokens, run in the input pipeline), got '
          f'{type(self.text_encoder).__name__}')
    self.text_head = heads.TextHead(text_hidden_dim, embedding_dim,
                                    name='text_head')
    # Creates every variable now: restores are checked against all of them
    # and the optimizers can be built before the first step.
    self.video_model(tf.zeros((1,) + tuple(clip_shape)), training=False)
    self.text_head(self.text_encoder(tf.constant(['a title']),
                                     training=False), training=False)

  def embed_videos(self, views):
    """[B, V, T, H, W, 3] -> [B, d]: mean of the views' embeddings."""
    flat = tf.reshape(views, tf.concat([[-1], tf.shape(views)[2:]], 0))
    emb = self.video_model(flat, training=False)
    emb = tf.reshape(emb, [tf.shape(views)[0], tf.shape(views)[1], -1])
    return tf.math.l2_normalize(tf.reduce_mean(emb, axis=1), axis=-1)

  def embed_titles(self, titles):
    """Titles (strings, or their `tokenize` tokens) -> [B, d]."""
    return self.text_head(self.text_encoder(titles, training=False),
                          training=False)

  def other_variables(self):
    return (self.video_model.trainable_variables +
            self.text_head.trainable_variables)


def _titles(element, clean: bool):
  titles = element[input_pipeline.CAPTION]
  return text_cleaning.clean_titles(titles) if clean else titles


def _title_tokens(text_encoder, element, clean: bool):
  """A batch's titles as the steps take them: cleaned, then tokenised.

  Runs in `tf.data` (host): the steps get the text encoder's fixed-shape
  int32 tokens, never strings.
  """
  return text_encoder.tokenize(_titles(element, clean))


# ---- Validation ----


def make_embed_step(models: CpdModels, strategy: tf.distribute.Strategy):
  """The compiled step of `embed_pairs`; make it once, reuse it every epoch."""

  def replica_fn(inputs):
    inputs = input_pipeline.finish_features(inputs)
    return (models.embed_videos(inputs[input_pipeline.VIDEO]),
            models.embed_titles(inputs[TITLES]),
            inputs[input_pipeline.LABEL], inputs[evaluation.VALID])

  @tf.function(reduce_retracing=True)
  def step(inputs):
    return spl_metrics.gather_across_replicas(
        strategy, strategy.run(replica_fn, args=(inputs,)))

  return step


def embed_pairs(models: CpdModels, strategy: tf.distribute.Strategy,
                dataset_fn, file_pattern: str, *, global_batch_size: int,
                clean_titles: bool = True,
                step=None) -> Dict[str, np.ndarray]:
  """Video and title embeddings (and labels) of every record once.

  Args:
    models: the trained `CpdModels`.
    strategy: the run's strategy.
    dataset_fn: `input_pipeline.make_dataset`-like (evaluation views).
    file_pattern: held-out records.
    global_batch_size: records per step over replicas.
    clean_titles: clean titles as in training.
    step: from `make_embed_step` (made here if None).

  Returns:
    Dict 'video' [N, d], 'text' [N, d], 'label' [N] (numpy).
  """
  loop_lib.check_positive(global_batch_size=global_batch_size)
  loop_lib.list_files(file_pattern, 'eval_file_pattern')
  evaluation.average_replica_statistics(
      models.video_model, models.text_encoder, models.text_head)

  def make(ctx: tf.distribute.InputContext):
    batch_size = ctx.get_per_replica_batch_size(global_batch_size)
    ds = dataset_fn(
        file_pattern, is_training=False, batch_size=batch_size,
        input_context=ctx, repeat=False, drop_remainder=False)
    ds = ds.map(lambda e: {
        **input_pipeline.video_features(e),
        input_pipeline.LABEL: e[input_pipeline.LABEL],
        TITLES: _title_tokens(models.text_encoder, e, clean_titles),
        evaluation.VALID: tf.ones_like(e[input_pipeline.LABEL], tf.int32)})
    # Full batches on every replica at every step (the last ones padded):
    # otherwise the pairs that do not fill the last step leave some
    # replicas an empty batch, which the networks cannot take.
    return evaluation.pad_batches(ds, batch_size)

  step = step or make_embed_step(models, strategy)
  out = {'video': [], 'text': [], 'label': []}
  for inputs in strategy.distribute_datasets_from_function(make):
    video, text, label, valid = (t.numpy() for t in step(inputs))
    valid = valid.astype(bool)
    if not valid.any():
      break  # Only padding is left.
    for key, value in zip(('video', 'text', 'label'), (video, text, label)):
      out[key].append(value[valid])
  if not out['video']:
    raise ValueError(f'held-out records {file_pattern!r} gave no batch')
  return {k: np.concatenate(v) for k, v in out.items()}


def validate(models: CpdModels, strategy, dataset_fn, file_pattern, *,
             global_batch_size: int, ks: Sequence[int] = (1, 5, 10),
             clean_titles: bool = True, step=None) -> Dict[str, float]:
  """Video->text and text->video R@K on held-out pairs.

  Returns:
    The `cpd.retrieval.retrieval_metrics` as floats, plus 'num_pairs' and
    'mean_R@K' (mean of both directions at the largest K: the number the
    curriculum's early switch monitors).
  """
  pairs = embed_pairs(models, strategy, dataset_fn, file_pattern,
                      global_batch_size=global_batch_size,
                      clean_titles=clean_titles, step=step)
  result = {k: float(v) for k, v in retrieval.retrieval_metrics(
      pairs['video'], pairs['text'], ks).items()}
  k = max(ks)
  result[f'mean_R@{k}'] = 0.5 * (result[f'v2t/R@{k}'] +
                                 result[f't2v/R@{k}'])
  result['num_pairs'] = int(len(pairs['video']))
  return result


# ---- Training ----


class CpdTask(loop_lib.Task):
  """CPD's task for `spl.loop.Controller`: the pre-training step, the
  validation retrieval and the curriculum at epoch ends.

  `do_eval(step)` validates (None: the run never does); with `report_eval`
  ('train_and_eval') every `validate_every_epochs` epochs and at the end,
  otherwise only while the curriculum's saturation switch waits for it and
  training goes on after it (not at the last step).
  """
  loops_end_at_epochs = True

  def __init__(self, *, strategy, models, loss_module, curriculum,
               optimizers, num_rows, weight_decay, clip_norm,
               checkpoint=None, global_batch_size=None, steps_per_epoch=1,
               total_steps=0, dataset_fn=None, train_file_pattern=None,
               clean_titles=True, input_seed=None, do_eval=None, report_eval=True, validate_every_epochs=1,
               retrieval_metric=None):
    self.strategy = strategy
    self.models = models
    self.loss_module = loss_module
    self.curriculum = curriculum
    self.optimizers = optimizers
    self.num_rows = num_rows
    self.weight_decay = weight_decay
    self.clip_norm = clip_norm
    self.checkpoint = checkpoint
    self.step_counter = optimizers[curriculum_lib.REST].iterations
    self.global_batch_size = global_batch_size
    self.steps_per_epoch = steps_per_epoch
    self.total_steps = total_steps
    self.dataset_fn = dataset_fn
    self.train_file_pattern = train_file_pattern
    self.clean_titles = clean_titles
    self.input_seed = input_seed
    self.do_eval = do_eval
    self.report_eval = report_eval
    self.validate_every_epochs = validate_every_epochs
    self.retrieval_metric = retrieval_metric
    self.eval_result: Optional[Dict[str, Any]] = None
    self._loops = {}

  def _replica_step(self, inputs, stage):
    inputs = input_pipeline.finish_features(inputs)
    indices = inputs[input_pipeline.CLIP_INDEX]
    if not isinstance(self.strategy, tf.distribute.TPUStrategy):
      tf.debugging.assert_less(
          indices, tf.cast(self.num_rows, indices.dtype),
          message='a clip/index is >= num_train_examples (the bank size)')
    return train_step.cpd_train_step(
        self.loss_module, self.models.video_model, self.models.text_encoder,
        self.models.text_head, self.curriculum, self.optimizers,
        inputs[input_pipeline.VIDEO], inputs[TITLES], indices, stage,
        weight_decay=self.weight_decay, clip_norm=self.clip_norm)

  def _make_loop(self, stage):
    @tf.function
    def one_step(iterator):
      per_replica = self.strategy.run(self._replica_step,
                                      args=(next(iterator), stage))
      return {k: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, v,
                                      axis=None)
              for k, v in per_replica.items()}

    @tf.function
    def loop_fn(iterator, num_steps):
      # The first step gives the metric structure; the same traced step is
      # called again in the loop (no second copy of the graph).
      sums = one_step(iterator)
      for _ in tf.range(num_steps - 1):
        step_metrics = one_step(iterator)
        sums = {k: sums[k] + step_metrics[k] for k in sums}
      return {k: v / tf.cast(num_steps, v.dtype) for k, v in sums.items()}

    return loop_fn

  def run_steps(self, iterator, num_steps: int, stage: int):
    """Runs `num_steps` steps of `stage`; returns their mean metrics."""
    if stage not in self._loops:
      self._loops[stage] = self._make_loop(stage)
    result = self._loops[stage](iterator, tf.constant(num_steps, tf.int32))
    return {k: float(v) for k, v in result.items()}

  # ---- The `loop.Task` interface ----

  def train_iterator(self, step):
    return loop_lib.training_input(
        self.strategy, self.dataset_fn, self.train_file_pattern,
        global_batch_size=self.global_batch_size, step=step,
        seed=self.input_seed, map_fn=lambda e: {
            **input_pipeline.video_features(e),
            input_pipeline.CLIP_INDEX: e[input_pipeline.CLIP_INDEX],
            TITLES: _title_tokens(self.models.text_encoder, e,
                                  self.clean_titles)})

  def train_steps(self, iterator, num_steps):
    stage = self.curriculum.stage
    rates = _set_learning_rates(self.optimizers, self.curriculum, stage)
    step_metrics = self.run_steps(iterator, num_steps, stage)
    loss_key = _loss_key(step_metrics)
    result = dict(step_metrics, stage=stage,
                  loss=step_metrics[loss_key] if loss_key else float('nan'))
    for name, rate in rates.items():
      result[f'learning_rate/{name}'] = rate
    return result

  def progress(self, result):
    return f'stage {result["stage"]}  ' + ' '.join(
        f'{k}={v:.4g}' for k, v in sorted(result.items())
        if '/' in k and k != _loss_key(result) and
        not k.startswith('learning_rate/'))

  def end_loop(self, step, checkpoint_due):
    del checkpoint_due
    curriculum = self.curriculum
    epoch_end = step % self.steps_per_epoch == 0
    period_end = epoch_end and (
        step // self.steps_per_epoch) % self.validate_every_epochs == 0
    # Without `report_eval`, only validations that can still switch the
    # stage of a run that goes on.
    validating = self.do_eval is not None and (
        self.report_eval and (period_end or step == self.total_steps) or
        period_end and curriculum.monitors_validation and
        step < self.total_steps)
    if validating:
      self.eval_result = self.do_eval(step)
    switched = False
    if epoch_end:
      monitored = curriculum.monitors_validation
      metric = (self.eval_result[self.retrieval_metric] if validating
                else None)
      switched = curriculum.update(step // self.steps_per_epoch, metric)
      if switched or (validating and monitored):
        logging.info('curriculum at epoch %d (step %d)%s: %s',
                     step // self.steps_per_epoch, step,
                     '' if metric is None else
                     f', {self.retrieval_metric}={metric:.4f}',
                     curriculum.describe())
    # A switch is saved at once, so that it survives a restart; the
    # saturation count at every epoch end (as `run_cpd`'s docstring says).
    return switched or epoch_end

  def end_without_steps(self, step):
    if self.report_eval and self.do_eval is not None:
      self.eval_result = self.do_eval(step)

  def evaluate(self, step):
    return self.do_eval(step)

  def summary(self):
    summary = {'stage': self.curriculum.stage}
    if self.eval_result is not None:
      summary['eval'] = self.eval_result
    return summary


def _loss_key(metrics):
  """The loss module's total loss among its metrics ('<name>/loss')."""
  return next((k for k in metrics if k.endswith('/loss') and
               k.count('/') == 1), None)


def _set_learning_rates(optimizers, curriculum, stage):
  rates = curriculum.learning_rates(stage)
  for name, rate in rates.items():
    optimizers[name].learning_rate = rate
  return rates


def run_cpd(*,
            mode: str,
            model_dir: str,
            strategy: tf.distribute.Strategy,
            text_encoder_fn: Callable[[], tf_keras.layers.Layer],
            num_train_examples: int,
            global_batch_size: int,
            video_backbone: str = 'slowonly_r34',
            loss_fn: Callable[..., Any] = nce.CrossModalNCE,
            curriculum_fn: Callable[[], curriculum_lib.Curriculum] = (
                curriculum_lib.Curriculum),
            optimizer_fn: Callable[..., Any] = optimization.build_sgd,
            weight_decay: float = 0.0,
            clip_norm: Optional[float] = None,
            dataset_fn=input_pipeline.make_dataset,
            eval_dataset_fn=None,
            train_file_pattern: Optional[str] = None,
            eval_file_pattern: Optional[str] = None,
            eval_global_batch_size: Optional[int] = None,
            train_epochs: Optional[float] = None,
            train_steps: Optional[int] = None,
            embedding_dim: int = heads.EMBEDDING_DIM,
            text_hidden_dim: int = heads.EMBEDDING_DIM,
            clean_titles: bool = True,
            retrieval_ks: Sequence[int] = (1, 5, 10),
            validate_every_epochs: int = 1,
            mixed_precision: Optional[str] = None,
            loop: Optional[loop_lib.LoopConfig] = None,
            setup_done: Optional[Callable[[], None]] = None
            ) -> Dict[str, Any]:
  """Pre-trains CPD, or evaluates its retrieval; the job behind `spl.main`.

  Args:
    mode: 'train', 'train_and_eval' (validation retrieval at every epoch end
      and at the end) or 'eval' (retrieval of the latest checkpoint).
    model_dir: checkpoints, summaries (train/, eval/), `metrics.json`.
    strategy: built by the entry point.
    text_encoder_fn: () -> text encoder layer (`word2vec_text_encoder` or
      `hf_text_encoder`, path bound by gin): its `tokenize` maps a [B]
      string batch of titles to fixed-shape int tokens (run in the input
      pipeline), calling it maps those tokens to [B, H].
    num_train_examples: N, training clips: the memory banks' rows; every
      training record's `clip/index` must be in [0, N).
    global_batch_size: training batch over replicas.
    video_backbone: `spl.models.factory` backbone name.
    loss_fn: (num_rows=, dim=) -> loss module (v, t, indices) ->
      (loss, metrics): `cpd.nce.CrossModalNCE`, `cpd.baselines.RankingLoss`,
      `VideoSelfInstance`.
    curriculum_fn: () -> `cpd.curriculum.Curriculum`. Its saturation switch
      (`patience` set) needs `eval_file_pattern` in every training mode
      (refused before anything is built without it); in 'train' mode its
      validations run only while it waits for them (stage 1).
    optimizer_fn: learning rate -> tf_keras optimizer (one per group).
    weight_decay: coupled L2 weight decay of the trained kernels and
      embeddings (`cpd.train_step.cpd_train_step`); the authors' pre-training
      command uses 1e-4.
    clip_norm: clip the summed gradient of every trained variable to this
      global norm (the authors' code clips to 20); None: no clipping.
    dataset_fn: `input_pipeline.make_dataset`-like, training.
    eval_dataset_fn: same for held-out pairs (default `dataset_fn`).
    train_file_pattern: training records (clips with titles).
    eval_file_pattern: held-out pairs for validation retrieval (the paper:
      1k pairs of unseen videos, `python -m tfrecords_tools.holdout`).
    eval_global_batch_size: default `global_batch_size`.
    train_epochs: training length in epochs of N clips.
    train_steps: overrides `train_epochs` (smoke runs).
    embedding_dim: width of the shared space.
    text_hidden_dim: width of the text head's first FC layer.
    clean_titles: apply `cpd.text_cleaning` to titles in the input pipeline.
    retrieval_ks: the K of R@K.
    validate_every_epochs: validation period in epochs ('train_and_eval';
      also once at the end; in 'train' mode only for the curriculum). Each
      validation counts once for the curriculum's patience.
    mixed_precision: None or 'bfloat16' (NCE logits and banks stay float32).
    loop: steps per loop, checkpoint period (checkpoints are also saved at
      every epoch end) and retention, seed and exact runs
      (`spl.loop.LoopConfig`, gin `loop.*`).
    setup_done: called once everything is built and restored.

  Returns:
    The metrics written to `model_dir/metrics.json`; after training also the
    trained `CpdModels` (with its `loss_module` and `curriculum`) under
    'model'.
  """
  if mode not in MODES:
    raise ValueError(f'`mode` must be one of {MODES} for CPD, got {mode!r}')
  if mixed_precision not in MIXED_PRECISION:
    raise ValueError(f'`mixed_precision` must be one of {MIXED_PRECISION}, '
                     f'got {mixed_precision!r}')
  if not model_dir:
    raise ValueError('`model_dir` must be set')
  optimization.check_weight_decay_and_clip(weight_decay, clip_norm)
  if text_encoder_fn is None:
    raise ValueError('`text_encoder_fn` must be set')
  loop = loop or loop_lib.LoopConfig()
  loop.check()
  loop_lib.check_positive(num_train_examples=num_train_examples,
                          global_batch_size=global_batch_size,
                          embedding_dim=embedding_dim,
                          text_hidden_dim=text_hidden_dim,
                          validate_every_epochs=validate_every_epochs)
  num_replicas = strategy.num_replicas_in_sync
  if global_batch_size % num_replicas:
    raise ValueError(f'`global_batch_size`={global_batch_size} must be a '
                     f'multiple of the {num_replicas} replicas')
  training = mode in ('train', 'train_and_eval')
  evaluating = mode in ('eval', 'train_and_eval')
  eval_dataset_fn = eval_dataset_fn or dataset_fn
  eval_global_batch_size = eval_global_batch_size or global_batch_size
  steps_per_epoch = max(1, num_train_examples // global_batch_size)
  total_steps = 0
  if training:
    loop_lib.list_files(train_file_pattern, 'train_file_pattern')
    if train_steps is not None:
      loop_lib.check_positive(train_steps=train_steps)
      total_steps = int(train_steps)
    else:
      loop_lib.check_positive(train_epochs=train_epochs)
      total_steps = int(math.ceil(train_epochs * steps_per_epoch))
  with strategy.scope():
    curriculum = curriculum_fn()
  # The saturation switch reads validation results, in every training mode.
  curriculum_validates = training and curriculum.needs_validation
  if curriculum_validates and not eval_file_pattern:
    raise ValueError(
        f'the curriculum switches to stage 2 when validation retrieval '
        f'saturates (`patience`={curriculum.patience}, gin '
        f'cpd_curriculum.patience), which needs validation pairs, but '
        f'`eval_file_pattern` (gin cpd_run.eval_file_pattern, EVAL_FILES) is '
        f'not set: give held-out pairs (python -m tfrecords_tools.holdout '
        f'makes them), or switch at a fixed epoch instead '
        f'(cpd_curriculum.patience = None, cpd_curriculum.switch_epoch = 170 '
        f'for R34, 110 for R50)')
  if evaluating or curriculum_validates:
    loop_lib.list_files(eval_file_pattern, 'eval_file_pattern')
  if training:
    probe = dataset_fn(train_file_pattern, is_training=True, batch_size=1,
                       input_context=None)
    clip_shape = input_pipeline.clip_shape(probe, 1)
  else:
    probe = eval_dataset_fn(
        loop_lib.list_files(eval_file_pattern, 'eval_file_pattern')[0],
        is_training=False, batch_size=1, input_context=None, repeat=False,
        drop_remainder=False)
    clip_shape = input_pipeline.clip_shape(probe, 2)
  del probe

  chief = loop_lib.is_chief(strategy)
  if chief:
    tf.io.gfile.makedirs(model_dir)
  previous_policy = tf_keras.mixed_precision.global_policy()
  if mixed_precision:
    tf_keras.mixed_precision.set_global_policy('mixed_bfloat16')
  end_seeding = loop.seed_job()
  try:
    with strategy.scope():
      models = CpdModels(video_backbone=video_backbone, clip_shape=clip_shape,
                         text_encoder_fn=text_encoder_fn,
                         embedding_dim=embedding_dim,
                         text_hidden_dim=text_hidden_dim)
      loss_module = loss_fn(num_rows=num_train_examples, dim=embedding_dim)
      models.loss_module, models.curriculum = loss_module, curriculum
      optimizers = {
          curriculum_lib.REST: optimizer_fn(curriculum.stage1_lr),
          curriculum_lib.TEXT_ENCODER: optimizer_fn(curriculum.stage2_text_lr),
      }
      optimizers[curriculum_lib.REST].build(models.other_variables())
      optimizers[curriculum_lib.TEXT_ENCODER].build(
          models.text_encoder.trainable_variables)
      checkpoint = tf.train.Checkpoint(
          model=models.video_model, backbone=models.video_model.backbone,
          text_encoder=models.text_encoder, text_head=models.text_head,
          loss=loss_module, curriculum=curriculum,
          optimizer=optimizers[curriculum_lib.REST],
          text_optimizer=optimizers[curriculum_lib.TEXT_ENCODER])
    step_counter = optimizers[curriculum_lib.REST].iterations
    if chief and training:
      model_config.write(model_dir, video_backbone=video_backbone,
                         embedding_dim=embedding_dim,
                         text_hidden_dim=text_hidden_dim,
                         clip_shape=clip_shape,
                         text_encoder=models.text_encoder)

    latest = loop_lib.resume(checkpoint, model_dir, 'the CPD run state',
                             training)
    if not latest and mode == 'eval':
      raise ValueError(f'`model_dir` {model_dir!r} holds no checkpoint to '
                       'evaluate')

    eval_writer = (tf.summary.create_file_writer(
        os.path.join(model_dir, 'eval')) if chief
                   else tf.summary.create_noop_writer())

    embed_step = make_embed_step(models, strategy)

    def do_eval(step):
      result = validate(models, strategy, eval_dataset_fn, eval_file_pattern,
                        global_batch_size=eval_global_batch_size,
                        ks=retrieval_ks, clean_titles=clean_titles,
                        step=embed_step)
      if chief:
        loop_lib.record_evaluation(model_dir, RETRIEVAL_FILENAME, step, result,
                                   eval_writer, 'validation retrieval')
      return result

    task = CpdTask(
        strategy=strategy, models=models, loss_module=loss_module,
        curriculum=curriculum, optimizers=optimizers,
        num_rows=num_train_examples, weight_decay=weight_decay,
        clip_norm=clip_norm, checkpoint=checkpoint,
        global_batch_size=global_batch_size, steps_per_epoch=steps_per_epoch,
        total_steps=total_steps, dataset_fn=dataset_fn,
        train_file_pattern=train_file_pattern, clean_titles=clean_titles,
        input_seed=loop.input_seed,
        do_eval=do_eval if evaluating or curriculum_validates else None,
        report_eval=evaluating, validate_every_epochs=validate_every_epochs,
        retrieval_metric=f'mean_R@{max(retrieval_ks)}')
    controller = loop_lib.Controller(
        strategy=strategy, task=task, model_dir=model_dir, config=loop,
        total_steps=total_steps, steps_per_epoch=steps_per_epoch,
        name='CPD training')
    step = int(step_counter.numpy())
    if mode == 'eval':
      return controller.evaluate(step, latest, setup_done)

    if step == 0 and curriculum.update(0):
      logging.info('curriculum: stage 2 from the start (switch epoch 0)')
    logging.info('CPD training: %d bank rows, stage %d; curriculum: %s',
                 num_train_examples, curriculum.stage, curriculum.describe())
    summary = controller.train(setup_done)
    summary['model'] = models
    return summary
  finally:
    tf_keras.mixed_precision.set_global_policy(previous_policy)
    end_seeding()
