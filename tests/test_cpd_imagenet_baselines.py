"""The CPD paper's ImageNet baselines, on real (random, built here) networks.

Table 2, "ResNet50, ImageNet labels, res5 (2048)": `cpd.evaluate`'s extract
with `build_video_model.imagenet_checkpoint` gives, per record, the 2D
ResNet-50's global-average-pooled res5 feature of every frame, averaged over
the frames and views. Table 4, "ImageNet inflation": `run.imagenet_checkpoint`
with a Model Garden ResNet-34 initialises 'slowonly_r34' before step 0.
"""

# Tests look inside layers.
# pylint: disable=protected-access

import functools
import os

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cpd import configurables
from cpd import features
from cpd import protocols
from official.vision.modeling import classification_model
from official.vision.modeling.backbones import resnet as mg_resnet
from spl import input_pipeline
from spl import main
from spl import train_lib
from spl.models import factory
from spl.models import inflation
from tests import test_imagenet_init
from tests import test_inflation
from tfrecords_tools import schema
from tfrecords_tools import testing

SIZE = 32
NUM_FRAMES = 4


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def _model_garden_checkpoint(model_id, directory):
  """What Model Garden's ImageNet trainer writes for a random ResNet."""
  specs = tf_keras.layers.InputSpec(shape=[None, SIZE, SIZE, 3])
  backbone = mg_resnet.ResNet(model_id=model_id, input_specs=specs)
  model = classification_model.ClassificationModel(backbone, num_classes=10,
                                                   input_specs=specs)
  test_inflation.randomise_batch_norms(model)
  optimizer = tf_keras.optimizers.SGD(0.1, momentum=0.9)
  optimizer.build(model.trainable_variables)
  checkpoint = tf.train.Checkpoint(
      global_step=tf.Variable(100, dtype=tf.int64), model=model,
      optimizer=optimizer)
  tf.train.CheckpointManager(checkpoint, str(directory), 1).save(100)
  return backbone, str(directory)


@pytest.fixture(scope='module')
def resnet50(tmp_path_factory):
  return _model_garden_checkpoint(50, tmp_path_factory.mktemp('r50'))


@pytest.fixture(scope='module')
def resnet34(tmp_path_factory):
  return _model_garden_checkpoint(34, tmp_path_factory.mktemp('r34'))


@pytest.fixture(scope='module')
def keras_h5(tmp_path_factory):
  """Keras Applications' ResNet-50 weights file (random: no download)."""
  model = tf_keras.applications.ResNet50(
      weights=None, include_top=False, pooling='avg',
      input_shape=(SIZE, SIZE, 3))
  test_inflation.randomise_batch_norms(model, with_bias=True)
  path = str(tmp_path_factory.mktemp('keras') / 'resnet50_notop.h5')
  model.save_weights(path)
  return model, path


@pytest.fixture(scope='module')
def records(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('records'))
  testing.write_fake_clip_records(root, num_clips=4, num_shards=1,
                                  num_classes=2, num_frames=NUM_FRAMES)
  return os.path.join(root, 'clips-*.tfrecord')


def _res5_per_frame(resnet2d, frames):
  """The 2D network's res5 feature map, average-pooled: [N, D]."""
  return tf.reduce_mean(resnet2d(frames, training=False)['5'],
                        axis=(1, 2)).numpy()


# ---- Table 2: frozen ImageNet ResNet-50 features ----


def test_extract_gives_2d_res5_features_averaged_over_frames(
    resnet50, records, tmp_path):
  resnet2d, directory = resnet50
  gin.parse_config_files_and_bindings([], list(
      configurables.DEFAULT_BINDINGS) + [
          "build_video_model.backbone = 'slowonly_r50'",
          f"build_video_model.imagenet_checkpoint = '{directory}'",
          f'eval/make_dataset.num_frames = {NUM_FRAMES}',
          'eval/make_dataset.stride = 1',
          f'eval/make_dataset.crop_size = {SIZE}',
          'eval/make_dataset.num_test_clips = 2',
          'eval/make_dataset.num_test_crops = 1',
          'run_protocol.eval_batch_size = 2',
          "run_protocol.feature = 'backbone'"])
  out = str(tmp_path / 'features')
  result = configurables.run_protocol(protocol='extract', output_dir=out,
                                      files=records)
  assert result['num_views'] == 2
  rows = features.load_features(out, by_video=False)
  assert rows[features.BACKBONE].shape == (4, 2048)
  # No head: the 'embedding' written is the same pooled feature.
  np.testing.assert_array_equal(rows[features.EMBEDDING],
                                rows[features.BACKBONE])

  # The reference: the 2D network on every frame of every view, eagerly.
  expected = {}
  with gin.config_scope('eval'):
    dataset = configurables.make_dataset(
        records, is_training=False, batch_size=2, repeat=False,
        drop_remainder=False)
  for batch in dataset:
    for views, idx in zip(batch[input_pipeline.VIDEO].numpy(),
                          batch[input_pipeline.CLIP_INDEX].numpy()):
      frames = views.reshape((-1,) + views.shape[2:])  # [V * T, H, W, 3]
      per_frame = _res5_per_frame(resnet2d, frames)
      # Moving frames (a clip, not a static image): their features differ.
      assert np.abs(per_frame[0] - per_frame[1]).max() > 1e-3 * np.abs(
          per_frame).max()
      expected[int(idx)] = per_frame.mean(axis=0)
  assert sorted(expected) == sorted(rows[features.CLIP_INDEX].tolist())
  for idx, actual in zip(rows[features.CLIP_INDEX], rows[features.BACKBONE]):
    want = expected[int(idx)]
    np.testing.assert_allclose(actual, want, rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())


def test_keras_file_gives_model_garden_resnet50_with_its_weights(keras_h5):
  # A Keras Applications file is ResNet v1; the features are those of Model
  # Garden's (v1.5) ResNet-50 holding the converted weights, frame by frame,
  # on a moving clip (not Keras's own network: strides and stem grid differ).
  keras_model, path = keras_h5
  model = protocols.build_video_model(
      'slowonly_r50', input_shape=(NUM_FRAMES, SIZE, SIZE, 3),
      imagenet_checkpoint=path)
  assert model.head is None and model.backbone.name == 'slowonly_r50'
  clip = tf.random.stateless_uniform([2, NUM_FRAMES, SIZE, SIZE, 3],
                                     seed=(3, 4)) * 2 - 1
  embed = features.make_view_embedder(model.backbone, model.head)
  embedding, pooled = (x.numpy() for x in embed(clip[:, None]))
  np.testing.assert_array_equal(embedding, pooled)

  r2d50 = factory.build_backbone('r2d50', input_shape=(SIZE, SIZE, 3))
  inflation.inflate(r2d50, inflation.read_2d_resnet(path))
  frames = tf.reshape(clip, (-1, SIZE, SIZE, 3))
  per_frame = r2d50(frames, training=False).numpy()
  expected = per_frame.reshape(2, NUM_FRAMES, -1).mean(axis=1)
  test_inflation._assert_close(pooled, expected)
  np.testing.assert_allclose(model(clip, training=False).numpy(), pooled,
                             rtol=1e-5, atol=1e-6)
  # Frames differ, so this is not a static-clip coincidence ...
  assert np.abs(per_frame[0] - per_frame[1]).max() > 1e-2 * np.abs(
      per_frame).max()
  # ... and 'mean' inflation would mix them (why build_video_model does not
  # use it).
  inflation.inflate(model.backbone, inflation.read_2d_resnet(path),
                    method='mean')
  mixed = model.backbone(clip, training=False).numpy()
  assert np.abs(mixed - expected).max() > 1e-2 * np.abs(expected).max()
  # Keras's own network (v1, its stem grid) on the same frames differs.
  mean = np.asarray(input_pipeline.IMAGENET_MEAN, np.float32)
  std = np.asarray(input_pipeline.IMAGENET_STD, np.float32)
  caffe = (frames.numpy() * std + mean)[..., ::-1] * 255.0 - np.asarray(
      inflation.KERAS_CAFFE_MEAN_BGR, np.float32)
  keras_features = keras_model(caffe, training=False).numpy()
  assert np.abs(keras_features - per_frame).max() > 1e-2 * np.abs(
      per_frame).max()


def test_bad_imagenet_settings_are_refused(resnet34, keras_h5, tmp_path):
  _, path = keras_h5
  build = functools.partial(protocols.build_video_model,
                            input_shape=(NUM_FRAMES, SIZE, SIZE, 3))
  with pytest.raises(ValueError, match='`checkpoint`.*or `imagenet_checkpoint`'
                     '.*not both'):
    build('slowonly_r50', checkpoint=str(tmp_path), imagenet_checkpoint=path)
  with pytest.raises(ValueError, match="`backbone` must be 'slowonly_r50' "
                     "with `imagenet_checkpoint`, got 'r3d50_g'"):
    build('r3d50_g', imagenet_checkpoint=path)
  with pytest.raises(ValueError, match=r'`embedding_dim` \(256\).*no embedding '
                     "head.*'backbone'"):
    build('slowonly_r50', imagenet_checkpoint=path, embedding_dim=256)
  with pytest.raises(FileNotFoundError, match='`imagenet_checkpoint`: .*'
                     'missing.h5.*does not exist'):
    build('slowonly_r50', imagenet_checkpoint=str(tmp_path / 'missing.h5'))
  _, r34_dir = resnet34
  with pytest.raises(ValueError, match=(
      r"`imagenet_checkpoint`: 2D checkpoint '.*ckpt-100' holds a 2D "
      r"ResNet-34 .*backbone 'slowonly_r50' is inflated from a 2D ResNet-50")):
    build('slowonly_r50', imagenet_checkpoint=r34_dir)


def test_cpd_models_keep_their_head(tmp_path):
  model = protocols.build_video_model('tiny3d',
                                     input_shape=(NUM_FRAMES, SIZE, SIZE, 3))
  assert model.head is not None and model.output_shape == (None, 256)
  model = protocols.build_video_model(
      'tiny3d', input_shape=(NUM_FRAMES, SIZE, SIZE, 3), embedding_dim=8)
  assert model.output_shape == (None, 8)


# ---- Table 4: an ImageNet ResNet-34 inflated into slowonly_r34 (trainer) ----


def _bindings(pattern, imagenet_checkpoint, backbone):
  return test_imagenet_init.bindings(pattern, imagenet_checkpoint,
                                     backbone=backbone)


def _run(bindings, model_dir):
  gin.clear_config()
  return main.run([], bindings, model_dir=str(model_dir), mode='train',
                  strategy=tf.distribute.OneDeviceStrategy('/cpu:0'))


@pytest.fixture(scope='module')
def train_pattern(tmp_path_factory):
  root = tmp_path_factory.mktemp('train')
  testing.write_fake_clip_records(str(root), num_clips=4, num_shards=1,
                                  num_classes=3)
  return str(root / schema.shard_pattern())


def test_trainer_inflates_resnet34_into_slowonly_r34(
    resnet34, train_pattern, tmp_path, monkeypatch):
  resnet2d, directory = resnet34
  captured = []
  run_steps = train_lib.ClassificationTask.run_steps

  def capture_then_run(trainer, iterator, num_steps):
    if not captured:
      captured.extend((path, [w.numpy() for w in layer.weights]) for path, layer
                      in inflation._conv_bn_layers(trainer.model.backbone))
    return run_steps(trainer, iterator, num_steps)

  monkeypatch.setattr(train_lib.ClassificationTask, 'run_steps', capture_then_run)
  result = _run(_bindings(train_pattern, directory, 'slowonly_r34'),
                tmp_path / 'model')
  assert result['step'] == 1
  layers2d = inflation._conv_bn_layers(resnet2d)
  layers2d = layers2d[:2] + layers2d[4:]  # Without the res2 projection.
  assert len(captured) == len(layers2d) == 72
  for (path, weights), (_, layer) in zip(captured, layers2d):
    for w3, w2 in zip(weights, layer.weights):
      w2 = w2.numpy()
      if w3.ndim == 5:  # run.inflation_method's default: 'mean' (I3D).
        t = w3.shape[0]
        np.testing.assert_allclose(w3, np.repeat(w2[None] / t, t, axis=0),
                                   rtol=1e-6, err_msg=path)
      else:
        np.testing.assert_array_equal(w3, w2, err_msg=path)


def test_trainer_refuses_resnet50_for_slowonly_r34(keras_h5, train_pattern,
                                                   tmp_path, monkeypatch):
  _, path = keras_h5

  def no_step(*args, **kwargs):
    raise AssertionError('a step ran')

  monkeypatch.setattr(train_lib.ClassificationTask, 'run_steps', no_step)
  model_dir = tmp_path / 'model'
  with pytest.raises(ValueError, match=(
      r"`imagenet_checkpoint` '.*resnet50_notop.h5' cannot initialise "
      r"backbone 'slowonly_r34': .*holds a 2D ResNet-50 .*inflated from a 2D "
      r'ResNet-34')):
    _run(_bindings(train_pattern, path, 'slowonly_r34'), model_dir)
  assert tf.train.latest_checkpoint(str(model_dir)) is None
