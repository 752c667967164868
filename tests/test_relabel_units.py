"""Relabel's record rewrite, one piece at a time, against hand-built inputs.

The end-to-end tests (test_relabel.py) run the Beam job; these call its
pieces directly, in milliseconds, with inputs a Beam run rarely produces:
every kind of mismatch between clip records and teacher predictions at once,
a clip in exactly two records, a teacher or weak label on each side of the
class range, more problems than the summary keeps, and shards that changed
between the two passes. Expected values are written from the docstrings, not
from the code.
"""

import os

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf

from tfrecords_tools import label_spaces
from tfrecords_tools import relabel
from tfrecords_tools import schema
from tfrecords_tools import testing
from tfrecords_tools import tfrecord_io

# pylint: disable=protected-access

N = 3
NAMES = [f'class_{i}' for i in range(N)]


# ---- Pass 1: matching clips with predictions ----


def _clip_chunk(path, *rows):
  return (relabel._CLIP, path, list(rows))


def _pred_chunk(*rows):
  return (relabel._PRED, 'pred.tfrecord', list(rows))


def _split(outputs):
  """(errors as (kind, message), main outputs) of a DoFn's outputs."""
  errors, main = [], []
  for out in outputs:
    if isinstance(out, beam.pvalue.TaggedOutput):
      assert out.tag == 'error' and out.value[0] == 'error'
      errors.append(out.value[1:])
    else:
      main.append(out)
  return errors, main


def test_match_names_every_kind_of_mismatch_and_keeps_the_good_clips():
  """One bucket holding every problem the docstring lists, and good clips.

  Rows arrive in no particular order and split over chunks; the good clips
  come out per shard, sorted by clip index, shards in path order. Each bad
  clip index gives exactly one error, its first problem.
  """
  a, b = 'clips-a', 'clips-b'
  chunks = [
      _clip_chunk(b, (12, 'k12', 0), (1, 'k1', 2), (4, 'k4', 1)),
      _pred_chunk((2, 'k2', N, 2, 0.25), (1, 'k1', N, 0, 0.5),
                  (3, 'k3', N, 1, 0.5), (6, 'k6', N, 1, 0.5)),
      _clip_chunk(a, (2, 'k2', 2), (0, 'k0', 0), (4, 'k4', 1), (5, 'k5', 1),
                  (6, 'k6', 0), (7, 'k7', 0), (8, 'k8', 0), (9, 'k9', 0),
                  (10, 'k10', N), (11, 'k11', -1), (13, 'k13', 0)),
      _pred_chunk((0, 'k0', N, 0, 0.75), (6, 'k6', N, 2, 0.5),
                  (7, 'other', N, 0, 0.5), (8, 'k8', N + 1, 0, 0.5),
                  (9, 'k9', N, N, 0.5), (10, 'k10', N, 0, 0.5),
                  (11, 'k11', N, 0, 0.5), (12, 'k12', N, -1, 0.5),
                  (13, 'k13', N, N - 1, 0.125), (4, 'k4', N, 0, 0.5)),
  ]
  errors, main = _split(relabel._MatchClips(N).process((0, chunks)))
  assert main == [(a, [(0, 0, 0, 0.75), (2, 2, 2, 0.25), (13, 0, N - 1,
                                                         0.125)]),
                  (b, [(1, 2, 0, 0.5)])]
  assert [kind for kind, _ in errors] == [
      'unknown_clip',          # 3: a prediction and no record
      'duplicate_clip',        # 4: in exactly two records (a and b)
      'missing_prediction',    # 5: a record and no prediction
      'duplicate_prediction',  # 6: two predictions
      'unknown_clip',          # 7: the prediction's key is another clip's
      'num_classes',           # 8: the teacher predicted N + 1 classes
      'out_of_range',          # 9: teacher class N
      'out_of_range',          # 10: weak label N
      'out_of_range',          # 11: weak label -1
      'out_of_range',          # 12: teacher class -1
  ]
  messages = [m for _, m in errors]
  assert "clip/index 3 (key 'k3')" in messages[0]
  assert 'clip/index 4 appears in 2 records' in messages[1]
  assert a in messages[1] and b in messages[1]
  assert "clip/index 5 (key 'k5') in clips-a" in messages[2]
  assert 'clip/index 6 has 2 predictions' in messages[3]
  assert "'other'" in messages[4] and "'k7' in clips-a" in messages[4]
  assert 'num_classes=4' in messages[5] and 'has 3' in messages[5]
  assert 'teacher class 3' in messages[6]
  assert 'weak label 3' in messages[7]
  assert 'weak label -1' in messages[8]
  assert 'teacher class -1' in messages[9]


def test_match_of_a_bucket_with_predictions_only_or_records_only():
  errors, main = _split(relabel._MatchClips(N).process(
      (7, [_pred_chunk((5, 'k5', N, 0, 0.5))])))
  assert main == [] and [k for k, _ in errors] == ['unknown_clip']
  errors, main = _split(relabel._MatchClips(N).process(
      (7, [_clip_chunk('s', (5, 'k5', 0), (6, 'k6', 1))])))
  assert main == [] and [k for k, _ in errors] == ['missing_prediction'] * 2


# ---- Pass 1: per-shard confusion counts, and their sum ----


def test_shard_clips_sorts_a_shards_clips_and_counts_its_confusion():
  chunks = [[(5, 1, 2, 0.5), (0, 1, 2, 0.25)], None, [],
            [(3, 2, 0, 0.5), (1, 1, 2, 0.125)]]
  outputs = list(relabel._ShardClips(N).process(('shard-0', chunks)))
  assert len(outputs) == 2
  tagged, main = outputs
  assert isinstance(tagged, beam.pvalue.TaggedOutput)
  assert tagged.tag == 'confusion' and tagged.value[0] == 'confusion'
  expected = np.zeros((N, N), np.int64)
  expected[1, 2] = 3  # the same cell three times
  expected[2, 0] = 1
  np.testing.assert_array_equal(tagged.value[1], expected)
  assert main == ('shard-0', [(0, 1, 2, 0.25), (1, 1, 2, 0.125),
                              (3, 2, 0, 0.5), (5, 1, 2, 0.5)])


def test_shard_clips_of_a_shard_without_matched_clips():
  (tagged, main) = relabel._ShardClips(N).process(('empty', [None, []]))
  np.testing.assert_array_equal(tagged.value[1], np.zeros((N, N)))
  assert main == ('empty', [])


def _combine(fn, inputs, num_accumulators):
  """Runs a CombineFn as a runner may: inputs split over accumulators."""
  accs = [fn.create_accumulator() for _ in range(num_accumulators)]
  for i, item in enumerate(inputs):
    accs[i % num_accumulators] = fn.add_input(accs[i % num_accumulators], item)
  return fn.extract_output(fn.merge_accumulators(accs))


@pytest.mark.parametrize('num_accumulators', [1, 3])
def test_pass1_sums_confusions_and_counts_every_error(num_accumulators):
  """Counts all errors by kind; keeps the first 20 messages in sorted order."""
  rng = np.random.RandomState(0)
  confusions = [rng.randint(0, 5, (N, N)) for _ in range(4)]
  errors = [('error', 'missing_prediction' if i % 3 else 'duplicate_clip',
             f'message {i:02d}') for i in range(25)]
  inputs = [('confusion', c) for c in confusions] + errors
  order = rng.permutation(len(inputs))
  result = _combine(relabel._Pass1Fn(N), [inputs[i] for i in order],
                    num_accumulators)
  assert result['confusion'] == np.sum(confusions, 0).tolist()
  assert result['errors'] == {
      'count': 25,
      'by_kind': {'duplicate_clip': 9, 'missing_prediction': 16},
      'first': [f'message {i:02d}' for i in range(20)]}
  assert relabel._MAX_ERROR_MESSAGES == 20


def test_pass1_without_errors():
  result = _combine(relabel._Pass1Fn(N), [('confusion', np.eye(N, dtype=int))],
                    2)
  assert result == {'confusion': np.eye(N, dtype=int).tolist(),
                    'errors': {'count': 0, 'by_kind': {}, 'first': []}}


# ---- Pass 2: rewriting one shard ----


def _space(variant='agreement'):
  confusion = np.array([[2, 1, 0], [0, 1, 1], [1, 0, 2]], np.int64)
  return label_spaces.make_label_space(variant, confusion, NAMES)


def _write(path, payloads):
  with tf.io.TFRecordWriter(path) as w:
    for p in payloads:
      w.write(p)


def _example(clip_index, **kwargs):
  return tf.train.SequenceExample.FromString(
      testing.make_fake_clip(clip_index, num_frames=2, height=8, width=8,
                             **kwargs))


def test_rewrite_shard_writes_the_expected_records_and_sizes(tmp_path):
  """Each kept record is the input with the five label keys set, serialised
  deterministically (context keys in sorted order: the bytes of a rerun are
  the same); dropped clips leave no record; byte counts are the files'."""
  space = _space('spl')  # keeps every clip: 9 classes
  weak_teacher = {0: (0, 2), 1: (1, 1), 2: (2, 0)}
  inputs = [_example(c, label_index=w) for c, (w, _) in weak_teacher.items()]
  in_path, out_path = str(tmp_path / 'in'), str(tmp_path / 'clips-out')
  _write(in_path, [e.SerializeToString() for e in inputs])
  teachers = {c: (t, 0.25 * (c + 1)) for c, (_, t) in weak_teacher.items()}
  stats = relabel.rewrite_shard(in_path, out_path, teachers, space)

  table = np.asarray(space['table'])
  expected_records = []
  for example, (c, (w, t)) in zip(inputs, weak_teacher.items()):
    new = int(table[w, t])
    # The keys are added in reverse order: only a deterministic (sorted)
    # serialisation makes the bytes independent of the order of insertion.
    expected = tf.train.SequenceExample()
    feature = expected.context.feature
    updates = {
        schema.TEACHER_INDEX_KEY: tf.train.Feature(
            int64_list=tf.train.Int64List(value=[t])),
        schema.TEACHER_SCORE_KEY: tf.train.Feature(
            float_list=tf.train.FloatList(value=[0.25 * (c + 1)])),
        schema.LABEL_INDEX_KEY: tf.train.Feature(
            int64_list=tf.train.Int64List(value=[new])),
        schema.LABEL_TEXT_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[space['classes'][new]['name'].encode()])),
        schema.LABEL_SPACE_ID_KEY: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[space['id'].encode()])),
    }
    for key in sorted(set(example.context.feature) | set(updates),
                      reverse=True):
      feature[key].CopyFrom(updates.get(key) or example.context.feature[key])
    expected.feature_lists.CopyFrom(example.feature_lists)
    expected_records.append(expected.SerializeToString(deterministic=True))
  with open(out_path, 'rb') as f:
    assert list(tfrecord_io.read_records(f, out_path)) == expected_records
  assert stats == {
      'shard': 'clips-out', 'input': 3, 'written': 3, 'dropped': 0,
      'bytes_in': os.path.getsize(in_path),
      'bytes_out': os.path.getsize(out_path),
      'class_counts': np.bincount(
          [table[w, t] for w, t in weak_teacher.values()],
          minlength=space['num_classes']).tolist()}


def test_rewrite_shard_drops_and_counts(tmp_path):
  space = _space('agreement')  # keeps clips whose teacher is the weak label
  in_path, out_path = str(tmp_path / 'in'), str(tmp_path / 'out')
  weak = [0, 1, 2, 2]
  _write(in_path, [testing.make_fake_clip(c, label_index=w, num_frames=1,
                                          height=8, width=8)
                   for c, w in enumerate(weak)])
  teacher = [0, 2, 2, 1]
  stats = relabel.rewrite_shard(
      in_path, out_path, {c: (t, 0.5) for c, t in enumerate(teacher)}, space)
  kept = testing.parse_all(out_path)
  assert [r[schema.CLIP_INDEX_KEY] for r in kept] == [0, 2]
  assert [r[schema.LABEL_INDEX_KEY] for r in kept] == [0, 2]
  assert {k: stats[k] for k in ('input', 'written', 'dropped')} == {
      'input': 4, 'written': 2, 'dropped': 2}
  assert stats['class_counts'] == [1, 0, 1]
  assert stats['bytes_out'] == os.path.getsize(out_path)
  assert stats['bytes_in'] == os.path.getsize(in_path)


def _without(example, key):
  del example.context.feature[key]
  return example.SerializeToString()


@pytest.mark.parametrize('case,teachers,message', [
    ('no_clip_index', {0: (0, 0.5)},
     "record 1: clip record has no int64 'clip/index'"),
    ('no_weak_label', {0: (0, 0.5), 1: (1, 0.5)},
     "record 1: clip record has no int64 'clip/weak_label/index'"),
    ('unknown_clip', {0: (0, 0.5)},
     'record 1: clip/index 1 was not seen exactly once in pass 1'),
    ('repeated_clip', {0: (0, 0.5)},
     'record 1: clip/index 0 was not seen exactly once in pass 1'),
    ('missing_clip', {0: (0, 0.5), 1: (1, 0.5), 2: (2, 0.5)},
     'pass 1 saw 3 clips, pass 2 read 2'),
])
def test_rewrite_shard_refuses_a_shard_that_changed_after_pass_1(
    tmp_path, case, teachers, message):
  """A shard unlike what pass 1 read fails, naming the file (and record);
  nothing is left under the output name or as a temporary file."""
  first = _example(0, label_index=0)
  second = {
      'no_clip_index': lambda: _without(_example(1), schema.CLIP_INDEX_KEY),
      'no_weak_label': lambda: _without(_example(1),
                                        schema.WEAK_LABEL_INDEX_KEY),
      'repeated_clip': first.SerializeToString,
  }.get(case, lambda: _example(1, label_index=1).SerializeToString())()
  out_dir = tmp_path / 'out'
  out_dir.mkdir()
  in_path = str(tmp_path / 'in')
  _write(in_path, [first.SerializeToString(), second])
  with pytest.raises((relabel.RelabelError, ValueError)) as e:
    relabel.rewrite_shard(in_path, str(out_dir / 'clips'), teachers,
                          _space('spl'))
  assert str(e.value).startswith(in_path) and message in str(e.value)
  assert not os.listdir(out_dir)


def test_rewrite_shard_writes_under_a_hidden_name_per_attempt(tmp_path,
                                                              monkeypatch):
  """A Beam runner may run a shard twice (retries, speculative attempts):
  each attempt writes its own hidden temporary file beside the output, so
  two attempts never write into one file, and only the rename publishes."""
  in_path, out_path = str(tmp_path / 'in'), str(tmp_path / 'clips-out')
  _write(in_path, [_example(0, label_index=1).SerializeToString()])
  created = []
  real_create = relabel.beam_utils.create

  def create(path):
    created.append(path)
    assert not os.path.exists(out_path) or len(created) > 1
    return real_create(path)

  monkeypatch.setattr(relabel.beam_utils, 'create', create)
  for _ in range(2):
    relabel.rewrite_shard(in_path, out_path, {0: (1, 0.5)}, _space('spl'))
  assert len(created) == 2 and created[0] != created[1]
  for path in created:
    assert os.path.dirname(path) == str(tmp_path)
    assert os.path.basename(path).startswith('.clips-out.tmp-')
    assert not os.path.exists(path)
  assert sorted(os.listdir(tmp_path)) == ['clips-out', 'in']
