"""Heads put on top of pooled backbone features: projection and classifier.

The classifier head always returns float32 logits, also under a mixed
precision policy, because losses and metrics are computed in float32 (a
softmax over bfloat16 logits loses the small probabilities anchor loss and
mAP depend on).
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf
import tf_keras


PROJECTIONS = ('linear', 'mlp')


@tf_keras.utils.register_keras_serializable(package='spl')
class ProjectionHead(tf_keras.layers.Layer):
  """Projection between the pooled features and the classifier (pre-training).

  SPL pre-trains with a projection between the backbone and the classifier so
  that the backbone features are not shaped directly by the (noisy) pre-training
  label space; fine-tuning discards it together with the classifier. The SPL
  paper's is linear (A.2, after Chen et al. 2020 and Wu et al. 2018): one Dense
  layer. 'mlp' is SimCLR's Dense-BN-ReLU-Dense.
  """

  def __init__(self,
               projection_dim: Optional[int] = None,
               hidden_dim: Optional[int] = None,
               norm_momentum: float = 0.99,
               norm_epsilon: float = 1e-3,
               kind: str = 'mlp',
               **kwargs):
    """Initializes the projection head.

    Args:
      projection_dim: Output width; None means the width of the input
        features (the SPL paper gives none).
      hidden_dim: Width of the hidden Dense layer of 'mlp'; None means the
        width of the input features.
      norm_momentum: Momentum of the batch-norm moving averages ('mlp').
      norm_epsilon: Epsilon of the batch norm ('mlp').
      kind: 'linear' (one Dense layer) or 'mlp' (Dense-BN-ReLU-Dense).
      **kwargs: Passed to `tf_keras.layers.Layer`.
    """
    super().__init__(**kwargs)
    if kind not in PROJECTIONS:
      raise ValueError(f'`kind` must be one of {PROJECTIONS}, got {kind!r}')
    if projection_dim is not None and int(projection_dim) <= 0:
      raise ValueError(
          f'`projection_dim` must be > 0 or None, got {projection_dim!r}')
    if hidden_dim is not None and int(hidden_dim) <= 0:
      raise ValueError(f'`hidden_dim` must be > 0 or None, got {hidden_dim!r}')
    self._kind = kind
    self._projection_dim = (
        None if projection_dim is None else int(projection_dim))
    self._hidden_dim = None if hidden_dim is None else int(hidden_dim)
    self._norm_momentum = norm_momentum
    self._norm_epsilon = norm_epsilon

  def build(self, input_shape):
    width = int(input_shape[-1])
    out = self._projection_dim or width
    if self._kind == 'mlp':
      self._dense1 = tf_keras.layers.Dense(self._hidden_dim or width,
                                           use_bias=False, name='dense1')
      self._norm = tf_keras.layers.BatchNormalization(
          momentum=self._norm_momentum, epsilon=self._norm_epsilon, name='bn')
    self._dense2 = tf_keras.layers.Dense(out, name='dense2')
    super().build(input_shape)

  def call(self, inputs, training=None):
    x = inputs
    if self._kind == 'mlp':
      x = self._dense1(x)
      x = self._norm(x, training=training)
      x = tf.nn.relu(x)
    return self._dense2(x)

  def get_config(self):
    config = super().get_config()
    config.update({
        'projection_dim': self._projection_dim,
        'hidden_dim': self._hidden_dim,
        'norm_momentum': self._norm_momentum,
        'norm_epsilon': self._norm_epsilon,
        'kind': self._kind,
    })
    return config


@tf_keras.utils.register_keras_serializable(package='spl')
class ClassificationHead(tf_keras.layers.Layer):
  """[optional projection] -> dropout -> linear classifier, float32 logits.

  Everything after the backbone lives here, so a trainer that fine-tunes with a
  different number of classes restores the backbone and builds a new head.
  """

  def __init__(self,
               num_classes: int,
               dropout_rate: float = 0.5,
               projection_dim: Optional[int] = None,
               norm_momentum: float = 0.99,
               norm_epsilon: float = 1e-3,
               projection: Optional[str] = None,
               **kwargs):
    """Initializes the head.

    Args:
      num_classes: Number of output logits.
      dropout_rate: Dropout rate applied before the classifier, in [0, 1).
      projection_dim: Width of the projection (None: the features' width).
      projection: None (no projection), 'linear' or 'mlp': a `ProjectionHead`
        of that kind sits between the features and the classifier.
      norm_momentum: Batch-norm momentum of the projection head.
      norm_epsilon: Batch-norm epsilon of the projection head.
      **kwargs: Passed to `tf_keras.layers.Layer`.
    """
    super().__init__(**kwargs)
    if num_classes is None or int(num_classes) <= 0:
      raise ValueError(f'`num_classes` must be > 0, got {num_classes!r}')
    if not 0.0 <= float(dropout_rate) < 1.0:
      raise ValueError(
          f'`dropout_rate` must be in [0, 1), got {dropout_rate!r}')
    if projection is not None and projection not in PROJECTIONS:
      raise ValueError(f'`projection` must be None or one of {PROJECTIONS}, '
                       f'got {projection!r}')
    if projection_dim is not None and int(projection_dim) <= 0:
      raise ValueError(
          f'`projection_dim` must be > 0 or None, got {projection_dim!r}')
    if projection is None and projection_dim is not None:
      raise ValueError(f'`projection_dim`={projection_dim} needs `projection` '
                       f"('linear' or 'mlp')")
    self._projection = projection
    self._num_classes = int(num_classes)
    self._dropout_rate = float(dropout_rate)
    self._projection_dim = (
        None if projection_dim is None else int(projection_dim))
    self._norm_momentum = norm_momentum
    self._norm_epsilon = norm_epsilon
    if projection is not None:
      self.projection = ProjectionHead(
          self._projection_dim, norm_momentum=norm_momentum,
          norm_epsilon=norm_epsilon, kind=projection, name='projection')
    else:
      self.projection = None
    self._dropout = tf_keras.layers.Dropout(self._dropout_rate, name='dropout')
    # float32 Dense: inputs are cast up before the matmul, logits are float32.
    self.classifier = tf_keras.layers.Dense(
        self._num_classes,
        kernel_initializer=tf_keras.initializers.RandomNormal(stddev=0.01),
        dtype='float32',
        name='logits')

  @property
  def num_classes(self) -> int:
    return self._num_classes

  def call(self, inputs, training=None):
    x = inputs
    if self.projection is not None:
      x = self.projection(x, training=training)
    x = self._dropout(x, training=training)
    x = self.classifier(tf.cast(x, tf.float32))
    return tf.cast(x, tf.float32)

  def get_config(self):
    config = super().get_config()
    config.update({
        'num_classes': self._num_classes,
        'dropout_rate': self._dropout_rate,
        'projection_dim': self._projection_dim,
        'norm_momentum': self._norm_momentum,
        'norm_epsilon': self._norm_epsilon,
        'projection': self._projection,
    })
    return config
