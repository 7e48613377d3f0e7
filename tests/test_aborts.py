"""vit_jax/runtime/aborts.py: a multi-process run's trainer in a child process, whose aborts after a
lost coordinator or peer become one line and exit status 75 (tests/test_faults.py runs it with
JAX)."""

import io
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import tiny

from vit_jax.runtime import aborts
from vit_jax.runtime import workdir as workdir_lib

JAX_LINE = (
  'F1204 14:01:45.693004    3580 client.h:86] Terminating process because the '
  'JAX distributed service detected fatal errors. This most likely indicates '
  'that another task died. absl::Status: UNAVAILABLE: Failed to send RPC to '
  'coordination service. Either the leader task was preempted/died/restarted'
)
RESTART = 'exiting with status 75 (restartable): rerun the same command on all processes'


def _relayed(text: str, index=None, count=None, dumps=None, full_dumps=False):
  """(the relay, its output lines) for the child's stderr `text`; the dumps it left out go to the
  list `dumps` ('FILE' is where)."""
  out = io.StringIO()
  relay = aborts.Relay(out, index=index, count=count, full_dumps=full_dumps)
  for line in io.StringIO(text):
    relay.feed(line)
  relay.finish(lambda lines: dumps.extend(lines) or 'FILE' if dumps is not None else None)
  return relay, out.getvalue().splitlines()


def test_jax_abort_names_the_declared_dead_process_else_the_coordinator_for_rpc_failures():
  head = JAX_LINE.split('absl::Status:')[0] + 'absl::Status: '
  dead = aborts.lost_peer_line(
    1, 4, head + 'UNAVAILABLE: Task /job:jax_worker/replica:0/task:2 heartbeat timeout.'
  )
  assert 'process 1 of 4 lost process 2:' in dead
  for status in (
    'UNAVAILABLE: Socket closed',
    'UNAVAILABLE: failed to connect to all addresses; Connection refused',
    'INTERNAL: Connection reset by peer',
  ):
    assert 'lost the coordinator (process 0)' in aborts.lost_peer_line(1, 4, head + status), status
  assert 'lost a peer' in aborts.lost_peer_line(1, 4, head + 'INTERNAL: something else')


def test_jax_abort_after_the_coordinator_died_becomes_one_last_line_and_counts_as_lost():
  line = aborts.lost_peer_line(3, 4, JAX_LINE)
  assert line.startswith('vit_jax.main: error: process 3 of 4 lost the coordinator (process 0)')
  assert line.endswith(f'JAX aborted it: {RESTART} to resume from the last checkpoint.')
  assert aborts.lost_peer_line(3, 4, 'step 5/10 loss 2.3') is None
  dumps = []
  stacks = '*** Check failure stack trace: ***\n@ 0x7f\nFatal Python error: Aborted\n'
  relay, lines = _relayed(f'step 5/10\n{JAX_LINE}\n{stacks}', 3, 4, dumps)
  assert relay.lost
  assert lines == [
    'step 5/10',
    '(4 lines of stack dumps in FILE: --full_dumps shows them)',
    line,
  ]
  assert ''.join(dumps) == f'{JAX_LINE}\n{stacks}'
  # With --full_dumps they stay on the console, before the line.
  relay, lines = _relayed(f'step 5/10\n{JAX_LINE}\n{stacks}', 3, 4, full_dumps=True)
  assert lines == ['step 5/10', JAX_LINE, *stacks.splitlines(), line]


def test_the_process_is_named_by_the_trainers_first_line_where_no_flag_named_it():
  relay, lines = _relayed(
    'I1204 main.py:139] JAX 0.12.0: process 2 of 4, 2 local / 8 global devices (cpu).\n'
    + JAX_LINE
    + '\n'
  )
  assert relay.lost and lines[-1].startswith('vit_jax.main: error: process 2 of 4 lost the coord')


def test_a_gloo_abort_beside_a_dead_peer_becomes_one_line_and_counts_as_lost():
  # Seen on a 4-process loopback run: process 3, 0.04 s after kill -9 of process 2 (its ring
  # neighbour).
  what = (
    '  what():  [enforce fail at '
    'external/xla++third_party_ext+gloo/gloo/transport/tcp/pair.cc:459] op.preamble.length <= '
    "op.nbytes. 80 vs 4. Received data size doesn't match expected size."
  )
  relay, lines = _relayed(
    'step 5/10\nterminate called after throwing an instance of '
    f"'gloo::EnforceNotMet'\n{what}\nFatal Python error: "
    'Aborted\n\nThread 0x00007f534b78a6c0 (most recent call first):\n',
    3,
    4,
    [],
  )
  assert relay.lost and lines[0] == 'step 5/10' and len(lines) == 3, lines
  assert lines[1] == '(5 lines of stack dumps in FILE: --full_dumps shows them)'
  assert lines[2] == (
    'vit_jax.main: error: process 3 of 4 lost a peer in a collective: gloo::EnforceNotMet '
    '[enforce fail at external/xla++third_party_ext+gloo/gloo/transport/tcp/pair.cc:459] '
    "op.preamble.length <= op.nbytes. 80 vs 4. Received data size doesn't match expected "
    "size. (gloo does not say which process; the others' lines do); gloo aborted it: "
    f'{RESTART} to resume from the last checkpoint.'
  )
  # Without its what() line (the stream ended), the line still comes, and a later line is not taken
  # as its.
  abort = "terminate called after throwing an instance of 'gloo::IoException'\n"
  _, lines = _relayed(abort + 'Fatal Python error: Aborted\n', 3, 4, [])
  assert lines[0] == '(2 lines of stack dumps in FILE: --full_dumps shows them)'
  assert lines[1].startswith(
    'vit_jax.main: error: process 3 of 4 lost a peer in a collective: gloo::IoException (no '
    "message) (gloo does not say which process; the others' lines do)"
  )
  assert len(lines) == 2


def test_jax_abort_that_lists_the_dead_tasks_on_the_next_lines_names_them():
  # JAX 0.12's form (seen on a 4-process loopback run after kill -9 of process 2, when JAX's own
  # heartbeat timeout came first): the status ends in ':' and the dead tasks follow, one number per
  # line.
  fatal = JAX_LINE.split('absl::Status:')[0] + (
    'absl::Status: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):'
  )
  relay, lines = _relayed(
    f'step 5/10\n{fatal}\n2\n3\nThe tasks have crashed. Check '
    'the task logs.\n*** Check failure stack trace: ***\n',
    1,
    4,
    [],
  )
  assert relay.lost and lines[0] == 'step 5/10'
  assert lines[1] == '(5 lines of stack dumps in FILE: --full_dumps shows them)'
  assert lines[2].startswith('vit_jax.main: error: process 1 of 4 lost process 2, 3: '), lines
  assert len(lines) == 3
  assert aborts.task_numbers('2\n') == [2] and aborts.task_numbers('step 2') is None


def _child(tmp_path, code: str, **kw):
  """aborts.run_child with the child `python -c CODE`; (exit status, stderr lines)."""
  out = io.StringIO()
  status = aborts.run_child(
    ['vit_jax.main'],
    workdir=str(tmp_path / 'w'),
    out=out,
    command=[sys.executable, '-c', textwrap.dedent(code)],
    **kw,
  )
  return status, out.getvalue().splitlines()


def test_a_child_aborted_after_losing_the_coordinator_exits_75_with_the_line_last(tmp_path):
  status, lines = _child(
    tmp_path,
    f"""
    import os, sys
    print('step 3/10', file=sys.stderr, flush=True)
    print({JAX_LINE!r}, file=sys.stderr, flush=True)
    print('*** Check failure stack trace: ***', file=sys.stderr, flush=True)
    os.abort()
    """,
    index=3,
    count=4,
  )
  path = workdir_lib.stacks_path(str(tmp_path / 'w'), 3)
  assert status == 75
  assert lines[0] == 'step 3/10' and lines[1].endswith(f'in {path}: --full_dumps shows them)')
  assert lines[-1].startswith('vit_jax.main: error: process 3 of 4 lost the coordinator (process')
  assert '*** Check failure stack trace: ***' in open(path, encoding='utf-8').read()


def test_a_childs_own_exit_status_and_signal_are_kept(tmp_path):
  assert _child(tmp_path, 'import sys; sys.exit(3)') == (3, [])
  assert _child(tmp_path, 'import os; os.abort()')[0] == 134  # An abort of its own: not a loss.
  assert _child(tmp_path, 'import os, signal; os.kill(os.getpid(), signal.SIGKILL)')[0] == 137


def test_sigterm_and_sigint_reach_the_child_as_sigterm_and_it_dies_with_its_parent(tmp_path):
  # The parent: a process of its own running aborts.run_child (as `python -m vit_jax.main` does).
  child = """
    import signal, sys, time
    signal.signal(signal.SIGTERM, lambda *a: (print('saved', file=sys.stderr, flush=True),
                                              sys.exit(0)))
    print('ready', file=sys.stderr, flush=True)
    time.sleep(60)
    """
  parent = (
    'import sys; from vit_jax.runtime import aborts; '
    f'sys.exit(aborts.run_child(["m"], workdir={str(tmp_path)!r}, '
    f'command=[sys.executable, "-c", {textwrap.dedent(child)!r}]))'
  )

  def start():
    proc = subprocess.Popen(
      [sys.executable, '-c', parent],
      stderr=subprocess.PIPE,
      text=True,
      env={**os.environ, 'PYTHONPATH': str(tiny.REPO)},
    )
    assert proc.stderr.readline() == 'ready\n'
    return proc

  for sig in (signal.SIGTERM, signal.SIGINT):
    proc = start()
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 0 and proc.stderr.read() == 'saved\n'
  # kill -9 of the parent: the child goes too.
  proc = start()
  pids = subprocess.run(['pgrep', '-P', str(proc.pid)], capture_output=True, text=True).stdout
  (pid,) = map(int, pids.split())
  proc.kill()
  proc.wait()
  deadline = time.monotonic() + 10
  while time.monotonic() < deadline and os.path.exists(f'/proc/{pid}'):
    time.sleep(0.1)
  assert not os.path.exists(f'/proc/{pid}')


@pytest.mark.parametrize(
  'argv, env, parent',
  [
    (['m', '--coordinator_address=127.0.0.1:1', '--num_processes=2', '--process_id=0'], {}, True),
    (['m', '--coordinator_address', '127.0.0.1:1'], {}, True),
    (['m', '--coordinator_address=h:1', '--distributed=off'], {}, False),
    (['m', '--config=c.py'], {}, False),  # One process: no child.
    (['m'], {'SLURM_JOB_ID': '1', 'SLURM_NTASKS': '4'}, True),
    (
      ['m'],
      {'SKYPILOT_NUM_NODES': '2', 'SKYPILOT_NODE_IPS': 'a b', 'SKYPILOT_NODE_RANK': '1'},
      True,
    ),
    (['m', '--coordinator_address=h:1'], {aborts.CHILD_ENV: '1'}, False),  # The child itself.
  ],
)
def test_main_runs_the_trainer_as_a_child_in_multi_process_runs_only(
  argv, env, parent, monkeypatch
):
  for name in ('SLURM_JOB_ID', 'TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS'):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  assert aborts.runs_as_parent(argv, {**os.environ, **env}) == parent
