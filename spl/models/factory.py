"""Builds the classifiers the trainer uses, by backbone name.

This is the public surface of `spl.models`: gin bindings select a backbone by
name (`backbones.BACKBONES`; what each is, and where our builds depart from
the papers, is in `spl/models/backbones.py`). `build_backbone` and the
backbone tables are re-exported here for callers that want a bare backbone.
"""

from __future__ import annotations

import json
from typing import Optional, Sequence

import tensorflow as tf
import tf_keras

from spl.models import backbones
from spl.models import classifier
from tfrecords_tools import atomic_files

BACKBONES = backbones.BACKBONES
R3D50_G_TEMPORAL_KERNELS = backbones.R3D50_G_TEMPORAL_KERNELS
R3D50_MG_TEMPORAL_KERNELS = backbones.R3D50_MG_TEMPORAL_KERNELS
SLOWONLY_R50_TEMPORAL_KERNELS = backbones.SLOWONLY_R50_TEMPORAL_KERNELS
build_backbone = backbones.build_backbone
# What the trainer writes next to its checkpoints: the classifier's Keras
# config, so evaluation and Grad-CAM rebuild what was trained, not what the
# gin files say today.
MODEL_CONFIG_FILENAME = 'model.json'


def build_classifier(backbone: str,
                     *,
                     num_classes: int,
                     input_shape: Sequence[Optional[int]],
                     dropout_rate: float = 0.5,
                     projection: Optional[str] = None,
                     projection_dim: Optional[int] = None,
                     **backbone_kwargs) -> tf_keras.Model:
  """Builds backbone + [projection] + dropout + linear classifier.

  Args:
    backbone: One of `BACKBONES`.
    num_classes: Number of logits.
    input_shape: As for `build_backbone`.
    dropout_rate: Dropout before the classifier, in [0, 1).
    projection: None, 'linear' (one Dense layer: the SPL paper's pre-training
      head) or 'mlp' (Dense-BN-ReLU-Dense) between backbone and classifier.
    projection_dim: Width of the projection; None: the backbone's width.
    **backbone_kwargs: Passed to `build_backbone`.

  Returns:
    A `classifier.VideoClassifier`: `model(video, training=...)` gives float32
    logits [B, num_classes] under any mixed-precision policy; `model.backbone`
    is the backbone and `model.head` the rest (restore them separately when
    fine-tuning).
  """
  if backbone not in BACKBONES:
    raise ValueError(f'`backbone` must be one of {BACKBONES}, got {backbone!r}')
  return classifier.VideoClassifier(
      backbone_name=backbone,
      num_classes=num_classes,
      input_shape=tuple(input_shape),
      dropout_rate=dropout_rate,
      projection_dim=projection_dim,
      projection=projection,
      backbone_kwargs=backbone_kwargs)


def write_model_config(path: str, model: tf_keras.Model) -> None:
  """Writes `model`'s Keras config (a `VideoClassifier`'s) to `path`."""
  if not isinstance(model, classifier.VideoClassifier):
    raise TypeError(f'only a VideoClassifier has a model config; got '
                    f'{type(model).__name__}')
  atomic_files.write(path, json.dumps(
      tf_keras.saving.serialize_keras_object(model), indent=1,
      sort_keys=True) + '\n')


def classifier_from_config_file(path: str) -> classifier.VideoClassifier:
  """The (unweighted) classifier `write_model_config` described."""
  try:
    with tf.io.gfile.GFile(path) as f:
      config = json.load(f)
    model = tf_keras.saving.deserialize_keras_object(config)
  except (ValueError, TypeError, KeyError, tf.errors.OpError) as e:
    raise ValueError(f'cannot rebuild a model from {path!r}: {e}') from e
  if not isinstance(model, classifier.VideoClassifier):
    raise ValueError(f'{path!r} describes a {type(model).__name__}, not a '
                     f'VideoClassifier')
  return model
