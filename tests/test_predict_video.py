"""`python -m spl.predict_video`: raw videos predicted as their records are.

Real videos (PyAV) go through the real clip writer (Beam job) into records,
which `spl.main --mode=predict` predicts; the same videos given to
`predict_video` must give the same clips, the same JPEG frames and the same
probabilities.
"""

import csv
import dataclasses
import glob
import inspect
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from spl import export
from spl import main
from spl import predict_video
from tfrecords_tools import records
from tfrecords_tools import schema
from tfrecords_tools import testing
from tfrecords_tools import video as video_lib
from tfrecords_tools import write_clips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = os.path.join(ROOT, 'gin_configs', 'runs')
TINY = os.path.join(ROOT, 'gin_configs', 'tiny.gin')
NUM_CLASSES = 3
CPU = '/cpu:0'
# Tiny writer settings: 1 s clips at 10 fps, short side 36 (the teacher's
# evaluation view, tiny.gin: short side 32, 2 test clips of 4 frames, so the
# frames are resized, as they are in real runs).
WRITER = dict(clip_seconds=1.0, fps=10.0, short_side=36, jpeg_quality=90)


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def _env():
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=ROOT)


def _predictions(model_dir, pattern, out, device_finishing):
  """clip key -> probabilities [C] of `spl.main --mode=predict`."""
  gin.clear_config()
  main.run([os.path.join(RUNS, 'predict_teacher.gin'), TINY],
           [f"PREDICT_FILES='{pattern}'", f"PREDICTIONS_DIR='{out}'",
            f'NUM_CLASSES={NUM_CLASSES}',
            f'eval/make_dataset.device_finishing={device_finishing}'],
           model_dir=str(model_dir), mode='predict',
           strategy=tf.distribute.OneDeviceStrategy(CPU))
  gin.clear_config()
  probs = {}
  for path in sorted(glob.glob(os.path.join(out, 'predictions-*.tfrecord'))):
    for r in tf.data.TFRecordDataset(path):
      p = records.parse_prediction_example(r.numpy())
      row = np.zeros(NUM_CLASSES)
      row[p['prediction/top_k/index']] = p['prediction/top_k/score']
      probs[p['clip/key']] = row
  return probs


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('predict_video')
  testing.write_fake_clip_records(str(root / 'train'), num_clips=8,
                                  num_shards=2, num_classes=NUM_CLASSES)
  train = str(root / 'train' / schema.shard_pattern())
  model_dir = root / 'model'
  main.run([os.path.join(RUNS, 'train_teacher.gin'), TINY],
           [f"TRAIN_FILES='{train}'", f"EVAL_FILES='{train}'",
            'NUM_TRAIN_EXAMPLES=8', f'NUM_CLASSES={NUM_CLASSES}'],
           model_dir=str(model_dir), mode='train_and_eval',
           strategy=tf.distribute.OneDeviceStrategy(CPU))
  gin.clear_config()
  # Landscape 3 s (3 clips) and portrait 2.6 s (2 clips: the writer drops
  # the last 0.6 s, not a whole clip).
  videos = [testing.write_test_video(str(root / 'a.mp4'), seconds=3.0,
                                     fps=10, width=64, height=48),
            testing.write_test_video(str(root / 'b.mp4'), seconds=2.6,
                                     fps=10, width=48, height=64)]
  with open(root / 'manifest.csv', 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(['path', 'label'])
    w.writerows([('a.mp4', 'x'), ('b.mp4', 'y')])
  write_clips.run_writer(str(root / 'manifest.csv'), write_clips.WriterConfig(
      output_dir=str(root / 'records'), num_shards=2, video_timeout=60.0,
      **WRITER))
  pattern = str(root / 'records' / schema.shard_pattern())
  return {
      'root': root, 'model_dir': str(model_dir), 'videos': videos,
      'records_dir': str(root / 'records'), 'pattern': pattern,
      'label_map': str(root / 'train' / schema.LABEL_MAP_FILENAME),
      'records': {r[schema.CLIP_KEY_KEY]: r
                  for r in testing.parse_all(pattern)},
      'host': _predictions(model_dir, pattern, str(root / 'pred_host'),
                           False),
      'device': _predictions(model_dir, pattern, str(root / 'pred_device'),
                             True)}


def _check_against_records(results, setup, expected, atol):
  keys = []
  for video, result in zip(setup['videos'], results):
    clips = result['clips']
    keys += [c['key'] for c in clips]
    probs = np.array([c['probabilities'] for c in clips])
    np.testing.assert_allclose(
        probs, [expected[c['key']] for c in clips], atol=atol, rtol=0)
    # A video's probabilities: the mean over its clips, as evaluation does.
    np.testing.assert_allclose(result['probabilities'], probs.mean(axis=0),
                               atol=1e-7)
    top = [c['probability'] for c in result['top_k']]
    assert top == sorted(top, reverse=True) and len(top) == NUM_CLASSES
    assert result['path'] == video
  assert sorted(keys) == sorted(expected)  # Every written clip, no other.


def test_raw_videos_predict_what_their_records_predict(setup):
  settings = predict_video.WriterSettings.resolve(setup['records_dir'])
  assert dataclasses.asdict(settings) == dict(
      WRITER, min_clip_seconds=0.5, clips_per_video=None)
  predictor = predict_video.make_predictor(
      model_dir=setup['model_dir'], saved_model=None,
      class_names=setup['label_map'])
  assert predictor.view.num_test_clips == 2  # The run's eval view.
  results = predict_video.predict_videos(setup['videos'], predictor,
                                         settings, top_k=5)
  assert [len(r['clips']) for r in results] == [3, 2]
  # Same float ops on the same pixels: equal up to summation order.
  _check_against_records(results, setup, setup['host'], atol=1e-6)
  assert results[0]['top_k'][0]['name'].startswith('class_')
  # Different clips give different probabilities: the check can fail.
  spread = np.ptp([c['probabilities'] for r in results for c in r['clips']],
                  axis=0)
  assert spread.max() > 1e-3

  # Because the frames are the records' JPEG bytes, exactly.
  decoder = video_lib.TimeLimitedDecoder(60.0)
  try:
    for path in setup['videos']:
      info, windows = predict_video.probe_video(path, settings, decoder)
      clips = predict_video.decode_video(path, info, windows, settings,
                                         decoder)
      video_id = os.path.splitext(os.path.basename(path))[0]
      for c in clips:
        record = setup['records'][schema.make_clip_key(video_id, c.start)]
        assert c.frames == record[schema.IMAGE_KEY]
  finally:
    decoder.close()


def test_saved_model_predicts_what_uint8_views_of_records_predict(
    setup, tmp_path):
  export.export(setup['model_dir'], str(tmp_path / 'exported'),
                class_names=setup['label_map'])
  predictor = predict_video.make_predictor(
      model_dir=None, saved_model=str(tmp_path / 'exported'))
  assert predictor.class_names == ['class_0', 'class_1', 'class_2']
  results = predict_video.predict_videos(
      setup['videos'], predictor,
      predict_video.WriterSettings.resolve(setup['records_dir']))
  # The export takes the uint8 views of `device_finishing`: equal to the
  # records' predictions made with device finishing...
  _check_against_records(results, setup, setup['device'], atol=1e-6)
  # ... and within the uint8 rounding of the resized frames (< 0.5 grey
  # level) of the default evaluation (measured: 2e-5).
  _check_against_records(results, setup, setup['host'], atol=2e-4)


def _cli(cwd, *args):
  return subprocess.run(
      [sys.executable, '-m', 'spl.predict_video', *args], cwd=str(cwd),
      env=_env(), capture_output=True, text=True, timeout=300, check=False)


def test_cli_prints_top_classes_per_video(setup, tmp_path):
  out = tmp_path / 'predictions.json'
  done = _cli(tmp_path, f'--model_dir={setup["model_dir"]}',
              f'--records_dir={setup["records_dir"]}',
              f'--class_names={setup["label_map"]}', '--top_k=2',
              f'--output_json={out}', *setup['videos'])
  assert done.returncode == 0, done.stderr[-3000:]
  with open(out) as f:
    written = json.load(f)
  lines = done.stdout.strip().splitlines()
  assert len(lines) == 2 * 3
  for i, video in enumerate(written['videos']):
    assert lines[3 * i] == (f'{video["path"]}  ({len(video["clips"])} clips, '
                            f'{video["duration"]:.1f} s)')
    for rank, top in enumerate(video['top_k'], 1):
      assert lines[3 * i + rank] == (
          f'  {rank}. {top["probability"]:.4f}  {top["name"]}')
    for c in video['clips']:
      np.testing.assert_allclose(c['probabilities'], setup['host'][c['key']],
                                 atol=1e-6)
  assert written['settings']['short_side'] == 36


def test_cli_help_and_one_line_errors(setup, tmp_path):
  helped = _cli(tmp_path, '--help')  # absl exits 1 after printing help.
  listed = helped.stdout.split('\nflags:\n')[1]
  for flag in ('--model_dir', '--saved_model', '--records_dir', '--fps',
               '--short_side', '--num_test_clips', '--top_k'):
    assert flag in listed, flag
  assert '--mode:' not in listed

  bad = tmp_path / 'bad.mp4'
  bad.write_text('not a video')
  for args, message in [
      ([f'--model_dir={setup["model_dir"]}', str(bad)],
       f'spl.predict_video: unreadable: {bad}: not a readable video'),
      ([f'--model_dir={tmp_path / "nope"}', setup['videos'][0]],
       f"spl.predict_video: --model_dir '{tmp_path / 'nope'}' does not "
       'exist')]:
    done = _cli(tmp_path, *args)
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(message), (
        done.stderr[-2000:])
    assert 'Traceback' not in done.stderr


def test_writer_settings_and_bad_input(setup, tmp_path):
  # The defaults are the clip writer's.
  params = inspect.signature(write_clips.WriterConfig.__init__).parameters
  defaults = predict_video.WriterSettings()
  for name in ('fps', 'short_side', 'jpeg_quality', 'clip_seconds',
               'min_clip_seconds', 'clips_per_video'):
    assert getattr(defaults, name) == params[name].default, name
  # Flags override the records' summary.json.
  settings = predict_video.WriterSettings.resolve(
      setup['records_dir'], fps=5.0, short_side=None)
  assert (settings.fps, settings.short_side) == (5.0, 36)
  for kwargs, match in [({'fps': 0.0}, '--fps must be > 0'),
                        ({'jpeg_quality': 101}, '--jpeg_quality'),
                        ({'min_clip_seconds': 20.0}, '--min_clip_seconds')]:
    with pytest.raises(ValueError, match=match):
      predict_video.WriterSettings(**kwargs)
  with pytest.raises(ValueError, match=r"--records_dir '.*' has no "
                     'summary.json'):
    predict_video.WriterSettings.resolve(str(tmp_path))
  with pytest.raises(ValueError, match='exactly one of --model_dir and '
                     '--saved_model'):
    predict_video.make_predictor(model_dir=None, saved_model=None)
  with pytest.raises(ValueError, match='holds no checkpoint'):
    predict_video.make_predictor(model_dir=str(tmp_path), saved_model=None)
  # This model trains and evaluates on 4x32^2 clips, so model.json fixes them.
  with pytest.raises(ValueError, match='--crop_size=48 disagrees with the '
                     'model, which takes crop_size=32'):
    predict_video.make_predictor(model_dir=setup['model_dir'],
                                 saved_model=None,
                                 view_overrides={'crop_size': 48})
  # A video shorter than half a clip: refused by name before decoding.
  short = testing.write_test_video(str(tmp_path / 'short.mp4'), seconds=0.3,
                                   fps=10)
  decoder = video_lib.TimeLimitedDecoder(60.0)
  try:
    with pytest.raises(video_lib.VideoError,
                       match=r'too_short: .*short.mp4: 0.30 s is shorter'):
      predict_video.probe_video(
          short, predict_video.WriterSettings(**WRITER), decoder)
  finally:
    decoder.close()
