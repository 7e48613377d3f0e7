"""Model fast paths (scan, remat, attention kernels, fused QKV): the plain path's logits, gradients,
files, specs."""

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest
import tiny

from vit_jax import checkpoint, models, sharding, utils
from vit_jax.training import state, train

X = jax.random.uniform(jax.random.key(7), (2, 16, 16, 3), minval=-1, maxval=1)
# Loss = mean(logits * WEIGHTS): every logit matters.
WEIGHTS = jax.random.normal(jax.random.key(8), (2, 5))
FAST_PATHS = {
  'scan': {'scan': True},
  'remat_full': {'remat_policy': 'full'},
  'remat_dots': {'remat_policy': 'dots'},
  'attention_xla': {'attention': 'xla'},
  'fused_qkv': {'fused_qkv': True},
  'all': {'scan': True, 'remat_policy': 'dots', 'attention': 'xla', 'fused_qkv': True},
}


def _model(config=None, **kw):
  return models.VisionTransformer(num_classes=5, **(config or tiny.vit_config()), **kw)


def _init(model, seed=0):
  return jax.jit(lambda: model.init(jax.random.key(seed), X[:1])['params'])()


def _random_params(model, seed=0):
  """Unrolled params with every leaf random (head and biases too), so logits and gradients depend on
  all of them."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda x: (0.3 * rng.normal(size=x.shape)).astype(np.float32), _init(model, seed)
  )


def _stacked(params):
  return utils.unflatten_dict(checkpoint.stack_blocks(utils.flatten_dict(params)))


def _unstacked_flat(tree):
  return checkpoint.unstack_blocks({k: np.asarray(v) for k, v in utils.flatten_dict(tree).items()})


def _logits_and_grads(model, params):
  """Logits and parameter gradients in training mode (dropout 0), as flat per-layer (unstacked)
  dicts."""
  if model.scan:
    params = _stacked(params)

  def loss(p):
    logits = model.apply({'params': p}, X, train=True)
    return jnp.mean(logits * WEIGHTS), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return np.asarray(logits), _unstacked_flat(grads)


def _assert_close(got, want, tol, scale=None, name=''):
  """|got - want| <= tol * scale elementwise, `scale` max|want| by default: near-zero entries are
  judged against the size of their array (or, for gradients, of all gradients: the key bias's is
  zero up to rounding)."""
  scale = np.abs(want).max() if scale is None else scale
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=name)


def _assert_grads_close(grads, want_grads, tol):
  assert sorted(grads) == sorted(want_grads)
  scale = max(np.abs(g).max() for g in want_grads.values())
  for key, want in want_grads.items():
    _assert_close(grads[key], want, tol, scale, key)


@pytest.fixture(scope='module')
def reference():
  params = _random_params(_model())
  return params, _logits_and_grads(_model(), params)


@pytest.mark.parametrize('name', sorted(FAST_PATHS))
def test_fast_path_gives_plain_logits_and_gradients_in_float32(reference, name):
  params, (want_logits, want_grads) = reference
  logits, grads = _logits_and_grads(_model(**FAST_PATHS[name]), params)
  _assert_close(logits, want_logits, 1e-5)
  _assert_grads_close(grads, want_grads, 1e-5)


@pytest.mark.parametrize('name', ['plain', 'all'])
def test_bfloat16_compute_stays_within_bfloat16_tolerance_of_float32(reference, name):
  params, (want_logits, want_grads) = reference
  logits, grads = _logits_and_grads(_model(dtype=jnp.bfloat16, **FAST_PATHS.get(name, {})), params)
  assert logits.dtype == np.float32
  _assert_close(logits, want_logits, 3e-2)
  _assert_grads_close(grads, want_grads, 3e-2)


def _input_dtypes(jaxpr, primitive):
  """Dtypes of the inputs of every `primitive` equation, descending into scan, remat, jit and
  custom-jvp bodies."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == primitive:
      found += [v.aval.dtype for v in eqn.invars]
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, 'jaxpr', sub)
        if hasattr(sub, 'eqns'):
          found += _input_dtypes(sub, primitive)
  return found


@pytest.mark.parametrize('name', ['plain', 'all'])
def test_bfloat16_softmax_and_layernorm_run_in_float32(reference, name):
  model = _model(dtype=jnp.bfloat16, **FAST_PATHS.get(name, {}))
  params = _stacked(reference[0]) if model.scan else reference[0]
  jaxpr = jax.make_jaxpr(lambda p: model.apply({'params': p}, X, train=True))(params).jaxpr
  exps, rsqrts = _input_dtypes(jaxpr, 'exp'), _input_dtypes(jaxpr, 'rsqrt')  # Softmax; LayerNorm.
  assert exps and rsqrts
  assert set(exps) == set(rsqrts) == {np.dtype(np.float32)}
  assert jaxpr.outvars[0].aval.dtype == np.float32  # Logits.


def test_fused_qkv_keeps_release_parameters_and_their_init():
  separate, fused = _init(_model()), _init(_model(fused_qkv=True))
  assert jax.tree.structure(fused) == jax.tree.structure(separate)
  for a, b in zip(jax.tree.leaves(fused), jax.tree.leaves(separate)):
    np.testing.assert_array_equal(a, b)


def test_attention_dropout_in_training_falls_back_to_plain_path(reference):
  params, (no_dropout, _) = reference
  run = lambda attention: jax.jit(
    lambda p: _model(tiny.vit_config(dropout=0.3), attention=attention).apply(
      {'params': p}, X, train=True, rngs={'dropout': jax.random.key(3)}
    )
  )(params)
  np.testing.assert_array_equal(run('xla'), run('plain'))
  assert np.abs(run('plain') - no_dropout).max() > 1e-3  # Dropout is on.


def test_scanned_and_unrolled_models_load_one_npz_to_the_same_logits(tmp_path, reference):
  params = reference[0]
  path = str(tmp_path / 'p.npz')
  checkpoint.save_npz(path, params)
  loaded = {}
  for scan in (False, True):
    loaded[scan] = checkpoint.load_pretrained(
      pretrained_path=path, init_params=_init(_model(scan=scan), 1), model_config=tiny.vit_config()
    )
    loaded[scan]['head'] = params['head']  # The loader re-initialises the head.
  kernel = 'MultiHeadDotProductAttention_0/query/kernel'
  assert utils.flatten_dict(loaded[True])[f'Transformer/encoderblock/{kernel}'].shape == (
    2,
    32,
    2,
    16,
  )
  for key, value in utils.flatten_dict(_stacked(params)).items():
    np.testing.assert_array_equal(utils.flatten_dict(loaded[True])[key], value, err_msg=key)
  logits = {
    scan: jax.jit(_model(scan=scan).apply)({'params': loaded[scan]}, X) for scan in (False, True)
  }
  np.testing.assert_array_equal(logits[True], logits[False])


def test_save_npz_of_scanned_params_equals_the_unrolled_file(tmp_path, reference):
  params = reference[0]
  checkpoint.save_npz(str(tmp_path / 'unrolled.npz'), params)
  checkpoint.save_npz(str(tmp_path / 'scanned.npz'), _stacked(params))
  with np.load(tmp_path / 'unrolled.npz') as unrolled, np.load(tmp_path / 'scanned.npz') as scanned:
    assert sorted(scanned.files) == sorted(unrolled.files)
    assert 'Transformer/encoderblock_1/MlpBlock_3/Dense_0/kernel' in scanned.files
    for key in unrolled.files:
      np.testing.assert_array_equal(scanned[key], unrolled[key], err_msg=key)


def test_scanned_load_shape_error_names_the_stacked_key_and_both_shapes(tmp_path, reference):
  path = str(tmp_path / 'one_layer.npz')
  one_layer = {
    k: v for k, v in utils.flatten_dict(reference[0]).items() if 'encoderblock_1/' not in k
  }
  checkpoint.save_npz(path, utils.unflatten_dict(one_layer))
  init = _init(_model(scan=True))
  with pytest.raises(
    checkpoint.CheckpointError,
    match=r"'Transformer/encoderblock/LayerNorm_0/bias': checkpoint \(1, 32\) vs model \(2, 32\)",
  ):
    checkpoint.load_pretrained(
      pretrained_path=path, init_params=init, model_config=tiny.vit_config()
    )


def _train_config(strategy, mesh, **overrides):
  return tiny.train_config(
    **{
      'mesh': mesh,
      'sharding_strategy': strategy,
      'fsdp_min_size': 256,
      'model.transformer.num_heads': 4,
      'model.hidden_size': 64,
      'model.transformer.mlp_dim': 128,
      'schedule.warmup_steps': 0,
      **overrides,
    }
  )


def _abstract_params(model):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), X[:1]))['params']


@pytest.mark.parametrize(
  'strategy,mesh',
  [
    ('replicate', (('data', -1),)),
    ('fsdp', (('fsdp', -1),)),
    ('tp', (('data', 2), ('model', 4))),
    ('fsdp+tp', (('fsdp', 2), ('model', 4))),
  ],
)
def test_scanned_param_specs_are_the_unrolled_ones_behind_a_none_layer_axis(strategy, mesh):
  config = _train_config(strategy, mesh)
  mesh = sharding.make_mesh(config.mesh)
  specs = {}
  for scan in (False, True):
    params = _abstract_params(state.build_model(tiny.override(config, {'scan_layers': scan}), 5))
    specs[scan] = utils.flatten_dict(
      sharding.param_specs(params, mesh, strategy, config.fsdp_min_size)
    )
  stacked = {k: v for k, v in specs[True].items() if k.startswith('Transformer/encoderblock/')}
  assert len(stacked) == 16
  for key, spec in stacked.items():
    layer = specs[False][key.replace('encoderblock/', 'encoderblock_0/')]
    assert spec == P(None, *layer), key
  if strategy == 'fsdp+tp':
    attn = 'Transformer/encoderblock/MultiHeadDotProductAttention_0/'
    assert stacked[attn + 'query/kernel'] == P(None, 'fsdp', 'model', None)  # (2, 64, 4, 16)
    assert stacked[attn + 'out/kernel'] == P(None, 'model', None, 'fsdp')  # (2, 4, 16, 64)
    assert stacked['Transformer/encoderblock/MlpBlock_0/Dense_1/kernel'] == P(None, 'model', 'fsdp')
  if strategy == 'tp':
    assert stacked['Transformer/encoderblock/MlpBlock_0/Dense_0/kernel'] == P(None, None, 'model')


def _two_step_losses(config, params):
  """Losses of two train steps from `params` (unrolled layout; stacked for a scanned model) on fixed
  batches."""
  mesh, state, step, batch_shard = tiny.train_setup(
    config, params=_stacked(params) if config.scan_layers else params
  )
  losses = []
  with jax.set_mesh(mesh):
    for i in range(2):
      state, stats = step(state, jax.device_put(tiny.random_batch(i), batch_shard))
      losses.append(float(stats['loss']))
  return losses


def test_scanned_remat_train_step_under_fsdp_tp_matches_unrolled_replicate():
  reference = _train_config('replicate', (('data', -1),))
  params = jax.jit(lambda: state.build_model(reference, 10).init(jax.random.key(0), X[:1]))()[
    'params'
  ]
  fast = _train_config(
    'fsdp+tp',
    (('fsdp', 2), ('model', 4)),
    scan_layers=True,
    remat_policy='full',
    attention='xla',
    fused_qkv=True,
  )
  want = _two_step_losses(reference, params)
  np.testing.assert_allclose(_two_step_losses(fast, params), want, rtol=1e-5)
  assert want[1] != want[0]


@pytest.mark.parametrize(
  'kw,message',
  [
    ({'remat_policy': 'sometimes'}, r"Unknown remat_policy 'sometimes'; valid: none, full, dots"),
    ({'attention': 'flash'}, r"Unknown attention 'flash'; valid: plain, xla, cudnn"),
    (
      {'attention': 'cudnn', 'dtype': jnp.bfloat16},
      r"attention='cudnn' needs a GPU, but the JAX backend is 'cpu'",
    ),
  ],
)
def test_bad_fast_path_values_are_clear_errors(kw, message):
  with pytest.raises(ValueError, match=message):
    _model(**kw).init(jax.random.key(0), X[:1])
