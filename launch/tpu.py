"""Cloud TPU VMs and pod slices through the GA gcloud CLI: `python -m launch.tpu SUBCOMMAND [flags]
[-- ARGS]`.

  create   a TPU VM or pod slice, directly or (--queued) through a queued resource; --spot,
           --reserved or on-demand; --zones a,b,c are tried in order until one has capacity
  setup    ship the code (a git archive of HEAD, or --code=pip:SPEC) to every worker and install it
           with its TPU extra in ~/vit_jax/.venv (idempotent)
  run      start `python -m vit_jax.main --distributed=on ARGS` on every worker at once, detached,
           each worker's output in ~/vit_jax_run/worker.log; writes launch.json (command, commit,
           accelerator, zone) to the workdir
  logs     worker 0's log (-f follows; --worker=all prefixes each line with its worker)
  status   the node's (and queued resource's) state and each worker's job state
  ssh      a shell on a worker (--command runs one instead)
  stop     stop the job (SIGTERM: it saves a checkpoint and exits) and free the TPU from any process
           still holding it
  delete   delete the node (with --queued, the queued resource and its node)
  launch   create + setup + run, then supervise until the run is finished, recreating the node after
           preemptions (launch/supervise.py); then delete unless --keep
Every subcommand takes --dry-run: it prints the commands it would run, one per line, and runs
nothing. ARGS (after "--") are vit_jax.main's, with paths relative to the clone's root and a gs://
--workdir (a local one is on the VM's own disk, deleted with the node; `run` and `launch` refuse it
unless --allow_local_workdir), e.g.

  python -m launch.tpu launch --name=vit-s16 --accelerator=v4-32 --zones=us-central2-b --spot -- \
      --config=configs/pretrain_i1k.py:ViT-S_16 --workdir=gs://my-bucket/runs/vit_s16
"""

import argparse
import os
import sys

from launch import code as code_lib
from launch import gcloud, shell, supervise
from launch import node as node_lib
from vit_jax import io

SUBCOMMANDS = ('create', 'setup', 'run', 'logs', 'status', 'ssh', 'stop', 'delete', 'launch')


def _node_flags(g, *, name_required: bool) -> None:
  g.add_argument('--name', required=name_required, help='TPU (and queued resource) name.')
  g.add_argument(
    '--zones',
    '--zone',
    dest='zones',
    default=os.environ.get('CLOUDSDK_COMPUTE_ZONE'),
    help='Comma-separated zones, tried in order until one has capacity.',
  )
  g.add_argument('--project', help="Google Cloud project (default: gcloud's).")
  g.add_argument(
    '--accelerator', default='v4-8', help='Accelerator type, e.g. v4-32, v5litepod-16, v6e-8.'
  )
  g.add_argument(
    '--version',
    help='TPU software version (default: the one Cloud TPU documents for JAX on the accelerator '
    'generation, e.g. tpu-ubuntu2204-base for v4).',
  )
  kind = g.add_mutually_exclusive_group()
  kind.add_argument(
    '--spot', action='store_true', help='Spot capacity (may be preempted at any time).'
  )
  kind.add_argument('--reserved', action='store_true', help='Reserved capacity.')
  g.add_argument('--queued', action='store_true', help='Create through a queued resource.')
  g.add_argument(
    '--create_arg',
    action='append',
    default=[],
    help='Another argument for the gcloud create command (repeat), e.g. '
    '--create_arg=--network=my-net.',
  )


def _create_flags(g, *, capacity_wait: float) -> None:
  g.add_argument(
    '--capacity_wait',
    type=float,
    default=capacity_wait,
    help='Seconds to keep walking the zones while none has capacity (default %(default)s).',
  )
  g.add_argument(
    '--queue_wait',
    type=float,
    default=0,
    help='--queued: seconds to wait in one zone before trying the '
    'next (0: wait there until the request is granted or fails).',
  )
  g.add_argument(
    '--retry_interval', type=float, default=60, help='Seconds between walks of the zones.'
  )


def _setup_flags(g) -> None:
  g.add_argument(
    '--code',
    default='git',
    help="'git': ship a git archive of HEAD of --code_dir; 'pip:SPEC': install SPEC (e.g. "
    "'vit_jax[tpu] @ git+https://...@v1') and ship configs/ and launch/.",
  )
  g.add_argument('--code_dir', default=shell.REPO, help='The clone to ship (default: this one).')
  g.add_argument('--python', default='3.11', help="Python version of the workers' venv.")


def _launch_flags(g) -> None:
  g.add_argument(
    '--keep', action='store_true', help='Keep the node when the run has finished (or given up).'
  )
  g.add_argument('--poll', type=float, default=60, help='Seconds between state checks.')
  g.add_argument(
    '--max_preemptions',
    type=int,
    default=20,
    help='Recreate/rerun at most this many times after preemptions.',
  )
  g.add_argument(
    '--max_failures',
    type=int,
    default=2,
    help='Rerun at most this many times after the job failed (non-zero exit) on a healthy node.',
  )
  g.add_argument(
    '--stop_grace', type=int, default=120, help='Seconds a stopped job gets to save before SIGKILL.'
  )


def add_sweep_flags(parser) -> None:
  """The flags of launch.sweep's tpu backend (launch/tpu_sweep.py): the node (its --name is the
  prefix of each run's node), launch's."""
  g = parser.add_argument_group('Cloud TPU (--backend=tpu)')
  g.add_argument(
    '--tpu_mode',
    choices=('vm_per_run', 'one_vm'),
    default='vm_per_run',
    help='vm_per_run: a node per run, named NAME-<run index>; '
    'one_vm: the runs one after the other on node NAME.',
  )
  _node_flags(g, name_required=False)
  _create_flags(g, capacity_wait=3600)
  _setup_flags(g)
  _launch_flags(g)


def check_workdir(main_args, *, allow_local: bool = False) -> str:
  """The run's --workdir; a ValueError (one line: why, and what to give) for a local one, unless
  `allow_local`."""
  workdir = shell.workdir_of(main_args)
  if not io.is_remote(workdir) and not allow_local:
    raise ValueError(
      f"--workdir={workdir} is on the TPU VM's own disk, which is deleted with the node (on a "
      'preemption, and at the end): give --workdir=gs://BUCKET/PATH, or pass '
      '--allow_local_workdir for a single-host experiment you accept losing.'
    )
  return workdir


def node_from(args) -> gcloud.Node:
  zones = tuple(z.strip() for z in (args.zones or '').split(',') if z.strip())
  provisioning = 'spot' if args.spot else 'reserved' if args.reserved else 'on-demand'
  return gcloud.Node(
    name=args.name,
    accelerator=args.accelerator,
    zones=zones,
    project=args.project,
    version=args.version,
    provisioning=provisioning,
    queued=args.queued,
    create_args=tuple(args.create_arg),
  )


def settings_from(args) -> supervise.Settings:
  return supervise.Settings(
    keep=args.keep,
    poll_s=args.poll,
    max_preemptions=args.max_preemptions,
    max_failures=args.max_failures,
    capacity_wait_s=args.capacity_wait,
    queue_wait_s=args.queue_wait,
    retry_s=args.retry_interval,
    code=args.code,
    code_dir=args.code_dir,
    python=args.python,
    stop_grace_s=args.stop_grace,
  )


def with_distributed(main_args) -> list[str]:
  """The run's arguments with --distributed=on (every worker joins one jax.distributed job), unless
  given."""
  return (
    list(main_args)
    if any(a.startswith('--distributed') for a in main_args)
    else ['--distributed=on', *main_args]
  )


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog='python -m launch.tpu',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest='subcommand', required=True, metavar='SUBCOMMAND')
  for name in SUBCOMMANDS:
    p = sub.add_parser(name, help=f'see "{name}" above')
    p.add_argument(
      '--dry-run',
      '--dry_run',
      dest='dry_run',
      action='store_true',
      help='Print the commands, one per line; run nothing.',
    )
    _node_flags(p, name_required=True)
    if name in ('create', 'launch'):
      _create_flags(p, capacity_wait=3600 if name == 'launch' else 0)
    if name in ('setup', 'launch'):
      _setup_flags(p)
    if name == 'launch':
      _launch_flags(p)
    if name in ('run', 'launch'):
      p.add_argument(
        '--allow_local_workdir',
        action='store_true',
        help="Accept a local --workdir: the VM's own disk, deleted with the node, so a preemption "
        'or the final delete loses the run (single host only; a pod needs gs://).',
      )
    if name == 'logs':
      p.add_argument('-f', '--follow', action='store_true')
      p.add_argument('--lines', type=int, default=100)
    if name in ('logs', 'ssh'):
      p.add_argument('--worker', default='0', help="A worker index, or 'all'.")
    if name == 'ssh':
      p.add_argument('--command', help='Run this on the worker(s) instead of opening a shell.')
    if name == 'stop':
      p.add_argument(
        '--grace', type=int, default=120, help='Seconds the job gets to save before SIGKILL.'
      )
  return parser


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  ours, main_args = shell.split_args(argv)
  parser = _parser()
  args = parser.parse_args(ours)
  runner = shell.Runner(dry_run=args.dry_run)
  tpu = None
  try:
    tpu = node_lib.Tpu(node_from(args), runner)
    if args.subcommand in ('run', 'launch'):
      check_workdir(main_args, allow_local=args.allow_local_workdir)
    elif main_args:
      raise ValueError(
        f'{args.subcommand} takes no vit_jax.main arguments (got {shell.shell_line(main_args)}).'
      )
    return _dispatch(args, tpu, with_distributed(main_args))
  except (ValueError, shell.CommandError, node_lib.NoCapacity) as e:
    print(f'launch.tpu {args.subcommand}: {e}', file=sys.stderr)
    return 2 if isinstance(e, ValueError) else 1
  except KeyboardInterrupt:  # (`launch` asks what to do itself.)
    if args.subcommand == 'create' and tpu and tpu.adopt_interrupted_create():
      print(
        f'\nlaunch.tpu create: interrupted; {tpu.where()} exists and holds capacity (and quota) '
        f'until it is deleted:\n  {tpu.delete_command()}',
        file=sys.stderr,
      )
    return 130


def _dispatch(args, tpu: node_lib.Tpu, main_args) -> int:
  command = args.subcommand
  runner = tpu.runner
  if command == 'launch':
    return supervise.Supervisor(tpu, [main_args], settings_from(args)).launch()
  if command == 'create':
    zone = tpu.create(
      capacity_wait_s=args.capacity_wait, queue_wait_s=args.queue_wait, retry_s=args.retry_interval
    )
    if not runner.dry_run:
      print(f'Created {tpu.where()}.', file=sys.stderr)
    return 0 if zone else 1
  tpu.locate()
  if command == 'setup':
    with code_lib.packed(args.code, args.code_dir, runner) as code:
      tpu.setup(code, python=args.python)
  elif command == 'run':
    states = None if runner.dry_run else tpu.job_states()
    if states and 'running' in states:
      raise ValueError(
        f'A job is running on {tpu.where()}; stop it first: python -m launch.tpu stop '
        f'--name={tpu.node.name} --zones={tpu.zone}'
      )
    tpu.run(main_args)
  elif command == 'logs':
    try:
      tpu.logs(follow=args.follow, lines=args.lines, worker=args.worker)
    except KeyboardInterrupt:
      pass
  elif command == 'status':
    for line in tpu.status_lines():
      print(line)
  elif command == 'ssh':
    tpu.shell(args.command, worker=args.worker)
  elif command == 'stop':
    tpu.stop(args.grace)
  elif command == 'delete':
    tpu.delete()
  return 0


if __name__ == '__main__':
  sys.exit(main())
