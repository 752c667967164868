"""The synthetic web-video generator: deterministic, and its noise knobs do what they say.

The noise is measured on the generated *pixels*: each second of a web video is
decoded and the class of the square on screen is read off the axis along
which it moves (colours are random per video, so motion is the only cue).
"""

import csv
import os

import av
import numpy as np
import pytest

from tfrecords_tools import synthetic


def _classes_on_screen(path, num_classes, fps):
  """Per second: the class whose motion axis the square follows, or -1."""
  centroids = []
  with av.open(path) as c:
    for frame in c.decode(video=0):
      rgb = frame.to_ndarray(format='rgb24').astype(np.float32) / 255.0
      square = (rgb.max(-1) - rgb.min(-1)) > 0.5
      ys, xs = np.nonzero(square)
      centroids.append((xs.mean(), ys.mean()) if len(xs) >= 10 else None)
  out = []
  for second in range(len(centroids) // fps):
    points = [p for p in centroids[second * fps:(second + 1) * fps] if p]
    if len(points) < fps // 2:
      out.append(-1)
      continue
    xy = np.asarray(points)
    cov = np.cov((xy - xy.mean(0)).T)
    angle = 0.5 * np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1]) % np.pi
    out.append(int(round(angle / (np.pi / num_classes))) % num_classes)
  return out


def _small(**kw):
  base = dict(num_classes=3, target_videos_per_class=1, web_videos_per_class=4,
              web_seconds=8, segment_seconds=1, target_seconds=1, fps=8,
              width=48, height=40, seed=3)
  base.update(kw)
  return synthetic.SyntheticConfig(**base)


def test_deterministic_files_and_manifests(tmp_path):
  a = synthetic.generate(str(tmp_path / 'a'), _small())
  b = synthetic.generate(str(tmp_path / 'b'), _small())
  assert a['web_segments'] == b['web_segments']
  for split in ('target', 'web'):
    names = sorted(os.listdir(tmp_path / 'a' / split))
    assert names == sorted(os.listdir(tmp_path / 'b' / split))
    for n in names:
      assert (tmp_path / 'a' / split / n).read_bytes() == (
          tmp_path / 'b' / split / n).read_bytes(), n
  c = synthetic.generate(str(tmp_path / 'c'), _small(seed=4))
  assert c['web_segments'] != a['web_segments']


def test_pixels_follow_the_segment_layout(tmp_path):
  cfg = _small()
  gen = synthetic.generate(str(tmp_path), cfg)
  for vid, actors in gen['web_segments'].items():
    seen = _classes_on_screen(str(tmp_path / 'web' / f'{vid}.mp4'),
                              cfg.num_classes, cfg.fps)
    assert seen == actors, vid
  # Target videos show their own class all the time.
  with open(tmp_path / 'target' / 'manifest.csv') as f:
    rows = list(csv.DictReader(f))
  names = synthetic.class_names(cfg.num_classes)
  for r in rows:
    seen = _classes_on_screen(str(tmp_path / 'target' / r['path']),
                              cfg.num_classes, cfg.fps)
    assert set(seen) == {names.index(r['label'])}


@pytest.mark.parametrize('action_fraction,confusion', [(0.3, 0.8), (0.7, 0.0)])
def test_noise_parameters_measured_on_pixels(tmp_path, action_fraction,
                                             confusion):
  cfg = _small(web_videos_per_class=8, web_seconds=10,
               action_fraction=action_fraction, confusion=confusion,
               num_classes=2)
  synthetic.generate(str(tmp_path), cfg)
  with open(tmp_path / 'web' / 'manifest.csv') as f:
    rows = list(csv.DictReader(f))
  names = synthetic.class_names(cfg.num_classes)
  query = confuser = background = 0
  for r in rows:
    c = names.index(r['label'])
    for who in _classes_on_screen(str(tmp_path / 'web' / r['path']),
                                  cfg.num_classes, cfg.fps):
      query += who == c
      confuser += who == (c + 1) % cfg.num_classes
      background += who == -1
  total = query + confuser + background
  assert total == 2 * 8 * 10
  # 160 segments: binomial std of a fraction ~0.04; allow 3 sigma.
  assert abs(query / total - action_fraction) < 0.12
  rest = 1 - action_fraction
  assert abs(confuser / total - rest * confusion) < 0.12
  assert abs(background / total - rest * (1 - confusion)) < 0.12


def test_titles_carry_class_words_and_noise(tmp_path):
  """Each class word once, exactly `title_noise_words` noise words, then
  optionally an emoji and a hashtag of the first class word."""
  cfg = _small(title_noise_words=2)
  synthetic.generate(str(tmp_path), cfg)
  for split in ('target', 'web'):
    with open(tmp_path / split / 'manifest.csv', encoding='utf-8') as f:
      rows = list(csv.DictReader(f))
    assert len(rows) == cfg.num_classes * (
        cfg.target_videos_per_class if split == 'target'
        else cfg.web_videos_per_class)
    for r in rows:
      words = r['title'].split()
      if words[-1] == '#' + r['label'].split()[0]:
        words.pop()
      if words[-1] in synthetic.EMOJI:
        words.pop()
      noise = [w for w in words if w in synthetic.NOISE_WORDS]
      assert len(noise) == cfg.title_noise_words, r['title']
      assert sorted(w for w in words if w not in noise) == sorted(
          r['label'].split()), r['title']


def test_bad_parameters_named():
  with pytest.raises(ValueError, match='action_fraction'):
    _small(action_fraction=1.5).validate()
  with pytest.raises(ValueError, match='num_classes'):
    _small(num_classes=0).validate()
