"""Metric writers (TensorBoard events + WORKDIR/metrics.jsonl) and training progress output."""
import datetime
import json
import logging
import math
import sys
import time
from typing import Any, Mapping

from clu import metric_writers
import numpy as np

log = logging.getLogger(__name__)

METRICS_FILE = 'metrics.jsonl'


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (heavy; only needed for I/O)
  return tf.io.gfile


def _path(workdir: str) -> str:
  from vit_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  return workdir_lib.join(workdir, METRICS_FILE)


class JsonlWriter(metric_writers.MetricWriter):
  """Appends one JSON object {"step": s, name: value, ...} per `write_scalars` call (local or gs://)."""

  def __init__(self, path: str):
    self._path = path

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {'step': int(step)}
    record.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    with _gfile().GFile(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def create_writer(workdir: str, is_main: bool) -> metric_writers.MetricWriter:
  """TensorBoard events in `workdir` and `workdir/metrics.jsonl` on the main process; nothing elsewhere."""
  if not is_main:
    return metric_writers.MultiWriter([])
  return metric_writers.MultiWriter([metric_writers.SummaryWriter(workdir), JsonlWriter(_path(workdir))])


def read_jsonl(workdir: str) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl in file order ([] when there is none)."""
  if not _gfile().exists(_path(workdir)):
    return []
  with _gfile().GFile(_path(workdir)) as f:
    return [json.loads(line) for line in f if line.strip()]


def drop_records_after(workdir: str, step: int) -> int:
  """Removes the records of steps after `step` from metrics.jsonl (a resumed run writes them again); returns how many.

  Called when a run resumes from its checkpoint at `step`: records of later steps were written by the attempt that
  crashed after that checkpoint, and the resumed run writes them again, so readers never see a step twice.
  """
  records = read_jsonl(workdir)
  kept = [r for r in records if r['step'] <= step]
  if len(kept) < len(records):
    tmp = _path(workdir) + '.tmp'
    with _gfile().GFile(tmp, 'w') as f:
      f.write(''.join(json.dumps(r) + '\n' for r in kept))
    _gfile().rename(tmp, _path(workdir), overwrite=True)
  return len(records) - len(kept)


def last_eval(workdir: str) -> dict[str, float]:
  """The latest evaluation record of a run (its eval/* values and step), or {} when it has none."""
  evals = [r for r in read_jsonl(workdir) if any(k.startswith('eval/') for k in r)]
  return evals[-1] if evals else {}


class Speed:
  """Throughput scalars for the logs: img/s in all and per device, model TFLOP/s per device, and MFU.

  `train_flops` is the model's FLOPs per training example (vit_jax.flops.train_flops); `peak_tflops` the device's
  dense peak for the compute dtype (vit_jax.flops.peak_tflops), or None where unknown (then no MFU).
  """

  def __init__(self, train_flops: float, num_devices: int, peak_tflops: float | None):
    self.train_flops, self.num_devices, self.peak_tflops = train_flops, num_devices, peak_tflops

  def scalars(self, img_per_sec: float) -> dict[str, float]:
    per_device = img_per_sec / self.num_devices
    tflops = per_device * self.train_flops / 1e12
    out = {'train/img_per_sec': img_per_sec, 'train/img_per_sec_per_device': per_device,
           'train/tflops_per_device': tflops}
    if self.peak_tflops:
      out['train/mfu'] = tflops / self.peak_tflops
    return out


class _ClearBar(logging.Filter):
  """Clears the progress bar before a log line is written, so the line stands on its own (the bar redraws on the
  next step)."""

  def __init__(self, bar):
    super().__init__()
    self._bar = bar

  def filter(self, record):
    self._bar.clear()
    return True


class Progress:
  """A tqdm bar on a terminal (stderr), plain log lines otherwise.

  `step(step)` is called every step: the bar advances on the host (no device sync), with the last logged loss,
  img/s, MFU and tqdm's ETA. `report(...)` is called on the log cadence with those figures; without a terminal it
  logs them as one line. While the bar is shown, every log line is written above it (the bar is cleared first).
  """

  def __init__(self, total_steps: int, start_step: int, enabled: bool):
    self._total, self._start = total_steps, start_step
    self._t0 = time.monotonic()
    self._bar = None
    self._enabled = enabled
    self._handlers = []
    if enabled and sys.stderr.isatty():
      import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit='step', dynamic_ncols=True, file=sys.stderr)
      self._filter = _ClearBar(self._bar)
      self._handlers = list(logging.getLogger().handlers)  # absl's handler lives on the root logger.
      for handler in self._handlers:
        handler.addFilter(self._filter)

  def step(self, step: int) -> None:
    if self._bar is not None and step > self._bar.n:
      self._bar.update(step - self._bar.n)

  def report(self, step: int, loss: float, img_per_sec: float, mfu: float | None = None):
    if not self._enabled:
      return
    if self._bar is not None:
      self.step(step)
      self._bar.set_postfix(loss=f'{loss:.4f}', img_s=f'{img_per_sec:.1f}', **({'mfu': f'{mfu:.1%}'} if mfu else {}))
      return
    done = step - self._start
    rate = done / max(time.monotonic() - self._t0, 1e-9)
    eta = datetime.timedelta(seconds=round((self._total - step) / rate)) if rate > 0 else 'unknown'
    log.info('step %d/%d  loss %.4f  img/s %.1f%s  ETA %s', step, self._total,
             loss if math.isfinite(loss) else float('nan'), img_per_sec,
             f'  MFU {mfu:.1%}' if mfu is not None else '', eta)

  def close(self):
    if self._bar is not None:
      for handler in self._handlers:
        handler.removeFilter(self._filter)
      self._bar.close()
      self._bar = None
