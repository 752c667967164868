"""Builds the video (and image) backbones by name.

This is the public surface the trainer uses; gin bindings select a backbone
by name. Every backbone maps a batch of clips [B, T, H, W, 3] (images
[B, H, W, 3] for 'r2d50') to float32 pooled features [B, D] (global average
pool over T, H, W), computed in the global mixed-precision policy.

  name             what                                                 D
  r3d50_g          SPL's R3D-50-G (paper Table 8), gate in every block  2048
  r3d50_mg         Model Garden's Kinetics R3D-50 (not the paper's)     2048
  slowonly_r18     slow-only 3D ResNet-18, basic blocks (CPD)           512
  slowonly_r34     slow-only 3D ResNet-34, basic blocks (CPD)           512
  slowonly_r34_mg  slowonly_r34 + res2 projection (Model Garden)        512
  slowonly_r50     slow-only 3D ResNet-50, bottleneck (CPD)             2048
  r2d50            2D ResNet-50 (Model Garden `ResNet`), image exp.     2048
  tiny3d           two conv3d-BN-ReLU blocks, for CPU tests             16

'r3d50_g' is the SPL paper's R3D-50-G (Table 8, appendix A.2), what every SPL
config trains: stem conv 5x7x7 stride (1,2,2), max-pool 1x3x3 stride (1,2,2),
bottlenecks [t x1x1, 1x3x3, 1x1x1] with temporal kernels t = (3,3,3),
(3,1,3,1), (3,1,3,1,3,1), (3,1,3) in res2..res5, a feature gate in every one
of the 16 blocks (`resnet3d_g.ResNet3DG`) and no temporal downsampling
anywhere: T frames in give T frames at every endpoint, and 64x224^2 in gives
64x7^2x2048 at res5 as in Table 8. The gate is S3D-G's (Xie et al. 2018, as
cited): sigmoid(1x1x1 conv with bias of the T,H,W mean) times the features.
Where our build departs from the paper's wording, one line each (Model
Garden's `BottleneckBlock3D` conventions, which we reuse):
  - gate on the residual branch before the shortcut sum (A.2: after the block);
  - spatial stride 2 of res3..res5 in the 1x3x3 conv (Table 8: not stated);
  - 1x1x1 conv + BN projection shortcut in each stage's first block (not shown);
  - BN momentum 0.99, epsilon 1e-3 by default (the paper cites Wang et al.).

'r3d50_mg' is NOT the paper's network: it is Model Garden's Kinetics
`ResNet3D50` configuration, kept for the benchmark against Model Garden's own
`video_classification` task: temporal kernels (3,3,3), (3,1,3,1),
(3,1,3,1,3,1), (1,3,1), temporal strides 1 in every stage, self-gating on in
every stage but only in the last block of each (4 gates; Model Garden's
`ResNet3D._block_group`), and Model Garden's default stem: conv 5x7x7 with
stride (2,2,2), then max-pool 3x3x3 with stride (2,2,2), so T frames in give
T/4 frames at res2..res5.

'slowonly_r50' is the same Model Garden `ResNet3D` with SlowFast's slow-only
layout: stem conv 1x7x7 stride (1,2,2), max-pool 1x3x3 stride (1,2,2),
temporal kernels 1 in res2/res3 and 3 in res4/res5 (in the first conv of each
bottleneck), no temporal downsampling, no self-gating.

'slowonly_r34_mg' is 'slowonly_r34' with a 1x1x1 conv + BN projection
shortcut in res2's first block (64 -> 64, stride 1), where He et al.'s
ResNet-34 and 'slowonly_r34' have the identity: Model Garden's 2D
`ResNet(model_id=34)` projects there, so only this variant inflates into
exactly the ImageNet network (CPD Table 4; `spl.models.inflation`). A name, not
a keyword: 'slowonly_r34' and its checkpoints stay as they are, and an
overlay that swaps the backbone (tiny.gin) drops the choice with the name.

In every 3D backbone built where no GPU or TPU is present (`fast_layers`
'auto'; 'on' / 'off' force it) the 1x1x1 convolutions (bottleneck, shortcut
and gate convolutions) are computed as matrix products and batch norms on the
4D view of their input (`spl.models.fast_layers`: the same layers, variables
and checkpoints; together ~15% faster R3D-50 CPU training steps, measured on
CPU only).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import tf_keras

from official.vision.modeling.backbones import resnet as mg_resnet
from official.vision.modeling.backbones import resnet_3d as mg_resnet_3d
from spl.models import fast_layers as fast_layers_lib
from spl.models import resnet3d_basic
from spl.models import resnet3d_g
from spl.models import tiny3d

BACKBONES = ('r3d50_g', 'r3d50_mg', 'slowonly_r18', 'slowonly_r34',
             'slowonly_r34_mg', 'slowonly_r50', 'r2d50', 'tiny3d')

# Table 8: t = 3 in every res2 block, then 3 on odd and 1 on even blocks.
R3D50_G_TEMPORAL_KERNELS = ((3, 3, 3), (3, 1, 3, 1), (3, 1, 3, 1, 3, 1),
                            (3, 1, 3))
# Model Garden's Kinetics ResNet3D50 block specs (res5 differs).
R3D50_MG_TEMPORAL_KERNELS = ((3, 3, 3), (3, 1, 3, 1), (3, 1, 3, 1, 3, 1),
                             (1, 3, 1))
SLOWONLY_R50_TEMPORAL_KERNELS = ((1, 1, 1), (1, 1, 1, 1), (3, 3, 3, 3, 3, 3),
                                 (3, 3, 3))

_NORM_KWARGS = ('norm_momentum', 'norm_epsilon')
# Extra keyword arguments each backbone accepts.
_BACKBONE_KWARGS = {
    # `use_self_gating=False` gives the plain network (inflation tests).
    'r3d50_g': _NORM_KWARGS + ('use_self_gating',),
    'r3d50_mg': _NORM_KWARGS + (
        'use_self_gating', 'stem_conv_temporal_kernel_size',
        'stem_conv_temporal_stride', 'stem_pool_temporal_stride'),
    'slowonly_r18': _NORM_KWARGS,
    'slowonly_r34': _NORM_KWARGS,
    'slowonly_r34_mg': _NORM_KWARGS,
    'slowonly_r50': _NORM_KWARGS,
    'r2d50': _NORM_KWARGS,
    'tiny3d': _NORM_KWARGS + ('filters',),
}

# Basic-block backbones: (depth, projection shortcut in res2's first block).
_SLOWONLY_BASIC = {
    'slowonly_r18': (18, False),
    'slowonly_r34': (34, False),
    'slowonly_r34_mg': (34, True),
}


def _check_input_shape(name: str,
                       input_shape: Any) -> Tuple[Optional[int], ...]:
  rank = 3 if name == 'r2d50' else 4
  what = '(H, W, 3)' if rank == 3 else '(T, H, W, 3)'
  try:
    shape = tuple(input_shape)
  except TypeError:
    raise ValueError(f'`input_shape` of {name!r} must be {what}, got '
                     f'{input_shape!r}') from None
  if len(shape) != rank or any(
      d is not None and (not isinstance(d, int) or d <= 0) for d in shape
  ) or shape[-1] is None:
    raise ValueError(
        f'`input_shape` of {name!r} must be {what} with positive ints (None '
        f'allowed except for channels), got {input_shape!r}')
  return shape


def _pooled(name: str, net: tf_keras.Model, input_shape, endpoint: str,
            pool) -> tf_keras.Model:
  """Wraps a Model Garden backbone (dict of endpoints) into pooled features."""
  inputs = tf_keras.Input(shape=input_shape, name='video')
  x = net(inputs)[endpoint]
  outputs = pool(dtype='float32', name='global_pool')(x)
  return tf_keras.Model(inputs, outputs, name=name)


def build_backbone(name: str, *, input_shape: Sequence[Optional[int]],
                   fast_layers: str = 'auto', **kwargs) -> tf_keras.Model:
  """Builds a backbone that outputs pooled features.

  Args:
    name: One of `BACKBONES`.
    input_shape: (T, H, W, 3) for 3D backbones, (H, W, 3) for 'r2d50'; T, H, W
      may be None.
    fast_layers: 'auto' (default: the CPU-measured rewrites of
      `spl.models.fast_layers` when no GPU or TPU is present), 'on' or 'off';
      3D backbones only. Variables and checkpoints are the same either way.
    **kwargs: Backbone options: `norm_momentum` (default 0.99) and
      `norm_epsilon` (default 1e-3) for every backbone; 'tiny3d' also takes
      `filters` (default (8, 16)); 'r3d50_g' and 'r3d50_mg' take
      `use_self_gating` (default True; False gives the plain network),
      'r3d50_mg' also Model Garden's stem options
      `stem_conv_temporal_kernel_size` (5), `stem_conv_temporal_stride` (2),
      `stem_pool_temporal_stride` (2); 'r3d50_g' fixes its stem to Table 8.

  Returns:
    A `tf_keras.Model` named `name` mapping inputs [B, *input_shape] to float32
    features [B, D]; its pooling layer is called 'global_pool'.
  """
  if name not in BACKBONES:
    raise ValueError(f'`name` must be one of {BACKBONES}, got {name!r}')
  unknown = sorted(set(kwargs) - set(_BACKBONE_KWARGS[name]))
  if unknown:
    raise ValueError(f'Unknown keyword arguments {unknown} for backbone '
                     f'{name!r}; valid: {sorted(_BACKBONE_KWARGS[name])}')
  shape = _check_input_shape(name, input_shape)
  net = _build(name, shape, kwargs)
  if name != 'r2d50':
    fast_layers_lib.maybe_use_fast_layers(net, fast_layers)
  elif fast_layers not in fast_layers_lib.MODES:
    raise ValueError(f'`fast_layers` must be one of {fast_layers_lib.MODES}, '
                     f'got {fast_layers!r}')
  return net


def _build(name: str, shape: Tuple[Optional[int], ...],
           kwargs) -> tf_keras.Model:
  norm = {k: kwargs[k] for k in _NORM_KWARGS if k in kwargs}

  if name == 'tiny3d':
    return tiny3d.build_tiny3d(shape, **kwargs)
  if name in _SLOWONLY_BASIC:
    model_id, res2_projection = _SLOWONLY_BASIC[name]
    return resnet3d_basic.build_slowonly_basic(
        model_id, shape, name=name, res2_projection=res2_projection, **norm)
  if name == 'r2d50':
    net = mg_resnet.ResNet(
        model_id=50,
        input_specs=tf_keras.layers.InputSpec(shape=(None,) + shape),
        name='resnet2d', **norm)
    return _pooled(name, net, shape, '5',
                   tf_keras.layers.GlobalAveragePooling2D)
  if name == 'r3d50_g':
    # Stem pool temporal stride 1 makes Model Garden's pool 1x3x3 (Table 8).
    net = resnet3d_g.ResNet3DG(
        model_id=50,
        temporal_strides=[1, 1, 1, 1],
        temporal_kernel_sizes=[list(k) for k in R3D50_G_TEMPORAL_KERNELS],
        use_self_gating=[bool(kwargs.get('use_self_gating', True))] * 4,
        input_specs=tf_keras.layers.InputSpec(shape=(None,) + shape),
        stem_conv_temporal_kernel_size=5,
        stem_conv_temporal_stride=1,
        stem_pool_temporal_stride=1,
        name='resnet3d', **norm)
  elif name == 'r3d50_mg':
    self_gating = bool(kwargs.get('use_self_gating', True))
    stem = {k: kwargs[k] for k in kwargs if k.startswith('stem_')}
    net = mg_resnet_3d.ResNet3D(
        model_id=50,
        temporal_strides=[1, 1, 1, 1],
        temporal_kernel_sizes=[list(k) for k in R3D50_MG_TEMPORAL_KERNELS],
        use_self_gating=[self_gating] * 4,
        input_specs=tf_keras.layers.InputSpec(shape=(None,) + shape),
        name='resnet3d', **stem, **norm)
  else:  # slowonly_r50
    net = mg_resnet_3d.ResNet3D(
        model_id=50,
        temporal_strides=[1, 1, 1, 1],
        temporal_kernel_sizes=[list(k) for k in SLOWONLY_R50_TEMPORAL_KERNELS],
        use_self_gating=None,
        input_specs=tf_keras.layers.InputSpec(shape=(None,) + shape),
        stem_conv_temporal_kernel_size=1,
        stem_conv_temporal_stride=1,
        stem_pool_temporal_stride=1,
        name='resnet3d', **norm)
  return _pooled(name, net, shape, '5', tf_keras.layers.GlobalAveragePooling3D)
