"""Tests of spl.train_lib: distribution math, checkpoints, prediction, errors.

One tiny3d run is trained once per module (fixture `trained`) and reused by
the eval / predict / fine-tune / error tests, so the module stays fast.
"""

import functools
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from spl import evaluation
from spl import input_pipeline
from spl import loop
from spl import losses
from spl import optimization
from spl import prediction
from spl import train_lib
from spl.models import factory
from tests import distribute_utils
from tfrecords_tools import records
from tfrecords_tools import schema
from tfrecords_tools import testing

NUM_CLASSES = 3
TINY_DATA = dict(num_frames=4, stride=1, crop_size=32, num_test_clips=2,
                 deterministic=True)

_mirrored = distribute_utils.mirrored_strategy


def _tiny_model(num_classes, input_shape):
  return factory.build_classifier('tiny3d', num_classes=num_classes,
                                  input_shape=input_shape, dropout_rate=0.0)


def _run(**kwargs):
  args = dict(
      model_fn=_tiny_model, num_classes=NUM_CLASSES, global_batch_size=4,
      dataset_fn=functools.partial(input_pipeline.make_dataset, **TINY_DATA),
      train_steps=2,
      loop=loop.LoopConfig(steps_per_loop=1, checkpoint_every_steps=1),
      learning_rate_fn=functools.partial(optimization.build_learning_rate,
                                         base_learning_rate=0.1),
      strategy=tf.distribute.OneDeviceStrategy('/cpu:0'))
  args.update(kwargs)
  return train_lib.run(**args)


def _write_clips(root, clips, num_shards=2):
  """Writes `make_fake_clip` records (kwargs per clip) round-robin + label map.

  Returns:
    The shard pattern.
  """
  paths = [os.path.join(root, schema.shard_name(i, num_shards))
           for i in range(num_shards)]
  tf.io.gfile.makedirs(root)
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  for c, kwargs in enumerate(clips):
    writers[c % num_shards].write(
        testing.make_fake_clip(c, num_classes=NUM_CLASSES, **kwargs))
  for w in writers:
    w.close()
  records.write_label_map(os.path.join(root, schema.LABEL_MAP_FILENAME),
                          [f'class_{i}' for i in range(NUM_CLASSES)])
  return os.path.join(root, schema.shard_pattern())


def _summaries(event_dir, tag):
  """Sorted (step, value) of a scalar summary over a directory's event files."""
  out = []
  for path in tf.io.gfile.glob(os.path.join(event_dir, 'events.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.tag == tag:
          out.append((event.step, float(tf.make_ndarray(v.tensor))))
  return sorted(out)


def _summary_steps(event_dir, tag):
  return [step for step, _ in _summaries(event_dir, tag)]


def _checkpoint_steps(model_dir):
  """Steps of the checkpoints the manager lists, checked against the files."""
  state = tf.train.get_checkpoint_state(model_dir)
  listed = [int(p.rsplit('-', 1)[1]) for p in state.all_model_checkpoint_paths]
  on_disk = sorted(int(os.path.basename(p)[len('ckpt-'):-len('.index')])
                   for p in tf.io.gfile.glob(os.path.join(model_dir,
                                                          'ckpt-*.index')))
  assert listed == on_disk
  return listed


def _iterations(model_dir):
  """The optimizer's step counter in the latest checkpoint of `model_dir`."""
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
  return int(reader.get_tensor('optimizer/_iterations/.ATTRIBUTES/'
                               'VARIABLE_VALUE'))


# Colour-coded clips: colour c is this RGB colour plus pixel noise.
COLOURS = np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200)], np.float32)


def _colour_frames(colour, rng, num_frames=4):
  return [testing.encode_jpeg(np.clip(
      COLOURS[colour] + rng.uniform(-40, 40, (32, 40, 3)), 0, 255).astype(
          np.uint8)) for _ in range(num_frames)]


def _colour_clips(root, num_clips, seed):
  """Clips of one video each whose class (index mod 3) is their colour."""
  rng = np.random.default_rng(seed)
  return _write_clips(root, [
      dict(frames=_colour_frames(c % NUM_CLASSES, rng), num_frames=4,
           video_id=f'video_{c}', label_index=c % NUM_CLASSES)
      for c in range(num_clips)])


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp('data')
  # 7 clips over 2 shards (4 + 3): odd sizes exercise partial batches.
  testing.write_fake_clip_records(str(root), num_clips=7, num_shards=2,
                                  num_classes=NUM_CLASSES)
  return str(root / schema.shard_pattern())


# (video id, label, colour) of each eval clip: videos of 1 to 3 clips, and
# video 'c' with two labels (as SPL relabelling gives). The module's run
# learns the colour-coded classes, so it predicts about a clip's colour: some
# clips right, some wrong, and the video average right where the clip is not
# (video 'a'); clip-level and video-level numbers differ.
EVAL_CLIPS = (('a', 0, 0), ('a', 0, 0), ('a', 0, 1), ('b', 1, 1), ('b', 1, 1),
              ('c', 2, 2), ('c', 2, 2), ('c', 0, 1), ('d', 1, 1))


@pytest.fixture(scope='module')
def eval_data(tmp_path_factory):
  rng = np.random.default_rng(2)
  return _write_clips(str(tmp_path_factory.mktemp('eval_data')), [
      dict(frames=_colour_frames(colour, rng), num_frames=4, video_id=v,
           label_index=l) for v, l, colour in EVAL_CLIPS])


# The module's run: 11 steps, 4 a loop, a checkpoint every 5. No setting
# divides another, so loops must stop short at each checkpoint (steps 5, 10)
# and at the end (step 11), where the final checkpoint is off the period:
# loops end at steps 4, 5, 9, 10, 11; checkpoints at 5, 10, 11.
LOOP = dict(train_steps=11, loop=loop.LoopConfig(
    steps_per_loop=4, checkpoint_every_steps=5, max_checkpoints_to_keep=10))


@pytest.fixture(scope='module')
def trained(tmp_path_factory, eval_data):
  tf_keras.utils.set_random_seed(0)  # Whichever test sets the fixture up.
  model_dir = str(tmp_path_factory.mktemp('trained'))
  train = _colour_clips(str(tmp_path_factory.mktemp('colour_train')), 12,
                        seed=0)
  result = _run(mode='train_and_eval', model_dir=model_dir,
                train_file_pattern=train, eval_file_pattern=eval_data,
                learning_rate_fn=functools.partial(
                    optimization.build_learning_rate, base_learning_rate=0.05,
                    base_batch_size=None), **LOOP)
  return model_dir, result


def test_train_and_eval_writes_checkpoints_summaries_metrics(trained):
  """Exact steps of checkpoints, summaries and metrics; exact eval counts.

  Protects against a final checkpoint saved only on the period, loops that
  overrun the checkpoint or the end, evaluations at the wrong steps, and an
  evaluation that drops or repeats clips or mislabels them.
  """
  model_dir, result = trained
  assert result['step'] == 11
  assert _checkpoint_steps(model_dir) == [5, 10, 11]
  assert tf.train.latest_checkpoint(model_dir).endswith('ckpt-11')
  assert _iterations(model_dir) == 11
  train_loss = _summaries(os.path.join(model_dir, 'train'), 'loss')
  assert [s for s, _ in train_loss] == [4, 5, 9, 10, 11]
  assert _summary_steps(os.path.join(model_dir, 'train'),
                        'learning_rate') == [4, 5, 9, 10, 11]
  # An evaluation at every checkpoint, none in between.
  assert _summary_steps(os.path.join(model_dir, 'eval'),
                        'clip/top_1') == [5, 10, 11]
  with open(os.path.join(model_dir, train_lib.METRICS_FILENAME)) as f:
    written = json.load(f)
  assert written['step'] == 11
  assert written['train']['step'] == 11
  # Without `num_train_examples` the run is one epoch.
  assert written['train']['epoch'] == 1.0
  assert written['train']['loss'] == pytest.approx(train_loss[-1][1])
  with open(os.path.join(model_dir, evaluation.EVAL_DETAILS_FILENAME)) as f:
    details = json.load(f)
  assert details['step'] == 11
  for key, value in written['eval'].items():
    assert details[key] == value, key
  labels = np.array([l for _, l, _ in EVAL_CLIPS])
  assert details['num_clips'] == len(EVAL_CLIPS)
  assert details['num_videos'] == len({c[:2] for c in EVAL_CLIPS}) == 5
  matrix = np.array(details['confusion_matrix'])
  assert matrix.shape == (NUM_CLASSES, NUM_CLASSES)
  np.testing.assert_array_equal(matrix.sum(axis=1),
                                np.bincount(labels, minlength=NUM_CLASSES))
  assert details['clip/top_1'] == pytest.approx(
      np.trace(matrix) / len(EVAL_CLIPS))
  np.testing.assert_allclose(details['per_class_accuracy'],
                             np.diag(matrix) / matrix.sum(axis=1))
  assert details['clip/top_5'] == 1.0  # 3 classes: top-5 is every class.


def _prediction_probs(out_dir):
  """clip index -> probabilities of every class, from top-NUM_CLASSES files."""
  probs = {}
  for r in testing.read_records(os.path.join(out_dir, 'predictions-*')):
    p = records.parse_prediction_example(r)
    assert p[schema.CLIP_INDEX_KEY] not in probs
    row = np.zeros(NUM_CLASSES)
    row[p[schema.PREDICTION_TOP_K_INDEX_KEY]] = p[
        schema.PREDICTION_TOP_K_SCORE_KEY]
    probs[p[schema.CLIP_INDEX_KEY]] = row
  return probs


def test_eval_numbers_agree_with_the_saved_predictions(trained, eval_data,
                                                        tmp_path):
  """The reported eval equals its recomputation from per-clip predictions.

  `predict` with the same checkpoint and views writes every clip's class
  probabilities; clip top-1, loss, confusion matrix and video top-1 (clips
  averaged per (video, label)) recomputed from them in float64 must equal
  what `evaluate` reported. Protects against an evaluation that pairs a
  prediction with another clip's label or another clip's video.
  """
  model_dir, _ = trained
  with open(os.path.join(model_dir, evaluation.EVAL_DETAILS_FILENAME)) as f:
    details = json.load(f)
  out_dir = str(tmp_path / 'pred')
  _run(mode='predict', model_dir=model_dir, predict_file_pattern=eval_data,
       predictions_dir=out_dir, predict_top_k=NUM_CLASSES)
  probs = _prediction_probs(out_dir)
  clips = {c[schema.CLIP_INDEX_KEY]: c for c in testing.parse_all(eval_data)}
  assert sorted(probs) == sorted(clips) == list(range(len(EVAL_CLIPS)))
  p = np.stack([probs[i] for i in sorted(clips)])
  labels = np.array([clips[i][schema.LABEL_INDEX_KEY] for i in sorted(clips)])
  videos = [clips[i][schema.VIDEO_ID_KEY] for i in sorted(clips)]
  assert list(zip(videos, labels.tolist())) == [c[:2] for c in EVAL_CLIPS]
  np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)
  predicted = p.argmax(axis=1)
  # Not a vacuous comparison: the model does not give every clip one class.
  assert len(set(predicted.tolist())) > 1
  matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), int)
  np.add.at(matrix, (labels, predicted), 1)
  assert details['confusion_matrix'] == matrix.tolist()
  assert details['clip/top_1'] == pytest.approx(np.mean(predicted == labels))
  assert details['loss'] == pytest.approx(
      -np.mean(np.log(p[np.arange(len(p)), labels])), rel=1e-4)
  by_video = {}
  for row, label, video in zip(p, labels, videos):
    by_video.setdefault((video, label), []).append(row)
  assert details['num_videos'] == len(by_video)
  assert details['video/top_1'] == pytest.approx(np.mean(
      [np.argmax(np.mean(rows, axis=0)) == label
       for (_, label), rows in by_video.items()]))


def test_rerun_resumes_from_checkpoint(trained, data, tmp_path):
  """A rerun continues from the last checkpoint to exactly the new target.

  Protects against a resumed run that restarts its step count, trains past
  its target, drops the final checkpoint, or trains again once finished.
  """
  model_dir = str(tmp_path / 'run')
  shutil.copytree(trained[0], model_dir)
  args = dict(LOOP, mode='train', model_dir=model_dir,
              train_file_pattern=data, train_steps=17)
  result = _run(**args)
  # Resumed at 11, off the period: loops end at 15 (checkpoint), 17 (end).
  assert result['step'] == 17
  assert result['train']['step'] == 17
  assert _checkpoint_steps(model_dir) == [5, 10, 11, 15, 17]
  assert _iterations(model_dir) == 17
  train_dir = os.path.join(model_dir, 'train')
  assert _summary_steps(train_dir, 'loss') == [4, 5, 9, 10, 11, 15, 17]
  with open(os.path.join(model_dir, train_lib.METRICS_FILENAME)) as f:
    written = json.load(f)
  assert written['train']['step'] == 17
  trained_weights = [w.numpy() for w in result['model'].weights]
  # Rerunning the finished run trains no step and changes nothing: its
  # training result stays what the run wrote (it was emptied once).
  again = _run(**args)
  assert again['step'] == 17
  assert again['train'] == written['train']
  with open(os.path.join(model_dir, train_lib.METRICS_FILENAME)) as f:
    assert json.load(f)['train'] == written['train']
  assert _checkpoint_steps(model_dir) == [5, 10, 11, 15, 17]
  assert _iterations(model_dir) == 17
  assert _summary_steps(train_dir, 'loss') == [4, 5, 9, 10, 11, 15, 17]
  for a, b in zip(trained_weights, again['model'].weights):
    np.testing.assert_array_equal(a, b.numpy())


def test_training_learns_a_colour_coded_class(tmp_path):
  """16 steps learn classes told apart by colour, on clips never trained on.

  Chance is 1/3 and the initial loss ln 3. Protects against a trainer that
  does not learn: labels paired with other clips, gradients of the wrong
  sign or never applied. The bounds are seed-robust: over model seeds 0-9
  on each of two data sets, held-out top-1 was always 1.0, the final loss at
  most 0.36 ln 3 and the last loop's training loss at most 0.67 of the
  first's; the test passes under 7 different global seeds.
  """
  train = _colour_clips(str(tmp_path / 'train'), 12, seed=3)
  held_out = _colour_clips(str(tmp_path / 'eval'), 9, seed=4)
  model_dir = str(tmp_path / 'm')
  result = _run(
      mode='train_and_eval', model_dir=model_dir, train_file_pattern=train,
      eval_file_pattern=held_out, train_steps=16,
      loop=loop.LoopConfig(steps_per_loop=4, checkpoint_every_steps=16),
      learning_rate_fn=functools.partial(
          optimization.build_learning_rate, base_learning_rate=0.05,
          base_batch_size=None))
  losses = _summaries(os.path.join(model_dir, 'train'), 'loss')
  assert [s for s, _ in losses] == [4, 8, 12, 16]
  assert losses[-1][1] < 0.8 * losses[0][1], losses
  assert result['eval']['num_clips'] == 9
  assert result['eval']['clip/top_1'] >= 7 / 9, result['eval']
  assert result['eval']['loss'] < 0.6 * np.log(NUM_CLASSES), result['eval']


@pytest.mark.parametrize('num_replicas', [1, 2])
def test_predictions_cover_every_clip_once(trained, data, tmp_path,
                                           logical_cpus, num_replicas):
  model_dir, _ = trained
  strategy = (tf.distribute.OneDeviceStrategy('/cpu:0') if num_replicas == 1
              else _mirrored(logical_cpus[:2]))
  out_dir = str(tmp_path / 'pred')
  result = _run(mode='predict', model_dir=model_dir, strategy=strategy,
                predict_file_pattern=data, predictions_dir=out_dir,
                predict_top_k=2)
  assert len(result['written']) == 2
  preds = [records.parse_prediction_example(r) for r in
           testing.read_records(os.path.join(out_dir, 'predictions-*'))]
  clips = testing.parse_all(data)
  assert sorted(p[schema.CLIP_INDEX_KEY] for p in preds) == list(range(7))
  keys = {c[schema.CLIP_INDEX_KEY]: c[schema.CLIP_KEY_KEY] for c in clips}
  for p in preds:
    assert p[schema.CLIP_KEY_KEY] == keys[p[schema.CLIP_INDEX_KEY]]
    assert len(p[schema.PREDICTION_TOP_K_INDEX_KEY]) == 2
    scores = p[schema.PREDICTION_TOP_K_SCORE_KEY]
    assert scores[0] >= scores[1] and sum(scores) <= 1.0 + 1e-5
  # Shard i of the input gives shard i of the output.
  first = testing.read_records(
      os.path.join(out_dir, schema.shard_name(0, 2, prefix='predictions')))
  assert len(first) == 4
  assert not tf.io.gfile.glob(os.path.join(out_dir, '*.tmp-partial'))
  # A rerun skips finished shards.
  rerun = _run(mode='predict', model_dir=model_dir, strategy=strategy,
               predict_file_pattern=data, predictions_dir=out_dir)
  assert rerun['written'] == []
  # The top 2 are the first 2 of the full distribution over the 3 classes.
  full_dir = str(tmp_path / 'full')
  _run(mode='predict', model_dir=model_dir, strategy=strategy,
       predict_file_pattern=data, predictions_dir=full_dir,
       predict_top_k=NUM_CLASSES)
  full = {p[schema.CLIP_INDEX_KEY]: p for p in (
      records.parse_prediction_example(r) for r in
      testing.read_records(os.path.join(full_dir, 'predictions-*')))}
  for p in preds:
    f = full[p[schema.CLIP_INDEX_KEY]]
    assert sorted(f[schema.PREDICTION_TOP_K_INDEX_KEY]) == [0, 1, 2]
    assert sum(f[schema.PREDICTION_TOP_K_SCORE_KEY]) == pytest.approx(
        1.0, abs=1e-5)
    assert p[schema.PREDICTION_TOP_K_INDEX_KEY] == f[
        schema.PREDICTION_TOP_K_INDEX_KEY][:2]
    np.testing.assert_allclose(p[schema.PREDICTION_TOP_K_SCORE_KEY],
                               f[schema.PREDICTION_TOP_K_SCORE_KEY][:2],
                               rtol=1e-6)


def test_finetune_restores_backbone_with_new_classes(trained, data, tmp_path):
  model_dir, _ = trained
  source = _tiny_model(NUM_CLASSES, (4, 32, 32, 3))
  tf.train.Checkpoint(model=source).read(
      tf.train.latest_checkpoint(model_dir)).expect_partial()
  target = _tiny_model(5, (4, 32, 32, 3))
  train_lib.restore_backbone(target, model_dir)
  for a, b in zip(source.backbone.weights, target.backbone.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  # End to end: a 5-class fine-tune from the 3-class run trains.
  result = _run(mode='train', model_dir=str(tmp_path / 'ft'), num_classes=5,
                train_file_pattern=data, train_steps=1,
                init_checkpoint=model_dir)
  assert result['step'] == 1
  assert result['model'].output_shape[-1] == 5


@pytest.mark.parametrize('precision', ['float16', 'bfloat16'])
def test_mixed_precision_trains_and_restores_policy(data, tmp_path,
                                                   precision):
  # With clipping: the loss-scale optimizer applies already-summed gradients.
  result = _run(mode='train', model_dir=str(tmp_path / 'm'), train_steps=1,
                train_file_pattern=data, mixed_precision=precision,
                clip_norm=1.0, strategy=_mirrored(['/cpu:0', '/cpu:1']))
  assert np.isfinite(result['train']['loss'])
  assert result['train']['gradient_norm'] > 0
  assert result['model'].backbone.layers[1].compute_dtype == precision
  assert result['model'].output.dtype == tf.float32
  assert tf_keras.mixed_precision.global_policy().name == 'float32'


def test_architecture_mismatch_is_refused(trained, data):
  model_dir, _ = trained
  with pytest.raises(ValueError, match='different architecture'):
    _run(mode='eval', model_dir=model_dir, eval_file_pattern=data,
         num_classes=4)


def test_missing_and_corrupt_checkpoints_are_refused(trained, data, tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    _run(mode='train', model_dir=str(tmp_path / 'a'), train_file_pattern=data,
         init_checkpoint=str(tmp_path / 'nothing' / 'ckpt-1'))
  with pytest.raises(ValueError, match='holds no checkpoint'):
    _run(mode='eval', model_dir=str(tmp_path / 'b'), eval_file_pattern=data)
  model_dir, _ = trained
  broken = tmp_path / 'broken'
  broken.mkdir()
  prefix = tf.train.latest_checkpoint(model_dir)
  for suffix in ('.index', '.data-00000-of-00001'):
    data_bytes = open(prefix + suffix, 'rb').read()
    (broken / ('ckpt-2' + suffix)).write_bytes(
        data_bytes[:len(data_bytes) // 2])
  with pytest.raises(ValueError, match='corrupt'):
    _run(mode='train', model_dir=str(tmp_path / 'c'), train_file_pattern=data,
         init_checkpoint=str(broken / 'ckpt-2'))


def test_labels_exceeding_classifier_are_refused(tmp_path):
  testing.write_fake_clip_records(str(tmp_path / 'd'), num_clips=4,
                                  num_shards=1, num_classes=5)
  with pytest.raises(ValueError, match='classes'):
    _run(mode='train', model_dir=str(tmp_path / 'm'),
         train_file_pattern=str(tmp_path / 'd' / '*.tfrecord'))
  assert not tf.io.gfile.exists(str(tmp_path / 'm' / 'checkpoint'))


# ---- Distribution: Mirrored on 2 CPUs == one device ----


def _no_bn_model(num_classes, input_shape):
  """Without batch norm: per-replica batch statistics would differ."""
  inputs = tf_keras.Input(input_shape)
  x = tf_keras.layers.Conv3D(4, 3, strides=(1, 2, 2), padding='same')(inputs)
  x = tf_keras.layers.GlobalAveragePooling3D()(x)
  backbone = tf_keras.Model(inputs, x)
  model = tf_keras.Model(inputs, tf_keras.layers.Dense(num_classes)(
      backbone(inputs)))
  model.backbone = backbone
  return model


def _memory_dataset(file_pattern, *, is_training, batch_size, input_context,
                    num_classes, **kwargs):
  del file_pattern, is_training, input_context, num_classes, kwargs
  rng = np.random.default_rng(0)
  video = rng.normal(size=(16, 2, 8, 8, 3)).astype(np.float32)
  labels = rng.integers(0, NUM_CLASSES, 16).astype(np.int32)
  return tf.data.Dataset.from_tensor_slices({
      input_pipeline.VIDEO: video, input_pipeline.LABEL: labels,
      input_pipeline.CLIP_INDEX: np.arange(16)}).batch(
          batch_size, drop_remainder=True).repeat()


def _one_device_and_mirrored(tmp_path, logical_cpus, **kwargs):
  """Trains `_no_bn_model` 4 steps on one device and on 2 replicas."""
  tmp_path.mkdir(parents=True, exist_ok=True)
  (tmp_path / 'x.tfrecord').write_bytes(b'')
  results = {}
  for name, strategy in (
      ('one', tf.distribute.OneDeviceStrategy(logical_cpus[0])),
      ('mirrored', _mirrored(logical_cpus[:2]))):
    tf_keras.utils.set_random_seed(1)
    results[name] = _run(
        mode='train', model_dir=str(tmp_path / name), strategy=strategy,
        model_fn=_no_bn_model, dataset_fn=_memory_dataset,
        train_file_pattern=str(tmp_path / 'x.tfrecord'), train_steps=4,
        loop=loop.LoopConfig(steps_per_loop=2, checkpoint_every_steps=4),
        weight_decay=1e-2,
        learning_rate_fn=functools.partial(
            optimization.build_learning_rate, base_learning_rate=20.0),
        **kwargs)
  weights = {name: [w.numpy() for w in r['model'].weights]
             for name, r in results.items()}
  for a, b in zip(weights['one'], weights['mirrored']):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  return results, weights['one']


def test_mirrored_two_replicas_equals_one_device(tmp_path, logical_cpus):
  _, trained_weights = _one_device_and_mirrored(tmp_path, logical_cpus)
  tf_keras.utils.set_random_seed(1)
  initial = [w.numpy() for w in _no_bn_model(NUM_CLASSES, (2, 8, 8, 3)).weights]
  # Training moved the weights far beyond the tolerance of the comparison.
  assert max(np.abs(a - b).max()
             for a, b in zip(initial, trained_weights)) > 0.01


def test_gradient_clipping_is_of_the_summed_gradient(tmp_path, logical_cpus):
  # Equal weights on one device and 2 replicas (checked by the helper) mean
  # the norm clipped is that of the all-reduced gradient, not of a replica's.
  clip = 0.05
  results, clipped = _one_device_and_mirrored(tmp_path / 'clip', logical_cpus,
                                              clip_norm=clip)
  norms = [r['train']['gradient_norm'] for r in results.values()]
  assert norms[0] == pytest.approx(norms[1], rel=1e-4)
  assert norms[0] > 5 * clip  # Clipping was active on the last steps.
  _, loose = _one_device_and_mirrored(tmp_path / 'loose', logical_cpus,
                                      clip_norm=1e6)
  _, unclipped = _one_device_and_mirrored(tmp_path / 'none', logical_cpus)
  for a, b in zip(loose, unclipped):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert max(np.abs(a - b).max() for a, b in zip(clipped, unclipped)) > 0.01
  summaries = tf.io.gfile.glob(str(tmp_path / 'clip' / 'one' / 'train' / '*'))
  tags = {v.tag for path in summaries
          for event in tf.compat.v1.train.summary_iterator(path)
          for v in event.summary.value}
  assert 'gradient_norm' in tags
  with pytest.raises(ValueError, match='clip_norm'):
    _run(mode='train', model_dir=str(tmp_path / 'bad'), clip_norm=0.0,
         train_file_pattern=str(tmp_path / 'clip' / 'x.tfrecord'))


def test_per_replica_batch_sets_the_global_batch(data, tmp_path,
                                                 logical_cpus):
  # SPL's "batch size of 6" read per device: 2 replicas x 2 clips = 4 a step.
  strategy = _mirrored(logical_cpus[:2])
  result = _run(mode='train', model_dir=str(tmp_path / 'm'),
                train_file_pattern=data, strategy=strategy,
                global_batch_size=None, per_replica_batch_size=2,
                num_train_examples=8, train_steps=None, train_epochs=1)
  assert result['step'] == 2  # 8 clips / (2 x 2) a step.
  for both in (dict(global_batch_size=4, per_replica_batch_size=2),
               dict(global_batch_size=None, per_replica_batch_size=None)):
    with pytest.raises(ValueError, match='exactly one of'):
      _run(mode='train', model_dir=str(tmp_path / 'bad'),
           train_file_pattern=data, **both)


def test_eval_clips_of_another_shape_than_training(data, tmp_path):
  # SPL trains on 16x224^2 crops and tests on 64 frames of 256^2: the model
  # is built with the differing dimensions unknown.
  eval_fn = functools.partial(input_pipeline.make_dataset,
                              **dict(TINY_DATA, num_frames=8, crop_size=40))
  result = _run(mode='train_and_eval', model_dir=str(tmp_path / 'm'),
                train_file_pattern=data, eval_file_pattern=data,
                eval_dataset_fn=eval_fn)
  assert result['model'].input_shape == (None, None, None, None, 3)
  with open(os.path.join(str(tmp_path / 'm'), train_lib.METRICS_FILENAME)) as f:
    assert json.load(f)['eval']['num_clips'] == 7


# ---- Schedule ----


def test_learning_rate_scales_warms_up_and_decays():
  schedule = optimization.build_learning_rate(
      base_learning_rate=0.1, global_batch_size=512, steps_per_epoch=10,
      total_steps=100, warmup_epochs=2)
  lr = [float(schedule(s)) for s in range(100)]
  assert lr[0] == pytest.approx(0.2 / 20)
  assert lr[19] == pytest.approx(0.2)
  assert lr[20] == pytest.approx(0.2)
  assert all(a >= b for a, b in zip(lr[20:], lr[21:]))
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-7)


def test_learning_rate_spl_paper_schedule_from_its_words():
  # SPL 4.3: "warm up training for 10 epochs with starting learning rate as
  # 0.04 and then use learning rate 0.4 with cosine decay for 150 epochs";
  # the rate as printed, whatever the batch (base_batch_size None).
  epoch = 7
  schedule = optimization.build_learning_rate(
      base_learning_rate=0.4, global_batch_size=48, steps_per_epoch=epoch,
      total_steps=160 * epoch, base_batch_size=None, warmup_epochs=10,
      warmup_learning_rate=0.04)
  warm = 10 * epoch
  for s in (0, 1, warm // 2, warm - 1):
    assert float(schedule(s)) == pytest.approx(0.04 + 0.36 * s / warm)
  for s in (warm, warm + 1, 100 * epoch, 160 * epoch - 1):
    expected = 0.2 * (1 + np.cos(np.pi * (s - warm) / (150 * epoch)))
    assert float(schedule(s)) == pytest.approx(expected, abs=1e-6)
  # SoccerNet fine-tuning: "learning rate of 0.005 for 20 epochs".
  flat = optimization.build_learning_rate(
      base_learning_rate=0.005, global_batch_size=48, steps_per_epoch=epoch,
      total_steps=20 * epoch, base_batch_size=None, constant=True)
  assert {round(float(flat(s)), 9) for s in range(20 * epoch)} == {0.005}
  # A scaled warmup start keeps its ratio to the peak.
  scaled = optimization.build_learning_rate(
      base_learning_rate=0.4, global_batch_size=512, steps_per_epoch=epoch,
      total_steps=20 * epoch, base_batch_size=256, warmup_epochs=1,
      warmup_learning_rate=0.04)
  assert float(scaled(0)) == pytest.approx(0.08)
  assert float(scaled(epoch)) == pytest.approx(0.8)
  with pytest.raises(ValueError, match='warmup_start'):
    optimization.build_learning_rate(
        base_learning_rate=0.1, global_batch_size=8, steps_per_epoch=1,
        total_steps=10, warmup_epochs=1, warmup_learning_rate=0.5)


def _sgd_trajectory(optimizer_cls, strategy, *, nesterov, steps=4):
  with strategy.scope():
    w = tf.Variable(np.linspace(-2.0, 3.0, 12, dtype=np.float32).reshape(3, 4))
    optimizer = optimizer_cls(learning_rate=0.1, momentum=0.9,
                              nesterov=nesterov)
    optimizer.build([w])

  @tf.function
  def step():
    def replica_fn():
      with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.sin(w) * w)
      optimizer.apply_gradients(zip(tape.gradient(loss, [w]), [w]))
    strategy.run(replica_fn)

  for _ in range(steps):
    step()
  return w.numpy(), optimizer.momentums[0].numpy()


@pytest.mark.parametrize('nesterov', [False, True])
@pytest.mark.parametrize('replicas', [1, 2])
def test_fused_sgd_matches_keras_sgd(nesterov, replicas, logical_cpus):
  strategy = (tf.distribute.OneDeviceStrategy(logical_cpus[0])
              if replicas == 1 else _mirrored(logical_cpus[:2]))
  reference = _sgd_trajectory(tf_keras.optimizers.SGD, strategy,
                              nesterov=nesterov)
  fused = _sgd_trajectory(optimization.FusedSGD, strategy, nesterov=nesterov)
  assert np.abs(reference[0]).max() > 0.1  # The weights really moved.
  for a, b in zip(reference, fused):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('replicas', [1, 2])
def test_weight_decay_equals_l2_term_on_the_loss(replicas, logical_cpus):
  """The trainer's gradient-form decay == differentiating 0.5 wd ||w||^2."""
  wd, lr, batch = 0.5, 0.2, 4
  strategy = (tf.distribute.OneDeviceStrategy(logical_cpus[0])
              if replicas == 1 else _mirrored(logical_cpus[:2]))
  dataset = _memory_dataset(None, is_training=True, batch_size=batch,
                            input_context=None, num_classes=NUM_CLASSES)
  batches = list(dataset.take(3).as_numpy_iterator())

  tf_keras.utils.set_random_seed(3)
  reference = _no_bn_model(NUM_CLASSES, (2, 8, 8, 3))
  optimizer = tf_keras.optimizers.SGD(lr, momentum=0.9)
  decayed = optimization.decayed_variables(reference.trainable_variables)
  for element in batches:
    with tf.GradientTape() as tape:
      logits = reference(element[input_pipeline.VIDEO], training=True)
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
          element[input_pipeline.LABEL], logits)) + 0.5 * wd * tf.add_n(
              [tf.reduce_sum(tf.square(v)) for v in decayed])
    optimizer.apply_gradients(zip(
        tape.gradient(loss, reference.trainable_variables),
        reference.trainable_variables))

  tf_keras.utils.set_random_seed(3)
  with strategy.scope():
    model = _no_bn_model(NUM_CLASSES, (2, 8, 8, 3))
    ours = optimization.build_sgd(lr, momentum=0.9)
    ours.build(model.trainable_variables)
  trainer = train_lib.ClassificationTask(
      strategy=strategy, model=model, optimizer=ours,
      loss_fn=losses.softmax_cross_entropy, num_classes=NUM_CLASSES,
      global_batch_size=batch, steps_per_epoch=10, weight_decay=wd,
      mixed_precision=None, jit_compile=False)
  iterator = iter(strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensor_slices(
          {k: np.stack([b[k] for b in batches]) for k in batches[0]})))
  trainer.run_steps(iterator, len(batches))

  assert len(decayed) == 2  # Conv and dense kernels; not the biases.
  for a, b in zip(reference.trainable_variables, model.trainable_variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_weight_decay_skips_norm_and_bias():
  model = _tiny_model(NUM_CLASSES, (4, 32, 32, 3))
  decayed = optimization.decayed_variables(model.trainable_variables)
  names = [v.name for v in decayed]
  assert names and all('kernel' in n for n in names)


# ---- Static-shape (TPU) evaluation: padded == unpadded ----


def test_padded_eval_and_predict_equal_unpadded(trained, data, tmp_path,
                                                logical_cpus):
  # 7 records (shards of 4 + 3), global batch 4 over 2 replicas: the last
  # batch of one input pipeline is partial, and the two pipelines run out
  # at different steps.
  model_dir, _ = trained
  strategy = _mirrored(logical_cpus[:2])
  with strategy.scope():
    model = _tiny_model(NUM_CLASSES, (4, 32, 32, 3))
    model(tf.zeros((1, 4, 32, 32, 3)), training=False)
  tf.train.Checkpoint(model=model).read(
      tf.train.latest_checkpoint(model_dir)).expect_partial()
  dataset_fn = functools.partial(input_pipeline.make_dataset, **TINY_DATA)
  results = {pad: evaluation.evaluate(
      model, strategy, dataset_fn, data, num_classes=NUM_CLASSES,
      global_batch_size=4, pad=pad) for pad in (False, True)}
  assert results[True]['num_clips'] == results[False]['num_clips'] == 7
  assert results[True]['num_videos'] == results[False]['num_videos']
  assert results[True]['confusion_matrix'] == results[False][
      'confusion_matrix']
  for key, value in results[False].items():
    if isinstance(value, float):
      assert results[True][key] == pytest.approx(value, abs=1e-6), key

  padded = evaluation.pad_batches(
      dataset_fn(data, is_training=False, batch_size=4, repeat=False,
                 drop_remainder=False, input_context=None,
                 num_classes=None).map(prediction.predict_features), 4)
  assert padded.element_spec[input_pipeline.VIDEO].shape[0] == 4

  preds = {}
  for pad in (False, True):
    out_dir = str(tmp_path / f'pred_{pad}')
    prediction.predict(model, strategy, dataset_fn, data, out_dir,
                       num_classes=NUM_CLASSES, global_batch_size=4, pad=pad)
    preds[pad] = {
        p[schema.CLIP_INDEX_KEY]: p for p in (
            records.parse_prediction_example(r) for r in
            testing.read_records(os.path.join(out_dir, 'predictions-*')))}
    assert len(testing.read_records(os.path.join(out_dir, 'predictions-*'))
               ) == 7
  assert sorted(preds[True]) == sorted(preds[False]) == list(range(7))
  for c, p in preds[False].items():
    q = preds[True][c]
    assert q[schema.PREDICTION_TOP_K_INDEX_KEY] == p[
        schema.PREDICTION_TOP_K_INDEX_KEY]
    np.testing.assert_allclose(q[schema.PREDICTION_TOP_K_SCORE_KEY],
                               p[schema.PREDICTION_TOP_K_SCORE_KEY],
                               rtol=1e-6)


def test_eval_batch_not_divisible_by_replicas_is_refused(trained, data,
                                                         logical_cpus):
  model_dir, _ = trained
  with pytest.raises(ValueError, match='eval_global_batch_size'):
    _run(mode='predict', model_dir=model_dir, predict_file_pattern=data,
         strategy=_mirrored(logical_cpus[:2]), eval_global_batch_size=3,
         pad_eval_batches=True)


def test_comma_separated_file_patterns_train_and_evaluate(tmp_path):
  # One pattern syntax everywhere (tfrecords_tools.file_patterns): the
  # trainer's pre-flight checks once globbed the whole string and refused
  # TRAIN_FILES='a/*,b/*', which the input pipeline accepts.
  first = _colour_clips(str(tmp_path / 'a'), 4, seed=0)
  second = _colour_clips(str(tmp_path / 'b'), 5, seed=1)
  pattern = ','.join([first, second])
  model_dir = str(tmp_path / 'm')
  # 9 clips, 1 epoch at batch 4 with the remainder dropped: 2 steps.
  result = _run(mode='train_and_eval', model_dir=model_dir,
                train_file_pattern=pattern, eval_file_pattern=pattern,
                num_train_examples=9, train_steps=None, train_epochs=1,
                loop=loop.LoopConfig(steps_per_loop=1,
                                     checkpoint_every_steps=100))
  assert _checkpoint_steps(model_dir) == [2]
  assert result['eval']['num_clips'] == 9
  with pytest.raises(ValueError, match=r"`train_file_pattern` '.*/c/\S*' "
                     'matches no files'):
    _run(mode='train', model_dir=str(tmp_path / 'm2'),
         train_file_pattern=f'{first},{tmp_path}/c/clips-*')


def test_training_writes_the_model_config_that_rebuilds_the_run(trained,
                                                                tmp_path):
  model_dir, _ = trained
  path = os.path.join(model_dir, factory.MODEL_CONFIG_FILENAME)
  model = factory.classifier_from_config_file(path)
  assert model.get_config()['num_classes'] == NUM_CLASSES
  assert model.get_config()['backbone_name'] == 'tiny3d'
  model(tf.zeros((1, 4, 32, 32, 3)))
  status = tf.train.Checkpoint(model=model).read(
      tf.train.latest_checkpoint(model_dir))
  status.assert_existing_objects_matched()
  path = str(tmp_path / factory.MODEL_CONFIG_FILENAME)
  with open(path, 'w') as f:
    f.write('{"class_name": "Nothing"')
  with pytest.raises(ValueError, match='cannot rebuild a model from'):
    factory.classifier_from_config_file(path)


def test_skipped_input_is_reported_by_training(tmp_path, caplog):
  """A truncated shard in 'skip' mode: training goes on with the records
  before the damage, and the damaged file is in the progress line, in
  TensorBoard and (by name) in metrics.json."""
  root = str(tmp_path / 'data')
  pattern = _write_clips(root, [dict(num_frames=4)] * 8, num_shards=2)
  damaged = os.path.join(root, schema.shard_name(0, 2))
  with open(damaged, 'rb') as f:
    data = f.read()
  with open(damaged, 'wb') as f:
    f.write(data[:-300])
  model_dir = str(tmp_path / 'run')
  caplog.set_level('INFO')
  result = _run(mode='train', model_dir=model_dir, train_file_pattern=pattern,
                train_steps=3, dataset_fn=functools.partial(
                    input_pipeline.make_dataset, on_bad_record='skip',
                    **TINY_DATA))
  assert result['step'] == 3
  with open(os.path.join(model_dir, train_lib.METRICS_FILENAME)) as f:
    written = json.load(f)
  assert written['input']['damaged_files'] == 1
  assert list(written['input']['damaged']) == [damaged]
  assert 'damaged at byte' in written['input']['damaged'][damaged]
  # Found when the reader reaches the shard's end: by step 3 (12 records;
  # an epoch has 7 readable ones) at the latest.
  assert _summaries(os.path.join(model_dir, 'train'),
                    'input/damaged_files')[-1] == (3, 1.0)
  progress = [r.getMessage() for r in caplog.records
              if r.getMessage().startswith('step 3/3')]
  assert progress and 'skipped 0 records, 1 damaged files' in progress[0]


def _back_to_checkpoint(model_dir, step):
  """What a kill right after checkpoint `step` leaves: later ones removed."""
  for path in tf.io.gfile.glob(os.path.join(model_dir, 'ckpt-*')):
    if int(os.path.basename(path).split('.')[0][len('ckpt-'):]) > step:
      os.remove(path)
  tf.compat.v1.train.update_checkpoint_state(
      model_dir, os.path.join(model_dir, f'ckpt-{step}'))


@pytest.mark.parametrize('replicas', [1, 2])
def test_deterministic_resume_ends_with_the_weights_of_a_straight_run(
    data, tmp_path, logical_cpus, replicas):
  """`loop.deterministic`: taken back to its checkpoint at step 3 of 6 (a
  kill) and rerun, a run ends bit for bit where the uninterrupted one did,
  on one device and on 2 replicas: seeds, op determinism, the input
  position (the resumed input skips the 3 steps' records) and the dropout
  masks (drawn by step: `loop.reseed_generators`) all hold. Resumed with an
  input that starts again from its beginning, it does not."""
  def dropout_model(num_classes, input_shape):
    return factory.build_classifier('tiny3d', num_classes=num_classes,
                                    input_shape=input_shape,
                                    dropout_rate=0.5)

  def train(model_dir, **kwargs):
    strategy = (tf.distribute.OneDeviceStrategy(logical_cpus[0])
                if replicas == 1 else _mirrored(logical_cpus[:2]))
    return _run(mode='train', model_dir=str(tmp_path / model_dir),
                model_fn=dropout_model,
                strategy=strategy, train_file_pattern=data, train_steps=6,
                loop=loop.LoopConfig(steps_per_loop=2,
                                     checkpoint_every_steps=3,
                                     deterministic=True, seed=5), **kwargs)

  def weights(result):
    # Trainable first; the batch-norm moving statistics after.
    model = result['model']
    return ([w.numpy() for w in model.trainable_weights],
            [w.numpy() for w in model.non_trainable_weights])

  straight = weights(train('straight'))
  for name in ('resumed', 'restarted'):
    shutil.copytree(tmp_path / 'straight', tmp_path / name)
    _back_to_checkpoint(str(tmp_path / name), 3)
  resumed = weights(train('resumed'))
  assert tf.train.latest_checkpoint(str(tmp_path / 'resumed')).endswith(
      'ckpt-6')
  # The batch-norm moving statistics too: a checkpoint holds the replicas'
  # mean (ON_READ variables), so deterministic runs average them before
  # each save (loop.average_replica_means).
  for a, b in zip(straight[0] + straight[1], resumed[0] + resumed[1]):
    np.testing.assert_array_equal(a, b)

  def from_the_start(*args, skip_batches=0, **kwargs):
    del skip_batches
    return input_pipeline.make_dataset(*args, **{**TINY_DATA, **kwargs})
  restarted = weights(train('restarted', dataset_fn=from_the_start))
  assert any(not np.array_equal(a, b)
             for a, b in zip(straight[0], restarted[0]))
