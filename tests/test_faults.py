"""Faults at scale, as a user meets them: 4 processes x 2 CPU devices (FSDP over all 8, gloo on
127.0.0.1) run by `python -m launch.local`; one process is killed (kill -9), the coordinator is
killed, or a process is stopped (SIGSTOP: alive but stuck). Every other process must end within a
bound with a line naming the cause, and the launcher must run the job again by itself, resuming from
the last checkpoint to the metrics of an uninterrupted run (README, "Faults at scale";
vit_jax/runtime/watchdog.py; launch/local.py). Each case prints its timings (fault -> last
survivor's exit -> resumed run's first step)."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tiny

from vit_jax.runtime import goodput
from vit_jax.runtime import workdir as workdir_lib

STEPS, EVERY, AT = 40, 10, 15  # Steps, checkpoint interval, the step after which the fault comes.
PEER_TIMEOUT_S = 10
# Every survivor ends this soon after the fault (the bound; the stuck case adds 30 s).
EXIT_BOUND_S = 60


def _args(workdir, digits_dir):
  return [
    f'--config={tiny.REPO}/configs/default.py',
    f'--config.tfds_data_dir={digits_dir}',
    f'--workdir={workdir}',
    *tiny.SMALL,
    f'--config.total_steps={STEPS}',
    f'--config.eval_every_steps={STEPS}',
    f'--config.checkpoint_every_steps={EVERY}',
    "--config.mesh=(('fsdp', -1),)",
    f'--config.faults.peer_timeout_s={PEER_TIMEOUT_S}',
    '--config.faults.heartbeat_timeout_s=60',
    '--config.faults.hang_floor_s=30',
  ]


@pytest.fixture(scope='module')
def reference(tmp_path_factory, digits_dir):
  """The uninterrupted run's metrics records: 1 process x 8 devices, the same mesh
  (test_multihost.py shows that processes do not change the numbers)."""
  workdir = tmp_path_factory.mktemp('faults') / 'reference'
  done = tiny.run_main(_args(workdir, digits_dir), devices=8, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir_lib.read_metrics(str(workdir))


class Launched:
  """`python -m launch.local --processes=4 ...` with its output lines read as they come, each with
  its time."""

  def __init__(self, tmp_path, main_args, *launcher_flags):
    cmd = [
      sys.executable,
      '-m',
      'launch.local',
      '--processes=4',
      '--devices_per_process=2',
      '--max_restarts=1',
      '--backoff_s=1',
      '--grace_s=30',
      *launcher_flags,
      '--',
      *main_args,
    ]
    self.proc = subprocess.Popen(
      cmd,
      cwd=tmp_path,
      env=tiny.main_env(2, PYTHONPATH=str(tiny.REPO)),
      text=True,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      start_new_session=True,
    )
    self.lines: list[tuple[float, str]] = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.append((time.monotonic(), line.rstrip('\n')))

  def text(self) -> str:
    return '\n'.join(line for _, line in self.lines)

  def wait_for(self, pattern: str, *, after: int = 0, timeout: float = 300, accept=lambda m: True):
    """(index, time, match) of the first line from `after` on that matches `pattern` and
    `accept`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      for i in range(after, len(self.lines)):
        match = re.search(pattern, self.lines[i][1])
        if match and accept(match):
          return i, self.lines[i][0], match
      if self.proc.poll() is not None and not self._reader.is_alive():
        break
      time.sleep(0.1)
    self.kill()
    raise AssertionError(
      f'no line matching {pattern!r} within {timeout} s; the output:\n{self.text()[-6000:]}'
    )

  def pid(self, index: int) -> int:
    _, _, match = self.wait_for(rf'launch\.local: process {index} of 4: pid (\d+)')
    return int(match.group(1))

  def kill(self):
    """Ends the launcher and every process it started (each in its own session)."""
    for _, line in list(self.lines):
      match = re.search(r'launch\.local: process \d+ of 4: pid (\d+)', line)
      if match:
        try:
          os.kill(int(match.group(1)), signal.SIGKILL)
        except ProcessLookupError:
          pass
    if self.proc.poll() is None:
      os.killpg(self.proc.pid, signal.SIGKILL)
      self.proc.wait()


def _inject(tmp_path, digits_dir, reference, victim: int, sig: int, cause: str, bound_s: float):
  workdir = tmp_path / 'run'
  run = Launched(tmp_path, _args(workdir, digits_dir))
  try:
    pid = run.pid(victim)
    _, _, _ = run.wait_for(
      r'^\[0\] .*step (\d+)/\d+', accept=lambda m: int(m.group(1)) >= AT, timeout=400
    )
    fault_index, fault_at = len(run.lines), time.monotonic()
    os.kill(pid, sig)
    exits = {}
    for p in range(4):
      if p != victim:
        _, t, m = run.wait_for(
          rf'launch\.local: process {p} exited \(exit status (\d+)',
          after=fault_index,
          timeout=bound_s + 30,
        )
        exits[p] = (t - fault_at, int(m.group(1)))
    restart, _, _ = run.wait_for(
      r'launch\.local: .*running the job again', after=fault_index, timeout=60
    )
    _, resumed_at, step = run.wait_for(r'^\[0\] .*step (\d+)/\d+', after=restart, timeout=400)
    assert run.proc.wait(timeout=400) == 0, run.text()[-6000:]
  finally:
    run.kill()
    # The whole output, for a failure's post-mortem.
    (tmp_path / 'launch.log').write_text(run.text())
  out = run.text()
  last_exit = max(s for s, _ in exits.values())
  print(
    f'\n{cause}: survivors exited {sorted((p, round(s, 1), c) for p, (s, c) in exits.items())} '
    f'(process, s after the fault, status); last {last_exit:.1f} s; the resumed run logged step '
    f'{step.group(1)} {resumed_at - fault_at:.1f} s after the fault.'
  )
  assert last_exit < bound_s, out[-6000:]
  for p, (_, code) in exits.items():
    # Its own lines of the faulted attempt (up to the launcher's rerun), not the resumed run's.
    own = [
      line
      for _, line in run.lines[:restart]
      if line.startswith(f'[{p}] ')
      and not re.match(r'\[\d\] +(File "|Thread 0x|Current thread 0x|Extension modules|$)', line)
    ]
    assert code in (75, 76), f'process {p} exited {code}; its last lines:\n' + '\n'.join(own[-40:])
    said = [line for line in own if re.search(r'error|F\d{4} ', line)]
    # A survivor names the cause; or gloo aborted it mid-collective beside the dead one
    # (launch/outcome.py, GLOO_ABORT), and gloo names no process: the other survivors' lines do
    # (process 0's always, when it survives).
    gloo = rf'^\[{p}\] vit_jax\.main: error: process {p} of 4 lost a peer in a collective: gloo::'
    assert re.search(rf'^\[{p}\] vit_jax\.main: error: process {p} of 4 .*{cause}', out, re.M) or (
      p != 0 and re.search(gloo, out, re.M)
    ), '\n'.join(said)
  assert 'Traceback' not in out and 'Fatal Python error' not in out, out[-6000:]

  # Resumed from the last checkpoint and ended where an uninterrupted run ends.
  records = workdir_lib.read_metrics(str(workdir))
  for key in ('train/loss', 'train/grad_norm'):
    ran, ref = tiny.by_step(records, key), tiny.by_step(reference, key)
    assert list(ran) == list(ref) == list(range(1, STEPS + 1))
    np.testing.assert_allclose(list(ran.values()), list(ref.values()), rtol=1e-5, err_msg=key)
  assert tiny.by_step(records, 'eval/accuracy') == tiny.by_step(reference, 'eval/accuracy')
  np.testing.assert_allclose(
    tiny.by_step(records, 'eval/loss')[STEPS],
    tiny.by_step(reference, 'eval/loss')[STEPS],
    rtol=1e-5,
  )

  # Goodput: the parts add up to the wall time; the first attempt's steps past the checkpoint the
  # second resumed from are its lost time.
  attempts = goodput.read(str(workdir))
  assert len(attempts) == 2 and [a['ended'] for a in attempts] == ['died', 'finished'], attempts
  first, second = attempts
  assert second['first_step'] % EVERY == 0 and 0 < second['first_step'] < first['last_step']
  assert first['lost_steps'] == first['last_step'] - second['first_step']
  per_step = (first['phases']['train'] + first['phases']['input'] + first['phases']['lost']) / (
    first['last_step'] - first['first_step']
  )
  assert first['phases']['lost'] == pytest.approx(per_step * first['lost_steps'], rel=0.01)
  total = goodput.summary(attempts)
  print(f'{cause}: {goodput.describe(total)}; lost {first["lost_steps"]} steps')
  parts = sum(total[k] for k in goodput.ALL_PARTS)
  assert parts == pytest.approx(total['wall'], rel=0.02), total
  assert total['gap'] > 0 and total['lost'] > 0
  return out


def test_a_killed_process_ends_the_job_and_the_launcher_resumes_it(tmp_path, digits_dir, reference):
  # Process 0 names every silent process: 2, and any other that died with it ('processes 2, 3 of
  # 4').
  _inject(
    tmp_path,
    digits_dir,
    reference,
    2,
    signal.SIGKILL,
    r'process(es)? (\d, )*2(, \d)* of 4',
    EXIT_BOUND_S,
  )


def test_a_killed_coordinator_ends_the_job_and_the_launcher_resumes_it(
  tmp_path, digits_dir, reference
):
  out = _inject(
    tmp_path, digits_dir, reference, 0, signal.SIGKILL, 'lost the coordinator', EXIT_BOUND_S
  )
  assert 'lines of JAX stack dumps left out' in out


def test_a_stopped_process_ends_the_job_and_the_launcher_resumes_it(
  tmp_path, digits_dir, reference
):
  out = _inject(
    tmp_path,
    digits_dir,
    reference,
    1,
    signal.SIGSTOP,
    r'process(es)? (\d, )*1(, \d)* of 4',
    PEER_TIMEOUT_S + 30,
  )
  # The stopped one is killed: nothing outlives its job.
  assert 'launch.local: process 1 still runs' in out
