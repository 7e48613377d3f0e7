"""vit_jax/runtime/lock.py: one live writer per workdir; a stale lock never blocks a resume."""

import json
import os
import socket
import subprocess
import sys
import time

import fake_gcs
import pytest
import tiny

from vit_jax.runtime import lock as lock_lib
from vit_jax.runtime import workdir as workdir_lib


def _holder(workdir, **fields):
  os.makedirs(workdir, exist_ok=True)
  record = {
    'host': socket.gethostname(),
    'pid': os.getpid(),
    'token': 'other',
    'started': time.time(),
    'heartbeat': time.time(),
    **fields,
  }
  with open(os.path.join(workdir, workdir_lib.LOCK_FILE), 'w', encoding='utf-8') as f:
    json.dump(record, f)


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, '-c', 'pass'])
  proc.wait()
  return proc.pid


def test_a_second_holder_is_refused_at_once_and_the_lock_is_released_on_exit(tmp_path):
  workdir = str(tmp_path / 'run')
  with lock_lib.Lock(workdir):
    assert json.loads((tmp_path / 'run' / workdir_lib.LOCK_FILE).read_text())['pid'] == os.getpid()
    started = time.monotonic()
    with pytest.raises(
      lock_lib.WorkdirInUseError,
      match=rf"in use by another run: host '{socket.gethostname()}', pid {os.getpid()} \(started "
      r'.* UTC, last heartbeat \d+ s ago\)',
    ):
      lock_lib.Lock(workdir).acquire()
    assert time.monotonic() - started < 5
  assert not (tmp_path / 'run' / workdir_lib.LOCK_FILE).exists()
  with lock_lib.Lock(workdir):  # Free again.
    pass


def test_a_lock_whose_process_is_gone_is_taken_over_on_the_same_host(tmp_path):
  workdir = str(tmp_path / 'run')
  _holder(workdir, pid=_dead_pid())
  with lock_lib.Lock(workdir) as held:
    assert json.loads((tmp_path / 'run' / workdir_lib.LOCK_FILE).read_text())['token'] == held.token
  # Nothing left behind (the stale lock was moved aside, then removed).
  assert os.listdir(workdir) == []


def test_another_hosts_lock_is_stale_only_without_a_recent_heartbeat(tmp_path):
  workdir = str(tmp_path / 'run')
  _holder(workdir, host='tpu-worker-0', pid=1)
  with pytest.raises(lock_lib.WorkdirInUseError, match="host 'tpu-worker-0', pid 1"):
    lock_lib.Lock(workdir).acquire()
  # Preempted.
  _holder(workdir, host='tpu-worker-0', pid=1, heartbeat=time.time() - lock_lib.STALE_AFTER - 1)
  with lock_lib.Lock(workdir):
    pass


def test_the_heartbeat_renews_the_lock(tmp_path, monkeypatch):
  monkeypatch.setattr(lock_lib, 'HEARTBEAT', 0.05)
  workdir = str(tmp_path / 'run')
  with lock_lib.Lock(workdir):
    first = json.loads((tmp_path / 'run' / workdir_lib.LOCK_FILE).read_text())
    time.sleep(0.5)
    second = json.loads((tmp_path / 'run' / workdir_lib.LOCK_FILE).read_text())
  assert second['heartbeat'] > first['heartbeat'] and second['started'] == first['started']


def test_a_gcs_workdir_is_locked_too(tmp_path):
  fake_gcs.install(tmp_path / 'gcs')
  with lock_lib.Lock('gs://bucket/run'):
    with pytest.raises(lock_lib.WorkdirInUseError):
      lock_lib.Lock('gs://bucket/run').acquire()
  assert not (tmp_path / 'gcs' / 'bucket' / 'run' / workdir_lib.LOCK_FILE).exists()


def test_a_disabled_lock_writes_nothing(tmp_path):
  with lock_lib.Lock(str(tmp_path / 'run'), enabled=False):
    pass
  assert not (tmp_path / 'run').exists()


def _main(workdir, tmp_path, steps):
  return tiny.start_main(tiny.tiny_main_args(workdir, f'{tmp_path}/tfds', steps))


def test_a_second_main_on_a_live_workdir_is_refused_within_seconds_and_the_first_finishes(tmp_path):
  workdir = str(tmp_path / 'run')
  first = _main(workdir, tmp_path, 60)
  deadline = time.monotonic() + 240
  while (
    not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE)) and time.monotonic() < deadline
  ):
    time.sleep(0.2)
  started = time.monotonic()
  second = _main(workdir, tmp_path, 60)
  _, err = second.communicate(timeout=120)
  assert second.returncode == 1, err[-2000:]
  # JAX's import included; the refusal itself comes before any data.
  assert time.monotonic() - started < 60
  line = err.strip().splitlines()[-1]
  assert 'in use by another run' in line and f'pid {first.pid}' in line and 'Traceback' not in err
  _, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-3000:]
  steps = [r['step'] for r in workdir_lib.read_metrics(workdir) if 'train/loss' in r]
  assert steps == list(range(1, 61))  # Each step logged once.
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE))
  assert len([n for n in os.listdir(workdir) if n.startswith(workdir_lib.EVENTS_PREFIX)]) == 1
