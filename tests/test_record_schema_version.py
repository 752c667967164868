"""The training / evaluation reader refuses records of another schema version.

Records go through `spl.input_pipeline.make_dataset`, the path training,
evaluation and prediction read them by.
"""

import numpy as np
import pytest
import tensorflow as tf

from spl import input_pipeline as ip
from tfrecords_tools import schema
from tfrecords_tools import testing

V = schema.SCHEMA_VERSION
KWARGS = dict(batch_size=1, num_frames=2, crop_size=16, num_classes=3,
              repeat=False, drop_remainder=False, deterministic=True)


def _with_version(record, version):
  """`record` with `schema/version` set to `version` (None: key removed)."""
  ex = tf.train.SequenceExample.FromString(record)
  if version is None:
    del ex.context.feature[schema.SCHEMA_VERSION_KEY]
  else:
    feature = ex.context.feature[schema.SCHEMA_VERSION_KEY]
    del feature.int64_list.value[:]
    feature.int64_list.value.append(version)
  return ex.SerializeToString()


def _write(path, records):
  with tf.io.TFRecordWriter(str(path)) as w:
    for r in records:
      w.write(r)
  return str(path)


def _clip_indices(ds):
  return sorted(np.concatenate([b[ip.CLIP_INDEX].numpy() for b in ds]).tolist())


@pytest.fixture
def newer_file(tmp_path):
  """Clips 0..3; clip 2 says it is one schema version newer than the code."""
  records = [testing.make_fake_clip(c) for c in range(4)]
  records[2] = _with_version(records[2], schema.SCHEMA_VERSION + 1)
  return _write(tmp_path / 'newer.tfrecord', records)


def test_written_records_carry_the_current_version():
  ex = tf.train.SequenceExample.FromString(testing.make_fake_clip(0))
  assert list(ex.context.feature[schema.SCHEMA_VERSION_KEY].int64_list
              .value) == [V]


@pytest.mark.parametrize('is_training', [True, False])
def test_current_version_is_read(tmp_path, is_training):
  path = _write(tmp_path / 'v1.tfrecord', [
      _with_version(testing.make_fake_clip(c), schema.SCHEMA_VERSION)
      for c in range(3)])
  ip.reset_skipped_records()
  ds = ip.make_dataset(path, is_training=is_training, **KWARGS)
  assert _clip_indices(ds) == [0, 1, 2]
  assert ip.num_skipped_records() == 0


@pytest.mark.parametrize('is_training', [True, False])
def test_newer_version_is_an_error_naming_file_record_and_versions(
    newer_file, is_training):
  ds = ip.make_dataset(newer_file, is_training=is_training, **KWARGS)
  with pytest.raises(tf.errors.InvalidArgumentError) as err:
    _clip_indices(ds)
  assert (f'{newer_file} record #2: schema/version {V + 1} is newer than '
          f'this code reads ({V}): update the code or rewrite the records'
          ) in err.value.message


def test_newer_version_is_reported_before_the_keys_it_may_have_renamed(
    tmp_path):
  # A newer schema may rename keys: the version is the reason, not the key.
  ex = tf.train.SequenceExample.FromString(
      _with_version(testing.make_fake_clip(0), V + 6))
  del ex.context.feature[schema.LABEL_INDEX_KEY]
  del ex.context.feature[schema.CLIP_KEY_KEY]
  path = _write(tmp_path / 'renamed.tfrecord', [ex.SerializeToString()])
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=fr'record #0: schema/version {V + 6} is newer '
                     fr'than this code reads \({V}\)'):
    _clip_indices(ip.make_dataset(path, is_training=False, **KWARGS))


@pytest.mark.parametrize('is_training', [True, False])
def test_skip_mode_drops_and_counts_a_newer_version(newer_file, is_training):
  ip.reset_skipped_records()
  ds = ip.make_dataset(newer_file, is_training=is_training,
                       on_bad_record='skip', **KWARGS)
  assert _clip_indices(ds) == [0, 1, 3]
  assert ip.num_skipped_records() == 1
  [message] = ip.skipped_record_messages()
  assert message.startswith(f'{newer_file} record #2: schema/version {V + 1} '
                            f'is newer than this code reads ({V})'), message
  ip.reset_skipped_records()


@pytest.mark.parametrize('version,reason', [
    (None, 'missing required key `schema/version`'),
    (0, 'schema/version 0 is not a version (versions start at 1)'),
    (-3, 'schema/version -3 is not a version (versions start at 1)'),
])
def test_missing_or_impossible_version_is_an_error(tmp_path, version, reason):
  path = _write(tmp_path / 'bad.tfrecord', [
      testing.make_fake_clip(0),
      _with_version(testing.make_fake_clip(1), version)])
  with pytest.raises(tf.errors.InvalidArgumentError) as err:
    _clip_indices(ip.make_dataset(path, is_training=False, **KWARGS))
  assert f'{path} record #1: {reason}' in err.value.message


def test_two_versions_in_one_record_is_an_error(tmp_path):
  ex = tf.train.SequenceExample.FromString(testing.make_fake_clip(0))
  ex.context.feature[schema.SCHEMA_VERSION_KEY].int64_list.value.append(V)
  path = _write(tmp_path / 'two.tfrecord', [ex.SerializeToString()])
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match='record #0: key `schema/version` has 2 values, '
                     'expected 1'):
    _clip_indices(ip.make_dataset(path, is_training=False, **KWARGS))
