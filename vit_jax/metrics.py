"""Metric writers (TensorBoard events + WORKDIR/metrics.jsonl) and training progress output."""
import datetime
import json
import logging
import math
import os
import sys
import time
from typing import Any, Mapping

from clu import metric_writers
import numpy as np

log = logging.getLogger(__name__)

METRICS_FILE = 'metrics.jsonl'


class JsonlWriter(metric_writers.MetricWriter):
  """Appends one JSON object {"step": s, name: value, ...} per `write_scalars` call; never truncates."""

  def __init__(self, path: str):
    self._path = path

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {'step': int(step)}
    record.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    with open(self._path, 'a', encoding='utf-8') as f:
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
  return metric_writers.MultiWriter([
      metric_writers.SummaryWriter(workdir), JsonlWriter(os.path.join(workdir, METRICS_FILE))])


def read_jsonl(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, METRICS_FILE), encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


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


class Progress:
  """A tqdm bar on a terminal, plain log lines otherwise; each report has step, loss, img/s and ETA."""

  def __init__(self, total_steps: int, start_step: int, enabled: bool):
    self._total, self._start = total_steps, start_step
    self._t0 = time.monotonic()
    self._bar = None
    if enabled and sys.stderr.isatty():
      import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit='step', dynamic_ncols=True)
    self._enabled = enabled

  def report(self, step: int, loss: float, img_per_sec: float, mfu: float | None = None):
    if not self._enabled:
      return
    done = step - self._start
    rate = done / max(time.monotonic() - self._t0, 1e-9)
    eta = datetime.timedelta(seconds=round((self._total - step) / rate)) if rate > 0 else 'unknown'
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      self._bar.set_postfix(loss=f'{loss:.4f}', img_s=f'{img_per_sec:.1f}', **({'mfu': f'{mfu:.1%}'} if mfu else {}))
    else:
      log.info('step %d/%d  loss %.4f  img/s %.1f%s  ETA %s', step, self._total,
               loss if math.isfinite(loss) else float('nan'), img_per_sec,
               f'  MFU {mfu:.1%}' if mfu is not None else '', eta)

  def close(self):
    if self._bar is not None:
      self._bar.close()
