"""Reading the video manifest: which file, which query class, which title.

A manifest is CSV with a header row, or JSONL (one object per line), with
columns `path`, `label`, `title` and optional `video_id`, `start`, `end`
(seconds; a trimmed segment of the file). Rows that cannot be used become
rejects with a reason; they never stop the job, and never add a class.

Field types are checked, never coerced: `path`, `label`, `video_id` and
`title` are strings (a JSONL `"label": ["x"]` is a bad row, not the class
"['x']"); `start` and `end` are finite numbers of seconds, written as JSON
numbers or as text that spells one (CSV cells are text; a JSONL made from a
CSV reads the same). An absent optional field, JSON null or a blank string is
"not given". A CSV row with more cells than the header (an unquoted comma
shifts every column after it) is a bad row.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

REQUIRED_COLUMNS = ('path', 'label')
UNKNOWN_LABEL = 'unknown_label'
DUPLICATE_VIDEO_ID = 'duplicate_video_id'
BAD_ROW = 'bad_manifest_row'


@dataclasses.dataclass(frozen=True)
class VideoEntry:
  ordinal: int  # Position among usable rows; fixes the clip-index order.
  row: int  # 1-based data row (line for JSONL) in the manifest.
  path: str  # Absolute.
  video_id: str
  label: str
  label_index: int
  title: str
  start: Optional[float]
  end: Optional[float]


def make_reject(*, row: Optional[int], path: str, video_id: str, reason: str,
                message: str) -> Dict:
  return {'row': row, 'path': path, 'video_id': video_id, 'reason': reason,
          'message': message}


def _read_text(path: str) -> Tuple[str, bool]:
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    return raw.decode('utf-8-sig'), False
  except UnicodeDecodeError:
    # Titles scraped from the web are not always UTF-8: keep the row, mark
    # the bad bytes, count it in the summary.
    return raw.decode('utf-8-sig', errors='replace'), True


def _rows(path: str, text: str) -> List[Tuple[int, Optional[Dict], str]]:
  """(row number, row dict or None, error) for every data row.

  A non-empty error makes the row a reject; its dict, when there is one, still
  names the row's path and video id in the reject.
  """
  if path.endswith(('.jsonl', '.json')):
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
        if not isinstance(obj, dict):
          raise ValueError('not a JSON object')
        out.append((i, obj, ''))
      except ValueError as e:
        out.append((i, None, f'line {i} is not a JSON object: {e}'))
    return out
  reader = csv.DictReader(io.StringIO(text, newline=''))
  if reader.fieldnames is None:
    return []
  missing = [c for c in REQUIRED_COLUMNS
             if c not in [f.strip() for f in reader.fieldnames]]
  if missing:
    raise ValueError(f'manifest {path!r}: header {reader.fieldnames} lacks '
                     f'column(s) {missing}')
  out = []
  for i, r in enumerate(reader, start=1):
    # DictReader puts a row's cells beyond the header under the key None.
    extra = r.get(None) or []
    error = (f'{len(reader.fieldnames) + len(extra)} cells, the header has '
             f'{len(reader.fieldnames)} (an unquoted comma?)' if extra else '')
    out.append((i, {k.strip(): v for k, v in r.items() if k is not None},
                error))
  return out


def _describe(value) -> str:
  """`value` as the JSON type and text a user wrote, e.g. 'array ["x"]'."""
  kind = {bool: 'boolean', int: 'number', float: 'number', str: 'string',
          list: 'array', dict: 'object'}.get(type(value),
                                             type(value).__name__)
  text = json.dumps(value, ensure_ascii=False, default=repr)
  return f'{kind} {text if len(text) <= 40 else text[:37] + "..."}'


def text_field(row: Dict, name: str) -> str:
  """A text field: '' if absent or null; any type but a string is refused."""
  value = row.get(name)
  if value is None:
    return ''
  if not isinstance(value, str):
    raise ValueError(f'`{name}` must be a string, got {_describe(value)}')
  return value


def _shown(row: Dict, name: str) -> str:
  """A text field for a reject: what the row says, '' if not a string."""
  value = row.get(name)
  return value if isinstance(value, str) else ''


def _seconds(value, name: str) -> Optional[float]:
  """Seconds from a JSON number or text spelling one; None if not given."""
  if value is None or (isinstance(value, str) and not value.strip()):
    return None
  # bool is an int in Python: `true` must not become 1 second.
  if isinstance(value, bool) or not isinstance(value, (int, float, str)):
    raise ValueError(
        f'`{name}` must be a number of seconds, got {_describe(value)}')
  try:
    v = float(value)
  except ValueError:
    raise ValueError(f'`{name}` must be a number of seconds, got '
                     f'{_describe(value)}') from None
  except OverflowError:  # An int beyond float's range.
    v = math.inf
  if not math.isfinite(v):
    raise ValueError(f'`{name}` must be a finite number of seconds, got '
                     f'{_describe(value)}')
  if v < 0:
    raise ValueError(f'`{name}` must be >= 0 seconds, got {value!r}')
  return v


def default_video_id(path: str, manifest_dir: str) -> str:
  """Path relative to the manifest folder without extension (or file stem)."""
  rel = os.path.relpath(path, manifest_dir)
  if rel.startswith('..'):
    rel = os.path.basename(path)
  return os.path.splitext(rel)[0].replace(os.sep, '/')


def read_label_list(path: str) -> List[str]:
  """A file of class names, one per line; returned sorted (index order)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'--labels file {path!r} does not exist')
  with open(path, encoding='utf-8') as f:
    names = [line.strip() for line in f if line.strip()]
  if not names:
    raise ValueError(f'--labels file {path!r} has no class names')
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ValueError(f'--labels file {path!r} repeats class names {dup}')
  return sorted(names)


def read_manifest(path: str, labels: Optional[Sequence[str]] = None
                  ) -> Tuple[List[VideoEntry], List[Dict], List[str], Dict]:
  """Reads and validates a manifest.

  Args:
    path: CSV (header row) or JSONL manifest.
    labels: the allowed class names; None derives them (sorted) from the
      manifest.

  Returns:
    (entries, rejects, class names sorted, notes) where notes counts
    non-fatal issues (e.g. titles that were not valid UTF-8).

  Raises:
    FileNotFoundError / ValueError: the manifest itself is unusable (missing,
      no required columns, no data rows).
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'manifest {path!r} does not exist')
  text, bad_utf8 = _read_text(path)
  rows = _rows(path, text)
  if not rows:
    raise ValueError(f'manifest {path!r} has no data rows: nothing to write')
  manifest_dir = os.path.dirname(os.path.abspath(path))
  rejects: List[Dict] = []
  parsed = []
  for row, obj, error in rows:
    if obj is None:
      rejects.append(make_reject(row=row, path='', video_id='', reason=BAD_ROW,
                                 message=error))
      continue
    raw_path = _shown(obj, 'path').strip()
    try:
      if error:
        raise ValueError(error)
      if not text_field(obj, 'path').strip():
        raise ValueError('empty `path`')
      label = text_field(obj, 'label').strip()
      if not label:
        raise ValueError('empty `label`')
      video_id = text_field(obj, 'video_id').strip()
      title = text_field(obj, 'title')
      start = _seconds(obj.get('start'), 'start')
      end = _seconds(obj.get('end'), 'end')
      # No `start` means the file's start (0 s): `end` 0 is empty too.
      if end is not None and end <= (start or 0.0):
        raise ValueError(f'`end` ({end}) must be > `start` ({start or 0.0})')
    except ValueError as e:
      rejects.append(make_reject(row=row, path=raw_path,
                                 video_id=_shown(obj, 'video_id'),
                                 reason=BAD_ROW, message=f'row {row}: {e}'))
      continue
    full = raw_path if os.path.isabs(raw_path) else os.path.join(
        manifest_dir, raw_path)
    full = os.path.normpath(full)
    video_id = video_id or default_video_id(full, manifest_dir)
    parsed.append((row, full, video_id, label, title, start, end))

  allowed = None if labels is None else set(labels)
  kept = []
  first_row: Dict[str, int] = {}
  for row, full, video_id, label, title, start, end in parsed:
    if allowed is not None and label not in allowed:
      rejects.append(make_reject(
          row=row, path=full, video_id=video_id, reason=UNKNOWN_LABEL,
          message=f'row {row}: label {label!r} is not in the label list'))
      continue
    if video_id in first_row:
      rejects.append(make_reject(
          row=row, path=full, video_id=video_id, reason=DUPLICATE_VIDEO_ID,
          message=f'row {row}: video id {video_id!r} already used by row '
          f'{first_row[video_id]}'))
      continue
    first_row[video_id] = row
    kept.append((row, full, video_id, label, title, start, end))
  # Classes come from the usable rows only: a rejected row (a duplicate's
  # label, say) must not add a class and shift every later index.
  class_names = sorted(labels if labels is not None else
                       {p[3] for p in kept})
  index = {name: i for i, name in enumerate(class_names)}
  entries = [
      VideoEntry(ordinal=i, row=row, path=full, video_id=video_id, label=label,
                 label_index=index[label], title=title, start=start, end=end)
      for i, (row, full, video_id, label, title, start, end)
      in enumerate(kept)]
  notes = {'titles_not_utf8': sum('\ufffd' in e.title for e in entries)
                                if bad_utf8 else 0}
  return entries, rejects, class_names, notes
