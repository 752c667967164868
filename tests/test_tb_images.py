"""TensorBoard images (spl/tb_images.py): what they show, read from the
matplotlib figures and from the event files the loop writes."""

import os

import numpy as np
import tensorflow as tf

from spl import loop
from spl import tb_images
from spl.inputs.features import IMAGENET_MEAN
from spl.inputs.features import IMAGENET_STD


def _texts(fig):
  return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_confusion_matrix_figure_has_counts_names_and_colour_bar():
  matrix = [[5, 1, 0], [0, 3, 3], [2, 0, 0]]
  fig = tb_images.confusion_matrix_figure(matrix, ['run', 'jump', 'swim'])
  ax = fig.axes[0]
  assert sorted(_texts(fig)) == sorted(['5', '1', '3', '3', '2'])  # No 0s.
  assert [t.get_text() for t in ax.get_yticklabels()] == ['run', 'jump',
                                                          'swim']
  assert ax.get_ylabel() == 'true class'
  assert ax.get_xlabel() == 'predicted class'
  assert ax.get_title() == '14 clips, 57.1% on the diagonal; white = 0 clips'
  assert len(fig.axes) == 2  # The colour bar.
  # Rows normalised to their clips (row 2: 2 of 2 clips predicted class 0).
  shown = ax.images[0].get_array()
  np.testing.assert_allclose(shown[2], [1.0, 0.0, 0.0])
  np.testing.assert_allclose(shown[1], [0.0, 0.5, 0.5])


def test_large_confusion_matrix_has_no_cell_texts():
  matrix = np.eye(40, dtype=int).tolist()
  fig = tb_images.confusion_matrix_figure(matrix)
  assert not _texts(fig)


def test_per_class_accuracy_bars_are_sorted_and_skip_empty_classes():
  fig = tb_images.per_class_accuracy_figure([0.5, None, 0.25, 1.0],
                                            ['a', 'b', 'c', 'd'])
  ax = fig.axes[0]
  assert [p.get_height() for p in ax.patches] == [0.25, 0.5, 1.0]
  assert [t.get_text() for t in ax.get_xticklabels()] == ['c', 'a', 'd']
  assert '1 classes without clips left out' in ax.get_xlabel()
  assert ax.get_legend().get_texts()[0].get_text() == 'mean 0.583'


def test_clip_strip_undoes_the_normalisation():
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (2, 5, 4, 6, 3)).astype(np.float64)
  normalised = ((pixels / 255.0 - np.asarray(IMAGENET_MEAN)) /
                np.asarray(IMAGENET_STD)).astype(np.float32)
  strip = tb_images.clip_strip(normalised, max_frames=3)
  assert strip.shape == (1, 2 * 4, 3 * 6, 3) and strip.dtype == np.uint8
  # Frames 0, 2, 4 of each clip, side by side; clip 1 below clip 0.
  np.testing.assert_array_equal(strip[0, 4:, 6:12], pixels[1, 2])
  np.testing.assert_array_equal(strip[0, :4, 12:], pixels[0, 4])
  # uint8 input (device finishing) is shown as it is.
  raw = pixels.astype(np.uint8)
  np.testing.assert_array_equal(tb_images.clip_strip(raw, max_frames=3)[0,
                                                                     :4, :6],
                                pixels[0, 0])


def _images(event_dir):
  out = {}
  for path in tf.io.gfile.glob(os.path.join(event_dir, 'events.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.metadata.plugin_data.plugin_name == 'images':
          data = tf.make_ndarray(v.tensor)
          out[(v.tag, event.step)] = tf.io.decode_png(data[2]).numpy()
  return out


def test_record_evaluation_writes_the_detail_images(tmp_path):
  writer = tf.summary.create_file_writer(str(tmp_path / 'eval'))
  result = {'top_1': 0.5, 'confusion_matrix': [[1, 1], [0, 2]],
            'per_class_accuracy': [0.5, 1.0]}
  loop.record_evaluation(str(tmp_path), 'details.json', 7, result, writer,
                         'eval')
  images = _images(str(tmp_path / 'eval'))
  assert set(images) == {('details/confusion_matrix', 7),
                         ('details/per_class_accuracy', 7)}
  assert all(i.ndim == 3 and i.shape[0] > 100 for i in images.values())
  # Without details (CPD's retrieval): scalars only.
  loop.record_evaluation(str(tmp_path), 'details.json', 8, {'R@1': 0.1},
                         writer, 'retrieval')
  assert len(_images(str(tmp_path / 'eval'))) == 2


class _ImageTask(loop.Task):
  def __init__(self):
    self.step_counter = tf.Variable(0, dtype=tf.int64)
    self.checkpoint = tf.train.Checkpoint(step=self.step_counter)
    self.global_batch_size = 1

  def train_iterator(self, step):
    return iter(())

  def train_steps(self, iterator, num_steps):
    self.step_counter.assign_add(num_steps)
    return {'loss': 1.0}

  def images(self):
    return {'clips': np.full((1, 4, 6, 3), 200, np.uint8)}


def test_controller_writes_the_task_images_when_training_starts(tmp_path):
  controller = loop.Controller(
      strategy=tf.distribute.get_strategy(), task=_ImageTask(),
      model_dir=str(tmp_path), total_steps=2,
      config=loop.LoopConfig(steps_per_loop=1))
  controller.train()
  images = _images(str(tmp_path / 'train'))
  assert list(images) == [('inputs/clips', 0)]
  np.testing.assert_array_equal(images[('inputs/clips', 0)],
                                np.full((4, 6, 3), 200))
  # A finished run rerun writes none again.
  controller.train()
  assert len(_images(str(tmp_path / 'train'))) == 1
