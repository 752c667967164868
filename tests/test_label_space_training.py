"""spl.main on relabelled records: label_space.json sizes it, ids checked."""

import json
import os

import gin
import pytest
import tensorflow as tf

from spl import main
from spl import train_lib
from tests import label_space_data
from tfrecords_tools import relabel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(ROOT, 'gin_configs', 'runs', 'pretrain_spl.gin')
TINY = os.path.join(ROOT, 'gin_configs', 'tiny.gin')


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


@pytest.fixture(scope='module')
def spaces(tmp_path_factory):
  """Two label spaces of the same clips: `spl` (9 classes), `spl_b` (6)."""
  root = str(tmp_path_factory.mktemp('spaces'))
  clips, preds = label_space_data.write_clips_and_predictions(root)
  return {'raw': clips,
          'spl': label_space_data.relabelled(root, clips, preds, 'spl'),
          'spl_b': label_space_data.relabelled(root, clips, preds, 'spl_b')}


def _run(model_dir, train_files, label_space, *extra):
  return main.run(
      [PRETRAIN, TINY],
      [f"TRAIN_FILES = '{train_files}'", f"LABEL_SPACE = '{label_space}'",
       'NUM_TRAIN_EXAMPLES = 8', *extra],
      model_dir=str(model_dir), mode='train',
      strategy=tf.distribute.OneDeviceStrategy('/cpu:0'))


def test_classifier_is_sized_by_the_label_space(spaces, tmp_path):
  pattern, path = spaces['spl']
  with open(path) as f:
    space = json.load(f)
  assert space['num_classes'] == 9
  result = _run(tmp_path / 'm', pattern, path)
  assert result['step'] == 2
  assert result['model'].output_shape[-1] == 9
  with open(tmp_path / 'm' / main.CONFIG_FILENAME) as f:
    assert 'run.label_space_path = %LABEL_SPACE' in f.read()
  # TensorBoard shows the input and the label space's plots (relabel's).
  assert relabel.CONFUSION_PNG in train_lib.LABEL_SPACE_PLOTS
  assert relabel.CLASS_COUNTS_PNG in train_lib.LABEL_SPACE_PLOTS
  shown = {}
  for event_file in tf.io.gfile.glob(str(tmp_path / 'm' / 'train' /
                                         'events.*')):
    for event in tf.compat.v1.train.summary_iterator(event_file):
      for v in event.summary.value:
        if v.metadata.plugin_data.plugin_name == 'images':
          shown[v.tag] = tf.io.decode_png(tf.make_ndarray(v.tensor)[2])
  assert set(shown) == {'inputs/training_clips',
                        'inputs/label_space/confusion_matrix',
                        'inputs/label_space/class_counts'}
  # 4 clips of 4 frames of 32x32 (tiny.gin), frames side by side.
  assert shown['inputs/training_clips'].shape == (4 * 32, 4 * 32, 3)
  with open(os.path.join(os.path.dirname(path), relabel.CONFUSION_PNG),
            'rb') as f:
    drawn = tf.io.decode_png(f.read(), channels=4)
  assert (shown['inputs/label_space/confusion_matrix'].numpy() ==
          drawn.numpy()).all()


def test_agreeing_num_classes_is_accepted(spaces, tmp_path):
  pattern, path = spaces['spl_b']
  result = _run(tmp_path / 'm', pattern, path, 'NUM_CLASSES = 6')
  assert result['model'].output_shape[-1] == 6


def test_disagreeing_num_classes_is_refused(spaces, tmp_path):
  pattern, path = spaces['spl_b']
  with pytest.raises(ValueError, match=r'`num_classes`=5 disagrees with the 6 '
                     r'classes of label space'):
    _run(tmp_path / 'm', pattern, path, 'NUM_CLASSES = 5')


def test_records_of_another_label_space_are_refused_before_any_step(
    spaces, tmp_path):
  pattern_b, path_b = spaces['spl_b']
  _, path_spl = spaces['spl']
  with open(path_b) as f:
    id_b = json.load(f)['id']
  with open(path_spl) as f:
    id_spl = json.load(f)['id']
  assert id_b != id_spl
  model_dir = tmp_path / 'm'
  with pytest.raises(ValueError) as e:
    _run(model_dir, pattern_b, path_spl)
  message = str(e.value)
  assert path_spl in message            # the label space file
  assert os.path.dirname(pattern_b) in message  # the offending shard
  assert id_spl in message and id_b in message
  assert not tf.io.gfile.exists(str(model_dir / 'checkpoint'))


def test_records_never_relabelled_are_refused(spaces, tmp_path):
  _, path = spaces['spl']
  with pytest.raises(ValueError, match='record not relabelled'):
    _run(tmp_path / 'm', spaces['raw'], path)


def test_check_label_space_counts_every_record(spaces):
  pattern, path = spaces['spl']
  space = train_lib.read_label_space(path)
  assert train_lib.check_label_space(pattern, space, path) == 8


def test_missing_label_space_file_is_named(spaces, tmp_path):
  pattern, _ = spaces['spl']
  missing = str(tmp_path / 'nope' / 'label_space.json')
  with pytest.raises(ValueError, match='does not exist'):
    _run(tmp_path / 'm', pattern, missing)


def test_label_space_of_another_variant_is_refused_before_any_step(
    spaces, tmp_path):
  pattern, path = spaces['spl_b']
  model_dir = tmp_path / 'm'
  with pytest.raises(ValueError) as e:
    _run(model_dir, pattern, path, "run.label_space_variant = 'spl_m'")
  assert path in str(e.value) and 'spl_b' in str(e.value)
  assert not tf.io.gfile.exists(str(model_dir / 'checkpoint'))
  gin.clear_config()
  result = _run(tmp_path / 'ok', pattern, path,
                "run.label_space_variant = 'spl_b'", 'NUM_CLASSES = 6')
  assert result['model'].output_shape[-1] == 6


def test_declared_variant_needs_a_label_space(tmp_path):
  with pytest.raises(ValueError, match='label_space_variant'):
    train_lib.run(mode='train', model_dir=str(tmp_path), strategy=None,
                  model_fn=None, global_batch_size=1, num_classes=3,
                  label_space_variant='spl_b')
