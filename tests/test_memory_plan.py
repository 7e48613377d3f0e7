"""vit_jax.tools.memory_plan and its arithmetic, vit_jax.tools.memory: per-device bytes from
eval_shape and the real shardings on abstract meshes; the verdict for a device's memory and the
largest per-device batch that fits."""

import json
import os
import subprocess
import sys

import pytest

from vit_jax import models
from vit_jax.tools import memory, memory_plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bytes(model='ViT-B_16', batch=64, mesh='data:-1', devices=8, strategy='replicate', **kw):
  return memory.plan(model, batch, mesh, devices, strategy, **kw)['bytes_per_device']


def test_vit_b16_parameter_count_and_replicated_bytes():
  p = memory.plan('ViT-B_16', 64, 'data:-1', 8, 'replicate')
  assert p['num_params'] == 86_567_656
  assert p['bytes_per_device']['params'] == 4 * 86_567_656  # float32, whole copy on every device.
  assert p['bytes_per_device']['grads'] == 4 * 86_567_656
  assert p['per_device_batch'] == 8 and p['mesh'] == {'data': 8}


def test_fsdp_over_8_holds_about_an_eighth_of_the_parameters():
  replicated = _bytes()['params']
  sharded = _bytes(mesh='fsdp:-1', strategy='fsdp')
  # Arrays under fsdp_min_size (biases, norms, the 197x768 position embedding) stay whole on every
  # device.
  assert replicated / 8 < sharded['params'] < 1.05 * replicated / 8
  assert sharded['grads'] == sharded['params']


@pytest.mark.parametrize(
  'strategy,mesh', [('replicate', 'data:-1'), ('fsdp', 'fsdp:-1'), ('fsdp+tp', 'fsdp:2,model:4')]
)
def test_adamw_state_is_two_param_copies_sharded_like_the_params(strategy, mesh):
  sizes = _bytes(mesh=mesh, strategy=strategy)
  # mu and nu in float32, plus the int32 step counters (replicated).
  assert 0 <= sizes['opt_state'] - 2 * sizes['params'] <= 16


def test_sgd_state_is_one_param_copy():
  sizes = _bytes(mesh='fsdp:-1', strategy='fsdp', optimizer='sgd')
  assert 0 <= sizes['opt_state'] - sizes['params'] <= 16


def test_tp_over_model_4_splits_attention_and_mlp_kernels():
  replicated = _bytes(mesh='data:2,model:4', strategy='replicate')
  tp = _bytes(mesh='data:2,model:4', strategy='tp')
  # Block kernels are ~98% of ViT-B/16; embedding, head and position embedding stay whole.
  assert 0.25 * replicated['params'] < tp['params'] < 0.3 * replicated['params']
  # Same per-device batch, heads and MLP split.
  assert tp['activations'] < 0.6 * replicated['activations']


def test_activation_estimate_matches_the_documented_formula():
  cfg = models.get_model_config('ViT-B_16')
  t, d, m, h, layers, b, s = 197, 768, 3072, 12, 12, 4, 2
  # bfloat16 compute, model axis 2: scores kept as the float32 softmax output and its bfloat16 copy
  # (6 bytes).
  block = b * (4 * t * d * s + ((4 * t * d + 2 * t * m) * s + h * t * t * 6) // 2)
  stem = b * s * (t * d + 3 * 224 * 224)
  assert memory.activation_bytes(cfg, 224, b, 2, 'bfloat16', 'none') == layers * block + stem
  assert (
    memory.activation_bytes(cfg, 224, b, 2, 'bfloat16', 'full')
    == layers * b * s * t * d + block + stem
  )
  # float32: one copy of everything, no model split.
  f32_block = b * 4 * (8 * t * d + 2 * t * m + h * t * t)
  assert memory.activation_bytes(cfg, 224, b, 1, 'float32', 'none') == layers * f32_block + 2 * stem


def test_mixer_b16_plans_from_the_command_line_and_tp_splits_its_mlps():
  cmd = [
    sys.executable,
    '-m',
    'vit_jax.tools.memory_plan',
    '--model=Mixer-B_16',
    '--batch=64',
    '--mesh=data:2,model:4',
    '--devices=8',
    '--strategy=tp',
    '--format=json',
  ]
  tp = json.loads(
    subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout
  )
  # vision_transformer's models_test count (224 px, 1000 classes).
  assert tp['num_params'] == 59_880_472
  replicated = _bytes('Mixer-B_16', mesh='data:2,model:4')
  # The MLP kernels are ~97% of Mixer-B/16; the stem, norms, output biases and head stay whole.
  assert 0.25 * replicated['params'] < tp['bytes_per_device']['params'] < 0.3 * replicated['params']
  # Both MLPs' hidden units split.
  assert tp['bytes_per_device']['activations'] < 0.5 * replicated['activations']


def test_mixer_activation_estimate_matches_the_documented_formula():
  cfg = models.get_model_config('Mixer-B_16')
  t, c, dt, dc, layers, b, s = 196, 768, 384, 3072, 12, 4, 2
  hidden = (c * dt + t * dc) // 2  # Model axis 2.
  block = b * s * (4 * t * c + 2 * hidden)
  stem = b * s * (t * c + 3 * 224 * 224)
  assert memory.activation_bytes(cfg, 224, b, 2, 'bfloat16', 'none') == layers * block + stem
  assert (
    memory.activation_bytes(cfg, 224, b, 2, 'bfloat16', 'full')
    == layers * b * s * t * c + block + stem
  )
  assert memory.activation_bytes(cfg, 224, b, 2, 'bfloat16', 'dots') == (
    layers * b * s * (3 * t * c + hidden) + block + stem
  )


def test_mixer_estimate_is_below_xla_by_less_than_its_documented_factor():
  """CPU compile of a tiny Mixer's float32 gradient: XLA's temp bytes per extra block over the
  estimate's."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  config = lambda blocks: {
    'model_name': 't',
    'patches': {'size': (4, 4)},
    'hidden_dim': 64,
    'num_blocks': blocks,
    'tokens_mlp_dim': 32,
    'channels_mlp_dim': 256,
  }

  def temp_bytes(blocks, batch=8, size=32):
    model = models.MlpMixer(num_classes=10, **config(blocks))
    x = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))[
      'params'
    ]
    grad = jax.jit(jax.grad(lambda p, x: jnp.mean(model.apply({'params': p}, x, train=True))))
    return grad.lower(params, x).compile().memory_analysis().temp_size_in_bytes

  xla = (temp_bytes(4) - temp_bytes(2)) / 2
  estimate = memory.activation_bytes(
    config(2), 32, 8, 1, 'float32', 'none'
  ) - memory.activation_bytes(config(1), 32, 8, 1, 'float32', 'none')
  assert 1.0 <= xla / estimate < 1.7, (xla, estimate)


def test_large_presets_plan_with_eval_shape_only():
  g = memory.plan('ViT-g_14', 1024, 'fsdp:-1', 128, 'fsdp', remat='full')
  # 'Scaling Vision Transformers': ViT-g/14 has 1.01B parameters.
  assert 1.00e9 < g['num_params'] < 1.02e9
  big = memory.plan('ViT-22B_14', 1024, 'fsdp:-1,model:4', 128, 'fsdp+tp', remat='full')
  assert 21e9 < big['num_params'] < 23e9
  # Small arrays (norms, biases) stay whole or split over 'model' only: ~1.5% on top of an even
  # split.
  assert big['bytes_per_device']['params'] < 1.02 * 4 * big['num_params'] / 128


@pytest.mark.parametrize(
  'mesh,devices,strategy,batch,match',
  [
    ('fsdp:16', 128, 'fsdp', 128, 'uses 16 devices, but there are 128'),
    ('fsdp:-1,model:3', 8, 'fsdp+tp', 64, '8 devices do not divide by 3'),
    ('data:-1', 8, 'fsdp', 64, "needs a 'fsdp' mesh axis"),
    ('fsdp:-1', 8, 'fsdp+tp', 64, "needs a 'model' mesh axis"),
    ('data:-1,model:5', 10, 'tp', 10, "cannot be split over mesh axis 'model'"),
    ('fsdp:-1', 8, 'fsdp', 100, 'does not split evenly'),
    ('fsdp', 8, 'fsdp', 64, 'Bad mesh'),
    ('pipe:-1', 8, 'replicate', 64, 'unknown or repeated axes'),
  ],
)
def test_bad_mesh_or_sizes_raise_clear_errors(mesh, devices, strategy, batch, match):
  with pytest.raises(ValueError, match=match):
    memory.plan('ViT-B_16', batch, mesh, devices, strategy)


def test_cli_prints_json():
  cmd = [
    sys.executable,
    '-m',
    'vit_jax.tools.memory_plan',
    '--model=ViT-B_16',
    '--batch=256',
    '--mesh=fsdp:-1',
    '--devices=8',
    '--strategy=fsdp',
    '--format=json',
  ]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
  p = json.loads(out.stdout)
  assert p['num_params'] == 86_567_656 and p['per_device_batch'] == 32
  sizes = p['bytes_per_device']
  assert sizes['total'] == sum(sizes[k] for k in ('params', 'opt_state', 'grads', 'activations'))


def test_cli_error_is_a_message_not_a_traceback():
  cmd = [
    sys.executable,
    '-m',
    'vit_jax.tools.memory_plan',
    '--mesh=fsdp:16',
    '--devices=8',
    '--strategy=fsdp',
  ]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1
  assert 'memory_plan: error:' in out.stderr and 'Traceback' not in out.stderr


def test_memory_plan_verdict_and_largest_batch():
  p = memory.plan('ViT-B_16', 512, 'data:-1', 8, 'replicate', remat='dots')
  largest = memory.max_batch_per_device(p, 3 * memory.GIB)
  assert memory_plan.verdict(p, 80).startswith('fits in 80 GiB per device')
  assert memory_plan.verdict(p, 3) == (
    'does NOT fit in 3 GiB per device '
    f'({p["bytes_per_device"]["total"] / memory.GIB:.2f} GiB); the largest per-device '
    f'batch that fits is {largest} (use config.accum_steps to reach the global batch).'
  )
  assert 0 < largest < 64
  assert memory.hbm_gib('TPU v5p chip') == 95 and memory.hbm_gib('NVIDIA H100 80GB HBM3') == 80
  with pytest.raises(ValueError, match="Unknown device kind 'CPU'"):
    memory.hbm_gib('CPU')
  none, dots, full = (
    memory.plan('ViT-B_16', 512, 'data:-1', 8, 'replicate', remat=r)['bytes_per_device'][
      'activations'
    ]
    for r in ('none', 'dots', 'full')
  )
  assert full < dots < none
