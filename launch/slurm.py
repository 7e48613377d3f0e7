"""SLURM: an sbatch script that runs `python -m vit_jax.main ...` with one process per GPU,
submitted with sbatch.

    python -m launch.slurm --nodes=2 --gpus_per_node=8 --time=24:00:00 -- \
        --config=configs/vit.py:ViT-B_16,cifar10 --workdir=/shared/runs/b16

Every task runs the same command; `jax.distributed.initialize()` finds its peers from SLURM's
variables (one task per GPU: each task sees all of its node's GPUs and takes the one of its
SLURM_LOCALID). The script activates the venv (`--venv`), writes the batch output to
LOG_DIR/<job>-<id>.out and each task's to LOG_DIR/<job>-<id>-<task>.out (appended across requeues),
asks for `--requeue`, and for SIGTERM `--signal_s` seconds before the time limit: the trainer then
saves a checkpoint and exits 0, and the script requeues the job while the run is unfinished (at most
`--max_requeues` times), so a long run continues in the next allocation from its checkpoint. The
job's exit status goes to WORKDIR/launch.json. A process that is lost or hangs (exit status 75/76)
ends the step (the others end themselves, or srun ends them 60 s after the first) and the script
runs it again (`--max_restarts`, `--restart_backoff_s`), also when a task's coordinator or
collective peer died (vit_jax.main says so in one line and exits 75: vit_jax/runtime/aborts.py) or
a task was killed (kill -9, the OOM killer): each task's own exit status decides, by
launch/outcome.py's rule. Sweeps (launch.sweep
--backend=slurm) submit one array job, a run per index. `--dry-run` prints the script instead of
submitting it; `--wait` waits for the job to end.
"""

import argparse
import os
import shlex
import sys
import time

from launch import record, shell
from vit_jax import errors, io
from vit_jax.runtime import workdir as workdir_lib

# The folder where each task of a step writes its exit status (the script's).
STATUS_ENV = 'VIT_JAX_STEP_STATUS'


def add_flags(parser, *, sweep: bool = False) -> None:
  g = parser.add_argument_group('SLURM' + (' (--backend=slurm)' if sweep else ''))
  g.add_argument('--nodes', type=int, default=1)
  g.add_argument(
    '--gpus_per_node',
    type=int,
    default=None,
    help='GPUs per node, one task each (default 1; 0: CPU tasks, then --tasks_per_node of them).',
  )
  g.add_argument(
    '--tasks_per_node',
    type=int,
    default=None,
    help='Processes per node (default: --gpus_per_node, or 1).',
  )
  g.add_argument('--cpus_per_task', type=int, default=None)
  g.add_argument(
    '--time', default='24:00:00', help='Time limit per allocation (HH:MM:SS or D-HH:MM:SS).'
  )
  g.add_argument('--partition')
  g.add_argument('--account')
  g.add_argument('--job_name', default='vit_jax')
  g.add_argument(
    '--venv',
    default=os.path.join(shell.REPO, '.venv'),
    help='Virtualenv to activate ("" for none).',
  )
  g.add_argument(
    '--log_dir',
    default=None,
    help='Where the logs and the script go (default: runs/slurm, or the sweep dir).',
  )
  g.add_argument(
    '--signal_s', type=int, default=300, help='SIGTERM this many seconds before the time limit.'
  )
  g.add_argument('--max_requeues', type=int, default=20)
  g.add_argument(
    '--max_restarts',
    type=int,
    default=3,
    help='Reruns of the step within an allocation when a '
    'process was lost or hung (exit status 75/76).',
  )
  g.add_argument(
    '--restart_backoff_s',
    type=int,
    default=10,
    help='Seconds before the first such rerun (doubling).',
  )
  g.add_argument(
    '--env', action='append', default=[], metavar='KEY=VALUE', help='Exported in the script.'
  )
  g.add_argument(
    '--sbatch_arg',
    action='append',
    default=[],
    help='Another #SBATCH line, e.g. --constraint=a100.',
  )
  g.add_argument(
    '--wait', action='store_true', help='Wait until the job ends; exit with its exit status.'
  )


def _tasks(args) -> tuple[int, int]:
  gpus = 1 if args.gpus_per_node is None else args.gpus_per_node
  return gpus, args.tasks_per_node or max(gpus, 1)


def _check_directive(name: str, value) -> None:
  """#SBATCH lines are not shell-quoted: a value there must be one word."""
  if value is not None and (not str(value) or any(c.isspace() for c in str(value))):
    raise ValueError(
      f'Bad {name} {value!r}: it goes into an #SBATCH line, so it must be one word (no spaces).'
    )


def script(args, jobs: list[tuple[str, list[str]]], log_dir: str, *, parallel: int = 0) -> str:
  """The sbatch script for `jobs` [(workdir, vit_jax.main args)]: one job, or an array job with a
  run per index."""
  for flag in ('job_name', 'time', 'partition', 'account'):
    _check_directive(f'--{flag}', getattr(args, flag))
  _check_directive('--log_dir', log_dir)
  for extra in args.sbatch_arg:
    if '\n' in extra or '\r' in extra:
      raise ValueError(f'Bad --sbatch_arg {extra!r}: one line only.')
  gpus, tasks = _tasks(args)
  array = len(jobs) > 1
  out_name = '%x-%A_%a' if array else '%x-%j'
  lines = [
    '#!/bin/bash',
    f'#SBATCH --job-name={args.job_name}',
    f'#SBATCH --nodes={args.nodes}',
    f'#SBATCH --ntasks-per-node={tasks}',
    f'#SBATCH --time={args.time}',
    f'#SBATCH --output={log_dir}/{out_name}.out',
    '#SBATCH --open-mode=append',
    '#SBATCH --requeue',
    f'#SBATCH --signal=TERM@{args.signal_s}',
  ]
  if gpus:
    lines.append(f'#SBATCH --gpus-per-node={gpus}')
  for flag in ('cpus_per_task', 'partition', 'account'):
    if getattr(args, flag):
      lines.append(f'#SBATCH --{flag.replace("_", "-")}={getattr(args, flag)}')
  if array:
    lines.append(f'#SBATCH --array=0-{len(jobs) - 1}' + (f'%{parallel}' if parallel else ''))
  lines += [f'#SBATCH {a}' for a in args.sbatch_arg]
  lines += [
    '# Written by launch/slurm.py. One task per GPU; '
    'jax.distributed.initialize() reads SLURM_* variables.',
    'set -uo pipefail',
    f'cd {shlex.quote(shell.REPO)}',
  ]
  if args.venv:
    lines.append(f'source {shlex.quote(os.path.join(args.venv, "bin", "activate"))}')
  lines.append('export PYTHONUNBUFFERED=1')
  env = shell.parse_env(args.env)
  for name, value in env.items():
    lines.append(f'export {name}={shlex.quote(value)}')
  if array:
    lines.append('case "$SLURM_ARRAY_TASK_ID" in')
    for i, (workdir, main_args) in enumerate(jobs):
      lines.append(f'  {i}) WORKDIR={shlex.quote(workdir)}; ARGS=({shlex.join(main_args)}) ;;')
    lines += ['  *) echo "No run for array index $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', 'esac']
  else:
    workdir, main_args = jobs[0]
    lines += [f'WORKDIR={shlex.quote(workdir)}', f'ARGS=({shlex.join(main_args)})']
  if shell.CACHE_ENV not in env:
    lines += [
      '# The compilation cache beside the workdir: shared by the tasks, the restarts and the runs '
      'beside it.',
      f'export {shell.CACHE_ENV}="$(dirname "$WORKDIR")/{shell.CACHE_NAME}"',
    ]
  task_log = f'{log_dir}/{out_name}-%t.out'
  restartable = ' '.join(map(str, errors.RESTARTABLE))
  status = f'{shlex.quote(log_dir)}/.status-"$SLURM_JOB_ID"' + (
    '-"$SLURM_ARRAY_TASK_ID"' if array else ''
  )
  lines += [
    '# Each task writes its exit status to STATUS_DIR/<task> (in the shared log folder); the step',
    '# ends when every task has ended, or 60 s after the first (srun --wait). A lost or hung',
    '# process (exit 75/76: a task whose coordinator or peer died says so itself, vit_jax/runtime/',
    '# aborts.py) beside tasks killed by a signal makes the step restartable (launch/outcome.py):',
    f'# it runs again, at most {args.max_restarts} times, {args.restart_backoff_s} s apart and '
    'doubling; the run resumes itself.',
    f'export {STATUS_ENV}={status}',
    # A trap, not an ignored SIGTERM: the trainer gets SLURM's SIGTERM as it would unwrapped, and
    # the wrapper waits for it to save and exit.
    'TASK=\'trap : TERM INT; python -m vit_jax.main "$@"; rc=$?; '
    f'echo "$rc" > "${STATUS_ENV}/$SLURM_PROCID"; exit "$rc"\'',
    'restarts=0',
    'while true; do',
    f'  rm -rf "${STATUS_ENV}"; mkdir -p "${STATUS_ENV}"',
    f'  srun --kill-on-bad-exit=0 --wait=60 --open-mode=append --output={shlex.quote(task_log)} '
    'bash -c "$TASK" vit_jax.main "${ARGS[@]}"',
    '  srun_rc=$?',
    f'  rc=$(python -m launch.outcome step "${STATUS_ENV}" "${{SLURM_NTASKS:-1}}" "$srun_rc") '
    '&& [ -n "$rc" ] || rc=$srun_rc',
    f'  rm -rf "${STATUS_ENV}"',
    f'  case " {restartable} " in *" $rc "*) ;; *) break ;; esac',
    f'  if [ "$restarts" -ge {args.max_restarts} ]; then echo "Exit status $rc again; '
    f'{args.max_restarts} restarts spent: giving up." >&2; break; fi',
    f'  wait_s=$(( {args.restart_backoff_s} << restarts )); restarts=$((restarts + 1))',
    f'  echo "A process was lost or hung (exit status $rc): running the step again in ${{wait_s}} '
    f's (restart $restarts of {args.max_restarts})." >&2',
    '  sleep "$wait_s"',
    'done',
    '# Stopped before the end (SIGTERM before the time limit, '
    'or a preemption) with a saved checkpoint: requeue.',
    'if [ "$rc" = 0 ] && ! python -m launch.record status "$WORKDIR"; then',
    f'  if [ "${{SLURM_RESTART_COUNT:-0}}" -lt {args.max_requeues} ]; then',
    '    echo "Run unfinished: requeueing job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0})."',
    '    scontrol requeue "$SLURM_JOB_ID" && exit 0',
    '  fi',
    'fi',
    'python -m launch.record exit "$WORKDIR" "$rc"',
    'exit "$rc"',
  ]
  return '\n'.join(lines) + '\n'


def submit(
  args, jobs, log_dir: str, runner: shell.Runner, *, parallel: int = 0, name: str = 'job'
) -> int:
  """Writes LOG_DIR/<name>.sbatch and sbatches it (in a dry run, prints the script instead).

  Each run's launch.json gets the command, commit and job id. Returns 0, or with `--wait` the job's
  exit status.
  """
  log_dir = os.path.abspath(log_dir)
  text = script(args, jobs, log_dir, parallel=parallel)
  path = os.path.join(log_dir, f'{name}.sbatch')
  if runner.dry_run:
    runner.note(f'{path}:')
    print(text, end='', file=runner.out)
  else:
    io.write_text(path, text)
    try:
      commit = shell.git_commit()
    except shell.CommandError:
      commit = None
    for i, (workdir, main_args) in enumerate(jobs):
      workdir_lib.write_launch(
        workdir,
        {
          'backend': 'slurm',
          'command': shell.main_command(main_args),
          'commit': commit,
          'script': path,
          'submitted': record.now(),
        },
      )
  done = runner.run(['sbatch', '--parsable', path], check=False)
  if runner.dry_run:
    return 0
  job_id = done.stdout.strip().split(';')[0]
  if done.returncode != 0 or not job_id:
    raise shell.CommandError(done.args, done.returncode, done.stderr)
  # Merged: the job may have started and written to it already.
  for i, (workdir, _) in enumerate(jobs):
    workdir_lib.write_launch(
      workdir, {'job_id': f'{job_id}_{i}' if len(jobs) > 1 else job_id}, merge=True
    )
  print(f'Submitted job {job_id}: {path}; logs in {log_dir}', file=sys.stderr)
  if not args.wait:
    return 0
  code = wait(job_id)
  print(f'Job {job_id} ended with exit status {code}.', file=sys.stderr)
  return code


TERMINAL = (
  'COMPLETED',
  'FAILED',
  'CANCELLED',
  'TIMEOUT',
  'NODE_FAIL',
  'PREEMPTED',
  'OUT_OF_MEMORY',
  'BOOT_FAIL',
  'DEADLINE',
)


def wait(job_id: str, *, poll_s: float = 1.0) -> int:
  """Waits until every task of the job has ended (a requeued one runs again); returns the largest
  exit status.

  Polls `scontrol show job` (sbatch --wait backs off to tens of seconds between checks).
  """
  while True:
    done = shell.Runner().query(['scontrol', 'show', 'job', '-o', job_id])
    # Gone from the controller's memory (long after its end): no status to read.
    if done.returncode != 0:
      return 1
    tasks = [
      dict(kv.split('=', 1) for kv in line.split() if '=' in kv)
      for line in done.stdout.splitlines()
    ]
    if tasks and all(t.get('JobState') in TERMINAL for t in tasks):
      codes = [
        int(t.get('ExitCode', '1:0').split(':')[0]) or (t['JobState'] != 'COMPLETED') for t in tasks
      ]
      return int(max(codes))
    time.sleep(poll_s)


def run_sweep(args, todo, sweep_dir: str, runner: shell.Runner) -> int:
  if io.is_remote(sweep_dir):
    raise SystemExit(
      'launch.sweep: the slurm backend needs a --sweep_dir on the shared filesystem, not gs://.'
    )
  return submit(
    args,
    [(run.workdir, list(run.args)) for run in todo],
    args.log_dir or sweep_dir,
    runner,
    parallel=args.parallel,
    name='slurm',
  )


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  ours, main_args = shell.split_args(argv)
  parser = argparse.ArgumentParser(
    prog='python -m launch.slurm',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
    usage='%(prog)s [flags] -- VIT_JAX_MAIN_ARGS',
  )
  parser.add_argument(
    '--dry-run', '--dry_run', dest='dry_run', action='store_true', help='Print the script only.'
  )
  add_flags(parser)
  args = parser.parse_args(ours)
  try:
    workdir = shell.workdir_of(main_args)
    return submit(
      args,
      [(workdir, main_args)],
      args.log_dir or os.path.join('runs', 'slurm'),
      shell.Runner(dry_run=args.dry_run),
      name=args.job_name,
    )
  except (ValueError, shell.CommandError) as e:
    print(f'launch.slurm: {e}', file=sys.stderr)
    return 1 if isinstance(e, shell.CommandError) else 2


if __name__ == '__main__':
  sys.exit(main())
