"""Preemption notices and Ctrl-C: SIGTERM or a first SIGINT (one process), or JAX's multi-host
preemption sync point.

With `jax.distributed` initialised, JAX's preemption service already listens for SIGTERM (the notice
Cloud TPU maintenance events, SLURM and Kubernetes send) on every host;
`reached_preemption_sync_point(step)` turns true on all hosts at the same step, the one after the
largest step any host had reached. A single process has no such service, so a SIGTERM handler sets a
flag that the next step sees.

Ctrl-C (SIGINT) during training does what SIGTERM does: the first one finishes the step, saves and
stops (with several processes it is passed on as a SIGTERM to this process, which JAX's preemption
service relays to all hosts); a second one aborts at once (KeyboardInterrupt naming the last
checkpoint). Before training has started (`training` not yet called: the dataset is being prepared,
the model built) there is nothing to save, so the first Ctrl-C aborts at once, saying so.

Usage: `with PreemptionWatch() as watch: ... if watch.reached(step): save and stop`. `reached` is
called once every step on every process (the sync protocol needs that); it does no device work and
no host sync.
"""

import contextlib
import functools
import logging
import os
import signal
import threading

# The same check jax.experimental.multihost_utils makes.
from jax._src import distributed as _distributed
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


_deferring = False  # Inside `interrupts_deferred` (main thread only, like signal handlers).
_pending = None  # The Ctrl-C that came meanwhile: its handler, to run when the block ends.


@contextlib.contextmanager
def interrupts_deferred():
  """Within it, a Ctrl-C waits for the block to end, then does what it does (a KeyboardInterrupt
  raised in a Python hook that C++ code calls, as while TensorFlow's extension modules load, aborts
  the process with SIGABRT)."""
  global _deferring, _pending
  outer, _deferring = _deferring, True
  try:
    yield
  finally:
    _deferring = outer
    if not outer and _pending is not None:
      pending, _pending = _pending, None
      pending()


def _multihost() -> bool:
  return (
    _distributed.global_state.client is not None
    and _distributed.global_state.preemption_sync_manager is not None
  )


class PreemptionWatch:
  """Tells the training loop when to save and exit because the job is being preempted."""

  def __init__(self):
    self._flag = threading.Event()
    self._previous = {}  # signal -> the handler to put back on exit.
    self.interrupted = False  # True once Ctrl-C asked for the stop.
    self._start_step = None  # The step training started from, once it has (`training`).

  def __enter__(self):
    # Handlers only where Python allows them: the main thread. The SIGTERM handler is ours only
    # without a preemption service (which has its own).
    if threading.current_thread() is threading.main_thread():
      if not _multihost():
        self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_signal)
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_interrupt)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}
    return False

  def _on_signal(self, signum, frame):  # pylint: disable=unused-argument
    self._flag.set()

  def training(self, start_step: int) -> None:
    """Training starts now, from `start_step`: from here on a first Ctrl-C saves and stops."""
    self._start_step = start_step

  def _on_interrupt(self, signum, frame):  # pylint: disable=unused-argument
    global _pending
    if _deferring:
      _pending = functools.partial(self._on_interrupt, signum, None)
      return
    if self._start_step is None:
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt(
        'before training started (while preparing the data or the model): nothing was trained or '
        'lost; rerun the same command to start again'
      )
    if self.interrupted:  # The second Ctrl-C: abort now.
      signal.signal(signal.SIGINT, signal.default_int_handler)
      raise KeyboardInterrupt(
        'during training: the steps since the last checkpoint '
        'are lost; rerun the same command to resume from it'
      )
    self.interrupted = True
    log.warning(
      'Ctrl-C: finishing this step, saving a checkpoint and stopping (press Ctrl-C again to abort '
      'at once, losing the steps since the last checkpoint).'
    )
    if _multihost():
      os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption service tells every host.
    else:
      self._flag.set()

  def request(self) -> None:
    """Asks for a stop at the next step, as a SIGTERM would (single process)."""
    self._flag.set()

  def reached(self, step: int) -> bool:
    """True at the step where every process should save a checkpoint and stop."""
    if _multihost():
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()
