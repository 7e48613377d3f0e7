"""A multi-process run's trainer in a child process: when JAX or gloo aborts it because the job lost
its coordinator or a collective peer, one line naming the cause and exit status 75 (restartable),
whoever launched the job.

JAX cannot let such a process exit by itself: its distributed service polls the coordinator and,
when the coordinator (process 0) is gone or a task was declared dead, writes an absl FATAL line
(JAX_FATAL) and aborts at once (SIGABRT, exit 134) with pages of C++ and Python stacks; a dead
process's gloo neighbour throws on gloo's own thread and aborts the same way (GLOO_ABORT). No Python
code of that process runs in between. So `python -m vit_jax.main` with several processes runs the
trainer as its child (`run_child`: the same interpreter and `-m vit_jax.main`, marked by CHILD_ENV;
the parent imports no JAX) and relays the child's stderr line by line (its stdout goes straight to
ours). `Relay` reads the abort's first line (ABORT_SIGNS) and the lines that belong to it
(`continues`), turns them into one line (`lost_peer_line`), and keeps the stack dumps after it out
of the console: they go to the workdir (vit_jax/runtime/workdir.py, `stacks_path`, the file where
the watchdog writes a hung process's stacks too: vit_jax/runtime/watchdog.py), or stay on the
console with `--full_dumps`. The child's exit status is the parent's (128 + N for a signal N),
except that an abort after a lost peer exits EXIT_LOST_PEER; the error line is the last line. The
parent passes SIGTERM and SIGINT on to the child as SIGTERM (save and stop: a terminal's Ctrl-C
reaches the child itself too, as they share a process group), and the child dies with its parent
(PR_SET_PDEATHSIG): kill -9 of the process a launcher started kills the process that trains.
This is the one place that reads these aborts; launchers only read exit statuses
(launch/outcome.py, `restartable`).
"""

import os
import re
import signal
import subprocess
import sys
import time

from vit_jax import errors
from vit_jax.runtime import cluster

# The environment variable that marks the child (its value: 1).
CHILD_ENV = 'VIT_JAX_TRAINER_CHILD'
# What JAX writes (an absl FATAL line) before it aborts when its distributed service reports an
# error: the coordinator is gone, or a task was declared dead.
JAX_FATAL = 'Terminating process because the JAX distributed service detected fatal errors'
# What a CPU collective's transport writes when it throws on its own thread (std::terminate): gloo,
# after a peer's connection broke mid-collective. Seen on a 4-process loopback run, 0.04 s after
# kill -9 of process 2, in process 3 (its ring neighbour): "terminate called after throwing an
# instance of 'gloo::EnforceNotMet'" then "  what():  [enforce fail at .../gloo/transport/tcp/
# pair.cc:459] op.preamble.length <= op.nbytes. 80 vs 4. Received data size doesn't match expected
# size." on the next line. gloo names no process; its peers' lines do.
GLOO_ABORT = "terminate called after throwing an instance of 'gloo::"
# A process's own last words when its job lost a peer under it.
ABORT_SIGNS = (JAX_FATAL, GLOO_ABORT)
_ERROR = 'vit_jax.main: error: '
# The trainer's first line names its process (vit_jax/main.py): "JAX 0.x: process 3 of 4, ...".
_IDENTITY = re.compile(r'\bJAX \S+: process (\d+) of (\d+),')

# Signs, in the status of JAX's abort, that the coordination service itself (process 0) stopped
# answering: the RPC layer's failures (gRPC's UNAVAILABLE rewritten by XLA as "Failed to send
# RPC...", a closed or refused connection).
_COORDINATOR_SIGNS = (
  'failed to send rpc to coordination service',
  'leader task',
  'socket closed',
  'connection refused',
  'connection reset',
  'failed to connect',
)
_TASK = re.compile(r'/task:(\d+)')
# A line of task numbers, as JAX 0.12 lists the dead ones.
_TASK_LIST = re.compile(r'\s*\d+(\s*,\s*\d+)*\s*')
_GLOO_WHAT = re.compile(r'^\s*what\(\):\s*(.*)$')


def _status(line: str) -> str:
  return line.split('absl::Status:', 1)[1].strip() if 'absl::Status:' in line else ''


def task_numbers(line: str) -> list[int] | None:
  """The task numbers of a line that holds only them, else None."""
  return (
    [int(t) for t in re.findall(r'\d+', line)] if _TASK_LIST.fullmatch(line.rstrip('\n')) else None
  )


def continues(sign: str, below: list[str], line: str) -> bool:
  """Whether `line` still belongs to the abort message that began with the line `sign` (and `below`,
  the lines already taken after it): the tasks that JAX lists when its status ends in ':' ('The
  following tasks are unhealthy (stopped sending heartbeats):', then '2'), or gloo's one `what():`
  line."""
  if GLOO_ABORT in sign:
    return not below and _GLOO_WHAT.match(line) is not None
  return JAX_FATAL in sign and _status(sign).endswith(':') and task_numbers(line) is not None


def lost_peer_line(index, count, line: str, below: tuple[str, ...] = ()) -> str | None:
  """For a line of process `index`'s output that begins an abort after a lost peer (ABORT_SIGNS),
  the one line that names the cause, else None. JAX's: a process that the service declared dead, by
  its task number in the status or on the lines `below` it (`continues`), else the coordinator
  (process 0) when the RPCs to the service failed. gloo's: a peer, unnamed, and what gloo said (its
  `what():` line below)."""
  restart = (
    f'exiting with status {errors.EXIT_LOST_PEER} (restartable): rerun the same command on all '
    'processes to resume from the last checkpoint.'
  )
  if GLOO_ABORT in line:
    kind = line.split(GLOO_ABORT, 1)[1].split("'", 1)[0]
    what = next((m.group(1).strip() for m in map(_GLOO_WHAT.match, below) if m), '')
    cause = (
      f'lost a peer in a collective: gloo::{kind} {" ".join(what.split())[:200] or "(no message)"} '
      "(gloo does not say which process; the others' lines do)"
    )
    return f'{_ERROR}process {index} of {count} {cause}; gloo aborted it: {restart}'
  if JAX_FATAL not in line:
    return None
  status = _status(line)
  listed = {t for b in below for t in (task_numbers(b) or ())}
  tasks = sorted(({int(t) for t in _TASK.findall(status)} | listed) - {index})
  if tasks:
    cause = (
      f"lost process {', '.join(map(str, tasks))}: JAX's distributed service reports {status[:200]}"
    )
  elif any(sign in status.lower() for sign in _COORDINATOR_SIGNS):
    cause = (
      'lost the coordinator (process 0): its JAX distributed '
      'service stopped answering (died or unreachable)'
    )
  else:
    cause = f"lost a peer: JAX's distributed service reports {status[:200] or 'a fatal error'}"
  return f'{_ERROR}process {index} of {count} {cause}; JAX aborted it: {restart}'


class Relay:
  """Writes the child's stderr lines to `out`, but for an abort after a lost peer (the module doc)
  one line naming the cause: the lines left out (`held`) are the stack dumps, all of them shown
  instead with `full_dumps` (the abort's own lines with them, word for word). The error line comes
  last (`finish`). `lost` tells whether the child was aborted because a peer was lost."""

  def __init__(self, out, *, index=None, count=None, full_dumps: bool = False):
    self.out = out
    self.index = '?' if index is None else index
    self.count = '?' if count is None else count
    self.full_dumps = full_dumps
    self.lost = False
    self.held: list[str] = []
    self.error: str | None = None  # The one line to show last.
    self._sign = None  # The line that began an abort message, and the lines of it after it.
    self._below: list[str] = []

  def feed(self, line: str) -> None:
    if self._sign is not None:
      if continues(self._sign, self._below, line):
        self._below.append(line)
        self._hold(line)
        return
      self._close_abort()
    identity = _IDENTITY.search(line)
    if identity and not self.lost:
      self.index, self.count = int(identity.group(1)), int(identity.group(2))
    if not self.lost and lost_peer_line(self.index, self.count, line):
      self.lost = True
      self._sign, self._below = line, []
      self._hold(line)  # (kept with the dumps too, word for word)
      return
    if self.lost:
      self._hold(line)
    else:
      self._write(line)

  def finish(self, write_dumps=None) -> None:
    """At the end of the child's output: the dumps left out go to `write_dumps(lines)` (which
    returns where they went, or None when they could not go there: then they are shown), then the
    error line."""
    if self._sign is not None:
      self._close_abort()
    if self.held and not self.full_dumps:
      where = write_dumps(self.held) if write_dumps else None
      if where is None:
        for line in self.held:
          self._write(line)
      else:
        self._write(
          f'({len(self.held)} line{"s" * (len(self.held) > 1)} of stack dumps in {where}: '
          '--full_dumps shows them)\n'
        )
    if self.error is not None:
      self._write(self.error + '\n')

  def _close_abort(self) -> None:
    self.error = lost_peer_line(self.index, self.count, self._sign, tuple(self._below))
    self._sign = None

  def _hold(self, line: str) -> None:
    if self.full_dumps:
      self._write(line)
    else:
      self.held.append(line)

  def _write(self, text: str) -> None:
    self.out.write(text)
    self.out.flush()


def status_of(returncode: int) -> int:
  """A finished process's exit status as a shell reports it (128 + N for signal N)."""
  return 128 - returncode if returncode < 0 else returncode


def _die_with_parent() -> None:  # (runs in the child between fork and exec)
  try:
    import ctypes  # noqa: PLC0415  (only where a child is started)

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass  # Not Linux: the child outlives a killed parent.


def write_dumps(workdir: str, index, lines: list[str]) -> str | None:
  """Appends the stack dumps of process `index` to its file in `workdir`; where, or None when the
  file could not be written."""
  # (after the child ended: the parent stays light while it runs)
  from vit_jax import io  # noqa: PLC0415
  from vit_jax.runtime import workdir as workdir_lib  # noqa: PLC0415

  path = workdir_lib.stacks_path(workdir, index)
  head = f'=== {time.strftime("%Y-%m-%d %H:%M:%S %Z")}: process {index}\n'
  try:
    io.makedirs(workdir)
    io.append_text(path, head + ''.join(lines))
  except (OSError, errors.UserError):
    return None
  return path


def run_child(
  argv, *, workdir: str, index=None, count=None, full_dumps=False, out=None, command=None
) -> int:
  """Runs `python -m vit_jax.main ARGV[1:]` (or `command`) as this process's child and relays it
  (module doc); its exit status."""
  out = sys.stderr if out is None else out
  proc = subprocess.Popen(
    command or [sys.executable, '-m', 'vit_jax.main', *argv[1:]],
    env={**os.environ, CHILD_ENV: '1'},
    stderr=subprocess.PIPE,
    preexec_fn=_die_with_parent,  # pylint: disable=subprocess-popen-preexec-fn
  )

  def forward(unused_signum, unused_frame):
    if proc.poll() is None:
      proc.send_signal(signal.SIGTERM)

  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, forward)
  relay = Relay(out, index=index, count=count, full_dumps=full_dumps)
  for raw in proc.stderr:
    relay.feed(raw.decode('utf-8', 'replace'))
  code = status_of(proc.wait())
  relay.finish(lambda lines: write_dumps(workdir, relay.index, lines))
  if relay.lost and code == 128 + signal.SIGABRT:
    return errors.EXIT_LOST_PEER
  return code


def runs_as_parent(argv, env=os.environ) -> bool:
  """Whether `python -m vit_jax.main ARGV` runs the trainer as its child: in a multi-process run
  (vit_jax/runtime/cluster.py), unless it is that child."""
  return env.get(CHILD_ENV) != '1' and cluster.multi_process(argv, env)


def run_parent(argv, *, workdir: str) -> int:
  """The parent of a multi-process run (module doc): the trainer as its child, named by
  --process_id / --num_processes or SkyPilot's variables (else by its own first line); its exit
  status."""
  index, count = (cluster.argv_value(argv, f) for f in ('process_id', 'num_processes'))
  index, count = (int(v) if v and v.isdigit() else None for v in (index, count))
  sky = cluster.skypilot()
  if index is None and sky:
    count, index = sky[1:]
  full = ('--full_dumps', '--full_dumps=true', '--full_dumps=1')
  return run_child(
    argv,
    workdir=workdir,
    index=index,
    count=count,
    full_dumps=any(a.lower() in full for a in argv[1:]),
  )
