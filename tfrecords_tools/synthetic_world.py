r"""A compositional synthetic world with the structure the two papers describe.

The demos' data (`python -m spl.demo`): real mp4 files and manifests of a
clean target set and of query-retrieved "web" videos with titles, built so
that the papers' comparisons have something to measure. Everything is drawn
from generators seeded by `seed` (one per video), so a world is the same
bytes on every run.

What the world is made of:

* Visual components. A component is a small square with its own motion:
  4 motions (left-right, up-down, circling, pulsing in size: each its own
  mirror image, so the training flip keeps it) x 2 frequencies (0.5 Hz,
  1 Hz) give up to 8. Each square's colour is drawn per video, so only
  motion tells components apart (a 3D network has to use time). Each
  component has a word: verbs and nouns alternate around the pool
  ('baking', 'cookies', 'decorating', 'cake', ...).
* Target classes. Class i is the pair of components (i, i+1 mod P): the
  classes form a ring in which every class shares one component with each
  of its two neighbours ("baking cookies" shares cookies with "decorating
  cookies" and baking with "baking marshmallows"), and its name is its two
  components' words, verb first. A class's video shows both squares, one
  upper left and one lower right of the frame centre (which one where is
  drawn per video). Class indices follow the sorted names, as the label map
  does.
* Target videos (`target_train/`, `target_val/`): trimmed, the class's
  action for the whole video.
* Web videos (`web/`): "retrieved by the query" c, untrimmed: a sequence of
  segments of one clip each. Each video draws the share of its segments
  that show the queried action (both components) from a Beta distribution;
  every other segment is either *middle ground*, one of the query's two
  components alone (a sub-action that the neighbour class sharing that
  component also contains: the paper's Figure 1, "mixing eggs and flour" in
  a "baking cookies" video), or *background* (no component).
* Titles (every video, for CPD): words of the query's class name with noise
  words and emoji, at the rates CPD Table 6 measured on Kinetics titles.

Parameters and where they come from (`WorldConfig`):

* `num_components` (= classes) 8. Not in the papers (200 / 400 classes
  there): as many as 4 flip-symmetric motions x 2 frequencies give.
* A class is 2 components, on a ring. SPL Sec. 1: noisy clips "have
  semantic relations with the target action ... but may also include
  essential visual components of other actions"; Figures 1 and 6:
  "baking cookies" and "scrambling eggs" share "mixing".
* `target_val_videos_per_class` 25. Kinetics-200 (SPL Sec. 4.1): 5K
  validation videos / 200 classes.
* `target_train_videos_per_class` 12. Not in the papers (Kinetics-200 has
  385 a class): a compute budget; the web set is sized from it.
* `web_clips_per_target_clip` 8.7. SPL Table 1: 6.7x10^5 web clips
  (WebK200-147K-V) for Kinetics-200's 77K training videos.
* `target_seconds`, `web_seconds`, `segment_seconds` 6, 10, 2. Not in the
  papers (10 s clips there): 3 target and 5 web clips a video of 2 s (the
  demos' clip length), one segment a clip, so every clip is one kind.
* `query_share_mean` 0.4. SPL Sec. 3.1: agreement filtering discards "over
  60%" of the web clips (Table 2's noise ratio: 58.9% / 65.5%), read as
  60% of the clips not showing the query. The teacher's real disagreement
  on this world is measured by the demo and reported beside that figure.
* `query_share_concentration` 4. Not in the papers ("may only contain a
  small proportion of the target action", Sec. 1): Beta(1.6, 2.4), so
  videos range from almost none of the action to mostly the action.
* `middle_ground_share` 0.5. Not in the papers (they name both kinds,
  middle ground (Fig. 1) and "other non-targeted content" (Sec. 1),
  without proportions): an even split.
* `title_whole_name` 0.384. CPD Table 6, Kinetics-title-clean: 38.4% of
  titles contain the entire class name.
* `title_at_least_one` 0.916. CPD Table 6: 91.6% contain at least one
  class word.
* `title_class_word_share` 0.26. CPD Table 6: 26.0% of title words are
  class words (pooled); noise words number 1 + Poisson(lambda), lambda
  solved for this share (`noise_words_lambda`).
* `title_emoji` 0.3. Not in the papers (CPD Figures 3-4 show emoji in
  titles; title-clean removes them, so they are not words).
* Frames 64x48 at 10 fps, squares 1/6 of the height, motions of amplitude
  1/5 of it (circles 0.6 of that). Not in the papers: CPU scale; the
  squares stay in the demos' 32x32 centre crop of the 48x36 resized frame
  but for at most 3 pixels at the extremes. Between two frames the demos
  sample (5 a second) a slow square moves up to 6 pixels, a fast one up
  to 12.

`measure_world` measures the documented statistics on a generated world's
outputs (its manifests and `world.json`): the share of the queried action
per web video, the shares of query / middle-ground / background clips, and
the titles' Table 6 shares. The teacher-disagreement rate (the paper's
"over 60%") depends on a trained teacher: the demo measures it after the
teacher predicts the web clips.
"""

from __future__ import annotations

import colorsys
import csv
import dataclasses
import json
import math
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfrecords_tools import synthetic

# Verbs at even positions, nouns at odd ones: class i = components (i, i+1)
# is named "<verb> <noun>".
COMPONENT_WORDS = ('baking', 'cookies', 'decorating', 'cake', 'cutting',
                   'bread', 'toasting', 'marshmallows')
# Title noise: none of them is a component word.
NOISE_WORDS = ('amazing', 'best', 'vlog', 'episode', 'tutorial', 'lol', 'omg',
               'subscribe', 'hd', 'live', 'funny', 'day', 'new', 'my', 'the',
               'with', 'at', 'home', 'easy', 'quick', 'family', 'weekend',
               'challenge', 'part', 'watch', 'this', 'ever', 'fail', 'how',
               'to')
EMOJI = synthetic.EMOJI
# Motions that a left-right flip (a training augmentation) maps onto
# themselves: an oscillation along 45 degrees would become one along 135.
HORIZONTAL, VERTICAL = 'horizontal', 'vertical'
CIRCLE, PULSE = 'circle', 'pulse'
MOTIONS = (HORIZONTAL, VERTICAL, CIRCLE, PULSE)
FREQUENCIES_HZ = (0.5, 1.0)

QUERY = 'query'
MIDDLE_GROUND = 'middle_ground'
BACKGROUND = 'background'
KINDS = (QUERY, MIDDLE_GROUND, BACKGROUND)
SPLITS = ('target_train', 'target_val', 'web')
WORLD_FILENAME = 'world.json'
LABELS_FILENAME = 'labels.txt'
MANIFEST_FILENAME = 'manifest.csv'

# The papers' figures the world's statistics are compared with.
PAPER_DISAGREEMENT = ('SPL Sec. 3.1: agreement filtering discards "over 60%" '
                      'of WebK200 clips; Table 2: noise ratio 58.9% '
                      '(147K-V), 65.5% (285K-V)')
PAPER_TITLE_STATS = {'at_least_one': 0.916, 'all': 0.384, 'rel': 0.260}


@dataclasses.dataclass
class WorldConfig:
  """The world's parameters; sources in the module docstring."""
  num_components: int = 8
  target_train_videos_per_class: int = 12
  target_val_videos_per_class: int = 25
  web_clips_per_target_clip: float = 8.7
  # None: from `web_clips_per_target_clip`; set only for test-sized worlds.
  web_videos_per_class: Optional[int] = None
  target_seconds: float = 6.0
  web_seconds: float = 10.0
  segment_seconds: float = 2.0
  query_share_mean: float = 0.4
  query_share_concentration: float = 4.0
  middle_ground_share: float = 0.5
  title_whole_name: float = 0.384
  title_at_least_one: float = 0.916
  title_class_word_share: float = 0.26
  title_emoji: float = 0.3
  fps: int = 10
  width: int = 64
  height: int = 48
  seed: int = 0

  def validate(self) -> None:
    """Raises ValueError naming the first bad parameter."""
    max_components = len(MOTIONS) * len(FREQUENCIES_HZ)
    if (not 4 <= self.num_components <= max_components
        or self.num_components % 2):
      raise ValueError(f'`num_components` must be even and in [4, '
                       f'{max_components}], got {self.num_components}')
    for name in ('query_share_mean', 'middle_ground_share',
                 'title_whole_name', 'title_at_least_one', 'title_emoji'):
      v = getattr(self, name)
      if not 0.0 <= v <= 1.0:
        raise ValueError(f'`{name}` must be in [0, 1], got {v}')
    if not 0.0 < self.query_share_mean < 1.0:
      raise ValueError('`query_share_mean` must be in (0, 1) (a Beta mean), '
                       f'got {self.query_share_mean}')
    if self.title_whole_name > self.title_at_least_one:
      raise ValueError(f'`title_whole_name` ({self.title_whole_name}) must be '
                       f'<= `title_at_least_one` ({self.title_at_least_one})')
    if not 0.0 < self.title_class_word_share < 1.0:
      raise ValueError('`title_class_word_share` must be in (0, 1), got '
                       f'{self.title_class_word_share}')
    if self.noise_words_lambda() < 0:
      raise ValueError('`title_class_word_share` is too high for titles with '
                       'at least one noise word, got '
                       f'{self.title_class_word_share}')
    for name in ('query_share_concentration', 'web_clips_per_target_clip',
                 'target_seconds', 'web_seconds', 'segment_seconds'):
      if not getattr(self, name) > 0:
        raise ValueError(f'`{name}` must be > 0, got {getattr(self, name)}')
    for name in ('target_train_videos_per_class',
                 'target_val_videos_per_class'):
      if getattr(self, name) < 1:
        raise ValueError(f'`{name}` must be >= 1, got {getattr(self, name)}')
    if self.web_videos_per_class is not None and self.web_videos_per_class < 1:
      raise ValueError('`web_videos_per_class` must be >= 1 or None, got '
                       f'{self.web_videos_per_class}')
    for name in ('target_seconds', 'web_seconds'):
      if self.segments(getattr(self, name)) < 1:
        raise ValueError(f'`{name}` ({getattr(self, name)}) is shorter than '
                         f'one segment ({self.segment_seconds} s)')
    if self.fps < 1 or self.width < 32 or self.height < 32:
      raise ValueError(f'`fps` must be >= 1 and `width`, `height` >= 32, got '
                       f'{self.fps}, {self.width}, {self.height}')

  def segments(self, seconds: float) -> int:
    """Whole segments (clips) in a video of `seconds`."""
    return int(math.floor(seconds / self.segment_seconds + 1e-9))

  def expected_class_words(self) -> float:
    """Class words a title carries on average (2 whole, 1 partial)."""
    return 2 * self.title_whole_name + (self.title_at_least_one -
                                        self.title_whole_name)

  def noise_words_lambda(self) -> float:
    """Poisson rate of noise words beyond the first, from Table 6's share.

    share = E[class words] / (E[class words] + E[noise words]), with
    noise words = 1 + Poisson(lambda).
    """
    c = self.expected_class_words()
    return c * (1 - self.title_class_word_share) / (
        self.title_class_word_share) - 1

  def num_web_videos_per_class(self) -> int:
    if self.web_videos_per_class is not None:
      return self.web_videos_per_class
    target_clips = (self.target_train_videos_per_class *
                    self.segments(self.target_seconds))
    return max(1, int(round(self.web_clips_per_target_clip * target_clips /
                            self.segments(self.web_seconds))))


@dataclasses.dataclass(frozen=True)
class Component:
  index: int
  word: str
  motion: str  # One of MOTIONS.
  frequency: float  # Hz.


def components(num_components: int) -> List[Component]:
  """The component pool: motion varies fastest, then frequency."""
  return [Component(index=k, word=COMPONENT_WORDS[k],
                    motion=MOTIONS[k % len(MOTIONS)],
                    frequency=FREQUENCIES_HZ[k // len(MOTIONS)])
          for k in range(num_components)]


@dataclasses.dataclass(frozen=True)
class WorldClass:
  index: int  # Position of `name` among the sorted names (the label map).
  name: str
  components: Tuple[int, int]  # (verb, noun) component indices.


def world_classes(num_components: int) -> List[WorldClass]:
  """The ring of classes, indexed in sorted-name order."""
  pairs = []
  for i in range(num_components):
    a, b = i, (i + 1) % num_components
    verb, noun = (a, b) if a % 2 == 0 else (b, a)
    pairs.append((f'{COMPONENT_WORDS[verb]} {COMPONENT_WORDS[noun]}',
                  (verb, noun)))
  pairs.sort()
  return [WorldClass(i, name, comps) for i, (name, comps) in enumerate(pairs)]


def related_classes(classes: Sequence[WorldClass]) -> Dict[int, List[int]]:
  """Class index -> the classes sharing a component with it (sorted)."""
  return {c.index: sorted(o.index for o in classes if o.index != c.index and
                          set(o.components) & set(c.components))
          for c in classes}


def class_sharing(classes: Sequence[WorldClass], c: int,
                  component: int) -> int:
  """The other class that contains `component` besides class `c`."""
  others = [o.index for o in classes
            if o.index != c and component in o.components]
  if len(others) != 1:
    raise ValueError(f'component {component} is in {len(others)} classes '
                     f'besides {c}')
  return others[0]


# ---- Rendering ----


def hue_color(hue: float) -> np.ndarray:
  r, g, b = colorsys.hsv_to_rgb(hue % 1.0, 0.9, 1.0)
  return (np.array([r, g, b]) * 255).astype(np.uint8)


def sprite_size(cfg: WorldConfig) -> int:
  return max(4, int(round(cfg.height / 6)))


def amplitude(cfg: WorldConfig) -> float:
  """Oscillation amplitude (a circle's radius is 0.6 of it)."""
  return cfg.height / 5


def slot_centers(cfg: WorldConfig, rng: np.random.Generator
                 ) -> List[Tuple[float, float]]:
  """The two squares' centres: upper left and lower right of the centre.

  Far enough apart that their motions rarely touch; shifted together by up
  to 2 pixels per video.
  """
  dx, dy = rng.uniform(-2, 2, 2)
  return [(cfg.width / 2 + sx * cfg.width / 8 + dx,
           cfg.height / 2 + sx * cfg.height / 6 + dy) for sx in (-1, 1)]


@dataclasses.dataclass
class _Sprite:
  component: Component
  center: Tuple[float, float]
  phase: float
  color: np.ndarray
  turn: int  # +1 / -1: a circle's direction (a flip reverses it).


def sprite_box(sp: _Sprite, t: float, cfg: WorldConfig
               ) -> Tuple[float, float, float]:
  """(centre x, centre y, side) of a square at time `t`."""
  s, a = sprite_size(cfg), amplitude(cfg)
  phi = 2 * math.pi * (sp.component.frequency * t + sp.phase)
  x, y, side = sp.center[0], sp.center[1], float(s)
  motion = sp.component.motion
  if motion == HORIZONTAL:
    x += a * math.sin(phi)
  elif motion == VERTICAL:
    y += a * math.sin(phi)
  elif motion == CIRCLE:
    x += 0.6 * a * math.cos(sp.turn * phi)
    y += 0.6 * a * math.sin(sp.turn * phi)
  else:  # PULSE: grows and shrinks in place.
    side = s * (1 + 0.4 * math.sin(phi))
  return x, y, side


def render_frame(t: float, sprites: Sequence[_Sprite], background: np.ndarray,
                 cfg: WorldConfig) -> np.ndarray:
  """One RGB frame at time `t` (seconds) with `sprites` on `background`."""
  img = background.copy()
  for sp in sprites:
    cx, cy, side = sprite_box(sp, t, cfg)
    n = max(2, int(round(side)))
    x0 = int(np.clip(round(cx - n / 2), 0, cfg.width - n))
    y0 = int(np.clip(round(cy - n / 2), 0, cfg.height - n))
    img[y0:y0 + n, x0:x0 + n] = sp.color
  return img


def _write(path: str, segments: Sequence[Sequence[int]], slots: Dict[int, int],
           cfg: WorldConfig, rng: np.random.Generator) -> None:
  """Writes a video: segment k shows the components `segments[k]`."""
  pool = components(cfg.num_components)
  background = rng.integers(40, 90, (cfg.height, cfg.width, 3), np.uint8)
  centers = slot_centers(cfg, rng)
  # Hues at least a quarter turn apart, so the squares stay distinct.
  hue = float(rng.random())
  hues = {0: hue, 1: hue + float(rng.uniform(0.25, 0.75))}
  looks = {c: (float(rng.random()), hue_color(hues[slots[c]]),
               int(rng.choice([-1, 1]))) for c in sorted(slots)}
  sprites = [[_Sprite(pool[c], centers[slots[c]], looks[c][0], looks[c][1],
                      looks[c][2]) for c in seg] for seg in segments]
  frames_per_segment = int(round(cfg.segment_seconds * cfg.fps))
  n = len(segments) * frames_per_segment
  frames = (render_frame(i / cfg.fps, sprites[i // frames_per_segment],
                         background, cfg) for i in range(n))
  synthetic.encode_video(path, frames, fps=cfg.fps, width=cfg.width,
                         height=cfg.height)


# ---- Titles ----


def _title(name: str, cfg: WorldConfig, rng: np.random.Generator
           ) -> Tuple[str, str]:
  """(title, how much of the class name it holds: 'all'|'one'|'none')."""
  r = rng.random()
  if r < cfg.title_whole_name:
    kept, how = [name], 'all'  # The whole name, in order (Table 6's "All").
  elif r < cfg.title_at_least_one:
    kept, how = [str(rng.choice(name.split()))], 'one'
  else:
    kept, how = [], 'none'
  noise = 1 + int(rng.poisson(cfg.noise_words_lambda()))
  words = kept + [str(w) for w in rng.choice(NOISE_WORDS, noise)]
  rng.shuffle(words)
  if rng.random() < cfg.title_emoji:
    words.append(str(rng.choice(EMOJI)))
  return ' '.join(words), how


def title_words(title: str) -> List[str]:
  """A title's words as CPD's title-clean keeps them (emoji dropped)."""
  return re.findall(r"[a-z0-9']+", title.lower())


# ---- The world ----


def _video_rng(cfg: WorldConfig, split: str, c: int, k: int
               ) -> np.random.Generator:
  """One generator per video: a video does not depend on the set sizes."""
  return np.random.default_rng([cfg.seed, SPLITS.index(split), c, k])


def _web_segments(c: WorldClass, classes: Sequence[WorldClass],
                  cfg: WorldConfig, rng: np.random.Generator) -> Dict:
  a = cfg.query_share_mean * cfg.query_share_concentration
  b = (1 - cfg.query_share_mean) * cfg.query_share_concentration
  share = float(rng.beta(a, b))
  kinds, shown, sharing = [], [], []
  for _ in range(cfg.segments(cfg.web_seconds)):
    if rng.random() < share:
      kinds.append(QUERY)
      shown.append(list(c.components))
      sharing.append(None)
    elif rng.random() < cfg.middle_ground_share:
      comp = int(c.components[int(rng.integers(2))])
      kinds.append(MIDDLE_GROUND)
      shown.append([comp])
      sharing.append(class_sharing(classes, c.index, comp))
    else:
      kinds.append(BACKGROUND)
      shown.append([])
      sharing.append(None)
  return {'query_share_drawn': share, 'kinds': kinds, 'components': shown,
          'shared_with_class': sharing}


def generate_world(output_dir: str, cfg: WorldConfig, *,
                   write_videos: bool = True) -> Dict[str, Any]:
  """Writes the world's videos, manifests, labels and `world.json`.

  Layout: `target_train/`, `target_val/`, `web/` (mp4 files and
  `manifest.csv` each), `labels.txt` (class names, sorted: pass it to the
  clip writer so every split has the same label map) and `world.json`
  (config, components, classes, and every video's class, title and, for web
  videos, its segments' kinds and components). Each video draws from its own
  generator, layout and title before pixels, so `write_videos=False` (only
  manifests and `world.json`, for statistics) gives the same layout.

  Returns:
    The `world.json` dict plus `manifests` (split -> path) and `labels`.
  """
  cfg.validate()
  os.makedirs(output_dir, exist_ok=True)
  classes = world_classes(cfg.num_components)
  related = related_classes(classes)
  world: Dict[str, Any] = {
      'config': dataclasses.asdict(cfg),
      'components': [dataclasses.asdict(c) for c in
                     components(cfg.num_components)],
      'classes': [{'index': c.index, 'name': c.name,
                   'components': list(c.components),
                   'related': related[c.index]} for c in classes],
      'videos': {}}
  per_class = {'target_train': cfg.target_train_videos_per_class,
               'target_val': cfg.target_val_videos_per_class,
               'web': cfg.num_web_videos_per_class()}
  manifests = {}
  for split in SPLITS:
    split_dir = os.path.join(output_dir, split)
    os.makedirs(split_dir, exist_ok=True)
    rows = []
    for c in classes:
      for k in range(per_class[split]):
        rng = _video_rng(cfg, split, c.index, k)
        vid = f'{split}_{c.index:02d}_{k:03d}'
        title, how = _title(c.name, cfg, rng)
        first = int(rng.integers(2))
        slots = {c.components[0]: first, c.components[1]: 1 - first}
        entry = {'split': split, 'class': c.index, 'title': title,
                 'title_class_words': how}
        if split == 'web':
          entry.update(_web_segments(c, classes, cfg, rng))
          segments = entry['components']
        else:
          segments = [list(c.components)] * cfg.segments(cfg.target_seconds)
        if write_videos:
          _write(os.path.join(split_dir, f'{vid}.mp4'), segments, slots, cfg,
                 rng)
        world['videos'][vid] = entry
        rows.append({'path': f'{vid}.mp4', 'label': c.name, 'title': title,
                     'video_id': vid})
    manifests[split] = os.path.join(split_dir, MANIFEST_FILENAME)
    with open(manifests[split], 'w', newline='', encoding='utf-8') as f:
      writer = csv.DictWriter(f, fieldnames=['path', 'label', 'title',
                                             'video_id'])
      writer.writeheader()
      writer.writerows(rows)
  labels = os.path.join(output_dir, LABELS_FILENAME)
  with open(labels, 'w', encoding='utf-8') as f:
    f.write(''.join(c.name + '\n' for c in classes))
  with open(os.path.join(output_dir, WORLD_FILENAME), 'w',
            encoding='utf-8') as f:
    json.dump(world, f, indent=1, sort_keys=True)
  return dict(world, manifests=manifests, labels=labels)


def load_world(output_dir: str) -> Dict[str, Any]:
  with open(os.path.join(output_dir, WORLD_FILENAME), encoding='utf-8') as f:
    return json.load(f)


def segment_index(world: Dict[str, Any], start_seconds: float) -> int:
  """The segment a clip starting at `start_seconds` shows."""
  return int(math.floor(start_seconds / world['config']['segment_seconds'] +
                        1e-6))


def clip_kind(world: Dict[str, Any], video_id: str,
              start_seconds: float) -> str:
  """QUERY, MIDDLE_GROUND or BACKGROUND for a web clip; QUERY for target."""
  video = world['videos'][video_id]
  if 'kinds' not in video:
    return QUERY
  return video['kinds'][segment_index(world, start_seconds)]


def _read_manifest(path: str) -> List[Dict[str, str]]:
  with open(path, newline='', encoding='utf-8') as f:
    return list(csv.DictReader(f))


def title_statistics(titles: Sequence[str], names: Sequence[str]
                     ) -> Dict[str, float]:
  """CPD Table 6's shares of titles, each against its own class name.

  The readings of `cpd.title_stats` (own class): words as title-clean keeps
  them; "all" = the name's words as a contiguous run, in order; "rel" =
  class words over all words, pooled over titles.
  """
  n_one = n_all = n_rel = n_words = 0
  for title, name in zip(titles, names):
    ws, own = title_words(title), name.split()
    hits = sum(w in own for w in ws)
    n_one += hits > 0
    n_all += any(ws[i:i + len(own)] == own for i in range(len(ws)))
    n_rel += hits
    n_words += len(ws)
  n = max(1, len(titles))
  return {'titles': len(titles), 'at_least_one': n_one / n,
          'all': n_all / n, 'rel': n_rel / max(1, n_words)}


def measure_world(output_dir: str) -> Dict[str, Any]:
  """The world's documented statistics, measured on its outputs.

  Reads `world.json` (the segments drawn: `tests/test_synthetic_world.py`
  checks them against the decoded pixels) and the manifests (titles as
  written).

  Returns:
    {'web_videos', 'web_clips', 'query_share_per_video' (mean, std, p10,
    p50, p90 of each web video's share of query clips), 'clip_kinds' (share
    of web clips of each kind), 'titles' (Table 6's shares over every
    split's titles: at_least_one, all, rel), 'configured' (the values
    these estimate)}.
  """
  world = load_world(output_dir)
  cfg = WorldConfig(**world['config'])
  names = [c['name'] for c in world['classes']]
  shares, counts = [], {k: 0 for k in KINDS}
  for video in world['videos'].values():
    if video['split'] != 'web':
      continue
    kinds = video['kinds']
    shares.append(kinds.count(QUERY) / len(kinds))
    for k in kinds:
      counts[k] += 1
  total = sum(counts.values())
  titles, labels = [], []
  for split in SPLITS:
    for row in _read_manifest(os.path.join(output_dir, split,
                                           MANIFEST_FILENAME)):
      titles.append(row['title'])
      labels.append(row['label'])
  unknown = sorted(set(labels) - set(names))
  if unknown:
    raise ValueError(f'{output_dir}: manifest labels {unknown[:3]} are not '
                     'classes of the world')
  shares = np.asarray(shares, np.float64)
  rest = 1 - cfg.query_share_mean
  return {
      'web_videos': int(len(shares)), 'web_clips': int(total),
      'query_share_per_video': {
          'mean': float(shares.mean()), 'std': float(shares.std()),
          'p10': float(np.quantile(shares, 0.1)),
          'p50': float(np.quantile(shares, 0.5)),
          'p90': float(np.quantile(shares, 0.9))},
      'clip_kinds': {k: counts[k] / total for k in KINDS},
      'titles': title_statistics(titles, labels),
      'configured': {
          'query_share_mean': cfg.query_share_mean,
          'clip_kinds': {QUERY: cfg.query_share_mean,
                         MIDDLE_GROUND: rest * cfg.middle_ground_share,
                         BACKGROUND: rest * (1 - cfg.middle_ground_share)},
          'titles': {'at_least_one': cfg.title_at_least_one,
                     'all': cfg.title_whole_name,
                     'rel': cfg.title_class_word_share}},
  }
