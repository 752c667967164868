"""The tests' MirroredStrategy helper keeps strategies of one process apart.

A collision is silent until a later test's collective reuses an earlier
one's (group, instance) key with another shape, and then fails in a test
that has nothing to do with the cause (a CI run lost five train_lib tests
to a second key counter in test_cpd_trainer.py that overlapped this one's).
"""

import os
import re

import numpy as np
import tensorflow as tf

from tests import distribute_utils


def _all_reduce(strategy, size):
  def fn():
    ctx = tf.distribute.get_replica_context()
    return ctx.all_reduce('sum', tf.ones([size]) * tf.cast(
        ctx.replica_id_in_sync_group + 1, tf.float32))
  out = strategy.experimental_local_results(strategy.run(tf.function(fn)))
  return [o.numpy() for o in out]


def test_two_strategies_over_the_same_devices_do_not_share_keys(
    logical_cpus):
  first = distribute_utils.mirrored_strategy(logical_cpus[:2])
  second = distribute_utils.mirrored_strategy(logical_cpus[:2])
  # The same op sequence with other shapes: shared keys abort with "Shape
  # mismatch in the collective instance".
  for out in _all_reduce(first, 5):
    np.testing.assert_array_equal(out, np.full([5], 3.0))
  for out in _all_reduce(second, 7):
    np.testing.assert_array_equal(out, np.full([7], 3.0))


def test_every_test_makes_its_mirrored_strategies_with_the_helper():
  here = os.path.dirname(__file__)
  offenders = []
  for name in sorted(os.listdir(here)):
    if not name.endswith('.py') or name in ('distribute_utils.py', os.path.basename(__file__)):
      continue
    with open(os.path.join(here, name)) as f:
      for number, line in enumerate(f, 1):
        if re.search(r'MirroredStrategy\(|_collective_key_base', line) and (
            'distribute_utils' not in line and
            not line.lstrip().startswith(('#', '"', "'"))):
          offenders.append(f'{name}:{number}: {line.strip()}')
  assert not offenders, (
      'make MirroredStrategy objects with tests.distribute_utils.'
      'mirrored_strategy (one key counter per process):\n' +
      '\n'.join(offenders))
