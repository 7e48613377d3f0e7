"""Config sweeps: one `python -m vit_jax.main` run per override dict, each in its own workdir under
the sweep dir.

    python -m launch.sweep --config=configs/default.py --sweep_dir=runs/lr_sweep \
        --sweep config.schedule.base_lr=0.001,0.003 --sweep config.total_steps=200,400
        [--config.KEY=VALUE ...]
    python -m launch.sweep results runs/lr_sweep

The runs come from `--sweep` flags (their product) or, without them, from the config file's
`get_sweep(h[, arg])` (launch/hyper.py). `--config.KEY=VALUE` flags apply to every run. Each run's
workdir is SWEEP_DIR/<run name>, a name derived from its overrides (hyper.run_name);
SWEEP_DIR/sweep.json records the sweep. Rerunning the command skips finished runs and resumes the
others (the trainer resumes a workdir from its last checkpoint).

Backends: `local` runs N at a time on this machine (`--parallel`; with GPUs, one GPU per run through
CUDA_VISIBLE_DEVICES, `--gpus`); `tpu` gives each run its own TPU VM through launch.tpu
(`--tpu_mode=vm_per_run`) or runs them one after the other on one VM (`--tpu_mode=one_vm`); `slurm`
submits one array job (launch.slurm). `--dry-run` lists the runs and their commands.
"""

import argparse
import dataclasses
import importlib.util
import inspect
import json
import os
import sys

from launch import hyper, record, shell, sweep_local
from vit_jax import io
from vit_jax.configs import args as config_args
from vit_jax.runtime import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  overrides: dict
  workdir: str
  args: tuple  # vit_jax.main's arguments: --config, --workdir, the fixed and the swept overrides.

  def target_overrides(self, fixed: dict) -> dict:
    return {**fixed, **self.overrides}


def load_config_module(config_spec: str):
  path = config_args.split_spec(config_spec)[0]
  if not os.path.isfile(path):
    raise ValueError(f'Config file {path!r} not found (from --config={config_spec}).')
  spec = importlib.util.spec_from_file_location(f'_sweep_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def expand(config_spec: str, cli_sweeps) -> list[dict]:
  """The sweep's override dicts: the --sweep flags' product, else the config file's get_sweep."""
  if cli_sweeps:
    return hyper.parse_cli(cli_sweeps)
  module = load_config_module(config_spec)
  path, arg = config_args.split_spec(config_spec)
  get_sweep = getattr(module, 'get_sweep', None)
  if get_sweep is None:
    raise ValueError(f'No sweep: pass --sweep KEY=V1,V2 or define get_sweep(h) in {path}.')
  takes_arg = len(inspect.signature(get_sweep).parameters) > 1
  if arg is not None and not takes_arg:
    raise ValueError(
      f'get_sweep in {config_spec} takes no config argument, but --config has ":{arg}".'
    )
  runs = get_sweep(hyper, arg) if arg is not None else get_sweep(hyper)
  return [{hyper.key(k): v for k, v in run.items()} for run in runs]


def fixed_overrides(extra) -> dict:
  """['--config.a.b=1', ...] -> {'a.b': '1'}; anything else is a usage error."""
  out = {}
  for arg in extra:
    name, sep, value = arg.partition('=')
    if not arg.startswith('--config.') or not sep:
      raise ValueError(
        f'Unexpected argument {arg!r}: only --config.KEY=VALUE overrides pass through to every run.'
      )
    out[hyper.key(name[2:])] = value
  return out


def plan(config_spec: str, sweep_dir: str, sweeps: list[dict], fixed: dict) -> list[Run]:
  runs = []
  seen = {}
  for overrides in sweeps:
    both = set(overrides) & set(fixed)
    if both:
      raise ValueError(f'{sorted(both)} both swept and fixed (--config.*): drop one.')
    name = hyper.run_name(overrides)
    if name in seen:
      raise ValueError(f'The sweep lists the run {name!r} twice ({seen[name]} and {overrides}).')
    seen[name] = overrides
    workdir = io.join(sweep_dir, name)
    args = (
      f'--config={config_spec}',
      f'--workdir={workdir}',
      *hyper.overrides_args(fixed),
      *hyper.overrides_args(overrides),
    )
    runs.append(Run(name, dict(overrides), workdir, args))
  return runs


def validate(config_spec: str, runs: list[Run]) -> None:
  """Every run's config, parsed and checked as vit_jax.main does it (vit_jax/training/preflight.py:
  the fields and the rules of the run's task), before anything starts (--dry-run too): a ValueError
  naming each bad run and what is wrong."""
  from vit_jax.configs import check, loading  # noqa: PLC0415
  from vit_jax.training import preflight  # noqa: PLC0415  (JAX, for the tasks' rules: only here)

  problems = []
  for run in runs:
    try:
      overrides = [a for a in run.args if a.startswith('--config.')]
      preflight.validate(loading.from_command_line(config_spec, overrides))
    except (check.ConfigError, check.UnknownFieldError) as e:
      problems.append(f'run {run.name}: {e}')
  if problems:
    raise ValueError(
      f'{len(problems)} of {len(runs)} runs have a bad config (nothing was started):\n  '
      + '\n  '.join(problems)
    )


def record_sweep(
  sweep_dir: str, config_spec: str, fixed: dict, runs: list[Run], backend: str, runner
) -> dict:
  """Writes SWEEP_DIR/sweep.json: the config, the fixed overrides, and every run so far (earlier
  runs are kept)."""
  old = record.read_sweep(sweep_dir)
  if old and old['config'] != config_spec:
    raise ValueError(
      f'{sweep_dir} holds a sweep of --config={old["config"]}, '
      f'not {config_spec}: use another --sweep_dir.'
    )
  known = {r['name']: r for r in (old or {}).get('runs', [])}
  for run in runs:
    known[run.name] = {'name': run.name, 'overrides': run.overrides, 'workdir': run.workdir}
  sweep = {
    'config': config_spec,
    'fixed': fixed,
    'backend': backend,
    'updated': record.now(),
    'runs': list(known.values()),
  }
  if runner.dry_run:
    runner.note(f'(a real run writes {io.join(sweep_dir, record.SWEEP_FILE)})')
  else:
    io.write_text(io.join(sweep_dir, record.SWEEP_FILE), json.dumps(sweep, indent=2) + '\n')
  return sweep


def split_done(runs: list[Run], fixed: dict) -> tuple[list[Run], list[Run]]:
  """(finished runs, runs to start or resume)."""
  done = []
  todo = []
  for run in runs:
    state = record.status(record.read(run.workdir), overrides=run.target_overrides(fixed))
    (done if state == 'finished' else todo).append(run)
  return done, todo


def _parser():
  parser = argparse.ArgumentParser(
    prog='python -m launch.sweep',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog='Other backends take the flags of launch.tpu (--name, --accelerator, --zones, ...) and '
    'launch.slurm (--nodes, --gpus_per_node, ...).',
  )
  parser.add_argument('--config', required=True, help='Config file[:arg], as for vit_jax.main.')
  parser.add_argument(
    '--sweep_dir',
    help='Where the runs go (a local path; gs:// for the tpu '
    'backend). Default: runs/<config file name>_sweep.',
  )
  parser.add_argument(
    '--sweep',
    action='append',
    default=[],
    metavar='KEY=V1,V2',
    help="A swept field and its values (repeat: product). Without it, the config's get_sweep().",
  )
  parser.add_argument('--backend', choices=('local', 'tpu', 'slurm'), default='local')
  parser.add_argument(
    '--parallel',
    type=int,
    default=0,
    help='Runs at a time (local: default 1, or one per GPU; tpu vm_per_run: default all).',
  )
  parser.add_argument(
    '--gpus',
    default=None,
    help='local: comma-separated GPU ids, one per run at a time '
    '(default: all that nvidia-smi lists; "" for none).',
  )
  parser.add_argument(
    '--dry-run',
    '--dry_run',
    dest='dry_run',
    action='store_true',
    help='List the runs and print their commands; start nothing.',
  )
  from launch import slurm, tpu  # noqa: PLC0415

  tpu.add_sweep_flags(parser)
  slurm.add_flags(parser, sweep=True)
  return parser


def main_run(argv) -> int:
  parser = _parser()
  args, extra = parser.parse_known_args(argv)
  try:
    fixed = fixed_overrides(extra)
    sweeps = expand(args.config, args.sweep)
  except ValueError as e:
    parser.error(str(e))
  config_name = os.path.splitext(os.path.basename(config_args.split_spec(args.config)[0]))[0]
  sweep_dir = args.sweep_dir or os.path.join('runs', f'{config_name}_sweep')
  runner = shell.Runner(dry_run=args.dry_run)
  try:
    runs = plan(args.config, sweep_dir, sweeps, fixed)
    validate(args.config, runs)
    done, todo = split_done(runs, fixed)
    record_sweep(sweep_dir, args.config, fixed, runs, args.backend, runner)
  except (ValueError, io.StorageError) as e:
    print(f'launch.sweep: {e}', file=sys.stderr)
    return 2
  runner.note(
    f'{len(runs)} runs in {sweep_dir}: {len(done)} finished (skipped), {len(todo)} to run'
  )
  for run in runs:
    runner.note(f'  {run.name}: {"finished" if run in done else "to run"}')
  return run_backend(args, runs, todo, sweep_dir, runner)


def run_backend(args, runs, todo, sweep_dir, runner) -> int:
  """Runs `todo` (of the sweep's `runs`) on args.backend; the exit status (130: interrupted)."""
  from launch import slurm, tpu_sweep  # noqa: PLC0415

  if not todo:
    runner.note(f'Nothing to run. Results: python -m launch.sweep results {sweep_dir}')
    return 0
  if args.backend == 'tpu':
    return tpu_sweep.run_sweep(args, runs, todo, runner)
  if args.backend == 'slurm':
    return slurm.run_sweep(args, todo, sweep_dir, runner)
  gpus = (
    sweep_local.detect_gpus()
    if args.gpus is None
    else [g for g in args.gpus.split(',') if g.strip()]
  )
  try:
    codes = sweep_local.run_local(
      todo, parallel=args.parallel or (len(gpus) if gpus else 1), gpus=gpus, runner=runner
    )
  except KeyboardInterrupt:
    return 130
  failed = sorted(name for name, code in codes.items() if code != 0)
  if not runner.dry_run:
    for name in failed:
      log = workdir_lib.path(io.join(sweep_dir, name), workdir_lib.RUN_LOG)
      print(f'{name} failed; the end of its log:\n{_tail(log)}', file=sys.stderr)
    runner.note(
      f'{len(codes) - len(failed)} of {len(codes)} runs ended cleanly. Results: '
      f'python -m launch.sweep results {sweep_dir}'
    )
  return 1 if failed else 0


def _tail(path: str, lines: int = 15) -> str:
  text = io.read_text_or_none(path) or ''
  return '\n'.join(text.splitlines()[-lines:])


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv and argv[0] == 'results':
    from launch import results  # noqa: PLC0415  (matplotlib only here)

    return results.main(argv[1:])
  if argv and argv[0] == 'run':
    argv = argv[1:]
  return main_run(argv)


if __name__ == '__main__':
  sys.exit(main())
