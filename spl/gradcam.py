"""Grad-CAM for 3D video classifiers, and heat-map strips as PNG.

Grad-CAM (Selvaraju et al., 2017) in 3D, as in the SPL paper's Figure 6: for
a class `c`, the last feature map `A` of the backbone ([T', H', W', K], the
input of its 'global_pool' layer) is weighted per channel by the mean
gradient of the class logit,

  alpha_k = mean_{t,y,x} d logit_c / d A[t, y, x, k]
  cam     = ReLU(sum_k alpha_k A[..., k])                    [T', H', W']

and the map is upsampled (linear in time, bilinear in space) to the clip's
[T, H, W]. Upsampling treats every feature cell as the centre of its block of
input pixels (half-pixel centres), which is where 'same'-padded strided
convolutions put it.

The backbone is split at 'global_pool' (every backbone of
`spl.models.factory` names its pooling layer so); the forward pass to the
feature map runs once and the gradient is taken only through the pool and the
head, so a Grad-CAM costs one forward pass plus a tiny backward pass.

A strip (`strip_figure`) shows frames with the map overlaid, a colour bar
of the heat scale and a caption saying how the map was normalised (by default
what `GradCam(normalize=True)` does: divided by its maximum over the clip).
Rendering draws with the Agg canvas directly (never pyplot: no global backend
state, no display) and writes PNG files atomically (temporary name, then
rename), so a reader never sees a partial image.
"""

from __future__ import annotations

import io
import textwrap
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras
from matplotlib import cm
from matplotlib import colormaps
from matplotlib import colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from spl import input_pipeline
from tfrecords_tools import atomic_files

POOL_LAYER = 'global_pool'
_DPI = 80
_PANEL_INCHES = 1.6


def feature_map_model(backbone: tf_keras.Model) -> tf_keras.Model:
  """The backbone cut before its global pool: clips -> last feature map.

  Shares the backbone's layers (and so its weights), adds none.

  Args:
    backbone: A functional backbone of `spl.models.factory` (3D: its
      'global_pool' input is [B, T', H', W', K]).

  Returns:
    A `tf_keras.Model` mapping [B, T, H, W, 3] to the feature map.
  """
  try:
    pool = backbone.get_layer(POOL_LAYER)
  except ValueError:
    raise ValueError(
        f'`backbone` {backbone.name!r} has no layer {POOL_LAYER!r}; Grad-CAM '
        f'needs the feature map before global pooling') from None
  if len(pool.input.shape) != 5:
    raise ValueError(
        f'Grad-CAM here is for 3D networks: the input of {POOL_LAYER!r} of '
        f'{backbone.name!r} must be [B, T, H, W, K], got {pool.input.shape}')
  return tf_keras.Model(backbone.inputs, pool.input,
                        name=f'{backbone.name}_feature_map')


class GradCam:
  """Grad-CAM of a `VideoClassifier`; build once, call per batch of clips."""

  def __init__(self, model: tf_keras.Model):
    """Splits `model` into feature map, pool and head.

    Args:
      model: A classifier of `spl.models.factory.build_classifier` (has
        `.backbone` and `.head`), with a 3D backbone.
    """
    for attr in ('backbone', 'head'):
      if not hasattr(model, attr):
        raise ValueError(f'`model` must be a VideoClassifier with `.{attr}`, '
                         f'got {type(model).__name__}')
    self._model = model
    self._features = feature_map_model(model.backbone)
    self._pool = model.backbone.get_layer(POOL_LAYER)

  @property
  def num_classes(self) -> int:
    return int(self._model.head.num_classes)

  def check_class_index(self, class_index: int) -> int:
    if (isinstance(class_index, bool) or
        not isinstance(class_index, (int, np.integer)) or
        not 0 <= class_index < self.num_classes):
      raise ValueError(f'`class_index` must be an int in [0, '
                       f'{self.num_classes}), got {class_index!r}')
    return int(class_index)

  def feature_cam(self, clips, class_index: int
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """Grad-CAM at feature-map resolution.

    Args:
      clips: float32 [B, T, H, W, 3], normalised as the model was trained.
      class_index: The class whose logit is explained.

    Returns:
      (cam [B, T', H', W'] float32 >= 0, not normalised; logits [B, C]).
    """
    class_index = self.check_class_index(class_index)
    clips = tf.convert_to_tensor(clips, tf.float32)
    if clips.shape.rank != 5:
      raise ValueError(f'`clips` must be [B, T, H, W, 3], got {clips.shape}')
    features = self._features(clips, training=False)
    features = tf.cast(features, tf.float32)
    with tf.GradientTape() as tape:
      tape.watch(features)
      logits = self._model.head(self._pool(features), training=False)
      score = logits[:, class_index]
    grads = tape.gradient(score, features)  # [B, T', H', W', K]
    alpha = tf.reduce_mean(grads, axis=[1, 2, 3], keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(alpha * features, axis=-1))
    return cam.numpy(), logits.numpy()

  def __call__(self, clips, class_index: int, *, normalize: bool = True
               ) -> Tuple[np.ndarray, np.ndarray]:
    """Grad-CAM upsampled to the clips' [T, H, W].

    Args:
      clips: float32 [B, T, H, W, 3], normalised as the model was trained.
      class_index: The class whose logit is explained.
      normalize: Divide each clip's map by its maximum (over the whole clip,
        so frames stay comparable); an all-zero map stays zero.

    Returns:
      (heat [B, T, H, W] float32, logits [B, C]).
    """
    cam, logits = self.feature_cam(clips, class_index)
    size = tuple(np.shape(clips)[1:4])
    heat = np.stack([upsample(c, size) for c in cam])
    if normalize:
      heat = np.stack([normalize_heat(h) for h in heat])
    return heat, logits


def grad_cam(model: tf_keras.Model, clip, class_index: int, *,
             normalize: bool = True) -> np.ndarray:
  """Grad-CAM heat map of one clip for one class.

  Args:
    model: A classifier of `spl.models.factory.build_classifier` with a 3D
      backbone.
    clip: float32 [T, H, W, 3], normalised as the model was trained.
    class_index: The class whose logit is explained, in [0, num_classes).
    normalize: Scale the map to [0, 1] by its maximum over the clip.

  Returns:
    float32 [T, H, W] heat map (>= 0).
  """
  clip = np.asarray(clip, np.float32)
  if clip.ndim != 4:
    raise ValueError(f'`clip` must be [T, H, W, 3], got shape {clip.shape}')
  heat, _ = GradCam(model)(clip[None], class_index, normalize=normalize)
  return heat[0]


def upsample(cam, size: Sequence[int]) -> np.ndarray:
  """Resizes [T', H', W'] to `size` = (T, H, W), bilinear in space and time.

  Args:
    cam: [T', H', W'] map.
    size: Output (T, H, W).

  Returns:
    float32 [T, H, W].
  """
  cam = tf.convert_to_tensor(cam, tf.float32)
  if cam.shape.rank != 3:
    raise ValueError(f'`cam` must be [T, H, W], got {cam.shape}')
  t, h, w = (int(s) for s in size)
  if min(t, h, w) <= 0:
    raise ValueError(f'`size` must be 3 positive ints, got {size!r}')
  # Space: frames as a batch of one-channel images.
  x = tf.image.resize(cam[..., None], (h, w), method='bilinear')[..., 0]
  # Time: the [T', H*W] matrix as one image, resized along its first axis.
  flat = tf.reshape(x, (1, -1, h * w, 1))
  flat = tf.image.resize(flat, (t, h * w), method='bilinear')
  return tf.reshape(flat, (t, h, w)).numpy()


def normalize_heat(heat) -> np.ndarray:
  """Scales a heat map to [0, 1] by its maximum; all-zero stays zero."""
  heat = np.maximum(np.asarray(heat, np.float32), 0.0)
  peak = float(heat.max()) if heat.size else 0.0
  return heat / peak if peak > 0 else heat


# ---- Rendering ----


def denormalize(video, mean: Sequence[float] = input_pipeline.IMAGENET_MEAN,
                std: Sequence[float] = input_pipeline.IMAGENET_STD
                ) -> np.ndarray:
  """Undoes the input pipeline's `(x / 255 - mean) / std`: uint8 RGB frames.

  Args:
    video: float [..., 3] model input.
    mean: Per-channel mean the pipeline subtracted (its default: ImageNet).
    std: Per-channel std it divided by.

  Returns:
    uint8 array of the same shape.
  """
  x = np.asarray(video, np.float32) * np.asarray(std, np.float32)
  x = (x + np.asarray(mean, np.float32)) * 255.0
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def overlay(frames, heat, *, alpha: float = 0.5,
            cmap: str = 'jet') -> np.ndarray:
  """Blends a colour-mapped heat map over frames.

  Args:
    frames: uint8 [T, H, W, 3].
    heat: [T, H, W] in [0, 1].
    alpha: Weight of the heat colour, in [0, 1].
    cmap: A matplotlib colormap name.

  Returns:
    uint8 [T, H, W, 3].
  """
  frames = np.asarray(frames)
  heat = np.asarray(heat, np.float32)
  if frames.ndim != 4 or frames.shape[-1] != 3:
    raise ValueError(f'`frames` must be [T, H, W, 3], got {frames.shape}')
  if heat.shape != frames.shape[:3]:
    raise ValueError(f'`heat` must be {frames.shape[:3]} like the frames, got '
                     f'{heat.shape}')
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'`alpha` must be in [0, 1], got {alpha}')
  colours = colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
  out = (1.0 - alpha) * frames.astype(np.float32) + alpha * colours
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def strip_frame_indices(num_frames: int, max_frames: int) -> np.ndarray:
  """Up to `max_frames` frame indices spread evenly, first and last included."""
  if num_frames <= 0:
    raise ValueError(f'`num_frames` must be > 0, got {num_frames}')
  if max_frames <= 0:
    raise ValueError(f'`max_frames` must be > 0, got {max_frames}')
  n = min(num_frames, max_frames)
  return np.unique(np.round(np.linspace(0, num_frames - 1, n)).astype(int))


# What `GradCam(normalize=True)` (the default, and `spl.attention_maps`)
# does to a map, said under every strip.
NORMALIZED_CAPTION = ('colour = Grad-CAM heat, ReLU then divided by its '
                      'maximum over the whole clip (1 = the clip\'s peak; '
                      'frames comparable; 0 = no evidence for the class)')
COLORBAR_LABEL = 'heat / clip max'


def strip_figure(frames, heat, *, title: str = '', max_frames: int = 8,
                 alpha: float = 0.5, cmap: str = 'jet',
                 caption: Optional[str] = NORMALIZED_CAPTION) -> Figure:
  """One row of frames with the heat map overlaid (the paper's Figure 6).

  A colour bar on the right gives the heat scale, a caption under the frames
  how the map was normalised.

  Args:
    frames: uint8 [T, H, W, 3] (e.g. `denormalize` of the model input).
    heat: [T, H, W] in [0, 1] (`GradCam` output).
    title: Figure title: the class explained, the clip, the score.
    max_frames: Frames shown, evenly spread over T (all if T is smaller).
    alpha: Weight of the heat colour.
    cmap: Heat colormap.
    caption: How `heat` was normalised; the default says what `GradCam`'s
      `normalize=True` does. None: no caption.

  Returns:
    A matplotlib `Figure`: one axes per frame shown, then the colour bar's.
  """
  blended = overlay(frames, heat, alpha=alpha, cmap=cmap)
  indices = strip_frame_indices(blended.shape[0], max_frames)
  n = len(indices)
  h, w = blended.shape[1:3]
  panel_h = _PANEL_INCHES * h / max(h, w)
  panel_w = _PANEL_INCHES * w / max(h, w)
  gap, bar_w, bar_space = 0.08, 0.12, 0.75  # inches
  title_lines = title.split('\n') if title else []
  top = 0.3 + 0.16 * len(title_lines)
  content_w = 0.1 + n * panel_w + (n - 1) * gap + 0.15 + bar_w + bar_space
  # A short strip is widened to its title (9 pt: ~0.075 in a character).
  fig_w = max([content_w] + [0.2 + 0.075 * len(t) for t in title_lines])
  # Wrapped to the figure's width by hand: matplotlib's wrap does not make
  # room for the lines.
  lines = textwrap.wrap(caption or '',
                        width=max(20, int((fig_w - 0.2) / 0.065)))
  bottom = 0.1 + 0.14 * len(lines)
  fig_h = bottom + panel_h + top
  fig = Figure(figsize=(fig_w, fig_h), dpi=_DPI)

  def place(left, width):
    return (left / fig_w, bottom / fig_h, width / fig_w, panel_h / fig_h)

  for i, t in enumerate(indices):
    ax = fig.add_axes(place(0.1 + i * (panel_w + gap), panel_w))
    ax.imshow(blended[t], interpolation='nearest')
    ax.set_title(f't={t}', fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
  cax = fig.add_axes(place(0.1 + n * panel_w + (n - 1) * gap + 0.15, bar_w))
  bar = fig.colorbar(cm.ScalarMappable(colors.Normalize(0.0, 1.0), cmap),
                     cax=cax)
  bar.set_label(COLORBAR_LABEL, fontsize=7)
  bar.ax.tick_params(labelsize=7)
  if caption:
    fig.text(0.1 / fig_w, 0.04 / fig_h, '\n'.join(lines), fontsize=7,
             ha='left', va='bottom', gid='caption')
  if title:
    fig.suptitle(title, fontsize=9)
  return fig


def figure_png(fig: Figure) -> bytes:
  """PNG bytes of a figure; no 'Software' metadata: reproducible bytes."""
  FigureCanvasAgg(fig)
  buf = io.BytesIO()
  fig.savefig(buf, format='png', metadata={'Software': None})
  return buf.getvalue()


def write_png_atomic(path: str, png: bytes) -> None:
  """Writes `png` to `path` via a temporary name, so `path` is never partial."""
  if not png.startswith(b'\x89PNG'):
    raise ValueError(f'refusing to write non-PNG bytes to {path!r}')
  atomic_files.write(path, png)


def write_strip(path: str, frames, heat, *, title: str = '',
                max_frames: int = 8, alpha: float = 0.5,
                cmap: str = 'jet') -> int:
  """Renders `strip_figure` and writes it as PNG to `path`.

  Args:
    path: Output file (local or any `tf.io.gfile` file system).
    frames, heat, title, max_frames, alpha, cmap: As for `strip_figure`.

  Returns:
    The number of frames in the strip.
  """
  fig = strip_figure(frames, heat, title=title, max_frames=max_frames,
                     alpha=alpha, cmap=cmap)
  write_png_atomic(path, figure_png(fig))
  return len(strip_frame_indices(np.shape(frames)[0], max_frames))


def class_index_of(name: str, class_names: Sequence[str],
                   source: Optional[str] = None) -> int:
  """Index of a class name, with an error listing close names when unknown.

  Args:
    name: The class name, e.g. "weak: baking cookies / teacher: scrambling
      eggs".
    class_names: Names by class index.
    source: Where the names come from (a label-space path), for the error.

  Returns:
    The index of `name`.
  """
  names = list(class_names)
  if name in names:
    return names.index(name)
  import difflib  # pylint: disable=g-import-not-at-top
  close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
  where = f' in {source!r}' if source else ''
  hint = f'; closest: {close}' if close else ''
  raise ValueError(f'unknown class name {name!r}{where} ({len(names)} '
                   f'classes){hint}')
