"""Titles on disk: read them, or rewrite them and keep everything else.

Users hold titles in three forms, at different stages of a study:

* a text file, one title per line (a crawl's dump); when a class per title is
  needed, a second file of the same length holds it;
* a manifest (`tfrecords_tools.manifest`: CSV with a header row, or JSONL)
  with `title` and `label` columns, before clip records are written;
* clip records: the title in `caption/string`, the class in
  `clip/weak_label/text` (the query class; relabelling never rewrites it).
  Clips of one video share its title, so readers count each `video/id` once.

Rewriting changes the titles only: other columns and keys, row order, and in
records the frame bytes, which are copied through while only the context is
re-serialised (as `tfrecords_tools.relabel` does). A transform sees each
distinct title once, which is what makes an expensive one (a parse) cheap on
records with many clips per video.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import posixpath
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tfrecords_tools import atomic_files
from tfrecords_tools import file_patterns
from tfrecords_tools import manifest
from tfrecords_tools import schema
from tfrecords_tools import tfrecord_io

TITLE_COLUMN = 'title'
LABEL_COLUMN = 'label'
JSONL_SUFFIXES = ('.jsonl', '.json')
# Files next to record shards that describe them; copied with the shards.
SIDE_FILES = (schema.LABEL_MAP_FILENAME, schema.SUMMARY_FILENAME,
              schema.REJECTS_FILENAME, schema.LABEL_SPACE_FILENAME)

Transform = Callable[[List[str]], List[str]]


def file_kind(path: str) -> str:
  """'csv', 'jsonl' (manifests) or 'lines' (one title per line), by suffix."""
  lower = path.lower()
  if lower.endswith('.csv'):
    return 'csv'
  if lower.endswith(JSONL_SUFFIXES):
    return 'jsonl'
  return 'lines'


def _read_text(path: str, what: str) -> str:
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{what} {path!r} does not exist')
  with open(path, 'rb') as f:
    raw = f.read()
  # Scraped titles are not always valid UTF-8: mark bad bytes, keep the row
  # (as the manifest reader does), so rows stay aligned with their labels.
  return raw.decode('utf-8-sig', errors='replace')


def _lines(text: str) -> List[str]:
  # Only \n (and \r\n) end a line: str.splitlines() would also split on
  # U+2028 and friends, which occur inside scraped titles.
  lines = text.split('\n')
  if lines and lines[-1] == '':
    lines.pop()
  return [line[:-1] if line.endswith('\r') else line for line in lines]


def read_class_names(path: str) -> List[str]:
  """Class names, one per line (blank lines skipped), in file order.

  Args:
    path: text file such as Kinetics-400's class list ("playing guitar").

  Returns:
    The stripped names.

  Raises:
    FileNotFoundError, ValueError: missing file, no names, or a repeated name.
  """
  names = [n.strip() for n in _lines(_read_text(path, '`classes` file'))]
  names = [n for n in names if n]
  if not names:
    raise ValueError(f'`classes` file {path!r} has no class names')
  repeated = sorted(n for n, c in collections.Counter(names).items() if c > 1)
  if repeated:
    raise ValueError(f'`classes` file {path!r} repeats {repeated}')
  return names


def _csv_rows(path: str, text: str) -> Tuple[List[str], List[List[str]]]:
  rows = list(csv.reader(io.StringIO(text, newline='')))
  if not rows:
    raise ValueError(f'manifest {path!r} is empty: no header row')
  header = [h.strip() for h in rows[0]]
  if TITLE_COLUMN not in header:
    raise ValueError(f'manifest {path!r}: header {header} has no '
                     f'{TITLE_COLUMN!r} column')
  return header, rows[1:]


def _jsonl_rows(path: str, text: str) -> List[Tuple[int, Optional[dict]]]:
  """(line number, object or None for a blank line) of every line."""
  out = []
  for i, line in enumerate(_lines(text), start=1):
    if not line.strip():
      out.append((i, None))
      continue
    try:
      obj = json.loads(line)
    except ValueError as e:
      raise ValueError(f'manifest {path!r} line {i} is not JSON: {e}') from e
    if not isinstance(obj, dict):
      raise ValueError(f'manifest {path!r} line {i} is not a JSON object')
    for name in (TITLE_COLUMN, LABEL_COLUMN):
      try:  # Type-checked as the clip writer's manifest reader does.
        manifest.text_field(obj, name)
      except ValueError as e:
        raise ValueError(f'manifest {path!r} line {i}: {e}') from e
    out.append((i, obj))
  return out


def read_titles(path: str, labels_path: Optional[str] = None
                ) -> Tuple[List[str], Optional[List[str]]]:
  """Titles (and their classes, when known) from a titles file or manifest.

  Args:
    path: one title per line, or a CSV / JSONL manifest (`title` column;
      `label` column read when present in every row).
    labels_path: for a titles file, one class per line, aligned with the
      titles; not allowed with a manifest (it has its own `label` column).

  Returns:
    (titles, labels or None), in file order.

  Raises:
    FileNotFoundError, ValueError: naming the file and the offending line.
  """
  kind = file_kind(path)
  text = _read_text(path, '`titles` file')
  if kind != 'lines' and labels_path:
    raise ValueError(f'`labels` is for a titles file with one title per line; '
                     f'manifest {path!r} has its own {LABEL_COLUMN!r} column')
  labels: Optional[List[str]] = None
  if kind == 'lines':
    titles = _lines(text)
    if labels_path:
      labels = [s.strip() for s in _lines(_read_text(labels_path,
                                                     '`labels` file'))]
      if len(labels) != len(titles):
        raise ValueError(f'`labels` file {labels_path!r} has {len(labels)} '
                         f'lines, `titles` file {path!r} has {len(titles)}: '
                         f'they must be aligned, one line per title')
      blank = [i for i, s in enumerate(labels, start=1) if not s]
      if blank:
        raise ValueError(f'`labels` file {labels_path!r}: line {blank[0]} is '
                         f'empty ({len(blank)} empty lines)')
  elif kind == 'csv':
    header, rows = _csv_rows(path, text)
    t, l = header.index(TITLE_COLUMN), (header.index(LABEL_COLUMN)
                                        if LABEL_COLUMN in header else None)
    rows = [r for r in rows if any(c.strip() for c in r)]
    titles = [r[t] if t < len(r) else '' for r in rows]
    if l is not None:
      labels = [r[l].strip() if l < len(r) else '' for r in rows]
  else:
    objs = [o for _, o in _jsonl_rows(path, text) if o is not None]
    titles = [str(o.get(TITLE_COLUMN) or '') for o in objs]
    if any(LABEL_COLUMN in o for o in objs):
      labels = [str(o.get(LABEL_COLUMN) or '').strip() for o in objs]
  if labels is not None and kind != 'lines':
    blank = [i for i, s in enumerate(labels, start=1) if not s]
    if blank:
      raise ValueError(f'manifest {path!r}: data row {blank[0]} has an empty '
                       f'{LABEL_COLUMN!r} ({len(blank)} such rows)')
  return titles, labels


def _transform_unique(titles: Sequence[str], transform: Transform
                      ) -> Dict[str, str]:
  unique = list(dict.fromkeys(titles))
  out = transform(unique)
  if len(out) != len(unique):
    raise ValueError(f'the transform returned {len(out)} titles for '
                     f'{len(unique)}')
  return dict(zip(unique, out))


def _write_atomic(path: str, text: str) -> None:
  # Beam's file system: the titles paths run without TensorFlow.
  atomic_files.write(path, text, atomic_files.BEAM)


def check_output_file(path: str, output: str) -> None:
  """Raises ValueError unless `output` is set and is not the input file."""
  if not output:
    raise ValueError('`output` must name the file to write')
  if os.path.abspath(output) == os.path.abspath(path):
    raise ValueError(f'`output` {output!r} is the input file: write a new '
                     f'file (the original titles are the input of other '
                     f'variants)')


def rewrite_titles_file(path: str, output: str, transform: Transform
                        ) -> Dict[str, int]:
  """Writes `output`: `path` with every title replaced by its transform.

  Args:
    path: titles file (one per line) or CSV / JSONL manifest.
    output: the new file, same form (written under a temporary name, then
      renamed); must differ from `path`.
    transform: list of distinct titles -> list of new titles, same order.

  Returns:
    {'titles': rows with a title, 'unique_titles': distinct titles}.
  """
  check_output_file(path, output)
  kind = file_kind(path)
  text = _read_text(path, '`titles` file')
  if kind == 'lines':
    titles = _lines(text)
    new = _transform_unique(titles, transform)
    _write_atomic(output, ''.join(new[t] + '\n' for t in titles))
  elif kind == 'csv':
    header, rows = _csv_rows(path, text)
    col = header.index(TITLE_COLUMN)
    rows = [r for r in rows if any(c.strip() for c in r)]
    titles = [r[col] for r in rows if col < len(r)]
    new = _transform_unique(titles, transform)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(header)
    for r in rows:
      if col < len(r):
        r = r[:col] + [new[r[col]]] + r[col + 1:]
      writer.writerow(r)
    _write_atomic(output, buf.getvalue())
  else:
    objs = _jsonl_rows(path, text)
    titles = [str(o.get(TITLE_COLUMN) or '') for _, o in objs
              if o is not None and TITLE_COLUMN in o]
    new = _transform_unique(titles, transform)
    lines = []
    for _, o in objs:
      if o is not None and TITLE_COLUMN in o:
        o = dict(o, **{TITLE_COLUMN: new[str(o[TITLE_COLUMN] or '')]})
      lines.append('' if o is None else json.dumps(o, ensure_ascii=False))
    _write_atomic(output, ''.join(line + '\n' for line in lines))
  return {'titles': len(titles), 'unique_titles': len(new)}


# ---- Clip records ----
# TensorFlow (gfile, tf.train protos) is imported by these functions only:
# the titles-file paths above run without it.


def list_shards(pattern: str) -> List[str]:
  """Sorted files matching `pattern` (`file_patterns` syntax); ValueError
  naming it if none."""
  if not pattern:
    raise ValueError('`records` must be a file pattern of clip records')
  return file_patterns.match(pattern, '`records` pattern')


def _contexts(shards: Sequence[str]):
  """Yields (shard, parsed context feature map) of every record."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for path in shards:
    with tf.io.gfile.GFile(path, 'rb') as f:
      for payload in tfrecord_io.read_contexts(f, path):
        yield path, tf.train.Features.FromString(payload).feature


def _text(feature_map, key: str) -> str:
  values = feature_map[key].bytes_list.value if key in feature_map else []
  return values[0].decode('utf-8', errors='replace') if values else ''


def read_record_titles(pattern: str, *, with_labels: bool = True
                       ) -> Tuple[List[str], Optional[List[str]]]:
  """Titles (and query classes) of clip records, one per video.

  Args:
    pattern: clip-record file pattern.
    with_labels: also return each video's `clip/weak_label/text`.

  Returns:
    (titles, labels or None) in order of first appearance of each
    `video/id` (records without a video id count once each).
  """
  titles, labels, seen = [], [], set()
  for _, feature_map in _contexts(list_shards(pattern)):
    video_id = _text(feature_map, schema.VIDEO_ID_KEY)
    if video_id:
      if video_id in seen:
        continue
      seen.add(video_id)
    titles.append(_text(feature_map, schema.CAPTION_KEY))
    labels.append(_text(feature_map, schema.WEAK_LABEL_TEXT_KEY))
  return titles, (labels if with_labels else None)


def _dir_key(path: str) -> str:
  return path.rstrip('/') if '://' in path else os.path.abspath(path)


def check_output_dir(shards: Sequence[str], output_dir: str) -> None:
  """Raises ValueError unless `output_dir` can receive rewritten shards."""
  if not output_dir:
    raise ValueError('`output_dir` must name the directory for the new '
                     'records')
  names = [posixpath.basename(s) for s in shards]
  repeated = sorted({n for n, c in collections.Counter(names).items()
                     if c > 1})
  if repeated:
    raise ValueError(f'`records` matches shards of the same name in several '
                     f'directories ({repeated[:3]}): rewrite one directory at '
                     f'a time')
  if any(_dir_key(posixpath.dirname(s)) == _dir_key(output_dir)
         for s in shards):
    raise ValueError(f'`output_dir` {output_dir!r} holds the input shards: '
                     f'write the rewritten records to a new directory')


def rewrite_record_titles(pattern: str, output_dir: str,
                          transform: Transform) -> Dict[str, int]:
  """Copies clip records to `output_dir` with every caption transformed.

  Shard names and record order are kept; frame bytes are copied through (CRC
  checked); the side files next to the shards (`label_map.json`, ...) are
  copied. Each shard is written under a temporary name, then renamed.

  Args:
    pattern: input clip-record shards (one directory).
    output_dir: new directory (created); not the input directory.
    transform: list of distinct captions -> list of new captions.

  Returns:
    {'shards', 'records', 'unique_titles'} counts.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  shards = list_shards(pattern)
  check_output_dir(shards, output_dir)
  # Pass 1: every caption (contexts only, frames are seeked over).
  captions = [_text(fm, schema.CAPTION_KEY) for _, fm in _contexts(shards)]
  new = _transform_unique(captions, transform)
  new_bytes = {k: v.encode('utf-8') for k, v in new.items()}
  tf.io.gfile.makedirs(output_dir)
  records = 0
  for path in shards:
    out = posixpath.join(output_dir, posixpath.basename(path))
    with atomic_files.replacing(out, unique=True) as tmp:
      with tf.io.gfile.GFile(path, 'rb') as fin, \
          tf.io.gfile.GFile(tmp, 'wb') as fout:
        fout.write(b'')  # GFile creates the file on the first write only.
        for payload, rest, _ in tfrecord_io.read_split_records(fin, path):
          context = tf.train.Features.FromString(payload)
          caption = _text(context.feature, schema.CAPTION_KEY)
          context.feature[schema.CAPTION_KEY].bytes_list.value[:] = [
              new_bytes[caption]]
          tfrecord_io.write_record_parts(fout, [tfrecord_io.context_field(
              context.SerializeToString(deterministic=True))] + list(rest))
          records += 1
  if records != len(captions):
    raise ValueError(f'`records` {pattern!r}: pass 1 read {len(captions)} '
                     f'records, pass 2 {records} (files changed during the '
                     f'run?)')
  source_dir = posixpath.dirname(shards[0])
  for name in SIDE_FILES:
    src = posixpath.join(source_dir, name)
    if tf.io.gfile.exists(src):
      tf.io.gfile.copy(src, posixpath.join(output_dir, name), overwrite=True)
  return {'shards': len(shards), 'records': records,
          'unique_titles': len(new)}
