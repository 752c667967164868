"""The steps compile with XLA, as a TPU needs, and pass the TPU op audit.

Under a `TPUStrategy` the function given to `strategy.run` (the per-replica
step) is compiled by XLA. `XlaReplicaStrategy` does that on CPU: a
OneDeviceStrategy that wraps every such function in
`tf.function(jit_compile=True)`. The real code paths (SPL's
`ClassificationTask.train_steps` loop, `spl.evaluation.evaluate`,
`spl.prediction.predict`, CPD's `cpd_train_step` through
`tests.distribute_utils.CpdStepRun`, also with the real word2vec encoder on
title tokens) then run twice from the same weights
and data, once with and once without XLA, and must agree within float
rounding: losses, metrics, every weight and optimizer slot, EMA shadows,
batch-norm statistics, (CPD) both memory banks, Z and the sampler step.
Negatives are drawn with stateless ops from (seed, step), so both runs
draw the same ones (checked directly below).

Tolerance: rtol 1e-5 / atol 1e-6 (measured: 3e-8 on probabilities and
prediction scores; 2e-7 on CPD weights and banks, 3e-6 relative on CPD
metrics and Z, an exp(score / 0.07) sum), except the SPL train step: rtol
1e-4 / atol 1e-5 (measured: up to 2e-6 absolute on weights after 3 steps;
XLA's and oneDNN's 3D convolutions and batch norm round differently).

Not covered: the sharded bank on several replicas runs only without XLA
here (MirroredStrategy cannot run an XLA-compiled replica function on CPU:
its variables live on other devices and its collectives would cross the
compiled program); its step graph is audited, and the sharded bank's code
path runs under XLA with one shard.

The op audit (`spl.tpu_audit`) walks each compiled step, nested functions
included; planted bad steps must be refused with the op and the planted
line named. CPD's step passes it with either real text encoder because it
takes the encoder's `tokenize` output (int32 tokens, made in the input
pipeline), not title strings, which it refuses.
"""

import functools
import os
import re

import numpy as np
from official.nlp.modeling.networks import bert_encoder
import pytest
import tensorflow as tf
import tf_keras

from cpd import memory_bank
from cpd import nce
from cpd import text_encoders
from cpd import tokenizer as tokenizer_lib
from cpd import train_step
from spl import data_parameters
from spl import ema as ema_lib
from spl import evaluation
from spl import input_pipeline
from spl import losses
from spl import optimization
from spl import prediction
from spl import tpu_audit
from spl import train_lib
from spl.models import factory
from tests import distribute_utils
from tfrecords_tools import records
from tfrecords_tools import schema
from tfrecords_tools import testing

NUM_CLASSES = 3
TINY_DATA = dict(num_frames=4, stride=1, crop_size=32, num_test_clips=2,
                 deterministic=True)
CLIP_SHAPE = (4, 32, 32, 3)
BATCH = 4
RTOL, ATOL = 1e-5, 1e-6
# The SPL train step: XLA's and oneDNN's 3D convolutions and batch norm
# round differently (1e-5 relative on a gradient), and the differences grow
# over the steps; measured up to 2e-6 absolute after 3 steps, a sixth of
# this tolerance, over 8 initialisations.
TRAIN_RTOL, TRAIN_ATOL = 1e-4, 1e-5
CLIP_NORM = 0.5  # Below the gradient norms of these steps: it clips.


class XlaReplicaStrategy(tf.distribute.OneDeviceStrategy):
  """OneDeviceStrategy that XLA-compiles what `run` runs, as a TPU would.

  While `xla` is true every function given to `run` is wrapped in
  `tf.function(jit_compile=True)` (compilation fails on any op XLA cannot
  compile) and its ConcreteFunction is kept in `compiled`, for the audit.
  The flag is read when the caller's `tf.function` is traced.
  """

  def __init__(self, device='/cpu:0'):
    super().__init__(device)
    self.xla = False
    self.compiled = []

  def run(self, fn, args=(), kwargs=None, options=None):
    if not self.xla:
      return super().run(fn, args=args, kwargs=kwargs, options=options)
    jitted = tf.function(fn, jit_compile=True)

    def replica_fn(*a, **k):
      self.compiled.append(jitted.get_concrete_function(*a, **k))
      return jitted(*a, **k)

    return super().run(replica_fn, args=args, kwargs=kwargs,
                       options=options)


def _assert_close(got, want, what, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def _check_audit(concrete_functions):
  assert concrete_functions, 'no step was compiled with XLA'
  for concrete in concrete_functions:
    tpu_audit.check(concrete)


@pytest.fixture(scope='module')
def clip_records(tmp_path_factory):
  root = tmp_path_factory.mktemp('clips')
  testing.write_fake_clip_records(str(root), num_clips=7, num_shards=2,
                                  num_classes=NUM_CLASSES)
  return str(root / schema.shard_pattern())


def _dataset_fn(**kwargs):
  return functools.partial(input_pipeline.make_dataset, **TINY_DATA, **kwargs)


def _classifier(strategy):
  with strategy.scope():
    model = factory.build_classifier('tiny3d', num_classes=NUM_CLASSES,
                                     input_shape=CLIP_SHAPE, dropout_rate=0.0)
    model(tf.zeros((1,) + CLIP_SHAPE), training=False)
  return model


# ---- SPL train step ----


def _spl_task(strategy, *, clip_norm, loss_fn=losses.softmax_cross_entropy,
              initial=None):
  """A `ClassificationTask` as `train_lib.run` builds it: tiny3d (batch
  norm), SGD with momentum on a warmup + cosine schedule, weight decay, an
  EMA of the weights, optional clipping."""
  model = _classifier(strategy)
  with strategy.scope():
    if hasattr(loss_fn, 'build'):
      loss_fn.build(num_classes=NUM_CLASSES)
    if initial is not None:
      for v, value in zip(model.weights, initial):
        v.assign(value)
    lr = optimization.build_learning_rate(
        base_learning_rate=0.05, global_batch_size=BATCH, steps_per_epoch=2,
        total_steps=4, base_batch_size=None, warmup_epochs=0.5)
    optimizer = optimization.build_sgd(lr, momentum=0.9)
    optimizer.build(model.trainable_variables)
    average = ema_lib.WeightAverage(model.trainable_variables, 0.9)
  return train_lib.ClassificationTask(
      strategy=strategy, model=model, optimizer=optimizer, loss_fn=loss_fn,
      num_classes=NUM_CLASSES, global_batch_size=BATCH, steps_per_epoch=2,
      weight_decay=1e-3, mixed_precision=None, jit_compile=False,
      clip_norm=clip_norm, average=average)


def _spl_state(task):
  """Weights (batch-norm statistics included), optimizer slots, shadows."""
  return ([v.numpy() for v in task.model.weights] +
          [v.numpy() for v in task.optimizer.variables] +
          [v.numpy() for v in task.average.shadows])


def _train_batches(pattern, num=3):
  """Training batches as the trainer feeds them, uint8 clips finished in
  the step (`device_finishing`, what a TPU run uses)."""
  ds = _dataset_fn(device_finishing=True)(
      pattern, is_training=True, batch_size=BATCH, input_context=None,
      num_classes=NUM_CLASSES).map(train_lib._train_features)  # pylint: disable=protected-access
  return list(ds.take(num).as_numpy_iterator())


def _train(task, batches):
  """(per-step results of `train_steps`, per-step state), one step a loop."""
  iterator = iter(task.strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensor_slices(
          {k: np.stack([b[k] for b in batches]) for k in batches[0]})))
  results, states = [], []
  for _ in batches:
    results.append(task.train_steps(iterator, 1))
    states.append(_spl_state(task))
  return results, states


@pytest.fixture(scope='module', params=[
    pytest.param(None, id='no_clip'),
    pytest.param(CLIP_NORM, id='clip', marks=pytest.mark.slow)])
def spl_train_runs(request, clip_records):
  """The same 3 steps from the same weights without and with XLA."""
  tf_keras.utils.set_random_seed(0)  # Whichever test sets it up.
  strategy = XlaReplicaStrategy()
  batches = _train_batches(clip_records)
  reference = _spl_task(strategy, clip_norm=request.param)
  initial = _spl_state(reference)
  want = _train(reference, batches)
  strategy.xla = True
  tested = _spl_task(strategy, clip_norm=request.param,
                     initial=initial[:len(reference.model.weights)])
  assert all(np.array_equal(a, b) for a, b in
             zip(_spl_state(tested), initial))
  got = _train(tested, batches)
  assert len(strategy.compiled) == 1  # One compiled step, run 3 times.
  return dict(want=want, got=got, initial=initial,
              num_weights=len(reference.model.weights),
              compiled=list(strategy.compiled))


def test_spl_train_step_with_xla_equals_without(spl_train_runs):
  (want_results, want_states) = spl_train_runs['want']
  (got_results, got_states) = spl_train_runs['got']
  for step, (g, w) in enumerate(zip(got_results, want_results)):
    assert sorted(g) == sorted(w)
    for name in w:
      _assert_close(g[name], w[name], f'step {step}: {name}', TRAIN_RTOL,
                    TRAIN_ATOL)
  for step, (g, w) in enumerate(zip(got_states, want_states)):
    for k, (gv, wv) in enumerate(zip(g, w)):
      _assert_close(gv, wv, f'step {step}: state variable {k}', TRAIN_RTOL,
                    TRAIN_ATOL)
  if 'gradient_norm' in want_results[0]:
    assert max(r['gradient_norm'] for r in want_results) > CLIP_NORM
  # The steps moved the model's weights far beyond the tolerance.
  num_weights = spl_train_runs['num_weights']
  moved = max(np.abs(w - i).max() for w, i in
              zip(want_states[-1][:num_weights],
                  spl_train_runs['initial'][:num_weights]))
  assert moved > 1e-2


def test_spl_train_step_passes_tpu_audit(spl_train_runs):
  _check_audit(spl_train_runs['compiled'])
  # The walk reached the forward/backward pass, a nested tf.function.
  nested = {chain[-1] for concrete in spl_train_runs['compiled']
            for chain, op in tpu_audit.walk_ops(concrete.graph)
            if op.type == 'Conv3DBackpropFilterV2'}
  assert nested and all('compute_gradients' in name for name in nested)


# ---- SPL evaluation and prediction steps ----


@pytest.fixture(scope='module')
def spl_eval_runs(clip_records, tmp_path_factory):
  """`evaluate` and `predict` without and with XLA, padded static-shape
  batches as on a TPU, on the same model."""
  tf_keras.utils.set_random_seed(0)
  strategy = XlaReplicaStrategy()
  model = _classifier(strategy)
  captured = []
  real_metrics = evaluation.metrics.classification_metrics

  def capture(probs, labels, videos, **kwargs):
    captured.append((probs, labels, videos))
    return real_metrics(probs, labels, videos, **kwargs)

  out_root = str(tmp_path_factory.mktemp('predictions'))
  runs = {}
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(evaluation.metrics, 'classification_metrics', capture)
    for name in ('tf', 'xla'):
      strategy.xla = name == 'xla'
      compiled_before = len(strategy.compiled)
      result = evaluation.evaluate(
          model, strategy, _dataset_fn(), clip_records,
          num_classes=NUM_CLASSES, global_batch_size=BATCH, pad=True)
      eval_compiled = strategy.compiled[compiled_before:]
      out_dir = os.path.join(out_root, name)
      prediction.predict(
          model, strategy, _dataset_fn(), clip_records, out_dir,
          num_classes=NUM_CLASSES, global_batch_size=BATCH, top_k=2,
          pad=True)
      runs[name] = dict(
          result=result, captured=captured[-1],
          predictions=_read_predictions(out_dir),
          eval_compiled=eval_compiled,
          predict_compiled=strategy.compiled[compiled_before +
                                             len(eval_compiled):])
  return runs


def _read_predictions(out_dir):
  """clip index -> (top-k classes, top-k scores) of every shard."""
  out = {}
  for path in sorted(tf.io.gfile.glob(os.path.join(
      out_dir, prediction.PREDICTIONS_PREFIX + '-*'))):
    for serialized in tf.data.TFRecordDataset(path).as_numpy_iterator():
      p = records.parse_prediction_example(serialized)
      out[p[schema.CLIP_INDEX_KEY]] = (p[schema.PREDICTION_TOP_K_INDEX_KEY],
                                       p[schema.PREDICTION_TOP_K_SCORE_KEY])
  return out


def test_spl_eval_step_with_xla_equals_without(spl_eval_runs):
  want, got = spl_eval_runs['tf'], spl_eval_runs['xla']
  want_probs, want_labels, want_videos = want['captured']
  got_probs, got_labels, got_videos = got['captured']
  assert len(want_probs) == 7  # Every clip once, padding dropped.
  assert np.ptp(want_probs) > 1e-3  # Not a constant output.
  _assert_close(got_probs, want_probs, 'per-clip probabilities')
  np.testing.assert_array_equal(got_labels, want_labels)
  np.testing.assert_array_equal(got_videos, want_videos)
  for name in ('clip/top_1', 'video/top_1', 'loss', 'map'):
    _assert_close(got['result'][name], want['result'][name], name)


def test_spl_predict_step_with_xla_equals_without(spl_eval_runs):
  want = spl_eval_runs['tf']['predictions']
  got = spl_eval_runs['xla']['predictions']
  assert sorted(want) == list(range(7))
  assert sorted(got) == sorted(want)
  for clip, (classes, scores) in want.items():
    assert got[clip][0] == classes, f'clip {clip}'
    _assert_close(got[clip][1], scores, f'clip {clip} scores')


@pytest.mark.parametrize('step', ['eval', 'predict'])
def test_spl_eval_and_predict_steps_pass_tpu_audit(spl_eval_runs, step):
  _check_audit(spl_eval_runs['xla'][f'{step}_compiled'])


# ---- CPD train step ----

N, D, M, GLOBAL_B = 64, 8, 16, 8


def _cpd_batch(step, num_rows=N):
  rng = np.random.RandomState(1000 + step)
  return (rng.randn(GLOBAL_B, D).astype(np.float32),
          rng.randn(GLOBAL_B, D).astype(np.float32),
          rng.permutation(num_rows)[:GLOBAL_B].astype(np.int32))


def _cpd_run(strategy, stage, run_kwargs=None, **loss_kwargs):
  loss_kwargs.setdefault('bank_momentum', 0.3)
  return distribute_utils.CpdStepRun(
      strategy, lambda: nce.CrossModalNCE(N, D, M, seed=7, **loss_kwargs),
      dim=D, input_dim=D, stage=stage, **(run_kwargs or {}))


def _cpd_state(run):
  loss = run.loss_module
  return dict(
      video_bank=loss.video_bank.read_all().numpy(),
      text_bank=loss.text_bank.read_all().numpy(),
      z_v2t=loss.z_v2t.value.numpy(), z_t2v=loss.z_t2v.value.numpy(),
      sampler_step=loss.sampler.step.numpy(),
      weights=[v.numpy() for v in run.variables],
      optimizer=[v.numpy() for o in run.optimizers.values()
                 for v in o.variables])


CPD_CASES = {
    # Z as an EMA (updated every step), stage 2 (text encoder trained, its
    # own optimizer), clipping of the all-reduced gradient, weight decay.
    'replicated_ema_z_stage2_clip': (
        2, dict(z_policy='ema', z_momentum=0.7),
        dict(clip_norm=1.0, weight_decay=0.1)),
    # The sharded bank's code path (scratch row, owner masks, shard-local
    # negatives) on one shard; Z frozen after the first batch.
    'sharded_one_shard': (1, dict(bank_mode='sharded'),
                          dict(weight_decay=0.1)),
    # Shared negatives over two strata; positives from the features.
    'replicated_shared_strata': (
        1, dict(negative_sharing='shared', num_strata=2,
                positive_source='feature'), {}),
}
SLOW_CPD_CASES = ('replicated_shared_strata',)


@pytest.fixture(scope='module', params=[
    pytest.param(name, marks=[pytest.mark.slow] if name in SLOW_CPD_CASES
                 else []) for name in sorted(CPD_CASES)])
def cpd_runs(request):
  stage, loss_kwargs, step_kwargs = CPD_CASES[request.param]
  strategy = XlaReplicaStrategy()
  reference = _cpd_run(strategy, stage, **loss_kwargs)
  tested = _cpd_run(strategy, stage, **loss_kwargs)
  initial = _cpd_state(reference)
  for name, value in _cpd_state(tested).items():
    for a, b in zip(tf.nest.flatten(value), tf.nest.flatten(initial[name])):
      np.testing.assert_array_equal(a, b, err_msg=name)
  batches = [_cpd_batch(s) for s in range(3)]
  want = reference.run(batches, **step_kwargs)
  strategy.xla = True
  got = tested.run(batches, **step_kwargs)
  return dict(want=want, got=got, initial=initial,
              want_state=_cpd_state(reference),
              got_state=_cpd_state(tested), compiled=list(strategy.compiled))


def _assert_steps_close(runs):
  """Every step's metrics and weights with XLA ('got') close to without."""
  (want_metrics, want_weights), (got_metrics, got_weights) = (runs['want'],
                                                              runs['got'])
  for step, (g, w) in enumerate(zip(got_metrics, want_metrics)):
    assert sorted(g) == sorted(w)
    for name in w:
      _assert_close(g[name], w[name], f'step {step}: {name}')
  for step, (g, w) in enumerate(zip(got_weights, want_weights)):
    for k, (gv, wv) in enumerate(zip(g, w)):
      _assert_close(gv, wv, f'step {step}: variable {k}')


def test_cpd_train_step_with_xla_equals_without(cpd_runs):
  _assert_steps_close(cpd_runs)
  got, want, initial = (cpd_runs['got_state'], cpd_runs['want_state'],
                        cpd_runs['initial'])
  for name in ('video_bank', 'text_bank', 'z_v2t', 'z_t2v'):
    _assert_close(got[name], want[name], name)
  for k, (gv, wv) in enumerate(zip(got['optimizer'], want['optimizer'])):
    _assert_close(gv, wv, f'optimizer variable {k}')
  assert got['sampler_step'] == want['sampler_step'] == 3
  # The steps changed what is compared far beyond the tolerance.
  assert np.abs(want['video_bank'] - initial['video_bank']).max() > 1e-2
  assert np.abs(want['text_bank'] - initial['text_bank']).max() > 1e-2
  assert want['z_v2t'] > 1.0 and initial['z_v2t'] == 0.0
  assert max(np.abs(w - i).max() for w, i in
             zip(want['weights'], initial['weights'])) > 1e-3


def test_cpd_train_step_passes_tpu_audit(cpd_runs):
  _check_audit(cpd_runs['compiled'])


@pytest.mark.parametrize('mode,strata', [('replicated', 2),
                                         ('sharded', 1)])
@pytest.mark.parametrize('sharing', ['per_sample', 'shared'])
def test_negative_draws_are_the_same_with_xla(mode, strata, sharing):
  """Negatives come from stateless ops of (seed, step): XLA draws the
  same rows, so the train-step comparison compares like with like."""
  strategy = XlaReplicaStrategy()
  with strategy.scope():
    bank = memory_bank.MemoryBank(N, D, mode)
    samplers = [memory_bank.NegativeSampler(M, sharing, seed=3)
                for _ in range(2)]

  def draw(sampler):
    return sampler.sample(bank, GLOBAL_B, strata)

  plain = tf.function(lambda: strategy.run(draw, args=(samplers[0],)))
  plain.get_concrete_function()  # Traced (the flag read) before XLA is on.
  strategy.xla = True
  jitted = tf.function(lambda: strategy.run(draw, args=(samplers[1],)))
  for _ in range(2):
    want, got = plain().numpy(), jitted().numpy()
    np.testing.assert_array_equal(got, want)
  assert len(np.unique(want)) > 1
  assert len(strategy.compiled) == 1  # Only `jitted` ran under XLA.


def test_cpd_sharded_step_on_two_replicas_passes_tpu_audit(logical_cpus):
  """The sharded bank's cross-replica path (all-gathers, owner rows, shard
  scores) cannot run under XLA on CPU; its traced graph is audited."""
  strategy = distribute_utils.mirrored_strategy(logical_cpus[:2])
  run = _cpd_run(strategy, 2, bank_mode='sharded', z_policy='ema')
  args = (run.loss_module, run.video_model, run.text_encoder, run.text_head,
          run.curriculum, run.optimizers)

  def step(clips, titles, indices):
    return strategy.run(train_step.cpd_train_step,
                        args=args + (clips, titles, indices, run.stage),
                        kwargs=dict(clip_norm=1.0, weight_decay=0.1))

  concrete = tpu_audit.trace(
      step, *distribute_utils.split_global_batch(strategy, _cpd_batch(0)))
  ops = [op.type for _, op in tpu_audit.walk_ops(concrete.graph)]
  assert 'CollectiveGatherV2' in ops  # The cross-replica path was traced.
  tpu_audit.check(concrete)


# ---- CPD train step with the real text encoders, on title tokens ----

# GLOBAL_B titles: known and unknown words, repeated words (duplicate rows in
# the word2vec table's sparse gradient), an empty title, non-ASCII, and more
# words than the encoders keep (MAX_WORDS words, MAX_LENGTH word pieces).
TITLES = ['a cat plays with a ball', 'Dog', 'the café dog', '',
          'cat cat cat dog dog ball ball a a cat', 'zebra',
          'CAFÉ Ünïcode 日本 dog', 'ball with dog']
# Row 0 is in no title: only padding and unknown words (-1) gather it, with
# weight 0, so in stage 2 only weight decay moves it.
W2V_WORDS = ['guitar', 'a', 'cat', 'dog', 'plays', 'with', 'ball', 'café']
MAX_WORDS = 6
BERT_VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'a', 'cat', 'dog', 'play',
              '##s', 'with', 'ball', 'cafe', 'the']
MAX_LENGTH = 8
# `cpd_train_step` settings of gin_configs/runs/cpd_pretrain.gin. (The step
# makes the embedding table's sparse gradient dense, with or without decay.)
PRETRAIN_STEP = dict(weight_decay=1e-4, clip_norm=20.0)


def _word2vec_encoder():
  vectors = np.random.RandomState(5).randn(len(W2V_WORDS), 5)
  return text_encoders.Word2VecAverageEncoder(
      W2V_WORDS, vectors.astype(np.float32), lowercase=True,
      max_words=MAX_WORDS, name='text_encoder')


@pytest.fixture(scope='module')
def bert_vocab(tmp_path_factory):
  path = tmp_path_factory.mktemp('bert') / 'vocab.txt'
  path.write_text('\n'.join(BERT_VOCAB) + '\n')
  return str(path)


def _transformer_encoder(vocab_path):
  """What `hf_text_encoder` builds (a `BertEncoderV2` and WordPiece), tiny."""
  encoder = bert_encoder.BertEncoderV2(
      vocab_size=len(BERT_VOCAB), hidden_size=8, num_layers=1,
      num_attention_heads=2, inner_dim=16, max_sequence_length=MAX_LENGTH,
      type_vocab_size=2)
  return text_encoders.TransformerTextEncoder(
      encoder, tokenizer_lib.WordPieceTokenizer(vocab_path,
                                                max_length=MAX_LENGTH))


def _text_run(strategy, encoder_fn, **loss_kwargs):
  """Stage 2 (the text encoder trained) of `encoder_fn`'s encoder."""
  return _cpd_run(strategy, 2, dict(text_encoder_fn=encoder_fn,
                                    text_example=tf.constant(TITLES[:1])),
                  **loss_kwargs)


def _text_step(strategy, encoder_fn, **step_kwargs):
  """(the stage-2 step of `_text_run` as `strategy.run` calls it, the run)."""
  run = _text_run(strategy, encoder_fn)
  args = (run.loss_module, run.video_model, run.text_encoder, run.text_head,
          run.curriculum, run.optimizers)

  def step(c, t, i):
    return strategy.run(train_step.cpd_train_step,
                        args=args + (c, t, i, run.stage), kwargs=step_kwargs)

  return step, run


@pytest.mark.parametrize('encoder', ['word2vec', 'transformer'])
def test_cpd_train_step_on_title_tokens_passes_tpu_audit(encoder, bert_vocab):
  """The trainer tokenises titles in `tf.data` with the encoder's `tokenize`;
  the step then takes fixed-shape int32 tokens and passes the audit. On the
  strings themselves the tokeniser's ops would be in the step: refused."""
  encoder_fn = (_word2vec_encoder if encoder == 'word2vec' else
                functools.partial(_transformer_encoder, bert_vocab))
  strategy = XlaReplicaStrategy()
  step, run = _text_step(strategy, encoder_fn, **PRETRAIN_STEP)
  titles = tf.constant(TITLES)
  tokens = run.text_encoder.tokenize(titles)
  width = MAX_WORDS if encoder == 'word2vec' else MAX_LENGTH
  for t in tf.nest.flatten(tokens):
    assert t.dtype == tf.int32 and t.shape == (GLOBAL_B, width)
  clips, _, indices = _cpd_batch(0)

  concrete = tpu_audit.trace(step, clips, tokens, indices)
  # The text encoder's forward and backward pass were traced.
  ops = {op.type for _, op in tpu_audit.walk_ops(concrete.graph)}
  assert ('ResourceGather' if encoder == 'word2vec' else 'Einsum') in ops
  tpu_audit.check(concrete)
  with pytest.raises(tpu_audit.TpuIncompatibleError,
                     match=r'cpd/(text_encoders|tokenizer)\.py:\d+'):
    tpu_audit.check(step, clips, titles, indices)


@pytest.fixture(scope='module')
def cpd_word2vec_runs():
  """3 stage-2 steps of the word2vec encoder on tokens, without and with
  XLA, from the same weights."""
  strategy = XlaReplicaStrategy()
  loss_kwargs = dict(z_policy='ema', z_momentum=0.7)
  reference = _text_run(strategy, _word2vec_encoder, **loss_kwargs)
  tested = _text_run(strategy, _word2vec_encoder, **loss_kwargs)
  initial = _cpd_state(reference)
  for name, value in _cpd_state(tested).items():
    for a, b in zip(tf.nest.flatten(value), tf.nest.flatten(initial[name])):
      np.testing.assert_array_equal(a, b, err_msg=name)
  # Tokenised on the host, as the trainer's tf.data pipeline does; each step
  # pairs the titles with other clips.
  tokens = reference.text_encoder.tokenize(TITLES).numpy()
  batches = []
  for s in range(3):
    clips, _, indices = _cpd_batch(s)
    batches.append((clips, np.roll(tokens, s, axis=0), indices))
  step_kwargs = dict(weight_decay=0.1, clip_norm=1.0)
  want = reference.run(batches, **step_kwargs)
  strategy.xla = True
  got = tested.run(batches, **step_kwargs)
  return dict(want=want, got=got, initial=initial, tokens=tokens,
              step_kwargs=step_kwargs, learning_rate=float(
                  reference.optimizers['text_encoder'].learning_rate),
              want_state=_cpd_state(reference),
              got_state=_cpd_state(tested), compiled=list(strategy.compiled))


def test_cpd_train_step_on_word2vec_tokens_with_xla_equals_without(
    cpd_word2vec_runs):
  runs = cpd_word2vec_runs
  _assert_steps_close(runs)
  got, want, initial = runs['got_state'], runs['want_state'], runs['initial']
  for name in ('video_bank', 'text_bank', 'z_v2t', 'z_t2v'):
    _assert_close(got[name], want[name], name)
  for k, (gv, wv) in enumerate(zip(got['optimizer'], want['optimizer'])):
    _assert_close(gv, wv, f'optimizer variable {k}')
  assert got['sampler_step'] == want['sampler_step'] == 3
  # Unknown words and padding are -1; the table is the encoder's one weight.
  tokens = runs['tokens']
  assert tokens.dtype == np.int32 and (tokens == -1).any()
  table = {i: v for i, v in enumerate(want['weights']) if v.shape ==
           (len(W2V_WORDS), 5)}
  assert len(table) == 1
  (k, trained), = table.items()
  # Stage 2 trained the table (under XLA too, equal). Row 0 is in no title:
  # only padding and unknown words gather it, with weight 0, so its gradient
  # is the weight decay alone (scaled by the clipping of each step).
  decay = runs['step_kwargs']['weight_decay']
  clip_norm = runs['step_kwargs']['clip_norm']
  norms = [r['gradient_norm'] for r in runs['want'][0]]
  assert max(norms) > clip_norm  # It clipped.
  decayed = initial['weights'][k] * np.prod(
      [1.0 - runs['learning_rate'] * decay * min(1.0, clip_norm / n)
       for n in norms])
  _assert_close(trained[0], decayed[0], 'word2vec row 0')
  assert np.abs(trained[1:] - decayed[1:]).max(axis=1).min() > 1e-4
  assert np.abs(want['text_bank'] - initial['text_bank']).max() > 1e-2
  _check_audit(runs['compiled'])
  # The compiled step took the tokens: no string input reached it.
  for concrete in runs['compiled']:
    assert all(t.dtype != tf.string for t in concrete.inputs)


# ---- Known TPU blockers outside these steps ----


def test_spl_train_step_with_data_parameters_passes_tpu_audit(clip_records):
  strategy = XlaReplicaStrategy()
  task = _spl_task(strategy, clip_norm=None,
                   loss_fn=data_parameters.DataParameters(num_instances=8))
  batch = _train_batches(clip_records, num=1)[0]
  tpu_audit.check(lambda b: strategy.run(task._replica_step, args=(b,)),  # pylint: disable=protected-access
                  batch)


def test_cpd_stage2_word2vec_step_without_weight_decay_passes_tpu_audit():
  """Stage 2 with `weight_decay = 0`: the word2vec table's sparse gradient
  is made dense in the step (Keras SGD would dedup its rows with tf.unique);
  the shipped runs decay by 1e-4, which makes it dense too (above)."""
  strategy = XlaReplicaStrategy()
  step, run = _text_step(strategy, _word2vec_encoder)
  clips, _, indices = _cpd_batch(0)
  tpu_audit.check(step, clips, run.text_encoder.tokenize(TITLES), indices)
  # Compiled, two steps train every weight as without XLA.
  reference = _text_run(strategy, _word2vec_encoder)
  tested = _text_run(strategy, _word2vec_encoder)
  tokens = reference.text_encoder.tokenize(TITLES).numpy()
  batches = []
  for s in range(2):
    clips, _, indices = _cpd_batch(s)
    batches.append((clips, np.roll(tokens, s, axis=0), indices))
  reference.run(batches, weight_decay=0.0)
  strategy.xla = True
  tested.run(batches, weight_decay=0.0)
  assert strategy.compiled
  want, got = _cpd_state(reference), _cpd_state(tested)
  for k, (g, w) in enumerate(zip(got['weights'], want['weights'])):
    _assert_close(g, w, f'weight {k}')
  # The word2vec table (the encoder's one weight) was trained.
  table = [k for k, w in enumerate(want['weights'])
           if w.shape == (len(W2V_WORDS), 5)]
  assert len(table) == 1
  initial = _cpd_state(run)['weights'][table[0]]
  assert np.abs(want['weights'][table[0]] - initial).max() > 1e-4


# ---- The audit refuses planted ops, naming them and their line ----


def _planted_py_function(x):
  return tf.py_function(lambda v: v * 2.0, [x], tf.float32)  # PLANTED py_function


def _planted_string(x):
  return tf.strings.to_number(tf.strings.as_string(x))  # PLANTED string


def _planted_where(x):
  return x + tf.cast(tf.size(tf.where(x > 0.0)), tf.float32)  # PLANTED where


def _planted_print(x):
  tf.print('x =', x)  # PLANTED print
  return x


def _planted_float64(x):
  return tf.cast(tf.cast(x, tf.float64) * 2.0, tf.float32)  # PLANTED float64


PLANTED = {
    'py_function': (_planted_py_function, 'EagerPyFunc'),
    'string': (_planted_string, 'AsString'),
    'where': (_planted_where, 'Where'),
    'print': (_planted_print, 'PrintV2'),
    'float64': (_planted_float64, 'Cast'),
}


def _planted_line(tag):
  """The line number of the `# PLANTED <tag>` comment in this file."""
  with open(__file__) as f:
    lines = [i for i, line in enumerate(f, 1)
             if line.rstrip().endswith(f'# PLANTED {tag}')]
  assert len(lines) == 1, tag
  return lines[0]


def _step_around(body, strategy):
  """A replica step with `body` three functions deep: a tf.while_loop body
  calls a nested tf.function whose tf.cond branch calls `body`."""

  @tf.function
  def nested(x):
    return tf.cond(tf.reduce_sum(x) > -1e9,
                   lambda: tf.reshape(body(x), tf.shape(x)), lambda: x)

  def replica_step(x):
    _, y = tf.while_loop(lambda i, _: i < 2, lambda i, y: (i + 1, nested(y)),
                         (tf.constant(0), x))
    return y

  return tf.function(lambda x: strategy.run(replica_step, args=(x,)))


@pytest.mark.parametrize('tag', sorted(PLANTED))
def test_audit_refuses_planted_op_and_names_its_line(tag):
  body, op_type = PLANTED[tag]
  step = _step_around(body, XlaReplicaStrategy())
  with pytest.raises(tpu_audit.TpuIncompatibleError) as raised:
    tpu_audit.check(step, tf.TensorSpec([4], tf.float32))
  message = str(raised.value)
  here = f'tests/test_xla.py:{_planted_line(tag)}'
  assert re.search(rf'{re.escape(here)} \(in _planted_{tag}\): {op_type} ',
                   message), message
  planted = [f for f in raised.value.findings if f.location.startswith(here)]
  assert op_type in {f.op_type for f in planted}
  # Found in the cond branch of the nested function of the loop body.
  assert all(f.function.count(' > ') >= 3 for f in planted)
  # Nothing else of the step is refused.
  assert len(planted) == len(raised.value.findings), message


def test_audit_refuses_summaries_in_the_step(tmp_path):
  writer = tf.summary.create_file_writer(str(tmp_path))

  def body(x):
    with writer.as_default(step=0):
      tf.summary.scalar('x', tf.reduce_sum(x))  # PLANTED summary
    return x

  findings = tpu_audit.audit(_step_around(body, XlaReplicaStrategy()),
                             tf.TensorSpec([4], tf.float32))
  here = f'tests/test_xla.py:{_planted_line("summary")}'
  assert any(f.op_type == 'WriteSummary' and f.location.startswith(here)
             for f in findings), tpu_audit.format_findings(findings)


def test_audit_reads_the_function_library_without_python_graphs(
    monkeypatch):
  """When TensorFlow's private registry of traced graphs gives nothing, the
  nested functions are rebuilt from the public function library: the op is
  still found (without its source line)."""
  monkeypatch.setattr(tpu_audit._Library, '_registered',  # pylint: disable=protected-access
                      staticmethod(lambda graph, name: None))
  findings = tpu_audit.audit(
      _step_around(_planted_py_function, XlaReplicaStrategy()),
      tf.TensorSpec([4], tf.float32))
  assert [f.op_type for f in findings] == ['EagerPyFunc']
  assert findings[0].function.count(' > ') >= 3
  assert findings[0].location.startswith('unknown location')


def test_audit_lets_through_what_a_tpu_runs():
  """Three-argument tf.where, asserts (compiled to nothing), stateless
  random ops, gathers and scatters: no finding."""
  strategy = XlaReplicaStrategy()
  with strategy.scope():
    table = tf.Variable(tf.zeros([8, 4]))

  def body(x):
    tf.debugging.assert_less(tf.reduce_max(x), 1e9, message='too big')
    noise = tf.random.stateless_uniform([4], seed=[1, 2])
    rows = tf.math.floormod(tf.cast(x, tf.int32), 8)
    table.scatter_update(tf.IndexedSlices(tf.tile(x[None], [4, 1]), rows))
    return tf.where(x > 0.0, x, noise) + tf.gather(table, rows)[:, 0]

  step = _step_around(body, strategy)
  assert tpu_audit.audit(step, tf.TensorSpec([4], tf.float32)) == []
  strategy.xla = True
  _step_around(body, strategy)(tf.constant([1.0, -2.0, 3.0, 0.5]))
  assert strategy.compiled  # ... and XLA compiles it.
