"""Training-step throughput, MFU, compile time and memory of a ViT preset with the trainer's own
train step.

  python benchmarks/train_throughput.py --model=ViT-Ti_16 --image_size=224 --batch=32 \\
      --dtype=float32 [--scan] [--remat=none|full|dots] [--attention=plain|xla|cudnn] \\
      [--fused_qkv] [--steps=N --warmup=M] \\
      [--peak_tflops=X] [--no_baseline] [--compile_only]

Prints one JSON line per variant. The step is the trainer's own (`vit_jax.training.state.Setup`:
model, optimizer, layout and the jitted train step with the state donated), configured from
vit_jax/configs/common.py (AdamW, 1000 classes) overridden by the flags; the batch is random (no
input pipeline). Each variant runs in its own process, so its compile time, host RSS and device peak
memory are its own.

Unless --no_baseline, a plain baseline (unrolled blocks, attention='plain', fused_qkv=False,
float32, no remat, otherwise the same flags) runs too, and the fast variant's line gets
`speedup_vs_baseline` (img/s ratio) and `compile_ratio_vs_baseline` (its compile seconds over the
baseline's).

Figures per line:
  compile_s       tracing + lowering + XLA compile of the train step (xla_compile_s: the last part
                  alone).
  img_per_sec     batch / the median step time over --steps timed steps after --warmup steps, each
                  step waited for with jax.block_until_ready.
  model_tflops_per_device  img_per_sec x the task's train_flops (vit_jax/models/flops.py) /
                  devices: the model's work, not XLA's (remat recomputation and elementwise ops
                  are not counted).
  mfu             model_tflops_per_device / peak_tflops. `peak_source` says where the peak comes
                  from: 'flag' (--peak_tflops; given to the fast variant only, as the baseline runs
                  in float32), else 'table' (vit_jax.models.flops.PEAK_TFLOPS for the device kind
                  and dtype), else 'measured matmul' (the median TFLOP/s of a square matmul in the
                  variant's dtype on one device, timed like the steps).
  host_peak_rss_mib, device_peak_mib  the process's max RSS; the largest
                  `memory_stats()['peak_bytes_in_use']` of the local devices (null where the backend
                  keeps no statistics, e.g. CPU).
--compile_only lowers from abstract shapes (no state is allocated) and reports only the compile
figures. --hidden/--layers/--heads/--mlp/--patch override the preset's sizes (tiny models for
tests).

A LiT preset (--model=LiT-B16B, ...) times its image-text train step (a random batch of images and
of max_len tokens; the contrastive loss, config.loss) with the image tower locked unless --unlocked,
and its baseline is its image tower's preset trained as a classifier on the same images
(`step_ratio_vs_image_classifier`: the LiT step's time over the classifier's; below 1 when the
locked tower's missing backward outweighs the text tower). The size flags then apply to the image
tower, and --text_layers to a text_transformer tower.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import jax
import numpy as np

from vit_jax import models, sharding, tasks
from vit_jax.configs import common, presets
from vit_jax.data import input_pipeline
from vit_jax.models import flops
from vit_jax.training import preflight, state

NUM_CLASSES = 1000
# Fast-path switches: flag name -> (config field, baseline value).
SWITCHES = {
  'scan': ('scan_layers', False),
  'remat': ('remat_policy', 'none'),
  'attention': ('attention', 'plain'),
  'fused_qkv': ('fused_qkv', False),
}
BASELINE = {'dtype': 'float32', **{flag: baseline for flag, (_, baseline) in SWITCHES.items()}}
SIZE_FLAGS = {
  'hidden': 'hidden_size',
  'layers': 'transformer.num_layers',
  'heads': 'transformer.num_heads',
  'mlp': 'transformer.mlp_dim',
}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
    '--model', default='ViT-Ti_16', help='A preset of vit_jax.models.MODEL_NAMES, or a LiT preset.'
  )
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--batch', type=int, default=32, help='Global batch (all devices).')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument(
    '--scan', action='store_true', help='config.scan_layers: nn.scan over the blocks.'
  )
  parser.add_argument(
    '--remat', default='none', choices=('none', 'full', 'dots'), help='config.remat_policy.'
  )
  parser.add_argument(
    '--attention', default='plain', choices=('plain', 'xla', 'cudnn'), help='config.attention.'
  )
  parser.add_argument(
    '--fused_qkv', action='store_true', help='config.fused_qkv: one q/k/v matmul.'
  )
  parser.add_argument('--steps', type=int, default=10, help='Timed steps.')
  parser.add_argument('--warmup', type=int, default=3, help='Untimed steps after compilation.')
  parser.add_argument(
    '--peak_tflops', type=float, default=None, help='Peak TFLOP/s per device for the MFU.'
  )
  parser.add_argument('--no_baseline', action='store_true', help='Skip the plain float32 baseline.')
  parser.add_argument(
    '--compile_only', action='store_true', help='Only compile (no state, no steps).'
  )
  for flag in (*SIZE_FLAGS, 'patch'):
    parser.add_argument(
      f'--{flag}', type=int, default=None, help='Overrides the preset (tiny test models).'
    )
  parser.add_argument('--unlocked', action='store_true', help='LiT: train the image tower too.')
  parser.add_argument(
    '--text_layers', type=int, default=None, help='LiT text_transformer: its depth (tiny tests).'
  )
  # The name on the JSON line.
  parser.add_argument('--variant', default='fast', help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def variant_options(args) -> dict:
  return {'dtype': args.dtype, **{flag: getattr(args, flag) for flag in SWITCHES}}


def make_config(args):
  """vit_jax/configs/common.py with the model, sizes, batch, AdamW and the fast-path switches of
  `args`."""
  config = common.get_config()
  config.model = models.get_model_config(args.model)
  task = tasks.of(config)
  vit = task.image_model(config.model)  # What the size flags change (a LiT model's image tower).
  for flag, field in SIZE_FLAGS.items():
    if getattr(args, flag) is not None:
      parent, _, leaf = field.rpartition('.')
      (vit[parent] if parent else vit)[leaf] = getattr(args, flag)
  if args.patch is not None:
    vit.patches.size = (args.patch, args.patch)
  # A LiT model's towers and tokens are random: no file is read (validated with files=False); only
  # the image-text task reads config.lit.
  config.lit.update(image_init='(random)', vocab_path='(random)', locked_image=not args.unlocked)
  if args.text_layers is not None:
    config.model.text.num_layers = args.text_layers
  config.image_size = args.image_size
  task.follow_image_model(config)  # A LiT model's pp.size and a headless out_dim follow the tower.
  config.batch_size = config.eval_batch_size = args.batch
  config.dtype = args.dtype
  config.optimizer.name = 'adamw'
  config.optimizer.weight_decay = 0.1
  for flag, (field, _) in SWITCHES.items():
    config[field] = getattr(args, flag)
  return config


def device_peak_mib() -> float | None:
  peaks = [(d.memory_stats() or {}).get('peak_bytes_in_use') for d in jax.local_devices()]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) / 2**20 if peaks else None


def host_peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux.


def median_seconds(fn, steps: int, warmup: int) -> float:
  """Median wall time of `fn()` (which must block until its work is done) over `steps` calls after
  `warmup`."""
  times = []
  for i in range(warmup + steps):
    start = time.perf_counter()
    fn()
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_tflops(dtype: str, steps: int = 3, warmup: int = 1, min_seconds: float = 0.05) -> float:
  """Measured peak TFLOP/s of one device: an n x n matmul in `dtype`, n doubled until a call takes
  `min_seconds`."""
  device = jax.local_devices()[0]
  matmul = jax.jit(jax.numpy.matmul)
  n = 512
  seconds = 0.0
  while seconds < min_seconds and n < 16384:
    n *= 2
    a = jax.device_put(jax.random.normal(jax.random.key(0), (n, n), dtype), device)
    seconds = median_seconds(lambda: matmul(a, a).block_until_ready(), steps, warmup)
  return 2 * n**3 / seconds / 1e12


def _place(args, config, mesh):
  """A random global batch of images in [-1, 1] and labels (and a LiT model's tokens: the task's
  example batch), sharded like the trainer's."""
  local = args.batch // jax.process_count()
  rng = np.random.default_rng(jax.process_index())
  batch = tasks.of(config).example_batch(config, local, rng, NUM_CLASSES)
  return input_pipeline.make_global_batch(batch, sharding.batch_sharding(mesh))


def run_variant(args) -> dict:
  """Compiles (and unless --compile_only, times) the trainer's train step for `args`; returns the
  JSON fields."""
  config = make_config(args)
  config.dataset = 'random'  # No data is read: the batches are random.
  preflight.validate(config, devices=jax.device_count(), files=False)
  mesh = sharding.make_mesh(config.mesh)
  setup = state.Setup.create(config, NUM_CLASSES, mesh)
  devices = jax.devices()
  result = {
    'variant': args.variant,
    'model': args.model,
    'image_size': args.image_size,
    'batch': args.batch,
    'options': variant_options(args),
    'device_kind': devices[0].device_kind,
    'device_count': len(devices),
    'backend': jax.default_backend(),
  }
  with jax.set_mesh(mesh):
    state_spec = setup.state_spec()
    example = setup.task.example_batch(config, 1, np.random.default_rng(0), NUM_CLASSES)
    batch_spec = {
      k: jax.ShapeDtypeStruct((args.batch,) + v.shape[1:], v.dtype, sharding=setup.batch_sharding)
      for k, v in example.items()
    }
    start = time.perf_counter()
    lowered = setup.train_step().lower(state_spec, batch_spec)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    end = time.perf_counter()
    result.update(compile_s=end - start, xla_compile_s=end - lowered_at)
    if not args.compile_only:
      result.update(_time_steps(args, config, setup, compiled))
  result.update(host_peak_rss_mib=host_peak_rss_mib(), device_peak_mib=device_peak_mib())
  return result


def _time_steps(args, config, setup, compiled) -> dict:
  batch = _place(args, config, setup.mesh)
  holder = [setup.init()]

  def one_step():
    holder[0], stats = compiled(holder[0], batch)
    jax.block_until_ready((holder[0], stats))

  seconds = median_seconds(one_step, args.steps, args.warmup)
  devices = jax.device_count()
  img_per_sec = args.batch / seconds
  gflops = setup.task.train_flops(config, NUM_CLASSES) / 1e9
  model_tflops = img_per_sec * gflops / 1e3 / devices
  peak, source = peak_of(args)
  return {
    'steps': args.steps,
    'warmup': args.warmup,
    'step_s_median': seconds,
    'img_per_sec': img_per_sec,
    'img_per_sec_per_device': img_per_sec / devices,
    'train_gflops_per_image': gflops,
    'model_tflops_per_device': model_tflops,
    'peak_tflops': peak,
    'peak_source': source,
    'mfu': model_tflops / peak,
  }


def peak_of(args) -> tuple[float, str]:
  """(peak TFLOP/s per device, where it comes from): --peak_tflops, else the table, else a measured
  matmul."""
  if args.peak_tflops is not None:
    return args.peak_tflops, 'flag'
  peak = flops.peak_tflops(jax.devices()[0].device_kind, args.dtype)
  if peak is not None:
    return peak, 'table'
  return matmul_tflops(args.dtype), 'measured matmul'


def child_argv(args, variant: str, options: dict, peak_tflops) -> list[str]:
  """The command line that runs one variant (`options` as variant_options gives them) in its own
  process."""
  argv = [
    sys.executable,
    os.path.abspath(__file__),
    '--no_baseline',
    f'--variant={variant}',
    f'--model={args.model}',
    f'--image_size={args.image_size}',
    f'--batch={args.batch}',
    f'--steps={args.steps}',
    f'--warmup={args.warmup}',
    f'--dtype={options["dtype"]}',
    f'--remat={options["remat"]}',
    f'--attention={options["attention"]}',
  ]
  argv += [f'--{flag}' for flag in ('scan', 'fused_qkv') if options[flag]]
  argv += ['--compile_only'] if args.compile_only else []
  argv += [
    f'--{flag}={getattr(args, flag)}'
    for flag in (*SIZE_FLAGS, 'patch')
    if getattr(args, flag) is not None
  ]
  argv += [f'--peak_tflops={peak_tflops}'] if peak_tflops is not None else []
  argv += ['--unlocked'] if args.unlocked else []
  argv += [f'--text_layers={args.text_layers}'] if args.text_layers is not None else []
  return argv


def run_in_process(argv: list[str]) -> dict:
  """Runs `argv` (this script for one variant) and returns the JSON line it printed last."""
  out = subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def compare(fast: dict, baseline: dict) -> dict:
  """The fast variant's line plus its img/s and compile-time ratios to the baseline."""
  fast = dict(fast)
  if 'img_per_sec' in fast and 'img_per_sec' in baseline:
    fast['speedup_vs_baseline'] = fast['img_per_sec'] / baseline['img_per_sec']
  fast['compile_ratio_vs_baseline'] = fast['compile_s'] / baseline['compile_s']
  return fast


def main(argv=None):
  args = parse_args(argv)
  options = variant_options(args)
  if args.model in presets.LIT_PRESETS and not args.no_baseline:
    lit = run_in_process(child_argv(args, 'lit', options, args.peak_tflops))
    classifier = argparse.Namespace(
      **{
        **vars(args),
        'model': presets.LIT_PRESETS[args.model][0],
        'unlocked': False,
        'text_layers': None,
      }
    )
    baseline = run_in_process(child_argv(classifier, 'image_classifier', options, args.peak_tflops))
    print(json.dumps(baseline), flush=True)
    if 'step_s_median' in lit:
      lit['step_ratio_vs_image_classifier'] = lit['step_s_median'] / baseline['step_s_median']
    print(json.dumps(lit), flush=True)
    return
  if args.no_baseline or options == BASELINE:
    args.variant = 'baseline' if options == BASELINE and args.variant == 'fast' else args.variant
    print(json.dumps(run_variant(args)), flush=True)
    return
  fast = run_in_process(child_argv(args, 'fast', options, args.peak_tflops))
  baseline = run_in_process(child_argv(args, 'baseline', BASELINE, None))
  print(json.dumps(baseline), flush=True)
  print(json.dumps(compare(fast, baseline)), flush=True)


if __name__ == '__main__':
  main()
