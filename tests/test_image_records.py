"""Still images as one-frame clip records (the SPL paper's image experiment).

The Clothing1M configs write images with the clip writer
(`--clip_seconds=0.04 --min_clip_seconds=0.01 --clips_per_video=1`): PyAV
opens a JPEG/PNG as a one-frame stream. This checks that path end to end:
writer -> records -> the input pipeline's image mode.
"""

import csv

import numpy as np
import tensorflow as tf

from spl import input_pipeline
from tfrecords_tools import schema
from tfrecords_tools import testing
from tfrecords_tools import write_clips


def _image(path, color, size=(48, 64)):
  pixels = np.zeros(size + (3,), np.uint8)
  pixels[...] = color
  pixels[: size[0] // 2, : size[1] // 2] = 255 - np.asarray(color, np.uint8)
  encode = tf.io.encode_png if path.endswith('.png') else tf.io.encode_jpeg
  tf.io.write_file(path, encode(pixels))
  return pixels


def test_images_become_one_frame_records_read_in_image_mode(tmp_path):
  colours = {'a.jpg': (200, 30, 30), 'b.png': (30, 200, 30),
             'c.jpg': (30, 30, 200)}
  pixels = {n: _image(str(tmp_path / n), c) for n, c in colours.items()}
  with open(tmp_path / 'manifest.csv', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['path', 'label', 'title'])
    for i, name in enumerate(sorted(colours)):
      w.writerow([name, ['shirt', 'coat', 'shirt'][i], f'image {name}'])
  config = write_clips.WriterConfig(
      output_dir=str(tmp_path / 'out'), num_shards=2, clip_seconds=0.04,
      min_clip_seconds=0.01, fps=25.0, short_side=32, clips_per_video=1,
      video_timeout=20.0)
  summary = write_clips.run_writer(str(tmp_path / 'manifest.csv'), config)
  assert summary['videos_written'] == 3, summary

  clips = testing.parse_all(str(tmp_path / 'out' / schema.shard_pattern()))
  assert len(clips) == 3
  for clip in clips:
    assert len(clip[schema.IMAGE_KEY]) == 1, clip[schema.VIDEO_ID_KEY]
    frame = tf.io.decode_jpeg(clip[schema.IMAGE_KEY][0]).numpy()
    assert frame.shape == (32, 43, 3)  # short side 32, aspect kept
    name = clip[schema.CAPTION_KEY].split()[-1]
    want = tf.image.resize(pixels[name], (32, 43)).numpy()
    assert np.abs(frame.astype(float) - want).mean() < 12, name
  # coat sorts before shirt in the derived label map.
  labels = {c[schema.CAPTION_KEY].split()[-1]: c[schema.LABEL_INDEX_KEY]
            for c in clips}
  assert labels == {'a.jpg': 1, 'b.png': 0, 'c.jpg': 1}

  ds = input_pipeline.make_dataset(
      str(tmp_path / 'out' / schema.shard_pattern()), is_training=False,
      batch_size=3, crop_size=24, num_classes=2, image_mode=True,
      deterministic=True)
  batch = next(iter(ds))
  assert batch[input_pipeline.VIDEO].shape == (3, 1, 24, 24, 3)
  assert sorted(batch[input_pipeline.LABEL].numpy().tolist()) == [0, 1, 1]
