"""`launch.tpu launch`: create, set up, run, and supervise until the run is finished, through
preemptions.

The code is packed once, before the node is created (launch/code.py). Every `poll_s` the supervisor
reads the node's (or queued resource's) state and each worker's job state, and sorts each end of the
job (launch/outcome.py):
  * finished: every worker exited 0 and worker 0 sees the run complete in its workdir. The next job,
    or the end.
  * preempted: the node is lost (a lost state of launch/gcloud.py, or not found; a state the
    launcher does not know, `unknown_polls` polls in a row; workers that answer no ssh for
    `unreachable_polls` polls), or the job stopped to be resumed (every worker exited 0 before the
    last step, or the job vanished from a worker) with a checkpoint to resume from, or a process of
    the job was lost or hung (exit status 75 or 76: launch/outcome.py). A lost node is deleted and
    created again (walking the zones from the first) and set up; then the identical command is rerun
    and resumes from the checkpoint. Counts against `max_preemptions`.
  * failed: a worker's job exited non-zero (the job's own error line is shown), or the job ended
    before the run had any checkpoint, or a command on a node that is still up failed (set-up,
    start, stop, a worker that ssh cannot reach). The job is stopped, set up if it was not, and
    started again. Counts against `max_failures`.
A job killed by a signal (exit status over 128, not 130) gets one more poll of the node's state: if
the node is lost by then, it was a preemption. Past a budget it gives up.

However the launch ends (finished, gave up, no capacity, Ctrl-C, any error), the node does not
outlive it unless asked: it is deleted, except with `keep` (then its delete command is printed), or
when the user answers no after Ctrl-C (likewise). A node that cannot be deleted gets its exact
delete command printed. The same holds for a queued resource, and for a node that a create command
which did not complete (Ctrl-C, an error) made after all.
"""

import dataclasses
import sys

from launch import code as code_lib
from launch import node as node_lib
from launch import outcome, shell


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
  # Consecutive polls with no answer from the workers before the node counts as lost.
  unreachable_polls: int = 5
  # Consecutive polls in a state the launcher does not know before the node counts as lost.
  unknown_polls: int = 3


class Supervisor:
  """Runs `jobs` (vit_jax.main argument lists) one after the other on one node, recreating it when
  preempted."""

  def __init__(self, tpu: node_lib.Tpu, jobs, settings: Settings, *, ask=input, out=None):
    self.tpu = tpu
    self.jobs = [list(j) for j in jobs]
    self.settings = settings
    self.ask = ask
    self._out = out
    self.preemptions = self.failures = self.attempt = 0
    self.started = False
    self.current = None
    self.last_code = None
    self.code: code_lib.Code | None = None
    self.installed = False  # Whether the code is set up on the current node.

  @property
  def out(self):
    return self._out or sys.stderr

  def say(self, text: str) -> None:
    print(f'[launch {self.tpu.node.name}] {text}', file=self.out, flush=True)

  def launch(self) -> int:
    """0 when every job finished and the node is gone (or kept as asked); 1 when a budget ran out,
    no capacity was found or the node could not be deleted; 130 after Ctrl-C. Errors before a node
    exists (a clone that is not a git repository, a bad --code) raise; any other error raises after
    the node is released (see the module doc)."""
    s = self.settings
    with code_lib.packed(s.code, s.code_dir, self.tpu.runner) as self.code:
      if self.tpu.runner.dry_run:
        self._print_plan()
        return 0
      return self._launch()

  def _launch(self) -> int:
    try:
      self._create()
      for job in self.jobs:
        self._run(job)
      self.say(f'All {len(self.jobs)} run(s) finished.')
      return 0 if self._release(keep=self.settings.keep, why='kept (--keep)') else 1
    except node_lib.NoCapacity as e:
      self.say(
        str(e)
        + (
          '. The run is not finished: launch the same command '
          'again later and it resumes from its last checkpoint.'
          if self.started
          else ''
        )
      )
      self._release(keep=self.settings.keep, why='kept (--keep)')
      return 1
    except GiveUp as e:
      self.say(f'Giving up: {e}')
      if self.tpu.zone is not None and self.last_code:  # The failed job's status, for `results`.
        self.tpu.record_exit(shell.workdir_of(self.current), self.last_code)
      self._release(keep=self.settings.keep, why='kept for debugging (--keep)')
      return 1
    except KeyboardInterrupt:
      return self._interrupted()
    # A create that failed, a bug: the node must not outlive the launcher either way.
    except BaseException as e:
      if not isinstance(e, shell.CommandError):
        self.say(f'Stopped by an unexpected {type(e).__name__}.')
      self._release(keep=self.settings.keep, why='kept (--keep)')
      raise

  # Steps.

  def _create(self) -> None:
    s = self.settings
    self.tpu.create(
      capacity_wait_s=s.capacity_wait_s,
      queue_wait_s=s.queue_wait_s,
      retry_s=s.retry_s,
      poll_s=min(s.poll_s, 30),
    )
    self.installed = False
    self.say(f'Created {self.tpu.where()}.')

  def _run(self, job) -> None:
    """Starts `job` and acts on each end of it (see the module doc) until its run is finished."""
    self.current = job
    workdir = shell.workdir_of(job)
    then = 'start'
    while True:
      try:
        if then == 'recreate':
          self.tpu.delete()
          self._create()
        elif then == 'restart':
          self.tpu.stop(self.settings.stop_grace_s)
        if not self.installed:
          self.say(f'Setting up {self.tpu.where()}.')
          self.tpu.setup(self.code, python=self.settings.python)
          self.installed = True
        self._start(job)
        ending = self._watch(workdir)
      except shell.CommandError as e:
        ending = self._after_command_error(e)
      if ending.kind == 'finished':
        self.say(f'Finished: {workdir} has its final evaluation.')
        return
      self._count(ending)
      then = 'recreate' if ending.recreate else 'restart'

  def _start(self, job) -> None:
    self.attempt += 1
    self.started = True
    self.last_code = None
    self.tpu.run(job, attempt=self.attempt)
    self.say(f'Started attempt {self.attempt}: {shell.shell_line(shell.main_command(job))}')

  def _watch(self, workdir: str) -> outcome.Ending:
    """Polls until the job ends or the node is lost; how it ended."""
    s = self.settings
    tpu = self.tpu
    unreachable = unknown = unreadable = 0
    while True:
      tpu.sleep(s.poll_s)
      health, state = tpu.health()
      unknown = unknown + 1 if health == 'unknown' else 0
      unreadable = unreadable + 1 if health == 'unreadable' else 0
      if health == 'lost' or unknown >= s.unknown_polls:
        return self._lost(
          state
          + (f' (a state the launcher does not know, {unknown} polls in a row)' if unknown else '')
        )
      if unknown:
        self.say(
          f'{tpu.where()} is in state {state}, which the launcher does not know: polling again '
          f'({unknown}/{s.unknown_polls}).'
        )
      if unreadable and unreadable % 10 == 0:
        self.say(
          f'The state of {tpu.where()} could not be read {unreadable} times in a row: {state}'
        )
      if health != 'up':
        continue
      states = tpu.job_states()
      unreachable = 0 if states is not None else unreachable + 1
      if unreachable >= s.unreachable_polls:
        return outcome.Ending(
          'preempted', f'the workers did not answer {unreachable} polls', recreate=True
        )
      if states is None:
        continue
      ending = outcome.classify(
        states,
        finished=lambda: tpu.finished(workdir),
        checkpoint=lambda: tpu.latest_checkpoint(workdir),
        log=tpu.log_tail,
      )
      if (
        ending is not None and ending.code is not None and ending.code > 128 and ending.code != 130
      ):
        tpu.sleep(s.poll_s)  # Killed by a signal: maybe the node going down. Its state decides.
        health, state = tpu.health()
        if health == 'lost':
          return self._lost(state)
      if ending is not None:
        return ending

  def _lost(self, state: str) -> outcome.Ending:
    return outcome.Ending('preempted', f'{self.tpu.node.kind()} state {state}', recreate=True)

  def _after_command_error(self, error: shell.CommandError) -> outcome.Ending:
    """A command on the node failed: a preemption if the node is lost by the next poll, else a
    failure."""
    # No node (a create that failed otherwise than for capacity): nothing to retry.
    if self.tpu.zone is None:
      raise error
    self.tpu.sleep(self.settings.poll_s)
    health, state = self.tpu.health()
    if health == 'lost':
      return self._lost(f'{state}, after: {error.brief}')
    return outcome.Ending('failed', error.brief)

  def _count(self, ending: outcome.Ending) -> None:
    """Counts a preemption or a failure against its budget (GiveUp past it) and says what happens
    next."""
    s = self.settings
    if ending.kind == 'preempted':
      self.preemptions += 1
      n = self.preemptions
      budget = s.max_preemptions
      flag = 'max_preemptions'
      then = 'Deleting and recreating the node.' if ending.recreate else 'Rerunning the job.'
    else:
      self.failures += 1
      self.last_code = ending.code
      n = self.failures
      budget = s.max_failures
      flag = 'max_failures'
      then = 'Stopping it and running it again.'
    if n > budget:
      raise GiveUp(f'{ending.reason}. {ending.kind.capitalize()} {n} is past --{flag}={budget}.')
    self.say(
      f'{"Preemption" if ending.kind == "preempted" else "Failure"} '
      f'{n}/{budget}: {ending.reason}. {then}'
    )

  # Leaving.

  def _release(self, *, keep: bool, why: str) -> bool:
    """Deletes the node, if there is one, unless `keep`; prints its delete command when kept or not
    deleted. False when it could not be deleted."""
    if not self.tpu.adopt_interrupted_create():
      return True
    where = self.tpu.where()
    command = self.tpu.delete_command()
    if keep:
      self.say(f'{where} {why}; it holds TPU capacity (and quota) until deleted:\n  {command}')
      return True
    try:
      self.tpu.delete()
    except (shell.CommandError, KeyboardInterrupt) as e:
      brief = e.brief if isinstance(e, shell.CommandError) else 'interrupted'
      self.say(
        f'Could not delete {where} ({brief}). It holds TPU '
        f'capacity (and quota) until deleted:\n  {command}'
      )
      return False
    self.say(f'Deleted {where}.')
    return True

  def _interrupted(self) -> int:
    if not self.tpu.adopt_interrupted_create():
      self.say('Interrupted; nothing is left running.')
      return 130
    where = self.tpu.where()
    delete = self.tpu.delete_command()
    print(file=self.out)
    self.say(
      f'Interrupted. {where} still exists and holds TPU capacity (and quota) until it is deleted.'
    )
    try:
      answer = self.ask(
        f'Delete {where} now? The run resumes from its last checkpoint when launched again. [Y/n] '
      )
    except EOFError:
      answer = 'y'
      self.say('No answer (stdin closed): deleting.')
    except KeyboardInterrupt:
      answer = 'n'
    if answer.strip().lower() not in ('', 'y', 'yes'):
      self.say(f'Kept {where}. It holds capacity until you delete it:\n  {delete}')
      return 130
    if self.started:
      self.say('Stopping the job (it saves a checkpoint), then deleting.')
      try:
        self.tpu.stop(self.settings.stop_grace_s)
      except shell.CommandError as e:
        self.say(f'Could not stop the job ({e.brief}); deleting anyway.')
      except KeyboardInterrupt:
        self.say(f'Not deleted (interrupted). Delete it with:\n  {delete}')
        return 130
    self._release(keep=False, why='')
    return 130

  def _print_plan(self) -> None:
    tpu = self.tpu
    r = self.tpu.runner
    s = self.settings
    tpu.create()
    tpu.setup(self.code, python=s.python)
    for i, job in enumerate(self.jobs):
      if i:
        r.note('when the run above has finished, the next one:')
      tpu.run(job)
      r.note(f'then every {s.poll_s:g} s until the run is finished:')
      for when, command in tpu.poll_commands(shell.workdir_of(job)):
        r.note(f'{when}: {command}')
    if s.keep:
      r.note(f'--keep: not deleted. {tpu.delete_command()}')
    else:
      r.note('at the end:')
      tpu.delete()
