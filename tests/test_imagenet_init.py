"""ImageNet initialisation end to end (SPL paper 4.3): gin binding -> trainer ->
inflated backbone before step 0, never on resume, bad files refused before
any step.

The runs go through `spl.main.run` with gin bindings only (no gin file), so
they hold whatever the shipped run files become; `run.imagenet_checkpoint =
%IMAGENET_CHECKPOINT` is the binding the SPL run files use. The weights the
first step starts from are captured, exactly, when the trainer runs its first
steps (`weights_at_first_step`).
"""

# Tests look inside layers.
# pylint: disable=protected-access

import logging
import os

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from official.vision.modeling import classification_model
from official.vision.modeling.backbones import resnet as mg_resnet
from spl import input_pipeline
from spl import main
from spl import train_lib
from spl.models import factory
from spl.models import inflation
from tests import distribute_utils
from tests import test_inflation
from tfrecords_tools import schema
from tfrecords_tools import testing

SIZE = 32
NUM_FRAMES = 4
# The SPL paper's R3D-50-G (Table 8).
R3D50 = 'r3d50_g'


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


@pytest.fixture(scope='module')
def pattern(tmp_path_factory):
  root = tmp_path_factory.mktemp('data')
  testing.write_fake_clip_records(str(root), num_clips=4, num_shards=1,
                                  num_classes=3)
  return str(root / schema.shard_pattern())


@pytest.fixture(scope='module')
def keras_h5(tmp_path_factory):
  """Keras Applications' ResNet-50 weights file (random: no download)."""
  model = tf_keras.applications.ResNet50(weights=None, include_top=False,
                                         input_shape=(SIZE, SIZE, 3))
  test_inflation.randomise_batch_norms(model, with_bias=True)
  path = str(tmp_path_factory.mktemp('keras') / 'resnet50_notop.h5')
  model.save_weights(path)
  return model, path


@pytest.fixture(scope='module')
def model_garden_dir(tmp_path_factory):
  """A directory of Model Garden trainer checkpoints of a ResNet-50
  ClassificationModel (`tf.train.Checkpoint(model=, optimizer=, ...)`)."""
  specs = tf_keras.layers.InputSpec(shape=[None, SIZE, SIZE, 3])
  backbone = mg_resnet.ResNet(model_id=50, input_specs=specs)
  model = classification_model.ClassificationModel(backbone, num_classes=10,
                                                   input_specs=specs)
  test_inflation.randomise_batch_norms(model)
  optimizer = tf_keras.optimizers.SGD(0.1, momentum=0.9)
  optimizer.build(model.trainable_variables)
  checkpoint = tf.train.Checkpoint(
      global_step=tf.Variable(100, dtype=tf.int64), model=model,
      optimizer=optimizer)
  directory = str(tmp_path_factory.mktemp('model_garden'))
  tf.train.CheckpointManager(checkpoint, directory, 1).save(100)
  return backbone, directory


def bindings(pattern, imagenet_checkpoint, *extra, backbone=R3D50):
  """gin bindings of a 1-step training run started from `imagenet_checkpoint`."""
  return [
      f'IMAGENET_CHECKPOINT = {imagenet_checkpoint!r}',
      'run.imagenet_checkpoint = %IMAGENET_CHECKPOINT',
      'run.model_fn = @build_classifier',
      f'build_classifier.backbone = {backbone!r}',
      'build_classifier.dropout_rate = 0.0',
      'run.dataset_fn = @train/make_dataset',
      f'train/make_dataset.num_frames = {NUM_FRAMES}',
      'train/make_dataset.stride = 1',
      f'train/make_dataset.crop_size = {SIZE}',
      'train/make_dataset.shuffle_buffer_size = 4',
      'train/make_dataset.deterministic = True',
      f'run.train_file_pattern = {pattern!r}',
      'run.num_classes = 3',
      'run.global_batch_size = 2',
      'run.train_steps = 1',
      'loop.steps_per_loop = 1',
      'loop.checkpoint_every_steps = 1',
      'run.learning_rate_fn = @build_learning_rate',
      'build_learning_rate.base_learning_rate = 0.1',
      'build_learning_rate.base_batch_size = None',
      *extra]


def _run(bindings, model_dir):
  gin.clear_config()
  return main.run([], bindings, model_dir=str(model_dir), mode='train',
                  strategy=tf.distribute.OneDeviceStrategy('/cpu:0'))


@pytest.fixture
def weights_at_first_step(monkeypatch):
  """The backbone's convs and batch norms as the first training step of a run
  sees them: (path, layer class, weight values) in build order."""
  captured = []
  run_steps = train_lib.ClassificationTask.run_steps

  def capture_then_run(trainer, iterator, num_steps):
    if not captured:
      captured.extend(
          (path, type(layer), [w.numpy() for w in layer.weights])
          for path, layer in inflation._conv_bn_layers(trainer.model.backbone))
    return run_steps(trainer, iterator, num_steps)

  monkeypatch.setattr(train_lib.ClassificationTask, 'run_steps', capture_then_run)
  return captured


def _expected_keras(keras_model, eps3d=1e-3):
  """What each 3D conv / BN must hold, derived here from the paper-level
  rules (not from the inflation module): kernel repeated / T (stem: BGR->RGB,
  x 255 std), bias folded into the BN mean (stem: with the mean pixels'
  difference), gamma rescaled for the epsilon."""
  std = np.asarray(input_pipeline.IMAGENET_STD, np.float64)
  mean = np.asarray(input_pipeline.IMAGENET_MEAN, np.float64)
  caffe_rgb = np.asarray(inflation.KERAS_CAFFE_MEAN_BGR, np.float64)[::-1]
  expected = []
  for name in inflation.RESNET50_LAYER_NAMES:
    layer = keras_model.get_layer(name)
    if name.endswith('_conv'):
      kernel = layer.kernel.numpy().astype(np.float64)
      if name == 'conv1_conv':
        kernel = kernel[:, :, ::-1, :] * 255.0 * std[:, None]
      expected.append({'kernel': kernel})
      continue
    conv = keras_model.get_layer(name[:-3] + '_conv')
    moving_mean = layer.moving_mean.numpy() - conv.bias.numpy()
    if name == 'conv1_bn':
      rgb_kernel = conv.kernel.numpy()[:, :, ::-1, :].astype(np.float64)
      moving_mean -= np.einsum('hwco,c->o', rgb_kernel,
                               255.0 * mean - caffe_rgb)
    var = layer.moving_variance.numpy().astype(np.float64)
    expected.append({
        'gamma': layer.gamma.numpy() * np.sqrt((var + eps3d) /
                                               (var + 1.001e-5)),
        'beta': layer.beta.numpy(), 'moving_mean': moving_mean,
        'moving_variance': var})
  return expected


def _check_backbone(captured, expected, method):
  assert len(captured) == len(expected) == 106
  for (path, _, weights), values in zip(captured, expected):
    if 'kernel' not in values:
      for key, w in zip(('gamma', 'beta', 'moving_mean', 'moving_variance'),
                        weights):
        np.testing.assert_allclose(w, values[key], rtol=2e-6, atol=1e-6,
                                   err_msg=path)
      continue
    kernel, = weights
    t = kernel.shape[0]
    for i in range(t):
      want = (values['kernel'] / t if method == 'mean' else
              values['kernel'] * (i == (t - 1) // 2))
      np.testing.assert_allclose(kernel[i], want, rtol=2e-6, atol=1e-7,
                                 err_msg=f'{path} tap {i}')


def test_keras_h5_inflated_through_gin(pattern, keras_h5, tmp_path, caplog,
                                      weights_at_first_step):
  keras_model, path = keras_h5
  caplog.set_level(logging.INFO)
  result = _run(bindings(pattern, path), tmp_path / 'model')
  assert result['step'] == 1
  _check_backbone(weights_at_first_step, _expected_keras(keras_model), 'mean')
  # The temporal kernels really are temporal (r3d50: 5x7x7 stem).
  assert weights_at_first_step[0][2][0].shape[0] == 5
  assert f'from {path}' in caplog.text and 'Inflated 53 convs and 53' in (
      caplog.text)
  assert tf.train.latest_checkpoint(str(tmp_path / 'model')).endswith('-1')


def test_model_garden_checkpoint_inflated_through_gin(
    pattern, model_garden_dir, tmp_path, weights_at_first_step):
  mg_backbone, directory = model_garden_dir
  _run(bindings(pattern, directory, "run.inflation_method = 'center'"),
       tmp_path / 'model')
  expected = []
  for _, layer in inflation._conv_bn_layers(mg_backbone):
    if isinstance(layer, tf_keras.layers.BatchNormalization):
      expected.append(dict(zip(('gamma', 'beta', 'moving_mean',
                                'moving_variance'),
                               (w.numpy() for w in layer.weights))))
    else:
      expected.append({'kernel': layer.kernel.numpy()})
  _check_backbone(weights_at_first_step, expected, 'center')


@pytest.mark.slow
def test_resumed_run_is_not_reinflated(pattern, keras_h5, tmp_path,
                                       monkeypatch, weights_at_first_step):
  keras_model, source = keras_h5
  path = str(tmp_path / 'imagenet.h5')
  tf.io.gfile.copy(source, path)
  model_dir = tmp_path / 'model'
  first = _run(bindings(pattern, path), model_dir)  # Learning rate 0.1.
  _check_backbone(weights_at_first_step, _expected_keras(keras_model), 'mean')
  trained = [(path3d, [w.numpy() for w in layer.weights]) for path3d, layer
             in inflation._conv_bn_layers(first['model'].backbone)]
  # The step did move the weights away from the inflated ones.
  assert not np.allclose(trained[0][1][0], weights_at_first_step[0][2][0])

  # The same command with one more step resumes at step 1, needs no
  # ImageNet file, and must not inflate over the trained backbone.
  os.remove(path)

  def no_inflation(*args, **kwargs):
    raise AssertionError('a resumed run was inflated')

  monkeypatch.setattr(inflation, 'inflate', no_inflation)
  monkeypatch.setattr(inflation, 'read_2d_resnet50', no_inflation)
  weights_at_first_step.clear()
  second = _run(bindings(pattern, path, 'run.train_steps = 2'), model_dir)
  assert second['step'] == 2
  assert len(weights_at_first_step) == len(trained)
  for (path3d, before), (_, _, after) in zip(trained, weights_at_first_step):
    for b, a in zip(before, after):
      np.testing.assert_array_equal(a, b, err_msg=path3d)


def _truncated(path, out):
  data = open(path, 'rb').read()
  with open(out, 'wb') as f:
    f.write(data[:len(data) // 2])
  return str(out)


def _mobilenet_h5(out):
  tf_keras.applications.MobileNet(
      weights=None, alpha=0.25, input_shape=(SIZE, SIZE, 3),
      classes=3).save_weights(str(out))
  return str(out)


def _resnet18_checkpoint(directory):
  specs = tf_keras.layers.InputSpec(shape=[None, SIZE, SIZE, 3])
  model = classification_model.ClassificationModel(
      mg_resnet.ResNet(model_id=18, input_specs=specs), num_classes=3,
      input_specs=specs)
  tf.train.Checkpoint(model=model).save(os.path.join(directory, 'ckpt'))
  return str(directory)


@pytest.mark.parametrize('make,error,match', [
    (lambda h5, d: str(d / 'missing.h5'), FileNotFoundError,
     'missing.h5.*does not exist'),
    (lambda h5, d: str(d / 'no_such_dir' / 'ckpt-5'), FileNotFoundError,
     'no_such_dir/ckpt-5.*does not exist'),
    (lambda h5, d: _truncated(h5, d / 'half.h5'), ValueError,
     'half.h5.*not a readable HDF5 file.*truncated'),
    (lambda h5, d: _mobilenet_h5(d / 'mobilenet.h5'), ValueError,
     'mobilenet.h5.*not a Keras Applications ResNet-50'),
    (lambda h5, d: _resnet18_checkpoint(d), ValueError,
     'ckpt-1.*holds no 2D ResNet-50.*21 2D conv kernels'),
], ids=['missing', 'missing_prefix', 'truncated_h5', 'mobilenet',
        'model_garden_resnet18'])
def test_bad_imagenet_checkpoint_fails_before_anything(
    pattern, keras_h5, tmp_path, make, error, match):
  path = make(keras_h5[1], tmp_path)
  model_dir = tmp_path / 'model'
  with pytest.raises(error, match=f'`imagenet_checkpoint`: .*{match}'):
    _run(bindings(pattern, path, backbone='tiny3d'), model_dir)
  assert not model_dir.exists()  # Failed before the model dir was made.


def test_backbone_of_another_architecture_fails_before_any_step(
    pattern, keras_h5, tmp_path):
  model_dir = tmp_path / 'model'
  with pytest.raises(ValueError, match=r"`imagenet_checkpoint` '.*"
                     r"resnet50_notop.h5' cannot initialise backbone "
                     r"'tiny3d'.*does not match"):
    _run(bindings(pattern, keras_h5[1], backbone='tiny3d'), model_dir)
  assert tf.train.latest_checkpoint(str(model_dir)) is None


@pytest.mark.parametrize('binding,match', [
    ("run.init_checkpoint = '{model_dir}'", 'not both'),
    ("run.inflation_method = 'repeat'", '`inflation_method` must be one of'),
    ('run.imagenet_norm_epsilon = 0.0', '`imagenet_norm_epsilon` must be'),
])
def test_bad_settings_are_refused(pattern, keras_h5, tmp_path, binding,
                                  match):
  model_dir = tmp_path / 'model'
  if '{model_dir}' in binding:  # A real checkpoint, so only the clash fails.
    model_dir.mkdir()
    tf.train.Checkpoint(v=tf.Variable(1.0)).save(str(model_dir / 'init'))
  with pytest.raises(ValueError, match=match):
    _run(bindings(pattern, keras_h5[1],
                   binding.format(model_dir=model_dir), backbone='tiny3d'),
         tmp_path / 'other')


def test_eval_ignores_imagenet_checkpoint(tmp_path):
  # Eval / predict restore a trained model: the ImageNet file is not read.
  weights = train_lib._read_imagenet_checkpoint(
      str(tmp_path / 'missing.h5'), 'mean', None, training=False,
      model_dir=str(tmp_path), init_checkpoint=None)
  assert weights is None


def test_inflation_of_a_mirrored_model(keras_h5, logical_cpus):
  # Under MirroredStrategy every replica's copy (also of the batch norms'
  # ON_READ moving statistics) gets the inflated values.
  keras_model, path = keras_h5
  strategy = distribute_utils.mirrored_strategy(logical_cpus[:2])
  with strategy.scope():
    model = factory.build_classifier(
        'slowonly_r50', num_classes=3,
        input_shape=(NUM_FRAMES, SIZE, SIZE, 3))
  inflation.inflate(model, inflation.read_2d_resnet50(path), method='mean')
  expected = _expected_keras(keras_model)
  for ((path3d, layer), values) in zip(
      inflation._conv_bn_layers(model.backbone), expected):
    for w in layer.weights:
      key = w.name.split('/')[-1].split(':')[0]
      replicas = strategy.experimental_local_results(w)
      assert len(replicas) == 2, path3d
      want = values[key]
      if key == 'kernel':
        t = w.shape[0]
        want = np.repeat(want[None], t, axis=0) / t
      for replica in replicas:
        np.testing.assert_allclose(replica.numpy(), want, rtol=2e-6,
                                   atol=1e-6, err_msg=path3d)
