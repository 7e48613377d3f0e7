"""The main job's time to its first train step: cold (an empty compilation cache), warm (the cache a
cold run filled), and optionally an earlier commit's job as the baseline, all in one run.

  python benchmarks/first_step.py [--runs=3] [--baseline=COMMIT] [--root=DIR] [--markdown] \\
      [-- --config.key=value ...]

Each run is `python -m vit_jax.main --workdir=ROOT/<kind><i>` plus the overrides after `--`, and
its figures are the start-up and compile seconds that its goodput line logs ("Where the time went:
... startup X s, compile Y s"), whose sum is the time to the first step. The runs go baseline 1,
cold 1, baseline 2, cold 2, ... (alternating, so that a change in the machine's load falls on
both), then `--runs` warm runs on the last cold run's cache. Every cold and baseline run gets a new
empty cache folder through JAX_COMPILATION_CACHE_DIR (config.compilation_cache_dir's default, and
JAX's own setting for a commit older than that field). The baseline runs from a git worktree of
COMMIT in ROOT/baseline-src (its own vit_jax first on PYTHONPATH), removed at the end.

Prints one JSON line per run, then the medians and the ratios: cold / baseline and warm / cold
(time to the first step), and warm / cold of the compile phase (none when the cold compile
ended within the start-up: the train step compiles on a thread while the state is made). ROOT
defaults to a new temporary directory. Build the dataset first (run the job once), or the first
run's start-up includes building it.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = re.compile(r'Where the time went: .*?\(startup ([\d.]+) s, compile ([\d.]+) s')


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--runs', type=int, default=3, help='Runs of each kind.')
  parser.add_argument(
    '--baseline', default='', help='A commit (any git revision) to run as the baseline.'
  )
  parser.add_argument(
    '--root', default='', help='Where the workdirs go (default: a temporary dir).'
  )
  parser.add_argument('--markdown', action='store_true', help='Also print the markdown table.')
  parser.add_argument('overrides', nargs='*', help='Arguments for vit_jax.main (after --).')
  args = parser.parse_args(argv)
  if args.runs < 1:
    parser.error(f'--runs={args.runs}: give 1 or more.')
  return args


def run_job(kind: str, index: int, root: str, source: str, cache: str, overrides) -> dict:
  """One run of the job in `source` (a checkout) into ROOT/<kind><index>; its figures."""
  workdir = os.path.join(root, f'{kind}{index}')
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache, PYTHONPATH=source)
  command = [sys.executable, '-m', 'vit_jax.main', f'--workdir={workdir}', *overrides]
  proc = subprocess.run(
    command, cwd=source, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
  )
  found = PHASES.search(proc.stdout)
  if proc.returncode or not found:
    raise SystemExit(
      f'{kind} run {index}: exit status {proc.returncode}, '
      f'{"" if found else "no goodput line, "}its output:\n{proc.stdout[-3000:]}'
    )
  startup, compile_s = float(found.group(1)), float(found.group(2))
  return {
    'kind': kind,
    'run': index,
    'startup_s': startup,
    'compile_s': compile_s,
    'first_step_s': round(startup + compile_s, 1),
  }


def summarize(rows) -> dict:
  summary = {}
  for kind in ('baseline', 'cold', 'warm'):
    runs = [r for r in rows if r['kind'] == kind]
    for key in ('first_step_s', 'compile_s') if runs else ():
      summary[f'{kind}_{key}'] = statistics.median(r[key] for r in runs)
  if 'baseline_first_step_s' in summary:
    summary['cold_over_baseline'] = round(
      summary['cold_first_step_s'] / summary['baseline_first_step_s'], 2
    )
  # Time to the first step, warm over cold; and the compile phases' ratio, where the cold one is
  # not 0.0 s (a model whose compile ends during the start-up: the train step compiles on a thread
  # while the state is made, vit_jax/training/loop.py).
  summary['warm_over_cold'] = round(summary['warm_first_step_s'] / summary['cold_first_step_s'], 2)
  cold_compile = summary['cold_compile_s']
  summary['warm_over_cold_compile'] = (
    round(summary['warm_compile_s'] / cold_compile, 2) if cold_compile else None
  )
  return summary


def markdown(rows) -> str:
  kinds = [k for k in ('baseline', 'cold', 'warm') if any(r['kind'] == k for r in rows)]
  runs = sorted({r['run'] for r in rows})
  cell = {(r['kind'], r['run']): r for r in rows}

  def text(r):
    return f'{r["startup_s"]:.1f} + {r["compile_s"]:.1f} = {r["first_step_s"]:.1f}'

  return '\n'.join(
    [
      '| run | ' + ' | '.join(f'{k}: startup + compile (s)' for k in kinds) + ' |',
      '|---|' + '---|' * len(kinds),
      *(f'| {i} | ' + ' | '.join(text(cell[k, i]) for k in kinds) + ' |' for i in runs),
    ]
  )


def main(argv=None):
  args = parse_args(argv)
  rows = []
  with tempfile.TemporaryDirectory() as scratch:
    root = args.root or scratch
    baseline = os.path.join(root, 'baseline-src')
    if args.baseline:
      subprocess.run(
        ['git', 'worktree', 'add', '--detach', baseline, args.baseline],
        cwd=REPO,
        check=True,
        capture_output=True,
      )
    try:
      for i in range(1, args.runs + 1):
        if args.baseline:
          cache = os.path.join(root, f'cache-baseline{i}')
          rows.append(run_job('baseline', i, root, baseline, cache, args.overrides))
          print(json.dumps(rows[-1]), flush=True)
        cache = os.path.join(root, f'cache-cold{i}')
        rows.append(run_job('cold', i, root, REPO, cache, args.overrides))
        print(json.dumps(rows[-1]), flush=True)
      for i in range(1, args.runs + 1):
        rows.append(run_job('warm', i, root, REPO, cache, args.overrides))
        print(json.dumps(rows[-1]), flush=True)
    finally:
      if args.baseline:
        subprocess.run(
          ['git', 'worktree', 'remove', '--force', baseline], cwd=REPO, capture_output=True
        )
  print(json.dumps(summarize(rows)), flush=True)
  if args.markdown:
    print(markdown(rows))


if __name__ == '__main__':
  main()
