"""The validation hold-out job: split by video, exact N, renumbered, deterministic."""

import json
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

from tfrecords_tools import holdout
from tfrecords_tools import records
from tfrecords_tools import schema
from tfrecords_tools import testing
from tfrecords_tools import tfrecord_io

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Clips per video (v00, v01, ...); these videos have no title.
CLIPS_PER_VIDEO = (1, 2, 3, 4, 1, 2, 3, 4, 2, 3, 1, 2)
UNTITLED = ('v03', 'v07')
NUM_CLASSES = 3


def _clips():
  """(video id, clip number in the video, old clip/index) in index order."""
  out = []
  for v, n in enumerate(CLIPS_PER_VIDEO):
    for k in range(n):
      out.append((f'v{v:02d}', k, len(out)))
  return out


def write_inputs(directory, *, num_shards=3, duplicate_index=False):
  """Fake clip records of `CLIPS_PER_VIDEO`, spread over shards by index."""
  os.makedirs(directory)
  writers = [tf.io.TFRecordWriter(
      os.path.join(directory, schema.shard_name(s, num_shards)))
             for s in range(num_shards)]
  for video, k, c in _clips():
    clip_index = 0 if duplicate_index and c == 1 else c
    writers[c % num_shards].write(testing.make_fake_clip(
        clip_index, num_frames=2, height=16, width=16,
        num_classes=NUM_CLASSES, video_id=video,
        caption='' if video in UNTITLED else f'{video} title',
        start=2.0 * k, end=2.0 * k + 2.0))
  for w in writers:
    w.close()
  records.write_label_map(os.path.join(directory, schema.LABEL_MAP_FILENAME),
                          [f'class_{i}' for i in range(NUM_CLASSES)])
  return os.path.join(directory, schema.shard_pattern())


def _files(directory):
  """{relative path: bytes} of every file under `directory`."""
  out = {}
  for d, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(d, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out


def _by_key(pattern):
  return {c[schema.CLIP_KEY_KEY]: c for c in testing.parse_all(pattern)}


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  return write_inputs(str(tmp_path_factory.mktemp('holdout') / 'in'))


def test_split_is_by_video_exact_and_renumbered(inputs, tmp_path):
  out = str(tmp_path / 'split')
  report = holdout.holdout(records_pattern=inputs, num_pairs=4,
                           output_dir=out)
  originals = _by_key(inputs)
  train_pattern = os.path.join(out, 'train', schema.shard_pattern())
  val_pattern = os.path.join(out, 'val', schema.shard_pattern())
  train, val = _by_key(train_pattern), _by_key(val_pattern)
  val_videos = {c[schema.VIDEO_ID_KEY] for c in val.values()}

  # Exactly N pairs, one per held-out video, each with its title.
  assert len(val) == 4 and len(val_videos) == 4
  assert not val_videos & set(UNTITLED)
  assert all(c[schema.CAPTION_KEY] for c in val.values())
  # Disjoint by video: no clip of a held-out video is trained on, every
  # clip of the other videos is.
  assert not val_videos & {c[schema.VIDEO_ID_KEY] for c in train.values()}
  assert set(train) == {k for k, c in originals.items()
                        if c[schema.VIDEO_ID_KEY] not in val_videos}
  # The pair is the middle clip (by start) of its video.
  for key, clip in val.items():
    video = clip[schema.VIDEO_ID_KEY]
    starts = sorted(c[schema.CLIP_START_KEY] for c in originals.values()
                    if c[schema.VIDEO_ID_KEY] == video)
    assert clip[schema.CLIP_START_KEY] == starts[(len(starts) - 1) // 2], key

  # clip/index contiguous in both sets, in the old order.
  for got in (train, val):
    keys = sorted(got, key=lambda k: got[k][schema.CLIP_INDEX_KEY])
    assert [got[k][schema.CLIP_INDEX_KEY] for k in keys] == list(
        range(len(got)))
    old = [originals[k][schema.CLIP_INDEX_KEY] for k in keys]
    assert old == sorted(old)
  # Nothing else in a record changes (frames byte for byte).
  for got in (train, val):
    for key, clip in got.items():
      assert {k: v for k, v in clip.items() if k != schema.CLIP_INDEX_KEY} == {
          k: v for k, v in originals[key].items()
          if k != schema.CLIP_INDEX_KEY}, key

  # Side files: the label map as is, summaries with the counts to train on.
  for sub in ('train', 'val'):
    with open(os.path.join(out, sub, schema.LABEL_MAP_FILENAME), 'rb') as f:
      assert f.read() == open(os.path.join(os.path.dirname(inputs),
                                           schema.LABEL_MAP_FILENAME),
                              'rb').read()
  with open(os.path.join(out, 'train', schema.SUMMARY_FILENAME)) as f:
    summary = json.load(f)
  assert summary['clips'] == len(train) == report['train']['clips']
  assert summary['num_shards'] == 3 and sum(
      summary['clips_per_class'].values()) == len(train)
  with open(os.path.join(out, 'val', schema.SUMMARY_FILENAME)) as f:
    assert json.load(f)['clips'] == 4
  with open(os.path.join(out, holdout.HOLDOUT_FILENAME)) as f:
    written = json.load(f)
  assert sorted(written['val_video_ids']) == sorted(val_videos)
  dropped = sum(1 for c in originals.values()
                if c[schema.VIDEO_ID_KEY] in val_videos) - 4
  assert written['dropped_clips'] == dropped
  assert len(train) + 4 + dropped == len(originals)
  # Train shards keep the input names; no temporary file is left.
  assert sorted(_files(out)) == sorted(
      [holdout.HOLDOUT_FILENAME] +
      [f'train/{schema.shard_name(s, 3)}' for s in range(3)] +
      ['val/clips-00000-of-00001.tfrecord'] +
      [f'{d}/{n}' for d in ('train', 'val')
       for n in (schema.LABEL_MAP_FILENAME, schema.SUMMARY_FILENAME)])


def test_deterministic_across_runs_worker_counts_and_shard_layouts(
    inputs, tmp_path):
  runs = []
  for name, workers, args in (
      ('a', 1, ()), ('b', 1, ()),
      ('threads', 2, ('--direct_running_mode=multi_threading',))):
    out = str(tmp_path / name)
    holdout.holdout(records_pattern=inputs, num_pairs=3, output_dir=out,
                    num_val_shards=2, direct_num_workers=workers,
                    beam_args=args)
    runs.append(_files(out))
  assert runs[0] == runs[1] == runs[2]
  assert len([n for n in runs[0] if n.startswith('val/clips-')]) == 2
  # The same clips in another shard layout: the same videos held out and
  # the same validation bytes (the choice hashes video ids, nothing else).
  reshard = write_inputs(str(tmp_path / 'in2'), num_shards=2)
  holdout.holdout(records_pattern=reshard, num_pairs=3, num_val_shards=2,
                  output_dir=str(tmp_path / 'reshard'))
  other = _files(str(tmp_path / 'reshard'))
  for name in ('val/clips-00000-of-00002.tfrecord',
               'val/clips-00001-of-00002.tfrecord'):
    assert other[name] == runs[0][name]
  # Another seed, another split.
  report = holdout.holdout(records_pattern=inputs, num_pairs=3, seed=1,
                           output_dir=str(tmp_path / 'seed1'))
  first = json.loads(runs[0][holdout.HOLDOUT_FILENAME])
  assert report['val_video_ids'] != first['val_video_ids']


def test_multi_process_workers_give_the_same_bytes(inputs, tmp_path):
  runs = []
  for name, workers, args in (
      ('one', 1, ()),
      ('procs', 2, ('--direct_running_mode=multi_processing',))):
    out = str(tmp_path / name)
    holdout.holdout(records_pattern=inputs, num_pairs=3, output_dir=out,
                    direct_num_workers=workers, beam_args=args)
    runs.append(_files(out))
  assert runs[0] == runs[1]


def _read(path):
  """Parsed records of one shard, CRC-checked by our own reader."""
  with open(path, 'rb') as f:
    return [records.parse_clip_example(r)
            for r in tfrecord_io.read_records(f, path)]


def test_validation_pairs_fill_every_val_shard_as_documented(inputs, tmp_path):
  """Pair i goes to val shard i * num_val_shards // num_pairs, last included."""
  out = str(tmp_path / 'out')
  report = holdout.holdout(records_pattern=inputs, num_pairs=5,
                           num_val_shards=3, output_dir=out)
  val_dir = os.path.join(out, 'val')
  assert sorted(n for n in os.listdir(val_dir) if n.startswith('clips-')) == [
      schema.shard_name(s, 3) for s in range(3)]
  got = [_read(os.path.join(val_dir, schema.shard_name(s, 3)))
         for s in range(3)]
  assert [[c[schema.CLIP_INDEX_KEY] for c in x] for x in got] == [
      [0, 1], [2, 3], [4]]
  assert [c[schema.CLIP_KEY_KEY] for x in got for c in x] == (
      report['val_clip_keys'])


def test_empty_input_and_output_train_shards_are_written(tmp_path):
  """Every input shard gives a train shard of its name, empty ones too.

  28 clips over 30 shards (one clip each, the last two empty); the shards of
  held-out videos' clips come out empty. Totals equal the files.
  """
  num_clips = sum(CLIPS_PER_VIDEO)
  pattern = write_inputs(str(tmp_path / 'in'), num_shards=30)
  out = str(tmp_path / 'out')
  report = holdout.holdout(records_pattern=pattern, num_pairs=3,
                           output_dir=out)
  names = [schema.shard_name(s, 30) for s in range(30)]
  train_dir = os.path.join(out, 'train')
  assert sorted(n for n in os.listdir(train_dir)
                if n.startswith('clips-')) == names
  held = set(report['val_video_ids'])
  inputs = [_read(os.path.join(tmp_path / 'in', n)) for n in names]
  outputs = [_read(os.path.join(train_dir, n)) for n in names]
  assert [len(x) for x in inputs] == [1] * num_clips + [0, 0]
  expected = [[c[schema.CLIP_KEY_KEY] for c in x
               if c[schema.VIDEO_ID_KEY] not in held] for x in inputs]
  assert [[c[schema.CLIP_KEY_KEY] for c in x] for x in outputs] == expected
  held_clips = sum(CLIPS_PER_VIDEO[int(v[1:])] for v in held)
  assert sum(not x for x in expected) == held_clips + 2
  for n, x in zip(names, outputs):
    path = os.path.join(train_dir, n)
    assert len(list(tf.data.TFRecordDataset([path]))) == len(x)
    if not x:
      assert os.path.getsize(path) == 0
  indices = sorted(c[schema.CLIP_INDEX_KEY] for x in outputs for c in x)
  assert indices == list(range(num_clips - held_clips))
  with open(os.path.join(train_dir, schema.SUMMARY_FILENAME)) as f:
    summary = json.load(f)
  assert summary['clips'] == report['train']['clips'] == len(indices)
  assert summary['num_shards'] == 30
  assert report['dropped_clips'] == held_clips - 3


def _finish_inputs():
  """A plan's report and matching pass-2 stats (the checked fields only)."""
  report = {'status': 'ok', 'input': {'shards': 2}, 'num_pairs': 2,
            'train': {'clips': 5}, 'dropped_clips': 1}
  train_stats = [{'train': 3, 'val': 1, 'dropped': 1},
                 {'train': 2, 'val': 1, 'dropped': 0}]
  val_stats = [{'indices': [1]}, {'indices': [0]}]
  return report, train_stats, val_stats


def _lose_train_shard(train, val):
  del train[1], val[1]


def _lose_train_clip(train, val):
  del val
  train[0]['train'] -= 1


def _drop_extra(train, val):
  del val
  train[1]['dropped'] += 1


def _misnumber_pairs(train, val):
  del train
  val[1]['indices'] = [1]


def _lose_val_pair(train, val):
  del val
  train[1]['val'] = 0


@pytest.mark.parametrize('tamper,problems', [
    (_lose_train_shard, '1 training shards written of 2; 3 training clips '
     'written, the plan has 5; 1 validation pairs written (1 held out), '
     'expected 2 numbered 0..N-1'),
    (_lose_train_clip, '4 training clips written, the plan has 5'),
    (_drop_extra, '2 clips dropped, the plan drops 1'),
    (_misnumber_pairs, '2 validation pairs written (2 held out), expected 2 '
     'numbered 0..N-1'),
    (_lose_val_pair, '2 validation pairs written (1 held out), expected 2 '
     'numbered 0..N-1'),
])
def test_finish_cross_checks_the_totals(tmp_path, tamper, problems):
  """Each disagreement of pass 2 with the plan is named; nothing is written."""
  report, train_stats, val_stats = _finish_inputs()
  tamper(train_stats, val_stats)
  with pytest.raises(holdout.HoldoutError) as e:
    holdout.finish(None, report, train_stats, val_stats,
                   output_dir=str(tmp_path / 'out'),
                   temp_dir=str(tmp_path / 'tmp'), side_files={},
                   num_classes=3, records_pattern='x', train_pattern='x')
  assert str(e.value) == 'holdout totals do not add up: ' + problems
  assert not os.listdir(tmp_path)


def test_a_stage_that_loses_a_clip_fails_the_job(inputs, tmp_path,
                                                 monkeypatch):
  """Pass 2 reporting a training clip fewer than planned fails the job."""
  real = holdout.rewrite_shard

  def lossy(in_path, out_path, part_path, plan, **kwargs):
    stats, pieces = real(in_path, out_path, part_path, plan, **kwargs)
    if in_path.endswith(schema.shard_name(0, 3)):
      stats['train'] -= 1
    return stats, pieces

  monkeypatch.setattr(holdout, 'rewrite_shard', lossy)
  out = str(tmp_path / 'out')
  with pytest.raises(holdout.HoldoutError) as e:
    holdout.holdout(records_pattern=inputs, num_pairs=1, output_dir=out)
  # Beam may append the stage name; nothing but this problem is reported.
  found = re.match(r'holdout totals do not add up: (\d+) training clips '
                   r'written, the plan has (\d+)( \[while running|$)',
                   str(e.value))
  assert found, str(e.value)
  written, planned = int(found.group(1)), int(found.group(2))
  # The plan trains on every clip but those of the held-out video.
  assert planned in {sum(CLIPS_PER_VIDEO) - n for n in CLIPS_PER_VIDEO}
  assert written == planned - 1
  # Nothing says the split is complete.
  assert not os.path.exists(os.path.join(out, holdout.HOLDOUT_FILENAME))


def test_context_rewrite_is_tensorflows_serialisation():
  kwargs = dict(frames=[b'jpeg0', b'jpeg1'], video_id='v', start=1.5, end=3.5,
                frame_rate=25.0, height=16, width=16, label_index=2,
                label_text='class_2', caption='a title', teacher_index=1,
                teacher_score=0.5, label_space_id='spl-1')
  before = records.make_clip_example(clip_index=123456, **kwargs)
  after = records.make_clip_example(clip_index=7, **kwargs)
  context, rest = tfrecord_io.split_sequence_example(
      before.SerializeToString(deterministic=True))
  entries = holdout.parse_context(context)
  assert holdout.int64_values(entries[schema.CLIP_INDEX_KEY]) == [123456]
  assert holdout.float_values(entries[schema.CLIP_START_KEY]) == [1.5]
  assert holdout.bytes_values(entries[schema.CAPTION_KEY]) == [b'a title']
  rewritten = tfrecord_io.context_field(
      holdout.context_with_index(entries, 7)) + b''.join(rest)
  assert rewritten == after.SerializeToString(deterministic=True)


def _assert_nothing_written(out):
  assert not os.path.exists(out) or not _files(out), _files(out)


def test_splits_the_data_cannot_give_are_refused_naming_the_flag(
    inputs, tmp_path):
  out = str(tmp_path / 'out')
  titled = len(CLIPS_PER_VIDEO) - len(UNTITLED)
  with pytest.raises(holdout.HoldoutError,
                     match=f'`--num_pairs`={titled + 1} is more than the '
                     f'{titled} videos with a title'):
    holdout.holdout(records_pattern=inputs, num_pairs=titled + 1,
                    output_dir=out)
  _assert_nothing_written(out)
  with pytest.raises(ValueError, match='`--num_pairs` must be >= 1'):
    holdout.holdout(records_pattern=inputs, num_pairs=0, output_dir=out)
  with pytest.raises(ValueError, match='`--num_val_shards`'):
    holdout.holdout(records_pattern=inputs, num_pairs=2, num_val_shards=3,
                    output_dir=out)
  with pytest.raises(ValueError, match='input directory'):
    holdout.holdout(records_pattern=inputs, num_pairs=2,
                    output_dir=os.path.dirname(inputs))
  with pytest.raises(ValueError, match='`--records`.*matches no files'):
    holdout.holdout(records_pattern=str(tmp_path / 'none-*'), num_pairs=2,
                    output_dir=out)
  _assert_nothing_written(out)

  # Every video titled and held out: no training clip would be left.
  everything = str(tmp_path / 'all')
  os.makedirs(everything)
  with tf.io.TFRecordWriter(os.path.join(everything,
                                         schema.shard_name(0, 1))) as w:
    for c in range(4):
      w.write(testing.make_fake_clip(c, num_frames=1, height=8, width=8))
  records.write_label_map(os.path.join(everything, schema.LABEL_MAP_FILENAME),
                          ['class_0', 'class_1', 'class_2'])
  with pytest.raises(holdout.HoldoutError, match='`--num_pairs`=2 holds out '
                     'every one of the 2 videos: no training clip'):
    holdout.holdout(records_pattern=os.path.join(everything, 'clips-*'),
                    num_pairs=2, output_dir=out)
  _assert_nothing_written(out)


def test_broken_inputs_are_refused_and_nothing_is_written(tmp_path):
  out = str(tmp_path / 'out')
  os.makedirs(out)  # An existing empty directory stays empty.
  duplicated = write_inputs(str(tmp_path / 'dup'), duplicate_index=True)
  with pytest.raises(holdout.HoldoutError, match='duplicate_index'):
    holdout.holdout(records_pattern=duplicated, num_pairs=2, output_dir=out)
  _assert_nothing_written(out)

  truncated = write_inputs(str(tmp_path / 'trunc'))
  shard = sorted(tf.io.gfile.glob(truncated))[1]
  with open(shard, 'rb') as f:
    data = f.read()
  with open(shard, 'wb') as f:
    f.write(data[:-100])
  with pytest.raises(holdout.HoldoutError, match='corrupt_shard'):
    holdout.holdout(records_pattern=truncated, num_pairs=2, output_dir=out)
  _assert_nothing_written(out)


def test_rerun_replaces_and_stale_shards_are_refused(inputs, tmp_path):
  out = str(tmp_path / 'out')
  holdout.holdout(records_pattern=inputs, num_pairs=2, output_dir=out)
  first = _files(out)
  holdout.holdout(records_pattern=inputs, num_pairs=2, output_dir=out)
  assert _files(out) == first
  # A split with 2 validation shards would leave the old single one in
  # the glob: refused before anything changes.
  with pytest.raises(ValueError, match='holds shards this split would not '
                     'overwrite'):
    holdout.holdout(records_pattern=inputs, num_pairs=2, num_val_shards=2,
                    output_dir=out)
  assert _files(out) == first


def test_command_line(inputs, tmp_path):
  out = str(tmp_path / 'cli')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  cmd = [sys.executable, '-m', 'tfrecords_tools.holdout',
         f'--records={inputs}', f'--output_dir={out}']
  bad = subprocess.run(cmd + ['--num_pairs=11'], cwd=ROOT, env=env,
                       capture_output=True, text=True, check=False)
  assert bad.returncode != 0
  assert '`--num_pairs`=11 is more than the 10 videos' in bad.stderr
  _assert_nothing_written(out)
  good = subprocess.run(cmd + ['--num_pairs=2'], cwd=ROOT, env=env,
                        capture_output=True, text=True, check=True)
  assert '2 validation pairs' in good.stdout
  assert 'NUM_TRAIN_EXAMPLES=' in good.stdout
  assert os.path.exists(os.path.join(out, holdout.HOLDOUT_FILENAME))
