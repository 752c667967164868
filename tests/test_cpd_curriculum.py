"""CPD curriculum: the switch rules, the train step under MirroredStrategy,
and the saturation switch in the training job on a held-out split."""

import json
import os

import gin
import numpy as np
from official.nlp.modeling.networks import bert_encoder
import pytest
import tensorflow as tf
import tf_keras

from cpd import curriculum as curriculum_lib
from cpd import heads
from cpd import nce
from cpd import text_encoders
from cpd import train_step
from cpd import trainer as cpd_trainer
from spl import main
from tests import distribute_utils
from tfrecords_tools import holdout
from tfrecords_tools import schema
from tfrecords_tools import testing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

N, D, M, GLOBAL_B, LENGTH, VOCAB = 32, 16, 8, 4, 6, 30


def _strategy():
  return distribute_utils.mirrored_strategy(['/cpu:0', '/cpu:1'])


def _models():
  backbone = tf_keras.Sequential([
      tf_keras.layers.Conv3D(4, 3, padding='same', activation='relu'),
      tf_keras.layers.GlobalAveragePooling3D()])
  backbone.build([None, 2, 8, 8, 3])
  video = heads.build_video_embedding_model(backbone, D)
  encoder = bert_encoder.BertEncoderV2(
      vocab_size=VOCAB, hidden_size=8, num_layers=1, num_attention_heads=2,
      inner_dim=16, max_sequence_length=LENGTH, type_vocab_size=2)
  text = text_encoders.TransformerTextEncoder(encoder)
  head = heads.TextHead(hidden_dim=8, embedding_dim=D)
  return video, text, head


def _batch(step):
  rng = np.random.RandomState(step)
  clips = rng.rand(GLOBAL_B, 2, 8, 8, 3).astype(np.float32)
  ids = rng.randint(4, VOCAB, size=(GLOBAL_B, LENGTH)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[:, 4:] = 0
  tokens = {'input_word_ids': ids * mask, 'input_mask': mask,
            'input_type_ids': np.zeros_like(ids)}
  return clips, tokens, rng.permutation(N)[:GLOBAL_B].astype(np.int32)


def _run(strategy, step, s):
  """Runs `step` on batch `s` split over the 2 replicas; mean metrics."""
  data = _batch(s)
  inputs = strategy.experimental_distribute_values_from_function(
      lambda ctx: tf.nest.map_structure(
          lambda x: x[ctx.replica_id_in_sync_group * 2:
                      (ctx.replica_id_in_sync_group + 1) * 2], data))
  return {k: strategy.reduce('MEAN', v, axis=None).numpy()
          for k, v in step(*inputs).items()}


def _snapshot(variables):
  return [v.numpy().copy() for v in variables]


@pytest.mark.slow  # two traced train steps of BERT + 3D conv, ~30-60 s
def test_stage1_freezes_exactly_the_text_encoder_then_stage2_trains_it(
    tmp_path):
  strategy = _strategy()
  with strategy.scope():
    video, text, head = _models()
    loss_fn = nce.CrossModalNCE(N, D, M, seed=1)
    curriculum = curriculum_lib.Curriculum(switch_epoch=1)
    optimizers = {}
    for stage in (1, 2):
      for group, lr in curriculum.learning_rates(stage).items():
        # Which variables move is the point here, not the step size: the
        # stage-2 text rate (3e-5) times a small gradient can fall below the
        # float32 spacing of a weight near 1 (a layer-norm gamma) and leave it
        # bit-identical although it was trained, so stage 2 steps with 1.0.
        optimizers[(stage, group)] = tf_keras.optimizers.SGD(
            lr if stage == 1 else 1.0)
    clips, tokens, idx = _batch(0)
    video(clips[:1])
    head(text(tf.nest.map_structure(lambda x: x[:1], tokens)))

  def make_step(stage):
    opts = {g: optimizers[(stage, g)] for g in curriculum.learning_rates(stage)}

    @tf.function
    def step(clips, tokens, idx):
      return strategy.run(train_step.cpd_train_step, args=(
          loss_fn, video, text, head, curriculum, opts, clips, tokens, idx,
          stage))
    return step

  def run(step, s):
    return _run(strategy, step, s)['nce/loss']

  text_vars = text.trainable_variables
  other_vars = video.trainable_variables + head.trainable_variables
  assert len(text_vars) > 10 and len(other_vars) == 10
  before_text, before_other = _snapshot(text_vars), _snapshot(other_vars)
  assert curriculum.stage == 1 and not curriculum.text_encoder_training()
  step1 = make_step(1)
  losses = [run(step1, s) for s in range(2)]
  assert np.all(np.isfinite(losses))
  for v, b in zip(text_vars, before_text):
    np.testing.assert_array_equal(v.numpy(), b, err_msg=v.name)
  for v, b in zip(other_vars, before_other):
    assert not np.array_equal(v.numpy(), b), v.name
  # The replicated banks stay identical under the full train step.
  copies = [c.numpy() for c in loss_fn.text_bank.read_replicas()]
  assert np.array_equal(copies[0], copies[1])

  # The switch is state: it survives a checkpoint restore.
  assert not curriculum.update(epoch=0)
  assert curriculum.update(epoch=1)
  assert curriculum.stage == 2
  path = tf.train.Checkpoint(curriculum=curriculum).write(
      str(tmp_path / 'ckpt'))
  restored = curriculum_lib.Curriculum(switch_epoch=1)
  tf.train.Checkpoint(curriculum=restored).read(path).assert_consumed()
  assert restored.stage == 2
  assert restored.learning_rates() == {'text_encoder': 3e-5, 'rest': 0.02}

  before_text = _snapshot(text_vars)
  run(make_step(2), 2)
  changed = [not np.array_equal(v.numpy(), b)
             for v, b in zip(text_vars, before_text)]
  unused = ['pooler_transform' in v.name for v in text_vars]
  assert changed == [not u for u in unused]


def test_switch_when_validation_stops_improving():
  curriculum = curriculum_lib.Curriculum(patience=2, min_delta=0.01)
  switched = [curriculum.update(e, m) for e, m in
              enumerate([0.1, 0.2, 0.205, 0.21, 0.5])]
  assert switched == [False, False, False, True, False]
  assert curriculum.stage == 2
  groups = curriculum.variable_groups([tf.Variable(1.0)], [tf.Variable(2.0)])
  assert sorted(groups) == ['rest', 'text_encoder']
  with pytest.raises(ValueError, match='both groups'):
    shared = tf.Variable(0.0)
    curriculum.variable_groups([shared], [shared])
  with pytest.raises(ValueError, match='patience'):
    curriculum_lib.Curriculum(patience=0)


def _one_stage1_step(strategy, **step_kwargs):
  """Fresh models (seed 0), one stage-1 step on batch 0 with plain SGD.

  Returns:
    (video + head trainable variables, their values before and after, the
    'rest' learning rate, the step's metrics).
  """
  tf_keras.utils.set_random_seed(0)
  with strategy.scope():
    video, text, head = _models()
    loss_fn = nce.CrossModalNCE(N, D, M, seed=1)
    curriculum = curriculum_lib.Curriculum(switch_epoch=1)
    opts = {g: tf_keras.optimizers.SGD(lr)
            for g, lr in curriculum.learning_rates(1).items()}
    clips, tokens, _ = _batch(0)
    video(clips[:1])
    head(text(tf.nest.map_structure(lambda x: x[:1], tokens)))
  variables = video.trainable_variables + head.trainable_variables
  before = _snapshot(variables)

  @tf.function
  def step(clips, tokens, idx):
    return strategy.run(
        train_step.cpd_train_step,
        args=(loss_fn, video, text, head, curriculum, opts, clips, tokens,
              idx, 1), kwargs=step_kwargs)

  metrics = _run(strategy, step, 0)
  return (variables, before, _snapshot(variables),
          curriculum.learning_rates(1)['rest'], metrics)


@pytest.mark.slow  # two traced train steps of BERT + 3D conv
def test_weight_decay_is_coupled_l2_on_kernels_over_replicas():
  # Plain SGD: w' = w - lr * (g + wd * w) for kernels and embeddings, so two
  # runs from the same state that differ only in wd differ by -lr * wd * w
  # there and not at all for biases and norms. The gradients are summed over
  # the 2 replicas, so a decay not scaled by 1/replicas shows as twice that.
  strategy = _strategy()
  wd = 0.1
  variables, before, plain, lr, _ = _one_stage1_step(strategy)
  _, before_wd, decayed, _, _ = _one_stage1_step(strategy, weight_decay=wd)
  for b, c in zip(before, before_wd):
    np.testing.assert_array_equal(b, c)  # The same start.
  kinds = set()
  for v, w, p, d in zip(variables, before, plain, decayed):
    is_kernel = 'kernel' in v.name
    kinds.add(is_kernel)
    np.testing.assert_allclose(d - p, -lr * wd * w if is_kernel else 0.0,
                               rtol=1e-4, atol=1e-6, err_msg=v.name)
  assert kinds == {True, False}  # Kernels and biases were both checked.


@pytest.mark.slow  # two traced train steps of BERT + 3D conv
def test_clip_norm_scales_the_summed_gradient_to_the_norm():
  # Plain SGD: the update is -lr * g, so clipping to c scales every
  # variable's update by c / ||g||, g summed over the 2 replicas (clipping
  # each replica's half before the all-reduce would give another update).
  strategy = _strategy()
  _, before, plain, lr, metrics = _one_stage1_step(strategy)
  assert 'gradient_norm' not in metrics
  updates = [p - b for p, b in zip(plain, before)]
  norm = np.sqrt(sum(np.sum(u.astype(np.float64) ** 2)
                     for u in updates)) / lr
  clip = norm / 4
  _, _, clipped, _, metrics = _one_stage1_step(strategy, clip_norm=clip)
  # The norm before clipping, the same on both replicas.
  np.testing.assert_allclose(metrics['gradient_norm'], norm, rtol=1e-4)
  for u, c, b in zip(updates, clipped, before):
    np.testing.assert_allclose(c - b, u * (clip / norm), rtol=1e-3,
                               atol=1e-7)
  # A norm above the gradient's changes nothing.
  _, _, loose, _, _ = _one_stage1_step(strategy, clip_norm=norm * 2)
  for p, l in zip(plain, loose):
    np.testing.assert_allclose(l, p, rtol=1e-5, atol=1e-7)


# ---- The switch rules ----


def _updates(curriculum, metrics):
  """`update` at the end of epochs 1, 2, ... with these validation results."""
  return [curriculum.update(epoch, m) for epoch, m in enumerate(metrics, 1)]


def test_saturation_switch_fires_on_a_planted_plateau_and_not_before():
  # Rising by more than min_delta, then flat (within min_delta of the best):
  # the third flat validation switches, none before it.
  rising, flat = [0.10, 0.20, 0.30, 0.40], [0.402, 0.404, 0.401]
  curriculum = curriculum_lib.Curriculum(patience=3, min_delta=0.005)
  assert curriculum.needs_validation and curriculum.monitors_validation
  switched = _updates(curriculum, rising + flat + [0.9])
  assert switched == [False] * 6 + [True, False]
  assert curriculum.stage == 2 and not curriculum.monitors_validation
  assert float(curriculum.best_metric.numpy()) == 0.40
  assert 'stage 2' in curriculum.describe()

  # Still rising (each step > min_delta), or a flat stretch broken by an
  # improvement, or epochs without validation: no switch.
  slow = curriculum_lib.Curriculum(patience=3, min_delta=0.005)
  assert not any(_updates(slow, [0.1 + 0.006 * i for i in range(50)]))
  broken = curriculum_lib.Curriculum(patience=3, min_delta=0.005)
  assert not any(_updates(broken, [0.4, 0.4, 0.4, 0.5, 0.5, 0.5]))
  assert int(broken.stale_validations.numpy()) == 2
  assert not any(_updates(broken, [None] * 20))
  assert broken.update(99, 0.5) and broken.stage == 2
  # NaN is no improvement.
  nan = curriculum_lib.Curriculum(patience=1)
  assert _updates(nan, [0.2, float('nan')]) == [False, True]


@pytest.mark.parametrize('switch_epoch', [170, 110])  # R34, R50 (paper 4.2)
def test_fixed_switch_fires_exactly_at_the_configured_epoch(switch_epoch):
  curriculum = curriculum_lib.Curriculum(switch_epoch=switch_epoch)
  assert not curriculum.needs_validation
  # Validation results (if any) do not matter in this mode.
  switched = [curriculum.update(e, 0.5) for e in range(1, 251)]
  assert switched.index(True) + 1 == switch_epoch and sum(switched) == 1
  assert curriculum.learning_rates() == {'text_encoder': 3e-5, 'rest': 0.02}


def test_with_both_rules_the_first_one_switches():
  early = curriculum_lib.Curriculum(switch_epoch=170, patience=2)
  assert _updates(early, [0.3, 0.3, 0.3]) == [False, False, True]
  late = curriculum_lib.Curriculum(switch_epoch=3, patience=2)
  assert _updates(late, [0.1, 0.2, 0.3]) == [False, False, True]


def test_saturation_state_survives_a_checkpoint(tmp_path):
  curriculum = curriculum_lib.Curriculum(patience=3, min_delta=0.005)
  _updates(curriculum, [0.3, 0.4, 0.401, 0.402])
  path = tf.train.Checkpoint(curriculum=curriculum).write(
      str(tmp_path / 'ckpt'))
  restored = curriculum_lib.Curriculum(patience=3, min_delta=0.005)
  tf.train.Checkpoint(curriculum=restored).read(path).assert_consumed()
  assert int(restored.stale_validations.numpy()) == 2
  assert float(restored.best_metric.numpy()) == 0.4
  assert restored.stage == 1 and restored.update(5, 0.403)  # The third.
  with pytest.raises(ValueError, match='min_delta'):
    curriculum_lib.Curriculum(patience=3, min_delta=-0.1)


# ---- The switch in the training job, on a split of the hold-out tool ----

NUM_CLIPS = 16  # 8 videos of 2 clips; 2 held out -> 12 training clips.
WORDS = ['title', 'of', 'clip'] + [str(i) for i in range(NUM_CLIPS)]


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


@pytest.fixture(scope='module')
def split(tmp_path_factory):
  root = tmp_path_factory.mktemp('cpd_split')
  pattern = os.path.join(str(root / 'web'), schema.shard_pattern())
  testing.write_fake_clip_records(str(root / 'web'), num_clips=NUM_CLIPS,
                                  num_shards=2)
  holdout.holdout(records_pattern=pattern, num_pairs=2,
                  output_dir=str(root / 'split'))
  with open(root / 'split' / 'train' / schema.SUMMARY_FILENAME) as f:
    num_train = json.load(f)['clips']
  rng = np.random.RandomState(0)
  w2v = root / 'vectors.txt'
  w2v.write_text('\n'.join([f'{len(WORDS)} 6'] + [
      w + ' ' + ' '.join(f'{x:.4f}' for x in rng.randn(6)) for w in WORDS]) +
                 '\n')
  return {'train': str(root / 'split' / 'train' / schema.shard_pattern()),
          'val': str(root / 'split' / 'val' / schema.shard_pattern()),
          'num_train': num_train, 'w2v': str(w2v)}


def _run_job(split, model_dir, bindings, mode='train'):
  gin.clear_config()
  base = [f"TRAIN_FILES='{split['train']}'", f"EVAL_FILES='{split['val']}'",
          f"NUM_TRAIN_EXAMPLES={split['num_train']}",
          f"WORD2VEC_PATH='{split['w2v']}'"]
  try:
    return main.run([os.path.join(ROOT, 'gin_configs', 'runs',
                                  'cpd_pretrain_w2v.gin'),
                     os.path.join(ROOT, 'gin_configs', 'tiny.gin')],
                    base + list(bindings), model_dir=str(model_dir),
                    mode=mode,
                    strategy=tf.distribute.OneDeviceStrategy('/cpu:0'))
  finally:
    gin.clear_config()


def test_training_switches_when_planted_validation_saturates(
    split, tmp_path, monkeypatch):
  # 12 training clips, batch 4: 3 steps per epoch, 6 epochs. Validation
  # (planted) rises, then stays flat: with patience 2 the switch comes at the
  # end of epoch 4, and in 'train' mode no validation runs after it.
  assert split['num_train'] == 12
  planted = iter([0.1, 0.3, 0.3, 0.3])
  seen = []

  def fake_validate(models, *args, **kwargs):
    del args, kwargs
    seen.append(models.curriculum.stage)
    return {'mean_R@10': next(planted), 'num_pairs': 2}

  monkeypatch.setattr(cpd_trainer, 'validate', fake_validate)
  model_dir = tmp_path / 'saturation'
  result = _run_job(split, model_dir, [
      'SWITCH_EPOCH=None', 'cpd_curriculum.patience=2',
      'cpd_curriculum.min_delta=0.01', 'cpd_run.train_steps=18',
      'loop.checkpoint_every_steps=100',
      'loop.max_checkpoints_to_keep=10'])
  assert seen == [1, 1, 1, 1]
  assert result['stage'] == 2 and result['train']['stage'] == 2
  assert result['train']['learning_rate/text_encoder'] == pytest.approx(3e-5)
  # The switch was checkpointed at the end of epoch 4 (step 12), in stage 1
  # before it.
  stage_of = lambda step: tf.train.load_checkpoint(
      str(model_dir / f'ckpt-{step}')).get_tensor(
          'curriculum/stage_variable/.ATTRIBUTES/VARIABLE_VALUE')
  assert stage_of(9) == 1 and stage_of(12) == 2
  # The real validation reads the held-out pairs of the split.
  monkeypatch.undo()
  evaluated = _run_job(split, model_dir, [], mode='eval')
  assert evaluated['eval']['num_pairs'] == 2


@pytest.mark.parametrize('mode', ['train', 'train_and_eval'])
def test_saturation_switch_without_validation_files_is_refused(
    split, tmp_path, mode):
  model_dir = tmp_path / 'no_val'
  with pytest.raises(ValueError, match=r'`patience`=3.*`eval_file_pattern`'
                     r'.*not set'):
    _run_job(split, model_dir, ['EVAL_FILES=None', 'cpd_curriculum.patience=3'],
         mode=mode)
  assert not model_dir.exists()  # Refused before anything was built.
