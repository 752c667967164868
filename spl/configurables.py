"""The one place gin learns about library functions (STYLE rule 9).

Library modules stay gin-free: they take plain arguments and are tested as
plain functions. Importing this module registers them under short names that
the files in `gin_configs/` bind. Arguments the trainer itself passes (file
pattern, batch size, input context, number of classes, input shape, steps per
epoch, ...) must never be bound in a gin file: gin would silently lose to the
caller. Each registration below says which arguments those are.
"""

import gin

from spl import data_parameters
from spl import input_pipeline
from spl import loop as loop_lib
from spl import losses
from spl import optimization
from spl import train_lib
from spl.models import factory

# The job. Set by `spl.main` from flags: mode, model_dir, strategy,
# setup_done.
run = gin.external_configurable(train_lib.run, name='run')

# The loop of both methods (steps per loop, checkpoint period and retention):
# a job gets it as `run.loop = @loop()` / `cpd_run.loop = @loop()`, so that
# `loop.steps_per_loop = ...` sets it once for either.
loop = gin.external_configurable(loop_lib.LoopConfig, name='loop')

# Input pipeline, scoped in gin files as train/, eval/ (eval and predict).
# Set by the trainer: file_pattern, is_training, batch_size, input_context,
# num_classes, repeat, drop_remainder.
make_dataset = gin.external_configurable(input_pipeline.make_dataset,
                                         name='make_dataset')

# Models. Set by the trainer: num_classes, input_shape.
build_classifier = gin.external_configurable(factory.build_classifier,
                                             name='build_classifier')

# Losses. Set by the trainer: labels, logits, epoch, features.
softmax_cross_entropy = gin.external_configurable(
    losses.softmax_cross_entropy, name='softmax_cross_entropy')
anchor_loss = gin.external_configurable(losses.anchor_loss,
                                        name='anchor_loss')
# A loss object: bind `run.loss_fn = @DataParameters()`. Also set by the
# trainer: num_classes (build).
DataParameters = gin.external_configurable(  # pylint: disable=invalid-name
    data_parameters.DataParameters, name='DataParameters')

# Optimisation. Set by the trainer: global_batch_size, steps_per_epoch,
# total_steps (schedule); the learning rate (optimizer).
build_learning_rate = gin.external_configurable(
    optimization.build_learning_rate, name='build_learning_rate')
build_plateau_learning_rate = gin.external_configurable(
    optimization.build_plateau_learning_rate,
    name='build_plateau_learning_rate')
build_sgd = gin.external_configurable(optimization.build_sgd,
                                      name='build_sgd')


@gin.configurable('job')
def job(fn=run):
  """The job `spl.main` runs: `run` (SPL trainer, default) or `cpd_run`.

  A gin file picks it with `job.fn = @cpd_run` after `import
  cpd.configurables` (CPD registers itself there: imports run only from the
  methods down to the trainer core); `spl.main` calls the result with mode,
  model_dir, strategy and setup_done.
  """
  return fn
