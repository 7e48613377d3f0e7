"""Metric writers (WORKDIR/metrics.jsonl and TensorBoard event files, no TensorFlow) and training
progress output."""

import datetime
import logging
import math
import os
import socket
import struct
import sys
import time
from typing import Any, Mapping

import numpy as np

from vit_jax import io
from vit_jax.runtime import workdir as workdir_lib

log = logging.getLogger(__name__)


class EventsFile:
  """TensorBoard event files of scalars, written with TensorBoard's own protos and record framing
  (no TensorFlow).

  Locally `flush` appends the new records to one file. A gs:// object cannot be appended to, and
  rewriting a growing one costs the square of the run's length: there each flush writes the records
  since the last one as a new file (numbered parts of one name, at most one per `remote_every_s`,
  and whatever is left on `close`), which TensorBoard reads, in name order, as one run. Either way a
  flush costs what it adds.
  """

  def __init__(self, workdir: str, remote_every_s: float = 60.0):
    from tensorboard.compat.proto import event_pb2  # noqa: PLC0415

    self._event_pb2 = event_pb2
    self.workdir = workdir
    self.remote_every_s = remote_every_s
    self._name = (
      f'{workdir_lib.EVENTS_PREFIX}{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}'
    )
    self._remote = io.is_remote(workdir)
    self._part = 0
    self._flushed = time.monotonic()
    self._pending = []
    self._append(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))

  @property
  def path(self) -> str:
    """The file the next flush writes: locally always the same one; on gs:// part 0, 1, ..."""
    part = f'{self._part:06d}' if self._remote else str(self._part)
    return io.join(self.workdir, f'{self._name}.{part}.v2')

  def _append(self, event) -> None:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c  # noqa: PLC0415

    data = event.SerializeToString()
    header = struct.pack('<Q', len(data))
    self._pending.append(
      header
      + struct.pack('<I', masked_crc32c(header))
      + data
      + struct.pack('<I', masked_crc32c(data))
    )

  def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    from tensorboard.compat.proto import summary_pb2  # noqa: PLC0415

    values = [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
    self._append(
      self._event_pb2.Event(
        wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
      )
    )

  def flush(self, *, force: bool = False) -> None:
    """Writes the pending records (module doc); on gs:// only when `remote_every_s` has passed, or
    `force`."""
    if not self._pending:
      return
    if not self._remote:
      # Taken first: after a failed append (no space left), `close` does not fail again over the
      # fault being reported. The records lost are of steps after the last checkpoint, which the
      # rerun writes again.
      data, self._pending = b''.join(self._pending), []
      io.append_bytes(self.path, data)
      return
    if not force and time.monotonic() - self._flushed < self.remote_every_s:
      return
    if not io.create_new(self.path, b''.join(self._pending)):
      raise FileExistsError(
        f'{self.path} exists: another process writes event files under this name.'
      )
    self._pending, self._part, self._flushed = [], self._part + 1, time.monotonic()


class Writer:
  """Scalars to metrics.jsonl (one JSON object per call, {"step": s, name: value...}) and to
  TensorBoard; on processes other than the main one (or when disabled) it writes nothing."""

  def __init__(self, workdir: str, enabled: bool, events_every_s: float = 60.0):
    self.workdir = workdir
    self.enabled = enabled
    self._events = EventsFile(workdir, events_every_s) if enabled else None

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    values = {k: float(np.asarray(v)) for k, v in scalars.items()}
    workdir_lib.append_metrics(self.workdir, {'step': int(step), **values})
    self._events.scalars(step, values)
    self._events.flush()

  def close(self) -> None:
    """Writes what is still pending (on gs:// the event records of the last `remote_every_s`)."""
    if self.enabled:
      self._events.flush(force=True)


class Speed:
  """Throughput scalars for the logs: img/s in all and per device, model TFLOP/s per device, and
  MFU.

  `train_flops` is the model's FLOPs per training example (vit_jax.models.flops.train_flops);
  `peak_tflops` the device's dense peak for the compute dtype (vit_jax.models.flops.peak_tflops), or
  None where unknown (then no MFU).
  """

  def __init__(self, train_flops: float, num_devices: int, peak_tflops: float | None):
    self.train_flops = train_flops
    self.num_devices = num_devices
    self.peak_tflops = peak_tflops

  def scalars(self, img_per_sec: float) -> dict[str, float]:
    per_device = img_per_sec / self.num_devices
    tflops = per_device * self.train_flops / 1e12
    out = {
      'train/img_per_sec': img_per_sec,
      'train/img_per_sec_per_device': per_device,
      'train/tflops_per_device': tflops,
    }
    if self.peak_tflops:
      out['train/mfu'] = tflops / self.peak_tflops
    return out


class _ClearBar(logging.Filter):
  """Clears the progress bar before a log line is written, so the line stands on its own (the bar
  redraws on the next step)."""

  def __init__(self, bar):
    super().__init__()
    self._bar = bar

  def filter(self, record):
    self._bar.clear()
    return True


class Progress:
  """A tqdm bar on a terminal (stderr), plain log lines otherwise.

  `step(step)` is called every step: the bar advances on the host (no device sync), with the last
  logged loss, img/s, MFU and the ETA. `report(...)` is called on the log cadence with those
  figures; without a terminal it logs them as one line. While the bar is shown, every log line is
  written above it (the bar is cleared first). The ETA is the steps left at the clock's time per
  train step (vit_jax/runtime/goodput.py, `Clock.train_time`): a step's own time, never the first
  step's compilation, an evaluation or a checkpoint.
  """

  def __init__(self, total_steps: int, start_step: int, enabled: bool, clock):
    self._total = total_steps
    self._start = start_step
    self._clock = clock
    self._bar = None
    self._enabled = enabled
    self._handlers = []
    if enabled and sys.stderr.isatty():
      import tqdm  # noqa: PLC0415

      self._bar = tqdm.tqdm(
        total=total_steps,
        initial=start_step,
        unit='step',
        dynamic_ncols=True,
        file=sys.stderr,
        bar_format='{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]',
      )
      self._filter = _ClearBar(self._bar)
      # absl's handler lives on the root logger.
      self._handlers = list(logging.getLogger().handlers)
      for handler in self._handlers:
        handler.addFilter(self._filter)

  def step(self, step: int) -> None:
    if self._bar is not None and step > self._bar.n:
      self._bar.update(step - self._bar.n)
      if self._clock.train_time()[0]:  # A step was timed.
        self._bar.set_description_str(f'ETA {self.eta(step)}', refresh=False)

  def eta(self, step: int) -> datetime.timedelta | str:
    """The time left at the clock's seconds per train step; 'unknown' before a step was timed."""
    steps, seconds = self._clock.train_time()
    if not steps:
      return 'unknown'
    return datetime.timedelta(seconds=round((self._total - step) * seconds / steps))

  def report(self, step: int, loss: float, img_per_sec: float, mfu: float | None = None):
    if not self._enabled:
      return
    if self._bar is not None:
      self.step(step)
      self._bar.set_postfix(
        loss=f'{loss:.4f}', img_s=f'{img_per_sec:.1f}', **({'mfu': f'{mfu:.1%}'} if mfu else {})
      )
      return
    eta = self.eta(step)
    log.info(
      'step %d/%d  loss %.4f  img/s %.1f%s  ETA %s',
      step,
      self._total,
      loss if math.isfinite(loss) else float('nan'),
      img_per_sec,
      f'  MFU {mfu:.1%}' if mfu is not None else '',
      eta,
    )

  def close(self):
    if self._bar is not None:
      for handler in self._handlers:
        handler.removeFilter(self._filter)
      self._bar.close()
      self._bar = None
