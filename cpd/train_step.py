"""One single-replica CPD training step (`cpd_train_step`).

The step of `cpd.trainer.CpdTask`: forward both modalities, the loss module
(`cpd.nce.CrossModalNCE` or a baseline of `cpd.baselines`; banks updated
after scoring), the gradients of the variable groups the curriculum trains in
the stage, coupled weight decay, optional clipping of the summed gradient,
one optimizer per learning-rate group. Call it inside `strategy.run`.

The step takes titles as the text encoder's tokens (fixed-shape int32, made
by its `tokenize` in the input pipeline): strings would put string ops and a
hash table in the step, which a TPU cannot run.
"""

from typing import Optional

import tensorflow as tf

from spl import optimization


def cpd_train_step(loss_module, video_model, text_encoder, text_head,
                   curriculum, optimizers, clips, titles, indices, stage,
                   weight_decay: float = 0.0,
                   clip_norm: Optional[float] = None):
  """One single-replica CPD training step; call it inside `strategy.run`.

  Forward both modalities, NCE loss (banks updated after scoring), gradients
  of the loss scaled by 1/replicas for the variables the curriculum trains in
  `stage`, one optimizer per learning-rate group.

  Args:
    loss_module: `CrossModalNCE` (or any callable (v, t, indices) ->
      (loss, metrics)).
    video_model: clips -> [B, d] unit-norm embeddings (trained in both
      stages, e.g. `cpd.heads.build_video_embedding_model`).
    text_encoder: title tokens -> [B, H] (frozen in stage 1).
    text_head: [B, H] -> [B, d] unit-norm embeddings.
    curriculum: `cpd.curriculum.Curriculum`.
    optimizers: dict group name ('rest', 'text_encoder') -> tf_keras
      optimizer whose learning rate the caller set from
      `curriculum.learning_rates(stage)`.
    clips: this replica's video batch.
    titles: this replica's titles as `text_encoder` takes them: the int
      tokens of its `tokenize` (TPU-ready; `cpd.trainer` feeds these) or,
      off a TPU, strings.
    indices: int [B] clip indices.
    stage: 1 or 2 (a Python int: trace one step per stage).
    weight_decay: coupled L2 decay (PyTorch SGD's `weight_decay`, what the
      authors' code trains with) added to the gradient of every trained
      kernel/embedding (`spl.optimization.decayed_variables`: not biases or
      normalisation parameters, which the authors' optimiser decays too).
    clip_norm: if set, the summed gradient of all trained variables (weight
      decay included) is scaled down to this global norm if it is larger
      (the authors' code: `clip_grad_norm_` to 20); the metrics then include
      the norm before clipping as 'gradient_norm'.

  Returns:
    Dict of scalar metrics (the loss module's; with `clip_norm` also
    'gradient_norm').
  """
  replicas = tf.distribute.get_replica_context().num_replicas_in_sync
  groups = curriculum.variable_groups(
      text_encoder.trainable_variables,
      video_model.trainable_variables + text_head.trainable_variables, stage)
  missing = set(groups) - set(optimizers)
  if missing:
    raise ValueError(f'`optimizers` lacks groups {sorted(missing)}')
  with tf.GradientTape() as tape:
    video = video_model(clips, training=True)
    text = text_head(text_encoder(
        titles, training=curriculum.text_encoder_training(stage)),
                     training=True)
    loss, metrics = loss_module(video, text, indices)
    scaled_loss = loss / replicas
  names = sorted(groups)
  grads = tape.gradient(scaled_loss, [groups[n] for n in names])
  # A word-embedding table's gradient is sparse (tf.IndexedSlices): made
  # dense, as PyTorch's nn.Embedding (the authors' code) gives it and as
  # weight decay makes it anyway. Kept sparse, Keras SGD would sum duplicate
  # rows with tf.unique (a data-dependent shape: no XLA / TPU) and decay the
  # momentum of touched rows only.
  grads = [[tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
            for g in group] for group in grads]
  pairs = {}
  for name, group_grads in zip(names, grads):
    variables = groups[name]
    # Summed over replicas by the all-reduce, so scaled like the loss.
    group_grads = optimization.add_weight_decay(
        group_grads, variables, optimization.decayed_variables(variables),
        weight_decay, scale=1.0 / replicas)
    # Variables off the loss path (e.g. the unused BERT pooler) get None.
    pairs[name] = [(g, v) for g, v in zip(group_grads, variables)
                   if g is not None]
  if clip_norm is not None:
    # The norm of the whole update (every group), as the authors' clipping
    # of all parameters' gradients: all-reduce first, then clip.
    flat = [g for name in names for g, _ in pairs[name]]
    clipped, norm = optimization.all_reduce_and_clip(flat, clip_norm)
    metrics = dict(metrics, gradient_norm=norm)
    it = iter(clipped)
    pairs = {name: [(next(it), v) for _, v in pairs[name]] for name in names}
  for name in names:
    optimizers[name].apply_gradients(
        pairs[name], skip_gradients_aggregation=clip_norm is not None)
  return metrics
