r"""Top classes of raw video files, predicted as evaluation predicts records.

  python -m spl.predict_video --model_dir=WS/models/teacher \
    --class_names=WS/records/target/label_map.json \
    --records_dir=WS/records/target a.mp4 b.mkv
  python -m spl.predict_video --saved_model=WS/exported/teacher a.mp4

For each video it prints the top `--top_k` classes with their names and
probabilities (`--output_json` also writes every clip's probabilities).

A video goes through the code that makes and evaluates clip records:

1. Clips as the clip writer cuts them (`tfrecords_tools.video`, in the same
   time-limited decoder child process): every non-overlapping
   `--clip_seconds` window (or `--clips_per_video` evenly spread, as the
   writer's flag), frames resampled to `--fps`, the short side resized to
   `--short_side` (swscale, area filter), JPEG-encoded at `--jpeg_quality`.
   Defaults: the writer's (25 fps, 256, 90, 10 s), or what
   `--records_dir`'s `summary.json` (the writer's completion record) says
   the model's records were written with; each flag overrides.
2. Each clip becomes an in-memory clip record (`tfrecords_tools.records`)
   and is read by the evaluation input pipeline (`spl.input_pipeline`,
   `is_training=False`): `num_test_clips` windows of `num_frames` frames
   `stride` apart, short side to `min_resize`, `num_test_crops` crops (1: the
   centre), normalised. The view is the run's (`spl.export.read_eval_view`:
   its config.gin, eval scope first) or the SavedModel's
   `export_config.json`; `--num_test_clips` etc. override.
3. A clip's probabilities are the softmax averaged over its views
   (`spl.metrics.average_views`), a video's the mean over its clips (what
   evaluation reports per video).

So a video predicts what its records would: the writer's JPEG frames are
reproduced byte for byte (same decoder, resampling, resize and encoder, not
the decoded frames, which would differ from the records by the JPEG round
trip), then the same pipeline runs. With `--model_dir` the probabilities equal
those `spl.main --mode=predict` gives for the video's records up to float
rounding. A SavedModel (`spl.export`) takes uint8 views, i.e. the views
`make_dataset(device_finishing=True)` makes (resized on the host and rounded
to uint8): the same as the records' evaluation with device finishing, and
within that rounding (half a grey level of a resized pixel) of the default
host-finishing evaluation; no rounding at all when the frames need no resize
(records written at short side `min_resize`, as the SPL runs do: 256).

A missing model dir, a dir without checkpoint, an unreadable or too short
video: one line naming it, exit status 1, before any video is decoded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from spl import export as export_lib
from spl import input_pipeline
from spl import metrics
from tfrecords_tools import cli
from tfrecords_tools import records
from tfrecords_tools import schema
from tfrecords_tools import video as video_lib

PROGRAM = 'spl.predict_video'
_VIEW_FLAGS = ('stride', 'min_resize', 'num_test_clips', 'num_test_crops')


def _define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string('model_dir', None, 'Training run of an SPL classifier '
                      '(model.json, checkpoints, config.gin).', flag_values=fv)
  flags.DEFINE_string('saved_model', None, 'A classifier exported by '
                      'spl.export (instead of --model_dir).', flag_values=fv)
  flags.DEFINE_string('checkpoint', None, 'With --model_dir: a checkpoint '
                      'prefix instead of the latest.', flag_values=fv)
  flags.DEFINE_multi_string('gin_file', [], 'With --model_dir: the run\'s gin '
                            'files (default: --model_dir/config.gin).',
                            flag_values=fv)
  flags.DEFINE_multi_string('gin_bindings', [], 'Extra gin bindings.',
                            flag_values=fv)
  flags.DEFINE_string('class_names', None, 'label_map.json or '
                      'label_space.json (default: the model\'s).',
                      flag_values=fv)
  flags.DEFINE_string('records_dir', None, 'Clip records the model was '
                      'evaluated on: their summary.json gives the writer '
                      'settings below.', flag_values=fv)
  flags.DEFINE_float('fps', None, 'Frame rate of the clips (writer: 25).',
                     flag_values=fv)
  flags.DEFINE_integer('short_side', None, 'Short side of the frames '
                       '(writer: 256; 0 keeps the size).', flag_values=fv)
  flags.DEFINE_integer('jpeg_quality', None, 'JPEG quality of the frames '
                       '(writer: 90).', flag_values=fv)
  flags.DEFINE_float('clip_seconds', None, 'Clip length (writer: 10).',
                     flag_values=fv)
  flags.DEFINE_float('min_clip_seconds', None, 'Shortest clip kept (writer: '
                     'clip_seconds / 2).', flag_values=fv)
  flags.DEFINE_integer('clips_per_video', None, 'At most K clips, evenly '
                       'spread (writer: every non-overlapping clip).',
                       flag_values=fv)
  for name in _VIEW_FLAGS:
    flags.DEFINE_integer(name, None, f'Evaluation view: {name} (default: '
                         'the model\'s).', flag_values=fv)
  flags.DEFINE_integer('top_k', 5, 'Classes printed per video.', flag_values=fv)
  flags.DEFINE_integer('batch_size', 1, 'Clips per model call.', flag_values=fv)
  flags.DEFINE_float('video_timeout', 600.0, 'Seconds one video may take to '
                     'probe or decode.', flag_values=fv)
  flags.DEFINE_integer('decode_threads', 0, 'FFmpeg threads (0: FFmpeg '
                       'decides).', flag_values=fv)
  flags.DEFINE_string('output_json', None, 'Also write every clip\'s '
                      'probabilities here.', flag_values=fv)


# ---- Clips as the writer cuts them ----


@dataclasses.dataclass(frozen=True)
class WriterSettings:
  """How `tfrecords_tools.write_clips` cut and encoded the model's clips.

  Defaults are the writer's (`WriterConfig` and its flags).
  """
  fps: float = 25.0
  short_side: int = 256
  jpeg_quality: int = 90
  clip_seconds: float = 10.0
  min_clip_seconds: Optional[float] = None  # None: clip_seconds / 2.
  clips_per_video: Optional[int] = None  # None: every clip.

  def __post_init__(self):
    if not self.fps > 0:
      raise ValueError(f'--fps must be > 0, got {self.fps}')
    if self.short_side < 0:
      raise ValueError(f'--short_side must be >= 0, got {self.short_side}')
    if not 1 <= self.jpeg_quality <= 100:
      raise ValueError(f'--jpeg_quality must be in [1, 100], got '
                       f'{self.jpeg_quality}')
    if not self.clip_seconds > 0:
      raise ValueError(f'--clip_seconds must be > 0, got {self.clip_seconds}')
    if not 0 < self.minimum <= self.clip_seconds:
      raise ValueError(f'--min_clip_seconds must be in (0, clip_seconds], '
                       f'got {self.min_clip_seconds}')
    if self.clips_per_video is not None and self.clips_per_video < 1:
      raise ValueError(f'--clips_per_video must be > 0, got '
                       f'{self.clips_per_video}')

  @property
  def minimum(self) -> float:
    return (self.clip_seconds / 2 if self.min_clip_seconds is None
            else self.min_clip_seconds)

  @classmethod
  def resolve(cls, records_dir: Optional[str] = None,
              **overrides) -> 'WriterSettings':
    """The writer's defaults < `records_dir`'s summary.json < `overrides`
    (None values ignored)."""
    values: Dict[str, Any] = {}
    if records_dir:
      path = os.path.join(records_dir, schema.SUMMARY_FILENAME)
      if not tf.io.gfile.exists(path):
        raise ValueError(f'--records_dir {records_dir!r} has no '
                         f'{schema.SUMMARY_FILENAME} (the clip writer\'s '
                         'completion record)')
      with tf.io.gfile.GFile(path) as f:
        written = json.load(f).get('config', {})
      fields = {f.name for f in dataclasses.fields(cls)}
      values.update({k: v for k, v in written.items() if k in fields})
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**values)


def probe_video(path: str, settings: WriterSettings,
                decoder: video_lib.TimeLimitedDecoder):
  """(info, clip windows) of a video; a VideoError names what is wrong."""
  info = decoder.probe(path)
  windows = video_lib.plan_windows(
      (0.0, info.duration), clip_seconds=settings.clip_seconds,
      num_clips=settings.clips_per_video,
      min_clip_seconds=settings.minimum)
  if not windows:
    raise video_lib.VideoError(
        video_lib.TOO_SHORT, f'{path}: {info.duration:.2f} s is shorter than '
        f'one clip (min {settings.minimum:g} s)')
  return info, windows


def decode_video(path: str, info: video_lib.VideoInfo, windows,
                 settings: WriterSettings,
                 decoder: video_lib.TimeLimitedDecoder,
                 threads: int = 0) -> List[video_lib.DecodedClip]:
  """The video's clips, decoded and JPEG-encoded as the writer does."""
  clips = list(decoder.decode(
      path, windows, fps=settings.fps, short_side=settings.short_side,
      jpeg_quality=settings.jpeg_quality,
      min_clip_seconds=settings.minimum, rotation=info.rotation,
      threads=threads))
  if not clips:
    raise video_lib.VideoError(video_lib.NO_FRAMES,
                               f'{path}: no clip could be decoded')
  return clips


def clip_records(clips: Sequence[video_lib.DecodedClip], video_id: str,
                 fps: float) -> List[bytes]:
  """Serialized clip records of a video's clips (clip index = position)."""
  return [records.make_clip_example(
      frames=c.frames, clip_index=i, video_id=video_id, start=c.start,
      end=c.end, frame_rate=fps, height=c.height, width=c.width,
      label_index=0, label_text='').SerializeToString(deterministic=True)
          for i, c in enumerate(clips)]


# ---- Models ----


class KerasPredictor:
  """A run's classifier restored from its model dir (`spl.export`)."""

  def __init__(self, trained: export_lib.TrainedClassifier):
    self.view = trained.view
    self.class_names = trained.class_names
    self.device_finishing = trained.view.device_finishing
    model = trained.model

    @tf.function(reduce_retracing=True)
    def step(features):
      # What `spl.prediction.predict` does per batch.
      features = input_pipeline.finish_features(features)
      video = features[input_pipeline.VIDEO]
      flat = tf.reshape(video, tf.concat([[-1], tf.shape(video)[2:]], 0))
      return metrics.average_views(
          tf.cast(model(flat, training=False), tf.float32), video.shape[1])
    self._step = step

  def __call__(self, batch: Dict[str, tf.Tensor]) -> np.ndarray:
    return self._step(input_pipeline.video_features(batch)).numpy()


class SavedModelPredictor:
  """A classifier exported by `spl.export`: it takes uint8 views."""

  device_finishing = True  # The views as uint8, finished by the signature.

  def __init__(self, path: str, *, class_names: Optional[str] = None,
               view_overrides: Optional[Dict[str, Any]] = None):
    if not tf.io.gfile.isdir(path):
      raise ValueError(f'--saved_model {path!r} does not exist')
    config = export_lib.read_export_config(path)
    if config['kind'] != export_lib.CLASSIFIER:
      raise ValueError(f'--saved_model {path!r} is a {config["kind"]} export, '
                       'not a classifier')
    view = export_lib.EvalView.from_json(config['eval_view'])
    overrides = {k: v for k, v in (view_overrides or {}).items()
                 if v is not None}
    self.view = dataclasses.replace(view, **overrides, device_finishing=True)
    loaded = tf.saved_model.load(path)
    self._loaded = loaded  # Keeps the signature's variables alive.
    self._serve = loaded.signatures[export_lib.SERVING]
    names = [n.decode('utf-8') for n in loaded.class_names.numpy()]
    if class_names:
      given = export_lib.load_class_names(class_names)
      if len(given) != len(names):
        raise ValueError(f'--class_names {class_names!r} names {len(given)} '
                         f'classes but the model has {len(names)}')
      names = given
    self.class_names = names

  def __call__(self, batch: Dict[str, tf.Tensor]) -> np.ndarray:
    video = batch[input_pipeline.VIDEO]
    flat = tf.reshape(video, tf.concat([[-1], tf.shape(video)[2:]], 0))
    probs = self._serve(video=flat)['probabilities'].numpy()
    return probs.reshape(video.shape[0], video.shape[1], -1).mean(axis=1)


def predict_records(path: str, predictor, *, batch_size: int = 1
                    ) -> np.ndarray:
  """Per-record probabilities [R, C] (record order) of one TFRecord file."""
  view = predictor.view
  ds = input_pipeline.make_dataset(
      path, is_training=False, batch_size=batch_size, deterministic=True,
      repeat=False, drop_remainder=False,
      **view.dataset_kwargs(device_finishing=predictor.device_finishing))
  out = {}
  for batch in ds:
    probs = predictor(batch)
    for i, p in zip(batch[input_pipeline.CLIP_INDEX].numpy(), probs):
      out[int(i)] = p
  return np.stack([out[i] for i in range(len(out))])


def predict_videos(paths: Sequence[str], predictor,
                   settings: WriterSettings, *, top_k: int = 5,
                   batch_size: int = 1, video_timeout: float = 600.0,
                   decode_threads: int = 0) -> List[Dict[str, Any]]:
  """Predicts each video from its clips; what `main` does.

  Every video is probed before any is decoded, so a bad file fails the
  job at once, by name.

  Args:
    paths: video files.
    predictor: `KerasPredictor` or `SavedModelPredictor`.
    settings: how the writer cut and encoded clips.
    top_k: classes reported per video.
    batch_size: clips per model call.
    video_timeout: seconds one video may take to probe or decode.
    decode_threads: FFmpeg threads per video.

  Returns:
    Per video: path, duration, clips (key as the writer names it, start,
    end, probabilities),
    probabilities (the clips' mean) and top_k (index, name, probability).
  """
  if not paths:
    raise ValueError('give at least one video file')
  if top_k < 1:
    raise ValueError(f'--top_k must be > 0, got {top_k}')
  if batch_size < 1:
    raise ValueError(f'--batch_size must be > 0, got {batch_size}')
  decoder = video_lib.TimeLimitedDecoder(video_timeout)
  results = []
  try:
    probed = [probe_video(p, settings, decoder) for p in paths]
    for path, (info, windows) in zip(paths, probed):
      clips = decode_video(path, info, windows, settings, decoder,
                           decode_threads)
      video_id = os.path.splitext(os.path.basename(path))[0]
      with tempfile.TemporaryDirectory() as scratch:
        file = os.path.join(scratch, 'clips.tfrecord')
        with tf.io.TFRecordWriter(file) as writer:
          for r in clip_records(clips, video_id, settings.fps):
            writer.write(r)
        probs = predict_records(file, predictor, batch_size=batch_size)
      mean = probs.mean(axis=0)
      order = np.argsort(-mean, kind='stable')[:top_k]
      results.append({
          'path': path, 'duration': info.duration,
          'clips': [{'key': schema.make_clip_key(video_id, c.start),
                     'start': c.start, 'end': c.end,
                     'probabilities': p.tolist()}
                    for c, p in zip(clips, probs)],
          'probabilities': mean.tolist(),
          'top_k': [{'index': int(i), 'name': predictor.class_names[i],
                     'probability': float(mean[i])} for i in order]})
      logging.info('%s: %d clips', path, len(clips))
  finally:
    decoder.close()
  return results


def format_results(results: Sequence[Dict[str, Any]]) -> str:
  lines = []
  for r in results:
    lines.append(f'{r["path"]}  ({len(r["clips"])} clips, '
                 f'{r["duration"]:.1f} s)')
    for rank, c in enumerate(r['top_k'], 1):
      lines.append(f'  {rank}. {c["probability"]:.4f}  {c["name"]}')
  return '\n'.join(lines)


def make_predictor(*, model_dir: Optional[str], saved_model: Optional[str],
                   checkpoint: Optional[str] = None,
                   gin_files: Sequence[str] = (),
                   gin_bindings: Sequence[str] = (),
                   class_names: Optional[str] = None,
                   view_overrides: Optional[Dict[str, Any]] = None):
  """The predictor of `--model_dir` or `--saved_model` (exactly one)."""
  if bool(model_dir) == bool(saved_model):
    raise ValueError('set exactly one of --model_dir and --saved_model')
  if saved_model:
    return SavedModelPredictor(saved_model, class_names=class_names,
                               view_overrides=view_overrides)
  return KerasPredictor(export_lib.load_classifier(
      model_dir, checkpoint=checkpoint, gin_files=gin_files,
      gin_bindings=gin_bindings, class_names=class_names,
      view_overrides=view_overrides))


def main(args: cli.Args) -> int:
  """Predicts the videos of a parsed command line; the exit status."""
  FLAGS = args.flags  # pylint: disable=invalid-name
  paths = list(args.positional)
  try:
    settings = WriterSettings.resolve(
        FLAGS.records_dir, fps=FLAGS.fps, short_side=FLAGS.short_side,
        jpeg_quality=FLAGS.jpeg_quality, clip_seconds=FLAGS.clip_seconds,
        min_clip_seconds=FLAGS.min_clip_seconds,
        clips_per_video=FLAGS.clips_per_video)
    if not paths:
      raise ValueError('give at least one video file')
    for path in paths:
      if not os.path.isfile(path):
        raise ValueError(f'video {path!r} does not exist')
    predictor = make_predictor(
        model_dir=FLAGS.model_dir, saved_model=FLAGS.saved_model,
        checkpoint=FLAGS.checkpoint, gin_files=FLAGS.gin_file,
        gin_bindings=FLAGS.gin_bindings, class_names=FLAGS.class_names,
        view_overrides={n: FLAGS[n].value for n in _VIEW_FLAGS})
    results = predict_videos(
        paths, predictor, settings, top_k=FLAGS.top_k,
        batch_size=FLAGS.batch_size, video_timeout=FLAGS.video_timeout,
        decode_threads=FLAGS.decode_threads)
    if FLAGS.output_json:
      records.write_json_atomic(FLAGS.output_json, {
          'settings': dataclasses.asdict(settings),
          'view': predictor.view.as_json(), 'videos': results})
  except (ValueError, OSError, tf.errors.OpError, video_lib.VideoError) as e:
    sys.exit(f'{PROGRAM}: {export_lib.one_line(e)}')
  print(format_results(results))
  return 0


TOOL = cli.Tool(name=PROGRAM, command=f'python -m {PROGRAM}', doc=__doc__,
                define_flags=_define_flags, positional=('VIDEO',),
                more_positional=True)

def run_cli(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point: the exit status (`tfrecords_tools.cli` conventions)."""
  return cli.run(TOOL, main, argv)


if __name__ == '__main__':
  sys.exit(run_cli())
