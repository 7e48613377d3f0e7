"""Multi-process start-up: CPU collectives, and checks that every process runs the same job."""

import hashlib

import jax
from jax.experimental import multihost_utils
import numpy as np

from vit_jax import errors


def on_main(fn):
  """Runs `fn()` on process 0 only and makes every process share its outcome: if it raised, every
  process raises (process 0 its own error, the others one that points to it); else all go on.
  Returns fn's result on process 0 and None elsewhere. (With one process: just `fn()`.)"""
  if jax.process_count() == 1:
    return fn()
  result = None
  error = None
  if jax.process_index() == 0:
    try:
      result = fn()
    # (re-raised below, after telling the others)
    except Exception as e:  # pylint: disable=broad-except
      error = e
  failed = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
  if error is not None:
    raise error
  if failed:
    raise ProcessMismatchError('Process 0 stopped the run before it started: its log says why.')
  return result


def client():
  """The client of JAX's coordination service (key-value store, barriers), or None without
  jax.distributed."""
  # (no public API for it)
  from jax._src import distributed as jax_distributed  # noqa: PLC0415

  return jax_distributed.global_state.client


def barrier(name: str, *, timeout_s: float) -> None:
  """Waits until every process of the job has reached barrier `name` (the coordination service's
  barrier: no device work), at most `timeout_s`. Nothing to wait for with one process."""
  if jax.process_count() > 1:
    client().wait_at_barrier(f'vit_jax/{name}', int(timeout_s * 1000))


class ProcessMismatchError(errors.UserError, RuntimeError):
  """Processes of one job disagree (config or process count)."""


def use_gloo_on_cpu() -> None:
  """Cross-process collectives for CPU devices via gloo (TCP); call before
  jax.distributed.initialize.

  Without them (jax_cpu_collectives_implementation unset), a multi-process CPU computation fails.
  Only the CPU client reads this option, so it is harmless on GPU/TPU hosts. An explicit 'mpi' is
  kept.
  """
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')


def config_digest(config) -> str:
  return hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()


def check_same_config(config) -> None:
  """Raises ProcessMismatchError on every process unless all processes hold the same config (a
  collective)."""
  digest = config_digest(config)
  words = np.frombuffer(bytes.fromhex(digest)[:16], np.int32)
  gathered = np.asarray(multihost_utils.process_allgather(words))  # [process_count, 4]
  differ = [p for p in range(len(gathered)) if not np.array_equal(gathered[p], gathered[0])]
  if differ:
    raise ProcessMismatchError(
      f'The config differs between processes: process(es) {differ} have another config than '
      f'process 0 (this is process {jax.process_index()}, config sha256 {digest[:16]}). Every '
      'process must get the same --config file and --config.* overrides.'
    )


def check_process_count(expected: int | None) -> None:
  if expected is not None and expected != jax.process_count():
    raise ProcessMismatchError(
      f'--num_processes={expected}, but jax.distributed started {jax.process_count()} processes.'
    )
