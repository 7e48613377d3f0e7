"""A SkyPilot task YAML that runs the same `python -m vit_jax.main ...` (SkyPilot itself is not a
dependency).

    python -m launch.sky --accelerators=tpu-v4-32 --spot --out=pretrain.yaml -- \
        --config=configs/pretrain_i1k.py:ViT-S_16 --workdir=gs://my-bucket/runs/vit_s16
    sky jobs launch pretrain.yaml     # a managed job: recovered after preemptions, the same
        command rerun

The task syncs this clone as its workdir, installs it with the TPU or CUDA extra in a venv (setup),
and runs the command (run). On a TPU pod slice every host runs it with --distributed=on; on several
GPU nodes (`--nodes`), each node runs one process over its GPUs and vit_jax.main joins them from
SKYPILOT_NODE_IPS / SKYPILOT_NODE_RANK / SKYPILOT_NUM_NODES. Managed-job recovery (`job_recovery`)
reruns the command after a preemption, and the trainer resumes from the workdir's last checkpoint,
so the workdir must outlive the cluster (gs:// or a mounted bucket).
"""

import argparse
import json
import shlex
import sys

from launch import gcloud, shell
from vit_jax import io


def _scalar(value) -> str:
  """A YAML scalar: JSON's quoting is valid YAML for strings; numbers and booleans as they are."""
  return json.dumps(value)


def _block(text: str, indent: str = '  ') -> str:
  return '|\n' + ''.join(f'{indent}{line}\n' for line in text.splitlines())


def task_yaml(
  main_args,
  *,
  accelerators: str,
  nodes: int = 1,
  spot: bool = False,
  name: str = 'vit-jax',
  recovery: str = 'EAGER_NEXT_REGION',
  max_restarts_on_errors: int = 2,
  python: str = '3.11',
  runtime_version: str | None = None,
  envs: dict | None = None,
) -> str:
  tpu = accelerators.startswith('tpu-')
  if any('\n' in a or '\r' in a for a in main_args):
    raise ValueError('An argument holds a line break, which the YAML run block cannot carry.')
  if tpu and nodes != 1:
    raise ValueError(
      'A TPU pod slice is one SkyPilot node: give its '
      'size in --accelerators (tpu-v4-32), not --nodes.'
    )
  args = (
    ['--distributed=on']
    if tpu and not any(a.startswith('--distributed') for a in main_args)
    else []
  ) + list(main_args)
  extra = 'tpu' if tpu else 'cuda'
  setup = '\n'.join(
    [
      'set -e',
      'export PATH="$HOME/.local/bin:$PATH"',
      'command -v uv >/dev/null || python3 -m pip install -q --user uv',
      f'test -x .venv/bin/python || uv venv -q --python {shlex.quote(python)} .venv',
      f"uv pip install -q --python .venv/bin/python -e '.[{extra}]'",
    ]
  )
  run = '\n'.join(
    ['set -e', 'export PYTHONUNBUFFERED=1', f'.venv/bin/python -m vit_jax.main {shlex.join(args)}']
  )
  lines = [
    '# Written by launch/sky.py. Launch as a managed job: sky jobs launch <this file>',
    f'name: {_scalar(name)}',
    'workdir: .',
    f'num_nodes: {int(nodes)}',
    'resources:',
    f'  accelerators: {_scalar(accelerators)}',
    f'  use_spot: {_scalar(bool(spot))}',
    '  job_recovery:',
    f'    strategy: {_scalar(recovery)}',
    f'    max_restarts_on_errors: {int(max_restarts_on_errors)}',
  ]
  if tpu:
    version = runtime_version or gcloud.default_runtime(accelerators[len('tpu-') :])
    lines += ['  accelerator_args:', f'    runtime_version: {_scalar(version)}', '    tpu_vm: true']
  # The compilation cache beside the workdir, shared by the hosts, the recoveries and the runs
  # beside it.
  envs = {shell.CACHE_ENV: shell.shared_cache_dir(shell.workdir_of(main_args)), **(envs or {})}
  lines += ['envs:'] + [f'  {k}: {_scalar(v)}' for k, v in envs.items()]
  lines += [f'setup: {_block(setup)}'.rstrip('\n'), f'run: {_block(run)}'.rstrip('\n')]
  return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  ours, main_args = shell.split_args(argv)
  parser = argparse.ArgumentParser(
    prog='python -m launch.sky',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
    usage='%(prog)s --accelerators=... [flags] -- VIT_JAX_MAIN_ARGS',
  )
  parser.add_argument(
    '--accelerators', required=True, help="SkyPilot's accelerators: tpu-v4-32, H100:8, A100:8..."
  )
  parser.add_argument(
    '--nodes', type=int, default=1, help='GPU nodes (one process each, over all its GPUs).'
  )
  parser.add_argument('--spot', action='store_true')
  parser.add_argument('--name', default='vit-jax')
  parser.add_argument(
    '--recovery', default='EAGER_NEXT_REGION', help='job_recovery strategy (or FAILOVER).'
  )
  parser.add_argument(
    '--max_restarts_on_errors',
    type=int,
    default=2,
    help='Reruns after the job itself fails (preemptions are always recovered).',
  )
  parser.add_argument('--python', default='3.11')
  parser.add_argument(
    '--runtime_version', help='TPU software version (default: the one documented for JAX).'
  )
  parser.add_argument('--env', action='append', default=[], metavar='KEY=VALUE')
  parser.add_argument('--out', default='-', help='The YAML file to write (default: stdout).')
  args = parser.parse_args(ours)
  try:
    shell.workdir_of(main_args)
    envs = shell.parse_env(args.env)
    text = task_yaml(
      main_args,
      accelerators=args.accelerators,
      nodes=args.nodes,
      spot=args.spot,
      name=args.name,
      recovery=args.recovery,
      max_restarts_on_errors=args.max_restarts_on_errors,
      python=args.python,
      runtime_version=args.runtime_version,
      envs=envs,
    )
  except ValueError as e:
    print(f'launch.sky: {e}', file=sys.stderr)
    return 2
  if args.out == '-':
    sys.stdout.write(text)
  else:
    io.write_text(args.out, text)
    print(
      f'Wrote {args.out}. Launch it with: sky jobs launch {shlex.quote(args.out)}', file=sys.stderr
    )
  return 0


if __name__ == '__main__':
  sys.exit(main())
