"""`launch.tpu launch`: create, set up, run, and supervise until the run is finished, through preemptions.

Every `poll_s` it reads the node's (or queued resource's) state and each worker's job state:
  * node lost (PREEMPTED, TERMINATED; queued resource SUSPENDING, SUSPENDED, FAILED; or gone): a preemption. The node
    is deleted and created again (walking the zones from the first), set up, and the identical command rerun: the
    trainer resumes from its last checkpoint.
  * job gone from a healthy node (restarted), or ended with status 0 before its last step (the trainer saves and
    exits 0 on SIGTERM): also a preemption; the command is rerun on the node.
  * a worker's job exited non-zero on a healthy node: a genuine failure. The job is stopped and rerun.
Preemptions and failures have separate budgets (`max_preemptions`, `max_failures`); past one, it gives up. The run is
finished once worker 0 sees its final evaluation in the workdir (launch.record status); then the node is deleted
unless `keep`. Ctrl-C asks whether to delete the node (after stopping the job, which saves a checkpoint), also one
that an interrupted create command had asked for; it never leaves a node or queued resource behind without printing
the command that deletes it.
"""
import dataclasses
import sys

from launch import code as code_lib, gcloud, node as node_lib, shell


class GiveUp(RuntimeError):
  """A retry budget is spent."""


@dataclasses.dataclass
class Settings:
  keep: bool = False
  poll_s: float = 60
  max_preemptions: int = 20
  max_failures: int = 2
  capacity_wait_s: float = 3600
  queue_wait_s: float = 0
  retry_s: float = 60
  code: str = 'git'
  code_dir: str = shell.REPO
  python: str = '3.11'
  stop_grace_s: int = 120
  unreachable_polls: int = 5  # Consecutive polls with no answer from the workers before the job counts as gone.


class Supervisor:
  """Runs `jobs` (vit_jax.main argument lists) one after the other on one node, recreating it when preempted."""

  def __init__(self, tpu: node_lib.Tpu, jobs, settings: Settings, *, ask=input, out=None):
    self.tpu, self.jobs, self.settings, self.ask, self._out = tpu, [list(j) for j in jobs], settings, ask, out
    self.preemptions = self.failures = self.attempt = 0
    self.started, self.current, self.last_code = False, None, None
    self.code: code_lib.Code | None = None

  @property
  def out(self):
    return self._out or sys.stderr

  def say(self, text: str) -> None:
    print(f'[launch {self.tpu.node.name}] {text}', file=self.out, flush=True)

  def launch(self) -> int:
    """0 when every job finished; 1 when a budget ran out or no capacity was found; 130 after Ctrl-C. The code is
    packed once, before the node is created, and its archive removed at the end (launch/code.py)."""
    s = self.settings
    with code_lib.packed(s.code, s.code_dir, self.tpu.runner) as self.code:
      if self.tpu.runner.dry_run:
        self._print_plan()
        return 0
      return self._launch()

  def _launch(self) -> int:
    try:
      self._bring_up()
      for job in self.jobs:
        self._supervise(job, shell.workdir_of(job))
      self.say(f'All {len(self.jobs)} run(s) finished.')
      if self.settings.keep:
        self.say(f'Kept {self.tpu.where()} (--keep). Delete it with: {shell.shell_line(self._delete_argv())}')
      else:
        where = self.tpu.where()
        self.tpu.delete()
        self.say(f'Deleted {where}.')
      return 0
    except node_lib.NoCapacity as e:
      self.say(str(e) + ('. The run is not finished: launch the same command again later and it resumes from its '
                         'last checkpoint.' if self.started else ''))
      return 1
    except GiveUp as e:
      self.say(f'Giving up: {e}')
      if self.tpu.zone is not None and self.last_code is not None:  # The failed job's status, for `results`.
        self.tpu.runner.query(gcloud.ssh(self.tpu.node, self.tpu.zone, gcloud.record_script(
            'exit', shell.workdir_of(self.current), str(self.last_code)), worker='0'))
      self._release('kept for debugging (--keep)')
      return 1
    except KeyboardInterrupt:
      return self._interrupted()

  # Steps.

  def _bring_up(self) -> None:
    s = self.settings
    self.tpu.create(capacity_wait_s=s.capacity_wait_s, queue_wait_s=s.queue_wait_s, retry_s=s.retry_s,
                    poll_s=min(s.poll_s, 30))
    self.say(f'Created {self.tpu.where()}; setting up.')
    self.tpu.setup(self.code, python=s.python)

  def _start(self, job) -> None:
    self.attempt += 1
    self.current, self.started, self.last_code = job, True, None
    self.tpu.run(job, attempt=self.attempt)
    self.say(f'Started attempt {self.attempt}: {shell.shell_line(shell.main_command(job))}')

  def _supervise(self, job, workdir: str) -> None:
    self._start(job)
    unreachable = unknown = 0
    while True:
      self.tpu.sleep(self.settings.poll_s)
      health, state = self.tpu.health()
      unknown = unknown + 1 if health == 'unknown' else 0
      if unknown and unknown % 10 == 0:
        self.say(f'The state of {self.tpu.where()} could not be read {unknown} times in a row: {state}')
      if health == 'lost':
        self._preempted(f'{self.tpu.node.kind()} state {state}', job, recreate=True)
        unreachable = 0
        continue
      if health != 'up':
        continue
      states = self.tpu.job_states()
      if states is None:
        unreachable += 1
        if unreachable >= self.settings.unreachable_polls:
          self._preempted(f'the workers did not answer {unreachable} polls', job, recreate=True)
          unreachable = 0
        continue
      unreachable = 0
      codes = [int(s.split()[1]) for s in states if s.startswith('exited')]
      if any(codes):
        self._failed(codes, job)
      elif 'none' in states:
        self._preempted('the job is gone from the node (restarted?)', job, recreate=False)
      elif len(codes) == len(states):  # Every worker exited 0.
        if self.tpu.finished(workdir):
          self.say(f'Finished: {workdir} has its final evaluation.')
          return
        self._preempted('the job stopped before its last step (a preemption notice)', job, recreate=False)

  def _preempted(self, reason: str, job, *, recreate: bool) -> None:
    self.preemptions += 1
    if self.preemptions > self.settings.max_preemptions:
      raise GiveUp(f'{reason}: preemption {self.preemptions} is past --max_preemptions='
                   f'{self.settings.max_preemptions}.')
    self.say(f'Preemption {self.preemptions}/{self.settings.max_preemptions}: {reason}. '
             + ('Deleting and recreating the node.' if recreate else 'Rerunning the job.'))
    if recreate:
      self.tpu.delete()
      self._bring_up()
    else:
      self.tpu.setup(self.code, python=self.settings.python)
    self._start(job)

  def _failed(self, codes, job) -> None:
    self.failures += 1
    self.last_code = next(c for c in codes if c)
    tail = self.tpu.log_tail()
    if self.failures > self.settings.max_failures:
      raise GiveUp(f'the job failed (exit status {sorted(set(codes))}) on a healthy node {self.failures} times, '
                   f'past --max_failures={self.settings.max_failures}. The end of worker 0\'s log:\n{tail}')
    self.say(f'The job failed (exit status {sorted(set(codes))}) on a healthy node: rerun '
             f'{self.failures}/{self.settings.max_failures}. The end of worker 0\'s log:\n{tail}')
    self.tpu.stop(self.settings.stop_grace_s)
    self._start(job)

  # Leaving.

  def _delete_argv(self):
    return gcloud.delete(self.tpu.node, self.tpu.zone)

  def _release(self, kept_reason: str) -> None:
    if self.tpu.zone is None:
      return
    if self.settings.keep:
      self.say(f'{self.tpu.where()} {kept_reason}; delete it with: {shell.shell_line(self._delete_argv())}')
    else:
      self.tpu.delete()
      self.say(f'Deleted {self.tpu.node.kind()} {self.tpu.node.name}.')

  def _interrupted(self) -> int:
    if not self.tpu.adopt_interrupted_create():
      self.say('Interrupted; nothing is left running.')
      return 130
    where, delete = self.tpu.where(), shell.shell_line(self._delete_argv())
    print(file=self.out)
    self.say(f'Interrupted. {where} still exists and holds TPU capacity (and quota) until it is deleted.')
    try:
      answer = self.ask(f'Delete {where} now? The run resumes from its last checkpoint when launched again. [Y/n] ')
    except EOFError:
      answer = 'y'
      self.say('No answer (stdin closed): deleting.')
    except KeyboardInterrupt:
      answer = 'n'
    if answer.strip().lower() not in ('', 'y', 'yes'):
      self.say(f'Kept {where}. It holds capacity until you delete it:\n  {delete}')
      return 130
    try:
      if self.started:
        self.say('Stopping the job (it saves a checkpoint), then deleting.')
        self.tpu.stop(self.settings.stop_grace_s)
      self.tpu.delete()
      self.say(f'Deleted {where}.')
    except (KeyboardInterrupt, shell.CommandError) as e:
      self.say(f'Deleting did not complete ({type(e).__name__}). Delete it with:\n  {delete}')
    return 130

  def _print_plan(self) -> None:
    tpu, r, s = self.tpu, self.tpu.runner, self.settings
    tpu.create()
    tpu.setup(self.code, python=s.python)
    for i, job in enumerate(self.jobs):
      if i:
        r.note('when the run above has finished, the next one:')
      tpu.run(job)
      r.note(f'then every {s.poll_s:g} s, the state and each worker\'s job state:')
      r.note(shell.shell_line(gcloud.describe(tpu.node, tpu.zone)))
      r.note(shell.shell_line(gcloud.ssh(tpu.node, tpu.zone, gcloud.status_script())))
      r.note('once every worker exited 0, whether the run is finished:')
      r.note(shell.shell_line(gcloud.ssh(tpu.node, tpu.zone, gcloud.record_script('status', shell.workdir_of(job)),
                                         worker='0')))
    if s.keep:
      r.note(f'--keep: not deleted. {shell.shell_line(self._delete_argv())}')
    else:
      r.note('at the end:')
      tpu.delete()
