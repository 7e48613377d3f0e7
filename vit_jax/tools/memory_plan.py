"""Per-device training memory of a ViT or MLP-Mixer preset on a device mesh, planned without any
devices.

  python -m vit_jax.tools.memory_plan --model=ViT-H_14 --batch=4096 --mesh=fsdp:-1 --devices=128 --strategy=fsdp
  python -m vit_jax.tools.memory_plan ... --format=json     # raw bytes
  python -m vit_jax.tools.memory_plan --table               # the README table (several presets and machines)

--mesh is 'axis:size,...' over the axes of vit_jax/sharding.py (data, fsdp, model); -1 = the rest of
--devices.

Exact (from the code that trains): parameters, optimizer state and gradients. Shapes come from
`jax.eval_shape` of the real model init and of `tx.init` (tx from `optim.make_optimizer` on
vit_jax/configs/common.py with the optimizer name overridden); per-device sizes come from the real
`sharding.param_specs` on a `jax.sharding.AbstractMesh` of the requested shape, the optimizer state
following the parameters (`sharding.follow_params`: subtrees shaped like the params take their
shardings, counters are replicated). Gradients: the params' shapes, shardings and float32.

Estimate (analytic): activations saved for the backward pass of a standard implementation. With
  b = batch / (data * fsdp)  the per-device batch,  T tokens (patch grid + 1 class token),  D
  hidden,  M mlp_dim, H heads,  L layers,  S image size,  t = the 'model' axis size when the
  strategy uses tp (else 1), s = bytes per element of the compute dtype (--dtype: 2 or 4),  p = 4 +
  s if s < 4 else 4,
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
  A_block = b * s * (4*T*C + 2*(C*Dt + T*Dc) / t)   bytes: 4*T*C         the inputs and outputs of
    its two LayerNorms (the residual stream is not split over 'model'), 2*C*Dt / t    the
    token-mixing MLP's hidden, before and after the GELU (each of C channels: Dt units), 2*T*Dc /
    t    the channel-mixing MLP's hidden, before and after the GELU (each of T tokens: Dc units);
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

With --hbm_gib (or --device_kind, e.g. 'TPU v4' or 'H100', whose HBM is in HBM_GIB) the plan ends
with a verdict: whether the total fits and the largest per-device batch that does (reach a larger
global batch with config.accum_steps).
"""

import functools
import json
import math
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh

from vit_jax.configs import common
from vit_jax import models, sharding
from vit_jax.training import optim, state
from vit_jax.models import blocks

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
PARTS = ('params', 'opt_state', 'grads', 'activations')

# The --table rows: (machine, JAX devices, HBM GiB per device, fsdp+tp mesh) and (model, global
# batch, remat).
TABLE_MACHINES = (
  # 'v4-128' counts TensorCores: 64 chips, one JAX device each.
  ('TPU v4-128', 64, 32, 'fsdp:-1,model:4'),
  ('TPU v5p-256', 128, 95, 'fsdp:-1,model:4'),  # 128 chips.
  ('8x H100', 8, 80, 'fsdp:2,model:4'),
)
TABLE_MODELS = (
  ('ViT-L_16', 4096, 'none'),
  ('ViT-H_14', 4096, 'none'),
  ('ViT-g_14', 4096, 'full'),
  ('ViT-22B_14', 1024, 'full'),
)


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
  leaves, shards = jax.tree.leaves(tree), jax.tree.leaves(shardings)
  assert len(leaves) == len(shards), (len(leaves), len(shards))
  return sum(
    math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize for x, s in zip(leaves, shards)
  )


def mixer_activation_bytes(
  model_config, image_size: int, batch: int, tp: int, dtype: str, remat: str
) -> int:
  """The MLP-Mixer estimate of the module docstring, for a per-device batch `batch`."""
  rows, cols = models.token_grid(model_config, image_size)
  tokens, c = rows * cols, model_config['hidden_dim']
  dt, dc, layers = (
    model_config['tokens_mlp_dim'],
    model_config['channels_mlp_dim'],
    model_config['num_blocks'],
  )
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
  d, tr = model_config.hidden_size, model_config.transformer
  m, h, layers = tr.mlp_dim, tr.num_heads, tr.num_layers
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
  model_config, params, opt_state = (
    setup.config.model,
    setup.abstract['params'],
    setup.abstract['opt_state'],
  )
  param_shardings, opt_shardings = setup.shardings['params'], setup.shardings['opt_state']
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


def human(n: int) -> str:
  return f'{n / GIB:.2f} GiB' if n >= GIB else f'{n / 2**20:.1f} MiB'


def format_plan(p: dict) -> str:
  mesh = ','.join(f'{k}:{v}' for k, v in p['mesh'].items())
  lines = [
    f'{p["model"]}: {p["num_params"]:,} parameters; batch {p["batch"]} = {p["per_device_batch"]} '
    f'per device; mesh {mesh} ({p["devices"]} devices), strategy {p["strategy"]}',
    f'{p["image_size"]} px, {p["optimizer"]}, {p["dtype"]} compute, remat {p["remat"]}',
    'bytes per device:',
  ]
  for key, label in (
    ('params', 'parameters'),
    ('opt_state', 'optimizer state'),
    ('grads', 'gradients'),
    ('activations', 'activations (estimate)'),
    ('total', 'total'),
  ):
    lines.append(f'  {label:<24}{human(p["bytes_per_device"][key]):>12}')
  return '\n'.join(lines)


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


def verdict(p: dict, hbm: float) -> str:
  """One line: whether the plan fits `hbm` GiB per device, and the largest per-device batch that
  does."""
  total, largest = p['bytes_per_device']['total'], max_batch_per_device(p, int(hbm * GIB))
  if total <= hbm * GIB:
    return (
      f'fits in {hbm:g} GiB per device ({total / GIB:.2f} GiB, {100 * total / (hbm * GIB):.0f}%); '
      f'the largest per-device batch that fits is {largest}.'
    )
  advice = (
    f'the largest per-device batch that fits is {largest} '
    '(use config.accum_steps to reach the global batch)'
    if largest
    else 'even one example per device does not fit: shard further (fsdp, tp) or use remat'
  )
  return f'does NOT fit in {hbm:g} GiB per device ({total / GIB:.2f} GiB); {advice}.'


def max_batch_per_device(p: dict, hbm_bytes: int) -> int:
  """Largest per-device (micro-)batch whose estimate fits `hbm_bytes` (activations are linear in the
  batch)."""
  sizes = p['bytes_per_device']
  per_example = sizes['activations'] / p['per_device_batch']
  return max(0, int((hbm_bytes - sizes['total'] + sizes['activations']) // per_example))


def table(image_size: int = 224, optimizer: str = 'adamw', dtype: str = 'bfloat16') -> str:
  """Markdown tables of GiB per device for TABLE_MODELS x TABLE_MACHINES x (replicate, fsdp,
  fsdp+tp)."""
  out = [
    f'GiB per device, {image_size} px, {optimizer}, {dtype} compute, float32 '
    'params/grads/optimizer state. Activations are an estimate (see '
    "vit_jax/tools/memory_plan.py). 'max b/dev': largest per-device (micro-)batch whose total "
    'fits in HBM (use config.accum_steps to reach the global batch).',
    '',
  ]
  for machine, devices, hbm, tp_mesh in TABLE_MACHINES:
    out += [
      f'**{machine}**: {devices} JAX devices, {hbm} GiB HBM each',
      '',
      '| model | batch | remat | strategy (mesh) | b/dev | params | opt state | grads | '
      'activations | total | fits | max b/dev |',
      '|---|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|',
    ]
    for model_name, batch, remat in TABLE_MODELS:
      for strategy, mesh in (('replicate', 'data:-1'), ('fsdp', 'fsdp:-1'), ('fsdp+tp', tp_mesh)):
        p = plan(
          model_name,
          batch,
          mesh,
          devices,
          strategy,
          image_size=image_size,
          optimizer=optimizer,
          dtype=dtype,
          remat=remat,
        )
        sizes = p['bytes_per_device']
        gib = [f'{sizes[k] / GIB:.2f}' for k in PARTS + ('total',)]
        fits = 'yes' if sizes['total'] <= hbm * GIB else '**no**'
        out.append(
          f'| {model_name} | {batch} | {remat} | {strategy} ({mesh}) | {p["per_device_batch"]} | '
          f'{" | ".join(gib)} | {fits} | {max_batch_per_device(p, hbm * GIB)} |'
        )
    out.append('')
  return '\n'.join(out)


_MODEL = flags.DEFINE_string('model', 'ViT-B_16', f'Preset name: {", ".join(models.MODEL_NAMES)}.')
_BATCH = flags.DEFINE_integer('batch', 512, 'Global batch size.')
_MESH = flags.DEFINE_string(
  'mesh', 'data:-1', "Mesh 'axis:size,...' over data, fsdp, model; -1 = the rest."
)
_DEVICES = flags.DEFINE_integer(
  'devices', 8, 'Number of devices (JAX devices: chips on TPU v4/v5p, GPUs).'
)
_STRATEGY = flags.DEFINE_enum(
  'strategy', 'replicate', list(sharding.STRATEGIES), 'Parameter sharding strategy.'
)
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Training image size (pixels per side).')
_OPTIMIZER = flags.DEFINE_enum(
  'optimizer', 'adamw', list(optim.OPTIMIZERS), 'Optimizer (vit_jax/configs/common.py defaults).'
)
_DTYPE = flags.DEFINE_enum(
  'dtype', 'bfloat16', list(DTYPES), 'Compute dtype (params stay float32).'
)
_REMAT = flags.DEFINE_enum(
  'remat',
  'none',
  list(REMAT),
  "'full': only encoder-block inputs are kept for backward; 'dots': matmul outputs too.",
)
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 1000, 'Classifier outputs.')
_FORMAT = flags.DEFINE_enum(
  'format', 'table', ['table', 'json'], 'Human-readable table or JSON (raw bytes).'
)
_HBM_GIB = flags.DEFINE_float(
  'hbm_gib', None, 'HBM per device in GiB: adds a verdict (fits or not, largest batch).'
)
_DEVICE_KIND = flags.DEFINE_string(
  'device_kind',
  None,
  f"Instead of --hbm_gib: a device kind such as 'TPU v4' or 'H100' ({', '.join(HBM_GIB)}).",
)
_TABLE = flags.DEFINE_bool(
  'table', False, 'Print the README markdown table (uses --image_size/--optimizer/--dtype).'
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    if _TABLE.value:
      print(table(_IMAGE_SIZE.value, _OPTIMIZER.value, _DTYPE.value))
      return
    p = plan(
      _MODEL.value,
      _BATCH.value,
      _MESH.value,
      _DEVICES.value,
      _STRATEGY.value,
      image_size=_IMAGE_SIZE.value,
      optimizer=_OPTIMIZER.value,
      dtype=_DTYPE.value,
      remat=_REMAT.value,
      num_classes=_NUM_CLASSES.value,
    )
    hbm = (
      _HBM_GIB.value
      if _HBM_GIB.value is not None
      else hbm_gib(_DEVICE_KIND.value)
      if _DEVICE_KIND.value
      else None
    )
  except ValueError as e:
    sys.exit(f'memory_plan: error: {e}')
  if hbm is not None:
    p['hbm_gib'] = hbm
    p['fits'] = p['bytes_per_device']['total'] <= hbm * GIB
    p['max_per_device_batch'] = max_batch_per_device(p, int(hbm * GIB))
  text = json.dumps(p, indent=2) if _FORMAT.value == 'json' else format_plan(p)
  print(
    text + (f'\nverdict: {verdict(p, hbm)}' if hbm is not None and _FORMAT.value != 'json' else '')
  )


if __name__ == '__main__':
  app.run(main)
