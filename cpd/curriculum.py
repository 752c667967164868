"""Two-stage curriculum of CPD (paper 3.2 and 4.2).

Stage 1 trains the video encoder and both heads with the text encoder frozen
(lr 0.2): the randomly initialised heads would otherwise push large, noisy
gradients into the pre-trained language model. Stage 2 trains jointly, the
text encoder at a small learning rate (3e-5) and the rest at a decayed one
(0.02).

When stage 2 starts (the switch rule):

* saturation (`patience` set), the paper's rule: "when the retrieval
  performance on validation set saturates". After every validation the
  monitored retrieval score (the trainer feeds mean R@K, K the largest of its
  `retrieval_ks`) either beats the best so far by more than `min_delta` (the
  best moves, the count resets) or it does not (the count grows); stage 2
  starts at the epoch boundary where the count reaches `patience`. The count
  is of validations, not epochs (`validate_every_epochs` apart). Needs
  validation pairs: the trainer refuses this rule without them.
* fixed epoch (`switch_epoch` set, `patience` None), the fallback the paper's
  numbers give: its validation saturated after 170 epochs (3D ResNet-34) and
  110 (3D ResNet-50), so stage 2 starts at epoch 170 / 110 (0-based: after
  that many stage-1 epochs).
* both set: whichever comes first; `switch_epoch` is then the latest switch.
* neither: stage 1 throughout (the frozen-text ablation).

The stage and the saturation bookkeeping (best score, validations without
improvement) are variables: checkpoint the `Curriculum` with the model and a
restarted run resumes in the right stage with its count. The stage is read
eagerly between epochs; the variable lists of the two stages differ, so the
trainer traces one train step per stage.
"""

import math

import tensorflow as tf

TEXT_ENCODER = 'text_encoder'
REST = 'rest'


class Curriculum(tf.Module):
  """Which variables train, and at which learning rate, in each stage."""

  def __init__(self, switch_epoch=None, patience=None, min_delta=0.0,
               stage1_lr=0.2, stage2_text_lr=3e-5, stage2_rest_lr=0.02,
               name='curriculum'):
    """Creates the curriculum (in stage 1).

    Args:
      switch_epoch: switch to stage 2 at the start of this epoch (>= 0, the
        paper's fallback: 170 for R34, 110 for R50), or None.
      patience: switch once this many validations in a row did not improve
        the monitored metric by more than `min_delta` (> 0), or None. With
        both None, stage 1 lasts.
      min_delta: an improvement of at most this much does not count (>= 0).
      stage1_lr: learning rate of everything trained in stage 1.
      stage2_text_lr: text-encoder learning rate in stage 2.
      stage2_rest_lr: learning rate of the rest in stage 2.
      name: module name.
    """
    super().__init__(name=name)
    if switch_epoch is not None and switch_epoch < 0:
      raise ValueError(f'`switch_epoch` must be >= 0, got {switch_epoch}')
    if patience is not None and patience <= 0:
      raise ValueError(f'`patience` must be > 0, got {patience}')
    if not min_delta >= 0:
      raise ValueError(f'`min_delta` must be >= 0, got {min_delta}')
    for arg, lr in (('stage1_lr', stage1_lr),
                    ('stage2_text_lr', stage2_text_lr),
                    ('stage2_rest_lr', stage2_rest_lr)):
      if lr <= 0:
        raise ValueError(f'`{arg}` must be > 0, got {lr}')
    self.switch_epoch = switch_epoch
    self.patience = patience
    self.min_delta = float(min_delta)
    self.stage1_lr = float(stage1_lr)
    self.stage2_text_lr = float(stage2_text_lr)
    self.stage2_rest_lr = float(stage2_rest_lr)
    self.stage_variable = tf.Variable(1, dtype=tf.int64, trainable=False,
                                      name='stage')
    self.best_metric = tf.Variable(-math.inf, dtype=tf.float64,
                                   trainable=False, name='best_metric')
    self.stale_validations = tf.Variable(0, dtype=tf.int64, trainable=False,
                                         name='stale_validations')

  @property
  def stage(self):
    """1 or 2 (eager)."""
    return int(self.stage_variable.numpy())

  @property
  def needs_validation(self):
    """Whether the switch rule reads validation results (`patience` set)."""
    return self.patience is not None

  @property
  def monitors_validation(self):
    """Whether the next validation can still switch the stage (eager)."""
    return self.needs_validation and self.stage == 1

  def describe(self):
    """The rule and its state in one line, for logs (eager)."""
    rules = []
    if self.patience is not None:
      best = float(self.best_metric.numpy())
      rules.append(
          f'saturation: {int(self.stale_validations.numpy())}/'
          f'{self.patience} validations without an improvement > '
          f'{self.min_delta:g} (best {best:.4f})')
    if self.switch_epoch is not None:
      rules.append(f'fixed: epoch {self.switch_epoch}')
    return f'stage {self.stage}; ' + ('; '.join(rules) or 'no switch')

  def update(self, epoch, validation_metric=None):
    """Advances the bookkeeping at the start of `epoch`; may switch stage.

    Args:
      epoch: the epoch about to start (0-based).
      validation_metric: the validation retrieval score of the epoch that
        just ended (higher is better, e.g. mean R@10), or None if it had no
        validation. Each score counts once: pass it to one call only. NaN
        counts as no improvement.

    Returns:
      True if this call switched to stage 2 (retrace the train step).
    """
    if self.stage == 2:
      return False
    switch = self.switch_epoch is not None and epoch >= self.switch_epoch
    if validation_metric is not None and self.patience is not None:
      if validation_metric > float(self.best_metric.numpy()) + self.min_delta:
        self.best_metric.assign(float(validation_metric))
        self.stale_validations.assign(0)
      else:
        self.stale_validations.assign_add(1)
      switch = switch or int(self.stale_validations.numpy()) >= self.patience
    if switch:
      self.stage_variable.assign(2)
    return switch

  def _stage(self, stage):
    if stage is None:
      return self.stage
    if stage not in (1, 2):
      raise ValueError(f'`stage` must be 1 or 2, got {stage}')
    return stage

  def text_encoder_training(self, stage=None):
    """Whether to run the text encoder in training mode (dropout)."""
    return self._stage(stage) == 2

  def variable_groups(self, text_encoder_variables, other_variables,
                      stage=None):
    """The variables trained in a stage, by learning-rate group.

    Args:
      text_encoder_variables: trainable variables of the text encoder
        (transformer or word vectors).
      other_variables: all other trainable variables (video backbone, video
        head, text head).
      stage: 1 or 2; None reads the current stage (eagerly). Pass it
        explicitly inside a `tf.function`.

    Returns:
      Dict group name -> list of variables: stage 1 {'rest'}, stage 2
      {'text_encoder', 'rest'}.
    """
    text_ids = {id(v) for v in text_encoder_variables}
    overlap = [v.name for v in other_variables if id(v) in text_ids]
    if overlap:
      raise ValueError(f'variables in both groups: {overlap}')
    groups = {REST: list(other_variables)}
    if self._stage(stage) == 2:
      groups[TEXT_ENCODER] = list(text_encoder_variables)
    return groups

  def learning_rates(self, stage=None):
    """Dict group name -> learning rate of a stage (default: current)."""
    if self._stage(stage) == 1:
      return {REST: self.stage1_lr}
    return {TEXT_ENCODER: self.stage2_text_lr, REST: self.stage2_rest_lr}
