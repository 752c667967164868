"""Synthetic web videos: a clean target set and noisy query-retrieved videos.

Real mp4 files (PyAV, H.264) and manifests that mimic the papers' data at toy
scale, so the whole pipeline runs with no download:

* Each action class `c` is a square oscillating along a class-specific axis
  (angle pi * c / N) over a textured background. Its colour is drawn per
  video, so only motion tells the classes apart (a 3D network has to use
  time); `class_colors=True` gives each class its own hue instead (an easy
  mode where a single frame suffices).
* Target set (`target/`): trimmed videos, the action fills the whole video.
* Web set (`web/`): untrimmed videos "retrieved by the query" `c`. The
  video is a sequence of segments; a segment shows the queried action with
  probability `action_fraction`, otherwise the action of the class's
  *confuser* `(c + 1) % N` (the same object doing another class's action:
  structured teacher/weak confusion) with probability `confusion`, otherwise
  background only. So weak labels are noisy in time, as in the SPL paper.
* Titles: the class name's words plus random noise words, emoji and
  hashtags, for CPD.

Everything is drawn from one `numpy` generator seeded by `seed`.

The demos use the compositional world of `synthetic_world` (classes made of
shared components, middle-ground clips, titles at CPD's measured rates),
which encodes its videos with `encode_video` here.
"""

from __future__ import annotations

import colorsys
import csv
import dataclasses
import fractions
import json
import os
from typing import Dict, Iterable, List

import numpy as np

ACTION_NAMES = ('baking cookies', 'scrambling eggs', 'juggling balls',
                'walking dog', 'riding bike', 'surfing water', 'playing drums',
                'climbing rope', 'folding paper', 'throwing disc')
NOISE_WORDS = ('amazing', 'best', 'vlog', 'episode', 'tutorial', 'lol', 'omg',
               'subscribe', '2019', 'hd', 'live', 'funny', 'day', 'new')
EMOJI = ('🔥', '😂', '👍', '🎬')


@dataclasses.dataclass
class SyntheticConfig:
  num_classes: int = 4
  target_videos_per_class: int = 6
  web_videos_per_class: int = 6
  target_seconds: float = 2.0
  web_seconds: float = 6.0
  segment_seconds: float = 2.0
  action_fraction: float = 0.5  # Share of web segments showing the query.
  confusion: float = 0.6  # Of the rest: share showing the confuser class.
  title_noise_words: int = 3
  fps: int = 10
  width: int = 64
  height: int = 48
  class_colors: bool = False
  seed: int = 0

  def validate(self):
    if not 1 <= self.num_classes <= len(ACTION_NAMES):
      raise ValueError(f'`num_classes` must be in [1, {len(ACTION_NAMES)}], '
                       f'got {self.num_classes}')
    for name in ('action_fraction', 'confusion'):
      v = getattr(self, name)
      if not 0.0 <= v <= 1.0:
        raise ValueError(f'`{name}` must be in [0, 1], got {v}')
    for name in ('target_seconds', 'web_seconds', 'segment_seconds'):
      if getattr(self, name) <= 0:
        raise ValueError(f'`{name}` must be > 0, got {getattr(self, name)}')


def class_names(num_classes: int) -> List[str]:
  return sorted(ACTION_NAMES[:num_classes])


def hue_color(hue: float) -> np.ndarray:
  r, g, b = colorsys.hsv_to_rgb(hue % 1.0, 0.9, 1.0)
  return (np.array([r, g, b]) * 255).astype(np.uint8)


def motion_angle(c: int, num_classes: int) -> float:
  """Axis of class `c`'s oscillation, radians in [0, pi)."""
  return np.pi * c / num_classes


def render_frame(t: float, actor: int, cfg: SyntheticConfig,
                 background: np.ndarray, phase: float,
                 color: np.ndarray) -> np.ndarray:
  """One RGB frame; `actor` < 0 means background only."""
  img = background.copy()
  if actor >= 0:
    angle = motion_angle(actor, cfg.num_classes)
    s = max(4, cfg.height // 4)
    # Same amplitude on both axes, so the trajectory's angle is `angle`.
    amp = (min(cfg.width, cfg.height) - s) / 2 - 1
    offset = amp * np.sin(2 * np.pi * (0.5 * t + phase))
    cx = cfg.width / 2 + np.cos(angle) * offset
    cy = cfg.height / 2 + np.sin(angle) * offset
    x0 = int(np.clip(round(cx - s / 2), 0, cfg.width - s))
    y0 = int(np.clip(round(cy - s / 2), 0, cfg.height - s))
    img[y0:y0 + s, x0:x0 + s] = (hue_color(actor / cfg.num_classes)
                                 if cfg.class_colors else color)
  return img


def encode_video(path: str, frames: Iterable[np.ndarray], *, fps: int,
                 width: int, height: int) -> None:
  """Encodes RGB frames [height, width, 3] into an H.264 mp4 at `fps`.

  x264's 'ultrafast' preset at CRF 18: the same frames give the same bytes.
  """
  import av  # pylint: disable=g-import-not-at-top
  container = av.open(path, 'w')
  stream = container.add_stream('libx264', rate=fps)
  stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
  stream.time_base = fractions.Fraction(1, fps)
  stream.options = {'preset': 'ultrafast', 'crf': '18'}
  for i, img in enumerate(frames):
    frame = av.VideoFrame.from_ndarray(img, format='rgb24')
    frame.pts = i
    for packet in stream.encode(frame):
      container.mux(packet)
  for packet in stream.encode():
    container.mux(packet)
  container.close()


def _write_video(path: str, actors_per_second: List[int],
                 cfg: SyntheticConfig, rng: np.random.Generator) -> None:
  background = rng.integers(40, 90, (cfg.height, cfg.width, 3), np.uint8)
  phase = float(rng.random())
  color = hue_color(float(rng.random()))
  n = int(round(len(actors_per_second) * cfg.fps))
  frames = (render_frame(i / cfg.fps, actors_per_second[int(i / cfg.fps)],
                         cfg, background, phase, color) for i in range(n))
  encode_video(path, frames, fps=cfg.fps, width=cfg.width, height=cfg.height)


def _title(name: str, cfg: SyntheticConfig, rng: np.random.Generator) -> str:
  words = name.split() + list(rng.choice(NOISE_WORDS, cfg.title_noise_words))
  rng.shuffle(words)
  if rng.random() < 0.5:
    words.append(str(rng.choice(EMOJI)))
  if rng.random() < 0.5:
    words.append('#' + name.split()[0])
  return ' '.join(words)


def generate(output_dir: str, cfg: SyntheticConfig) -> Dict:
  """Writes `target/` and `web/` videos with `manifest.csv` each.

  Returns:
    A dict with the manifest paths and the ground-truth segment layout of
    every web video (`web_segments`: video id -> actor class per second, -1
    for background), which tests use to check the noise parameters.
  """
  cfg.validate()
  rng = np.random.default_rng(cfg.seed)
  names = class_names(cfg.num_classes)
  out = {'class_names': names, 'web_segments': {}}
  for split in ('target', 'web'):
    split_dir = os.path.join(output_dir, split)
    os.makedirs(split_dir, exist_ok=True)
    rows = []
    per_class = (cfg.target_videos_per_class if split == 'target'
                 else cfg.web_videos_per_class)
    for c, name in enumerate(names):
      for k in range(per_class):
        vid = f'{split}_{c:02d}_{k:03d}'
        if split == 'target':
          actors = [c] * int(round(cfg.target_seconds))
        else:
          seconds = int(round(cfg.web_seconds))
          seg = max(1, int(round(cfg.segment_seconds)))
          actors = []
          for _ in range(0, seconds, seg):
            r = rng.random()
            if r < cfg.action_fraction:
              who = c
            elif rng.random() < cfg.confusion:
              who = (c + 1) % cfg.num_classes
            else:
              who = -1
            actors += [who] * seg
          actors = actors[:seconds]
          out['web_segments'][vid] = actors
        _write_video(os.path.join(split_dir, f'{vid}.mp4'), actors, cfg, rng)
        rows.append({'path': f'{vid}.mp4', 'label': name,
                     'title': _title(name, cfg, rng), 'video_id': vid})
    manifest = os.path.join(split_dir, 'manifest.csv')
    with open(manifest, 'w', newline='', encoding='utf-8') as f:
      writer = csv.DictWriter(f, fieldnames=['path', 'label', 'title',
                                             'video_id'])
      writer.writeheader()
      writer.writerows(rows)
    out[f'{split}_manifest'] = manifest
  with open(os.path.join(output_dir, 'synthetic.json'), 'w') as f:
    json.dump({'config': dataclasses.asdict(cfg), **out}, f, indent=1)
  return out
