"""Reliability: exact resume after SIGTERM, SIGKILL during a save, the non-finite guard, refusing a changed config."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

import tiny
from vit_jax import checkpoint, input_pipeline, metrics, train
from vit_jax import workdir as workdir_lib
from vit_jax.configs import augmentation
from vit_jax import state
from vit_jax.configs import check

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMING_KEYS = ('train/img_per_sec', 'train/img_per_sec_per_device', 'train/tflops_per_device', 'train/mfu')


def _config(root, **overrides):
  """Tiny image-folder run: 7 steps, logs every 2, checkpoints every 4, dropout on (the RNG must resume too)."""
  return tiny.train_config(**{'dataset': 'image_folder', 'image_folder': root, 'total_steps': 7,
                              'log_every_steps': 2, 'eval_every_steps': 4, 'checkpoint_every_steps': 4,
                              'model.transformer.dropout_rate': 0.1, **overrides})


def _on_train_batch(monkeypatch, fn):
  """Passes the k-th training batch (1-based) through fn(k, batch) as the loop draws it (eval batches untouched).

  With config.prefetch=1 the loop draws batch k + 1 while it starts step k.
  """
  real = input_pipeline.prefetch_to_device

  def wrapped(iterator, size, shard):
    def batches():
      for k, batch in enumerate(iterator, start=1):
        yield batch if 'mask' in batch else fn(k, batch)
    return real(batches(), size, shard)

  monkeypatch.setattr(input_pipeline, 'prefetch_to_device', wrapped)


def _comparable(records):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def _params(workdir):
  return checkpoint.read_npz(os.path.join(workdir, 'params.npz'))


@pytest.mark.parametrize('stop_at', [3, 4])
def test_sigterm_then_resume_equals_uninterrupted_run_bit_for_bit(tmp_path, monkeypatch, stop_at):
  root = tiny.image_folder(tmp_path)
  whole, parts = str(tmp_path / 'whole'), str(tmp_path / 'parts')
  train.train_and_evaluate(_config(root), whole)

  def sigterm_at(k, batch):
    if k == stop_at + 1:  # A real signal, delivered to this (main) thread as it starts step `stop_at`.
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  with monkeypatch.context() as m:
    _on_train_batch(m, sigterm_at)
    out = train.train_and_evaluate(_config(root), parts)
  assert out == {'preempted_at_step': stop_at}
  assert ocp.CheckpointManager(os.path.join(parts, 'checkpoints')).latest_step() == stop_at
  assert not os.path.exists(os.path.join(parts, 'params.npz'))
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # The handler is removed again.

  train.train_and_evaluate(_config(root), parts)  # The same call resumes.
  a, b = _params(whole), _params(parts)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert _comparable(workdir_lib.read_metrics(parts)) == _comparable(workdir_lib.read_metrics(whole))
  assert [r['step'] for r in workdir_lib.read_metrics(parts) if 'train/loss' in r] == [2, 4, 6, 7]


def test_medium2_augmentation_run_resumes_exactly_after_sigterm(tmp_path, monkeypatch):
  """RandAugment(2, 15) draws per (seed, position) and mixup per (seed, step): the resumed run is the same run."""
  root = tiny.image_folder(tmp_path)
  whole, parts = str(tmp_path / 'whole'), str(tmp_path / 'parts')
  config = lambda: augmentation.apply_level(_config(root), 'medium2')
  train.train_and_evaluate(config(), whole)

  def sigterm_at(k, batch):
    if k == 4:
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  with monkeypatch.context() as m:
    _on_train_batch(m, sigterm_at)
    assert train.train_and_evaluate(config(), parts) == {'preempted_at_step': 3}
  train.train_and_evaluate(config(), parts)
  a, b = _params(whole), _params(parts)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert _comparable(workdir_lib.read_metrics(parts)) == _comparable(workdir_lib.read_metrics(whole))


def _poison(at_steps):
  def fn(k, batch):
    if k in at_steps:
      batch = dict(batch, image=np.full(batch['image'].shape, np.nan, np.float32))  # Float images pass as they are.
    return batch
  return fn


def test_nonfinite_stop_names_the_step_and_last_good_checkpoint_and_saves_nothing_after(tmp_path, monkeypatch):
  root = tiny.image_folder(tmp_path)
  workdir = str(tmp_path / 'run')
  _on_train_batch(monkeypatch, _poison({5}))
  with pytest.raises(state.NonFiniteError, match=r'at step 5 .*last good checkpoint is step 4'):
    train.train_and_evaluate(_config(root, checkpoint_every_steps=2, async_checkpoints=False), workdir)
  assert ocp.CheckpointManager(os.path.join(workdir, 'checkpoints')).all_steps() == [2, 4]
  assert [r['step'] for r in workdir_lib.read_metrics(workdir) if 'train/loss' in r] == [2, 4]


def test_nonfinite_skip_drops_the_update_counts_it_and_goes_on(tmp_path, monkeypatch):
  root = tiny.image_folder(tmp_path)
  workdir = str(tmp_path / 'run')
  _on_train_batch(monkeypatch, _poison({3, 6}))
  train.train_and_evaluate(_config(root, nonfinite_policy='skip', checkpoint_every_steps=1, keep=10), workdir)
  records = [r for r in workdir_lib.read_metrics(workdir) if 'train/loss' in r]
  assert [r['step'] for r in records] == [2, 4, 6, 7]
  assert [r.get('train/nonfinite_steps', 0) for r in records] == [0, 1, 2, 2]
  assert all(np.isfinite(r['train/loss']) and np.isfinite(r['train/grad_norm']) for r in records)
  assert all(np.isfinite(v).all() for v in _params(workdir).values())
  restore = ocp.StandardCheckpointer().restore
  kernels = {s: np.asarray(restore(os.path.join(workdir, 'checkpoints', str(s), 'default'))['params']['head']['kernel'])
             for s in (2, 3, 4)}
  np.testing.assert_array_equal(kernels[3], kernels[2])  # Step 3's update was dropped...
  assert np.abs(kernels[4] - kernels[3]).max() > 0  # ... and step 4's applied.


# ----------------------------------------------------------------------------------------------------------------
# A workdir that holds a run of another config.


def _fake_run(workdir, config):
  workdir_lib.check_and_record_config(config, workdir)
  with open(os.path.join(workdir, workdir_lib.METRICS_FILE), 'w', encoding='utf-8') as f:
    f.write('{"step": 1}\n')


def test_changed_config_is_refused_and_nothing_is_overwritten(tmp_path):
  root = tiny.image_folder(tmp_path)
  workdir = str(tmp_path / 'run')
  _fake_run(workdir, _config(root))
  before = open(os.path.join(workdir, 'config.json'), encoding='utf-8').read()
  with pytest.raises(workdir_lib.ConfigChangedError,
                     match=r'(?s)schedule.base_lr: 0.001 -> 0.002.*--allow_config_change'):
    train.train_and_evaluate(_config(root, **{'schedule.base_lr': 0.002}), workdir)
  assert open(os.path.join(workdir, 'config.json'), encoding='utf-8').read() == before
  assert sorted(os.listdir(workdir)) == ['config.json', 'metrics.jsonl']


def test_resumable_changes_pass_and_an_allowed_change_keeps_the_old_config(tmp_path):
  workdir = str(tmp_path / 'run')
  _fake_run(workdir, tiny.train_config())
  workdir_lib.check_and_record_config(tiny.train_config(total_steps=99, log_every_steps=7, mesh=(('fsdp', -1),)),
                                      workdir)
  assert sorted(os.listdir(workdir)) == ['config.json', 'metrics.jsonl']
  assert json.load(open(os.path.join(workdir, 'config.json')))['total_steps'] == 99
  workdir_lib.check_and_record_config(tiny.train_config(batch_size=32), workdir, allow_change=True)
  assert json.load(open(os.path.join(workdir, 'config.json')))['batch_size'] == 32
  assert json.load(open(os.path.join(workdir, 'config.1.json')))['total_steps'] == 99


def test_a_workdir_without_a_run_takes_any_config(tmp_path):
  workdir = str(tmp_path / 'run')
  workdir_lib.check_and_record_config(tiny.train_config(), workdir)  # config.json only: an earlier failed start.
  workdir_lib.check_and_record_config(tiny.train_config(batch_size=32), workdir)
  assert json.load(open(os.path.join(workdir, 'config.json')))['batch_size'] == 32


# ----------------------------------------------------------------------------------------------------------------
# Undecodable images in an image folder.


def test_undecodable_image_is_an_error_naming_the_file_or_is_skipped_and_counted(tmp_path, caplog):
  root = tiny.image_folder(tmp_path)  # 3 classes x 4 train images.
  bad = os.path.join(root, 'train', 'dog', 'broken.jpg')
  with open(bad, 'wb') as f:
    f.write(b'\xff\xd8\xff\xe0 not really a jpeg')
  good = open(os.path.join(root, 'train', 'cat', '0.jpg'), 'rb').read()
  truncated = os.path.join(root, 'train', 'eel', 'truncated.jpg')
  with open(truncated, 'wb') as f:
    f.write(good[:len(good) // 3])
  config = _config(root)
  with pytest.raises(ValueError, match=r'2 file\(s\) that cannot be decoded.*broken.jpg.*truncated.jpg'):
    input_pipeline.get_info(config)
  config.on_bad_image = 'skip'
  with caplog.at_level('WARNING'):
    info = input_pipeline.get_info(config)
  assert info.num_train == 12
  assert 'skipping 2 undecodable' in caplog.text and 'broken.jpg' in caplog.text
  batch = next(iter(input_pipeline.train_dataset(config, local_batch_size=12)))
  assert batch['image'].shape == (12, 16, 16, 3) and batch['image'].dtype == np.uint8
  with pytest.raises(check.ConfigError, match=r"config.on_bad_image='drop' is not one of 'error', 'skip'"):
    check.validate(_config(root, on_bad_image='drop'))


# ----------------------------------------------------------------------------------------------------------------
# The real command: SIGKILL while an async save is in flight, then SIGTERM, then the finish.

_MAIN_FLAGS = ['--config.dataset=image_folder', '--config.image_size=16',
               '--config.model.hidden_size=256', '--config.model.transformer.num_layers=4',
               '--config.model.transformer.mlp_dim=1024', '--config.model.transformer.num_heads=4',
               '--config.model.transformer.dropout_rate=0.0', '--config.batch_size=8', '--config.eval_batch_size=8',
               '--config.total_steps=400', '--config.log_every_steps=1', '--config.eval_every_steps=1000',
               '--config.checkpoint_every_steps=1', '--config.keep=2', '--config.optimizer.name=adamw',
               '--config.schedule.warmup_steps=1', '--config.prefetch=1']


def _start_main(tmp_path, root, workdir, total_steps):
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2', 'JAX_PLATFORMS': 'cpu'}
  args = [sys.executable, '-m', 'vit_jax.main', f'--config={REPO}/configs/default.py', f'--workdir={workdir}',
          f'--config.image_folder={root}', *_MAIN_FLAGS, f'--config.total_steps={total_steps}']
  log = open(tmp_path / 'main.log', 'a', encoding='utf-8')
  return subprocess.Popen(args, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)


def _in_flight(ckpt_dir):
  return [n for n in os.listdir(ckpt_dir) if not n.isdigit()] if os.path.isdir(ckpt_dir) else []


def test_sigkill_during_async_save_falls_back_to_last_complete_checkpoint(tmp_path):
  root = tiny.image_folder(tmp_path, train_per_class=8)
  workdir = str(tmp_path / 'run')
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  # Every step saves ~40 MB (params + Adam moments) asynchronously; kill the process while a save is unfinished.
  killed_mid_save = []
  for _ in range(5):
    proc = _start_main(tmp_path, root, workdir, 400)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
      partial = _in_flight(ckpt_dir)
      if partial and any(n.isdigit() for n in os.listdir(ckpt_dir)):
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_mid_save = [n for n in _in_flight(ckpt_dir) if n in partial]
        break
      time.sleep(0.002)
    assert proc.poll() is not None, 'no async save was seen in time'
    if killed_mid_save:
      break
  assert killed_mid_save, 'never caught a save in flight'
  complete = sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())
  manager = ocp.CheckpointManager(ckpt_dir)
  assert manager.latest_step() == complete[-1]  # The half-written one is not a checkpoint.
  manager.close()

  # Rerun: it resumes from the last complete checkpoint; a SIGTERM makes it save and exit cleanly.
  proc = _start_main(tmp_path, root, workdir, 400)
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline and not any(
      r['step'] > complete[-1] + 1 for r in (workdir_lib.read_metrics(workdir) if os.path.exists(
          os.path.join(workdir, 'metrics.jsonl')) else [])):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0
  log = (tmp_path / 'main.log').read_text(encoding='utf-8')
  assert f'Resuming from {ckpt_dir} at step {complete[-1]}' in log
  assert 'Preempted: saved a checkpoint at step' in log
  stopped = ocp.CheckpointManager(ckpt_dir).latest_step()
  assert stopped > complete[-1]

  # And the finish, with the total shortened (a resumable change).
  proc = _start_main(tmp_path, root, workdir, stopped + 2)
  assert proc.wait(timeout=240) == 0, (tmp_path / 'main.log').read_text(encoding='utf-8')[-3000:]
  steps = [r['step'] for r in workdir_lib.read_metrics(workdir) if 'train/loss' in r]
  assert steps[-1] == stopped + 2 and set(range(1, stopped + 3)) <= set(steps)
  assert all(np.isfinite(v).all() for v in _params(workdir).values())
