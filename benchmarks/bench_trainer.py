r"""Trainer throughput vs a bare `tf.function` train step (the ceiling).

  python -m benchmarks.bench_trainer [--configs=tiny,r3d50_g,r3d50_mg] \
      [--steps=20]

Both sides train the same model on the same in-memory batch, so the ratio
measures only what the trainer adds (distributed iterator, `strategy.run`,
weight decay, metrics, the `tf.range` loop); the input pipeline is left out on
purpose (it has its own benchmark). The trainer's clips/s is its own
progress-line figure for a loop of `--steps` steps after a warm-up loop that
traces; the bare side is timed over the same number of steps after one traced
warm-up step. Target: ratio >= 0.9.

Configs: 'tiny' (CPU test network), 'r3d50_g' (the SPL paper's R3D-50-G,
Table 8: no temporal down-sampling, a gate in every block) and 'r3d50_mg'
(Model Garden's Kinetics R3D-50: T/4 after the stem, 4 gates). Each is also
reported in GFLOP/s: clips/s x the FLOPs of one training step per clip,
counted once per config by `benchmarks.flops` (TF's graph profiler on one
forward pass, x3 for forward + backward).
"""

import functools
import os
import tempfile
import time

from absl import app
from absl import flags

import numpy as np
import tensorflow as tf

from spl import input_pipeline
from spl import loop
from spl import losses
from spl import optimization
from spl import train_lib
from spl.models import factory
from benchmarks import flops

FLAGS = flags.FLAGS
flags.DEFINE_list('configs', ['tiny', 'r3d50_g', 'r3d50_mg'],
                  'Configs to measure.')
flags.DEFINE_integer('steps', 20, 'Timed steps per side.')

# backbone, clip shape (T, H, W, 3), global batch. R3D-50 uses a small clip so
# that a CPU run finishes; the per-step overhead is what is measured.
CONFIGS = {
    'tiny': ('tiny3d', (4, 32, 32, 3), 8),
    'r3d50_g': ('r3d50_g', (8, 64, 64, 3), 2),
    'r3d50_mg': ('r3d50_mg', (8, 64, 64, 3), 2),
}
NUM_CLASSES = 10


def _batch(shape, batch):
  rng = np.random.default_rng(0)
  return {input_pipeline.VIDEO: rng.normal(size=(batch,) + shape).astype(
              np.float32),
          input_pipeline.LABEL: rng.integers(0, NUM_CLASSES, batch).astype(
              np.int32),
          input_pipeline.CLIP_INDEX: np.arange(batch, dtype=np.int64)}


def bare_clips_per_second(backbone, shape, batch, steps):
  """Bare side; returns (clips/s, training GFLOP per clip)."""
  model = factory.build_classifier(backbone, num_classes=NUM_CLASSES,
                                   input_shape=shape)
  gflop_per_clip = flops.training_flops_per_clip(model, shape) / 1e9
  optimizer = optimization.build_sgd(0.01, momentum=0.9)
  data = _batch(shape, batch)
  video = tf.constant(data[input_pipeline.VIDEO])
  labels = tf.constant(data[input_pipeline.LABEL])

  @tf.function
  def step(video, labels):
    with tf.GradientTape() as tape:
      logits = model(video, training=True)
      loss = tf.reduce_mean(losses.softmax_cross_entropy(labels, logits))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  step(video, labels).numpy()
  start = time.perf_counter()
  for _ in range(steps):
    loss = step(video, labels)
  loss.numpy()
  return steps * batch / (time.perf_counter() - start), gflop_per_clip


def trainer_clips_per_second(backbone, shape, batch, steps):
  data = _batch(shape, batch)

  def dataset_fn(file_pattern, *, is_training, batch_size, input_context,
                 num_classes, **kwargs):
    del file_pattern, is_training, input_context, num_classes, kwargs
    one = {k: v[:batch_size] for k, v in data.items()}
    return tf.data.Dataset.from_tensors(one).repeat()

  with tempfile.TemporaryDirectory() as tmp:
    dummy = os.path.join(tmp, 'dummy.tfrecord')
    open(dummy, 'wb').close()
    result = train_lib.run(
        mode='train', model_dir=os.path.join(tmp, 'model'),
        strategy=tf.distribute.OneDeviceStrategy('/cpu:0'),
        model_fn=functools.partial(factory.build_classifier, backbone),
        num_classes=NUM_CLASSES, global_batch_size=batch,
        dataset_fn=dataset_fn, train_file_pattern=dummy,
        train_steps=2 * steps,
        loop=loop.LoopConfig(steps_per_loop=steps,
                             checkpoint_every_steps=2 * steps),
        learning_rate_fn=functools.partial(
            optimization.build_learning_rate, base_learning_rate=0.01))
  return result['train']['clips_per_second']


def main(argv):
  del argv
  unknown = sorted(set(FLAGS.configs) - set(CONFIGS))
  if unknown or not FLAGS.configs:
    raise ValueError(f'`--configs` must be a non-empty subset of '
                     f'{sorted(CONFIGS)}, got {FLAGS.configs}')
  rows = []
  for name in FLAGS.configs:
    backbone, shape, batch = CONFIGS[name]
    bare, gflop = bare_clips_per_second(backbone, shape, batch, FLAGS.steps)
    trainer = trainer_clips_per_second(backbone, shape, batch, FLAGS.steps)
    rows.append((name, shape, batch, gflop, trainer, bare))
    print(f'{name:10s} clip {shape} batch {batch}: trainer {trainer:8.1f} '
          f'clips/s, bare tf.function step {bare:8.1f} clips/s, ratio '
          f'{trainer / bare:.2f} (target >= 0.9)', flush=True)
  print(f'{FLAGS.steps} steps per side; GFLOP per clip = one training step '
        '(forward x3, benchmarks.flops)')
  print(f'{"config":9s} {"clip":>17s} {"batch":>5s} {"GFLOP/clip":>10s} | '
        f'{"trainer clips/s":>15s} {"bare clips/s":>12s} | '
        f'{"trainer GFLOP/s":>15s} {"bare GFLOP/s":>12s} | {"ratio":>5s}')
  for name, shape, batch, gflop, trainer, bare in rows:
    print(f'{name:9s} {str(shape):>17s} {batch:5d} {gflop:10.2f} | '
          f'{trainer:15.2f} {bare:12.2f} | {trainer * gflop:15.1f} '
          f'{bare * gflop:12.1f} | {trainer / bare:5.2f}')


if __name__ == '__main__':
  app.run(main)
