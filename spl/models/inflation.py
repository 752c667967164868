"""I3D-style inflation: initialise a 3D ResNet from a 2D ImageNet ResNet.

Carreira & Zisserman (2017): a 2D kernel W of shape [kh, kw, cin, cout] becomes
a 3D kernel of shape [t, kh, kw, cin, cout] by repeating W t times over time
and dividing by t, so a static clip (one frame repeated) gives every 3D conv
the response of the 2D conv on that frame. Batch-norm parameters and moving
statistics are copied. Zero padding breaks the static-clip identity at the
first and last (t - 1) / 2 frames of each temporal conv; `method='center'`
(2D kernel in the central tap, zeros elsewhere) keeps it exact on every frame,
and makes a network without temporal strides or pooling (the slow-only ones)
compute the 2D network on each frame separately, on any clip.
A 2D target (the 'r2d50' image backbone) gets the kernels as they are.

Two 2D architectures are read (`SUPPORTED_DEPTHS`), each for its own 3D
backbones (`BACKBONE_DEPTHS`; any other pairing is refused, naming both):
  - ResNet-50 (bottleneck blocks) -> 'r3d50_g', 'r3d50_mg', 'slowonly_r50'
    (and 'r2d50');
  - ResNet-34 (basic blocks; Model Garden's `ResNet(model_id=34)`, Keras
    Applications has none) -> 'slowonly_r34_mg' (exact) and 'slowonly_r34'
    (`resnet3d_basic`; one layer pair dropped, see below).
Model Garden's ResNet-18 would pair with 'slowonly_r18' the same way (one
more `_RESNET_SPECS` entry) but is refused: no paper row starts from it.

Reading is separate from assigning (`read_2d_resnet`, then `inflate`), so a
trainer can check the file before it builds anything; `inflate_from_2d` does
both. Every format is first turned into one canonical list, the convs and
batch norms of the 2D ResNet in the order Model Garden's 2D `ResNet` and the
3D networks create them (stem conv, stem BN, then per block: shortcut conv,
shortcut BN (first block of a stage only), then the block's convs, each
followed by its BN), each named in the style of Keras Applications
('conv1_conv', 'conv2_block1_0_conv', ...; `RESNET_LAYOUTS`). The 3D
network's convs and batch norms, listed in build order, are paired with it
one to one by position and shape. Unused layers (no weights) and self-gating
layers (no 2D counterpart, left at their initialisation) are not listed.

One 2D layer pair has no 3D counterpart. Model Garden's `ResNet` gives the
first block of every stage a projection shortcut, also in res2, where a
basic block keeps its width and resolution (a 1x1 64 -> 64 conv + BN); the
3D basic-block network 'slowonly_r34' (`resnet3d_basic`, like He et al.'s
ResNet-34) has an identity shortcut there; 'slowonly_r34_mg' has the
projection, which is paired like any other layer, and the inflated network is
the 2D one (what CPD Table 4's configs build). For 'slowonly_r34' it is
dropped, with a warning: the inflated res2 block 1 adds its input where the
2D one adds BN(1x1 conv(input)), so from res2 on the inflated ResNet-34 is
NOT the 2D network (stem and every conv/BN are copied exactly; the network
equals a 2D ResNet-34 whose res2 projection is the identity). Dropping is
kept rather than refused so that the plain network (and its existing runs)
can still start from ImageNet. The bottleneck ResNet-50 changes width there
(64 -> 256), so both sides have it and nothing is dropped.

Accepted checkpoints (`checkpoint_path`):
  1. Keras Applications' ResNet-50 (`tf_keras.applications.ResNet50`, with or
     without top): the HDF5 weights file it downloads
     (`resnet50_weights_tf_dim_ordering_tf_kernels[_notop].h5` in
     ~/.keras/models) or writes with `save_weights('x.h5')`, or the whole
     model written with `save('x.h5')`. Layers are found by name, so the
     classifier ('predictions') may be present or not. That network is not
     Model Garden's, and is converted (a whole-model file's config gives the
     batch norms' epsilon; the weights are read the same way):
       - its convs have biases; a ResNet's conv is always followed by a batch
         norm, so each bias is folded into that BN's moving mean
         (BN(conv(x) + b) with mean m equals BN(conv(x)) with mean m - b;
         in training mode the batch mean absorbs it anyway);
       - its batch norms use epsilon 1.001e-5; gamma is scaled by
         sqrt((var + eps_3d) / (var + eps_2d)) so that the inference output
         is the same under the 3D network's epsilon (1e-3 by default);
       - it expects 'caffe' inputs: BGR, minus the mean pixel (103.939,
         116.779, 123.68), not scaled; our input pipeline gives RGB
         `(x / 255 - mean) / std` with ImageNet's mean and std. The stem
         kernel's input channels are reversed and scaled by 255 * std, and
         the constant that the mean difference leaves (sum of the kernel
         times the difference of the two mean pixels) is folded into the stem
         BN's moving mean. An image then gives the same stem response as in
         Keras, except at the image border, where the two zero paddings
         stand for slightly different pixels (the two means differ by < 0.5
         of 255);
       - it is ResNet v1: the stride 2 of a downsampling block is on the
         first 1x1 conv, where Model Garden (v1.5) puts it on the 3x3 conv.
         The kernel shapes are the same, so layers are paired by shape and
         the stride stays where the 3D network has it (the function of a
         downsampling block changes: v1.5 samples the 3x3 conv's output
         instead of the 1x1 conv's input);
       - Keras pads the 7x7 stem conv and the 3x3 stem max-pool symmetrically
         and then uses 'valid'; Model Garden uses 'same', which pads one pixel
         less on the top and left for even sizes, so the stem's sampling grid
         is one pixel off.
  2. TF checkpoints (a prefix, or a directory: its latest checkpoint) of a
     Model Garden 2D `ResNet(model_id=50)` or `ResNet(model_id=34)` with the
     default stem and no squeeze-excitation (the architecture is told from
     the conv kernel shapes), in any of these layouts:
       - `save_weights` of Model Garden's `ResNet` itself, or (ResNet-50) of
         `factory.build_backbone('r2d50', ...)` (also as an HDF5 file);
       - `tf.train.Checkpoint(backbone=resnet, ...)`: the `checkpoint_items`
         layout of Model Garden's classification model, and this trainer's
         own checkpoints of an 'r2d50' classifier;
       - `tf.train.Checkpoint(model=classification_model, ...)` with an
         `official.vision.modeling.classification_model.ClassificationModel`
         around the ResNet: what Model Garden's trainer
         (`official.core.base_trainer`) writes, optimizer and step included.
     They are copied as they are: Model Garden's ImageNet input is RGB
     normalised with ImageNet's mean and std, as ours, and its convs have no
     bias. The checkpoint does not record the batch norms' epsilon: pass
     `checkpoint_norm_epsilon` if it differs from the 3D network's (Model
     Garden's `resnet_imagenet` experiment trains with 1e-5, its default
     `NormActivation` is 1e-3).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from absl import logging
import h5py
import numpy as np
import tensorflow as tf
import tf_keras

from official.vision.modeling.backbones import resnet as mg_resnet
from official.vision.modeling.layers import nn_blocks_3d
from spl import input_pipeline
from spl.models import factory

INFLATION_METHODS = ('mean', 'center')

# Batch-norm epsilon of every Keras Applications ResNet (hard-coded there).
KERAS_APPLICATIONS_NORM_EPSILON = 1.001e-5
# Keras Applications' 'caffe' input: BGR pixels in [0, 255] minus this (BGR).
KERAS_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

_CONVS = (tf_keras.layers.Conv2D, tf_keras.layers.Conv3D)
_BN = tf_keras.layers.BatchNormalization
_BN_WEIGHTS = ('gamma', 'beta', 'moving_mean', 'moving_variance')
# Block type and (filters, blocks) of res2..res5 of the 2D ResNets read.
_RESNET_SPECS = {
    34: ('basic', ((64, 3), (128, 4), (256, 6), (512, 3))),
    50: ('bottleneck', ((64, 3), (128, 4), (256, 6), (512, 3))),
}
SUPPORTED_DEPTHS = tuple(sorted(_RESNET_SPECS))
# The 2D ResNet each factory backbone is inflated from.
BACKBONE_DEPTHS = {
    'r3d50_g': 50, 'r3d50_mg': 50, 'slowonly_r50': 50, 'r2d50': 50,
    'slowonly_r34': 34, 'slowonly_r34_mg': 34, 'slowonly_r18': 18,
}
# Where a 2D ResNet of each depth comes from (for error messages).
_SOURCES = {
    18: "Model Garden's ResNet(model_id=18), which is not read (yet)",
    34: "a Model Garden ResNet(model_id=34) checkpoint",
    50: ("Keras Applications' ResNet50 HDF5 file or a Model Garden "
         "ResNet(model_id=50) checkpoint"),
}
# Variables of a TF checkpoint that belong to no model.
_NOT_MODEL = re.compile(r'^optimizer/|\.OPTIMIZER_SLOT/|^save_counter/|'
                        r'^global_step/|^_CHECKPOINTABLE_OBJECT_GRAPH$')


def _block_convs(block_type: str, cin: int,
                 filters: int) -> List[Tuple[int, ...]]:
  """Kernel shapes of one block's residual branch, in build order."""
  if block_type == 'bottleneck':
    return [(1, 1, cin, filters), (3, 3, filters, filters),
            (1, 1, filters, 4 * filters)]
  return [(3, 3, cin, filters), (3, 3, filters, filters)]


def _resnet_layout(depth: int) -> List[Tuple[str, bool, Tuple[int, ...]]]:
  """(Keras-style name, is conv, kernel or BN shape) in build order."""
  block_type, stages = _RESNET_SPECS[depth]
  layout = [('conv1_conv', True, (7, 7, 3, 64)), ('conv1_bn', False, (64,))]
  channels = 64
  for stage, (filters, blocks) in enumerate(stages, start=2):
    out = 4 * filters if block_type == 'bottleneck' else filters
    for block in range(1, blocks + 1):
      prefix = f'conv{stage}_block{block}'
      convs = list(enumerate(_block_convs(block_type, channels, filters),
                             start=1))
      if block == 1:  # Model Garden projects in every stage's first block.
        convs.insert(0, (0, (1, 1, channels, out)))
      for i, shape in convs:
        layout += [(f'{prefix}_{i}_conv', True, shape),
                   (f'{prefix}_{i}_bn', False, (shape[-1],))]
      channels = out
  return layout


RESNET_LAYOUTS = {depth: _resnet_layout(depth) for depth in _RESNET_SPECS}
RESNET50_LAYOUT = RESNET_LAYOUTS[50]
# Keras Applications names of a ResNet-50's convs and batch norms, in the
# order they are paired with a 3D network's.
RESNET50_LAYER_NAMES = tuple(name for name, _, _ in RESNET50_LAYOUT)


@dataclasses.dataclass(frozen=True)
class Layer2D:
  """One conv or batch norm of a 2D ResNet, ready to be copied.

  Attributes:
    name: Keras Applications-style name ('conv2_block1_0_conv'), whatever
      the source format.
    source: Where it came from (layer path or name in the checkpoint).
    weights: conv: {'kernel'}; batch norm: gamma, beta, moving_mean,
      moving_variance. Biases are already folded, inputs already converted.
    strides: Spatial strides of a conv; None if they are not comparable with
      Model Garden's (Keras Applications' ResNet v1) or for a batch norm.
    epsilon: Batch-norm epsilon of the 2D network; None if unknown (then the
      3D network's epsilon is assumed, and the weights are copied as is).
  """
  name: str
  source: str
  weights: Dict[str, np.ndarray]
  strides: Optional[Tuple[int, int]] = None
  epsilon: Optional[float] = None

  @property
  def is_conv(self) -> bool:
    return 'kernel' in self.weights

  def describe(self) -> str:
    kind = 'conv' if self.is_conv else 'batch norm'
    shape = self.weights['kernel' if self.is_conv else 'gamma'].shape
    return f'{self.source} ({kind}, {tuple(shape)})'


@dataclasses.dataclass(frozen=True)
class ResNetWeights:
  """A 2D ResNet read by `read_2d_resnet`.

  Attributes:
    path: The file or checkpoint prefix read.
    format: Which accepted format it was (for logs).
    layers: The convs and batch norms in `RESNET_LAYOUTS[depth]` order (106
      for a ResNet-50, 74 for a ResNet-34).
    conversions: What was changed on reading (for logs).
    depth: 50 or 34 (`SUPPORTED_DEPTHS`).
  """
  path: str
  format: str
  layers: Tuple[Layer2D, ...]
  conversions: Tuple[str, ...] = ()
  depth: int = 50

  @property
  def architecture(self) -> str:
    return f'2D ResNet-{self.depth}'


# The old name, kept for `spl.train_lib`.
ResNet50Weights = ResNetWeights


# ---- The 3D side ----


def _sublayers(layer) -> List[tf_keras.layers.Layer]:
  if isinstance(layer, tf_keras.Model) and getattr(layer, '_is_graph_network',
                                                   False):
    return list(layer.layers)  # Functional: topological order.
  # Tracking order = the order the layer assigned its sublayers (build order).
  # pylint: disable-next=protected-access
  return list(layer._flatten_layers(include_self=False, recursive=False))


def _conv_bn_layers(model) -> List[Tuple[str, tf_keras.layers.Layer]]:
  """(path, layer) of every built conv and batch norm, in build order."""
  found = []

  def walk(layer, prefix):
    for sub in _sublayers(layer):
      path = f'{prefix}/{sub.name}'
      if isinstance(sub, nn_blocks_3d.SelfGating):
        continue
      if isinstance(sub, _CONVS + (_BN,)):
        if sub.weights:
          found.append((path, sub))
      else:
        walk(sub, path)

  walk(model, model.name)
  return found


def _describe(path, layer) -> str:
  kind = 'batch norm' if isinstance(layer, _BN) else type(layer).__name__
  shape = tuple(layer.weights[0].shape) if layer.weights else ()
  return f'{path} ({kind}, {shape})'


def _compatible(l3, l2: Layer2D) -> bool:
  if isinstance(l3, _BN) or not l2.is_conv:
    return (isinstance(l3, _BN) and not l2.is_conv and l3.center and
            l3.scale and all(tuple(w.shape) == l2.weights['gamma'].shape
                             for w in l3.weights))
  if not isinstance(l3, _CONVS) or l3.use_bias:
    return False
  k3, k2 = tuple(l3.kernel.shape), l2.weights['kernel'].shape
  spatial = k3[1:] if isinstance(l3, tf_keras.layers.Conv3D) else k3
  strides = tuple(l3.strides)[-2:]
  return spatial == k2 and (l2.strides is None or strides == l2.strides)


def _inflate_kernel(kernel2d: np.ndarray, t: int, method: str) -> np.ndarray:
  if method == 'mean':
    return np.repeat(kernel2d[None], t, axis=0) / np.asarray(t, kernel2d.dtype)
  kernel = np.zeros((t,) + kernel2d.shape, kernel2d.dtype)
  # With 'same' padding, tap (t - 1) // 2 is the one aligned with frame i.
  kernel[(t - 1) // 2] = kernel2d
  return kernel


def _bn_values(l3, l2: Layer2D) -> Dict[str, np.ndarray]:
  """l2's batch-norm values, gamma rescaled for l3's epsilon if they differ."""
  values = dict(l2.weights)
  eps3 = float(l3.epsilon)
  if l2.epsilon is not None and l2.epsilon != eps3:
    var = values['moving_variance'].astype(np.float64)
    values['gamma'] = (values['gamma'] * np.sqrt(
        (var + eps3) / (var + l2.epsilon))).astype(values['gamma'].dtype)
  return values


# ---- Reading: Keras Applications HDF5 ----


def _text(value) -> str:
  return value.decode('utf8') if isinstance(value, bytes) else str(value)


def _read_keras_h5(path: str) -> Tuple[Dict[str, Dict[str, np.ndarray]],
                                       Dict[str, float]]:
  """{layer: {weight: array}} of the layers with weights, BN epsilons.

  Epsilons are known only for a whole-model file (its config).
  """
  try:
    opened = (h5py.File(path, 'r') if os.path.exists(path) else
              h5py.File(tf.io.gfile.GFile(path, 'rb'), 'r'))
  except OSError as e:
    raise ValueError(f'2D checkpoint {path!r} is not a readable HDF5 file '
                     f'(truncated or corrupt?): {e}') from e
  layers, epsilons = {}, {}
  try:
    with opened as f:
      root = f['model_weights'] if 'model_weights' in f else f
      if 'layer_names' not in root.attrs:
        raise ValueError(
            f'2D checkpoint {path!r} is an HDF5 file but not a Keras weights '
            'file of the tf_keras / Keras 2 format (no `layer_names`; Keras '
            "3's `.weights.h5` layout is not read)")
      for name in root.attrs['layer_names']:
        group = root[_text(name)]
        values = {}
        for weight in group.attrs['weight_names']:
          weight = _text(weight)
          key = weight.rsplit('/', 1)[-1].split(':')[0]
          values[key] = np.asarray(group[weight])
        if values:
          layers[_text(name)] = values
      config = f.attrs.get('model_config')
      if config is not None:
        config = json.loads(_text(config))
        for layer in config.get('config', {}).get('layers', ()):
          if layer.get('class_name') == 'BatchNormalization':
            epsilons[layer['config']['name']] = float(
                layer['config']['epsilon'])
  except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
    raise ValueError(f'2D checkpoint {path!r}: cannot read its weights '
                     f'(truncated or corrupt HDF5 file?): {e!r}') from e
  return layers, epsilons


def _from_keras_h5(path: str, input_mean, input_std,
                   norm_epsilon: Optional[float]) -> ResNetWeights:
  """Canonical layers of a Keras Applications ResNet-50 HDF5 file."""
  found, epsilons = _read_keras_h5(path)
  expected = set(RESNET50_LAYER_NAMES)
  missing = [n for n in RESNET50_LAYER_NAMES if n not in found]
  extra = sorted(set(found) - expected - {'predictions'})
  if missing or extra:
    problems = []
    if missing:
      problems.append(f'{len(missing)} of its 106 conv/BN layers are missing '
                      f'(first: {missing[:3]})')
    if extra:
      problems.append(f'it has {len(extra)} layers with weights that a '
                      f'ResNet-50 does not have (first: {extra[:3]})')
    raise ValueError(
        f'2D checkpoint {path!r} is not a Keras Applications ResNet-50: '
        f'{"; ".join(problems)}. File layers: {sorted(found)[:6]}...')
  for name, is_conv, shape in RESNET50_LAYOUT:
    values = found[name]
    keys = ('kernel',) if is_conv else _BN_WEIGHTS
    if any(k not in values or values[k].shape != shape for k in keys):
      shapes = {k: tuple(v.shape) for k, v in values.items()}
      raise ValueError(
          f'2D checkpoint {path!r} is not a Keras Applications ResNet-50: '
          f'layer {name!r} has weights {shapes}, a ResNet-50 has '
          f'{", ".join(keys)} of shape {shape}')

  layers, folded = [], 0
  for i in range(0, len(RESNET50_LAYOUT), 2):
    conv_name, bn_name = RESNET50_LAYER_NAMES[i], RESNET50_LAYER_NAMES[i + 1]
    conv, bn = found[conv_name], dict(found[bn_name])
    kernel = conv['kernel']
    mean = bn['moving_mean'].astype(np.float64)
    if 'bias' in conv:
      mean -= conv['bias']
      folded += 1
    if i == 0:
      kernel, shift = _convert_stem(
          kernel, src_bgr=True,
          src_mean=np.asarray(KERAS_CAFFE_MEAN_BGR) / 255.0,
          src_std=np.full(3, 1.0 / 255.0), dst_mean=input_mean,
          dst_std=input_std)
      mean -= shift
    bn['moving_mean'] = mean.astype(bn['moving_mean'].dtype)
    epsilon = norm_epsilon if norm_epsilon is not None else epsilons.get(
        bn_name, KERAS_APPLICATIONS_NORM_EPSILON)
    layers.append(Layer2D(conv_name, conv_name, {'kernel': kernel}))
    layers.append(Layer2D(bn_name, bn_name,
                          {k: bn[k] for k in _BN_WEIGHTS}, epsilon=epsilon))
  return ResNetWeights(
      path=path, format='Keras Applications ResNet-50 (HDF5)',
      layers=tuple(layers),
      conversions=(f'{folded} conv biases folded into BN moving means',
                   'stem: caffe BGR input converted to RGB (x/255 - mean)/std',
                   'BN gamma rescaled for the target epsilon'))


def _convert_stem(kernel: np.ndarray, *, src_bgr: bool, src_mean, src_std,
                  dst_mean, dst_std) -> Tuple[np.ndarray, np.ndarray]:
  """Stem kernel for another input normalisation, and the constant it leaves.

  With pixels p in [0, 1] (RGB), the source network sees
  c_j = (p_j - src_mean_j) / src_std_j (channels reversed if `src_bgr`), ours
  z_j = (p_j - dst_mean_j) / dst_std_j, so c_j = (dst_std_j z_j + dst_mean_j
  - src_mean_j) / src_std_j: the kernel is scaled per input channel and a
  constant per output channel is left, exact wherever the conv sees no
  padding.

  Returns:
    (kernel for z, constant to subtract from the following BN's mean).
  """
  k = np.asarray(kernel, np.float64)
  src_mean, src_std = np.asarray(src_mean, np.float64), np.asarray(
      src_std, np.float64)
  if src_bgr:
    k, src_mean, src_std = k[:, :, ::-1, :], src_mean[::-1], src_std[::-1]
  scale = np.asarray(dst_std, np.float64) / src_std
  shift = (np.asarray(dst_mean, np.float64) - src_mean) / src_std
  converted = (k * scale[None, None, :, None]).astype(kernel.dtype)
  return converted, np.einsum('hwco,c->o', k, shift)


# ---- Reading: TF checkpoints of Model Garden's ResNet-50 / ResNet-34 ----


def _tf_prefix(path: str) -> str:
  """The checkpoint prefix of `path` (a prefix, a directory, or its files)."""
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      h5 = [f for f in tf.io.gfile.listdir(path)
            if f.endswith(('.h5', '.hdf5'))]
      hint = (f' (for an HDF5 file, give the file itself: {h5[:2]})'
              if h5 else '')
      raise FileNotFoundError(f'2D checkpoint {path!r} is a directory '
                              f'without a TF checkpoint{hint}')
    return latest
  path = re.sub(r'\.(index|data-\d+-of-\d+)$', '', path)
  if not tf.io.gfile.exists(path + '.index'):
    raise FileNotFoundError(
        f'2D checkpoint {path!r} does not exist (neither a file, a '
        f'directory nor a TF checkpoint prefix with {path}.index)')
  return path


def _check_tf_shapes(path: str) -> int:
  """The depth of the 2D ResNet, from the variable shapes alone (cheap).

  Raises:
    ValueError: no supported architecture has these conv kernels.
  """
  try:
    shapes = tf.train.load_checkpoint(path).get_variable_to_shape_map()
  except (tf.errors.OpError, ValueError) as e:
    raise ValueError(f'2D checkpoint {path!r} is not a readable TF checkpoint '
                     f'(truncated or corrupt?): {e}') from e
  kernels = sorted(tuple(s) for k, s in shapes.items()
                   if len(s) == 4 and not _NOT_MODEL.search(k))
  expected = {depth: sorted(shape for _, is_conv, shape in layout if is_conv)
              for depth, layout in RESNET_LAYOUTS.items()}
  for depth, shapes_of_depth in expected.items():
    if kernels == shapes_of_depth:
      return depth
  rank5 = sum(1 for s in shapes.values() if len(s) == 5)
  hint = (f'; it holds {rank5} 3D conv kernels: a 3D network'
          if rank5 else '')
  same_count = [d for d, e in expected.items() if len(e) == len(kernels)]
  if same_count:
    what = (f'its {len(kernels)} 2D conv kernels have other shapes than a '
            f"ResNet-{same_count[0]}'s (another variant or width)")
  else:
    what = (f'it has {len(kernels)} 2D conv kernels where a ResNet-50 has '
            f'{len(expected[50])} and a ResNet-34 {len(expected[34])} (Model '
            "Garden's ResNet-18 has 21, ResNet-101 104)")
  raise ValueError(
      f'2D checkpoint {path!r} holds no 2D ResNet-50 or ResNet-34: '
      f'{what}{hint}')


def _from_tf_checkpoint(path: str, input_mean, input_std,
                        norm_epsilon: Optional[float]) -> ResNetWeights:
  """Canonical layers of a Model Garden ResNet-50 or -34 TF checkpoint."""
  depth = _check_tf_shapes(path)
  if depth == 50:
    model2d = factory.build_backbone('r2d50', input_shape=(None, None, 3))
    resnet = model2d.get_layer('resnet2d')
  else:
    resnet = mg_resnet.ResNet(
        model_id=depth,
        input_specs=tf_keras.layers.InputSpec(shape=[None, None, None, 3]))
    model2d = resnet
  # The r2d50 wrapper's layouts exist for a ResNet-50 only.
  attempts = []
  if depth == 50:
    attempts.append(('r2d50 backbone save_weights',
                     lambda: tf.train.Checkpoint(model2d)))
  attempts += [
      ('Model Garden ResNet save_weights', lambda: tf.train.Checkpoint(resnet)),
      ('`backbone` = Model Garden ResNet (checkpoint_items)',
       lambda: tf.train.Checkpoint(backbone=resnet))]
  if depth == 50:
    attempts.append(('`backbone` = r2d50 backbone (this trainer)',
                     lambda: tf.train.Checkpoint(backbone=model2d)))
  attempts.append(
      ('`model` = Model Garden ClassificationModel (its trainer)',
       lambda: tf.train.Checkpoint(
           model=tf.train.Checkpoint(_backbone=resnet))))
  errors, found = [], None
  for what, make in attempts:
    try:
      status = make().read(path)
      status.expect_partial()  # Silences warnings of the attempts that fail.
      status.assert_existing_objects_matched()
      found = what
      break
    except (IndexError, tf.errors.DataLossError, tf.errors.OutOfRangeError,
            tf.errors.NotFoundError) as e:
      # The reader's errors for a data file that ends too early.
      raise ValueError(f'2D checkpoint {path!r} is not a readable TF '
                       f'checkpoint (truncated or corrupt?): {e!r}') from e
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
      errors.append(f'{what}: {str(e)[:200]}')
  if found is None:
    raise ValueError(f'2D checkpoint {path!r} holds no 2D ResNet-{depth} in a '
                     'known layout (see spl.models.inflation); tried: ' +
                     '; '.join(errors))
  return _from_model2d(model2d, depth, path, f'TF checkpoint, {found}',
                       input_mean, input_std, norm_epsilon)


def _from_r2d50_h5(path: str, input_mean, input_std,
                   norm_epsilon: Optional[float]) -> ResNetWeights:
  """Canonical layers of `save_weights('x.h5')` of the r2d50 backbone."""
  model2d = factory.build_backbone('r2d50', input_shape=(None, None, 3))
  try:
    model2d.load_weights(path)
  except (ValueError, OSError, KeyError) as e:
    raise ValueError(f'2D checkpoint {path!r} is not an HDF5 weights file '
                     f'of the r2d50 backbone: {e}') from e
  return _from_model2d(model2d, 50, path, 'r2d50 backbone save_weights (HDF5)',
                       input_mean, input_std, norm_epsilon)


def _from_model2d(model2d: tf_keras.Model, depth: int, path: str, fmt: str,
                  input_mean, input_std,
                  norm_epsilon: Optional[float]) -> ResNetWeights:
  """Canonical layers of a loaded Model Garden ResNet (or r2d50 backbone)."""
  layout, found = RESNET_LAYOUTS[depth], _conv_bn_layers(model2d)
  shapes = [tuple(layer.weights[0].shape) for _, layer in found]
  if shapes != [shape for _, _, shape in layout]:
    # Model Garden's build order changed: pairing by position would be wrong.
    raise RuntimeError(f"Model Garden's ResNet-{depth} no longer lists its "
                       'convs and batch norms in the order of '
                       f'RESNET_LAYOUTS[{depth}]: got {shapes[:6]}...')
  layers, conversions = [], []
  stem_shift = None
  for (name, _, _), (source, layer) in zip(layout, found):
    if isinstance(layer, _BN):
      values = {k: w.numpy() for k, w in zip(_BN_WEIGHTS, layer.weights)}
      if stem_shift is not None:
        values['moving_mean'] = (values['moving_mean'] - stem_shift).astype(
            values['moving_mean'].dtype)
        stem_shift = None
      layers.append(Layer2D(name, source, values, epsilon=norm_epsilon))
      continue
    kernel = layer.kernel.numpy()
    if name == 'conv1_conv' and (
        tuple(input_mean) != tuple(input_pipeline.IMAGENET_MEAN) or
        tuple(input_std) != tuple(input_pipeline.IMAGENET_STD)):
      kernel, stem_shift = _convert_stem(
          kernel, src_bgr=False, src_mean=input_pipeline.IMAGENET_MEAN,
          src_std=input_pipeline.IMAGENET_STD, dst_mean=input_mean,
          dst_std=input_std)
      conversions.append('stem converted from ImageNet mean/std to '
                         f'mean {tuple(input_mean)}, std {tuple(input_std)}')
    layers.append(Layer2D(name, source, {'kernel': kernel},
                          strides=tuple(layer.strides)))
  if norm_epsilon is not None:
    conversions.append('BN gamma rescaled for the target epsilon')
  return ResNetWeights(path=path, format=fmt, layers=tuple(layers),
                       conversions=tuple(conversions), depth=depth)


# ---- Public API ----


def read_2d_resnet(
    checkpoint_path: str,
    *,
    input_mean: Sequence[float] = input_pipeline.IMAGENET_MEAN,
    input_std: Sequence[float] = input_pipeline.IMAGENET_STD,
    checkpoint_norm_epsilon: Optional[float] = None) -> ResNetWeights:
  """Reads and checks a 2D ResNet-50 or ResNet-34 checkpoint, any format.

  Everything about the file is checked here (existence, readability,
  architecture), so a trainer calls this before building anything; which
  backbone it may initialise is `check_target`'s business.

  Args:
    checkpoint_path: An HDF5 file, a TF checkpoint prefix or a directory
      holding TF checkpoints (see the module docstring).
    input_mean: Per-channel RGB mean of [0, 1] pixels that the 3D network's
      input is normalised with (`input_pipeline.AugmentationOptions.mean`);
      the stem is converted to it.
    input_std: The matching std.
    checkpoint_norm_epsilon: Batch-norm epsilon the 2D network was trained
      with; None: read from a whole-model Keras file, 1.001e-5 for other
      Keras Applications files, and for TF checkpoints (which do not record
      it) the target network's own (weights copied as they are).

  Returns:
    The canonical convs and batch norms (106 of a ResNet-50, 74 of a
    ResNet-34) and the depth.

  Raises:
    FileNotFoundError: nothing at `checkpoint_path`.
    ValueError: an unreadable (truncated, corrupt) file, or one that holds
      no 2D ResNet-50 or ResNet-34; the message names the file and the
      problem.
  """
  if not isinstance(checkpoint_path, (str, os.PathLike)) or not str(
      checkpoint_path):
    raise ValueError(
        f'`checkpoint_path` must be a non-empty path, got {checkpoint_path!r}')
  for name, value in (('input_mean', input_mean), ('input_std', input_std)):
    if len(value) != 3:
      raise ValueError(f'`{name}` must have 3 values (RGB), got {value!r}')
  if min(input_std) <= 0:
    raise ValueError(f'`input_std` must be > 0, got {input_std!r}')
  if checkpoint_norm_epsilon is not None and not checkpoint_norm_epsilon > 0:
    raise ValueError('`checkpoint_norm_epsilon` must be > 0 or None, got '
                     f'{checkpoint_norm_epsilon!r}')
  path = os.fspath(checkpoint_path)
  if not tf.io.gfile.isdir(path) and tf.io.gfile.exists(path) and not re.search(
      r'\.(index|data-\d+-of-\d+)$', path):
    # A single file: only HDF5 is such a checkpoint (a TF one is a prefix).
    if not _is_hdf5(path):
      raise ValueError(f'2D checkpoint {path!r} is a file but not an HDF5 '
                       'file (and a TF checkpoint is given by its prefix, '
                       'without .index)')
    read = _from_r2d50_h5 if _is_r2d50_h5(path) else _from_keras_h5
    return read(path, input_mean, input_std, checkpoint_norm_epsilon)
  if path.endswith(('.h5', '.hdf5')) and not tf.io.gfile.exists(path):
    raise FileNotFoundError(f'2D checkpoint {path!r} does not exist')
  return _from_tf_checkpoint(_tf_prefix(path), input_mean, input_std,
                             checkpoint_norm_epsilon)


def _is_hdf5(path: str) -> bool:
  if os.path.exists(path):
    return h5py.is_hdf5(path)
  with tf.io.gfile.GFile(path, 'rb') as f:
    return f.read(8) == b'\x89HDF\r\n\x1a\n'


def _is_r2d50_h5(path: str) -> bool:
  """Whether an HDF5 file holds `save_weights` of the r2d50 backbone."""
  try:
    with h5py.File(path, 'r') as f:
      return 'resnet2d' in [_text(n) for n in f.attrs.get('layer_names', ())]
  except OSError:
    return False  # The Keras reader names the problem.


# The old name, kept as the entry point of `spl.train_lib`: it reads every
# supported depth.
read_2d_resnet50 = read_2d_resnet


def check_target(weights2d: ResNetWeights, backbone: str) -> None:
  """Refuses a 2D ResNet of another depth than `backbone` is inflated from.

  Cheap (names only), so it can run before the backbone is built.

  Args:
    weights2d: From `read_2d_resnet`.
    backbone: A `factory.BACKBONES` name; names not in `BACKBONE_DEPTHS`
      (e.g. 'tiny3d') pass, and `inflate` compares their layers one by one.

  Raises:
    ValueError: naming the file, both architectures and what to give instead.
  """
  need = BACKBONE_DEPTHS.get(backbone)
  if need is None or need == weights2d.depth:
    return
  others = sorted(b for b, d in BACKBONE_DEPTHS.items()
                  if d == weights2d.depth)
  raise ValueError(
      f'2D checkpoint {weights2d.path!r} holds a {weights2d.architecture} '
      f'({weights2d.format}), but backbone {backbone!r} is inflated from a '
      f'2D ResNet-{need}: give {_SOURCES[need]}, or use one of the backbones '
      f'inflated from a ResNet-{weights2d.depth}: {others}')


def _is_identity_shaped_projection(l2: Layer2D) -> bool:
  """A stride-1 1x1 shortcut conv that keeps the width (Model Garden's res2
  projection of a basic-block ResNet); an identity can stand in its place."""
  if not l2.is_conv or not l2.name.endswith('_0_conv'):
    return False
  kh, kw, cin, cout = l2.weights['kernel'].shape
  return (kh, kw) == (1, 1) and cin == cout and l2.strides in (None, (1, 1))


def _pair(target: tf_keras.Model, layers3d, weights2d: ResNetWeights):
  """(3D layer, 2D layer) pairs, and the names of the dropped 2D layers."""
  layers2d = weights2d.layers
  pairs, dropped = [], []
  i3 = i2 = 0
  while i3 < len(layers3d) or i2 < len(layers2d):
    if i3 >= len(layers3d) or i2 >= len(layers2d):
      extra = (f'3D layer {_describe(*layers3d[i3])} has no 2D counterpart'
               if i3 < len(layers3d) else
               f'2D layer {layers2d[i2].describe()} has no 3D counterpart')
      raise ValueError(
          f'Cannot inflate {target.name!r}: {len(layers3d)} conv/BN layers vs '
          f'{len(layers2d)} in the {weights2d.architecture}; first unmatched '
          f'at #{i3}: {extra}')
    (p3, l3), l2 = layers3d[i3], layers2d[i2]
    if _compatible(l3, l2):
      pairs.append((l3, l2))
      i3, i2 = i3 + 1, i2 + 1
    elif (_is_identity_shaped_projection(l2) and i2 + 2 < len(layers2d) and
          _compatible(l3, layers2d[i2 + 2])):
      # The 3D block has an identity shortcut: skip the 2D conv and its BN.
      dropped += [layers2d[i2].name, layers2d[i2 + 1].name]
      i2 += 2
    else:
      raise ValueError(f'Cannot inflate {target.name!r}: layer #{i3} '
                       f'{_describe(p3, l3)} does not match 2D '
                       f'{l2.describe()}')
  return pairs, dropped


def inflate(model3d: tf_keras.Model, weights2d: ResNetWeights, *,
            method: str = 'mean') -> int:
  """Assigns a read 2D ResNet to a 3D (or 2D) ResNet, in place.

  Args:
    model3d: A backbone from `factory.build_backbone` ('r3d50_g', 'r3d50_mg',
      'slowonly_r50', or 'r2d50' for a plain copy, from a ResNet-50;
      'slowonly_r34_mg' or 'slowonly_r34' from a ResNet-34), or a classifier
      whose `backbone` is one; its head is left alone.
    weights2d: From `read_2d_resnet`.
    method: 'mean' (I3D: kernel repeated over time / temporal size) or
      'center' (2D kernel in the central temporal tap, zeros elsewhere).

  Returns:
    The number of convs and batch norms assigned.

  Raises:
    ValueError: bad `method`, a 2D ResNet of another depth than the backbone
      (`check_target`), or layers that do not pair; the message names the
      first mismatching pair. Nothing is assigned in that case.
  """
  if method not in INFLATION_METHODS:
    raise ValueError(
        f'`method` must be one of {INFLATION_METHODS}, got {method!r}')
  target = getattr(model3d, 'backbone', None)
  if not isinstance(target, tf_keras.Model):
    target = model3d
  check_target(weights2d, target.name)
  layers3d = _conv_bn_layers(target)
  pairs, dropped = _pair(target, layers3d, weights2d)

  for l3, l2 in pairs:
    if isinstance(l3, _BN):
      values = _bn_values(l3, l2)
      for key, w3 in zip(_BN_WEIGHTS, l3.weights):
        w3.assign(values[key])
      continue
    kernel2d = l2.weights['kernel']
    if isinstance(l3, tf_keras.layers.Conv3D):
      kernel2d = _inflate_kernel(kernel2d, l3.kernel.shape[0], method)
    l3.kernel.assign(kernel2d)
  if dropped:
    logging.warning(
        'Inflating %s from %s: the 2D shortcut projection %s has no 3D '
        'counterpart (an identity shortcut) and is dropped; from there on the '
        "inflated network differs from the %s (backbone 'slowonly_r34_mg' "
        'has that projection and is inflated exactly)', target.name,
        weights2d.path, dropped, weights2d.architecture)
  gates = sum(1 for l in target.submodules
              if isinstance(l, nn_blocks_3d.SelfGating))
  norms = sum(1 for l3, _ in pairs if isinstance(l3, _BN))
  logging.info(
      'Inflated %d convs and %d batch norms of %s from %s (%s, %s; method '
      '%r%s)%s', len(pairs) - norms, norms, target.name, weights2d.path,
      weights2d.architecture, weights2d.format, method,
      ''.join(f'; {c}' for c in weights2d.conversions),
      f'; {gates} self-gating layers keep their initialisation' if gates
      else '')
  return len(pairs)


def inflate_from_2d(model3d: tf_keras.Model,
                    checkpoint_path: str,
                    *,
                    method: str = 'mean',
                    input_mean: Sequence[float] = input_pipeline.IMAGENET_MEAN,
                    input_std: Sequence[float] = input_pipeline.IMAGENET_STD,
                    checkpoint_norm_epsilon: Optional[float] = None) -> int:
  """Initialises a 3D ResNet in place from a 2D ResNet checkpoint.

  `read_2d_resnet` then `inflate`; see them for the arguments.

  Returns:
    The number of convs and batch norms assigned.

  Raises:
    FileNotFoundError: nothing at `checkpoint_path`.
    ValueError: bad `method`, an unreadable checkpoint, one of another
      architecture, or a 3D network whose layers do not pair with the 2D
      ones. Nothing is assigned in that case.
  """
  if method not in INFLATION_METHODS:
    raise ValueError(
        f'`method` must be one of {INFLATION_METHODS}, got {method!r}')
  weights2d = read_2d_resnet(checkpoint_path, input_mean=input_mean,
                             input_std=input_std,
                             checkpoint_norm_epsilon=checkpoint_norm_epsilon)
  return inflate(model3d, weights2d, method=method)
