"""Shared test set-up: markers and logical CPU devices for tf.distribute tests."""

import logging
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tf_keras  # pylint: disable=g-import-not-at-top

# Four logical CPUs, configured before any test touches TF, so that
# MirroredStrategy tests get real replicas on a machine with no accelerator.
NUM_LOGICAL_CPUS = 4
_cpus = tf.config.list_physical_devices('CPU')
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * NUM_LOGICAL_CPUS)


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow: long test (end-to-end jobs, multi-process); CI runs it')


# What tf.test.TestCase seeds every test with.
TEST_SEED = 87654321


@pytest.fixture(autouse=True)
def _seed_every_test():
  """Each test starts from the same Python, NumPy and TF seeds.

  Unseeded initialisers and draws then give the same values on every run (and
  whatever other tests ran first), so a failure reproduces instead of showing
  up once in n CI runs.
  """
  tf_keras.utils.set_random_seed(TEST_SEED)


@pytest.fixture(autouse=True)
def _absl_log_level_per_test():
  """Each test starts with absl's logger level as the process had it.

  Parsing absl flags (an entry point's `main` run in-process) sets the
  `absl` logger's level from `--verbosity` for the rest of the process,
  which hid INFO records from the `caplog` of every later test.
  """
  absl_logger = logging.getLogger('absl')
  level = absl_logger.level
  yield
  absl_logger.setLevel(level)


@pytest.fixture
def logical_cpus():
  """Names of the logical CPU devices, e.g. for MirroredStrategy(devices=...)."""
  return [d.name for d in tf.config.list_logical_devices('CPU')]
