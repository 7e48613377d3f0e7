"""Vision Transformer (ViT) in Flax Linen.

Module names equal the keys of the released checkpoints (Linen layout), so `load_pretrained` needs no renaming
for files written by this code or by the AugReg release:
  embedding, cls, Transformer/posembed_input/pos_embedding,
  Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out}, LayerNorm_1,
  MlpBlock_0/{Dense_0, Dense_1}}, Transformer/encoder_norm, pre_logits, head,
and for hybrids conv_root, gn_root, block{i}/unit{j}/... (see resnet.py).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from vit_jax import sharding
from vit_jax.models import resnet

CLASSIFIERS = ('token', 'gap', 'unpooled', 'token_unpooled')


class MlpBlock(nn.Module):
  """Dense -> GELU (tanh approximation) -> dropout -> Dense -> dropout."""
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    dense = lambda features, name: nn.Dense(
        features, dtype=self.dtype, param_dtype=self.param_dtype, kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6), name=name)
    y = nn.gelu(sharding.constrain(dense(self.mlp_dim, 'Dense_0')(x), 'batch', None, 'model'), approximate=True)
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    y = dense(x.shape[-1], 'Dense_1')(y)
    return nn.Dropout(self.dropout_rate)(y, deterministic=not train)


class MultiHeadDotProductAttention(nn.Module):
  """Multi-head self-attention, softmax(q k^T / sqrt(head_dim)) v, with release-layout parameters.

  query/key/value kernels are (hidden, heads, head_dim); the out kernel is (heads, head_dim, hidden).
  """
  num_heads: int
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    hidden = x.shape[-1]
    if hidden % self.num_heads:
      raise ValueError(f'hidden_size {hidden} is not divisible by num_heads {self.num_heads}.')
    head_dim = hidden // self.num_heads
    project = lambda name: nn.DenseGeneral(
        (self.num_heads, head_dim), dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=nn.initializers.xavier_uniform(), name=name)(x)
    q, k, v = (sharding.constrain(project(name), 'batch', None, 'model', None)  # [batch, tokens, heads, head_dim]
               for name in ('query', 'key', 'value'))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(head_dim).astype(q.dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.attention_dropout_rate)(weights, deterministic=not train)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
    return nn.DenseGeneral(hidden, axis=(-2, -1), dtype=self.dtype, param_dtype=self.param_dtype,
                           kernel_init=nn.initializers.xavier_uniform(), name='out')(out)


class Encoder1DBlock(nn.Module):
  """Pre-LayerNorm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, param_dtype=self.param_dtype, name=name)
    y = norm('LayerNorm_0')(x)
    y = MultiHeadDotProductAttention(self.num_heads, self.attention_dropout_rate, dtype=self.dtype,
                                     param_dtype=self.param_dtype, name='MultiHeadDotProductAttention_0')(
                                         y, train=train)
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    y = norm('LayerNorm_1')(x)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, dtype=self.dtype, param_dtype=self.param_dtype,
                 name='MlpBlock_0')(y, train=train)
    return sharding.constrain(x + y, 'batch', None, None)


class AddPositionEmbs(nn.Module):
  """Adds a learned position embedding of shape (1, tokens, hidden), initialised from normal(0.02)."""
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    posemb = self.param('pos_embedding', nn.initializers.normal(stddev=0.02), (1,) + x.shape[1:],
                        self.param_dtype)
    return x + posemb.astype(x.dtype)


class Encoder(nn.Module):
  """Position embedding, dropout, `num_layers` pre-LN blocks and the final LayerNorm."""
  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = AddPositionEmbs(param_dtype=self.param_dtype, name='posembed_input')(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    for i in range(self.num_layers):
      x = Encoder1DBlock(self.mlp_dim, self.num_heads, self.dropout_rate, self.attention_dropout_rate,
                         dtype=self.dtype, param_dtype=self.param_dtype, name=f'encoderblock_{i}')(x, train=train)
    return nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, param_dtype=self.param_dtype, name='encoder_norm')(x)


class VisionTransformer(nn.Module):
  """ViT: patch embedding (optionally after a ResNet stem), transformer encoder, pooling, head.

  Call as `model.apply({'params': p}, images, train=False)` with NHWC float images in [-1, 1].
  `dtype` is the compute dtype, `param_dtype` the parameter dtype; LayerNorm and softmax run in float32.
  `num_classes` 0 or None returns the pre-logits features.
  """
  num_classes: int | None
  patches: Any
  hidden_size: int
  transformer: Any
  classifier: str = 'token'
  representation_size: int | None = None
  resnet: Any = None
  head_bias_init: float = 0.0
  model_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, *, train: bool = False):
    if self.classifier not in CLASSIFIERS:
      raise ValueError(f'Unknown classifier {self.classifier!r}; valid: {", ".join(CLASSIFIERS)}.')
    x = images.astype(self.dtype)
    if self.resnet is not None:
      x = resnet.resnet_stem(x, tuple(self.resnet.num_layers), self.resnet.width_factor, dtype=self.dtype,
                             param_dtype=self.param_dtype)
    patch = tuple(self.patches.size)
    if x.shape[1] % patch[0] or x.shape[2] % patch[1]:
      raise ValueError(f'Input of spatial size {x.shape[1:3]} (after the stem) is not a multiple of the patch size '
                       f'{patch}; use an image size that is a multiple of {patch}.')
    x = nn.Conv(self.hidden_size, patch, strides=patch, padding='VALID', dtype=self.dtype,
                param_dtype=self.param_dtype, name='embedding')(x)
    n, h, w, c = x.shape
    x = sharding.constrain(jnp.reshape(x, (n, h * w, c)), 'batch', None, None)
    if self.classifier in ('token', 'token_unpooled'):
      cls = self.param('cls', nn.initializers.zeros, (1, 1, c), self.param_dtype)
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (n, 1, 1)), x], axis=1)
    x = Encoder(dtype=self.dtype, param_dtype=self.param_dtype, name='Transformer', **self.transformer)(
        x, train=train)
    if self.classifier == 'token':
      x = x[:, 0]
    elif self.classifier == 'gap':
      x = jnp.mean(x, axis=1)
    if self.representation_size is not None:
      x = jnp.tanh(nn.Dense(self.representation_size, dtype=self.dtype, param_dtype=self.param_dtype,
                            name='pre_logits')(x))
    if not self.num_classes:
      return x
    head = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name='head',
                    kernel_init=nn.initializers.zeros, bias_init=nn.initializers.constant(self.head_bias_init))
    return head(x).astype(jnp.float32)


# Presets: (hidden_size, num_layers, mlp_dim, num_heads, dropout_rate) per width name.
# 'g' (ViT-g/14 of 'Scaling Vision Transformers') and '22B' (ViT-22B's sizes, built from the standard pre-LN block
# above) are for memory planning and pretraining only: no released .npz exists for them here.
_WIDTHS = {
    'Ti': (192, 12, 768, 3, 0.0),
    'S': (384, 12, 1536, 6, 0.0),
    'B': (768, 12, 3072, 12, 0.1),
    'L': (1024, 24, 4096, 16, 0.1),
    'H': (1280, 32, 5120, 16, 0.1),
    'g': (1408, 40, 6144, 16, 0.0),
    '22B': (6144, 48, 24576, 48, 0.0),
}
# name -> (width, patch size, ResNet stage sizes or None for a pure ViT).
_PRESETS = {
    'ViT-Ti_16': ('Ti', 16, None),
    'ViT-S_16': ('S', 16, None),
    'ViT-S_32': ('S', 32, None),
    'ViT-B_8': ('B', 8, None),
    'ViT-B_16': ('B', 16, None),
    'ViT-B_32': ('B', 32, None),
    'ViT-L_16': ('L', 16, None),
    'ViT-L_32': ('L', 32, None),
    'ViT-H_14': ('H', 14, None),
    'ViT-g_14': ('g', 14, None),
    'ViT-22B_14': ('22B', 14, None),
    'R50+ViT-B_16': ('B', 1, (3, 4, 9)),
    'R26+ViT-S_32': ('S', 1, (2, 2, 2, 2)),
    'R26+ViT-B_32': ('B', 1, (2, 2, 2, 2)),
    'R50+ViT-L_32': ('L', 1, (3, 4, 6, 3)),
    'R+ViT-Ti_16': ('Ti', 8, ()),
}
MODEL_NAMES = tuple(_PRESETS)


def get_model_config(name: str) -> ml_collections.ConfigDict:
  """The model ConfigDict of a preset, e.g. 'ViT-B_16' or 'R50+ViT-B_16'; fields are VisionTransformer's args."""
  if name not in _PRESETS:
    raise ValueError(f'Unknown model {name!r}; valid names: {", ".join(MODEL_NAMES)}.')
  width, patch, resnet_layers = _PRESETS[name]
  hidden, layers, mlp, heads, dropout = _WIDTHS[width]
  config = ml_collections.ConfigDict()
  config.model_name = name
  config.patches = ml_collections.ConfigDict({'size': (patch, patch)})
  config.hidden_size = hidden
  config.transformer = ml_collections.ConfigDict({
      'num_layers': layers, 'mlp_dim': mlp, 'num_heads': heads, 'dropout_rate': dropout,
      'attention_dropout_rate': 0.0})
  config.classifier = 'token'
  config.representation_size = None
  config.head_bias_init = 0.0  # E.g. -10 with the sigmoid loss (ImageNet-21k pretraining).
  config.resnet = None
  if resnet_layers is not None:
    config.resnet = ml_collections.ConfigDict({'num_layers': resnet_layers, 'width_factor': 1})
  return config


def token_pixels(model_config) -> int:
  """Input pixels per token side: the patch size times the ResNet stem's stride (square patches)."""
  stride = 1
  if model_config.get('resnet') is not None:
    stride = resnet.stem_stride(tuple(model_config.resnet.num_layers))
  return stride * model_config.patches.size[0]


def token_grid(model_config, image_size) -> tuple[int, int]:
  """The (rows, cols) patch grid that `model_config` produces for `image_size` (int or (h, w))."""
  h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  stride = token_pixels(model_config) // model_config.patches.size[0]
  ph, pw = model_config.patches.size
  return h // (stride * ph), w // (stride * pw)
