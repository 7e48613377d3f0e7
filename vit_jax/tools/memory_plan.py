"""Per-device training memory of a ViT or MLP-Mixer preset on a device mesh, planned without any
devices: the command line, its output and the README table. The arithmetic, and which parts are
exact and which an estimate: vit_jax/tools/memory.py.

  python -m vit_jax.tools.memory_plan --model=ViT-H_14 --batch=4096 --mesh=fsdp:-1 --devices=128 \
      --strategy=fsdp
  python -m vit_jax.tools.memory_plan ... --format=json   # raw bytes
  python -m vit_jax.tools.memory_plan --table             # the README table (presets x machines)

--mesh is 'axis:size,...' over the axes of vit_jax/sharding.py (data, fsdp, model); -1 = the rest of
--devices.

With --hbm_gib (or --device_kind, e.g. 'TPU v4' or 'H100', whose HBM is in memory.HBM_GIB) the plan
ends with a verdict: whether the total fits and the largest per-device batch that does (reach a
larger global batch with config.accum_steps).
"""

import json
import sys

from absl import app, flags

from vit_jax import models, sharding
from vit_jax.tools import memory
from vit_jax.training import optim

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


def human(n: int) -> str:
  return f'{n / memory.GIB:.2f} GiB' if n >= memory.GIB else f'{n / 2**20:.1f} MiB'


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


def verdict(p: dict, hbm: float) -> str:
  """One line: whether the plan fits `hbm` GiB per device, and the largest per-device batch that
  does."""
  total = p['bytes_per_device']['total']
  largest = memory.max_batch_per_device(p, int(hbm * memory.GIB))
  if total <= hbm * memory.GIB:
    share = 100 * total / (hbm * memory.GIB)
    return (
      f'fits in {hbm:g} GiB per device ({total / memory.GIB:.2f} GiB, {share:.0f}%); '
      f'the largest per-device batch that fits is {largest}.'
    )
  advice = (
    f'the largest per-device batch that fits is {largest} '
    '(use config.accum_steps to reach the global batch)'
    if largest
    else 'even one example per device does not fit: shard further (fsdp, tp) or use remat'
  )
  return f'does NOT fit in {hbm:g} GiB per device ({total / memory.GIB:.2f} GiB); {advice}.'


def table(image_size: int = 224, optimizer: str = 'adamw', dtype: str = 'bfloat16') -> str:
  """Markdown tables of GiB per device for TABLE_MODELS x TABLE_MACHINES x (replicate, fsdp,
  fsdp+tp)."""
  out = [
    f'GiB per device, {image_size} px, {optimizer}, {dtype} compute, float32 '
    'params/grads/optimizer state. Activations are an estimate (see '
    "vit_jax/tools/memory.py). 'max b/dev': largest per-device (micro-)batch whose total "
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
        p = memory.plan(
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
        gib = [f'{sizes[k] / memory.GIB:.2f}' for k in PARTS + ('total',)]
        fits = 'yes' if sizes['total'] <= hbm * memory.GIB else '**no**'
        out.append(
          f'| {model_name} | {batch} | {remat} | {strategy} ({mesh}) | {p["per_device_batch"]} | '
          f'{" | ".join(gib)} | {fits} | {memory.max_batch_per_device(p, hbm * memory.GIB)} |'
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
  'dtype', 'bfloat16', list(memory.DTYPES), 'Compute dtype (params stay float32).'
)
_REMAT = flags.DEFINE_enum(
  'remat',
  'none',
  list(memory.REMAT),
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
  f"Instead of --hbm_gib: a device kind such as 'TPU v4' or 'H100' ({', '.join(memory.HBM_GIB)}).",
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
    p = memory.plan(
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
      else memory.hbm_gib(_DEVICE_KIND.value)
      if _DEVICE_KIND.value
      else None
    )
  except ValueError as e:
    sys.exit(f'memory_plan: error: {e}')
  if hbm is not None:
    p['hbm_gib'] = hbm
    p['fits'] = p['bytes_per_device']['total'] <= hbm * memory.GIB
    p['max_per_device_batch'] = memory.max_batch_per_device(p, int(hbm * memory.GIB))
  text = json.dumps(p, indent=2) if _FORMAT.value == 'json' else format_plan(p)
  print(
    text + (f'\nverdict: {verdict(p, hbm)}' if hbm is not None and _FORMAT.value != 'json' else '')
  )


if __name__ == '__main__':
  app.run(main)
