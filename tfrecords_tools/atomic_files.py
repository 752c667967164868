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
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import uuid
from typing import Iterator, Optional, Union


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


TF = _TfFileSystem()
BEAM = _BeamFileSystem()


def _join(directory: str, name: str) -> str:
  return (posixpath.join(directory, name) if '://' in directory
          else os.path.join(directory, name))


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


def write(path: str, data: Union[bytes, str], fs=TF) -> None:
  """Writes `data` (bytes, or text as UTF-8) to `path` atomically."""
  binary = isinstance(data, bytes) or fs is BEAM
  if isinstance(data, str) and binary:
    data = data.encode('utf-8')
  with replacing(path, fs) as tmp:
    with fs.open(tmp, binary) as f:
      f.write(data)


def record_run_config(directory: str, name: str, text: str, fs=TF) -> str:
  """Records how a job was run: `directory/name`, written atomically.

  Every entry point calls it once its job is set up: the gin ones with their
  operative config (`spl.job.write_operative_config`), the Beam tools with
  their flags (`beam_utils.write_run_config`). Returns the path written.
  """
  fs.makedirs(directory)
  path = _join(directory, name)
  write(path, text, fs)
  logging.info('run config recorded in %s', path)
  return path
