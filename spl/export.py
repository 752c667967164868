r"""A trained model as a TensorFlow SavedModel, usable without this project.

  python -m spl.export --model_dir=WS/models/teacher \
    --output_dir=WS/exported/teacher \
    --class_names=WS/records/target/label_map.json
  python -m spl.export --model_dir=WS/models/cpd --output_dir=WS/exported/cpd \
    [--word2vec_path=... | --text_encoder_dir=... | --notext]

Load it anywhere with TensorFlow alone (no `spl`, no `tf_keras` classes):

  model = tf.saved_model.load('WS/exported/teacher')
  probs = model.signatures['serving_default'](video=clips)['probabilities']
  names = [n.decode() for n in model.class_names.numpy()]

What the model dir holds decides what is exported:

* An SPL classifier (`model.json`, written by `spl.main`): the classifier is
  rebuilt from it (what was trained, not today's gin files) and the latest
  checkpoint (or `--checkpoint`) restored. Signature `serving_default`:
  `video` uint8 [B, T, S, S, 3] -> `probabilities` float32 [B, C], the softmax
  of the logits. The clip is one evaluation view: T frames `stride` apart,
  S x S pixels (the short side resized to `min_resize`, then cropped). T and
  S are the model's if `model.json` fixes them, else the evaluation clip of
  the run's gin config (`config.gin`: `make_dataset.num_frames` /
  `crop_size`, eval scope first; `--num_frames` / `--crop_size` for another
  size of a fully convolutional model). The signature normalises the pixels
  as the evaluation pipeline does (`spl.inputs.finish.finish_video` with the
  evaluation row: `(x / 255 - mean) / std`, the run's mean and std). The
  class names (`--class_names`, else `label_space.json` or `label_map.json`
  in the model dir; else "class <i>") are the string variable `class_names`
  and the asset `class_names.txt`. A checkpoint that holds an exponential
  moving average of the weights (`run.ema_decay`, `spl.ema`) is exported
  with the averaged weights (and the run's batch-norm moving statistics, as
  the trainer evaluates it); `--noema_weights` exports the raw weights.
  `export_config.json` says which (`weights`: 'ema' or 'raw').
* A CPD run (`cpd_model.json`): the encoders are rebuilt as `cpd.evaluate`
  rebuilds them (`build_video_model` / `build_text_fn`, which the run's
  `config.gin` registers through its `import cpd.configurables`: `spl` never
  imports `cpd`). Signatures `video` (also `serving_default`): `video` uint8
  [B, T, S, S, 3] (default the training clip of `cpd_model.json`) ->
  `embedding` float32 [B, d], L2-normalised; `text`: `titles` string [B] ->
  `embedding` [B, d]. The text encoder's files are the run's (`config.gin`:
  `word2vec_text_encoder.path` or `hf_text_encoder.model_dir`) unless
  `--word2vec_path` / `--text_encoder_dir` is given; `--notext` exports the
  video signature only. Two limits of the text signature, both recorded in
  `export_config.json`:
  - Title cleaning (`cpd_run.clean_titles`, `cpd.text_cleaning`) is Python
    (a `tf.numpy_function`), which a SavedModel cannot hold: pass titles
    already cleaned with `cpd.text_cleaning.clean_title` to get the
    embeddings training and validation computed. What the trainer's text
    encoder does in the graph (word2vec: lower-casing; BERT: WordPiece) is in
    the signature.
  - A BERT-family encoder tokenises with `tensorflow-text` ops: the loading
    process must `import tensorflow_text` before `tf.saved_model.load`.

Every export also carries `assets/export_config.json`: kind, signatures,
checkpoint, architecture, clip shape and the evaluation view (frames,
stride, crop, `min_resize`, test clips and crops, mean, std), which
`spl.predict_video --saved_model=...` reads to sample raw videos as the
evaluation pipeline does.

Flags live here only (defined when the module runs as a tool); the work is
`export`, a plain function.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from absl import flags
from absl import logging
import gin
import tensorflow as tf
import tf_keras

from spl import attention_maps
from spl import input_pipeline
from spl import loop as loop_lib
from spl.inputs import options as options_lib
from spl.inputs import pixels
from spl.models import factory
from tfrecords_tools import cli
from tfrecords_tools import label_spaces
from tfrecords_tools import records
from tfrecords_tools import schema

EXPORT_CONFIG_FILENAME = 'export_config.json'
CLASS_NAMES_FILENAME = 'class_names.txt'
CPD_MODEL_FILENAME = 'cpd_model.json'  # `cpd.model_config.FILENAME`.
LABEL_SPACE_FILENAME = 'label_space.json'
CONFIG_FILENAME = attention_maps.CONFIG_FILENAME
FORMAT_VERSION = 1
CLASSIFIER = 'classifier'
CPD = 'cpd'
# The classifier's signature and the CPD video signature.
SERVING = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
VIDEO_SIGNATURE = 'video'
TEXT_SIGNATURE = 'text'
# `make_dataset` arguments that only evaluation reads (never the train scope).
_EVAL_ONLY = ('num_test_clips', 'num_test_crops', 'device_finishing')
_EVAL_SCOPES = ('eval/', '')
# What `cpd.protocols.build_text_fn` rebuilds, i.e. the trainer's text
# encoder settings it can reproduce (the trainer's defaults).
_W2V_REBUILT = {'max_words': 64}
_HF_REBUILT = {'pooling': 'masked_mean', 'lower_case': True}

def _define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string('model_dir', None, 'Training run dir (model.json or '
                      'cpd_model.json, checkpoints, config.gin).',
                      flag_values=fv)
  flags.DEFINE_string('output_dir', None, 'Where the SavedModel is written.',
                      flag_values=fv)
  flags.DEFINE_string('checkpoint', None, 'Checkpoint prefix to export '
                      '(default: the latest of --model_dir).', flag_values=fv)
  flags.DEFINE_multi_string('gin_file', [], 'Gin files of the run (default: '
                            '--model_dir/config.gin).', flag_values=fv)
  flags.DEFINE_multi_string('gin_bindings', [], 'Extra gin bindings.',
                            flag_values=fv)
  flags.DEFINE_bool('ema_weights', True, 'Classifiers: export the '
                    'exponential moving average of the weights when the '
                    'checkpoint holds one (run.ema_decay); false: the raw '
                    'weights.', flag_values=fv)
  flags.DEFINE_string('class_names', None, 'label_map.json or '
                      'label_space.json naming the classifier\'s classes '
                      '(default: one of them in --model_dir).', flag_values=fv)
  flags.DEFINE_integer('num_frames', None, 'Frames of the exported clip, '
                       'when the model does not fix them.', flag_values=fv)
  flags.DEFINE_integer('crop_size', None, 'Height and width of the exported '
                       'clip, when the model does not fix them.',
                       flag_values=fv)
  flags.DEFINE_integer('stride', None, 'Evaluation view: temporal stride.',
                       flag_values=fv)
  flags.DEFINE_integer('min_resize', None, 'Evaluation view: short side '
                       'before cropping.', flag_values=fv)
  flags.DEFINE_integer('num_test_clips', None, 'Evaluation view: clips per '
                       'record.', flag_values=fv)
  flags.DEFINE_integer('num_test_crops', None, 'Evaluation view: crops per '
                       'clip (1 or 3).', flag_values=fv)
  flags.DEFINE_string('word2vec_path', None, 'CPD: the word2vec file of the '
                      'text encoder (default: the run\'s).', flag_values=fv)
  flags.DEFINE_string('text_encoder_dir', None, 'CPD: the Hugging Face '
                      'directory of the text encoder (default: the run\'s).',
                      flag_values=fv)
  flags.DEFINE_bool('text', True, 'CPD: export the text signature too.',
                    flag_values=fv)


# ---- The evaluation view ----


@dataclasses.dataclass(frozen=True)
class EvalView:
  """How evaluation cuts a clip record into model inputs (`make_dataset`)."""
  num_frames: int
  stride: int
  crop_size: int
  min_resize: int
  num_test_clips: int
  num_test_crops: int
  mean: Tuple[float, float, float]
  std: Tuple[float, float, float]
  dct_method: str = ''
  device_finishing: bool = False

  @property
  def clip_shape(self) -> Tuple[int, int, int, int]:
    return (self.num_frames, self.crop_size, self.crop_size, 3)

  @property
  def num_views(self) -> int:
    return self.num_test_clips * self.num_test_crops

  def dataset_kwargs(self, **overrides) -> Dict[str, Any]:
    """`make_dataset` arguments of this view (`overrides` win)."""
    return dict(dataclasses.asdict(self), **overrides)

  def as_json(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: Dict[str, Any]) -> 'EvalView':
    d = dict(d)
    d['mean'], d['std'] = tuple(d['mean']), tuple(d['std'])
    return cls(**d)


_UNSET = object()


def _gin_value(selector: str, default: Any) -> Any:
  """A parsed gin value as the callee would get it (macros evaluated)."""
  try:
    value = gin.query_parameter(selector)
  except ValueError:
    return default
  if isinstance(value, gin.config.ConfigurableReference) and value.evaluate:
    return value.scoped_configurable_fn()
  return value


def _eval_value(name: str, default: Any) -> Any:
  for scope in _EVAL_SCOPES:
    value = _gin_value(f'{scope}make_dataset.{name}', _UNSET)
    if value is not _UNSET:
      return value
  return default


def read_eval_view(gin_files: Sequence[str], gin_bindings: Sequence[str], *,
                   model_shape: Sequence[Optional[int]],
                   overrides: Optional[Dict[str, Any]] = None) -> EvalView:
  """The evaluation view of a training run, from its gin config.

  Parses the gin files (clearing any config first), then: frames, stride,
  crop, mean, std, `min_resize` as `spl.attention_maps` reads them (eval
  scope, unscoped, train scope); test clips and crops and device finishing
  from the eval scope or unscoped only (the train scope's are not
  evaluation's). Where `model_shape` ((T, H, W, 3) of the model's input)
  fixes T or H = W, the model wins: an override that disagrees is refused.

  Args:
    gin_files: the run's gin files (its `config.gin`).
    gin_bindings: extra bindings.
    model_shape: the model's input shape, None where it takes any size.
    overrides: non-None values replace the config's (the tools' flags).

  Returns:
    The view, `min_resize` filled in (`round(crop * 8 / 7)` when unset).
  """
  overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
  config = attention_maps.parse_config(gin_files, gin_bindings)
  if _gin_value('eval/make_dataset.num_test_clips', _UNSET) is _UNSET:
    logging.warning(
        'the gin config %s has no evaluation settings (a --mode=train run '
        'writes none): the view is its training clip and make_dataset\'s '
        'defaults unless flags say otherwise', list(gin_files))
  defaults = inspect.signature(input_pipeline.make_dataset).parameters
  values = {
      'num_frames': config['num_frames'], 'stride': config['stride'],
      'crop_size': config['crop_size'],
      'min_resize': config.get('min_resize'),
      'mean': tuple(config.get('mean', input_pipeline.IMAGENET_MEAN)),
      'std': tuple(config.get('std', input_pipeline.IMAGENET_STD)),
      'dct_method': config.get('dct_method', ''),
  }
  for name in _EVAL_ONLY:
    values[name] = _eval_value(name, defaults[name].default)
  fixed = {'num_frames': model_shape[0]}
  if model_shape[1] is not None or model_shape[2] is not None:
    if model_shape[1] != model_shape[2]:
      raise ValueError(f'the model takes {model_shape[1]}x{model_shape[2]} '
                       'frames; evaluation views are square')
    fixed['crop_size'] = model_shape[1]
  for name, size in fixed.items():
    if size is None:
      continue
    if name in overrides and overrides[name] != size:
      raise ValueError(f'--{name}={overrides[name]} disagrees with the '
                       f'model, which takes {name}={size}')
    values[name] = size
  values.update(overrides)
  for name in ('num_frames', 'stride', 'crop_size', 'num_test_clips'):
    if not isinstance(values[name], int) or values[name] < 1:
      raise ValueError(f'`{name}` must be a positive integer, got '
                       f'{values[name]!r}')
  try:
    opts = options_lib.make_options(values['crop_size'], {
        'min_resize': values['min_resize'], 'mean': values['mean'],
        'std': values['std'], 'dct_method': values['dct_method']})
  except (TypeError, ValueError) as e:
    raise ValueError(f'bad evaluation view: {e}') from e
  if values['num_test_crops'] not in (1, 3):
    raise ValueError(f'`num_test_crops` must be 1 or 3, got '
                     f'{values["num_test_crops"]}')
  values['min_resize'] = int(opts.min_resize)
  values['mean'] = tuple(float(x) for x in opts.mean)
  values['std'] = tuple(float(x) for x in opts.std)
  values['device_finishing'] = bool(values['device_finishing'])
  return EvalView(**values)


def normalize_clips(video: tf.Tensor, view: EvalView) -> tf.Tensor:
  """uint8 evaluation views [B, T, S, S, 3] -> the model's float32 input.

  The evaluation pipeline's own pixel work (`finish_video` with the row
  `make_dataset(device_finishing=True)` gives every evaluation view: no
  resize, no flip, no colour jitter, then `(x / 255 - mean) / std`).
  """
  opts = options_lib.make_options(view.crop_size, {'mean': view.mean,
                                                    'std': view.std})
  row = input_pipeline.finish_row(
      tf.constant([view.crop_size, view.crop_size]), tf.constant(False),
      pixels.colour_params(opts, None, is_training=False), opts)
  finish = tf.tile(row[None], [tf.shape(video)[0], 1])
  return input_pipeline.finish_video(video, finish)


# ---- Trained models ----


def one_line(error: BaseException) -> str:
  return ' '.join(str(error).split())


def check_model_dir(model_dir: Optional[str]) -> str:
  """`model_dir` exists and holds a checkpoint; returns the latest one."""
  if not model_dir:
    raise ValueError('--model_dir must be set')
  if not tf.io.gfile.isdir(model_dir):
    raise ValueError(f'--model_dir {model_dir!r} does not exist')
  latest = tf.train.latest_checkpoint(model_dir)
  if latest is None:
    raise ValueError(f'--model_dir {model_dir!r} holds no checkpoint')
  return latest


def model_kind(model_dir: str) -> str:
  """CLASSIFIER (model.json) or CPD (cpd_model.json)."""
  has = {k: tf.io.gfile.exists(os.path.join(model_dir, name)) for k, name in
         ((CLASSIFIER, factory.MODEL_CONFIG_FILENAME),
          (CPD, CPD_MODEL_FILENAME))}
  if has[CLASSIFIER] and has[CPD]:
    raise ValueError(f'--model_dir {model_dir!r} holds both '
                     f'{factory.MODEL_CONFIG_FILENAME} and '
                     f'{CPD_MODEL_FILENAME}')
  if not any(has.values()):
    raise ValueError(
        f'--model_dir {model_dir!r} holds neither '
        f'{factory.MODEL_CONFIG_FILENAME} (an SPL classifier) nor '
        f'{CPD_MODEL_FILENAME} (a CPD run): not a training run of spl.main, '
        'or one too old to say what it trained')
  return CLASSIFIER if has[CLASSIFIER] else CPD


def _gin_files(model_dir: str, gin_files: Sequence[str]) -> List[str]:
  if gin_files:
    return list(gin_files)
  path = os.path.join(model_dir, CONFIG_FILENAME)
  if not tf.io.gfile.exists(path):
    raise ValueError(f'--model_dir {model_dir!r} has no {CONFIG_FILENAME} '
                     '(the run\'s gin config): give --gin_file')
  return [path]


def _checkpoint(model_dir: str, checkpoint: Optional[str]) -> str:
  latest = check_model_dir(model_dir)
  if not checkpoint:
    return latest
  return attention_maps.resolve_checkpoint(model_dir=None,
                                           checkpoint=checkpoint)


def load_class_names(path: str) -> List[str]:
  """Class names by index of a label_space.json or a label_map.json, told
  apart by content (a label space has `classes`), whatever the file name."""
  with tf.io.gfile.GFile(path) as f:
    try:
      content = json.load(f)
    except ValueError as e:
      raise ValueError(f'--class_names {path!r} is not JSON: {e}') from e
  try:
    if isinstance(content, dict) and 'classes' in content:
      with tf.io.gfile.GFile(path) as f:
        space = label_spaces.parse_label_space(f.read(), source=path)
      return [c['name'] for c in space['classes']]
    return records.read_label_map(path)
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f'--class_names {path!r} is neither a label_map.json '
                     f'nor a label_space.json: {one_line(e)}') from e


def find_class_names(model_dir: str, path: Optional[str] = None
                     ) -> Tuple[Optional[List[str]], Optional[str]]:
  """(class names by index, their file) from `path`, else the model dir's
  label_space.json or label_map.json; (None, None) when there is none."""
  if path:
    if not tf.io.gfile.exists(path):
      raise ValueError(f'--class_names {path!r} does not exist')
    return load_class_names(path), path
  for name in (LABEL_SPACE_FILENAME, schema.LABEL_MAP_FILENAME):
    candidate = os.path.join(model_dir, name)
    if tf.io.gfile.exists(candidate):
      return load_class_names(candidate), candidate
  return None, None


@dataclasses.dataclass
class TrainedClassifier:
  """An SPL classifier restored from its run, with how it evaluates."""
  model: tf_keras.Model
  view: EvalView
  checkpoint: str
  class_names: List[str]
  class_names_source: Optional[str]
  architecture: Dict[str, Any]
  weights: str = 'raw'  # 'ema': the checkpoint's moving average.

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def load_classifier(model_dir: str, *, checkpoint: Optional[str] = None,
                    gin_files: Sequence[str] = (),
                    gin_bindings: Sequence[str] = (),
                    class_names: Optional[str] = None,
                    view_overrides: Optional[Dict[str, Any]] = None,
                    ema_weights: bool = True) -> TrainedClassifier:
  """Rebuilds a run's classifier from `model.json` and restores it.

  Args:
    model_dir: the training run (model.json, checkpoints, config.gin).
    checkpoint: a checkpoint prefix instead of the latest.
    gin_files: the run's gin files (default `model_dir/config.gin`): the
      evaluation view.
    gin_bindings: extra bindings.
    class_names: label_map.json or label_space.json (default: one in
      `model_dir`).
    view_overrides: `EvalView` fields to set (None = the config's).
    ema_weights: restore the checkpoint's moving average of the trainable
      weights in place of them, when it holds one (`spl.ema`); batch-norm
      moving statistics are the checkpoint's either way.

  Returns:
    The restored classifier, its evaluation view and class names.
  """
  path = _checkpoint(model_dir, checkpoint)
  if model_kind(model_dir) != CLASSIFIER:
    raise ValueError(f'--model_dir {model_dir!r} is a CPD run: it has no '
                     'classes to predict')
  model_config = os.path.join(model_dir, factory.MODEL_CONFIG_FILENAME)
  model = factory.classifier_from_config_file(model_config)
  architecture = model.get_config()
  num_classes = architecture['num_classes']
  names, source = find_class_names(model_dir, class_names)
  if names is not None and len(names) != num_classes:
    raise ValueError(f'--class_names {source!r} names {len(names)} classes '
                     f'but the model ({model_config}) has {num_classes}')
  if names is None:
    logging.warning('no class names (--class_names, or %s / %s in %s): '
                    'classes are "class <i>"', LABEL_SPACE_FILENAME,
                    schema.LABEL_MAP_FILENAME, model_dir)
    names = [f'class {i}' for i in range(num_classes)]
  view = read_eval_view(_gin_files(model_dir, gin_files), gin_bindings,
                        model_shape=architecture['input_shape'],
                        overrides=view_overrides)
  model(tf.zeros((1,) + view.clip_shape), training=False)  # Variables.
  weights = loop_lib.restore_model_weights(model, path, ema_weights)
  logging.info('restored %s (%s, %s weights)', path, model_config, weights)
  return TrainedClassifier(model=model, view=view, checkpoint=path,
                           class_names=list(names), class_names_source=source,
                           architecture=_jsonable(architecture),
                           weights=weights)


def _jsonable(obj):
  return json.loads(json.dumps(obj, default=list))


# ---- SavedModel modules ----


def _clip_spec(view: EvalView) -> tf.TensorSpec:
  return tf.TensorSpec((None,) + view.clip_shape, tf.uint8, name='video')


def _tracked(*objects) -> List[Any]:
  """Every variable and resource (lookup table) `objects` hold.

  A SavedModel saves what its root tracks: these, attached as a list, let
  the signatures capture them without tracking the Keras objects themselves
  (whose own SavedModel serialisation would trace every layer).
  """
  found, seen = [], set()
  for obj in objects:
    for d in tf.train.TrackableView(obj).descendants():
      if isinstance(d, (tf.Variable,
                        tf.saved_model.experimental.TrackableResource)):
        if id(d) not in seen:
          seen.add(id(d))
          found.append(d)
  return found


def classifier_module(trained: TrainedClassifier) -> tf.Module:
  """The SavedModel root of a classifier: `serve` and `class_names`."""
  model, view = trained.model, trained.view
  root = tf.Module()
  root.model_variables = _tracked(model)
  root.class_names = tf.Variable(trained.class_names, trainable=False,
                                 name='class_names')

  @tf.function(input_signature=[_clip_spec(view)])
  def serve(video):
    logits = tf.cast(model(normalize_clips(video, view), training=False),
                     tf.float32)
    return {'probabilities': tf.nn.softmax(logits, axis=-1)}

  root.serve = serve
  return root


def _configurable(name: str) -> Callable[..., Any]:
  try:
    return gin.get_configurable(name)
  except ValueError as e:
    raise ValueError(f'the run\'s gin config does not register `{name}` '
                     '(CPD runs import cpd.configurables in it): '
                     f'{one_line(e)}') from e


def _text_encoder_settings(word2vec_path: Optional[str],
                           text_encoder_dir: Optional[str]
                           ) -> Dict[str, Any]:
  """`build_text_fn` arguments for the trainer's text encoder + what the
  signature adds (lower-casing), from the parsed gin config and the flags.

  Refuses a trainer setting that `build_text_fn` does not rebuild.
  """
  if word2vec_path and text_encoder_dir:
    raise ValueError('give at most one of --word2vec_path and '
                     '--text_encoder_dir')
  ref = _gin_value('cpd_run.text_encoder_fn', None)
  kind = ref.configurable.name if isinstance(
      ref, gin.config.ConfigurableReference) else None
  if word2vec_path or text_encoder_dir:
    given, flag_kind = (('--word2vec_path', 'word2vec_text_encoder')
                        if word2vec_path else
                        ('--text_encoder_dir', 'hf_text_encoder'))
    if kind is not None and kind != flag_kind:
      raise ValueError(f'the run trained its text encoder with {kind}; '
                       f'{given} builds another kind')
    kind = flag_kind
  rebuilt = {'word2vec_text_encoder': _W2V_REBUILT,
             'hf_text_encoder': _HF_REBUILT}.get(kind)
  if rebuilt is None:
    raise ValueError('the run\'s gin config names no text encoder '
                     f'(cpd_run.text_encoder_fn = {ref!r}): give '
                     '--word2vec_path or --text_encoder_dir, or --notext')
  for name, value in rebuilt.items():
    trained = _gin_value(f'{kind}.{name}', value)
    if trained != value:
      raise ValueError(f'the run\'s {kind}.{name}={trained!r}; '
                       'cpd.protocols.build_text_fn rebuilds '
                       f'{name}={value!r} only')
  if kind == 'word2vec_text_encoder':
    flag, path = '--word2vec_path', word2vec_path or _gin_value(
        f'{kind}.path', None)
    args = {'word2vec_path': path}
    extra = {'encoder': 'word2vec', 'lowercase': bool(
        _gin_value(f'{kind}.lowercase', True))}
  else:
    flag, path = '--text_encoder_dir', text_encoder_dir or _gin_value(
        f'{kind}.model_dir', None)
    # 32: the default of the trainer's hf_text_encoder and build_text_fn.
    args = {'hf_model_dir': path,
            'max_length': int(_gin_value(f'{kind}.max_length', 32))}
    # The tokenizer lower-cases itself (lower_case=True).
    extra = {'encoder': 'hf', 'lowercase': False,
             'requires': ['tensorflow_text']}
  if not path or not tf.io.gfile.exists(path):
    raise ValueError(f'the text encoder\'s file {path!r} does not exist: give '
                     f'{flag}, or --notext to export the video signature only')
  return {'build_args': args, **extra}


def cpd_module(checkpoint: str, clip_shape: Sequence[int],
               view: EvalView, text: Optional[Dict[str, Any]]) -> tf.Module:
  """The SavedModel root of a CPD run: `video` and (optionally) `text`."""
  video_model = _configurable('build_video_model')(
      input_shape=tuple(clip_shape), checkpoint=checkpoint)
  root = tf.Module()
  root.video_variables = _tracked(video_model)
  clip_view = dataclasses.replace(view, num_frames=clip_shape[0],
                                  crop_size=clip_shape[1])

  @tf.function(input_signature=[_clip_spec(clip_view)])
  def video(clips):
    emb = video_model(normalize_clips(clips, clip_view), training=False)
    return {'embedding': tf.cast(emb, tf.float32)}

  root.video = video
  if text is not None:
    text_fn = _configurable('build_text_fn')(checkpoint=checkpoint,
                                              **text['build_args'])
    # The restored encoder's and head's variables and lookup tables must be
    # tracked by the root.
    root.text_variables = _tracked(text_fn.encoder, text_fn.head)
    lowercase = text['lowercase']

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string,
                                                 name='titles')])
    def embed_text(titles):
      if lowercase:  # What the trainer's word2vec encoder does first.
        titles = tf.strings.lower(titles, encoding='utf-8')
      return {'embedding': tf.cast(text_fn(titles), tf.float32)}

    root.text = embed_text
  return root


# ---- Writing ----


def _check_output_dir(output_dir: Optional[str]) -> None:
  if not output_dir:
    raise ValueError('--output_dir must be set')
  if tf.io.gfile.isdir(output_dir) and tf.io.gfile.listdir(output_dir) and (
      not tf.io.gfile.exists(os.path.join(output_dir, 'saved_model.pb'))):
    raise ValueError(f'--output_dir {output_dir!r} is not empty and holds no '
                     'earlier export: choose another directory')


def _save(root: tf.Module, output_dir: str,
          signatures: Dict[str, Callable[..., Any]], config: Dict[str, Any],
          class_names: Optional[Sequence[str]]) -> None:
  with tempfile.TemporaryDirectory() as scratch:
    path = os.path.join(scratch, EXPORT_CONFIG_FILENAME)
    with open(path, 'w', encoding='utf-8') as f:
      json.dump(config, f, indent=1, sort_keys=True)
      f.write('\n')
    root.export_config_file = tf.saved_model.Asset(path)
    if class_names is not None:
      names_path = os.path.join(scratch, CLASS_NAMES_FILENAME)
      with open(names_path, 'w', encoding='utf-8') as f:
        f.write(''.join(n + '\n' for n in class_names))
      root.class_names_file = tf.saved_model.Asset(names_path)
    tf.saved_model.save(root, output_dir, signatures=signatures)


def export(model_dir: str, output_dir: str, *,
           checkpoint: Optional[str] = None,
           gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = (),
           class_names: Optional[str] = None,
           view_overrides: Optional[Dict[str, Any]] = None,
           word2vec_path: Optional[str] = None,
           text_encoder_dir: Optional[str] = None,
           text: bool = True, ema_weights: bool = True) -> Dict[str, Any]:
  """Writes the SavedModel of a training run; what `main` does.

  Args:
    model_dir: the run (model.json or cpd_model.json, checkpoints,
      config.gin).
    output_dir: the SavedModel directory (new, empty or an earlier export).
    checkpoint: a checkpoint prefix instead of the latest.
    gin_files: the run's gin files (default `model_dir/config.gin`).
    gin_bindings: extra bindings.
    class_names: label_map.json or label_space.json (classifiers).
    view_overrides: `EvalView` fields (`num_frames`, `crop_size`, `stride`,
      `min_resize`, `num_test_clips`, `num_test_crops`); None = the run's.
    word2vec_path: CPD: the text encoder's word2vec file (default the
      run's).
    text_encoder_dir: CPD: its Hugging Face directory (default the run's).
    text: CPD: export the text signature.
    ema_weights: classifiers: export the checkpoint's moving average of the
      weights when it holds one (else the raw weights).

  Returns:
    The export config (also `assets/export_config.json`).
  """
  path = _checkpoint(model_dir, checkpoint)
  kind = model_kind(model_dir)
  _check_output_dir(output_dir)
  base = {'format_version': FORMAT_VERSION, 'kind': kind,
          'model_dir': model_dir, 'checkpoint': path}
  if kind == CLASSIFIER:
    trained = load_classifier(
        model_dir, checkpoint=checkpoint, gin_files=gin_files,
        gin_bindings=gin_bindings, class_names=class_names,
        view_overrides=view_overrides, ema_weights=ema_weights)
    root = classifier_module(trained)
    signatures = {SERVING: root.serve}
    view = trained.view
    config = dict(
        base, architecture=trained.architecture,
        num_classes=trained.num_classes, weights=trained.weights,
        class_names_source=trained.class_names_source,
        clip_shape=list(view.clip_shape), eval_view=view.as_json(),
        signatures={SERVING: {
            'inputs': {'video': f'uint8 [B, {view.num_frames}, '
                                f'{view.crop_size}, {view.crop_size}, 3]'},
            'outputs': {'probabilities': f'float32 [B, '
                                         f'{trained.num_classes}]'}}},
        requires=[])
    names = trained.class_names
  else:
    if class_names:
      raise ValueError(f'--class_names is for classifiers; {model_dir!r} is '
                       'a CPD run')
    with tf.io.gfile.GFile(os.path.join(model_dir, CPD_MODEL_FILENAME)) as f:
      architecture = json.load(f)
    stored = list(architecture['clip_shape'])
    overrides = dict(view_overrides or {})
    clip_shape = [overrides.get('num_frames') or stored[0],
                  overrides.get('crop_size') or stored[1],
                  overrides.get('crop_size') or stored[2], 3]
    # The view a record is evaluated with; the signature takes clip_shape.
    view = read_eval_view(_gin_files(model_dir, gin_files), gin_bindings,
                          model_shape=(None, None, None, 3),
                          overrides=overrides)
    text_settings = (_text_encoder_settings(word2vec_path, text_encoder_dir)
                     if text else None)
    root = cpd_module(path, clip_shape, view, text_settings)
    signatures = {SERVING: root.video, VIDEO_SIGNATURE: root.video}
    dim = architecture['embedding_dim']
    described = {VIDEO_SIGNATURE: {
        'inputs': {'video': f'uint8 [B, {clip_shape[0]}, {clip_shape[1]}, '
                            f'{clip_shape[2]}, 3]'},
        'outputs': {'embedding': f'float32 [B, {dim}], L2-normalised'}}}
    requires = []
    text_config = None
    if text_settings is not None:
      signatures[TEXT_SIGNATURE] = root.text
      described[TEXT_SIGNATURE] = {
          'inputs': {'titles': 'string [B], cleaned as the trainer cleans '
                               'them (cpd.text_cleaning.clean_title)'},
          'outputs': {'embedding': f'float32 [B, {dim}], L2-normalised'}}
      requires = list(text_settings.get('requires', []))
      text_config = {'encoder': text_settings['encoder'],
                     'files': next(iter(text_settings['build_args'].values())),
                     'lowercase_in_signature': text_settings['lowercase'],
                     'title_cleaning': 'not in the graph (Python): clean '
                                       'titles before calling `text`'}
    config = dict(
        base, architecture=architecture, clip_shape=clip_shape,
        embedding_dim=dim, eval_view=view.as_json(), signatures=described,
        text=text_config, requires=requires)
    names = None
  _save(root, output_dir, signatures, config, names)
  logging.info('exported %s (%s) to %s', path, kind, output_dir)
  return config


def read_export_config(saved_model_dir: str) -> Dict[str, Any]:
  """The `export_config.json` of an export (reads the file, not the graph)."""
  path = os.path.join(saved_model_dir, 'assets', EXPORT_CONFIG_FILENAME)
  if not tf.io.gfile.exists(path):
    raise ValueError(f'{saved_model_dir!r} is not an spl.export SavedModel '
                     f'(no assets/{EXPORT_CONFIG_FILENAME})')
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


# ---- Command line ----


def main(args: cli.Args) -> int:
  """Exports what a parsed command line names; returns the exit status."""
  FLAGS = args.flags  # pylint: disable=invalid-name
  overrides = {name: FLAGS[name].value for name in (
      'num_frames', 'crop_size', 'stride', 'min_resize', 'num_test_clips',
      'num_test_crops')}
  try:
    config = export(
        FLAGS.model_dir, FLAGS.output_dir, checkpoint=FLAGS.checkpoint,
        gin_files=FLAGS.gin_file, gin_bindings=FLAGS.gin_bindings,
        class_names=FLAGS.class_names, view_overrides=overrides,
        word2vec_path=FLAGS.word2vec_path,
        text_encoder_dir=FLAGS.text_encoder_dir, text=FLAGS.text,
        ema_weights=FLAGS.ema_weights)
  except (ValueError, OSError, tf.errors.OpError) as e:
    sys.exit(f'spl.export: {one_line(e)}')
  weights = f' ({config["weights"]} weights)' if 'weights' in config else ''
  print(f'{FLAGS.output_dir}: {config["kind"]} from {config["checkpoint"]}'
        f'{weights}; signatures {sorted(config["signatures"])}')
  return 0


TOOL = cli.Tool(name='spl.export', command='python -m spl.export',
                doc=__doc__, define_flags=_define_flags)

def run_cli(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point: the exit status (`tfrecords_tools.cli` conventions)."""
  return cli.run(TOOL, main, argv)


if __name__ == '__main__':
  sys.exit(run_cli())
