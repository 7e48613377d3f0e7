"""One writer per workdir: the lock a training run holds on its workdir while it runs.

`with Lock(workdir):` is taken by process 0 of a run only (the one process that writes the workdir's
files; the other processes of a multi-host run learn the outcome from it), before anything is read
from the dataset or written. It is WORKDIR/lock.json: {"host", "pid", "token", "started",
"heartbeat"} (seconds since the epoch, UTC).

Taking it:
  * no lock.json: it is created. Locally by a hard link (atomic), so of two starts exactly one gets
    it. On gs:// (no exclusive create through this API) the lock is written, then read back after a
    pause: whoever's token is there holds it.
  * a stale lock.json is taken over (logged): its holder's process is gone (same host, the pid is
    not alive), or its heartbeat is older than STALE_AFTER seconds (another host: preempted, powered
    off or killed without a chance to release it). So a preempted run resumes at most STALE_AFTER
    seconds after its host stopped, and at once on the same host.
  * else WorkdirInUseError, at once: it names the holder's host and pid, when it started and its
    last heartbeat.
While held, a daemon thread rewrites the heartbeat every HEARTBEAT seconds. On exit (errors too)
lock.json is removed if it is still this run's.
"""

import json
import logging
import os
import socket
import threading
import time
import uuid

from vit_jax import errors, io
from vit_jax.runtime import workdir as workdir_lib

log = logging.getLogger(__name__)

HEARTBEAT = 30.0
STALE_AFTER = 150.0


class WorkdirInUseError(errors.UserError, RuntimeError):
  """Another live run holds the workdir."""


def pid_alive(pid: int) -> bool:
  """Whether process `pid` of this host is alive."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def stale(holder: dict, now: float | None = None) -> bool:
  """Whether a lock's holder is gone (module doc)."""
  now = time.time() if now is None else now
  if holder.get('host') == socket.gethostname() and not pid_alive(int(holder.get('pid', -1))):
    return True
  return now - float(holder.get('heartbeat', 0)) > STALE_AFTER


def _describe(holder: dict) -> str:
  ago = time.time() - float(holder.get('heartbeat', 0))
  started = time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(float(holder.get('started', 0))))
  return (
    f'host {holder.get("host")!r}, pid {holder.get("pid")} '
    f'(started {started}, last heartbeat {ago:.0f} s ago)'
  )


class Lock:
  """The workdir's writer lock (module doc); `enabled=False` makes it a no-op (processes other than
  0)."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.path = workdir_lib.path(workdir, workdir_lib.LOCK_FILE)
    self.workdir = workdir
    self.enabled = enabled
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread = None

  def _record(self, started: float) -> str:
    return (
      json.dumps(
        {
          'host': socket.gethostname(),
          'pid': os.getpid(),
          'token': self.token,
          'started': started,
          'heartbeat': time.time(),
        }
      )
      + '\n'
    )

  def _read(self) -> dict | None:
    text = io.read_text_or_none(self.path)
    try:
      return json.loads(text) if text else None
    except ValueError:
      return {}  # A torn or foreign file: treated as stale (no heartbeat).

  def _create(self) -> bool:
    """Creates lock.json if absent (atomically, also on gs://: vit_jax/io.py); True when this run
    holds it."""
    return io.create_new(self.path, self._record(time.time()).encode('utf-8'))

  def _take_over(self, holder: dict) -> None:
    """Moves a stale lock aside (so of two starts that found it stale, only one moves it), then
    creates ours."""
    aside = f'{self.path}.stale-{self.token}'
    try:
      io.rename(self.path, aside)
    except FileNotFoundError:
      return  # Another start moved it first; _create decides.
    moved = json.loads(io.read_text_or_none(aside) or '{}')
    # We moved a fresh lock that replaced the stale one: put it back.
    if moved.get('token') != holder.get('token'):
      io.rename(aside, self.path)
      return
    io.remove(aside)
    log.warning('Took over the stale lock of %s (%s).', self.workdir, _describe(holder))

  def acquire(self) -> None:
    if not self.enabled:
      return
    try:
      for _ in range(3):
        if self._create():
          break
        holder = self._read()
        if holder is not None and not stale(holder):
          raise WorkdirInUseError(
            f'The workdir {self.workdir} is in use by another run: {_describe(holder)}. Wait for '
            'it to finish, stop it, or use another --workdir. (A lock whose process is gone is '
            f'taken over at once on the same host, and after {STALE_AFTER:.0f} s without a '
            f'heartbeat from another host; {self.path} is the lock.)'
          )
        if holder is not None:
          self._take_over(holder)
      else:
        raise WorkdirInUseError(
          f'Could not take the lock {self.path}: other runs keep starting on this workdir.'
        )
    except OSError as e:
      if isinstance(e, errors.UserError) or errors.fault(e) is None:
        raise
      raise workdir_lib.WorkdirError(
        f'Cannot write to the workdir {self.workdir}: {errors.fault(e)}'
      ) from e
    self._thread = threading.Thread(target=self._beat, name='workdir-lock-heartbeat', daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    started = time.time()
    while not self._stop.wait(HEARTBEAT):
      try:
        holder = self._read() or {}
        if holder.get('token') != self.token:
          log.warning("The lock %s is no longer this run's (%s).", self.path, _describe(holder))
          return
        started = float(holder.get('started', started))
        io.write_text(self.path, self._record(started))
      # (a missed heartbeat must not stop training)
      except Exception as e:  # pylint: disable=broad-except
        log.warning('Could not renew the lock %s: %s', self.path, e)

  def release(self) -> None:
    if not self.enabled or self._thread is None:
      return
    self._stop.set()
    self._thread.join(timeout=10)
    self._thread = None
    try:
      if (self._read() or {}).get('token') == self.token:
        io.remove(self.path)
    except OSError as e:
      log.warning('Could not remove the lock %s: %s', self.path, e)

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
    return False
