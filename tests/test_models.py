"""ViT family: output shapes, preset parameter counts, init and dropout behaviour, hybrid weight
standardisation as vision_transformer's, plain dict configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from vit_jax import models, utils
from vit_jax.models import resnet

# Published parameter counts at 224 px with 1000 classes.
PUBLISHED_COUNTS = {
  'ViT-Ti_16': 5_717_416,
  'ViT-S_16': 22_050_664,
  'ViT-B_16': 86_567_656,
  'ViT-B_32': 88_224_232,
  'ViT-L_16': 304_326_632,
  'ViT-H_14': 632_045_800,
  'R50+ViT-B_16': 98_659_112,
}


def _count(model, size=224):
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
  )
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))


def _analytic_vit_count(cfg, num_classes=1000, size=224):
  """Independent count for a pure ViT: embedding, cls, posemb, blocks, final norm, head."""
  d, m, p = cfg.hidden_size, cfg.transformer.mlp_dim, cfg.patches.size[0]
  has_cls = cfg.classifier in ('token', 'token_unpooled')
  tokens = (size // p) ** 2 + has_cls
  block = 4 * d + 4 * (d * d + d) + (d * m + m) + (m * d + d)
  return (
    (p * p * 3 * d + d)
    + d * has_cls
    + tokens * d
    + cfg.transformer.num_layers * block
    + 2 * d
    + d * num_classes
    + num_classes
  )


@pytest.mark.parametrize('name', sorted(PUBLISHED_COUNTS))
def test_preset_parameter_count_equals_published_figure(name):
  model = models.VisionTransformer(num_classes=1000, **models.get_model_config(name))
  assert _count(model) == PUBLISHED_COUNTS[name]


@pytest.mark.parametrize(
  'name,count',
  [('testing', 21_390), ('testing-unpooled', 21_370), ('ViT-B_16-gap-norep', 86_566_120)],
)
def test_new_preset_parameter_counts(name, count):
  assert _count(models.get_model(name, num_classes=1000)) == count


@pytest.mark.parametrize(
  'name', [n for n in models.MODEL_NAMES if '+' not in n and not n.startswith('Mixer-')]
)
def test_pure_vit_preset_count_equals_analytic_count(name):
  cfg = models.get_model_config(name)
  assert _count(models.VisionTransformer(num_classes=1000, **cfg)) == _analytic_vit_count(cfg)


@pytest.mark.parametrize('name', [n for n in models.MODEL_NAMES if '+' in n])
def test_hybrid_preset_builds_with_eval_shape(name):
  cfg = models.get_model_config(name)
  model = models.VisionTransformer(num_classes=1000, **cfg)
  out = jax.eval_shape(
    lambda: model.apply(
      model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))), jnp.zeros((2, 224, 224, 3))
    )
  )
  assert out.shape == (2, 1000)
  assert models.token_grid(cfg, 224) == (
    (7, 7) if name.endswith('32') else (14, 14) if 'R50+ViT-B' in name else (7, 7)
  )


def test_unknown_model_name_lists_valid_names():
  with pytest.raises(ValueError, match=r"'ViT-X_99'.*ViT-B_16.*R50\+ViT-B_16"):
    models.get_model_config('ViT-X_99')


@pytest.mark.parametrize(
  'classifier,shape',
  [('token', (2, 5)), ('gap', (2, 5)), ('unpooled', (2, 16, 5)), ('token_unpooled', (2, 17, 5))],
)
def test_output_shape_per_classifier(classifier, shape):
  model = models.VisionTransformer(num_classes=5, **tiny.vit_config(classifier))
  x = jnp.zeros((2, 16, 16, 3))
  params = model.init(jax.random.key(0), x)['params']
  assert model.apply({'params': params}, x).shape == shape
  assert ('cls' in params) == classifier.startswith('token')


def test_parameter_names_follow_release_layout():
  model = models.VisionTransformer(num_classes=5, **tiny.vit_config(representation_size=8))
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  block = params['Transformer']['encoderblock_1']
  assert sorted(params) == ['Transformer', 'cls', 'embedding', 'head', 'pre_logits']
  assert sorted(block) == [
    'LayerNorm_0',
    'LayerNorm_1',
    'MlpBlock_0',
    'MultiHeadDotProductAttention_0',
  ]
  attn = block['MultiHeadDotProductAttention_0']
  assert attn['query']['kernel'].shape == (32, 2, 16)
  assert attn['out']['kernel'].shape == (2, 16, 32)
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 17, 32)
  assert sorted(block['MlpBlock_0']) == ['Dense_0', 'Dense_1']


def test_init_zero_head_gives_head_bias_and_zero_cls():
  config = tiny.vit_config()
  config.head_bias_init = -2.5
  model = models.VisionTransformer(num_classes=3, **config)
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)
  params = model.init(jax.random.key(0), x)['params']
  np.testing.assert_array_equal(
    model.apply({'params': params}, x), np.full((2, 3), -2.5, np.float32)
  )
  np.testing.assert_array_equal(params['cls'], np.zeros((1, 1, 32)))
  posemb = np.asarray(params['Transformer']['posembed_input']['pos_embedding'])
  assert 0.01 < posemb.std() < 0.03


def _random_head(params, key):
  head = params['head']
  return {
    **params,
    'head': {'kernel': jax.random.normal(key, head['kernel'].shape), 'bias': head['bias']},
  }


def test_dropout_only_applies_in_training():
  model = models.VisionTransformer(num_classes=4, **tiny.vit_config(dropout=0.5))
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)
  params = _random_head(model.init(jax.random.key(0), x)['params'], jax.random.key(2))
  eval_a = model.apply({'params': params}, x, train=False)
  eval_b = model.apply({'params': params}, x, train=False)
  train_a = model.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.key(3)})
  train_b = model.apply({'params': params}, x, train=True, rngs={'dropout': jax.random.key(4)})
  np.testing.assert_array_equal(eval_a, eval_b)
  assert np.abs(np.asarray(train_a) - np.asarray(train_b)).max() > 1e-3
  assert np.abs(np.asarray(train_a) - np.asarray(eval_a)).max() > 1e-3


@pytest.mark.parametrize('num_layers,tokens', [((1, 1), 16), ((), 64)])
def test_hybrid_builds_release_names(num_layers, tokens):
  model = models.VisionTransformer(num_classes=4, **tiny.hybrid_config(num_layers))
  x = jnp.zeros((1, 32, 32, 3))
  params = model.init(jax.random.key(0), x)['params']
  assert {'conv_root', 'gn_root'} <= set(params)
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, tokens + 1, 32)
  if num_layers:
    unit = params['block2']['unit1']
    assert sorted(unit) == ['conv1', 'conv2', 'conv3', 'conv_proj', 'gn1', 'gn2', 'gn3', 'gn_proj']
    np.testing.assert_array_equal(unit['gn3']['scale'], np.zeros(256))
    assert 'unit1' in params['block1'] and 'conv_proj' in params['block1']['unit1']
  else:
    assert not any(k.startswith('block') for k in params)


def test_weight_standardisation_makes_root_kernel_scale_free():
  model = models.VisionTransformer(num_classes=4, **tiny.hybrid_config(()))
  x = jax.random.uniform(jax.random.key(1), (1, 32, 32, 3), minval=-1, maxval=1)
  params = model.init(jax.random.key(0), x)['params']
  params = _random_head(params, jax.random.key(2))
  scaled = {**params, 'conv_root': {'kernel': params['conv_root']['kernel'] * 7.0 + 0.3}}
  np.testing.assert_allclose(
    model.apply({'params': params}, x), model.apply({'params': scaled}, x), atol=2e-4
  )


# --------------------------------------------------------------------------------------------------
# Weight standardisation as vision_transformer's, on kernels of trained scale.

X = tiny.images(3)


def _reference_standardize(w, eps=1e-5):
  """vision_transformer's models_resnet.weight_standardize, in numpy: (w - mean) / (std + eps) over
  (kh, kw, in)."""
  w = np.asarray(w, np.float64)
  w = w - w.mean(axis=(0, 1, 2))
  return w / (w.std(axis=(0, 1, 2)) + eps)


def _old_standardize(w, eps=1e-5):
  """The form this code used before: divides by sqrt(var + eps)."""
  w = np.asarray(w, np.float64)
  w = w - w.mean(axis=(0, 1, 2))
  return w / np.sqrt(w.var(axis=(0, 1, 2)) + eps)


def _trained_scale_hybrid():
  """A hybrid with every conv kernel rescaled per output channel to stds of 0.001-0.1 (trained
  kernels' range)."""
  cfg = tiny.hybrid_config()
  model = models.VisionTransformer(num_classes=5, **cfg)
  params = jax.jit(model.init)(jax.random.key(0), X[:1])['params']
  rng = np.random.default_rng(0)

  def rescale(path, x):
    x = np.asarray(x)
    if utils.path_name(path).endswith('kernel') and x.ndim == 4:
      stds = 10 ** rng.uniform(-3, -1, x.shape[-1])
      return (x - x.mean((0, 1, 2))) / x.std((0, 1, 2)) * stds + rng.normal(0, 0.01, x.shape[-1])
    # Every other parameter random too (head, GroupNorm scales, ...).
    return x + rng.normal(0, 0.1, x.shape)

  return model, jax.tree_util.tree_map_with_path(rescale, params)


def _logits_with_prestandardized_kernels(model, params, standardize):
  """Logits of `model` with weight standardisation switched off and the kernels standardised by
  `standardize`."""
  flat = utils.flatten_dict(params)
  flat = {
    k: (
      standardize(v).astype(np.float32)
      if k.endswith('kernel') and v.ndim == 4 and 'embedding' not in k
      else v
    )
    for k, v in flat.items()
  }
  original = resnet.weight_standardize
  resnet.weight_standardize = lambda w: w
  try:
    return np.asarray(jax.jit(model.apply)({'params': utils.unflatten_dict(flat)}, X))
  finally:
    resnet.weight_standardize = original


def test_weight_standardize_equals_the_reference_formula_on_trained_scale_kernels():
  rng = np.random.default_rng(1)
  for std in (1e-3, 1e-2, 1e-1):
    w = rng.normal(0.01, std, (3, 3, 16, 8)).astype(np.float32)
    np.testing.assert_allclose(
      resnet.weight_standardize(w), _reference_standardize(w), rtol=1e-4, atol=1e-5
    )


def test_hybrid_logits_equal_the_reference_standardisation_on_trained_scale_kernels():
  model, params = _trained_scale_hybrid()
  ours = np.asarray(jax.jit(model.apply)({'params': params}, X))
  reference = _logits_with_prestandardized_kernels(model, params, _reference_standardize)
  old = _logits_with_prestandardized_kernels(model, params, _old_standardize)
  scale = np.abs(reference).max()
  np.testing.assert_allclose(ours, reference, atol=1e-4 * scale)
  assert np.abs(old - reference).max() > 1e-2 * scale  # The test can tell the two forms apart.


# --------------------------------------------------------------------------------------------------
# dtypes, configs and errors.


def test_bfloat16_compute_keeps_float32_params():
  model = models.VisionTransformer(num_classes=4, dtype=jnp.bfloat16, **tiny.vit_config())
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)
  params = model.init(jax.random.key(0), x)['params']
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  params = _random_head(params, jax.random.key(2))
  ref = models.VisionTransformer(num_classes=4, **tiny.vit_config()).apply({'params': params}, x)
  out = model.apply({'params': params}, x)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, atol=0.1, rtol=0.05)


def test_image_size_not_multiple_of_patch_is_clear_error():
  model = models.VisionTransformer(num_classes=4, **tiny.vit_config())
  with pytest.raises(ValueError, match=r'not a multiple of the patch size \(4, 4\)'):
    model.init(jax.random.key(0), jnp.zeros((1, 18, 18, 3)))


def test_unknown_classifier_lists_valid_ones():
  model = models.VisionTransformer(num_classes=4, **tiny.vit_config('cls'))
  with pytest.raises(ValueError, match=r"'cls'.*token, gap, map, unpooled, token_unpooled"):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


def test_model_accepts_plain_dict_configs():
  as_dict = tiny.hybrid_config().to_dict()  # E.g. read back from JSON.
  model = models.VisionTransformer(num_classes=3, **as_dict)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  assert jax.jit(model.apply)({'params': params}, jnp.zeros((2, 32, 32, 3))).shape == (2, 3)
  assert models.token_grid(as_dict, 32) == (4, 4)
