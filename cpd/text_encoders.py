"""Text encoders of CPD: averaged word vectors, or a BERT-family transformer.

Both map a batch of titles to one vector per title; the text head
(`cpd.heads.TextHead`) then maps it to the shared 256-d space.

Each encoder works in two halves: `tokenize` (string ops and vocabulary
look-ups, host work) maps titles to fixed-shape int32 tensors, and `call`
maps those to vectors with TPU-compatible ops only. The CPD trainer runs
`tokenize` in its `tf.data` pipeline, so its step takes integers (a TPU has
no string type); `call` also takes the strings themselves, then it
tokenises first, for callers outside a step (evaluation, export).
"""

import os

import numpy as np
import tensorflow as tf
import tf_keras

from cpd import hf_bert
from cpd import tokenizer as tokenizer_lib

MASKED_MEAN = 'masked_mean'
UNMASKED_MEAN = 'unmasked_mean'
CLS = 'cls'
POOLINGS = (MASKED_MEAN, UNMASKED_MEAN, CLS)


def load_word2vec(path, binary=None, limit=None):
  """Reads word vectors in the word2vec text or binary format.

  Both formats start with a header line "<count> <dim>". Text: one
  "<word> <v1> ... <vdim>" line per word. Binary: "<word> " then dim
  little-endian float32, optionally followed by a newline.

  Args:
    path: file path.
    binary: True / False, or None to decide from the file (a binary file's
      first vector bytes are not valid UTF-8 text numbers).
    limit: read at most this many words (the most frequent come first).

  Returns:
    (words, vectors): list of str and float32 [num_words, dim].
  """
  if limit is not None and limit <= 0:
    raise ValueError(f'`limit` must be > 0, got {limit}')
  with tf.io.gfile.GFile(path, 'rb') as f:
    data = f.read()
  newline = data.index(b'\n')
  count, dim = (int(x) for x in data[:newline].split())
  if count <= 0 or dim <= 0:
    raise ValueError(f'bad word2vec header in {path}: {data[:newline]!r}')
  if limit is not None:
    count = min(count, limit)
  pos = newline + 1
  if binary is None:
    binary = _looks_binary(data[pos:pos + 4096], dim)
  words, vectors = [], np.empty([count, dim], np.float32)
  for i in range(count):
    if binary:
      while data[pos:pos + 1] in (b'\n', b' '):
        pos += 1
      space = data.index(b' ', pos)
      words.append(data[pos:space].decode('utf-8', errors='replace'))
      pos = space + 1
      vectors[i] = np.frombuffer(data, '<f4', dim, pos)
      pos += 4 * dim
    else:
      end = data.find(b'\n', pos)
      end = len(data) if end < 0 else end
      parts = data[pos:end].decode('utf-8').rstrip().split(' ')
      if len(parts) != dim + 1:
        raise ValueError(f'{path}: line {i + 2} has {len(parts) - 1} values, '
                         f'expected {dim}')
      words.append(parts[0])
      vectors[i] = np.asarray(parts[1:], np.float32)
      pos = end + 1
  return words, vectors


def _looks_binary(head, dim):
  try:
    line = head.split(b'\n', 1)[0].decode('utf-8')
  except UnicodeDecodeError:
    return True
  parts = line.rstrip().split(' ')
  if len(parts) != dim + 1:
    return True
  try:
    [float(x) for x in parts[1:]]
  except ValueError:
    return True
  return False


class Word2VecAverageEncoder(tf_keras.layers.Layer):
  """Title -> mean of its known words' vectors (the CPD word2vec encoder).

  Titles should already be cleaned (`cpd.text_cleaning`); words are split on
  whitespace and looked up (optionally lower-cased). Unknown words are
  ignored; a title with no known word maps to zeros. The table is a trainable
  weight so that curriculum stage 2 can fine-tune it.

  `tokenize` does the splitting and the look-up (host side: string ops and a
  hash table); `call` takes its ids, or strings, which it tokenises first.
  """

  def __init__(self, words, vectors, lowercase=False, max_words=64,
               **kwargs):
    """Creates the encoder.

    Args:
      words: list of str, the vocabulary.
      vectors: float [len(words), dim].
      lowercase: lower-case titles before look-up (for cased vocabularies
        leave False and clean titles without lower-casing).
      max_words: words per title kept (the first ones).
      **kwargs: Layer arguments.
    """
    super().__init__(**kwargs)
    vectors = np.asarray(vectors, np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
      raise ValueError(f'`vectors` must be [len(words), dim], got '
                       f'{vectors.shape} for {len(words)} words')
    if max_words <= 0:
      raise ValueError(f'`max_words` must be > 0, got {max_words}')
    self.lowercase = lowercase
    self.max_words = int(max_words)
    self.output_dim = vectors.shape[1]
    self._initial = vectors
    self._table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(words)), tf.range(len(words), dtype=tf.int64)),
        default_value=-1)

  @classmethod
  def from_file(cls, path, binary=None, limit=None, **kwargs):
    """Builds the encoder from a word2vec text or binary file."""
    words, vectors = load_word2vec(path, binary, limit)
    return cls(words, vectors, **kwargs)

  def build(self, input_shape):
    self.embeddings = self.add_weight(
        name='embeddings', shape=self._initial.shape,
        initializer=tf_keras.initializers.Constant(self._initial),
        trainable=True)
    super().build(input_shape)

  def tokenize(self, titles):
    """Titles -> word ids: what `call` takes inside an accelerator's step.

    String ops and a hash-table look-up (host work): run it in the input
    pipeline (`tf.data`, after batching) to keep them out of the step.

    Args:
      titles: tf.string [B] (or a list of str).

    Returns:
      int32 [B, max_words]: the vocabulary row of each of the title's first
      `max_words` whitespace-separated words (lower-cased first if
      `lowercase`), -1 for an unknown word and for padding.
    """
    titles = tf.convert_to_tensor(titles, tf.string)
    if titles.shape.rank != 1:
      raise ValueError(f'`titles` must be rank 1, got shape {titles.shape}')
    if self.lowercase:
      titles = tf.strings.lower(titles, encoding='utf-8')
    words = tf.strings.split(titles)[:, :self.max_words]
    ids = self._table.lookup(words).to_tensor(
        default_value=-1, shape=[None, self.max_words])
    return tf.cast(ids, tf.int32)

  def call(self, inputs):
    """Titles tf.string [B], or their `tokenize` ids -> float32 [B, dim].

    Ids are int [B, L], -1 where there is no known word; strings are
    tokenised here first, with the same result.
    """
    inputs = tf.convert_to_tensor(inputs)
    ids = self.tokenize(inputs) if inputs.dtype == tf.string else inputs
    if not ids.dtype.is_integer:
      raise ValueError(f'inputs must be title strings or int word ids, got '
                       f'{inputs.dtype.name}')
    known = ids >= 0
    vectors = tf.gather(self.embeddings, tf.maximum(ids, 0))
    weights = tf.cast(known, vectors.dtype)[..., None]
    total = tf.reduce_sum(vectors * weights, axis=1)
    count = tf.reduce_sum(weights, axis=1)
    return total / tf.maximum(count, 1.0)


def pool_tokens(sequence_output, mask, pooling=MASKED_MEAN):
  """Pools token features into one vector per title.

  Args:
    sequence_output: [B, L, H].
    mask: [B, L] 1 on real tokens.
    pooling: 'masked_mean' (mean over real tokens, sentence-transformers),
      'unmasked_mean' (mean over all L positions, padding included: what the
      original CPD code does), or 'cls' (the [CLS] token).

  Returns:
    [B, H] in the dtype of `sequence_output`.
  """
  if pooling not in POOLINGS:
    raise ValueError(f'`pooling` must be one of {POOLINGS}, got {pooling!r}')
  if pooling == CLS:
    return sequence_output[:, 0]
  if pooling == UNMASKED_MEAN:
    return tf.reduce_mean(sequence_output, axis=1)
  weights = tf.cast(mask, sequence_output.dtype)[..., None]
  return tf.reduce_sum(sequence_output * weights, axis=1) / tf.maximum(
      tf.reduce_sum(weights, axis=1), tf.cast(1e-9, sequence_output.dtype))


class TransformerTextEncoder(tf_keras.layers.Layer):
  """Titles (strings or token dicts) -> pooled transformer features [B, H].

  Wraps a Keras BERT encoder (Model Garden `BertEncoderV2`) and, optionally,
  a `WordPieceTokenizer` so that it can take raw titles: `tokenize` runs it
  (host side, for the input pipeline), `call` takes its dict or strings.
  """

  def __init__(self, encoder, tokenizer=None, pooling=MASKED_MEAN, **kwargs):
    """Creates the layer.

    Args:
      encoder: a layer taking {'input_word_ids', 'input_mask',
        'input_type_ids'} and returning a dict with 'sequence_output'.
      tokenizer: optional `WordPieceTokenizer`, to accept strings.
      pooling: see `pool_tokens`.
      **kwargs: Layer arguments.
    """
    super().__init__(**kwargs)
    if pooling not in POOLINGS:
      raise ValueError(f'`pooling` must be one of {POOLINGS}, got {pooling!r}')
    self.encoder = encoder
    self.tokenizer = tokenizer
    self.pooling = pooling
    self.output_dim = encoder.get_config()['hidden_size']

  def tokenize(self, titles):
    """Titles -> the token dict `call` takes inside an accelerator's step.

    WordPiece with `tensorflow-text` ops (host work): run it in the input
    pipeline (`tf.data`, after batching) to keep them out of the step.

    Args:
      titles: tf.string [B] (or a list of str).

    Returns:
      The tokenizer's dict of int32 [B, max_length]: 'input_word_ids',
      'input_mask', 'input_type_ids' (`cpd.tokenizer.WordPieceTokenizer`).
    """
    if self.tokenizer is None:
      raise ValueError('string inputs need a `tokenizer`')
    return self.tokenizer(titles)

  def call(self, inputs, training=None):
    """Strings [B] (needs a tokenizer) or a token dict -> float [B, H]."""
    if not isinstance(inputs, dict):
      inputs = self.tokenize(inputs)
    outputs = self.encoder(inputs, training=training)
    return pool_tokens(outputs['sequence_output'], inputs['input_mask'],
                       self.pooling)


def transformer_from_hf_directory(model_dir, max_length=32,
                                  pooling=MASKED_MEAN, dropout=None,
                                  lower_case=True):
  """A `TransformerTextEncoder` with the weights and vocab of an HF directory.

  Args:
    model_dir: a BERT or DistilBERT directory (`hf_bert.MODEL_TYPES`) with
      `config.json`, `model.safetensors`, `vocab.txt`. Both families use the
      same WordPiece vocab and `[CLS] ... [SEP]` framing.
    max_length: tokens per title ([CLS] and [SEP] included).
    pooling: see `pool_tokens`.
    dropout: overrides the model's dropout rates.
    lower_case: as the model was trained (uncased models: True).

  Returns:
    `TransformerTextEncoder` taking strings.
  """
  encoder, config = hf_bert.load_encoder(model_dir, dropout=dropout)
  if max_length > config['max_position_embeddings']:
    raise ValueError(f'`max_length` must be <= max_position_embeddings '
                     f'{config["max_position_embeddings"]}, got {max_length}')
  tokenizer = tokenizer_lib.WordPieceTokenizer(
      os.path.join(model_dir, hf_bert.VOCAB_FILENAME), max_length=max_length,
      lower_case=lower_case)
  if tokenizer.vocab_size > config['vocab_size']:
    raise ValueError(f'{hf_bert.VOCAB_FILENAME} has {tokenizer.vocab_size} '
                     f'tokens, more than the vocab_size '
                     f'{config["vocab_size"]}: {model_dir}')
  return TransformerTextEncoder(encoder, tokenizer, pooling,
                                name='text_encoder')
