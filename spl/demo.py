r"""The whole SPL pipeline on synthetic data, on a laptop, in minutes (`make demo`).

  python -m spl.demo --output_dir=/tmp/weakvideo_demo [--size=small|tiny]

generate synthetic videos -> write clip records (Beam) -> train the teacher on
the target set -> predict every web clip -> relabel (weak, teacher, agreement,
SPL-B, SPL-M, SPL-D) -> pre-train on each -> fine-tune on the target set ->
evaluate; then a results table in the shape of the SPL paper's Table 1, plots
and `report.md` in the output directory.

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
from typing import Dict, List, Optional, Sequence

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


def _plot_curves(curves: Dict[str, List[tuple]], path: str, title: str):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, points in curves.items():
    if points:
      ax.plot([p[0] for p in points], [p[1] for p in points], label=name)
  ax.set_xlabel('step')
  ax.set_ylabel('training loss')
  ax.set_title(title)
  ax.legend(fontsize=7)
  fig.savefig(path, dpi=90)
  plt.close(fig)


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
        predictions_pattern=ws('predictions', 'teacher_web', '*'),
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
      curves[f'pre-train {variant}'] = _read_scalars(
          os.path.join(pre_dir, 'train'), 'loss')
      init = [f"run.init_checkpoint='{pre_dir}'"]
    else:
      clock.stage('fine-tuning from scratch (no pre-training)')
    ft_dir = ws('models', f'finetune_{variant or "scratch"}')
    result = _trainer_run(
        train_gin, common + target + init +
        [f'run.train_steps={size.finetune_steps}'],
        model_dir=ft_dir, mode='train_and_eval')
    curves[f'fine-tune {variant or "scratch"}'] = _read_scalars(
        os.path.join(ft_dir, 'train'), 'loss')
    ev = result.get('eval', result)
    results.append({
        'method': label, 'variant': variant,
        'pretrain_classes': spaces[variant][0]['num_classes'] if variant else 0,
        'clip_top1': _metric(ev, 'clip_top_1', 'clip/top_1', 'top_1'),
        'video_top1': _metric(ev, 'video_top_1', 'video/top_1'),
    })

  attention = []
  if 'spl_b' in spaces:
    clock.stage('Grad-CAM attention maps of the SPL-B pre-trained network')
    attention = _attention_maps(output_dir)

  clock.stage('writing results, plots and report')
  _write_outputs(output_dir, results, curves, teacher, spaces, summaries, size,
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


def format_table(rows: List[Dict]) -> str:
  fmt = lambda v: '   -  ' if v is None else f'{100 * v:6.1f}'  # pylint: disable=unnecessary-lambda-assignment
  lines = [f'{"Method":28s} {"pre-train classes":>17s} {"clip top-1":>10s} '
           f'{"video top-1":>11s}', '-' * 70]
  for r in rows:
    lines.append(f"{r['method']:28s} {r['pretrain_classes'] or '-':>17} "
                 f"{fmt(r['clip_top1']):>10s} {fmt(r['video_top1']):>11s}")
  return '\n'.join(lines)


def _write_outputs(output_dir, rows, curves, teacher, spaces, summaries, size,
                   attention=()):
  table = format_table(rows)
  print('\nResults (shape of the SPL paper\'s Table 1; toy scale):\n' + table)
  with open(os.path.join(output_dir, 'results.json'), 'w') as f:
    json.dump({'rows': rows, 'teacher': {
        k: v for k, v in teacher.items() if isinstance(v, (int, float, str))},
               'size': dataclasses.asdict(size)}, f, indent=1, default=str)
  plots = os.path.join(output_dir, 'plots')
  os.makedirs(plots, exist_ok=True)
  _plot_curves({k: v for k, v in curves.items() if k.startswith('pre-train')},
               os.path.join(plots, 'pretrain_curves.png'), 'pre-training')
  _plot_curves({k: v for k, v in curves.items() if k.startswith('fine-tune')},
               os.path.join(plots, 'finetune_curves.png'), 'fine-tuning')
  copied = []
  for variant in spaces:
    for name in ('confusion_matrix.png', 'class_counts.png', 'scr_vs_k.png'):
      src = os.path.join(output_dir, 'label_spaces', variant, name)
      if os.path.exists(src) and (variant == 'spl_b' or name != 'scr_vs_k.png'
                                  and variant in ('spl_m', 'spl_b')):
        dst = os.path.join(plots, f'{variant}_{name}')
        shutil.copy(src, dst)
        copied.append(os.path.relpath(dst, output_dir))
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
      '```', table, '```', '',
      '## Plots', '',
      '![pre-training](plots/pretrain_curves.png)',
      '![fine-tuning](plots/finetune_curves.png)',
  ] + [f'![{p}]({p})' for p in copied]
  if attention:
    report += ['', '## Grad-CAM (SPL-B pre-trained network, top-1 class)', '']
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
