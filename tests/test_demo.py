"""The README's main command, end to end at a smaller size (slow; CI runs it)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from spl import demo
from spl import evaluation
from spl import train_lib
from tfrecords_tools import records
from tfrecords_tools import schema
from tfrecords_tools import testing


def _loss_steps(event_dir):
  return sorted(e.step for path in tf.io.gfile.glob(
      os.path.join(event_dir, 'events.*'))
                for e in tf.compat.v1.train.summary_iterator(path)
                for v in e.summary.value if v.tag == 'loss')


def _check_run(model_dir, steps, loss_steps, evaluated):
  """Exact bookkeeping of one training run of `steps` steps."""
  state = tf.train.get_checkpoint_state(model_dir)
  assert [p.rsplit('-', 1)[1] for p in state.all_model_checkpoint_paths] == [
      str(steps)], model_dir  # Keeps 1; period 50: the final checkpoint.
  reader = tf.train.load_checkpoint(state.model_checkpoint_path)
  assert reader.get_tensor(
      'optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE') == steps
  assert _loss_steps(os.path.join(model_dir, 'train')) == loss_steps
  with open(os.path.join(model_dir, train_lib.METRICS_FILENAME)) as f:
    written = json.load(f)
  assert written['step'] == written['train']['step'] == steps
  assert ('eval' in written) == evaluated


def _check_eval(model_dir, steps, val):
  """The evaluation of a run saw each validation clip once; returns it."""
  with open(os.path.join(model_dir, evaluation.EVAL_DETAILS_FILENAME)) as f:
    details = json.load(f)
  labels = [c[schema.LABEL_INDEX_KEY] for c in val]
  assert details['step'] == steps
  assert details['num_clips'] == len(val)
  assert details['num_videos'] == len(
      {(c[schema.VIDEO_ID_KEY], c[schema.LABEL_INDEX_KEY]) for c in val})
  matrix = np.array(details['confusion_matrix'])
  np.testing.assert_array_equal(matrix.sum(axis=1),
                                np.bincount(labels, minlength=3))
  assert details['clip/top_1'] == pytest.approx(np.trace(matrix) / len(val))
  return details


@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path):
  """Every stage's outputs: exact counts, steps, and agreeing numbers.

  Protects against a split that leaks or loses videos, runs that stop short
  of or past their steps or lose their final checkpoint, evaluations that
  drop, repeat or mislabel clips, predictions missing or repeating clips,
  and a results table that does not report the runs' own evaluations.
  """
  out = str(tmp_path / 'demo')
  size = demo.SIZES['tiny']
  result = demo.run_demo(out, size)
  methods = [r['method'] for r in result['rows']]
  assert methods == ['No pre-training', 'Weak label train', 'SPL-B']
  rows = {r['variant']: r for r in result['rows']}
  assert rows['spl_b']['pretrain_classes'] == 2 * 3
  assert rows['weak']['pretrain_classes'] == 3
  with open(os.path.join(out, 'results.json')) as f:
    written = json.load(f)
  assert written['rows'] == json.loads(json.dumps(result['rows']))
  assert written['teacher']['step'] == size.teacher_steps

  # Target videos split 2/3 - 1/3 by video, each 2 s video one 2 s clip.
  clips = {split: testing.parse_all(os.path.join(out, 'records', split,
                                                 schema.shard_pattern()))
           for split in ('train', 'val', 'web')}
  videos = {split: {c[schema.VIDEO_ID_KEY] for c in cs}
            for split, cs in clips.items()}
  assert len(clips['train']) == len(videos['train']) == 3 * 2
  assert len(clips['val']) == len(videos['val']) == 3 * 1
  assert not videos['train'] & videos['val']
  assert sorted(c[schema.LABEL_INDEX_KEY] for c in clips['val']) == [0, 1, 2]
  assert len(clips['web']) == 3 * 3 * 3  # 3 videos a class, 6 s: 3 clips.

  # Every run ends at exactly its step count with its final checkpoint
  # (off the 50-step period); 10 steps a loop.
  models = os.path.join(out, 'models')
  _check_run(os.path.join(models, 'teacher'), size.teacher_steps, [10, 20],
             evaluated=True)
  _check_eval(os.path.join(models, 'teacher'), size.teacher_steps,
              clips['val'])
  for variant in ('weak', 'spl_b'):
    _check_run(os.path.join(models, f'pretrain_{variant}'),
               size.pretrain_steps, [10], evaluated=False)
  for variant, row in rows.items():
    ft_dir = os.path.join(models, f'finetune_{variant or "scratch"}')
    _check_run(ft_dir, size.finetune_steps, [10], evaluated=True)
    details = _check_eval(ft_dir, size.finetune_steps, clips['val'])
    assert row['clip_top1'] == details['clip/top_1']
    assert row['video_top1'] == details['video/top_1']

  # Every web clip has exactly one teacher prediction, over every class.
  preds = [records.parse_prediction_example(r) for r in testing.read_records(
      os.path.join(out, 'predictions', 'teacher_web', 'predictions-*'))]
  assert sorted((p[schema.CLIP_INDEX_KEY], p[schema.CLIP_KEY_KEY])
                for p in preds) == sorted(
                    (c[schema.CLIP_INDEX_KEY], c[schema.CLIP_KEY_KEY])
                    for c in clips['web'])
  for p in preds:
    assert sorted(p[schema.PREDICTION_TOP_K_INDEX_KEY]) == [0, 1, 2]
    assert sum(p[schema.PREDICTION_TOP_K_SCORE_KEY]) == pytest.approx(
        1.0, abs=1e-5)

  # The SPL-B row's evaluation equals its recomputation from per-clip
  # predictions of the same checkpoint and views.
  # pylint: disable=protected-access
  ft_dir = os.path.join(models, 'finetune_spl_b')
  pred_dir = str(tmp_path / 'val_predictions')
  val_files = os.path.join(out, 'records', 'val', schema.shard_pattern())
  demo._trainer_run(
      [os.path.join(demo._GIN, 'runs', 'predict_teacher.gin')],
      demo._common_bindings(size) + [
          f"PREDICT_FILES='{val_files}'", 'NUM_CLASSES=3',
          f"PREDICTIONS_DIR='{pred_dir}'", 'run.predict_top_k=3'],
      model_dir=ft_dir, mode='predict')
  # pylint: enable=protected-access
  probs = {}
  for r in testing.read_records(os.path.join(pred_dir, 'predictions-*')):
    p = records.parse_prediction_example(r)
    probs[p[schema.CLIP_INDEX_KEY]] = np.zeros(3)
    probs[p[schema.CLIP_INDEX_KEY]][p[schema.PREDICTION_TOP_K_INDEX_KEY]] = p[
        schema.PREDICTION_TOP_K_SCORE_KEY]
  assert sorted(probs) == sorted(c[schema.CLIP_INDEX_KEY]
                                 for c in clips['val'])
  labels = {c[schema.CLIP_INDEX_KEY]: c[schema.LABEL_INDEX_KEY]
            for c in clips['val']}
  with open(os.path.join(ft_dir, evaluation.EVAL_DETAILS_FILENAME)) as f:
    details = json.load(f)
  matrix = np.zeros((3, 3), int)
  for i, p in probs.items():
    matrix[labels[i], np.argmax(p)] += 1
  assert details['confusion_matrix'] == matrix.tolist()
  assert details['loss'] == pytest.approx(
      -np.mean([np.log(p[labels[i]]) for i, p in probs.items()]), rel=1e-4)

  report = open(os.path.join(out, 'report.md')).read()
  assert 'does not test the paper' in report
  for plot in ('pretrain_curves.png', 'finetune_curves.png',
               'spl_b_confusion_matrix.png', 'spl_b_class_counts.png'):
    path = os.path.join(out, 'plots', plot)
    assert os.path.getsize(path) > 1000, plot
  strips = os.listdir(os.path.join(out, 'plots', 'attention_spl_b'))
  assert len([f for f in strips if f.endswith('.png')]) == 3
  assert 'Grad-CAM' in report
