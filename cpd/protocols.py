"""CPD's evaluation protocols as library calls (the CLI is `cpd.evaluate`).

`run_protocol` runs one protocol (extract, knn, linear, zero_shot, retrieval,
low_label; what each does is in `cpd/evaluate.py`'s docstring) and writes its
`results_<protocol>.json`; `build_video_model` and `build_text_fn` rebuild a
CPD checkpoint's encoders. Gin-free: `cpd/configurables.py` registers them.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from cpd import features as features_lib
from cpd import heads
from cpd import knn
from cpd import linear_probe
from cpd import low_label
from cpd import model_config
from cpd import text_encoders
from cpd import zero_shot
from spl import input_pipeline
from spl import loop
from spl.models import factory
from tfrecords_tools import file_patterns
from tfrecords_tools import records
from tfrecords_tools import schema

PROTOCOLS = ('extract', 'knn', 'linear', 'zero_shot', 'retrieval',
             'low_label')
STRATEGIES = ('one_device', 'mirrored')
RESULTS_TEMPLATE = 'results_{}.json'


# ---- Models from a CPD checkpoint ----


def _restore(path: str, **objects) -> str:
  """Restores `objects` (checkpoint edges) from a prefix or a directory."""
  path = loop.checkpoint_path(path)
  loop.restore(tf.train.Checkpoint(**objects), path, str(sorted(objects)),
               partial=True)
  return path


def build_video_model(backbone: Optional[str] = None, *,
                      input_shape: Sequence[int],
                      checkpoint: Optional[str] = None,
                      embedding_dim: Optional[int] = None,
                      checkpoint_key: str = 'model',
                      imagenet_checkpoint: Optional[str] = None,
                      imagenet_norm_epsilon: Optional[float] = None,
                      **backbone_kwargs):
  """Backbone + video head, restored from a CPD checkpoint, or ImageNet's.

  With `imagenet_checkpoint` it is the ImageNet baseline of CPD Table 2
  ("ResNet50, ImageNet labels, res5 (2048)"): a 2D ImageNet ResNet-50
  inflated into 'slowonly_r50', without a head. The inflation is 'center'
  (each temporal kernel holds the 2D kernel in its central tap, zeros
  elsewhere): slow-only has no temporal stride or pooling, so the backbone
  then runs the 2D network on every frame on its own, and its pooled
  feature is the 2D network's res5 average-pooled feature averaged over the
  frames, on any clip (what an image network's feature of a video is).
  'mean' inflation (I3D) would average 3 neighbouring frames in each of the
  9 res4/res5 blocks (temporal kernel 3) and, through the zero padding, damp
  the frames near the clip ends: the 2D network only on static clips, away
  from the ends, which an 8-frame clip hardly has.

  A CPD checkpoint's `cpd_model.json` (`cpd.model_config`, written by the
  trainer beside it) gives the backbone and the embedding width; `backbone`
  and `embedding_dim`, when set, must agree with it.

  Args:
    backbone: a `spl.models.BACKBONES` name; 'slowonly_r50' with
      `imagenet_checkpoint`.
    input_shape: (T, H, W, 3) of one view.
    checkpoint: CPD checkpoint prefix or directory; None keeps random
      weights (tests), or takes `imagenet_checkpoint`.
    embedding_dim: head width (default `cpd.heads.EMBEDDING_DIM`); an
      ImageNet model has no head, so setting both is an error.
    checkpoint_key: the edge under which the trainer saved the model built
      by `cpd.heads.build_video_embedding_model`.
    imagenet_checkpoint: a 2D ImageNet ResNet-50 (`spl.models.inflation`:
      Keras Applications' HDF5 file or a Model Garden checkpoint) inflated
      into the backbone instead of restoring `checkpoint` (not both). The
      model's `head` is None, so extraction writes the pooled feature as
      both 'backbone' and 'embedding' (the same vector; evaluate with
      `run_protocol.feature = 'backbone'`, the paper's res5). The clips must
      be normalised with ImageNet's mean and std (the input pipeline's
      default). A Keras Applications file is ResNet v1, our network v1.5
      (the stride of a downsampling block on its 3x3 conv): the features are
      those of Model Garden's ResNet-50 holding Keras's weights.
    imagenet_norm_epsilon: batch-norm epsilon the ImageNet network was
      trained with, for a Model Garden checkpoint (which does not record it;
      1e-5 for Model Garden's `resnet_imagenet` experiment); None: Keras
      files' own, the backbone's for Model Garden checkpoints.
    **backbone_kwargs: passed to `build_backbone`.

  Returns:
    The embedding model (`.backbone`, `.head`; `.head` None for ImageNet).
  """
  if imagenet_checkpoint:
    # Only this path needs them.
    import tf_keras  # pylint: disable=g-import-not-at-top
    from spl.models import inflation  # pylint: disable=g-import-not-at-top
    if checkpoint:
      raise ValueError(
          f'set `checkpoint` ({checkpoint!r}, a CPD model) or '
          f'`imagenet_checkpoint` ({imagenet_checkpoint!r}, the ImageNet '
          'baseline), not both: they initialise the same backbone')
    if backbone != 'slowonly_r50':
      raise ValueError(
          f"`backbone` must be 'slowonly_r50' with `imagenet_checkpoint`, got "
          f'{backbone!r}: it is the one backbone that computes the 2D '
          'ResNet-50 frame by frame once inflated')
    if embedding_dim is not None:
      raise ValueError(
          f'`embedding_dim` ({embedding_dim}) is set but an ImageNet backbone '
          "has no embedding head: its only feature is 'backbone' (res5); "
          'set `build_video_model.embedding_dim = None`')
    try:
      weights = inflation.read_2d_resnet(
          imagenet_checkpoint, checkpoint_norm_epsilon=imagenet_norm_epsilon)
      inflation.check_target(weights, backbone)
    except (FileNotFoundError, ValueError) as e:
      raise type(e)(f'`imagenet_checkpoint`: {e}') from e
    net = factory.build_backbone(backbone, input_shape=tuple(input_shape),
                                 **backbone_kwargs)
    inflation.inflate(net, weights, method='center')
    inputs = tf_keras.Input(shape=tuple(input_shape), name='video')
    model = tf_keras.Model(inputs, net(inputs), name='imagenet_features')
    model.backbone, model.head = net, None
    return model
  config = model_config.for_checkpoint(checkpoint) if checkpoint else None
  backbone = model_config.resolve(config, 'video_backbone', backbone,
                                  '`backbone`')
  embedding_dim = model_config.resolve(config, 'embedding_dim', embedding_dim,
                                       '`embedding_dim`', heads.EMBEDDING_DIM)
  if backbone is None:
    raise ValueError('`backbone` must be set: no checkpoint with a '
                     f'{model_config.FILENAME} says which one to build')
  net = factory.build_backbone(backbone, input_shape=tuple(input_shape),
                               **backbone_kwargs)
  model = heads.build_video_embedding_model(net, embedding_dim)
  model(tf.zeros((1,) + tuple(input_shape)), training=False)
  if checkpoint:
    _restore(checkpoint, **{checkpoint_key: model})
  return model


def build_text_fn(*, checkpoint: Optional[str] = None,
                  hf_model_dir: Optional[str] = None,
                  word2vec_path: Optional[str] = None,
                  max_length: int = 32,
                  hidden_dim: Optional[int] = None,
                  embedding_dim: Optional[int] = None,
                  encoder_key: str = 'text_encoder',
                  head_key: str = 'text_head') -> TextEmbedder:
  """Text encoder + head of a CPD checkpoint as [B] strings -> [B, d].

  Exactly one of `hf_model_dir` (BERT-family directory) and `word2vec_path`
  builds the encoder's architecture; `checkpoint` then overwrites both parts
  with the trained weights (edges `encoder_key`, `head_key`). The head's
  widths come from the checkpoint's `cpd_model.json` when it has one
  (`hidden_dim` and `embedding_dim`, when set, must agree), else from the
  arguments (default `cpd.heads.EMBEDDING_DIM`); so do a word2vec encoder's
  lower-casing and words kept.
  """
  if (hf_model_dir is None) == (word2vec_path is None):
    raise ValueError('exactly one of `hf_model_dir` and `word2vec_path` must '
                     'be set')
  config = model_config.for_checkpoint(checkpoint) if checkpoint else None
  if hf_model_dir:
    encoder = text_encoders.transformer_from_hf_directory(
        hf_model_dir, max_length=max_length)
  else:
    # Titles read as the trainer read them (its lower-casing: gin's
    # word2vec_text_encoder.lowercase), when the config says.
    encoder = text_encoders.Word2VecAverageEncoder.from_file(
        word2vec_path, **((config or {}).get('word2vec') or {}))
  hidden_dim = model_config.resolve(config, 'text_hidden_dim', hidden_dim,
                                    '`hidden_dim`', heads.EMBEDDING_DIM)
  embedding_dim = model_config.resolve(config, 'embedding_dim', embedding_dim,
                                       '`embedding_dim`', heads.EMBEDDING_DIM)
  head = heads.TextHead(hidden_dim, embedding_dim)
  head(encoder(tf.constant(['warm up'])), training=False)
  if checkpoint:
    _restore(checkpoint, **{encoder_key: encoder, head_key: head})

  return TextEmbedder(encoder, head)


class TextEmbedder:
  """[B] strings -> [B, d]: a CPD text encoder and its head, in eval mode.

  `encoder` and `head` are public so that callers can reach the weights (an
  exporter tracks their variables and lookup tables).
  """

  def __init__(self, encoder: tf_keras.layers.Layer,
               head: tf_keras.layers.Layer):
    self.encoder = encoder
    self.head = head

  def __call__(self, titles: tf.Tensor) -> tf.Tensor:
    return self.head(self.encoder(titles, training=False), training=False)


# ---- Protocol runner ----


def _load(path: Optional[str], name: str):
  if not path:
    raise ValueError(f'`{name}` must be set for this protocol')
  return features_lib.load_features(path, by_video=True)


def _num_classes(*feature_sets) -> int:
  return int(max(int(f[features_lib.LABEL].max()) for f in feature_sets)) + 1


def _class_names(path: str) -> list:
  label_map = records.read_label_map(path)
  return list(label_map)


def run_protocol(protocol: str, output_dir: str, *,
                 strategy: Optional[tf.distribute.Strategy] = None,
                 files: Optional[str] = None,
                 train_features: Optional[str] = None,
                 test_features: Optional[str] = None,
                 feature: str = features_lib.EMBEDDING,
                 num_classes: Optional[int] = None,
                 class_names_file: Optional[str] = None,
                 video_model_fn: Callable[..., Any] = build_video_model,
                 text_fn_builder: Optional[Callable[..., Any]] = None,
                 dataset_fn: Callable[..., tf.data.Dataset] = (
                     input_pipeline.make_dataset),
                 eval_batch_size: int = 8,
                 knn_fn: Callable[..., Dict] = knn.knn_classify,
                 linear_fn: Callable[..., Dict] = linear_probe.linear_probe,
                 class_name_template: str = '{}',
                 zero_shot_subset_size: Optional[int] = None,
                 zero_shot_num_subsets: int = 10,
                 seed: int = 0,
                 low_label_fraction: float = 0.1,
                 low_label_num_shards: int = 1) -> Dict[str, Any]:
  """Runs one protocol and writes `results_<protocol>.json`.

  Args:
    protocol: one of `PROTOCOLS`.
    output_dir: results (and features for 'extract', records for
      'low_label').
    strategy: for 'extract' (default: the default strategy).
    files: clip-record glob ('extract', 'low_label').
    train_features: feature dir ('knn', 'linear').
    test_features: feature dir ('knn', 'linear', 'zero_shot', 'retrieval').
    feature: which features the classifiers use: 'embedding' or 'backbone'.
    num_classes: default: largest label + 1.
    class_names_file: label map for 'zero_shot' (default: `label_map.json`
      next to `files`).
    video_model_fn: called with `input_shape=` -> model with `.backbone`
      and `.head` ('extract'; gin binds backbone and checkpoint).
    text_fn_builder: () -> text function; needed by 'zero_shot', optional
      for 'extract' (captions embedded for retrieval).
    dataset_fn: `make_dataset`-like (gin binds frames, stride, crop, views).
    eval_batch_size: records per extraction batch (global).
    knn_fn, linear_fn: the protocol functions (gin-configured versions).
    class_name_template: phrase around class names for the text encoder.
    zero_shot_subset_size: if set, also the class-subset protocol.
    zero_shot_num_subsets: draws of that protocol.
    seed: seed of the zero-shot subsets and the low-label sampling.
    low_label_fraction: fraction of labels per class.
    low_label_num_shards: output shards of 'low_label'.

  Returns:
    The results dict written to JSON.
  """
  if protocol not in PROTOCOLS:
    raise ValueError(f'`protocol` must be one of {PROTOCOLS}, got '
                     f'{protocol!r}')
  if feature not in (features_lib.EMBEDDING, features_lib.BACKBONE):
    raise ValueError(f'`feature` must be {features_lib.EMBEDDING!r} or '
                     f'{features_lib.BACKBONE!r}, got {feature!r}')
  if not output_dir:
    raise ValueError('`output_dir` must be set')
  tf.io.gfile.makedirs(output_dir)
  strategy = strategy or tf.distribute.get_strategy()
  result: Dict[str, Any] = {'protocol': protocol}

  if protocol == 'extract':
    if not files:
      raise ValueError('`files` must be set for extract')
    make = functools.partial(dataset_fn, is_training=False,
                             batch_size=eval_batch_size, repeat=False,
                             drop_remainder=False)
    first = file_patterns.match(files, '`files`')
    shape = make(first[0]).element_spec[input_pipeline.VIDEO].shape
    with strategy.scope():
      model = video_model_fn(input_shape=tuple(shape[2:]))
    text_fn = text_fn_builder() if text_fn_builder else None
    written = features_lib.extract_features(
        features_lib.make_view_embedder(model.backbone, model.head),
        strategy, make, files, output_dir, text_fn=text_fn,
        meta={'files': files, 'views': int(shape[1]),
              'clip_shape': list(shape[2:])})
    loaded = features_lib.load_features(output_dir)
    result.update(written=written, num_videos=len(loaded[features_lib.LABEL]),
                  num_views=int(shape[1]))
  elif protocol in ('knn', 'linear'):
    train = _load(train_features, 'train_features')
    test = _load(test_features, 'test_features')
    c = num_classes or _num_classes(train, test)
    fn = knn_fn if protocol == 'knn' else linear_fn
    result.update(fn(train[feature], train[features_lib.LABEL],
                     test[feature], test[features_lib.LABEL],
                     num_classes=c))
  elif protocol == 'zero_shot':
    if text_fn_builder is None:
      raise ValueError('zero_shot needs `text_fn_builder`')
    test = _load(test_features, 'test_features')
    if class_names_file is None:
      if not files:
        raise ValueError('zero_shot needs `class_names_file` or `files`')
      class_names_file = os.path.join(
          os.path.dirname(file_patterns.match(files, '`files`')[0]),
          schema.LABEL_MAP_FILENAME)
    names = _class_names(class_names_file)
    class_emb = zero_shot.embed_texts(
        [zero_shot.class_name_to_text(n, class_name_template) for n in names],
        text_fn_builder())
    emb = test[features_lib.EMBEDDING]
    labels = test[features_lib.LABEL]
    result.update(zero_shot.zero_shot_classify(emb, labels, class_emb))
    if zero_shot_subset_size:
      result['class_subsets'] = zero_shot.zero_shot_class_subsets(
          emb, labels, class_emb, subset_size=zero_shot_subset_size,
          num_subsets=zero_shot_num_subsets, seed=seed)
  elif protocol == 'retrieval':
    test = _load(test_features, 'test_features')
    if features_lib.TEXT_EMBEDDING not in test:
      raise ValueError(f'{test_features!r} has no caption embeddings: extract '
                       'with a text encoder')
    result.update(zero_shot.video_text_retrieval(
        test[features_lib.EMBEDDING], test[features_lib.TEXT_EMBEDDING]))
  else:
    if not files:
      raise ValueError('`files` must be set for low_label')
    out = low_label.write_subset_records(
        files, output_dir, low_label_fraction, seed=seed,
        num_shards=low_label_num_shards)
    out.pop('clip_keys')
    result.update(out)
  records.write_json_atomic(
      os.path.join(output_dir, RESULTS_TEMPLATE.format(protocol)),
      _jsonable(result))
  return result


def _jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, float) and not np.isfinite(obj):
    return None
  return obj
