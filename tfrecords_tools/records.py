"""Build and read clip / prediction records with the keys of `schema`.

The only place that turns Python values into `tf.train` protos and back; the
writer, the relabeller, the predictor and the tests all go through it.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import tensorflow as tf

from tfrecords_tools import atomic_files
from tfrecords_tools import clip_proto
from tfrecords_tools import schema


def int64_feature(values: Iterable[int]) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def float_feature(values: Iterable[float]) -> tf.train.Feature:
  return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def bytes_feature(values: Iterable[Any]) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(
      value=[v.encode('utf-8') if isinstance(v, str) else bytes(v)
             for v in values]))


_FEATURES = {clip_proto.INT64: int64_feature, clip_proto.FLOAT: float_feature,
             clip_proto.BYTES: bytes_feature}


def make_clip_example(
    *,
    frames: Sequence[bytes],
    clip_index: int,
    video_id: str,
    start: float,
    end: float,
    frame_rate: float,
    height: int,
    width: int,
    label_index: int,
    label_text: str,
    caption: str = '',
    clip_key: Optional[str] = None,
    weak_label_index: Optional[int] = None,
    weak_label_text: Optional[str] = None,
    teacher_index: Optional[int] = None,
    teacher_score: Optional[float] = None,
    label_space_id: Optional[str] = None,
) -> tf.train.SequenceExample:
  """Returns one clip record.

  Args:
    frames: JPEG bytes, one per frame, all the same size.
    clip_index: contiguous index of the clip in its dataset.
    video_id: id of the source video.
    start: clip start, seconds from the start of the source video.
    end: clip end, seconds.
    frame_rate: frames per second of `frames` (0 for image records).
    height: frame height in pixels.
    width: frame width in pixels.
    label_index: the label to train on (`clip/label/index`).
    label_text: its class name.
    caption: title / caption text.
    clip_key: stable id; derived from `video_id` and `start` when None.
    weak_label_index: the query class; defaults to `label_index`.
    weak_label_text: its name; defaults to `label_text`.
    teacher_index: teacher's top-1 class, if known.
    teacher_score: teacher's top-1 probability, if known.
    label_space_id: id of the label space `label_index` belongs to, if any.
  """
  if not frames:
    raise ValueError(f'clip {video_id}@{start}: `frames` must not be empty')
  fields = clip_proto.clip_context(
      clip_index=clip_index, video_id=video_id, start=start, end=end,
      frame_rate=frame_rate, num_frames=len(frames), height=height,
      width=width, label_index=label_index, label_text=label_text,
      caption=caption, clip_key=clip_key, weak_label_index=weak_label_index,
      weak_label_text=weak_label_text)
  context = {key: _FEATURES[kind](values)
             for key, (kind, values) in fields.items()}
  if teacher_index is not None:
    context[schema.TEACHER_INDEX_KEY] = int64_feature([teacher_index])
  if teacher_score is not None:
    context[schema.TEACHER_SCORE_KEY] = float_feature([teacher_score])
  if label_space_id is not None:
    context[schema.LABEL_SPACE_ID_KEY] = bytes_feature([label_space_id])
  image_list = tf.train.FeatureList(
      feature=[bytes_feature([f]) for f in frames])
  return tf.train.SequenceExample(
      context=tf.train.Features(feature=context),
      feature_lists=tf.train.FeatureLists(
          feature_list={schema.IMAGE_KEY: image_list}))


def _feature_value(feature: tf.train.Feature) -> List[Any]:
  kind = feature.WhichOneof('kind')
  if kind is None:
    return []
  return list(getattr(feature, kind).value)


def parse_clip_example(serialized: bytes) -> Dict[str, Any]:
  """Parses a clip record into a dict of Python values (host side, no graph).

  Scalars come back as scalars, bytes context features as `str`, frames as a
  list of JPEG bytes under `schema.IMAGE_KEY`. Raises `ValueError` naming the
  key when a required key is missing.
  """
  example = tf.train.SequenceExample.FromString(serialized)
  out: Dict[str, Any] = {}
  for key, feature in example.context.feature.items():
    values = _feature_value(feature)
    if key in schema.BYTES_CONTEXT_KEYS:
      values = [v.decode('utf-8', errors='replace') for v in values]
    out[key] = values[0] if len(values) == 1 else values
  missing = [k for k in schema.REQUIRED_CONTEXT_KEYS if k not in out]
  if missing:
    raise ValueError(f'clip record is missing context keys {missing}')
  frames = example.feature_lists.feature_list.get(schema.IMAGE_KEY)
  if frames is None or not frames.feature:
    raise ValueError(
        f'clip {out[schema.CLIP_KEY_KEY]!r} has no frames under '
        f'{schema.IMAGE_KEY!r}')
  out[schema.IMAGE_KEY] = [f.bytes_list.value[0] for f in frames.feature]
  return out


def make_prediction_example(
    *, clip_index: int, clip_key: str, num_classes: int,
    top_k_index: Sequence[int], top_k_score: Sequence[float]
) -> tf.train.Example:
  """Returns one teacher-prediction record (best class first)."""
  if len(top_k_index) != len(top_k_score) or not top_k_index:
    raise ValueError(
        f'clip {clip_key!r}: top-k index/score must be non-empty and of equal '
        f'length, got {len(top_k_index)} and {len(top_k_score)}')
  return tf.train.Example(features=tf.train.Features(feature={
      schema.CLIP_INDEX_KEY: int64_feature([clip_index]),
      schema.CLIP_KEY_KEY: bytes_feature([clip_key]),
      schema.PREDICTION_NUM_CLASSES_KEY: int64_feature([num_classes]),
      schema.PREDICTION_TOP_K_INDEX_KEY: int64_feature(top_k_index),
      schema.PREDICTION_TOP_K_SCORE_KEY: float_feature(top_k_score),
  }))


def parse_prediction_example(serialized: bytes) -> Dict[str, Any]:
  """Parses a prediction record into plain Python values."""
  example = tf.train.Example.FromString(serialized)
  f = example.features.feature
  try:
    return {
        schema.CLIP_INDEX_KEY: f[schema.CLIP_INDEX_KEY].int64_list.value[0],
        schema.CLIP_KEY_KEY:
            f[schema.CLIP_KEY_KEY].bytes_list.value[0].decode('utf-8'),
        schema.PREDICTION_NUM_CLASSES_KEY:
            f[schema.PREDICTION_NUM_CLASSES_KEY].int64_list.value[0],
        schema.PREDICTION_TOP_K_INDEX_KEY:
            list(f[schema.PREDICTION_TOP_K_INDEX_KEY].int64_list.value),
        schema.PREDICTION_TOP_K_SCORE_KEY:
            list(f[schema.PREDICTION_TOP_K_SCORE_KEY].float_list.value),
    }
  except (KeyError, IndexError) as e:
    raise ValueError(f'prediction record is missing or has an empty {e}') from e


# ---- Label map ----


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to `path` via a temporary name, so `path` is never partial."""
  atomic_files.write(path, schema.json_text(obj))


def write_label_map(path: str, class_names: Sequence[str]) -> None:
  """Writes `{"class name": index}`; indices follow the sorted order of names."""
  write_json_atomic(path, schema.label_map(class_names))


def read_label_map(path: str) -> List[str]:
  """Reads a label map written by `write_label_map`; returns names by index."""
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f'label map {path!r} does not exist')
  with tf.io.gfile.GFile(path) as f:
    mapping: Mapping[str, int] = json.load(f)
  names = sorted(mapping, key=mapping.get)
  if [mapping[n] for n in names] != list(range(len(names))):
    raise ValueError(f'label map {path!r}: indices are not 0..{len(names)-1}')
  return names
