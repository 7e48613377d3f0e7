"""A transfer command's report (launch/transfer.py): per task the learning rate chosen on validation
and its test accuracy, the few-shot probes, the published figure and the difference.

Selection reads validation accuracies only (eval/accuracy of each run, the 'val' split of
vit_jax/configs/transfer.py): `choose` gets {setting: [validation accuracy per seed]} and returns
the setting with the best mean (the first in grid order on a tie). Only then are the chosen
setting's runs' test accuracies read (eval/test/accuracy): their mean, and their standard deviation
over the seeds. A task whose runs have not all finished is listed as pending.

Writes OUT/transfer_report.md, OUT/transfer_report.csv and OUT/transfer_report.png (test accuracy
per task beside the published one; few-shot accuracy against shots).
"""

import math
import statistics

from launch import record, results
from vit_jax import io
from vit_jax.runtime import workdir as workdir_lib

VAL = 'eval/accuracy'
TEST = 'eval/test/accuracy'
COLUMNS = (
  'task',
  'dataset',
  'status',
  'chosen_lr',
  'val_accuracy',
  'test_accuracy',
  'test_std',
  'seeds',
  'published',
  'difference',
)


def choose(val_by_setting: dict) -> object:
  """The setting with the best mean validation accuracy (module doc); it never sees a test
  figure."""
  best = None
  best_score = -math.inf
  for setting, accuracies in val_by_setting.items():
    score = statistics.fmean(accuracies)
    if score > best_score:
      best = setting
      best_score = score
  return best


def _setting(run) -> float:
  return float(run.overrides['schedule.base_lr'])


def task_row(name: str, task: dict, runs, published: float | None) -> dict:
  """One row of the report for a task's sweep `runs` (launch.sweep.Run)."""
  row = {'task': name, 'dataset': task['dataset'], 'status': 'pending'}
  if published is not None:
    row['published'] = published
  if not runs or any(record.status(record.read(r.workdir)) != 'finished' for r in runs):
    return row
  val = {}
  for run in runs:
    val.setdefault(_setting(run), []).append(workdir_lib.last_eval(run.workdir)[VAL])
  lr = choose(val)
  tests = [100 * workdir_lib.last_eval(r.workdir)[TEST] for r in runs if _setting(r) == lr]
  row.update(
    status='done',
    chosen_lr=lr,
    val_accuracy=100 * statistics.fmean(val[lr]),
    test_accuracy=statistics.fmean(tests),
    test_std=statistics.pstdev(tests),
    seeds=len(tests),
  )
  if published is not None:
    row['difference'] = row['test_accuracy'] - published
  return row


def fewshot_rows(fewshot: dict[str, float]) -> dict[str, dict[int, float]]:
  """{'fewshot/<dataset>_<k>shot': accuracy} -> {dataset: {k: accuracy in %}}."""
  out: dict[str, dict[int, float]] = {}
  for key, value in fewshot.items():
    dataset, _, shots = key[len('fewshot/') :].rpartition('_')
    out.setdefault(dataset, {})[int(shots[: -len('shot')])] = 100 * value
  return out


def write(
  out: str, suite: dict, pretrained_name: str, runs_by_task: dict, fewshot: dict[str, float]
) -> str:
  """Writes the report files (module doc); returns the .md's path."""
  rows = [
    task_row(
      name,
      suite['tasks'][name],
      runs_by_task.get(name, []),
      suite['published'].get((pretrained_name, name)),
    )
    for name in suite['tasks']
  ]
  few = fewshot_rows(fewshot)
  shots = sorted({k for per in few.values() for k in per})
  for dataset, per in few.items():
    row = next((r for r in rows if r['dataset'] == dataset), None)
    if row is None:
      row = {'task': '', 'dataset': dataset, 'status': 'few-shot only'}
      rows.append(row)
    row.update({f'{k}-shot': per.get(k) for k in shots})
  columns = list(COLUMNS) + [f'{k}-shot' for k in shots]
  md = io.join(out, 'transfer_report.md')
  io.write_text(io.join(out, 'transfer_report.csv'), results.to_csv(rows, columns))
  io.write_text(
    md,
    f'# Transfer report: {pretrained_name} on suite {suite["name"]!r}\n\nAccuracies in %. The '
    "learning rate is chosen on each task's validation split; the test accuracy is the chosen "
    "runs' mean (test_std: over seeds). published: the figure published for this pretrained "
    'model, where there is one.\n\n' + results.to_markdown(rows, columns) + '\n',
  )
  _plot(io.join(out, 'transfer_report.png'), rows, few)
  return md


def _plot(path: str, rows: list[dict], few: dict) -> None:
  import matplotlib  # noqa: PLC0415

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # noqa: PLC0415

  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
  done = [r for r in rows if r.get('test_accuracy') is not None]
  xs = range(len(done))
  left.bar([x - 0.2 for x in xs], [r['test_accuracy'] for r in done], 0.4, label='ours (test)')
  left.bar([x + 0.2 for x in xs], [r.get('published') or 0 for r in done], 0.4, label='published')
  left.set_xticks(list(xs), [r['task'] for r in done], rotation=30, fontsize='small')
  left.set_ylabel('test accuracy (%)')
  left.legend(fontsize='small')
  for dataset, per in few.items():
    right.plot(sorted(per), [per[k] for k in sorted(per)], marker='o', label=dataset)
  right.set_xscale('log')
  right.set_xlabel('shots per class')
  right.set_ylabel('few-shot accuracy (%)')
  if few:
    right.legend(fontsize='small')
  for ax in (left, right):
    ax.grid(alpha=0.3)
  results.save_png(fig, path)
