"""THE run directory: the name of every file of a run, reading them, the "complete" rule and a run's
config.

A run is its workdir (a local path or gs://; all I/O through vit_jax.io). This module imports no
JAX, so launch/ reads runs through it too. Every file name below is spelled here and nowhere else:
  config.json          the run's config as given (durations unresolved), written once the run has
                       started
  config.<n>.json      a config replaced under --allow_config_change
  class_names.json     label names in label order (predict, export)
  dataset.json         {num_train, num_eval, num_classes} of the run's dataset (a duration in epochs
                       needs num_train)
  metrics.jsonl        one JSON object per write, {"step": s, name: value, ...}; training and
                       evaluation write separate records of one step: per step and name the last
                       record wins (`merged_metrics`)
  events.out.tfevents.*  the same scalars for TensorBoard (vit_jax/training/metrics.py writes them)
  checkpoints/<step>/  Orbax checkpoints; a step counts once finalised: locally its folder has the
                       bare step as name (Orbax renames it when complete), on gs:// it holds
                       commit_success.txt
  params.npz           the final parameters in the release layout
  launch.json          the launchers' record of the job (launch/record.py): `read_launch`,
                       `write_launch`
  run.log              a run's output where a local launcher started it (launch/sweep.py), appended
                       across resumes
  goodput.json         where the run's wall time went, per attempt (vit_jax/runtime/goodput.py)
  profile/             jax.profiler traces of config.profile_steps (TensorBoard's profile plugin,
                       Perfetto)
  lock.json            the live writer (vit_jax/runtime/lock.py)
  attention/           default output folder of `vit_jax.visualize attention`

A workdir *holds a run* once it has a checkpoint or a metrics.jsonl. A run is *complete* when it has
a checkpoint at its target step or later (`target_step`: config.total_steps, or total_epochs /
total_examples in steps) and, when config.export_npz, its params.npz. `is_complete` is that rule;
the trainer and the launchers both use it.

Resuming a run needs the same config, except fields that change how the run is carried out but not
what it computes (`RESUMABLE_FIELDS`). `config_changes` lists the others; a field that an older
config.json lacks is no change when the new config has its shared default (the code gained the
field), nor is a field the code no longer knows.
"""

import json
import logging

from vit_jax import errors, io
from vit_jax.configs import check, common, durations, loading

log = logging.getLogger(__name__)

CONFIG_FILE = 'config.json'
CLASS_NAMES_FILE = 'class_names.json'
DATASET_FILE = 'dataset.json'
METRICS_FILE = 'metrics.jsonl'
EVENTS_PREFIX = 'events.out.tfevents.'
CHECKPOINTS_DIR = 'checkpoints'
COMMIT_FILE = 'commit_success.txt'  # Orbax's marker of a finalised checkpoint on object stores.
PARAMS_FILE = 'params.npz'
# A LiT run's tokenizer vocabulary when it built its own (vit_jax/data/captions.py).
VOCAB_FILE = 'vocab.model'
LAUNCH_FILE = 'launch.json'
RUN_LOG = 'run.log'
GOODPUT_FILE = 'goodput.json'
PROFILE_DIR = 'profile'
LOCK_FILE = 'lock.json'
ATTENTION_DIR = 'attention'
# Stack dumps of process N, kept off the console (vit_jax/runtime/aborts.py).
STACKS_FILE = 'stacks.{process}.txt'

# Fields whose change keeps the run the same run (a field, or a group and everything under it).
RESUMABLE_FIELDS = (
  'total_steps',
  'total_epochs',
  'total_examples',
  'log_every_steps',
  'eval_every_steps',
  'checkpoint_every_steps',
  'keep',
  'async_checkpoints',
  'export_npz',
  'prefetch',
  'input_threads',
  'input_processes',
  'input_cache_mib',
  'eval_batch_size',
  'evals',
  'mesh',
  'sharding_strategy',
  'fsdp_min_size',
  'tfds_data_dir',
  'tfds_manual_dir',
  'image_folder',
  'augreg_index',
  'eval_split',
  'fewshot',
  'nonfinite_policy',
  'remat_policy',
  'attention',
  'fused_qkv',
  'faults',
  'profile_steps',
  'compilation_cache_dir',
)


class WorkdirError(errors.UserError, OSError):
  """The workdir cannot be used: a file, a location that cannot be reached or written, or no run
  where one is needed."""


class ConfigChangedError(errors.UserError, ValueError):
  """The workdir holds a run of another config."""


def path(workdir: str, name: str) -> str:
  """WORKDIR/name (local or gs://)."""
  return io.join(workdir, name)


def stacks_path(workdir: str, process) -> str:
  """Where process `process` appends the stack dumps of its aborts and hangs."""
  return path(workdir, STACKS_FILE.format(process=process))


def checkpoints_dir(workdir: str) -> str:
  """WORKDIR/checkpoints as an absolute path or URL (Orbax wants one)."""
  return io.abspath(path(workdir, CHECKPOINTS_DIR))


def checkpoint_steps(workdir: str) -> list[int]:
  """The steps of the run's finalised checkpoints, in order (see module doc)."""
  return finalised_steps(path(workdir, CHECKPOINTS_DIR))


def finalised_steps(folder: str) -> list[int]:
  """The steps of the finalised checkpoints in a checkpoints folder, in order (see module doc)."""
  if not io.isdir(folder):
    return []
  steps = sorted(int(n) for n in io.listdir(folder) if n.isdigit())
  if io.is_remote(folder):
    steps = [s for s in steps if io.exists(io.join(folder, str(s), COMMIT_FILE))]
  return steps


def latest_step(workdir: str) -> int | None:
  steps = checkpoint_steps(workdir)
  return steps[-1] if steps else None


def check_usable(workdir: str) -> None:
  """A WorkdirError for a workdir that is a file or cannot be reached (a gs:// bucket offline,
  say)."""
  try:
    is_file = io.isfile(workdir)
  except io.StorageError as e:
    raise WorkdirError(f'Cannot reach the workdir: {e}') from e
  if is_file:
    raise WorkdirError(
      f'The workdir {workdir} is a file, not a directory; '
      "give --workdir a directory (new or a run's)."
    )


def holds_run(workdir: str) -> bool:
  return bool(checkpoint_steps(workdir)) or io.exists(path(workdir, METRICS_FILE))


# --------------------------------------------------------------------------------------------------
# metrics.jsonl


def read_metrics(workdir: str) -> list[dict]:
  """The records of metrics.jsonl in file order ([] when there is none)."""
  text = io.read_text_or_none(path(workdir, METRICS_FILE)) or ''
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def merge(records) -> dict[int, dict[str, float]]:
  """{step: {name: value}} in step order; per step and name the last record wins."""
  steps: dict[int, dict[str, float]] = {}
  for record in records:
    record = dict(record)
    steps.setdefault(int(record.pop('step')), {}).update(record)
  return dict(sorted(steps.items()))


def merged_metrics(workdir: str) -> dict[int, dict[str, float]]:
  return merge(read_metrics(workdir))


def last_eval(workdir: str) -> dict[str, float]:
  """The latest evaluation of a run ({'step': s, 'eval/...': v, ...}), or {} when it has none."""
  evals = [
    {'step': s, **{k: v for k, v in m.items() if k.startswith('eval/')}}
    for s, m in merged_metrics(workdir).items()
    if any(k.startswith('eval/') for k in m)
  ]
  return evals[-1] if evals else {}


def append_metrics(workdir: str, record: dict) -> None:
  io.append_text(path(workdir, METRICS_FILE), json.dumps(record) + '\n')


def drop_records_after(workdir: str, step: int) -> int:
  """Removes the records of steps after `step` from metrics.jsonl; returns how many.

  A run that resumes from its checkpoint at `step` writes the later steps again (the attempt that
  crashed after that checkpoint wrote them once), so readers never see a step trained twice.
  """
  records = read_metrics(workdir)
  kept = [r for r in records if r['step'] <= step]
  if len(kept) < len(records):
    io.write_text(path(workdir, METRICS_FILE), ''.join(json.dumps(r) + '\n' for r in kept))
  return len(records) - len(kept)


# --------------------------------------------------------------------------------------------------
# The run's config and dataset.


def read_json(workdir: str, name: str):
  text = io.read_text_or_none(path(workdir, name))
  return None if text is None else json.loads(text)


def read_launch(workdir: str) -> dict | None:
  """The launchers' record of the job (launch.json), None where there is none."""
  return read_json(workdir, LAUNCH_FILE)


def write_launch(workdir: str, info: dict, *, merge: bool = False) -> None:
  """Writes launch.json as `info`, or with `merge` as `info` over what it holds (another writer, the
  job itself, may have written to it since)."""
  info = {**(read_launch(workdir) or {}), **info} if merge else info
  io.write_text(path(workdir, LAUNCH_FILE), json.dumps(info, indent=2) + '\n')


def load_config(workdir: str):
  """The run's config: its config.json overlaid on the current defaults (vit_jax/configs/common.py),
  so a field added to the code since has its default and every reader sees every field. A
  WorkdirError without config.json."""
  stored = read_json(workdir, CONFIG_FILE)
  if stored is None:
    raise WorkdirError(
      f'{workdir} holds no {CONFIG_FILE}: pass the --workdir of a training run (python -m '
      'vit_jax.main --workdir=...), or --checkpoint=X.npz with --model.'
    )
  return loading.from_dict(stored)


def _flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def as_dict(config) -> dict:
  """A ConfigDict as plain JSON data (tuples become lists), as config.json holds it."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def config_changes(old: dict, new: dict) -> list[tuple[str, object, object]]:
  """(field, old value, new value) for every field that differs and is not in RESUMABLE_FIELDS
  (module doc)."""
  defaults = _flatten(as_dict(common.get_config()))
  old, new = _flatten(old), _flatten(new)
  missing = object()
  changes = []
  for key in sorted(set(old) | set(new)):
    if any(key == f or key.startswith(f + '.') for f in RESUMABLE_FIELDS):
      continue
    a = old.get(key, missing)
    b = new.get(key, missing)
    if a is missing and key in defaults and b == defaults[key]:
      continue
    # A field the code no longer has (e.g. input_shards).
    if b is missing and not check.is_known(key):
      continue
    if a != b:
      changes.append((key, '<absent>' if a is missing else a, '<absent>' if b is missing else b))
  return changes


def check_config(
  config, workdir: str, *, allow_change: bool = False
) -> list[tuple[str, object, object]]:
  """Refuses (ConfigChangedError) a workdir that holds a run of another config, unless
  `allow_change`; writes nothing. Returns the changes to pass to `record_config`."""
  check_usable(workdir)
  old = read_json(workdir, CONFIG_FILE) if holds_run(workdir) else None
  changes = config_changes(old, as_dict(config)) if old is not None else []
  if changes and not allow_change:
    raise ConfigChangedError(changed_message(workdir, changes))
  return changes


def changed_message(workdir: str, changes) -> str:
  listed = '\n  '.join(f'{k}: {a!r} -> {b!r}' for k, a, b in changes) or '(see process 0)'
  return (
    f'{workdir} holds a run of a different config; these fields differ from '
    f'{path(workdir, CONFIG_FILE)}:\n  {listed}\nUse a new --workdir for a new run, or pass '
    '--allow_config_change (train_and_evaluate(..., allow_config_change=True)) to resume this run '
    'with the new values; the old config is then kept as config.<n>.json.'
  )


def _keep_old(config_path: str) -> str:
  stem = config_path[: -len('.json')]
  n = 1
  while io.exists(f'{stem}.{n}.json'):
    n += 1
  io.rename(config_path, f'{stem}.{n}.json')
  return f'{stem}.{n}.json'


def record_config(config, workdir: str, changes=()) -> None:
  """Writes config.json, keeping a replaced one as config.<n>.json when `changes` are given."""
  config_path = path(workdir, CONFIG_FILE)
  if changes and io.exists(config_path):
    log.warning(
      'Resuming %s with a changed config (%s); the old one is kept as %s.',
      workdir,
      ', '.join(k for k, _, _ in changes),
      _keep_old(config_path),
    )
  io.write_text(config_path, config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


def check_and_record_config(config, workdir: str, *, allow_change: bool = False) -> None:
  record_config(config, workdir, check_config(config, workdir, allow_change=allow_change))


def record_dataset(workdir: str, *, class_names, num_train: int, num_eval: int) -> None:
  """Writes class_names.json and dataset.json."""
  io.write_text(path(workdir, CLASS_NAMES_FILE), json.dumps(list(class_names), indent=0) + '\n')
  io.write_text(
    path(workdir, DATASET_FILE),
    json.dumps(
      {'num_train': int(num_train), 'num_eval': int(num_eval), 'num_classes': len(class_names)}
    )
    + '\n',
  )


def read_class_names(workdir: str) -> list[str] | None:
  return read_json(workdir, CLASS_NAMES_FILE)


# --------------------------------------------------------------------------------------------------
# Complete.


def target_step(config, num_train: int | None = None) -> int | None:
  """The run's last step: its total duration in steps; None when it is in epochs and `num_train` is
  unknown."""
  epochs = durations.value(config, durations.DURATIONS['total'][1])
  if epochs and num_train is None:
    return None
  return durations.steps_of(config, 'total', num_train or 0)


def reached_target(workdir: str, config, *, num_train: int | None = None) -> bool:
  """Whether the run has a checkpoint at its target step or later. `num_train` defaults to
  dataset.json's."""
  if num_train is None:
    num_train = (read_json(workdir, DATASET_FILE) or {}).get('num_train')
  target = target_step(config, num_train)
  latest = latest_step(workdir)
  return target is not None and latest is not None and latest >= target


def is_complete(workdir: str, config=None) -> bool:
  """The module doc's rule; `config` defaults to the run's own (pass another to ask about a changed
  duration)."""
  config = config if config is not None else load_config(workdir)
  return reached_target(workdir, config) and (
    not config.export_npz or io.exists(path(workdir, PARAMS_FILE))
  )
