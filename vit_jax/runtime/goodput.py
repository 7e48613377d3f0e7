"""Where a run's wall time went: one phase clock per process, and process 0's record of it in
WORKDIR/goodput.json.

The clock (`Clock`) is contiguous: at every moment the process is in exactly one phase, so the
phases of an attempt add up to its wall time by construction. Phases and how each is measured:
  startup     from the process's start (the kernel's start time of the process, so the interpreter
              and the imports count; `process_start_time`) until the first training step is
              dispatched: imports, jax.distributed, the dataset, building the model, restoring the
              checkpoint (while the train step compiles);
  compile     the first training step's call: the wait for its compile (which starts on a thread
              during start-up, as soon as the first batch is at hand) and the call;
  train       the training loop's own time: dispatching steps and waiting for the devices (the host
              syncs at log steps), i.e. productive training;
  input       time the loop waited for the next batch from the host's input pipeline;
  eval        evaluations (every evaluator, including its compilations);
  checkpoint  the blocking part of checkpoint saves (and the final wait for the last one), and
              writing params.npz.
Across attempts (a run resumed after a failure or a preemption) the record adds two more:
  lost        training time whose steps were recomputed: the steps an attempt trained past the
              checkpoint the next attempt resumed from, at that attempt's own mean time per step
              (moved out of its `train` and `input`);
  gap         wall time between an attempt's last record and the next attempt's start (a launcher
              restarting the job, a requeue waiting for nodes). An attempt that died counts from its
              last record on as gap.
The record is rewritten at every log step, evaluation and save, so a killed attempt leaves its
record up to then. The same clock times the train steps (`tick`): the progress bar's rate and ETA
and the logged img/s derive from it, and count a step's own time only (Clock), never a compilation,
evaluation or save. `summary` totals it; `vit_jax.visualize goodput` draws it and `launch.results`
shows its `goodput` column. This module imports no JAX (launch/ reads records through it).
"""

import contextlib
import json
import os
import threading
import time

import vit_jax
from vit_jax import io
from vit_jax.runtime import workdir as workdir_lib

PHASES = ('startup', 'compile', 'train', 'input', 'eval', 'checkpoint')
TRAINING = ('train', 'input')  # The phases of a train step's own time (the rate, the ETA, img/s).
ALL_PARTS = PHASES + ('lost', 'gap')


def process_start_time() -> float:
  """The wall time this process started: the kernel's start time (Linux, /proc), so that the
  interpreter's start counts; but no earlier than STARTUP_SLACK_S before the process imported
  vit_jax. (The kernel's time is when the process was forked: a shell that runs a command as its
  last one, `( pip install ... && python -m vit_jax.main )`, execs it in a process forked long
  before.) Elsewhere: when vit_jax was imported.

  The time between the process's start and the import is measured on the kernel's clock since boot
  alone, and subtracted from the import's wall time: /proc's boot time (`btime`) moves with the
  wall clock, so a wall clock stepped (NTP, a VM resumed) after the import would otherwise put the
  start after the import."""
  imported = vit_jax.IMPORTED_AT
  if vit_jax.IMPORTED_AFTER_BOOT is None:
    return imported
  try:
    with open('/proc/self/stat') as f:
      # Field 22, starttime, in clock ticks after boot.
      ticks = int(f.read().rsplit(')', 1)[1].split()[19])
    before_import = vit_jax.IMPORTED_AFTER_BOOT - ticks / os.sysconf('SC_CLK_TCK')
  except (OSError, ValueError, IndexError):
    return imported
  return imported - min(max(before_import, 0.0), STARTUP_SLACK_S)


STARTUP_SLACK_S = 5.0  # The longest a Python interpreter takes to start before it runs our code.


class Clock:
  """The one clock of a process: the phase it is in, since when, at which step; the time spent in
  each phase; the longest single stay in each (the watchdog's measure of how long a phase may take:
  vit_jax/runtime/watchdog.py); and the train steps' own time. Thread-safe.

  `enter` moves to a phase; `phase` is one for a block, after which the clock is back in the phase
  it left (an evaluation or a save inside training: big_vision's chrono pause and resume).
  `tick(step)` says a train step is done. A train step's time is the time since the step before it
  was done, or since the process came back to training (TRAINING) from another phase, whichever is
  later: the first step's compilation, evaluations and saves never count. `train_time` totals it
  (the ETA); `lap` gives it since the last lap (a log window's img/s). `now` is the wall time
  (time.time, or a test's fake).
  """

  def __init__(self, start: float | None = None, step: int = 0, *, now=time.time):
    self.now = now
    self.start = process_start_time() if start is None else start
    self._lock = threading.Lock()
    self._phase = 'startup'
    self._since = self.start
    self._step = step
    self.totals = dict.fromkeys(PHASES, 0.0)
    self.longest: dict[str, float] = {}  # phase -> its longest completed stay (s).
    self._mark: float | None = None  # When the next train step's time began; None outside TRAINING.
    self._trained = (0, 0.0)  # Train steps ticked, and their seconds.
    self._lapped = (0, 0.0)  # _trained at the last lap.

  def enter(self, phase: str, step: int | None = None) -> str:
    """From now on the process is in `phase` (at `step`, if given); returns the phase it leaves."""
    if phase not in PHASES:
      raise ValueError(f'Unknown phase {phase!r}; the phases are {PHASES}.')
    now = self.now()
    with self._lock:
      left = self._phase
      stay = now - self._since
      self.totals[left] += stay
      self.longest[left] = max(self.longest.get(left, 0.0), stay)
      self._phase = phase
      self._since = now
      if step is not None:
        self._step = step
      if phase not in TRAINING:
        self._mark = None
      elif left not in TRAINING:
        self._mark = now  # Back to training: what came before was no train step's time.
    return left

  @contextlib.contextmanager
  def phase(self, name: str, step: int | None = None):
    """In phase `name` (at `step`, if given) for the block, then back in the phase it left. On an
    exception it stays in `name`, the phase it failed in (the watchdog bounds the failure's end)."""
    left = self.enter(name, step)
    yield
    self.enter(left)

  def tick(self, step: int) -> None:
    """Train step `step` is done: its time (class doc) counts if the clock is in TRAINING."""
    now = self.now()
    with self._lock:
      self._step = step
      if self._mark is not None:
        steps, seconds = self._trained
        self._trained = (steps + 1, seconds + now - self._mark)
        self._mark = now

  def train_time(self) -> tuple[int, float]:
    """(train steps, their seconds) so far (class doc)."""
    with self._lock:
      return self._trained

  def lap(self) -> tuple[int, float]:
    """(train steps, their seconds) since the last lap (class doc)."""
    with self._lock:
      (steps, seconds), (lapped_steps, lapped_seconds) = self._trained, self._lapped
      self._lapped = self._trained
    return steps - lapped_steps, seconds - lapped_seconds

  def current(self) -> tuple[str, float, int]:
    """(phase, the wall time it was entered, step)."""
    with self._lock:
      return self._phase, self._since, self._step

  def phases(self) -> dict[str, float]:
    """Seconds per phase so far, the current stay included; they add up to now - start."""
    now = self.now()
    with self._lock:
      out = dict(self.totals)
      out[self._phase] += now - self._since
    return out


class Recorder:
  """Process 0's goodput.json: the attempts before this one (with their lost time settled) and this
  one, rewritten by `write` (atomically; cheap: a few hundred bytes)."""

  def __init__(self, workdir: str, clock: Clock, *, resumed_from: int, enabled: bool = True):
    self.workdir = workdir
    self.clock = clock
    self.first_step = resumed_from
    self.enabled = enabled
    self.last_step = resumed_from
    self.ended = 'running'
    self.previous = settle(read(workdir), resumed_from) if enabled else []

  def write(self, step: int | None = None, ended: str | None = None) -> None:
    if step is not None:
      self.last_step = step
    if ended is not None:
      self.ended = ended
    if not self.enabled:
      return
    attempt = {
      'start': self.clock.start,
      'end': self.clock.now(),
      'first_step': self.first_step,
      'last_step': self.last_step,
      'ended': self.ended,
      'phases': {k: round(v, 3) for k, v in self.clock.phases().items()},
    }
    io.write_text(
      workdir_lib.path(self.workdir, workdir_lib.GOODPUT_FILE),
      json.dumps({'attempts': self.previous + [attempt]}, indent=1),
    )


def read(workdir: str) -> list[dict]:
  """The attempts recorded in WORKDIR/goodput.json ([] when there is none)."""
  text = io.read_text_or_none(workdir_lib.path(workdir, workdir_lib.GOODPUT_FILE))
  return json.loads(text)['attempts'] if text else []


def settle(attempts: list[dict], resumed_from: int) -> list[dict]:
  """`attempts` with the last one's steps past `resumed_from` (the checkpoint this attempt restored)
  moved into `lost`, at that attempt's mean time per trained step."""
  if not attempts:
    return []
  *before, last = [dict(a, phases=dict(a['phases'])) for a in attempts]
  redone = last['last_step'] - max(resumed_from, last['first_step'])
  trained = last['last_step'] - last['first_step']
  if redone > 0 and trained > 0 and not last['phases'].get('lost'):
    phases = last['phases']
    for part in ('train', 'input'):
      moved = phases.get(part, 0.0) * redone / trained
      phases[part] -= moved
      phases['lost'] = phases.get('lost', 0.0) + moved
    last['lost_steps'] = redone
  if last.get('ended') == 'running':
    last['ended'] = 'died'
  return before + [last]


def summary(attempts: list[dict]) -> dict:
  """Totals over the attempts: seconds per part (ALL_PARTS), `wall` (first start to last record),
  `goodput` (the fraction of wall time that was productive training) and `attempts`. {} for no
  attempts."""
  if not attempts:
    return {}
  parts = dict.fromkeys(ALL_PARTS, 0.0)
  for a in attempts:
    for k, v in a['phases'].items():
      parts[k] = parts.get(k, 0.0) + v
  parts['gap'] = sum(max(0.0, b['start'] - a['end']) for a, b in zip(attempts, attempts[1:]))
  wall = attempts[-1]['end'] - attempts[0]['start']
  return {
    **parts,
    'wall': wall,
    'goodput': parts['train'] / wall if wall > 0 else 0.0,
    'attempts': len(attempts),
  }


def describe(s: dict) -> str:
  """One line: 'goodput 81.0% of 63.2 s (train 51.2 s, startup 8.1 s, ...; 2 attempts)'."""
  parts = ', '.join(f'{k} {s[k]:.1f} s' for k in ALL_PARTS if s.get(k))
  return (
    f'goodput {100 * s["goodput"]:.1f}% of {s["wall"]:.1f} s wall time ({parts}; {s["attempts"]} '
    f'attempt{"s" if s["attempts"] != 1 else ""})'
  )
