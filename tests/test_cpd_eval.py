"""CPD evaluation protocols on tiny features with known answers."""

import hashlib

import numpy as np
import pytest

from cpd import knn
from cpd import linear_probe
from cpd import low_label
from cpd import text_encoders
from cpd import zero_shot
from tfrecords_tools import testing


def _one_hot_codes(num_classes, per_class, seed, noise=0.0):
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(num_classes), per_class)
  rng.shuffle(labels)
  features = np.eye(num_classes, dtype=np.float32)[labels]
  features += noise * rng.standard_normal(features.shape).astype(np.float32)
  return features, labels


# ---- kNN ----


@pytest.mark.parametrize('weighting,k', [('uniform', 25), ('exp', 200)])
def test_knn_one_hot_codes_are_perfect(weighting, k):
  train, train_labels = _one_hot_codes(5, 30, seed=0)
  test, test_labels = _one_hot_codes(5, 8, seed=1)
  out = knn.knn_classify(train, train_labels, test, test_labels,
                         num_classes=5, k=k, weighting=weighting,
                         batch_size=7)
  assert out['clip/top_1'] == 1.0
  assert out['mean_class_accuracy'] == 1.0
  assert out['k'] == min(k, len(train))


def _shuffled_label_problem(num_classes, n, seed):
  """Structureless features, labels shuffled: no classifier beats chance."""
  rng = np.random.default_rng(seed)
  train = rng.standard_normal((n, 32)).astype(np.float32)
  test = rng.standard_normal((n, 32)).astype(np.float32)
  labels = np.repeat(np.arange(num_classes), n // num_classes)
  return (train, rng.permutation(labels), test, rng.permutation(labels))


@pytest.mark.parametrize('weighting,k', [('uniform', 25), ('exp', 200)])
def test_knn_shuffled_labels_give_chance(weighting, k):
  num_classes = 4
  train, train_labels, test, test_labels = _shuffled_label_problem(
      num_classes, 1200, seed=0)
  out = knn.knn_classify(train, train_labels, test, test_labels,
                         num_classes=num_classes, k=k, weighting=weighting)
  # Binomial std of the accuracy is 0.0125 here; 0.05 is 4 std.
  assert abs(out['clip/top_1'] - 1.0 / num_classes) < 0.05


def test_knn_scores_match_numpy_reference():
  rng = np.random.default_rng(3)
  train = rng.standard_normal((40, 6)).astype(np.float32)
  labels = rng.integers(0, 3, 40)
  test = rng.standard_normal((9, 6)).astype(np.float32)
  got = knn.knn_scores(train, labels, test, num_classes=3, k=7,
                       weighting='exp', temperature=0.1, batch_size=4)
  tn = train / np.linalg.norm(train, axis=1, keepdims=True)
  qn = test / np.linalg.norm(test, axis=1, keepdims=True)
  sim = qn.astype(np.float64) @ tn.T.astype(np.float64)
  want = np.zeros((9, 3))
  for i in range(9):
    top = np.argsort(-sim[i])[:7]
    for j in top:
      want[i, labels[j]] += np.exp(sim[i, j] / 0.1)
  want /= want.sum(axis=1, keepdims=True)
  np.testing.assert_allclose(got, want, atol=1e-5)


def _video_level_problem(num_classes=3):
  """Clips of 6 videos, shuffled, under hashed-looking video ids.

  Each video's clips are one-hot codes: 2 of its label and 1 of the next
  class (video right, 2 of 3 clips right), or 1 and 2 (video wrong, 1 of 3
  clips right). Videos' labels differ, so scoring a video's clips against
  another video's label changes the numbers.

  Returns:
    (features [18, C], labels [18], video ids [18], expected video/top_1,
    expected clip/top_1).
  """
  video_labels = [2, 0, 1, 1, 0, 2]
  video_right = [True, False, True, True, False, True]
  feats, labels, ids = [], [], []
  for v, (label, right) in enumerate(zip(video_labels, video_right)):
    other = (label + 1) % num_classes
    for c in ([label, label, other] if right else [label, other, other]):
      feats.append(np.eye(num_classes, dtype=np.float32)[c])
      labels.append(label)
      ids.append(hashlib.sha1(f'video {v}'.encode()).hexdigest()[:11])
  perm = np.random.default_rng(5).permutation(len(labels))
  right = sum(video_right)
  return (np.array(feats)[perm], np.array(labels)[perm], np.array(ids)[perm],
          right / 6, (2 * right + (6 - right)) / 18)


def _numpy_video_top1(scores, labels, ids):
  """Mean clip scores per video id (a dict, no sorting), argmax vs label."""
  by_video = {}
  for s, l, v in zip(scores, labels, ids):
    by_video.setdefault(v, ([], l))[0].append(s)
  return np.mean([np.argmax(np.mean(s, axis=0)) == l
                  for s, l in by_video.values()])


def test_video_level_knn_and_zero_shot_with_hashed_shuffled_ids():
  feats, labels, ids, video_top1, clip_top1 = _video_level_problem()
  train, train_labels = _one_hot_codes(3, 10, seed=0)
  knn_out = knn.knn_classify(train, train_labels, feats, labels,
                             num_classes=3, k=5, test_video_ids=ids)
  zs_out = zero_shot.zero_shot_classify(feats, labels, np.eye(3),
                                        video_ids=ids)
  scores = knn.knn_scores(train, train_labels, feats, num_classes=3, k=5)
  for out in (knn_out, zs_out):
    assert out['num_clips'] == 18 and out['num_videos'] == 6
    assert out['clip/top_1'] == pytest.approx(clip_top1)
    assert out['video/top_1'] == pytest.approx(video_top1)
  assert video_top1 == _numpy_video_top1(scores, labels, ids)


def test_knn_rejects_bad_arguments():
  x = np.eye(3, dtype=np.float32)
  with pytest.raises(ValueError, match='`k`'):
    knn.knn_scores(x, [0, 1, 2], x, num_classes=3, k=0)
  with pytest.raises(ValueError, match='`weighting`'):
    knn.knn_scores(x, [0, 1, 2], x, num_classes=3, weighting='cosine')
  with pytest.raises(ValueError, match='`train_labels`'):
    knn.knn_scores(x, [0, 1, 5], x, num_classes=3)


# ---- Linear probe ----


def test_linear_probe_one_hot_codes_are_perfect():
  train, train_labels = _one_hot_codes(6, 40, seed=0, noise=0.05)
  test, test_labels = _one_hot_codes(6, 10, seed=1, noise=0.05)
  out = linear_probe.linear_probe(
      train, train_labels, test, test_labels, num_classes=6, epochs=12,
      batch_size=16, learning_rate=1e-2, decay_every_epochs=4)
  assert out['clip/top_1'] == 1.0
  assert np.isfinite(out['train_loss'])


def test_linear_probe_shuffled_labels_give_chance():
  num_classes = 4
  train, train_labels, test, test_labels = _shuffled_label_problem(
      num_classes, 1200, seed=1)
  out = linear_probe.linear_probe(
      train, train_labels, test, test_labels, num_classes=num_classes,
      epochs=4, batch_size=64, learning_rate=1e-2, decay_every_epochs=2)
  assert abs(out['clip/top_1'] - 1.0 / num_classes) < 0.05


def test_linear_probe_schedule_and_determinism():
  train, labels = _one_hot_codes(3, 10, seed=0, noise=0.1)
  a = linear_probe.train_linear_probe(train, labels, num_classes=3, epochs=5,
                                      batch_size=8, decay_every_epochs=2,
                                      seed=7)
  b = linear_probe.train_linear_probe(train, labels, num_classes=3, epochs=5,
                                      batch_size=8, decay_every_epochs=2,
                                      seed=7)
  np.testing.assert_allclose(a['learning_rates'],
                             [1e-3, 1e-3, 1e-4, 1e-4, 1e-5], rtol=1e-5)
  for va, vb in zip(a['model'].weights, b['model'].weights):
    np.testing.assert_array_equal(va.numpy(), vb.numpy())
  with pytest.raises(ValueError, match='`decay_factor`'):
    linear_probe.train_linear_probe(train, labels, num_classes=3,
                                    decay_factor=0.0)


# ---- Zero-shot and retrieval ----

CLASS_NAMES = ['ApplyEyeMakeup', 'PlayingGuitar', 'playing_violin',
               'BlowDryHair', 'JumpRope', 'YoYo']


def _word_vector_encoder(dim=16, seed=0):
  """A real word2vec-average text encoder over the class names' words."""
  words = sorted({w for n in CLASS_NAMES
                  for w in zero_shot.class_name_to_text(n).split()})
  vectors = np.random.default_rng(seed).standard_normal(
      (len(words), dim)).astype(np.float32)
  return text_encoders.Word2VecAverageEncoder(words, vectors)


def test_class_name_to_text():
  assert zero_shot.class_name_to_text('ApplyEyeMakeup') == 'apply eye makeup'
  assert zero_shot.class_name_to_text('playing_violin') == 'playing violin'
  assert zero_shot.class_name_to_text('YoYo', 'a video of {}') == (
      'a video of yo yo')


def test_zero_shot_nearest_class_name():
  encoder = _word_vector_encoder()
  texts = [zero_shot.class_name_to_text(n) for n in CLASS_NAMES]
  class_emb = zero_shot.embed_texts(texts, encoder, batch_size=4)
  # Independent reference: the mean of each name's word vectors.
  table = dict(zip(encoder._table.export()[0].numpy().astype(str),
                   encoder._table.export()[1].numpy()))
  for t, row in zip(texts, class_emb):
    want = np.mean([encoder.embeddings.numpy()[table[w]] for w in t.split()],
                   axis=0)
    np.testing.assert_allclose(row, want / np.linalg.norm(want), atol=1e-5)
  rng = np.random.default_rng(1)
  labels = rng.integers(0, len(CLASS_NAMES), 60)
  videos = class_emb[labels] + 0.05 * rng.standard_normal((60, 16))
  out = zero_shot.zero_shot_classify(videos, labels, class_emb)
  assert out['clip/top_1'] == 1.0
  wrong = zero_shot.zero_shot_classify(videos, (labels + 1) % 6, class_emb)
  assert wrong['clip/top_1'] == 0.0


def test_zero_shot_class_subsets_protocol():
  rng = np.random.default_rng(0)
  num_classes = 30
  class_emb = rng.standard_normal((num_classes, 32))
  labels = np.repeat(np.arange(num_classes), 20)
  videos = class_emb[labels] + 0.1 * rng.standard_normal((len(labels), 32))
  out = zero_shot.zero_shot_class_subsets(videos, labels, class_emb,
                                          subset_size=10, num_subsets=5,
                                          seed=3)
  assert out['top_1_mean'] == 1.0 and len(out['subsets']) == 5
  assert all(len(set(s)) == 10 for s in out['subsets'])
  again = zero_shot.zero_shot_class_subsets(videos, labels, class_emb,
                                            subset_size=10, num_subsets=5,
                                            seed=3)
  other = zero_shot.zero_shot_class_subsets(videos, labels, class_emb,
                                            subset_size=10, num_subsets=5,
                                            seed=4)
  assert again['subsets'] == out['subsets'] != other['subsets']
  # Random videos: chance among the subset's classes, checked per subset
  # against a plain numpy argmax over that subset.
  noise = rng.standard_normal((len(labels), 32))
  rand = zero_shot.zero_shot_class_subsets(noise, labels, class_emb,
                                           subset_size=10, num_subsets=20,
                                           seed=0)
  assert abs(rand['top_1_mean'] - 0.1) < 0.05
  subset = np.array(rand['subsets'][0])
  rows = np.isin(labels, subset)
  cn = class_emb / np.linalg.norm(class_emb, axis=1, keepdims=True)
  pred = subset[(noise[rows] @ cn[subset].T).argmax(axis=1)]
  assert rand['top_1_per_subset'][0] == pytest.approx(
      (pred == labels[rows]).mean())
  with pytest.raises(ValueError, match='`subset_size`'):
    zero_shot.zero_shot_class_subsets(videos, labels, class_emb,
                                      subset_size=31)


def test_video_text_retrieval_known_ranks():
  rng = np.random.default_rng(0)
  video = rng.standard_normal((12, 8)).astype(np.float32)
  exact = zero_shot.video_text_retrieval(video, video)
  assert exact['v2t/R@1'] == 1.0 and exact['t2v/median_rank'] == 1.0
  text = rng.standard_normal((12, 8)).astype(np.float32)
  out = zero_shot.video_text_retrieval(video, text)
  vn = video / np.linalg.norm(video, axis=1, keepdims=True)
  tn = text / np.linalg.norm(text, axis=1, keepdims=True)
  sim = vn @ tn.T
  ranks = (sim > np.diag(sim)[:, None]).sum(axis=1) + 1
  assert out['v2t/R@5'] == pytest.approx((ranks <= 5).mean())
  assert out['v2t/median_rank'] == pytest.approx(np.median(ranks))
  assert out['num_pairs'] == 12


# ---- Low-label subsets ----


def test_per_class_subset_counts_nesting_and_order_independence():
  labels = np.repeat(np.arange(4), [100, 50, 7, 1])
  keys = np.array([f'clip_{i:04d}' for i in range(len(labels))])
  masks = {f: low_label.per_class_subset_mask(labels, f, seed=1, keys=keys)
           for f in (0.01, 0.1, 0.2)}
  for f, mask in masks.items():
    for c, n in enumerate([100, 50, 7, 1]):
      assert mask[labels == c].sum() == max(1, int(round(f * n)))
  assert not (masks[0.01] & ~masks[0.1]).any()
  assert not (masks[0.1] & ~masks[0.2]).any()
  perm = np.random.default_rng(0).permutation(len(labels))
  shuffled = low_label.per_class_subset_mask(labels[perm], 0.1, seed=1,
                                             keys=keys[perm])
  assert set(keys[perm][shuffled]) == set(keys[masks[0.1]])
  other = low_label.per_class_subset_mask(labels, 0.1, seed=2, keys=keys)
  assert set(keys[other]) != set(keys[masks[0.1]])
  with pytest.raises(ValueError, match='`fraction`'):
    low_label.per_class_subset_mask(labels, 0.0)


def test_write_subset_records(tmp_path):
  testing.write_fake_clip_records(str(tmp_path / 'full'), num_clips=30,
                                  num_shards=3, num_classes=3, num_frames=2,
                                  height=8, width=8)
  out = low_label.write_subset_records(
      str(tmp_path / 'full' / 'clips-*.tfrecord'), str(tmp_path / 'sub'), 0.2,
      seed=0, num_shards=2)
  parsed = testing.parse_all(str(tmp_path / 'sub' / 'clips-*.tfrecord'))
  assert len(parsed) == out['num_selected'] == 6
  assert out['per_class'] == {0: 2, 1: 2, 2: 2}
  assert sorted(p['clip/key'] for p in parsed) == out['clip_keys']
  full = {p['clip/key']: p for p in testing.parse_all(
      str(tmp_path / 'full' / 'clips-*.tfrecord'))}
  for p in parsed:
    assert p == full[p['clip/key']]
  assert (tmp_path / 'sub' / 'label_map.json').exists()
  assert low_label.select_clip_keys(
      str(tmp_path / 'full' / 'clips-*.tfrecord'), 0.2, seed=0) == (
          out['clip_keys'])
