"""Vision Transformer (ViT) in Flax Linen.

Module names equal the keys of the released checkpoints (Linen layout), so `load_pretrained` needs
no renaming for files written by this code or by the AugReg release:
  embedding, cls, Transformer/posembed_input/pos_embedding,
  Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out},
                                LayerNorm_1, MlpBlock_0/{Dense_0, Dense_1}},
  Transformer/encoder_norm, pre_logits, head,
and for hybrids conv_root, gn_root, block{i}/unit{j}/... (see resnet.py). With `scan=True` the
blocks are one `Transformer/encoderblock/...` tree whose arrays have a leading layer axis
(big_vision's layout); `npz.py` stacks and unstacks it, so release files load and save unchanged.

Options (model config fields) for pretraining recipes, off by default so release checkpoints load
unchanged:
  posemb          'learn' (a learned (1, tokens, D) table including the class token's row, the
                  release layout) or 'sincos2d' (fixed 2-D sin-cos embeddings as big_vision defines
                  them, added to the patch tokens before the class token, which gets none; no
                  parameter).
  classifier      'token' (class token), 'gap' (mean over tokens), 'map' (multi-head attention
                  pooling, big_vision's MAPHead: a learned probe attends to the tokens, then
                  LayerNorm + MLP with a residual), or 'unpooled' / 'token_unpooled' (all tokens).
                  Optional `representation_size` (pre-logits Dense + tanh); the head kernel is
                  zero-initialised, its bias `head_bias_init`.
  transformer.drop_path_rate
                  stochastic depth: block i of L drops each residual branch per example with rate
                  drop_path_rate * i / (L - 1) (0 for the first block), scaling kept ones by 1 / (1
                  - rate).

Fast paths, all off by default (none was faster on CPU; figures in the README's Fast paths). Every
combination gives the plain path's numbers:
  scan          nn.scan over the blocks: one compiled block instead of `num_layers` copies.
  remat_policy  'none', 'full' (keep only each block's input) or 'dots' (also keep the outputs of
                matmuls without batch dimensions, i.e. the projections and MLP, and recompute
                attention scores and elementwise ops).
  attention     'plain' (einsum, float32 softmax, the reference), 'xla' or 'cudnn'
                (jax.nn.dot_product_attention: logits and softmax in float32 for bfloat16 inputs;
                'cudnn' needs a GPU and bfloat16/float16). Attention dropout (> 0, train=True)
                always takes the plain path: the library call has no dropout.
  fused_qkv     one (hidden, 3, heads, head_dim) matmul for query, key and value; the parameters
                stay separate.
Attention maps: apply with `mutable=['intermediates']` to get every layer's weights
(models/blocks.py), stacked over layers under `scan`.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vit_jax import sharding

# (the values config.model takes)
from vit_jax.configs.choices import CLASSIFIERS, POSEMBS  # noqa: F401
from vit_jax.configs.presets import has_class_token
from vit_jax.models import resnet
from vit_jax.models.blocks import (
  ATTENTIONS,  # noqa: F401  (re-exported: the values config.model takes)
  REMAT_POLICIES,  # noqa: F401
  Encoder1DBlock,
  MlpBlock,  # noqa: F401
  MultiHeadDotProductAttention,
  check_fast_paths,
  remat_policy_fn,
)
from vit_jax.models.dropout import Dropout


def posemb_sincos_2d(rows: int, cols: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
  """Fixed 2-D sin-cos position embeddings (1, rows * cols, width), tokens in row-major order.

  Channels are [sin(x w), cos(x w), sin(y w), cos(y w)], each width/4 wide, with x the column, y the
  row and w = 1 / temperature**(arange(width/4) / (width/4 - 1)) (big_vision's and MoCo v3's
  convention).
  """
  if width % 4:
    raise ValueError(f"posemb='sincos2d' needs a hidden size divisible by 4, got {width}.")
  y, x = np.mgrid[:rows, :cols]
  omega = 1.0 / temperature ** (np.arange(width // 4) / max(width // 4 - 1, 1))
  x = x.reshape(-1)[:, None] * omega[None]
  y = y.reshape(-1)[:, None] * omega[None]
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)[None].astype(
    np.float32
  )


class AddPositionEmbs(nn.Module):
  """Adds a learned position embedding of shape (1, tokens, hidden), initialised from
  normal(0.02)."""

  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    posemb = self.param(
      'pos_embedding', nn.initializers.normal(stddev=0.02), (1,) + x.shape[1:], self.param_dtype
    )
    return x + posemb.astype(x.dtype)


def drop_path_rates(rate: float, num_layers: int) -> np.ndarray:
  """Stochastic-depth rate of each block: rising linearly from 0 (the first block) to `rate` (the
  last)."""
  return rate * np.arange(num_layers) / max(num_layers - 1, 1)


class Encoder(nn.Module):
  """Position embedding, dropout, `num_layers` pre-LN blocks (unrolled or scanned) and the final
  LayerNorm."""

  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  drop_path_rate: float = 0.0
  learned_posemb: bool = True
  scan: bool = False
  remat_policy: str = 'none'
  attention: str = 'plain'
  fused_qkv: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.learned_posemb:
      x = AddPositionEmbs(param_dtype=self.param_dtype, name='posembed_input')(x)
    x = Dropout(self.dropout_rate)(x, deterministic=not train)
    if not 0.0 <= self.drop_path_rate < 1.0:
      raise ValueError(f'transformer.drop_path_rate must be in [0, 1), got {self.drop_path_rate}.')
    block = lambda name: Encoder1DBlock(
      self.mlp_dim,
      self.num_heads,
      self.dropout_rate,
      self.attention_dropout_rate,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      attention=self.attention,
      fused_qkv=self.fused_qkv,
      drop_path_enabled=self.drop_path_rate > 0,
      name=name,
    )
    rates = drop_path_rates(self.drop_path_rate, self.num_layers)

    def apply(module, x, rate):  # `train` is closed over: a Python bool, not traced by remat.
      return module(x, rate, train=train)

    if self.remat_policy != 'none':
      apply = nn.remat(apply, policy=remat_policy_fn(self.remat_policy), prevent_cse=not self.scan)
    if self.scan:
      scanned = nn.scan(
        lambda module, carry, rate: (apply(module, carry, rate), None),
        variable_axes={'params': 0, 'intermediates': 0},
        split_rngs={'params': True, 'dropout': True},
        length=self.num_layers,
      )
      x, _ = scanned(block('encoderblock'), x, jnp.asarray(rates, jnp.float32))
    else:
      for i in range(self.num_layers):
        x = apply(block(f'encoderblock_{i}'), x, float(rates[i]))
    return nn.LayerNorm(
      epsilon=1e-6, dtype=jnp.float32, param_dtype=self.param_dtype, name='encoder_norm'
    )(x)


class MAPHead(nn.Module):
  """Multi-head attention pooling (big_vision's MAPHead): a learned probe token attends to all
  tokens (no mask), then x + MLP(LayerNorm(x)); returns [batch, hidden]. Parameters: probe,
  MultiHeadDotProductAttention_0, LayerNorm_0, MlpBlock_0 (big_vision's names)."""

  mlp_dim: int
  num_heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    n, _, d = x.shape
    probe = self.param('probe', nn.initializers.xavier_uniform(), (1, 1, d), self.param_dtype)
    probe = jnp.tile(probe.astype(x.dtype), (n, 1, 1))
    y = MultiHeadDotProductAttention(
      self.num_heads,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='MultiHeadDotProductAttention_0',
    )(probe, train=train, inputs_kv=x)
    z = nn.LayerNorm(
      epsilon=1e-6, dtype=jnp.float32, param_dtype=self.param_dtype, name='LayerNorm_0'
    )(y)
    y = y + MlpBlock(
      self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype, name='MlpBlock_0'
    )(z, train=train)
    return y[:, 0]


class VisionTransformer(nn.Module):
  """ViT: patch embedding (optionally after a ResNet stem), transformer encoder, pooling, head.

  Call as `model.apply({'params': p}, inputs, train=False)` with NHWC float images in [-1, 1]. The
  config arguments (`patches`, `transformer`, `resnet`) may be ConfigDicts or plain dicts (e.g. from
  JSON). `dtype` is the compute dtype, `param_dtype` the parameter dtype; LayerNorm and softmax run
  in float32. `num_classes` 0 or None returns the pre-logits features. `scan`, `remat_policy`,
  `attention` and `fused_qkv` are the fast paths of the module doc; they change speed and memory,
  not results (a scanned model stores its blocks stacked, and draws other dropout masks).
  """

  num_classes: int | None
  patches: Any
  hidden_size: int
  transformer: Any
  classifier: str = 'token'
  posemb: str = 'learn'
  representation_size: int | None = None
  resnet: Any = None
  head_bias_init: float = 0.0
  model_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scan: bool = False
  remat_policy: str = 'none'
  attention: str = 'plain'
  fused_qkv: bool = False
  # An input size that is not a multiple of the patch size: 'error', or 'drop' the last rows and
  # columns of pixels (big_vision's VALID patch convolution: SigLIP So400m/14 at 384 px, 27 x 27).
  patch_remainder: str = 'error'

  @nn.compact
  def __call__(self, inputs, *, train: bool = False):
    if self.classifier not in CLASSIFIERS:
      raise ValueError(f'Unknown classifier {self.classifier!r}; valid: {", ".join(CLASSIFIERS)}.')
    if self.posemb not in POSEMBS:
      raise ValueError(f'Unknown posemb {self.posemb!r}; valid: {", ".join(POSEMBS)}.')
    check_fast_paths(self.attention, self.remat_policy, self.dtype)
    x = inputs.astype(self.dtype)
    if self.resnet is not None:
      x = resnet.resnet_stem(
        x,
        tuple(self.resnet['num_layers']),
        self.resnet['width_factor'],
        dtype=self.dtype,
        param_dtype=self.param_dtype,
      )
    patch = tuple(self.patches['size'])
    if self.patch_remainder == 'drop':  # big_vision's VALID patch conv: the last pixels unused.
      x = x[:, : x.shape[1] - x.shape[1] % patch[0], : x.shape[2] - x.shape[2] % patch[1]]
    if x.shape[1] % patch[0] or x.shape[2] % patch[1]:
      raise ValueError(
        f'Input of spatial size {x.shape[1:3]} (after the stem) is not a multiple of the patch '
        f'size {patch}; use an image size that is a multiple of {patch}.'
      )
    x = nn.Conv(
      self.hidden_size,
      patch,
      strides=patch,
      padding='VALID',
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='embedding',
    )(x)
    n, h, w, c = x.shape
    x = sharding.constrain(jnp.reshape(x, (n, h * w, c)), 'batch', None, None)
    if self.posemb == 'sincos2d':  # Before the class token, which gets none.
      x = x + jnp.asarray(posemb_sincos_2d(h, w, c), x.dtype)
    if has_class_token(self.classifier):
      cls = self.param('cls', nn.initializers.zeros, (1, 1, c), self.param_dtype)
      x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (n, 1, 1)), x], axis=1)
    x = Encoder(
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      scan=self.scan,
      remat_policy=self.remat_policy,
      attention=self.attention,
      fused_qkv=self.fused_qkv,
      learned_posemb=self.posemb == 'learn',
      name='Transformer',
      **self.transformer,
    )(x, train=train)
    if self.classifier == 'token':
      x = x[:, 0]
    elif self.classifier == 'gap':
      x = jnp.mean(x, axis=1)
    elif self.classifier == 'map':
      x = MAPHead(
        self.transformer['mlp_dim'],
        self.transformer['num_heads'],
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name='MAPHead_0',
      )(x, train=train)
    if self.representation_size is not None:
      x = jnp.tanh(
        nn.Dense(
          self.representation_size,
          dtype=self.dtype,
          param_dtype=self.param_dtype,
          name='pre_logits',
        )(x)
      )
    if not self.num_classes:
      return x
    head = nn.Dense(
      self.num_classes,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='head',
      kernel_init=nn.initializers.zeros,
      bias_init=nn.initializers.constant(self.head_bias_init),
    )
    return head(x).astype(jnp.float32)
