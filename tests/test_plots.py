"""What the plots and the demo report say, read from their matplotlib artists.

Every plot is rendered to a PNG file, but the checks read the figure's
objects (cell texts, tick labels, axis labels, colour bars, legend position),
not pixels: a plot must be readable without the code that drew it. The
label-space data comes from the real relabel job on fake records
(`tests/label_space_data.py`); losses from TensorBoard events written the way
the trainer writes them; the teacher's evaluation from
`spl.metrics.classification_metrics`.
"""

import dataclasses
import json
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg

from spl import bootstrap
from spl import demo
from spl import gradcam
from tests import label_space_data
from tfrecords_tools import label_space_plots as plots
from tfrecords_tools import label_spaces
from tfrecords_tools import relabel
from tfrecords_tools import synthetic_world

NAMES = ['archery', 'bowling', 'cooking on campfire']


@pytest.fixture(scope='module')
def relabelled(tmp_path_factory):
  """Label spaces spl_b and spl_m (K = 2) made by the relabel job.

  Returns (root, {variant: label space}); the job's outputs are in
  root/label_spaces/<variant>/, where the demo looks for them.
  """
  root = tmp_path_factory.mktemp('ws')
  clips, preds = label_space_data.write_clips_and_predictions(
      str(root / 'data'), num_clips=24)
  spaces = {}
  for variant, kwargs in (('spl_b', {}), ('spl_m', {'k': 2})):
    _, path = label_space_data.relabelled(str(root / 'label_spaces'), clips,
                                          preds, variant, **kwargs)
    spaces[variant] = label_spaces.load_label_space(path)
  return root, spaces


def _save(fig, path):
  png = plots.figure_png(fig)
  path.write_bytes(png)
  assert path.read_bytes()[:4] == b'\x89PNG'


def _draw(fig):
  FigureCanvasAgg(fig).draw()


# ---- Confusion matrix ----


def test_confusion_matrix_writes_counts_and_says_what_blank_means(tmp_path):
  weak = [0] * 7 + [1] * 5 + [2] * 3
  teacher = [0] * 5 + [2] * 2 + [1] * 5 + [0, 0, 2]
  c = label_spaces.confusion_matrix(weak, teacher, 3)
  assert c[0, 1] == 0 and c[2, 1] == 0  # Two empty cells.
  fig = plots.confusion_matrix_figure(c, NAMES)
  _save(fig, tmp_path / 'confusion.png')
  ax, bar = fig.axes
  cells = {(round(t.get_position()[1]), round(t.get_position()[0])):
           t.get_text() for t in ax.texts if t.get_gid() == 'cell_count'}
  # Every non-empty cell holds its count at (row = weak, column = teacher);
  # an empty one holds nothing.
  assert cells == {(w, t): str(c[w, t]) for w in range(3) for t in range(3)
                   if c[w, t]}
  assert 'weak label (query' in ax.get_ylabel()
  assert 'teacher prediction' in ax.get_xlabel()
  assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
  assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
  assert 'clips per cell' in bar.get_ylabel()
  _draw(fig)  # A short log range still has labelled ticks: 1, 2, 5.
  assert {'1', '2', '5'} <= {t.get_text() for t in bar.get_yticklabels()}
  captions = ' '.join(t.get_text() for t in fig.texts)
  assert '0 clips' in captions
  title = ax.get_title()
  assert f'{c.sum()} clips' in title
  assert f'{1 - np.trace(c) / c.sum():.1%} off the diagonal' in title


def test_confusion_matrix_of_many_classes_says_where_the_counts_are():
  n = plots.MAX_ANNOTATED_CLASSES + 1
  c = np.eye(n, dtype=np.int64) * 3
  fig = plots.confusion_matrix_figure(c, [f'c{i}' for i in range(n)])
  ax = fig.axes[0]
  assert not [t for t in ax.texts if t.get_gid() == 'cell_count']
  assert not ax.get_xticks().size
  assert 'relabel_stats.json' in ' '.join(t.get_text() for t in fig.texts)


# ---- Class histogram ----


def test_class_label_is_weak_slash_teacher():
  assert plots.class_label('weak: archery / teacher: bowling') == (
      'archery / bowling')
  assert plots.class_label('weak: a b / teacher disagrees') == (
      'a b / disagrees')
  assert plots.class_label('archery') == 'archery'


@pytest.mark.parametrize('variant', ['spl_b', 'spl_m'])
def test_class_counts_names_every_class(relabelled, tmp_path, variant):
  root, spaces = relabelled
  space = spaces[variant]
  # What the relabel job wrote is this plot.
  written = (root / 'label_spaces' / variant /
             relabel.CLASS_COUNTS_PNG).read_bytes()
  assert written == plots.class_counts_png(space)
  fig = plots.class_counts_figure(space)
  _save(fig, tmp_path / 'counts.png')
  ax = fig.axes[0]
  by_count = sorted(space['classes'], key=lambda c: (-c['num_clips'],
                                                     c['index']))
  expected = [plots.class_label(c['name']) for c in by_count]
  labels = [t.get_text() for t in ax.get_yticklabels()]
  assert labels == expected
  # Names, "weak / teacher", never ranks.
  assert all(' / ' in x and not x.strip().isdigit() for x in labels)
  counts = [t.get_text() for t in ax.texts if t.get_gid() == 'bar_count']
  assert counts == [str(c['num_clips']) for c in by_count]
  assert ax.get_xlim()[0] == 0  # No axis running from -1.
  assert f'all {len(expected)} classes' in ax.get_title(loc='left')
  assert 'weak label / teacher' in ax.get_ylabel()
  # The legend is outside the axes: below them.
  _draw(fig)
  legend = fig.legends[0].get_window_extent()
  assert legend.y1 <= ax.get_window_extent().y0


def test_class_counts_of_weak_labels_claim_no_diagonal_split():
  c = np.array([[5, 2, 0], [1, 3, 1], [4, 0, 2]])
  space = label_spaces.make_label_space('weak', c, NAMES)
  fig = plots.class_counts_figure(space)
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_yticklabels()] == [
      'archery', 'cooking on campfire', 'bowling']
  assert 'weak label' in ax.get_ylabel()
  assert not fig.legends
  assert len({tuple(p.get_facecolor()) for p in ax.patches}) == 1
  split = plots.class_counts_figure(label_spaces.make_label_space(
      'spl', c, NAMES))
  assert len({tuple(p.get_facecolor()) for p in split.axes[0].patches}) == 2
  assert [t.get_text() for t in split.legends[0].get_texts()] == [
      'includes the diagonal cell (teacher = weak)',
      'off-diagonal (teacher \u2260 weak)']


def test_class_counts_of_many_classes_shows_the_top_k_and_says_so(tmp_path):
  rng = np.random.default_rng(0)
  names = [f'class {i}' for i in range(8)]
  c = rng.integers(0, 20, (8, 8))
  space = label_spaces.make_label_space('spl', c, names)
  fig = plots.class_counts_figure(space, top_k=10)
  _save(fig, tmp_path / 'top.png')
  ax = fig.axes[0]
  assert len(ax.get_yticklabels()) == 10
  assert 'top 10 of 64 classes' in ax.get_title(loc='left')
  counts = np.sort(c.reshape(-1))[::-1]
  caption = ' '.join(t.get_text() for t in fig.texts)
  assert f'54 classes holding {counts[10:].sum()} clips' in caption
  assert f'{int(np.sum(c == 0))} classes are empty' in caption


# ---- SCR vs K ----


def test_scr_curve_has_integer_k_ticks_and_only_for_k_variants(
    relabelled, tmp_path):
  _, spaces = relabelled
  space = spaces['spl_m']
  c = np.asarray(json.loads(
      (relabelled[0] / 'label_spaces' / 'spl_m' /
       relabel.STATS_FILENAME).read_text())['confusion_matrix'])
  fig = plots.scr_curve_figure(
      label_spaces.scr_curve(c), 2.5, chosen_scr=0.9,
      scr_by_count=label_spaces.scr_by_num_classes(c), variant='spl_m')
  _save(fig, tmp_path / 'scr.png')
  _draw(fig)
  ax = fig.axes[0]
  ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <=
           ax.get_xlim()[1]]
  assert ticks and all(float(t).is_integer() for t in ticks)
  assert ax.get_xlabel().startswith('K = classes / N')
  assert plots.has_scr_curve(space)
  assert not plots.has_scr_curve(spaces['spl_b'])
  with pytest.raises(ValueError, match='has no K'):
    plots.scr_curve_png(label_spaces.scr_curve(c), variant='spl_b')


# ---- Loss curves of the demo ----


def _write_events(directory, points):
  writer = tf.summary.create_file_writer(str(directory))
  with writer.as_default():
    for step, value in points:
      tf.summary.scalar('loss', value, step=step)
  writer.flush()
  writer.close()


def test_loss_curves_are_normalised_by_ln_c_with_validation(tmp_path):
  small, large = tmp_path / 'weak', tmp_path / 'spl'
  _write_events(small / 'train', [(10, 1.0), (20, 0.8)])
  _write_events(small / 'eval', [(20, 0.9)])
  _write_events(large / 'train', [(10, 2.0), (20, 1.5)])
  curves = [demo.read_loss_curve(str(small), 'weak', 3),
            demo.read_loss_curve(str(large), 'spl', 9)]
  assert curves[1].validation == []  # No eval/ directory: no curve.
  fig = demo.loss_curves_figure(curves, 'pre-training', note='n')
  demo.write_loss_curves(str(tmp_path / 'loss.png'), curves, 'pre-training')
  assert (tmp_path / 'loss.png').read_bytes()[:4] == b'\x89PNG'
  ax = fig.axes[0]
  assert 'ln C' in ax.get_ylabel()
  lines = {line.get_gid(): line for line in ax.lines if line.get_gid()}
  assert sorted(lines) == ['train:spl', 'train:weak', 'validation:weak']
  np.testing.assert_allclose(lines['train:weak'].get_ydata(),
                             np.array([1.0, 0.8]) / math.log(3), rtol=1e-6)
  np.testing.assert_allclose(lines['train:spl'].get_ydata(),
                             np.array([2.0, 1.5]) / math.log(9), rtol=1e-6)
  np.testing.assert_allclose(lines['validation:weak'].get_ydata(),
                             [0.9 / math.log(3)], rtol=1e-6)
  assert lines['validation:weak'].get_linestyle() == '--'
  legend = ax.get_legend()
  texts = [t.get_text() for t in legend.get_texts()]
  assert texts == ['weak (C = 3)', 'spl (C = 9)', 'training', 'validation']
  _draw(fig)  # The legend is right of the axes, over no curve.
  assert legend.get_window_extent().x0 >= ax.get_window_extent().x1
  with pytest.raises(ValueError, match='`num_classes`'):
    demo.loss_curves_figure([demo.LossCurve('x', 1, [(1, 0.0)])], 't')


# ---- Grad-CAM strips ----


def test_grad_cam_strip_has_a_colour_bar_and_says_how_it_is_normalised(
    tmp_path):
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (6, 16, 24, 3)).astype(np.uint8)
  heat = gradcam.normalize_heat(rng.random((6, 16, 24)))
  fig = gradcam.strip_figure(frames, heat, title='t', max_frames=4)
  _save(fig, tmp_path / 'strip.png')
  *panels, bar = fig.axes
  assert [a.get_title() for a in panels] == ['t=0', 't=2', 't=3', 't=5']
  assert bar.get_ylabel() == gradcam.COLORBAR_LABEL
  assert bar.get_ylim() == (0.0, 1.0)
  caption = ' '.join(t.get_text().replace('\n', ' ') for t in fig.texts)
  assert 'maximum over the whole clip' in caption
  assert gradcam.write_strip(str(tmp_path / 's.png'), frames, heat,
                             max_frames=4) == 4
  no_caption = gradcam.strip_figure(frames, heat, caption=None)
  assert not [t for t in no_caption.texts if t.get_gid() == 'caption']


# ---- The demo report ----


def _fake_runs(spaces, videos, seeds, rng):
  """What `run_spl_seed` returns, for the rows none / weak / spl_b / spl_m."""
  runs = []
  for _ in seeds:
    scores = {key: {'videos': videos,
                    'correct': (rng.random(len(videos)) < p).astype(
                        float).tolist()}
              for key, p in (('none', 0.5), ('weak', 0.6), ('spl_b', 0.7),
                             ('spl_m', 0.65))}
    runs.append({
        'scores': scores,
        'spaces': {v: {k: s.get(k) for k in ('num_classes', 'k', 'scr',
                                              'noise_ratio', 'num_clips',
                                              'num_dropped_clips')}
                   for v, s in dict(weak=spaces['spl_b'], **spaces).items()},
        'curves': {'none': demo.LossCurve('none', 3, [(10, 1.0)],
                                          [(10, 1.1)])},
        'pretrain_curves': {'spl_b': demo.LossCurve('spl_b', 6,
                                                    [(10, 1.0)])},
        'disagreement': {'clips': 24, 'disagreement': 0.625,
                         'agreement_by_kind': {'query': 0.7,
                                               'middle_ground': 0.4,
                                               'background': 0.1},
                         'clips_by_kind': {}, 'middle_ground_to_sharing_class':
                         0.3},
        'seconds': 1.0})
  return runs


@pytest.mark.parametrize('seeds', [(0,), (0, 1, 2)])
def test_demo_report_gives_intervals_label_spaces_and_the_paper(
    relabelled, tmp_path, seeds):
  root, spaces = relabelled
  out = str(tmp_path / 'out')
  shutil.copytree(str(root / 'label_spaces'),
                  os.path.join(out, f'seed_{seeds[0]}', 'label_spaces'))
  size = dataclasses.replace(demo.SIZES['tiny'], seeds=seeds,
                             spl_rows=('none', 'weak', 'spl_b', 'spl_m'))
  world_cfg = demo.world_config(size)
  synthetic_world.generate_world(str(tmp_path / 'world'), world_cfg,
                                 write_videos=False)
  world_stats = synthetic_world.measure_world(str(tmp_path / 'world'))
  summaries = {k: {'clips': 24, 'videos_written': 8}
               for k in ('train', 'val', 'web')}
  videos = [f'v{i:03d}' for i in range(30)]
  runs = _fake_runs(spaces, videos, seeds, np.random.default_rng(len(seeds)))
  results = demo.collect_results(size, world_cfg, world_stats, summaries,
                                 runs, [])
  demo.write_outputs(out, results, runs)

  with open(os.path.join(out, 'results.json')) as f:
    written = json.load(f)
  rows = {r['key']: r for r in written['spl']['rows']}
  assert list(rows) == ['none', 'weak', 'spl_b', 'spl_m']
  for key, r in rows.items():
    x = np.array([run['scores'][key]['correct'] for run in runs])
    assert r['accuracy']['estimate'] == pytest.approx(x.mean())
    assert r['per_seed'] == pytest.approx(x.mean(axis=1).tolist())
    if key != 'weak':
      w = np.array([run['scores']['weak']['correct'] for run in runs])
      assert r['difference']['estimate'] == pytest.approx(x.mean() - w.mean())
  for variant in ('spl_b', 'spl_m'):
    for key in ('num_classes', 'scr', 'noise_ratio'):
      assert written['spl']['label_spaces_per_seed'][0][variant][key] == (
          spaces[variant][key])

  report = open(os.path.join(out, 'report.md')).read()
  header = next(x for x in report.splitlines() if x.startswith('| Method |'))
  for column in ('top-1 % [95% CI]', 'vs weak label [paired 95% CI]', 'SCR',
                 'noise ratio', 'not comparable', 'per seed'):
    assert column in header, column
  for key, variant in (('spl_b', 'spl_b'), ('spl_m', 'spl_m')):
    line = next(x for x in report.splitlines()
                if x.startswith(f"| {rows[key]['label']} |"))
    space = spaces[variant]
    assert f"| {space['scr']:.3f} |" in line
    assert f"| {space['noise_ratio']:.3f} |" in line
    assert f"| {space['num_classes']} |" in line
    assert bootstrap.format_interval(
        bootstrap.Interval(**rows[key]['accuracy'])) in line
    assert bootstrap.format_interval(
        bootstrap.Interval(**rows[key]['difference']), signed=True) in line
  assert '84.3 (Table 1)' in report and '84.5 (Table 2' in report
  assert ('two-level' in report) == (len(seeds) > 1)
  assert '62.5 %' in report  # The teacher's disagreement, beside 60%.
  # SCR-vs-K is copied only for the variant that has a K.
  plot_dir = os.path.join(out, 'plots')
  assert os.path.exists(os.path.join(plot_dir, 'spl_m_scr_vs_k.png'))
  assert not os.path.exists(os.path.join(plot_dir, 'spl_b_scr_vs_k.png'))
  for name in ('spl_b_confusion_matrix.png', 'spl_b_class_counts.png',
               'spl_m_class_counts.png', 'pretrain_curves.png',
               'finetune_curves.png'):
    assert os.path.getsize(os.path.join(plot_dir, name)) > 1000, name
    assert f'plots/{name}' in report
