"""The parts of the fault path one at a time (tests/test_faults.py runs them together): the
watchdog's bounds, its hang and lost-peer exits (a fake clock, a dict for the coordination service's
key-value store), the goodput clock and record, and how launchers read exit statuses and JAX's
abort."""

import io
import json
import re
import threading
import time
import types

import pytest

from launch import local, outcome
from vit_jax import errors
from vit_jax.runtime import goodput, watchdog
from vit_jax.runtime import workdir as workdir_lib


def _settings(**overrides):
  values = dict(
    hang_timeout_s=0, hang_first_s=1800, hang_floor_s=20, hang_factor=10, peer_timeout_s=0.5
  )
  return types.SimpleNamespace(**{**values, **overrides})


class _Exited(Exception):
  pass


def _exit_recorder(calls):
  def exit_fn(code, line):
    calls.append((code, line))
    raise _Exited(line)

  return exit_fn


class _Clock:
  def __init__(self, phase, stayed, step, longest):
    self.phase, self.since, self.step, self.longest = phase, time.time() - stayed, step, longest

  def current(self):
    return self.phase, self.since, self.step


def test_bound_is_the_first_stay_limit_then_a_multiple_of_the_longest_stay_with_a_floor():
  s = _settings()
  assert watchdog.bound(s, 'train', {}) == 1800  # Its first stay compiles.
  assert watchdog.bound(s, 'train', {'train': 0.5}) == 20  # The floor.
  assert watchdog.bound(s, 'eval', {'eval': 7.0}) == 70
  assert watchdog.bound(_settings(hang_timeout_s=45), 'eval', {'eval': 7.0}) == 45


@pytest.mark.parametrize(
  'phase,stayed,longest,hung',
  [
    ('train', 25, {'train': 1.0}, True),
    ('train', 15, {'train': 1.0}, False),
    ('eval', 50, {'eval': 6.0}, False),
    ('eval', 61, {'eval': 6.0}, True),
    ('startup', 10_000, {}, False),
    ('compile', 1000, {}, False),
  ],
)
def test_a_stay_past_its_bound_dumps_the_stacks_and_exits_hung(
  phase, stayed, longest, hung, capsys
):
  calls = []
  dog = watchdog.Watchdog(
    _Clock(phase, stayed, 7, longest),
    _settings(),
    process_index=1,
    process_count=4,
    exit_fn=_exit_recorder(calls),
  )
  if hung:
    with pytest.raises(_Exited):
      dog.check_progress()
    ((code, line),) = calls
    assert code == errors.EXIT_HUNG == 76
    assert f'process 1 of 4 hung: no progress for {stayed} s in {phase} at step 7' in line
    # Every thread's stack, this one's too.
    assert 'test_a_stay_past_its_bound' in capsys.readouterr().err
  else:
    dog.check_progress()
    assert not calls


class _Store:
  """The key-value store of JAX's coordination service, as the client sees it."""

  def __init__(self):
    self.data, self.down = {}, False

  def _up(self):
    if self.down:
      raise RuntimeError('UNAVAILABLE: Failed to send RPC to coordination service')

  def key_value_set(self, key, value, allow_overwrite=False):
    self._up()
    self.data[key] = value

  def key_value_try_get(self, key):
    self._up()
    if key not in self.data:
      raise RuntimeError(f'NOT_FOUND: {key}')
    return self.data[key]

  def key_value_dir_get(self, prefix):
    self._up()
    return [(k, v) for k, v in self.data.items() if k.startswith(prefix)]


def _dog(store, index, calls, **settings):
  return watchdog.Watchdog(
    _Clock('train', 0, 3, {}),
    _settings(**settings),
    process_index=index,
    process_count=4,
    client=store,
    exit_fn=_exit_recorder(calls),
  )


def test_process_0_names_the_silent_process_and_the_others_stop_with_the_same_cause():
  store, calls = _Store(), []
  dogs = [_dog(store, i, calls) for i in range(4)]
  for d in dogs:
    d.check_peers()  # Everyone beats once; process 0 hears them.
  deadline = time.monotonic() + 5
  with pytest.raises(_Exited):
    while time.monotonic() < deadline:
      time.sleep(0.1)
      for d in (dogs[1], dogs[3]):  # Process 2 went silent.
        d._next_beat = 0  # pylint: disable=protected-access  (beat at every check)
        d.check_peers()
      dogs[0].check_peers()
  ((code, line),) = calls
  assert code == errors.EXIT_LOST_PEER == 75
  assert 'process 0 of 4 stops: process 2 of 4 stopped responding' in line
  with pytest.raises(_Exited):
    dogs[3].check_peers()
  assert (
    calls[1][0] == 75 and 'process 3 of 4 stops: process 2 of 4 stopped responding' in calls[1][1]
  )


def test_process_0_names_every_process_that_went_silent_about_when_the_first_did():
  # kill -9 of process 2, and its gloo neighbour, process 3, aborted a moment later: both are named,
  # whichever of them crosses the timeout first. Process 1 goes on beating.
  store, calls = _Store(), []
  dogs = [_dog(store, i, calls, peer_timeout_s=1.0) for i in range(4)]
  for d in dogs:
    d.check_peers()
  dogs[0].check_peers()  # Process 0 hears process 3's last beat...
  time.sleep(0.3)
  dogs[2]._next_beat = 0  # pylint: disable=protected-access
  dogs[2].check_peers()
  dogs[0].check_peers()  # ... and process 2's, 0.3 s later.
  deadline = time.monotonic() + 5
  with pytest.raises(_Exited):
    while time.monotonic() < deadline:
      time.sleep(0.05)
      dogs[1]._next_beat = 0  # pylint: disable=protected-access
      dogs[1].check_peers()
      dogs[0].check_peers()
  ((code, line),) = calls
  assert code == 75 and re.search(
    r'process 0 of 4 stops: processes 2, 3 of 4 stopped responding \(no heartbeat for \d+, \d+ s',
    line,
  ), line


def test_a_finished_process_is_not_lost_and_a_lost_coordinator_is_named():
  store, calls = _Store(), []
  dogs = [_dog(store, i, calls) for i in range(4)]
  for d in dogs:
    d.check_peers()
  for i in (1, 2, 3):
    store.key_value_set(f'{watchdog.DONE_PREFIX}{i}', '1')  # Done: its silence is no loss.
  time.sleep(0.7)
  dogs[0].check_peers()
  assert not calls
  store.down = True
  with pytest.raises(_Exited):
    dogs[2].check_peers()
  assert calls[0][0] == 75 and 'process 2 of 4 lost the coordinator (process 0)' in calls[0][1]


def test_the_thread_runs_inside_the_block_and_says_done_on_a_normal_exit():
  store, calls = _Store(), []
  clock = goodput.Clock()
  with watchdog.Watchdog(
    clock,
    _settings(),
    process_index=1,
    process_count=2,
    client=store,
    poll_s=0.05,
    exit_fn=_exit_recorder(calls),
  ):
    time.sleep(0.3)
    assert store.data[f'{watchdog.ALIVE_PREFIX}1'] == '1'
  assert store.data[f'{watchdog.DONE_PREFIX}1'] == '1' and not calls
  assert not any(t.name == 'vit_jax-watchdog' for t in threading.enumerate())


def test_clock_phases_add_up_to_the_wall_time_and_keep_the_longest_stay():
  clock = goodput.Clock(start=time.time())
  clock.enter('compile')
  time.sleep(0.05)
  clock.enter('train', step=1)
  time.sleep(0.02)
  clock.enter('eval', step=2)
  phases = clock.phases()
  assert sum(phases.values()) == pytest.approx(time.time() - clock.start, abs=0.01)
  assert clock.longest['compile'] >= 0.05 and clock.current()[0::2] == ('eval', 2)
  with pytest.raises(ValueError, match="Unknown phase 'nap'"):
    clock.enter('nap')


def test_the_clock_times_train_steps_apart_from_compiling_evaluating_and_saving():
  """What the loop does (vit_jax/training/loop.py), on a fake wall time: the rate, the ETA and img/s
  count a train step's own time (train and input), never the first step's compilation, an
  evaluation or a save."""
  now = [100.0]
  clock = goodput.Clock(start=now[0], now=lambda: now[0])
  clock.tick(0)  # Still in startup: nothing is timed.
  for step in (1, 2, 3, 4):
    clock.enter('input', step)
    now[0] += 0.5  # The batch (the first one's, before the compilation, is not timed).
    if step == 1:
      clock.enter('compile')
      now[0] += 50.0
      clock.enter('train')
    else:
      clock.enter('train')
      now[0] += 1.5  # The update.
    clock.tick(step)
    if step == 2:
      assert clock.lap() == (2, pytest.approx(2.0))  # Step 1 in 0 s after compiling, step 2 in 2 s.
    if step == 3:
      with clock.phase('eval', step):
        now[0] += 10.0
      assert clock.current()[0::2] == ('train', 3)  # Back in training.
      with clock.phase('checkpoint', step):
        now[0] += 5.0
  assert clock.train_time() == (4, pytest.approx(6.0))
  assert clock.lap() == (2, pytest.approx(4.0))
  phases = {
    'startup': 0.0,
    'compile': 50.0,
    'train': 4.5,
    'input': 2.0,
    'eval': 10.0,
    'checkpoint': 5.0,
  }
  assert clock.phases() == pytest.approx(phases)
  with pytest.raises(RuntimeError):
    with clock.phase('eval', 5):
      raise RuntimeError('an evaluator failed')
  assert clock.current()[0] == 'eval'  # A failure stays in its phase (the watchdog's bound).


def test_a_resumed_attempt_settles_the_lost_steps_of_the_one_before(tmp_path):
  workdir, now = str(tmp_path), time.time()
  died = {
    'start': now - 130,
    'end': now - 30,
    'first_step': 0,
    'last_step': 40,
    'ended': 'running',
    'phases': {
      'startup': 10.0,
      'compile': 5.0,
      'train': 60.0,
      'input': 20.0,
      'eval': 3.0,
      'checkpoint': 2.0,
    },
  }
  io_path = workdir_lib.path(workdir, workdir_lib.GOODPUT_FILE)
  # What an attempt killed after step 40 leaves: 80 s for 40 steps, 2 s a step.
  with open(io_path, 'w') as f:
    json.dump({'attempts': [died]}, f)
  # The checkpoint of step 30.
  second = goodput.Recorder(workdir, goodput.Clock(start=now - 20), resumed_from=30)
  second.write(step=35, ended='finished')
  attempts = goodput.read(workdir)
  assert [a['ended'] for a in attempts] == ['died', 'finished']
  assert attempts[0]['lost_steps'] == 10
  assert attempts[0]['phases']['lost'] == pytest.approx(20.0)  # 10 steps at 2 s.
  assert attempts[0]['phases']['train'] == pytest.approx(45.0) and attempts[0]['phases'][
    'input'
  ] == pytest.approx(15)
  total = goodput.summary(attempts)
  assert (
    total['attempts'] == 2
    and total['gap'] == pytest.approx(10, abs=0.1)
    and total['lost'] == pytest.approx(20)
  )
  assert sum(total[k] for k in goodput.ALL_PARTS) == pytest.approx(total['wall'], rel=0.02)
  assert total['goodput'] == pytest.approx(total['train'] / total['wall'])
  assert goodput.describe(total).startswith('goodput ')


def test_launchers_rerun_lost_and_hung_processes_only():
  assert outcome.restartable([0, 75, 137, 75])  # The killed one beside those that saw it go.
  assert outcome.restartable([76, 76])
  assert not outcome.restartable([137, 137])  # Nothing says why: not retried.
  assert not outcome.restartable([75, 1])  # A bug beside it.
  assert not outcome.restartable([75, 130])  # Ctrl-C.
  assert not outcome.restartable([0, 0])


def test_local_processes_get_their_devices_and_a_loopback_coordinator():
  env = local.process_env(
    1, devices_per_process=2, gpus=None, port=1234, base={'XLA_FLAGS': '--xla_foo=1'}
  )
  assert env['XLA_FLAGS'] == '--xla_foo=1 --xla_force_host_platform_device_count=2'
  assert env['JAX_PLATFORMS'] == 'cpu' and env['JAX_COORDINATOR_BIND_ADDRESS'] == '127.0.0.1:1234'
  assert (
    local.process_env(1, devices_per_process=None, gpus=['4', '5'], port=1, base={})[
      'CUDA_VISIBLE_DEVICES'
    ]
    == '5'
  )
  assert local.process_command(['--workdir=w'], port=1234, processes=4, index=2, python='py')[
    -3:
  ] == ['--coordinator_address=127.0.0.1:1234', '--num_processes=4', '--process_id=2']


def test_an_error_in_a_multi_process_run_waits_for_the_lost_peer_to_be_named(caplog):
  store, calls = _Store(), []

  def exit_fn(code, line):
    calls.append((code, line))
    # (ends the thread, as os._exit ends the process)
    dog._stop.set()  # pylint: disable=protected-access

  store.key_value_set(watchdog.ABORT_KEY, 'process 2 of 4 stopped responding (...)')
  dog = watchdog.Watchdog(
    goodput.Clock(),
    _settings(),
    process_index=1,
    process_count=4,
    client=store,
    poll_s=0.05,
    exit_fn=exit_fn,
  )
  with pytest.raises(RuntimeError, match='gloo: Connection reset by peer'):
    with dog:
      raise RuntimeError('gloo: Connection reset by peer')  # A collective with the dead process.
  assert calls == [
    (
      75,
      'process 1 of 4 stops: process 2 of 4 stopped responding (...); the '
      'job cannot go on: exiting with status 75 (restartable): rerun the '
      'same command on all processes to resume from the last checkpoint.',
    )
  ]
  assert 'checking for 10 s whether a peer was lost' in caplog.text


def test_the_process_start_is_the_kernels_but_not_long_before_vit_jax_was_imported(monkeypatch):
  import vit_jax  # pylint: disable=g-import-not-at-top

  start = goodput.process_start_time()
  # The interpreter counts.
  assert vit_jax.IMPORTED_AT - goodput.STARTUP_SLACK_S <= start < vit_jax.IMPORTED_AT
  # A process forked long before it ran Python (a shell's last command is exec'd in the shell's own
  # process).
  monkeypatch.setattr(vit_jax, 'IMPORTED_AFTER_BOOT', vit_jax.IMPORTED_AFTER_BOOT + 1000)
  assert goodput.process_start_time() == vit_jax.IMPORTED_AT - goodput.STARTUP_SLACK_S
  # Where the kernel's clock is not there: the import.
  monkeypatch.setattr(vit_jax, 'IMPORTED_AFTER_BOOT', None)
  assert goodput.process_start_time() == vit_jax.IMPORTED_AT


def test_a_hangs_stack_dump_goes_to_its_file_and_one_line_says_where(tmp_path, capsys):
  calls = []
  path = workdir_lib.stacks_path(str(tmp_path / 'w'), 1)
  dog = watchdog.Watchdog(
    _Clock('train', 25, 7, {'train': 1.0}),
    _settings(),
    process_index=1,
    process_count=4,
    exit_fn=_exit_recorder(calls),
    dump_to=path,
  )
  with pytest.raises(_Exited):
    dog.check_progress()
  assert calls[0][0] == errors.EXIT_HUNG
  assert capsys.readouterr().err == (
    'vit_jax.main: process 1 made no progress for 25 s; the stacks of its threads are in '
    f'{path} (--full_dumps shows them here).\n'
  )
  text = open(path, encoding='utf-8').read()
  assert 'process 1 made no progress for 25 s' in text and 'test_a_hangs_stack_dump' in text
