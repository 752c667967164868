"""cpd.evaluate end to end on fake records with the tiny3d backbone."""

import hashlib
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from cpd import configurables
from cpd import evaluate
from cpd import features
from tfrecords_tools import records
from tfrecords_tools import schema
from tfrecords_tools import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def _parse(*bindings):
  gin.parse_config_files_and_bindings(
      [], list(configurables.DEFAULT_BINDINGS) + [
          "build_video_model.backbone = 'tiny3d'",
          'eval/make_dataset.num_frames = 4',
          'eval/make_dataset.stride = 1',
          'eval/make_dataset.crop_size = 32',
          'eval/make_dataset.num_test_clips = 2',
          'eval/make_dataset.num_test_crops = 1',
          'run_protocol.eval_batch_size = 4'] + list(bindings))


def _video_id(v):
  """A hashed-looking video id: sorting ids does not sort videos."""
  return hashlib.sha1(f'video {v}'.encode()).hexdigest()[:11]


# 12 clips: videos 0-4 have two clips of one label each; the two clips of
# video 5 carry different labels (it counts once per label): 7 (video, label)
# groups.
CLIP_LABELS = [(c // 2) % 3 for c in range(10)] + [0, 1]


def _write_records(data):
  """The 12 clips in shuffled order over 2 shards, hashed video ids."""
  tf.io.gfile.makedirs(data)
  writers = [tf.io.TFRecordWriter(os.path.join(data, schema.shard_name(i, 2)))
             for i in range(2)]
  for n, c in enumerate(np.random.RandomState(3).permutation(12)):
    writers[n % 2].write(testing.make_fake_clip(
        int(c), num_frames=4, num_classes=3, label_index=CLIP_LABELS[c],
        video_id=_video_id(c // 2)))
  for w in writers:
    w.close()
  records.write_label_map(os.path.join(data, schema.LABEL_MAP_FILENAME),
                          [f'class_{i}' for i in range(3)])


def _groups(per_clip):
  """Mean features per (video id, label) from the saved per-clip rows."""
  keys = sorted({(v, int(l)) for v, l in zip(per_clip[features.VIDEO_ID],
                                             per_clip[features.LABEL])})
  out = {'key': keys, 'label': np.array([l for _, l in keys])}
  for field in (features.EMBEDDING, features.TEXT_EMBEDDING):
    out[field] = np.stack([
        per_clip[field][(per_clip[features.VIDEO_ID] == v) &
                        (per_clip[features.LABEL] == l)].astype(
                            np.float64).mean(axis=0) for v, l in keys])
  return out


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _numpy_knn_top1(feats, labels, k, num_classes):
  """Uniform k-NN (cosine, ties by summed similarity), train == test."""
  sim = _unit(feats) @ _unit(feats).T
  correct = []
  for i, row in enumerate(sim):
    votes = np.zeros(num_classes)
    for j in np.argsort(-row, kind='stable')[:k]:
      votes[labels[j]] += 1.0 + 1e-3 * row[j]
    correct.append(votes.argmax() == labels[i])
  return np.mean(correct)


def test_protocols_end_to_end(tmp_path):
  data = str(tmp_path / 'records')
  _write_records(data)
  files = os.path.join(data, 'clips-*.tfrecord')
  w2v = tmp_path / 'words.txt'
  # Only some caption words are known ('title of clip 5' -> 'title'): many
  # titles share an embedding, so retrieval has ties.
  w2v.write_text('5 4\nclass 1 0 0 0\n0 0 1 0 0\n1 0 0 1 0\n2 0 0 0 1\n'
                 'title 1 1 0 0\n')
  _parse(f"build_text_fn.word2vec_path = '{w2v}'",
         'build_text_fn.hidden_dim = 8', 'build_text_fn.embedding_dim = 8',
         'build_video_model.embedding_dim = 8', 'knn_classify.k = 3',
         'run_protocol.text_fn_builder = @build_text_fn')
  feat = str(tmp_path / 'features')
  out = configurables.run_protocol(protocol='extract', output_dir=feat,
                                   files=files)
  assert out['num_videos'] == 7 and out['num_views'] == 2
  assert len(out['written']) == 2
  # Every clip once, with its own record's video id and label.
  per_clip = features.load_features(feat, by_video=False)
  order = np.argsort(per_clip[features.CLIP_INDEX])
  per_clip = {k: v[order] for k, v in per_clip.items()}
  np.testing.assert_array_equal(per_clip[features.CLIP_INDEX], np.arange(12))
  assert list(per_clip[features.VIDEO_ID]) == [_video_id(c // 2)
                                               for c in range(12)]
  np.testing.assert_array_equal(per_clip[features.LABEL], CLIP_LABELS)
  assert per_clip[features.EMBEDDING].shape == (12, 8)
  # Video level: each (video, label) once, the mean of its clips' rows.
  groups = _groups(per_clip)
  by_video = features.load_features(feat)
  keys = list(zip(by_video[features.VIDEO_ID],
                  by_video[features.LABEL].tolist()))
  assert sorted(keys) == groups['key']
  for row, key in enumerate(keys):
    g = groups['key'].index(key)
    for field in (features.EMBEDDING, features.TEXT_EMBEDDING):
      np.testing.assert_allclose(by_video[field][row], groups[field][g],
                                 atol=1e-6)
    clips = np.sum((per_clip[features.VIDEO_ID] == key[0]) &
                   (per_clip[features.LABEL] == key[1]))
    assert by_video[features.NUM_VIEWS][row] == 2 * clips  # 2 views a clip
  np.testing.assert_array_equal(
      sorted(by_video[features.NUM_VIEWS]), [2, 2] + [4] * 5)

  knn_out = configurables.run_protocol(
      protocol='knn', output_dir=str(tmp_path / 'knn'), train_features=feat,
      test_features=feat)
  saved = json.loads((tmp_path / 'knn' / 'results_knn.json').read_text())
  assert saved['clip/top_1'] == pytest.approx(knn_out['clip/top_1'])
  assert saved['num_clips'] == 7 and saved['k'] == 3
  assert saved['clip/top_1'] == pytest.approx(_numpy_knn_top1(
      groups[features.EMBEDDING], groups['label'], k=3, num_classes=3))

  retrieval = configurables.run_protocol(
      protocol='retrieval', output_dir=str(tmp_path / 'ret'),
      test_features=feat)
  assert retrieval['num_pairs'] == 7
  sim = _unit(groups[features.EMBEDDING]) @ _unit(
      groups[features.TEXT_EMBEDDING]).T
  for prefix, s in (('v2t', sim), ('t2v', sim.T)):
    ranks = (s > np.diag(s)[:, None] + 1e-6).sum(axis=1) + 1  # ties: best
    for k in (1, 5, 10):
      assert retrieval[f'{prefix}/R@{k}'] == pytest.approx(
          np.mean(ranks <= k)), (prefix, k)
    assert retrieval[f'{prefix}/median_rank'] == pytest.approx(
        np.median(ranks))

  zs = configurables.run_protocol(
      protocol='zero_shot', output_dir=str(tmp_path / 'zs'),
      test_features=feat, files=files, zero_shot_subset_size=2,
      zero_shot_num_subsets=3)
  assert zs['num_clips'] == 7
  assert len(zs['per_class_accuracy']) == 3
  assert len(zs['class_subsets']['subsets']) == 3
  table = evaluate.format_table(zs)
  assert 'clip/top_1' in table and 'class_subsets/top_1_mean' in table
  sub = configurables.run_protocol(
      protocol='low_label', output_dir=str(tmp_path / 'low'), files=files,
      low_label_fraction=0.5)
  # Classes of 5, 5 and 2 clips: round(2.5) = 2, 2 and 1 kept.
  assert sub['num_selected'] == 5
  with pytest.raises(ValueError, match='`protocol`'):
    configurables.run_protocol(protocol='svm', output_dir=str(tmp_path))


@pytest.mark.slow
def test_command_line_linear_probe(tmp_path):
  rng = np.random.default_rng(0)
  feat_dir = tmp_path / 'features'
  feat_dir.mkdir()
  labels = np.repeat(np.arange(3), 20)
  emb = np.eye(3, dtype=np.float32)[labels] + 0.05 * rng.standard_normal(
      (60, 3)).astype(np.float32)
  np.savez(feat_dir / features.features_shard_name(0, 1),
           clip_index=np.arange(60), clip_key=np.array([f'k{i}' for i in
                                                        range(60)]),
           video_id=np.array([_video_id(v) for v in rng.permutation(60)]),
           label=labels,
           embedding=emb, backbone=emb, num_views=np.ones(60, np.int64),
           meta=np.array('{}'))
  out = tmp_path / 'linear'
  proc = subprocess.run(
      [sys.executable, '-m', 'cpd.evaluate', '--protocol=linear',
       f'--train_features={feat_dir}', f'--test_features={feat_dir}',
       f'--output_dir={out}',
       '--gin_bindings=linear_probe.learning_rate=0.01',
       '--gin_bindings=linear_probe.batch_size=8'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'clip/top_1' in proc.stdout
  result = json.loads((out / 'results_linear.json').read_text())
  assert result['clip/top_1'] == 1.0 and result['epochs'] == 30
