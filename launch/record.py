"""What a run's workdir says about the run: its metrics, its status, and a summary row.

A run is its workdir: `config.json`, `metrics.jsonl` (one JSON object per line with `step` and metrics such as
`train/loss`, `eval/accuracy`, `eval/loss`; training and evaluation write separate records for one step, and a
resumed run may repeat a step: per step and metric the last value wins), `checkpoints/`, `params.npz`, and
`launch.json`, which the launchers write (command, commit, backend, ...; `returncode` once the job has ended).

Status: `finished` (an evaluation at the last step), `running`, `failed` (ended non-zero, or its local process is
gone), `stopped` (ended with status 0 before the last step: preempted or interrupted; rerunning resumes it) or
`not started`. `python -m launch.record status WORKDIR` prints it (exit status 0 only when finished);
`python -m launch.record exit WORKDIR CODE` records a job's exit status in launch.json (the SLURM script does),
`python -m launch.record write WORKDIR JSON` writes launch.json (launch.tpu does, on worker 0).
"""
import argparse
import dataclasses
import datetime
import json
import math
import os
import socket
import sys

from vit_jax import io

LAUNCH_FILE = 'launch.json'
STATUSES = ('finished', 'running', 'stopped', 'failed', 'not started')


def merge_metrics(text: str) -> dict[int, dict[str, float]]:
  """metrics.jsonl text -> {step: {metric: value}} in step order; per step and metric the last record wins."""
  steps: dict[int, dict[str, float]] = {}
  for line in text.splitlines():
    if line.strip():
      record = json.loads(line)
      steps.setdefault(int(record.pop('step')), {}).update(record)
  return dict(sorted(steps.items()))


def target_steps(config: dict | None, overrides: dict | None = None) -> int | None:
  """The run's last step from its config (or from `overrides`, which the next launch applies), None if unknown.

  Durations given in epochs need the dataset's size, so such runs have no known target here.
  """
  merged = dict(config or {})
  for key, value in (overrides or {}).items():
    if key in ('total_steps', 'total_epochs', 'total_examples', 'batch_size'):
      merged[key] = value
  if merged.get('total_epochs') is not None:
    return None
  if merged.get('total_examples') is not None and merged.get('batch_size'):
    return int(round(float(merged['total_examples']) / int(merged['batch_size'])))
  return int(merged['total_steps']) if merged.get('total_steps') is not None else None


@dataclasses.dataclass
class Record:
  workdir: str
  config: dict | None
  steps: dict[int, dict[str, float]]
  launch: dict | None
  has_params: bool

  @property
  def step(self) -> int:
    return max(self.steps, default=0)

  def series(self, metric: str) -> list[tuple[int, float]]:
    return [(s, m[metric]) for s, m in self.steps.items() if metric in m]

  def finished(self, total_steps: int | None) -> bool:
    if not self.steps:
      return False
    if total_steps is None:  # Unknown target: the trainer writes params.npz once the run is complete.
      return self.has_params
    return any(s >= total_steps and any(k.startswith('eval/') for k in m) for s, m in self.steps.items())


def read(workdir: str) -> Record:
  """The record of the run in `workdir` (local or gs://, through vit_jax.io); an absent workdir reads as a run not
  started."""
  def load(name):
    return io.read_text_or_none(io.join(workdir, name))

  config, metrics, launch = load('config.json'), load('metrics.jsonl'), load(LAUNCH_FILE)
  has_params = io.exists(io.join(workdir, 'params.npz'))
  return Record(workdir, json.loads(config) if config else None, merge_metrics(metrics or ''),
                json.loads(launch) if launch else None, has_params)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def status(record: Record, *, overrides: dict | None = None) -> str:
  """One of STATUSES (see the module doc); `overrides` are the next launch's, which may move the last step."""
  if record.finished(target_steps(record.config, overrides)):
    return 'finished'
  launch = record.launch or {}
  if not record.steps and record.config is None and not launch:
    return 'not started'
  if 'returncode' in launch:
    return 'stopped' if launch['returncode'] == 0 else 'failed'
  if launch.get('pid') and launch.get('host') == socket.gethostname() and not _alive(int(launch['pid'])):
    return 'failed'  # Its process is gone without recording an exit (killed).
  return 'running'


def _final_best(series, mode):
  if not series:
    return math.nan, math.nan
  values = [v for _, v in series]
  return values[-1], (max(values) if mode == 'max' else min(values))


def summary(record: Record, *, overrides: dict | None = None) -> dict:
  """One results row: status, step, final and best eval accuracy and loss, final train loss."""
  acc_final, acc_best = _final_best(record.series('eval/accuracy'), 'max')
  loss_final, loss_best = _final_best(record.series('eval/loss'), 'min')
  train_loss = record.series('train/loss')
  return {'status': status(record, overrides=overrides), 'step': record.step,
          'final eval/accuracy': acc_final, 'best eval/accuracy': acc_best,
          'final eval/loss': loss_final, 'best eval/loss': loss_best,
          'final train/loss': train_loss[-1][1] if train_loss else math.nan}


def now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='milliseconds')


def write_launch(workdir: str, info: dict) -> None:
  io.write_text(io.join(workdir, LAUNCH_FILE), json.dumps(info, indent=2) + '\n')


def record_exit(workdir: str, returncode: int) -> None:
  """Adds the job's exit status (and the time) to WORKDIR/launch.json."""
  text = io.read_text_or_none(io.join(workdir, LAUNCH_FILE))
  info = json.loads(text) if text else {}
  write_launch(workdir, {**info, 'returncode': int(returncode), 'ended': now()})


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m launch.record', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
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
    write_launch(args.workdir, json.loads(args.json))
    return 0
  rec = read(args.workdir)
  state = status(rec)
  print(f'{args.workdir}: {state} at step {rec.step}')
  return 0 if state == 'finished' else 3


if __name__ == '__main__':
  sys.exit(main())
