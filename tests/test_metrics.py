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
