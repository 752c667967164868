"""One way for tests to make MirroredStrategy objects that do not collide.

Every MirroredStrategy of a process numbers its collective group/instance
keys from the same base, so a second strategy over the same devices reuses
the first one's keys and the runtime aborts ("Collective instance ...
expected type", "Shape mismatch in the collective instance"). TF's own tests
give each strategy its own base through the `_collective_key_base` hook; one
process-wide counter here keeps every test file's strategies apart.
"""

import itertools

import numpy as np
import tensorflow as tf
import tf_keras

_KEY_BASES = itertools.count(1_000_000, 100_000)


def mirrored_strategy(devices) -> tf.distribute.MirroredStrategy:
  """A MirroredStrategy over `devices` with collective keys of its own."""
  cls = type('IsolatedMirroredStrategy', (tf.distribute.MirroredStrategy,),
             {'_collective_key_base': next(_KEY_BASES)})
  return cls(list(devices))


def split_global_batch(strategy, data):
  """Per-replica values of a global batch: replica r gets block r of axis 0.

  Args:
    strategy: the strategy whose replicas take the batch.
    data: nest of arrays whose leading axis is the global batch (a multiple
      of the number of replicas).

  Returns:
    The nest as distributed values, in replica order.
  """
  replicas = strategy.num_replicas_in_sync
  size = len(tf.nest.flatten(data)[0])
  if size % replicas:
    raise ValueError(f'global batch {size} does not split over {replicas} '
                     'replicas')
  local = size // replicas
  return strategy.experimental_distribute_values_from_function(
      lambda ctx: tf.nest.map_structure(
          lambda x: x[ctx.replica_id_in_sync_group * local:
                      (ctx.replica_id_in_sync_group + 1) * local], data))


class CpdStepRun:
  """The real CPD train step (`cpd.train_step.cpd_train_step`) on linear models.

  Video model: one Dense + L2 normalisation (`cpd.heads.VideoHead`); text
  encoder: one Dense (frozen in stage 1), or the caller's (e.g. a real
  `cpd.text_encoders` encoder taking title tokens); text head: Dense + L2
  normalisation. No batch normalisation, so the step on one replica and on R
  replicas of the same global batch must agree (per-replica BN statistics
  would not). Initial weights come from `weight_seed` (NumPy), the same for
  every run and replica count; the optimizer is plain SGD. Differential tests
  of the replica conventions (loss and weight decay scaled by 1/replicas,
  all-reduce then clip) compare `run` under 1 and R replicas.
  """

  def __init__(self, strategy, loss_module_fn, *, dim, input_dim,
               hidden_dim=6, learning_rate=0.05, stage=1, weight_seed=0,
               text_encoder_fn=None, text_example=None):
    """Builds models, curriculum and optimizers under `strategy`'s scope.

    Args:
      strategy: a tf.distribute strategy.
      loss_module_fn: () -> loss module (e.g. `cpd.nce.CrossModalNCE`), built
        under the scope.
      dim: embedding width (the loss module's `dim`).
      input_dim: width of the video inputs (and of the Dense text
        encoder's).
      hidden_dim: the Dense text encoder's output width.
      learning_rate: SGD learning rate of every group.
      stage: curriculum stage of the step (2 also trains the text encoder).
      weight_seed: seed of the initial weights.
      text_encoder_fn: () -> text encoder, built under the scope instead of
        the Dense one (its weights are drawn from `weight_seed` too).
      text_example: a batch of the text encoder's inputs that builds it
        (default float32 zeros [1, input_dim]).
    """
    # Imported here: this module is shared by tests that do not need CPD.
    from cpd import curriculum as curriculum_lib  # pylint: disable=g-import-not-at-top
    from cpd import heads  # pylint: disable=g-import-not-at-top

    self.strategy = strategy
    self.stage = stage
    rng = np.random.RandomState(weight_seed)
    with strategy.scope():
      self.loss_module = loss_module_fn()
      self.video_model = tf_keras.Sequential(
          [tf_keras.Input([input_dim]), heads.VideoHead(dim)])
      self.text_encoder = (text_encoder_fn() if text_encoder_fn else
                           tf_keras.layers.Dense(hidden_dim))
      self.text_head = heads.VideoHead(dim)
      if text_example is None:
        text_example = tf.zeros([1, input_dim])
      # Variables made here, not lazily inside the first replica step.
      self.text_head(self.text_encoder(text_example))
      self.curriculum = curriculum_lib.Curriculum()
      self.optimizers = {
          group: tf_keras.optimizers.SGD(learning_rate)
          for group in self.curriculum.learning_rates(stage)}
      groups = self.curriculum.variable_groups(
          self.text_encoder.trainable_variables,
          self.video_model.trainable_variables +
          self.text_head.trainable_variables, stage)
      for group, optimizer in self.optimizers.items():
        optimizer.build(groups[group])  # Checkpoints restore into it.
    for v in self.variables:
      v.assign(rng.uniform(-0.5, 0.5, v.shape).astype(np.float32))

  def checkpoint(self):
    """A `tf.train.Checkpoint` of the whole training state."""
    return tf.train.Checkpoint(
        loss=self.loss_module, video=self.video_model,
        text_encoder=self.text_encoder, text_head=self.text_head,
        curriculum=self.curriculum, **{f'optimizer_{k}': v for k, v in
                                       self.optimizers.items()})

  @property
  def variables(self):
    """Video kernel and bias, the text encoder's, the text head's."""
    return (self.video_model.weights + self.text_encoder.weights +
            self.text_head.weights)

  def run(self, batches, **step_kwargs):
    """Runs one step per global batch.

    Args:
      batches: iterable of (video inputs, text inputs, clip indices), each a
        global batch, split over the replicas in replica order.
      **step_kwargs: `cpd_train_step` keyword arguments (weight_decay,
        clip_norm).

    Returns:
      (metrics, weights): per step, the metrics averaged over replicas (dict
      of floats) and every model variable's value after the step.
    """
    from cpd import train_step  # pylint: disable=g-import-not-at-top

    strategy = self.strategy
    args = (self.loss_module, self.video_model, self.text_encoder,
            self.text_head, self.curriculum, self.optimizers)

    @tf.function
    def step(clips, titles, indices):
      per_replica = strategy.run(
          train_step.cpd_train_step,
          args=args + (clips, titles, indices, self.stage), kwargs=step_kwargs)
      return {k: strategy.reduce('MEAN', v, axis=None)
              for k, v in per_replica.items()}

    metrics, weights = [], []
    for batch in batches:
      out = step(*split_global_batch(strategy, tuple(batch)))
      metrics.append({k: float(v) for k, v in out.items()})
      weights.append([v.numpy() for v in self.variables])
    return metrics, weights
