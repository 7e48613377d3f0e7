"""The main job's test accuracy over seeds, with each run's wall time and CPU time.

  python benchmarks/main_seeds.py [--seeds=0,1,2,3,4] [--root=DIR] [--markdown] \\
      [-- --config.key=value ...]

Runs `python -m vit_jax.main --workdir=ROOT/seed<N> --config.seed=<N>` (the default config,
configs/default.py, plus the overrides after `--`) for each seed, one after the other, and prints
one JSON line per seed, then one summary line. A seed's figures: `accuracy` and `correct` of the
run's last evaluation (metrics.jsonl: the whole test split at the final step; `num_examples` from
the workdir's dataset.json), `wall_s` (the
process from start to exit: start-up, compile, training, evaluations and checkpoints), `cpu_s`
(the process's user + system CPU seconds, all threads: robust to other load on a shared machine,
where wall time is not) and `load` (the 1-minute load average at its start). The summary: the
accuracies' mean, min and max, and the wall and CPU seconds' mean and max. ROOT defaults to a new
temporary directory (removed afterwards); a given ROOT is kept, and a seed whose workdir exists
there is refused by the job (a complete run is not rerun). --markdown adds the table for
benchmarks/RESULTS.md.

The dataset (sklearn_digits) should be built before timing (run the job once): the first run
builds it into the TFDS data directory and its wall time includes that.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from vit_jax.runtime import workdir as workdir_lib


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
    '--seeds', default='0,1,2,3,4', help='Comma-separated config.seed values, run in this order.'
  )
  parser.add_argument(
    '--root', default='', help='Where the workdirs go (default: a temporary dir).'
  )
  parser.add_argument('--markdown', action='store_true', help='Also print the markdown table.')
  parser.add_argument('overrides', nargs='*', help='Arguments for vit_jax.main (after --).')
  args = parser.parse_args(argv)
  args.seeds = [int(s) for s in args.seeds.split(',') if s.strip()]
  return args


def _cpu_seconds_of_children() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def run_seed(seed: int, root: str, overrides) -> dict:
  """Runs the main job at `seed` into ROOT/seed<N>; its figures (see the module doc)."""
  workdir = os.path.join(root, f'seed{seed}')
  command = [
    sys.executable,
    '-m',
    'vit_jax.main',
    f'--workdir={workdir}',
    f'--config.seed={seed}',
    *overrides,
  ]
  load = os.getloadavg()[0]
  cpu0, t0 = _cpu_seconds_of_children(), time.monotonic()
  proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  wall, cpu = time.monotonic() - t0, _cpu_seconds_of_children() - cpu0
  if proc.returncode:
    raise SystemExit(f'seed {seed}: exit status {proc.returncode}\n{proc.stdout[-3000:]}')
  last = workdir_lib.last_eval(workdir)
  if 'eval/accuracy' not in last:
    raise SystemExit(f'seed {seed}: no evaluation in {workdir}/metrics.jsonl')
  total = (workdir_lib.read_json(workdir, workdir_lib.DATASET_FILE) or {}).get('num_eval')
  return {
    'seed': seed,
    'step': last['step'],
    'accuracy': last['eval/accuracy'],
    'correct': round(last['eval/accuracy'] * total) if total else None,
    'num_examples': total,
    'wall_s': round(wall, 1),
    'cpu_s': round(cpu, 1),
    'load': round(load, 2),
  }


def summarize(rows) -> dict:
  accuracies = [r['accuracy'] for r in rows]
  return {
    'seeds': [r['seed'] for r in rows],
    'accuracy_mean': statistics.fmean(accuracies),
    'accuracy_min': min(accuracies),
    'accuracy_max': max(accuracies),
    'wall_s_mean': round(statistics.fmean(r['wall_s'] for r in rows), 1),
    'wall_s_max': max(r['wall_s'] for r in rows),
    'cpu_s_mean': round(statistics.fmean(r['cpu_s'] for r in rows), 1),
    'cpu_s_max': max(r['cpu_s'] for r in rows),
  }


def markdown(rows, summary) -> str:
  def correct(r):
    return f' ({r["correct"]}/{r["num_examples"]})' if r['correct'] is not None else ''

  lines = [
    '| seed | test accuracy | wall s | CPU s | load at start |',
    '|---:|---:|---:|---:|---:|',
    *(
      f'| {r["seed"]} | {100 * r["accuracy"]:.2f}%{correct(r)} | {r["wall_s"]:.1f} | '
      f'{r["cpu_s"]:.1f} | {r["load"]:.2f} |'
      for r in rows
    ),
    f'| mean / min / max | {100 * summary["accuracy_mean"]:.2f}% / '
    f'{100 * summary["accuracy_min"]:.2f}% / {100 * summary["accuracy_max"]:.2f}% | '
    f'{summary["wall_s_mean"]:.1f} (max {summary["wall_s_max"]:.1f}) | '
    f'{summary["cpu_s_mean"]:.1f} (max {summary["cpu_s_max"]:.1f}) | |',
  ]
  return '\n'.join(lines)


def main(argv=None):
  args = parse_args(argv)
  with tempfile.TemporaryDirectory() as scratch:
    root = args.root or scratch
    rows = []
    for seed in args.seeds:
      rows.append(run_seed(seed, root, args.overrides))
      print(json.dumps(rows[-1]), flush=True)
  summary = summarize(rows)
  print(json.dumps(summary), flush=True)
  if args.markdown:
    print(markdown(rows, summary))


if __name__ == '__main__':
  main()
