"""Mesh and sharding strategies: DP, FSDP, TP and FSDP+TP train identically (ViT and MLP-Mixer);
FSDP splits memory; resharded resume."""

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest
import tiny

from vit_jax import checkpoint, sharding
from vit_jax.training import train

STRATEGIES = {
  'dp': ((('data', -1),), 'replicate'),
  'fsdp': ((('fsdp', -1),), 'fsdp'),
  'tp': ((('data', 2), ('model', 4)), 'tp'),
  'fsdp+tp': ((('fsdp', 2), ('model', 4)), 'fsdp+tp'),
}


def _config(name, **overrides):
  mesh, strategy = STRATEGIES[name]
  config = tiny.train_config(
    **{
      'mesh': mesh,
      'sharding_strategy': strategy,
      'fsdp_min_size': 256,
      'model.transformer.num_heads': 4,
      'model.hidden_size': 64,
      'model.transformer.mlp_dim': 128,
      'schedule.warmup_steps': 0,
      'optimizer.name': 'adamw',
      'optimizer.weight_decay': 0.1,
      **overrides,
    }
  )
  return config


def _train(config, steps=5):
  mesh, state, step, batch_shard = tiny.train_setup(config)
  losses = []
  with jax.set_mesh(mesh):
    for i in range(steps):  # Two batches in turn: the loss must fall.
      state, stats = step(state, jax.device_put(tiny.random_batch(i % 2), batch_shard))
      losses.append(float(stats['loss']))
  return losses, state


def test_mesh_shape_resolves_rest_and_orders_model_last():
  assert sharding.mesh_shape([('model', 2), ('data', -1)], 8) == (('data', 'model'), (4, 2))
  with pytest.raises(ValueError, match=r"unknown or repeated axes \['tensor'\]"):
    sharding.mesh_shape([('tensor', 2)], 8)
  with pytest.raises(ValueError, match='uses 6 devices, but there are 8'):
    sharding.mesh_shape([('data', 3), ('model', 2)], 8)
  with pytest.raises(ValueError, match='at most one -1'):
    sharding.mesh_shape([('data', -1), ('fsdp', -1)], 8)


def test_parameter_specs_follow_megatron_rules():
  config = _config('fsdp+tp')
  _, state = _train(config, steps=1)
  block = state['params']['Transformer']['encoderblock_0']
  attn, mlp = block['MultiHeadDotProductAttention_0'], block['MlpBlock_0']
  # (64, 4, 16): heads over model.
  assert attn['query']['kernel'].sharding.spec == P('fsdp', 'model', None)
  # (4, 16, 64): input side over model.
  assert attn['out']['kernel'].sharding.spec == P('model', None, 'fsdp')
  assert mlp['Dense_0']['kernel'].sharding.spec == P('fsdp', 'model')
  assert mlp['Dense_1']['kernel'].sharding.spec == P('model', 'fsdp')
  assert block['LayerNorm_0']['scale'].sharding.spec == P()  # Below fsdp_min_size: replicated.
  opt_specs = {
    jax.tree_util.keystr(path): x.sharding.spec
    for path, x in jax.tree_util.tree_leaves_with_path(state['opt_state'])
  }
  dense_0 = "['encoderblock_0']['MlpBlock_0']['Dense_0']['kernel']"
  moments = [spec for path, spec in opt_specs.items() if dense_0 in path]
  assert moments == [P('fsdp', 'model')] * 2  # Adam's mu and nu follow their parameter.


def _mixer_config(name):
  return _config(name, model=tiny.mixer_config(hidden=32, tokens_mlp=32, channels_mlp=128))


@pytest.mark.parametrize('family', ['vit', 'mixer'])
def test_dp_fsdp_tp_and_fsdp_tp_give_the_same_losses(family):
  make_config = _mixer_config if family == 'mixer' else _config
  losses = {name: _train(make_config(name))[0] for name in STRATEGIES}
  reference = np.array(losses['dp'])
  assert reference[-1] < reference[0]  # It trains.
  for name, values in losses.items():
    np.testing.assert_allclose(values, reference, rtol=1e-5, err_msg=name)


def test_tp_splits_the_hidden_units_of_both_mixer_mlps():
  _, state = _train(_mixer_config('fsdp+tp'), steps=1)
  block = state['params']['MixerBlock_1']
  token, channel = block['token_mixing'], block['channel_mixing']
  # (16 tokens, 32 hidden units).
  assert token['Dense_0']['kernel'].sharding.spec == P('fsdp', 'model')
  assert token['Dense_0']['bias'].sharding.spec == P('model')  # Under fsdp_min_size: 'model' only.
  assert token['Dense_1']['kernel'].sharding.spec == P('model', 'fsdp')
  # (32 channels, 128 hidden units).
  assert channel['Dense_0']['kernel'].sharding.spec == P('fsdp', 'model')
  assert channel['Dense_1']['kernel'].sharding.spec == P('model', 'fsdp')
  # The output side (the residual stream) stays whole.
  assert channel['Dense_1']['bias'].sharding.spec == P()
  assert block['LayerNorm_0']['scale'].sharding.spec == P()
  assert token['Dense_0']['kernel'].addressable_shards[0].data.shape == (8, 8)  # 2 x 4 devices.


def _device_param_bytes(params):
  return sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(params))


def test_fsdp_holds_about_an_eighth_of_the_parameters_per_device():
  _, state = _train(_config('fsdp', **{'model.transformer.mlp_dim': 256}), steps=1)
  total = sum(x.nbytes for x in jax.tree.leaves(state['params']))
  per_device = _device_param_bytes(state['params'])
  assert total / 8 <= per_device <= 1.1 * total / 8, (per_device, total)


def test_strategy_needing_a_missing_axis_is_clear_error():
  with pytest.raises(ValueError, match=r"Strategy 'tp' needs a 'model' mesh axis"):
    _train(_config('dp', sharding_strategy='tp'), steps=1)


def test_resume_on_a_different_mesh(tmp_path):
  """Saved under 8-way FSDP, resumed under 4-way data x 2-way tensor parallelism: same params,
  training goes on."""
  root = tiny.image_folder(tmp_path)
  workdir = str(tmp_path / 'run')
  common = {'dataset': 'image_folder', 'image_folder': root, 'eval_every_steps': 100}
  train.train_and_evaluate(_config('fsdp', total_steps=2, **common), workdir)
  saved = checkpoint.read_npz(f'{workdir}/params.npz')
  config = _config('tp', total_steps=2, **common)
  config.mesh = (('data', 4), ('model', 2))
  train.train_and_evaluate(config, workdir)  # Restores step 2 onto the new mesh and exports it.
  restored = checkpoint.read_npz(f'{workdir}/params.npz')
  for key, value in saved.items():
    np.testing.assert_array_equal(restored[key], value, err_msg=key)
  config.total_steps = 3
  train.train_and_evaluate(config, workdir)
  assert checkpoint.read_npz(f'{workdir}/params.npz')['head/kernel'].shape == (64, 3)
