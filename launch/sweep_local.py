"""launch.sweep's local backend: the runs of a sweep as processes on this machine, one per GPU slot
(or CPU), N at a time."""

import os
import signal
import socket
import subprocess
import sys
import time

from launch import record, shell
from vit_jax import io
from vit_jax.runtime import workdir as workdir_lib


def detect_gpus() -> list[str]:
  try:
    out = subprocess.run(
      ['nvidia-smi', '--query-gpu=index', '--format=csv,noheader'],
      capture_output=True,
      text=True,
      check=True,
      timeout=30,
    ).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  return [line.strip() for line in out.splitlines() if line.strip()]


def run_local(
  runs: list,  # launch.sweep.Run
  *,
  parallel: int,
  gpus: list[str],
  runner: shell.Runner,
  python: str = sys.executable,
  poll_s: float = 0.5,
) -> dict[str, int]:
  """Runs `runs` on this machine, `parallel` at a time (one GPU each when `gpus`); returns {name:
  exit status}.

  Each run writes its output to WORKDIR/run.log and launch.json (command, commit, host, pid; its
  exit status once it ends). The first run starts alone and the others once it has written its
  config.json (its dataset is prepared by then), so that parallel runs never race to download or
  build one dataset. Ctrl-C sends each run SIGTERM (it saves a checkpoint and exits 0) and waits for
  them.
  """
  slots = list(gpus) if gpus else [None] * max(1, parallel)
  if gpus and parallel:
    slots = slots[:parallel]
  try:
    commit = shell.git_commit()
  except shell.CommandError:
    commit = None
  if runner.dry_run:
    for i, run in enumerate(runs):
      gpu = slots[i % len(slots)]
      env = ['env', f'CUDA_VISIBLE_DEVICES={gpu}'] if gpu is not None else []
      print(shell.shell_line([*env, *shell.main_command(run.args, python=python)]), file=runner.out)
    return {}
  pending = list(runs)  # active: slot index -> (run, Popen, log file)
  active = {}
  codes = {}
  first = None  # (run, Popen) of the first run, until it has prepared its dataset.
  try:
    while pending or active:
      if first and (
        first[1].poll() is not None
        or os.path.exists(workdir_lib.path(first[0].workdir, workdir_lib.CONFIG_FILE))
      ):
        first = None
      for slot in range(len(slots)):
        if slot not in active and pending and not first:
          run = pending.pop(0)
          active[slot] = _start(run, slots[slot], commit, python)
          if len(codes) + len(active) == 1:
            first = active[slot][:2]
      for slot, (run, proc, log) in list(active.items()):
        if proc.poll() is not None:
          log.close()
          record.record_exit(run.workdir, proc.returncode)
          codes[run.name] = proc.returncode
          print(
            f'{run.name}: exited {proc.returncode} ({len(codes)} of {len(runs)} done)',
            file=sys.stderr,
          )
          del active[slot]
      time.sleep(poll_s)
  except KeyboardInterrupt:
    print(
      'Interrupted: asking the running runs to save a '
      'checkpoint and stop (Ctrl-C again kills them).',
      file=sys.stderr,
    )
    _stop(active, codes)
    raise
  return codes


def _start(run, gpu, commit, python):
  env = dict(os.environ)
  if gpu is not None:
    env['CUDA_VISIBLE_DEVICES'] = str(gpu)
  command = shell.main_command(run.args, python=python)
  log = io.open_log(workdir_lib.path(run.workdir, workdir_lib.RUN_LOG))
  log.write(f'\n=== {record.now()} {shell.shell_line(command)}\n')
  log.flush()
  # A session of its own: a Ctrl-C at the terminal reaches only this launcher, which then stops each
  # run once.
  proc = subprocess.Popen(
    command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
  )
  workdir_lib.write_launch(
    run.workdir,
    {
      'backend': 'local',
      'command': command,
      'commit': commit,
      'gpu': gpu,
      'host': socket.gethostname(),
      'pid': proc.pid,
      'started': record.now(),
    },
  )
  print(
    f'{run.name}: started (pid {proc.pid}{"" if gpu is None else f", GPU {gpu}"}), log {log.name}',
    file=sys.stderr,
  )
  return run, proc, log


def _stop(active, codes):
  for _, proc, _ in active.values():
    if proc.poll() is None:
      proc.send_signal(signal.SIGTERM)
  try:
    for run, proc, log in active.values():
      proc.wait()
      log.close()
      record.record_exit(run.workdir, proc.returncode)
      codes[run.name] = proc.returncode
  except KeyboardInterrupt:
    for _, proc, _ in active.values():
      if proc.poll() is None:
        proc.kill()
    raise
