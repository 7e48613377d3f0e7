"""One TPU node's operations through gcloud: create (walking the zones), state, ship and install the
code, start the job, its per-worker state, the run's progress, stop, delete, logs. launch/tpu.py is
the command line; launch/supervise.py the loop. Every gcloud command that the launchers run or print
is made here (from launch/gcloud.py's argv builders), so no other module spells one."""

import json
import time

from launch import code as code_lib
from launch import gcloud, outcome, record, shell


class NoCapacity(RuntimeError):
  """No zone could provide the node within the time allowed."""


class Tpu:
  """A node and the zone it is in (None while it does not exist)."""

  def __init__(
    self,
    node: gcloud.Node,
    runner: shell.Runner,
    *,
    zone: str | None = None,
    sleep=time.sleep,
    clock=time.monotonic,
  ):
    self.node = node
    self.runner = runner
    self.zone = zone
    self.sleep = sleep
    self.clock = clock
    self.commit = None
    # The zone of a create command in flight (an interrupted one may still make the node).
    self.creating = None

  def where(self) -> str:
    return f'{self.node.kind()} {self.node.name} in {self.zone}'

  # Creation.

  def create(
    self,
    *,
    capacity_wait_s: float = 0,
    queue_wait_s: float = 0,
    retry_s: float = 60,
    poll_s: float = 30,
  ) -> str:
    """Creates the node in the first zone of node.zones that has capacity; returns that zone.

    A capacity (or quota) error moves on to the next zone. A queued resource waits in a zone until
    it is ACTIVE, or for at most `queue_wait_s` (when > 0) before the next zone is tried; one that
    FAILED is deleted and the next zone tried. After the last zone, the walk starts over every
    `retry_s` until `capacity_wait_s` have passed.
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
              self.runner.note(
                f'until the queued resource is ACTIVE (FAILED: the next zone), every {poll_s:g} s: '
                f'{shell.shell_line(gcloud.describe(self.node, zone))}'
              )
          else:
            self.runner.note(
              f'if {self.node.zones[i - 1]} has no capacity: {shell.shell_line(argv)}'
            )
          continue
        # Until the outcome is known: a create that failed otherwise may still make the node.
        self.creating = zone
        done = self.runner.run(argv, check=False)
        if done.returncode == 0:
          self.creating = None
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
        self.creating = None
        errors[zone] = (done.stderr.strip().splitlines() or ['no capacity'])[-1]
        self.runner.note(f'No capacity in {zone}: {errors[zone]}')
      if self.runner.dry_run:
        self.zone = self.node.zones[0]
        return self.zone
      if self.clock() >= deadline:
        raise NoCapacity(
          f'No zone could create {self.node.kind()} {self.node.name} ({self.node.accelerator}, '
          f'{self.node.provisioning}): ' + '; '.join(f'{z}: {e}' for z, e in errors.items())
        )
      self.runner.note(
        f'No capacity in {", ".join(self.node.zones)}; trying again in {retry_s:g} s.'
      )
      self.sleep(retry_s)

  def _wait_active(self, queue_wait_s: float, poll_s: float) -> str:
    """Polls the queued resource until ACTIVE (returns 'ACTIVE'), FAILED/gone, or `queue_wait_s`
    have passed."""
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
    """The zone of an existing node (the only zone given, or the first of node.zones where it
    exists)."""
    if len(self.node.zones) == 1 or self.runner.dry_run:
      self.zone = self.node.zones[0]
      return self.zone
    for zone in self.node.zones:
      if self.runner.query(gcloud.describe(self.node, zone)).returncode == 0:
        self.zone = zone
        return zone
    raise ValueError(
      f'{self.node.kind()} {self.node.name} not found in {", ".join(self.node.zones)}.'
    )

  def adopt_interrupted_create(self) -> bool:
    """Whether the node exists: it was created, or a create command that did not complete (Ctrl-C,
    an error other than capacity) made it after all (then `zone` is set to its zone).

    The server finishes a create that gcloud stopped waiting for, so a node that answers at all
    counts.
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
    """(health, the state or the error): 'up', 'waiting' or 'lost' for the states of
    launch/gcloud.py (and 'lost' when the node is not found); 'unknown' for any other state;
    'unreadable' when describe itself failed."""
    done = self.runner.query(gcloud.describe(self.node, self.zone))
    if done.returncode != 0:
      if gcloud.NOT_FOUND.search(done.stderr):
        return 'lost', 'NOT_FOUND'
      return 'unreadable', (done.stderr.strip().splitlines() or [''])[-1]
    state = done.stdout.strip()
    groups = (
      (gcloud.QUEUED_UP, gcloud.QUEUED_WAIT, gcloud.QUEUED_LOST)
      if self.node.queued
      else (gcloud.NODE_UP, gcloud.NODE_WAIT, gcloud.NODE_LOST)
    )
    return next(
      (h for h, states in zip(('up', 'waiting', 'lost'), groups) if state in states), 'unknown'
    ), state

  def job_states(self) -> list[str] | None:
    """Each worker's job state ('running', 'exited N', 'none'), or None when the workers could not
    be reached."""
    done = self.runner.query(gcloud.ssh(self.node, self.zone, gcloud.status_script()))
    states = gcloud.job_states(done.stdout)
    return states if done.returncode == 0 and states else None

  def finished(self, workdir: str) -> bool:
    """Whether the run in `workdir` has its final evaluation (checked on worker 0, which can read
    the workdir)."""
    done = self.runner.query(
      gcloud.ssh(self.node, self.zone, gcloud.record_script('status', workdir), worker='0')
    )
    return done.returncode == 0

  def latest_checkpoint(self, workdir: str) -> int | None:
    """The step of the run's latest checkpoint, as worker 0 sees it (launch/outcome.py); None when
    it has none. A CommandError when worker 0 does not answer."""
    done = self.runner.query(
      gcloud.ssh(
        self.node, self.zone, gcloud.launch_script('outcome', 'checkpoint', workdir), worker='0'
      )
    )
    answered, step = outcome.parse_checkpoint(done.stdout)
    if done.returncode != 0 or not answered:
      raise shell.CommandError(
        done.args, done.returncode, done.stderr or f'no "{outcome.CHECKPOINT_MARK}" answer'
      )
    return step

  def record_exit(self, workdir: str, code: int) -> None:
    """Writes the job's exit status into WORKDIR/launch.json from worker 0 (best effort: `results`
    shows it)."""
    self.runner.query(
      gcloud.ssh(self.node, self.zone, gcloud.record_script('exit', workdir, str(code)), worker='0')
    )

  # Actions.

  def setup(self, code: code_lib.Code, *, python: str = '3.11') -> None:
    """Ships `code` (launch/code.py) to every worker and installs it, with the TPU extra, into a
    venv (see gcloud.setup_script)."""
    self.commit = code.commit
    self.runner.run(gcloud.scp(self.node, self.zone, code.archive, code.name))
    self.runner.run(
      gcloud.ssh(
        self.node,
        self.zone,
        gcloud.setup_script(code.name, code.marker, pip_spec=code.pip_spec, python=python),
      ),
      capture=False,
    )

  def run(self, main_args, *, attempt: int = 1) -> None:
    """Starts the job detached on every worker, then writes WORKDIR/launch.json from worker 0."""
    workdir = shell.workdir_of(main_args)
    self.runner.run(gcloud.ssh(self.node, self.zone, gcloud.run_script(main_args)))
    info = {
      'backend': 'tpu',
      'command': shell.main_command(main_args),
      'commit': self.commit or self._commit(),
      'name': self.node.name,
      'accelerator': self.node.accelerator,
      'zone': self.zone,
      'project': self.node.project,
      'provisioning': self.node.provisioning,
      'queued': self.node.queued,
      'runtime_version': self.node.runtime,
      'attempt': attempt,
      'started': record.now(),
    }
    self.runner.run(
      gcloud.ssh(
        self.node, self.zone, gcloud.record_script('write', workdir, json.dumps(info)), worker='0'
      )
    )

  def stop(self, grace_s: int = 120) -> None:
    self.runner.run(gcloud.ssh(self.node, self.zone, gcloud.stop_script(grace_s)))

  def delete(self) -> None:
    """Deletes the node (with `queued`, the queued resource and its node); one already gone is no
    error."""
    done = self.runner.run(gcloud.delete(self.node, self.zone), check=False)
    if done.returncode != 0 and not gcloud.NOT_FOUND.search(done.stderr):
      raise shell.CommandError(done.args, done.returncode, done.stderr)
    self.zone = None if not self.runner.dry_run else self.zone

  def delete_command(self) -> str:
    """The command that deletes the node, as a line to paste into a shell."""
    return shell.shell_line(gcloud.delete(self.node, self.zone))

  # For the command line and the dry-run plan.

  def logs(self, *, follow: bool, lines: int, worker: str) -> None:
    """A worker's log (with worker 'all', every worker's lines prefixed with its number) on this
    terminal."""
    self.runner.run(
      gcloud.ssh(
        self.node,
        self.zone,
        gcloud.logs_script(follow=follow, lines=lines, prefix=worker == 'all'),
        worker=worker,
      ),
      capture=False,
    )

  def shell(self, command: str | None, *, worker: str) -> None:
    """`command` on a worker, or an interactive shell when None."""
    self.runner.run(gcloud.ssh(self.node, self.zone, command, worker=worker), capture=False)

  def status_lines(self) -> list[str]:
    """The node's (and queued resource's) state and each worker's job state, one line each (a dry
    run prints the commands instead and returns nothing)."""
    lines = []
    for vm in [False, True] if self.node.queued else [False]:
      done = self.runner.run(gcloud.describe(self.node, self.zone, vm=vm), check=False, quiet=True)
      what = 'queued resource' if self.node.queued and not vm else 'TPU VM'
      lines.append(
        f'{what} {self.node.name} ({self.zone}): {done.stdout.strip() or done.stderr.strip()}'
      )
    done = self.runner.run(
      gcloud.ssh(self.node, self.zone, gcloud.status_script()), check=False, quiet=True
    )
    states = gcloud.job_states(done.stdout)
    lines.append(
      'job: '
      + (
        ', '.join(f'worker {i} {s}' for i, s in enumerate(states))
        if states
        else f'no answer from the workers ({done.stderr.strip()[-200:]})'
      )
    )
    return [] if self.runner.dry_run else lines

  def poll_commands(self, workdir: str) -> list[tuple[str, str]]:
    """(when, command line) of the read-only commands that supervising a run in `workdir` polls
    with."""
    return [
      ('every poll, the state', shell.shell_line(gcloud.describe(self.node, self.zone))),
      (
        "every poll, each worker's job state",
        shell.shell_line(gcloud.ssh(self.node, self.zone, gcloud.status_script())),
      ),
      (
        'once every worker exited 0, whether the run is finished',
        shell.shell_line(
          gcloud.ssh(self.node, self.zone, gcloud.record_script('status', workdir), worker='0')
        ),
      ),
      (
        'if not, whether it has a checkpoint to resume from',
        shell.shell_line(
          gcloud.ssh(
            self.node, self.zone, gcloud.launch_script('outcome', 'checkpoint', workdir), worker='0'
          )
        ),
      ),
    ]

  def log_tail(self, lines: int = 30) -> str:
    done = self.runner.query(
      gcloud.ssh(
        self.node,
        self.zone,
        gcloud.logs_script(follow=False, lines=lines, prefix=False),
        worker='0',
      )
    )
    return (
      done.stdout.rstrip()
      if done.returncode == 0
      else f'(could not read the log: {done.stderr.strip()})'
    )

  def _commit(self):
    try:
      return shell.git_commit()
    except shell.CommandError:
      return None
