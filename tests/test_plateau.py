"""The plateau learning-rate drop (CPD fine-tuning) alone and inside the trainer."""

import functools
import json
import os

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
