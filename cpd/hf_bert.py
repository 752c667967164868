"""Loads a Hugging Face BERT or DistilBERT into Model Garden's `BertEncoderV2`.

Reads `config.json` and `model.safetensors` with `safetensors`/numpy: no
PyTorch, no network. Supported `model_type`s:

* 'bert' (BERT, MiniLM, all-MiniLM sentence-transformers, ...): post-layer-norm
  blocks, absolute positions, gelu / gelu_new / relu.
* 'distilbert' (`distilbert-base-uncased`, the CPD paper's text encoder): the
  same post-layer-norm blocks with other names, no token-type embeddings and
  no pooler. `BertEncoderV2` expresses it exactly with one all-zero type
  embedding; that table and the pooler are frozen so that the encoder's
  trainable variables are exactly DistilBERT's parameters. With
  `sinusoidal_pos_embds` the stored (sinusoidal) position table is loaded and
  frozen, as Hugging Face freezes it.

Checkpoint names may carry the base-model prefix ('bert.', 'distilbert.':
`*ForMaskedLM` and other task checkpoints, whose heads are ignored) and the
old layer-norm names 'gamma'/'beta' (`bert-base-uncased`'s model.safetensors),
which the Hugging Face loader accepts too.

Inference is exact. In training, Model Garden's block also drops the attention
output before its residual at the attention-dropout rate: BERT does that at
`hidden_dropout_prob` (the same 0.1 in the released models), DistilBERT not
at all.
"""

import json
import os

import numpy as np
from official.nlp.modeling.networks import bert_encoder
from safetensors import numpy as safetensors_numpy
import tensorflow as tf
import tf_keras

CONFIG_FILENAME = 'config.json'
WEIGHTS_FILENAME = 'model.safetensors'
VOCAB_FILENAME = 'vocab.txt'

BERT = 'bert'
DISTILBERT = 'distilbert'
MODEL_TYPES = (BERT, DISTILBERT)

# Prefixes of the base model's weights in task checkpoints (`*ForMaskedLM`...).
_BASE_PREFIXES = ('bert.', 'distilbert.')

# The sizes: config.json must state them (Hugging Face's defaults are the
# base models', wrong for any other).
_REQUIRED_KEYS = {
    BERT: ('vocab_size', 'hidden_size', 'num_hidden_layers',
           'num_attention_heads', 'intermediate_size',
           'max_position_embeddings'),
    DISTILBERT: ('vocab_size', 'dim', 'n_layers', 'n_heads', 'hidden_dim',
                 'max_position_embeddings'),
}

_ACTIVATIONS = {
    'gelu': lambda x: tf_keras.activations.gelu(x, approximate=False),
    'gelu_new': lambda x: tf_keras.activations.gelu(x, approximate=True),
    'gelu_pytorch_tanh': lambda x: tf_keras.activations.gelu(
        x, approximate=True),
    'relu': tf_keras.activations.relu,
}


def read_config(model_dir):
  """The model's `config.json` as a dict, checked for what we support."""
  path = os.path.join(model_dir, CONFIG_FILENAME)
  if not tf.io.gfile.exists(path):
    raise ValueError(f'`model_dir` has no {CONFIG_FILENAME}: {model_dir}')
  with tf.io.gfile.GFile(path, 'r') as f:
    config = json.load(f)
  model_type = config.get('model_type', BERT)
  if model_type not in MODEL_TYPES:
    raise ValueError(f'{path}: `model_type` must be one of {MODEL_TYPES}, '
                     f'got {model_type!r}')
  missing = [k for k in _REQUIRED_KEYS[model_type] if k not in config]
  if missing:
    raise ValueError(f'{path} lacks {missing} (model_type {model_type!r})')
  if model_type == BERT:
    if config.get('position_embedding_type', 'absolute') != 'absolute':
      raise ValueError('only absolute position embeddings are supported')
    act_key, heads_key, hidden_key = ('hidden_act', 'num_attention_heads',
                                      'hidden_size')
  else:
    act_key, heads_key, hidden_key = 'activation', 'n_heads', 'dim'
  if config.get(act_key, 'gelu') not in _ACTIVATIONS:
    raise ValueError(f'unsupported {act_key} {config.get(act_key)!r}; '
                     f'supported: {sorted(_ACTIVATIONS)}')
  if config[hidden_key] % config[heads_key]:
    raise ValueError(f'{heads_key} {config[heads_key]} must divide '
                     f'{hidden_key} {config[hidden_key]}')
  return config


def _architecture(config):
  """`BertEncoderV2` sizes and rates of a checked config, either family."""
  if config.get('model_type', BERT) == DISTILBERT:
    return dict(
        vocab_size=config['vocab_size'],
        hidden_size=config['dim'],
        num_layers=config['n_layers'],
        num_heads=config['n_heads'],
        inner_dim=config['hidden_dim'],
        activation=config.get('activation', 'gelu'),
        max_positions=config['max_position_embeddings'],
        type_vocab_size=1,  # all zeros: DistilBERT has no token types
        output_dropout=config.get('dropout', 0.1),
        attention_dropout=config.get('attention_dropout', 0.1))
  return dict(
      vocab_size=config['vocab_size'],
      hidden_size=config['hidden_size'],
      num_layers=config['num_hidden_layers'],
      num_heads=config['num_attention_heads'],
      inner_dim=config['intermediate_size'],
      activation=config.get('hidden_act', 'gelu'),
      max_positions=config['max_position_embeddings'],
      type_vocab_size=config.get('type_vocab_size', 2),
      output_dropout=config.get('hidden_dropout_prob', 0.1),
      attention_dropout=config.get('attention_probs_dropout_prob', 0.1))


def read_weights(model_dir):
  """{HF name without a base-model prefix: array} from safetensors."""
  path = os.path.join(model_dir, WEIGHTS_FILENAME)
  if not tf.io.gfile.exists(path):
    raise ValueError(f'`model_dir` has no {WEIGHTS_FILENAME}: {model_dir}')
  weights = safetensors_numpy.load_file(path)
  out = {}
  for name, value in weights.items():
    for prefix in _BASE_PREFIXES:
      if name.startswith(prefix):
        name = name[len(prefix):]
        break
    out[name] = value
  return out


def _sublayer(encoder, name):
  for layer in encoder.submodules:
    if isinstance(layer, tf_keras.layers.Layer) and layer.name == name:
      return layer
  raise ValueError(f'{type(encoder).__name__} has no layer {name!r}')


def build_encoder(config, max_sequence_length=None, dropout=None):
  """An uninitialised `BertEncoderV2` shaped like the HF `config`.

  Args:
    config: dict from `read_config`.
    max_sequence_length: position-table size (defaults to the model's).
    dropout: overrides both dropout rates (defaults to the model's).

  Returns:
    `BertEncoderV2`; for DistilBERT with its type embedding and pooler (and
    sinusoidal positions) frozen.
  """
  arch = _architecture(config)
  max_len = arch['max_positions']
  if max_sequence_length is not None and not 0 < max_sequence_length <= max_len:
    raise ValueError(f'`max_sequence_length` must be in (0, {max_len}], got '
                     f'{max_sequence_length}')
  encoder = bert_encoder.BertEncoderV2(
      vocab_size=arch['vocab_size'],
      hidden_size=arch['hidden_size'],
      num_layers=arch['num_layers'],
      num_attention_heads=arch['num_heads'],
      max_sequence_length=max_sequence_length or max_len,
      type_vocab_size=arch['type_vocab_size'],
      inner_dim=arch['inner_dim'],
      inner_activation=_ACTIVATIONS[arch['activation']],
      output_dropout=arch['output_dropout'] if dropout is None else dropout,
      attention_dropout=(arch['attention_dropout'] if dropout is None
                         else dropout),
      name='bert_encoder')
  if config.get('model_type', BERT) == DISTILBERT:
    # Not DistilBERT parameters: fine-tuning must leave them as they are.
    _sublayer(encoder, 'type_embeddings').trainable = False
    encoder.pooler_layer.trainable = False
    if config.get('sinusoidal_pos_embds', False):
      _sublayer(encoder, 'position_embedding').trainable = False
  return encoder


def _getter(weights):
  """get(name, shape) and norm(prefix, size) reading float32 from `weights`."""

  def get(name, shape):
    if name not in weights:
      raise ValueError(f'weight {name!r} missing from the checkpoint')
    value = weights[name]
    if value.shape != tuple(shape):
      raise ValueError(f'shape mismatch for {name!r}: checkpoint '
                       f'{value.shape}, config.json implies {tuple(shape)}')
    return value.astype(np.float32)

  def norm(prefix, size):
    """(gamma, beta) of a LayerNorm, under its new or old names."""
    if prefix + '.weight' not in weights and prefix + '.gamma' in weights:
      return get(prefix + '.gamma', [size]), get(prefix + '.beta', [size])
    return get(prefix + '.weight', [size]), get(prefix + '.bias', [size])

  return get, norm


def _block_values(tf_name, get, norm, names, hidden, heads, inner):
  """One transformer block's values; `names` maps our parts to HF names."""
  head_dim = hidden // heads
  values = {}
  for part in ('query', 'key', 'value'):
    # torch Linear stores [out, in]; EinsumDense wants [in, heads, head_dim].
    values[tf_name + f'self_attention/{part}/kernel'] = get(
        names[part] + '.weight', [hidden, hidden]).T.reshape(
            hidden, heads, head_dim)
    values[tf_name + f'self_attention/{part}/bias'] = get(
        names[part] + '.bias', [hidden]).reshape(heads, head_dim)
  values[tf_name + 'self_attention/attention_output/kernel'] = get(
      names['attention_output'] + '.weight', [hidden, hidden]).T.reshape(
          heads, head_dim, hidden)
  values[tf_name + 'self_attention/attention_output/bias'] = get(
      names['attention_output'] + '.bias', [hidden])
  (values[tf_name + 'self_attention_layer_norm/gamma'],
   values[tf_name + 'self_attention_layer_norm/beta']) = norm(
       names['attention_norm'], hidden)
  values[tf_name + 'intermediate/kernel'] = get(
      names['intermediate'] + '.weight', [inner, hidden]).T
  values[tf_name + 'intermediate/bias'] = get(
      names['intermediate'] + '.bias', [inner])
  values[tf_name + 'output/kernel'] = get(
      names['output'] + '.weight', [hidden, inner]).T
  values[tf_name + 'output/bias'] = get(names['output'] + '.bias', [hidden])
  (values[tf_name + 'output_layer_norm/gamma'],
   values[tf_name + 'output_layer_norm/beta']) = norm(names['output_norm'],
                                                      hidden)
  return values


def _mapped_values(encoder, config, weights):
  """{`encoder` weight name: value} from the HF names of either family."""
  arch = _architecture(config)
  hidden, heads, inner = (arch['hidden_size'], arch['num_heads'],
                          arch['inner_dim'])
  max_len = encoder.get_config()['max_sequence_length']
  get, norm = _getter(weights)
  distil = config.get('model_type', BERT) == DISTILBERT

  values = {
      'word_embeddings/embeddings': get(
          'embeddings.word_embeddings.weight', [arch['vocab_size'], hidden]),
      'position_embedding/embeddings': get(
          'embeddings.position_embeddings.weight',
          [arch['max_positions'], hidden])[:max_len],
  }
  (values['embeddings/layer_norm/gamma'],
   values['embeddings/layer_norm/beta']) = norm('embeddings.LayerNorm', hidden)
  if distil:
    values['type_embeddings/embeddings'] = np.zeros([1, hidden], np.float32)
  else:
    values['type_embeddings/embeddings'] = get(
        'embeddings.token_type_embeddings.weight',
        [arch['type_vocab_size'], hidden])
    if 'pooler.dense.weight' in weights:
      values['pooler_transform/kernel'] = get('pooler.dense.weight',
                                              [hidden, hidden]).T
      values['pooler_transform/bias'] = get('pooler.dense.bias', [hidden])
  for i in range(arch['num_layers']):
    if distil:
      hf = f'transformer.layer.{i}.'
      names = dict(query=hf + 'attention.q_lin', key=hf + 'attention.k_lin',
                   value=hf + 'attention.v_lin',
                   attention_output=hf + 'attention.out_lin',
                   attention_norm=hf + 'sa_layer_norm',
                   intermediate=hf + 'ffn.lin1', output=hf + 'ffn.lin2',
                   output_norm=hf + 'output_layer_norm')
    else:
      hf = f'encoder.layer.{i}.'
      names = dict(query=hf + 'attention.self.query',
                   key=hf + 'attention.self.key',
                   value=hf + 'attention.self.value',
                   attention_output=hf + 'attention.output.dense',
                   attention_norm=hf + 'attention.output.LayerNorm',
                   intermediate=hf + 'intermediate.dense',
                   output=hf + 'output.dense',
                   output_norm=hf + 'output.LayerNorm')
    values.update(_block_values(f'transformer/layer_{i}/', get, norm, names,
                                hidden, heads, inner))
  return values


def load_encoder(model_dir, max_sequence_length=None, dropout=None):
  """Builds a `BertEncoderV2` and loads a Hugging Face directory into it.

  Args:
    model_dir: directory with `config.json` and `model.safetensors` of a
      'bert' or 'distilbert' model.
    max_sequence_length: position-table size (defaults to the model's).
    dropout: overrides the dropout rates (defaults to the model's).

  Returns:
    (encoder, config): the built, loaded `BertEncoderV2` and the HF config.
    A missing pooler (sentence-transformers checkpoints, DistilBERT) keeps its
    random initialisation; mean pooling does not use it.
  """
  config = read_config(model_dir)
  weights = read_weights(model_dir)
  encoder = build_encoder(config, max_sequence_length, dropout)
  values = _mapped_values(encoder, config, weights)
  ids = tf.zeros([1, 2], tf.int32)
  encoder(dict(input_word_ids=ids, input_mask=ids + 1, input_type_ids=ids))
  prefix = encoder.name + '/'
  assigned = set()
  for variable in encoder.weights:
    name = variable.name
    name = name[name.index(prefix) + len(prefix):] if prefix in name else name
    name = name.rsplit(':', 1)[0]
    if name not in values:
      if name.startswith('pooler_transform/'):
        continue
      raise ValueError(f'no checkpoint value for encoder weight {name!r}')
    value = values[name]
    if tuple(variable.shape) != value.shape:
      raise ValueError(f'shape mismatch for {name!r}: encoder '
                       f'{tuple(variable.shape)}, checkpoint {value.shape}')
    variable.assign(value)
    assigned.add(name)
  unused = set(values) - assigned
  if unused:
    raise ValueError(f'checkpoint values not loaded: {sorted(unused)}')
  return encoder, config
