"""The workdir's record of its run: `config.json`, and the refusal to resume a run under a different config.

A workdir "holds a run" once it has a checkpoint or a `metrics.jsonl`. Rerunning into it resumes that run, so the
config must be the same, except for fields that change how the run is carried out but not what it computes
(`RESUMABLE_FIELDS`: cadences, mesh, total_steps, ...). Any other difference is refused with the list of changed
fields, unless the caller passes `allow_change=True` (`--allow_config_change` in main). The replaced config is
kept as `config.<n>.json`, so nothing written before is lost.
"""
import json
import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

CONFIG_FILE = 'config.json'
CLASS_NAMES_FILE = 'class_names.json'  # The dataset's label names in label order, for predict/export.
# Fields whose change keeps the run the same run (a field, or a group and everything under it).
RESUMABLE_FIELDS = (
    'total_steps', 'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps', 'keep', 'async_checkpoints',
    'export_npz', 'prefetch', 'eval_batch_size', 'mesh', 'sharding_strategy', 'fsdp_min_size', 'tfds_data_dir',
    'tfds_manual_dir', 'image_folder', 'augreg_index', 'nonfinite_policy', 'remat_policy', 'attention', 'fused_qkv',
)


class ConfigChangedError(ValueError):
  """The workdir holds a run of another config."""


def _flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def config_changes(old: dict, new: dict) -> list[tuple[str, object, object]]:
  """(field, old value, new value) for every field that differs and is not in RESUMABLE_FIELDS."""
  old, new = _flatten(old), _flatten(new)
  missing = object()
  changes = []
  for key in sorted(set(old) | set(new)):
    if any(key == f or key.startswith(f + '.') for f in RESUMABLE_FIELDS):
      continue
    a, b = old.get(key, missing), new.get(key, missing)
    if a != b:
      changes.append((key, '<absent>' if a is missing else a, '<absent>' if b is missing else b))
  return changes


def holds_run(workdir: str) -> bool:
  ckpt = os.path.join(workdir, 'checkpoints')
  has_checkpoint = os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt))
  return has_checkpoint or os.path.exists(os.path.join(workdir, 'metrics.jsonl'))


def _config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


def _keep_old(path: str) -> str:
  n = 1
  while os.path.exists(f'{path[:-len(".json")]}.{n}.json'):
    n += 1
  kept = f'{path[:-len(".json")]}.{n}.json'
  os.replace(path, kept)
  return kept


def check_and_record_config(config, workdir: str, *, allow_change: bool = False) -> None:
  """Refuses a workdir that holds a run of another config (see module doc); then writes WORKDIR/config.json.

  Process 0 reads and writes; its decision reaches every process (a collective when there are several), so all of
  them raise together.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  changes = []
  if jax.process_index() == 0 and os.path.exists(path) and holds_run(workdir):
    with open(path, encoding='utf-8') as f:
      changes = config_changes(json.load(f), _config_dict(config))
  refuse = bool(changes) and not allow_change
  if jax.process_count() > 1:
    refuse = bool(multihost_utils.broadcast_one_to_all(np.int32(refuse)))
  if refuse:
    listed = '\n  '.join(f'{k}: {a!r} -> {b!r}' for k, a, b in changes) or '(see process 0)'
    raise ConfigChangedError(
        f'{workdir} holds a run of a different config; these fields differ from {path}:\n  {listed}\n'
        'Use a new --workdir for a new run, or pass --allow_config_change (train_and_evaluate(..., '
        'allow_config_change=True)) to resume this run with the new values; the old config is then kept as '
        'config.<n>.json.')
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  if changes:
    log.warning('Resuming %s with a changed config (%s); the old one is kept as %s.', workdir,
                ', '.join(k for k, _, _ in changes), _keep_old(path))
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  os.replace(tmp, path)


def record_class_names(workdir: str, class_names) -> None:
  """Writes WORKDIR/class_names.json (process 0): the label names of the run's dataset, index = label."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CLASS_NAMES_FILE)
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(list(class_names), f, indent=0)
    f.write('\n')
  os.replace(tmp, path)


def read_class_names(workdir: str) -> list[str] | None:
  """The label names a run recorded, or None for a workdir without them."""
  path = os.path.join(workdir, CLASS_NAMES_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)
