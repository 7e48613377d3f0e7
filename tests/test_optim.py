"""Tests for vit_jax.training.optim: schedules, weight-decay mask and optimizer step numbers
(hand-computed)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tiny

from vit_jax import utils
from vit_jax.configs import common
from vit_jax.training import optim


def _config(**overrides):
  """Common config with total_steps=1100, warmup=100, base_lr=0.1; keys 'a.b' override nested
  fields."""
  config = common.get_config()
  config.total_steps = 1100
  config.schedule.warmup_steps = 100
  config.schedule.base_lr = 0.1
  return tiny.override(config, overrides)


def _lrs(config, steps):
  sched = optim.make_schedule(config)
  return [float(sched(s)) for s in steps]


STEPS = (0, 50, 100, 350, 600, 1100, 5000)


def test_cosine_schedule():
  want = [0.0, 0.05, 0.1, 0.05 * (1 + math.sqrt(0.5)), 0.05, 0.0, 0.0]
  np.testing.assert_allclose(_lrs(_config(), STEPS), want, atol=1e-7)


def test_cosine_schedule_end_lr_floor():
  got = _lrs(_config(**{'schedule.end_lr': 0.01}), (100, 600, 1100, 2000))
  np.testing.assert_allclose(got, [0.1, 0.055, 0.01, 0.01], atol=1e-7)


def test_linear_schedule_nonzero_end():
  config = _config(**{'schedule.decay_type': 'linear', 'schedule.end_lr': 0.02})
  want = [0.0, 0.05, 0.1, 0.08, 0.06, 0.02, 0.02]
  np.testing.assert_allclose(_lrs(config, STEPS), want, atol=1e-7)


def test_constant_schedule():
  config = _config(**{'schedule.decay_type': 'constant'})
  want = [0.0, 0.05, 0.1, 0.1, 0.1, 0.1, 0.1]
  np.testing.assert_allclose(_lrs(config, STEPS), want, atol=1e-7)


def test_rsqrt_schedule():
  config = _config(**{'schedule.decay_type': 'rsqrt', 'schedule.rsqrt_timescale': 400})
  steps = (0, 50, 100, 400, 900, 1000, 1100, 1600)
  # base_lr * sqrt(400 / max(step, 400)), steps past 1100 clamp at 1100.
  want = [
    0.0,
    0.05,
    0.1,
    0.1,
    0.1 * 2 / 3,
    0.1 * math.sqrt(0.4),
    0.1 * math.sqrt(4 / 11),
    0.1 * math.sqrt(4 / 11),
  ]
  np.testing.assert_allclose(_lrs(config, steps), want, rtol=1e-6, atol=1e-8)


def test_schedule_no_warmup_starts_at_base_lr():
  config = _config(**{'schedule.warmup_steps': 0})
  # Cosine over all 1100 steps: p = 550 / 1100 = 0.5 at step 550.
  np.testing.assert_allclose(_lrs(config, (0, 550, 1100)), [0.1, 0.05, 0.0], atol=1e-7)


def test_schedule_jit_on_int_array():
  sched = optim.make_schedule(_config(**{'schedule.decay_type': 'linear', 'schedule.end_lr': 0.02}))
  got = jax.jit(sched)(jnp.array([0, 50, 100, 600, 1100, 5000], jnp.int32))
  np.testing.assert_allclose(np.asarray(got), [0.0, 0.05, 0.1, 0.06, 0.02, 0.02], atol=1e-7)


def test_weight_decay_mask():
  params = {
    'cls': np.zeros((1, 1, 4)),
    'embedding': {'kernel': np.zeros((2, 2, 3, 4)), 'bias': np.zeros(4)},
    'conv_root': {'kernel': np.zeros((3, 3, 3, 4))},
    'gn_root': {'scale': np.zeros(4), 'bias': np.zeros(4)},
    'Transformer': {
      'posembed_input': {'pos_embedding': np.zeros((1, 5, 4))},
      'encoderblock_0': {
        'LayerNorm_0': {'scale': np.zeros(4), 'bias': np.zeros(4)},
        'MultiHeadDotProductAttention_1': {
          n: {'kernel': np.zeros((4, 1, 4)), 'bias': np.zeros((1, 4))}
          for n in ('query', 'key', 'value', 'out')
        },
        'MlpBlock_3': {'Dense_0': {'kernel': np.zeros((4, 8)), 'bias': np.zeros(8)}},
      },
      'encoder_norm': {'scale': np.zeros(4), 'bias': np.zeros(4)},
    },
    'head': {'kernel': np.zeros((4, 10)), 'bias': np.zeros(10), 'my_kernel_like': np.zeros(2)},
  }
  flat = utils.flatten_dict(optim.weight_decay_mask(params))
  decayed = sorted(k for k, v in flat.items() if v)
  assert decayed == sorted(
    [
      'embedding/kernel',
      'conv_root/kernel',
      'head/kernel',
      'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel',
      *(
        f'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/{n}/kernel'
        for n in ('query', 'key', 'value', 'out')
      ),
    ]
  )
  assert len(flat) == 24 and sum(flat.values()) == 8
  for name in (
    'cls',
    'Transformer/posembed_input/pos_embedding',
    'gn_root/scale',
    'Transformer/encoder_norm/scale',
    'head/bias',
    'head/my_kernel_like',
  ):
    assert flat[name] is False


def _params():
  return {'dense': {'kernel': jnp.array([1.0, 2.0]), 'bias': jnp.array([3.0])}}


def _grads(kernel, bias):
  return {'dense': {'kernel': jnp.array(kernel), 'bias': jnp.array(bias)}}


def _constant_config(name, **overrides):
  return _config(
    **{
      'optimizer.name': name,
      'schedule.decay_type': 'constant',
      'schedule.warmup_steps': 0,
      'optimizer.grad_clip_norm': 0.0,
      **overrides,
    }
  )


def _flat(tree):
  return {k: np.asarray(v) for k, v in utils.flatten_dict(tree).items()}


def test_sgd_momentum_steps():
  tx, _ = optim.make_optimizer(_constant_config('sgd'))
  params, grads = _params(), _grads([0.5, -1.0], [0.25])
  state = tx.init(params)
  u1, state = tx.update(grads, state, params)
  u2, _ = tx.update(grads, state, params)
  # Step 1: -lr * g. Step 2: momentum m = 0.9 * g + g = 1.9 g -> -0.19 g.
  np.testing.assert_allclose(_flat(u1)['dense/kernel'], [-0.05, 0.1], rtol=1e-6)
  np.testing.assert_allclose(_flat(u1)['dense/bias'], [-0.025], rtol=1e-6)
  np.testing.assert_allclose(_flat(u2)['dense/kernel'], [-0.095, 0.19], rtol=1e-6)
  np.testing.assert_allclose(_flat(u2)['dense/bias'], [-0.0475], rtol=1e-6)


def test_sgd_weight_decay_only_kernel():
  tx, _ = optim.make_optimizer(_constant_config('sgd', **{'optimizer.weight_decay': 0.01}))
  params, grads = _params(), _grads([0.5, -1.0], [0.25])
  updates, _ = tx.update(grads, tx.init(params), params)
  # Kernel grad + 0.01 * [1, 2] = [0.51, -0.98]; bias grad untouched.
  np.testing.assert_allclose(_flat(updates)['dense/kernel'], [-0.051, 0.098], rtol=1e-6)
  np.testing.assert_allclose(_flat(updates)['dense/bias'], [-0.025], rtol=1e-6)


def test_adamw_decays_only_kernels():
  params = {**_params(), 'cls': jnp.array([4.0]), 'pos_embedding': jnp.array([5.0])}
  tx, _ = optim.make_optimizer(_constant_config('adamw', **{'optimizer.weight_decay': 0.1}))
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  new = _flat(optax.apply_updates(params, updates))
  # Zero grads: Adam direction is 0; decoupled decay moves the kernel by -lr * wd * p = -0.01 * p.
  np.testing.assert_allclose(new['dense/kernel'], [0.99, 1.98], rtol=1e-6)
  np.testing.assert_array_equal(new['dense/bias'], [3.0])
  np.testing.assert_array_equal(new['cls'], [4.0])
  np.testing.assert_array_equal(new['pos_embedding'], [5.0])


def test_adam_l2_decay_only_kernels():
  tx, _ = optim.make_optimizer(_constant_config('adam', **{'optimizer.weight_decay': 0.1}))
  params = _params()
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  # L2 grad 0.1 * p goes through Adam: first step is ~ -lr * sign(grad) = -0.1 on each kernel entry.
  np.testing.assert_allclose(_flat(updates)['dense/kernel'], [-0.1, -0.1], rtol=1e-5)
  np.testing.assert_array_equal(_flat(updates)['dense/bias'], [0.0])


def test_grad_clipping_sgd():
  grads = _grads([6.0, 0.0], [8.0])  # Global norm 10.
  params = _params()
  tx, _ = optim.make_optimizer(_constant_config('sgd', **{'optimizer.grad_clip_norm': 1.0}))
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(_flat(updates)['dense/kernel'], [-0.06, 0.0], rtol=1e-6)
  np.testing.assert_allclose(_flat(updates)['dense/bias'], [-0.08], rtol=1e-6)
  tx, _ = optim.make_optimizer(_constant_config('sgd', **{'optimizer.grad_clip_norm': 0.0}))
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(_flat(updates)['dense/kernel'], [-0.6, 0.0], rtol=1e-6)
  np.testing.assert_allclose(_flat(updates)['dense/bias'], [-0.8], rtol=1e-6)


def _trace_states(state):
  return [
    s
    for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.TraceState))
    if isinstance(s, optax.TraceState)
  ]


@pytest.mark.parametrize('dtype_name,dtype', [('bfloat16', jnp.bfloat16), ('float32', jnp.float32)])
def test_sgd_accumulator_dtype(dtype_name, dtype):
  tx, _ = optim.make_optimizer(
    _constant_config('sgd', **{'optimizer.accumulator_dtype': dtype_name})
  )
  params = _params()
  _, state = tx.update(_grads([0.5, -1.0], [0.25]), tx.init(params), params)
  (trace,) = _trace_states(state)
  flat = _flat(trace.trace)
  assert flat['dense/kernel'].dtype == dtype and flat['dense/bias'].dtype == dtype
  np.testing.assert_array_equal(flat['dense/kernel'].astype(np.float32), [0.5, -1.0])
  np.testing.assert_array_equal(flat['dense/bias'].astype(np.float32), [0.25])


@pytest.mark.parametrize('name', optim.OPTIMIZERS)
def test_eval_shape_init(name):
  tx, sched = optim.make_optimizer(
    _config(**{'optimizer.name': name, 'optimizer.weight_decay': 1e-4})
  )
  params = {'dense': {'kernel': jnp.ones((3, 5)), 'bias': jnp.ones(5)}, 'cls': jnp.ones((1, 1, 5))}
  abstract = jax.eval_shape(tx.init, jax.eval_shape(lambda: params))
  concrete = tx.init(params)
  assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
  assert [x.shape for x in jax.tree.leaves(abstract)] == [
    x.shape for x in jax.tree.leaves(concrete)
  ]
  assert [x.dtype for x in jax.tree.leaves(abstract)] == [
    x.dtype for x in jax.tree.leaves(concrete)
  ]
  assert float(sched(100)) == pytest.approx(0.1)


def test_frozen_parameters_get_no_update_and_no_optimizer_state():
  """make_optimizer(frozen=...): the task's rules (a LiT model's locked tower), applied by name."""
  config = _constant_config('adamw', **{'optimizer.weight_decay': 0.1})
  tx, _ = optim.make_optimizer(config, frozen=(r'img/.*',))
  params = {'img': {'kernel': jnp.ones((2, 2))}, 'txt': {'kernel': jnp.ones((2, 2))}}
  state = tx.init(params)
  assert jax.tree.leaves(state.inner_states[optim.FROZEN]) == []  # No moments for the frozen tower.
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  np.testing.assert_array_equal(updates['img']['kernel'], 0.0)
  assert float(jnp.abs(updates['txt']['kernel']).min()) > 0
