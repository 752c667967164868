"""What `on_bad_record='skip'` dropped, counted on the host.

Two kinds of bad input reach a training job (`spl.input_pipeline`'s
docstring): bad records (a missing key, a label out of range, frames that do
not decode), each skipped and counted every time it is met; and damaged
shards (truncated, random bytes, a CRC mismatch), of which the records before
the damage are read and the rest of the file is skipped, counted once per
file. The counts live in this process, in Python (the pipeline reports them
through `tf.py_function`), so they work under any strategy whose input
pipeline runs in this process; `report()` is what the training loop shows in
its progress line, TensorBoard and `metrics.json`.
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Dict, List

from absl import logging

_MAX_MESSAGES = 1000
_lock = threading.Lock()
_skipped = 0
_messages: collections.deque = collections.deque(maxlen=_MAX_MESSAGES)
_damaged: Dict[str, str] = {}  # path -> what is wrong with it


def num_skipped_records() -> int:
  """Records skipped since the last reset."""
  with _lock:
    return _skipped


def skipped_record_messages() -> List[str]:
  """Why the last (up to 1000) skipped records were skipped."""
  with _lock:
    return list(_messages)


def damaged_files() -> Dict[str, str]:
  """Damaged shards met since the last reset: path -> what was read of it."""
  with _lock:
    return dict(_damaged)


def reset() -> None:
  """Forgets every count and message."""
  global _skipped
  with _lock:
    _skipped = 0
    _messages.clear()
    _damaged.clear()


def count_record(text: str, count: int = 1) -> None:
  """`count` skipped records (one unless `text` could not name each), `text`
  naming file, number and reason."""
  global _skipped
  with _lock:
    _skipped += count
    _messages.append(text)
    total = _skipped
  if total <= 100 or total // 1000 > (total - count) // 1000:
    logging.warning('Skipping bad record (%d so far): %s', total, text)


def count_damaged_file(path: str, text: str) -> None:
  """A damaged shard (counted once, however often it is read)."""
  with _lock:
    new = path not in _damaged
    _damaged[path] = text
  if new:
    logging.warning('Skipping the rest of a damaged shard: %s', text)


def report() -> Dict[str, Any]:
  """What was skipped, for progress lines and `metrics.json` ({} if none)."""
  with _lock:
    if not _skipped and not _damaged:
      return {}
    return {'skipped_records': _skipped,
            'damaged_files': len(_damaged),
            'damaged': dict(_damaged),
            'last_skipped': list(_messages)[-20:]}
