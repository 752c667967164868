"""Reading the video manifest: which file, which query class, which title.

A manifest is CSV with a header row, or JSONL (one object per line), with
columns `path`, `label`, `title` and optional `video_id`, `start`, `end`
(seconds; a trimmed segment of the file). Rows that cannot be used become
rejects with a reason; they never stop the job.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
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
  """(row number, row dict or None, error) for every data row."""
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
  return [(i, {k.strip(): v for k, v in r.items() if k is not None}, '')
          for i, r in enumerate(reader, start=1)]


def _seconds(value, name: str) -> Optional[float]:
  if value is None or (isinstance(value, str) and not value.strip()):
    return None
  v = float(value)
  if not v >= 0:
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
    raw_path = str(obj.get('path') or '').strip()
    label = str(obj.get('label') or '').strip()
    try:
      if not raw_path:
        raise ValueError('empty `path`')
      if not label:
        raise ValueError('empty `label`')
      start = _seconds(obj.get('start'), 'start')
      end = _seconds(obj.get('end'), 'end')
      # No `start` means the file's start (0 s): `end` 0 is empty too.
      if end is not None and end <= (start or 0.0):
        raise ValueError(f'`end` ({end}) must be > `start` ({start or 0.0})')
    except ValueError as e:
      rejects.append(make_reject(row=row, path=raw_path,
                                 video_id=str(obj.get('video_id') or ''),
                                 reason=BAD_ROW, message=f'row {row}: {e}'))
      continue
    full = raw_path if os.path.isabs(raw_path) else os.path.join(
        manifest_dir, raw_path)
    full = os.path.normpath(full)
    video_id = str(obj.get('video_id') or '').strip() or default_video_id(
        full, manifest_dir)
    parsed.append((row, full, video_id, label, str(obj.get('title') or ''),
                   start, end))

  if labels is None:
    class_names = sorted({p[3] for p in parsed})
  else:
    class_names = sorted(labels)
  index = {name: i for i, name in enumerate(class_names)}
  entries: List[VideoEntry] = []
  first_row: Dict[str, int] = {}
  for row, full, video_id, label, title, start, end in parsed:
    if label not in index:
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
    entries.append(VideoEntry(
        ordinal=len(entries), row=row, path=full, video_id=video_id,
        label=label, label_index=index[label], title=title, start=start,
        end=end))
  notes = {'titles_not_utf8': sum('\ufffd' in e.title for e in entries)
                                if bad_utf8 else 0}
  return entries, rejects, class_names, notes
