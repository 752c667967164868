"""The clip-record schema: every TFRecord feature key of the project lives here.

Writer, reader, relabeller, predictor and tests import these constants; nothing
else spells a feature key. Records are `tf.train.SequenceExample`s, a superset
of what TF Model Garden's `official.vision.dataloaders.video_input.Decoder`
reads (`image/encoded` one JPEG per frame, `clip/label/index`), so a Model
Garden video classifier trains on our records unchanged.

Schema version 1, as protobuf text (one clip, values illustrative):

```
context {
  feature { key: "schema/version"          value { int64_list { value: 1 } } }
  # Contiguous over the dataset, 0..num_clips-1: the memory-bank row of CPD.
  feature { key: "clip/index"              value { int64_list { value: 1234 } } }
  # Stable unique id: "<video/id>@<start in milliseconds, 9 digits>".
  feature { key: "clip/key"                value { bytes_list { value: "vid_0042@000010000" } } }
  feature { key: "video/id"                value { bytes_list { value: "vid_0042" } } }
  # Seconds from the start of the source video (not of a trimmed segment).
  feature { key: "clip/start/timestamp"    value { float_list { value: 10.0 } } }
  feature { key: "clip/end/timestamp"      value { float_list { value: 20.0 } } }
  feature { key: "clip/frame_rate"         value { float_list { value: 25.0 } } }
  feature { key: "clip/num_frames"         value { int64_list { value: 250 } } }
  feature { key: "image/height"            value { int64_list { value: 256 } } }
  feature { key: "image/width"             value { int64_list { value: 340 } } }
  # The label to train on now: the weak label at first, the SPL label after
  # relabelling. Model Garden's reader reads exactly this key.
  feature { key: "clip/label/index"        value { int64_list { value: 3 } } }
  feature { key: "clip/label/text"         value { bytes_list { value: "baking cookies" } } }
  # The query class that found the video. Never rewritten.
  feature { key: "clip/weak_label/index"   value { int64_list { value: 3 } } }
  feature { key: "clip/weak_label/text"    value { bytes_list { value: "baking cookies" } } }
  # Title / caption text (UTF-8), the CPD text modality.
  feature { key: "caption/string"          value { bytes_list { value: "my cookies!! #baking" } } }
  # Added by the relabel job from teacher predictions (absent before).
  feature { key: "clip/teacher/index"      value { int64_list { value: 7 } } }
  feature { key: "clip/teacher/score"      value { float_list { value: 0.83 } } }
  feature { key: "clip/label_space/id"     value { bytes_list { value: "spl_b-3f2a9c0d1e4b" } } }
}
feature_lists {
  # One JPEG per frame, all frames of one clip the same size.
  feature_list { key: "image/encoded" value {
    feature { bytes_list { value: "<JPEG bytes>" } }
    ...
  } }
}
```

Image-mode records (the SPL image experiment) are the same message with one
frame and `clip/frame_rate` 0.

Teacher predictions (`spl.main --mode=predict`) are `tf.train.Example`s:

```
features {
  feature { key: "clip/index"                value { int64_list { value: 1234 } } }
  feature { key: "clip/key"                  value { bytes_list { value: "vid_0042@000010000" } } }
  feature { key: "prediction/num_classes"    value { int64_list { value: 200 } } }
  # Top-k classes, best first, and their probabilities.
  feature { key: "prediction/top_k/index"    value { int64_list { value: [7, 3, 12] } } }
  feature { key: "prediction/top_k/score"    value { float_list { value: [0.83, 0.1, 0.02] } } }
}
```

Files that travel with the shards: `label_map.json` (see `LABEL_MAP_FILENAME`),
`summary.json`, `rejects.jsonl`; after relabelling `label_space.json`.
"""

SCHEMA_VERSION = 1

# ---- Context features of a clip record ----
SCHEMA_VERSION_KEY = 'schema/version'
CLIP_INDEX_KEY = 'clip/index'
CLIP_KEY_KEY = 'clip/key'
VIDEO_ID_KEY = 'video/id'
CLIP_START_KEY = 'clip/start/timestamp'
CLIP_END_KEY = 'clip/end/timestamp'
FRAME_RATE_KEY = 'clip/frame_rate'
NUM_FRAMES_KEY = 'clip/num_frames'
IMAGE_HEIGHT_KEY = 'image/height'
IMAGE_WIDTH_KEY = 'image/width'
LABEL_INDEX_KEY = 'clip/label/index'
LABEL_TEXT_KEY = 'clip/label/text'
WEAK_LABEL_INDEX_KEY = 'clip/weak_label/index'
WEAK_LABEL_TEXT_KEY = 'clip/weak_label/text'
CAPTION_KEY = 'caption/string'
TEACHER_INDEX_KEY = 'clip/teacher/index'
TEACHER_SCORE_KEY = 'clip/teacher/score'
LABEL_SPACE_ID_KEY = 'clip/label_space/id'

# ---- Feature lists of a clip record ----
IMAGE_KEY = 'image/encoded'

# ---- Features of a teacher-prediction record ----
PREDICTION_NUM_CLASSES_KEY = 'prediction/num_classes'
PREDICTION_TOP_K_INDEX_KEY = 'prediction/top_k/index'
PREDICTION_TOP_K_SCORE_KEY = 'prediction/top_k/score'

# Keys every clip record written by this schema version carries.
REQUIRED_CONTEXT_KEYS = (
    SCHEMA_VERSION_KEY, CLIP_INDEX_KEY, CLIP_KEY_KEY, VIDEO_ID_KEY,
    CLIP_START_KEY, CLIP_END_KEY, FRAME_RATE_KEY, NUM_FRAMES_KEY,
    IMAGE_HEIGHT_KEY, IMAGE_WIDTH_KEY, LABEL_INDEX_KEY, LABEL_TEXT_KEY,
    WEAK_LABEL_INDEX_KEY, WEAK_LABEL_TEXT_KEY, CAPTION_KEY)
INT64_CONTEXT_KEYS = (
    SCHEMA_VERSION_KEY, CLIP_INDEX_KEY, NUM_FRAMES_KEY, IMAGE_HEIGHT_KEY,
    IMAGE_WIDTH_KEY, LABEL_INDEX_KEY, WEAK_LABEL_INDEX_KEY, TEACHER_INDEX_KEY)
FLOAT_CONTEXT_KEYS = (
    CLIP_START_KEY, CLIP_END_KEY, FRAME_RATE_KEY, TEACHER_SCORE_KEY)
BYTES_CONTEXT_KEYS = (
    CLIP_KEY_KEY, VIDEO_ID_KEY, LABEL_TEXT_KEY, WEAK_LABEL_TEXT_KEY,
    CAPTION_KEY, LABEL_SPACE_ID_KEY)

# ---- Files next to the shards ----
SHARD_PREFIX = 'clips'
SHARD_SUFFIX = '.tfrecord'
LABEL_MAP_FILENAME = 'label_map.json'
SUMMARY_FILENAME = 'summary.json'
REJECTS_FILENAME = 'rejects.jsonl'
LABEL_SPACE_FILENAME = 'label_space.json'


def shard_name(index: int, num_shards: int, prefix: str = SHARD_PREFIX) -> str:
  """File name of shard `index` of `num_shards`: `clips-00003-of-00016.tfrecord`."""
  if not 0 <= index < num_shards:
    raise ValueError(
        f'`index` must be in [0, {num_shards}), got {index}')
  return f'{prefix}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}'


def shard_pattern(prefix: str = SHARD_PREFIX) -> str:
  """Glob that matches every shard written under `prefix`."""
  return f'{prefix}-?????-of-?????{SHARD_SUFFIX}'


def json_text(obj) -> str:
  """The JSON text of every metadata file that travels with the shards."""
  import json  # pylint: disable=g-import-not-at-top
  return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + '\n'


def label_map(class_names) -> dict:
  """`label_map.json`'s content: `{"class name": index}` in sorted order."""
  names = list(class_names)
  if names != sorted(set(names)):
    raise ValueError('class names must be sorted and unique')
  return {name: i for i, name in enumerate(names)}


def make_clip_key(video_id: str, start_seconds: float) -> str:
  """Stable clip id: video id + start time in whole milliseconds."""
  return f'{video_id}@{int(round(start_seconds * 1000)):09d}'
