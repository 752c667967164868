"""The classifier the trainer builds: backbone -> head -> float32 logits."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import tf_keras

from spl.models import backbones
from spl.models import heads


@tf_keras.utils.register_keras_serializable(package='spl')
class VideoClassifier(tf_keras.Model):
  """Backbone plus `heads.ClassificationHead`, as one functional model.

  The backbone (a `tf_keras.Model`: clips -> pooled float32 features [B, D])
  and the head (`heads.ClassificationHead`: projection, dropout, classifier)
  are the attributes `model.backbone` and `model.head`, and edges of the same
  names in the checkpoint object graph. To fine-tune from a pre-training run
  whose head has a different number of classes, restore the backbone only:
  `tf.train.Checkpoint(model=tf.train.Checkpoint(backbone=new.backbone))
  .read(path).expect_partial()` for a checkpoint written as
  `tf.train.Checkpoint(model=old, ...)`.
  `get_config` holds the builder arguments, so `from_config` rebuilds the same
  architecture (weights are not part of the config).
  """

  def __init__(self,
               backbone_name: str,
               num_classes: int,
               input_shape: Sequence[Optional[int]],
               dropout_rate: float = 0.5,
               projection_dim: Optional[int] = None,
               projection: Optional[str] = None,
               backbone_kwargs: Optional[Dict[str, Any]] = None,
               **kwargs):
    """Builds the classifier; see `factory.build_classifier` for arguments."""
    backbone_kwargs = dict(backbone_kwargs or {})
    backbone = backbones.build_backbone(
        backbone_name, input_shape=input_shape, **backbone_kwargs)
    head = heads.ClassificationHead(
        num_classes,
        dropout_rate=dropout_rate,
        projection_dim=projection_dim,
        projection=projection,
        norm_momentum=backbone_kwargs.get('norm_momentum', 0.99),
        norm_epsilon=backbone_kwargs.get('norm_epsilon', 1e-3),
        name='head')
    inputs = tf_keras.Input(shape=tuple(input_shape), name='video')
    logits = head(backbone(inputs))
    kwargs.setdefault('name', f'{backbone_name}_classifier')
    super().__init__(inputs=inputs, outputs=logits, **kwargs)
    self._config = {
        'backbone_name': backbone_name,
        'num_classes': int(num_classes),
        'input_shape': tuple(input_shape),
        'dropout_rate': float(dropout_rate),
        'projection_dim': projection_dim,
        'projection': projection,
        'backbone_kwargs': backbone_kwargs,
    }
    # Plain attributes, so that checkpoints of the model have the edges
    # `backbone` and `head` (e.g. `model/backbone/...` when the trainer writes
    # `tf.train.Checkpoint(model=model)`).
    self.backbone = backbone
    self.head = head

  def get_config(self):
    config = dict(self._config)
    config['name'] = self.name
    return config

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    config['input_shape'] = tuple(config['input_shape'])
    return cls(**config)
