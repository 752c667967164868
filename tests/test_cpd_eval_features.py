"""Feature extraction: multi-view aggregation under 2 replicas, resumability."""

import functools
import os

import numpy as np
import pytest
import tensorflow as tf

from cpd import features
from cpd import heads
from spl import input_pipeline
from spl.models import factory
from tests import distribute_utils
from tfrecords_tools import testing

NUM_CLIPS, NUM_CLIPS_PER_RECORD, NUM_CROPS = 10, 2, 3


def _dataset_fn(path):
  return input_pipeline.make_dataset(
      path, is_training=False, batch_size=3, num_frames=4, stride=1,
      crop_size=32, num_test_clips=NUM_CLIPS_PER_RECORD,
      num_test_crops=NUM_CROPS, repeat=False, drop_remainder=False,
      deterministic=True)


def _build(strategy):
  with strategy.scope():
    tf.keras.utils.set_random_seed(0)
    backbone = factory.build_backbone('tiny3d', input_shape=(4, 32, 32, 3))
    head = heads.VideoHead(8)
    head(backbone(tf.zeros((1, 4, 32, 32, 3))))
  return backbone, head


def _reference(backbone, head, pattern):
  """Per-record view means computed eagerly, one record at a time."""
  out = {}
  for path in sorted(tf.io.gfile.glob(pattern)):
    for batch in _dataset_fn(path):
      for video, idx in zip(batch[input_pipeline.VIDEO].numpy(),
                            batch[input_pipeline.CLIP_INDEX].numpy()):
        pooled = backbone(video, training=False).numpy()
        emb = head(pooled).numpy()
        out[int(idx)] = (emb.mean(axis=0), pooled.mean(axis=0), len(video))
  return out


@pytest.fixture(scope='module')
def records(tmp_path_factory):
  root = tmp_path_factory.mktemp('records')
  # One class: the two records of each video (clips 2v and 2v+1) sit in
  # different shards and share a label, so the per-video average crosses
  # shards.
  testing.write_fake_clip_records(str(root), num_clips=NUM_CLIPS,
                                  num_shards=2, num_classes=1, num_frames=6)
  return os.path.join(str(root), 'clips-*.tfrecord')


@pytest.mark.slow  # ~30-50 s on a loaded 2-core machine (tracing).
def test_views_counted_once_under_two_replicas(records, tmp_path,
                                               logical_cpus):
  strategy = distribute_utils.mirrored_strategy(logical_cpus[:2])
  backbone, head = _build(strategy)
  out_dir = str(tmp_path / 'features')
  written = features.extract_features(
      features.make_view_embedder(backbone, head), strategy, _dataset_fn,
      records, out_dir, meta={'checkpoint': 'test'})
  assert len(written) == 2
  rows = features.load_features(out_dir, by_video=False)
  assert sorted(rows[features.CLIP_INDEX].tolist()) == list(range(NUM_CLIPS))
  assert (rows[features.NUM_VIEWS] == NUM_CLIPS_PER_RECORD * NUM_CROPS).all()
  ref = _reference(backbone, head, records)
  for idx, emb, pooled in zip(rows[features.CLIP_INDEX],
                              rows[features.EMBEDDING],
                              rows[features.BACKBONE]):
    np.testing.assert_allclose(emb, ref[int(idx)][0], atol=1e-5)
    np.testing.assert_allclose(pooled, ref[int(idx)][1], atol=1e-5)
  # Video level: each video's two records (one per shard) averaged once.
  videos = features.load_features(out_dir, by_video=True)
  assert len(videos[features.VIDEO_ID]) == NUM_CLIPS // 2
  assert (videos[features.NUM_VIEWS] ==
          2 * NUM_CLIPS_PER_RECORD * NUM_CROPS).all()
  for vid, emb in zip(videos[features.VIDEO_ID], videos[features.EMBEDDING]):
    v = int(str(vid).rsplit('_', 1)[1])
    want = (ref[2 * v][0] + ref[2 * v + 1][0]) / 2
    np.testing.assert_allclose(emb, want, atol=1e-5)


def test_extraction_resumes_and_refuses_stale_shards(records, tmp_path):
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  backbone, head = _build(strategy)
  embed = features.make_view_embedder(backbone, head)
  out_dir = str(tmp_path / 'features')
  run = functools.partial(features.extract_features, embed, strategy,
                          _dataset_fn, records, out_dir,
                          text_fn=lambda t: tf.one_hot(
                              tf.strings.length(t) % 8, 8),
                          meta={'checkpoint': 'a'})
  first = run()
  names = [features.features_shard_name(i, 2) for i in range(2)]
  assert [os.path.basename(p) for p in first] == names
  before = features.load_features(out_dir, by_video=False)
  assert before[features.TEXT_EMBEDDING].shape == (NUM_CLIPS, 8)
  # Simulate a job killed while writing shard 1: its output is missing and
  # a partial temporary file is left behind.
  done = os.path.join(out_dir, names[0])
  mtime = os.path.getmtime(done)
  os.remove(os.path.join(out_dir, names[1]))
  with open(os.path.join(out_dir, names[1] + '.tmp-partial'), 'wb') as f:
    f.write(b'garbage')
  with pytest.raises(ValueError, match='unfinished'):
    features.load_features(out_dir)
  second = run()
  assert [os.path.basename(p) for p in second] == [names[1]]
  assert os.path.getmtime(done) == mtime
  after = features.load_features(out_dir, by_video=False)
  for k, v in before.items():
    if v.dtype.kind == 'f':
      np.testing.assert_allclose(after[k], v, atol=1e-6)
    else:
      np.testing.assert_array_equal(after[k], v)
  assert run() == []
  with pytest.raises(ValueError, match='meta'):
    features.extract_features(embed, strategy, _dataset_fn, records, out_dir,
                              meta={'checkpoint': 'b'})
