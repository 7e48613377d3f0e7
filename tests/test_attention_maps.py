"""Attention maps: the weights the model sows, rollout, patch maps; the same with every fast
path."""

import jax
import numpy as np
import pytest
import tiny

from vit_jax import checkpoint, models, utils
from vit_jax.inference import attention_maps

TOKENS = 17  # 16 px, 4 px patches: a 4x4 grid and the class token.


def _images(n=2, seed=1):
  return np.random.default_rng(seed).uniform(-1, 1, (n, 16, 16, 3)).astype(np.float32)


def _model(classifier='token', **kw):
  return models.VisionTransformer(num_classes=3, **tiny.vit_config(classifier, layers=3), **kw)


def test_weights_have_a_layer_axis_and_rows_that_are_distributions():
  model = _model(attention='xla')
  params = tiny.params_with_head(model, qk_scale=4.0)
  logits, weights = attention_maps.make_attention_fn(model)(params, _images())
  assert weights.shape == (3, 2, 2, TOKENS, TOKENS) and weights.dtype == np.float32
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
  assert not np.allclose(weights[0], weights[1])  # Per-layer maps, not one layer's repeated.
  # A plain call returns the same logits and no state: nothing is sown (or computed) unless asked
  # for.
  plain_out = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(params, _images())
  assert isinstance(plain_out, jax.Array)
  np.testing.assert_allclose(logits, plain_out, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope='module')
def plain_maps():
  """(params, attention weights) of the plain model: the reference for the fast paths."""
  plain = _model()
  params = tiny.params_with_head(plain, qk_scale=4.0)
  return params, attention_maps.attention_weights(plain, params, _images())


@pytest.mark.parametrize(
  'fast',
  [
    {'scan': True},
    {'fused_qkv': True},
    {'attention': 'xla'},
    {'scan': True, 'fused_qkv': True, 'attention': 'xla', 'remat_policy': 'dots'},
  ],
  ids=lambda kw: ','.join(f'{k}={v}' for k, v in kw.items()),
)
def test_every_fast_path_gives_the_same_maps(fast, plain_maps):
  params, reference = plain_maps
  assert reference.max() > 3.0 / TOKENS  # Peaked: a wrong layer or head order would show.
  if fast.get('scan'):
    params = utils.unflatten_dict(checkpoint.stack_blocks(utils.flatten_dict(params)))
  weights = attention_maps.attention_weights(_model(**fast), params, _images())
  # xla's outputs feed later layers: float32 rounding.
  np.testing.assert_allclose(weights, reference, atol=2e-5)


def test_rollout_adds_the_residual_renormalises_and_multiplies_the_last_layer_on_the_left():
  rng = np.random.default_rng(0)
  weights = rng.uniform(0, 1, (2, 1, 3, 4, 4))
  weights /= weights.sum(-1, keepdims=True)
  layer = [w.mean(axis=1)[0] + np.eye(4) for w in weights]
  layer = [a / a.sum(-1, keepdims=True) for a in layer]
  result = attention_maps.rollout(weights)
  np.testing.assert_allclose(result[0], layer[1] @ layer[0], rtol=1e-12)
  np.testing.assert_allclose(result.sum(-1), 1.0, rtol=1e-12)
  # Uniform attention, one layer: (1/T + I) / 2 per row.
  uniform = attention_maps.rollout(np.full((1, 1, 1, 4, 4), 0.25))
  np.testing.assert_allclose(uniform[0], (np.full((4, 4), 0.25) + np.eye(4)) / 2)


def test_rollout_rows_of_a_model_sum_to_one_and_maps_cover_the_patch_grid(plain_maps):
  _, weights = plain_maps
  np.testing.assert_allclose(attention_maps.rollout(weights).sum(-1), 1.0, atol=1e-6)
  rollout, heads = attention_maps.maps(weights, (4, 4))
  assert rollout.shape == (2, 4, 4) and heads.shape == (2, 2, 4, 4)
  # Class token.
  np.testing.assert_allclose(rollout, attention_maps.rollout(weights)[:, 0, 1:].reshape(2, 4, 4))
  np.testing.assert_allclose(heads, weights[-1][:, :, 0, 1:].reshape(2, 2, 4, 4), rtol=1e-6)


def test_gap_model_maps_are_the_mean_over_tokens():
  model = _model('gap')
  weights = attention_maps.attention_weights(
    model, tiny.params_with_head(model, qk_scale=4.0), _images()
  )
  assert weights.shape == (3, 2, 2, 16, 16)  # No class token.
  rollout, heads = attention_maps.maps(weights, (4, 4))
  np.testing.assert_allclose(rollout, attention_maps.rollout(weights).mean(axis=1).reshape(2, 4, 4))
  np.testing.assert_allclose(heads, weights[-1].mean(axis=2).reshape(2, 2, 4, 4), rtol=1e-6)
  # Still a distribution over the patches.
  np.testing.assert_allclose(rollout.sum((1, 2)), 1.0, atol=1e-6)
  with pytest.raises(ValueError, match='17 tokens for a .* grid'):
    attention_maps.patch_maps(np.zeros((17, 17)), (3, 3))
