"""Dropout's cost: vit_jax's Dropout (vit_jax/models/dropout.py) against flax.linen.Dropout on the
same activations, both jitted, forward only (a mask is made once a step; the backward reuses it).

  python benchmarks/dropout_masks.py [--batch=128] [--tokens=17] [--width=128] [--mlp=256] \\
      [--layers=3] [--rate=0.2] [--steps=30]

The activations are those of a ViT's dropout sites: after the position embedding, and per layer
after attention, inside the MLP (its hidden width) and after it; the defaults are the main job's
model (configs/default.py). Prints one JSON line per implementation (`compile_s`: lowering and XLA
compile; `ms_per_step`: the median over --steps calls of all the sites' masks applied once, each
waited for) and one line with their ratios (flax over vit_jax).
"""

import argparse
import json
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import dropout

IMPLEMENTATIONS = {'flax': nn.Dropout, 'vit_jax': dropout.Dropout}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  for name, default in (('batch', 128), ('tokens', 17), ('width', 128), ('mlp', 256)):
    parser.add_argument(f'--{name}', type=int, default=default)
  parser.add_argument('--layers', type=int, default=3)
  parser.add_argument('--rate', type=float, default=0.2)
  parser.add_argument('--steps', type=int, default=30)
  return parser.parse_args(argv)


def site_shapes(args) -> list[tuple]:
  per_layer = [args.width, args.mlp, args.width]
  widths = [args.width] + per_layer * args.layers
  return [(args.batch, args.tokens, w) for w in widths]


def measure(args, layer_class) -> dict:
  shapes = site_shapes(args)

  def all_sites(key, xs):
    layer = layer_class(args.rate)
    return [
      layer.apply({}, x, deterministic=False, rngs={'dropout': jax.random.fold_in(key, i)})
      for i, x in enumerate(xs)
    ]

  xs = [jnp.ones(s, jnp.float32) for s in shapes]
  key = jax.random.key(0)
  start = time.perf_counter()
  compiled = jax.jit(all_sites).lower(key, xs).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(compiled(key, xs))
  times = []
  for step in range(args.steps):
    start = time.perf_counter()
    jax.block_until_ready(compiled(jax.random.fold_in(key, step + 1), xs))
    times.append(time.perf_counter() - start)
  return {
    'sites': len(shapes),
    'units': sum(a * b * c for a, b, c in shapes),
    'compile_s': round(compile_s, 3),
    'ms_per_step': round(statistics.median(times) * 1e3, 3),
  }


def main(argv=None):
  args = parse_args(argv)
  jax.config.update('jax_enable_compilation_cache', False)  # Every compile is timed in full.
  rows = {}
  for name, layer_class in IMPLEMENTATIONS.items():
    rows[name] = measure(args, layer_class)
    print(json.dumps({'implementation': name, 'backend': jax.default_backend(), **rows[name]}))
  flax, ours = rows['flax'], rows['vit_jax']
  print(
    json.dumps(
      {
        'step_ratio_flax_over_vit_jax': round(flax['ms_per_step'] / ours['ms_per_step'], 2),
        'compile_ratio_flax_over_vit_jax': round(flax['compile_s'] / ours['compile_s'], 2),
      }
    )
  )


if __name__ == '__main__':
  main()
