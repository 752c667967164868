"""Schema round trip: our writer helper, our parser and Model Garden's Decoder agree."""

import fnmatch
import os

import numpy as np
import pytest
import tensorflow as tf
from official.vision.dataloaders import video_input

from tfrecords_tools import records
from tfrecords_tools import schema
from tfrecords_tools import testing


def test_clip_round_trip_through_our_parser():
  serialized = testing.make_fake_clip(5, num_frames=4, height=16, width=24,
                                      caption='héllo 🎬 title')
  clip = records.parse_clip_example(serialized)
  assert clip[schema.CLIP_INDEX_KEY] == 5
  assert clip[schema.NUM_FRAMES_KEY] == 4 == len(clip[schema.IMAGE_KEY])
  assert clip[schema.CAPTION_KEY] == 'héllo 🎬 title'
  assert clip[schema.SCHEMA_VERSION_KEY] == schema.SCHEMA_VERSION
  assert clip[schema.CLIP_KEY_KEY] == schema.make_clip_key(
      clip[schema.VIDEO_ID_KEY], clip[schema.CLIP_START_KEY])
  frame = tf.io.decode_jpeg(clip[schema.IMAGE_KEY][2]).numpy()
  assert frame.shape == (16, 24, 3)
  # Background level survives JPEG within a few gray levels.
  assert abs(int(frame[-1, -1, 0]) - testing.frame_value(5, 2)) <= 3


def test_model_garden_decoder_reads_our_records(tmp_path):
  paths = testing.write_fake_clip_records(str(tmp_path), num_clips=4,
                                          num_shards=1, num_frames=3)
  decoder = video_input.Decoder()
  ds = tf.data.TFRecordDataset(paths).map(decoder.decode)
  labels = [int(d[schema.LABEL_INDEX_KEY][0]) for d in ds]
  assert labels == [0, 1, 2, 0]
  first = next(iter(ds))
  assert first[schema.IMAGE_KEY].shape == (3,)


def test_missing_key_is_named():
  ex = tf.train.SequenceExample.FromString(testing.make_fake_clip(0))
  del ex.context.feature[schema.CLIP_INDEX_KEY]
  with pytest.raises(ValueError, match='clip/index'):
    records.parse_clip_example(ex.SerializeToString())


def test_prediction_round_trip():
  ex = records.make_prediction_example(
      clip_index=3, clip_key='v@000000000', num_classes=10,
      top_k_index=[4, 1], top_k_score=[0.75, 0.25])
  p = records.parse_prediction_example(ex.SerializeToString())
  assert p[schema.PREDICTION_TOP_K_INDEX_KEY] == [4, 1]
  np.testing.assert_allclose(p[schema.PREDICTION_TOP_K_SCORE_KEY], [0.75, 0.25])


def test_label_map_sorted_and_round_trips(tmp_path):
  path = os.path.join(tmp_path, schema.LABEL_MAP_FILENAME)
  records.write_label_map(path, ['a', 'b', 'c'])
  assert records.read_label_map(path) == ['a', 'b', 'c']
  with pytest.raises(ValueError, match='sorted'):
    records.write_label_map(path, ['b', 'a'])


def test_shard_names():
  assert schema.shard_name(3, 16) == 'clips-00003-of-00016.tfrecord'
  # The last shard has a name too, and the pattern matches every shard.
  assert schema.shard_name(15, 16) == 'clips-00015-of-00016.tfrecord'
  assert schema.shard_name(0, 1) == 'clips-00000-of-00001.tfrecord'
  assert all(fnmatch.fnmatch(schema.shard_name(i, 16), schema.shard_pattern())
             for i in range(16))
  for bad in (16, -1):
    with pytest.raises(ValueError, match='index'):
      schema.shard_name(bad, 16)
