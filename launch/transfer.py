"""From a pretrained model to a transfer report in one command: the few-shot probes and the
fine-tuning sweeps of a suite (configs/transfer_*.py, vit_jax/configs/transfer.py), the learning
rate chosen on each task's validation split, and a report of the test accuracies beside the
published ones.

    python -m launch.transfer --pretrained=runs/default --suite=configs/transfer_offline.py
        --out=runs/transfer
    python -m launch.transfer --pretrained=gs://vit_models/augreg/B_32-....npz --model=ViT-B_32 \
        --suite=configs/transfer_paper.py --backend=slurm --out=runs/transfer_b32
        [--config.KEY=VALUE ...]

--pretrained is a run's workdir (its model config and params.npz), a preset's name (its original
ImageNet-21k release, gs://vit_models/imagenet21k/<name>.npz), or a release .npz or 'augreg:<name>'
with --model (its preset). Every run of every task is planned and its config checked before anything
starts. Each task is a sweep (launch/sweep.py) in OUT/finetune/<task>, on the chosen backend (local,
slurm, tpu; their flags as for launch.sweep); the few-shot probes run here, once (OUT/fewshot.json).
Rerunning the same command skips finished runs and resumes the others, reuses the probes, and writes
the report again from what has finished: OUT/transfer_report.md, .csv and plots
(launch/transfer_report.py). `--tasks=a,b` limits the fine-tuning to some tasks; `--dry-run` lists
the runs and their commands.
"""

import argparse
import dataclasses
import json
import os
import re
import sys

from launch import hyper, shell, transfer_report
from launch import sweep as sweep_lib
from vit_jax import io
from vit_jax.configs import args as config_args
from vit_jax.configs import fields, presets
from vit_jax.runtime import workdir as workdir_lib

FEWSHOT_FILE = 'fewshot.json'
I21K_RELEASES = 'gs://vit_models/imagenet21k'
# An AugReg file name: 'B_32-i21k-300ep-lr_...'.
AUGREG_FILE = re.compile(r'[A-Za-z0-9_]+-i(1k|21k)\w*-\d+ep-')


class TransferError(ValueError):
  """A transfer command that cannot run as given."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
  # For the report and the published figures: a run's folder name, or a release file's name.
  name: str
  path: str  # The release-layout .npz (or 'augreg:...') every fine-tuning run starts from.
  preset: str  # The model preset the runs' configs start from ...
  model_overrides: dict  # ... and the model fields that differ from it (a run's own model).


# Regularisation is the transfer recipe's (the preset's: none), not inherited from the pretraining
# run.
RECIPE_FIELDS = (
  'model.transformer.dropout_rate',
  'model.transformer.attention_dropout_rate',
  'model.transformer.drop_path_rate',
)


def _model_overrides(model, preset: str) -> dict:
  """The fields of a run's `model` that differ from `preset`'s (its architecture), as overrides."""
  base = presets.get_model_config(preset)
  out = {}
  for name in fields.flat_keys(model, 'model.'):
    if name in RECIPE_FIELDS:
      continue
    value = _get(model, name[len('model.') :])
    default = _get(base, name[len('model.') :], missing=object())
    if value != default:
      if value is None:
        raise TransferError(
          f"The pretrained run's {name} is None where preset {preset} has {default!r}."
        )
      out[name] = tuple(value) if isinstance(value, list) else value
  return out


def _get(config, dotted: str, missing=None):
  for part in dotted.split('.'):
    if config is None or part not in config:
      return missing
    config = config[part]
  return config


def resolve_pretrained(spec: str, model: str | None) -> Pretrained:
  """--pretrained and --model (module doc) as a Pretrained; a TransferError when they do not name a
  model."""
  if io.isdir(spec):
    config = workdir_lib.load_config(spec)
    family = presets.family(config.model)
    if family == 'lit':
      raise TransferError(f'{spec} is a LiT run: transfer measures a ViT or MLP-Mixer image model.')
    name = config.model.get('model_name')
    preset = (
      name
      if name in presets.MODEL_NAMES
      else {
        'mixer': 'Mixer-B_16',
        'vit': ('R50+ViT-B_16' if config.model.get('resnet') is not None else 'ViT-B_16'),
      }[family]
    )
    params = workdir_lib.path(spec, workdir_lib.PARAMS_FILE)
    if not io.exists(params):
      raise TransferError(
        f'{spec} has no {workdir_lib.PARAMS_FILE}: finish the run first (rerun its command).'
      )
    return Pretrained(
      os.path.basename(os.path.normpath(spec)),
      params,
      preset,
      _model_overrides(config.model, preset),
    )
  if spec in presets.MODEL_NAMES:  # A preset's name: its original ImageNet-21k release file.
    return Pretrained(spec, f'{I21K_RELEASES}/{spec}.npz', spec, {})
  if model not in presets.MODEL_NAMES:
    raise TransferError(
      f'--pretrained={spec!r} is not a run directory, so --model must name its preset, one of: '
      f'{", ".join(presets.MODEL_NAMES)} (got {model!r}).'
    )
  if not spec.startswith('augreg:') and not io.exists(spec):
    raise TransferError(f'--pretrained={spec!r}: no such run directory or file.')
  name = spec[len('augreg:') :] if spec.startswith('augreg:') else os.path.basename(spec)
  return Pretrained(name[: -len('.npz')] if name.endswith('.npz') else name, spec, model, {})


def published_figures(suite: dict, pretrained: Pretrained, index_path: str) -> dict:
  """{(pretrained name, task): published test accuracy in %}: the suite's own table, and for a file
  of the AugReg index (vit_jax/augreg.py) its fine-tuning results: per task dataset, the row with
  the best adapt_final_val (at the task's resolution where the index has it). An index that cannot
  be read leaves the suite's table (noted)."""
  out = dict(suite['published'])
  if not AUGREG_FILE.match(pretrained.name):
    return out
  from vit_jax import augreg  # noqa: PLC0415  (pandas only here)

  try:
    index = augreg.augreg_index(index_path)
  except (augreg.AugRegError, io.StorageError, OSError) as e:
    print(f'launch.transfer: no AugReg figures ({e}).', file=sys.stderr)
    return out
  rows = index[index['filename'] == pretrained.name]
  for name, task in suite['tasks'].items():
    adapt = rows[rows['adapt_ds'] == task['dataset']]
    at_size = adapt[adapt['adapt_resolution'] == task['image_size']]
    adapt = at_size if len(at_size) else adapt
    if len(adapt) and (pretrained.name, name) not in out:
      out[pretrained.name, name] = 100 * float(
        adapt.sort_values('adapt_final_val', kind='stable').iloc[-1]['adapt_final_test']
      )
  return out


def load_suite(spec: str):
  """(the suite file's module, its suite dict); the module's `prepare()` (if any) writes generated
  datasets."""
  module = sweep_lib.load_config_module(spec)
  if not hasattr(module, 'get_suite'):
    raise TransferError(
      f'{spec} is not a transfer suite: it defines no get_suite() (see configs/transfer_*.py).'
    )
  return module, module.get_suite()


def plan(args, suite: dict, pretrained: Pretrained, fixed: dict) -> dict[str, list]:
  """{task: its sweep's runs}, every run's config checked (launch.sweep.validate) before anything
  starts."""
  tasks = list(suite['tasks'])
  chosen = [t.strip() for t in args.tasks.split(',')] if args.tasks else tasks
  unknown = sorted(set(chosen) - set(tasks))
  if unknown:
    raise TransferError(
      f'--tasks names {unknown}, which suite {suite["name"]!r} '
      f'lacks; its tasks: {", ".join(tasks)}.'
    )
  fixed = {'pretrained_path': pretrained.path, **pretrained.model_overrides, **fixed}
  out = {}
  for task in chosen:
    spec = task_spec(args.suite, task, pretrained)
    runs = sweep_lib.plan(
      spec, io.join(args.out, 'finetune', task), sweep_lib.expand(spec, []), fixed
    )
    sweep_lib.validate(spec, runs)
    out[task] = (spec, runs, fixed)
  return out


def task_spec(suite_spec: str, task: str, pretrained: Pretrained) -> str:
  return f'{config_args.split_spec(suite_spec)[0]}:task={task},model={pretrained.preset}'


def run_fewshot(suite: dict, pretrained: Pretrained, planned: dict, out: str) -> dict[str, float]:
  """The suite's few-shot probes of the pretrained model (the closed-form evaluator,
  vit_jax/evaluators/fewshot.py), run here once: OUT/fewshot.json holds them for this pretrained
  file, and a rerun reads them from there."""
  fs = suite['fewshot']
  if not fs:
    return {}
  path = io.join(out, FEWSHOT_FILE)
  stored = json.loads(io.read_text_or_none(path) or '{}')
  if stored.get('pretrained') == pretrained.path and stored.get('fewshot') == _jsonable(fs):
    return stored['metrics']
  from vit_jax.configs import loading  # noqa: PLC0415
  from vit_jax.inference import probes  # noqa: PLC0415  (JAX from here on)

  spec, _, fixed = next(iter(planned.values()))
  config = loading.from_command_line(spec, hyper.overrides_args(fixed))
  config.fewshot.datasets = fs['datasets']
  config.fewshot.shots = tuple(fs['shots'])
  config.fewshot.seeds = fs['seeds']
  config.fewshot.l2_reg = fs['l2_reg']
  config.image_size = fs['image_size']
  metrics = probes.probe_pretrained(config)
  io.write_text(
    path,
    json.dumps(
      {'pretrained': pretrained.path, 'fewshot': _jsonable(fs), 'metrics': metrics}, indent=2
    )
    + '\n',
  )
  return metrics


def _jsonable(value):
  return json.loads(json.dumps(value))


def _parser():
  parser = argparse.ArgumentParser(
    prog='python -m launch.transfer',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    '--pretrained', required=True, help='A run directory, a release .npz, or augreg:<name>.'
  )
  parser.add_argument('--model', help='The preset of a release .npz (a run directory has its own).')
  parser.add_argument(
    '--suite', required=True, help='A suite file: configs/transfer_{offline,paper,vtab}.py.'
  )
  parser.add_argument('--out', required=True, help='Where the runs, the probes and the report go.')
  parser.add_argument(
    '--augreg_index',
    default='gs://vit_models/augreg/index.csv',
    help='The AugReg index whose fine-tuning results are the published figures of its files.',
  )
  parser.add_argument(
    '--tasks', default='', help='Only these tasks (comma separated); default all.'
  )
  parser.add_argument('--backend', choices=('local', 'tpu', 'slurm'), default='local')
  parser.add_argument(
    '--parallel', type=int, default=0, help='local: runs at a time (default 1, or one per GPU).'
  )
  parser.add_argument(
    '--gpus', default=None, help='local: comma-separated GPU ids (default: all; "" for none).'
  )
  parser.add_argument(
    '--dry-run',
    '--dry_run',
    dest='dry_run',
    action='store_true',
    help='List the runs and print their commands; start nothing.',
  )
  from launch import slurm, tpu  # noqa: PLC0415

  tpu.add_sweep_flags(parser)
  slurm.add_flags(parser, sweep=True)
  return parser


def main(argv=None) -> int:
  parser = _parser()
  args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
  runner = shell.Runner(dry_run=args.dry_run)
  try:
    fixed = sweep_lib.fixed_overrides(extra)
    module, suite = load_suite(args.suite)
    pretrained = resolve_pretrained(args.pretrained, args.model)
    # Generated datasets (the offline suite's), needed to check the configs.
    if hasattr(module, 'prepare'):
      module.prepare()
    planned = plan(args, suite, pretrained, fixed)
  except (ValueError, io.StorageError, workdir_lib.WorkdirError) as e:
    print(f'launch.transfer: error: {e}', file=sys.stderr)
    return 2
  failed = 0
  for task, (spec, runs, task_fixed) in planned.items():
    sweep_dir = io.join(args.out, 'finetune', task)
    done, todo = sweep_lib.split_done(runs, task_fixed)
    sweep_lib.record_sweep(sweep_dir, spec, task_fixed, runs, args.backend, runner)
    runner.note(
      f'{task}: {len(runs)} runs in {sweep_dir}: {len(done)} finished (skipped), {len(todo)} to run'
    )
    code = sweep_lib.run_backend(args, runs, todo, sweep_dir, runner)
    if code == 130:
      return 130
    failed += code != 0
  if args.dry_run:
    return 0
  few = run_fewshot(suite, pretrained, planned, args.out)
  suite = {**suite, 'published': published_figures(suite, pretrained, args.augreg_index)}
  report = transfer_report.write(
    args.out, suite, pretrained.name, {t: runs for t, (_, runs, _) in planned.items()}, few
  )
  runner.note(
    f'Wrote {report} ({"some runs failed; " if failed else ""}rerun the command to finish any '
    'unfinished run and update the report).'
  )
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
