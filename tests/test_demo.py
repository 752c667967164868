"""The README's main command and the study, end to end at test sizes (slow).

`make demo` is `spl.demo` at size 'small'; `--size=study` adds seeds and the
CPD rows. Here: 'tiny' (the default path, one seed) and 'study_tiny' (two
seeds, both tables).
"""

import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from spl import bootstrap
from spl import demo
from spl import demo_report
from spl import train_lib
from tfrecords_tools import records
from tfrecords_tools import schema
from tfrecords_tools import synthetic_world
from tfrecords_tools import testing

VERDICTS = {bootstrap.HELD, bootstrap.REVERSED, bootstrap.NOT_RESOLVED,
            bootstrap.CONSISTENT, bootstrap.DIFFERS}


def _check_run(model_dir, steps):
  """A training run stopped at exactly `steps` with its final checkpoint."""
  state = tf.train.get_checkpoint_state(model_dir)
  assert [p.rsplit('-', 1)[1] for p in state.all_model_checkpoint_paths] == [
      str(steps)], model_dir
  with open(os.path.join(model_dir, train_lib.METRICS_FILENAME)) as f:
    assert json.load(f)['step'] == steps


def _check_intervals(table):
  for row in table['rows']:
    acc = bootstrap.Interval(**row['accuracy'])
    assert acc.low <= acc.estimate <= acc.high, row['key']
    scores = np.array(row['scores'])
    assert acc.estimate == pytest.approx(scores.mean())
    assert row['per_seed'] == pytest.approx(scores.mean(axis=1).tolist())
    # The most predicted class's share of the validation clips, per seed.
    shares = row['top_class_share_per_seed']
    assert len(shares) == scores.shape[0]
    assert all(0 < x <= 1 for x in shares), row['key']
    if row['key'] == table['reference']:
      assert row['difference'] is None
    else:
      diff = bootstrap.Interval(**row['difference'])
      assert diff.low <= diff.estimate <= diff.high, row['key']
  for claim in table['claims']:
    diff = bootstrap.Interval(**claim['difference'])
    assert diff.low <= diff.estimate <= diff.high
    assert claim['verdict'] in VERDICTS
    assert claim['verdict'] == bootstrap.verdict(diff, claim['sign'])


def test_collapsed_runs_are_named_with_their_seed():
  rows = [{'label': 'Weak label', 'top_class_share_per_seed': [0.2, 0.95]},
          {'label': 'SPL-B', 'top_class_share_per_seed': [0.89, 0.3]},
          {'label': 'old results'}]
  lines = demo_report.collapsed_runs(rows, [3, 7])
  text = ' '.join(lines)
  assert 'Weak label (seed 7: 95 %)' in text
  assert 'SPL-B' not in text and 'seed 3' not in text
  assert 'failed training' in text
  assert demo_report.collapsed_runs(rows[1:], [3, 7]) == []
  assert 'SPL-B (seed 3: 89 %)' in ' '.join(
      demo_report.collapsed_runs(rows, [3, 7], threshold=0.85))


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
  """Every stage's outputs: exact counts, steps, and agreeing numbers.

  Protects against a world or writer that loses videos, runs that stop short
  of or past their steps, predictions missing or repeating clips, per-video
  scores that differ from the trainer's own evaluation, a disagreement rate
  that is not the relabel job's noise ratio, and a report without its
  intervals, paper column or verdicts.
  """
  out = str(tmp_path / 'demo')
  size = demo.SIZES['tiny']
  result = demo.run_demo(out, size)
  with open(os.path.join(out, 'results.json')) as f:
    written = json.load(f)
  assert written == json.loads(json.dumps(result))
  spl = result['spl']
  assert [r['key'] for r in spl['rows']] == ['none', 'weak', 'spl_b']
  rows = {r['key']: r for r in spl['rows']}
  assert rows['spl_b']['classes'] == 2 * 4 and rows['weak']['classes'] == 4

  # The world: 4 classes x 2 videos a split; 6 s target videos give 3 clips,
  # 10 s web videos 5.
  clips = {split: testing.parse_all(os.path.join(out, 'records', split,
                                                 schema.shard_pattern()))
           for split in ('train', 'val', 'web')}
  videos = {split: {c[schema.VIDEO_ID_KEY] for c in cs}
            for split, cs in clips.items()}
  assert (len(clips['train']), len(clips['val']), len(clips['web'])) == (
      24, 24, 40)
  assert len(videos['val']) == 8 and not videos['train'] & videos['val']
  assert spl['videos'] == sorted(videos['val'])
  world = synthetic_world.load_world(os.path.join(out, 'videos'))
  for c in clips['val']:
    assert c[schema.LABEL_INDEX_KEY] == world['videos'][
        c[schema.VIDEO_ID_KEY]]['class']

  seed_dir = os.path.join(out, 'seed_0')
  models = os.path.join(seed_dir, 'models')
  _check_run(os.path.join(models, 'teacher'), size.finetune_steps)
  for key in ('weak', 'spl_b'):
    _check_run(os.path.join(models, f'pretrain_{key}'), size.pretrain_steps)
    _check_run(os.path.join(models, f'finetune_{key}'), size.finetune_steps)

  # Every web clip has exactly one teacher prediction, over every class;
  # the disagreement is the relabel job's noise ratio.
  preds = [records.parse_prediction_example(r) for r in testing.read_records(
      os.path.join(seed_dir, 'predictions', 'teacher_web', 'predictions-*'))]
  assert sorted(p[schema.CLIP_KEY_KEY] for p in preds) == sorted(
      c[schema.CLIP_KEY_KEY] for c in clips['web'])
  for p in preds:
    assert sorted(p[schema.PREDICTION_TOP_K_INDEX_KEY]) == [0, 1, 2, 3]
  disagreement = result['disagreement'][0]
  assert disagreement['clips'] == 40
  assert disagreement['disagreement'] == pytest.approx(
      rows['weak']['noise_ratio'])

  # A row's per-video scores are the trainer's own evaluation of the same
  # model and views (`--mode=eval`: video top-1 averages clip probabilities).
  # pylint: disable=protected-access
  ft_dir = os.path.join(models, 'finetune_spl_b')
  val_files = os.path.join(out, 'records', 'val', schema.shard_pattern())
  evaluated = demo._trainer_run(
      [os.path.join(demo._GIN, 'runs', 'finetune.gin')],
      demo._common_bindings(size, 0) + [
          f"TRAIN_FILES='{os.path.join(out, 'records', 'train', '*')}'",
          f"EVAL_FILES='{val_files}'",
          'NUM_TRAIN_EXAMPLES=24', 'NUM_CLASSES=4', 'INIT_CHECKPOINT=None'],
      model_dir=ft_dir, mode='eval')
  # pylint: enable=protected-access
  ev = evaluated.get('eval', evaluated)
  assert ev['num_videos'] == 8
  assert rows['spl_b']['accuracy']['estimate'] == pytest.approx(
      ev['video/top_1'])
  _check_intervals(spl)

  report = open(os.path.join(out, 'report.md')).read()
  assert 'not comparable' in report
  assert 'over 60%' in report and 'teacher disagrees' in report
  assert '## The world, measured on its outputs' in report
  assert 'Verdicts:' in report and 'Orderings the paper reports' in report
  assert '84.3 (Table 1)' in report  # The paper's SPL-B beside ours.
  assert bootstrap.format_interval(
      bootstrap.Interval(**rows['spl_b']['accuracy'])) in report
  for plot in ('pretrain_curves.png', 'finetune_curves.png',
               'spl_b_confusion_matrix.png', 'spl_b_class_counts.png'):
    assert os.path.getsize(os.path.join(out, 'plots', plot)) > 1000, plot
  strips = os.listdir(os.path.join(out, 'plots', 'attention_spl_b'))
  assert len([f for f in strips if f.endswith('.png')]) == 3
  assert 'Grad-CAM' in report


@pytest.mark.slow
def test_study_end_to_end(tmp_path):
  """`--size=study` at a test size: two seeds, SPL and CPD tables, verdicts."""
  out = str(tmp_path / 'study')
  size = demo.SIZES['study_tiny']
  result = demo.run_demo(out, size)
  assert result['seeds'] == [0, 1]
  for table, keys in (('spl', size.spl_rows), ('cpd', size.cpd_rows)):
    data = result[table]
    assert [r['key'] for r in data['rows']] == list(keys)
    for r in data['rows']:
      assert np.array(r['scores']).shape == (2, 8)
      assert len(r['per_seed']) == 2
    assert data['claims'], table
    _check_intervals(data)
  rows = {r['key']: r for r in result['cpd']['rows']}
  # Random init is the teacher run; cross-pair stays in stage I.
  assert rows['cpd_none']['scores'] == next(
      r['scores'] for r in result['spl']['rows'] if r['key'] == 'none')
  for seed_train in result['cpd']['pretraining']:
    assert seed_train['cross_pair']['stage'] == 1  # Text model frozen.
  assert len(result['disagreement']) == 2

  report = open(os.path.join(out, 'report.md')).read()
  assert report.startswith('# SPL and CPD study report')
  for heading in ('## The world, measured on its outputs',
                  '## SPL Table 1 at toy scale',
                  '## CPD Table 1a / 1b at toy scale',
                  '## How the intervals are computed', '## Time'):
    assert heading in report, heading
  assert 'two-level' in report
  # Every row is in its table with the paper's number beside it.
  for table, paper in (('spl', demo_report.SPL_PAPER),
                       ('cpd', demo_report.CPD_PAPER)):
    for r in result[table]['rows']:
      line = next(x for x in report.splitlines()
                  if x.startswith(f"| {r['label']} |"))
      assert f'{paper[r["key"]].top1:.1f} (' in line, line
      assert bootstrap.format_interval(
          bootstrap.Interval(**r['accuracy'])) in line
  verdicts = re.findall(r'\| (held|reversed|not resolved|consistent|differs) '
                        r'\|$', report, re.MULTILINE)
  assert len(verdicts) >= len(result['spl']['claims']) + len(
      result['cpd']['claims'])
