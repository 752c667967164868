"""Tests of spl.gradcam and spl.attention_maps.

The main test trains the tiny3d classifier to tell "one square moves" from
"all squares are still" (every clip also holds a still square elsewhere, so
brightness alone gives nothing away), then checks that the Grad-CAM of the
"moves" class lands on the moving square's quadrant, not on the still one.
"""

import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from spl import attention_maps
from spl import ema as ema_lib
from spl import gradcam
from spl.models import factory
from tfrecords_tools import label_spaces
from tfrecords_tools import records
from tfrecords_tools import schema
from tfrecords_tools import testing

T, S = 8, 32  # Clip frames and side.
QUAD, SQUARE = 16, 6  # Quadrant side, square side.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


# ---- Synthetic "one region moves" clips ----


def _bounce(p, n):
  p %= 2 * n
  return p if p <= n else 2 * n - p


def _quadrant_mask(q):
  mask = np.zeros((S, S), bool)
  y, x = (q // 2) * QUAD, (q % 2) * QUAD
  mask[y:y + QUAD, x:x + QUAD] = True
  return mask


def _two_square_clip(rng, *, moving, quadrant, other):
  """Noise, a square in `quadrant` (moving or not), a still one in `other`."""
  background = rng.normal(0.0, 1.0, (S, S, 3)).astype(np.float32)
  clip = np.repeat(background[None], T, 0)
  for q, moves in ((quadrant, moving), (other, False)):
    qy, qx = (q // 2) * QUAD, (q % 2) * QUAD
    y0, x0 = rng.integers(0, QUAD - SQUARE + 1, 2)
    dy, dx = rng.choice([-3, 3], 2)
    for t in range(T):
      y, x = ((_bounce(y0 + dy * t, QUAD - SQUARE),
               _bounce(x0 + dx * t, QUAD - SQUARE)) if moves else (y0, x0))
      clip[t, qy + y:qy + y + SQUARE, qx + x:qx + x + SQUARE] = 2.0
  return clip


def _batch(rng, n):
  labels = rng.integers(0, 2, n)
  clips = []
  for label in labels:
    q = int(rng.integers(0, 4))
    clips.append(_two_square_clip(rng, moving=bool(label), quadrant=q,
                                  other=(q + int(rng.integers(1, 4))) % 4))
  return np.stack(clips), labels.astype(np.int32)


@pytest.fixture(scope='module')
def motion_model():
  """tiny3d trained (~10 s on CPU) to detect the moving square: class 1."""
  tf_keras.utils.set_random_seed(0)
  rng = np.random.default_rng(0)
  model = factory.build_classifier('tiny3d', num_classes=2,
                                   input_shape=(T, S, S, 3), dropout_rate=0.0)
  optimizer = tf_keras.optimizers.Adam(3e-3)

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      logits = model(x, training=True)
      loss = tf.reduce_mean(
          tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

  for _ in range(180):
    step(*_batch(rng, 16))
  x, y = _batch(np.random.default_rng(1), 64)
  accuracy = np.mean(np.argmax(model(x, training=False), -1) == y)
  assert accuracy > 0.9, f'the motion detector did not train: {accuracy}'
  return model


def test_grad_cam_highlights_the_moving_region(motion_model):
  cam = gradcam.GradCam(motion_model)
  for seed, (moving, still) in enumerate([(0, 3), (3, 0), (1, 2), (2, 1)]):
    clip = _two_square_clip(np.random.default_rng(100 + seed), moving=True,
                            quadrant=moving, other=still)
    heat, logits = cam(clip[None], 1, normalize=False)
    assert np.argmax(logits[0]) == 1
    heat = heat[0]
    assert heat.shape == (T, S, S)
    inside = heat[:, _quadrant_mask(moving)].mean()
    outside = heat[:, ~_quadrant_mask(moving)].mean()
    at_still = heat[:, _quadrant_mask(still)].mean()
    assert inside > 2 * outside, (moving, inside, outside)
    assert inside > 2 * at_still, (moving, inside, at_still)


def test_grad_cam_function_normalises_to_unit_max(motion_model):
  clip = _two_square_clip(np.random.default_rng(7), moving=True, quadrant=2,
                          other=1)
  heat = gradcam.grad_cam(motion_model, clip, 1)
  assert heat.shape == (T, S, S) and heat.dtype == np.float32
  assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)


@pytest.mark.parametrize('backbone,shape', [
    ('tiny3d', (4, 32, 32, 3)),
    ('slowonly_r18', (2, 32, 32, 3)),
])
def test_logits_through_the_split_equal_the_model(backbone, shape):
  model = factory.build_classifier(backbone, num_classes=3, input_shape=shape)
  clips = np.random.default_rng(0).normal(size=(2,) + shape).astype(np.float32)
  cam, logits = gradcam.GradCam(model).feature_cam(clips, 2)
  np.testing.assert_allclose(logits, model(clips, training=False).numpy(),
                             rtol=1e-5, atol=1e-5)
  assert cam.ndim == 4 and cam.shape[0] == 2 and (cam >= 0).all()


def test_feature_map_model_rejects_non_3d_and_missing_pool():
  image_like = tf_keras.Sequential(
      [tf_keras.Input((8, 8, 3)), tf_keras.layers.Conv2D(4, 3),
       tf_keras.layers.GlobalAveragePooling2D(name='global_pool')])
  with pytest.raises(ValueError, match='3D'):
    gradcam.feature_map_model(image_like)
  no_pool = tf_keras.Sequential([tf_keras.Input((4,)),
                                 tf_keras.layers.Dense(2)])
  with pytest.raises(ValueError, match='global_pool'):
    gradcam.feature_map_model(no_pool)


def test_class_index_out_of_range_is_named():
  model = factory.build_classifier('tiny3d', num_classes=3,
                                   input_shape=(4, 32, 32, 3))
  clip = np.zeros((4, 32, 32, 3), np.float32)
  for bad in (3, -1, 1.5):
    with pytest.raises(ValueError, match='class_index'):
      gradcam.grad_cam(model, clip, bad)
  with pytest.raises(ValueError, match='clip'):
    gradcam.grad_cam(model, clip[0], 0)


def test_upsample_puts_a_cell_where_its_pixels_are():
  cam = np.zeros((2, 4, 4), np.float32)
  cam[1, 0, 3] = 1.0  # Last time step, top-right cell.
  up = gradcam.upsample(cam, (8, 16, 16))
  assert up.shape == (8, 16, 16)
  t, y, x = np.unravel_index(np.argmax(up), up.shape)
  assert t >= 4 and y < 4 and x >= 12
  np.testing.assert_allclose(gradcam.upsample(np.ones((2, 2, 2)), (4, 6, 6)),
                             1.0, rtol=1e-6)


# ---- Rendering ----


def test_denormalize_inverts_the_input_pipeline():
  rgb = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3)).astype(
      np.uint8)
  mean = np.array(gradcam.input_pipeline.IMAGENET_MEAN, np.float32)
  std = np.array(gradcam.input_pipeline.IMAGENET_STD, np.float32)
  normalised = (rgb / 255.0 - mean) / std
  np.testing.assert_array_equal(gradcam.denormalize(normalised), rgb)


@pytest.mark.parametrize('num_frames,max_frames,expected', [
    (8, 8, 8), (8, 3, 3), (4, 8, 4), (32, 8, 8)])
def test_strip_png_has_one_panel_per_frame_shown(tmp_path, num_frames,
                                                 max_frames, expected):
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (num_frames, 24, 32, 3)).astype(np.uint8)
  heat = rng.random((num_frames, 24, 32)).astype(np.float32)
  path = str(tmp_path / 'strip.png')
  shown = gradcam.write_strip(path, frames, heat, title='weak: a / teacher: b',
                              max_frames=max_frames)
  assert shown == expected
  assert not os.path.exists(path + '.tmp-partial')
  image = tf.io.decode_png(open(path, 'rb').read()).numpy()
  assert image.ndim == 3 and image.shape[2] in (3, 4)
  # Panels are laid out at a fixed size: width grows with the frame count.
  one = gradcam.figure_png(gradcam.strip_figure(frames[:1], heat[:1]))
  assert image.shape[1] > tf.io.decode_png(one).shape[1] or expected == 1
  indices = gradcam.strip_frame_indices(num_frames, max_frames)
  assert indices[0] == 0 and indices[-1] == num_frames - 1


def test_overlay_checks_shapes_and_blends():
  frames = np.zeros((2, 4, 4, 3), np.uint8)
  assert gradcam.overlay(frames, np.zeros((2, 4, 4)), alpha=0.0).max() == 0
  hot = gradcam.overlay(frames, np.ones((2, 4, 4)), alpha=1.0)
  assert hot[..., 0].min() > 100  # jet's top is red.
  with pytest.raises(ValueError, match='heat'):
    gradcam.overlay(frames, np.zeros((2, 4, 5)))
  with pytest.raises(ValueError, match='alpha'):
    gradcam.overlay(frames, np.zeros((2, 4, 4)), alpha=2.0)


# ---- The entry point ----

_GIN = """
run.model_fn = @build_classifier
run.num_classes = 4
build_classifier.backbone = 'tiny3d'
build_classifier.dropout_rate = 0.0
eval/make_dataset.num_frames = 4
make_dataset.stride = 1
make_dataset.crop_size = 32
"""
_NAMES = ['class_0', 'class_1']
_SPL_CLASS = 'weak: class_0 / teacher: class_1'


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """Fake clip records, an 'spl' label space (4 classes), a saved tiny3d."""
  root = tmp_path_factory.mktemp('attention')
  testing.write_fake_clip_records(str(root / 'records'), num_clips=6,
                                  num_shards=2, num_classes=2, num_frames=6,
                                  height=36, width=40)
  space = label_spaces.make_label_space('spl', [[3, 1], [1, 1]], _NAMES)
  (root / schema.LABEL_SPACE_FILENAME).write_text(
      label_spaces.label_space_json(space))
  model_dir = root / 'model'
  model_dir.mkdir()
  (model_dir / attention_maps.CONFIG_FILENAME).write_text(_GIN)
  model = factory.build_classifier('tiny3d', num_classes=4,
                                   input_shape=(4, 32, 32, 3),
                                   dropout_rate=0.0)
  model(tf.zeros((1, 4, 32, 32, 3)))
  # As spl.train_lib saves it.
  tf.train.Checkpoint(model=model, backbone=model.backbone).save(
      str(model_dir / 'ckpt'))
  return root


def _run(root, **kwargs):
  args = dict(output_dir=str(root / 'out'),
              records_pattern=str(root / 'records' / 'clips-*.tfrecord'),
              model_dir=str(root / 'model'),
              label_space=str(root / schema.LABEL_SPACE_FILENAME))
  args.update(kwargs)
  return attention_maps.run(**args)


def test_run_writes_a_strip_per_clip_for_a_named_spl_class(run_dir, tmp_path):
  keys = [records.parse_clip_example(r)[schema.CLIP_KEY_KEY]
          for r in testing.read_records(
              str(run_dir / 'records' / 'clips-*.tfrecord'))]
  out = tmp_path / 'maps'
  results = _run(run_dir, output_dir=str(out), clip_keys=[keys[3], keys[0]],
                 class_name=_SPL_CLASS, max_frames=3)
  assert [r['clip_key'] for r in results] == [keys[3], keys[0]]
  for r in results:
    assert r['class_name'] == _SPL_CLASS and r['class_index'] == 1
    assert r['frames_shown'] == 3
    # The asked class's probability is the top-1's exactly when it is top-1.
    assert r['probability'] <= r['top1_probability']
    assert (r['probability'] == r['top1_probability']) == (
        r['top1_index'] == 1)
    assert tf.io.decode_png((out / r['png']).read_bytes()).shape[0] > 0
  index = json.loads((out / attention_maps.INDEX_FILENAME).read_text())
  assert [c['png'] for c in index['clips']] == [r['png'] for r in results]
  assert index['checkpoint'].endswith('ckpt-1')


def test_run_first_n_clips_with_predicted_class(run_dir, tmp_path):
  results = _run(run_dir, output_dir=str(tmp_path), num_clips=2,
                 label_space=None)
  assert len(results) == 2
  for r in results:
    assert r['class_index'] == r['top1_index']
    assert r['probability'] == r['top1_probability']
    assert r['frames_shown'] == 4  # eval/make_dataset.num_frames.
    assert os.path.exists(tmp_path / r['png'])


def test_probabilities_are_the_softmax_share_of_each_class(run_dir,
                                                           tmp_path):
  """Explaining each class in turn reports probabilities summing to 1.

  Protects against reporting, for the class asked for, the top-1 class's
  probability or a logit.
  """
  runs = [_run(run_dir, output_dir=str(tmp_path / str(c)), num_clips=2,
               class_index=c, label_space=None) for c in range(4)]
  for clip in range(2):
    reported = [r[clip] for r in runs]
    assert len({r['clip_key'] for r in reported}) == 1
    assert [r['class_index'] for r in reported] == [0, 1, 2, 3]
    probs = [r['probability'] for r in reported]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    for r in reported:
      assert r['top1_index'] == int(np.argmax(probs))
      assert r['top1_probability'] == pytest.approx(max(probs), abs=1e-6)


def test_bad_input_is_named(run_dir, tmp_path):
  with pytest.raises(ValueError, match="unknown class name 'weak: nope'.*"
                     'label_space.json'):
    _run(run_dir, num_clips=1, class_name='weak: nope')
  with pytest.raises(ValueError, match=r'--class_index must be in \[0, 4\), '
                     'got 4'):
    _run(run_dir, num_clips=1, class_index=4)
  missing = str(tmp_path / 'no_such_ckpt')
  with pytest.raises(ValueError, match='--checkpoint.*no_such_ckpt'):
    _run(run_dir, num_clips=1, checkpoint=missing, model_dir=None,
         gin_files=[str(run_dir / 'model' / attention_maps.CONFIG_FILENAME)])
  with pytest.raises(ValueError, match="--model_dir .* holds no checkpoint"):
    _run(run_dir, num_clips=1, model_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"--clip_keys \['nope@1'\] not found"):
    _run(run_dir, clip_keys=['nope@1'])
  with pytest.raises(ValueError, match='exactly one of --clip_keys'):
    _run(run_dir)
  with pytest.raises(ValueError, match='--records .* matches no file'):
    _run(run_dir, num_clips=1, records_pattern=str(tmp_path / 'x-*'))
  with pytest.raises(ValueError, match='--label_space .* does not exist'):
    _run(run_dir, num_clips=1, label_space=str(tmp_path / 'none.json'))
  with pytest.raises(ValueError, match='--class_name .* needs --label_space'):
    _run(run_dir, num_clips=1, label_space=None, class_name=_SPL_CLASS)


def test_label_space_and_checkpoint_must_match_the_model(run_dir, tmp_path):
  map_path = tmp_path / schema.LABEL_MAP_FILENAME
  records.write_label_map(str(map_path), _NAMES)
  with pytest.raises(ValueError, match='2 classes but the gin config sets '
                     'run.num_classes=4'):
    _run(run_dir, num_clips=1, label_space=str(map_path))
  with pytest.raises(ValueError, match='cannot restore the model from '
                     'checkpoint'):
    _run(run_dir, num_clips=1, label_space=None,
         gin_bindings=["build_classifier.projection = 'linear'",
                       'build_classifier.projection_dim = 8'])


@pytest.mark.slow
def test_command_line(run_dir, tmp_path):
  out = tmp_path / 'cli'
  cmd = [sys.executable, '-m', 'spl.attention_maps',
         f'--model_dir={run_dir / "model"}',
         f'--records={run_dir / "records" / "clips-*.tfrecord"}',
         '--num_clips=1', f'--label_space={run_dir / "label_space.json"}',
         f'--class_name={_SPL_CLASS}', f'--output_dir={out}']
  proc = subprocess.run(cmd, cwd=_REPO, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert len(list(out.glob('*.png'))) == 1
  bad = subprocess.run(cmd[:-2] + ['--class_index=9', f'--output_dir={out}'],
                       cwd=_REPO, capture_output=True, text=True, timeout=300,
                       check=False)
  assert bad.returncode != 0 and '--class_index must be in [0, 4)' in bad.stderr


def test_the_trained_model_config_wins_over_todays_gin(run_dir, tmp_path):
  # A run trained with a linear projection: its model.json rebuilds that
  # architecture, though config.gin (as _GIN) builds none; without the
  # model.json the same run is refused as another architecture.
  model_dir = tmp_path / 'model'
  model_dir.mkdir()
  (model_dir / attention_maps.CONFIG_FILENAME).write_text(_GIN)
  model = factory.build_classifier('tiny3d', num_classes=4,
                                   input_shape=(None, 32, 32, 3),
                                   dropout_rate=0.0, projection='linear',
                                   projection_dim=8)
  model(tf.zeros((1, 4, 32, 32, 3)))
  tf.train.Checkpoint(model=model, backbone=model.backbone).save(
      str(model_dir / 'ckpt'))
  with pytest.raises(ValueError, match='cannot restore the model'):
    _run(run_dir, num_clips=1, model_dir=str(model_dir),
         output_dir=str(tmp_path / 'refused'))
  factory.write_model_config(
      str(model_dir / factory.MODEL_CONFIG_FILENAME), model)
  written = _run(run_dir, num_clips=2, model_dir=str(model_dir),
                 output_dir=str(tmp_path / 'out'))
  assert len(written) == 2
  map_path = tmp_path / schema.LABEL_MAP_FILENAME
  records.write_label_map(str(map_path), _NAMES)
  with pytest.raises(ValueError, match=r'2 classes but the trained model '
                     r'\(.*model.json\) has 4'):
    _run(run_dir, num_clips=1, model_dir=str(model_dir),
         label_space=str(map_path))



def _save_run(model_dir, model, **extra):
  """A run dir as spl.train_lib leaves it: config.gin and a checkpoint."""
  model_dir.mkdir()
  (model_dir / attention_maps.CONFIG_FILENAME).write_text(_GIN)
  tf.train.Checkpoint(model=model, backbone=model.backbone, **extra).save(
      str(model_dir / 'ckpt'))


def test_a_run_with_a_weight_average_is_explained_with_it(run_dir, tmp_path):
  """A checkpoint with EMA shadows (`run.ema_decay`) is explained with the
  averaged weights, the ones the trainer evaluated: the same maps and
  probabilities as a checkpoint holding those weights as the model's;
  `ema_weights=False` gives the raw model's."""
  model = factory.build_classifier('tiny3d', num_classes=4,
                                   input_shape=(4, 32, 32, 3),
                                   dropout_rate=0.0)
  model(tf.zeros((1, 4, 32, 32, 3)))
  average = ema_lib.WeightAverage(model.trainable_variables, 0.9)
  rng = np.random.default_rng(0)
  for shadow in average.shadows:  # Shadows far from the raw weights.
    shadow.assign(rng.normal(0.0, 0.3, shadow.shape).astype(np.float32))
  _save_run(tmp_path / 'with_ema', model, **{ema_lib.CHECKPOINT_KEY: average})
  _save_run(tmp_path / 'raw', model)
  for v, shadow in zip(model.trainable_variables, average.shadows):
    v.assign(shadow)
  _save_run(tmp_path / 'averaged', model)

  def maps(run, **kwargs):
    """(weights used, class 0's probabilities, PNG bytes) of two clips."""
    out = tmp_path / f'maps_{run}_{len(os.listdir(tmp_path))}'
    results = _run(run_dir, num_clips=2, model_dir=str(tmp_path / run),
                   output_dir=str(out), label_space=None, class_index=0,
                   **kwargs)
    index = json.loads((out / attention_maps.INDEX_FILENAME).read_text())
    pngs = [(out / r['png']).read_bytes() for r in results]
    return index['weights'], [r['probability'] for r in results], pngs

  ema = maps('with_ema')
  raw = maps('with_ema', ema_weights=False)
  assert (ema[0], raw[0]) == ('ema', 'raw')
  assert maps('averaged')[1:] == ema[1:]
  assert maps('raw')[1:] == raw[1:]
  assert np.abs(np.subtract(ema[1], raw[1])).max() > 1e-3
