"""Preemption notices: SIGTERM (one process) or JAX's multi-host preemption sync point (all hosts agree on a step).

With `jax.distributed` initialised, JAX's preemption service already listens for SIGTERM (the notice Cloud TPU
maintenance events, SLURM and Kubernetes send) on every host; `reached_preemption_sync_point(step)` turns true on all
hosts at the same step, the one after the largest step any host had reached. A single process has no such service, so
a SIGTERM handler sets a flag that the next step sees.

Usage: `with PreemptionWatch() as watch: ... if watch.reached(step): save and stop`. `reached` is called once every
step on every process (the sync protocol needs that); it does no device work and no host sync.
"""
import logging
import signal
import threading

from jax._src import distributed as _distributed  # The same check jax.experimental.multihost_utils makes.
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


def _multihost() -> bool:
  return _distributed.global_state.client is not None and _distributed.global_state.preemption_sync_manager is not None


class PreemptionWatch:
  """Tells the training loop when to save and exit because the job is being preempted."""

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None
    self.signal_step = None  # The step at which the notice was seen (single process).

  def __enter__(self):
    # The SIGTERM handler is ours only without a preemption service (which has its own), and only where Python
    # allows handlers: the main thread.
    if not _multihost() and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
    return False

  def _on_signal(self, signum, frame):  # pylint: disable=unused-argument
    self._flag.set()

  def request(self) -> None:
    """Asks for a stop at the next step, as a SIGTERM would (single process)."""
    self._flag.set()

  def reached(self, step: int) -> bool:
    """True at the step where every process should save a checkpoint and stop."""
    if _multihost():
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()
