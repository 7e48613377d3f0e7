"""launch.sweep's tpu backend: a sweep's runs on Cloud TPU VMs. --tpu_mode=vm_per_run: a
`launch.tpu launch` process per run, in parallel, each supervising its own node NAME-<run index>;
--tpu_mode=one_vm: the runs one after the other on node NAME. The flags are launch.tpu's
(`tpu.add_sweep_flags`).
"""

import os
import signal
import subprocess
import sys
import time

from launch import node as node_lib
from launch import shell, supervise, tpu
from vit_jax import io


def node_argv(args, name: str) -> list[str]:
  """The flags of `launch.tpu launch` that reproduce the sweep's node and launch settings, for node
  `name`."""
  out = [
    f'--name={name}',
    f'--zones={args.zones}',
    f'--accelerator={args.accelerator}',
    f'--code={args.code}',
    f'--code_dir={args.code_dir}',
    f'--python={args.python}',
    f'--poll={args.poll:g}',
    f'--max_preemptions={args.max_preemptions}',
    f'--max_failures={args.max_failures}',
    f'--capacity_wait={args.capacity_wait:g}',
    f'--queue_wait={args.queue_wait:g}',
    f'--retry_interval={args.retry_interval:g}',
    f'--stop_grace={args.stop_grace}',
  ]
  out += [f'--{k}={getattr(args, k)}' for k in ('project', 'version') if getattr(args, k)]
  out += [f'--{k}' for k in ('spot', 'reserved', 'queued', 'keep') if getattr(args, k)]
  return out + [f'--create_arg={a}' for a in args.create_arg]


def run_sweep(args, runs, todo, runner: shell.Runner) -> int:
  """launch.sweep's tpu backend: a supervised node per run (in parallel), or the runs in turn on one
  node."""
  if not args.name or not args.zones:
    raise ValueError(
      "The tpu backend needs --name (the node, or the prefix of each run's node) and --zones."
    )
  bad = [r.workdir for r in todo if not io.is_remote(r.workdir)]
  if bad:
    raise ValueError(
      'The tpu backend needs a gs:// --sweep_dir (the workers '
      f'write there; `results` reads it), not {bad[0]}.'
    )
  if args.tpu_mode == 'one_vm':
    node = node_lib.Tpu(tpu.node_from(args), runner)
    return supervise.Supervisor(
      node, [tpu.with_distributed(r.args) for r in todo], tpu.settings_from(args)
    ).launch()
  index = {r.name: i for i, r in enumerate(runs)}
  children = [
    [
      sys.executable,
      '-m',
      'launch.tpu',
      'launch',
      *node_argv(args, f'{args.name}-{index[r.name]}'),
      *(['--dry-run'] if runner.dry_run else []),
      '--',
      *r.args,
    ]
    for r in todo
  ]
  if runner.dry_run:
    for argv in children:
      print(shell.shell_line(argv), file=runner.out)
    return 0
  return _run_children(children, args.parallel or len(children))


def _run_children(children, parallel: int) -> int:
  env = {
    **os.environ,
    'PYTHONPATH': os.pathsep.join(filter(None, [shell.REPO, os.environ.get('PYTHONPATH')])),
  }
  pending = list(children)
  running = []
  codes = []
  try:
    while pending or running:
      # Own sessions: one Ctrl-C here, one question for all.
      while pending and len(running) < parallel:
        running.append(
          subprocess.Popen(
            pending.pop(0), stdin=subprocess.PIPE, text=True, env=env, start_new_session=True
          )
        )
      for proc in [p for p in running if p.poll() is not None]:
        codes.append(proc.returncode)
        running.remove(proc)
      time.sleep(1)
  except KeyboardInterrupt:
    try:
      answer = input(
        f'\nDelete the {len(running)} running node(s) of '
        'this sweep now (each job saves first)? [Y/n] '
      )
    except (EOFError, KeyboardInterrupt):
      answer = 'y'
    for proc in running:
      proc.send_signal(signal.SIGINT)
      proc.stdin.write(answer + '\n')
      proc.stdin.flush()
    for proc in running:
      proc.wait()
    return 130
  return 1 if any(codes) else 0
