r"""A local `dask.distributed` cluster for the Beam jobs' Dask runner.

  python -m tfrecords_tools.dask_cluster --workers=2 --port=8786

Starts a scheduler and `--workers` worker processes (one thread each) on
this machine, prints the scheduler's address (first line of stdout,
`tcp://127.0.0.1:8786`) and the workers' pids, and runs until Ctrl-C or
SIGTERM; then it prints how many tasks each worker ran and stops the
workers and the scheduler. The jobs run on it with

  python -m tfrecords_tools.write_clips ... --runner=DaskRunner -- \
      --dask_client_address=tcp://127.0.0.1:8786

(`--scheduler_file=F` also writes the address to F for
`-- --dask_scheduler_file=F`). The workers log the jobs' progress lines
(`tfrecords_tools.progress`, one per stage and worker, `[worker pid N]`) to
this command's stderr; the job's own command logs only the driver's lines.
Needs the `dask` extra (`pip install -e '.[dask]'`, part of `make install`).

Tests and benchmarks use `local_cluster`, the same cluster as a context
manager.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
from typing import Dict, Iterator, Optional, Sequence

from absl import flags

from tfrecords_tools import cli

try:
  from distributed.diagnostics.plugin import WorkerPlugin as _WorkerPlugin  # pylint: disable=g-import-not-at-top
except ImportError:  # Without the `dask` extra: `local_cluster` says so.
  _WorkerPlugin = object

# What a worker logs: the jobs' progress lines, in absl's format with the
# worker's pid (as `beam_worker` does for the DirectRunner's processes).
_LOG_FORMAT = ('%(levelname).1s%(asctime)s.%(msecs)03d %(process)d '
               '%(filename)s:%(lineno)d] %(message)s')


class _WorkerLogging(_WorkerPlugin):
  """A Dask worker plugin: the package's INFO lines to the worker's stderr.

  Also imports the package before Beam, which quietens Beam's
  optional-dependency warnings (`tfrecords_tools/__init__.py`), and ignores
  SIGINT: Ctrl-C in a terminal reaches every process of the command, and
  the workers are stopped by the command (`main`), not killed mid-task.
  """

  name = 'tfrecords_tools-logging'

  def setup(self, worker):  # pylint: disable=unused-argument
    try:
      signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:
      pass  # Not the worker's main thread: Ctrl-C stays as Dask has it.
    importlib.import_module('tfrecords_tools')
    logger = logging.getLogger('tfrecords_tools')
    if not any(getattr(h, '_tfrecords_tools', False) for h in logger.handlers):
      handler = logging.StreamHandler(sys.stderr)
      handler.setFormatter(logging.Formatter(_LOG_FORMAT, '%m%d %H:%M:%S'))
      handler._tfrecords_tools = True  # pylint: disable=protected-access
      logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # Dask's root handler would print them again.


def _executed(dask_worker) -> Dict[str, int]:
  return {'pid': os.getpid(), 'tasks': dask_worker.state.executed_count}


class Cluster:
  """A running local cluster.

  Attributes:
    address: the scheduler's address, for `--dask_client_address`.
  """

  def __init__(self, cluster, client):
    self._cluster = cluster
    self._client = client
    self.address = cluster.scheduler_address

  def workers(self) -> Dict[str, Dict[str, int]]:
    """Worker address -> {'pid': its process id, 'tasks': tasks it ran}."""
    return self._client.run(_executed)


@contextlib.contextmanager
def local_cluster(workers: int = 2, *, threads_per_worker: int = 1,
                  host: str = '127.0.0.1', port: int = 0,
                  scheduler_file: Optional[str] = None
                  ) -> Iterator[Cluster]:
  """A scheduler and `workers` worker processes on this machine.

  Args:
    workers: worker processes (Python processes, as on a real cluster: no
      state is shared with this process or between workers).
    threads_per_worker: threads per worker process.
    host: the interface the scheduler and workers listen on.
    port: the scheduler's port (0: any free one).
    scheduler_file: where the scheduler writes its address (JSON), if given.

  Yields:
    The running `Cluster`; stopped (workers, then scheduler) on exit.
  """
  if workers < 1:
    raise ValueError(f'`workers` must be >= 1, got {workers}')
  if threads_per_worker < 1:
    raise ValueError(
        f'`threads_per_worker` must be >= 1, got {threads_per_worker}')
  try:
    # pylint: disable=g-import-not-at-top,import-outside-toplevel
    from dask import distributed
  except ImportError as e:
    raise ImportError("the Dask cluster needs the `dask` extra: pip install "
                      "-e '.[dask]'") from e
  # No dashboard; the scheduler's HTTP routes (health, metrics) on any free
  # port rather than 8787, which a second cluster would find taken.
  scheduler_kwargs = {'dashboard': False, 'dashboard_address': f'{host}:0'}
  if scheduler_file:
    scheduler_kwargs['scheduler_file'] = scheduler_file
  cluster = distributed.LocalCluster(
      n_workers=workers, threads_per_worker=threads_per_worker,
      processes=True, host=host, scheduler_port=port,
      dashboard_address=None, scheduler_kwargs=scheduler_kwargs)
  try:
    client = distributed.Client(cluster)
    try:
      client.register_plugin(_WorkerLogging())
      client.wait_for_workers(workers)
      yield Cluster(cluster, client)
    finally:
      client.close()
  finally:
    cluster.close()


# ---- Command line ----


def _define_flags(fv: flags.FlagValues) -> None:
  """Flags exist only when the module runs as a tool, never on import."""
  flags.DEFINE_integer('workers', 2, 'Worker processes.', flag_values=fv)
  flags.DEFINE_integer('threads_per_worker', 1, 'Threads per worker.',
                       flag_values=fv)
  flags.DEFINE_string('host', '127.0.0.1', 'Interface to listen on.',
                      flag_values=fv)
  flags.DEFINE_integer('port', 8786, "The scheduler's port (0: any free one).",
                       flag_values=fv)
  flags.DEFINE_string('scheduler_file', None,
                      "Also write the scheduler's address to this file "
                      '(for `-- --dask_scheduler_file=...`).', flag_values=fv)


TOOL = cli.Tool(name='dask_cluster',
                command='python -m tfrecords_tools.dask_cluster',
                doc=__doc__, define_flags=_define_flags)


def main(args: cli.Args) -> int:
  """Runs the cluster until SIGINT / SIGTERM; returns the exit status."""
  fv = args.flags
  stop = threading.Event()
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda *_: stop.set())
  try:
    with local_cluster(fv.workers, threads_per_worker=fv.threads_per_worker,
                       host=fv.host, port=fv.port,
                       scheduler_file=fv.scheduler_file) as cluster:
      print(cluster.address, flush=True)
      workers = cluster.workers()
      print(f'{len(workers)} workers, pids '
            f'{" ".join(str(w["pid"]) for w in workers.values())}; '
            'Ctrl-C or SIGTERM stops them', flush=True)
      while not stop.wait(1.0):
        pass
      try:
        for w in sorted(cluster.workers().values(), key=lambda w: w['pid']):
          print(f'worker pid {w["pid"]}: {w["tasks"]} tasks run', flush=True)
      except OSError:  # Workers killed with us (a signal to the group).
        print('workers gone before the stop', flush=True)
  except (ImportError, OSError, ValueError) as e:
    print(f'dask_cluster: error: {e}', file=sys.stderr)
    return 1
  print('cluster stopped', flush=True)
  return 0


def run(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point: parses the command line (`cli`), runs; the exit status."""
  return cli.run(TOOL, main, argv)


if __name__ == '__main__':
  sys.exit(run())
