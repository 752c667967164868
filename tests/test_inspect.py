"""Record inspection: valid shards pass, each kind of broken record is named."""

import os
import subprocess
import sys

import tensorflow as tf

from tfrecords_tools import inspect as inspect_lib
from tfrecords_tools import records
from tfrecords_tools import schema
from tfrecords_tools import testing


def test_valid_records_report_and_contact_sheet(tmp_path):
  """Counts equal the files, an empty last shard included.

  6 clips over 7 shards: the last one is empty.
  """
  testing.write_fake_clip_records(str(tmp_path), num_clips=6, num_shards=7,
                                  num_frames=5)
  pattern = str(tmp_path / schema.shard_pattern())
  report = inspect_lib.inspect_records(pattern, sheet_clips=4)
  assert report['problems'] == []
  assert (report['files'], report['records'], report['videos']) == (7, 6, 3)
  raw = testing.read_records(pattern)
  assert report['bytes'] == sum(len(r) for r in raw)
  assert report['labels'] == {'class_0': 2, 'class_1': 2, 'class_2': 2}
  assert report['weak_labels'] == report['labels']
  assert report['frames_per_clip'] == {'min': 5, 'mean': 5.0, 'max': 5}
  # The first 4 clips in shard order, with their frames.
  clips = [records.parse_clip_example(r) for r in raw[:4]]
  assert report['samples'] == [
      (c[schema.CLIP_KEY_KEY], c[schema.LABEL_TEXT_KEY], c[schema.IMAGE_KEY])
      for c in clips]
  sheet = str(tmp_path / 'sheet.png')
  inspect_lib.write_contact_sheet(report['samples'], sheet)
  img = tf.io.decode_png(tf.io.read_file(sheet)).numpy()
  # One row of 6 frames per clip: 2 x 1.6 inches per frame at 80 dpi.
  assert img.shape == (4 * 128, 6 * 160, 4)
  assert img.std() > 5  # A real picture, not blank.


def test_broken_records_are_named(tmp_path):
  path = str(tmp_path / schema.shard_name(0, 1))
  ok = testing.make_fake_clip(0)
  ex = tf.train.SequenceExample.FromString(testing.make_fake_clip(1))
  ex.feature_lists.feature_list[schema.IMAGE_KEY].feature[1].bytes_list.value[
      0] = b'not a jpeg'
  bad_jpeg = ex.SerializeToString()
  ex = tf.train.SequenceExample.FromString(testing.make_fake_clip(2))
  del ex.context.feature[schema.CAPTION_KEY]
  missing = ex.SerializeToString()
  out_of_range = testing.make_fake_clip(3, label_index=7)
  with tf.io.TFRecordWriter(path) as w:
    for r in (ok, bad_jpeg, missing, out_of_range):
      w.write(r)
  testing.write_fake_clip_records(str(tmp_path / 'lm'), num_clips=1,
                                  num_shards=1)
  os.rename(tmp_path / 'lm' / schema.LABEL_MAP_FILENAME,
            tmp_path / schema.LABEL_MAP_FILENAME)
  report = inspect_lib.inspect_records(path)
  text = '\n'.join(report['problems'])
  assert 'record 1: frame 1 is not a valid JPEG' in text
  assert 'record 2' in text and schema.CAPTION_KEY in text
  assert 'record 3: label 7 outside the label map' in text
  assert 'clip indices are not' in text  # Index 2 was unreadable.


def test_cli_exit_codes(tmp_path):
  testing.write_fake_clip_records(str(tmp_path), num_clips=3, num_shards=1)
  sheet = tmp_path / 'cs.png'
  ok = subprocess.run(
      [sys.executable, '-m', 'tfrecords_tools.inspect',
       str(tmp_path / schema.shard_pattern()), f'--contact_sheet={sheet}'],
      capture_output=True, text=True, timeout=120)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert 'all records valid' in ok.stdout and sheet.exists()
  missing = subprocess.run(
      [sys.executable, '-m', 'tfrecords_tools.inspect',
       str(tmp_path / 'nothing-*')], capture_output=True, text=True,
      timeout=120)
  assert missing.returncode == 1 and 'no files match' in missing.stderr
