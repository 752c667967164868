"""Atomic file writes: a file appears under its final name complete or not at all.

Every output of the project (shards, predictions, features, JSON reports,
plots, configs) is written under a temporary name next to its final one and
renamed when complete; on an error the temporary file is deleted and the
final name keeps what it held before. Two file systems:

  TF    TensorFlow's `tf.io.gfile` (local, `gs://`, ...): the trainer and the
        tools that run with TensorFlow. One writer per file, so the temporary
        name is fixed (`<path>.tmp-partial`): a rerun overwrites what a killed
        run left there.
  BEAM  Beam's `FileSystems`: the Beam jobs, which run without TensorFlow. A
        bundle may be retried while its first attempt still runs, so every
        attempt has its own hidden temporary name (`.<name>.tmp-<uuid>`, never
        matched by a shard glob).

On a local disk the rename is atomic; on object stores it is a copy and a
delete, so readers there must rely on the final name only appearing once the
copy is complete (which both stores guarantee for a single object).

A killed run leaves its temporaries behind; `remove_temporaries` (called by
every batch job when it starts, `tfrecords_tools.completion.begin`) deletes
them. Write errors that name no file (a full disk) are re-raised naming the
file (`naming`).
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import posixpath
import uuid
from typing import Collection, Iterator, List, Optional, Union

# What `temporary_name` makes: `<name>.tmp-partial` and `.<name>.tmp-<hex>`.
TEMPORARY_GLOBS = ('*.tmp-partial', '.*.tmp-*')


class _TfFileSystem:
  """`tf.io.gfile`, imported on first use (the Beam jobs never import TF)."""

  unique_temporaries = False

  @staticmethod
  def _gfile():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.gfile

  def open(self, path: str, binary: bool):
    return self._gfile().GFile(path, 'wb' if binary else 'w')

  def rename(self, src: str, dst: str) -> None:
    self._gfile().rename(src, dst, overwrite=True)

  def exists(self, path: str) -> bool:
    return self._gfile().exists(path)

  def remove(self, path: str) -> None:
    self._gfile().remove(path)

  def makedirs(self, path: str) -> None:
    self._gfile().makedirs(path)

  def read(self, path: str) -> bytes:
    with self._gfile().GFile(path, 'rb') as f:
      return f.read()

  def glob(self, pattern: str) -> List[str]:
    return self._gfile().glob(pattern)

  @staticmethod
  def errors() -> tuple:
    """What a failed file operation raises (TF's own errors are no OSError)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return (OSError, tf.errors.OpError)


class _BeamFileSystem:
  """Beam's `FileSystems` (uncompressed channels)."""

  unique_temporaries = True

  @staticmethod
  def _fs():
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
    return FileSystems

  def open(self, path: str, binary: bool):
    from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=g-import-not-at-top
    if not binary:
      raise ValueError('Beam file channels are binary: encode the text')
    return self._fs().create(path,
                             compression_type=CompressionTypes.UNCOMPRESSED)

  def rename(self, src: str, dst: str) -> None:
    self._fs().rename([src], [dst])

  def exists(self, path: str) -> bool:
    return self._fs().exists(path)

  def remove(self, path: str) -> None:
    self._fs().delete([path])

  def makedirs(self, path: str) -> None:
    try:
      self._fs().mkdirs(path)
    except IOError:  # Exists already (or an object store without folders).
      if not self._fs().exists(path):
        raise

  def read(self, path: str) -> bytes:
    from apache_beam.io.filesystem import CompressionTypes  # pylint: disable=g-import-not-at-top
    with self._fs().open(
        path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      return f.read()

  def glob(self, pattern: str) -> List[str]:
    # Beam's local glob skips hidden names unless the pattern's name starts
    # with '.', like a shell.
    return [m.path for m in self._fs().match([pattern])[0].metadata_list]

  @staticmethod
  def errors() -> tuple:
    """What a failed file operation raises (BeamIOError is an IOError)."""
    return (OSError,)


TF = _TfFileSystem()
BEAM = _BeamFileSystem()


def _join(directory: str, name: str) -> str:
  return (posixpath.join(directory, name) if '://' in directory
          else os.path.join(directory, name))


def join(directory: str, name: str) -> str:
  """`directory/name` for local paths and URLs (`gs://...`) alike."""
  return _join(directory, name)


def split(path: str):
  """(directory, name) of a local path or URL."""
  return posixpath.split(path) if '://' in path else os.path.split(path)


def temporary_name(path: str, fs=TF, unique: Optional[bool] = None) -> str:
  """Where `path` is written before its rename (see the module docstring);
  `unique` overrides the file system's default."""
  if not (fs.unique_temporaries if unique is None else unique):
    return f'{path}.tmp-partial'
  directory, name = (posixpath.split(path) if '://' in path
                     else os.path.split(path))
  return _join(directory, f'.{name}.tmp-{uuid.uuid4().hex}')


@contextlib.contextmanager
def replacing(path: str, fs=TF,
              unique: Optional[bool] = None) -> Iterator[str]:
  """Yields a temporary path to write `path`'s contents to; renames it to
  `path` when the block ends normally, deletes it when the block raises (or
  when the rename fails)."""
  tmp = temporary_name(path, fs, unique)
  try:
    yield tmp
    fs.rename(tmp, path)
  finally:
    if fs.exists(tmp):
      fs.remove(tmp)


def write(path: str, data: Union[bytes, str], fs=TF,
          unique: Optional[bool] = None) -> None:
  """Writes `data` (bytes, or text as UTF-8) to `path` atomically; `unique`
  temporaries for a file that several processes may write at once."""
  binary = isinstance(data, bytes) or fs is BEAM
  if isinstance(data, str) and binary:
    data = data.encode('utf-8')
  with naming(path), replacing(path, fs, unique) as tmp:
    with fs.open(tmp, binary) as f:
      f.write(data)


@contextlib.contextmanager
def naming(path: str) -> Iterator[None]:
  """Re-raises an `OSError` that names no file (e.g. a full disk: `write`
  raises `[Errno 28] No space left on device`) as one naming `path`."""
  try:
    yield
  except OSError as e:
    if e.filename or e.errno is None:
      raise
    raise OSError(e.errno, e.strerror or str(e), path) from e


def is_temporary(name: str) -> bool:
  """Whether a file name is one `temporary_name` makes."""
  return any(fnmatch.fnmatchcase(name, g) for g in TEMPORARY_GLOBS)


def remove_temporaries(directory: str, fs=TF,
                       keep: Collection[str] = ()) -> List[str]:
  """Deletes the temporaries in `directory` (not below it) that killed runs
  left; returns their paths.

  Call it only where no other process of the run may be writing: a job's
  start, before its workers, or its end. `keep` lists final names whose
  fixed temporary (`<name>.tmp-partial`) stays: those another worker of a
  multi-worker run may be writing right now (it overwrites a killed run's).
  """
  kept = {f'{name}.tmp-partial' for name in keep}
  removed = []
  for pattern in TEMPORARY_GLOBS:
    for path in fs.glob(_join(directory, pattern)):
      name = split(path)[1]
      if name in kept or not is_temporary(name):
        continue
      try:
        fs.remove(path)
      except fs.errors():  # Gone already (another worker removed it).
        if fs.exists(path):
          raise
      removed.append(path)
  if removed:
    logging.info('removed %d temporary files a killed run left in %s',
                 len(removed), directory)
  return sorted(removed)


class OutputDirectoryError(ValueError):
  """An output directory that cannot be made or written to."""


def _reason(e: BaseException) -> str:
  """One line of a file system error, without the path (we name it)."""
  text = getattr(e, 'strerror', None) or getattr(e, 'message', None) or str(e)
  return (text.strip().splitlines() or [type(e).__name__])[0]


def write_into(directory: str, name: str, data: Union[bytes, str], fs=TF,
               unique: Optional[bool] = None) -> str:
  """Makes `directory` and writes `directory/name` atomically; returns the
  path. The first write of a job: a directory that cannot be made or
  written to is an `OutputDirectoryError` naming it, in one line."""
  try:
    fs.makedirs(directory)
  except fs.errors() as e:
    raise OutputDirectoryError(f'output directory {directory!r} cannot be '
                               f'created: {_reason(e)}') from e
  path = _join(directory, name)
  try:
    write(path, data, fs, unique)
  except fs.errors() as e:
    raise OutputDirectoryError(f'output directory {directory!r} is not '
                               f'writable ({name}: {_reason(e)})') from e
  return path


def record_run_config(directory: str, name: str, text: str, fs=TF) -> str:
  """Records how a job was run: `directory/name`, written atomically.

  Every entry point calls it once its job is set up: the gin ones with their
  operative config (`spl.job.write_operative_config`), the Beam tools with
  their flags (`beam_utils.write_run_config`). Returns the path written.
  """
  path = write_into(directory, name, text, fs)
  logging.info('run config recorded in %s', path)
  return path
