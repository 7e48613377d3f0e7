"""What a user sees when something goes wrong: the one error boundary that every command line runs
inside.

Two kinds of failure are the user's to fix, and each becomes one line on stderr without a traceback,
exit status 1:
  * a `UserError`: a mistake in the input (a config value, a path, a file that is not a checkpoint,
    a workdir in use, data that cannot be decoded...). Every such error class of vit_jax derives
    from it, and its message names the bad value and what would be valid;
  * an environment fault: an OSError such as no space left, a read-only file system or permission
    denied anywhere in the exception's chain (Orbax and TensorStore wrap them), named with the path
    it concerns.
A second Ctrl-C (KeyboardInterrupt) exits with status 130. Anything else is a bug: its traceback is
printed, exit 1. Two more statuses mean "restartable: run the same command again on all processes"
(vit_jax/runtime/watchdog.py; launchers rerun them like a preemption): EXIT_LOST_PEER (75) when a
process of a multi-process job is lost (dead, stopped, its host gone, or a collective failed because
of it), EXIT_HUNG (76) when this process made no progress within its bound. `--verbose` (or
VIT_JAX_VERBOSE=1) prints the traceback of user errors too. Bad command lines exit 2 (argparse and
absl do that before the boundary). This module imports nothing heavy.
"""

import errno
import logging
import os
import sys
import traceback
from typing import Callable

log = logging.getLogger(__name__)

EXIT_LOST_PEER = 75  # A process of the job is lost: restartable (module doc).
EXIT_HUNG = 76  # No progress within the watchdog's bound: restartable.
RESTARTABLE = (EXIT_LOST_PEER, EXIT_HUNG)

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
  """A mistake in the input or the environment, not a bug: shown as its message alone (see module
  doc)."""


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
  # Some libraries (TensorStore) keep only the OSError's text.
  text = ' '.join(str(e) for e in _chain(exc))
  for code, advice in FAULTS.items():
    if os.strerror(code) in text:
      return f'{os.strerror(code)}: {advice}.'
  return None


class _DropFaultLogs(logging.Filter):
  def filter(self, record):
    if record.levelno < logging.ERROR:
      return True
    if record.exc_info and record.exc_info[1] is not None and fault(record.exc_info[1]):
      return False
    return not any(os.strerror(c) in record.getMessage() for c in FAULTS)


def _aftermath(exc) -> bool:
  """An error that a failed asynchronous write leaves behind in library callbacks (TensorStore's
  completions reaching the event loop of an Orbax save that already ended): noise after the fault
  itself."""
  return isinstance(exc, RuntimeError) and str(exc) == 'Event loop is closed'


class quiet_faults:  # pylint: disable=invalid-name
  """Within it, a library's own report of an environment fault is not printed: Orbax logs the failed
  writes of its background threads with their tracebacks, threads that die print theirs, and
  TensorStore's completions of the other writes of a failed save find its event loop closed
  (`_aftermath`). The library raises the fault again in the caller, which reports it as one line.
  Anything else is printed as usual."""

  def __enter__(self):
    import threading  # noqa: PLC0415

    self._threading = threading
    self._previous = threading.excepthook
    self._unraisable = sys.unraisablehook
    self._filter = _DropFaultLogs()
    self._loggers = [logging.getLogger(), logging.getLogger('absl'), logging.getLogger('asyncio')]

    def thread_hook(args):
      if args.exc_value is None or (
        fault(args.exc_value) is None and not _aftermath(args.exc_value)
      ):
        self._previous(args)

    def unraisable_hook(unraisable):
      if not _aftermath(unraisable.exc_value):
        self._unraisable(unraisable)

    threading.excepthook = thread_hook
    sys.unraisablehook = unraisable_hook
    for logger in self._loggers:
      logger.addFilter(self._filter)
      for handler in logger.handlers:
        handler.addFilter(self._filter)
    return self

  def __exit__(self, *exc):
    self._threading.excepthook = self._previous
    sys.unraisablehook = self._unraisable
    for logger in self._loggers:
      logger.removeFilter(self._filter)
      for handler in logger.handlers:
        handler.removeFilter(self._filter)


def user_error(exc: BaseException) -> UserError | None:
  """The UserError in `exc`'s chain (a library may wrap ours), or None."""
  return next((e for e in _chain(exc) if isinstance(e, UserError)), None)


def _verbose(argv) -> bool:
  return '--verbose' in (argv or ()) or os.environ.get('VIT_JAX_VERBOSE', '') not in (
    '',
    '0',
    'false',
  )


def run(
  main: Callable[[], int | None], *, prog: str, argv=None, exit_on_fault: bool = False
) -> int:
  """Runs `main()` inside the boundary; returns the exit status (see module doc). Storage clients'
  own logs of the failures they retry and then raise (gcsfs) are left to --verbose. With
  `exit_on_fault`, an environment fault ends the process at once once reported (os._exit, after
  flushing): libraries left mid-write (Orbax's and TensorStore's background threads) would otherwise
  print their own tracebacks while shutting down."""
  if not _verbose(argv):
    logging.getLogger('gcsfs').setLevel(logging.CRITICAL)
  try:
    return int(main() or 0)
  except KeyboardInterrupt as e:
    sys.stderr.write(f'{prog}: aborted by Ctrl-C' + (f' {e}' if str(e) else '') + '.\n')
    return 130
  except Exception as e:  # pylint: disable=broad-except  (the boundary: every exception ends here)
    mistake = user_error(e)
    problem = fault(e)
    if (mistake is None and problem is None) or _verbose(argv):
      traceback.print_exc()
    if mistake is None and problem is None:
      sys.stderr.write(
        f'{prog}: internal error (a bug; please report it '
        f'with the traceback above): {type(e).__name__}: {e}\n'
      )
      return 1
    text = str(mistake) if mistake is not None else problem
    sys.stderr.write(f'{prog}: error: {text}\n')
    # Libraries' late reports of it (at exit): not again.
    if problem is not None and not _verbose(argv):
      quiet_faults().__enter__()
      if exit_on_fault:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # pylint: disable=protected-access
    return 1
