"""Plots of a label space: what a researcher looks at before pre-training.

* the weak-vs-teacher confusion matrix on a log colour scale (a few classes
  hold most clips; a linear scale shows only the diagonal);
* the clip count of every new class, sorted, coloured in-diagonal vs
  off-diagonal (the paper's Figures 7 and 8);
* SCR as a function of K, with the chosen size marked (a K, a target SCR or
  a class count that need not be a multiple of N).

Each function returns PNG bytes, so callers write them wherever their files
live (local disk, GCS through Beam's FileSystems). Figures are drawn with the
Agg canvas directly, never through pyplot, so no global backend state is
touched and nothing needs a display.
"""

from __future__ import annotations

import io
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from matplotlib import colors
from matplotlib import patches
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

IN_DIAGONAL_COLOR = '#1f77b4'
OFF_DIAGONAL_COLOR = '#ff7f0e'
# Above this many classes, tick labels are unreadable: use indices only.
_MAX_NAMED_TICKS = 30
_DPI = 80


def _plain_log_labels(axis) -> None:
  """Plain numbers (1, 10, 100) on a log axis, no minor labels.

  Matplotlib's default log labels are mathtext (10^2), whose parser costs
  more than the rest of a plot.
  """
  axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f'{v:g}'))
  axis.set_minor_formatter(ticker.NullFormatter())


def _png(fig: Figure) -> bytes:
  FigureCanvasAgg(fig)
  buf = io.BytesIO()
  # No 'Software' metadata: identical inputs give identical bytes.
  fig.savefig(buf, format='png', metadata={'Software': None})
  return buf.getvalue()


def confusion_matrix_png(confusion: Any, names: Sequence[str],
                         title: str = 'weak label vs teacher') -> bytes:
  """Log-scale heat map of C[weak, teacher].

  Args:
    confusion: [N, N] clip counts.
    names: the N class names (tick labels when N is small).
    title: figure title.

  Returns:
    PNG bytes.
  """
  c = np.asarray(confusion, np.int64)
  if c.ndim != 2 or c.shape[0] != c.shape[1]:
    raise ValueError(f'`confusion` must be square, got shape {c.shape}')
  n = c.shape[0]
  if len(names) != n:
    raise ValueError(f'`names` must have {n} entries, got {len(names)}')
  fig = Figure(figsize=(7.5, 6), dpi=_DPI)
  # Fixed margins: tight_layout costs more than the rest of the plot.
  fig.subplots_adjust(left=0.2, right=0.95, bottom=0.2, top=0.93)
  ax = fig.add_subplot(1, 1, 1)
  # Empty cells are masked (shown blank): log(0) has no colour.
  masked = np.ma.masked_less_equal(c, 0)
  vmax = max(1, int(c.max()) if c.size else 1)
  image = ax.imshow(masked, cmap='viridis', interpolation='nearest',
                    norm=colors.LogNorm(vmin=1, vmax=max(vmax, 2)))
  bar = fig.colorbar(image, ax=ax, label='clips (log scale)')
  _plain_log_labels(bar.ax.yaxis)
  ax.set_xlabel('teacher prediction')
  ax.set_ylabel('weak label')
  ax.set_title(title)
  if n <= _MAX_NAMED_TICKS:
    ax.set_xticks(range(n))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticks(range(n))
    ax.set_yticklabels(names, fontsize=7)
  return _png(fig)


def class_counts_png(space: Mapping[str, Any]) -> bytes:
  """Clip count per new class, sorted descending, in- vs off-diagonal.

  Args:
    space: a label space dict (`tfrecords_tools.label_spaces.make_label_space`).

  Returns:
    PNG bytes.
  """
  classes = space['classes']
  counts = np.array([c['num_clips'] for c in classes], np.int64)
  in_diag = np.array([c['in_diagonal'] for c in classes], bool)
  # Stable order: count descending, then class index.
  order = np.lexsort((np.arange(counts.size), -counts))
  fig = Figure(figsize=(10, 4), dpi=_DPI)
  fig.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.9)
  ax = fig.add_subplot(1, 1, 1)
  x = np.arange(counts.size)
  sorted_counts = counts[order]
  log = bool(counts.size and counts.max() > 0)
  # One line collection per colour, not one patch per class: N^2 = 40,000
  # classes (N = 200) would take minutes as bars.
  bottom = 0.5 if log else 0.0
  width = max(0.5, min(8.0, 600.0 / max(1, counts.size)))
  for mask, color in ((in_diag[order], IN_DIAGONAL_COLOR),
                      (~in_diag[order], OFF_DIAGONAL_COLOR)):
    keep = mask & (sorted_counts > 0)
    ax.vlines(x[keep], bottom, sorted_counts[keep], colors=color,
              linewidth=width)
  ax.set_xlim(-1, max(1, counts.size))
  if log:
    ax.set_yscale('log')
    ax.set_ylim(bottom=bottom)
    _plain_log_labels(ax.yaxis)
  ax.set_xlabel(f'{space["variant"]} classes, sorted by clip count')
  ax.set_ylabel('clips')
  ax.set_title(f'{space["id"]}: {space["num_classes"]} classes, '
               f'SCR {space["scr"]:.3f}, noise {space["noise_ratio"]:.3f}')
  ax.legend(handles=[patches.Patch(color=IN_DIAGONAL_COLOR, label='in-diagonal'),
                     patches.Patch(color=OFF_DIAGONAL_COLOR,
                                   label='off-diagonal')],
            loc='upper right')
  return _png(fig)


def scr_curve_png(curve: Sequence[float],
                  chosen_k: Optional[float] = None,
                  target_scr: Optional[float] = None, *,
                  chosen_scr: Optional[float] = None,
                  scr_by_count: Optional[Sequence[float]] = None) -> bytes:
  """SCR of the SPL-M/D selection for K = 1..N.

  Args:
    curve: SCR for K = 1..N (`tfrecords_tools.label_spaces.scr_curve`), drawn as markers
      (and as the line when `scr_by_count` is not given).
    chosen_k: the K in use, marked on the curve; fractional for a class count
      that is not a multiple of N (K = `num_classes` / N, e.g. 22.5).
    target_scr: the target SCR it was chosen from, drawn as a line.
    chosen_scr: the SCR reached at `chosen_k` (the label space's `scr`).
      Needed for a fractional `chosen_k` unless `scr_by_count` is given.
    scr_by_count: SCR for every class count N..N^2
      (`tfrecords_tools.label_spaces.scr_by_num_classes`); drawn as the line, so a
      fractional K sits on it (the curve between two integer K is concave,
      not straight).

  Returns:
    PNG bytes.
  """
  curve = np.asarray(curve, np.float64)
  if curve.ndim != 1 or not curve.size:
    raise ValueError('`curve` must be a non-empty 1-D sequence')
  n = curve.size
  ks = np.arange(1, n + 1)
  if scr_by_count is not None:
    scr_by_count = np.asarray(scr_by_count, np.float64)
    if scr_by_count.shape != (n * n - n + 1,):
      raise ValueError(f'`scr_by_count` must hold N^2 - N + 1 = '
                       f'{n * n - n + 1} values (N = {n} from `curve`), got '
                       f'shape {scr_by_count.shape}')
  chosen_count = None
  if chosen_k is not None:
    if not 1 <= chosen_k <= n:
      raise ValueError(f'`chosen_k` must be in [1, {n}], got {chosen_k}')
    chosen_count = int(round(chosen_k * n))
    if chosen_scr is None:
      if scr_by_count is not None:
        chosen_scr = float(scr_by_count[chosen_count - n])
      elif float(chosen_k).is_integer():
        chosen_scr = float(curve[int(chosen_k) - 1])
      else:
        raise ValueError(f'`chosen_scr` is required for a fractional '
                         f'`chosen_k` ({chosen_k}) without `scr_by_count`')
  fig = Figure(figsize=(6, 4), dpi=_DPI)
  fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.95)
  ax = fig.add_subplot(1, 1, 1)
  if scr_by_count is None:
    ax.plot(ks, curve, marker='o', markersize=3)
  else:
    counts = np.arange(n, n * n + 1)
    ax.plot(counts / n, scr_by_count, linewidth=1)
    ax.plot(ks, curve, 'o', markersize=3, color='C0')
  if target_scr is not None:
    ax.axhline(target_scr, color='gray', linestyle='--',
               label=f'target SCR {target_scr:.3f}')
  if chosen_k is not None:
    ax.plot([chosen_k], [chosen_scr], 'r*', markersize=12,
            label=f'{chosen_count} classes (K = {chosen_k:g}), '
                  f'SCR {chosen_scr:.4f}')
  if chosen_k is not None or target_scr is not None:
    ax.legend(loc='lower right')
  ax.set_xlabel('K (classes per weak label) = classes / N')
  ax.set_ylabel('samples cover ratio')
  ax.set_ylim(0, 1.02)
  ax.grid(True, alpha=0.3)
  return _png(fig)
