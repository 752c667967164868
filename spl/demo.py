r"""The whole SPL pipeline on synthetic data, on a laptop, in minutes (`make demo`).

  python -m spl.demo --output_dir=/tmp/weakvideo_demo [--size=small|tiny]

generate synthetic videos -> write clip records (Beam) -> train the teacher on
the target set -> predict every web clip -> relabel (weak, teacher, agreement,
SPL-B, SPL-M, SPL-D) -> pre-train on each -> fine-tune on the target set ->
evaluate; then a results table in the shape of the SPL paper's Table 1 (each
row's label space: classes, SCR, noise ratio; the teacher's accuracy above
it), plots and `report.md` in the output directory (`results.json` holds the
same numbers). Loss plots divide each run's loss by ln C of its label space,
so spaces of different sizes share one axis.

Every stage is the real tool users run at scale (`write_clips`, `spl.main`'s
`run`, `relabel`), called in-process so TensorFlow starts once. Numbers are
whatever this run measures on toy data: they prove the pipeline runs end to
end, not the paper's claims.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging as absl_logging

FLAGS = flags.FLAGS

# (row label, relabel variant or None for no pre-training, K for spl_m/d).
TABLE1_ROWS = (
    ('No pre-training', None, None),
    ('Weak label train', 'weak', None),
    ('Teacher prediction train', 'teacher', None),
    ('Agreement filtering', 'agreement', None),
    ('SPL-B', 'spl_b', None),
    ('SPL-M', 'spl_m', 2),
    ('SPL-D', 'spl_d', 2),
)
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_GIN = os.path.join(_REPO, 'gin_configs')


@dataclasses.dataclass
class DemoSize:
  num_classes: int = 4
  target_videos_per_class: int = 9  # 2/3 train, 1/3 validation.
  web_videos_per_class: int = 8
  teacher_steps: int = 600
  pretrain_steps: int = 300
  finetune_steps: int = 300
  batch_size: int = 16
  variants: Sequence[str] = ('weak', 'teacher', 'agreement', 'spl_b', 'spl_m',
                             'spl_d')


SIZES = {
    'small': DemoSize(),
    # The CI-sized run of tests/test_demo.py.
    'tiny': DemoSize(num_classes=3, target_videos_per_class=3,
                     web_videos_per_class=3, teacher_steps=20,
                     pretrain_steps=10, finetune_steps=10, batch_size=8,
                     variants=('weak', 'spl_b')),
}


class _Clock:
  """Prints numbered stages with elapsed time (the demo's progress output)."""

  def __init__(self, total: int):
    self.t0 = time.monotonic()
    self.n = 0
    self.total = total

  def stage(self, msg: str) -> None:
    self.n += 1
    print(f'\n[{self.n}/{self.total} | {time.monotonic() - self.t0:5.0f} s] '
          f'{msg}', flush=True)


def _split_target(manifest: str, out_dir: str) -> Dict[str, str]:
  """Splits the target manifest by video into train (2/3) and val (1/3)."""
  with open(manifest, newline='', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  src = os.path.dirname(manifest)
  splits = {'train': [], 'val': []}
  for i, r in enumerate(sorted(rows, key=lambda r: r['video_id'])):
    r = dict(r, path=os.path.join(src, r['path']))
    splits['val' if i % 3 == 2 else 'train'].append(r)
  paths = {}
  for name, rs in splits.items():
    path = os.path.join(out_dir, f'target_{name}.csv')
    with open(path, 'w', newline='', encoding='utf-8') as f:
      w = csv.DictWriter(f, fieldnames=list(rs[0]))
      w.writeheader()
      w.writerows(rs)
    paths[name] = path
  return paths


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


def _common_bindings(size: DemoSize) -> List[str]:
  return [
      # The paper's runs at toy scale: a small network from scratch (no
      # ImageNet for tiny3d), a fixed global batch, clips of the demo size.
      f'GLOBAL_BATCH_SIZE={size.batch_size}',
      'run.global_batch_size=%GLOBAL_BATCH_SIZE',
      'run.per_replica_batch_size=None', 'IMAGENET_CHECKPOINT=None',
      'NUM_FRAMES=8', 'STRIDE=2', 'CROP_SIZE=32', 'SHORT_SIDE=36',
      'EVAL_NUM_FRAMES=8', 'EVAL_CROP_SIZE=32',
      "build_classifier.backbone='tiny3d'",
      # Wider than the test default: the classes differ only by motion.
      'build_classifier.filters=(16, 32)',
      'build_classifier.dropout_rate=0.0',
      'build_classifier.projection=None',
      'run.weight_decay=1e-4',
      'build_learning_rate.base_learning_rate=0.05',
      f'build_learning_rate.base_batch_size={size.batch_size}',
      'build_learning_rate.warmup_epochs=0',
      'loop.steps_per_loop=10', 'loop.checkpoint_every_steps=50',
      'loop.max_checkpoints_to_keep=1', 'run.mixed_precision=None',
      'eval/make_dataset.num_test_clips=2', 'eval/make_dataset.num_test_crops=1',
      'train/make_dataset.shuffle_buffer_size=64',
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


def _metric(result: Dict, *names: str) -> Optional[float]:
  for n in names:
    if n in result:
      return float(result[n])
  return None


def prepare_data(output_dir: str, clock: _Clock, *, num_classes: int,
                 target_videos_per_class: int, web_videos_per_class: int,
                 seed: int = 0, num_shards: int = 2):
  """Synthetic videos -> clip records of target train/val and web splits.

  The first two stages of both demos (SPL here, CPD in cpd/demo.py).

  Returns:
    (writer summaries by split, manifest paths by split, a function giving
    the shard pattern of a split).
  """
  from tfrecords_tools import schema  # pylint: disable=g-import-not-at-top
  from tfrecords_tools import synthetic  # pylint: disable=g-import-not-at-top
  from tfrecords_tools import write_clips  # pylint: disable=g-import-not-at-top
  ws = lambda *p: os.path.join(output_dir, *p)  # pylint: disable=unnecessary-lambda-assignment
  clock.stage('generating synthetic target and web videos (with titles)')
  gen = synthetic.generate(ws('videos'), synthetic.SyntheticConfig(
      num_classes=num_classes, target_videos_per_class=target_videos_per_class,
      web_videos_per_class=web_videos_per_class, seed=seed))
  manifests = _split_target(gen['target_manifest'], ws('videos'))
  manifests['web'] = gen['web_manifest']

  clock.stage('writing clip records (Beam clip writer)')
  summaries = {}
  for split in ('train', 'val', 'web'):
    summaries[split] = write_clips.run_writer(
        manifests[split], write_clips.WriterConfig(
            output_dir=ws('records', split), num_shards=num_shards,
            clip_seconds=2.0, fps=10, short_side=40))
    print(f"  {split}: {summaries[split]['clips']} clips from "
          f"{summaries[split]['videos_written']} videos")
  pattern = lambda split: ws('records', split, schema.shard_pattern())  # pylint: disable=unnecessary-lambda-assignment
  return summaries, manifests, pattern


def run_demo(output_dir: str, size: DemoSize, *, seed: int = 0) -> Dict:
  """Runs the pipeline; returns the results table rows (also in results.json)."""
  from tfrecords_tools import label_spaces  # pylint: disable=g-import-not-at-top
  from tfrecords_tools import relabel  # pylint: disable=g-import-not-at-top
  from tfrecords_tools import schema  # pylint: disable=g-import-not-at-top

  os.makedirs(output_dir, exist_ok=True)
  variants = [v for _, v, _ in TABLE1_ROWS if v in size.variants]
  clock = _Clock(total=5 + 2 * len(variants) + 1 + ('spl_b' in variants))
  ws = lambda *p: os.path.join(output_dir, *p)  # pylint: disable=unnecessary-lambda-assignment

  summaries, manifests, pattern = prepare_data(
      output_dir, clock, num_classes=size.num_classes,
      target_videos_per_class=size.target_videos_per_class,
      web_videos_per_class=size.web_videos_per_class, seed=seed)
  n = size.num_classes
  common = _common_bindings(size)
  train_gin = [os.path.join(_GIN, 'runs', 'train_teacher.gin')]
  target = [f"TRAIN_FILES='{pattern('train')}'",
            f"EVAL_FILES='{pattern('val')}'",
            f"NUM_TRAIN_EXAMPLES={summaries['train']['clips']}",
            f'NUM_CLASSES={n}']

  clock.stage(f'training the teacher on the target set ({size.teacher_steps} '
              'steps)')
  teacher = _trainer_run(
      train_gin, common + target + [f'run.train_steps={size.teacher_steps}'],
      model_dir=ws('models', 'teacher'), mode='train_and_eval')

  clock.stage('teacher inference on every web clip')
  _trainer_run(
      [os.path.join(_GIN, 'runs', 'predict_teacher.gin')],
      common + [f"PREDICT_FILES='{pattern('web')}'", f'NUM_CLASSES={n}',
                f"PREDICTIONS_DIR='{ws('predictions', 'teacher_web')}'"],
      model_dir=ws('models', 'teacher'), mode='predict')

  spaces = {}
  for variant in variants:
    k = dict((v, k) for _, v, k in TABLE1_ROWS)[variant]
    clock.stage(f'relabelling web clips: {variant}' + (f' (K={k})' if k else ''))
    out = ws('label_spaces', variant)
    if os.path.exists(out):
      shutil.rmtree(out)
    stats = relabel.relabel(
        records_pattern=pattern('web'),
        predictions_pattern=ws('predictions', 'teacher_web', 'predictions-*'),
        variant=variant, output_dir=out, k=k)
    space = label_spaces.load_label_space(
        os.path.join(out, schema.LABEL_SPACE_FILENAME))
    spaces[variant] = (space, stats)
    print(f"  {space['num_classes']} classes, SCR {space['scr']:.2f}, "
          f"{stats['clips']['written']} clips kept, "
          f"{stats['clips']['dropped']} dropped")

  results = []
  curves = {}
  for label, variant, _ in TABLE1_ROWS:
    if variant is not None and variant not in variants:
      continue
    init = []
    if variant is not None:
      space, _ = spaces[variant]
      clock.stage(f'pre-training on {variant} labels, then fine-tuning')
      pre_dir = ws('models', f'pretrain_{variant}')
      _trainer_run(
          train_gin, common + [
              f"TRAIN_FILES='{ws('label_spaces', variant, schema.shard_pattern())}'",
              'EVAL_FILES=None',
              f"NUM_TRAIN_EXAMPLES={max(1, int(space['num_clips']))}",
              f"NUM_CLASSES={space['num_classes']}",
              "run.label_space_path="
              f"'{ws('label_spaces', variant, schema.LABEL_SPACE_FILENAME)}'",
              f'run.train_steps={size.pretrain_steps}'],
          model_dir=pre_dir, mode='train')
      curves[f'pre-train {variant}'] = read_loss_curve(
          pre_dir, variant, space['num_classes'])
      init = [f"run.init_checkpoint='{pre_dir}'"]
    else:
      clock.stage('fine-tuning from scratch (no pre-training)')
    ft_dir = ws('models', f'finetune_{variant or "scratch"}')
    result = _trainer_run(
        train_gin, common + target + init +
        [f'run.train_steps={size.finetune_steps}'],
        model_dir=ft_dir, mode='train_and_eval')
    curves[f'fine-tune {variant or "scratch"}'] = read_loss_curve(
        ft_dir, f'from {variant}' if variant else 'from scratch', n)
    ev = result.get('eval', result)
    space = spaces[variant][0] if variant else None
    results.append({
        'method': label, 'variant': variant,
        'pretrain_classes': space['num_classes'] if space else 0,
        'pretrain_scr': space['scr'] if space else None,
        'pretrain_noise_ratio': space['noise_ratio'] if space else None,
        'clip_top1': _metric(ev, 'clip_top_1', 'clip/top_1', 'top_1'),
        'video_top1': _metric(ev, 'video_top_1', 'video/top_1'),
        'val_clips': ev.get('num_clips'), 'val_videos': ev.get('num_videos'),
    })

  attention = []
  if 'spl_b' in spaces:
    clock.stage('Grad-CAM attention maps of the SPL-B pre-trained network')
    attention = _attention_maps(output_dir)

  clock.stage('writing results, plots and report')
  write_outputs(output_dir, results, curves, teacher, spaces, summaries, size,
                 attention)
  print(f'\n==> done in {time.monotonic() - clock.t0:.0f} s; report: '
        f'{ws("report.md")}')
  return {'rows': results}


def _attention_maps(output_dir: str, num_clips: int = 3) -> List[str]:
  """Grad-CAM strips of a few web clips for their top SPL-B class (Fig. 6)."""
  import gin  # pylint: disable=g-import-not-at-top
  from spl import attention_maps  # pylint: disable=g-import-not-at-top
  from tfrecords_tools import schema  # pylint: disable=g-import-not-at-top
  space_dir = os.path.join(output_dir, 'label_spaces', 'spl_b')
  out = os.path.join(output_dir, 'plots', 'attention_spl_b')
  gin.clear_config()
  try:
    written = attention_maps.run(
        output_dir=out,
        records_pattern=os.path.join(space_dir, schema.shard_pattern()),
        model_dir=os.path.join(output_dir, 'models', 'pretrain_spl_b'),
        num_clips=num_clips,
        label_space=os.path.join(space_dir, schema.LABEL_SPACE_FILENAME))
  finally:
    gin.clear_config()
  paths = sorted(glob.glob(os.path.join(out, '*.png')))
  print(f'  {len(written)} strips in {out}')
  return [os.path.relpath(p, output_dir) for p in paths]


def one_clip_per_video(rows: Sequence[Dict]) -> bool:
  """Whether every row was evaluated on one clip per video.

  Then a video's prediction is its only clip's, and video top-1 equals clip
  top-1: the report shows one column and says why.
  """
  return bool(rows) and all(
      r.get('val_clips') is not None and r.get('val_clips') == r.get(
          'val_videos') for r in rows)


def format_table(rows: List[Dict]) -> str:
  """The results table: pre-training label space, then target accuracy."""
  def pct(v):
    return '-' if v is None else f'{100 * v:.1f}'

  def ratio(v):
    return '-' if v is None else f'{v:.3f}'

  merged = one_clip_per_video(rows)
  acc_cols = ['top-1 %'] if merged else ['clip top-1 %', 'video top-1 %']
  header = ['Method', 'pre-train classes', 'SCR', 'noise ratio'] + acc_cols
  body = []
  for r in rows:
    acc = ([pct(r['clip_top1'])] if merged else
           [pct(r['clip_top1']), pct(r['video_top1'])])
    body.append([r['method'], str(r['pretrain_classes'] or '-'),
                 ratio(r.get('pretrain_scr')),
                 ratio(r.get('pretrain_noise_ratio'))] + acc)
  widths = [max(len(x) for x in col) for col in zip(header, *body)]

  def fmt(cells):
    return '  '.join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths)))

  return '\n'.join([fmt(header), '-' * len(fmt(header))] +
                    [fmt(b) for b in body])


def _scalars(d: Dict[str, Any]) -> Dict[str, Any]:
  """The JSON-able scalars of a run's result, nested dicts of them kept."""
  out = {}
  for k, v in d.items():
    if isinstance(v, (bool, int, float, str)) or v is None:
      out[k] = v
    elif isinstance(v, dict):
      out[k] = _scalars(v)
  return out


def teacher_line(teacher: Dict[str, Any], num_classes: int,
                 merged: bool) -> str:
  """The report's sentence on the teacher's validation accuracy."""
  ev = teacher.get('eval') or {}
  clip, video = ev.get('clip/top_1'), ev.get('video/top_1')
  if clip is None:
    return 'Teacher: no validation result was recorded.'
  acc = (f'top-1 {100 * clip:.1f} %' if merged or video is None else
         f'clip top-1 {100 * clip:.1f} %, video top-1 {100 * video:.1f} %')
  return (f"Teacher (trained on the target set, {num_classes} classes, "
          f"{teacher.get('step', '?')} steps): {acc} on the "
          f"{ev.get('num_clips', '?')} validation clips; its predictions on "
          f"the web clips make the label spaces below.")


def _copy_label_space_plots(output_dir: str, variants: Sequence[str]
                            ) -> List[tuple]:
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
    src = os.path.join(output_dir, 'label_spaces', variant, name)
    if os.path.exists(src):
      dst = os.path.join(output_dir, 'plots', f'{variant}_{name}')
      shutil.copy(src, dst)
      copied.append((os.path.relpath(dst, output_dir), note))
  return copied


def write_outputs(output_dir, rows, curves, teacher, spaces, summaries, size,
                   attention=()):
  merged = one_clip_per_video(rows)
  table = format_table(rows)
  teacher_text = teacher_line(teacher, size.num_classes, merged)
  print('\nResults (shape of the SPL paper\'s Table 1; toy scale):\n' +
        teacher_text + '\n' + table)
  label_space_info = {
      variant: {k: space.get(k) for k in (
          'num_classes', 'k', 'scr', 'noise_ratio', 'num_clips',
          'num_dropped_clips')}
      for variant, (space, _) in spaces.items()}
  with open(os.path.join(output_dir, 'results.json'), 'w') as f:
    json.dump({'rows': rows, 'teacher': _scalars(teacher),
               'label_spaces': label_space_info,
               'one_clip_per_video': merged,
               'size': dataclasses.asdict(size)}, f, indent=1, default=str)
  plots = os.path.join(output_dir, 'plots')
  os.makedirs(plots, exist_ok=True)
  write_loss_curves(
      os.path.join(plots, 'pretrain_curves.png'),
      [c for k, c in curves.items() if k.startswith('pre-train')],
      'pre-training on the web clips (one curve per label space)',
      note='' if any(c.validation for k, c in curves.items()
                     if k.startswith('pre-train')) else
      'no validation curve: pre-training has no validation set (web clips '
      'only)')
  write_loss_curves(
      os.path.join(plots, 'finetune_curves.png'),
      [c for k, c in curves.items() if k.startswith('fine-tune')],
      'fine-tuning on the target set (one curve per initialisation)',
      note='validation: the target validation clips, at each checkpoint')
  copied = _copy_label_space_plots(output_dir, list(spaces))
  if merged:
    clips = rows[0]['val_clips']
    top1_note = (f'Validation holds one clip per video ({clips} clips, '
                 f'{clips} videos), so video top-1 equals clip top-1: one '
                 'top-1 column is shown.')
  else:
    top1_note = ('Clip top-1 scores each validation clip; video top-1 '
                 'averages the clips of a video first.')
  report = [
      '# SPL demo report', '',
      f"Scale: {size.num_classes} synthetic action classes; target set "
      f"{summaries['train']['clips']} train / {summaries['val']['clips']} "
      f"validation clips; {summaries['web']['clips']} web clips from "
      f"{summaries['web']['videos_written']} query-retrieved videos; tiny3d "
      f"network, {size.pretrain_steps} pre-training and "
      f"{size.finetune_steps} fine-tuning steps on CPU.", '',
      '**This toy scale proves that the pipeline runs end to end; it does not '
      'test the paper\'s claims.** The numbers are whatever this run measured '
      '(nothing is tuned); differences between rows at this scale are mostly '
      'noise.', '',
      teacher_text, '',
      '```', table, '```', '',
      'Pre-train classes, SCR (share of web clips the label space keeps in '
      'its own classes) and noise ratio (share of web clips whose teacher '
      'prediction differs from the weak label; a property of the web data, '
      'so the same for every label space) describe the label space each row '
      'pre-trained on. ' + top1_note, '',
      '## Plots', '',
      'Losses are divided by ln C (C = the classes of the run\'s label '
      'space), so label spaces of different sizes share one axis: 1 is a '
      'uniform guess.', '',
      '![pre-training](plots/pretrain_curves.png)',
      '![fine-tuning](plots/finetune_curves.png)',
  ]
  for p, note in copied:
    report += ['', note, f'![{p}]({p})']
  if attention:
    report += ['', '## Grad-CAM (SPL-B pre-trained network, top-1 class)', '',
               'Each map is divided by its maximum over its clip (colour bar: '
               'heat / clip max).', '']
    report += [f'![{p}]({p})' for p in attention]
  with open(os.path.join(output_dir, 'report.md'), 'w') as f:
    f.write('\n'.join(report) + '\n')


def _define_flags():
  flags.DEFINE_string('output_dir', '/tmp/weakvideo_demo', 'Demo workspace.')
  flags.DEFINE_enum('size', 'small', list(SIZES), 'Demo size.')
  flags.DEFINE_integer('seed', 0, 'Seed of the synthetic data.')


def main(argv: Sequence[str]) -> int:
  del argv
  absl_logging.set_verbosity(absl_logging.ERROR)
  run_demo(FLAGS.output_dir, SIZES[FLAGS.size], seed=FLAGS.seed)
  return 0


if __name__ == '__main__':
  _define_flags()
  app.run(lambda argv: sys.exit(main(argv)))
