"""The augmentation knobs of `make_dataset` and their checks."""

import dataclasses
from typing import Any, Dict, Optional, Tuple

from spl.inputs.features import IMAGENET_MEAN
from spl.inputs.features import IMAGENET_STD


@dataclasses.dataclass(frozen=True)
class AugmentationOptions:
  """Knobs accepted as `**augmentation_kwargs` of `make_dataset`.

  Attributes:
    scale_jitter: training short-side size range `(min, max)` in pixels before
      the random crop; None: `(round(crop * 8/7), round(crop * 10/7))`.
    min_resize: evaluation short-side size; None: `round(crop * 8/7)`.
    random_flip: random left-right flip in training.
    brightness, contrast, saturation, hue: photometric jitter strengths (see
      module docstring); 0 disables one.
    color_jitter_prob: probability that a training clip is colour-jittered.
    mean, std: per-channel normalisation of [0, 1] pixels.
    shuffle_buffer_size: records in the training shuffle buffer (serialized
      records, so memory is this times the record size).
    file_cycle_length: files read concurrently.
    dct_method: JPEG IDCT ('' = libjpeg default, 'INTEGER_FAST' is faster
      and slightly less accurate).
    use_xla: compile the per-pixel colour/normalisation pass with XLA (one
      fused pass instead of ~10 TF ops); False runs the same ops unfused.
    window_quantum: training crop windows (in source pixels) are rounded to a
      multiple of this, so XLA compiles the colour pass for a few window
      sizes only (~12 for 224 crops of 256-pixel frames, ~0.3 s each, once
      per process); the scale jitter moves in steps of ~2% instead of
      continuously. 1: exact sizes.
    parallel_clips: clips processed concurrently (parse, decode, augment);
      None: tf.data's AUTOTUNE (the number of cores).
    lost_records_named: a record whose processing raises (a corrupt JPEG) is
      dropped and found by the next record that comes out, which carries
      the names of the records just before it
      (`spl.input_pipeline._remember_previous`): up to this many lost in a
      row are named one by one; more are counted, not named.
  """
  scale_jitter: Optional[Tuple[int, int]] = None
  min_resize: Optional[int] = None
  random_flip: bool = True
  brightness: float = 0.4
  contrast: float = 0.4
  saturation: float = 0.4
  hue: float = 0.1
  color_jitter_prob: float = 0.8
  mean: Tuple[float, float, float] = IMAGENET_MEAN
  std: Tuple[float, float, float] = IMAGENET_STD
  shuffle_buffer_size: int = 64
  file_cycle_length: int = 8
  dct_method: str = ''
  use_xla: bool = True
  parallel_clips: Optional[int] = None
  window_quantum: int = 4
  lost_records_named: int = 16


def make_options(crop_size: int,
                  kwargs: Dict[str, Any]) -> AugmentationOptions:
  known = {f.name for f in dataclasses.fields(AugmentationOptions)}
  unknown = sorted(set(kwargs) - known)
  if unknown:
    raise TypeError(
        f'make_dataset got unknown augmentation arguments {unknown}; '
        f'known: {sorted(known)}')
  opts = AugmentationOptions(**kwargs)
  if opts.scale_jitter is None:
    opts = dataclasses.replace(opts, scale_jitter=(
        round(crop_size * 8 / 7), round(crop_size * 10 / 7)))
  if opts.min_resize is None:
    opts = dataclasses.replace(opts, min_resize=round(crop_size * 8 / 7))
  lo, hi = opts.scale_jitter
  if not crop_size <= lo <= hi:
    raise ValueError(
        f'`scale_jitter` must satisfy crop_size ({crop_size}) <= min <= max, '
        f'got {opts.scale_jitter}')
  if opts.min_resize < crop_size:
    raise ValueError(
        f'`min_resize` must be >= crop_size ({crop_size}), got '
        f'{opts.min_resize}')
  for name in ('brightness', 'contrast', 'saturation'):
    v = getattr(opts, name)
    if not 0 <= v <= 1:
      raise ValueError(f'`{name}` must be in [0, 1], got {v}')
  if not 0 <= opts.hue <= 0.5:
    raise ValueError(f'`hue` must be in [0, 0.5], got {opts.hue}')
  if not 0 <= opts.color_jitter_prob <= 1:
    raise ValueError(
        f'`color_jitter_prob` must be in [0, 1], got {opts.color_jitter_prob}')
  if len(opts.mean) != 3 or len(opts.std) != 3 or min(opts.std) <= 0:
    raise ValueError(
        f'`mean` and `std` must have 3 values, std > 0; got {opts.mean}, '
        f'{opts.std}')
  if opts.shuffle_buffer_size < 1:
    raise ValueError(
        f'`shuffle_buffer_size` must be >= 1, got {opts.shuffle_buffer_size}')
  if opts.parallel_clips is not None and opts.parallel_clips < 1:
    raise ValueError(
        f'`parallel_clips` must be >= 1 or None, got {opts.parallel_clips}')
  if opts.lost_records_named < 1:
    raise ValueError(
        f'`lost_records_named` must be >= 1, got {opts.lost_records_named}')
  if opts.window_quantum < 1:
    raise ValueError(
        f'`window_quantum` must be >= 1, got {opts.window_quantum}')
  if opts.file_cycle_length < 1:
    raise ValueError(
        f'`file_cycle_length` must be >= 1, got {opts.file_cycle_length}')
  return opts
