"""Entry point: python -m vit_jax.main --config=configs/<file>.py[:args] --workdir=DIR
[--config.key=value ...].

With no flags it trains the offline digits demo (vit_jax/configs/default.py) into ./runs/default.

In a multi-process run (--coordinator_address, a detected cluster, --distributed=on) this process
imports no JAX: it runs the trainer, the same command, as its child, and when JAX or gloo aborts the
child because the job lost its coordinator or a peer, it says so in one line and exits 75
(restartable): vit_jax/runtime/aborts.py.
"""

import logging as std_logging
import os
import sys

from vit_jax.configs import args as config_args
from vit_jax.runtime import aborts, cluster

# The offline demo config, inside the package so that an installed vit_jax (no clone) runs it too.
PROG = 'vit_jax.main'  # How every error line of this command begins.
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs', 'default.py')
skypilot_cluster = cluster.skypilot  # (its name here before vit_jax/runtime/cluster.py)


def _default_workdir(config_path: str) -> str:
  name = os.path.splitext(os.path.basename(config_args.split_spec(config_path)[0]))[0]
  return os.path.join('runs', name)


if __name__ == '__main__' and aborts.runs_as_parent(sys.argv):
  # The parent of a multi-process run, before absl and ml_collections are imported: it stays light.
  sys.exit(
    aborts.run_parent(
      sys.argv,
      workdir=cluster.argv_value(sys.argv, 'workdir')
      or _default_workdir(cluster.argv_value(sys.argv, 'config') or _DEFAULT_CONFIG),
    )
  )

# (after the parent's exit above)
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

# The --config flag's holder, defined by parse_flags (defining it loads the config and overrides).
_CONFIG = None
_WORKDIR = flags.DEFINE_string(
  'workdir',
  None,
  'Where checkpoints, metrics and the config go (default: ./runs/<config file name>).',
)
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address',
  None,
  'host:port of process 0, for clusters that jax.distributed '
  'cannot auto-detect (Cloud TPU and SLURM are auto-detected).',
)
_NUM_PROCESSES = flags.DEFINE_integer(
  'num_processes', None, 'Number of processes (with --coordinator_address).'
)
_PROCESS_ID = flags.DEFINE_integer(
  'process_id', None, 'This process index (with --coordinator_address).'
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
  'allow_config_change',
  False,
  'Resume the run in --workdir even though its config.json differs from --config (the old config '
  'is kept as config.<n>.json). Without it, such a workdir is refused.',
)
_REEVALUATE = flags.DEFINE_bool(
  'reevaluate',
  False,
  'For a run that is already complete: evaluate its checkpoint again (logged; nothing is written). '
  'Without it, rerunning a complete run says so and exits.',
)
_DISTRIBUTED = flags.DEFINE_enum(
  'distributed',
  'auto',
  ['auto', 'on', 'off'],
  "jax.distributed.initialize: 'auto' when a cluster is detected or flags are given.",
)
flags.DEFINE_bool(
  'verbose', False, 'Show the traceback of user errors too (they are one line without it).'
)
flags.DEFINE_bool(
  'full_dumps',
  False,
  'Show on the console the stack dumps of a process that the watchdog found hung, or (several '
  'processes) that JAX or gloo aborted after a lost peer (by default one line names the cause and '
  'the dumps go to WORKDIR/stacks.<process>.txt).',
)


def _maybe_initialize_distributed(jax) -> None:
  explicit = _COORDINATOR.value is not None
  sky = None if explicit else cluster.skypilot()
  if _DISTRIBUTED.value == 'off' or (
    _DISTRIBUTED.value == 'auto' and not explicit and not sky and not cluster.detected()
  ):
    return
  if explicit and (_NUM_PROCESSES.value is None or _PROCESS_ID.value is None):
    raise app.UsageError('--coordinator_address needs --num_processes and --process_id.')
  address, num_processes, process_id = sky or (
    _COORDINATOR.value,
    _NUM_PROCESSES.value,
    _PROCESS_ID.value,
  )
  from vit_jax.runtime import distributed  # noqa: PLC0415

  distributed.use_gloo_on_cpu()
  faults = _CONFIG.value.faults
  jax.distributed.initialize(
    coordinator_address=address,
    num_processes=num_processes,
    process_id=process_id,
    initialization_timeout=faults.init_timeout_s,
    heartbeat_timeout_seconds=faults.heartbeat_timeout_s,
    shutdown_timeout_seconds=faults.shutdown_timeout_s,
  )
  distributed.check_process_count(num_processes)
  distributed.check_same_config(_CONFIG.value)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from vit_jax import errors  # noqa: PLC0415

  sys.exit(errors.run(_train, prog=PROG, argv=sys.argv, exit_on_fault=True))


def _train() -> int:
  import jax  # noqa: PLC0415

  from vit_jax.runtime import compilation_cache  # noqa: PLC0415

  logging.set_verbosity(logging.WARNING)  # Library chatter (Orbax, TFDS) only from warnings up.
  std_logging.getLogger('vit_jax').setLevel(std_logging.INFO)  # Our progress lines and notes.
  compilation_cache.use(_CONFIG.value.compilation_cache_dir)  # Before the first compile.
  _maybe_initialize_distributed(jax)
  from vit_jax.training import train  # noqa: PLC0415

  workdir = _WORKDIR.value or _default_workdir(flags.FLAGS['config'].config_filename)
  std_logging.getLogger('vit_jax.main').info(
    'JAX %s: process %d of %d, %d local / %d global devices (%s). Workdir %s.',
    jax.__version__,
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
    jax.devices()[0].platform,
    workdir,
  )
  train.train_and_evaluate(
    _CONFIG.value,
    workdir,
    allow_config_change=_ALLOW_CONFIG_CHANGE.value,
    reevaluate=_REEVALUATE.value,
    full_dumps=flags.FLAGS.full_dumps,
  )
  return 0


def _flag_of(error: Exception) -> str:
  text = str(error)
  return text.split(': ', 1)[0] if text.startswith('flag --') else 'flags'


def _override_names(argv) -> list[str]:
  return [a.split('=', 1)[0][len('--config.') :] for a in argv if a.startswith('--config.')]


def parse_flags(argv):
  """absl's flag parsing, with each config error as one line (the unknown field and the closest
  valid ones, the override that failed and why, or the values that vit_jax/configs/check.py refuses)
  instead of chained tracebacks; exits with status 2 like other usage errors. Nothing is read or
  written before that."""
  global _CONFIG
  try:
    _CONFIG = config_flags.DEFINE_config_file(
      'config', _DEFAULT_CONFIG, 'Config file (path[:args]).', lock_config=True, sys_argv=argv
    )
    rest = flags.FLAGS(argv)
    # A config file that failed to load raises here (config_flags defers that error).
    _CONFIG.value.keys()
  # (config_flags raises many kinds; all are usage errors)
  except Exception as e:  # pylint: disable=broad-except
    from vit_jax.configs import check  # noqa: PLC0415

    unknown = [n for n in _override_names(argv) if not check.is_known(n)]
    if unknown:
      lines = [check.unknown_message(n) for n in unknown]
    else:
      root = e
      # The config file's own error, not config_flags' wrappers.
      while root.__cause__ or root.__context__:
        root = root.__cause__ or root.__context__
      message = ' '.join(str(root).split()) or '(no message)'  # One line.
      missing = _missing_config_file(argv)
      lines = [missing or f'bad command line ({_flag_of(e)}): {type(root).__name__}: {message}']
    _usage_error(argv, lines)
  from vit_jax.configs import check  # noqa: PLC0415
  from vit_jax.training import preflight  # noqa: PLC0415  (JAX: after --help and a bad flag)

  try:
    preflight.validate(_CONFIG.value)  # Again in train_and_evaluate, with the mesh and the files.
  except check.ConfigError as e:
    _usage_error(argv, [f'{e}; fix the config file or its --config.* overrides'])
  return rest


def _missing_config_file(argv) -> str | None:
  """For a --config=PATH[:ARGS] whose file does not exist: one line saying so (ml_collections' own
  wording names its internal flag), else None."""
  for arg in argv[1:]:
    if arg.startswith('--config=') or arg == '--config':
      spec = (
        arg.split('=', 1)[1] if '=' in arg else argv[argv.index(arg) + 1] if arg != argv[-1] else ''
      )
      path = config_args.split_spec(spec)[0]
      if path and not os.path.isfile(path):
        return (
          f'--config={spec}: no config file {path!r} (from {os.getcwd()}); give a Python file that '
          'defines get_config(), e.g. --config=configs/vit.py:ViT-B_16,cifar10'
        )
  return None


def _usage_error(argv, lines) -> None:  # pylint: disable=unused-argument
  """Exit status 2 with each line as `vit_jax.main: error: LINE`, the format of every error of this
  command."""
  sys.stderr.write('\n'.join(f'{PROG}: error: {line}' for line in lines) + '\n')
  sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
