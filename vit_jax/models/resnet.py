"""ResNet (v1.5 bottleneck, weight-standardised convs, GroupNorm) used as the stem of hybrid ViTs.

Module names equal the keys of the released hybrid checkpoints: `conv_root`, `gn_root`,
`block{i}/unit{j}/{conv1,conv2,conv3,gn1,gn2,gn3,conv_proj,gn_proj}` (1-based, as released).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp


def weight_standardize(kernel, eps: float = 1e-5):
  """(w - mean) / (std + eps) per output channel (the last axis): the form the released hybrids were
  trained with.

  The epsilon is added to the standard deviation, not to the variance. The two forms agree on
  random-init kernels but not on trained ones (per-channel stds of 0.001-0.1), where `sqrt(var +
  eps)` changes the network.
  """
  axes = tuple(range(kernel.ndim - 1))
  kernel = kernel - jnp.mean(kernel, axis=axes, keepdims=True)
  return kernel / (jnp.std(kernel, axis=axes, keepdims=True) + eps)


class StdConv(nn.Conv):
  """Convolution whose kernel is weight-standardised (`weight_standardize`) before use."""

  def param(self, name, init_fn, *init_args, **init_kwargs):
    value = super().param(name, init_fn, *init_args, **init_kwargs)
    return weight_standardize(value) if name == 'kernel' else value


class BottleneckUnit(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 (4x wider) with a projection shortcut when the shape changes."""

  features: int
  strides: tuple[int, int] = (1, 1)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    conv = lambda f, k, s, name: StdConv(
      f, k, s, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name=name
    )
    norm = lambda name, **kw: nn.GroupNorm(
      dtype=self.dtype, param_dtype=self.param_dtype, name=name, **kw
    )
    out_features = self.features * 4
    residual = x
    if x.shape[-1] != out_features or self.strides != (1, 1):
      residual = conv(out_features, (1, 1), self.strides, 'conv_proj')(residual)
      residual = norm('gn_proj')(residual)
    y = nn.relu(norm('gn1')(conv(self.features, (1, 1), (1, 1), 'conv1')(x)))
    y = nn.relu(norm('gn2')(conv(self.features, (3, 3), self.strides, 'conv2')(y)))
    y = norm('gn3', scale_init=nn.initializers.zeros)(
      conv(out_features, (1, 1), (1, 1), 'conv3')(y)
    )
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`block_size` bottleneck units named unit1..unitN; the first one carries the stride."""

  block_size: int
  features: int
  first_strides: tuple[int, int]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for j in range(self.block_size):
      x = BottleneckUnit(
        self.features,
        self.first_strides if j == 0 else (1, 1),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=f'unit{j + 1}',
      )(x)
    return x


def resnet_stem(
  x,
  num_layers: Sequence[int],
  width_factor: float = 1,
  *,
  dtype: Any = jnp.float32,
  param_dtype: Any = jnp.float32,
):
  """Root (7x7/2 conv, GroupNorm, ReLU, 3x3/2 max-pool) then `len(num_layers)` bottleneck stages.

  Called inside the parent's compact method, so `conv_root`, `gn_root` and `block{i}` sit at the top
  of the parameter tree as in the release files. Stage i has width 64 * width_factor * 2**i; every
  stage but the first halves the resolution. An empty `num_layers` gives the stem-only variant
  (R+ViT-Ti).
  """
  width = int(64 * width_factor)
  x = StdConv(
    width, (7, 7), (2, 2), use_bias=False, dtype=dtype, param_dtype=param_dtype, name='conv_root'
  )(x)
  x = nn.relu(nn.GroupNorm(dtype=dtype, param_dtype=param_dtype, name='gn_root')(x))
  x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='SAME')
  for i, block_size in enumerate(num_layers):
    x = ResNetStage(
      block_size,
      width * 2**i,
      (2, 2) if i > 0 else (1, 1),
      dtype=dtype,
      param_dtype=param_dtype,
      name=f'block{i + 1}',
    )(x)
  return x
