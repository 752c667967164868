"""Progress lines of long jobs: counts, rates and an ETA, every few seconds.

  p = progress.Progress('predict', {'clips': 6400, 'shards': 16})
  p.add(clips=32)            # logs at the first unit, then every 10 s
  ...
  p.finish()                 # the final counters line

gives lines such as

  predict: 920/6400 clips (14%), 3/16 shards; 35.2 clips/s; 26 s elapsed,
  ETA 2 min 36 s

A `Progress` is thread-safe. Inside Beam DoFns, `BeamRun.progress` gives one
object per process and run, shared by the DoFn instances of every worker
thread of that process (`shared`). On the DirectRunner's threads (the
writer's default, and `in_memory`) the driver process runs every bundle, so
a line counts the whole job. In `multi_processing` mode, or on a distributed
runner, each worker process counts only its own bundles: its lines say so
("worker pid N") and, on the DirectRunner, which splits each stage's input
evenly by count over its W workers, the ETA is for the process's ~1/W
share. Beam metrics are not used for this: the DirectRunner reports them
only once a stage's bundles are done.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import threading
import time
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

EVERY_SECONDS = 10.0

_LOG = logging.getLogger(__name__)


def format_seconds(seconds: float) -> str:
  """`42 s`, `3 min 05 s`, `2 h 07 min`."""
  if not math.isfinite(seconds):
    return '?'
  seconds = max(0, int(round(seconds)))
  if seconds < 60:
    return f'{seconds} s'
  if seconds < 3600:
    return f'{seconds // 60} min {seconds % 60:02d} s'
  return f'{seconds // 3600} h {seconds % 3600 // 60:02d} min'


def _format_count(name: str, value: float) -> str:
  if name == 'bytes':
    for unit, size in (('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
      if value >= size:
        return f'{value / size:.1f} {unit}'
    return f'{int(value)} B'
  return f'{int(value)}'


def _format_rate(name: str, per_second: float) -> str:
  if name == 'bytes':
    return f'{_format_count("bytes", per_second)}/s'
  return f'{per_second:.3g} {name}/s' if per_second < 100 else (
      f'{per_second:.0f} {name}/s')


class Progress:
  """Counters of one job (or phase) that log themselves now and then.

  The first counter is the job's main unit: its rate gives the ETA, unless
  `eta_by` names another counter with a total (e.g. bytes, when shards
  differ in size). A line is logged at the first count, then at most every
  `every` seconds, and when the main counter reaches its (exact) total.
  """

  def __init__(self, what: str, totals: Mapping[str, Optional[float]], *,
               eta_by: Optional[str] = None, every: float = EVERY_SECONDS,
               estimated: Optional[Mapping[str, bool]] = None,
               rates: Optional[Sequence[str]] = None,
               log: Optional[Callable[[str], None]] = None):
    """Creates the counters.

    Args:
      what: names the job in every line (e.g. 'relabel pass 2').
      totals: counter name -> total (None when unknown), in display order.
      eta_by: the counter the ETA follows (default: the first).
      every: seconds between lines.
      estimated: counter name -> whether its total is an estimate (shown
        with `~`).
      rates: the counters whose rate is shown (default: all).
      log: where lines go (default: INFO on this module's logger).
    """
    if not totals:
      raise ValueError('`totals` must name at least one counter')
    self.what = what
    self._totals: Dict[str, Optional[float]] = dict(totals)
    self._estimated = dict(estimated or {})
    self._main = next(iter(self._totals))
    self._eta_by = eta_by or self._main
    self._every = every
    self._log = log or _LOG.info
    self._counts = {name: 0 for name in self._totals}
    self._rates = list(self._totals if rates is None else rates)
    self._lock = threading.Lock()
    self._start = time.monotonic()
    self._last: Optional[float] = None
    self._done_logged = False

  def set_total(self, name: str, total: Optional[float],
                estimated: bool = False) -> None:
    with self._lock:
      self._totals[name] = total
      self._estimated[name] = estimated

  def add(self, detail: str = '', **counts: float) -> None:
    """Adds to the counters; logs a line if one is due.

    Args:
      detail: appended to the line if one is logged (e.g. the current shard).
      **counts: counter name -> amount to add.
    """
    now = time.monotonic()
    with self._lock:
      for name, n in counts.items():
        if name not in self._counts:
          raise KeyError(f'{self.what}: unknown counter {name!r}')
        self._counts[name] += n
      total = self._totals[self._main]
      complete = (total is not None and not self._estimated.get(self._main)
                  and self._counts[self._main] >= total)
      due = (self._last is None or now - self._last >= self._every or
             (complete and not self._done_logged))
      if not due:
        return
      self._last = now
      self._done_logged = self._done_logged or complete
      line = self._line(now)
    self._log(f'{line}; {detail}' if detail else line)

  def line(self) -> str:
    with self._lock:
      return self._line(time.monotonic())

  def finish(self, detail: str = '') -> str:
    """Logs and returns the final line: every counter, its rate, the time."""
    now = time.monotonic()
    with self._lock:
      elapsed = now - self._start
      counts = ', '.join(f'{_format_count(n, v)} {n}' if n != 'bytes' else
                         _format_count(n, v) for n, v in self._counts.items())
      rates = ', '.join(_format_rate(n, self._counts[n] / max(elapsed, 1e-9))
                        for n in self._rates)
    line = (f'{self.what} done: {counts} in {format_seconds(elapsed)} '
            f'({rates})')
    if detail:
      line += f'; {detail}'
    self._log(line)
    return line

  def _line(self, now: float) -> str:
    elapsed = now - self._start
    parts = []
    for name, value in self._counts.items():
      total = self._totals.get(name)
      text = _format_count(name, value)
      if total is not None:
        tilde = '~' if self._estimated.get(name) else ''
        text += f'/{tilde}{_format_count(name, total)}'
      if name != 'bytes':
        text += f' {name}'
      if name == self._main and total:
        text += f' ({100 * value / total:.0f}%)'
      parts.append(text)
    rates = [_format_rate(n, self._counts[n] / max(elapsed, 1e-9))
             for n in self._rates]
    line = (f'{self.what}: {", ".join(parts)}; {", ".join(rates)}; '
            f'{format_seconds(elapsed)} elapsed')
    total = self._totals.get(self._eta_by)
    done = self._counts[self._eta_by]
    if total is not None and done > 0:
      rate = done / max(elapsed, 1e-9)
      tilde = '~' if self._estimated.get(self._eta_by) else ''
      line += f', ETA {tilde}{format_seconds(max(0, total - done) / rate)}'
    return line


class ShardProgress:
  """A worker's progress over its shards, counted inside each shard.

  The jobs that write one output per input shard (prediction, feature
  extraction) log units done (clips, records) of the worker's total, shards
  done, the unit's rate, an ETA and the current shard's units done of its
  count. The total is exact once the last shard was opened and estimated
  (`~`, from the mean per shard so far) before.
  """

  def __init__(self, what: str, unit: str, num_shards: int, *,
               worker: int = 0, num_workers: int = 1):
    if num_workers > 1:
      what += f' (worker {worker} of {num_workers})'
    self.progress = Progress(what, {unit: None, 'shards': num_shards},
                             rates=(unit,))
    self._unit = unit
    self._num_shards = num_shards
    self._opened = 0  # Units of the shards opened so far.
    self._index = -1
    self._name = ''
    self._count = 0
    self._done = 0

  def open_shard(self, path: str, count: int) -> None:
    """Starts the next shard, `path`, of `count` units."""
    self._index += 1
    self._opened += count
    left = self._num_shards - self._index - 1
    self.progress.set_total(
        self._unit, self._opened + left * self._opened / (self._index + 1),
        estimated=left > 0)
    self._name, self._count, self._done = os.path.basename(path), count, 0

  def add(self, count: int) -> None:
    """`count` more units of the current shard are done."""
    self._done += count
    self.progress.add(**{self._unit: count}, detail=(
        f'shard {self._index + 1}/{self._num_shards} ({self._name}): '
        f'{self._done}/{self._count} {self._unit}'))

  def shard_done(self) -> None:
    self.progress.add(shards=1)

  def finish(self) -> None:
    """The final counters line (none if there were no shards to do)."""
    if self._num_shards:
      self.progress.finish()


# ---- One object per process and run, for Beam DoFns ----

_SHARED: Dict[tuple, Progress] = {}
_SHARED_LOCK = threading.Lock()


def shared(key: tuple, factory: Callable[[], Progress]) -> Progress:
  """The process's `Progress` for `key`, made by `factory` the first time."""
  with _SHARED_LOCK:
    if key not in _SHARED:
      _SHARED[key] = factory()
    return _SHARED[key]


@dataclasses.dataclass(frozen=True)
class BeamRun:
  """What a DoFn needs to report progress honestly (picklable).

  Attributes:
    run_id: unique per run: the shared counters of two runs in one process
      (tests, notebooks) never mix.
    driver_pid: the launching process; a DoFn in another process counts
      only its own bundles.
    num_workers: the DirectRunner's worker count (its per-process share of
      a stage is ~1/W); None on other runners (no share, no ETA).
    every: seconds between lines.
    driver_host: the launching process's host (None: any): a worker on
      another machine may have the driver's pid.
  """
  run_id: str
  driver_pid: int
  num_workers: Optional[int]
  every: float = EVERY_SECONDS
  driver_host: Optional[str] = None

  @classmethod
  def create(cls, runner: str, direct_num_workers: int,
             every: float = EVERY_SECONDS) -> 'BeamRun':
    import uuid  # pylint: disable=g-import-not-at-top
    direct = runner in ('DirectRunner', 'direct')
    return cls(uuid.uuid4().hex, os.getpid(),
               max(1, direct_num_workers) if direct else None, every,
               socket.gethostname())

  def in_driver(self) -> bool:
    """Whether this process launched the run (its counters are the job's)."""
    return os.getpid() == self.driver_pid and (
        self.driver_host is None or socket.gethostname() == self.driver_host)

  def share(self, total: Optional[float]) -> Tuple[Optional[float], bool]:
    """(this process's part of `total`, whether that is an estimate)."""
    if total is None or self.in_driver():
      return total, False
    if self.num_workers:
      return math.ceil(total / self.num_workers), True
    return None, False

  def progress(self, what: str, totals: Mapping[str, Optional[float]],
               **kwargs) -> Progress:
    """This process's counters of `what` for this run."""
    if not self.in_driver():
      # Another process: its own bundles only, about 1/W of each total on
      # the DirectRunner, unknown elsewhere.
      pid = os.getpid()
      what += (f' [worker pid {pid}, its ~1/{self.num_workers} share]'
               if self.num_workers else f' [worker pid {pid}]')
      shares = {n: self.share(t) for n, t in totals.items()}
      totals = {n: t for n, (t, _) in shares.items()}
      kwargs['estimated'] = {n: e for n, (_, e) in shares.items()}
    return shared((self.run_id, what),
                  lambda: Progress(what, totals, every=self.every, **kwargs))

  def set_total(self, progress: Progress, name: str,
                total: Optional[float]) -> None:
    """Sets a total found while running (this process's share of it)."""
    share, estimated = self.share(total)
    progress.set_total(name, share, estimated)
