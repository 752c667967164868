"""The plateau learning-rate drop (CPD fine-tuning) alone and inside the trainer."""

import functools
import json
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
