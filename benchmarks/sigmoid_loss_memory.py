"""Per-device memory and CPU step time of SigLIP's sigmoid loss, dense against chunked.

  python benchmarks/sigmoid_loss_memory.py [--batches=1024,4096,16384] [--dim=128] [--devices=8] \\
      [--steps=3]

For each global batch B: the loss and its gradients w.r.t. both embeddings, t and b
(`jax.value_and_grad` of vit_jax.tasks.contrastive.sigmoid_loss, impl='dense' and impl='chunked'),
jitted on a mesh of --devices CPU devices (one 'data' axis; XLA_FLAGS forces the device count), with
[B, dim] float32 L2-normalised embeddings split over it. Memory comes from the compiled program
(`.lower(...).compile().memory_analysis()`, per device: XLA compiles one SPMD program that every
device runs): `temp` is the scratch the program allocates (the logits and their gradients),
`total` = arguments + outputs + temp - aliased, the most the program can hold at once. Time: the
median of --steps runs after one warm-up, each waited for. Prints one JSON line per (B, impl),
then a markdown table with the ratio dense / chunked.
"""

import argparse
import json
import os
import statistics
import time

IMPLS = ('dense', 'chunked')


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batches', default='1024,4096,16384', help='global batch sizes, commas')
  parser.add_argument('--dim', type=int, default=128, help='embedding width')
  parser.add_argument('--devices', type=int, default=8, help='CPU devices (a data axis)')
  parser.add_argument('--steps', type=int, default=3, help='timed runs of loss + gradients')
  return parser.parse_args(argv)


def measure(jax, contrastive, sharding, mesh, batch: int, dim: int, impl: str, steps: int) -> dict:
  """One (batch, impl) row: the compiled program's per-device bytes and its median time."""
  import numpy as np  # noqa: PLC0415  (with jax, after the device count is set)

  rng = np.random.default_rng(0)
  z = rng.normal(size=(2, batch, dim)).astype(np.float32)
  z /= np.linalg.norm(z, axis=-1, keepdims=True)
  zimg, ztxt = (jax.device_put(x, sharding.batch_sharding(mesh)) for x in z)
  args = (zimg, ztxt, np.float32(10.0), np.float32(-10.0))
  loss = lambda *a: contrastive.sigmoid_loss(*a, impl=impl)
  fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
  with jax.set_mesh(mesh):
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - start
    stats = compiled.memory_analysis()
    jax.block_until_ready(compiled(*args))  # Warm-up.
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - start)
  temp = stats.temp_size_in_bytes
  total = (
    stats.argument_size_in_bytes + stats.output_size_in_bytes + temp - stats.alias_size_in_bytes
  )
  return {
    'impl': impl,
    'batch': batch,
    'per_device_batch': batch // len(mesh.devices.flat),
    'dim': dim,
    'devices': len(mesh.devices.flat),
    'temp_bytes': temp,
    'total_bytes': total,
    'compile_s': round(compile_s, 3),
    'step_s': round(statistics.median(times), 4),
  }


def table(rows: list[dict]) -> str:
  """Markdown: per batch size, both impls' per-device MiB and step time, and dense / chunked."""
  mib = lambda b: f'{b / 2**20:.2f}'
  lines = [
    '| global batch | per device | temp MiB dense | temp MiB chunked | ratio | total MiB dense | '
    'total MiB chunked | ratio | step s dense | step s chunked | ratio |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ]
  by = {(r['batch'], r['impl']): r for r in rows}
  for batch in sorted({r['batch'] for r in rows}):
    d, c = by[batch, 'dense'], by[batch, 'chunked']
    lines.append(
      f'| {batch} | {d["per_device_batch"]} | {mib(d["temp_bytes"])} | {mib(c["temp_bytes"])} | '
      f'{d["temp_bytes"] / c["temp_bytes"]:.1f}x | {mib(d["total_bytes"])} | '
      f'{mib(c["total_bytes"])} | {d["total_bytes"] / c["total_bytes"]:.1f}x | '
      f'{d["step_s"]:.3f} | {c["step_s"]:.3f} | {d["step_s"] / c["step_s"]:.2f}x |'
    )
  return '\n'.join(lines)


def main(argv=None) -> list[dict]:
  args = parse_args(argv)
  flag = f'--xla_force_host_platform_device_count={args.devices}'
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {flag}'.strip()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  # After XLA_FLAGS (the device count is read when JAX starts its CPU backend).
  import jax  # noqa: PLC0415

  from vit_jax import sharding  # noqa: PLC0415  (imports jax)
  from vit_jax.tasks import contrastive  # noqa: PLC0415  (imports jax)

  mesh = sharding.make_mesh((('data', -1),), jax.devices()[: args.devices])
  rows = []
  for batch in (int(b) for b in args.batches.split(',')):
    for impl in IMPLS:
      rows.append(measure(jax, contrastive, sharding, mesh, batch, args.dim, impl, args.steps))
      print(json.dumps(rows[-1]), flush=True)
  print(table(rows))
  return rows


if __name__ == '__main__':
  main()
