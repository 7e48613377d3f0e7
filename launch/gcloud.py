"""The gcloud commands for Cloud TPU VMs and queued resources (argv lists), and the scripts run on
the workers.

Every value is one argv element; the scripts a worker's shell reads quote every value with shlex.
The GA `gcloud` surface only: `gcloud compute tpus tpu-vm create|describe|delete|ssh|scp`, `gcloud
compute tpus queued-resources create|describe|delete`. States (tpu v2 API): a node is CREATING,
READY, ..., PREEMPTED, TERMINATED; a queued resource ACCEPTED, WAITING_FOR_RESOURCES, PROVISIONING,
ACTIVE, SUSPENDING, SUSPENDED, FAILED, DELETING. Each known state is up, waiting or lost; any other
(a state added to the API since, say) is unknown, and the supervisor polls it again before it treats
the node as lost.
"""

import dataclasses
import re
import shlex

from launch import shell

PROVISIONING = ('on-demand', 'spot', 'reserved')
NODE_UP = ('READY',)
NODE_WAIT = (
  'CREATING',
  'STARTING',
  'RESTARTING',
  'REPAIRING',
  'REIMAGING',
  'UNHIDING',
  'STATE_UNSPECIFIED',
)
QUEUED_UP = ('ACTIVE',)
NODE_LOST = ('PREEMPTED', 'TERMINATED', 'STOPPING', 'STOPPED', 'DELETING')
QUEUED_WAIT = ('CREATING', 'ACCEPTED', 'WAITING_FOR_RESOURCES', 'PROVISIONING', 'STATE_UNSPECIFIED')
QUEUED_LOST = ('SUSPENDING', 'SUSPENDED', 'FAILED', 'DELETING')
# Errors after which another zone (or a later try) may succeed: capacity, stock-outs, quota, a type
# not offered there.
CAPACITY_ERROR = re.compile(
  r'capacity|RESOURCE_EXHAUSTED|resource_availability|STOCKOUT|not have enough resources|quota|not '
  r'(?:available|supported|offered) in|unavailable in',
  re.IGNORECASE,
)
NOT_FOUND = re.compile(r'NOT_FOUND|not found|was not found', re.IGNORECASE)
_NAME = re.compile(r'^[a-z]([-a-z0-9]{0,60}[a-z0-9])?$')

HOME = '~/vit_jax'  # The code and its .venv on every worker.
RUN = '~/vit_jax_run'  # worker.log, pid, exit_code of the detached job on every worker.
STATUS_MARK = 'vit_jax-job:'


def default_runtime(accelerator: str) -> str:
  """The TPU software version Cloud TPU's docs give for JAX on each generation."""
  family = accelerator.split('-')[0]
  return {
    'v6e': 'v2-alpha-tpuv6e',
    'v5p': 'v2-alpha-tpuv5',
    'v5litepod': 'v2-alpha-tpuv5-lite',
    'v5e': 'v2-alpha-tpuv5-lite',
  }.get(family, 'tpu-ubuntu2204-base')


@dataclasses.dataclass(frozen=True)
class Node:
  """A TPU VM (or pod slice), created directly or through a queued resource of the same name."""

  name: str
  accelerator: str = 'v4-8'
  zones: tuple = ()
  project: str | None = None
  version: str | None = None
  provisioning: str = 'on-demand'
  queued: bool = False
  create_args: tuple = ()

  def __post_init__(self):
    if not _NAME.match(self.name):
      raise ValueError(
        f'Bad TPU name {self.name!r}: lower-case letters, digits '
        'and "-", starting with a letter, at most 62 characters.'
      )
    if not self.zones:
      raise ValueError(
        'Give at least one zone (--zones=us-central2-b[,other zones to try in order]).'
      )
    if self.provisioning not in PROVISIONING:
      raise ValueError(f'Bad provisioning {self.provisioning!r}; valid: {", ".join(PROVISIONING)}.')

  @property
  def runtime(self) -> str:
    return self.version or default_runtime(self.accelerator)

  def kind(self) -> str:
    return 'queued resource' if self.queued else 'TPU VM'


def _where(node: Node, zone: str) -> list[str]:
  return [f'--zone={zone}'] + ([f'--project={node.project}'] if node.project else [])


def create(node: Node, zone: str) -> list[str]:
  flags = {'spot': ['--spot'], 'reserved': ['--reserved'], 'on-demand': []}[node.provisioning]
  if node.queued:
    return [
      'gcloud',
      'compute',
      'tpus',
      'queued-resources',
      'create',
      node.name,
      f'--node-id={node.name}',
      f'--accelerator-type={node.accelerator}',
      f'--runtime-version={node.runtime}',
      *_where(node, zone),
      *flags,
      *node.create_args,
    ]
  return [
    'gcloud',
    'compute',
    'tpus',
    'tpu-vm',
    'create',
    node.name,
    f'--accelerator-type={node.accelerator}',
    f'--version={node.runtime}',
    *_where(node, zone),
    *flags,
    *node.create_args,
  ]


def describe(node: Node, zone: str, *, vm: bool = False) -> list[str]:
  """Prints the state: of the queued resource (or, with `vm`, always of the TPU VM)."""
  if node.queued and not vm:
    return [
      'gcloud',
      'compute',
      'tpus',
      'queued-resources',
      'describe',
      node.name,
      *_where(node, zone),
      '--format=value(state.state)',
    ]
  return [
    'gcloud',
    'compute',
    'tpus',
    'tpu-vm',
    'describe',
    node.name,
    *_where(node, zone),
    '--format=value(state)',
  ]


def delete(node: Node, zone: str) -> list[str]:
  if node.queued:  # --force: the queued resource's node goes with it.
    return [
      'gcloud',
      'compute',
      'tpus',
      'queued-resources',
      'delete',
      node.name,
      *_where(node, zone),
      '--force',
      '--quiet',
    ]
  return [
    'gcloud',
    'compute',
    'tpus',
    'tpu-vm',
    'delete',
    node.name,
    *_where(node, zone),
    '--quiet',
  ]


def ssh(node: Node, zone: str, command: str | None, *, worker: str = 'all') -> list[str]:
  """`command` is read by each worker's shell; None opens an interactive shell."""
  return [
    'gcloud',
    'compute',
    'tpus',
    'tpu-vm',
    'ssh',
    node.name,
    *_where(node, zone),
    f'--worker={worker}',
    *([f'--command={command}'] if command is not None else []),
  ]


def scp(node: Node, zone: str, local: str, remote: str, *, worker: str = 'all') -> list[str]:
  return [
    'gcloud',
    'compute',
    'tpus',
    'tpu-vm',
    'scp',
    local,
    f'{node.name}:{remote}',
    *_where(node, zone),
    f'--worker={worker}',
  ]


def setup_script(
  archive: str, marker: str, *, pip_spec: str | None = None, python: str = '3.11'
) -> str:
  """Unpacks the shipped code into ~/vit_jax and installs it with its TPU extra into
  ~/vit_jax/.venv.

  Idempotent: a worker whose ~/vit_jax/.installed holds `marker` (the commit, and the pip spec) is
  left as it is. Python comes from uv (installed for the user when missing), which fetches the
  version the image lacks.
  """
  install = (
    f'uv pip install -q --python .venv/bin/python {shlex.quote(pip_spec)}'
    if pip_spec
    else "uv pip install -q --python .venv/bin/python -e '.[tpu]'"
  )
  return '; '.join(
    [
      'set -e',
      f'mkdir -p {HOME}',
      f'cd {HOME}',
      f'if [ "$(cat .installed 2>/dev/null)" = {shlex.quote(marker)} ]; then '
      f'echo vit_jax set-up: already at {shlex.quote(marker)}; rm -f ~/{archive}; exit 0; fi',
      'find . -mindepth 1 -maxdepth 1 ! -name .venv -exec rm -rf {} +',
      f'tar -xzf ~/{archive}',
      f'rm -f ~/{archive}',
      'export PATH="$HOME/.local/bin:$PATH"',
      'command -v uv >/dev/null || python3 -m pip install -q --user uv || '
      '(curl -LsSf https://astral.sh/uv/install.sh | sh)',
      f'test -x .venv/bin/python || uv venv -q --python {shlex.quote(python)} .venv',
      install,
      f'echo {shlex.quote(marker)} > .installed',
      f'echo vit_jax set-up: installed {shlex.quote(marker)}',
    ]
  )


def run_script(main_args) -> str:
  """Starts `python -m vit_jax.main ARGS` detached on a worker: output appended to
  ~/vit_jax_run/worker.log, the process group's id in pid, its exit status in exit_code. SIGTERM to
  the group lets the trainer save and exit."""
  cache = shlex.quote(shell.shared_cache_dir(shell.workdir_of(main_args)))
  inner = (
    f'trap true TERM; echo $$ > {RUN}/pid; export PYTHONUNBUFFERED=1; '
    f'export {shell.CACHE_ENV}={cache}; '
    f'.venv/bin/python -m vit_jax.main {shlex.join(main_args)}; echo $? > {RUN}/exit_code'
  )
  # Started before we return.
  return (
    f'mkdir -p {RUN} && cd {HOME} && rm -f {RUN}/exit_code {RUN}/pid; echo "=== $(date -u +%FT%TZ) '
    f'vit_jax.main "{shlex.quote(shlex.join(main_args))} >> {RUN}/worker.log; setsid nohup bash -c '
    f'{shlex.quote(inner)} >> {RUN}/worker.log 2>&1 < /dev/null & for _ in $(seq 50); do [ -f '
    f'{RUN}/pid ] && break; sleep 0.2; done; '
    f'echo "{STATUS_MARK} started"'
  )


def status_script() -> str:
  """Prints 'vit_jax-job: running', 'exited N' or 'none' (never started, or killed without an exit
  status)."""
  return (
    f'if [ -f {RUN}/exit_code ]; then echo "{STATUS_MARK} exited $(cat {RUN}/exit_code)"; elif [ '
    f'-f {RUN}/pid ] && kill -0 "$(cat {RUN}/pid)" 2>/dev/null; then echo "{STATUS_MARK} running"; '
    f'else echo "{STATUS_MARK} none"; fi'
  )


def stop_script(grace_s: int = 120) -> str:
  """SIGTERM to the job (it saves a checkpoint), SIGKILL after `grace_s`; then frees the TPU from
  any process that still holds it (a job that died without releasing /dev/accel*, /dev/vfio) and
  removes libtpu's lock file."""
  return '; '.join(
    [
      f'if [ -f {RUN}/pid ]; then p=$(cat {RUN}/pid); kill -TERM -- -"$p" 2>/dev/null || true; '
      f'for _ in $(seq {int(grace_s)}); do kill -0 "$p" 2>/dev/null || break; sleep 1; done; '
      'kill -KILL -- -"$p" 2>/dev/null || true; fi',
      '(sudo lsof -t /dev/accel* /dev/vfio/[0-9]* 2>/dev/null '
      '|| true) | xargs -r sudo kill -9 2>/dev/null || true',
      'sudo rm -f /tmp/libtpu_lockfile',
      f'rm -f {RUN}/pid',
      f'echo "{STATUS_MARK} stopped"',
    ]
  )


def logs_script(*, follow: bool, lines: int, prefix: bool) -> str:
  tail = f'tail -n {int(lines)}{" -F" if follow else ""} {RUN}/worker.log'
  if not prefix:
    return tail
  worker = (
    'w=$(curl -sf -m 2 -H Metadata-Flavor:Google '
    'http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number '
    '|| hostname)'
  )
  return f'{worker}; {tail} | sed -u "s/^/[worker $w] /"'


def launch_script(module: str, *words: str) -> str:
  """`python -m launch.MODULE WORDS` in the shipped code on a worker (worker 0 reads and writes the
  workdir)."""
  return f'cd {HOME} && .venv/bin/python -m launch.{module} {shlex.join(words)}'


def record_script(*words: str) -> str:
  """`python -m launch.record WORDS` on a worker: `status WORKDIR`, `exit WORKDIR CODE`, `write
  WORKDIR JSON`."""
  return launch_script('record', *words)


def job_states(output: str) -> list[str]:
  """The per-worker states in an ssh --worker=all output of status_script: ['running', 'exited 0',
  'none', ...]."""
  return [
    line.split(STATUS_MARK, 1)[1].strip() for line in output.splitlines() if STATUS_MARK in line
  ]
