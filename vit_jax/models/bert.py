"""BERT encoders with the parameter tree of flaxformer's `BertEncoder`, which the released LiT files
hold.

The layout (and what it computes) is flaxformer's, so a LiT release file loads unchanged and
computes what vision_transformer's LiT model computes:
  embedder/embedders_{token_ids,position_ids,segment_ids}/embedding: summed, then
  layer_norm: epsilon 1e-12, then per layer i
  encoder_block/layer_sequence/layers_{i}/
    attention_block/attention_layer/{query,key,value}/{kernel,bias}: kernels
      (hidden, heads x head_dim)
    attention_block/dense_layer/{kernel,bias}: (heads x head_dim, hidden)
    attention_block/layer_norm: post-LN, LN(x + attention(x))
    mlp_block/mlp/dense_layer, mlp_block/dense_layer, mlp_block/layer_norm: post-LN,
      LN(x + W2 gelu(W1 x))
Queries are scaled by 1/sqrt(head_dim); padding keys (token 0) are masked with a large negative
bias; gelu is Flax's default (the tanh approximation), as flaxformer's BERT uses it. Dropout is not
applied (LiT runs the text tower without it, `enable_dropout=False`).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.configs.presets import BERT_SIZES

SIZES = BERT_SIZES  # flaxformer's BertBaseConfig and BertLargeConfig (vit_jax/configs/presets.py).
VOCAB_SIZE = 30522
MAX_LENGTH = 512
NUM_SEGMENTS = 2
EPSILON = 1e-12
_INIT = nn.initializers.truncated_normal(stddev=0.02)


def _dense(features: int, dtype, name: str) -> nn.Dense:
  return nn.Dense(features, kernel_init=_INIT, dtype=dtype, name=name)


def _norm() -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=EPSILON, name='layer_norm')


class _Embedder(nn.Module):
  """The sum of the token, position and segment embeddings."""

  sizes: tuple[int, int, int]  # vocab_size, max_length, num_segments
  hidden_size: int

  @nn.compact
  def __call__(self, token_ids, position_ids, segment_ids):
    ids = zip(
      ('token_ids', 'position_ids', 'segment_ids'),
      (token_ids, position_ids, segment_ids),
      self.sizes,
    )
    return sum(
      nn.Embed(size, self.hidden_size, embedding_init=_INIT, name=f'embedders_{name}')(x)
      for name, x, size in ids
    )


class _Attention(nn.Module):
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    n, length, hidden = x.shape
    head_dim = hidden // self.num_heads
    q, k, v = (
      _dense(hidden, self.dtype, name)(x).reshape(n, length, self.num_heads, head_dim)
      for name in ('query', 'key', 'value')
    )
    logits = jnp.einsum('bqhd,bkhd->bhqk', q / jnp.sqrt(head_dim).astype(q.dtype), k).astype(
      jnp.float32
    )
    weights = jax.nn.softmax(jnp.where(mask[:, None, None, :], logits, -1e10), axis=-1).astype(
      v.dtype
    )
    return jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(n, length, hidden)


class _AttentionBlock(nn.Module):
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    y = _Attention(self.num_heads, self.dtype, name='attention_layer')(x, mask)
    return _norm()(x + _dense(x.shape[-1], self.dtype, 'dense_layer')(y))


class _Mlp(nn.Module):
  intermediate_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return nn.gelu(_dense(self.intermediate_dim, self.dtype, 'dense_layer')(x))


class _MlpBlock(nn.Module):
  intermediate_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = _Mlp(self.intermediate_dim, self.dtype, name='mlp')(x)
    return _norm()(x + _dense(x.shape[-1], self.dtype, 'dense_layer')(y))


class _Layer(nn.Module):
  num_heads: int
  intermediate_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    x = _AttentionBlock(self.num_heads, self.dtype, name='attention_block')(x, mask)
    return _MlpBlock(self.intermediate_dim, self.dtype, name='mlp_block')(x)


class _LayerSequence(nn.Module):
  num_layers: int
  num_heads: int
  intermediate_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    for i in range(self.num_layers):
      x = _Layer(self.num_heads, self.intermediate_dim, self.dtype, name=f'layers_{i}')(x, mask)
    return x


class _EncoderBlock(_LayerSequence):
  """flaxformer's EncoderBlock: a level of the tree that holds the layer sequence."""

  @nn.compact
  def __call__(self, x, mask):
    return _LayerSequence(
      self.num_layers, self.num_heads, self.intermediate_dim, self.dtype, name='layer_sequence'
    )(x, mask)


class BertEncoder(nn.Module):
  """flaxformer's BertEncoder (module doc): `(token_ids, position_ids, segment_ids, input_mask)` ->
  the encoded sequence [batch, length, hidden]."""

  hidden_size: int
  intermediate_dim: int
  num_hidden_layers: int
  num_attention_heads: int
  vocab_size: int = VOCAB_SIZE
  max_length: int = MAX_LENGTH
  num_segments: int = NUM_SEGMENTS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, token_ids, position_ids, segment_ids, input_mask):
    x = _Embedder(
      (self.vocab_size, self.max_length, self.num_segments), self.hidden_size, name='embedder'
    )(token_ids, position_ids, segment_ids)
    x = _norm()(x)
    return _EncoderBlock(
      self.num_hidden_layers,
      self.num_attention_heads,
      self.intermediate_dim,
      self.dtype,
      name='encoder_block',
    )(x, input_mask.astype(bool))


class BertModel(nn.Module):
  """vision_transformer's LiT text tower: BERT-Base or -Large (`config`), the [CLS] token's
  encoding, and a linear head to `num_classes` (none when None). Tokens are [CLS] first, then word
  pieces, zero-padded; returns (features, {'transformed', 'pre_logits', 'logits'})."""

  config: str
  num_classes: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    if self.config not in SIZES:
      raise ValueError(f'Unknown BERT config {self.config!r}; valid: {", ".join(SIZES)}.')
    n, length = tokens.shape
    out = {}
    x = out['transformed'] = BertEncoder(**SIZES[self.config], dtype=self.dtype)(
      tokens,
      jnp.tile(jnp.arange(length, dtype=jnp.int32), (n, 1)),
      jnp.zeros((n, length), jnp.int32),
      tokens.astype(bool).astype(jnp.int32),
    )
    x = out['pre_logits'] = x[:, 0]
    if self.num_classes:
      x = out['logits'] = nn.Dense(self.num_classes, name='head')(x)
    return x, out
