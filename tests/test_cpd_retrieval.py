"""CPD retrieval metrics and the video head.

The ranking-loss baseline (Eq. 4) is tested in test_cpd_objectives.py.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cpd import heads
from cpd import retrieval


def _numpy_ranks(sim):
  return np.array([(row > row[i]).sum() for i, row in enumerate(sim)])


def test_retrieval_metrics_match_numpy():
  rng = np.random.RandomState(0)
  video = rng.randn(40, 8).astype(np.float32)
  text = (video + 0.8 * rng.randn(40, 8)).astype(np.float32)
  out = {k: float(v) for k, v in
         retrieval.retrieval_metrics(video, text, ks=(1, 5)).items()}
  vn = video / np.linalg.norm(video, axis=1, keepdims=True)
  tn = text / np.linalg.norm(text, axis=1, keepdims=True)
  sim = vn @ tn.T
  for prefix, s in (('v2t', sim), ('t2v', sim.T)):
    ranks = _numpy_ranks(s)
    assert out[f'{prefix}/R@1'] == pytest.approx(np.mean(ranks < 1))
    assert out[f'{prefix}/R@5'] == pytest.approx(np.mean(ranks < 5))
    assert out[f'{prefix}/median_rank'] == pytest.approx(np.median(ranks + 1))
  assert 0 < out['v2t/R@1'] < out['v2t/R@5'] <= 1
  perfect = retrieval.retrieval_metrics(np.eye(4), np.eye(4))
  assert float(perfect['t2v/R@1']) == 1.0
  assert float(perfect['v2t/median_rank']) == 1.0
  with pytest.raises(ValueError, match='ks'):
    retrieval.retrieval_metrics(np.eye(4), np.eye(4), ks=(0,))


def test_retrieval_known_answers_on_shuffled_pairs():
  # Pairs of identical video and text rows, in no particular order: every
  # query finds its own pair first. Texts shifted by one pair (a derangement
  # of unrelated rows): no query does, and the rank of each is known.
  rng = np.random.RandomState(1)
  video = rng.randn(30, 8).astype(np.float32)
  same = {k: float(v) for k, v in
          retrieval.retrieval_metrics(video, video, ks=(1, 5)).items()}
  for prefix in ('v2t', 't2v'):
    assert same[f'{prefix}/R@1'] == 1.0
    assert same[f'{prefix}/median_rank'] == 1.0
  # Orthogonal codes: video i matches text i - 1 exactly, its own text not at
  # all (cosine 0, tied with the other 28 rows, ahead of none of them):
  # rank 2 for every query.
  codes = np.eye(30, dtype=np.float32)[rng.permutation(30)]
  shifted = {k: float(v) for k, v in retrieval.retrieval_metrics(
      codes, np.roll(codes, 1, axis=0), ks=(1, 2)).items()}
  for prefix in ('v2t', 't2v'):
    assert shifted[f'{prefix}/R@1'] == 0.0
    assert shifted[f'{prefix}/R@2'] == 1.0
    assert shifted[f'{prefix}/median_rank'] == 2.0


def test_video_embedding_model_and_heads():
  backbone = tf_keras.Sequential([
      tf_keras.Input([2, 8, 8, 3]),
      tf_keras.layers.Conv3D(4, 3, padding='same'),
      tf_keras.layers.GlobalAveragePooling3D()])
  model = heads.build_video_embedding_model(backbone, embedding_dim=16)
  out = model(tf.random.uniform([3, 2, 8, 8, 3])).numpy()
  assert out.shape == (3, 16) and out.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
  assert model.backbone is backbone
  assert len(model.head.trainable_variables) == 2
  head = heads.TextHead(hidden_dim=8, embedding_dim=6)
  assert heads.TextHead.from_config(head.get_config()).embedding_dim == 6
  with pytest.raises(ValueError, match='backbone'):
    heads.build_video_embedding_model(tf_keras.layers.Dense(3))
  with pytest.raises(ValueError, match='embedding_dim'):
    heads.VideoHead(0)
