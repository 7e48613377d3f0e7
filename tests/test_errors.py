"""vit_jax/errors.py: the one error boundary: user errors and environment faults are one line, bugs
a traceback."""

import errno

import pytest

from vit_jax import errors


class _Mistake(errors.UserError, ValueError):
  pass


def _run(fn, capsys, argv=()):
  code = errors.run(fn, prog='tool', argv=list(argv))
  return code, capsys.readouterr().err


def _raise(exc):
  def fn():
    raise exc

  return fn


def test_a_user_error_is_its_message_alone_with_status_1(capsys):
  code, err = _run(_raise(_Mistake('config.x=3 must be 1 or 2.')), capsys)
  assert (code, err) == (1, 'tool: error: config.x=3 must be 1 or 2.\n')


def test_a_user_error_wrapped_by_a_library_is_still_found(capsys):
  def fn():
    try:
      raise _Mistake('the workdir is in use')
    except _Mistake as e:
      raise RuntimeError('a library wrapped it') from e

  assert _run(fn, capsys) == (1, 'tool: error: the workdir is in use\n')


@pytest.mark.parametrize(
  'code, advice',
  [
    (errno.ENOSPC, 'free some space'),
    (errno.EROFS, 'writable location'),
    (errno.EACCES, 'permissions'),
  ],
)
def test_an_environment_fault_deep_in_a_chain_is_one_line_naming_the_file(capsys, code, advice):
  def fn():
    try:
      raise OSError(code, 'x', '/runs/a/checkpoints/4/x')
    except OSError as e:
      raise RuntimeError('Save failed: 42/42 params are missing .zarray') from e

  status, err = _run(fn, capsys)
  assert status == 1 and len(err.splitlines()) == 1 and 'Traceback' not in err
  assert '(/runs/a/checkpoints/4/x)' in err and advice in err


def test_a_fault_known_only_by_its_text(capsys):
  status, err = _run(
    _raise(RuntimeError('tensorstore: [Errno 28] No space left on device writing chunk')), capsys
  )
  assert (status, err) == (
    1,
    'tool: error: No space left on device: free some space '
    '(or use another location) and rerun the same command.\n',
  )


def test_a_bug_shows_its_traceback(capsys):
  status, err = _run(_raise(KeyError('oops')), capsys)
  assert status == 1 and 'Traceback' in err and 'internal error (a bug' in err


def test_verbose_shows_the_traceback_of_user_errors_too(capsys):
  status, err = _run(_raise(_Mistake('bad')), capsys, argv=['--verbose'])
  assert status == 1 and 'Traceback' in err and err.endswith('tool: error: bad\n')


def test_ctrl_c_is_status_130_with_what_it_interrupted(capsys):
  status, err = _run(_raise(KeyboardInterrupt('before training started: nothing was lost')), capsys)
  assert (status, err) == (
    130,
    'tool: aborted by Ctrl-C before training started: nothing was lost.\n',
  )


def test_within_quiet_faults_library_reports_of_a_fault_print_nothing_and_others_print(monkeypatch):
  import sys  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top

  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', lambda u: seen.append(str(u.exc_value)))
  monkeypatch.setattr(threading, 'excepthook', lambda a: seen.append(str(a.exc_value)))

  def unraisable(exc):  # What CPython passes to sys.unraisablehook.
    return types.SimpleNamespace(
      exc_type=type(exc), exc_value=exc, exc_traceback=None, err_msg=None, object=None
    )

  with errors.quiet_faults():
    sys.unraisablehook(unraisable(RuntimeError('Event loop is closed')))
    for exc in (OSError(errno.ENOSPC, 'full'), KeyError('a bug')):
      died = threading.Thread(target=_raise(exc))
      died.start()
      died.join()
    sys.unraisablehook(unraisable(ValueError('something else')))
  assert seen == ["'a bug'", 'something else']
