r"""The trainer: `python -m spl.main --gin_file=... --model_dir=... --mode=...`.

Trains a teacher, predicts every web clip, pre-trains on SPL labels,
fine-tunes and evaluates, all driven by gin files (`gin_configs/`):

  python -m spl.main \
    --gin_file=gin_configs/runs/train_teacher.gin \
    --gin_bindings="TRAIN_FILES='/data/k200/train/clips-*.tfrecord'" \
    --model_dir=/tmp/teacher --mode=train_and_eval --strategy=mirrored

This module is the only one with flags and, with `spl/configurables.py`, the
only one that touches gin. It builds the distribution strategy
(`spl.strategies`) and nothing else distributed; `spl.train_lib.run` does the rest under its scope.
Multi-worker runs read the cluster from TF_CONFIG; `--tpu` names the TPU.
"""

import sys
from typing import Optional, Sequence

from absl import flags
from absl import logging
import gin
import tensorflow as tf

from spl import configurables
from spl import job
from spl import loop
from spl import strategies
from spl import train_lib
from tfrecords_tools import cli

STRATEGIES = strategies.STRATEGIES
build_strategy = strategies.build_strategy
CONFIG_FILENAME = 'config.gin'



def _define_flags(fv: flags.FlagValues) -> None:
  """Flags exist only when the module runs as a tool, never on import."""
  flags.DEFINE_multi_string('gin_file', [], 'Gin files, applied in order '
                            '(includes resolve against the working '
                            'directory, then the repository).',
                            flag_values=fv)
  flags.DEFINE_multi_string('gin_bindings', [],
                            'Gin bindings, applied after the files.',
                            flag_values=fv)
  flags.DEFINE_string('model_dir', None, 'Checkpoints, summaries, metrics.',
                      flag_values=fv)
  flags.DEFINE_enum('mode', 'train', train_lib.MODES, 'What to run.',
                    flag_values=fv)
  flags.DEFINE_enum('strategy', 'one_device', STRATEGIES,
                    'tf.distribute strategy.', flag_values=fv)
  flags.DEFINE_string('tpu', None, 'TPU name or address for --strategy=tpu.',
                      flag_values=fv)


TOOL = cli.Tool(name='spl.main', command='python -m spl.main', doc=__doc__,
                define_flags=_define_flags, required=('model_dir',))


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str]) -> None:
  """Parses gin files then bindings, finalised (`spl.job.parse_gin`).

  Gin checks, while parsing, that every configurable and parameter exists, so
  a typo fails here and not after an hour of training.
  """
  job.parse_gin(gin_files, gin_bindings, finalize=True)


def run(gin_files: Sequence[str], gin_bindings: Sequence[str], *,
        model_dir: str, mode: str, strategy: tf.distribute.Strategy):
  """Parses gin and runs the job; what `main` does after reading flags."""
  if not model_dir:
    raise ValueError('--model_dir must be set')
  if mode not in train_lib.MODES:
    raise ValueError(f'--mode must be one of {train_lib.MODES}, got {mode!r}')
  parse_gin(gin_files, gin_bindings)
  chief = loop.is_chief(strategy)

  def write_config():
    # Called once datasets, model, loss and optimizer exist, so the operative
    # config lists every parameter the run actually used.
    logging.info('operative gin config:\n%s', gin.operative_config_str())
    if chief:
      # eval / predict runs reuse a training model dir: keep its config.gin.
      job.write_operative_config(
          model_dir, CONFIG_FILENAME if mode in ('train', 'train_and_eval')
          else f'config_{mode}.gin')

  # `job.fn` in the gin files picks the trainer: SPL's `run` or `cpd_run`.
  return configurables.job()(mode=mode, model_dir=model_dir,
                             strategy=strategy, setup_done=write_config)


def main(args: cli.Args) -> int:
  """Runs the job of a parsed command line; returns the exit status."""
  fv = args.flags
  strategy = build_strategy(fv.strategy, fv.tpu)
  with job.config_errors_exit('spl.main'):
    result = run(fv.gin_file, fv.gin_bindings, model_dir=fv.model_dir,
                 mode=fv.mode, strategy=strategy)
  result.pop('model', None)
  logging.info('done: %s', result)
  return 0


def run_cli(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point: the exit status (`tfrecords_tools.cli` conventions)."""
  return cli.run(TOOL, main, argv)


if __name__ == '__main__':
  sys.exit(run_cli())
