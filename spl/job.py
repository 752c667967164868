"""How every gin-driven entry point starts a job, and records what it ran.

`spl.main` (training, evaluation, prediction, CPD pre-training),
`cpd.evaluate` and `spl.attention_maps` parse their gin files here, the same
way: files may be given relative to the working directory or to the
repository root (gin `include`s resolve against the root too, so a command
works from any directory); a missing file, an unknown configurable or
parameter, or a syntax error fails at once with a `ValueError` naming the
files and bindings, before anything is built. Each then writes the operative
config (every parameter the run actually used) next to its outputs with
`write_operative_config`.
"""

import contextlib
import os
from typing import Iterator, Sequence

import gin
import tensorflow as tf

from tfrecords_tools import atomic_files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def _working_directory(path: str) -> Iterator[None]:
  previous = os.getcwd()
  os.chdir(path)
  try:
    yield
  finally:
    os.chdir(previous)


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str], *,
              defaults: Sequence[str] = (), finalize: bool = True,
              clear: bool = False) -> None:
  """Parses `defaults` (bindings), then the files, then `gin_bindings`.

  Args:
    gin_files: gin files, applied in order.
    gin_bindings: bindings applied after the files.
    defaults: bindings applied before the files (so the files override
      them), e.g. `cpd.configurables.DEFAULT_BINDINGS`.
    finalize: run gin's checks for unsatisfied `%gin.REQUIRED` macros and
      unknown references now (off where a tool reads a training run's files
      whose data macros only the trainer needs).
    clear: clear any gin config first.

  Raises:
    ValueError: naming a missing file, or the files and bindings of a config
      gin refuses, with gin's message.
  """
  files = []
  for path in gin_files:
    if tf.io.gfile.exists(path):
      # The caller's relative paths are relative to its working directory.
      files.append(path if '://' in path else os.path.abspath(path))
    elif tf.io.gfile.exists(os.path.join(REPO_ROOT, path)):
      files.append(os.path.join(REPO_ROOT, path))
    else:
      raise ValueError(f'--gin_file {path!r} does not exist')
  if clear:
    gin.clear_config()
  gin.add_config_file_search_path(REPO_ROOT)
  try:
    # Gin resolves `include 'gin_configs/...'` against the working directory
    # first, and from elsewhere its package-path reader fails with a bare
    # TypeError on the `gin_configs` folder: parse from the repository root.
    with _working_directory(REPO_ROOT):
      if defaults:
        gin.parse_config_files_and_bindings([], list(defaults),
                                            finalize_config=False)
      gin.parse_config_files_and_bindings(
          files, list(gin_bindings), finalize_config=finalize)
  except (ValueError, SyntaxError, KeyError, IOError, TypeError) as e:
    raise ValueError(f'bad gin config (files {list(gin_files)}, bindings '
                     f'{list(gin_bindings)}): {e}') from e


def write_operative_config(directory: str, name: str,
                           operative: bool = True) -> str:
  """Writes gin's config to `directory/name` (atomically); returns the path.

  With `operative` (jobs that call their configurables) it is gin's operative
  config: call it once the job has built what it runs, so it lists every
  parameter the job used. Tools that only read values (`gin.query_parameter`)
  write the whole parsed config (`operative=False`).
  """
  return atomic_files.record_run_config(
      directory, name,
      gin.operative_config_str() if operative else gin.config_str())
