"""The relabel job end to end, and the TFRecord / SequenceExample surgery under it."""

import errno
import io
import json
import os
import re
import subprocess
import sys

import google_crc32c
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.io import tfrecordio
from official.vision.dataloaders import video_input

from tests import read_only
from tfrecords_tools import completion
from tfrecords_tools import label_spaces
from tfrecords_tools import records
from tfrecords_tools import relabel
from tfrecords_tools import schema
from tfrecords_tools import testing
from tfrecords_tools import tfrecord_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 3
NUM_CLIPS = 12


def teacher_of(clip_index, weak):
  """Agrees on a third of the clips, otherwise one of the two other classes."""
  if clip_index % 3 == 0:
    return weak
  return (weak + 1 + (clip_index // 3) % 2) % NUM_CLASSES


def make_inputs(root, *, num_clips=NUM_CLIPS, skip_prediction=(),
                extra_prediction=None, num_classes_pred=NUM_CLASSES,
                num_shards=2):
  """Writes fake clip shards + their teacher predictions; returns patterns.

  Clip c goes to shard c % num_shards.
  """
  clip_dir = os.path.join(root, 'clips')
  testing.write_fake_clip_records(clip_dir, num_clips=num_clips,
                                  num_shards=num_shards,
                                  num_classes=NUM_CLASSES, num_frames=2,
                                  height=16, width=16)
  pred_dir = os.path.join(root, 'pred')
  os.makedirs(pred_dir)
  clips = testing.parse_all(os.path.join(clip_dir, schema.shard_pattern()))
  preds = []
  for clip in clips:
    c = clip[schema.CLIP_INDEX_KEY]
    if c in skip_prediction:
      continue
    t = teacher_of(c, clip[schema.WEAK_LABEL_INDEX_KEY])
    preds.append((c, clip[schema.CLIP_KEY_KEY], t))
  if extra_prediction is not None:
    preds.append(extra_prediction)
  with tf.io.TFRecordWriter(os.path.join(pred_dir, 'pred-0.tfrecord')) as w:
    for c, key, t in preds:
      w.write(records.make_prediction_example(
          clip_index=c, clip_key=key, num_classes=num_classes_pred,
          top_k_index=[t, (t + 1) % NUM_CLASSES],
          top_k_score=[0.5 + 0.01 * c, 0.1]).SerializeToString())
  return (os.path.join(clip_dir, schema.shard_pattern()),
          os.path.join(pred_dir, '*.tfrecord'), clips)


def _files(directory):
  return {name: open(os.path.join(directory, name), 'rb').read()
          for name in sorted(os.listdir(directory))}


# ---- tfrecord_io ----


def test_framing_matches_tensorflow_and_beam(tmp_path):
  payloads = [b'', b'a', os.urandom(1000), b'x' * 70000]
  tf_path = str(tmp_path / 'tf.tfrecord')
  with tf.io.TFRecordWriter(tf_path) as w:
    for p in payloads:
      w.write(p)
  buf = io.BytesIO()
  for p in payloads:
    tfrecord_io.write_record(buf, p)
  assert buf.getvalue() == open(tf_path, 'rb').read()
  # Split payloads frame to the same bytes.
  buf2 = io.BytesIO()
  tfrecord_io.write_record_parts(buf2, [payloads[2][:10], payloads[2][10:]])
  one = io.BytesIO()
  tfrecord_io.write_record(one, payloads[2])
  assert buf2.getvalue() == one.getvalue()
  with open(tf_path, 'rb') as f:
    assert list(tfrecord_io.read_records(f, tf_path)) == payloads
  # Beam's TFRecord I/O checksums with google-crc32c here (no python-snappy),
  # not its pure-Python fallback.
  tfrecordio._default_crc32c_fn(b'probe')  # pylint: disable=protected-access
  assert tfrecordio._default_crc32c_fn.fn is google_crc32c.value  # pylint: disable=protected-access
  assert google_crc32c.implementation == 'c'


def test_corruption_is_reported(tmp_path):
  buf = io.BytesIO()
  tfrecord_io.write_record(buf, b'hello world')
  data = bytearray(buf.getvalue())
  data[14] ^= 1
  with pytest.raises(tfrecord_io.CorruptRecordError, match='data checksum'):
    list(tfrecord_io.read_records(io.BytesIO(bytes(data)), 'f'))
  with pytest.raises(tfrecord_io.CorruptRecordError, match='truncated'):
    list(tfrecord_io.read_records(io.BytesIO(buf.getvalue()[:-3]), 'f'))


def test_context_surgery_gives_a_valid_record():
  serialized = testing.make_fake_clip(4, num_frames=3, height=16, width=16)
  context, rest = tfrecord_io.split_sequence_example(serialized)
  assert len(rest) == 1
  features = tf.train.Features.FromString(context)
  features.feature[schema.LABEL_INDEX_KEY].int64_list.value[:] = [42]
  new = (tfrecord_io.context_field(features.SerializeToString()) +
         b''.join(rest))
  parsed = records.parse_clip_example(new)
  original = records.parse_clip_example(serialized)
  assert parsed[schema.LABEL_INDEX_KEY] == 42
  assert parsed[schema.IMAGE_KEY] == original[schema.IMAGE_KEY]
  # Fields in the other order, and a context split in two occurrences (which
  # protobuf merges), are handled like the canonical layout.
  ex = tf.train.SequenceExample.FromString(serialized)
  lists = ex.feature_lists.SerializeToString()
  part_a = tf.train.Features(feature={
      k: v for k, v in ex.context.feature.items() if k < 'clip/m'})
  part_b = tf.train.Features(feature={
      k: v for k, v in ex.context.feature.items() if k >= 'clip/m'})
  odd = (b'\x12' + tfrecord_io.encode_varint(len(lists)) + lists +
         tfrecord_io.context_field(part_a.SerializeToString()) +
         tfrecord_io.context_field(part_b.SerializeToString()))
  context2, rest2 = tfrecord_io.split_sequence_example(odd)
  assert tf.train.Features.FromString(context2) == ex.context
  assert rest2 == [b'\x12' + tfrecord_io.encode_varint(len(lists)) + lists]
  buf = io.BytesIO()
  tfrecord_io.write_record(buf, serialized)
  tfrecord_io.write_record(buf, odd)
  buf.seek(0)
  contexts = list(tfrecord_io.read_contexts(buf, 'mem'))
  assert [tf.train.Features.FromString(c) for c in contexts] == [
      ex.context, ex.context]
  with pytest.raises(ValueError, match='not a SequenceExample'):
    tfrecord_io.split_sequence_example(b'\x08\x01')
  # The copy-free reader splits every layout like the reference split.
  tiny = tfrecord_io.context_field(b'') + b'\x12\x00'
  buf = io.BytesIO()
  for r in (serialized, odd, tiny):
    tfrecord_io.write_record(buf, r)
  buf.seek(0)
  split = list(tfrecord_io.read_split_records(buf, 'mem'))
  for (ctx, others, length), r in zip(split, (serialized, odd, tiny)):
    ref_ctx, ref_rest = tfrecord_io.split_sequence_example(r)
    assert (ctx, b''.join(others), length) == (ref_ctx, b''.join(ref_rest),
                                               len(r))
  data = bytearray(buf.getvalue())
  data[-10] ^= 1
  with pytest.raises(tfrecord_io.CorruptRecordError, match='checksum'):
    list(tfrecord_io.read_split_records(io.BytesIO(bytes(data)), 'mem'))


def test_context_reader_on_real_records_and_truncated_shards(tmp_path):
  rec_pattern, _, clips = make_inputs(str(tmp_path))
  shard = sorted(tf.io.gfile.glob(rec_pattern))[0]
  full = [tf.train.SequenceExample.FromString(r.numpy()).context
          for r in tf.data.TFRecordDataset([shard])]
  with open(shard, 'rb') as f:
    contexts = [tf.train.Features.FromString(c)
                for c in tfrecord_io.read_contexts(f, shard)]
  assert contexts == full and len(full) == NUM_CLIPS // 2
  # What pass 1 emits: (clip index, clip key, weak label) of every record,
  # grouped by bucket of clip indices.
  out = list(relabel.read_shard_contexts(shard))
  assert all(rows and {c // relabel._BUCKET for c, _, _ in rows} == {bucket}
             and p == shard for bucket, (_, p, rows) in out)
  got = sorted(row for _, (_, _, rows) in out for row in rows)
  assert got == sorted((c[schema.CLIP_INDEX_KEY], c[schema.CLIP_KEY_KEY],
                        c[schema.WEAK_LABEL_INDEX_KEY]) for c in clips
                       if c[schema.CLIP_INDEX_KEY] % 2 == 0)
  data = open(shard, 'rb').read()
  bad = str(tmp_path / 'bad.tfrecord')
  # Cut inside the frames of the last record (the context reader never reads
  # them), inside a header, and a flipped length checksum.
  for cut, match in ((len(data) - 30, 'truncated record'),
                     (len(data) - 2, 'truncated record'),
                     (5, 'truncated record header')):
    open(bad, 'wb').write(data[:cut])
    with open(bad, 'rb') as f, pytest.raises(
        tfrecord_io.CorruptRecordError, match=match) as e:
      list(tfrecord_io.read_contexts(f, bad))
    assert bad in str(e.value)
  flipped = bytearray(data)
  flipped[9] ^= 1
  open(bad, 'wb').write(bytes(flipped))
  with open(bad, 'rb') as f, pytest.raises(tfrecord_io.CorruptRecordError,
                                           match=f'{bad}: length checksum'):
    list(tfrecord_io.read_contexts(f, bad))
  # Pass 1 turns it into a reported problem naming the file.
  errors = [item.value for item in relabel.read_shard_contexts(bad)]
  assert errors == [('error', 'corrupt_shard', errors[0][2])]
  assert bad in errors[0][2] and 'length checksum' in errors[0][2]


# ---- The Beam job ----


def test_relabel_end_to_end_deterministic_and_model_garden_reads_it(
    tmp_path, monkeypatch):
  rec_pattern, pred_pattern, clips = make_inputs(str(tmp_path))
  out_a, out_b = str(tmp_path / 'out_a'), str(tmp_path / 'out_b')
  stats = relabel.relabel(records_pattern=rec_pattern,
                          predictions_pattern=pred_pattern, variant='spl_d',
                          k=2, output_dir=out_a)
  # The rerun joins in buckets of 5 clip indices (one bucket at first): same
  # bytes.
  monkeypatch.setattr(relabel, '_BUCKET', 5)
  relabel.relabel(records_pattern=rec_pattern, predictions_pattern=pred_pattern,
                  variant='spl_d', k=2, output_dir=out_b)
  files_a, files_b = _files(out_a), _files(out_b)
  assert files_a == files_b
  assert len(list(relabel.read_shard_contexts(
      sorted(tf.io.gfile.glob(rec_pattern))[0]))) == 3  # buckets 0, 1, 2
  shard_names = sorted(os.path.basename(p) for p in tf.io.gfile.glob(
      rec_pattern))
  for name in shard_names + [schema.LABEL_SPACE_FILENAME,
                             schema.LABEL_MAP_FILENAME, relabel.STATS_FILENAME,
                             relabel.CONFUSION_PNG, relabel.CLASS_COUNTS_PNG,
                             relabel.SCR_CURVE_PNG]:
    assert name in files_a, name
  assert not [n for n in files_a if '.tmp-' in n]

  space = label_spaces.load_label_space(
      os.path.join(out_a, schema.LABEL_SPACE_FILENAME))
  weak = [c[schema.WEAK_LABEL_INDEX_KEY] for c in clips]
  teacher = [teacher_of(c[schema.CLIP_INDEX_KEY], w)
             for c, w in zip(clips, weak)]
  confusion = label_spaces.confusion_matrix(weak, teacher, NUM_CLASSES)
  expected_space = label_spaces.make_label_space(
      'spl_d', confusion, [f'class_{i}' for i in range(NUM_CLASSES)], k=2)
  assert space == expected_space
  table = np.asarray(space['table'])
  assert stats['confusion_matrix'] == confusion.tolist()
  clips_stats = stats['clips']
  assert clips_stats['input'] == NUM_CLIPS == (
      clips_stats['written'] + clips_stats['dropped'])
  assert clips_stats['dropped'] == space['num_dropped_clips'] > 0

  by_shard = {}
  for c, w, t in zip(clips, weak, teacher):
    by_shard.setdefault(c[schema.CLIP_INDEX_KEY] % 2, []).append((c, w, t))
  decoder = video_input.Decoder()
  for s, name in enumerate(shard_names):
    kept = [(c, w, t) for c, w, t in by_shard[s] if table[w, t] != -1]
    out_path = os.path.join(out_a, name)
    ds = tf.data.TFRecordDataset([out_path]).map(decoder.decode)
    labels = [int(d[schema.LABEL_INDEX_KEY][0]) for d in ds]
    assert labels == [int(table[w, t]) for _, w, t in kept]
    relabelled = testing.parse_all(out_path)
    label_spaces.check_label_space_ids(
        space, [r[schema.LABEL_SPACE_ID_KEY] for r in relabelled])
    for r, (c, w, t) in zip(relabelled, kept):
      assert r[schema.CLIP_INDEX_KEY] == c[schema.CLIP_INDEX_KEY]
      assert r[schema.WEAK_LABEL_INDEX_KEY] == w
      assert r[schema.WEAK_LABEL_TEXT_KEY] == c[schema.WEAK_LABEL_TEXT_KEY]
      assert r[schema.TEACHER_INDEX_KEY] == t
      assert r[schema.TEACHER_SCORE_KEY] == pytest.approx(
          0.5 + 0.01 * c[schema.CLIP_INDEX_KEY])
      assert r[schema.LABEL_TEXT_KEY] == (
          f'weak: class_{w} / teacher: class_{t}')
      assert r[schema.IMAGE_KEY] == c[schema.IMAGE_KEY]
      assert r[schema.CAPTION_KEY] == c[schema.CAPTION_KEY]
  label_map = records.read_label_map(os.path.join(out_a,
                                                  schema.LABEL_MAP_FILENAME))
  assert label_map == [x['name'] for x in space['classes']]


def _read(path):
  """Records of one TFRecord file, CRC-checked by our own reader."""
  with open(path, 'rb') as f:
    return list(tfrecord_io.read_records(f, path))


def test_empty_shards_are_rewritten_and_totals_equal_the_files(tmp_path):
  """Every input shard gives an output shard of its name, empty or not.

  4 clips over 6 shards: shards 4 and 5 are empty on input, and `agreement`
  drops every clip of shards 1 and 2. The reported totals, per shard and
  overall, equal what is counted in the files.
  """
  rec_pattern, pred_pattern, _ = make_inputs(str(tmp_path), num_clips=4,
                                             num_shards=6)
  out = str(tmp_path / 'out')
  stats = relabel.relabel(records_pattern=rec_pattern,
                          predictions_pattern=pred_pattern,
                          variant='agreement', output_dir=out)
  in_paths = sorted(tf.io.gfile.glob(rec_pattern))
  names = [os.path.basename(p) for p in in_paths]
  assert names == [schema.shard_name(i, 6) for i in range(6)]
  assert sorted(n for n in os.listdir(out) if n.startswith('clips-')) == names
  # No K, no SCR-vs-K plot (the two others are drawn).
  assert relabel.CONFUSION_PNG in os.listdir(out)
  assert relabel.SCR_CURVE_PNG not in os.listdir(out)
  inputs = [[records.parse_clip_example(r) for r in _read(p)]
            for p in in_paths]
  outputs = [[records.parse_clip_example(r) for r in
              _read(os.path.join(out, n))] for n in names]
  # Shard s holds clip s (s < 4); TensorFlow reads the empty files too.
  assert [[c[schema.CLIP_INDEX_KEY] for c in x] for x in inputs] == [
      [0], [1], [2], [3], [], []]
  for n, x in zip(names, outputs):
    assert len(list(tf.data.TFRecordDataset([os.path.join(out, n)]))) == len(x)
  # Agreement keeps the clips whose teacher is their weak label, in order.
  expected = [[c[schema.CLIP_INDEX_KEY] for c in x
               if teacher_of(c[schema.CLIP_INDEX_KEY],
                             c[schema.WEAK_LABEL_INDEX_KEY]) ==
               c[schema.WEAK_LABEL_INDEX_KEY]] for x in inputs]
  assert expected == [[0], [], [], [3], [], []]
  assert [[c[schema.CLIP_INDEX_KEY] for c in x] for x in outputs] == expected
  for n in ('clips-00001-of-00006.tfrecord', 'clips-00004-of-00006.tfrecord'):
    assert os.path.getsize(os.path.join(out, n)) == 0

  # Reported totals, counted independently from the files.
  per_shard = [{
      'shard': n, 'input': len(i), 'written': len(o),
      'dropped': len(i) - len(o),
      'bytes_in': os.path.getsize(p),
      'bytes_out': os.path.getsize(os.path.join(out, n))}
               for n, p, i, o in zip(names, in_paths, inputs, outputs)]
  assert [{k: s[k] for k in per_shard[0]} for s in stats['shards']] == (
      per_shard)
  assert stats['clips'] == {k: sum(s[k] for s in per_shard) for k in (
      'input', 'written', 'dropped', 'bytes_in', 'bytes_out')}
  assert stats['clips']['input'] == 4 and stats['clips']['written'] == 2
  labels = [c[schema.LABEL_INDEX_KEY] for x in outputs for c in x]
  assert stats['class_counts'] == np.bincount(
      labels, minlength=NUM_CLASSES).tolist()
  assert [s['class_counts'] for s in stats['shards']] == [
      np.bincount([c[schema.LABEL_INDEX_KEY] for c in x],
                  minlength=NUM_CLASSES).tolist() for x in outputs]


def test_relabel_end_to_end_fails_when_a_stage_loses_a_clip(tmp_path,
                                                            monkeypatch):
  """A pass 2 that reports a clip fewer than pass 1 counted fails the job.

  The shard's own books balance (input = written + dropped), so only the
  job's cross-check against the confusion matrix can see it.
  """
  rec_pattern, pred_pattern, _ = make_inputs(str(tmp_path))
  real = relabel.rewrite_shard

  def lossy(in_path, out_path, teachers, space, **kwargs):
    stats = real(in_path, out_path, teachers, space, **kwargs)
    if in_path.endswith(schema.shard_name(1, 2)):
      new = stats['class_counts'].index(max(stats['class_counts']))
      stats['class_counts'][new] -= 1
      stats['input'] -= 1
      stats['written'] -= 1
    return stats

  monkeypatch.setattr(relabel, 'rewrite_shard', lossy)
  out = str(tmp_path / 'out')
  with pytest.raises(relabel.RelabelError) as e:
    relabel.relabel(records_pattern=rec_pattern,
                    predictions_pattern=pred_pattern, variant='spl',
                    output_dir=out)
  assert (f'relabel totals do not add up: pass 2 read {NUM_CLIPS - 1} clips, '
          f'the confusion matrix counts {NUM_CLIPS}; per-class written counts '
          'differ from the label space') in str(e.value)
  # Nothing says the output is complete.
  assert schema.LABEL_SPACE_FILENAME not in os.listdir(out)
  assert relabel.STATS_FILENAME not in os.listdir(out)


def _consistent_finish_inputs():
  """pass-1 result and matching shard stats: one full shard, one empty."""
  confusion = np.array([[3, 1, 0], [2, 4, 1], [0, 0, 5]], np.int64)
  space = label_spaces.make_label_space(
      'agreement', confusion, [f'class_{i}' for i in range(NUM_CLASSES)])
  pass1 = {'errors': {'count': 0, 'by_kind': {}, 'first': []},
           'space': space, 'confusion': confusion.tolist()}
  total, kept = int(confusion.sum()), int(np.trace(confusion))
  shards = [
      {'shard': 'a', 'input': total, 'written': kept, 'dropped': total - kept,
       'bytes_in': 1000, 'bytes_out': 600,
       'class_counts': np.diag(confusion).tolist()},
      {'shard': 'b', 'input': 0, 'written': 0, 'dropped': 0, 'bytes_in': 0,
       'bytes_out': 0, 'class_counts': [0] * NUM_CLASSES}]
  return pass1, shards


def _break_missing_shard(shards):
  del shards[1]


def _break_unbalanced(shards):
  shards[0]['written'] -= 1
  shards[0]['class_counts'][0] -= 1


def _break_input_count(shards):
  shards[0]['input'] += 1
  shards[0]['dropped'] += 1


def _break_class_counts(shards):
  shards[0]['class_counts'][0] -= 1
  shards[0]['class_counts'][1] += 1


@pytest.mark.parametrize('tamper,problems', [
    (_break_missing_shard, '1 shards written of 2'),
    (_break_unbalanced, '16 clips in != 11 written + 4 dropped; per-class '
     'written counts differ from the label space'),
    (_break_input_count, 'pass 2 read 17 clips, the confusion matrix counts '
     '16; dropped 5 clips, the label space expects 4'),
    (_break_class_counts, 'per-class written counts differ from the label '
     'space'),
])
def test_finish_cross_checks_the_totals(tmp_path, tamper, problems):
  """Each disagreement of pass 2 with pass 1 is named; nothing is written."""
  pass1, shards = _consistent_finish_inputs()
  assert pass1['space']['num_clips'] == 16  # The messages' numbers.
  assert pass1['space']['num_dropped_clips'] == 4
  tamper(shards)
  with pytest.raises(relabel.RelabelError) as e:
    relabel._finish(  # pylint: disable=protected-access
        shards, pass1, str(tmp_path), 2)
  assert str(e.value) == 'relabel totals do not add up: ' + problems
  assert not os.listdir(tmp_path)


def test_finish_accepts_consistent_totals(tmp_path):
  """The cross-check's inputs above are consistent before tampering."""
  pass1, shards = _consistent_finish_inputs()
  relabel._finish(  # pylint: disable=protected-access
      shards, pass1, str(tmp_path), 2)
  with open(tmp_path / relabel.STATS_FILENAME, encoding='utf-8') as f:
    written = json.load(f)
  assert written['status'] == 'ok'
  assert written['clips'] == {'input': 16, 'written': 12, 'dropped': 4,
                              'bytes_in': 1000, 'bytes_out': 600}
  assert written['class_counts'] == [3, 4, 5]


def test_input_problems_are_reported_and_nothing_is_written(tmp_path):
  rec_pattern, pred_pattern, _ = make_inputs(
      str(tmp_path), skip_prediction=(5,),
      extra_prediction=(99, 'video_99999@000000000', 1))
  out = str(tmp_path / 'out')
  with pytest.raises(relabel.RelabelError) as e:
    relabel.relabel(records_pattern=rec_pattern,
                    predictions_pattern=pred_pattern, variant='spl',
                    output_dir=out)
  message = str(e.value)
  assert 'record without prediction: clip/index 5' in message
  assert 'prediction for unknown clip: clip/index 99' in message
  # The problems, and the marker that says no run finished here.
  assert sorted(os.listdir(out)) == [completion.MARKER_FILENAME,
                                     relabel.STATS_FILENAME]


def test_teacher_with_another_num_classes_is_reported(tmp_path):
  rec_pattern, pred_pattern, _ = make_inputs(str(tmp_path),
                                             num_classes_pred=NUM_CLASSES + 1)
  with pytest.raises(relabel.RelabelError,
                     match=r'teacher with a different N.*num_classes=4.*has 3'):
    relabel.relabel(records_pattern=rec_pattern,
                    predictions_pattern=pred_pattern, variant='weak',
                    output_dir=str(tmp_path / 'out'))


def test_arguments_are_validated(tmp_path):
  rec_pattern, pred_pattern, _ = make_inputs(str(tmp_path), num_clips=2)
  kw = dict(records_pattern=rec_pattern, predictions_pattern=pred_pattern)
  with pytest.raises(ValueError, match='exactly one of `k`, `scr` and '
                     '`num_classes`'):
    relabel.relabel(variant='spl_m', output_dir=str(tmp_path / 'o'), **kw)
  with pytest.raises(ValueError, match='`k`'):
    relabel.relabel(variant='spl_m', k=9, output_dir=str(tmp_path / 'o'), **kw)
  with pytest.raises(ValueError, match='input directory'):
    relabel.relabel(variant='spl', output_dir=os.path.dirname(rec_pattern),
                    **kw)
  with pytest.raises(ValueError, match='matches no files'):
    relabel.relabel(records_pattern=str(tmp_path / 'none-*'),
                    predictions_pattern=pred_pattern, variant='spl',
                    output_dir=str(tmp_path / 'o'))


@pytest.mark.slow
def test_multi_process_direct_runner_gives_the_same_bytes(tmp_path):
  rec_pattern, pred_pattern, _ = make_inputs(str(tmp_path))
  outs = []
  for name, workers, args in (
      ('in_process', 1, ()),
      ('two_procs', 2, ('--direct_running_mode=multi_processing',))):
    out = str(tmp_path / name)
    relabel.relabel(records_pattern=rec_pattern,
                    predictions_pattern=pred_pattern, variant='spl_m',
                    target_scr=0.8, output_dir=out,
                    direct_num_workers=workers, beam_args=args)
    outs.append(_files(out))
  assert outs[0] == outs[1]


def test_corrupt_shards_are_reported_and_nothing_is_written(tmp_path):
  rec_pattern, pred_pattern, _ = make_inputs(str(tmp_path))
  first, second = sorted(tf.io.gfile.glob(rec_pattern))
  data = open(first, 'rb').read()
  open(first, 'wb').write(data[:-40])  # truncated in the last clip's frames
  out = str(tmp_path / 'out')
  with pytest.raises(relabel.RelabelError,
                     match=f'(?s)corrupt_shard.*{first}: truncated record'):
    relabel.relabel(records_pattern=rec_pattern,
                    predictions_pattern=pred_pattern, variant='spl',
                    output_dir=out)
  # The problems, and the marker that says no run finished here.
  assert sorted(os.listdir(out)) == [completion.MARKER_FILENAME,
                                     relabel.STATS_FILENAME]
  # A flipped frame byte passes pass 1 (contexts only) but pass 2 checks
  # every record's CRC: the job fails naming the file, and no shard is
  # left under a temporary name.
  open(first, 'wb').write(data)
  flipped = bytearray(open(second, 'rb').read())
  flipped[-100] ^= 1
  open(second, 'wb').write(bytes(flipped))
  out2 = str(tmp_path / 'out2')
  with pytest.raises(Exception, match=f'{second}: data checksum mismatch'):
    relabel.relabel(records_pattern=rec_pattern,
                    predictions_pattern=pred_pattern, variant='spl',
                    output_dir=out2)
  assert not [n for n in os.listdir(out2) if '.tmp-' in n]
  assert schema.LABEL_SPACE_FILENAME not in os.listdir(out2)


# ---- Sizing by class count (Figure 4) and the noise ratio (Table 2) ----


def _reference_counts(clips):
  """(weak, teacher) -> clips, counted from the fake data by hand."""
  counts = {}
  for clip in clips:
    w = clip[schema.WEAK_LABEL_INDEX_KEY]
    t = teacher_of(clip[schema.CLIP_INDEX_KEY], w)
    counts[(w, t)] = counts.get((w, t), 0) + 1
  return counts


def test_relabel_by_class_count(tmp_path, caplog):
  rec_pattern, pred_pattern, clips = make_inputs(str(tmp_path))
  n = NUM_CLASSES
  count = 5  # not a multiple of N = 3: K = 5/3
  out = str(tmp_path / 'out')
  with caplog.at_level('INFO'):
    stats = relabel.relabel(records_pattern=rec_pattern,
                            predictions_pattern=pred_pattern,
                            variant='spl_d', num_classes=count,
                            output_dir=out)
  space = label_spaces.load_label_space(
      os.path.join(out, schema.LABEL_SPACE_FILENAME))
  with open(os.path.join(out, relabel.STATS_FILENAME), encoding='utf-8') as f:
    on_disk = json.load(f)
  assert space['num_classes'] == len(space['classes']) == count
  assert space['sized_by'] == on_disk['sized_by'] == 'num_classes'
  assert space['k'] == pytest.approx(count / n)
  assert on_disk['num_classes'] == count

  # SCR and noise ratio from their definitions, on counts made by hand.
  counts = _reference_counts(clips)
  off = sorted(((-v, w * n + t) for (w, t), v in counts.items() if w != t))
  kept_off = [cell for _, cell in off[:count - n]]
  covered = sum(v for (w, t), v in counts.items()
                if w == t or w * n + t in kept_off)
  disagree = sum(v for (w, t), v in counts.items() if w != t)
  assert len(off) >= count - n  # the selection is decided by the counts
  for where in (space, stats, on_disk):
    assert where['scr'] == pytest.approx(covered / NUM_CLIPS)
    assert where['noise_ratio'] == pytest.approx(disagree / NUM_CLIPS)
  assert stats['clips']['dropped'] == NUM_CLIPS - covered
  assert stats['clips']['written'] == covered
  written = [r for p in sorted(tf.io.gfile.glob(os.path.join(
      out, schema.shard_pattern()))) for r in testing.parse_all(p)]
  assert len(written) == covered
  # The written clips are exactly those of the kept cells (by hand), each
  # with the class `label_space.json` lists the cell under.
  kept_cells = sorted(
      clip[schema.WEAK_LABEL_INDEX_KEY] * n + teacher_of(
          clip[schema.CLIP_INDEX_KEY], clip[schema.WEAK_LABEL_INDEX_KEY])
      for clip in clips
      if clip[schema.WEAK_LABEL_INDEX_KEY] == teacher_of(
          clip[schema.CLIP_INDEX_KEY], clip[schema.WEAK_LABEL_INDEX_KEY])
      or clip[schema.WEAK_LABEL_INDEX_KEY] * n + teacher_of(
          clip[schema.CLIP_INDEX_KEY], clip[schema.WEAK_LABEL_INDEX_KEY])
      in kept_off)
  assert sorted(r[schema.WEAK_LABEL_INDEX_KEY] * n + r[schema.TEACHER_INDEX_KEY]
                for r in written) == kept_cells
  class_of_cell = {tuple(cell): c['index'] for c in space['classes']
                   for cell in c['cells']}
  # One class per kept cell: n diagonal and count - n off-diagonal ones.
  assert len(class_of_cell) == count
  assert [r[schema.LABEL_INDEX_KEY] for r in written] == [
      class_of_cell[(f'class_{r[schema.WEAK_LABEL_INDEX_KEY]}',
                     f'class_{r[schema.TEACHER_INDEX_KEY]}')] for r in written]
  assert any(f'{count} classes' in m and 'SCR reached' in m and
             'noise ratio' in m for m in caplog.messages)
  # The trainer's check accepts it as the declared Figure 4 point, and refuses
  # another.
  label_spaces.check_expected_label_space(
      space, source=out, variant='spl_d', num_classes=count,
      scr=covered / NUM_CLIPS)
  with pytest.raises(ValueError, match='`num_classes` is 5, expected 6'):
    label_spaces.check_expected_label_space(space, source=out, num_classes=6)


def test_noise_ratio_is_reported_for_every_variant(tmp_path):
  rec_pattern, pred_pattern, clips = make_inputs(str(tmp_path))
  counts = _reference_counts(clips)
  disagree = sum(v for (w, t), v in counts.items() if w != t)
  for variant in ('agreement', 'spl_b'):
    stats = relabel.relabel(records_pattern=rec_pattern,
                            predictions_pattern=pred_pattern, variant=variant,
                            output_dir=str(tmp_path / variant))
    assert stats['noise_ratio'] == pytest.approx(disagree / NUM_CLIPS)
    assert stats['sized_by'] is None
  # Agreement keeps exactly the clips the noise ratio does not count.
  assert stats['clips']['input'] == NUM_CLIPS


def test_class_count_refusals_write_nothing(tmp_path):
  rec_pattern, pred_pattern, _ = make_inputs(str(tmp_path), num_clips=2)
  kw = dict(records_pattern=rec_pattern, predictions_pattern=pred_pattern)
  out = str(tmp_path / 'o')
  for bad in (NUM_CLASSES - 1, NUM_CLASSES ** 2 + 1):
    with pytest.raises(ValueError,
                       match=r'`num_classes` must be in \[N, N\^2\] = \[3, 9\]'):
      relabel.relabel(variant='spl_m', num_classes=bad, output_dir=out, **kw)
  with pytest.raises(ValueError, match='exactly one of'):
    relabel.relabel(variant='spl_d', k=2, num_classes=6, output_dir=out, **kw)
  with pytest.raises(ValueError, match='exactly one of'):
    relabel.relabel(variant='spl_d', target_scr=0.5, num_classes=6,
                    output_dir=out, **kw)
  with pytest.raises(ValueError, match='only apply'):
    relabel.relabel(variant='spl', num_classes=9, output_dir=out, **kw)
  assert not os.path.exists(out)


def test_command_line_num_classes(tmp_path, capsys):
  # `run` defines its absl flags, so it runs once per process: the refusals
  # are tested on `relabel.relabel` above.
  rec_pattern, pred_pattern, _ = make_inputs(str(tmp_path))
  out = str(tmp_path / 'out')
  relabel.run(['relabel', f'--records={rec_pattern}',
               f'--predictions={pred_pattern}', '--variant=spl_m',
               '--num_classes=7', f'--output_dir={out}'])
  printed = capsys.readouterr().out
  assert '7 classes (class count, K=2.33' in printed and 'SCR reached' in printed
  assert label_spaces.load_label_space(
      os.path.join(out, schema.LABEL_SPACE_FILENAME))['num_classes'] == 7
  # The run's flags are recorded as a flagfile that reruns it: the rerun
  # into another directory writes the same bytes.
  with open(os.path.join(out, 'config_relabel.flags')) as f:
    config = f.read().splitlines()
  assert config == [
      '# python -m tfrecords_tools.relabel --flagfile=<this file>',
      f'--records={rec_pattern}', f'--predictions={pred_pattern}',
      '--variant=spl_m', '--num_classes=7', f'--output_dir={out}',
      '--runner=DirectRunner', '--direct_num_workers=1']
  again = str(tmp_path / 'again')
  proc = subprocess.run(
      [sys.executable, '-m', 'tfrecords_tools.relabel',
       f'--flagfile={os.path.join(out, "config_relabel.flags")}',
       f'--output_dir={again}'], capture_output=True, text=True, timeout=600,
      cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  first, second = _files(out), _files(again)
  assert first.pop('config_relabel.flags') != second.pop(
      'config_relabel.flags')  # only the output directory differs
  assert first == second


# ---- Completion: outputs complete or not used (issue: exact resume) ----


def _relabel(rec_pattern, pred_pattern, out, **kw):
  return relabel.relabel(records_pattern=rec_pattern,
                         predictions_pattern=pred_pattern,
                         variant=kw.pop('variant', 'spl'),
                         output_dir=str(out), **kw)


def test_the_stats_are_the_completion_record_listing_the_shards(tmp_path):
  rec_pattern, pred_pattern, _ = make_inputs(str(tmp_path))
  out = tmp_path / 'out'
  _relabel(rec_pattern, pred_pattern, out)
  stats = json.loads((out / relabel.STATS_FILENAME).read_text())
  assert stats[completion.FILES_KEY] == [schema.shard_name(i, 2)
                                         for i in range(2)]
  assert stats[completion.JOB_KEY] == 'relabel'
  assert relabel.STATS_FILENAME in completion.RECORD_FILENAMES
  assert completion.MARKER_FILENAME not in os.listdir(out)
  assert len(testing.read_records(str(out / schema.shard_pattern()))) == (
      NUM_CLIPS)


def test_a_killed_runs_temporaries_are_removed_by_the_rerun(tmp_path):
  """Pass 2 writes `.clips-*.tmp-<uuid>` (one per attempt); a kill leaves
  them, with the marker; the rerun deletes them and completes."""
  rec_pattern, pred_pattern, _ = make_inputs(str(tmp_path))
  clean, out = tmp_path / 'clean', tmp_path / 'out'
  _relabel(rec_pattern, pred_pattern, clean)
  out.mkdir()
  leftovers = [f'.{schema.shard_name(0, 2)}.tmp-{"a" * 32}',
               f'.{schema.shard_name(1, 2)}.tmp-{"b" * 32}',
               f'.{relabel.STATS_FILENAME}.tmp-{"c" * 32}']
  for name in leftovers:
    (out / name).write_bytes(b'half written')
  # One shard was renamed into place before the kill.
  first = schema.shard_name(0, 2)
  (out / first).write_bytes((clean / first).read_bytes())
  (out / completion.MARKER_FILENAME).write_text('{"job": "relabel"}')
  with pytest.raises(ValueError, match='unfinished run of relabel'):
    testing.read_records(str(out / schema.shard_pattern()))
  _relabel(rec_pattern, pred_pattern, out)
  assert _files(out) == _files(clean)


def test_a_rerun_on_records_of_another_shard_count_replaces_the_shards(
    tmp_path):
  three = tmp_path / 'three'
  rec3, pred3, _ = make_inputs(str(three), num_shards=3)
  rec2, pred2, _ = make_inputs(str(tmp_path / 'two'))
  out = tmp_path / 'out'
  _relabel(rec3, pred3, out)
  _relabel(rec2, pred2, out)
  assert sorted(n for n in os.listdir(out) if n.startswith('clips-')) == [
      schema.shard_name(i, 2) for i in range(2)]
  keys = [c[schema.CLIP_KEY_KEY]
          for c in testing.parse_all(str(out / schema.shard_pattern()))]
  assert len(keys) == len(set(keys)) == NUM_CLIPS


def _with_schema_version(path, record_number, version):
  with open(path, 'rb') as f:
    raw = list(tfrecord_io.read_records(f, path))
  ex = tf.train.SequenceExample.FromString(raw[record_number])
  ex.context.feature[schema.SCHEMA_VERSION_KEY].int64_list.value[:] = [version]
  # A newer schema may add keys: they must not be copied through unread.
  ex.context.feature['clip/new_in_v2'].int64_list.value.append(7)
  raw[record_number] = ex.SerializeToString()
  with tf.io.TFRecordWriter(path) as w:
    for r in raw:
      w.write(r)


def test_records_of_a_newer_schema_version_are_refused(tmp_path):
  rec_pattern, pred_pattern, _ = make_inputs(str(tmp_path))
  shard = sorted(tf.io.gfile.glob(rec_pattern))[1]
  _with_schema_version(shard, 2, schema.SCHEMA_VERSION + 1)
  out = tmp_path / 'out'
  with pytest.raises(relabel.RelabelError) as e:
    _relabel(rec_pattern, pred_pattern, out)
  # (Its prediction is then one of an unknown clip: the job stops anyway.)
  assert "'schema_version': 1" in str(e.value)
  assert (f'{shard} record 2: schema/version 2 is newer than this code reads '
          f'(1): update the code or rewrite the records') in str(e.value)
  assert sorted(os.listdir(out)) == [completion.MARKER_FILENAME,
                                     relabel.STATS_FILENAME]
  stats = json.loads((out / relabel.STATS_FILENAME).read_text())
  assert stats['status'] == 'failed'
  # The failed run's directory is refused even without the marker.
  (out / completion.MARKER_FILENAME).unlink()
  (out / schema.shard_name(0, 2)).write_bytes(b'')
  with pytest.raises(ValueError, match=re.escape(
      f"{out / relabel.STATS_FILENAME} says its run ended with status "
      f"'failed'")):
    testing.read_records(str(out / schema.shard_pattern()))


def test_a_full_disk_fails_naming_the_shard_and_leaves_no_temporary(
    tmp_path, monkeypatch):
  """In a rerun: the error names the shard, the temporary goes, and the
  first run's shards are refused until a rerun completes."""
  rec_pattern, pred_pattern, _ = make_inputs(str(tmp_path))
  out = tmp_path / 'out'
  _relabel(rec_pattern, pred_pattern, out)
  real = tfrecord_io.write_record_parts
  calls = []

  def full_disk(f, parts):
    calls.append(1)
    if len(calls) > 3:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(f, parts)

  monkeypatch.setattr(tfrecord_io, 'write_record_parts', full_disk)
  with pytest.raises(Exception) as e:
    _relabel(rec_pattern, pred_pattern, out)
  message = str(e.value)
  assert 'No space left on device' in message
  assert any(repr(str(out / schema.shard_name(i, 2))) in message
             for i in range(2)), message
  assert not [n for n in os.listdir(out) if '.tmp-' in n]
  assert completion.MARKER_FILENAME in os.listdir(out)
  with pytest.raises(ValueError, match='unfinished run of relabel'):
    testing.read_records(str(out / schema.shard_pattern()))
  monkeypatch.setattr(tfrecord_io, 'write_record_parts', real)
  _relabel(rec_pattern, pred_pattern, out)
  assert len(testing.read_records(str(out / schema.shard_pattern()))) == (
      NUM_CLIPS)


def test_inputs_of_an_unfinished_run_are_refused_before_anything_is_written(
    tmp_path):
  rec_pattern, pred_pattern, _ = make_inputs(str(tmp_path))
  pred_dir = os.path.dirname(pred_pattern)
  with open(os.path.join(pred_dir, completion.MARKER_FILENAME), 'w') as f:
    f.write('{"job": "predict", "started": "2025-01-01T00:00:00+00:00", '
            '"host": "h"}')
  out = tmp_path / 'out'
  with pytest.raises(ValueError) as e:
    _relabel(rec_pattern, pred_pattern, out)
  assert str(e.value).startswith(
      f'`predictions` pattern: {pred_dir} holds an unfinished run of predict '
      f'(started 2025-01-01T00:00:00+00:00 on h; ')
  assert 'rerun the same command to finish it' in str(e.value)
  assert not out.exists()


def test_another_jobs_output_directory_is_refused(tmp_path):
  rec_pattern, pred_pattern, _ = make_inputs(str(tmp_path))
  out = tmp_path / 'out'
  out.mkdir()
  (out / schema.SUMMARY_FILENAME).write_text('{"job": "write_clips"}')
  with pytest.raises(ValueError, match=re.escape(
      f"output directory '{out}' holds the outputs (or a run) of "
      f"write_clips (summary.json), not relabel")):
    _relabel(rec_pattern, pred_pattern, out)
  assert os.listdir(out) == [schema.SUMMARY_FILENAME]


def test_cli_read_only_output_dir_is_one_line_naming_it(tmp_path):
  rec_pattern, pred_pattern, _ = make_inputs(str(tmp_path))
  out = tmp_path / 'out'
  out.mkdir()
  proc = subprocess.run(read_only.read_only_command(out, [
      sys.executable, '-m', 'tfrecords_tools.relabel',
      f'--records={rec_pattern}', f'--predictions={pred_pattern}',
      '--variant=spl', f'--output_dir={out}']), capture_output=True,
                        text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.splitlines()[-1:] == [
      f"relabel failed: output directory '{out}' is not writable "
      f"(config_relabel.flags: {read_only.read_only_reason()})"], proc.stderr
  assert os.listdir(out) == []
