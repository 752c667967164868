"""Tests of spl.input_pipeline on fake clip records (tfrecords_tools.testing).

Fake frame `t` of clip `c` is flat grey `testing.frame_value(c, t)` with a white
square whose place depends on `c`, so the tests read back which frames were
sampled (the median grey of an output frame) and where the crop was (the
square).
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from spl import input_pipeline as ip
from spl.inputs import finish
from spl.inputs import options as input_options
from spl.inputs import pixels
from spl.inputs import sample
from tests import distribute_utils
from tfrecords_tools import schema
from tfrecords_tools import testing

MEAN = np.array(ip.IMAGENET_MEAN, np.float32)
STD = np.array(ip.IMAGENET_STD, np.float32)
NO_COLOUR = dict(color_jitter_prob=0.0)
PLAIN = dict(color_jitter_prob=0.0, random_flip=False)


def to_pixels(video):
  """Normalised output -> [0, 255] pixels."""
  return (np.asarray(video) * STD + MEAN) * 255.0


def background(frame):
  """Median grey level of one output frame [H, W, 3]."""
  return float(np.median(to_pixels(frame).mean(-1)))


def frame_of(clip_index, level, max_frames=60):
  """The frame number whose fake grey level is `level`."""
  levels = np.array([testing.frame_value(clip_index, t)
                     for t in range(max_frames)])
  t = int(np.argmin(np.abs(levels - level)))
  assert abs(levels[t] - level) < 1.2, (clip_index, level, levels[t])
  return t


def write(path, records):
  with tf.io.TFRecordWriter(path) as w:
    for r in records:
      w.write(r)
  return path


def take_all(ds):
  out = {}
  for batch in ds:
    for k, v in batch.items():
      out.setdefault(k, []).append(v.numpy())
  return {k: np.concatenate(v) for k, v in out.items()}


@pytest.fixture(scope='module')
def clips(tmp_path_factory):
  """12 clips of 20 frames (32x40) in 3 shards, labels in [0, 3)."""
  d = str(tmp_path_factory.mktemp('clips'))
  testing.write_fake_clip_records(d, num_clips=12, num_shards=3,
                                  num_frames=20, height=32, width=40)
  return os.path.join(d, schema.shard_pattern())


@pytest.fixture(scope='module')
def images(tmp_path_factory):
  """6 single-frame image records in 2 shards."""
  d = str(tmp_path_factory.mktemp('images'))
  testing.write_fake_clip_records(d, num_clips=6, num_shards=2, num_frames=1,
                                  height=32, width=40, frame_rate=0.0)
  return os.path.join(d, schema.shard_pattern())


# ---- Shapes and dtypes ----


@pytest.mark.parametrize('image_mode,is_training,clips_,crops,expected', [
    (False, True, 1, 1, (3, 4, 16, 16, 3)),
    (False, False, 1, 1, (3, 1, 4, 16, 16, 3)),
    (False, False, 2, 3, (3, 6, 4, 16, 16, 3)),
    (True, True, 1, 1, (3, 16, 16, 3)),
    (True, False, 1, 3, (3, 3, 16, 16, 3)),
])
def test_shapes_and_dtypes(clips, images, image_mode, is_training, clips_,
                           crops, expected):
  ds = ip.make_dataset(images if image_mode else clips,
                       is_training=is_training, batch_size=3, num_frames=4,
                       stride=2, crop_size=16, num_classes=3,
                       num_test_clips=clips_, num_test_crops=crops,
                       image_mode=image_mode)
  spec = ds.element_spec
  assert set(spec) == {ip.VIDEO, ip.LABEL, ip.CLIP_INDEX, ip.CLIP_KEY,
                       ip.VIDEO_ID, ip.CAPTION}
  want = {ip.VIDEO: tf.float32, ip.LABEL: tf.int32, ip.CLIP_INDEX: tf.int64,
          ip.CLIP_KEY: tf.string, ip.VIDEO_ID: tf.string,
          ip.CAPTION: tf.string}
  for k, dtype in want.items():
    assert spec[k].dtype == dtype, k
  if is_training:  # drop_remainder: static batch size.
    assert spec[ip.VIDEO].shape == expected
  else:
    assert spec[ip.VIDEO].shape[1:] == expected[1:]
  batch = next(iter(ds))
  assert batch[ip.VIDEO].shape == expected
  for k in (ip.LABEL, ip.CLIP_INDEX, ip.CLIP_KEY, ip.VIDEO_ID, ip.CAPTION):
    assert batch[k].shape == (3,), k
  assert np.all(np.isfinite(batch[ip.VIDEO].numpy()))
  # Pixels stay in the normalised range of [0, 1] inputs.
  pixels = to_pixels(batch[ip.VIDEO].numpy())
  assert pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3


def test_metadata_travels_with_each_clip(clips):
  out = take_all(ip.make_dataset(clips, is_training=False, batch_size=5,
                                 num_frames=2, crop_size=16))
  for i, c in enumerate(out[ip.CLIP_INDEX]):
    c = int(c)
    assert out[ip.LABEL][i] == c % 3
    assert out[ip.VIDEO_ID][i].decode() == f'video_{c // 2:05d}'
    assert out[ip.CAPTION][i].decode() == f'title of clip {c}'
    assert out[ip.CLIP_KEY][i].decode().startswith(f'video_{c // 2:05d}@')


def test_label_key_is_configurable(tmp_path):
  path = write(str(tmp_path / 'c.tfrecord'), [
      testing.make_fake_clip(i, label_index=1, weak_label_index=2)
      for i in range(2)])
  out = take_all(ip.make_dataset(path, is_training=False, batch_size=2,
                                 num_frames=2, crop_size=16,
                                 label_key=schema.WEAK_LABEL_INDEX_KEY))
  assert out[ip.LABEL].tolist() == [2, 2]


def test_training_repeats_and_drops_remainder(clips):
  ds = ip.make_dataset(clips, is_training=True, batch_size=5, num_frames=2,
                       crop_size=16)
  seen = take_all(ds.take(6))[ip.CLIP_INDEX]  # 30 clips > 12 records.
  assert len(seen) == 30 and set(seen.tolist()) == set(range(12))


# ---- Temporal sampling ----


def _middle_start(num_available, num_frames, stride):
  """The docstring's single eval window: start floor((n - L) / 2)."""
  return (num_available - ((num_frames - 1) * stride + 1)) // 2


def _even_starts(num_available, num_frames, stride, num_clips):
  """The docstring's eval windows: starts evenly spaced over [0, n - L].

  Rounded to the nearest frame; the cases used never fall half-way.
  """
  slack = num_available - ((num_frames - 1) * stride + 1)
  exact = [k * slack / (num_clips - 1) for k in range(num_clips)]
  assert all(abs(x % 1 - 0.5) > 0.01 for x in exact), exact
  return [int(np.floor(x + 0.5)) for x in exact]


# Slack n - L of the 20-frame clips: 10 (even) and 11 (odd).
@pytest.mark.parametrize('num_frames,stride', [(4, 3), (3, 4)])
def test_eval_single_clip_is_the_middle_window(clips, num_frames, stride):
  out = take_all(ip.make_dataset(clips, is_training=False, batch_size=4,
                                 num_frames=num_frames, stride=stride,
                                 crop_size=16))
  start = _middle_start(20, num_frames, stride)
  for video, c in zip(out[ip.VIDEO], out[ip.CLIP_INDEX]):
    got = [frame_of(c, background(f)) for f in video[0]]
    assert got == [start + stride * k for k in range(num_frames)]


# Slack 13 (odd) and 10 (even) over 4 windows: the rounded starts differ
# from the floored (and the ceiled) ones.
@pytest.mark.parametrize('num_frames,stride', [(4, 2), (4, 3)])
def test_eval_views_cover_the_whole_clip(clips, num_frames, stride):
  out = take_all(ip.make_dataset(clips, is_training=False, batch_size=4,
                                 num_frames=num_frames, stride=stride,
                                 crop_size=16, num_test_clips=4,
                                 num_test_crops=3))
  want = _even_starts(20, num_frames, stride, 4)
  # The first window starts at frame 0, the last ends at the last frame.
  assert want[0] == 0 and want[-1] + (num_frames - 1) * stride == 19
  for video, c in zip(out[ip.VIDEO], out[ip.CLIP_INDEX]):
    assert video.shape[0] == 12
    frames = [[frame_of(c, background(f)) for f in view] for view in video]
    # Views are clip-major: the 3 crops of a clip show the same frames.
    for k in range(4):
      assert frames[3 * k] == frames[3 * k + 1] == frames[3 * k + 2]
    assert [view[0] for view in frames[::3]] == want
    for s, view in zip(want, frames[::3]):
      assert view == [s + stride * i for i in range(num_frames)]


def test_training_window_is_random_with_the_stride(clips):
  # Window L = 3 * 5 + 1 = 16 of 20 frames: legal starts 0..4. Over 40
  # draws every one of them shows up (the last included), none beyond.
  ds = ip.make_dataset(clips, is_training=True, batch_size=4, num_frames=4,
                       stride=5, crop_size=16, seed=1, **NO_COLOUR)
  starts = []
  for batch in ds.take(10):
    for video, c in zip(batch[ip.VIDEO].numpy(),
                        batch[ip.CLIP_INDEX].numpy()):
      got = [frame_of(c, background(f)) for f in video]
      assert got == [got[0] + 5 * k for k in range(4)], got
      starts.append(got[0])
  assert set(starts) == set(range(20 - 16 + 1)), sorted(starts)


@pytest.mark.parametrize('num_available', [9, 10])  # slack 4 and 5
def test_training_starts_cover_zero_to_the_last_start(num_available):
  # Window of 3 frames at stride 2 (L = 5): starts uniform in [0, n - L].
  starts = []
  for seed in range(120):
    got = sample.frame_indices(
        tf.constant(num_available), num_frames=3, stride=2, is_training=True,
        num_clips=1, draws=sample.clip_draws(tf.constant([seed, 3], tf.int64))
    ).numpy().tolist()
    assert got == [got[0], got[0] + 2, got[0] + 4], got
    starts.append(got[0])
  last = num_available - 5
  assert set(starts) == set(range(last + 1)), sorted(set(starts))
  # Roughly uniform: each start drawn at least half its share.
  assert min(np.bincount(starts)) >= 120 / (last + 1) / 2


@pytest.mark.parametrize('is_training', [True, False])
def test_short_clips_loop_from_frame_zero(tmp_path, is_training):
  path = write(str(tmp_path / 'short.tfrecord'),
               [testing.make_fake_clip(c, num_frames=5) for c in range(2)])
  out = take_all(ip.make_dataset(path, is_training=is_training, batch_size=2,
                                 repeat=False, num_frames=4, stride=2,
                                 crop_size=16, num_test_clips=2, **NO_COLOUR))
  for video, c in zip(out[ip.VIDEO], out[ip.CLIP_INDEX]):
    views = video if not is_training else video[None]
    for view in views:
      assert [frame_of(c, background(f)) for f in view] == [0, 2, 4, 1]


@pytest.mark.parametrize('num_frames', [5, 6])  # even and odd slack
def test_image_mode_takes_the_middle_frame_in_eval(tmp_path, num_frames):
  path = write(str(tmp_path / 'img.tfrecord'),
               [testing.make_fake_clip(4, num_frames=num_frames)])
  out = take_all(ip.make_dataset(path, is_training=False, batch_size=1,
                                 crop_size=16, image_mode=True))
  assert out[ip.VIDEO].shape == (1, 1, 16, 16, 3)
  # The docstring's middle frame, (n - 1) // 2.
  assert frame_of(4, background(out[ip.VIDEO][0, 0])) == (num_frames - 1) // 2


# ---- Spatial crops and augmentation ----


def test_three_crops_are_start_centre_end_of_the_long_side(tmp_path):
  # Horizontal ramp: the mean of a crop grows with its x offset.
  ramp = np.tile(np.linspace(0, 255, 40, dtype=np.float32)[None, :, None],
                 (32, 1, 3)).astype(np.uint8)
  frames = [testing.encode_jpeg(ramp)] * 4
  path = write(str(tmp_path / 'ramp.tfrecord'),
               [testing.make_fake_clip(0, num_frames=4, frames=frames)])
  out = take_all(ip.make_dataset(path, is_training=False, batch_size=1,
                                 num_frames=2, stride=1, crop_size=16,
                                 num_test_crops=3))
  means = [to_pixels(out[ip.VIDEO][0, j]).mean() for j in range(3)]
  assert means[0] < means[1] < means[2]
  one = take_all(ip.make_dataset(path, is_training=False, batch_size=1,
                                 num_frames=2, stride=1, crop_size=16))
  # One crop is the centre one, up to sub-pixel rounding of the window.
  diff = np.abs(to_pixels(one[ip.VIDEO][0, 0]) - to_pixels(out[ip.VIDEO][0, 1]))
  assert diff.mean() < 6.0, diff.mean()


# Frames resized by exactly 1/2 (short side 36 -> min_resize 18) to a long
# side of 25 (odd slack 9 for a crop of 16) or 26 (even slack 10). A square
# frame has no long side: its three crops run along x, as in SlowFast's
# uniform_crop (along y only if height > width).
@pytest.mark.parametrize('height,width', [(36, 50), (50, 36), (36, 52),
                                          (36, 36)])
def test_eval_crops_are_placed_as_the_docstring_says(height, width):
  first = tf.constant(testing.encode_jpeg(np.zeros((height, width, 3),
                                                   np.uint8)))
  opts = input_options.make_options(16, dict(min_resize=18))
  rh, rw = height // 2, width // 2  # resized frame
  cy, cx = (rh - 16) // 2, (rw - 16) // 2  # centre crop: floor of half slack
  window, size, ys, xs = (t.numpy().tolist() for t in sample.eval_window(
      first, 16, 1, opts))
  assert window == [2 * cy, 2 * cx, 32, 32]  # in source pixels
  assert size == [16, 16] and ys == [0] and xs == [0]
  # Three crops: start, centre and end of the long side, centred across it.
  window, size, ys, xs = (t.numpy().tolist() for t in sample.eval_window(
      first, 16, 3, opts))
  along = [0, max(cy, cx), max(rh, rw) - 16]
  if width >= height:
    assert window == [2 * cy, 0, 32, width] and size == [16, rw]
    assert ys == [0, 0, 0] and xs == along
  else:
    assert window == [0, 2 * cx, height, 32] and size == [rh, 16]
    assert ys == along and xs == [0, 0, 0]


def _train_windows(height, width, crop_size, num_seeds, **kwargs):
  """`_train_window` of a height x width frame for seeds 0..num_seeds - 1."""
  first = tf.constant(testing.encode_jpeg(np.zeros((height, width, 3),
                                                   np.uint8)))
  opts = input_options.make_options(crop_size, kwargs)
  return np.array([sample.train_window(
      first, crop_size, opts,
      sample.clip_draws(tf.constant([seed, 5], tf.int64))).numpy()
                   for seed in range(num_seeds)])


def test_train_window_offsets_cover_every_legal_position():
  # Short side 8 resized to exactly 8: the window is the 4-pixel crop, at
  # y in [0, 8 - 4] and x in [0, 11 - 4], uniformly and independently.
  got = _train_windows(8, 11, 4, 600, scale_jitter=(8, 8), window_quantum=1)
  assert (got[:, 2:] == 4).all(), got[:, 2:]
  ys, xs = got[:, 0], got[:, 1]
  assert set(zip(ys.tolist(), xs.tolist())) == {
      (y, x) for y in range(5) for x in range(8)}
  # Each offset drawn about its share: a draw over a range one too long
  # (clamped to the last offset) piles the excess onto the last one.
  for offsets, num in ((ys, 5), (xs, 8)):
    counts = np.bincount(offsets, minlength=num)
    assert len(counts) == num, counts
    assert counts.min() >= 0.6 * 600 / num, counts
    assert counts.max() <= 1.4 * 600 / num, counts


def test_train_window_size_spans_the_scale_jitter_range():
  # Short side 15 resized to a size uniform in [5, 6]: the 4-pixel crop is a
  # window of 4 * 15 / size in [10, 12] source pixels, rounded.
  got = _train_windows(15, 18, 4, 600, scale_jitter=(5, 6), window_quantum=1)
  sizes = got[:, 2]
  assert (got[:, 3] == sizes).all()
  assert set(sizes.tolist()) == {10, 11, 12}, np.bincount(sizes)
  # P(round(60 / s) = n) for s uniform in [5, 6] (float64 reference).
  for n in (10, 11, 12):
    s_lo, s_hi = max(5.0, 60.0 / (n + 0.5)), min(6.0, 60.0 / (n - 0.5))
    share = np.mean(sizes == n)
    assert abs(share - (s_hi - s_lo)) < 0.07, (n, share, s_hi - s_lo)
  # The position does not depend on the size: for every size each legal
  # offset shows up.
  for n in (10, 11, 12):
    pick = got[sizes == n]
    assert set(pick[:, 0].tolist()) == set(range(15 - n + 1)), n
    assert set(pick[:, 1].tolist()) == set(range(18 - n + 1)), n


@pytest.mark.parametrize('quantum,expected', [
    (1, {8, 9, 10, 11, 12, 13}), (2, {8, 10, 12}), (4, {8, 12})])
def test_train_window_size_is_rounded_to_the_window_quantum(quantum,
                                                            expected):
  # Window 4 * 16 / s for s uniform in [5, 8]: [8, 12.8] source pixels,
  # rounded to a multiple of the quantum (1: to whole pixels).
  got = _train_windows(16, 20, 4, 300, scale_jitter=(5, 8),
                       window_quantum=quantum)
  assert set(got[:, 2].tolist()) == expected, np.bincount(got[:, 2])


def test_train_window_is_at_least_one_pixel():
  # Short side 6 resized to [40, 60]: a crop of 4 is 0.4 - 0.6 source pixels,
  # which rounds to 0 or 1; the window is one pixel, anywhere in the frame.
  got = _train_windows(6, 9, 4, 200, scale_jitter=(40, 60), window_quantum=1)
  assert (got[:, 2:] == 1).all(), got[:, 2:]
  assert set(got[:, 0].tolist()) == set(range(6))
  assert set(got[:, 1].tolist()) == set(range(9))


def test_augmentation_is_the_same_for_every_frame_of_a_clip(tmp_path):
  # All frames of a clip identical: any per-frame draw would show up.
  records = []
  for c in range(8):
    frame = testing.fake_frame(c, 0, 48, 64)
    frame[:, :, 1] = np.linspace(0, 255, 64, dtype=np.float32).astype(np.uint8)
    records.append(testing.make_fake_clip(
        c, num_frames=6, height=48, width=64,
        frames=[testing.encode_jpeg(frame)] * 6))
  path = write(str(tmp_path / 'same.tfrecord'), records)
  ds = ip.make_dataset(path, is_training=True, batch_size=8, num_frames=6,
                       stride=1, crop_size=24, seed=0, color_jitter_prob=1.0,
                       hue=0.2)
  videos = next(iter(ds))[ip.VIDEO].numpy()
  for video in videos:
    for t in range(1, 6):
      np.testing.assert_allclose(video[t], video[0], atol=1e-5)
  # ... and the draws differ between clips (crop, flip, colour).
  firsts = videos[:, 0]
  assert len({f.tobytes() for f in firsts}) == 8


def test_crop_and_flip_are_the_same_for_every_frame(clips):
  # Frames differ in grey level; the white square must stay put.
  ds = ip.make_dataset(clips, is_training=True, batch_size=6, num_frames=4,
                       stride=2, crop_size=16, seed=3, deterministic=True,
                       **NO_COLOUR)
  centroids_x = []
  for batch in ds.take(2):
    for video in batch[ip.VIDEO].numpy():
      pix = to_pixels(video).mean(-1)  # [T, H, W]
      cents = []
      for frame in pix:
        bg, top = np.median(frame), frame.max()
        if top - bg < 80:  # Too little contrast for JPEG edges to be exact.
          continue
        mask = frame > (bg + top) / 2
        ys, xs = np.nonzero(mask)
        cents.append((ys.mean(), xs.mean(), mask.sum()))
      if cents:
        cents = np.array(cents)
        # JPEG ringing moves the thresholded edge by up to a pixel; a
        # per-frame crop or flip would move the square by several.
        assert np.ptp(cents[:, 0]) <= 1.5 and np.ptp(cents[:, 1]) <= 1.5
        centroids_x.append(cents[0, 1])
  assert centroids_x


def test_colour_transform_math():
  x = tf.constant(np.random.default_rng(0).integers(
      0, 256, (2, 4, 5, 3)), tf.uint8)
  mean, std = tf.constant(MEAN), tf.constant(STD)

  def transformed(c, flip=False):
    return to_pixels(pixels.pixel_transform(
        x, tf.constant(flip), tf.constant(c, tf.float32), mean, std).numpy())

  xf = x.numpy().astype(np.float32)
  # Off: plain normalisation; flip reverses the width axis.
  np.testing.assert_allclose(transformed([0, 2, 2, 2, .3]), xf, atol=1e-3)
  np.testing.assert_allclose(transformed([0, 1, 1, 1, 0], True), xf[:, :, ::-1],
                             atol=1e-3)
  # Brightness x0.5, saturation 0 -> grey, contrast 0 -> constant.
  np.testing.assert_allclose(transformed([1, .5, 1, 1, 0]), xf * .5, atol=1e-3)
  grey = transformed([1, 1, 1, 0, 0])
  np.testing.assert_allclose(grey[..., 0], grey[..., 1], atol=1e-3)
  np.testing.assert_allclose(grey[..., 0], xf @ np.array(pixels.LUMA),
                             atol=1e-2)
  flat = transformed([1, 1, 0, 1, 0])
  assert np.ptp(flat) < 1e-3
  # A hue rotation keeps grey pixels grey, and a full turn is the identity.
  np.testing.assert_allclose(transformed([1, 1, 1, 1, 1.0]), xf, atol=0.05)
  # XLA and plain TF agree.
  c = tf.constant([1, 1.2, .8, 1.3, .1])
  np.testing.assert_allclose(
      pixels.pixel_transform_xla(x, tf.constant(True), c, mean, std).numpy(),
      pixels.pixel_transform(x, tf.constant(True), c, mean, std).numpy(),
      atol=1e-4)


def test_eager_processing_matches_tf_data(clips):
  """The record processor gives the same clip eagerly and inside tf.data."""
  opts = input_options.make_options(16, {})
  proc = ip._RecordProcessor(
      is_training=True, num_frames=4, stride=2, crop_size=16, num_classes=3,
      label_key=schema.LABEL_INDEX_KEY, num_test_clips=1, num_test_crops=1,
      image_mode=False, opts=opts)
  record = testing.read_records(clips)[0]
  element = {'serialized': tf.constant(record), 'damage': tf.constant(''),
             'seed': tf.constant([7, 9], tf.int64)}
  eager = proc(element)
  assert eager[ip._ERROR].numpy() == b''
  graph = next(iter(tf.data.Dataset.from_tensors(element).map(proc)))
  np.testing.assert_allclose(eager[ip.VIDEO].numpy(), graph[ip.VIDEO].numpy(),
                             atol=1e-5)
  assert eager[ip.VIDEO].shape == (4, 16, 16, 3)
  assert int(eager[ip.CLIP_INDEX]) == int(graph[ip.CLIP_INDEX])


def test_frame_indices_eagerly():
  idx = lambda n, **kw: sample.frame_indices(  # pylint: disable=g-long-lambda
      tf.constant(n), num_frames=3, stride=2, **kw).numpy().tolist()
  assert idx(9, is_training=False, num_clips=1, draws=None) == [2, 4, 6]
  # Odd slack 5: the middle window starts at floor(5 / 2).
  assert idx(10, is_training=False, num_clips=1, draws=None) == [2, 4, 6]
  # Slack 7 over 4 windows: starts round(7k / 3) = 0, 2, 5, 7.
  assert idx(12, is_training=False, num_clips=4, draws=None) == [
      0, 2, 4, 2, 4, 6, 5, 7, 9, 7, 9, 11]
  assert idx(9, is_training=False, num_clips=2, draws=None) == [0, 2, 4, 4, 6, 8]
  assert idx(4, is_training=False, num_clips=2, draws=None) == [0, 2, 0] * 2
  got = idx(9, is_training=True, num_clips=1,
            draws=sample.clip_draws(tf.constant([1, 2], tf.int64)))
  assert got[1] - got[0] == 2 and 0 <= got[0] <= 4


# ---- Determinism ----


def test_deterministic_mode_is_reproducible(clips):
  def run(seed):
    ds = ip.make_dataset(clips, is_training=True, batch_size=4, num_frames=2,
                         crop_size=16, deterministic=True, seed=seed)
    return take_all(ds.take(3))
  a, b, c = run(5), run(5), run(6)
  np.testing.assert_array_equal(a[ip.CLIP_INDEX], b[ip.CLIP_INDEX])
  np.testing.assert_array_equal(a[ip.VIDEO], b[ip.VIDEO])
  assert not np.array_equal(a[ip.VIDEO], c[ip.VIDEO])


@pytest.mark.parametrize('replicas', [1, 2])
def test_skip_batches_starts_where_the_skipped_batches_end(clips, replicas):
  """A resumed deterministic run's input: the same batches, clips and
  augmentation as the uninterrupted stream from that batch on (skipped
  before decoding), per input pipeline of a sharded input."""
  for pipeline in range(replicas):
    context = tf.distribute.InputContext(num_input_pipelines=replicas,
                                         input_pipeline_id=pipeline)
    kwargs = dict(is_training=True, batch_size=3, num_frames=2,
                  crop_size=16, deterministic=True, seed=4,
                  input_context=context)
    whole = take_all(ip.make_dataset(clips, **kwargs).skip(5).take(4))
    resumed = take_all(ip.make_dataset(clips, skip_batches=5,
                                       **kwargs).take(4))
    for key in (ip.CLIP_INDEX, ip.VIDEO):
      np.testing.assert_array_equal(resumed[key], whole[key])
  with pytest.raises(ValueError, match='`skip_batches` must be >= 0'):
    ip.make_dataset(clips, is_training=True, batch_size=3, skip_batches=-1)


# ---- Bad input ----


def _corrupt(record, frames='all'):
  ex = tf.train.SequenceExample.FromString(record)
  feats = ex.feature_lists.feature_list[schema.IMAGE_KEY].feature
  for i, f in enumerate(feats):
    if frames == 'all' or i in frames:
      data = f.bytes_list.value[0]
      f.bytes_list.value[0] = data[:20] + b'\x00' * 10
  return ex.SerializeToString()


def _without(record, key):
  ex = tf.train.SequenceExample.FromString(record)
  del ex.context.feature[key]
  return ex.SerializeToString()


@pytest.fixture
def bad_file(tmp_path):
  good = [testing.make_fake_clip(c, num_frames=6) for c in range(6)]
  good[1] = _corrupt(good[1])
  good[3] = _without(good[3], schema.CLIP_KEY_KEY)
  good[4] = testing.make_fake_clip(4, num_frames=6, label_index=9)
  return write(str(tmp_path / 'bad.tfrecord'), good)


@pytest.mark.parametrize('is_training', [True, False])
def test_bad_records_raise_naming_file_and_reason(tmp_path, is_training):
  cases = [
      (_corrupt(testing.make_fake_clip(0)), 'could not be parsed or decoded'),
      (_without(testing.make_fake_clip(0), schema.CLIP_INDEX_KEY),
       f'missing required key `{schema.CLIP_INDEX_KEY}`'),
      (_without(testing.make_fake_clip(0), schema.LABEL_INDEX_KEY),
       f'missing required key `{schema.LABEL_INDEX_KEY}`'),
      (testing.make_fake_clip(0, label_index=3), 'out of range [0, 3)'),
      (b'not a record', 'could not be parsed or decoded'),
  ]
  for i, (record, reason) in enumerate(cases):
    path = write(str(tmp_path / f'bad{i}.tfrecord'),
                 [testing.make_fake_clip(5), record])
    ds = ip.make_dataset(path, is_training=is_training, batch_size=1,
                         num_frames=2, crop_size=16, num_classes=3,
                         repeat=False, deterministic=True)
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
      take_all(ds)
    assert path in err.value.message and 'record #1' in err.value.message
    assert reason in err.value.message, err.value.message


def test_negative_label_is_an_error_without_num_classes(tmp_path):
  path = write(str(tmp_path / 'neg.tfrecord'),
               [testing.make_fake_clip(0, label_index=-1)])
  with pytest.raises(tf.errors.InvalidArgumentError, match='out of range'):
    take_all(ip.make_dataset(path, is_training=False, batch_size=1,
                             num_frames=2, crop_size=16))


@pytest.mark.parametrize('is_training', [True, False])
def test_skip_mode_drops_and_counts(bad_file, is_training):
  ip.reset_skipped_records()
  out = take_all(ip.make_dataset(
      bad_file, is_training=is_training, batch_size=2, num_frames=6,
      crop_size=16, num_classes=3, on_bad_record='skip', repeat=False,
      drop_remainder=False))
  assert sorted(out[ip.CLIP_INDEX].tolist()) == [0, 2, 5]
  assert set(out[ip.LABEL].tolist()) <= {0, 1, 2}
  assert ip.num_skipped_records() == 3
  messages = ' | '.join(ip.skipped_record_messages())
  assert 'record #1' in messages and 'record #3' in messages
  assert schema.CLIP_KEY_KEY in messages and 'out of range' in messages
  assert bad_file in messages
  ip.reset_skipped_records()
  assert ip.num_skipped_records() == 0


@pytest.mark.parametrize('is_training,deterministic', [
    (False, True), (True, True), (True, False)])
def test_lost_records_are_named_first_last_and_in_a_row(
    tmp_path, is_training, deterministic):
  """Also with a nondeterministic training pipeline (what training runs
  use): the records are still processed in order, so none is missed or
  reported lost by mistake."""
  # Corrupt frames first, last, alone and three in a row.
  bad = {0, 3, 4, 5, 8, 11}
  path = write(str(tmp_path / 'lost.tfrecord'), [
      _corrupt(testing.make_fake_clip(c)) if c in bad else
      testing.make_fake_clip(c) for c in range(12)])
  kwargs = dict(is_training=is_training, batch_size=2, num_frames=2,
                crop_size=16, num_classes=3, repeat=False,
                drop_remainder=False, deterministic=deterministic)
  ip.reset_skipped_records()
  out = take_all(ip.make_dataset(path, on_bad_record='skip', **kwargs))
  assert sorted(out[ip.CLIP_INDEX].tolist()) == [
      c for c in range(12) if c not in bad]
  assert ip.num_skipped_records() == len(bad)
  messages = ip.skipped_record_messages()
  assert sorted(int(m.split('record #')[1].split(':')[0])
                for m in messages) == sorted(bad)
  assert all(m.startswith(path) and 'could not be parsed or decoded' in m
             for m in messages)
  ip.reset_skipped_records()
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=f'{path} record #0:') as err:
    take_all(ip.make_dataset(path, **dict(kwargs, is_training=False)))
  assert 'could not be parsed or decoded' in err.value.message


def test_more_lost_in_a_row_than_named_are_counted(tmp_path):
  """With `lost_records_named=2`, three lost in a row: the last two named,
  the one before counted; every lost record is in the count."""
  bad = {3, 4, 5, 9}
  path = write(str(tmp_path / 'lost.tfrecord'), [
      _corrupt(testing.make_fake_clip(c)) if c in bad else
      testing.make_fake_clip(c) for c in range(10)])
  kwargs = dict(is_training=False, batch_size=2, num_frames=2, crop_size=16,
                num_classes=3, repeat=False, drop_remainder=False,
                deterministic=True, lost_records_named=2)
  ip.reset_skipped_records()
  out = take_all(ip.make_dataset(path, on_bad_record='skip', **kwargs))
  assert out[ip.CLIP_INDEX].tolist() == [0, 1, 2, 6, 7, 8]
  assert ip.num_skipped_records() == 4
  messages = ip.skipped_record_messages()
  assert [m.split(':')[0] for m in messages if m.startswith(path)] == [
      f'{path} record #4', f'{path} record #5', f'{path} record #9']
  assert any(m.startswith(f'1 more records lost in a row before {path} '
                          'record #4') for m in messages)
  ip.reset_skipped_records()
  with pytest.raises(tf.errors.InvalidArgumentError) as err:
    take_all(ip.make_dataset(path, **kwargs))
  assert f'{path} record #4, {path} record #5: could not' in (
      err.value.message), err.value.message
  assert f'1 more records lost in a row before {path} record #4' in (
      err.value.message)


# ---- Damaged shards ----
# A TFRecord is a sequence of [length: uint64 LE][crc of length: 4 bytes]
# [data][crc of data: 4 bytes] (TensorFlow's record format).


def _record_offsets(data):
  """Start byte of every record of an intact TFRecord file, and its end."""
  offsets, at = [], 0
  while at < len(data):
    offsets.append(at)
    at += 8 + 4 + int.from_bytes(data[at:at + 8], 'little') + 4
  return offsets + [at]


def _damage(path, kind):
  """Damages a shard in place; returns (first record lost, its offset)."""
  with open(path, 'rb') as f:
    data = bytearray(f.read())
  offsets = _record_offsets(data)
  if kind == 'truncated':  # Cut inside the last record.
    data = data[:-500]
    first = len(offsets) - 2
  elif kind == 'crc':  # One byte of record #2's data flipped.
    first = 2
    data[offsets[2] + 12 + 40] ^= 0xFF
  else:  # 'random': not a TFRecord file at all.
    data = bytearray(np.random.default_rng(0).bytes(3000))
    first = 0
  with open(path, 'wb') as f:
    f.write(bytes(data))
  return first, offsets[first]


DAMAGE = ('truncated', 'crc', 'random')


@pytest.mark.parametrize('kind', DAMAGE)
def test_damaged_shard_is_an_error_naming_file_and_offset(tmp_path, kind):
  path = write(str(tmp_path / 'damaged.tfrecord'),
               [testing.make_fake_clip(c) for c in range(5)])
  first, offset = _damage(path, kind)
  size = os.path.getsize(path)
  with pytest.raises(tf.errors.InvalidArgumentError) as err:
    take_all(ip.make_dataset(path, is_training=False, batch_size=2,
                             num_frames=2, crop_size=16, num_classes=3,
                             repeat=False, deterministic=True))
  assert (f'{path}: damaged at byte {offset} of {size} (record #{first} '
          f'onwards)') in err.value.message, err.value.message
  assert 'truncated' in err.value.message


@pytest.mark.parametrize('kind', DAMAGE)
def test_damaged_shard_is_read_up_to_the_damage_in_skip_mode(tmp_path, kind):
  """The records before the damage are used, every other shard entirely,
  and the damaged file is counted once however often it is read."""
  damaged = write(str(tmp_path / 'a.tfrecord'),
                  [testing.make_fake_clip(c) for c in range(5)])
  write(str(tmp_path / 'b.tfrecord'),
        [testing.make_fake_clip(c) for c in range(10, 13)])
  first, offset = _damage(damaged, kind)
  ds = ip.make_dataset(str(tmp_path / '*.tfrecord'), is_training=False,
                       batch_size=2, num_frames=2, crop_size=16,
                       num_classes=3, repeat=False, drop_remainder=False,
                       on_bad_record='skip', deterministic=True)
  ip.reset_skipped_records()
  for _ in range(2):
    out = take_all(ds)
    assert sorted(out[ip.CLIP_INDEX].tolist()) == (
        list(range(first)) + [10, 11, 12])
  assert list(ip.damaged_files()) == [damaged]
  assert f'damaged at byte {offset}' in ip.damaged_files()[damaged]
  assert ip.num_skipped_records() == 0
  ip.reset_skipped_records()
  assert ip.damaged_files() == {}


def test_training_reads_past_a_damaged_shard_into_the_next_epoch(tmp_path):
  """Repeating training input keeps going: the damaged shard's good records
  come again each epoch, the other shards entirely."""
  damaged = write(str(tmp_path / 'a.tfrecord'),
                  [testing.make_fake_clip(c) for c in range(4)])
  write(str(tmp_path / 'b.tfrecord'),
        [testing.make_fake_clip(c) for c in range(10, 14)])
  _damage(damaged, 'truncated')  # Records 0-2 stay readable.
  ds = ip.make_dataset(str(tmp_path / '*.tfrecord'), is_training=True,
                       batch_size=7, num_frames=2, crop_size=16,
                       num_classes=3, on_bad_record='skip', seed=3)
  ip.reset_skipped_records()
  seen = [sorted(b[ip.CLIP_INDEX].numpy().tolist()) for b in ds.take(3)]
  assert seen[0] == [0, 1, 2, 10, 11, 12, 13]  # One epoch is 7 records.
  assert list(ip.damaged_files()) == [damaged]
  ip.reset_skipped_records()


def test_argument_errors(clips, tmp_path):
  with pytest.raises(ValueError, match='matches no file'):
    ip.make_dataset(str(tmp_path / 'none-*.tfrecord'), is_training=True,
                    batch_size=1)
  with pytest.raises(ValueError, match='file_pattern'):
    ip.make_dataset('', is_training=True, batch_size=1)
  with pytest.raises(TypeError, match='no_such_knob'):
    ip.make_dataset(clips, is_training=True, batch_size=1, no_such_knob=1)
  with pytest.raises(ValueError, match='on_bad_record'):
    ip.make_dataset(clips, is_training=True, batch_size=1,
                    on_bad_record='ignore')
  with pytest.raises(ValueError, match='num_test_crops'):
    ip.make_dataset(clips, is_training=False, batch_size=1, num_test_crops=2)
  with pytest.raises(ValueError, match='batch_size'):
    ip.make_dataset(clips, is_training=False, batch_size=0)
  with pytest.raises(ValueError, match='scale_jitter'):
    ip.make_dataset(clips, is_training=True, batch_size=1, crop_size=16,
                    scale_jitter=(10, 20))
  with pytest.raises(ValueError, match='lost_records_named'):
    ip.make_dataset(clips, is_training=True, batch_size=1,
                    lost_records_named=0)


# ---- Evaluation counts and distribution ----


def test_eval_sees_every_record_once(clips):
  out = take_all(ip.make_dataset(clips, is_training=False, batch_size=5,
                                 num_frames=2, crop_size=16))
  assert sorted(out[ip.CLIP_INDEX].tolist()) == list(range(12))


@pytest.mark.parametrize('num_shards', [3, 1])  # file / record sharding
@pytest.mark.parametrize('is_training', [True, False])
def test_input_context_shards_are_disjoint_and_cover(tmp_path, num_shards,
                                                     is_training):
  d = str(tmp_path)
  testing.write_fake_clip_records(d, num_clips=11, num_shards=num_shards,
                                  num_frames=2)
  pattern = os.path.join(d, schema.shard_pattern())
  seen = []
  for pid in range(2):
    ctx = tf.distribute.InputContext(num_input_pipelines=2,
                                     input_pipeline_id=pid,
                                     num_replicas_in_sync=2)
    out = take_all(ip.make_dataset(
        pattern, is_training=is_training, batch_size=1, num_frames=2,
        crop_size=16, input_context=ctx, repeat=False, seed=pid))
    seen.append(set(out[ip.CLIP_INDEX].tolist()))
    assert len(seen[-1]) == len(out[ip.CLIP_INDEX])
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(11))


@pytest.mark.parametrize('is_training', [False, True])
def test_mirrored_strategy_replica_batches_disjoint_and_cover(
    tmp_path, is_training):
  d = str(tmp_path)
  testing.write_fake_clip_records(d, num_clips=11, num_shards=3, num_frames=4)
  pattern = os.path.join(d, schema.shard_pattern())
  strategy = distribute_utils.mirrored_strategy(['/cpu:0', '/cpu:1'])

  def dataset_fn(ctx):
    return ip.make_dataset(pattern, is_training=is_training, batch_size=2,
                           num_frames=2, crop_size=16, input_context=ctx,
                           repeat=False)

  dist = strategy.distribute_datasets_from_function(dataset_fn)
  per_replica = [[], []]
  for batch in dist:
    videos = strategy.experimental_local_results(batch[ip.VIDEO])
    indices = strategy.experimental_local_results(batch[ip.CLIP_INDEX])
    for r, (v, idx) in enumerate(zip(videos, indices)):
      assert v.shape[0] == idx.shape[0] <= 2
      if is_training:
        assert v.shape == (2, 2, 16, 16, 3)
      per_replica[r].extend(idx.numpy().tolist())
  a, b = per_replica
  assert a and b
  assert not set(a) & set(b)
  assert len(a) == len(set(a)) and len(b) == len(set(b))
  if is_training:
    # 5 full batches of 2 (drop_remainder); the 5th has no partner replica,
    # so 2 steps of 2 replicas x 2 clips.
    assert len(a) + len(b) == 8
  else:
    assert sorted(a + b) == list(range(11))


# ---- Device finishing (uint8 from the host, float work in the step) ----


@pytest.fixture(scope='module')
def textured(tmp_path_factory):
  """8 clips of 6 textured 36x48 frames: crop 32 windows need upscaling."""
  rng = np.random.default_rng(0)
  records = []
  for c in range(8):
    base = rng.integers(0, 256, (9, 12, 3)).astype(np.float32)
    base = tf.image.resize(base[None], [36, 48], 'bicubic')[0].numpy()
    frames = [testing.encode_jpeg(np.clip(np.roll(base, t, 1), 0, 255)
                                  .astype(np.uint8)) for t in range(6)]
    records.append(testing.make_fake_clip(c, num_frames=6, height=36,
                                          width=48, frames=frames))
  path = str(tmp_path_factory.mktemp('textured') / 'textured.tfrecord')
  return write(path, records)


@pytest.mark.parametrize('image_mode,is_training,clips_,crops,expected', [
    (False, True, 1, 1, (3, 4, 16, 16, 3)),
    (False, False, 2, 3, (3, 6, 4, 16, 16, 3)),
    (True, True, 1, 1, (3, 16, 16, 3)),
    (True, False, 1, 3, (3, 3, 16, 16, 3)),
])
def test_device_finishing_shapes_and_dtypes(clips, images, image_mode,
                                            is_training, clips_, crops,
                                            expected):
  ds = ip.make_dataset(images if image_mode else clips,
                       is_training=is_training, batch_size=3, num_frames=4,
                       stride=2, crop_size=16, num_classes=3,
                       num_test_clips=clips_, num_test_crops=crops,
                       image_mode=image_mode, device_finishing=True)
  spec = ds.element_spec
  assert spec[ip.VIDEO].dtype == tf.uint8
  assert spec[ip.VIDEO].shape[1:] == expected[1:]
  assert spec[ip.VIDEO_FINISH].dtype == tf.float32
  assert spec[ip.VIDEO_FINISH].shape[1:] == (14,)
  batch = next(iter(ds))
  assert batch[ip.VIDEO].shape == expected
  out = ip.finish_features(batch)
  assert ip.VIDEO_FINISH not in out
  assert out[ip.VIDEO].dtype == tf.float32
  assert out[ip.VIDEO].shape == expected
  pixels = to_pixels(out[ip.VIDEO].numpy())
  assert pixels.min() > -1e-3 and pixels.max() < 255 + 1e-3
  # A float batch (host finishing) passes through unchanged.
  assert ip.finish_features({ip.VIDEO: out[ip.VIDEO]})[ip.VIDEO] is (
      out[ip.VIDEO])


@pytest.mark.parametrize('crop_size', [32, 24])  # device / host resize
@pytest.mark.parametrize('is_training', [True, False])
def test_device_finishing_matches_host_finishing(textured, crop_size,
                                                 is_training):
  # Same seed -> same window and flip; without colour jitter the two paths
  # differ only by float error (device resampling = tf.image.resize) or, where
  # the host resizes, by rounding to uint8 (half a level).
  common = dict(is_training=is_training, batch_size=8, num_frames=3,
                stride=2, crop_size=crop_size, seed=4, deterministic=True,
                num_test_clips=2, num_test_crops=3, **NO_COLOUR)
  host = next(iter(ip.make_dataset(textured, **common)))
  dev = next(iter(ip.make_dataset(textured, device_finishing=True,
                                  **common)))
  finish = dev[ip.VIDEO_FINISH].numpy()
  device_resized = is_training and crop_size == 32
  assert np.all(finish[:, :2] <= crop_size)
  assert np.any(finish[:, :2] < crop_size) == device_resized
  if is_training:
    assert 0 < finish[:, 2].sum() < 8  # Some clips flipped, some not.
  got = to_pixels(ip.finish_features(dev)[ip.VIDEO].numpy())
  want = to_pixels(host[ip.VIDEO].numpy())
  np.testing.assert_allclose(got, want, atol=1e-2 if device_resized else 0.51)
  # Inside a compiled step (XLA, as in the train step) the same.
  compiled = tf.function(ip.finish_features, jit_compile=True)(
      ip.video_features(dev))
  np.testing.assert_allclose(to_pixels(compiled[ip.VIDEO].numpy()), got,
                             atol=1e-2)


def test_device_finishing_with_colour_is_close_to_host(textured):
  # Colour jitter on: the host clips before resizing, the device after, and
  # they estimate the clip's mean grey on different pixels.
  common = dict(is_training=True, batch_size=8, num_frames=3, stride=2,
                crop_size=32, seed=1, deterministic=True, color_jitter_prob=1.0)
  host = next(iter(ip.make_dataset(textured, **common)))
  dev = ip.finish_features(next(iter(ip.make_dataset(
      textured, device_finishing=True, **common))))
  diff = np.abs(to_pixels(dev[ip.VIDEO].numpy()) -
                to_pixels(host[ip.VIDEO].numpy()))
  assert diff.mean() < 2.0, diff.mean()


def test_device_finishing_same_transform_for_every_frame(tmp_path):
  records = []
  for c in range(8):
    frame = testing.fake_frame(c, 0, 36, 48)
    frame[:, :, 1] = np.linspace(0, 255, 48, dtype=np.float32).astype(np.uint8)
    records.append(testing.make_fake_clip(
        c, num_frames=6, height=36, width=48,
        frames=[testing.encode_jpeg(frame)] * 6))
  path = write(str(tmp_path / 'same.tfrecord'), records)
  ds = ip.make_dataset(path, is_training=True, batch_size=8, num_frames=6,
                       stride=1, crop_size=32, seed=0, color_jitter_prob=1.0,
                       hue=0.2, device_finishing=True)
  batch = next(iter(ds))
  assert np.any(batch[ip.VIDEO_FINISH].numpy()[:, :2] < 32)
  videos = ip.finish_features(batch)[ip.VIDEO].numpy()
  for video in videos:
    for t in range(1, 6):
      np.testing.assert_allclose(video[t], video[0], atol=1e-5)
  assert len({v[0].tobytes() for v in videos}) == 8


@pytest.mark.parametrize('valid,size', [(5, 9), (9, 9), (1, 3), (3, 7)])
def test_interp_matrix_is_tf_image_resize(valid, size):
  x = np.random.default_rng(valid).uniform(0, 255, (valid, 1, 1)).astype(
      np.float32)
  want = tf.image.resize(x, [size, 1], method='bilinear').numpy()[:, 0, 0]
  m = finish.interp_matrix(tf.constant([valid]), size).numpy()[0]
  padded = np.zeros(size, np.float32)
  padded[:valid] = x[:, 0, 0]
  padded[valid:] = 1e6  # Padding must get no weight.
  np.testing.assert_allclose(m @ padded, want, rtol=1e-5, atol=1e-3)


def test_yiq_hue_turns_like_tf_image_adjust_hue_for_small_deltas():
  # A YIQ rotation is not HSV's hexcone shift: per colour the change points
  # the same way roughly (median cosine ~0.7) and is about as large.
  rgb = np.random.default_rng(0).uniform(40, 215, (256, 3)).astype(np.float32)
  for delta in (-0.03, 0.02):
    colour = tf.constant([[1.0, 1.0, 1.0, 1.0, delta]])
    matrix, offset = pixels.colour_affine(colour, tf.constant([0.0]))
    ours = rgb @ matrix[0].numpy() + offset[0].numpy() - rgb
    theirs = tf.image.adjust_hue(rgb[None] / 255.0, delta).numpy()[0] * 255
    theirs -= rgb
    cos = (ours * theirs).sum(-1) / (
        np.linalg.norm(ours, axis=-1) * np.linalg.norm(theirs, axis=-1))
    assert np.median(cos) > 0.6, (delta, np.median(cos))
    ratio = np.linalg.norm(ours) / np.linalg.norm(theirs)
    assert 0.8 < ratio < 1.3, (delta, ratio)


# ---- Sampling edge cases (mutation survivors of the clip-sampling code) ----


@pytest.mark.parametrize('is_training,num_clips', [
    (True, 1), (False, 1), (False, 2), (False, 3)])
def test_window_that_fills_the_clip_starts_at_frame_zero(is_training,
                                                         num_clips):
  """Slack 0 (n = L): frame 0 is the only legal start, for every view.

  Protects the `max(n - L, 0)` bounds of the start draw and of the evenly
  spaced starts: a range one frame too long would start some windows at
  frame 1 and wrap their last frame around to frame 0.
  """
  # 3 frames at stride 2 span L = 5 frames: [0, 2, 4] is the only window.
  seeds = range(40) if is_training else [None]
  for seed in seeds:
    got = sample.frame_indices(
        tf.constant(5), num_frames=3, stride=2, is_training=is_training,
        num_clips=num_clips,
        draws=None if seed is None else sample.clip_draws(
            tf.constant([seed, 1], tf.int64)))
    assert got.numpy().tolist() == [0, 2, 4] * num_clips, seed


@pytest.mark.parametrize('height,width,num_crops,expected', [
    # Every source pixel becomes a 10 x 10 block of the 10x resized frame.
    (3, 3, 1, [1, 1, 1, 1]),  # centre crop: resized rows/cols 10..19
    (3, 3, 3, [1, 0, 1, 3]),  # crops at x = 0, 10, 20: all columns
    (3, 5, 1, [1, 2, 1, 1]),  # centre of 50 columns: 20..29
    (3, 5, 3, [1, 0, 1, 5]),
    (5, 3, 1, [2, 1, 1, 1]),
    (5, 3, 3, [0, 1, 5, 1]),  # portrait: the crops run along y
])
def test_eval_window_of_an_upscaled_frame_is_the_covering_pixels(
    height, width, num_crops, expected):
  """A crop inside one source row / column decodes only that row / column.

  Protects the minimum window size in `_eval_window` (`max(y1, y0 + 1)`): a
  two-pixel minimum would decode a source pixel too many and squeeze it into
  the crop, shifting and shrinking the picture.
  """
  first = tf.constant(testing.encode_jpeg(np.zeros((height, width, 3),
                                                   np.uint8)))
  # Short side 3 resized to 30: scale exactly 10; crops of 10 pixels.
  opts = input_options.make_options(10, dict(min_resize=30))
  window, size, _, _ = (t.numpy().tolist() for t in sample.eval_window(
      first, 10, num_crops, opts))
  assert window == expected
  # The union of the crops is the window, resized.
  assert size == [10 * expected[2], 10 * expected[3]]


def test_train_window_position_is_independent_of_the_flip(tmp_path):
  """The crop position and the left-right flip are independent draws.

  Protects the seed streams of the crop offsets: drawing them from the
  flip's stream would flip exactly the crops in the upper half of the frame.
  """
  # 16 x 16 frames, red = blue = 12 + 13 * row, green = 12 + 13 * column, so
  # a window's mean tells where it is. Scale fixed at 1: the window is the
  # 8 x 8 crop, at y, x in [0, 8].
  rows, cols = np.mgrid[:16, :16].astype(np.float32)
  frame = np.stack([12 + 13 * rows, 12 + 13 * cols, 12 + 13 * rows], -1)
  records = [testing.make_fake_clip(
      c, num_frames=1, height=16, width=16,
      frames=[testing.encode_jpeg(frame.astype(np.uint8))]) for c in range(8)]
  path = write(str(tmp_path / 'ramps.tfrecord'), records)
  ds = ip.make_dataset(path, is_training=True, batch_size=32, num_frames=1,
                       crop_size=8, scale_jitter=(16, 16), seed=4,
                       deterministic=True, device_finishing=True, **NO_COLOUR)
  out = take_all(ds.take(4))  # 128 clips
  assert (out[ip.VIDEO_FINISH][:, :2] == 8).all()  # window size, rows cols
  flips = out[ip.VIDEO_FINISH][:, 2]
  # The decoded window, not yet flipped (device finishing flips it later).
  means = out[ip.VIDEO].astype(np.float32).mean((1, 2, 3))  # [B, 3]
  ys = np.round((means[:, 0] - 12) / 13 - 3.5).astype(int)
  xs = np.round((means[:, 1] - 12) / 13 - 3.5).astype(int)
  assert set(ys.tolist()) == set(range(9)) == set(xs.tolist())
  assert 0.3 < flips.mean() < 0.7, flips.mean()
  # About half the crops flipped in each half of the frame, along y and x.
  for offsets in (ys, xs):
    for half in (offsets < 4, offsets > 4):
      assert 0.25 < flips[half].mean() < 0.75, (offsets, flips)
