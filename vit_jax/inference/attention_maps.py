"""Attention maps of a ViT: the weights every block computes, attention rollout, and per-head maps
over the patches.

The weights come from the model itself: `MultiHeadDotProductAttention` sows its softmax weights
(float32, [batch, heads, query, key]) into the 'intermediates' collection when that collection is
mutable, computed by the plain formula whatever the fast path (`attention='xla'/'cudnn'`,
`fused_qkv`, `scan`, `remat_policy`), so every path gives the same maps. Under `scan` the collection
is stacked per layer like the parameters.

Attention rollout (Abnar & Zuidema, 2020): per layer, the head-mean weights plus the identity (the
residual connection), rows renormalised to sum to 1, multiplied through the layers (last layer on
the left). A map over the patches is the class token's row for models with a class token; for models
without one (`gap`) the mean of all tokens' rows.

An MLP-Mixer has no attention: asking for its maps is a NoAttentionError (a user error), before
anything is computed.
"""

import re

import jax
import numpy as np

from vit_jax import errors, utils
from vit_jax.configs import presets

_WEIGHTS = re.compile(r'Transformer/encoderblock(_(\d+))?/.*attention_weights')


class NoAttentionError(errors.UserError, ValueError):
  """Attention maps of a model without attention (an MLP-Mixer)."""


def check_has_attention(model_config) -> None:
  """Raises NoAttentionError, one line, for an MLP-Mixer's model config (models.is_mixer)."""
  if presets.is_mixer(model_config):
    name = model_config.get('model_name') or 'The model'
    raise NoAttentionError(
      f'{name} is an MLP-Mixer, which has no attention (its blocks '
      'mix tokens and channels with MLPs), so there are no attention '
      'maps to draw; attention maps are for ViT runs and checkpoints.'
    )


def _logits_and_weights(model, params, images):
  logits, state = model.apply({'params': params}, images, train=False, mutable='intermediates')
  return logits, {
    name: value[0]
    for name, value in utils.flatten_dict(state['intermediates']).items()
    if _WEIGHTS.fullmatch(name)
  }  # `sow` keeps a tuple of what was sown.


def make_attention_fn(model):
  """A compiled (params, images) -> (logits, float32 [layers, batch, heads, tokens, tokens]) in
  NumPy: the model's output and every encoder block's attention weights (one compilation per input
  shape: reuse it across batches). NoAttentionError for an MlpMixer."""
  from vit_jax import models  # noqa: PLC0415

  if isinstance(model, models.MlpMixer):
    check_has_attention({'num_blocks': model.num_blocks, 'model_name': model.model_name})
  run = jax.jit(lambda params, images: _logits_and_weights(model, params, images))

  def fn(params, images) -> tuple[np.ndarray, np.ndarray]:
    logits, found = jax.device_get(run(params, images))
    if not found:
      raise ValueError(
        'The model sowed no attention weights (Transformer/encoderblock*/.../attention_weights).'
      )
    layers = {
      int(_WEIGHTS.fullmatch(name).group(2) or -1): np.asarray(w, np.float32)
      for name, w in found.items()
    }
    if list(layers) == [-1]:  # Scanned: one array, stacked over the layers already.
      return np.asarray(logits), layers[-1]
    return np.asarray(logits), np.stack([layers[i] for i in sorted(layers)])

  return fn


def attention_weights(model, params, images) -> np.ndarray:
  """float32 [layers, batch, heads, tokens, tokens] for one batch (see make_attention_fn to reuse
  the compilation)."""
  return make_attention_fn(model)(params, images)[1]


def rollout(weights: np.ndarray) -> np.ndarray:
  """[layers, batch, heads, T, T] -> [batch, T, T]: attention rollout, each row a distribution over
  input tokens."""
  weights = np.asarray(weights, np.float64)
  tokens = weights.shape[-1]
  out = np.broadcast_to(np.eye(tokens), weights.shape[1:2] + (tokens, tokens))
  for layer in weights:
    a = layer.mean(axis=1) + np.eye(tokens)
    a /= a.sum(axis=-1, keepdims=True)
    out = a @ out
  return out


def patch_maps(matrix: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """[..., T, T] attention-like matrices -> [..., rows, cols] maps over the patch grid.

  With one token more than patches (a class token, first), the class token's row over the patches;
  with no extra token, the mean of all rows. Anything else is an error.
  """
  extra = matrix.shape[-1] - grid[0] * grid[1]
  if extra == 1:
    row = matrix[..., 0, 1:]
  elif extra == 0:
    row = matrix.mean(axis=-2)
  else:
    raise ValueError(
      f'{matrix.shape[-1]} tokens for a {grid} patch grid: '
      f'expected {grid[0] * grid[1]} (+1 for a class token).'
    )
  return row.reshape(row.shape[:-1] + tuple(grid))


def maps(weights: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
  """(rollout [batch, rows, cols], last layer per head [batch, heads, rows, cols]) from
  `attention_weights`."""
  return patch_maps(rollout(weights), grid), patch_maps(np.asarray(weights[-1], np.float64), grid)
