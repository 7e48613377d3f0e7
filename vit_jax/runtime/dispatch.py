"""How far the host may dispatch work ahead of the devices: the one rule for the training loop and
the evaluators."""

import collections

import jax


class RunAhead:
  """At most `limit` steps (train steps, evaluation batches) in flight: `add` takes each dispatched
  step's output and, when more than `limit` are in flight, waits for the oldest.

  Unbounded, the host queues steps until the runtime pushes back: each queued step holds its input
  batch in device memory, the clock times dispatches instead of train steps, and JAX 0.10's CPU
  client with several devices can deadlock there (seen in the tests' 8-device runs: one device's
  launch of a step waited on a semaphore of the client while the other seven waited in that step's
  all-reduce for it; XLA aborts the process after 40 s). Two in flight keep a device busy while the
  host prepares the next batch.
  """

  def __init__(self, limit: int = 2, wait=jax.block_until_ready):
    self.limit = limit
    self.wait = wait
    self._in_flight = collections.deque()

  def add(self, output) -> None:
    self._in_flight.append(output)
    if len(self._in_flight) > self.limit:
      self.wait(self._in_flight.popleft())
