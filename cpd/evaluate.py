r"""CPD evaluation: `python -m cpd.evaluate --protocol=... --output_dir=...`.

Protocols (each writes `results_<protocol>.json` into --output_dir and prints
a short table):

  extract     features of a checkpoint's video model over clip records
              (`cpd.features`: 256-d embedding + pooled backbone features,
              views averaged, one .npz per shard, resumable);
  knn         kNN (cosine, k=25; `knn_classify.weighting='exp'`, k=200 for
              the weighted variant) from --train_features to --test_features;
  linear      BN + FC probe on frozen features (Adam 1e-3, x0.1 / 10 epochs,
              30 epochs);
  zero_shot   class names (label_map.json next to the records, or
              --class_names_file) through the checkpoint's text encoder,
              nearest by cosine; plus the class-subset protocol;
  retrieval   video-text R@1/5/10 and median rank of extracted features
              (extract with a text encoder: captions are embedded too);
  low_label   writes the seeded per-class subset of --train_files to
              --output_dir (then fine-tune with gin_configs/runs/
              cpd_finetune.gin and TRAIN_FILES pointing there).

Example (features of a CPD checkpoint, then kNN):

  python -m cpd.evaluate --protocol=extract \
    --gin_bindings="build_video_model.backbone='slowonly_r34'" \
    --gin_bindings="build_video_model.checkpoint='/tmp/cpd/ckpt-100000'" \
    --files='/data/ucf/train/clips-*' \
    --output_dir=/tmp/ucf_train_features --strategy=mirrored
  python -m cpd.evaluate --protocol=knn \
    --train_features=/tmp/ucf_train_features \
    --test_features=/tmp/ucf_test_features --output_dir=/tmp/ucf_knn

Hyper-parameters are gin-configurable (`cpd/configurables.py` names), e.g.
--gin_bindings="knn_classify.weighting='exp'" --gin_bindings="knn_classify.k=200".
Flags are defined only when this module runs as the entry point; the
protocols themselves are library calls in `cpd/protocols.py`.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, Optional, Sequence


from absl import flags

from cpd import configurables
from cpd import protocols
from spl import job
from spl import strategies
from tfrecords_tools import cli


def format_table(result: Dict[str, Any]) -> str:
  """The scalar results as a two-column console table."""
  rows = [(k, v) for k, v in sorted(result.items())
          if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
  sub = result.get('class_subsets')
  if isinstance(sub, dict):
    rows += [(f'class_subsets/{k}', sub[k]) for k in ('top_1_mean',
                                                      'top_1_std')]
  width = max(len(k) for k, _ in rows) if rows else 0
  lines = [f'{"metric":<{width}}  value', '-' * (width + 12)]
  for k, v in rows:
    lines.append(f'{k:<{width}}  {v:.4f}' if isinstance(v, float)
                 else f'{k:<{width}}  {v}')
  return '\n'.join(lines)


def _main(args: cli.Args) -> int:
  f = args.flags
  # Defaults first, so that the experiment files (and then the command line)
  # override them (e.g. the paper's 8 frames at stride 4 of eval_common.gin).
  with job.config_errors_exit('cpd.evaluate'):
    job.parse_gin(f.gin_file, f.gin_bindings,
                  defaults=configurables.DEFAULT_BINDINGS, finalize=True)
  strategy = strategies.build_strategy(f.strategy)
  kwargs = {}
  for name in ('files', 'train_features', 'test_features'):
    if getattr(f, name):
      kwargs[name] = getattr(f, name)
  result = configurables.run_protocol(
      protocol=f.protocol, output_dir=f.output_dir, strategy=strategy,
      **kwargs)
  job.write_operative_config(f.output_dir, f'config_{f.protocol}.gin')
  print(f'CPD {f.protocol}: {json.dumps({"output_dir": f.output_dir})}')
  print(format_table(result))
  return 0


def _define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_multi_string('gin_file', [], 'Gin files, applied in order.',
                            flag_values=fv)
  flags.DEFINE_multi_string('gin_bindings', [], 'Gin bindings, after files.',
                            flag_values=fv)
  flags.DEFINE_enum('protocol', None, protocols.PROTOCOLS, 'What to run.',
                    flag_values=fv)
  flags.DEFINE_string('output_dir', None, 'Results (and features/records).',
                      flag_values=fv)
  flags.DEFINE_enum('strategy', 'one_device', protocols.STRATEGIES,
                    'tf.distribute strategy for extract.', flag_values=fv)
  flags.DEFINE_string('files', None, 'Clip-record glob (extract, low_label, '
                      'zero_shot label map).', flag_values=fv)
  flags.DEFINE_string('train_features', None, 'Feature dir (knn, linear).',
                      flag_values=fv)
  flags.DEFINE_string('test_features', None, 'Feature dir.', flag_values=fv)


TOOL = cli.Tool(name='cpd.evaluate', command='python -m cpd.evaluate',
                doc=__doc__, define_flags=_define_flags,
                required=('protocol', 'output_dir'))


def run(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point: the exit status (`tfrecords_tools.cli` conventions)."""
  return cli.run(TOOL, _main, argv)


if __name__ == '__main__':
  sys.exit(run())
