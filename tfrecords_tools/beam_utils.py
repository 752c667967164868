"""Beam pipeline construction shared by the batch jobs (writer, relabeller)."""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from tfrecords_tools import atomic_files
from tfrecords_tools import progress as progress_lib
from tfrecords_tools import schema


# `--runner=` names of Beam's Dask runner (the `dask` extra; Beam 2.77 does
# not register it under a short name).
DASK_RUNNERS = ('DaskRunner', 'dask',
                'apache_beam.runners.dask.dask_runner.DaskRunner')


def is_dask(runner: str) -> bool:
  return runner in DASK_RUNNERS


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

  `DaskRunner` (`DASK_RUNNERS`) runs on a `dask.distributed` cluster, e.g.
  `-- --dask_client_address=tcp://HOST:8786` (`tfrecords_tools.dask_cluster`
  starts one here); see `_dask_runner` for what it cannot do and how many
  partitions it makes.

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
  if is_dask(runner):
    return beam.Pipeline(runner=_dask_runner(), options=PipelineOptions(args))
  return beam.Pipeline(options=PipelineOptions(args + [f'--runner={runner}']))


def _dask_runner():
  """Beam's DaskRunner, refusing pipelines it would run wrongly.

  What Beam 2.77's Dask runner (`apache_beam.runners.dask`) does with a
  pipeline, measured here, and what the jobs do about it:

  * It computes the Dask graph of the *last* transform only: a branch that
    does not feed it is silently not run. Each job ends in one step that
    depends on every other (the writer's summary, relabel's finish).
  * A multi-output `ParDo` (`with_outputs`) hands every output, whatever
    its tag, to each consumer. The jobs tag elements themselves
    (`ParDoByTag`).
  * A side input is recomputed, with everything upstream of it, inside
    every task (bundle) that reads it: upstream side effects (files
    written) repeat, and the work grows with the number of bundles. The
    jobs join on keys with `GroupByKey` instead (`Gather`, keyed joins).
    Beam's own file sinks (`WriteToText`, `iobase.Write`) finalise through
    side inputs: the jobs write every file from a DoFn.
  * `Reshuffle` is a no-op; parallelism comes only from the partitions of
    a `Create` and the hash partitioning of a `GroupByKey` (`Spread`),
    which keeps the number of partitions of its input. Beam's default puts
    up to 128 elements of a `Create` in one partition (one task, one
    worker); here, without `--dask_npartitions` or `--dask_partition_size`,
    a `Create` is split into `DASK_PARTITIONS_PER_THREAD` partitions per
    worker thread of the cluster (asked when the run starts): enough
    pieces to balance the workers, few enough that the shuffles (tasks
    ~ partitions^2 per `GroupByKey` up to 32 partitions) stay cheap.
  * No metrics (`result.metrics()` raises; counters are no-ops), a DoFn's
    `setup`/`teardown` run per bundle, and its client is never closed
    (closed here when the run ends).

  Pipelines with side inputs, multi-output ParDos or branches the last
  step does not need are refused before anything runs (`ValueError`).

  Raises:
    ImportError: the `dask` extra is not installed.
  """
  # pylint: disable=g-import-not-at-top
  try:
    from apache_beam.runners.dask import dask_runner
    from apache_beam.runners.dask.overrides import dask_overrides
  except ImportError as e:
    raise ImportError('--runner=DaskRunner needs dask and distributed: '
                      "pip install -e '.[dask]'") from e
  from apache_beam.runners.runner import PipelineState
  # pylint: enable=g-import-not-at-top

  class Result(dask_runner.DaskRunnerResult):
    """Closes the run's Dask client once the run is over."""

    def wait_until_finish(self, duration=None):
      try:
        return super().wait_until_finish(duration)
      finally:
        if PipelineState.is_terminal(self.state):
          self.client.close()

  class DaskRunner(dask_runner.DaskRunner):

    def run_pipeline(self, pipeline, options):
      pipeline.replace_all(dask_overrides())  # As the runner's first step.
      check_dask_pipeline(pipeline)
      dask_options = options.view_as(dask_runner.DaskOptions)
      if not (dask_options.npartitions or dask_options.partition_size):
        dask_options.npartitions = DASK_PARTITIONS_PER_THREAD * _dask_threads(
            dask_options)
      result = super().run_pipeline(pipeline, options)
      return Result(result.client, result.futures)

  return DaskRunner()


# Dask partitions of a `beam.Create` per worker thread (`_dask_runner`).
DASK_PARTITIONS_PER_THREAD = 4


def _dask_threads(dask_options) -> int:
  """Worker threads of the cluster the options name (this machine's cores
  when they name none: Dask then starts a local cluster of that size)."""
  address = dask_options.address or dask_options.scheduler_file
  if not address:
    return os.cpu_count() or 1
  from dask import distributed  # pylint: disable=g-import-not-at-top
  kwargs = {'address': dask_options.address,
            'scheduler_file': dask_options.scheduler_file}
  if isinstance(dask_options.timeout, int):
    kwargs['timeout'] = dask_options.timeout
  with distributed.Client(**kwargs) as client:
    return max(1, sum(client.nthreads().values()))


def check_dask_pipeline(pipeline: beam.Pipeline) -> None:
  """Refuses what Beam 2.77's Dask runner would silently get wrong.

  Raises:
    ValueError: naming the transforms with side inputs or several outputs,
      and those the last transform does not depend on (never run).
  """
  from apache_beam.pipeline import PipelineVisitor  # pylint: disable=g-import-not-at-top
  leaves = []

  class Leaves(PipelineVisitor):

    def visit_transform(self, transform_node):
      leaves.append(transform_node)

  pipeline.visit(Leaves())
  problems = []
  for node in leaves:
    if node.side_inputs:
      problems.append(f'{node.full_label}: side inputs')
    if len(node.outputs) > 1:
      problems.append(f'{node.full_label}: several outputs')
  needed, todo = set(), leaves[-1:]
  while todo:
    node = todo.pop()
    if node not in needed:
      needed.add(node)
      todo.extend(p.producer for p in node.main_inputs.values()
                  if getattr(p, 'producer', None) is not None)
  problems += [f'{node.full_label}: not needed by the last transform '
               f'{leaves[-1].full_label}, never run'
               for node in leaves if node not in needed]
  if problems:
    raise ValueError('the Dask runner cannot run this pipeline: ' +
                     '; '.join(problems))


# ---- Transforms every runner runs alike ----


def _key_by(element, key):
  return key(element), element


def _values(keyed):
  return keyed[1]


class Spread(beam.PTransform):
  """Spreads elements over workers: keyed by `key(element)`, grouped, unkeyed.

  `beam.Reshuffle` is a no-op on Beam's Dask runner; a `GroupByKey` is a
  real shuffle on every runner. `key` should take many values (e.g. a
  video's ordinal): elements of one key stay together.
  """

  def __init__(self, key: Callable[[Any], Any]):
    super().__init__()
    self._key = key

  def expand(self, pcoll):
    return (pcoll
            | 'Key' >> beam.Map(_key_by, self._key)
            | 'Group' >> beam.GroupByKey()
            | 'Values' >> beam.FlatMap(_values))


def _keyed_none(element):
  return None, element


def _as_list(keyed):
  return list(keyed[1])


class Gather(beam.PTransform):
  """All elements as one list (one element; none for an empty input).

  The jobs' global steps (a plan over all videos, a summary) read whole
  PCollections this way rather than as side inputs, which Beam's Dask
  runner recomputes in every task that reads them.
  """

  def expand(self, pcoll):
    return (pcoll
            | 'Key' >> beam.Map(_keyed_none)
            | 'Group' >> beam.GroupByKey()
            | 'List' >> beam.Map(_as_list))


class ReadShards(beam.DoFn):
  """`read(path, progress)` per input shard, counted on one progress line.

  The first pass of the batch jobs (relabel's contexts, holdout's clips):
  `read` is a module-level generator that adds `records` (and `shards=1`
  when a shard is done) to the `ShardProgress` it is given.
  """

  def __init__(self, read: Callable[..., Any], label: str,
               run: progress_lib.BeamRun, num_shards: int):
    self._read = read
    self._label = label
    self._run = run
    self._num_shards = num_shards

  def setup(self):
    self._progress = self._run.progress(
        self._label, {'shards': self._num_shards, 'records': None},
        rates=('records',))

  def process(self, path):
    yield from self._read(path, self._progress)


class TagOutputs(beam.DoFn):
  """`fn`'s outputs as `(tag, value)`: main outputs tagged `main`.

  One PCollection of pairs, for a step that gathers every output together
  (`Gather`); `ParDoByTag` splits them by tag instead.
  """

  def __init__(self, fn, main: str):
    self._fn = (fn if isinstance(fn, beam.DoFn) else
                beam.transforms.core.CallableWrapperDoFn(fn))
    self._main = main

  def setup(self):
    self._fn.setup()

  def start_bundle(self):
    self._fn.start_bundle()

  def process(self, element, *args, **kwargs):
    for out in self._fn.process(element, *args, **kwargs) or ():
      if isinstance(out, beam.pvalue.TaggedOutput):
        yield out.tag, out.value
      else:
        yield self._main, out

  def finish_bundle(self):
    if self._fn.finish_bundle():
      raise ValueError(f'{self._fn}: outputs from finish_bundle are not '
                       'supported here')

  def teardown(self):
    self._fn.teardown()


def _select(pair, tag):
  if pair[0] == tag:
    yield pair[1]


class ParDoByTag(beam.PTransform):
  """`beam.ParDo(fn).with_outputs(*tags, main=main)` from single-output steps.

  Beam's Dask runner drops output tags (every consumer of a multi-output
  ParDo gets all its outputs), so `fn`'s outputs (`TaggedOutput` or main)
  become `(tag, value)` pairs and one `FlatMap` per tag keeps its own. The
  result is a dict: tag -> PCollection, as `with_outputs` gives on other
  runners.
  """

  def __init__(self, fn, *tags: str, main: str):
    super().__init__()
    self._fn = fn
    self._tags = (main,) + tags
    self._main = main

  def expand(self, pcoll):
    pairs = pcoll | 'Tag' >> beam.ParDo(TagOutputs(self._fn, self._main))
    return {tag: pairs | f'Select_{tag}' >> beam.FlatMap(_select, tag)
            for tag in self._tags}


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


def delete(path: str) -> None:
  """Deletes one file."""
  _fs().delete([path])


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
