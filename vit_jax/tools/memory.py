"""Per-device training memory of a ViT or MLP-Mixer preset on a device mesh, without any devices:
the arithmetic of `python -m vit_jax.tools.memory_plan` (its command line, output and README table
are in vit_jax/tools/memory_plan.py).

Exact (from the code that trains): parameters, optimizer state and gradients. Shapes come from
`jax.eval_shape` of the real model init and of `tx.init` (tx from `optim.make_optimizer` on
vit_jax/configs/common.py with the optimizer name overridden); per-device sizes come from the real
`sharding.param_specs` on a `jax.sharding.AbstractMesh` of the requested shape, the optimizer state
following the parameters (`sharding.follow_params`: subtrees shaped like the params take their
shardings, counters are replicated). Gradients: the params' shapes, shardings and float32.

Estimate (analytic): activations saved for the backward pass of a standard implementation. With
  b = batch / (data * fsdp)  the per-device batch,  T tokens (patch grid + 1 class token),
  D hidden,  M mlp_dim,  H heads,  L layers,  S image size,
  t = the 'model' axis size when the strategy uses tp (else 1),
  s = bytes per element of the compute dtype (--dtype: 2 or 4),  p = 4 + s if s < 4 else 4,
one transformer block saves
  A_block = b * (4*T*D*s + ((4*T*D + 2*T*M)*s + H*T*T*p) / t)   bytes:
    4*T*D*s      the inputs and outputs of its two LayerNorms (the residual stream is not split over
                 'model'),
    4*T*D*s / t  q, k, v and the attention output before the out projection,
    2*T*M*s / t  the MLP hidden before and after the GELU,
    H*T*T*p / t  the attention probabilities: this model's softmax runs in float32, so its float32
                 output (for the softmax backward) and, in bfloat16, the compute-dtype copy (for the
                 second matmul);
and the whole network
  --remat=none:  L * A_block                   + b*s*(T*D + 3*S*S)
  --remat=full:  L * b*s*T*D + A_block         + b*s*(T*D + 3*S*S)
  --remat=dots:  L * b*s*(3*T*D + (3*T*D + T*M)/t) + A_block + b*s*(T*D + 3*S*S)
(with full remat only each block's input is kept and one block is recomputed at a time; with 'dots'
the outputs of the matmuls without batch dimensions are kept too: q, k, v (3*T*D/t), the attention
out projection and the second MLP matmul (2*T*D, summed over 'model'), the first MLP matmul (T*M/t);
the last term is the patch-embedding output and the input images). It is an estimate, not XLA's
peak: it leaves out temporaries of the backward pass (activation gradients), fusion choices (XLA may
keep more copies of the T*T scores, or fewer), dropout masks (presets B/L/H have dropout 0.1), a
hybrid's ResNet stem, the logits, and under FSDP the all-gathered weights (and their gradients) of
the block being computed. Check against XLA (CPU compile of the ViT-B/16 gradient in float32, temp
bytes per extra block): 1.12x the estimate at 112 px, where the T*D and T*M terms dominate, and
1.65x at 224 px, where the CPU backend kept ~5 copies of the T*T scores; GPU/TPU fuse more.
--remat=full / dots plan for the model's `remat_policy='full'` / `'dots'` (`nn.remat` around each
encoder block).

An MLP-Mixer (--model=Mixer-B_16 ...), with T tokens (the patch grid; no class token), C hidden_dim,
Dt tokens_mlp_dim, Dc channels_mlp_dim, L blocks and b, S, t, s as above: one block saves
  A_block = b * s * (4*T*C + 2*(C*Dt + T*Dc) / t)   bytes:
    4*T*C         the inputs and outputs of its two LayerNorms (the residual stream is not split
                  over 'model'),
    2*C*Dt / t    the token-mixing MLP's hidden, before and after the GELU (each of C channels: Dt
                  units),
    2*T*Dc / t    the channel-mixing MLP's hidden, before and after the GELU (each of T tokens: Dc
                  units);
and the whole network
  --remat=none:  L * A_block                                + b*s*(T*C + 3*S*S)
  --remat=full:  L * b*s*T*C + A_block                      + b*s*(T*C + 3*S*S)
  --remat=dots:  L * b*s*(3*T*C + (C*Dt + T*Dc)/t) + A_block + b*s*(T*C + 3*S*S)
('dots' keeps each block's input, the outputs of both MLPs' second matmuls (2*T*C, summed over
'model') and of their first matmuls; the last term is the stem's output and the input images). A
Mixer has no T*T attention scores, so its estimate is linear in the tokens. Left out as above:
backward temporaries, fusion choices, the logits, the all-gathered weights under FSDP. Check against
XLA (CPU compile of the gradient in float32, temp bytes per extra block): 1.38x the estimate for
Mixer-B/16 at 224 px, 1.58x for a tiny Mixer (tested below 1.7x); the CPU backend kept a third copy
of each MLP hidden (the GELU's tanh) and the transposed copies of the token-mixing input/output. (On
CPU, XLA's temp bytes are the same with remat as without, so the remat rows are not checked this
way.)

`max_batch_per_device`: the largest per-device batch whose total fits a device's memory (HBM_GIB
gives it per device kind, `hbm_gib`).
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import AbstractMesh
import numpy as np

from vit_jax import models, sharding
from vit_jax.configs import common
from vit_jax.models import blocks
from vit_jax.training import state

DTYPES = state.DTYPES
REMAT = blocks.REMAT_POLICIES
# HBM per JAX device (GiB), by device kind as jax.devices()[0].device_kind names it (matched as in
# vit_jax.models.flops).
HBM_GIB = {
  'TPU v2': 8,
  'TPU v3': 16,
  'TPU v4': 32,
  'TPU v5 lite': 16,
  'TPU v5p': 95,
  'TPU v5': 95,
  'TPU v6 lite': 32,
  'A100': 80,
  'H100': 80,
  'H100 NVL': 94,
  'H200': 141,
  'B200': 180,
}
GIB = 2**30


def parse_mesh(spec: str) -> tuple[tuple[str, int], ...]:
  """'fsdp:16,model:8' -> (('fsdp', 16), ('model', 8))."""
  axes = []
  for part in spec.split(','):
    name, sep, size = part.strip().partition(':')
    try:
      axes.append((name.strip(), int(size)))
    except ValueError:
      raise ValueError(
        f"Bad mesh {spec!r}: expected 'axis:size,...' such as 'fsdp:-1' or 'fsdp:16,model:8' "
        f'(axes {", ".join(sharding.AXES)}).'
      ) from None
    if not sep or not name.strip():
      raise ValueError(f"Bad mesh {spec!r}: expected 'axis:size,...'.")
  return tuple(axes)


def abstract_mesh(spec: str, devices: int) -> AbstractMesh:
  names, sizes = sharding.mesh_shape(parse_mesh(spec), devices)
  return AbstractMesh(sizes, names)


@functools.lru_cache(maxsize=16)
def _setup(
  model_name, image_size, num_classes, dtype, optimizer, mesh, strategy, fsdp_min_size
) -> state.Setup:
  """The trainer's own model, optimizer and state layout (vit_jax.training.state.Setup) on an
  abstract mesh: shapes and shardings from eval_shape only."""
  config = common.get_config()
  config.model = models.get_model_config(model_name)
  config.update(
    image_size=image_size, dtype=dtype, sharding_strategy=strategy, fsdp_min_size=fsdp_min_size
  )
  config.optimizer.name = optimizer
  return state.Setup.create(config, num_classes, mesh)


def _device_bytes(tree, shardings) -> int:
  """Bytes one device holds of `tree` (abstract arrays) laid out by `shardings` (same structure)."""
  leaves = jax.tree.leaves(tree)
  shards = jax.tree.leaves(shardings)
  assert len(leaves) == len(shards), (len(leaves), len(shards))
  return sum(
    math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize for x, s in zip(leaves, shards)
  )


def mixer_activation_bytes(
  model_config, image_size: int, batch: int, tp: int, dtype: str, remat: str
) -> int:
  """The MLP-Mixer estimate of the module docstring, for a per-device batch `batch`."""
  rows, cols = models.token_grid(model_config, image_size)
  tokens = rows * cols
  c = model_config['hidden_dim']
  dt = model_config['tokens_mlp_dim']
  dc = model_config['channels_mlp_dim']
  layers = model_config['num_blocks']
  s = np.dtype(DTYPES[dtype]).itemsize
  hidden = (c * dt + tokens * dc) // tp  # The two MLPs' hidden units on one device.
  block = batch * s * (4 * tokens * c + 2 * hidden)
  stem = batch * s * (tokens * c + 3 * image_size * image_size)
  if remat == 'full':
    return layers * batch * s * tokens * c + block + stem
  if remat == 'dots':
    return layers * batch * s * (3 * tokens * c + hidden) + block + stem
  return layers * block + stem


def activation_bytes(
  model_config, image_size: int, batch: int, tp: int, dtype: str, remat: str
) -> int:
  """The analytic estimate of the module docstring (a ViT's, or an MLP-Mixer's), for a per-device
  batch `batch`."""
  if remat not in REMAT:
    raise ValueError(f'Unknown remat {remat!r}; valid: {", ".join(REMAT)}.')
  if models.is_mixer(model_config):
    return mixer_activation_bytes(model_config, image_size, batch, tp, dtype, remat)
  rows, cols = models.token_grid(model_config, image_size)
  tokens = rows * cols + (1 if model_config.classifier.startswith('token') else 0)
  d = model_config.hidden_size
  tr = model_config.transformer
  m = tr.mlp_dim
  h = tr.num_heads
  layers = tr.num_layers
  s = np.dtype(DTYPES[dtype]).itemsize
  # float32 softmax output, plus its compute-dtype copy when that is narrower.
  p = 4 + s if s < 4 else 4
  block = batch * (
    4 * tokens * d * s + ((4 * tokens * d + 2 * tokens * m) * s + h * tokens * tokens * p) // tp
  )
  stem = batch * s * (tokens * d + 3 * image_size * image_size)
  if remat == 'full':
    return layers * batch * s * tokens * d + block + stem
  if remat == 'dots':
    return (
      layers * batch * s * (3 * tokens * d + (3 * tokens * d + tokens * m) // tp) + block + stem
    )
  return layers * block + stem


def plan(
  model_name: str,
  batch: int,
  mesh_spec: str,
  devices: int,
  strategy: str,
  *,
  image_size: int = 224,
  optimizer: str = 'adamw',
  dtype: str = 'bfloat16',
  remat: str = 'none',
  num_classes: int = 1000,
  fsdp_min_size: int = 2**18,
) -> dict:
  """Per-device bytes of params, optimizer state, gradients and activations (see module doc); raises
  ValueError."""
  if dtype not in DTYPES:
    raise ValueError(f'Unknown dtype {dtype!r}; valid: {", ".join(DTYPES)}.')
  mesh = abstract_mesh(mesh_spec, devices)
  setup = _setup(
    model_name, image_size, num_classes, dtype, optimizer, mesh, strategy, fsdp_min_size
  )
  model_config = setup.config.model
  params = setup.abstract['params']
  opt_state = setup.abstract['opt_state']
  param_shardings = setup.shardings['params']
  opt_shardings = setup.shardings['opt_state']
  shards = sharding.batch_size_per_step(mesh)
  if batch <= 0 or batch % shards:
    raise ValueError(
      f'Global batch {batch} does not split evenly over the {shards} '
      f'batch shards (data * fsdp) of mesh {dict(mesh.shape)}.'
    )
  tp = mesh.shape['model'] if 'tp' in strategy.split('+') else 1
  grads = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), params)
  sizes = {
    'params': _device_bytes(params, param_shardings),
    'opt_state': _device_bytes(opt_state, opt_shardings),
    'grads': _device_bytes(grads, param_shardings),
    'activations': activation_bytes(model_config, image_size, batch // shards, tp, dtype, remat),
  }
  sizes['total'] = sum(sizes.values())
  return {
    'model': model_name,
    'batch': batch,
    'per_device_batch': batch // shards,
    'mesh': dict(mesh.shape),
    'devices': devices,
    'strategy': strategy,
    'image_size': image_size,
    'optimizer': optimizer,
    'dtype': dtype,
    'remat': remat,
    'num_classes': num_classes,
    'num_params': sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
    'bytes_per_device': sizes,
  }


def hbm_gib(device_kind: str) -> float:
  """HBM GiB per device of `device_kind` (longest matching HBM_GIB key); ValueError naming the known
  kinds."""
  kind = device_kind.lower()
  for key in sorted(HBM_GIB, key=len, reverse=True):
    if key.lower() in kind:
      return HBM_GIB[key]
  raise ValueError(
    f'Unknown device kind {device_kind!r}; known: {", ".join(HBM_GIB)} (or give --hbm_gib).'
  )


def max_batch_per_device(p: dict, hbm_bytes: int) -> int:
  """Largest per-device (micro-)batch whose estimate fits `hbm_bytes` (activations are linear in the
  batch)."""
  sizes = p['bytes_per_device']
  per_example = sizes['activations'] / p['per_device_batch']
  return max(0, int((hbm_bytes - sizes['total'] + sizes['activations']) // per_example))
