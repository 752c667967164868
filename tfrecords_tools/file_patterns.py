"""File patterns: the one glob syntax of every tool that reads shards.

A pattern is one glob or several separated by commas
(`'WS/records/web/clips-*.tfrecord,WS/records/extra/clips-*.tfrecord'`);
every part must match at least one file, and the result is the sorted,
de-duplicated union. The trainer, evaluation, Grad-CAM, CPD's tools and the
Beam jobs all expand patterns here, so a pattern that one accepts the others
accept too.

`match` globs through TensorFlow's file system (local, `gs://`, ...; what the
trainer reads with), `match_beam` through Beam's `FileSystems` (what the Beam
jobs read with: they run without TensorFlow).

Both refuse files of an output directory that is not complete: a batch job's
run that has not finished, files its completion record does not list (stale
shards of another run), listed files that are missing, or a shard set
(`-NNNNN-of-MMMMM`) that is mixed or partial (`tfrecords_tools.completion`).
So no reader can train on, predict, relabel or evaluate half a dataset, or
one read twice.
"""

from __future__ import annotations

from typing import Callable, List, Sequence

from tfrecords_tools import atomic_files
from tfrecords_tools import completion

IncompleteOutputError = completion.IncompleteOutputError


class NoMatchingFilesError(ValueError, FileNotFoundError):
  """A pattern (or one part of it) matches no file."""


def split(file_pattern: str, what: str = '`file_pattern`') -> List[str]:
  """The globs of a comma-separated pattern, stripped, empty parts dropped."""
  if not isinstance(file_pattern, str) or not file_pattern.strip(' ,'):
    raise ValueError(f'{what} must be a non-empty glob, got {file_pattern!r}')
  return [p.strip() for p in file_pattern.split(',') if p.strip()]


def expand(file_pattern: str, what: str,
           glob: Callable[[str], Sequence[str]]) -> List[str]:
  """Sorted union of `glob(part)` over the parts; a part matching nothing
  raises `NoMatchingFilesError` naming `what` and the part."""
  files = set()
  for part in split(file_pattern, what):
    matched = list(glob(part))
    if not matched:
      raise NoMatchingFilesError(f'{what} {part!r} matches no files')
    files.update(matched)
  return sorted(files)


def _tf_glob(pattern: str) -> List[str]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile.glob(pattern)


def _beam_glob(pattern: str) -> List[str]:
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  return [m.path for m in FileSystems.match([pattern])[0].metadata_list]


def match(file_pattern: str, what: str = '`file_pattern`') -> List[str]:
  """`expand` through TensorFlow's file system, then the completion check
  of every directory with matched files (`IncompleteOutputError`)."""
  files = expand(file_pattern, what, _tf_glob)
  completion.check_matched(split(file_pattern, what), files, what,
                           atomic_files.TF)
  return files


def match_beam(file_pattern: str, what: str = '`file_pattern`') -> List[str]:
  """`match` through Beam's `FileSystems` (no TensorFlow)."""
  files = expand(file_pattern, what, _beam_glob)
  completion.check_matched(split(file_pattern, what), files, what,
                           atomic_files.BEAM)
  return files
