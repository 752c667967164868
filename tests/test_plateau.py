"""The plateau learning-rate drop (CPD fine-tuning) alone and inside the trainer."""

import functools
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from spl import optimization
from spl import train_lib
from tests import test_train_lib


def test_drops_after_patience_evaluations_without_improvement():
  schedule = optimization.PlateauDecay(0.5, factor=0.1, patience=2,
                                       metric='acc')
  history = []
  for acc in (0.1, 0.3, 0.3, 0.2, 0.4, 0.4, 0.4, 0.4):
    history.append(schedule.report({'acc': acc}))
  # Improvements at 0.1, 0.3, 0.4; two stalls after 0.3 and two after 0.4
  # (then the counter restarts, so the last stall does not drop yet).
  assert history == [False, False, False, True, False, False, True, False]
  assert float(schedule(123)) == pytest.approx(0.5 * 0.01)


def test_state_is_checkpointed(tmp_path):
  schedule = optimization.PlateauDecay(1.0, patience=1, metric='m')
  for v in (1.0, 0.0, 0.0):
    schedule.report({'m': v})
  path = tf.train.Checkpoint(lr=schedule).save(str(tmp_path / 'ckpt'))
  restored = optimization.PlateauDecay(1.0, patience=1, metric='m')
  tf.train.Checkpoint(lr=restored).restore(path).assert_consumed()
  assert float(restored(0)) == pytest.approx(0.01)
  assert float(restored.best.numpy()) == 1.0


def test_validation_loss_mode_drops_at_most_twice():
  # CPD fine-tuning: "lr divided by 10 twice when validation loss saturates".
  schedule = optimization.PlateauDecay(0.01, factor=0.1, patience=2,
                                       metric='loss', mode='min', max_drops=2)
  losses = (2.0, 1.5, 1.5, 1.6, 1.2, 1.3, 1.2, 1.0, 1.1, 1.1, 1.1, 1.1)
  history = [schedule.report({'loss': v}) for v in losses]
  # Lower is better: stalls after 1.5 (x2) and after 1.2 (x2) drop; the
  # stalls after 1.0 would drop a third time, which max_drops forbids.
  assert history == [False, False, False, True, False, False, True,
                     False, False, False, False, False]
  assert float(schedule(0)) == pytest.approx(0.01 * 0.01)
  assert int(schedule.drops.numpy()) == 2
  with pytest.raises(ValueError, match='mode'):
    optimization.PlateauDecay(0.1, mode='lower')


def test_min_delta_factor_and_floor():
  # Improvements must beat the best by more than min_delta; each drop
  # multiplies by factor (0.3, so neither 0.1 nor 1 - factor would pass);
  # the rate never goes below min_learning_rate.
  schedule = optimization.PlateauDecay(1.0, factor=0.3, patience=1,
                                       metric='acc', min_delta=0.05,
                                       min_learning_rate=0.05)
  rates = []
  history = []
  for acc in (0.5, 0.54, 0.56, 0.6, 0.7, 0.7):
    history.append(schedule.report({'acc': acc}))
    rates.append(float(schedule(0)))
  # 0.54 and 0.6 are within min_delta of the best (0.5, then 0.56): stalls.
  assert history == [False, True, False, True, False, True]
  np.testing.assert_allclose(rates, [1.0, 0.3, 0.3, 0.09, 0.09, 0.05],
                             rtol=1e-6)
  assert int(schedule.drops.numpy()) == 3  # the floor does not undo a drop


def test_min_delta_in_min_mode_asks_for_a_decrease():
  schedule = optimization.PlateauDecay(0.2, factor=0.3, patience=1,
                                       metric='loss', mode='min',
                                       min_delta=0.1)
  # 1.95 is lower than 2.0 but not by more than 0.1: a stall; 1.8 improves.
  history = [schedule.report({'loss': v}) for v in (2.0, 1.95, 1.8, 1.75)]
  assert history == [False, True, False, True]
  assert float(schedule(0)) == pytest.approx(0.2 * 0.09, rel=1e-6)


def test_build_scales_the_rate_with_the_global_batch():
  lr = optimization.build_plateau_learning_rate(
      base_learning_rate=0.1, global_batch_size=12, base_batch_size=8,
      steps_per_epoch=5, total_steps=50, factor=0.3, patience=3,
      metric='loss', mode='min', max_drops=1)
  assert float(lr(0)) == pytest.approx(0.1 * 12 / 8, rel=1e-6)
  assert (lr.factor, lr.patience, lr.metric, lr.mode, lr.max_drops) == (
      0.3, 3, 'loss', 'min', 1)


def test_bad_arguments_and_unknown_metric():
  with pytest.raises(ValueError, match='factor'):
    optimization.PlateauDecay(0.1, factor=1.5)
  with pytest.raises(ValueError, match='patience'):
    optimization.PlateauDecay(0.1, patience=0)
  with pytest.raises(KeyError, match='video/top_1'):
    optimization.PlateauDecay(0.1).report({'clip/top_1': 0.5})


def test_state_variables_are_not_trainable():
  """The state is checkpointed, never trained: no gradient step may move it."""
  schedule = optimization.PlateauDecay(0.5, metric='acc')
  assert len(schedule.variables) == 4  # scale, best, drops, bad_evaluations
  assert schedule.trainable_variables == ()
  assert not any(v.trainable for v in schedule.variables)


def test_exactly_patience_stalls_drop_even_before_any_improvement():
  """The stall counter starts at 0 and the best at -inf ('max') / +inf."""
  # A diverged first evaluation (inf or nan loss) is no improvement: with
  # patience 2 the second such evaluation drops, not the first.
  schedule = optimization.PlateauDecay(0.5, factor=0.1, patience=2,
                                       metric='loss', mode='min')
  history = [schedule.report({'loss': v})
             for v in (math.inf, math.nan, 1e30, 1e30, 1e30)]
  # Any finite loss beats the initial best, however large.
  assert history == [False, True, False, False, True]
  assert float(schedule(0)) == pytest.approx(0.5 * 0.01)
  # 'max': any finite metric beats the initial best, however low.
  schedule = optimization.PlateauDecay(0.5, factor=0.1, patience=1,
                                       metric='acc')
  history = [schedule.report({'acc': v}) for v in (-1e30, -1e30)]
  assert history == [False, True]


def test_min_mode_compares_the_decrease_itself_with_min_delta():
  """A loss must fall by more than min_delta, not by more than min_delta/2."""
  schedule = optimization.PlateauDecay(0.2, factor=0.3, patience=1,
                                       metric='loss', mode='min',
                                       min_delta=0.1)
  # 2.0 -> 1.93 falls by 0.07 <= 0.1: a stall; 1.93 -> 1.78 by 0.15.
  history = [schedule.report({'loss': v}) for v in (2.0, 1.93, 1.78, 1.7)]
  assert history == [False, True, False, True]


def test_max_drops_zero_never_drops():
  """max_drops 0 is valid (a constant rate); a negative one is refused."""
  schedule = optimization.PlateauDecay(0.5, patience=1, metric='acc',
                                       max_drops=0)
  history = [schedule.report({'acc': 0.3}) for _ in range(4)]
  assert history == [False] * 4
  assert float(schedule(0)) == pytest.approx(0.5)
  with pytest.raises(ValueError, match='max_drops'):
    optimization.PlateauDecay(0.5, max_drops=-1)


@pytest.mark.parametrize('kwargs,name', [
    (dict(learning_rate=0.0), 'learning_rate'),
    (dict(learning_rate=0.1, factor=0.0), 'factor'),
    (dict(learning_rate=0.1, factor=1.0), 'factor'),
    (dict(learning_rate=0.1, patience=0), 'patience')])
def test_refuses_boundary_arguments(kwargs, name):
  """Protects the open limits: rate > 0, factor in (0, 1), patience >= 1."""
  with pytest.raises(ValueError, match=f'`{name}` must be'):
    optimization.PlateauDecay(**kwargs)


def test_build_defaults_are_the_cpd_fine_tuning_rate_at_goyal_scaling():
  """The defaults: CPD's lr 1e-2 per 256 clips (Goyal et al.), /10 drops."""
  # CPD 4.2: "SGD lr 1e-2"; Appendix A: "divided by 10"; linear scaling of
  # Goyal et al. 2017 from a batch of 256: a batch of 512 starts at 0.02.
  lr = optimization.build_plateau_learning_rate(
      global_batch_size=512, steps_per_epoch=5, total_steps=50)
  assert float(lr(0)) == pytest.approx(0.01 * 512 / 256, rel=1e-6)
  # The default metric is the clip-averaged video top-1, higher is better,
  # and the patience is the class's own default.
  plain = optimization.PlateauDecay(0.02)
  values = (0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.7, 0.4, 0.4, 0.4)
  history = [lr.report({'video/top_1': v}) for v in values]
  assert history == [plain.report({'video/top_1': v}) for v in values]
  assert any(history)
  assert float(lr(0)) == pytest.approx(0.02 * 0.1 ** history.count(True),
                                       rel=1e-6)


def test_build_accepts_batches_of_one_and_refuses_zero():
  """Protects the batch-size checks of the builder: 1 valid, 0 refused."""
  kwargs = dict(base_learning_rate=0.1, steps_per_epoch=5, total_steps=50)
  lr = optimization.build_plateau_learning_rate(
      global_batch_size=1, base_batch_size=1, **kwargs)
  assert float(lr(0)) == pytest.approx(0.1, rel=1e-6)
  lr = optimization.build_plateau_learning_rate(
      global_batch_size=1, base_batch_size=2, **kwargs)
  assert float(lr(0)) == pytest.approx(0.05, rel=1e-6)
  for global_batch_size, base_batch_size in ((0, 8), (8, 0), (0, 0)):
    with pytest.raises(ValueError, match='`global_batch_size` and'):
      optimization.build_plateau_learning_rate(
          global_batch_size=global_batch_size,
          base_batch_size=base_batch_size, **kwargs)


def test_trainer_reports_every_evaluation_and_resume_keeps_drops(
    tmp_path, data):
  # `num_clips` never changes: every evaluation after the first is a
  # plateau, so with patience 1 the rate drops at evaluations 2, 3, ...
  lr_fn = functools.partial(optimization.build_plateau_learning_rate,
                            base_learning_rate=0.1, base_batch_size=4,
                            patience=1, metric='num_clips')
  model_dir = str(tmp_path / 'run')
  run = functools.partial(
      test_train_lib._run, mode='train_and_eval', model_dir=model_dir,  # pylint: disable=protected-access
      train_file_pattern=data, eval_file_pattern=data, learning_rate_fn=lr_fn)
  run(train_steps=3)
  with open(os.path.join(model_dir, train_lib.METRICS_FILENAME)) as f:
    metrics = json.load(f)
  # Evaluations after steps 1, 2, 3: drops after 2 and 3; the step-3
  # training loop ran at the rate after one drop.
  assert metrics['train']['learning_rate'] == pytest.approx(0.01)
  run(train_steps=4)  # Resumes at step 3 with two drops already taken.
  with open(os.path.join(model_dir, train_lib.METRICS_FILENAME)) as f:
    metrics = json.load(f)
  assert metrics['step'] == 4
  assert metrics['train']['learning_rate'] == pytest.approx(0.001)


data = test_train_lib.data
