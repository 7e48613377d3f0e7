"""Multi-process training on one machine: 2 processes x 2 CPU devices (gloo over 127.0.0.1) vs 1 process x 4."""
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vit_jax import checkpoint, datasets, metrics  # pylint: disable=unused-import  (datasets: sklearn_digits)
from vit_jax import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
FAILED_GRACE_S = 60
STEPS = 5
SMALL = ['--config.model.hidden_size=32', '--config.model.transformer.num_layers=1',
         '--config.model.transformer.mlp_dim=64', '--config.model.transformer.num_heads=2',
         '--config.model.transformer.dropout_rate=0.0', '--config.batch_size=16', '--config.eval_batch_size=16',
         f'--config.total_steps={STEPS}', '--config.log_every_steps=1', f'--config.eval_every_steps={STEPS}',
         f'--config.checkpoint_every_steps={STEPS}', '--config.schedule.warmup_steps=1']


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  """sklearn_digits built once, before any process starts (processes would otherwise race to build it)."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds.builder('sklearn_digits', data_dir=data_dir).download_and_prepare()
  return data_dir


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run(tmp_path, name, devices, arg_lists, port=None):
  """Starts one `python -m vit_jax.main` per argument list (each in an empty cwd) and waits for all; kills any still
  running at the timeout. Returns [(returncode, stdout + stderr)]."""
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'CUDA_VISIBLE_DEVICES': '', 'TF_CPP_MIN_LOG_LEVEL': '2',
         'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  if port is not None:  # The coordinator listens on all interfaces ([::]) unless told otherwise.
    env['JAX_COORDINATOR_BIND_ADDRESS'] = f'127.0.0.1:{port}'
  procs, logs = [], []
  for i, args in enumerate(arg_lists):
    cwd = tmp_path / f'{name}_cwd{i}'
    cwd.mkdir()
    logs.append(open(tmp_path / f'{name}_{i}.log', 'w+', encoding='utf-8'))
    procs.append(subprocess.Popen([sys.executable, '-m', 'vit_jax.main', *args], cwd=cwd, env=env,
                                  stdout=logs[-1], stderr=subprocess.STDOUT))
  deadline = time.monotonic() + TIMEOUT_S
  while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
    if any(p.poll() not in (None, 0) for p in procs):  # One failed: the others get a minute to fail too.
      deadline = min(deadline, time.monotonic() + FAILED_GRACE_S)
    time.sleep(0.5)
  hung = [i for i, p in enumerate(procs) if p.poll() is None]
  for i in hung:
    procs[i].kill()
    procs[i].wait()
  assert not hung, f'{name}: processes {hung} still running at the deadline (hang); killed. Logs in {tmp_path}.'
  results = []
  for p, log in zip(procs, logs):
    log.seek(0)
    results.append((p.returncode, log.read()))
    log.close()
  for i in range(len(arg_lists)):  # Nothing written outside the workdir.
    assert os.listdir(tmp_path / f'{name}_cwd{i}') == [], f'{name} process {i} wrote into its cwd'
  return results


def _multi(port, i, extra=()):
  return [f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2', f'--process_id={i}', *extra]


def _by_step(records, key):
  return {r['step']: r[key] for r in records if key in r}


def test_two_processes_reproduce_one_process(tmp_path, tfds_dir):
  common = [f'--config={REPO}/configs/default.py', f'--config.tfds_data_dir={tfds_dir}', *SMALL]
  w1, w2 = tmp_path / 'w1', tmp_path / 'w2'
  t0 = time.monotonic()
  ((rc, out),) = _run(tmp_path, 'single', 4, [common + [f'--workdir={w1}']])
  assert rc == 0, out[-3000:]
  t1 = time.monotonic()
  port = _free_port()
  results = _run(tmp_path, 'multi', 2, [common + [f'--workdir={w2}'] + _multi(port, i) for i in range(2)], port)
  t2 = time.monotonic()
  for i, (rc, out) in enumerate(results):
    assert rc == 0, f'process {i}:\n{out[-3000:]}'
  assert 'process 1 of 2, 2 local / 4 global devices (cpu)' in results[1][1]
  print(f'\n1 process x 4 devices: {t1 - t0:.1f} s; 2 processes x 2 devices: {t2 - t1:.1f} s')

  one, two = workdir_lib.read_metrics(str(w1)), workdir_lib.read_metrics(str(w2))
  assert [r['step'] for r in two] == [r['step'] for r in one]  # One writer: each record once.
  loss1, loss2 = _by_step(one, 'train/loss'), _by_step(two, 'train/loss')
  assert list(loss1) == list(loss2) == list(range(1, STEPS + 1))
  # Steps 1-2 start from the zero-initialised head (loss log 10 whatever the data); grad norms depend on the data.
  for key in ('train/loss', 'train/grad_norm'):
    a, b = np.array(list(_by_step(one, key).values())), np.array(list(_by_step(two, key).values()))
    print(f'{key} 1 process: {a.tolist()}\n{key} 2 processes: {b.tolist()}\n'
          f'{key} max relative difference: {np.max(np.abs(a - b) / np.abs(a)):.3g}')
    np.testing.assert_allclose(b, a, rtol=1e-5)
  assert _by_step(two, 'eval/accuracy') == _by_step(one, 'eval/accuracy')
  assert list(_by_step(one, 'eval/accuracy')) == [STEPS]
  np.testing.assert_allclose(_by_step(two, 'eval/loss')[STEPS], _by_step(one, 'eval/loss')[STEPS], rtol=1e-5)

  # Process 0 alone writes the run files; one checkpoint directory, written together.
  def layout(w):
    return sorted('events' if n.startswith(workdir_lib.EVENTS_PREFIX) else n for n in os.listdir(w))

  assert layout(w2) == layout(w1) == sorted([
      workdir_lib.CHECKPOINTS_DIR, workdir_lib.CLASS_NAMES_FILE, workdir_lib.CONFIG_FILE, workdir_lib.DATASET_FILE,
      'events', workdir_lib.METRICS_FILE, workdir_lib.PARAMS_FILE])  # No lock.json: released.
  # Orbax also keeps the first step it was given (1), besides the interval's.
  assert sorted(os.listdir(w2 / 'checkpoints')) == sorted(os.listdir(w1 / 'checkpoints')) == [str(STEPS)]
  p1, p2 = checkpoint.read_npz(str(w1 / 'params.npz')), checkpoint.read_npz(str(w2 / 'params.npz'))
  assert sorted(p1) == sorted(p2)
  for k in p1:
    if k.endswith('key/bias'):  # Softmax ignores it: its gradient is rounding noise, which Adam scales up.
      assert np.abs(p1[k]).max() < 1e-4 and np.abs(p2[k]).max() < 1e-4
    else:
      np.testing.assert_allclose(p2[k], p1[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_processes_with_different_configs_fail_clearly(tmp_path, tfds_dir):
  common = [f'--config={REPO}/configs/default.py', f'--config.tfds_data_dir={tfds_dir}', *SMALL,
            f'--workdir={tmp_path / "w"}']
  port = _free_port()
  t0 = time.monotonic()
  results = _run(tmp_path, 'mismatch', 2, [common + _multi(port, 0), common + _multi(port, 1, ['--config.seed=1'])],
                 port)
  print(f'\nconfig mismatch: both processes exited after {time.monotonic() - t0:.1f} s')
  for i, (rc, out) in enumerate(results):
    assert rc != 0, f'process {i} succeeded:\n{out[-3000:]}'
    assert 'The config differs between processes: process(es) [1] have another config than process 0' in out, out


def test_sigterm_to_one_process_makes_all_save_at_one_step_and_resume(tmp_path, tfds_dir):
  """JAX's preemption service: the notice reaches every process, which all save at the same step and exit 0."""
  workdir = tmp_path / 'w'
  common = [f'--config={REPO}/configs/default.py', f'--config.tfds_data_dir={tfds_dir}', *SMALL,
            f'--workdir={workdir}', '--config.total_steps=5000', '--config.checkpoint_every_steps=5000']
  port = _free_port()
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'CUDA_VISIBLE_DEVICES': '', 'TF_CPP_MIN_LOG_LEVEL': '2',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=2', 'JAX_COORDINATOR_BIND_ADDRESS': f'127.0.0.1:{port}'}
  logs = [open(tmp_path / f'p{i}.log', 'w+', encoding='utf-8') for i in range(2)]
  procs = [subprocess.Popen([sys.executable, '-m', 'vit_jax.main', *common, *_multi(port, i)], cwd=tmp_path, env=env,
                            stdout=logs[i], stderr=subprocess.STDOUT) for i in range(2)]
  try:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and all(p.poll() is None for p in procs) and not (
        os.path.exists(workdir / 'metrics.jsonl') and len(workdir_lib.read_metrics(str(workdir))) >= 3):
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  outs = []
  for log in logs:
    log.seek(0)
    outs.append(log.read())
    log.close()
  assert codes == [0, 0], '\n'.join(o[-2000:] for o in outs)
  stops = [re.findall(r'Preempted: saved a checkpoint at step (\d+)', o) for o in outs]
  assert stops[0] and stops[0] == stops[1], stops
  step = int(stops[0][0])
  assert sorted(os.listdir(workdir / 'checkpoints')) == [str(step)]

  # Both processes rerun the same command (total shortened: a resumable change) and finish from that step.
  finish = [arg for arg in common if not arg.startswith('--config.total_steps')] + [
      f'--config.total_steps={step + 2}']
  port = _free_port()
  results = _run(tmp_path, 'resume', 2, [finish + _multi(port, i) for i in range(2)], port)
  for i, (rc, out) in enumerate(results):
    assert rc == 0, f'process {i}:\n{out[-3000:]}'
    assert f'at step {step}' in out
  losses = [r['step'] for r in workdir_lib.read_metrics(str(workdir)) if 'train/loss' in r]
  assert losses[-3:] == [step, step + 1, step + 2]
