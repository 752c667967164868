"""The CPD demo end to end at its CI size (`python -m cpd.demo`)."""

import json
import os

import numpy as np
import pytest

from cpd import demo
from cpd import knn
from cpd import text_encoders
from cpd import trainer as cpd_trainer
from tfrecords_tools import schema
from tfrecords_tools import testing


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _numpy_knn_top1(train, train_labels, test, test_labels, k,
                    resolution=1e-5):
  """Uniform k-NN by cosine, ties broken by summed similarity (knn.py).

  Returns:
    (top-1, decided): `decided` is False when float32 rounding could change
    a result: the k-th and (k+1)-th neighbours, or the two best classes'
    votes, closer than `resolution` (embeddings at random init or collapsed
    in training have all cosines within 1e-3 of each other, and the
    similarity tie-break is worth 1e-3 of one).
  """
  sim = _unit(test) @ _unit(train).T
  correct, decided = [], True
  for row, label in zip(sim, test_labels):
    order = np.argsort(-row, kind='stable')
    if len(order) > k and row[order[k - 1]] - row[order[k]] <= resolution:
      decided = False
    votes = {}
    for j in order[:k]:
      votes[train_labels[j]] = votes.get(train_labels[j], 0.0) + (
          1.0 + 1e-3 * row[j])
    best = sorted(votes.values(), reverse=True)
    if len(best) > 1 and best[0] - best[1] <= resolution:
      decided = False
    correct.append(max(votes, key=votes.get) == label)
  return float(np.mean(correct)), decided


def _numpy_recall(video, text, prefix_ks=(1, 5, 10)):
  sim = _unit(video) @ _unit(text).T
  out = {}
  for prefix, s in (('v2t', sim), ('t2v', sim.T)):
    ranks = (s > np.diag(s)[:, None]).sum(axis=1)  # 0-based
    for k in prefix_ks:
      out[f'{prefix}/R@{k}'] = float(np.mean(ranks < k))
  return out


@pytest.mark.slow
def test_cpd_demo_tiny_end_to_end(tmp_path, monkeypatch):
  out = str(tmp_path / 'cpd_demo')
  embedded = []
  real = cpd_trainer.embed_pairs

  def embed_pairs(models, strategy, dataset_fn, file_pattern, **kwargs):
    pairs = real(models, strategy, dataset_fn, file_pattern, **kwargs)
    embedded.append((models, file_pattern, pairs))
    return pairs

  monkeypatch.setattr(cpd_trainer, 'embed_pairs', embed_pairs)
  size = demo.SIZES['tiny']
  result = demo.run_cpd_demo(out, size)
  assert [r['method'] for r in result['rows']] == ['random init',
                                                   'CPD pre-trained']
  # The rows' numbers are kNN (target train -> val clips) and retrieval (val
  # pairs) of what each model embedded, recomputed here; every clip of the
  # target splits is embedded once, with its record's label.
  labels = {split: sorted(int(r[schema.LABEL_INDEX_KEY]) for r in
                          testing.parse_all(os.path.join(
                              out, 'records', split, schema.shard_pattern())))
            for split in ('train', 'val')}
  assert (len(labels['train']), len(labels['val'])) == (
      size.num_classes * size.target_train_videos_per_class,
      size.num_classes * size.target_val_videos_per_class)
  rows_embedded = embedded[-4:]  # After the run's own validations.
  for row, calls in zip(result['rows'], (rows_embedded[:2],
                                         rows_embedded[2:])):
    (models, train_pattern, train), (same, val_pattern, val) = calls
    assert same is models
    assert (train_pattern.split(os.sep)[-2], val_pattern.split(os.sep)[-2]) == (
        'train', 'val')
    assert sorted(train['label'].tolist()) == labels['train']
    assert sorted(val['label'].tolist()) == labels['val']
    expected, decided = _numpy_knn_top1(train['video'], train['label'],
                                        val['video'], val['label'], size.knn_k)
    if not decided:  # Float32 rounding decides: the same kNN at its precision.
      expected = knn.knn_classify(
          train['video'], train['label'], val['video'], val['label'],
          num_classes=size.num_classes, k=size.knn_k, top_k=(1,))['clip/top_1']
    assert row['knn_top1'] == pytest.approx(expected), row['method']
    for key, value in _numpy_recall(val['video'], val['text']).items():
      assert row[key] == pytest.approx(value), (row['method'], key)
  # The two rows are two video models (random init vs trained), with the
  # same text encoder.
  fresh, trained = rows_embedded[0][0], rows_embedded[2][0]
  assert fresh is not trained and trained is not None
  assert not np.allclose(rows_embedded[1][2]['video'],
                         rows_embedded[3][2]['video'], atol=1e-3)
  assert fresh.text_encoder is trained.text_encoder
  # Stage 2 (MiniLM fine-tuned) started after epoch 0 of the tiny run.
  assert result['train']['step'] == demo.SIZES['tiny'].steps
  assert result['train']['stage'] == 2
  assert np.isfinite(result['train']['nce/loss'])
  # The run validated on the val pairs: the same number of them.
  assert result['eval']['num_pairs'] == len(labels['val'])
  assert all(p.split(os.sep)[-2] == 'val' for _, p, _ in embedded[:-4])
  with open(os.path.join(out, 'cpd_results.json')) as f:
    assert json.load(f)['rows'] == result['rows']
  report = open(os.path.join(out, 'cpd_report.md')).read()
  assert demo.format_table(result['rows']) in report
  assert 'does not' in report


def test_title_vocabulary_file(tmp_path):
  manifest = tmp_path / 'm.csv'
  manifest.write_text('path,label,title,video_id\n'
                      'a.mp4,x,"Baking Cookies 🔥 #baking",a\n')
  path = str(tmp_path / 'v.txt')
  # Cleaned as in training: emoji dropped, the hashtag word kept.
  assert demo.write_title_vectors([str(manifest)], path, dim=4) == 2
  words, vectors = text_encoders.load_word2vec(path)
  assert words == ['baking', 'cookies'] and vectors.shape == (2, 4)
