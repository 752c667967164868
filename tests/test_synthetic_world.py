"""The compositional world: deterministic, and its documented statistics hold.

The layout `world.json` records (which components each segment shows) is
checked against the decoded pixels: each square is found by its hue, its
motion axis read off its track's principal direction and its frequency off
the track's spectrum. The statistics are then measured on the outputs
(`measure_world`, and CPD's own `cpd.title_stats` for the titles) and
compared with the configured values within sampling error.
"""

import collections
import colorsys
import csv
import math
import os

import av
import numpy as np
import pytest

from cpd import text_cleaning
from cpd import title_stats
from tfrecords_tools import synthetic_world as sw


def _small(**kw):
  base = dict(num_components=8, target_train_videos_per_class=1,
              target_val_videos_per_class=1, web_videos_per_class=3, seed=3)
  base.update(kw)
  return sw.WorldConfig(**base)


def _files(root):
  out = {}
  for folder, _, names in os.walk(root):
    for n in names:
      path = os.path.join(folder, n)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = f.read()
  return out


def test_same_seed_same_bytes(tmp_path):
  sw.generate_world(str(tmp_path / 'a'), _small())
  sw.generate_world(str(tmp_path / 'b'), _small())
  a, b = _files(tmp_path / 'a'), _files(tmp_path / 'b')
  assert sorted(a) == sorted(b)
  assert len([n for n in a if n.endswith('.mp4')]) == 8 * (1 + 1 + 3)
  for name in a:
    assert a[name] == b[name], name
  sw.generate_world(str(tmp_path / 'c'), _small(seed=4))
  c = _files(tmp_path / 'c')
  assert c[sw.WORLD_FILENAME] != a[sw.WORLD_FILENAME]
  assert c['web/web_00_000.mp4'] != a['web/web_00_000.mp4']


def test_a_video_does_not_depend_on_the_set_sizes(tmp_path):
  sw.generate_world(str(tmp_path / 'a'), _small(), write_videos=False)
  sw.generate_world(str(tmp_path / 'b'), _small(web_videos_per_class=5,
                                                target_val_videos_per_class=4),
                    write_videos=False)
  a, b = sw.load_world(str(tmp_path / 'a')), sw.load_world(str(tmp_path / 'b'))
  for vid, video in a['videos'].items():
    assert b['videos'][vid] == video, vid


def test_classes_form_a_ring_of_shared_components():
  classes = sw.world_classes(8)
  names = [c.name for c in classes]
  assert names == sorted(names) and len(set(names)) == 8
  uses = collections.Counter(k for c in classes for k in c.components)
  assert uses == {k: 2 for k in range(8)}  # Each component in two classes.
  related = sw.related_classes(classes)
  for c in classes:
    assert len(related[c.index]) == 2
    verb, noun = c.components
    assert c.name == (f'{sw.COMPONENT_WORDS[verb]} '
                      f'{sw.COMPONENT_WORDS[noun]}')
    assert verb % 2 == 0 and noun % 2 == 1
  pool = sw.components(8)
  motions = {(p.motion, p.frequency) for p in pool}
  assert len(motions) == 8  # Every component moves its own way.
  assert sw.WorldConfig().num_web_videos_per_class() == 63  # 8.7 x 36 / 5


def _hue(rgb):
  return colorsys.rgb_to_hsv(*(rgb / 255.0))[0]


def _hue_distance(a, b):
  d = abs(a - b) % 1.0
  return min(d, 1 - d)


def _tracks(path):
  """Per frame: {hue cluster: (x, y, pixels)} of the saturated squares."""
  out = []
  hues = []  # Cluster representatives, in order of first appearance.
  with av.open(path) as container:
    for frame in container.decode(video=0):
      rgb = frame.to_ndarray(format='rgb24').astype(np.float64)
      mask = (rgb.max(-1) - rgb.min(-1)) > 0.5 * 255
      ys, xs = np.nonzero(mask)
      points = collections.defaultdict(list)
      for y, x in zip(ys, xs):
        h = _hue(rgb[y, x])
        near = [i for i, c in enumerate(hues) if _hue_distance(h, c) < 0.1]
        if not near:
          hues.append(h)
          near = [len(hues) - 1]
        points[near[0]].append((x, y))
      out.append({k: (*np.mean(v, axis=0), len(v)) for k, v in points.items()
                  if len(v) >= 4})
  return out


def _best_frequency(signal, fps):
  """The frequency whose sinusoid (any phase, plus a constant) fits best."""
  t = np.arange(len(signal)) / fps
  residual = {}
  for f in sw.FREQUENCIES_HZ:
    basis = np.stack([np.ones_like(t), np.sin(2 * math.pi * f * t),
                      np.cos(2 * math.pi * f * t)], 1)
    fit = np.linalg.lstsq(basis, signal, rcond=None)[0]
    residual[f] = np.sum((signal - basis @ fit) ** 2)
  return min(residual, key=residual.get)


def _motion(track, fps):
  """(motion, frequency Hz) of a square's (x, y, pixels) track."""
  x, y, area = (np.asarray(v, np.float64) for v in zip(*track))
  rx, ry = np.ptp(x), np.ptp(y)
  if rx < 2 and ry < 2:
    assert area.max() > 2 * area.min(), 'a static square that does not pulse'
    return sw.PULSE, _best_frequency(np.sqrt(area), fps)
  if ry < 2:
    return sw.HORIZONTAL, _best_frequency(x, fps)
  if rx < 2:
    return sw.VERTICAL, _best_frequency(y, fps)
  assert min(rx, ry) > 0.5 * max(rx, ry), (rx, ry)
  return sw.CIRCLE, _best_frequency(x, fps)
def _components_on_screen(path, cfg):
  """Per segment: the sorted components whose motion the pixels show."""
  pool = {(p.motion, p.frequency): p.index
          for p in sw.components(cfg.num_components)}
  tracks = _tracks(path)
  per = int(cfg.segment_seconds * cfg.fps)
  out = []
  for s in range(len(tracks) // per):
    frames = tracks[s * per:(s + 1) * per]
    keys = {k for f in frames for k in f}
    shown = []
    for k in keys:
      track = [f[k] for f in frames if k in f]
      if len(track) < per - 2:
        continue  # A colour glimpsed where two squares touch.
      shown.append(pool[_motion(track, cfg.fps)])
    out.append(sorted(shown))
  return out


def test_pixels_follow_the_layout(tmp_path):
  cfg = _small(web_videos_per_class=2)
  sw.generate_world(str(tmp_path), cfg)
  world = sw.load_world(str(tmp_path))
  kinds = collections.Counter()
  for vid, video in world['videos'].items():
    seen = _components_on_screen(
        str(tmp_path / video['split'] / f'{vid}.mp4'), cfg)
    own = sorted(world['classes'][video['class']]['components'])
    if video['split'] == 'web':
      expected = [sorted(c) for c in video['components']]
      for k, shown, sharing in zip(video['kinds'], video['components'],
                                   video['shared_with_class']):
        kinds[k] += 1
        assert len(shown) == {sw.QUERY: 2, sw.MIDDLE_GROUND: 1,
                              sw.BACKGROUND: 0}[k]
        if k == sw.MIDDLE_GROUND:
          # One of the query's components, which the class it names shares.
          assert shown[0] in own
          assert shown[0] in world['classes'][sharing]['components']
          assert sharing in world['classes'][video['class']]['related']
    else:
      expected = [own] * cfg.segments(cfg.target_seconds)
    assert seen == expected, vid
  assert min(kinds.values()) > 0, kinds  # Every kind was checked.


@pytest.fixture(scope='module')
def big_world(tmp_path_factory):
  """800 web videos (4000 clips), 1200 titles; no pixels needed."""
  root = str(tmp_path_factory.mktemp('world'))
  cfg = sw.WorldConfig(target_train_videos_per_class=25,
                       target_val_videos_per_class=25,
                       web_videos_per_class=100, seed=11)
  sw.generate_world(root, cfg, write_videos=False)
  return root, cfg


def test_statistics_match_the_configuration(big_world):
  root, cfg = big_world
  stats = sw.measure_world(root)
  assert stats['web_videos'] == 800 and stats['web_clips'] == 4000
  assert stats['configured']['query_share_mean'] == 0.4
  # Query share per video: Beta(1.6, 2.4) share, 5 segments drawn from it.
  share = stats['query_share_per_video']
  se = share['std'] / math.sqrt(stats['web_videos'])
  assert abs(share['mean'] - cfg.query_share_mean) < 4 * se
  # Beta variance mu(1-mu)/(kappa+1) plus the binomial of 5 segments.
  mu, kappa, n = cfg.query_share_mean, cfg.query_share_concentration, 5
  beta_var = mu * (1 - mu) / (kappa + 1)
  expected_var = beta_var + (mu * (1 - mu) - beta_var) / n
  assert share['std'] ** 2 == pytest.approx(expected_var, rel=0.15)
  # Clip kinds: clips of a video are correlated; 4 binomial standard errors
  # of the 800 videos' means are generous and still tight.
  for kind, expected in stats['configured']['clip_kinds'].items():
    se = math.sqrt(expected * (1 - expected) / stats['web_videos'])
    assert abs(stats['clip_kinds'][kind] - expected) < 4 * se, kind
  titles = stats['titles']
  assert titles['titles'] == 1200
  for key in ('at_least_one', 'all'):
    p = stats['configured']['titles'][key]
    se = math.sqrt(p * (1 - p) / titles['titles'])
    assert abs(titles[key] - p) < 4 * se, key
  assert abs(titles['rel'] - cfg.title_class_word_share) < 0.02


def test_title_statistics_agree_with_cpd_title_stats(big_world):
  """The world's title measure is CPD's Table 6 reading (own class, clean)."""
  root, _ = big_world
  titles, labels = [], []
  for split in sw.SPLITS:
    with open(os.path.join(root, split, sw.MANIFEST_FILENAME),
              encoding='utf-8') as f:
      for row in csv.DictReader(f):
        titles.append(text_cleaning.clean_title(row['title']))
        labels.append(row['label'])
  names = [c.name for c in sw.world_classes(8)]
  cpd = title_stats.title_stats(titles, names, labels)
  ours = sw.measure_world(root)['titles']
  for key in ('at_least_one', 'all', 'rel'):
    assert ours[key] == pytest.approx(cpd[key]), key


def test_bad_parameters_named():
  with pytest.raises(ValueError, match='num_components'):
    sw.WorldConfig(num_components=5).validate()
  with pytest.raises(ValueError, match='num_components'):
    sw.WorldConfig(num_components=10).validate()
  with pytest.raises(ValueError, match='query_share_mean'):
    sw.WorldConfig(query_share_mean=1.0).validate()
  with pytest.raises(ValueError, match='title_whole_name'):
    sw.WorldConfig(title_whole_name=0.95).validate()
  with pytest.raises(ValueError, match='web_seconds'):
    sw.WorldConfig(web_seconds=1.0).validate()
