"""A Hugging Face DistilBERT directory as the CPD text encoder (paper 3.3).

Each test writes a tiny random DistilBERT the way Hugging Face saves one
(config.json, model.safetensors under HF's names, vocab.txt) and loads it
through `transformer_from_hf_directory`, the path of `hf_text_encoder`. The
reference is a float64 NumPy forward pass written from `modeling_distilbert.py`
(Embeddings, MultiHeadSelfAttention, FFN, TransformerBlock), not from ours.
"""

import json
import math

import numpy as np
import pytest
from safetensors import numpy as safetensors_numpy
import tensorflow as tf

from cpd import hf_bert
from cpd import text_encoders
from cpd import tokenizer as tokenizer_lib

VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'the', 'cat', 'dog',
         'play', '##ing', 'with', 'a', 'ball', 'how', 'to', 'bake', 'cook',
         '##ies', 'cafe', '!']
DIM, LAYERS, HEADS, FFN_DIM, POSITIONS = 16, 2, 4, 24, 20
MAX_LENGTH = 10
TITLES = ['The cat playing with a ball!', 'how to bake cookies', 'Café dog']
# Per title: tokens as the BERT uncased WordPiece tokenizer gives them.
TOKENS = [
    ['[CLS]', 'the', 'cat', 'play', '##ing', 'with', 'a', 'ball', '!',
     '[SEP]'],
    ['[CLS]', 'how', 'to', 'bake', 'cook', '##ies', '[SEP]'],
    ['[CLS]', 'cafe', 'dog', '[SEP]'],
]


def _sinusoidal_table(positions, dim):
  """`create_sinusoidal_embeddings` of modeling_distilbert."""
  angles = np.array([[pos / np.power(10000, 2 * (j // 2) / dim)
                      for j in range(dim)] for pos in range(positions)])
  table = np.empty_like(angles)
  table[:, 0::2] = np.sin(angles[:, 0::2])
  table[:, 1::2] = np.cos(angles[:, 1::2])
  return table


def _random_distilbert(seed=0, sinusoidal=False):
  """{HF DistilBertModel name: float32 array}, a tiny random model."""
  rng = np.random.default_rng(seed)

  def normal(*shape, std=0.3):
    return rng.normal(0.0, std, shape).astype(np.float32)

  w = {
      'embeddings.word_embeddings.weight': normal(len(VOCAB), DIM, std=1.0),
      'embeddings.position_embeddings.weight': (
          _sinusoidal_table(POSITIONS, DIM).astype(np.float32) if sinusoidal
          else normal(POSITIONS, DIM, std=1.0)),
      'embeddings.LayerNorm.weight': 1.0 + normal(DIM, std=0.1),
      'embeddings.LayerNorm.bias': normal(DIM, std=0.1),
  }
  for i in range(LAYERS):
    p = f'transformer.layer.{i}.'
    for lin in ('q_lin', 'k_lin', 'v_lin', 'out_lin'):
      w[p + f'attention.{lin}.weight'] = normal(DIM, DIM)  # torch [out, in]
      w[p + f'attention.{lin}.bias'] = normal(DIM, std=0.1)
    w[p + 'ffn.lin1.weight'] = normal(FFN_DIM, DIM)
    w[p + 'ffn.lin1.bias'] = normal(FFN_DIM, std=0.1)
    w[p + 'ffn.lin2.weight'] = normal(DIM, FFN_DIM)
    w[p + 'ffn.lin2.bias'] = normal(DIM, std=0.1)
    for norm in ('sa_layer_norm', 'output_layer_norm'):
      w[p + f'{norm}.weight'] = 1.0 + normal(DIM, std=0.1)
      w[p + f'{norm}.bias'] = normal(DIM, std=0.1)
  return w


def _write_model(path, weights, prefix='distilbert.', old_norm_names=False,
                 vocab=None, **config_overrides):
  """Writes a DistilBertForMaskedLM-style directory; returns it as str.

  Args:
    path: a directory (pathlib).
    weights: from `_random_distilbert`, without prefix.
    prefix: 'distilbert.' (task checkpoints, e.g. distilbert-base-uncased's
      DistilBertForMaskedLM) or '' (a saved DistilBertModel).
    old_norm_names: write LayerNorm parameters as gamma/beta.
    vocab: vocab.txt tokens (default `VOCAB`).
    **config_overrides: config.json entries to change (None deletes).
  """
  config = {
      'activation': 'gelu', 'architectures': ['DistilBertForMaskedLM'],
      'attention_dropout': 0.1, 'dim': DIM, 'dropout': 0.1,
      'hidden_dim': FFN_DIM, 'initializer_range': 0.02,
      'max_position_embeddings': POSITIONS, 'model_type': 'distilbert',
      'n_heads': HEADS, 'n_layers': LAYERS, 'pad_token_id': 0,
      'qa_dropout': 0.1, 'seq_classif_dropout': 0.2,
      'sinusoidal_pos_embds': False, 'tie_weights_': True,
      'vocab_size': len(VOCAB)}
  for key, value in config_overrides.items():
    if value is None:
      config.pop(key)
    else:
      config[key] = value
  tensors = {}
  for name, value in weights.items():
    if old_norm_names and ('LayerNorm' in name or 'layer_norm' in name):
      name = name.replace('.weight', '.gamma').replace('.bias', '.beta')
    tensors[prefix + name] = value
  if prefix:  # The MLM head of DistilBertForMaskedLM, to be ignored.
    rng = np.random.default_rng(1)
    for name, shape in (('vocab_transform.weight', [DIM, DIM]),
                        ('vocab_transform.bias', [DIM]),
                        ('vocab_layer_norm.weight', [DIM]),
                        ('vocab_layer_norm.bias', [DIM]),
                        ('vocab_projector.bias', [len(VOCAB)])):
      tensors[name] = rng.normal(size=shape).astype(np.float32)
  path.mkdir(parents=True, exist_ok=True)
  (path / hf_bert.CONFIG_FILENAME).write_text(json.dumps(config, indent=2))
  safetensors_numpy.save_file(tensors, str(path / hf_bert.WEIGHTS_FILENAME))
  (path / hf_bert.VOCAB_FILENAME).write_text(
      '\n'.join(VOCAB if vocab is None else vocab) + '\n')
  return str(path)


def _numpy_distilbert(weights, ids, mask):
  """float64 DistilBertModel forward: last hidden state [B, L, DIM]."""
  w = {k: v.astype(np.float64) for k, v in weights.items()}
  erf = np.vectorize(math.erf)

  def layer_norm(x, name):  # nn.LayerNorm(dim, eps=1e-12)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * w[name + '.weight'] + w[
        name + '.bias']

  def linear(x, name):  # nn.Linear: x @ W^T + b
    return x @ w[name + '.weight'].T + w[name + '.bias']

  b, length = ids.shape
  dh = DIM // HEADS
  # Embeddings: word + position (no token types), LayerNorm.
  x = (w['embeddings.word_embeddings.weight'][ids] +
       w['embeddings.position_embeddings.weight'][np.arange(length)][None])
  x = layer_norm(x, 'embeddings.LayerNorm')
  for i in range(LAYERS):
    p = f'transformer.layer.{i}.'

    def heads(t):
      return t.reshape(b, length, HEADS, dh).transpose(0, 2, 1, 3)

    q = heads(linear(x, p + 'attention.q_lin')) / math.sqrt(dh)
    k = heads(linear(x, p + 'attention.k_lin'))
    v = heads(linear(x, p + 'attention.v_lin'))
    scores = q @ k.transpose(0, 1, 3, 2)
    scores = np.where(mask[:, None, None, :] == 0,
                      np.finfo(np.float64).min, scores)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, length, DIM)
    sa = layer_norm(linear(context, p + 'attention.out_lin') + x,
                    p + 'sa_layer_norm')
    hidden = linear(sa, p + 'ffn.lin1')
    hidden = 0.5 * hidden * (1.0 + erf(hidden / math.sqrt(2.0)))  # gelu
    x = layer_norm(linear(hidden, p + 'ffn.lin2') + sa,
                   p + 'output_layer_norm')
  return x


def _masked_mean(x, mask):
  m = mask[..., None].astype(np.float64)
  return (x * m).sum(1) / m.sum(1)


def _load(model_dir, **kwargs):
  return text_encoders.transformer_from_hf_directory(
      model_dir, max_length=MAX_LENGTH, **kwargs)


@pytest.mark.parametrize('prefix,old_norm_names', [
    pytest.param('distilbert.', False, id='masked_lm_checkpoint'),
    pytest.param('', True, id='base_model_old_norm_names'),
])
def test_distilbert_matches_numpy_reference(tmp_path, prefix, old_norm_names):
  weights = _random_distilbert()
  encoder = _load(_write_model(tmp_path / 'm', weights, prefix,
                               old_norm_names))
  tokens = encoder.tokenizer(TITLES)
  ids = tokens['input_word_ids'].numpy()
  mask = tokens['input_mask'].numpy()
  assert [[VOCAB[i] for i, m in zip(row, row_mask) if m]
          for row, row_mask in zip(ids, mask)] == TOKENS
  assert (ids[mask == 0] == VOCAB.index('[PAD]')).all()
  want = _numpy_distilbert(weights, ids, mask)
  got = encoder.encoder(tokens, training=False)['sequence_output'].numpy()
  # Padded positions too: Hugging Face computes them the same way.
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  # Masked mean over real tokens ("we average word embeddings"), from raw
  # titles, eagerly and in a tf.function.
  pooled = encoder(tf.constant(TITLES), training=False).numpy()
  np.testing.assert_allclose(pooled, _masked_mean(want, mask), atol=1e-5,
                             rtol=1e-5)
  traced = tf.function(lambda t: encoder(t, training=False))
  np.testing.assert_allclose(traced(tf.constant(TITLES)).numpy(), pooled,
                             atol=1e-6)
  assert encoder.output_dim == DIM


def test_distilbert_trains_exactly_its_parameters(tmp_path):
  weights = _random_distilbert()
  encoder = _load(_write_model(tmp_path / 'm', weights))
  with tf.GradientTape() as tape:
    out = encoder(tf.constant(TITLES), training=True)
    loss = tf.reduce_sum(out ** 2)
  trainable = encoder.trainable_variables
  # The type embedding (zeros, DistilBERT has none) and the pooler are not
  # DistilBERT parameters: frozen, so stage-2 fine-tuning leaves them be.
  assert sum(int(np.prod(v.shape)) for v in trainable) == sum(
      v.size for v in weights.values())
  assert len(trainable) == len(weights)
  frozen = {v.name.split('bert_encoder/')[-1] for v in
            encoder.non_trainable_variables}
  assert frozen == {'type_embeddings/embeddings:0', 'pooler_transform/kernel:0',
                    'pooler_transform/bias:0'}
  type_table = [v for v in encoder.non_trainable_variables
                if 'type_embeddings' in v.name][0]
  np.testing.assert_array_equal(type_table.numpy(), 0.0)
  grads = tape.gradient(loss, trainable)
  assert all(g is not None for g in grads)


def test_distilbert_sinusoidal_positions_stay_frozen(tmp_path):
  weights = _random_distilbert(sinusoidal=True)
  encoder = _load(_write_model(tmp_path / 'm', weights,
                               sinusoidal_pos_embds=True))
  tokens = encoder.tokenizer(TITLES)
  got = encoder.encoder(tokens, training=False)['sequence_output'].numpy()
  want = _numpy_distilbert(weights, tokens['input_word_ids'].numpy(),
                           tokens['input_mask'].numpy())
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  assert not [v for v in encoder.trainable_variables
              if 'position_embedding' in v.name]


def test_distilbert_dropout_override_and_config(tmp_path):
  model_dir = _write_model(tmp_path / 'm', _random_distilbert(), dropout=0.2,
                           attention_dropout=0.05)
  config = _load(model_dir).encoder.get_config()
  assert (config['hidden_size'], config['num_layers'],
          config['num_attention_heads'], config['inner_dim'],
          config['max_sequence_length'], config['type_vocab_size'],
          config['vocab_size']) == (DIM, LAYERS, HEADS, FFN_DIM, POSITIONS, 1,
                                    len(VOCAB))
  assert (config['output_dropout'], config['attention_dropout']) == (0.2, 0.05)
  config = _load(model_dir, dropout=0.0).encoder.get_config()
  assert (config['output_dropout'], config['attention_dropout']) == (0.0, 0.0)


def _without(weights, name):
  return {k: v for k, v in weights.items() if k != name}


def _reshaped(weights, name, shape):
  out = dict(weights)
  out[name] = np.zeros(shape, np.float32)
  return out


@pytest.mark.parametrize('change,error', [
    pytest.param(dict(model_type='roberta'),
                 r'`model_type` must be one of .*roberta', id='model_type'),
    pytest.param(dict(n_heads=None), r"lacks \['n_heads'\]",
                 id='missing_config_key'),
    pytest.param(dict(n_heads=5), 'n_heads 5 must divide dim 16',
                 id='heads'),
    pytest.param(dict(activation='swishy'), "unsupported activation 'swishy'",
                 id='activation'),
    pytest.param(
        dict(weights=lambda w: _without(
            w, 'transformer.layer.1.ffn.lin2.weight')),
        r"weight 'transformer.layer.1.ffn.lin2.weight' missing",
        id='missing_weight'),
    pytest.param(
        dict(weights=lambda w: _without(w, 'embeddings.LayerNorm.bias')),
        r"weight 'embeddings.LayerNorm.bias' missing",
        id='missing_norm_weight'),
    pytest.param(
        dict(weights=lambda w: _reshaped(
            w, 'transformer.layer.0.attention.q_lin.weight', [DIM, DIM + 1])),
        r"shape mismatch for 'transformer.layer.0.attention.q_lin.weight': "
        r'checkpoint \(16, 17\), config.json implies \(16, 16\)',
        id='weight_shape'),
    pytest.param(dict(hidden_dim=FFN_DIM + 1),
                 r"shape mismatch for 'transformer.layer.0.ffn.lin1.weight'",
                 id='config_shape'),
    pytest.param(dict(vocab=VOCAB + ['extra']),
                 'vocab.txt has 21 tokens, more than the vocab_size 20',
                 id='vocab_size'),
    pytest.param(dict(max_length=POSITIONS + 1),
                 '`max_length` must be <= max_position_embeddings 20, got 21',
                 id='max_length'),
])
def test_distilbert_clear_errors(tmp_path, change, error):
  change = dict(change)
  weights = change.pop('weights', lambda w: w)(_random_distilbert())
  max_length = change.pop('max_length', MAX_LENGTH)
  model_dir = _write_model(tmp_path / 'm', weights, **change)
  with pytest.raises(ValueError, match=error):
    text_encoders.transformer_from_hf_directory(model_dir,
                                                max_length=max_length)


def test_read_weights_strips_base_prefix_only(tmp_path):
  model_dir = _write_model(tmp_path / 'm', _random_distilbert())
  names = set(hf_bert.read_weights(model_dir))
  assert 'embeddings.word_embeddings.weight' in names
  assert 'vocab_projector.bias' in names
  assert not [n for n in names if n.startswith('distilbert.')]
  assert tokenizer_lib.read_vocab(f'{model_dir}/vocab.txt') == VOCAB
