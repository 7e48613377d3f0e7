"""MLP-Mixer: vision_transformer's models_test Mixer cases, a fixture made by the reference
implementation (logits and init), release-file loading, fine-tuning loads, and the module's
contracts.

The fixture tests/data/mixer_reference{,_io}.npz was made by running
google-research/vision_transformer's vit_jax/models_mixer.py, unchanged, at commit
c6de1e5378c9831a8477feb30994971bdc409e46 (the file last changed in
2ecbc73207056d8fcbd7513ab43cd417a0b385b3), with jax 0.10.2 and flax 0.12.8 on CPU, float32:
  MlpMixer(patches={'size': (4, 4)}, num_classes=5, num_blocks=2, hidden_dim=32, tokens_mlp_dim=24,
           channels_mlp_dim=64); images = jax.random.uniform(PRNGKey(1), (3, 16, 20, 3), minval=-1,
           maxval=1);
  init = model.init(PRNGKey(0), images, train=False)['params'];
  params = every leaf of init (flattened with '/', in sorted-name order) +
      np.random.default_rng(0).normal(0, 0.2);
  logits = model.apply({'params': params}, images, train=False).
mixer_reference.npz holds `params` as a release file does (flat '/' names); mixer_reference_io.npz
holds `images`, `logits` and the reference's `init/<name>`. The 4x5 token grid (16 x 20 px) is not
square, so token order and the token/channel transposes are pinned.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vit_jax import checkpoint, models, utils
from vit_jax.configs import check as config_check
from vit_jax.configs import common
from vit_jax.configs import models as model_configs

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
FIXTURE = os.path.join(DATA, 'mixer_reference.npz')
FIXTURE_IO = os.path.join(DATA, 'mixer_reference_io.npz')

# vision_transformer's vit_jax/models_test.py MODEL_SIZES, its Mixer entries (224 px, 1000 classes).
REFERENCE_SIZES = {'Mixer-B_16': 59_880_472, 'Mixer-B_32': 60_293_428, 'Mixer-L_16': 208_196_168}
# vision_transformer's vit_jax/configs/models.py: name -> (getter, patch, hidden_dim, num_blocks,
# tokens_mlp_dim, channels_mlp_dim).
REFERENCE_CONFIGS = {
  'Mixer-B_16': ('get_mixer_b16_config', 16, 768, 12, 384, 3072),
  'Mixer-B_32': ('get_mixer_b32_config', 32, 768, 12, 384, 3072),
  'Mixer-L_16': ('get_mixer_l16_config', 16, 1024, 24, 512, 4096),
}


def tiny_mixer_config(patch=4, hidden=32, blocks=2, tokens_mlp=24, channels_mlp=64):
  """The fixture's config (a plain dict, as read back from JSON)."""
  return {
    'model_name': 'tiny-mixer',
    'patches': {'size': (patch, patch)},
    'hidden_dim': hidden,
    'num_blocks': blocks,
    'tokens_mlp_dim': tokens_mlp,
    'channels_mlp_dim': channels_mlp,
  }


def _io():
  with np.load(FIXTURE_IO) as f:
    return {k: f[k] for k in f.files}


def _init(model, shape, seed=0):
  """Jitted init (eager init runs op by op: seconds per call); the params."""
  return jax.jit(model.init)(jax.random.key(seed), jnp.zeros(shape))['params']


def _count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


# --------------------------------------------------------------------------------------------------
# The reference's models_test cases and presets.


@pytest.mark.parametrize('name', sorted(REFERENCE_SIZES))
def test_reference_models_test_case_passes(name):
  # models_test.test_can_instantiate: get_model(name, num_classes=1000), init and apply on (2, 224,
  # 224, 3) ones.
  model = models.get_model(name, num_classes=1000)
  assert isinstance(model, models.MlpMixer)
  images = jnp.ones([2, 224, 224, 3], jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  outputs = jax.eval_shape(lambda v: model.apply(v, images, train=False), variables)
  assert outputs.shape == (2, 1000)
  assert _count(variables) == REFERENCE_SIZES[name]


def test_every_mixer_preset_is_tested_and_none_is_augreg():
  mixers = {
    n for n in model_configs.MODEL_CONFIGS if models.is_mixer(model_configs.MODEL_CONFIGS[n])
  }
  assert mixers == set(REFERENCE_SIZES) == {n for n in models.MODEL_NAMES if n.startswith('Mixer-')}
  assert not any(n.startswith('Mixer') for n in model_configs.AUGREG_CONFIGS)


@pytest.mark.parametrize('name', sorted(REFERENCE_CONFIGS))
def test_preset_fields_equal_the_reference(name):
  getter, patch, hidden, blocks, tokens_mlp, channels_mlp = REFERENCE_CONFIGS[name]
  config = getattr(model_configs, getter)()
  assert config.to_dict() == {
    'model_name': name,
    'patches': {'size': (patch, patch)},
    'hidden_dim': hidden,
    'num_blocks': blocks,
    'tokens_mlp_dim': tokens_mlp,
    'channels_mlp_dim': channels_mlp,
  }
  assert model_configs.MODEL_CONFIGS[name].is_locked and not config.is_locked
  assert model_configs.MODEL_CONFIGS[name].to_dict() == models.get_model_config(name).to_dict()


def test_analytic_count_of_mixer_b16():
  # stem; per block 2 LayerNorms, token MLP (196 -> 384 -> 196), channel MLP (768 -> 3072 -> 768);
  # norm; head.
  t, d, dt, dc = 196, 768, 384, 3072
  block = 4 * d + (t * dt + dt + dt * t + t) + (d * dc + dc + dc * d + d)
  assert (16 * 16 * 3 * d + d) + 12 * block + 2 * d + (d * 1000 + 1000) == REFERENCE_SIZES[
    'Mixer-B_16'
  ]


def test_model_class_follows_the_config_family():
  assert models.model_class(models.get_model_config('Mixer-L_16')) is models.MlpMixer
  assert models.model_class(tiny_mixer_config()) is models.MlpMixer
  assert models.model_class(models.get_model_config('ViT-B_16')) is models.VisionTransformer
  assert isinstance(models.get_model('ViT-Ti_16', num_classes=3), models.VisionTransformer)


# --------------------------------------------------------------------------------------------------
# The reference fixture.


def test_reference_fixture_loads_with_the_reference_logits():
  io = _io()
  params = checkpoint.load(FIXTURE)
  model = models.MlpMixer(num_classes=5, **tiny_mixer_config())
  logits = np.asarray(
    jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(params, io['images'])
  )
  # A real signal, not a zero head.
  assert logits.shape == (3, 5) and np.abs(io['logits']).max() > 0.5
  np.testing.assert_allclose(logits, io['logits'], rtol=1e-5, atol=1e-5)


def test_init_equals_the_reference_init_for_the_same_key():
  io = _io()
  model = models.MlpMixer(num_classes=5, **tiny_mixer_config())
  params = utils.flatten_dict(
    model.init(jax.random.PRNGKey(0), io['images'], train=False)['params']
  )
  reference = {k[len('init/') :]: v for k, v in io.items() if k.startswith('init/')}
  assert sorted(params) == sorted(reference)
  # Equal to float32 rounding: JAX 0.12.1's sampling rounds about half the values one or two ulps
  # away from the fixture's (made with an earlier JAX); the same key and the same initializers give
  # the same numbers to 1e-6 (an other initializer or key differs by far more).
  for name, value in reference.items():
    np.testing.assert_allclose(params[name], value, rtol=1e-6, atol=0, err_msg=name)
  # Zero head, zero biases (Flax's default init).
  np.testing.assert_array_equal(params['head/kernel'], 0)
  np.testing.assert_array_equal(params['MixerBlock_1/token_mixing/Dense_0/bias'], 0)


def test_save_npz_round_trips_the_release_layout(tmp_path):
  params = checkpoint.load(FIXTURE)
  checkpoint.save_npz(str(tmp_path / 'mixer.npz'), params)
  with np.load(FIXTURE) as original, np.load(tmp_path / 'mixer.npz') as saved:
    assert sorted(saved.files) == sorted(original.files)
    for name in original.files:
      np.testing.assert_array_equal(saved[name], original[name], err_msg=name)


def test_load_pretrained_replaces_only_the_head():
  model = models.MlpMixer(num_classes=3, **tiny_mixer_config())
  init = _init(model, (1, 16, 20, 3), seed=7)
  init = {**init, 'head': {'kernel': jnp.full((32, 3), 0.5), 'bias': jnp.arange(3.0)}}
  loaded = utils.flatten_dict(
    checkpoint.load_pretrained(
      pretrained_path=FIXTURE, init_params=init, model_config=tiny_mixer_config()
    )
  )
  with np.load(FIXTURE) as release:
    assert sorted(loaded) == sorted(release.files)
    for name in release.files:
      if name.startswith('head/'):
        np.testing.assert_array_equal(loaded[name], utils.flatten_dict(init)[name])
      else:
        np.testing.assert_array_equal(loaded[name], release[name], err_msg=name)


def test_load_pretrained_at_another_resolution_says_the_mixer_fixes_it(tmp_path):
  small = models.MlpMixer(num_classes=3, **tiny_mixer_config())
  checkpoint.save_npz(str(tmp_path / 'sq.npz'), _init(small, (1, 16, 16, 3)))
  init = _init(small, (1, 32, 32, 3))
  with pytest.raises(
    checkpoint.CheckpointError,
    match=r'Mixer for 16 tokens \(16x16 px at patch 4x4\), but the model has 64: the token-mixing',
  ):
    checkpoint.load_pretrained(
      pretrained_path=str(tmp_path / 'sq.npz'), init_params=init, model_config=tiny_mixer_config()
    )


def test_load_pretrained_of_another_width_and_resolution_lists_every_mismatched_shape(tmp_path):
  wide = models.MlpMixer(num_classes=3, **tiny_mixer_config(hidden=48))
  checkpoint.save_npz(str(tmp_path / 'wide.npz'), _init(wide, (1, 16, 16, 3)))
  narrow = models.MlpMixer(num_classes=3, **tiny_mixer_config())
  init = _init(narrow, (1, 32, 32, 3))
  # Not only the token count differs, so no resolution advice: the generic error with every
  # mismatch.
  with pytest.raises(checkpoint.CheckpointError, match=r'24 array\(s\) differ') as error:
    checkpoint.load_pretrained(
      pretrained_path=str(tmp_path / 'wide.npz'), init_params=init, model_config=tiny_mixer_config()
    )
  assert "'MixerBlock_0/LayerNorm_0/bias': checkpoint (48,) vs model (32,)" in str(error.value)
  assert "'MixerBlock_1/token_mixing/Dense_0/kernel': checkpoint (16, 24) vs model (64, 24)" in str(
    error.value
  )


# --------------------------------------------------------------------------------------------------
# The module's contracts.


def test_parameter_names_and_shapes_follow_the_release_layout():
  model = models.MlpMixer(num_classes=5, **tiny_mixer_config())
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 20, 3))))[
    'params'
  ]
  assert sorted(params) == ['MixerBlock_0', 'MixerBlock_1', 'head', 'pre_head_layer_norm', 'stem']
  block = params['MixerBlock_1']
  assert sorted(block) == ['LayerNorm_0', 'LayerNorm_1', 'channel_mixing', 'token_mixing']
  assert block['token_mixing']['Dense_0']['kernel'].shape == (20, 24)  # (tokens, tokens_mlp_dim)
  assert block['token_mixing']['Dense_1']['kernel'].shape == (24, 20)
  assert block['channel_mixing']['Dense_0']['kernel'].shape == (32, 64)
  assert params['stem']['kernel'].shape == (4, 4, 3, 32)


def test_no_classes_returns_the_pooled_features_and_train_changes_nothing():
  params = checkpoint.load(FIXTURE)
  features = models.MlpMixer(num_classes=0, **tiny_mixer_config())
  x = _io()['images']
  pooled = features.apply({'params': params}, x)
  assert pooled.shape == (3, 32)
  np.testing.assert_allclose(
    pooled @ params['head']['kernel'] + params['head']['bias'], _io()['logits'], atol=1e-5
  )
  model = models.MlpMixer(num_classes=5, **tiny_mixer_config())
  np.testing.assert_array_equal(
    model.apply({'params': params}, x, train=True), model.apply({'params': params}, x, train=False)
  )


def test_bfloat16_compute_keeps_float32_params_and_logits():
  io = _io()
  model = models.MlpMixer(num_classes=5, dtype=jnp.bfloat16, **tiny_mixer_config())
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(_init(model, io['images'].shape)))
  out = model.apply({'params': checkpoint.load(FIXTURE)}, io['images'])
  assert out.dtype == jnp.float32
  error = np.abs(np.asarray(out) - io['logits']).max()
  assert 1e-4 < error < 0.1  # bfloat16 did run, and stayed close.


def test_patches_may_be_a_config_dict_as_in_the_reference():
  config = tiny_mixer_config()
  config['patches'] = ml_collections.ConfigDict(config['patches'])
  model = models.MlpMixer(num_classes=5, **config)
  np.testing.assert_allclose(
    model.apply({'params': checkpoint.load(FIXTURE)}, _io()['images']), _io()['logits'], atol=1e-5
  )


def test_image_size_not_multiple_of_patch_is_a_clear_error():
  model = models.MlpMixer(num_classes=5, **tiny_mixer_config())
  with pytest.raises(ValueError, match=r'\(18, 18\) is not a multiple of the patch size \(4, 4\)'):
    model.init(jax.random.key(0), jnp.zeros((1, 18, 18, 3)))


@pytest.mark.parametrize('policy', ['full', 'dots'])
def test_remat_gives_the_same_loss_and_gradients(policy):
  x = _io()['images']
  labels = jax.nn.one_hot(jnp.array([0, 3, 4]), 5)
  params = checkpoint.load(FIXTURE)

  def loss_and_grads(remat_policy):
    model = models.MlpMixer(num_classes=5, remat_policy=remat_policy, **tiny_mixer_config())
    loss = lambda p: (
      -jnp.mean(jnp.sum(labels * jax.nn.log_softmax(model.apply({'params': p}, x, train=True)), -1))
    )
    return jax.jit(jax.value_and_grad(loss))(params), jax.make_jaxpr(loss)(params)

  (plain_loss, plain_grads), plain_jaxpr = loss_and_grads('none')
  (loss, grads), jaxpr = loss_and_grads(policy)
  # The blocks really are rematerialised.
  assert 'remat' in str(jaxpr) and 'remat' not in str(plain_jaxpr)
  assert float(plain_loss) > 0.1
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
  for name, g in utils.flatten_dict(grads).items():
    np.testing.assert_allclose(
      g, utils.flatten_dict(plain_grads)[name], rtol=1e-5, atol=1e-7, err_msg=name
    )


def test_an_unknown_remat_policy_is_a_clear_error():
  model = models.MlpMixer(num_classes=5, remat_policy='some', **tiny_mixer_config())
  with pytest.raises(ValueError, match=r"Unknown remat_policy 'some'; valid: none, full, dots"):
    model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))


def test_a_training_config_with_a_mixer_model_validates_and_a_vit_field_on_it_is_named():
  config = common.get_config()
  config.model = models.get_model_config('Mixer-B_16')
  config.dataset, config.image_size = 'cifar10', 224
  assert config_check.validate(config) is config
  config.model.unlock()
  config.model.hidden_size = 768
  with pytest.raises(
    config_check.UnknownFieldError,
    match=r'config.model.hidden_size is a ViT field, but config.model is an MLP-Mixer \(it has '
    r'num_blocks\), which takes model.\{channels_mlp_dim, hidden_dim',
  ):
    config_check.validate(config)
