"""A sweep's results: `python -m launch.sweep results SWEEP_DIR [--metric=eval/accuracy]
[--out=DIR]`.

One row per run of SWEEP_DIR/sweep.json: its swept values, status, last step, final and best eval
accuracy and loss, final train loss (and the final and best `--metric` when it is another one), read
from each run's workdir (launch/record.py). Written as results.csv and results.md, sorted by the
final metric (best first, runs without it last), and results.png: the final metric against each
swept value (one panel per swept field, runs that share the other fields joined by a line) and every
run's metric against the step.
"""

import argparse
import csv
import io as io_lib
import math
import sys

from launch import hyper, record
from vit_jax import io

FIXED_COLUMNS = (
  'status',
  'step',
  'final eval/accuracy',
  'best eval/accuracy',
  'final eval/loss',
  'best eval/loss',
  'final train/loss',
  'goodput',
)


def default_mode(metric: str) -> str:
  return 'min' if 'loss' in metric or 'error' in metric else 'max'


def collect(sweep: dict, metric: str) -> tuple[list[str], list[dict], dict[str, list]]:
  """(swept keys, one row per run, {run name: [(step, metric value)]})."""
  keys = sorted({k for run in sweep['runs'] for k in run['overrides']})
  mode = default_mode(metric)
  rows = []
  curves = {}
  for run in sweep['runs']:
    rec = record.read(run['workdir'])
    row = {
      'run': run['name'],
      **{k: hyper.format_value(run['overrides'][k]) if k in run['overrides'] else '' for k in keys},
      **record.summary(rec, overrides={**sweep.get('fixed', {}), **run['overrides']}),
    }
    series = rec.series(metric)
    if metric not in ('eval/accuracy', 'eval/loss'):
      values = [v for _, v in series]
      row[f'final {metric}'] = values[-1] if values else math.nan
      row[f'best {metric}'] = (
        (max(values) if mode == 'max' else min(values)) if values else math.nan
      )
    rows.append(row)
    curves[run['name']] = series
  return keys, rows, curves


def sort_rows(rows: list[dict], metric: str, mode: str) -> list[dict]:
  column = f'final {metric}'

  def rank(row):
    value = row.get(column, math.nan)
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return (missing, 0.0 if missing else (-value if mode == 'max' else value), row['run'])

  return sorted(rows, key=rank)


def _cell(value) -> str:
  if isinstance(value, float):
    return '' if math.isnan(value) else f'{value:.4f}'
  return str(value)


def to_csv(rows: list[dict], columns: list[str]) -> str:
  out = io_lib.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  writer.writerow(columns)
  for row in rows:
    writer.writerow([_cell(row.get(c, '')) for c in columns])
  return out.getvalue()


def to_markdown(rows: list[dict], columns: list[str]) -> str:
  lines = [
    '| ' + ' | '.join(columns) + ' |',
    '|' + '|'.join('---:' if c not in ('run', 'status') else '---' for c in columns) + '|',
  ]
  for row in rows:
    lines.append(
      '| ' + ' | '.join(_cell(row.get(c, '')).replace('|', '\\|') for c in columns) + ' |'
    )
  return '\n'.join(lines) + '\n'


def _numeric(values) -> bool:
  try:
    [float(v) for v in values]
  except (TypeError, ValueError):
    return False
  return True


def plot(path: str, keys: list[str], rows: list[dict], curves: dict, metric: str) -> None:
  """results.png: the final metric against each swept field with more than one value, then the
  curves."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # noqa: PLC0415

  swept = [k for k in keys if len({r[k] for r in rows}) > 1]
  panels = len(swept) + 1
  fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4), squeeze=False)
  column = f'final {metric}'
  for ax, k in zip(axes[0], swept):
    others = [o for o in swept if o != k]
    groups: dict[tuple, list] = {}  # The other fields' values (numbers sort as numbers) -> runs.
    for row in rows:
      if not math.isnan(row.get(column, math.nan)):
        key = tuple(
          (0, float(row[o]), row[o]) if _numeric([row[o]]) else (1, 0.0, row[o]) for o in others
        )
        groups.setdefault(key, []).append(row)
    values = sorted({r[k] for r in rows})
    numeric = _numeric(values)
    if numeric:
      values = sorted(values, key=float)
    for key, group in sorted(groups.items()):
      group = sorted(group, key=lambda r: float(r[k]) if numeric else values.index(r[k]))
      xs = [float(r[k]) if numeric else values.index(r[k]) for r in group]
      label = ', '.join(f'{o}={v}' for o, (_, _, v) in zip(others, key)) or None
      ax.plot(xs, [r[column] for r in group], marker='o', label=label)
    if (
      numeric
      and all(float(v) > 0 for v in values)
      and max(map(float, values)) >= 10 * min(map(float, values))
    ):
      ax.set_xscale('log')
    if numeric:
      ax.set_xticks([float(v) for v in values], values)
    else:
      ax.set_xticks(range(len(values)), values)
    ax.minorticks_off()
    ax.set_xlabel(k)
    ax.set_ylabel(column)
    if any(groups) and len(groups) > 1:
      ax.legend(fontsize='small')
    ax.grid(alpha=0.3)
  ax = axes[0][-1]
  for name, series in curves.items():
    if series:
      ax.plot([s for s, _ in series], [v for _, v in series], marker='.', label=name)
  ax.set_xlabel('step')
  ax.set_ylabel(metric)
  ax.set_title(f'{metric} during each run', fontsize='medium')
  if any(curves.values()):
    ax.legend(fontsize='x-small')
  ax.grid(alpha=0.3)
  save_png(fig, path)


def save_png(fig, path: str) -> None:
  """Writes a matplotlib figure as a PNG to `path` (local or gs://) and closes it."""
  from matplotlib import pyplot as plt  # noqa: PLC0415

  fig.tight_layout()
  buffer = io_lib.BytesIO()
  fig.savefig(buffer, format='png', dpi=80)
  plt.close(fig)
  io.write_bytes(path, buffer.getvalue())


def write(
  sweep_dir: str, *, metric: str = 'eval/accuracy', mode: str | None = None, out: str | None = None
) -> list[dict]:
  """Writes results.csv, results.md and results.png into `out` (default: the sweep dir), local or
  gs:// (through vit_jax.io); returns the sorted rows."""
  sweep = record.read_sweep(sweep_dir)
  if sweep is None:
    raise ValueError(
      f'No {record.SWEEP_FILE} in {sweep_dir}: not a sweep dir (python -m launch.sweep writes it).'
    )
  keys, rows, curves = collect(sweep, metric)
  rows = sort_rows(rows, metric, mode or default_mode(metric))
  columns = ['run', *keys, *FIXED_COLUMNS]
  if metric not in ('eval/accuracy', 'eval/loss'):
    columns += [f'final {metric}', f'best {metric}']
  out = out or sweep_dir
  io.write_text(io.join(out, 'results.csv'), to_csv(rows, columns))
  io.write_text(io.join(out, 'results.md'), to_markdown(rows, columns))
  plot(io.join(out, 'results.png'), keys, rows, curves, metric)
  return rows


def main(argv) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m launch.sweep results',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument('sweep_dir')
  parser.add_argument('--metric', default='eval/accuracy', help='The metric to sort and plot by.')
  parser.add_argument(
    '--mode',
    choices=('max', 'min'),
    help='Whether larger or smaller is better (default: min for losses, else max).',
  )
  parser.add_argument('--out', help='Where to write the files (default: SWEEP_DIR).')
  args = parser.parse_args(argv)
  try:
    rows = write(args.sweep_dir, metric=args.metric, mode=args.mode, out=args.out)
  except (ValueError, io.StorageError) as e:
    print(f'launch.sweep results: {e}', file=sys.stderr)
    return 2
  out = args.out or args.sweep_dir
  print(io.read_text(io.join(out, 'results.md')), end='')
  counts = {s: sum(r['status'] == s for r in rows) for s in record.STATUSES}
  print(
    ', '.join(f'{n} {s}' for s, n in counts.items() if n)
    + f'. Wrote results.csv, results.md, results.png to {out}.'
  )
  return 0
