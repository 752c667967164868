r"""Grad-CAM attention maps of a trained checkpoint (the SPL paper's Figure 6).

  python -m spl.attention_maps --model_dir=/tmp/spl_b_pretrain \
    --records='/data/web/relabelled/clips-*.tfrecord' --num_clips=4 \
    --label_space=/data/web/relabelled/label_space.json \
    --class_name='weak: baking cookies / teacher: scrambling eggs' \
    --output_dir=/tmp/attention

For every selected clip it writes `<output_dir>/NNN_<clip key>.png`: one row
of frames with the heat map of the chosen class overlaid, and
`attention_maps.json` listing each clip, its PNG, the class explained, its
probability and the model's top-1 class.

* Model: `--model_dir` restores its latest checkpoint and rebuilds the
  classifier from the `model.json` the trainer wrote there (its Keras config:
  what was trained, whatever the gin files say today); the clip shape and
  normalisation come from the `config.gin` `spl.main` wrote there unless
  `--gin_file` is given (`make_dataset.num_frames` / `stride` / `crop_size`,
  eval scope first). Without a `model.json` (`--checkpoint`, a prefix or a
  directory, or a run older than it) the gin files build the classifier
  (`run.model_fn`, `run.num_classes`); `--checkpoint` needs `--gin_file`.
* Clips: `--clip_keys` (comma-separated `clip/key`s) or the first
  `--num_clips` records of `--records` (sorted shard order). Each is
  preprocessed exactly like one evaluation view (`spl.input_pipeline`: middle
  window, centre crop, same normalisation), so the map explains what the
  model saw.
* Weights: a checkpoint with a moving average of the weights
  (`run.ema_decay`) is explained with the averaged weights, the ones the
  trainer evaluated and `spl.export` exports; `--noema_weights` for the raw
  ones. `attention_maps.json` says which (`weights`: 'ema' or 'raw').
* Class: `--class_name` (looked up in `--label_space`: a relabeller's
  `label_space.json`, or a `label_map.json` for a teacher), or
  `--class_index`; with neither, each clip's top-1 predicted class.

Flags live here only; the work is `run`, a plain function.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

from absl import flags
from absl import logging
import gin
import numpy as np
import tensorflow as tf

from spl import configurables
from spl import gradcam
from spl import input_pipeline
from spl import job
from spl import loop
from spl.models import factory
from tfrecords_tools import cli
from tfrecords_tools import file_patterns
from tfrecords_tools import label_spaces
from tfrecords_tools import records
from tfrecords_tools import schema

INDEX_FILENAME = 'attention_maps.json'
# The gin config the maps were made with, next to them.
CONFIG_OUT_FILENAME = 'config_attention_maps.gin'
CONFIG_FILENAME = 'config.gin'  # What `spl.main` writes into a model dir.
# Gin `include` paths are relative to the repository root.
# Scopes the clip shape is looked up in: evaluation is what a map explains.
_DATASET_SCOPES = ('eval/', '', 'train/')
# `make_dataset` arguments that shape the evaluation view, besides the clip.
_VIEW_OPTIONS = ('mean', 'std', 'min_resize', 'dct_method')


def _define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string('model_dir', None,
                      'Training run dir: latest checkpoint + config.gin.',
                      flag_values=fv)
  flags.DEFINE_string('checkpoint', None,
                      'Checkpoint prefix or directory (instead of the latest '
                      'of --model_dir); needs --gin_file.', flag_values=fv)
  flags.DEFINE_multi_string('gin_file', [],
                            'Gin files that built the model (default: '
                            '--model_dir/config.gin).', flag_values=fv)
  flags.DEFINE_multi_string('gin_bindings', [], 'Extra gin bindings.',
                            flag_values=fv)
  flags.DEFINE_string('records', None, 'Glob of clip records.', flag_values=fv)
  flags.DEFINE_list('clip_keys', [], 'clip/key values of the clips to show.',
                    flag_values=fv)
  flags.DEFINE_integer('num_clips', None,
                       'Show the first N records (if no --clip_keys).',
                       flag_values=fv)
  flags.DEFINE_string('class_name', None,
                      'Class to explain, a name of --label_space.',
                      flag_values=fv)
  flags.DEFINE_integer('class_index', None, 'Class to explain, by index.',
                       flag_values=fv)
  flags.DEFINE_string('label_space', None,
                      'label_space.json (or label_map.json): class names.',
                      flag_values=fv)
  flags.DEFINE_string('output_dir', None, 'Where PNGs and the index go.',
                      flag_values=fv)
  flags.DEFINE_integer('max_frames', 8, 'Frames per strip.', flag_values=fv)
  flags.DEFINE_float('alpha', 0.5, 'Heat map opacity.', flag_values=fv)
  flags.DEFINE_bool('ema_weights', True, 'Explain the checkpoint\'s moving '
                    'average of the weights (run.ema_decay: what the trainer '
                    'evaluated) when it has one; --noema_weights: the raw '
                    'weights.', flag_values=fv)


# ---- Configuration ----


def _resolve(value):
  """A gin value as the callee would receive it (macros evaluated)."""
  if isinstance(value, gin.config.ConfigurableReference):
    return (value.scoped_configurable_fn() if value.evaluate
            else value.scoped_configurable_fn)
  return value


def _query(selector: str, default: Any) -> Any:
  try:
    return _resolve(gin.query_parameter(selector))
  except ValueError:
    return default


_UNSET = object()


def _dataset_option(name: str) -> Any:
  for scope in _DATASET_SCOPES:
    value = _query(f'{scope}make_dataset.{name}', _UNSET)
    if value is not _UNSET:
      return value
  return _UNSET


def parse_config(gin_files: Sequence[str],
                 gin_bindings: Sequence[str]) -> Dict[str, Any]:
  """Parses the gin files of a training run; returns what the maps need.

  Clears any gin config first: this is an entry point's job.

  Returns:
    A dict: `model_fn`, `num_classes` (None if unbound), `num_frames`,
    `stride`, `crop_size` and the bound view options (`mean`, `std`, ...).
  """
  if not gin_files:
    raise ValueError('--gin_file must be set (or --model_dir holding '
                     f'{CONFIG_FILENAME})')
  # Not finalised: run files leave data macros %gin.REQUIRED, which only
  # matter to the trainer.
  job.parse_gin(gin_files, gin_bindings, finalize=False, clear=True)
  defaults = inspect.signature(input_pipeline.make_dataset).parameters
  config = {
      'model_fn': _query('run.model_fn', configurables.build_classifier),
      'num_classes': _query('run.num_classes', None),
  }
  for name in ('num_frames', 'stride', 'crop_size'):
    value = _dataset_option(name)
    config[name] = defaults[name].default if value is _UNSET else value
  if _dataset_option('image_mode') is True:
    raise ValueError('the gin config is an image-mode run; Grad-CAM here is '
                     'for 3D video networks')
  for name in _VIEW_OPTIONS:
    value = _dataset_option(name)
    if value is not _UNSET:
      config[name] = value
  return config


def resolve_checkpoint(*, model_dir: Optional[str],
                       checkpoint: Optional[str]) -> str:
  """The checkpoint prefix to restore, from --checkpoint or --model_dir."""
  path = checkpoint or model_dir
  what = '--checkpoint' if checkpoint else '--model_dir'
  if not path:
    raise ValueError('one of --model_dir and --checkpoint must be set')
  try:
    return loop.checkpoint_path(path)
  except ValueError as e:
    raise ValueError(f'{what} {path!r}: {e}') from e


def load_class_names(path: str) -> List[str]:
  """Class names by index from a label_space.json or a label_map.json."""
  if not tf.io.gfile.exists(path):
    raise ValueError(f'--label_space {path!r} does not exist')
  if os.path.basename(path) == schema.LABEL_MAP_FILENAME:
    return records.read_label_map(path)
  with tf.io.gfile.GFile(path) as f:
    space = label_spaces.parse_label_space(f.read(), source=path)
  return [c['name'] for c in space['classes']]


# ---- Clips ----


def select_records(file_pattern: str, *, clip_keys: Sequence[str] = (),
                   num_clips: Optional[int] = None) -> List[bytes]:
  """Serialized clip records by key (in `clip_keys` order) or the first N.

  Only the record bytes are read here; frames are decoded later, for the
  selected clips only.
  """
  if not file_pattern:
    raise ValueError('--records must be set')
  files = file_patterns.match(file_pattern, '--records')
  keys = [k.strip() for k in clip_keys if k.strip()]
  if bool(keys) == (num_clips is not None):
    raise ValueError('exactly one of --clip_keys and --num_clips must be set')
  if num_clips is not None and num_clips <= 0:
    raise ValueError(f'--num_clips must be > 0, got {num_clips}')
  wanted = set(keys)
  found: Dict[str, bytes] = {}
  first: List[bytes] = []
  for path in files:
    for serialized in tf.data.TFRecordDataset(path).as_numpy_iterator():
      if num_clips is not None:
        first.append(serialized)
        if len(first) == num_clips:
          return first
        continue
      key = records.parse_clip_example(serialized)[schema.CLIP_KEY_KEY]
      if key in wanted and key not in found:
        found[key] = serialized
        if len(found) == len(wanted):
          return [found[k] for k in keys]
  if num_clips is not None:
    logging.warning('--records %r hold only %d clips (--num_clips=%d)',
                    file_pattern, len(first), num_clips)
    return first
  missing = [k for k in keys if k not in found]
  raise ValueError(f'--clip_keys {missing} not found in --records '
                   f'{file_pattern!r} ({len(files)} files)')


def _views(serialized: Sequence[bytes], config: Dict[str, Any],
           scratch_dir: str) -> List[Dict[str, Any]]:
  """One evaluation view per record, via the real input pipeline."""
  path = os.path.join(scratch_dir, 'selected.tfrecord')
  with tf.io.TFRecordWriter(path) as writer:
    for s in serialized:
      writer.write(s)
  options = {k: config[k] for k in _VIEW_OPTIONS if k in config}
  ds = input_pipeline.make_dataset(
      path, is_training=False, batch_size=1, num_frames=config['num_frames'],
      stride=config['stride'], crop_size=config['crop_size'],
      num_test_clips=1, num_test_crops=1, deterministic=True, repeat=False,
      drop_remainder=False, **options)
  out = []
  for batch in ds.as_numpy_iterator():
    out.append({'video': batch[input_pipeline.VIDEO][0, 0],
                'clip_key': batch[input_pipeline.CLIP_KEY][0].decode('utf-8')})
  return out


def _file_stem(index: int, clip_key: str) -> str:
  return f'{index:03d}_' + re.sub(r'[^A-Za-z0-9._-]+', '_', clip_key)[:80]


# ---- The job ----


def run(*, output_dir: str, records_pattern: str,
        model_dir: Optional[str] = None, checkpoint: Optional[str] = None,
        gin_files: Sequence[str] = (), gin_bindings: Sequence[str] = (),
        clip_keys: Sequence[str] = (), num_clips: Optional[int] = None,
        class_name: Optional[str] = None, class_index: Optional[int] = None,
        label_space: Optional[str] = None, max_frames: int = 8,
        alpha: float = 0.5, ema_weights: bool = True) -> List[Dict[str, Any]]:
  """Writes one Grad-CAM strip per selected clip; what `main` does.

  Args:
    output_dir: Where the PNGs and `attention_maps.json` go.
    records_pattern: Glob of clip records.
    model_dir: Training run dir (latest checkpoint; its config.gin when
      `gin_files` is empty).
    checkpoint: Checkpoint prefix or directory, instead of `model_dir`'s.
    gin_files: Gin files that build the model and give the clip shape.
    gin_bindings: Extra gin bindings.
    clip_keys: Clips to show, by `clip/key`.
    num_clips: Otherwise, show the first N records.
    class_name: Class to explain, a name in `label_space`.
    class_index: Class to explain, by index.
    label_space: label_space.json or label_map.json (class names).
    max_frames: Frames per strip, evenly spread over the clip.
    alpha: Heat map opacity in [0, 1].
    ema_weights: explain the checkpoint's moving average of the trainable
      weights (`run.ema_decay`), when it has one, not the raw weights.

  Returns:
    One dict per clip, as written to `attention_maps.json`.
  """
  # ---- Everything that can be wrong is checked before the model is built --
  if not output_dir:
    raise ValueError('--output_dir must be set')
  if class_name is not None and class_index is not None:
    raise ValueError('set at most one of --class_name and --class_index')
  if class_name is not None and not label_space:
    raise ValueError(f'--class_name {class_name!r} needs --label_space')
  if max_frames <= 0:
    raise ValueError(f'--max_frames must be > 0, got {max_frames}')
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f'--alpha must be in [0, 1], got {alpha}')
  path = resolve_checkpoint(model_dir=model_dir, checkpoint=checkpoint)
  if not gin_files and model_dir:
    gin_files = [os.path.join(model_dir, CONFIG_FILENAME)]
  config = parse_config(gin_files, gin_bindings)
  trained = None
  model_config = (os.path.join(model_dir, factory.MODEL_CONFIG_FILENAME)
                  if model_dir and not checkpoint else None)
  if model_config and tf.io.gfile.exists(model_config):
    trained = factory.classifier_from_config_file(model_config)
    config['num_classes'] = trained.get_config()['num_classes']
    source = f'the trained model ({model_config}) has '
  else:
    source = 'the gin config sets run.num_classes='
  names = load_class_names(label_space) if label_space else None
  num_classes = config['num_classes']
  if names is not None:
    if num_classes is not None and num_classes != len(names):
      raise ValueError(
          f'--label_space {label_space!r} has {len(names)} classes but '
          f'{source}{num_classes}')
    num_classes = len(names)
  if num_classes is None:
    raise ValueError('the number of classes is unknown: give --label_space '
                     'or bind run.num_classes in the gin config')
  if class_name is not None:
    class_index = gradcam.class_index_of(class_name, names, source=label_space)
  if class_index is not None and not 0 <= class_index < num_classes:
    raise ValueError(f'--class_index must be in [0, {num_classes}), got '
                     f'{class_index}')
  selected = select_records(records_pattern, clip_keys=clip_keys,
                            num_clips=num_clips)

  # ---- Model ----
  input_shape = (config['num_frames'], config['crop_size'],
                 config['crop_size'], 3)
  model = trained or config['model_fn'](num_classes=num_classes,
                                        input_shape=input_shape)
  model(tf.zeros((1,) + input_shape), training=False)  # Creates variables.
  weights = loop.restore_model_weights(model, path, ema_weights)
  logging.info('restored %s (%s weights)', path, weights)
  cam = gradcam.GradCam(model)

  # ---- Maps ----
  tf.io.gfile.makedirs(output_dir)
  mean = config.get('mean', input_pipeline.IMAGENET_MEAN)
  std = config.get('std', input_pipeline.IMAGENET_STD)

  def name_of(i):
    return names[i] if names is not None else f'class {i}'

  results = []
  with tempfile.TemporaryDirectory() as scratch:
    views = _views(selected, config, scratch)
  parsed_by_key = {}
  for serialized in selected:
    parsed = records.parse_clip_example(serialized)
    parsed_by_key[parsed[schema.CLIP_KEY_KEY]] = parsed
  for i, view in enumerate(views):
    parsed = parsed_by_key[view['clip_key']]
    clip = view['video'][None]
    if class_index is None:
      logits = model(clip, training=False).numpy()
      target = int(np.argmax(logits[0]))
    else:
      target = class_index
    heat, logits = cam(clip, target)
    probs = tf.nn.softmax(logits[0]).numpy()
    top1 = int(np.argmax(probs))
    title = (f'Grad-CAM for "{name_of(target)}" (p={probs[target]:.2f})\n'
             f'clip {view["clip_key"]}   label: '
             f'{parsed.get(schema.LABEL_TEXT_KEY, "?")}   top-1: '
             f'"{name_of(top1)}" (p={probs[top1]:.2f})')
    png = _file_stem(i, view['clip_key']) + '.png'
    shown = gradcam.write_strip(
        os.path.join(output_dir, png),
        gradcam.denormalize(view['video'], mean, std), heat[0], title=title,
        max_frames=max_frames, alpha=alpha)
    results.append({
        'clip_key': view['clip_key'],
        'png': png,
        'frames_shown': shown,
        'class_index': target,
        'class_name': name_of(target),
        'probability': float(probs[target]),
        'top1_index': top1,
        'top1_name': name_of(top1),
        'top1_probability': float(probs[top1]),
        'label_text': parsed.get(schema.LABEL_TEXT_KEY),
    })
    logging.info('clip %d/%d %s -> %s', i + 1, len(selected),
                 view['clip_key'], png)
  job.write_operative_config(output_dir, CONFIG_OUT_FILENAME, operative=False)
  records.write_json_atomic(os.path.join(output_dir, INDEX_FILENAME), {
      'checkpoint': path, 'weights': weights, 'records': records_pattern,
      'clips': results})
  return results


def main(args: cli.Args) -> int:
  """Draws the maps of a parsed command line; returns the exit status."""
  FLAGS = args.flags  # pylint: disable=invalid-name
  with job.config_errors_exit('spl.attention_maps'):
    results = run(
        output_dir=FLAGS.output_dir, records_pattern=FLAGS.records,
        model_dir=FLAGS.model_dir, checkpoint=FLAGS.checkpoint,
        gin_files=FLAGS.gin_file, gin_bindings=FLAGS.gin_bindings,
        clip_keys=FLAGS.clip_keys, num_clips=FLAGS.num_clips,
        class_name=FLAGS.class_name, class_index=FLAGS.class_index,
        label_space=FLAGS.label_space, max_frames=FLAGS.max_frames,
        alpha=FLAGS.alpha, ema_weights=FLAGS.ema_weights)
  for r in results:
    print(f'{os.path.join(FLAGS.output_dir, r["png"])}  '
          f'"{r["class_name"]}" p={r["probability"]:.3f}')
  return 0


TOOL = cli.Tool(name='spl.attention_maps',
                command='python -m spl.attention_maps', doc=__doc__,
                define_flags=_define_flags)

def run_cli(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point: the exit status (`tfrecords_tools.cli` conventions)."""
  return cli.run(TOOL, main, argv)


if __name__ == '__main__':
  sys.exit(run_cli())
