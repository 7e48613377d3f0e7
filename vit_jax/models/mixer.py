"""MLP-Mixer (Tolstikhin et al. 2021, arXiv:2105.01601) in Flax Linen: vision_transformer's
models_mixer.py.

It computes what google-research/vision_transformer's `MlpMixer` computes, with the same field names
and module names, which are the keys of the released checkpoints (gs://mixer_models/...):
  stem,
  MixerBlock_{i}/{LayerNorm_0, token_mixing/{Dense_0, Dense_1}, LayerNorm_1,
                  channel_mixing/{Dense_0, Dense_1}},
  pre_head_layer_norm, head.
The model: a patch-embedding convolution ('stem'), `num_blocks` blocks of x + TokenMLP(LN(x) over
tokens), then x + ChannelMLP(LN(x)) (each MLP Dense -> GELU (tanh approximation) -> Dense), a
LayerNorm, the mean over tokens and a zero-initialised linear head. No class token, no position
embeddings and no dropout: `train` changes nothing. Initialisers are Flax's defaults as in the
reference (LeCun-normal kernels, zero biases; zero head).

The token-mixing MLP acts along the token axis, so its first kernel is (tokens, tokens_mlp_dim): a
Mixer's parameters fix its input resolution, tokens = (H / patch) x (W / patch). Images must be a
multiple of the patch size (the reference's 'SAME'-padded stem would pad a remainder; here it is an
error, as for ViT).

`remat_policy` ('none', 'full' or 'dots', as for VisionTransformer) wraps each MixerBlock in
nn.remat: 'full' keeps only each block's input for the backward pass, 'dots' the outputs of its four
Dense matmuls too. Same parameters, logits and gradients. There is no scanned variant: a stacked
layout would not be the release files' per-block one.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vit_jax import sharding
from vit_jax.models.blocks import MlpBlock, check_fast_paths, remat_policy_fn


class MixerBlock(nn.Module):
  """x + token_mixing(LN(x) transposed to [batch, channels, tokens]), then x +
  channel_mixing(LN(x)).

  LayerNorm runs in float32; the MLPs and the residual stream in `dtype`.
  """

  tokens_mlp_dim: int
  channels_mlp_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    norm = lambda name: nn.LayerNorm(
      epsilon=1e-6, dtype=jnp.float32, param_dtype=self.param_dtype, name=name
    )
    mlp = lambda mlp_dim, name: MlpBlock(
      mlp_dim,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.initializers.lecun_normal(),
      bias_init=nn.initializers.zeros,
      name=name,
    )
    y = jnp.swapaxes(norm('LayerNorm_0')(x), 1, 2)  # [batch, channels, tokens]
    y = mlp(self.tokens_mlp_dim, 'token_mixing')(y, train=train)
    x = x + jnp.swapaxes(y, 1, 2)
    y = mlp(self.channels_mlp_dim, 'channel_mixing')(norm('LayerNorm_1')(x), train=train)
    return sharding.constrain(x + y, 'batch', None, None)


class MlpMixer(nn.Module):
  """MLP-Mixer: stem, `num_blocks` MixerBlocks, LayerNorm, mean over tokens, head.

  Call as `model.apply({'params': p}, inputs, train=False)` with NHWC float images in [-1, 1], whose
  height and width are multiples of the patch size (and, for trained parameters, the resolution they
  were trained at: see the module doc). `patches` is a ConfigDict or a plain dict with `size` (h,
  w). `dtype` is the compute dtype, `param_dtype` the parameter dtype; LayerNorm, the token mean and
  the returned logits are float32. `num_classes` 0 or None returns the pooled [batch, hidden_dim]
  features. `remat_policy`: see the module doc.
  """

  patches: Any
  num_classes: int | None
  num_blocks: int
  hidden_dim: int
  tokens_mlp_dim: int
  channels_mlp_dim: int
  model_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat_policy: str = 'none'

  @nn.compact
  def __call__(self, inputs, *, train: bool = False):
    # The ViT's check; a Mixer has no attention.
    check_fast_paths('plain', self.remat_policy, self.dtype)
    patch = tuple(self.patches['size'])
    if inputs.shape[1] % patch[0] or inputs.shape[2] % patch[1]:
      raise ValueError(
        f'Input of spatial size {inputs.shape[1:3]} is not a multiple of the patch size {patch}; '
        f'use an image size that is a multiple of {patch}.'
      )
    x = nn.Conv(
      self.hidden_dim,
      patch,
      strides=patch,
      padding='VALID',
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name='stem',
    )(inputs.astype(self.dtype))
    n, h, w, c = x.shape
    x = sharding.constrain(jnp.reshape(x, (n, h * w, c)), 'batch', None, None)

    def apply(module, x):  # `train` is closed over: a Python bool, not traced by remat.
      return module(x, train=train)

    if self.remat_policy != 'none':
      apply = nn.remat(apply, policy=remat_policy_fn(self.remat_policy))
    for i in range(self.num_blocks):
      block = MixerBlock(
        self.tokens_mlp_dim,
        self.channels_mlp_dim,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        name=f'MixerBlock_{i}',
      )
      x = apply(block, x)
    x = nn.LayerNorm(
      epsilon=1e-6, dtype=jnp.float32, param_dtype=self.param_dtype, name='pre_head_layer_norm'
    )(x)
    x = jnp.mean(x, axis=1)
    if not self.num_classes:
      return x
    head = nn.Dense(
      self.num_classes,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=nn.initializers.zeros,
      name='head',
    )
    return head(x).astype(jnp.float32)
