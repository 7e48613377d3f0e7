"""JAX's persistent compilation cache, in config.compilation_cache_dir: `use` points JAX at it
before the process's first compile (vit_jax.main calls it; a program of your own that calls
train_and_evaluate may call it too).

Every program the process compiles is written there (no minimum compile time, so small CPU programs
too, unless JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS says otherwise) and read back by the next
process that compiles the same program: a restart, a resumed run, the other runs of a sweep, the
other processes of a job. JAX's cache key holds the program, the devices and their topology, the
compile options (the device assignment, so the device count) and the XLA flags that change code, so
another device count or mesh never reads a wrong entry. A hit skips compiling, so an XLA dump
(XLA_FLAGS=--xla_dump_to) misses the programs read from the cache: `use` warns, and '' turns the
cache off.

Sharing it, as JAX 0.12 writes it: in a multi-process job only process 0 writes entries
(jax._src.compiler._cache_write); the others read. An entry is written in place (an existing one is
never rewritten), not through a temporary name, so a process that reads it while it is being written
sees it cut short: its decompression fails (zlib's stream check), which JAX turns into a warning and
a fresh compile, never a wrong program. On gs:// an object appears whole.

A folder that cannot be used (read-only, a file in the way, no such bucket) is one warning here, and
the process compiles without the cache; a disk that fills up later makes JAX warn for each entry it
could not write (an entry cut short there stays a warning and a compile in later runs, until the
folder is emptied). Neither stops the run.
"""

import logging
import os
import socket

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from vit_jax import io

log = logging.getLogger(__name__)

# JAX's variable for the smallest compile time worth an entry; unset, `use` caches every program.
MIN_COMPILE_TIME_ENV = 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'


def use(cache_dir: str) -> str | None:
  """Points this process's compilation cache at `cache_dir` (a local folder, made if missing, or
  gs://), or turns it off for ''. Returns the folder in use: None when off, or when `cache_dir`
  cannot be written (then a warning says why, and the process compiles without it)."""
  path = None
  if cache_dir:
    path = io.abspath(os.path.expanduser(cache_dir))
    problem = _unusable(path)
    if problem:
      log.warning(
        'The compilation cache %s cannot be used (%s): compiling without it. Give '
        "--config.compilation_cache_dir another folder, or '' to turn the cache off.",
        path,
        problem,
      )
      path = None
  if path != jax.config.jax_compilation_cache_dir:
    jax_cache.reset_cache()  # (JAX opens its cache folder once, at the first compile that uses it.)
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_enable_compilation_cache', path is not None)
  if path is None:
    return None
  if MIN_COMPILE_TIME_ENV not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  if '--xla_dump_to' in os.environ.get('XLA_FLAGS', ''):
    log.warning(
      'XLA_FLAGS has --xla_dump_to, but the compilation cache (%s) is on: a program read from it '
      "is not compiled, so not dumped. Pass --config.compilation_cache_dir='' to dump them all.",
      path,
    )
  log.info('Compilation cache: %s', path)
  return path


def _unusable(path: str) -> str | None:
  """Why `path` cannot hold the cache (it cannot be made, or a file cannot be written in it), or
  None."""
  probe = io.join(path, f'.probe-{socket.gethostname()}-{os.getpid()}')
  try:
    io.makedirs(path)
    io.write_bytes(probe, b'')
    io.remove(probe)
  except OSError as e:
    return f'{type(e).__name__}: {e}'
  return None
