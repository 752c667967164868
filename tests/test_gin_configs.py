"""Every shipped gin file parses, alone and under the tiny overlay."""

import glob
import os

import gin
import pytest

from cpd import configurables as cpd_configurables  # noqa: F401 (cpd.evaluate names)
from spl import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_FILES = sorted(glob.glob(os.path.join(ROOT, 'gin_configs', '**', '*.gin'),
                             recursive=True))
RUN_FILES = [f for f in GIN_FILES if os.sep + 'runs' + os.sep in f
             and not f.endswith('common.gin')]
# Values for every %gin.REQUIRED macro a run file may leave open.
REQUIRED = [
    "TRAIN_FILES = '/data/train/clips-*.tfrecord'",
    "EVAL_FILES = '/data/val/clips-*.tfrecord'",
    "PREDICT_FILES = '/data/web/clips-*.tfrecord'",
    'NUM_TRAIN_EXAMPLES = 1000',
    'NUM_CLASSES = 10',
    "INIT_CHECKPOINT = '/tmp/pretrain'",
    "TEXT_ENCODER_DIR = '/models/bert'",
    "WORD2VEC_PATH = '/models/vectors.bin'",
    "LABEL_SPACE = '/data/web_spl/label_space.json'",
    "CHECKPOINT = '/tmp/cpd_pretrain'",
    "IMAGENET_CHECKPOINT = '/models/resnet50.h5'",
    'TRAIN_EPOCHS = 90',
    'LEARNING_RATE = 0.1',
]


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def test_there_are_model_run_and_tiny_files():
  names = [os.path.relpath(f, ROOT) for f in GIN_FILES]
  assert 'gin_configs/tiny.gin' in names
  assert any(n.startswith('gin_configs/models/') for n in names)
  assert len(RUN_FILES) >= 5


@pytest.mark.parametrize('path', GIN_FILES,
                         ids=[os.path.relpath(f, ROOT) for f in GIN_FILES])
def test_gin_file_parses(path):
  main.parse_gin([path], REQUIRED)


@pytest.mark.parametrize('path', GIN_FILES,
                         ids=[os.path.relpath(f, ROOT) for f in GIN_FILES])
def test_gin_file_starts_with_its_command(path):
  with open(path) as f:
    head = ''.join(f.readline() for _ in range(3))
  assert head.startswith('#') and ('python -m spl.main' in head or
                                   'python -m cpd.evaluate' in head), head


@pytest.mark.parametrize('path', RUN_FILES,
                         ids=[os.path.relpath(f, ROOT) for f in RUN_FILES])
def test_run_file_with_tiny_overlay(path):
  main.parse_gin([path, os.path.join(ROOT, 'gin_configs', 'tiny.gin')],
                 REQUIRED)
  try:
    job = gin.query_parameter('job.fn').selector
  except ValueError:
    job = 'run'
  if job == 'cpd_run':  # CPD pre-training (cpd/trainer.py).
    assert gin.query_parameter('cpd_run.video_backbone') == 'tiny3d'
    assert gin.query_parameter('cpd_run.train_steps') == 2
    return
  assert gin.query_parameter('build_classifier.backbone') == 'tiny3d'
  assert gin.query_parameter('run.train_steps') == 2
  assert gin.query_parameter('run.model_fn').selector == 'build_classifier'


@pytest.mark.parametrize('path', RUN_FILES,
                         ids=[os.path.relpath(f, ROOT) for f in RUN_FILES])
def test_run_file_demands_its_required_macros(path):
  with pytest.raises(ValueError, match='REQUIRED'):
    main.parse_gin([path], [])
