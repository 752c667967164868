"""The CPD model's shape, saved beside its checkpoints (`cpd_model.json`).

`cpd.trainer.run_cpd` writes it when a training run starts; the evaluation
protocols (`cpd.protocols.build_video_model`, `build_text_fn`) rebuild the
encoders from it rather than from gin state, so evaluating a checkpoint
needs only the checkpoint. A setting given to them anyway must agree with
the file (a mismatch is refused, naming both, before anything is restored);
without the file (a checkpoint from elsewhere) they use what they are given.
The text encoder's own architecture comes from its files (a Hugging Face
directory or a word2vec file), not from this one; how a word2vec encoder
reads a title (lower-casing, words kept) is saved here, since the trainer's
gin sets it.
"""

import json
import os
from typing import Any, Dict, Optional, Sequence

import tensorflow as tf

from tfrecords_tools import atomic_files

FILENAME = 'cpd_model.json'
FIELDS = ('video_backbone', 'embedding_dim', 'text_hidden_dim', 'clip_shape')


# How the word2vec encoder reads a title (`Word2VecAverageEncoder`'s
# settings; absent from configs of BERT-family runs and older runs).
WORD2VEC_FIELDS = ('lowercase', 'max_words')


def write(model_dir: str, *, video_backbone: str, embedding_dim: int,
          text_hidden_dim: int, clip_shape: Sequence[int],
          text_encoder: Any = None) -> None:
  """Writes `model_dir/cpd_model.json` (atomically); with the trained
  `text_encoder`, how a word2vec encoder reads titles (`word2vec`)."""
  config = {'video_backbone': video_backbone,
            'embedding_dim': int(embedding_dim),
            'text_hidden_dim': int(text_hidden_dim),
            'clip_shape': [int(d) for d in clip_shape]}
  if text_encoder is not None and all(
      hasattr(text_encoder, k) for k in WORD2VEC_FIELDS):
    config['word2vec'] = {k: getattr(text_encoder, k)
                          for k in WORD2VEC_FIELDS}
  atomic_files.write(os.path.join(model_dir, FILENAME),
                     json.dumps(config, indent=1, sort_keys=True) + '\n')


def for_checkpoint(checkpoint: str) -> Optional[Dict[str, Any]]:
  """The config beside a checkpoint (prefix or directory), or None.

  Raises:
    ValueError: the file exists but is not a CPD model config.
  """
  directory = (checkpoint if tf.io.gfile.isdir(checkpoint)
               else os.path.dirname(checkpoint))
  path = os.path.join(directory, FILENAME)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path) as f:
      config = json.load(f)
  except (ValueError, tf.errors.OpError) as e:
    raise ValueError(f'{path!r} is not a CPD model config: {e}') from e
  missing = [k for k in FIELDS if k not in config] if isinstance(
      config, dict) else list(FIELDS)
  if missing:
    raise ValueError(f'{path!r} is not a CPD model config: no {missing}')
  return dict(config, path=path)


def resolve(config: Optional[Dict[str, Any]], field: str, given: Any,
            what: str, default: Any = None) -> Any:
  """A setting of the rebuilt model: the config's, checked against `given`.

  Args:
    config: from `for_checkpoint` (None: `given`, else `default`).
    field: one of `FIELDS`.
    given: what the caller (gin) sets; None = unset.
    what: the caller's name of the setting, for the error.
    default: used when neither sets it.
  """
  if config is None:
    return default if given is None else given
  if given is not None and given != config[field]:
    raise ValueError(
        f'{what}={given!r} disagrees with the checkpoint\'s model config '
        f'{config["path"]!r} ({field}={config[field]!r}); leave {what} unset '
        f'to rebuild the model the checkpoint was trained as')
  return config[field]
