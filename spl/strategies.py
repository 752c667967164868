"""The one place a `tf.distribute` strategy is built from its name.

Every entry point (`spl.main`, `cpd.evaluate`, the demos) calls
`build_strategy`; everything else runs under the strategy it is given.
Multi-worker runs read the cluster from TF_CONFIG; `tpu` names the TPU.
"""

from typing import Optional

import tensorflow as tf

STRATEGIES = ('one_device', 'mirrored', 'multi_worker_mirrored', 'tpu')


def build_strategy(name: str,
                   tpu: Optional[str] = None) -> tf.distribute.Strategy:
  """A strategy by name; `one_device` takes the first GPU, else the CPU."""
  if name not in STRATEGIES:
    raise ValueError(f'`strategy` must be one of {STRATEGIES}, got {name!r}')
  if name == 'one_device':
    gpus = tf.config.list_logical_devices('GPU')
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else
                                           '/cpu:0')
  if name == 'mirrored':
    return tf.distribute.MirroredStrategy()
  if name == 'multi_worker_mirrored':
    return tf.distribute.MultiWorkerMirroredStrategy()
  resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or '')
  tf.config.experimental_connect_to_cluster(resolver)
  tf.tpu.experimental.initialize_tpu_system(resolver)
  return tf.distribute.TPUStrategy(resolver)
