"""Pictures of a trained run: attention maps of images, and training curves of one or more runs.

  python -m vit_jax.visualize attention --workdir=RUN IMAGE... [--out=DIR]
  python -m vit_jax.visualize curves RUN [RUN...] [--out=curves.png]
  python -m vit_jax.visualize goodput RUN [RUN...] [--out=goodput.png]

`attention` writes two PNGs per image into --out (default RUN/attention): NAME_rollout.png, the
input (after the run's evaluation preprocessing) beside it with the attention rollout overlaid,
titled with the top prediction; and NAME_heads.png, the last layer's attention of every head over
the patches (see vit_jax/inference/attention_maps.py). The model comes from --workdir or
--checkpoint/--model, as for vit_jax.predict; an MLP-Mixer has no attention and is refused with one
line. Runs, images and outputs may be local or gs:// (vit_jax/io.py).

`curves` writes one PNG of train loss, learning rate, eval accuracy and training img/s against the
step, read from each RUN's metrics.jsonl, the runs overlaid and named (by folder name, or --names).
Where a step was written twice (a run resumed after a crash trains the lost steps again), the later
record is the one plotted.

`goodput` writes one PNG with a stacked horizontal bar per RUN: where its wall time went, over all
its attempts, in the parts of vit_jax/runtime/goodput.py (startup, compile, train, input, eval,
checkpoint, lost, gap), read from each RUN's goodput.json, with the goodput (train / wall) in the
run's label.
"""

import argparse
import collections
import io as bytes_io
import logging
import math
import os
import sys
from typing import Sequence

import numpy as np

from vit_jax import cli, io
from vit_jax.runtime import goodput
from vit_jax.runtime import workdir as workdir_lib

log = logging.getLogger(__name__)

# (metrics.jsonl key, panel title) of the curves figure.
CURVES = (
  ('train/loss', 'train loss'),
  ('train/learning_rate', 'learning rate'),
  ('eval/accuracy', 'eval accuracy'),
  ('train/img_per_sec', 'train img/s'),
)
OVERLAY_CMAP = 'inferno'


def _figure(width: float, height: float):
  # (no pyplot: no global figure state)
  from matplotlib import figure  # noqa: PLC0415

  return figure.Figure(figsize=(width, height), dpi=100, layout='constrained')


def save_png(fig, path: str) -> None:
  """Saves a matplotlib figure as PNG, locally or to gs://."""
  buf = bytes_io.BytesIO()
  fig.savefig(buf, format='png')
  io.write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------------------
# Curves.


def read_curves(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{key: (steps, values)} of a run's metrics, sorted by step; a step written twice keeps its last
  value."""
  if not io.exists(workdir_lib.path(workdir, workdir_lib.METRICS_FILE)):
    raise workdir_lib.WorkdirError(
      f'{workdir} has no {workdir_lib.METRICS_FILE}: is it the workdir of a training run?'
    )
  series: dict[str, dict[int, float]] = {}
  for step, values in workdir_lib.merged_metrics(workdir).items():
    for key, value in values.items():
      series.setdefault(key, {})[step] = value
  return {
    key: (np.array(list(by_step)), np.array(list(by_step.values()), np.float64))
    for key, by_step in series.items()
  }


def run_names(workdirs: Sequence[str]) -> list[str]:
  """Short names for runs: folder names, or the paths where two folder names are the same."""
  names = [io.basename(w) for w in workdirs]
  return names if len(set(names)) == len(names) else [w.rstrip('/') for w in workdirs]


def plot_curves(workdirs: Sequence[str], out: str, *, names: Sequence[str] | None = None) -> str:
  """Writes the curves PNG of `workdirs` to `out`; returns `out`."""
  names = list(names) if names else run_names(workdirs)
  if len(names) != len(workdirs):
    raise ValueError(f'{len(names)} names for {len(workdirs)} runs.')
  runs = [read_curves(w) for w in workdirs]
  fig = _figure(10, 6.5)
  axes = fig.subplots(2, 2, sharex=True).ravel()
  for ax, (key, title) in zip(axes, CURVES):
    plotted = False
    for name, curves in zip(names, runs):
      if key in curves:
        steps, values = curves[key]
        ax.plot(steps, values, marker='.' if len(steps) < 20 else None, label=name)
        plotted = True
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if not plotted:
      ax.text(
        0.5, 0.5, f'no {key} in metrics.jsonl', ha='center', va='center', transform=ax.transAxes
      )
  for ax in axes[2:]:
    ax.set_xlabel('step')
  axes[0].legend(loc='best', fontsize='small')
  save_png(fig, out)
  return out


# --------------------------------------------------------------------------------------------------
# Goodput.

GOODPUT_COLORS = {
  'train': '#2a9d8f',
  'startup': '#8d99ae',
  'compile': '#e9c46a',
  'input': '#f4a261',
  'eval': '#457b9d',
  'checkpoint': '#a8dadc',
  'lost': '#e63946',
  'gap': '#6d6875',
}


def read_goodput(workdir: str) -> dict:
  """The run's goodput totals (vit_jax/runtime/goodput.py `summary`); a clear error for a run
  without goodput.json."""
  totals = goodput.summary(goodput.read(workdir))
  if not totals:
    raise workdir_lib.WorkdirError(
      f'{workdir} has no {workdir_lib.GOODPUT_FILE}: is it the '
      'workdir of a training run (one started by this version)?'
    )
  return totals


def plot_goodput(workdirs: Sequence[str], out: str, *, names: Sequence[str] | None = None) -> str:
  """Writes the goodput PNG of `workdirs` to `out`; returns `out`."""
  names = list(names) if names else run_names(workdirs)
  if len(names) != len(workdirs):
    raise ValueError(f'{len(names)} names for {len(workdirs)} runs.')
  runs = [read_goodput(w) for w in workdirs]
  fig = _figure(10, 1.6 + 0.5 * len(runs))
  ax = fig.subplots()
  labels = [f'{name} ({100 * t["goodput"]:.0f}%)' for name, t in zip(names, runs)]
  left = np.zeros(len(runs))
  for part in goodput.ALL_PARTS:
    widths = np.array([t.get(part, 0.0) for t in runs])
    if widths.any():
      ax.barh(labels, widths, left=left, color=GOODPUT_COLORS[part], label=part)
      left += widths
  ax.invert_yaxis()
  ax.set_xlabel('wall time (s)')
  ax.set_title('where the time went (goodput = train / wall)')
  fig.legend(loc='outside lower center', ncol=len(goodput.ALL_PARTS), fontsize='small')
  save_png(fig, out)
  return out


# --------------------------------------------------------------------------------------------------
# Attention.


def _to_pixels(image: np.ndarray) -> np.ndarray:
  """A model input in [-1, 1] -> RGB in [0, 1] for display."""
  return np.clip((np.asarray(image, np.float32) + 1.0) / 2.0, 0.0, 1.0)


def _overlay(ax, pixels: np.ndarray, heat: np.ndarray, title: str) -> None:
  """The image with `heat` (a map over the patch grid, scaled to its maximum) stretched over it."""
  h, w = pixels.shape[:2]
  ax.imshow(pixels, extent=(0, w, h, 0), interpolation='nearest')
  ax.imshow(
    heat / max(float(heat.max()), 1e-12),
    extent=(0, w, h, 0),
    cmap=OVERLAY_CMAP,
    alpha=0.55,
    interpolation='bilinear',
    vmin=0.0,
    vmax=1.0,
  )
  ax.set_title(title, fontsize='small')
  ax.set_axis_off()


def rollout_figure(image: np.ndarray, rollout: np.ndarray, title: str):
  """Input and input with the rollout overlaid, side by side."""
  fig = _figure(5, 2.8)
  left, right = fig.subplots(1, 2)
  left.imshow(_to_pixels(image), interpolation='nearest')
  left.set_title(title, fontsize='small')
  left.set_axis_off()
  _overlay(right, _to_pixels(image), rollout, 'attention rollout')
  return fig


def heads_figure(image: np.ndarray, heads: np.ndarray, title: str):
  """The input, then the last layer's map of every head overlaid on it: one row up to 6 panels, else
  a grid."""
  panels = 1 + len(heads)
  rows = math.ceil(panels / 6)
  cols = math.ceil(panels / rows)
  fig = _figure(2.2 * cols, 2.3 * rows)
  axes = np.asarray(fig.subplots(rows, cols)).ravel()
  pixels = _to_pixels(image)
  axes[0].imshow(pixels, interpolation='nearest')
  axes[0].set_title(title, fontsize='small')
  for i, heat in enumerate(heads):
    _overlay(axes[i + 1], pixels, heat, f'last layer, head {i}')
  for ax in axes:
    ax.set_axis_off()
  return fig


def _stems(paths: Sequence[str]) -> list[str]:
  """Output name stems: file names without extension; where they repeat, prefixed with their
  folder's name, then numbered if they still repeat."""
  stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  counts = collections.Counter(stems)
  stems = [
    s if counts[s] == 1 else f'{os.path.basename(os.path.dirname(p))}_{s}'
    for s, p in zip(stems, paths)
  ]
  counts = collections.Counter(stems)
  seen = collections.Counter()
  out = []
  for stem in stems:
    seen[stem] += 1
    out.append(stem if counts[stem] == 1 else f'{stem}_{seen[stem]}')
  return out


def _short(path: str) -> str:
  """The file name with its folder's name (often the class): 'cat/0.jpg'."""
  return '/'.join(os.path.normpath(path).split(os.sep)[-2:])


def write_attention(
  trained, paths: Sequence[str], out_dir: str, *, batch_size: int = 16
) -> tuple[list[str], list[tuple[str, str]]]:
  """Writes NAME_rollout.png and NAME_heads.png for each image; returns (files written, [(path,
  error)]). `trained` is a vit_jax.inference.trained.Trained (attention_maps.NoAttentionError for an
  MLP-Mixer)."""
  from vit_jax import models, predict  # noqa: PLC0415
  from vit_jax.inference import attention_maps  # noqa: PLC0415
  from vit_jax.inference import trained as inference  # noqa: PLC0415

  grid = models.token_grid(trained.config.model, trained.config.image_size)
  attention = attention_maps.make_attention_fn(trained.model)
  stems = _stems(paths)
  written = []
  errors = []
  for indices, images, failed in inference.image_batches(paths, trained.config, batch_size):
    errors += [(paths[i], why) for i, why in failed]
    if not indices:
      continue
    logits, weights = attention(trained.params, inference.pad_batch(images, batch_size))
    rollouts, heads = attention_maps.maps(weights[:, : len(indices)], grid)
    probs = predict.probabilities(logits[: len(indices)], trained.config.loss)
    for j, i in enumerate(indices):
      best = int(np.argmax(probs[j]))
      title = f'{_short(paths[i])}: {trained.label(best)} {probs[j, best]:.2f}'
      for kind, fig in (
        ('rollout', rollout_figure(images[j], rollouts[j], title)),
        ('heads', heads_figure(images[j], heads[j], title)),
      ):
        path = io.join(out_dir, f'{stems[i]}_{kind}.png')
        save_png(fig, path)
        written.append(path)
  return written, errors


# --------------------------------------------------------------------------------------------------
# Command line.


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
  parser = argparse.ArgumentParser(
    prog='python -m vit_jax.visualize',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  commands = parser.add_subparsers(dest='command', required=True)
  attention = commands.add_parser(
    'attention', help='Attention rollout and per-head maps of images.'
  )
  attention.add_argument(
    'inputs', nargs='+', help='Image files, folders or globs (local or gs://).'
  )
  cli.add_model_args(attention)
  attention.add_argument(
    '--out', help='Output folder (default: WORKDIR/attention, or ./attention).'
  )
  attention.add_argument(
    '--batch_size', type=int, default=16, help='Images per forward pass (default 16).'
  )
  curves = commands.add_parser('curves', help='Training curves of runs, overlaid.')
  curves.add_argument(
    'runs', nargs='+', help='Workdirs of training runs (each with a metrics.jsonl).'
  )
  curves.add_argument('--out', default='curves.png', help='Output PNG (default: curves.png).')
  curves.add_argument(
    '--names', help='Comma-separated legend names, one per run (default: folder names).'
  )
  cli.add_verbose(curves)
  bars = commands.add_parser('goodput', help="Where runs' wall time went: a stacked bar per run.")
  bars.add_argument('runs', nargs='+', help='Workdirs of training runs (each with a goodput.json).')
  bars.add_argument('--out', default='goodput.png', help='Output PNG (default: goodput.png).')
  bars.add_argument('--names', help='Comma-separated names, one per run (default: folder names).')
  cli.add_verbose(bars)
  return parser, {'attention': attention, 'curves': curves, 'goodput': bars}


def main(argv: Sequence[str] | None = None) -> int:
  parser, commands = _parsers()
  args = parser.parse_args(argv)
  command = commands[args.command]
  if args.command in ('curves', 'goodput'):
    names = args.names.split(',') if args.names else None
    if names and len(names) != len(args.runs):
      command.error(f'--names has {len(names)} names for {len(args.runs)} runs.')
    plot = plot_curves if args.command == 'curves' else plot_goodput
    return cli.run(
      lambda: print(plot(args.runs, args.out, names=names)), prog=command.prog, argv=argv
    )
  cli.check_model_args(args, command)
  return cli.run(lambda: _attention(args), prog=command.prog, argv=argv)


def _attention(args) -> int:
  # (JAX loads here)
  from vit_jax.inference import attention_maps  # noqa: PLC0415
  from vit_jax.inference import trained as inference  # noqa: PLC0415

  # Before reading any parameters.
  attention_maps.check_has_attention(inference.model_config_from_args(args))
  trained = inference.load_from_args(args)
  out_dir = args.out or io.join(args.workdir or '.', workdir_lib.ATTENTION_DIR)
  paths, missing = inference.expand_inputs(args.inputs)
  written, errors = (
    write_attention(trained, paths, out_dir, batch_size=args.batch_size) if paths else ([], [])
  )
  for path in written:
    print(path)
  for path, why in missing + errors:
    print(f'{path}\tERROR {why}')
  return 1 if missing or errors else 0


if __name__ == '__main__':
  sys.exit(main())
