"""Nothing waits forever: each process ends itself, with one line naming the cause, when it or a
peer cannot go on.

One daemon thread per training process checks, every second:
  * **progress** (every process): the phase clock (vit_jax/runtime/goodput.py) says which phase the
    process is in (compile, train, input, eval, checkpoint) and since when. A stay longer than the
    phase's bound is a hang: every thread's stack goes to the `dump_to` file (vit_jax.main: the
    workdir's stacks.<process>.txt, unless --full_dumps) or else stderr, then one line
    naming the phase, the step and the bound, and the process exits with EXIT_HUNG. The bound of a
    phase is config.faults.hang_timeout_s when that is > 0; else, before the phase has completed
    once, config.faults.hang_first_s (a first stay compiles); after, max(hang_floor_s, hang_factor x
    its longest completed stay). A process whose peer stopped mid-collective sits in that
    collective: its bound ends it too.
  * **peers** (several processes): every process writes a heartbeat into the JAX coordination
    service's key-value store every config.faults.peer_timeout_s / 6 s. Process 0 watches them all:
    a process silent for peer_timeout_s (dead, stopped, or its host gone) is lost, named with any
    other silent for half as long; process 0 writes the cause under ABORT_KEY, waits a moment for
    the others to read it, and exits with EXIT_LOST_PEER; every other process reads ABORT_KEY and
    exits the same way with the same line. A process that cannot reach the store (process 0 and its
    coordination service gone) exits with EXIT_LOST_PEER naming process 0.
Both exit codes mean "restartable": the launchers (launch/local.py, launch/slurm.py,
launch/supervise.py) run the same command again on all processes and the run resumes from its last
checkpoint (see README, "Faults at scale"). JAX's own heartbeat timeout
(config.faults.heartbeat_timeout_s) is longer than peer_timeout_s, so the one line comes from here
before JAX's coordination service aborts the processes with its stack dumps. JAX's abort when the
coordinator itself dies comes first: vit_jax/runtime/aborts.py turns it into the one line.
"""

import concurrent.futures
import faulthandler
import io
import logging
import os
import sys
import threading
import time
import traceback

from vit_jax import errors
from vit_jax import io as vio

log = logging.getLogger(__name__)

# Phases with a bound (startup has its own timeouts).
WATCHED = ('compile', 'train', 'input', 'eval', 'checkpoint')
ALIVE_PREFIX = 'vit_jax/alive/'
DONE_PREFIX = 'vit_jax/done/'
ABORT_KEY = 'vit_jax/abort'


def bound(settings, phase: str, longest: dict[str, float]) -> float:
  """Seconds a stay in `phase` may last (module doc), given the longest completed stays so far."""
  if settings.hang_timeout_s > 0:
    return float(settings.hang_timeout_s)
  if phase not in longest:
    return float(settings.hang_first_s)
  return max(float(settings.hang_floor_s), settings.hang_factor * longest[phase])


def _stacks() -> str:
  """Every thread's stack."""
  names = {t.ident: t.name for t in threading.enumerate()}
  return ''.join(
    f'Thread {names.get(ident, ident)}:\n' + ''.join(traceback.format_stack(frame))
    for ident, frame in sys._current_frames().items()  # pylint: disable=protected-access
  )


def _dump_stacks(header: str, dump_to: str | None) -> None:
  """`header` and every thread's stack: appended to the file `dump_to`, with one line on stderr
  saying so; to stderr where there is no such file or it cannot be written (faulthandler's dump, or,
  where stderr is no file (a test's capture), traceback's)."""
  if dump_to is not None:
    try:
      vio.makedirs(os.path.dirname(dump_to) or '.')
      vio.append_text(
        dump_to, f'=== {time.strftime("%Y-%m-%d %H:%M:%S %Z")}: {header}\n{_stacks()}'
      )
      sys.stderr.write(f'{header.rstrip(":")} are in {dump_to} (--full_dumps shows them here).\n')
      return
    except (OSError, errors.UserError):
      pass
  sys.stderr.write(header + '\n')
  try:
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
  except (AttributeError, ValueError, io.UnsupportedOperation):
    sys.stderr.write(_stacks())


def _exit(code: int, line: str) -> None:
  sys.stdout.flush()
  sys.stderr.write(f'vit_jax.main: error: {line}\n')
  sys.stderr.flush()
  logging.shutdown()
  os._exit(code)  # pylint: disable=protected-access  (from a thread; the main thread is stuck)


class Watchdog:
  """The monitor thread (module doc). `with Watchdog(clock, config.faults, ...)`: runs inside the
  block; on leaving it normally, this process tells the others it is done (so its silence is no
  loss) and the thread stops."""

  def __init__(
    self,
    clock,
    settings,
    *,
    process_index: int = 0,
    process_count: int = 1,
    client=None,
    poll_s: float = 1.0,
    exit_fn=_exit,
    dump_to: str | None = None,
  ):
    self.clock = clock
    self.settings = settings
    self.poll_s = poll_s
    self.exit_fn = exit_fn
    self.dump_to = dump_to  # The file for a hang's stack dump (None: stderr).
    self.index = process_index
    self.count = process_count
    self.client = client if process_count > 1 else None
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name='vit_jax-watchdog', daemon=True)
    self._rpc = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='vit_jax-watchdog-rpc')
    self._beats = 0
    self._next_beat = 0.0
    # process -> (its last heartbeat value, when it changed)
    self._heard: dict[int, tuple[str, float]] = {}

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, exc_type, exc, unused_tb):
    if (
      self.client is not None
      and exc_type is not None
      and not isinstance(exc, (errors.UserError, KeyboardInterrupt))
    ):
      self._settle_failure(exc)
    self._stop.set()
    self._thread.join()
    if self.client is not None and exc_type is None:
      self._call(self.client.key_value_set, f'{DONE_PREFIX}{self.index}', '1', True)
    self._rpc.shutdown(wait=False)
    return False

  def _settle_failure(self, exc) -> None:
    """An error escaped the run of a multi-process job. A collective that failed because a peer died
    is the usual one: keep beating and watching for up to peer_timeout_s + 10 s, so that the loss is
    found and named (the thread exits EXIT_LOST_PEER); if none is found, the error is this process's
    own and goes on up."""
    wait = self.settings.peer_timeout_s + 10
    log.warning(
      'Process %d: the run failed (%s: %s); checking for '
      '%.0f s whether a peer was lost before reporting it.',
      self.index,
      type(exc).__name__,
      ' '.join(str(exc).split())[:300],
      wait,
    )
    # The thread ends the process (exit_fn) if it finds a lost peer.
    self._thread.join(timeout=wait)

  # -- the thread

  def _run(self) -> None:
    while not self._stop.wait(self.poll_s):
      self.check_progress()
      if self.client is not None:
        self.check_peers()

  def check_progress(self) -> None:
    phase, since, step = self.clock.current()
    if phase not in WATCHED:
      return
    limit = bound(self.settings, phase, self.clock.longest)
    stayed = time.time() - since
    if stayed > limit:
      _dump_stacks(
        f'vit_jax.main: process {self.index} made no progress for {stayed:.0f} s; the stacks '
        'of its threads:',
        self.dump_to,
      )
      self.exit_fn(
        errors.EXIT_HUNG,
        f'process {self.index} of {self.count} hung: no progress for {stayed:.0f} '
        f's in {phase} at step {step} (bound {limit:.0f} s: config.faults.hang_*); '
        f'exiting with status {errors.EXIT_HUNG} (restartable): rerun the same '
        'command to resume from the last checkpoint.',
      )

  def _call(self, fn, *args):
    """fn(*args) on the RPC thread, given at most a few seconds: (True, result), or (False, why)."""
    wait = max(2.0, min(10.0, self.settings.peer_timeout_s / 3))
    try:
      return True, self._rpc.submit(fn, *args).result(timeout=wait)
    except concurrent.futures.TimeoutError:
      return False, f'no answer in {wait:.0f} s'
    # (the client raises the service's status as anything)
    except Exception as e:  # pylint: disable=broad-except
      return False, ' '.join(str(e).split())[:200] or type(e).__name__

  def _lost(self, line: str) -> None:
    self.exit_fn(
      errors.EXIT_LOST_PEER,
      f'{line}; the job cannot go on: exiting with status {errors.EXIT_LOST_PEER} (restartable): '
      'rerun the same command on all processes to resume from the last checkpoint.',
    )

  def check_peers(self) -> None:
    now = time.monotonic()
    if now >= self._next_beat:
      self._beats += 1
      self._next_beat = now + max(0.5, self.settings.peer_timeout_s / 6)
      ok, why = self._call(
        self.client.key_value_set, f'{ALIVE_PREFIX}{self.index}', str(self._beats), True
      )
      if not ok:
        self._lost(
          f'process {self.index} of {self.count} lost the coordinator (process 0): its key-value '
          f'store did not take a heartbeat ({why})'
        )
    if self.index == 0:
      self._watch_all(now)
    else:
      ok, cause = self._call(self.client.key_value_try_get, ABORT_KEY)
      if ok:
        self._lost(f'process {self.index} of {self.count} stops: {cause}')
      elif 'NOT_FOUND' not in cause and 'not found' not in cause.lower():
        self._lost(
          f'process {self.index} of {self.count} lost the coordinator (process 0): {cause}'
        )

  def _watch_all(self, now: float) -> None:
    ok, alive = self._call(self.client.key_value_dir_get, ALIVE_PREFIX)
    ok_done, done = self._call(self.client.key_value_dir_get, DONE_PREFIX)
    if not ok or not ok_done:
      return  # Our own store: a slow answer is load, not a loss.
    finished = {int(k.rsplit('/', 1)[1]) for k, _ in done}
    values = {int(k.rsplit('/', 1)[1]): v for k, v in alive}
    # process -> seconds without a heartbeat, past half of peer_timeout_s (3 beats missed).
    quiet = {}
    for p in range(1, self.count):
      value = values.get(p)
      last = self._heard.get(p)
      if last is None or last[0] != value:
        self._heard[p] = (value, now)
      elif p not in finished and now - last[1] > self.settings.peer_timeout_s / 2:
        quiet[p] = now - last[1]
    if any(s > self.settings.peer_timeout_s for s in quiet.values()):
      # Named with it: the others quiet for half as long, which went at about the same time (a
      # process killed, and its neighbour that a failed collective aborted 0.04 s later, cross the
      # timeout a beat apart).
      names = ', '.join(map(str, sorted(quiet)))
      ages = ', '.join(f'{quiet[p]:.0f}' for p in sorted(quiet))
      cause = (
        f'process{"es" if len(quiet) > 1 else ""} {names} of {self.count} stopped responding (no '
        f'heartbeat for {ages} s: dead, stopped or its host unreachable)'
      )
      self._call(self.client.key_value_set, ABORT_KEY, cause, True)
      time.sleep(min(5.0, self.settings.peer_timeout_s / 3))  # Time for the others to read why.
      self._lost(f'process 0 of {self.count} stops: {cause}')
