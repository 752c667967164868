"""SPL label spaces: from the weak-vs-teacher confusion matrix to new classes.

Pure numpy. Every clip has a weak label `w` (the query that found it) and a
teacher prediction `t` (top-1 of a model trained on the clean target set);
both index the same N classes. The confusion matrix C[w, t] counts clips per
cell. A label-space *variant* is a table `T` (N x N, int64) that maps a cell
to a new class id, or to `DROP` (-1) when its clips are left out:

* `spl`       N^2 classes, class = N*w + t; empty cells keep their id.
* `spl_m`     K*N classes: the N diagonal cells plus the (K-1)*N most frequent
              off-diagonal cells; a clip of any other cell goes to the diagonal
              cell of its row (its weak label).
* `spl_d`     same selection; clips of unselected cells are dropped.
* `spl_b`     2N classes: per weak label, teacher agrees (2w) / disagrees (2w+1).
* `weak`      N classes, class = w (the plain weak-label baseline).
* `teacher`   N classes, class = t (train on the teacher's predictions).
* `agreement` N classes, class = w on the diagonal, everything else dropped.

Off-diagonal cells are ranked by count (descending), ties by cell id
(N*w + t, ascending), so a selection never depends on sort stability. Selected
cells of `spl_m` / `spl_d` are numbered in cell-id order, so K = N gives back
exactly the `spl` table. When fewer than (K-1)*N off-diagonal cells hold clips,
empty cells fill the selection in the same order: the label space has exactly
K*N classes whatever the data, like `spl` has N^2.

`spl_m` / `spl_d` are sized in one of three ways (`sized_by` in the label
space): by K; by a target samples cover ratio (SCR, the smallest K reaching
it); or by the total class count `num_classes` in [N, N^2], the diagonal plus
the top `num_classes` - N off-diagonal cells. The paper's Figure 4 fixes the
count (400 / 1600 / 4500 classes for N = 200), which is K = 22.5 for 4500: only
the count expresses that. A count of K*N selects exactly what K does, and its
`k` is then that integer K (else the fraction `num_classes` / N).

The label space (`make_label_space`) is a JSON-able dict; its `id` is a hash
of what defines the mapping (variant, K, the class names in and out, the
table), not of the clip counts, so records relabelled from different data with
the same mapping stay interchangeable. The relabel job writes it as
`label_space.json` and the id into every record; the trainer reads it with
`load_label_space`, refuses records with `check_label_space_ids` and a space
other than its experiment declares with `check_expected_label_space`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

DROP = -1

VARIANTS = ('spl', 'spl_m', 'spl_d', 'spl_b', 'weak', 'teacher', 'agreement')
# Variants whose size depends on K (given directly or from a target SCR) or
# on a total class count.
K_VARIANTS = ('spl_m', 'spl_d')
# How a `K_VARIANTS` label space was sized (its `sized_by`): by K, by a target
# SCR (`target_scr`, flag `--scr`) or by a total class count.
SIZED_BY = ('k', 'scr', 'num_classes')

LABEL_SPACE_FORMAT_VERSION = 1


# ---- Confusion matrix and statistics ----


def confusion_matrix(weak: Sequence[int], teacher: Sequence[int],
                     num_classes: int) -> np.ndarray:
  """Counts clips per (weak, teacher) cell.

  Args:
    weak: weak label of every clip.
    teacher: teacher top-1 class of every clip, aligned with `weak`.
    num_classes: N, the size of the shared class list.

  Returns:
    int64 array [N, N], C[w, t] = number of clips with weak w and teacher t.
  """
  if num_classes < 1:
    raise ValueError(f'`num_classes` must be >= 1, got {num_classes}')
  weak = np.asarray(weak, np.int64).reshape(-1)
  teacher = np.asarray(teacher, np.int64).reshape(-1)
  if weak.shape != teacher.shape:
    raise ValueError(f'`weak` and `teacher` must have the same length, got '
                     f'{weak.size} and {teacher.size}')
  for name, v in (('weak', weak), ('teacher', teacher)):
    if v.size and (v.min() < 0 or v.max() >= num_classes):
      raise ValueError(f'`{name}` labels must be in [0, {num_classes}), got '
                       f'values in [{v.min()}, {v.max()}]')
  flat = np.bincount(weak * num_classes + teacher,
                     minlength=num_classes * num_classes)
  return flat.astype(np.int64).reshape(num_classes, num_classes)


def _check_confusion(confusion: Any) -> np.ndarray:
  c = np.asarray(confusion)
  if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] < 1:
    raise ValueError(f'`confusion` must be a non-empty square matrix, got '
                     f'shape {c.shape}')
  if not np.issubdtype(c.dtype, np.integer):
    raise ValueError(f'`confusion` must hold integer counts, got {c.dtype}')
  if c.size and c.min() < 0:
    raise ValueError('`confusion` counts must be >= 0')
  return c.astype(np.int64)


def noise_ratio(confusion: Any) -> float:
  """Fraction of clips whose teacher disagrees with the weak label (0 if none).

  A property of the data, not of a variant: the same for every label space
  built from one confusion matrix (dropped clips included).
  """
  c = _check_confusion(confusion)
  total = int(c.sum())
  # Paper, Table 2: synthetic noise ratio = # off-diagonal / # all entries of C.
  return float((total - int(np.trace(c))) / total) if total else 0.0


def off_diagonal_ranking(confusion: Any) -> np.ndarray:
  """Off-diagonal cell ids, most frequent first; ties by cell id ascending.

  Args:
    confusion: [N, N] counts.

  Returns:
    int64 array of the N*(N-1) off-diagonal cell ids (N*w + t).
  """
  c = _check_confusion(confusion)
  n = c.shape[0]
  cells = np.arange(n * n, dtype=np.int64)
  off = cells[cells // n != cells % n]
  counts = c.reshape(-1)[off]
  # lexsort sorts by the last key first: count descending, then cell id.
  return off[np.lexsort((off, -counts))]


def selected_cells(confusion: Any, k: Optional[int] = None, *,
                   num_classes: Optional[int] = None) -> np.ndarray:
  """Cells kept by SPL-M / SPL-D: the diagonal + the top off-diagonal cells.

  Args:
    confusion: [N, N] counts.
    k: K: keep the top (K-1)*N off-diagonal cells (K*N cells in all).
    num_classes: alternatively, the total number of cells in [N, N^2]: keep
      the top `num_classes` - N off-diagonal cells (any count, not only a
      multiple of N).

  Returns:
    Sorted int64 cell ids, exactly K*N (or `num_classes`) of them.
  """
  c = _check_confusion(confusion)
  n = c.shape[0]
  if (k is None) == (num_classes is None):
    raise ValueError(f'exactly one of `k` and `num_classes` must be given, '
                     f'got k={k}, num_classes={num_classes}')
  if k is not None:
    _check_k(k, n)
    num_classes = k * n
  else:
    _check_num_classes(num_classes, n)
  diagonal = np.arange(n, dtype=np.int64) * (n + 1)
  top = off_diagonal_ranking(c)[:num_classes - n]
  return np.sort(np.concatenate([diagonal, top]))


def scr(confusion: Any, cells: Iterable[int]) -> float:
  """Samples cover ratio: clips in `cells` / all clips (0 when no clips)."""
  c = _check_confusion(confusion)
  total = int(c.sum())
  if not total:
    return 0.0
  cells = np.unique(np.asarray(list(cells), np.int64))
  return float(int(c.reshape(-1)[cells].sum()) / total)


def scr_curve(confusion: Any) -> List[float]:
  """SCR of the SPL-M/D selection for K = 1..N (index K-1)."""
  c = _check_confusion(confusion)
  # Every N-th class count, from one ranking (not one sort per K).
  return scr_by_num_classes(c)[::c.shape[0]]


def scr_by_num_classes(confusion: Any) -> List[float]:
  """SCR of the SPL-M/D selection for every class count N..N^2 (index count-N).

  Entry (K-1)*N equals `scr_curve(confusion)[K-1]`; the entries between show
  the counts that are not a multiple of N (Figure 4's 4500 classes, N = 200).
  """
  c = _check_confusion(confusion)
  total = int(c.sum())
  if not total:
    return [0.0] * (c.size - c.shape[0] + 1)
  covered = np.concatenate([
      [int(np.trace(c))],
      int(np.trace(c)) + np.cumsum(c.reshape(-1)[off_diagonal_ranking(c)])])
  # Integer counts / total: the same floats as `scr` of each selection.
  return [int(x) / total for x in covered]


def k_for_scr(confusion: Any, target_scr: float) -> int:
  """Smallest K in [1, N] whose selection covers >= `target_scr` of the clips.

  K = N covers every cell, so a target in (0, 1] is always reached.
  """
  c = _check_confusion(confusion)
  if not 0.0 < target_scr <= 1.0:
    raise ValueError(f'`target_scr` must be in (0, 1], got {target_scr}')
  n = c.shape[0]
  total = int(c.sum())
  flat = c.reshape(-1)
  covered = int(np.trace(c))
  ranking = off_diagonal_ranking(c)
  for k in range(1, n + 1):
    if k > 1:
      covered += int(flat[ranking[(k - 2) * n:(k - 1) * n]].sum())
    if covered >= target_scr * total:
      return k
  return n


def _check_k(k: int, n: int) -> None:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
    raise ValueError(f'`k` must be an integer, got {k!r}')
  if not 1 <= k <= n:
    raise ValueError(f'`k` must be in [1, N={n}], got {k}')


def _check_num_classes(num_classes: int, n: int) -> None:
  if (isinstance(num_classes, bool) or
      not isinstance(num_classes, (int, np.integer))):
    raise ValueError(f'`num_classes` must be an integer, got {num_classes!r}')
  if not n <= num_classes <= n * n:
    raise ValueError(f'`num_classes` must be in [N, N^2] = [{n}, {n * n}] '
                     f'(the N diagonal classes plus up to N*(N-1) '
                     f'off-diagonal ones), got {num_classes}')


def check_sizing(variant: str, n: int, *, k: Optional[int] = None,
                 target_scr: Optional[float] = None,
                 num_classes: Optional[int] = None) -> Optional[str]:
  """Checks how `variant` is sized over N classes, before any data is read.

  `spl_m` / `spl_d` need exactly one of `k`, `target_scr`, `num_classes`; the
  other variants have a fixed size and take none (as `variant_table`).

  Args:
    variant: one of `VARIANTS`.
    n: N, the number of weak-label classes.
    k: K in [1, N].
    target_scr: target SCR in (0, 1].
    num_classes: total class count in [N, N^2].

  Returns:
    The way the space is sized, one of `SIZED_BY`, or None for a variant of
    fixed size.
  """
  if variant not in VARIANTS:
    raise ValueError(f'`variant` must be one of {VARIANTS}, got {variant!r}')
  given = {'k': k, 'scr': target_scr, 'num_classes': num_classes}
  given = [name for name, v in given.items() if v is not None]
  if variant not in K_VARIANTS:
    if given:
      raise ValueError(f'`k` / `target_scr` / `num_classes` only apply to '
                       f'{K_VARIANTS}, not {variant!r}; got k={k}, '
                       f'target_scr={target_scr}, num_classes={num_classes}')
    return None
  if len(given) != 1:
    raise ValueError(f'variant {variant!r} needs exactly one of `k`, '
                     f'`target_scr` and `num_classes`, got k={k}, '
                     f'target_scr={target_scr}, num_classes={num_classes}')
  if k is not None:
    _check_k(k, n)
  elif target_scr is not None:
    if not 0.0 < target_scr <= 1.0:
      raise ValueError(f'`target_scr` must be in (0, 1], got {target_scr}')
  else:
    _check_num_classes(num_classes, n)
  return given[0]


# ---- Variant tables ----


def variant_table(variant: str, confusion: Any, k: Optional[int] = None, *,
                  num_classes: Optional[int] = None) -> np.ndarray:
  """The (weak, teacher) -> new class table of `variant`.

  Args:
    variant: one of `VARIANTS`.
    confusion: [N, N] counts (only `spl_m` / `spl_d` look at the counts).
    k: K for `spl_m` / `spl_d`, in [1, N]; must be None for the others.
    num_classes: alternatively to `k`, the class count of `spl_m` / `spl_d`,
      in [N, N^2] (see `selected_cells`).

  Returns:
    int64 [N, N]; entry is the new class id or `DROP`.
  """
  c = _check_confusion(confusion)
  n = c.shape[0]
  if variant not in VARIANTS:
    raise ValueError(f'`variant` must be one of {VARIANTS}, got {variant!r}')
  if variant in K_VARIANTS:
    if k is None and num_classes is None:
      raise ValueError(f'`k` is required for variant {variant!r} (or '
                       f'`num_classes`)')
  else:
    for name, value in (('k', k), ('num_classes', num_classes)):
      if value is not None:
        raise ValueError(f'`{name}` only applies to {K_VARIANTS}, got '
                         f'{name}={value} for {variant!r}')
  w, t = np.meshgrid(np.arange(n, dtype=np.int64),
                     np.arange(n, dtype=np.int64), indexing='ij')
  diag = w == t
  if variant == 'spl':
    return n * w + t
  if variant == 'spl_b':
    return 2 * w + (~diag).astype(np.int64)
  if variant == 'weak':
    return w.copy()
  if variant == 'teacher':
    return t.copy()
  if variant == 'agreement':
    return np.where(diag, w, DROP)
  cells = selected_cells(c, k, num_classes=num_classes)
  table = np.full(n * n, DROP, np.int64)
  table[cells] = np.arange(cells.size, dtype=np.int64)
  table = table.reshape(n, n)
  if variant == 'spl_m':
    row_diag_class = table[np.arange(n), np.arange(n)]
    table = np.where(table == DROP, row_diag_class[:, None], table)
  return table


def num_output_classes(variant: str, num_classes: int,
                       k: Optional[int] = None) -> int:
  """Size of the label space of `variant` over N = `num_classes`."""
  n = num_classes
  sizes = {'spl': n * n, 'spl_b': 2 * n, 'weak': n, 'teacher': n,
           'agreement': n}
  if variant in K_VARIANTS:
    _check_k(k, n)
    return k * n
  if variant not in sizes:
    raise ValueError(f'`variant` must be one of {VARIANTS}, got {variant!r}')
  return sizes[variant]


def class_names(variant: str, table: np.ndarray,
                names: Sequence[str]) -> List[str]:
  """Human-readable name of every new class, by class id.

  A class holding one cell is "weak: W / teacher: T"; a `spl_m` diagonal class
  that also absorbs unselected cells keeps its diagonal cell's name; `spl_b`
  classes are "weak: W / teacher agrees|disagrees"; `weak`, `teacher`,
  `agreement` keep the original class names.
  """
  n = len(names)
  if variant in ('weak', 'teacher', 'agreement'):
    return list(names)
  if variant == 'spl_b':
    out = []
    for w in range(n):
      out += [f'weak: {names[w]} / teacher agrees',
              f'weak: {names[w]} / teacher disagrees']
    return out
  num = int(table.max()) + 1 if table.size else 0
  out: List[Optional[str]] = [None] * num
  for w in range(n):
    for t in range(n):
      cls = int(table[w, t])
      # The cell that names a class: itself when it owns the class, else the
      # diagonal cell of the row it is merged into (visited at t == w).
      if cls != DROP and (out[cls] is None or w == t):
        out[cls] = f'weak: {names[w]} / teacher: {names[t]}'
  return [str(x) for x in out]


# ---- The label space document ----


def make_label_space(variant: str, confusion: Any, names: Sequence[str], *,
                     k: Optional[int] = None,
                     target_scr: Optional[float] = None,
                     num_classes: Optional[int] = None) -> Dict[str, Any]:
  """Builds the `label_space.json` content of `variant` for this data.

  Args:
    variant: one of `VARIANTS`.
    confusion: [N, N] counts C[weak, teacher].
    names: the N class names (the weak label map, shared by the teacher).
    k: K for `spl_m` / `spl_d`.
    target_scr: alternatively, the target SCR from which K is chosen.
    num_classes: alternatively, the total class count of `spl_m` / `spl_d`
      in [N, N^2] (Figure 4's way: 400 / 1600 / 4500 classes for N = 200).

  Returns:
    A JSON-able dict: `id`, `variant`, `num_input_classes` (N),
    `num_classes` (output), `sized_by` (one of `SIZED_BY`, None for a
    variant of fixed size), `k` (int; `num_classes` / N as a float when a
    class count that is not a multiple of N was asked for), `target_scr`,
    `scr` (reached), `noise_ratio`, `num_clips`, `num_dropped_clips`,
    `input_classes`, `classes` (per class: `index`, `name`, `cells` as
    [weak name, teacher name] pairs, `in_diagonal`, `num_clips`) and `table`
    (N x N class ids, -1 = drop).
  """
  c = _check_confusion(confusion)
  n = c.shape[0]
  names = [str(x) for x in names]
  if len(names) != n:
    raise ValueError(f'`names` must have N={n} entries, got {len(names)}')
  if len(set(names)) != n:
    raise ValueError('`names` must be unique')
  sized_by = check_sizing(variant, n, k=k, target_scr=target_scr,
                          num_classes=num_classes)
  if sized_by is None:
    table = variant_table(variant, c)
    num_out = num_output_classes(variant, n)
  else:
    if sized_by == 'scr':
      k = k_for_scr(c, target_scr)
    if sized_by == 'num_classes':
      num_out = int(num_classes)
      # An integer K when the count is K*N: the same mapping, the same id.
      k = num_out // n if num_out % n == 0 else num_out / n
    else:
      num_out = int(k) * n
    table = variant_table(variant, c, num_classes=num_out)
  out_names = class_names(variant, table, names)
  flat_table = table.reshape(-1)
  flat_counts = c.reshape(-1)
  class_counts = np.bincount(flat_table[flat_table != DROP],
                             weights=flat_counts[flat_table != DROP],
                             minlength=num_out).astype(np.int64)
  classes = []
  for cls in range(num_out):
    cells = np.flatnonzero(flat_table == cls)
    classes.append({
        'index': cls,
        'name': out_names[cls],
        'cells': [[names[x // n], names[x % n]] for x in cells.tolist()],
        'in_diagonal': bool(np.any(cells // n == cells % n)),
        'num_clips': int(class_counts[cls]),
    })
  if variant in K_VARIANTS:
    cover = scr(c, selected_cells(c, num_classes=num_out))
  elif variant == 'agreement':
    cover = scr(c, np.arange(n) * (n + 1))
  else:
    cover = scr(c, range(n * n))
  total = int(c.sum())
  space = {
      'format_version': LABEL_SPACE_FORMAT_VERSION,
      'variant': variant,
      'num_input_classes': n,
      'num_classes': num_out,
      'sized_by': sized_by,
      'k': k,
      'target_scr': target_scr,
      'scr': cover,
      'noise_ratio': noise_ratio(c),
      'num_clips': total,
      'num_dropped_clips': int(flat_counts[flat_table == DROP].sum()),
      'input_classes': names,
      'classes': classes,
      'table': table.tolist(),
  }
  space['id'] = label_space_id(space)
  return space


def label_space_id(space: Mapping[str, Any]) -> str:
  """Stable id `<variant>-<12 hex>` of what defines the mapping.

  Hashes the variant, K, input and output class names and the table, in
  canonical JSON; clip counts and SCR are statistics of one dataset and stay
  out, so the same mapping always has the same id.
  """
  key = {
      'format_version': space['format_version'],
      'variant': space['variant'],
      'k': space['k'],
      'input_classes': list(space['input_classes']),
      'classes': [c['name'] for c in space['classes']],
      'table': [list(map(int, row)) for row in space['table']],
  }
  digest = hashlib.sha256(json.dumps(
      key, sort_keys=True, separators=(',', ':'),
      ensure_ascii=False).encode('utf-8')).hexdigest()
  return f'{space["variant"]}-{digest[:12]}'


def label_space_json(space: Mapping[str, Any]) -> str:
  """Canonical text of `label_space.json` (sorted keys: same bytes on rerun)."""
  return json.dumps(space, indent=1, sort_keys=True, ensure_ascii=False) + '\n'


_REQUIRED_KEYS = ('format_version', 'id', 'variant', 'num_input_classes',
                  'num_classes', 'k', 'input_classes', 'classes', 'table')


def validate_label_space(space: Mapping[str, Any]) -> None:
  """Raises ValueError when `space` is not a consistent label space."""
  missing = [k for k in _REQUIRED_KEYS if k not in space]
  if missing:
    raise ValueError(f'label space is missing keys {missing}')
  version = space['format_version']
  is_int = isinstance(version, int) and not isinstance(version, bool)
  if is_int and version > LABEL_SPACE_FORMAT_VERSION:
    # A file of a newer relabel job: its fields may mean something else.
    raise ValueError(f'label space format_version {version} is newer than '
                     f'this code reads ({LABEL_SPACE_FORMAT_VERSION}): update '
                     f'the code, or relabel with this version')
  if not is_int or version != LABEL_SPACE_FORMAT_VERSION:
    raise ValueError(f'label space format_version must be '
                     f'{LABEL_SPACE_FORMAT_VERSION}, got {version!r}')
  n = space['num_input_classes']
  table = np.asarray(space['table'], np.int64)
  if table.shape != (n, n):
    raise ValueError(f'label space table must be {n}x{n}, got {table.shape}')
  num = space['num_classes']
  if len(space['classes']) != num:
    raise ValueError(f'label space lists {len(space["classes"])} classes, '
                     f'num_classes is {num}')
  if table.size and (table.min() < DROP or table.max() >= num):
    raise ValueError(f'label space table values must be in [-1, {num})')
  # Optional: files written before it existed lack it (`label_space_sized_by`).
  if space.get('sized_by') not in (None,) + SIZED_BY:
    raise ValueError(f'label space sized_by must be one of {SIZED_BY} or '
                     f'null, got {space["sized_by"]!r}')
  expected = label_space_id(space)
  if space['id'] != expected:
    raise ValueError(f'label space id {space["id"]!r} does not match its '
                     f'content (expected {expected!r}): edited or corrupt')


def load_label_space(path: str) -> Dict[str, Any]:
  """Reads and validates a `label_space.json` written by the relabel job.

  Args:
    path: local path of the file (the trainer copies remote files first, or
      passes what `tf.io.gfile.GFile(...).read()` returns to
      `parse_label_space`).

  Returns:
    The label space dict; `num_classes` sizes the classifier.
  """
  with open(path, encoding='utf-8') as f:
    return parse_label_space(f.read(), source=path)


def parse_label_space(text: str, source: str = '<string>') -> Dict[str, Any]:
  """Parses and validates label-space JSON text; `source` names it in errors."""
  try:
    space = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f'{source}: not valid JSON: {e}') from e
  try:
    validate_label_space(space)
  except ValueError as e:
    raise ValueError(f'{source}: {e}') from e
  return space


def check_label_space_ids(space: Mapping[str, Any],
                          record_ids: Iterable[Any]) -> int:
  """Checks that every record's `clip/label_space/id` is the space's id.

  Args:
    space: a label space dict (`load_label_space`).
    record_ids: the id of every record (str or bytes; None or '' for a record
      without one, which was never relabelled).

  Returns:
    The number of records checked.

  Raises:
    ValueError: naming the foreign ids and how many records carry them.
  """
  expected = space['id']
  bad: Dict[str, int] = {}
  count = 0
  for rid in record_ids:
    count += 1
    if isinstance(rid, bytes):
      rid = rid.decode('utf-8', errors='replace')
    if rid != expected:
      key = repr(rid) if rid else '<none: record not relabelled>'
      bad[key] = bad.get(key, 0) + 1
  if bad:
    detail = ', '.join(f'{k} x{v}' for k, v in sorted(bad.items()))
    raise ValueError(f'{sum(bad.values())} of {count} records have a label '
                     f'space id other than {expected!r}: {detail}')
  return count


def label_space_sized_by(space: Mapping[str, Any]) -> Optional[str]:
  """How `space` was sized: one of `SIZED_BY`, or None (a fixed-size variant).

  Label spaces written before the `sized_by` field existed were sized by K or
  by a target SCR; `target_scr` tells which.
  """
  if 'sized_by' in space:
    return space['sized_by']
  if space['variant'] not in K_VARIANTS:
    return None
  return 'scr' if space.get('target_scr') is not None else 'k'


# Default tolerance of `check_expected_label_space` on the SCR: the paper
# calls 400 classes (SCR 49.81%) its "SCR 0.50" point.
SCR_TOLERANCE = 0.005


def check_expected_label_space(space: Mapping[str, Any], *, source: str,
                               variant: Optional[str] = None,
                               num_classes: Optional[int] = None,
                               k: Optional[float] = None,
                               scr: Optional[float] = None,
                               scr_tolerance: float = SCR_TOLERANCE) -> None:
  """Checks a label space against what an experiment declares.

  A run configured for one Figure 4 point must not train on the label space
  of another: the class count alone does not tell `spl_m` from `spl_d`, nor
  an SCR target from a K. Arguments left None are not checked.

  Args:
    space: a parsed label space (`parse_label_space` / `load_label_space`).
    source: where it was read from (the `label_space.json` path), for errors.
    variant: the expected variant.
    num_classes: the expected number of output classes.
    k: the expected K (compared to `k`, which is `num_classes` / N for a
      space sized by a count that is not a multiple of N, e.g. 22.5).
    scr: the expected samples cover ratio: compared to the target the space
      was sized by (`target_scr`) when it was sized by SCR, otherwise to the
      SCR it reached (`scr`), within `scr_tolerance`.
    scr_tolerance: absolute tolerance of the SCR comparison.

  Raises:
    ValueError: naming `source`, the label space id and every field that
      differs, with the file's value and the expected one.
  """
  if not source:
    raise ValueError('`source` must name the label space file, got '
                     f'{source!r}')
  if variant is not None and variant not in VARIANTS:
    raise ValueError(f'`variant` must be one of {VARIANTS}, got {variant!r}')
  if num_classes is not None and (
      isinstance(num_classes, bool) or
      not isinstance(num_classes, (int, np.integer)) or num_classes < 1):
    raise ValueError(f'`num_classes` must be an integer >= 1, got '
                     f'{num_classes!r}')
  if k is not None and not k > 0:
    raise ValueError(f'`k` must be > 0, got {k}')
  if scr is not None and not 0.0 < scr <= 1.0:
    raise ValueError(f'`scr` must be in (0, 1], got {scr}')
  if not scr_tolerance >= 0:
    raise ValueError(f'`scr_tolerance` must be >= 0, got {scr_tolerance}')
  problems = []
  if variant is not None and space['variant'] != variant:
    problems.append(f'`variant` is {space["variant"]!r}, expected '
                    f'{variant!r}')
  if num_classes is not None and space['num_classes'] != num_classes:
    problems.append(f'`num_classes` is {space["num_classes"]}, expected '
                    f'{num_classes}')
  if k is not None:
    have = space.get('k')
    # A fractional K is num_classes / N: equal up to float round-off.
    if have is None or abs(have - k) > 1e-9 * max(1.0, abs(k)):
      problems.append(f'`k` is {have}, expected {k}')
  if scr is not None:
    sized_by = label_space_sized_by(space)
    field = 'target_scr' if sized_by == 'scr' else 'scr'
    have = space.get(field)
    if have is None or abs(have - scr) > scr_tolerance:
      how = (f'sized by {sized_by}' if sized_by else
             f'{space["variant"]} has a fixed size')
      problems.append(f'`{field}` is {have} ({how}), expected {scr} '
                      f'+- {scr_tolerance}')
  if problems:
    raise ValueError(f'{source}: label space {space.get("id")!r} is not the '
                     f'one the experiment declares: ' + '; '.join(problems))


def relabel_lookup(space: Mapping[str, Any]) -> np.ndarray:
  """The table as an int64 [N, N] array, for fast per-clip lookups."""
  return np.asarray(space['table'], np.int64)
