"""vit_jax/training/metrics.py: the progress bar on a terminal (log lines stand alone), plain
progress lines without one, and the speed scalars (per-device TFLOP/s, MFU against the peak);
TensorBoard event files that TensorBoard's own reader reads as one run, locally and on gs://, each
flush writing only what it adds."""

import io
import logging
import os
import sys

import fake_gcs
import pytest

from vit_jax import io as vit_io
from vit_jax.runtime import goodput
from vit_jax.runtime import workdir as workdir_lib
from vit_jax.training import metrics


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_bar_advances_every_step_and_log_lines_stand_alone(monkeypatch):
  terminal = _Terminal()
  monkeypatch.setattr(sys, 'stderr', terminal)
  handler = logging.StreamHandler(terminal)
  logging.getLogger().addHandler(handler)
  try:
    progress = metrics.Progress(total_steps=10, start_step=2, enabled=True, clock=goodput.Clock())
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
  progress = metrics.Progress(total_steps=10, start_step=0, enabled=True, clock=goodput.Clock())
  with caplog.at_level(logging.INFO, logger='vit_jax'):
    progress.step(1)
    progress.report(2, loss=0.5, img_per_sec=10.0)
  progress.close()
  assert 'step 2/10  loss 0.5000  img/s 10.0  ETA' in caplog.text


def test_speed_scalars_give_per_device_tflops_and_mfu_against_the_peak():
  speed = metrics.Speed(train_flops=3e9, num_devices=4, peak_tflops=100.0)
  out = speed.scalars(img_per_sec=8000.0)
  assert out == pytest.approx(
    {
      'train/img_per_sec': 8000.0,
      'train/img_per_sec_per_device': 2000.0,
      'train/tflops_per_device': 6.0,
      'train/mfu': 0.06,
    }
  )
  assert 'train/mfu' not in metrics.Speed(3e9, 4, None).scalars(8000.0)


def _fake_clock(now: list[float]) -> goodput.Clock:
  """A clock at the loop's start (in phase train) whose wall time is now[0]."""
  clock = goodput.Clock(start=now[0], now=lambda: now[0])
  clock.enter('train', 0)
  return clock


def test_the_eta_counts_train_steps_only_not_the_compile_evaluations_or_checkpoints(caplog):
  now = [1000.0]
  clock = _fake_clock(now)
  progress = metrics.Progress(total_steps=200, start_step=0, enabled=True, clock=clock)
  with clock.phase('compile', 1):
    now[0] += 300.0  # Compiling the first step.
  for step in range(1, 11):
    now[0] += 0.04  # 40 ms per step.
    clock.tick(step)
    progress.step(step)
    if step == 5:
      with clock.phase('eval', step):
        now[0] += 60.0  # An evaluation.
      with clock.phase('checkpoint', step):
        now[0] += 30.0  # A save.
  with caplog.at_level(logging.INFO, logger='vit_jax'):
    progress.report(10, loss=0.5, img_per_sec=10.0)
  progress.close()
  assert 'ETA 0:00:08' in caplog.text  # 190 steps x 40 ms, not minutes.
  assert metrics.Progress(10, 0, enabled=False, clock=goodput.Clock()).eta(0) == 'unknown'


def test_the_bar_shows_the_train_step_eta_and_is_gone_before_the_last_line(monkeypatch):
  terminal = _Terminal()
  monkeypatch.setattr(sys, 'stderr', terminal)
  now = [0.0]
  clock = _fake_clock(now)
  progress = metrics.Progress(total_steps=100, start_step=0, enabled=True, clock=clock)
  with clock.phase('compile', 1):
    now[0] += 120.0  # Compiling.
  for step in (1, 2, 3):
    now[0] += 0.5
    clock.tick(step)
    progress.step(step)
  assert 'ETA 0:00:48' in str(progress._bar)  # pylint: disable=protected-access  (97 steps x 0.5 s)
  progress.close()
  closed = terminal.getvalue()
  # Closing twice (the loop's finally after the preemption branch) draws nothing more.
  progress.close()
  assert terminal.getvalue() == closed


def _tensorboard_scalars(folder: str, tag: str) -> list[tuple[int, float]]:
  """What TensorBoard shows for `tag` in `folder` (its own loader, which reads a folder's event
  files as one run)."""
  from tensorboard.backend.event_processing import event_accumulator

  acc = event_accumulator.EventAccumulator(folder)
  acc.Reload()
  return [(e.step, pytest.approx(e.value)) for e in acc.Scalars(tag)]


def _written(monkeypatch) -> list[tuple[str, int]]:
  """(path, bytes) of every write through vit_jax.io, appends and exclusive creates included."""
  writes = []
  for name in ('write_bytes', 'append_bytes', 'create_new'):
    original = getattr(vit_io, name)

    def spy(path, data, original=original):
      if os.path.basename(str(path)).startswith(workdir_lib.EVENTS_PREFIX):
        writes.append((str(path), len(data)))
      return original(path, data)

    monkeypatch.setattr(vit_io, name, spy)
  return writes


@pytest.mark.parametrize('remote', [False, True], ids=['local', 'gcs'])
def test_event_files_cost_what_they_add_and_tensorboard_reads_them_as_one_run(
  tmp_path, monkeypatch, remote
):
  if remote:
    fake_gcs.install(tmp_path / 'gcs')
  workdir = 'gs://bucket/run' if remote else str(tmp_path / 'run')
  writes = _written(monkeypatch)
  clock = [0.0]
  monkeypatch.setattr(metrics.time, 'monotonic', lambda: clock[0])
  writer = metrics.Writer(workdir, enabled=True, events_every_s=60)
  for step in range(1, 31):
    # A log line every 10 s: on gs:// a new file every 60 s (at 60, 120, ... 300 s).
    clock[0] = step * 10.0
    writer.write_scalars(step, {'train/loss': 1.0 / step})
  writer.close()
  names = sorted(n for n in vit_io.listdir(workdir) if n.startswith(workdir_lib.EVENTS_PREFIX))
  sizes = {n: len(vit_io.read_bytes(vit_io.join(workdir, n))) for n in names}
  # Every byte was written once: no file was rewritten with what it held (the old gs:// writer
  # rewrote the whole file on every flush: 30 writes of a growing file).
  assert sum(n for _, n in writes) == sum(sizes.values())
  assert len(names) == (5 if remote else 1) and len({p for p, _ in writes}) == len(names)
  folder = str(tmp_path / 'gcs' / 'bucket' / 'run') if remote else workdir
  assert _tensorboard_scalars(folder, 'train/loss') == [
    (s, pytest.approx(1.0 / s)) for s in range(1, 31)
  ]
