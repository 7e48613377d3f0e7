"""Vision Transformer (ViT) in Flax Linen.

Module names equal the keys of the released checkpoints (Linen layout), so `load_pretrained` needs no renaming
for files written by this code or by the AugReg release:
  embedding, cls, Transformer/posembed_input/pos_embedding,
  Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out}, LayerNorm_1,
  MlpBlock_0/{Dense_0, Dense_1}}, Transformer/encoder_norm, pre_logits, head,
and for hybrids conv_root, gn_root, block{i}/unit{j}/... (see resnet.py). With `scan=True` the blocks are one
`Transformer/encoderblock/...` tree whose arrays have a leading layer axis (big_vision's layout); `checkpoint.py`
stacks and unstacks it, so release files load and save unchanged.

Fast paths, all off by default (none was faster on CPU; figures in the README's Fast paths). Every combination
gives the plain path's numbers:
  scan          nn.scan over the blocks: one compiled block instead of `num_layers` copies.
  remat_policy  'none', 'full' (keep only each block's input) or 'dots' (also keep the outputs of matmuls without
                batch dimensions, i.e. the projections and MLP, and recompute attention scores and elementwise ops).
  attention     'plain' (einsum, float32 softmax, the reference), 'xla' or 'cudnn' (jax.nn.dot_product_attention:
                logits and softmax in float32 for bfloat16 inputs; 'cudnn' needs a GPU and bfloat16/float16).
                Attention dropout (> 0, train=True) always takes the plain path: the library call has no dropout.
  fused_qkv     one (hidden, 3, heads, head_dim) matmul for query, key and value; the parameters stay separate.

Attention maps: with `apply(..., mutable='intermediates')` every block sows its softmax weights (float32, by the
plain formula on every fast path; stacked per layer under `scan`) as `.../attention_weights`; otherwise nothing is
sown or computed (see vit_jax/attention_maps.py).
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from vit_jax import sharding
from vit_jax.models import resnet

CLASSIFIERS = ('token', 'gap', 'unpooled', 'token_unpooled')
ATTENTIONS = ('plain', 'xla', 'cudnn')
REMAT_POLICIES = ('none', 'full', 'dots')


def check_fast_paths(attention: str, remat_policy: str, dtype) -> None:
  """Raises ValueError for an unknown switch value, or for cuDNN attention where it cannot run."""
  if remat_policy not in REMAT_POLICIES:
    raise ValueError(f'Unknown remat_policy {remat_policy!r}; valid: {", ".join(REMAT_POLICIES)}.')
  if attention not in ATTENTIONS:
    raise ValueError(f'Unknown attention {attention!r}; valid: {", ".join(ATTENTIONS)}.')
  if attention != 'cudnn':
    return
  if jax.default_backend() != 'gpu':
    raise ValueError(f"attention='cudnn' needs a GPU, but the JAX backend is {jax.default_backend()!r}; "
                     "use attention='xla' or 'plain'.")
  if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"attention='cudnn' needs dtype bfloat16 or float16 (cuDNN flash attention), not "
                     f"{jnp.dtype(dtype).name}; use attention='xla' for float32.")


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


class ProjectionParams(nn.Module):
  """The kernel (in, *features) and bias (*features) that nn.DenseGeneral(features) creates, returned unapplied.

  Same names, shapes, initialisers and RNG use as nn.DenseGeneral, so a fused projection has the parameters (and
  the init) of separate ones.
  """
  features: tuple[int, ...]
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, in_features: int):
    xavier = nn.initializers.xavier_uniform()
    flat_init = lambda rng, shape, dtype: xavier(rng, (shape[0], math.prod(shape[1:])), dtype).reshape(shape)
    kernel = self.param('kernel', flat_init, (in_features,) + self.features, self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, self.features, self.param_dtype)
    return kernel, bias


def fused_projection(x, num_heads: int, head_dim: int, dtype, param_dtype):
  """query, key, value [batch, tokens, heads, head_dim] from one matmul with the three kernels stacked."""
  params = [ProjectionParams((num_heads, head_dim), param_dtype, name=name)(x.shape[-1])
            for name in ('query', 'key', 'value')]
  kernel = jnp.stack([k for k, _ in params], axis=1).astype(dtype)  # (hidden, 3, heads, head_dim)
  bias = jnp.stack([b for _, b in params]).astype(dtype)  # (3, heads, head_dim)
  qkv = jnp.einsum('btd,dkhe->btkhe', x.astype(dtype), kernel) + bias
  return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]


class MultiHeadDotProductAttention(nn.Module):
  """Multi-head self-attention, softmax(q k^T / sqrt(head_dim)) v, with release-layout parameters.

  query/key/value kernels are (hidden, heads, head_dim); the out kernel is (heads, head_dim, hidden).
  `attention` and `fused_qkv` pick how it is computed (see the module doc), not what.
  """
  num_heads: int
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  attention: str = 'plain'
  fused_qkv: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool):
    hidden = x.shape[-1]
    if hidden % self.num_heads:
      raise ValueError(f'hidden_size {hidden} is not divisible by num_heads {self.num_heads}.')
    head_dim = hidden // self.num_heads
    if self.fused_qkv:
      q, k, v = fused_projection(x, self.num_heads, head_dim, self.dtype, self.param_dtype)
    else:
      project = lambda name: nn.DenseGeneral(
          (self.num_heads, head_dim), dtype=self.dtype, param_dtype=self.param_dtype,
          kernel_init=nn.initializers.xavier_uniform(), name=name)(x)
      q, k, v = (project(name) for name in ('query', 'key', 'value'))
    q, k, v = (sharding.constrain(t, 'batch', None, 'model', None) for t in (q, k, v))  # [b, tokens, heads, hd]
    plain = self.attention == 'plain' or (train and self.attention_dropout_rate > 0)
    if plain or self.is_mutable_collection('intermediates'):
      logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(head_dim).astype(q.dtype)
      weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
      # Attention maps (float32, [b, heads, query, key]) for `apply(..., mutable='intermediates')`; every fast path
      # sows these plain-formula weights, and only when asked.
      self.sow('intermediates', 'attention_weights', weights)
    if plain:
      weights = nn.Dropout(self.attention_dropout_rate)(weights.astype(self.dtype), deterministic=not train)
      out = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
    else:
      out = jax.nn.dot_product_attention(q, k, v, implementation=self.attention)
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
  attention: str = 'plain'
  fused_qkv: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool):
    norm = lambda name: nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, param_dtype=self.param_dtype, name=name)
    y = norm('LayerNorm_0')(x)
    y = MultiHeadDotProductAttention(self.num_heads, self.attention_dropout_rate, dtype=self.dtype,
                                     param_dtype=self.param_dtype, attention=self.attention,
                                     fused_qkv=self.fused_qkv, name='MultiHeadDotProductAttention_0')(y, train=train)
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


def remat_policy_fn(name: str):
  """The jax.checkpoint policy of a `remat_policy` name other than 'none' ('full' saves nothing: None)."""
  return {'full': None, 'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[name]


class Encoder(nn.Module):
  """Position embedding, dropout, `num_layers` pre-LN blocks (unrolled or scanned) and the final LayerNorm."""
  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  scan: bool = False
  remat_policy: str = 'none'
  attention: str = 'plain'
  fused_qkv: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = AddPositionEmbs(param_dtype=self.param_dtype, name='posembed_input')(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    block = lambda name: Encoder1DBlock(
        self.mlp_dim, self.num_heads, self.dropout_rate, self.attention_dropout_rate, dtype=self.dtype,
        param_dtype=self.param_dtype, attention=self.attention, fused_qkv=self.fused_qkv, name=name)

    def apply(module, x):  # `train` is closed over: a Python bool, not traced by remat.
      return module(x, train=train)

    if self.remat_policy != 'none':
      apply = nn.remat(apply, policy=remat_policy_fn(self.remat_policy), prevent_cse=not self.scan)
    if self.scan:
      scanned = nn.scan(lambda module, carry, _: (apply(module, carry), None),
                        variable_axes={'params': 0, 'intermediates': 0},  # Sown attention maps: stacked per layer.
                        split_rngs={'params': True, 'dropout': True}, length=self.num_layers)
      x, _ = scanned(block('encoderblock'), x, None)
    else:
      for i in range(self.num_layers):
        x = apply(block(f'encoderblock_{i}'), x)
    return nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, param_dtype=self.param_dtype, name='encoder_norm')(x)


class VisionTransformer(nn.Module):
  """ViT: patch embedding (optionally after a ResNet stem), transformer encoder, pooling, head.

  Call as `model.apply({'params': p}, inputs, train=False)` with NHWC float images in [-1, 1].
  The config arguments (`patches`, `transformer`, `resnet`) may be ConfigDicts or plain dicts (e.g. from JSON).
  `dtype` is the compute dtype, `param_dtype` the parameter dtype; LayerNorm and softmax run in float32.
  `num_classes` 0 or None returns the pre-logits features.
  `scan`, `remat_policy`, `attention` and `fused_qkv` are the fast paths of the module doc; they change speed and
  memory, not results (a scanned model stores its blocks stacked, and draws other dropout masks).
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
  scan: bool = False
  remat_policy: str = 'none'
  attention: str = 'plain'
  fused_qkv: bool = False

  @nn.compact
  def __call__(self, inputs, *, train: bool = False):
    if self.classifier not in CLASSIFIERS:
      raise ValueError(f'Unknown classifier {self.classifier!r}; valid: {", ".join(CLASSIFIERS)}.')
    check_fast_paths(self.attention, self.remat_policy, self.dtype)
    x = inputs.astype(self.dtype)
    if self.resnet is not None:
      x = resnet.resnet_stem(x, tuple(self.resnet['num_layers']), self.resnet['width_factor'], dtype=self.dtype,
                             param_dtype=self.param_dtype)
    patch = tuple(self.patches['size'])
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
    x = Encoder(dtype=self.dtype, param_dtype=self.param_dtype, scan=self.scan, remat_policy=self.remat_policy,
                attention=self.attention, fused_qkv=self.fused_qkv, name='Transformer', **self.transformer)(
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


def _stem_stride(model_config) -> int:
  stem = model_config.get('resnet')
  return 1 if stem is None else resnet.stem_stride(tuple(stem['num_layers']))


def token_pixels(model_config) -> int:
  """Input pixels per token side: the patch size times the ResNet stem's stride (square patches)."""
  return _stem_stride(model_config) * model_config['patches']['size'][0]


def token_grid(model_config, image_size) -> tuple[int, int]:
  """The (rows, cols) patch grid that `model_config` produces for `image_size` (int or (h, w))."""
  h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  stride = _stem_stride(model_config)
  ph, pw = model_config['patches']['size']
  return h // (stride * ph), w // (stride * pw)
