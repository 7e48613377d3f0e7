"""Transformer building blocks with release-layout parameter names: MLP, multi-head attention,
encoder block.

Attention computes softmax(q k^T / sqrt(head_dim)) v in one of three ways (`attention`: 'plain'
einsum with a float32 softmax, or 'xla'/'cudnn' through jax.nn.dot_product_attention) and may fuse
the q/k/v matmuls (`fused_qkv`); see vit.py's module doc. When the 'intermediates' collection is
mutable (`model.apply(..., mutable=['intermediates'])`), every attention layer computes its weights
by the plain formula and sows them as `attention_weights` [batch, heads, queries, keys] (float32),
whichever fast path is set: the maps for visualisation come from the model itself.
"""

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax import sharding

# (the values config takes)
from vit_jax.configs.choices import ATTENTIONS, REMAT_POLICIES  # noqa: F401
from vit_jax.models.dropout import Dropout


def remat_policy_fn(name: str):
  """The jax.checkpoint policy of a `remat_policy` name other than 'none' ('full' saves nothing:
  None)."""
  return {'full': None, 'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[name]


def check_fast_paths(attention: str, remat_policy: str, dtype) -> None:
  """Raises ValueError for an unknown switch value, or for cuDNN attention where it cannot run."""
  if remat_policy not in REMAT_POLICIES:
    raise ValueError(f'Unknown remat_policy {remat_policy!r}; valid: {", ".join(REMAT_POLICIES)}.')
  if attention not in ATTENTIONS:
    raise ValueError(f'Unknown attention {attention!r}; valid: {", ".join(ATTENTIONS)}.')
  if attention != 'cudnn':
    return
  if jax.default_backend() != 'gpu':
    raise ValueError(
      "attention='cudnn' needs a GPU, but the JAX backend is "
      f"{jax.default_backend()!r}; use attention='xla' or 'plain'."
    )
  if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
    raise ValueError(
      "attention='cudnn' needs dtype bfloat16 or float16 (cuDNN flash attention), not "
      f"{jnp.dtype(dtype).name}; use attention='xla' for float32."
    )


class MlpBlock(nn.Module):
  """Dense -> GELU (tanh approximation) -> dropout -> Dense -> dropout, over the last axis.

  The initialisers default to ViT's (Xavier-uniform kernels, normal(1e-6) biases); MLP-Mixer passes
  Flax's defaults (LeCun-normal, zeros), as vision_transformer's models_mixer.py has them.
  """

  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.xavier_uniform()
  bias_init: Callable = nn.initializers.normal(stddev=1e-6)

  @nn.compact
  def __call__(self, x, *, train: bool):
    dense = lambda features, name: nn.Dense(
      features,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=self.kernel_init,
      bias_init=self.bias_init,
      name=name,
    )
    y = nn.gelu(
      sharding.constrain(dense(self.mlp_dim, 'Dense_0')(x), 'batch', None, 'model'),
      approximate=True,
    )
    y = Dropout(self.dropout_rate)(y, deterministic=not train)
    y = dense(x.shape[-1], 'Dense_1')(y)
    return Dropout(self.dropout_rate)(y, deterministic=not train)


class ProjectionParams(nn.Module):
  """The kernel (in, *features) and bias (*features) that nn.DenseGeneral(features) creates,
  returned unapplied.

  Same names, shapes, initialisers and RNG use as nn.DenseGeneral, so a fused projection has the
  parameters (and the init) of separate ones.
  """

  features: tuple[int, ...]
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, in_features: int):
    xavier = nn.initializers.xavier_uniform()
    flat_init = lambda rng, shape, dtype: xavier(
      rng, (shape[0], math.prod(shape[1:])), dtype
    ).reshape(shape)
    kernel = self.param('kernel', flat_init, (in_features,) + self.features, self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, self.features, self.param_dtype)
    return kernel, bias


def fused_projection(x, num_heads: int, head_dim: int, dtype, param_dtype):
  """query, key, value [batch, tokens, heads, head_dim] from one matmul with the three kernels
  stacked."""
  params = [
    ProjectionParams((num_heads, head_dim), param_dtype, name=name)(x.shape[-1])
    for name in ('query', 'key', 'value')
  ]
  kernel = jnp.stack([k for k, _ in params], axis=1).astype(dtype)  # (hidden, 3, heads, head_dim)
  bias = jnp.stack([b for _, b in params]).astype(dtype)  # (3, heads, head_dim)
  qkv = jnp.einsum('btd,dkhe->btkhe', x.astype(dtype), kernel) + bias
  return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


class MultiHeadDotProductAttention(nn.Module):
  """Multi-head self-attention, softmax(q k^T / sqrt(head_dim)) v, with release-layout parameters.

  query/key/value kernels are (hidden, heads, head_dim); the out kernel is (heads, head_dim,
  hidden). `attention` and `fused_qkv` pick how it is computed (see the module doc), not what.
  """

  num_heads: int
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention: str = 'plain'
  fused_qkv: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool, inputs_kv=None):
    hidden = x.shape[-1]
    if hidden % self.num_heads:
      raise ValueError(f'hidden_size {hidden} is not divisible by num_heads {self.num_heads}.')
    head_dim = hidden // self.num_heads
    if self.fused_qkv and inputs_kv is None:
      q, k, v = fused_projection(x, self.num_heads, head_dim, self.dtype, self.param_dtype)
    else:
      project = lambda name, y: nn.DenseGeneral(
        (self.num_heads, head_dim),
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.initializers.xavier_uniform(),
        name=name,
      )(y)
      kv = x if inputs_kv is None else inputs_kv
      q = project('query', x)
      k = project('key', kv)
      v = project('value', kv)
    # [b, tokens, heads, hd]
    q, k, v = (sharding.constrain(t, 'batch', None, 'model', None) for t in (q, k, v))
    # Attention maps: always by the plain formula.
    capture = self.is_mutable_collection('intermediates')
    if self.attention == 'plain' or capture or (train and self.attention_dropout_rate > 0):
      logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(head_dim).astype(q.dtype)
      weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
      # [b, heads, q, k], float32; a no-op unless captured.
      self.sow('intermediates', 'attention_weights', weights)
      weights = Dropout(self.attention_dropout_rate)(
        weights.astype(self.dtype), deterministic=not train
      )
      out = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
    else:
      out = jax.nn.dot_product_attention(q, k, v, implementation=self.attention)
    return nn.DenseGeneral(
      hidden,
      axis=(-2, -1),
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.initializers.xavier_uniform(),
      name='out',
    )(out)


class DropPath(nn.Module):
  """Stochastic depth: drops a residual branch for whole examples with probability `rate` (a float
  or a traced scalar), scaling the kept ones by 1 / (1 - rate); the identity at evaluation or when
  `enabled` is False."""

  @nn.compact
  def __call__(self, y, rate, *, train: bool, enabled: bool):
    if not (train and enabled):
      return y
    keep = 1.0 - jnp.asarray(rate, jnp.float32)
    mask = jax.random.bernoulli(self.make_rng('dropout'), keep, (y.shape[0],) + (1,) * (y.ndim - 1))
    return jnp.where(mask, y / keep.astype(y.dtype), jnp.zeros_like(y))


class Encoder1DBlock(nn.Module):
  """Pre-LayerNorm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)); each branch under
  stochastic depth (`drop_path` is this block's rate; `drop_path_enabled` says whether any block has
  one)."""

  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention: str = 'plain'
  fused_qkv: bool = False
  drop_path_enabled: bool = False

  @nn.compact
  def __call__(self, x, drop_path=0.0, *, train: bool):
    norm = lambda name: nn.LayerNorm(
      epsilon=1e-6, dtype=jnp.float32, param_dtype=self.param_dtype, name=name
    )
    branch = lambda y: DropPath()(y, drop_path, train=train, enabled=self.drop_path_enabled)
    y = norm('LayerNorm_0')(x)
    y = MultiHeadDotProductAttention(
      self.num_heads,
      self.attention_dropout_rate,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      attention=self.attention,
      fused_qkv=self.fused_qkv,
      name='MultiHeadDotProductAttention_0',
    )(y, train=train)
    x = x + branch(Dropout(self.dropout_rate)(y, deterministic=not train))
    y = norm('LayerNorm_1')(x)
    y = MlpBlock(
      self.mlp_dim,
      self.dropout_rate,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='MlpBlock_0',
    )(y, train=train)
    return sharding.constrain(x + branch(y), 'batch', None, None)
