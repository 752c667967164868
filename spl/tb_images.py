"""Images for TensorBoard, beside the scalars: what a reader looks at.

* `evaluation_images`: an evaluation's confusion matrix (rows: true class,
  each row normalised to its clips, the counts in the cells for up to 30
  classes) and its per-class accuracy (one bar per class, sorted, the mean
  drawn across), rendered with matplotlib (Agg canvas, no pyplot state);
* `clip_strip`: sample input clips, a few frames of each side by side, as
  the model sees them after undoing the normalisation;
* `png_image`: a PNG a job already drew (the relabel job's confusion matrix
  and class histogram of a label space).

Each function returns a uint8 [1, H, W, 3|4] array for `tf.summary.image`.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import tensorflow as tf

from spl.inputs.features import IMAGENET_MEAN
from spl.inputs.features import IMAGENET_STD

# Up to this many classes the confusion matrix's cells carry their counts.
MAX_ANNOTATED_CLASSES = 30


def _figure_array(fig: Figure) -> np.ndarray:
  canvas = FigureCanvasAgg(fig)
  canvas.draw()
  return np.asarray(canvas.buffer_rgba())[None].copy()


def confusion_matrix_figure(matrix: Sequence[Sequence[int]],
                            class_names: Optional[Sequence[str]] = None
                            ) -> Figure:
  """Row-normalised confusion matrix (true class down, predicted across)."""
  counts = np.asarray(matrix, np.float64)
  n = counts.shape[0]
  rows = counts.sum(axis=1, keepdims=True)
  share = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
  size = min(12.0, 3.0 + 0.3 * n)
  fig = Figure(figsize=(size + 1.5, size), dpi=80)
  ax = fig.add_subplot()
  shown = ax.imshow(share, cmap='Blues', vmin=0.0, vmax=1.0)
  fig.colorbar(shown, ax=ax, label='share of the true class\'s clips')
  ax.set_xlabel('predicted class')
  ax.set_ylabel('true class')
  right = np.trace(counts) / max(counts.sum(), 1.0)
  ax.set_title(f'{int(counts.sum())} clips, {right:.1%} on the diagonal; '
               'white = 0 clips')
  if n <= MAX_ANNOTATED_CLASSES:
    names = list(class_names) if class_names else [str(i) for i in range(n)]
    ax.set_xticks(range(n), names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    for i in range(n):
      for j in range(n):
        if counts[i, j]:
          ax.text(j, i, f'{int(counts[i, j])}', ha='center', va='center',
                  fontsize=6, color='white' if share[i, j] > 0.5 else 'black')
  fig.tight_layout()
  return fig


def per_class_accuracy_figure(accuracy: Sequence[Optional[float]],
                              class_names: Optional[Sequence[str]] = None
                              ) -> Figure:
  """One bar per class with clips (sorted), the mean as a line."""
  values = [(a, i) for i, a in enumerate(accuracy) if a is not None]
  values.sort()
  n = len(values)
  fig = Figure(figsize=(min(14.0, 3.0 + 0.12 * n), 4.0), dpi=80)
  ax = fig.add_subplot()
  ax.bar(range(n), [a for a, _ in values], color='tab:blue', width=0.9)
  if values:
    mean = float(np.mean([a for a, _ in values]))
    ax.axhline(mean, color='tab:red', label=f'mean {mean:.3f}')
    ax.legend(loc='upper left')
  ax.set_ylim(0.0, 1.0)
  ax.set_ylabel('top-1 accuracy')
  missing = len(accuracy) - n
  ax.set_xlabel('class, sorted by accuracy' +
                (f' ({missing} classes without clips left out)'
                 if missing else ''))
  if n <= MAX_ANNOTATED_CLASSES:
    names = list(class_names) if class_names else None
    ax.set_xticks(range(n), [names[i] if names else str(i)
                             for _, i in values], rotation=90, fontsize=7)
  fig.tight_layout()
  return fig


def evaluation_images(result: Dict, class_names: Optional[Sequence[str]] = None
                      ) -> Dict[str, np.ndarray]:
  """The images of an evaluation result that has the details (else {})."""
  images = {}
  if result.get('confusion_matrix'):
    images['confusion_matrix'] = _figure_array(confusion_matrix_figure(
        result['confusion_matrix'], class_names))
  if result.get('per_class_accuracy'):
    images['per_class_accuracy'] = _figure_array(per_class_accuracy_figure(
        result['per_class_accuracy'], class_names))
  return images


def clip_strip(video: np.ndarray, max_clips: int = 4,
               max_frames: int = 8) -> np.ndarray:
  """Normalised clips [B, T, H, W, 3] (or images [B, H, W, 3]) -> one image:
  a row of frames per clip, evenly spaced frames, pixels back in [0, 255]."""
  video = np.asarray(video)
  normalised = video.dtype != np.uint8  # uint8: `device_finishing` input.
  if video.ndim == 4:
    video = video[:, None]
  video = video[:max_clips]
  t = video.shape[1]
  frames = np.unique(np.linspace(0, t - 1, min(t, max_frames)).round()
                     .astype(int))
  rows = [np.concatenate(list(clip[frames]), axis=1) for clip in video]
  pixels = np.concatenate(rows, axis=0)
  if normalised:
    pixels = (pixels * np.asarray(IMAGENET_STD) + np.asarray(IMAGENET_MEAN))
    pixels = np.clip(np.round(pixels * 255.0), 0, 255).astype(np.uint8)
  return pixels[None]


def png_image(path: str) -> Optional[np.ndarray]:
  """A PNG file as an image, or None if it does not exist."""
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path, 'rb') as f:
    return tf.io.decode_png(f.read(), channels=4).numpy()[None]


def write(images: Dict[str, np.ndarray], step: int, prefix: str) -> None:
  """Writes images under `prefix/` in the default summary writer."""
  for name, image in images.items():
    tf.summary.image(f'{prefix}/{name}', image, step=step)
