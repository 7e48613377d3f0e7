"""vit_jax/metrics.py: the progress bar on a terminal (log lines stand alone), plain progress lines without one, and
the speed scalars (per-device TFLOP/s, MFU against the peak)."""
import io
import logging
import sys

import pytest

from vit_jax import metrics

class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_bar_advances_every_step_and_log_lines_stand_alone(monkeypatch):
  terminal = _Terminal()
  monkeypatch.setattr(sys, 'stderr', terminal)
  handler = logging.StreamHandler(terminal)
  logging.getLogger().addHandler(handler)
  try:
    progress = metrics.Progress(total_steps=10, start_step=2, enabled=True)
    for step in (3, 4, 5):
      progress.step(step)  # Host-side only: no figures needed.
    assert progress._bar.n == 5  # pylint: disable=protected-access
    progress.report(5, loss=1.2345, img_per_sec=99.0)
    assert 'loss=1.2345' in str(progress._bar)  # pylint: disable=protected-access
    logging.getLogger('vit_jax.test').warning('step 5: eval accuracy 0.5')
    progress.close()
  finally:
    logging.getLogger().removeHandler(handler)
  text = terminal.getvalue()
  line = next(part for part in text.replace('\r', '\n').split('\n') if 'eval accuracy' in part)
  assert line == 'step 5: eval accuracy 0.5'  # On its own line, not glued to the bar.
  assert not handler.filters  # The bar's filter is gone with the bar.


def test_plain_progress_lines_without_a_terminal(caplog):
  progress = metrics.Progress(total_steps=10, start_step=0, enabled=True)
  with caplog.at_level(logging.INFO, logger='vit_jax'):
    progress.step(1)
    progress.report(2, loss=0.5, img_per_sec=10.0)
  progress.close()
  assert 'step 2/10  loss 0.5000  img/s 10.0  ETA' in caplog.text


def test_speed_scalars_give_per_device_tflops_and_mfu_against_the_peak():
  speed = metrics.Speed(train_flops=3e9, num_devices=4, peak_tflops=100.0)
  out = speed.scalars(img_per_sec=8000.0)
  assert out == pytest.approx({'train/img_per_sec': 8000.0, 'train/img_per_sec_per_device': 2000.0,
                               'train/tflops_per_device': 6.0, 'train/mfu': 0.06})
  assert 'train/mfu' not in metrics.Speed(3e9, 4, None).scalars(8000.0)


def test_the_eta_counts_train_steps_only_not_the_compile_evaluations_or_checkpoints(monkeypatch, caplog):
  now = [1000.0]
  monkeypatch.setattr(metrics.time, 'monotonic', lambda: now[0])
  progress = metrics.Progress(total_steps=200, start_step=0, enabled=True)
  now[0] += 300.0  # Compiling the first step.
  progress.resume(0)
  for step in range(1, 11):
    now[0] += 0.04  # 40 ms per step.
    progress.step(step)
    if step == 5:
      now[0] += 60.0  # An evaluation.
      progress.resume(step)
  with caplog.at_level(logging.INFO, logger='vit_jax'):
    progress.report(10, loss=0.5, img_per_sec=10.0)
  progress.close()
  assert 'ETA 0:00:08' in caplog.text  # 190 steps x 40 ms, not minutes.
  assert metrics.Progress(10, 0, enabled=False).eta(0) == 'unknown'


def test_the_bar_shows_the_train_step_eta_and_is_gone_before_the_last_line(monkeypatch):
  terminal = _Terminal()
  monkeypatch.setattr(sys, 'stderr', terminal)
  now = [0.0]
  monkeypatch.setattr(metrics.time, 'monotonic', lambda: now[0])
  progress = metrics.Progress(total_steps=100, start_step=0, enabled=True)
  now[0] += 120.0  # Compiling.
  progress.resume(0)
  for step in (1, 2, 3):
    now[0] += 0.5
    progress.step(step)
  assert 'ETA 0:00:48' in str(progress._bar)  # pylint: disable=protected-access  (97 steps x 0.5 s)
  progress.close()
  closed = terminal.getvalue()
  progress.close()  # Closing twice (the loop's finally after the preemption branch) draws nothing more.
  assert terminal.getvalue() == closed
