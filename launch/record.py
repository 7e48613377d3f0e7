"""What a run's workdir says about the run: its metrics, its status, and a summary row.

A run is its workdir, read through vit_jax/runtime/workdir.py (which owns every file name, the
merging of metrics.jsonl and the "complete" rule that the trainer uses too), plus `launch.json`,
which the launchers write there (command, commit, backend, ...; `returncode` once the job has
ended).

Status: `finished` (complete, by vit_jax.runtime.workdir.is_complete: a checkpoint at its target
step and its params.npz), `running`, `failed` (ended non-zero, or its local process is gone),
`stopped` (ended with status 0 before the last step: preempted or interrupted; rerunning resumes it)
or `not started`. `python -m launch.record status WORKDIR` prints it (exit status 0 only when
finished); `python -m launch.record exit WORKDIR CODE` records a job's exit status in launch.json
(the SLURM script does), `python -m launch.record write WORKDIR JSON` writes launch.json (launch.tpu
does, on worker 0).
"""

import argparse
import dataclasses
import datetime
import json
import math
import socket
import sys

from vit_jax import io
from vit_jax.runtime import goodput as goodput_lib
from vit_jax.runtime import lock
from vit_jax.runtime import workdir as workdir_lib

SWEEP_FILE = 'sweep.json'  # A sweep dir's record of its runs (written by launch/sweep.py).
STATUSES = ('finished', 'running', 'stopped', 'failed', 'not started')


def with_overrides(config, overrides: dict | None):
  """A copy of a run's config with the next launch's overrides ({'total_steps': 200,
  'schedule.base_lr': '0.1'})."""
  from vit_jax.configs import loading  # noqa: PLC0415

  config = config.copy_and_resolve_references()
  for key, value in (overrides or {}).items():
    loading.override(config, key, value)
  return config


@dataclasses.dataclass
class Record:
  workdir: str
  config: dict | None  # config.json as stored.
  steps: dict[int, dict[str, float]]  # vit_jax.runtime.workdir.merged_metrics.
  launch: dict | None
  # vit_jax/runtime/goodput.py's attempts.
  goodput: list[dict] = dataclasses.field(default_factory=list)

  @property
  def step(self) -> int:
    return max(self.steps, default=0)

  def series(self, metric: str) -> list[tuple[int, float]]:
    return [(s, m[metric]) for s, m in self.steps.items() if metric in m]

  def complete(self, overrides: dict | None = None) -> bool:
    """vit_jax.runtime.workdir.is_complete, for the run's config with the next launch's
    `overrides`."""
    if self.config is None:
      return False
    return workdir_lib.is_complete(
      self.workdir, with_overrides(workdir_lib.load_config(self.workdir), overrides)
    )


def read(workdir: str) -> Record:
  """The record of the run in `workdir` (local or gs://); an absent workdir reads as a run not
  started."""
  return Record(
    workdir,
    workdir_lib.read_json(workdir, workdir_lib.CONFIG_FILE),
    workdir_lib.merged_metrics(workdir),
    workdir_lib.read_launch(workdir),
    goodput_lib.read(workdir),
  )


def read_sweep(sweep_dir: str) -> dict | None:
  """A sweep dir's SWEEP_FILE (its config, fixed overrides and runs), or None where there is
  none."""
  text = io.read_text_or_none(io.join(sweep_dir, SWEEP_FILE))
  return json.loads(text) if text else None


def status(record: Record, *, overrides: dict | None = None) -> str:
  """One of STATUSES (see the module doc); `overrides` are the next launch's, which may move the
  last step."""
  if record.complete(overrides):
    return 'finished'
  launch = record.launch or {}
  if not record.steps and record.config is None and not launch:
    return 'not started'
  if 'returncode' in launch:
    return 'stopped' if launch['returncode'] == 0 else 'failed'
  if (
    launch.get('pid')
    and launch.get('host') == socket.gethostname()
    and not lock.pid_alive(int(launch['pid']))
  ):
    return 'failed'  # Its process is gone without recording an exit (killed).
  return 'running'


def _final_best(series, mode):
  if not series:
    return math.nan, math.nan
  values = [v for _, v in series]
  return values[-1], (max(values) if mode == 'max' else min(values))


def summary(record: Record, *, overrides: dict | None = None) -> dict:
  """One results row: status, step, final and best eval accuracy and loss, final train loss, goodput
  (the fraction of the run's wall time spent training, over all its attempts:
  vit_jax/runtime/goodput.py)."""
  acc_final, acc_best = _final_best(record.series('eval/accuracy'), 'max')
  loss_final, loss_best = _final_best(record.series('eval/loss'), 'min')
  train_loss = record.series('train/loss')
  return {
    'status': status(record, overrides=overrides),
    'step': record.step,
    'final eval/accuracy': acc_final,
    'best eval/accuracy': acc_best,
    'final eval/loss': loss_final,
    'best eval/loss': loss_best,
    'final train/loss': train_loss[-1][1] if train_loss else math.nan,
    'goodput': goodput_lib.summary(record.goodput).get('goodput', math.nan),
  }


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='milliseconds')


def record_exit(workdir: str, returncode: int) -> None:
  """Adds the job's exit status (and the time) to WORKDIR/launch.json."""
  workdir_lib.write_launch(workdir, {'returncode': int(returncode), 'ended': now()}, merge=True)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m launch.record',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  sub = parser.add_subparsers(dest='command', required=True)
  p = sub.add_parser('status', help='Print the run status; exit status 0 only when finished.')
  p.add_argument('workdir')
  p = sub.add_parser('exit', help="Record a job's exit status in WORKDIR/launch.json.")
  p.add_argument('workdir')
  p.add_argument('code', type=int)
  p = sub.add_parser('write', help='Write WORKDIR/launch.json (a JSON object).')
  p.add_argument('workdir')
  p.add_argument('json')
  args = parser.parse_args(argv)
  if args.command == 'exit':
    record_exit(args.workdir, args.code)
    return 0
  if args.command == 'write':
    workdir_lib.write_launch(args.workdir, json.loads(args.json))
    return 0
  rec = read(args.workdir)
  state = status(rec)
  print(f'{args.workdir}: {state} at step {rec.step}')
  return 0 if state == 'finished' else 3


if __name__ == '__main__':
  sys.exit(main())
