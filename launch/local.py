"""One multi-process job on this machine (processes on 127.0.0.1), rerun when a process is lost or
hangs.

    python -m launch.local --processes=4 --devices_per_process=2 -- --config=configs/default.py
        --workdir=runs/d4
    python -m launch.local --processes=2 --gpus=0,1 -- --config=configs/vit.py:ViT-B_16,cifar10
        --workdir=runs/b16

Starts `python -m vit_jax.main ARGS --coordinator_address=127.0.0.1:PORT --num_processes=N
--process_id=i` for each i, with `--devices_per_process` CPU devices each (XLA_FLAGS) or one GPU
each (`--gpus`). Each line of a process's output is shown prefixed with `[i]`. When a process exits
non-zero, the others get `--grace_s` seconds to end by themselves (the watchdog ends them within its
bounds: vit_jax/runtime/watchdog.py); any still running then is killed (a stopped one too), so no
process outlives its job. The attempt's exit statuses decide (launch/outcome.py, `restartable`): a
lost or hung process (75, 76, beside processes killed by a signal) reruns the same command on all
processes, at most `--max_restarts` times, `--backoff_s` seconds apart and doubling, and the run
resumes from its last checkpoint; anything else (a bad config, a bug) is not retried. (When process
0, the coordinator, dies, the others say so in one line and exit 75 by themselves:
vit_jax/runtime/aborts.py.) Ctrl-C sends every process SIGTERM: they save a checkpoint and stop.
Exits with the last attempt's status (the first non-zero one, else 0).
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from launch import outcome, shell
from vit_jax.runtime import aborts


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_command(
  main_args, *, port: int, processes: int, index: int, python: str = sys.executable
) -> list[str]:
  return [
    *shell.main_command(main_args, python=python),
    f'--coordinator_address=127.0.0.1:{port}',
    f'--num_processes={processes}',
    f'--process_id={index}',
  ]


def process_env(
  index: int, *, devices_per_process: int | None, gpus: list[str] | None, port: int, base=None
) -> dict:
  """The environment of process `index`: its devices, and the coordinator (process 0) listening on
  127.0.0.1 only (JAX's default is every interface) unless JAX_COORDINATOR_BIND_ADDRESS says
  otherwise."""
  env = dict(os.environ if base is None else base)
  env.setdefault('JAX_COORDINATOR_BIND_ADDRESS', f'127.0.0.1:{port}')
  if gpus:
    env['CUDA_VISIBLE_DEVICES'] = gpus[index]
  elif devices_per_process:
    env['JAX_PLATFORMS'] = 'cpu'
    flags = [
      f
      for f in env.get('XLA_FLAGS', '').split()
      if not f.startswith('--xla_force_host_platform_device_count')
    ]
    env['XLA_FLAGS'] = ' '.join(
      flags + [f'--xla_force_host_platform_device_count={devices_per_process}']
    )
  return env


class _Relay(threading.Thread):
  """Shows process `index`'s output prefixed with `[index]`. (vit_jax.main itself turns an abort
  after a lost peer into one line and exit status 75: vit_jax/runtime/aborts.py.)"""

  def __init__(self, index: int, stream, out):
    super().__init__(daemon=True)
    self.index = index
    self.stream = stream
    self.out = out

  def run(self) -> None:
    for line in self.stream:
      self.out.write(f'[{self.index}] {line}')
      self.out.flush()


class Attempt:
  """The processes of one run of the job."""

  def __init__(self, main_args, args, out):
    port = free_port()
    self.procs = []
    self.relays = []
    self.out = out
    for i in range(args.processes):
      proc = subprocess.Popen(
        process_command(main_args, port=port, processes=args.processes, index=i),
        env=process_env(i, devices_per_process=args.devices_per_process, gpus=args.gpus, port=port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
      )
      self.procs.append(proc)
      relay = _Relay(i, proc.stdout, out)
      relay.start()
      self.relays.append(relay)
      print(
        f'launch.local: process {i} of {args.processes}: pid {proc.pid}',
        file=sys.stderr,
        flush=True,
      )

  def wait(self, grace_s: float, poll_s: float = 0.5) -> list[int]:
    """Waits for every process, printing each exit as it happens; after a non-zero exit, at most
    `grace_s` more, then kills the rest. Exit statuses as a shell reports them (128 + N for a
    signal)."""
    codes: dict[int, int] = {}
    deadline = None
    killed = False
    while len(codes) < len(self.procs):
      for i, p in enumerate(self.procs):
        if i not in codes and p.poll() is not None:
          codes[i] = self._code(i)
          print(
            f'launch.local: process {i} exited ({outcome.describe_exit(codes[i])}).',
            file=sys.stderr,
            flush=True,
          )
      if deadline is None and any(codes.values()):
        deadline = time.monotonic() + grace_s
      if not killed and deadline is not None and time.monotonic() > deadline:
        killed = True
        for i, p in enumerate(self.procs):
          if p.poll() is None:
            print(
              f'launch.local: process {i} still runs '
              f'{grace_s:.0f} s after another failed: killing it.',
              file=sys.stderr,
              flush=True,
            )
            p.kill()
      if len(codes) < len(self.procs):
        time.sleep(poll_s)
    return [codes[i] for i in range(len(self.procs))]

  def _code(self, i: int) -> int:
    """Process i's exit status, once it has exited (its output read to the end first)."""
    self.relays[i].join(timeout=5)
    return aborts.status_of(self.procs[i].returncode)

  def terminate(self) -> None:
    for p in self.procs:
      if p.poll() is None:
        p.send_signal(signal.SIGTERM)


def run(main_args, args, out=sys.stdout) -> int:
  restarts = 0
  while True:
    attempt = Attempt(main_args, args, out)
    try:
      codes = attempt.wait(args.grace_s)
    except KeyboardInterrupt:
      print(
        'launch.local: Ctrl-C: asking every process to save a checkpoint and stop.', file=sys.stderr
      )
      attempt.terminate()
      codes = attempt.wait(args.grace_s)
    code = next((c for c in codes if c), 0)
    print(f'launch.local: exit statuses {codes}.', file=sys.stderr, flush=True)
    if not outcome.restartable(codes):
      return code
    if restarts >= args.max_restarts:
      print(
        f'launch.local: {outcome.describe_exit(code)} again; '
        f'{args.max_restarts} restarts spent: giving up.',
        file=sys.stderr,
      )
      return code
    wait_s = args.backoff_s * 2**restarts
    restarts += 1
    print(
      f'launch.local: {outcome.describe_exit(code)} (restartable): '
      f'running the job again in {wait_s:.0f} s (restart {restarts} '
      f'of {args.max_restarts}); it resumes from its last checkpoint.',
      file=sys.stderr,
      flush=True,
    )
    time.sleep(wait_s)


def parser():
  p = argparse.ArgumentParser(
    prog='launch.local',
    description=__doc__.split('\n\n')[0],
    usage='python -m launch.local --processes=N [flags] -- VIT_JAX_MAIN_ARGS...',
  )
  p.add_argument(
    '--processes',
    type=int,
    required=True,
    help='Processes of the job (one jax.distributed process each).',
  )
  p.add_argument(
    '--devices_per_process', type=int, default=None, help='CPU devices per process (XLA_FLAGS).'
  )
  p.add_argument(
    '--gpus', default=None, help='Comma-separated GPU ids, one per process (CUDA_VISIBLE_DEVICES).'
  )
  p.add_argument('--max_restarts', type=int, default=3)
  p.add_argument(
    '--backoff_s', type=float, default=5.0, help='Seconds before the first rerun (doubling).'
  )
  p.add_argument(
    '--full_dumps',
    action='store_true',
    help='Passes --full_dumps to vit_jax.main: the stack dumps of a process aborted after a lost '
    'peer, or hung, on the console (by default one line names the cause).',
  )
  p.add_argument(
    '--grace_s',
    type=float,
    default=90.0,
    help='After a process fails, how long the others may '
    'take to end by themselves before they are killed.',
  )
  return p


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if '--' not in argv:
    parser().error("give vit_jax.main's arguments after '--'")
  split = argv.index('--')
  args = parser().parse_args(argv[:split])
  args.gpus = [g.strip() for g in args.gpus.split(',') if g.strip()] if args.gpus else None
  if args.processes < 1:
    parser().error(f'--processes={args.processes} must be at least 1')
  if args.gpus and len(args.gpus) != args.processes:
    parser().error(
      f'--gpus={",".join(args.gpus)} names {len(args.gpus)} '
      f'GPUs for --processes={args.processes}: one per process'
    )
  for flag in ('--coordinator_address', '--num_processes', '--process_id'):
    if any(a.startswith(flag) for a in argv[split + 1 :]):
      parser().error(f'{flag} is set by launch.local; leave it out of the arguments after --')
  return run(argv[split + 1 :] + (['--full_dumps'] if args.full_dumps else []), args)


if __name__ == '__main__':
  sys.exit(main())
