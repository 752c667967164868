"""Completion records: a batch job's outputs are complete, or they are not used.

Every batch job (the clip writer, relabel, teacher prediction, CPD feature
extraction) follows one protocol in its output directory:

  begin   before any output: makes the directory (one-line error naming it
          when that or writing there fails; also when it holds another
          job's outputs or run in progress), writes the in-progress marker
          `_IN_PROGRESS.json` (job, start, host), deletes the temporaries a
          killed run left, the shards of another run that this run will not
          overwrite (`<prefix>-?????-of-?????<suffix>` names not among its
          outputs, e.g. of another `--num_shards`) and the previous
          completion record.
  finish  once every output is in place: writes the completion record, the
          job's summary (`summary.json`; relabel's `relabel_stats.json`)
          with `job` and `files`, the names of exactly the run's data files,
          then deletes the marker.

A crashed or failed run therefore leaves the marker, and a finished one a
record that names its files. Readers check every directory a file pattern
matched files in (`tfrecords_tools.file_patterns.match` / `match_beam` call
`check_matched`; every tool reads shards through them) and refuse, naming
the directory and what to do:

  * a directory holding the marker: a run that has not finished;
  * a record whose `status` is not 'ok' (relabel's failed runs);
  * matched files the record does not list (stale outputs of another run);
  * listed files the pattern asks for that are missing.

A directory without a record listing `files` (made by hand, or by a tool
that writes none) is only checked for whole shard sets: shards
`<prefix>-NNNNN-of-MMMMM<suffix>` must not mix two counts M, and every
index the pattern asks for must be there. Anything else keeps working.

Cost (`tests/test_completion.py::test_the_check_costs_little`): per
directory a marker check and one read of the record; per file a set lookup
and a regular-expression match.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import re
import socket
from typing import Any, Collection, Dict, Iterable, List, Mapping, Optional, Sequence

from tfrecords_tools import atomic_files
from tfrecords_tools import schema

MARKER_FILENAME = '_IN_PROGRESS.json'
# The completion records readers look for, in this order. `relabel_stats.json`
# is `tfrecords_tools.relabel.STATS_FILENAME` (relabel's summary).
RECORD_FILENAMES = (schema.SUMMARY_FILENAME, 'relabel_stats.json')
FILES_KEY = 'files'
JOB_KEY = 'job'
STATUS_KEY = 'status'

# Who wrote a record before records named their job (holdout's summary.json
# is the writer's format too).
_JOBS_BEFORE_RECORDS = {schema.SUMMARY_FILENAME: 'write_clips',
                        'relabel_stats.json': 'relabel'}
# `schema.shard_name` and its kin: `<prefix>-00003-of-00016<suffix>`.
_SHARD_RE = re.compile(r'^(?P<prefix>.*)-(?P<index>\d{5})-of-(?P<total>\d{5})'
                       r'(?P<suffix>.*)$')
# How many names a refusal lists.
_EXAMPLES = 3


class IncompleteOutputError(ValueError):
  """A directory's files do not match its completion record (or shard set)."""


def shard_globs(names: Iterable[str]) -> List[str]:
  """The shard-set globs of `names`: `clips-?????-of-?????.tfrecord` for
  `clips-00001-of-00004.tfrecord`; names of no shard set give none."""
  globs = set()
  for name in names:
    m = _SHARD_RE.match(name)
    if m:
      globs.add(f'{m["prefix"]}-?????-of-?????{m["suffix"]}')
  return sorted(globs)


# ---- Writing: the jobs ----


def begin(directory: str, job: str, *, outputs: Collection[str],
          record: str = schema.SUMMARY_FILENAME,
          fs=atomic_files.TF, also_remove: Sequence[str] = (),
          concurrent_writers: bool = False) -> None:
  """Starts a run of `job` in `directory` (see the module docstring).

  Args:
    directory: the output directory (made if absent).
    job: the job's name, in the marker and in readers' refusals.
    outputs: the names of the data files this run writes.
    record: the name of the completion record `finish` will write.
    fs: `atomic_files.TF` or `atomic_files.BEAM`.
    also_remove: further files of an earlier run to delete (e.g. relabel's
      `label_space.json`, whose presence means a finished run).
    concurrent_writers: other processes of this run (the workers of a
      multi-worker job) may already be writing `outputs`: their fixed
      temporaries are kept.

  Raises:
    atomic_files.OutputDirectoryError: the directory cannot be made or
      written to (read-only, a file, no permission), or holds the outputs
      (or a run) of another job; naming it.
  """
  _check_same_job(directory, job, record, fs)
  marker = {'job': job, 'host': socket.gethostname(), 'pid': os.getpid(),
            'started': datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec='seconds'), 'record': record}
  # Unique temporaries: every worker of a multi-worker job writes it.
  atomic_files.write_into(directory, MARKER_FILENAME, schema.json_text(marker),
                          fs, unique=True)
  atomic_files.remove_temporaries(
      directory, fs, keep=outputs if concurrent_writers else ())
  wanted = set(outputs)
  stale = sorted(
      path for pattern in shard_globs(wanted)
      for path in fs.glob(atomic_files.join(directory, pattern))
      if atomic_files.split(path)[1] not in wanted)
  for path in stale:
    _remove(path, fs)
  if stale:
    logging.warning('%s: removed %d shards of an earlier run from %s (e.g. '
                    '%s): this run writes %d others', job, len(stale),
                    directory, atomic_files.split(stale[0])[1], len(wanted))
  for name in (record,) + tuple(also_remove):
    _remove(atomic_files.join(directory, name), fs)


def _check_same_job(directory: str, job: str, record: str, fs) -> None:
  """Refuses a directory holding another job's completion record or run."""
  for name in (MARKER_FILENAME,) + RECORD_FILENAMES:
    try:
      content = _read_json(atomic_files.join(directory, name), fs)
    except IncompleteOutputError:
      continue  # Not JSON: nobody's record; this run replaces it.
    if content is None:
      continue
    other = content.get(JOB_KEY, _JOBS_BEFORE_RECORDS.get(name, job))
    if other != job:
      raise atomic_files.OutputDirectoryError(
          f'output directory {directory!r} holds the outputs (or a run) of '
          f'{other} ({name}), not {job}: write to another directory')


def finish(directory: str, record: str, content: Mapping[str, Any],
           files: Iterable[str], fs=atomic_files.TF,
           job: Optional[str] = None) -> Dict[str, Any]:
  """Ends a run: writes `directory/record` (`content` plus `job` and `files`,
  sorted) and deletes the marker and any temporaries left; returns what it
  wrote.

  Call it once every output is in place: no process of the run writes any
  more (so the temporaries left are a killed run's or a failed attempt's).
  """
  content = dict(content)
  if job is not None:
    content[JOB_KEY] = job
  content[FILES_KEY] = sorted(files)
  # Several workers of one run may finish at once: unique temporaries.
  atomic_files.write(atomic_files.join(directory, record),
                     schema.json_text(content), fs, unique=True)
  _remove(atomic_files.join(directory, MARKER_FILENAME), fs)
  atomic_files.remove_temporaries(directory, fs)
  return content


def outputs_complete(directory: str, outputs: Collection[str],
                     fs=atomic_files.TF) -> bool:
  """Whether every one of `outputs` exists in `directory` (one glob per shard
  set, so a multi-worker job's last worker can tell cheaply)."""
  found = set()
  for pattern in shard_globs(outputs):
    found.update(atomic_files.split(p)[1]
                 for p in fs.glob(atomic_files.join(directory, pattern)))
  return all(name in found or
             fs.exists(atomic_files.join(directory, name))
             for name in outputs)


def _remove(path: str, fs) -> None:
  """Deletes `path`; missing is fine."""
  try:
    fs.remove(path)
  except fs.errors():
    if fs.exists(path):
      raise


# ---- Checking: the readers ----


def _glob_regex(pattern: str) -> 're.Pattern':
  """A glob as a regular expression: `*` and `?` stop at '/', `[...]` sets."""
  out, i = [], 0
  while i < len(pattern):
    c = pattern[i]
    if c == '*':
      out.append('[^/]*')
    elif c == '?':
      out.append('[^/]')
    elif c == '[':
      j = i + 1
      if j < len(pattern) and pattern[j] in '!^':
        j += 1
      if j < len(pattern) and pattern[j] == ']':
        j += 1
      j = pattern.find(']', j)
      if j < 0:
        out.append(re.escape(c))
      else:
        body = pattern[i + 1:j]
        negate = body[:1] in ('!', '^')
        # Ranges stay; what Python's `re` would read as more is escaped.
        body = re.sub(r'([\\\[\]&~|^])', r'\\\1', body[negate:])
        out.append('[' + '^' * negate + body + ']')
        i = j
    else:
      out.append(re.escape(c))
    i += 1
  return re.compile(''.join(out))


def _examples(names: Sequence[str]) -> str:
  shown = ', '.join(names[:_EXAMPLES])
  return shown + (', ...' if len(names) > _EXAMPLES else '')


def _read_json(path: str, fs) -> Optional[Dict[str, Any]]:
  """The JSON object at `path`, or None when there is no such file."""
  try:
    data = fs.read(path)
  except fs.errors():
    if fs.exists(path):
      raise
    return None
  try:
    obj = json.loads(data)
  except ValueError as e:
    raise IncompleteOutputError(
        f'{path} is not valid JSON ({e}): rerun the job that writes it') from e
  return obj if isinstance(obj, dict) else {}


def _wanted(directory: str, names: Iterable[str],
            regexes: Sequence['re.Pattern']) -> List[str]:
  """The names in `directory` that one of the pattern parts matches."""
  return sorted(n for n in names
                if any(r.fullmatch(atomic_files.join(directory, n))
                       for r in regexes))


def _check_record(directory: str, name: str, record: Mapping[str, Any],
                  matched: Collection[str],
                  regexes: Sequence['re.Pattern']) -> Optional[str]:
  """The problem of a directory with a completion record, or None."""
  path = atomic_files.join(directory, name)
  status = record.get(STATUS_KEY, 'ok')
  if status != 'ok':
    return (f'{path} says its run ended with status {status!r}: fix what it '
            f'lists and rerun the job, or use another directory')
  listed = set(record[FILES_KEY])
  stale = sorted(set(matched) - listed)
  if stale:
    return (f'{directory} holds {len(stale)} files that its completion '
            f'record {name} does not list ({_examples(stale)}): outputs of '
            f'another run? Delete them, or rerun the job into an empty '
            f'directory')
  missing = [n for n in _wanted(directory, listed - set(matched), regexes)]
  if missing:
    return (f'{directory} lacks {len(missing)} of the {len(listed)} files its '
            f'completion record {name} lists ({_examples(missing)}): '
            f'deleted, or an unfinished copy? Rerun the job that wrote it')
  return None


def _check_shard_sets(directory: str, matched: Collection[str],
                      regexes: Sequence['re.Pattern']) -> Optional[str]:
  """The problem of a directory without a record: mixed or partial shard
  sets, or None."""
  sets: Dict[tuple, Dict[int, set]] = {}
  for name in matched:
    m = _SHARD_RE.match(name)
    if m:
      sets.setdefault((m['prefix'], m['suffix']), {}).setdefault(
          int(m['total']), set()).add(int(m['index']))
  for (prefix, suffix), by_total in sorted(sets.items()):
    if len(by_total) > 1:
      counts = ', '.join(f'{prefix}-*-of-{t:05d}{suffix}'
                         for t in sorted(by_total))
      return (f'{directory} mixes shard sets of different sizes ({counts}) '
              f'and has no completion record: outputs of two runs. Delete '
              f'the stale ones, or rerun the job into an empty directory')
    (total, indices), = by_total.items()
    expected = [f'{prefix}-{i:05d}-of-{total:05d}{suffix}'
                for i in range(total)]
    beyond = sorted(f'{prefix}-{i:05d}-of-{total:05d}{suffix}'
                    for i in indices if i >= total)
    missing = [n for n in _wanted(directory, expected, regexes)
               if n not in matched]
    if beyond or missing:
      bad = beyond or missing
      return (f'{directory} has {len(indices)} of the {total} shards '
              f'{prefix}-?????-of-{total:05d}{suffix} ('
              f'{"not in the set" if beyond else "missing"}: '
              f'{_examples(bad)}) and no completion record: an unfinished '
              f'run? Rerun the job that writes it')
  return None


def directory_problem(directory: str, matched: Collection[str],
                      patterns: Sequence[str] = ('*',),
                      fs=atomic_files.TF) -> Optional[str]:
  """Why `directory`'s files may not be read, or None.

  Args:
    directory: a directory holding files a pattern matched.
    matched: the names (no directory) of the files matched in it.
    patterns: the glob parts of the pattern; decide which of the files the
      record lists (or of a shard set) the reader asked for.
    fs: `atomic_files.TF` or `atomic_files.BEAM`.
  """
  marker = _read_json(atomic_files.join(directory, MARKER_FILENAME), fs)
  if marker is not None:
    return (f'{directory} holds an unfinished run of '
            f'{marker.get("job", "a batch job")} (started '
            f'{marker.get("started", "?")} on {marker.get("host", "?")}; '
            f'{MARKER_FILENAME} stays until the run completes): rerun the '
            f'same command to finish it, or delete the directory')
  regexes = [_glob_regex(p) for p in patterns]
  for name in RECORD_FILENAMES:
    record = _read_json(atomic_files.join(directory, name), fs)
    if record is not None:
      if isinstance(record.get(FILES_KEY), list) or (
          record.get(STATUS_KEY, 'ok') != 'ok'):
        return _check_record(directory, name, record, matched, regexes)
      break  # A record without a file list: checked as a shard set.
  return _check_shard_sets(directory, matched, regexes)


def check_matched(patterns: Sequence[str], files: Iterable[str], what: str,
                  fs=atomic_files.TF) -> None:
  """Refuses files of an incomplete or mixed directory (module docstring).

  Args:
    patterns: the glob parts that matched `files`.
    files: every matched path.
    what: names the pattern in errors (e.g. '`--records` pattern').
    fs: the file system `files` were globbed on.

  Raises:
    IncompleteOutputError: naming the directory, the problem and what to do.
  """
  by_dir: Dict[str, set] = {}
  for path in files:
    directory, name = atomic_files.split(path)
    by_dir.setdefault(directory, set()).add(name)
  for directory, names in sorted(by_dir.items()):
    problem = directory_problem(directory, names, patterns, fs)
    if problem:
      raise IncompleteOutputError(f'{what}: {problem}')


def record_count(files: Iterable[str], fs=atomic_files.TF) -> Optional[int]:
  """How many records `files` hold, from their directories' summaries.

  The clip writer and the relabeller write `summary.json` (its `clips` and
  `num_shards`) beside their shards; when `files` are every shard of each
  directory they are in, the sum is the count. None when that cannot be
  known without reading the records (a subset of shards, no or another
  kind of summary, an unreadable one). For progress lines, not checks.
  """
  by_dir: Dict[str, int] = {}
  for path in files:
    directory, _ = atomic_files.split(path)
    by_dir[directory] = by_dir.get(directory, 0) + 1
  total = 0
  for directory, matched in by_dir.items():
    try:
      summary = _read_json(
          atomic_files.join(directory, schema.SUMMARY_FILENAME), fs)
      clips, shards = int(summary['clips']), int(summary['num_shards'])
    except (fs.errors() + (ValueError, KeyError, TypeError)):
      return None
    if shards != matched:
      return None
    total += clips
  return total
