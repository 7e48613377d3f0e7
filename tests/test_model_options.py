"""Model options for pretraining recipes: sincos2d position embeddings, map pooling, stochastic
depth; big_vision files with them load with identical logits; every fast path gives the same numbers
with them."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from vit_jax import checkpoint, models, utils
from vit_jax.models import blocks, flops, vit

X = np.asarray(jax.random.uniform(jax.random.key(1), (4, 16, 16, 3), minval=-1, maxval=1))


def _config(classifier='token', posemb='learn', drop_path=0.0, **kw):
  config = tiny.vit_config(classifier, **kw)
  config.posemb = posemb
  config.transformer.drop_path_rate = drop_path
  return config


def _random_params(model, seed=0):
  params = jax.jit(model.init)(jax.random.key(seed), X[:1])['params']
  keys = iter(jax.random.split(jax.random.key(seed + 1), len(jax.tree.leaves(params))))
  return jax.tree.map(
    lambda x: np.asarray(0.3 * jax.random.normal(next(keys), x.shape), np.float32), params
  )


def test_sincos2d_equals_the_closed_form():
  rows, cols, width = 3, 5, 16
  got = vit.posemb_sincos_2d(rows, cols, width)
  assert got.shape == (1, rows * cols, width)
  quarter = width // 4
  for token in range(rows * cols):
    y, x = divmod(token, cols)  # Row-major tokens.
    for j in range(quarter):
      w = 1.0 / 10000 ** (j / (quarter - 1))
      expected = [math.sin(x * w), math.cos(x * w), math.sin(y * w), math.cos(y * w)]
      np.testing.assert_allclose(got[0, token, j::quarter], expected, atol=1e-6)
  with pytest.raises(ValueError, match='divisible by 4'):
    vit.posemb_sincos_2d(2, 2, 30)


def test_sincos2d_adds_no_parameter_and_is_added_before_the_class_token():
  model = models.VisionTransformer(num_classes=3, **_config(posemb='sincos2d'))
  params = model.init(jax.random.key(0), X[:1])['params']
  assert 'posembed_input' not in params['Transformer']
  learned = models.VisionTransformer(num_classes=3, **_config())
  # The same network with a learned table holding [0 for the class token, sincos for the patches] is
  # identical.
  p = _random_params(learned)
  table = np.concatenate([np.zeros((1, 1, 32)), vit.posemb_sincos_2d(4, 4, 32)], axis=1)
  p['Transformer']['posembed_input']['pos_embedding'] = table.astype(np.float32)
  no_table = {
    **p,
    'Transformer': {k: v for k, v in p['Transformer'].items() if k != 'posembed_input'},
  }
  np.testing.assert_allclose(
    model.apply({'params': no_table}, X), learned.apply({'params': p}, X), atol=1e-5
  )


@pytest.mark.parametrize(
  'classifier,shape',
  [
    ('token', (4, 3)),
    ('gap', (4, 3)),
    ('map', (4, 3)),
    ('unpooled', (4, 16, 3)),
    ('token_unpooled', (4, 17, 3)),
  ],
)
def test_pooling_shapes(classifier, shape):
  model = models.VisionTransformer(num_classes=3, **_config(classifier, representation_size=8))
  params = model.init(jax.random.key(0), X[:1])['params']
  assert model.apply({'params': params}, X).shape == shape
  if classifier == 'map':
    head = params['MAPHead_0']
    assert sorted(head) == ['LayerNorm_0', 'MlpBlock_0', 'MultiHeadDotProductAttention_0', 'probe']
    assert head['probe'].shape == (1, 1, 32)
    assert head['MultiHeadDotProductAttention_0']['key']['kernel'].shape == (32, 2, 16)
  np.testing.assert_array_equal(params['head']['kernel'], 0.0)  # Zero-initialised head.


def test_map_head_is_attention_pooling_by_the_formula():
  model = models.VisionTransformer(num_classes=0, **_config('map'))
  params = _random_params(model)
  tokens = np.asarray(
    models.VisionTransformer(num_classes=0, **_config('unpooled')).apply({'params': params}, X)
  )
  h = params['MAPHead_0']
  att = h['MultiHeadDotProductAttention_0']
  q = np.einsum('d,dhe->he', h['probe'][0, 0], att['query']['kernel']) + att['query']['bias']
  k = np.einsum('btd,dhe->bthe', tokens, att['key']['kernel']) + att['key']['bias']
  v = np.einsum('btd,dhe->bthe', tokens, att['value']['kernel']) + att['value']['bias']
  logits = np.einsum('he,bthe->bht', q, k) / np.sqrt(16)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  y = np.einsum('bht,bthe,hed->bd', w, v, att['out']['kernel']) + att['out']['bias']
  ln = h['LayerNorm_0']
  z = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + 1e-6) * ln['scale'] + ln[
    'bias'
  ]
  mlp = h['MlpBlock_0']
  hidden = z @ mlp['Dense_0']['kernel'] + mlp['Dense_0']['bias']
  hidden = np.asarray(jax.nn.gelu(hidden, approximate=True))
  expected = y + hidden @ mlp['Dense_1']['kernel'] + mlp['Dense_1']['bias']
  np.testing.assert_allclose(model.apply({'params': params}, X), expected, rtol=2e-4, atol=2e-4)


def test_drop_path_rates_rise_linearly_from_zero():
  np.testing.assert_allclose(vit.drop_path_rates(0.3, 4), [0.0, 0.1, 0.2, 0.3])
  np.testing.assert_allclose(vit.drop_path_rates(0.3, 1), [0.0])


def test_drop_path_is_identity_at_eval_and_keeps_the_expectation_at_train():
  y = jnp.ones((20_000, 3, 2))
  layer = blocks.DropPath()
  assert layer.apply({}, y, 0.3, train=False, enabled=True) is y
  out = np.asarray(
    layer.apply({}, y, 0.3, train=True, enabled=True, rngs={'dropout': jax.random.key(0)})
  )
  per_example = out.reshape(len(out), -1)
  # Dropped or scaled up.
  np.testing.assert_allclose(np.unique(per_example), [0.0, 1 / 0.7], rtol=1e-6)
  assert (per_example == per_example[:, :1]).all()
  assert abs(out.mean() - 1.0) < 0.02 and abs((per_example[:, 0] == 0).mean() - 0.3) < 0.02
  model = models.VisionTransformer(num_classes=3, **_config(drop_path=0.5))
  params = _random_params(model)
  plain = models.VisionTransformer(num_classes=3, **_config())
  np.testing.assert_array_equal(
    model.apply({'params': params}, X), plain.apply({'params': params}, X)
  )
  trained = model.apply({'params': params}, X, train=True, rngs={'dropout': jax.random.key(3)})
  assert not np.allclose(trained, plain.apply({'params': params}, X))
  with pytest.raises(ValueError, match=r'drop_path_rate must be in \[0, 1\), got 1.0'):
    models.VisionTransformer(num_classes=3, **_config(drop_path=1.0)).init(jax.random.key(0), X[:1])


@pytest.mark.parametrize(
  'switches',
  [
    dict(scan=True),
    dict(remat_policy='full'),
    dict(fused_qkv=True),
    dict(attention='xla'),
    dict(scan=True, remat_policy='dots', fused_qkv=True),
  ],
)
def test_fast_paths_give_the_same_numbers_with_the_new_options(switches):
  config = _config('map', posemb='sincos2d', drop_path=0.2)
  plain = models.VisionTransformer(num_classes=3, **config)
  fast = models.VisionTransformer(num_classes=3, **config, **switches)
  params = _random_params(plain)
  fast_params = params
  if switches.get('scan'):
    fast_params = utils.unflatten_dict(checkpoint.stack_blocks(utils.flatten_dict(params)))
  np.testing.assert_allclose(
    fast.apply({'params': fast_params}, X), plain.apply({'params': params}, X), rtol=1e-5, atol=1e-5
  )
  loss = lambda m, p: jnp.mean(
    m.apply({'params': p}, X, train=True, rngs={'dropout': jax.random.key(0)}) ** 2
  )
  # Stochastic depth under every fast path trains.
  grads = jax.grad(lambda p: loss(fast, p))(fast_params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
  'posemb,classifier', [('sincos2d', 'map'), ('learn', 'map'), ('sincos2d', 'token')]
)
def test_big_vision_files_with_the_new_options_give_identical_logits(tmp_path, posemb, classifier):
  model = models.VisionTransformer(num_classes=5, **_config(classifier, posemb=posemb))
  params = _random_params(model)
  flat = utils.flatten_dict(params)
  # big_vision stores the table at the top, for the patches only (no class token here).
  if posemb == 'learn':
    flat['pos_embedding'] = flat.pop('Transformer/posembed_input/pos_embedding')
  flat = checkpoint.stack_blocks(flat)  # As big_vision saves a scanned model.
  np.savez(tmp_path / 'bv.npz', **flat)
  loaded = checkpoint.load(str(tmp_path / 'bv.npz'))
  np.testing.assert_array_equal(
    model.apply({'params': loaded}, X), model.apply({'params': params}, X)
  )
  init = model.init(jax.random.key(9), X[:1])['params']
  fine = checkpoint.load_pretrained(
    pretrained_path=str(tmp_path / 'bv.npz'),
    init_params=init,
    model_config=_config(classifier, posemb=posemb),
  )
  fine = {**fine, 'head': params['head']}
  np.testing.assert_array_equal(
    model.apply({'params': fine}, X), model.apply({'params': params}, X)
  )


def test_flops_count_the_map_head():
  token, mapped = _config('token'), _config('map')
  extra = flops.forward_flops(mapped, 16, 3) - flops.forward_flops(token, 16, 3)
  d, m, n = 32, 64, 16
  # One fewer token in every block (no class token), plus the head: q, out (1 token), k, v (16),
  # scores and weighted sum (1 x 16), MLP (1 token).
  without_cls = 2 * flops.encoder_block_flops(17, d, m) - 2 * flops.encoder_block_flops(16, d, m)
  head = 2 * 2 * d * d + 2 * 2 * n * d * d + 2 * 2 * d * n + 2 * 2 * d * m
  assert extra == head - without_cls
