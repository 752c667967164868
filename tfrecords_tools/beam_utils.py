"""Beam pipeline construction shared by the batch jobs (writer, relabeller)."""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tfrecords_tools import atomic_files
from tfrecords_tools import schema


def make_pipeline(runner: str = 'DirectRunner', direct_num_workers: int = 1,
                  extra_args: Sequence[str] = (),
                  running_mode: Optional[str] = 'multi_processing'
                  ) -> beam.Pipeline:
  """A pipeline on `runner` with the Beam options `extra_args`.

  The one recipe of every Beam job here (writer, relabeller, holdout).
  `DirectRunner` means Beam's in-process FnApiRunner, with
  `direct_num_workers` parallel workers in `running_mode` when > 1 (a
  `--direct_running_mode=...` in `extra_args` wins; None leaves Beam's
  default). Beam 2.77's DirectRunner would first try to download the Prism
  runner binary from GitHub, which fails (and stalls) without network, so we
  go to the FnApiRunner directly, handing it the pipeline options so that
  its workers see them as the DirectRunner's would. Its worker processes
  (`multi_processing`) run `tfrecords_tools.beam_worker`: Beam's worker with
  readable logs.

  The tools check `extra_args` before they get here
  (`cli.check_beam_options`): what Beam does not know, it would only log
  as "Discarding unparseable args".

  Args:
    runner: Beam runner name (DirectRunner, DataflowRunner, FlinkRunner, ...).
    direct_num_workers: parallel workers for the DirectRunner.
    extra_args: further Beam pipeline options, e.g. `--project=...`.
    running_mode: `multi_processing` (a Python process per worker),
      `multi_threading` (threads of this process; enough when the heavy
      work runs in child processes of its own, as the writer's decoding) or
      None (Beam's default).
  """
  if direct_num_workers < 1:
    raise ValueError(
        f'`direct_num_workers` must be >= 1, got {direct_num_workers}')
  # Beam logs every string type hint at INFO; keep job logs readable.
  logging.getLogger('apache_beam.typehints').setLevel(logging.WARNING)
  args = list(extra_args)
  if runner in ('DirectRunner', 'direct'):
    # pylint: disable=g-import-not-at-top
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability import portable_runner
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    # pylint: enable=g-import-not-at-top
    args += [f'--direct_num_workers={direct_num_workers}']
    if running_mode and direct_num_workers > 1 and not any(
        a.startswith('--direct_running_mode') for a in args):
      args += [f'--direct_running_mode={running_mode}']
    options = PipelineOptions(args)
    encoded = portable_runner.JobServiceHandle.encode_pipeline_options(
        options.get_all_options())
    return beam.Pipeline(
        runner=_fn_api_runner(
            provision_info=fn_runner.ExtendedProvisionInfo(
                beam_provision_api_pb2.ProvisionInfo(
                    pipeline_options=encoded))),
        options=options)
  return beam.Pipeline(options=PipelineOptions(args + [f'--runner={runner}']))


def _fn_api_runner(**kwargs):
  """A `FnApiRunner` whose worker processes run `beam_worker`."""
  # pylint: disable=g-import-not-at-top
  import shlex
  import sys
  from apache_beam.runners.portability.fn_api_runner import fn_runner
  from apache_beam.transforms import environments
  # pylint: enable=g-import-not-at-top

  class FnApiRunner(fn_runner.FnApiRunner):
    """`run_pipeline` sets Beam's worker command for multi_processing mode;
    the setter puts ours in its place (the same worker, see `beam_worker`)."""

    @property
    def _default_environment(self):
      return self._environment

    @_default_environment.setter
    def _default_environment(self, environment):
      if isinstance(environment, environments.SubprocessSDKEnvironment):
        environment = environments.SubprocessSDKEnvironment.from_command_string(
            f'{shlex.quote(sys.executable)} -m tfrecords_tools.beam_worker')
      self._environment = environment

  return FnApiRunner(**kwargs)


# ---- Files through Beam's FileSystems ----
# The batch jobs write through `apache_beam.io.filesystems.FileSystems`
# rather than `tf.io.gfile`: the same paths work (local, gs:// with
# apache-beam[gcp], hdfs://, s3:// with the matching extra), and a worker
# never imports TensorFlow just to write files (seconds of start-up each).

def _fs():
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  return FileSystems


def _uncompressed():
  from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=g-import-not-at-top
  return CompressionTypes.UNCOMPRESSED


def join(base: str, *parts: str) -> str:
  return _fs().join(base, *parts)


def create(path: str):
  """A binary write channel (parent directories made on local disk)."""
  return _fs().create(path, compression_type=_uncompressed())


def open_file(path: str):
  """A seekable binary read channel."""
  return _fs().open(path, compression_type=_uncompressed())


def exists(path: str) -> bool:
  return _fs().exists(path)


def total_size(paths: Sequence[str]) -> Optional[int]:
  """The summed size of `paths` in bytes, or None if it cannot be had."""
  try:
    results = _fs().match(list(paths))
  except Exception:  # pylint: disable=broad-except
    return None  # Only progress lines use it: never fail a job for it.
  return sum(m.size_in_bytes for r in results for m in r.metadata_list)


def makedirs(path: str) -> None:
  """Creates `path` and its parents; no-op when it exists (or on object stores)."""
  atomic_files.BEAM.makedirs(path)


def rename(src: str, dst: str) -> None:
  """Moves `src` to `dst`, replacing `dst` (atomic on a local filesystem)."""
  _fs().rename([src], [dst])


def delete_tree(path: str) -> None:
  """Deletes a directory and everything under it; missing is fine."""
  fs = _fs()
  if fs.get_scheme(path) is None:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(path, ignore_errors=True)
    return
  files = [m.path for r in fs.match([path.rstrip('/') + '/**'])
           for m in r.metadata_list]
  if files:
    fs.delete(files)


def write_bytes_atomic(path: str, data: bytes) -> None:
  """Writes `path` via a temporary name, so `path` is never partial."""
  atomic_files.write(path, data, atomic_files.BEAM)


def write_json_atomic(path: str, obj) -> None:
  """JSON as `records.write_json_atomic` writes it, without TensorFlow."""
  write_bytes_atomic(path, schema.json_text(obj).encode('utf-8'))


def read_bytes(path: str) -> bytes:
  with open_file(path) as f:
    return f.read()


def write_run_config(output_dir: str, tool: str, flag_values,
                     flag_names: Sequence[str],
                     beam_args: Sequence[str] = ()) -> str:
  """Records how a Beam tool was run: `output_dir/config_<tool>.flags`.

  The Beam tools' counterpart of the gin entry points' operative config
  (`spl.job.write_operative_config`): every flag of the tool with the value
  the run used (defaults included), then, after a `--` line, the Beam
  options given after `--`, in absl's flagfile format, so `python -m
  tfrecords_tools.<tool> --flagfile=<file>` reruns it (`cli`: a `--` line
  in a flagfile starts the Beam options). Written atomically when the job
  starts.

  Args:
    output_dir: the tool's output directory (created if absent).
    tool: the module name under `tfrecords_tools` (e.g. 'relabel').
    flag_values: absl `FlagValues` holding the parsed flags.
    flag_names: the tool's own flags, in the order to write them.
    beam_args: the Beam pipeline options given after `--`.

  Returns:
    The path written.
  """
  lines = [f'# python -m tfrecords_tools.{tool} --flagfile=<this file>']
  for name in flag_names:
    if flag_values[name].value is not None:
      lines.append(flag_values[name].serialize())
  if beam_args:
    lines.append('--')
    lines.extend(beam_args)
  return atomic_files.record_run_config(
      output_dir, f'config_{tool}.flags', '\n'.join(lines) + '\n',
      atomic_files.BEAM)
