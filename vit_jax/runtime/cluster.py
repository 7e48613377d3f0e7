"""Whether `python -m vit_jax.main` is one process of a multi-process job, from its command line and
environment alone: no JAX and no flag parsing, so that the parent of such a run
(vit_jax/runtime/aborts.py) decides before anything heavy is imported."""

import os


def detected(env=os.environ) -> bool:
  """A cluster that jax.distributed finds by itself: SLURM with several tasks, a TPU pod's hosts,
  Megascale."""
  return (
    bool(env.get('SLURM_JOB_ID') and int(env.get('SLURM_NTASKS', '1')) > 1)
    or bool(env.get('TPU_WORKER_HOSTNAMES') and ',' in env.get('TPU_WORKER_HOSTNAMES', ''))
    or bool(env.get('MEGASCALE_COORDINATOR_ADDRESS'))
  )


def skypilot(env=os.environ) -> tuple[str, int, int] | None:
  """(coordinator address, process count, process id) on a multi-node SkyPilot cluster, one process
  per node (all its GPUs): node 0 of SKYPILOT_NODE_IPS coordinates, on port JAX_COORDINATOR_PORT
  (default 8476) as for JAX's own cluster detection. None elsewhere (a TPU pod is one SkyPilot node;
  its hosts find each other)."""
  nodes = int(env.get('SKYPILOT_NUM_NODES') or 1)
  ips = env.get('SKYPILOT_NODE_IPS', '').split()
  if nodes <= 1 or not ips or env.get('SKYPILOT_NODE_RANK') is None:
    return None
  return (
    f'{ips[0]}:{env.get("JAX_COORDINATOR_PORT", "8476")}',
    nodes,
    int(env['SKYPILOT_NODE_RANK']),
  )


def argv_value(argv, name: str) -> str | None:
  """The last value of --name=VALUE or --name VALUE in argv (argv[0] is the program)."""
  value = None
  for i, arg in enumerate(argv[1:], 1):
    if arg.startswith(f'--{name}='):
      value = arg.split('=', 1)[1]
    elif arg == f'--{name}' and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def multi_process(argv, env=os.environ) -> bool:
  """Whether vit_jax.main's `argv` in `env` starts jax.distributed: --distributed=on, or 'auto' (the
  default) with --coordinator_address or a detected cluster."""
  mode = argv_value(argv, 'distributed') or 'auto'
  return mode == 'on' or (
    mode == 'auto'
    and (
      argv_value(argv, 'coordinator_address') is not None
      or skypilot(env) is not None
      or detected(env)
    )
  )
