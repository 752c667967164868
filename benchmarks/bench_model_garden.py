r"""Trainer throughput vs Model Garden's own `video_classification` task.

  python -m benchmarks.bench_model_garden [--archs=r3d50_g,r3d50_mg] \
      [--steps=4] [--repeats=6] [--batch=2] [--num_frames=8] [--crop_size=112]

For each architecture in `--archs`, both sides train the same network on the
same clip shape, batch and optimizer:

* 'r3d50_g', the SPL paper's R3D-50-G (Table 8; `factory`): Model Garden's
  task config gets the paper's stem (temporal strides 1 in conv and pool,
  which makes its pool 1x3x3) and res5 temporal kernels (3,1,3), but Model
  Garden's `ResNet3D` can only gate the last block of a stage, so its task
  model is built (`_EveryBlockGatedTask.build_model`, the same steps as Model
  Garden's `factory_3d`) around our `resnet3d_g.ResNet3DG`: Model Garden's
  `ResNet3D` with a gate in every block and plain Keras layers. Everything
  else on that side (input pipeline, loss, regularisers, head, trainer) is
  Model Garden's.
* 'r3d50_mg', Model Garden's Kinetics `ResNet3D50` (temporal kernels
  (3,3,3), (3,1,3,1), (3,1,3,1,3,1), (1,3,1), a gate in the last block of
  every stage, default 5x7x7 stem with temporal stride 2 in conv and pool):
  Model Garden's task exactly as its default config builds it.

Before timing, the two backbones' stem, pool and every block (kernel shapes,
strides, gate or not) are compared layer by layer and must be equal.

Shared settings: SGD momentum 0.9, constant lr 0.001, L2 1e-4 on kernels,
dropout 0.5; Model Garden's default legacy SGD and ours `optimization.FusedSGD`
both update a variable with one `ResourceApplyKerasMomentum`; its L2 term is
on the loss through kernel regularisers, ours is added to the gradient; the
same weights, but ours computes the 1x1x1 convolutions as matrix products and
batch norms on the 4D view of their input (`spl.models.fast_layers`). Both
read the same TFRecords of real JPEG frames, under the same
`OneDeviceStrategy`:

* Model Garden: `VideoClassificationTask` (its Decoder/Parser input pipeline,
  its model factory, its loss) driven by `official.core.base_trainer.Trainer`,
  i.e. orbit's `StandardTrainer` running `--steps` `train_step`s in one
  `tf.function` `tf.while_loop` per `train()` call (exactly what
  `train_lib.run_experiment` does between summaries).
* ours: `spl.input_pipeline.make_dataset` distributed with
  `distribute_datasets_from_function` and `train_lib.ClassificationTask.run_steps`, the
  loop `spl.main --mode=train` runs between progress lines (the per-loop
  checkpoint/summary work is left out on both sides).

Augmentation is matched as far as the two pipelines allow: random crop +
flip on both, our colour jitter off (Model Garden has none by default).
Each side traces and warms up with one loop, then the sides alternate
`--repeats` timed loops of `--steps` steps; each side's best loop counts, so
load from other processes on a shared machine hurts both alike. The median of
the per-repeat ratios (the two sides' loops back to back) is printed as well:
on a loaded machine it is steadier than the best-of ratio. Clips per
CPU-second of this process (all its threads: model and input pipeline) are
printed too: other processes' load changes them least.

GFLOP/s = clips/s x the FLOPs of one training step per clip, counted once per
architecture by `benchmarks.flops` (TF's graph profiler on one forward pass
of our classifier, x3 for forward + backward); both sides run the same
network, so the same count serves both.

The tiny CPU config ('tiny3d', two conv3d-BN-ReLU blocks) has no Model Garden
equivalent: its `ResNet3D` starts at model_id 50 and has no other 3D backbone
in `factory_3d`, so only R3D-50s are compared. Target: ratio >= 1.0.
"""

import functools
import os
import statistics
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf
import tf_keras

from official.core import base_trainer
from official.core import exp_factory
from official.vision.configs import video_classification as mg_config  # pylint: disable=unused-import
from official.vision.modeling import video_classification_model as mg_model
from official.vision.modeling.layers import nn_blocks_3d
from official.vision.tasks import video_classification as mg_task
from benchmarks import flops
from spl import input_pipeline
from spl import losses
from spl import optimization
from spl import train_lib
from spl.models import factory
from spl.models import resnet3d_g
from tfrecords_tools import schema
from tfrecords_tools import testing

FLAGS = flags.FLAGS
flags.DEFINE_list('archs', ['r3d50_g', 'r3d50_mg'],
                  'Architectures (`factory` backbone names) to compare.')
flags.DEFINE_integer('steps', 4, 'Steps per timed loop.')
flags.DEFINE_integer('repeats', 6, 'Timed loops per side (interleaved).')
flags.DEFINE_integer('batch', 2, 'Global batch size.')
flags.DEFINE_integer('num_frames', 8, 'Frames per clip (T).')
flags.DEFINE_integer('crop_size', 112, 'Clip height and width.')
flags.DEFINE_integer('num_clips', 32, 'Records written for the benchmark.')

NUM_CLASSES = 10
LEARNING_RATE = 0.001
WEIGHT_DECAY = 1e-4
DROPOUT = 0.5
ARCHS = ('r3d50_g', 'r3d50_mg')


def _write_records(root, num_clips, num_frames, crop_size):
  # Frames a little larger than the crop, 2x the clip length, so both
  # pipelines really sample a window and crop.
  size = crop_size + crop_size // 4
  testing.write_fake_clip_records(
      root, num_clips=num_clips, num_shards=4, num_classes=NUM_CLASSES,
      num_frames=2 * num_frames, height=size, width=size + size // 4)
  return os.path.join(root, schema.shard_pattern())


class _EveryBlockGatedTask(mg_task.VideoClassificationTask):
  """Model Garden's task whose backbone gates every block (R3D-50-G).

  `build_model` takes the steps of Model Garden's `build_model`,
  `factory_3d.build_video_classification_model` and
  `resnet_3d.build_resnet3d` with the backbone class swapped for
  `ResNet3DG`; the config's values all reach it as they would reach
  `ResNet3D`.
  """

  def build_model(self):
    input_specs = tf_keras.layers.InputSpec(
        shape=[None] + self._get_feature_shape())
    weight_decay = float(self.task_config.losses.l2_weight_decay)
    l2 = (tf_keras.regularizers.l2(weight_decay / 2.0) if weight_decay
          else None)
    model_config = self.task_config.model
    spec = model_config.backbone.resnet_3d
    norm = model_config.norm_activation
    backbone = resnet3d_g.ResNet3DG(
        model_id=spec.model_id,
        temporal_strides=[b.temporal_strides for b in spec.block_specs],
        temporal_kernel_sizes=[
            b.temporal_kernel_sizes for b in spec.block_specs],
        use_self_gating=[b.use_self_gating for b in spec.block_specs],
        input_specs=input_specs,
        stem_type=spec.stem_type,
        stem_conv_temporal_kernel_size=spec.stem_conv_temporal_kernel_size,
        stem_conv_temporal_stride=spec.stem_conv_temporal_stride,
        stem_pool_temporal_stride=spec.stem_pool_temporal_stride,
        init_stochastic_depth_rate=spec.stochastic_depth_drop_rate,
        se_ratio=spec.se_ratio,
        activation=norm.activation,
        use_sync_bn=norm.use_sync_bn,
        norm_momentum=norm.norm_momentum,
        norm_epsilon=norm.norm_epsilon,
        kernel_regularizer=l2)
    return mg_model.VideoClassificationModel(
        backbone=backbone,
        num_classes=self._get_num_classes(),
        input_specs={'image': input_specs},
        dropout_rate=model_config.dropout_rate,
        aggregate_endpoints=model_config.aggregate_endpoints,
        kernel_regularizer=l2,
        require_endpoints=model_config.require_endpoints)


def _architecture(net):
  """Stem conv, pool and each block's kernels, strides and gate, in order."""
  layout = []
  for layer in net.layers:
    if isinstance(layer, tf_keras.layers.Conv3D):
      layout.append(('conv', tuple(layer.kernel.shape), tuple(layer.strides)))
    elif isinstance(layer, tf_keras.layers.MaxPool3D):
      layout.append(('pool', tuple(layer.pool_size), tuple(layer.strides)))
    elif isinstance(layer, nn_blocks_3d.BottleneckBlock3D):
      # pylint: disable=protected-access
      layout.append(('block', tuple(layer._temporal_conv.kernel.shape),
                     tuple(layer._spatial_conv.strides),
                     tuple(layer._expand_conv.kernel.shape),
                     layer._self_gating is not None))
      # pylint: enable=protected-access
  return layout


def model_garden_side(arch, strategy, pattern, batch, clip_shape, steps):
  """Model Garden's task and trainer; returns (loop function, backbone)."""
  config = exp_factory.get_exp_config('video_classification')
  task_config = config.task
  task_config.model.dropout_rate = DROPOUT
  backbone = task_config.model.backbone.resnet_3d  # ResNet3D50 block specs.
  assert backbone.model_id == 50 and all(
      b.use_self_gating for b in backbone.block_specs)
  assert tuple(tuple(b.temporal_kernel_sizes) for b in backbone.block_specs
               ) == factory.R3D50_MG_TEMPORAL_KERNELS
  task_class = mg_task.VideoClassificationTask
  if arch == 'r3d50_g':
    # Table 8: no temporal striding (a pool of temporal stride 1 has
    # temporal size 1 in Model Garden), res5 kernels (3,1,3).
    backbone.stem_conv_temporal_stride = 1
    backbone.stem_pool_temporal_stride = 1
    for b, kernels in zip(backbone.block_specs,
                          factory.R3D50_G_TEMPORAL_KERNELS):
      b.temporal_kernel_sizes = kernels
    task_class = _EveryBlockGatedTask
  task_config.losses.l2_weight_decay = WEIGHT_DECAY
  task_config.losses.one_hot = False  # Sparse CE, as ours.
  for data, training in ((task_config.train_data, True),
                         (task_config.validation_data, False)):
    data.input_path = pattern
    data.is_training = training
    data.num_classes = NUM_CLASSES
    data.feature_shape = clip_shape
    data.temporal_stride = 1
    data.global_batch_size = batch
    data.one_hot = False
    data.min_image_size = clip_shape[1]
  config.trainer.optimizer_config.optimizer.type = 'sgd'
  config.trainer.optimizer_config.optimizer.sgd.momentum = 0.9
  config.trainer.optimizer_config.learning_rate.type = 'constant'
  config.trainer.optimizer_config.learning_rate.constant.learning_rate = (
      LEARNING_RATE)
  config.trainer.optimizer_config.warmup.type = None
  config.trainer.train_tf_while_loop = True
  config.trainer.train_tf_function = True
  task = task_class(task_config)
  with strategy.scope():
    model = task.build_model()
    optimizer = task.create_optimizer(config.trainer.optimizer_config,
                                      config.runtime)
    trainer = base_trainer.Trainer(config, task, model, optimizer,
                                   train=True, evaluate=False)

  def loop():
    logs = trainer.train(tf.constant(steps, tf.int32))
    return float(logs['training_loss'])
  return loop, model.backbone


def our_side(arch, strategy, pattern, batch, clip_shape, steps):
  """Our trainer's state and loop; returns (loop function, classifier)."""
  dataset_fn = functools.partial(
      input_pipeline.make_dataset, num_frames=clip_shape[0], stride=1,
      crop_size=clip_shape[1], color_jitter_prob=0.0)
  with strategy.scope():
    model = factory.build_classifier(arch, num_classes=NUM_CLASSES,
                                     input_shape=clip_shape,
                                     dropout_rate=DROPOUT)
    model(tf.zeros((1,) + tuple(clip_shape)), training=False)
    optimizer = optimization.build_sgd(LEARNING_RATE, momentum=0.9)
    optimizer.build(model.trainable_variables)
  trainer = train_lib.ClassificationTask(
      strategy=strategy, model=model, optimizer=optimizer,
      loss_fn=losses.softmax_cross_entropy, num_classes=NUM_CLASSES,
      global_batch_size=batch, steps_per_epoch=100,
      weight_decay=WEIGHT_DECAY, mixed_precision=None, jit_compile=False)

  def make(ctx):
    return dataset_fn(
        pattern, is_training=True,
        batch_size=ctx.get_per_replica_batch_size(batch), input_context=ctx,
        num_classes=NUM_CLASSES).map(
            train_lib._train_features)  # pylint: disable=protected-access
  iterator = iter(strategy.distribute_datasets_from_function(make))

  def loop():
    trainer.run_steps(iterator, steps)
    loss = float(trainer.loss_metric.result())
    trainer.reset_metrics()
    return loss
  return loop, model


def measure(arch, strategy, pattern, batch, clip_shape, steps, repeats):
  """Times both sides on `arch`; returns their figures."""
  mg_loop, mg_backbone = model_garden_side(arch, strategy, pattern, batch,
                                           clip_shape, steps)
  our_loop, model = our_side(arch, strategy, pattern, batch, clip_shape,
                             steps)
  ours_layout = _architecture(model.backbone.get_layer('resnet3d'))
  mg_layout = _architecture(mg_backbone)
  if ours_layout != mg_layout:
    raise AssertionError(f'{arch}: Model Garden side differs from ours:\n'
                         f'{mg_layout}\nvs\n{ours_layout}')
  train_flops = flops.training_flops_per_clip(model, clip_shape)
  sides = {'model_garden': mg_loop, 'ours': our_loop}
  best, best_cpu, paired = {}, {}, []
  for name, loop in sides.items():
    start = time.perf_counter()
    loss = loop()  # Traces.
    print(f'{arch} {name:12s} warm-up loop {time.perf_counter() - start:6.1f}'
          f' s, loss {loss:.3f}', flush=True)
  for r in range(repeats):
    rates = {}
    for name, loop in (sides.items() if r % 2 == 0 else
                       reversed(list(sides.items()))):
      start, cpu = time.perf_counter(), time.process_time()
      loop()
      rates[name] = steps * batch / (time.perf_counter() - start)
      per_cpu = steps * batch / (time.process_time() - cpu)
      best[name] = max(best.get(name, 0.0), rates[name])
      best_cpu[name] = max(best_cpu.get(name, 0.0), per_cpu)
      print(f'  {arch} repeat {r} {name:12s} {rates[name]:6.2f} clips/s '
            f'{per_cpu:6.2f} clips/CPU-s', flush=True)
    paired.append(rates['ours'] / rates['model_garden'])
  return {'best': best, 'best_cpu': best_cpu,
          'median_ratio': statistics.median(paired), 'paired': len(paired),
          'gflop_per_clip': train_flops / 1e9}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  unknown = sorted(set(FLAGS.archs) - set(ARCHS))
  if unknown or not FLAGS.archs:
    raise ValueError(f'`--archs` must be a non-empty subset of {ARCHS}, got '
                     f'{FLAGS.archs}')
  batch, steps = FLAGS.batch, FLAGS.steps
  clip_shape = (FLAGS.num_frames, FLAGS.crop_size, FLAGS.crop_size, 3)
  strategy = tf.distribute.OneDeviceStrategy('/cpu:0')
  print(f'load before: {os.getloadavg()}', flush=True)
  results = {}
  with tempfile.TemporaryDirectory(prefix='bench_model_garden-') as tmp:
    pattern = _write_records(tmp, FLAGS.num_clips, FLAGS.num_frames,
                             FLAGS.crop_size)
    for arch in FLAGS.archs:
      results[arch] = measure(arch, strategy, pattern, batch, clip_shape,
                              steps, FLAGS.repeats)
  print(f'load after: {os.getloadavg()}')
  print(f'clip {clip_shape} batch {batch}, {steps} steps x {FLAGS.repeats} '
        'repeats, best loop per side; GFLOP per clip = one training step '
        '(forward x3, benchmarks.flops); MG = Model Garden '
        'video_classification on the same architecture; target ratio >= 1.0')
  print(f'{"arch":9s} {"GFLOP/clip":>10s} | {"ours clips/s":>12s} '
        f'{"MG clips/s":>10s} | {"ours GFLOP/s":>12s} {"MG GFLOP/s":>10s} | '
        f'{"ratio":>5s} {"median":>6s} | {"ours clips/CPU-s":>16s} '
        f'{"MG clips/CPU-s":>14s} {"ratio":>5s}')
  for arch, r in results.items():
    best, cpu, g = r['best'], r['best_cpu'], r['gflop_per_clip']
    print(f'{arch:9s} {g:10.1f} | {best["ours"]:12.2f} '
          f'{best["model_garden"]:10.2f} | {best["ours"] * g:12.1f} '
          f'{best["model_garden"] * g:10.1f} | '
          f'{best["ours"] / best["model_garden"]:5.2f} '
          f'{r["median_ratio"]:6.2f} | {cpu["ours"]:16.2f} '
          f'{cpu["model_garden"]:14.2f} '
          f'{cpu["ours"] / cpu["model_garden"]:5.2f}')
  print('tiny      : no Model Garden equivalent (ResNet3D starts at '
        'model_id 50), not compared')


if __name__ == '__main__':
  app.run(main)
