"""vit_jax/runtime/preemption.py in training: a SIGTERM or a first Ctrl-C saves a checkpoint and
stops, the same call resumes to the very run that was not interrupted (augmentation included), a
second Ctrl-C aborts at once, and the signal handlers are put back."""

import os
import signal

import numpy as np
import orbax.checkpoint as ocp
import pytest
import tiny

from vit_jax.configs import augmentation
from vit_jax.runtime import workdir as workdir_lib
from vit_jax.training import train


@pytest.mark.parametrize('stop_at', [3, 4])
def test_sigterm_then_resume_equals_uninterrupted_run_bit_for_bit(tmp_path, monkeypatch, stop_at):
  root = tiny.image_folder(tmp_path)
  whole, parts = str(tmp_path / 'whole'), str(tmp_path / 'parts')
  train.train_and_evaluate(tiny.folder_config(root), whole)

  def sigterm_at(k, batch):
    # A real signal, delivered to this (main) thread as it starts step `stop_at`.
    if k == stop_at + 1:
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  with monkeypatch.context() as m:
    tiny.on_train_batch(m, sigterm_at)
    out = train.train_and_evaluate(tiny.folder_config(root), parts)
  assert out == {'preempted_at_step': stop_at}
  assert ocp.CheckpointManager(os.path.join(parts, 'checkpoints')).latest_step() == stop_at
  assert not os.path.exists(os.path.join(parts, 'params.npz'))
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # The handler is removed again.

  train.train_and_evaluate(tiny.folder_config(root), parts)  # The same call resumes.
  a, b = tiny.exported_params(whole), tiny.exported_params(parts)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert tiny.comparable(workdir_lib.read_metrics(parts)) == tiny.comparable(
    workdir_lib.read_metrics(whole)
  )
  assert [r['step'] for r in workdir_lib.read_metrics(parts) if 'train/loss' in r] == [2, 4, 6, 7]


def test_medium2_augmentation_run_resumes_exactly_after_sigterm(tmp_path, monkeypatch):
  """RandAugment(2, 15) draws per (seed, position) and mixup per (seed, step): the resumed run is
  the same run."""
  root = tiny.image_folder(tmp_path)
  whole, parts = str(tmp_path / 'whole'), str(tmp_path / 'parts')
  config = lambda: augmentation.apply_level(tiny.folder_config(root), 'medium2')
  train.train_and_evaluate(config(), whole)

  def sigterm_at(k, batch):
    if k == 4:
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  with monkeypatch.context() as m:
    tiny.on_train_batch(m, sigterm_at)
    assert train.train_and_evaluate(config(), parts) == {'preempted_at_step': 3}
  train.train_and_evaluate(config(), parts)
  a, b = tiny.exported_params(whole), tiny.exported_params(parts)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert tiny.comparable(workdir_lib.read_metrics(parts)) == tiny.comparable(
    workdir_lib.read_metrics(whole)
  )


def test_first_ctrl_c_saves_and_stops_and_the_run_resumes(tmp_path, monkeypatch):
  root = tiny.image_folder(tmp_path)
  workdir = str(tmp_path / 'run')

  def ctrl_c_at(k, batch):
    if k == 4:  # Delivered as the loop starts step 3.
      os.kill(os.getpid(), signal.SIGINT)
    return batch

  with monkeypatch.context() as m:
    tiny.on_train_batch(m, ctrl_c_at)
    assert train.train_and_evaluate(tiny.folder_config(root), workdir) == {'preempted_at_step': 3}
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is back to normal.
  assert workdir_lib.holds_run(workdir) and not os.path.exists(os.path.join(workdir, 'params.npz'))
  result = train.train_and_evaluate(tiny.folder_config(root), workdir)
  assert result['eval/num_examples'] == 6
  assert [r['step'] for r in workdir_lib.read_metrics(workdir) if 'train/loss' in r] == [2, 4, 6, 7]


def test_second_ctrl_c_aborts_at_once(tmp_path, monkeypatch):
  root = tiny.image_folder(tmp_path)

  def two_ctrl_c(k, batch):
    if k == 3:
      os.kill(os.getpid(), signal.SIGINT)
      os.kill(os.getpid(), signal.SIGINT)
    return batch

  with monkeypatch.context() as m:
    tiny.on_train_batch(m, two_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(tiny.folder_config(root), str(tmp_path / 'run'))
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
