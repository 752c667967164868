"""Plots of a label space: what a researcher looks at before pre-training.

Each plot is meant to be read without this code: axes say what they count,
classes are named, and a caption says what blank cells or left-out classes
mean.

* the weak-vs-teacher confusion matrix (rows: weak label = the query that
  found the video; columns: the teacher's top-1 prediction) on a log colour
  scale (a few classes hold most clips; a linear scale shows only the
  diagonal), with the clip count written in every non-empty cell when N is
  small enough to read them; empty cells are left white, and the caption
  says so;
* the clip count of the new classes, largest first, as horizontal bars named
  by class ("weak / teacher" for SPL classes, e.g. "archery / bowling"),
  coloured in-diagonal vs off-diagonal (the paper's Figures 7 and 8); above
  `DEFAULT_TOP_K` classes only the largest are drawn, the title says so and
  the caption sums up the rest;
* SCR as a function of K (integer ticks), with the chosen size marked (a K,
  a target SCR or a class count that need not be a multiple of N). Only the
  `label_spaces.K_VARIANTS` have a K: `scr_curve_png(variant=...)` refuses
  the others.

`*_figure` functions return the matplotlib `Figure` (tests read its artists);
`*_png` return PNG bytes, so callers write them wherever their files live
(local disk, GCS through Beam's FileSystems). Figures are drawn with the Agg
canvas directly, never through pyplot, so no global backend state is touched
and nothing needs a display. Identical inputs give identical bytes.
"""

from __future__ import annotations

import io
import re
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib import colors
from matplotlib import patches
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tfrecords_tools import label_spaces

IN_DIAGONAL_COLOR = '#1f77b4'
OFF_DIAGONAL_COLOR = '#ff7f0e'
# Above this many classes, the confusion matrix's names and cell counts are
# unreadable: neither is drawn and the caption says where the counts are.
MAX_ANNOTATED_CLASSES = 30
# Bars of the class histogram; the rest is summed up in its caption.
DEFAULT_TOP_K = 30
ZERO_CELLS_NOTE = 'white cell = 0 clips'
CONFUSION_XLABEL = 'teacher prediction (top-1 class)'
CONFUSION_YLABEL = 'weak label (query class)'
SCR_XLABEL = 'K = classes / N  (classes per weak label)'
_DPI = 80
# Rough width of one character of a tick label at the fonts used (inches).
_CHAR_INCHES = {7: 0.065, 8: 0.075}

# Axis label of the class histogram, by variant.
_CLASS_AXIS = {
    'weak': 'class = weak label (query)',
    'teacher': 'class = teacher prediction',
    'agreement': 'class = weak label = teacher',
    'spl_b': 'class: weak label / teacher agrees?',
}
_SPL_CLASS_AXIS = 'class: weak label / teacher prediction'


def _plain_log_labels(axis) -> None:
  """Plain numbers (1, 10, 100) on a log axis, no minor labels.

  Matplotlib's default log labels are mathtext (10^2), whose parser costs
  more than the rest of a plot.
  """
  axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f'{v:g}'))
  axis.set_minor_formatter(ticker.NullFormatter())


def figure_png(fig: Figure) -> bytes:
  """PNG bytes of a figure; no 'Software' metadata: reproducible bytes."""
  FigureCanvasAgg(fig)
  buf = io.BytesIO()
  fig.savefig(buf, format='png', metadata={'Software': None})
  return buf.getvalue()


def _inches_axes(fig: Figure, left: float, bottom: float, width: float,
                 height: float):
  """An axes placed in inches (fixed margins; tight_layout costs more than
  the rest of a plot)."""
  w, h = fig.get_size_inches()
  return fig.add_axes((left / w, bottom / h, width / w, height / h))


def _label_inches(labels: Sequence[str], fontsize: int) -> float:
  return max((len(s) for s in labels), default=0) * _CHAR_INCHES[fontsize]


# ---- Confusion matrix ----


def confusion_matrix_figure(confusion: Any, names: Sequence[str],
                            title: str = 'weak label vs teacher') -> Figure:
  """Log-scale heat map of C[weak, teacher], counts written in the cells.

  Args:
    confusion: [N, N] clip counts, rows the weak label, columns the teacher.
    names: the N class names (tick labels when N <= MAX_ANNOTATED_CLASSES).
    title: figure title; the clip total and the off-diagonal share follow it.

  Returns:
    A `Figure`: the matrix axes, then its colour bar.
  """
  c = np.asarray(confusion, np.int64)
  if c.ndim != 2 or c.shape[0] != c.shape[1]:
    raise ValueError(f'`confusion` must be square, got shape {c.shape}')
  n = c.shape[0]
  if len(names) != n:
    raise ValueError(f'`names` must have {n} entries, got {len(names)}')
  annotated = n <= MAX_ANNOTATED_CLASSES
  total = int(c.sum())
  vmax = max(2, int(c.max()) if c.size else 2)
  # The cell text needs room for the largest count at 7 pt.
  cell = max(0.3, 0.07 * len(str(vmax)) + 0.1) if annotated else None
  side = max(3.0, cell * n) if annotated else 4.5
  tick_in = _label_inches(names, 7) + 0.1 if annotated else 0.3
  left, bottom = tick_in + 0.45, tick_in + 0.75
  width = left + side + 1.4
  height = bottom + side + 0.65
  fig = Figure(figsize=(width, height), dpi=_DPI)
  ax = _inches_axes(fig, left, bottom, side, side)
  cax = _inches_axes(fig, left + side + 0.2, bottom, 0.15, side)
  # Empty cells are masked: log(0) has no colour; they show the white axes.
  ax.set_facecolor('white')
  norm = colors.LogNorm(vmin=1, vmax=vmax)
  image = ax.imshow(np.ma.masked_less_equal(c, 0), cmap='viridis',
                    interpolation='nearest', norm=norm, aspect='auto')
  bar = fig.colorbar(image, cax=cax)
  bar.set_label('clips per cell (log scale)')
  # 1, 2, 5, 10, ...: a short range still gets labelled ticks.
  bar.ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
  _plain_log_labels(bar.ax.yaxis)
  ax.set_xlabel(CONFUSION_XLABEL)
  ax.set_ylabel(CONFUSION_YLABEL)
  off = 1.0 - float(np.trace(c)) / total if total else 0.0
  ax.set_title(f'{title}\n{total} clips, {off:.1%} off the diagonal '
               f'(teacher \u2260 weak label)', fontsize=10)
  caption = [ZERO_CELLS_NOTE]
  if annotated:
    ax.set_xticks(range(n))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticks(range(n))
    ax.set_yticklabels(names, fontsize=7)
    for w, t in zip(*np.nonzero(c > 0)):
      count = int(c[w, t])
      # viridis is dark at the low end: white text there, black above.
      dark = norm(count) < 0.6
      ax.text(t, w, str(count), ha='center', va='center', fontsize=7,
              color='white' if dark else 'black', gid='cell_count')
    caption.append('number = clips in the cell')
  else:
    ax.set_xticks([])
    ax.set_yticks([])
    caption.append(f'N = {n}: rows and columns in label-map order, counts '
                   'in relabel_stats.json')
  fig.text(0.01, 0.01, '; '.join(caption), fontsize=8, ha='left',
           va='bottom')
  return fig


def confusion_matrix_png(confusion: Any, names: Sequence[str],
                         title: str = 'weak label vs teacher') -> bytes:
  """PNG bytes of `confusion_matrix_figure`."""
  return figure_png(confusion_matrix_figure(confusion, names, title))


# ---- Class histogram ----


def class_label(name: str) -> str:
  """The short axis label of a label-space class name.

  "weak: archery / teacher: bowling" -> "archery / bowling";
  "weak: archery / teacher disagrees" -> "archery / disagrees"; a plain
  class name (weak, teacher, agreement) stays as it is.
  """
  m = re.fullmatch(r'weak: (.*) / teacher: (.*)', name)
  if m:
    return f'{m.group(1)} / {m.group(2)}'
  m = re.fullmatch(r'weak: (.*) / teacher (agrees|disagrees)', name)
  if m:
    return f'{m.group(1)} / {m.group(2)}'
  return name


def _top_classes(space: Mapping[str, Any], top_k: int
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  counts = np.array([c['num_clips'] for c in space['classes']], np.int64)
  in_diag = np.array([c['in_diagonal'] for c in space['classes']], bool)
  # Stable order: count descending, then class index.
  order = np.lexsort((np.arange(counts.size), -counts))
  return order[:top_k], counts, in_diag


def class_counts_figure(space: Mapping[str, Any],
                        top_k: int = DEFAULT_TOP_K) -> Figure:
  """Clip count of the `top_k` largest classes, by name, in- vs off-diagonal.

  Args:
    space: a label space dict (`tfrecords_tools.label_spaces.make_label_space`).
    top_k: bars drawn; the title says when classes are left out and the
      caption sums them up.

  Returns:
    A `Figure` with one horizontal bar per class shown, largest on top.
  """
  if top_k < 1:
    raise ValueError(f'`top_k` must be >= 1, got {top_k}')
  shown, counts, in_diag = _top_classes(space, top_k)
  labels = [class_label(space['classes'][i]['name']) for i in shown]
  k = len(shown)
  num_classes = len(counts)
  label_in = _label_inches(labels, 8) + 0.15
  plot_w, plot_h = 5.0, max(2.6, 0.22 * k)
  left, bottom, top = label_in + 0.45, 1.1, 0.6
  fig_w, fig_h = left + plot_w + 0.5, bottom + plot_h + top
  fig = Figure(figsize=(fig_w, fig_h), dpi=_DPI)
  ax = _inches_axes(fig, left, bottom, plot_w, plot_h)
  y = np.arange(k)
  variant = space['variant']
  # A weak / teacher class is a whole row / column of the matrix: in- vs
  # off-diagonal does not split them, so one colour and no legend.
  split = variant not in _CLASS_AXIS or variant == 'spl_b'
  bar_colors = [IN_DIAGONAL_COLOR if in_diag[i] or not split
                else OFF_DIAGONAL_COLOR for i in shown]
  ax.barh(y, counts[shown], color=bar_colors, height=0.8)
  peak = max(1, int(counts[shown].max()) if k else 1)
  for yi, i in zip(y, shown):
    ax.text(counts[i] + 0.01 * peak, yi, str(int(counts[i])), va='center',
            ha='left', fontsize=7, gid='bar_count')
  ax.set_xlim(0, peak * 1.12)
  ax.set_ylim(k - 0.5, -0.5)  # Largest on top.
  ax.set_yticks(y)
  ax.set_yticklabels(labels, fontsize=8)
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_xlabel('clips')
  ax.set_ylabel(_CLASS_AXIS.get(variant, _SPL_CLASS_AXIS))
  which = (f'top {k} of {num_classes} classes by clip count'
           if k < num_classes else f'all {num_classes} classes by clip count')
  ax.set_title(f'{variant}: {space["num_classes"]} classes, '
               f'{space["num_clips"]} clips, SCR {space["scr"]:.3f}, '
               f'noise ratio {space["noise_ratio"]:.3f}\n{which}',
               fontsize=10, loc='left')
  present = {bool(in_diag[i]) for i in shown} if split else set()
  handles = []
  if True in present:
    handles.append(patches.Patch(
        color=IN_DIAGONAL_COLOR,
        label='includes the diagonal cell (teacher = weak)'))
  if False in present:
    handles.append(patches.Patch(color=OFF_DIAGONAL_COLOR,
                                 label='off-diagonal (teacher \u2260 weak)'))
  if handles:
    # Below the x label, outside the axes: it covers no bar.
    fig.legend(handles=handles, loc='center left', ncol=2, fontsize=8,
               frameon=False, bbox_to_anchor=(left / fig_w, 0.38 / fig_h))
  caption = []
  if k < num_classes:
    rest = counts.sum() - counts[shown].sum()
    share = rest / counts.sum() if counts.sum() else 0.0
    empty = int(np.sum(counts == 0))
    caption.append(f'not shown: {num_classes - k} classes holding {rest} '
                   f'clips ({share:.1%}); {empty} classes are empty')
  if space.get('num_dropped_clips'):
    caption.append(f'{space["num_dropped_clips"]} clips dropped (in no '
                   'class)')
  if caption:
    fig.text(0.01, 0.01, '; '.join(caption), fontsize=8, ha='left',
             va='bottom')
  return fig


def class_counts_png(space: Mapping[str, Any],
                     top_k: int = DEFAULT_TOP_K) -> bytes:
  """PNG bytes of `class_counts_figure`."""
  return figure_png(class_counts_figure(space, top_k))


# ---- SCR vs K ----


def scr_curve_figure(curve: Sequence[float],
                     chosen_k: Optional[float] = None,
                     target_scr: Optional[float] = None, *,
                     chosen_scr: Optional[float] = None,
                     scr_by_count: Optional[Sequence[float]] = None,
                     variant: Optional[str] = None) -> Figure:
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
    variant: the label space's variant, when drawing for one: only
      `label_spaces.K_VARIANTS` have a K, any other is refused.

  Returns:
    A `Figure`.
  """
  if variant is not None and variant not in label_spaces.K_VARIANTS:
    raise ValueError(f'`variant` {variant!r} has no K: the SCR-vs-K plot is '
                     f'for {label_spaces.K_VARIANTS} only')
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
  fig.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.9)
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
    # The curve rises to the upper right: the lower right stays clear.
    ax.legend(loc='lower right', fontsize=8)
  ax.set_title(f'samples cover ratio of the SPL-M/D selection, N = {n}',
               fontsize=10)
  ax.set_xlabel(SCR_XLABEL)
  ax.set_ylabel('samples cover ratio (SCR)')
  ax.set_xlim(0.5, n + 0.5)
  ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  ax.set_ylim(0, 1.02)
  ax.grid(True, alpha=0.3)
  return fig


def scr_curve_png(curve: Sequence[float],
                  chosen_k: Optional[float] = None,
                  target_scr: Optional[float] = None, *,
                  chosen_scr: Optional[float] = None,
                  scr_by_count: Optional[Sequence[float]] = None,
                  variant: Optional[str] = None) -> bytes:
  """PNG bytes of `scr_curve_figure`."""
  return figure_png(scr_curve_figure(
      curve, chosen_k, target_scr, chosen_scr=chosen_scr,
      scr_by_count=scr_by_count, variant=variant))


def has_scr_curve(space: Mapping[str, Any]) -> bool:
  """Whether a label space has a K, so an SCR-vs-K plot means something."""
  return space['variant'] in label_spaces.K_VARIANTS

