"""Multi-process training on one machine: 2 processes x 2 CPU devices (gloo over 127.0.0.1) vs 1
process x 4."""

import os
import pathlib
import re
import signal
import time

import numpy as np
import tiny

from vit_jax import checkpoint
from vit_jax.runtime import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
STEPS = tiny.SMALL_STEPS
SMALL = tiny.SMALL


def _multi(port, i, extra=()):
  return [
    f'--coordinator_address=127.0.0.1:{port}',
    '--num_processes=2',
    f'--process_id={i}',
    *extra,
  ]


def test_two_processes_reproduce_one_process(tmp_path, digits_dir):
  common = [f'--config={REPO}/configs/default.py', f'--config.tfds_data_dir={digits_dir}', *SMALL]
  w1, w2 = tmp_path / 'w1', tmp_path / 'w2'
  t0 = time.monotonic()
  ((rc, out),) = tiny.run_mains(tmp_path, 'single', 4, [common + [f'--workdir={w1}']])
  assert rc == 0, out[-3000:]
  t1 = time.monotonic()
  port = tiny.free_port()
  results = tiny.run_mains(
    tmp_path, 'multi', 2, [common + [f'--workdir={w2}'] + _multi(port, i) for i in range(2)], port
  )
  t2 = time.monotonic()
  for i, (rc, out) in enumerate(results):
    assert rc == 0, f'process {i}:\n{out[-3000:]}'
  assert 'process 1 of 2, 2 local / 4 global devices (cpu)' in results[1][1]
  print(f'\n1 process x 4 devices: {t1 - t0:.1f} s; 2 processes x 2 devices: {t2 - t1:.1f} s')

  one, two = workdir_lib.read_metrics(str(w1)), workdir_lib.read_metrics(str(w2))
  assert [r['step'] for r in two] == [r['step'] for r in one]  # One writer: each record once.
  loss1, loss2 = tiny.by_step(one, 'train/loss'), tiny.by_step(two, 'train/loss')
  assert list(loss1) == list(loss2) == list(range(1, STEPS + 1))
  # Steps 1-2 start from the zero-initialised head (loss log 10 whatever the data); grad norms
  # depend on the data.
  for key in ('train/loss', 'train/grad_norm'):
    a, b = (
      np.array(list(tiny.by_step(one, key).values())),
      np.array(list(tiny.by_step(two, key).values())),
    )
    print(
      f'{key} 1 process: {a.tolist()}\n{key} 2 processes: {b.tolist()}\n'
      f'{key} max relative difference: {np.max(np.abs(a - b) / np.abs(a)):.3g}'
    )
    np.testing.assert_allclose(b, a, rtol=1e-5)
  assert tiny.by_step(two, 'eval/accuracy') == tiny.by_step(one, 'eval/accuracy')
  assert list(tiny.by_step(one, 'eval/accuracy')) == [STEPS]
  np.testing.assert_allclose(
    tiny.by_step(two, 'eval/loss')[STEPS], tiny.by_step(one, 'eval/loss')[STEPS], rtol=1e-5
  )

  # Process 0 alone writes the run files; one checkpoint directory, written together.
  def layout(w):
    return sorted('events' if n.startswith(workdir_lib.EVENTS_PREFIX) else n for n in os.listdir(w))

  assert (
    layout(w2)
    == layout(w1)
    == sorted(
      [
        workdir_lib.CHECKPOINTS_DIR,
        workdir_lib.CLASS_NAMES_FILE,
        workdir_lib.CONFIG_FILE,
        workdir_lib.DATASET_FILE,
        # No lock.json: released.
        'events',
        workdir_lib.GOODPUT_FILE,
        workdir_lib.METRICS_FILE,
        workdir_lib.PARAMS_FILE,
      ]
    )
  )
  # Orbax also keeps the first step it was given (1), besides the interval's.
  assert (
    sorted(os.listdir(w2 / 'checkpoints')) == sorted(os.listdir(w1 / 'checkpoints')) == [str(STEPS)]
  )
  p1, p2 = checkpoint.read_npz(str(w1 / 'params.npz')), checkpoint.read_npz(str(w2 / 'params.npz'))
  assert sorted(p1) == sorted(p2)
  for k in p1:
    # Softmax ignores it: its gradient is rounding noise, which Adam scales up.
    if k.endswith('key/bias'):
      assert np.abs(p1[k]).max() < 1e-4 and np.abs(p2[k]).max() < 1e-4
    else:
      # The all-reduce sums in another order across processes (gloo) than within one; Adam moves a
      # weight whose gradient is near zero by up to the learning rate (4e-3) per step, so rounding
      # differences reach a few 1e-6.
      np.testing.assert_allclose(p2[k], p1[k], rtol=1e-5, atol=2e-5, err_msg=k)


def test_processes_with_different_configs_fail_clearly(tmp_path, digits_dir):
  common = [
    f'--config={REPO}/configs/default.py',
    f'--config.tfds_data_dir={digits_dir}',
    *SMALL,
    f'--workdir={tmp_path / "w"}',
  ]
  port = tiny.free_port()
  t0 = time.monotonic()
  results = tiny.run_mains(
    tmp_path,
    'mismatch',
    2,
    [common + _multi(port, 0), common + _multi(port, 1, ['--config.seed=1'])],
    port,
  )
  print(f'\nconfig mismatch: both processes exited after {time.monotonic() - t0:.1f} s')
  for i, (rc, out) in enumerate(results):
    assert rc != 0, f'process {i} succeeded:\n{out[-3000:]}'
    assert (
      'The config differs between processes: process(es) [1] have another config than process 0'
      in out
    ), out


def test_sigterm_to_one_process_makes_all_save_at_one_step_and_resume(tmp_path, digits_dir):
  """JAX's preemption service: the notice reaches every process, which all save at the same step and
  exit 0."""
  workdir = tmp_path / 'w'
  common = [
    f'--config={REPO}/configs/default.py',
    f'--config.tfds_data_dir={digits_dir}',
    *SMALL,
    f'--workdir={workdir}',
    '--config.total_steps=5000',
    '--config.checkpoint_every_steps=5000',
  ]
  port = tiny.free_port()
  env = tiny.main_env(2, JAX_COORDINATOR_BIND_ADDRESS=f'127.0.0.1:{port}')
  logs = [open(tmp_path / f'p{i}.log', 'w+', encoding='utf-8') for i in range(2)]
  procs = [
    tiny.start_main([*common, *_multi(port, i)], cwd=tmp_path, env=env, log=logs[i])
    for i in range(2)
  ]
  try:
    deadline = time.monotonic() + TIMEOUT_S
    while (
      time.monotonic() < deadline
      and all(p.poll() is None for p in procs)
      and not (
        os.path.exists(workdir / 'metrics.jsonl')
        and len(workdir_lib.read_metrics(str(workdir))) >= 3
      )
    ):
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

  # Both processes rerun the same command (total shortened: a resumable change) and finish from that
  # step.
  finish = [arg for arg in common if not arg.startswith('--config.total_steps')] + [
    f'--config.total_steps={step + 2}'
  ]
  port = tiny.free_port()
  results = tiny.run_mains(
    tmp_path, 'resume', 2, [finish + _multi(port, i) for i in range(2)], port
  )
  for i, (rc, out) in enumerate(results):
    assert rc == 0, f'process {i}:\n{out[-3000:]}'
    assert f'at step {step}' in out
  losses = [r['step'] for r in workdir_lib.read_metrics(str(workdir)) if 'train/loss' in r]
  assert losses[-3:] == [step, step + 1, step + 2]
