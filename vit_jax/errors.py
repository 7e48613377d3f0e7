"""What a user sees when something goes wrong: the one error boundary that every command line runs inside.

Two kinds of failure are the user's to fix, and each becomes one line on stderr without a traceback, exit status 1:
  * a `UserError`: a mistake in the input (a config value, a path, a file that is not a checkpoint, a workdir in use,
    data that cannot be decoded...). Every such error class of vit_jax derives from it, and its message names the bad
    value and what would be valid;
  * an environment fault: an OSError such as no space left, a read-only file system or permission denied anywhere in
    the exception's chain (Orbax and TensorStore wrap them), named with the path it concerns.
A second Ctrl-C (KeyboardInterrupt) exits with status 130. Anything else is a bug: its traceback is printed, exit 1.
`--verbose` (or VIT_JAX_VERBOSE=1) prints the traceback of user errors too. Bad command lines exit 2 (argparse and
absl do that before the boundary). This module imports nothing heavy.
"""
import errno
import logging
import os
import sys
import traceback
from typing import Callable

log = logging.getLogger(__name__)

# errno -> what to do about it.
FAULTS = {
    errno.ENOSPC: 'free some space (or use another location) and rerun the same command',
    errno.EDQUOT: 'free some of your quota (or use another location) and rerun the same command',
    errno.EROFS: 'use a writable location',
    errno.EACCES: 'fix the permissions or use another location',
    errno.EPERM: 'fix the permissions or use another location',
    errno.EIO: 'check the storage device',
}


class UserError(Exception):
  """A mistake in the input or the environment, not a bug: shown as its message alone (see module doc)."""


def _chain(exc: BaseException):
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    yield exc
    for inner in getattr(exc, 'exceptions', ()):  # ExceptionGroups (asyncio, TensorStore).
      yield from _chain(inner)
    exc = exc.__cause__ or exc.__context__


def fault(exc: BaseException) -> str | None:
  """One line for an environment fault (module doc) in `exc`'s chain, or None when there is none."""
  for e in _chain(exc):
    if isinstance(e, OSError) and e.errno in FAULTS:
      where = f' ({e.filename})' if e.filename else ''
      return f'{os.strerror(e.errno)}{where}: {FAULTS[e.errno]}.'
  text = ' '.join(str(e) for e in _chain(exc))  # Some libraries keep only the text of the OSError.
  for code, advice in FAULTS.items():
    if os.strerror(code) in text:
      return f'{os.strerror(code)} ({" ".join(str(exc).split())[:300]}): {advice}.'
  return None


def user_error(exc: BaseException) -> UserError | None:
  """The UserError in `exc`'s chain (a library may wrap ours), or None."""
  return next((e for e in _chain(exc) if isinstance(e, UserError)), None)


def _verbose(argv) -> bool:
  return '--verbose' in (argv or ()) or os.environ.get('VIT_JAX_VERBOSE', '') not in ('', '0', 'false')


def run(main: Callable[[], int | None], *, prog: str, argv=None) -> int:
  """Runs `main()` inside the boundary; returns the exit status (see module doc)."""
  try:
    return int(main() or 0)
  except KeyboardInterrupt as e:
    sys.stderr.write(f'{prog}: aborted by Ctrl-C' + (f' {e}' if str(e) else '') + '.\n')
    return 130
  except Exception as e:  # pylint: disable=broad-except  (the boundary: every exception ends here)
    mistake, problem = user_error(e), fault(e)
    if (mistake is None and problem is None) or _verbose(argv):
      traceback.print_exc()
    if mistake is None and problem is None:
      sys.stderr.write(f'{prog}: internal error (a bug; please report it with the traceback above): '
                       f'{type(e).__name__}: {e}\n')
      return 1
    text = str(mistake) if mistake is not None else problem
    sys.stderr.write(f'{prog}: error: {text}\n')
    return 1
