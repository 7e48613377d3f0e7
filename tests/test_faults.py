"""Faults at scale, as a user meets them: 4 processes x 2 CPU devices (FSDP over all 8, gloo on
127.0.0.1) run by `python -m launch.local`; in one run, one attempt after the other, a process is
killed (kill -9), the coordinator is killed, and a process is stopped (SIGSTOP: alive but stuck).
After each, every other process must end within a bound with a line naming the cause, and the
launcher must run the job again by itself; the last attempt resumes from the last checkpoint to the
metrics of an uninterrupted run (README, "Faults at scale"; vit_jax/runtime/watchdog.py;
launch/local.py). Each case prints its timings (fault -> last survivor's exit -> resumed run's first
step). (One run for the three, not one each: 4 attempts instead of 6, about 100 CPU-s of the
suite.) The same 4 processes started directly, with no launcher (as a TPU VM's script or a user's
own loop starts them), exit 75 by themselves, each naming the cause in its last line
(vit_jax/runtime/aborts.py), and the same command resumes the run."""

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

from vit_jax.runtime import aborts, goodput
from vit_jax.runtime import workdir as workdir_lib

STEPS, EVERY, AT = 40, 10, 15  # Steps, checkpoint interval, the step after which the fault comes.
PEER_TIMEOUT_S = 10
# Every survivor ends this soon after the fault (the bound; the stuck case adds 30 s).
EXIT_BOUND_S = 60


def _args(workdir, digits_dir):
  # The main job's plain ViT: with its hybrid's stem, 4 processes' losses drift from one process's
  # by 3e-5 (relative) by step 30, past the 1e-5 that _assert_as_uninterrupted allows: gloo sums a
  # gradient across processes in another order than one process sums it across its devices (our
  # reading; test_multihost.py's 5 steps stay within 1e-5).
  return [
    f'--config={tiny.REPO}/configs/default.py:model=vit',
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
      f'--max_restarts={len(LAUNCHER_FAULTS)}',
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

  def pid(self, index: int, after: int = 0) -> int:
    """The pid of process `index` of the attempt whose lines start at `after`."""
    _, _, match = self.wait_for(rf'launch\.local: process {index} of 4: pid (\d+)', after=after)
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


def _assert_as_uninterrupted(workdir, reference):
  """Resumed from the last checkpoint and ended where an uninterrupted run ends."""
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


# The launcher's cases, in the order one launched run meets them: (victim, signal, what each
# survivor's error line must name, the bound on the survivors' exits). Fault k comes once process 0
# logged step AT + EVERY * k, past its attempt's first checkpoint.
LAUNCHER_FAULTS = (
  # Process 0 names every silent process: 2, and any that died with it ('processes 2, 3 of 4').
  (2, signal.SIGKILL, r'process(es)? (\d, )*2(, \d)* of 4', EXIT_BOUND_S),
  (0, signal.SIGKILL, 'lost the coordinator', EXIT_BOUND_S),
  # A stuck process (alive, no progress): the peers wait peer_timeout_s, then the hang bound.
  (1, signal.SIGSTOP, r'process(es)? (\d, )*1(, \d)* of 4', PEER_TIMEOUT_S + 30),
)


def _names_cause(p: int, cause: str, text: str, prefix: str = '') -> bool:
  """Whether a line of `text` (each line after `prefix`) is process p's error line naming `cause`;
  or, for p other than 0, gloo's abort mid-collective beside the dead one (launch/outcome.py,
  GLOO_ABORT): gloo names no process, the other survivors' lines do (process 0's always, when it
  survives)."""
  error = rf'^{prefix}vit_jax\.main: error: process {p} of 4 '
  return bool(
    re.search(error + f'.*{cause}', text, re.M)
    or (p != 0 and re.search(error + 'lost a peer in a collective: gloo::', text, re.M))
  )


def _fault(run, k: int, after: int, victim: int, sig: int, cause: str, bound_s: float):
  """Fault k of LAUNCHER_FAULTS in the attempt whose lines start at `after`: waits for its step,
  sends `sig` to `victim`, checks that every survivor exits within `bound_s` with a restartable
  status and a line naming `cause`. The index of the launcher's 'running the job again' line."""
  pid = run.pid(victim, after)
  run.wait_for(
    r'^\[0\] .*step (\d+)/\d+',
    after=after,
    accept=lambda m: int(m.group(1)) >= AT + EVERY * k,
    timeout=400,
  )
  fault_index, fault_at = len(run.lines), time.monotonic()
  # The process that launch.local started (its trainer, a child, dies with it: vit_jax/runtime/
  # aborts.py); a stop stops both (its process group), as a stuck host would.
  (os.killpg if sig == signal.SIGSTOP else os.kill)(pid, sig)
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
  out = '\n'.join(line for _, line in run.lines[after:restart])
  last_exit = max(s for s, _ in exits.values())
  print(
    f'\n{cause}: survivors exited {sorted((p, round(s, 1), c) for p, (s, c) in exits.items())} '
    f'(process, s after the fault, status); last {last_exit:.1f} s; the resumed run logged step '
    f'{step.group(1)} {resumed_at - fault_at:.1f} s after the fault.'
  )
  assert last_exit < bound_s, out[-6000:]
  for p, (_, code) in exits.items():
    # Its own lines of this attempt (up to the launcher's rerun), not the resumed run's.
    own = [
      line
      for _, line in run.lines[after:restart]
      if line.startswith(f'[{p}] ')
      and not re.match(r'\[\d\] +(File "|Thread 0x|Current thread 0x|Extension modules|$)', line)
    ]
    assert code in (75, 76), f'process {p} exited {code}; its last lines:\n' + '\n'.join(own[-40:])
    said = [line for line in own if re.search(r'error|F\d{4} ', line)]
    assert _names_cause(p, cause, out, prefix=rf'\[{p}\] '), '\n'.join(said)
  return restart


def test_a_killed_process_then_the_coordinator_then_a_stopped_one_each_end_the_job_and_it_resumes(
  tmp_path, digits_dir, reference
):
  """One run by `python -m launch.local` meets LAUNCHER_FAULTS in turn (kill -9 of process 2, then
  of the coordinator, then SIGSTOP of process 1), one per attempt: each ends the job within its
  bound with a line naming the cause, the launcher runs it again by itself, and the fourth attempt
  ends the run where an uninterrupted run ends it."""
  workdir = tmp_path / 'run'
  run = Launched(tmp_path, _args(workdir, digits_dir))
  try:
    after = 0
    for k, fault in enumerate(LAUNCHER_FAULTS):
      after = _fault(run, k, after, *fault)
    assert run.proc.wait(timeout=400) == 0, run.text()[-6000:]
  finally:
    run.kill()
    # The whole output, for a failure's post-mortem.
    (tmp_path / 'launch.log').write_text(run.text())
  out = run.text()
  assert 'Traceback' not in out and 'Fatal Python error' not in out, out[-6000:]
  # The coordinator's survivors point at the stack dumps they kept off the console.
  assert re.search(r'lines of stack dumps in \S+stacks\.\d\.txt: --full_dumps shows them', out)
  # The stopped one is killed: nothing outlives its job.
  assert 'launch.local: process 1 still runs' in out
  _assert_as_uninterrupted(workdir, reference)

  # Goodput: the parts add up to the wall time; each died attempt's steps past the checkpoint that
  # the next one resumed from are its lost time.
  attempts = goodput.read(str(workdir))
  ended = ['died'] * len(LAUNCHER_FAULTS) + ['finished']
  assert [a['ended'] for a in attempts] == ended, attempts
  for first, second in zip(attempts, attempts[1:]):
    assert second['first_step'] % EVERY == 0 and 0 < second['first_step'] < first['last_step']
    assert first['lost_steps'] == first['last_step'] - second['first_step']
    per_step = (first['phases']['train'] + first['phases']['input'] + first['phases']['lost']) / (
      first['last_step'] - first['first_step']
    )
    assert first['phases']['lost'] == pytest.approx(per_step * first['lost_steps'], rel=0.01)
  total = goodput.summary(attempts)
  print(f'{goodput.describe(total)}; lost {[a["lost_steps"] for a in attempts[:-1]]} steps')
  parts = sum(total[k] for k in goodput.ALL_PARTS)
  assert parts == pytest.approx(total['wall'], rel=0.02), total
  assert total['gap'] > 0 and total['lost'] > 0


def _direct(tmp_path, name, main_args, victim=None, at_step=0):
  """4 processes started directly (`python -m vit_jax.main ARGS --coordinator_address=...`, as a TPU
  VM's script, SkyPilot or a user's own loop start them: no launcher); kill -9 of process `victim`
  once process 0 logged step `at_step` (None: no fault). (exit statuses, outputs, seconds from the
  fault to the last exit.)"""
  port = tiny.free_port()
  env = tiny.main_env(2, JAX_COORDINATOR_BIND_ADDRESS=f'127.0.0.1:{port}')
  logs = [tmp_path / f'{name}_{i}.log' for i in range(4)]
  procs = [
    tiny.start_main(
      [
        *main_args,
        f'--coordinator_address=127.0.0.1:{port}',
        '--num_processes=4',
        f'--process_id={i}',
      ],
      cwd=tmp_path,
      env=env,
      log=open(logs[i], 'w', encoding='utf-8'),  # pylint: disable=consider-using-with
    )
    for i in range(4)
  ]
  try:
    fault_at = time.monotonic()
    if victim is not None:
      deadline = time.monotonic() + 400
      while not any(int(m) >= at_step for m in re.findall(r'step (\d+)/\d+', logs[0].read_text())):
        assert time.monotonic() < deadline and procs[0].poll() is None, logs[0].read_text()[-3000:]
        time.sleep(0.2)
      fault_at = time.monotonic()
      os.kill(procs[victim].pid, signal.SIGKILL)
    ended = {}
    deadline = time.monotonic() + (EXIT_BOUND_S + 30 if victim is not None else 600)
    while len(ended) < 4 and time.monotonic() < deadline:
      ended.update(
        {
          i: time.monotonic()
          for i, p in enumerate(procs)
          if p.poll() is not None and i not in ended
        }
      )
      time.sleep(0.1)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  outs = [log.read_text() for log in logs]
  last = max(t for i, t in ended.items() if i != victim) - fault_at
  return [aborts.status_of(p.returncode) for p in procs], outs, last


def test_processes_started_directly_exit_75_naming_the_lost_one_and_the_same_command_resumes(
  tmp_path, digits_dir, reference
):
  """kill -9 of process 0 (the coordinator), then, in the next attempt, of process 2: every other
  process ends within the bound, exit status 75, its last line naming the cause (JAX's and gloo's
  aborts read by vit_jax.main itself: vit_jax/runtime/aborts.py); then the same command finishes the
  run as an uninterrupted run ends it."""
  workdir = tmp_path / 'run'
  args = _args(workdir, digits_dir)
  faults = [
    (0, r'lost the coordinator \(process 0\)'),
    (2, r'(process(es)? |lost process )(\d, )*2'),
  ]
  for attempt, (victim, cause) in enumerate(faults):
    codes, outs, last = _direct(tmp_path, f'a{attempt}', args, victim, AT + attempt * EVERY)
    print(f'\nkill -9 of process {victim}: exit statuses {codes}, the last {last:.1f} s after it')
    for p in range(4):
      if p == victim:
        continue
      lines = outs[p].rstrip('\n').splitlines()
      assert codes[p] == 75 and _names_cause(p, cause, lines[-1]), (
        f'process {p} exited {codes[p]}; its last lines:\n' + '\n'.join(lines[-30:])
      )
      assert 'Traceback' not in outs[p] and 'Fatal Python error' not in outs[p], outs[p][-6000:]
    assert last < EXIT_BOUND_S, outs
  codes, outs, _ = _direct(tmp_path, 'a2', args)
  assert codes == [0, 0, 0, 0], outs[0][-3000:]
  _assert_as_uninterrupted(workdir, reference)
