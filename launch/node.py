"""One TPU node's operations through gcloud: create (walking the zones), state, ship and install the code, start the
job, its per-worker state, stop, delete, logs. launch/tpu.py is the command line; launch/supervise.py the loop."""
import json
import time

from launch import code as code_lib, gcloud, record, shell


class NoCapacity(RuntimeError):
  """No zone could provide the node within the time allowed."""


class Tpu:
  """A node and the zone it is in (None while it does not exist)."""

  def __init__(self, node: gcloud.Node, runner: shell.Runner, *, zone: str | None = None, sleep=time.sleep,
               clock=time.monotonic):
    self.node, self.runner, self.zone = node, runner, zone
    self.sleep, self.clock = sleep, clock
    self.commit = None
    self.creating = None  # The zone of a create command in flight (an interrupted one may still make the node).

  def where(self) -> str:
    return f'{self.node.kind()} {self.node.name} in {self.zone}'

  # Creation.

  def create(self, *, capacity_wait_s: float = 0, queue_wait_s: float = 0, retry_s: float = 60,
             poll_s: float = 30) -> str:
    """Creates the node in the first zone of node.zones that has capacity; returns that zone.

    A capacity (or quota) error moves on to the next zone. A queued resource waits in a zone until it is ACTIVE,
    or for at most `queue_wait_s` (when > 0) before the next zone is tried; one that FAILED is deleted and the next
    zone tried. After the last zone, the walk starts over every `retry_s` until `capacity_wait_s` have passed.
    """
    deadline = self.clock() + capacity_wait_s
    while True:
      errors = {}
      for i, zone in enumerate(self.node.zones):
        argv = gcloud.create(self.node, zone)
        if self.runner.dry_run:
          if i == 0:
            self.runner.run(argv)
            if self.node.queued:
              self.runner.note('until the queued resource is ACTIVE (FAILED: the next zone), every '
                               f'{poll_s:g} s: {shell.shell_line(gcloud.describe(self.node, zone))}')
          else:
            self.runner.note(f'if {self.node.zones[i - 1]} has no capacity: {shell.shell_line(argv)}')
          continue
        self.creating = zone
        done = self.runner.run(argv, check=False)
        self.creating = None
        if done.returncode == 0:
          self.zone = zone
          if not self.node.queued:
            return zone
          outcome = self._wait_active(queue_wait_s, poll_s)
          if outcome == 'ACTIVE':
            return zone
          errors[zone] = f'queued resource {outcome}'
          self.delete()
          continue
        if not gcloud.CAPACITY_ERROR.search(done.stderr):
          raise shell.CommandError(argv, done.returncode, done.stderr)
        errors[zone] = (done.stderr.strip().splitlines() or ['no capacity'])[-1]
        self.runner.note(f'No capacity in {zone}: {errors[zone]}')
      if self.runner.dry_run:
        self.zone = self.node.zones[0]
        return self.zone
      if self.clock() >= deadline:
        raise NoCapacity(f'No zone could create {self.node.kind()} {self.node.name} ({self.node.accelerator}, '
                         f'{self.node.provisioning}): ' + '; '.join(f'{z}: {e}' for z, e in errors.items()))
      self.runner.note(f'No capacity in {", ".join(self.node.zones)}; trying again in {retry_s:g} s.')
      self.sleep(retry_s)

  def _wait_active(self, queue_wait_s: float, poll_s: float) -> str:
    """Polls the queued resource until ACTIVE (returns 'ACTIVE'), FAILED/gone, or `queue_wait_s` have passed."""
    started = self.clock()
    while True:
      health, state = self.health()
      if health == 'up':
        return 'ACTIVE'
      if health == 'lost':
        return state or 'gone'
      if queue_wait_s and self.clock() - started >= queue_wait_s:
        return f'still {state} after {queue_wait_s:g} s'
      self.sleep(poll_s)

  def locate(self) -> str:
    """The zone of an existing node (the only zone given, or the first of node.zones where it exists)."""
    if len(self.node.zones) == 1 or self.runner.dry_run:
      self.zone = self.node.zones[0]
      return self.zone
    for zone in self.node.zones:
      if self.runner.query(gcloud.describe(self.node, zone)).returncode == 0:
        self.zone = zone
        return zone
    raise ValueError(f'{self.node.kind()} {self.node.name} not found in {", ".join(self.node.zones)}.')

  def adopt_interrupted_create(self) -> bool:
    """After Ctrl-C during a create command: whether the node it asked for exists (then `zone` is set to its zone).

    The server finishes a create that gcloud stopped waiting for, so a node that answers at all counts.
    """
    if self.zone is not None or self.creating is None:
      return self.zone is not None
    zone, self.creating = self.creating, None
    done = self.runner.query(gcloud.describe(self.node, zone))
    if done.returncode != 0 and gcloud.NOT_FOUND.search(done.stderr):
      return False
    self.zone = zone
    return True

  # State.

  def health(self) -> tuple[str, str]:
    """('up' | 'waiting' | 'lost' | 'unknown', the state or error)."""
    done = self.runner.query(gcloud.describe(self.node, self.zone))
    if done.returncode != 0:
      if gcloud.NOT_FOUND.search(done.stderr):
        return 'lost', 'NOT_FOUND'
      return 'unknown', (done.stderr.strip().splitlines() or [''])[-1]
    state = done.stdout.strip()
    up, wait = (gcloud.QUEUED_UP, gcloud.QUEUED_WAIT) if self.node.queued else (gcloud.NODE_UP, gcloud.NODE_WAIT)
    return ('up' if state in up else 'waiting' if state in wait else 'lost'), state

  def job_states(self) -> list[str] | None:
    """Each worker's job state ('running', 'exited N', 'none'), or None when the workers could not be reached."""
    done = self.runner.query(gcloud.ssh(self.node, self.zone, gcloud.status_script()))
    states = gcloud.job_states(done.stdout)
    return states if done.returncode == 0 and states else None

  def finished(self, workdir: str) -> bool:
    """Whether the run in `workdir` has its final evaluation (checked on worker 0, which can read the workdir)."""
    done = self.runner.query(gcloud.ssh(self.node, self.zone, gcloud.record_script('status', workdir), worker='0'))
    return done.returncode == 0

  # Actions.

  def setup(self, code: code_lib.Code, *, python: str = '3.11') -> None:
    """Ships `code` (launch/code.py) to every worker and installs it, with the TPU extra, into a venv (see
    gcloud.setup_script)."""
    self.commit = code.commit
    self.runner.run(gcloud.scp(self.node, self.zone, code.archive, code.name))
    self.runner.run(gcloud.ssh(self.node, self.zone, gcloud.setup_script(code.name, code.marker,
                                                                         pip_spec=code.pip_spec, python=python)),
                    capture=False)

  def run(self, main_args, *, attempt: int = 1) -> None:
    """Starts the job detached on every worker, then writes WORKDIR/launch.json from worker 0."""
    workdir = shell.workdir_of(main_args)
    self.runner.run(gcloud.ssh(self.node, self.zone, gcloud.run_script(main_args)))
    info = {'backend': 'tpu', 'command': shell.main_command(main_args), 'commit': self.commit or self._commit(),
            'name': self.node.name, 'accelerator': self.node.accelerator, 'zone': self.zone,
            'project': self.node.project, 'provisioning': self.node.provisioning, 'queued': self.node.queued,
            'runtime_version': self.node.runtime, 'attempt': attempt, 'started': record.now()}
    self.runner.run(gcloud.ssh(self.node, self.zone, gcloud.record_script('write', workdir, json.dumps(info)),
                               worker='0'))

  def stop(self, grace_s: int = 120) -> None:
    self.runner.run(gcloud.ssh(self.node, self.zone, gcloud.stop_script(grace_s)))

  def delete(self) -> None:
    done = self.runner.run(gcloud.delete(self.node, self.zone), check=False)
    if done.returncode != 0 and not gcloud.NOT_FOUND.search(done.stderr):
      raise shell.CommandError(done.args, done.returncode, done.stderr)
    self.zone = None if not self.runner.dry_run else self.zone

  def log_tail(self, lines: int = 30) -> str:
    done = self.runner.query(gcloud.ssh(self.node, self.zone, gcloud.logs_script(follow=False, lines=lines,
                                                                                 prefix=False), worker='0'))
    return done.stdout.rstrip() if done.returncode == 0 else f'(could not read the log: {done.stderr.strip()})'

  def _commit(self):
    try:
      return shell.git_commit()
    except shell.CommandError:
      return None

