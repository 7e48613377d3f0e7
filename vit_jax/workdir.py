"""The workdir's record of its run: `config.json`, `class_names.json`, and the refusal to resume another config.

A workdir is a local path or a gs:// URL (all I/O goes through tf.io.gfile). It "holds a run" once it has a
checkpoint or a `metrics.jsonl`. Rerunning into it resumes that run, so the config must be the same, except for
fields that change how the run is carried out but not what it computes (`RESUMABLE_FIELDS`: cadences, mesh,
total_steps, ...). A field that an older config.json lacks counts as unchanged when the new config has its shared
default (a field added to the code since). Any other difference is refused with the list of changed fields,
unless the caller passes `allow_change=True` (`--allow_config_change` in main).

Checking and recording are two steps: `check_config` before anything is written, `record_config` only once the
run has started (its checkpoint restored), so a refused or failed start leaves config.json as it was. The replaced
config is kept as `config.<n>.json`, so nothing written before is lost.
"""
import functools
import json
import logging
import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from vit_jax.configs import check

log = logging.getLogger(__name__)

CONFIG_FILE = 'config.json'
CLASS_NAMES_FILE = 'class_names.json'  # The dataset's label names in label order, for predict/export.
# Fields whose change keeps the run the same run (a field, or a group and everything under it).
RESUMABLE_FIELDS = (
    'total_steps', 'total_epochs', 'total_examples', 'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps', 'keep', 'async_checkpoints',
    'export_npz', 'prefetch', 'eval_batch_size', 'mesh', 'sharding_strategy', 'fsdp_min_size', 'tfds_data_dir',
    'tfds_manual_dir', 'image_folder', 'augreg_index', 'eval_split', 'fewshot', 'nonfinite_policy', 'remat_policy', 'attention', 'fused_qkv',
)


class ConfigChangedError(ValueError):
  """The workdir holds a run of another config."""


class WorkdirError(OSError):
  """The workdir cannot be used: a file, or a location that cannot be reached."""


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (heavy; only needed for I/O)
  return tf.io.gfile


def join(workdir: str, name: str) -> str:
  """WORKDIR/name, for a local workdir or a gs:// one."""
  return f'{workdir.rstrip("/")}/{name}' if '://' in workdir else os.path.join(workdir, name)


def _flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort(sort_keys=True))


@functools.cache
def _defaults() -> dict:
  from vit_jax.configs import common  # pylint: disable=g-import-not-at-top
  return _flatten(_config_dict(common.get_config()))


def config_changes(old: dict, new: dict) -> list[tuple[str, object, object]]:
  """(field, old value, new value) for every field that differs and is not in RESUMABLE_FIELDS.

  A field absent from `old` whose new value is its shared default is no change (the code gained the field), and
  neither is a field of `old` that the code no longer knows (the code dropped it).
  """
  old, new = _flatten(old), _flatten(new)
  missing = object()
  changes = []
  for key in sorted(set(old) | set(new)):
    if any(key == f or key.startswith(f + '.') for f in RESUMABLE_FIELDS):
      continue
    a, b = old.get(key, missing), new.get(key, missing)
    if a is missing and key in _defaults() and b == _defaults()[key]:
      continue
    if b is missing and not check.is_known(key):  # A field the code no longer has (e.g. input_shards).
      continue
    if a != b:
      changes.append((key, '<absent>' if a is missing else a, '<absent>' if b is missing else b))
  return changes


def _check_usable(workdir: str) -> None:
  """A clear error for a workdir that is a file or cannot be reached (a gs:// bucket offline, say)."""
  gfile = _gfile()
  try:
    exists, is_dir = gfile.exists(workdir), gfile.isdir(workdir)
  except Exception as e:  # pylint: disable=broad-except  (TF raises several kinds for unreachable file systems)
    hint = (' Check the network, the credentials (gcloud auth application-default login) and the bucket name.'
            if '://' in workdir else '')
    raise WorkdirError(f'Cannot reach the workdir {workdir}: {type(e).__name__}: {" ".join(str(e).split())}.'
                       f'{hint}') from e
  if exists and not is_dir:
    raise WorkdirError(f'The workdir {workdir} is a file, not a directory; give --workdir a directory (new or a '
                       'run\'s).')


def holds_run(workdir: str) -> bool:
  gfile = _gfile()
  ckpt = join(workdir, 'checkpoints')
  has_checkpoint = gfile.isdir(ckpt) and any(n.rstrip('/').isdigit() for n in gfile.listdir(ckpt))
  return has_checkpoint or gfile.exists(join(workdir, 'metrics.jsonl'))


def read_config(workdir: str) -> dict | None:
  """The config.json of a workdir as a dict, or None."""
  path = join(workdir, CONFIG_FILE)
  if not _gfile().exists(path):
    return None
  with _gfile().GFile(path) as f:
    return json.load(f)


def check_config(config, workdir: str, *, allow_change: bool = False) -> list[tuple[str, object, object]]:
  """Refuses a workdir that holds a run of another config (see module doc); writes nothing. Returns the changes
  that `allow_change` let through, for `record_config`.

  Process 0 reads; its decision reaches every process (a collective when there are several), so all of them raise
  together.
  """
  _check_usable(workdir)
  changes = []
  if jax.process_index() == 0 and holds_run(workdir):
    old = read_config(workdir)
    if old is not None:
      changes = config_changes(old, _config_dict(config))
  refuse = bool(changes) and not allow_change
  if jax.process_count() > 1:
    refuse = bool(multihost_utils.broadcast_one_to_all(np.int32(refuse)))
  if refuse:
    listed = '\n  '.join(f'{k}: {a!r} -> {b!r}' for k, a, b in changes) or '(see process 0)'
    raise ConfigChangedError(
        f'{workdir} holds a run of a different config; these fields differ from {join(workdir, CONFIG_FILE)}:\n'
        f'  {listed}\nUse a new --workdir for a new run, or pass --allow_config_change (train_and_evaluate(..., '
        'allow_config_change=True)) to resume this run with the new values; the old config is then kept as '
        'config.<n>.json.')
  return changes


def _keep_old(path: str) -> str:
  gfile, stem = _gfile(), path[:-len('.json')]
  n = 1
  while gfile.exists(f'{stem}.{n}.json'):
    n += 1
  gfile.rename(path, f'{stem}.{n}.json')
  return f'{stem}.{n}.json'


def _write_json(path: str, text: str) -> None:
  tmp = path + '.tmp'
  with _gfile().GFile(tmp, 'w') as f:
    f.write(text)
  _gfile().rename(tmp, path, overwrite=True)


def record_config(config, workdir: str, changes=()) -> None:
  """Writes WORKDIR/config.json (process 0), keeping a replaced one as config.<n>.json when `changes` are given."""
  if jax.process_index() != 0:
    return
  _gfile().makedirs(workdir)
  path = join(workdir, CONFIG_FILE)
  if changes and _gfile().exists(path):
    log.warning('Resuming %s with a changed config (%s); the old one is kept as %s.', workdir,
                ', '.join(k for k, _, _ in changes), _keep_old(path))
  _write_json(path, config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


def check_and_record_config(config, workdir: str, *, allow_change: bool = False) -> None:
  """`check_config`, then `record_config`."""
  record_config(config, workdir, check_config(config, workdir, allow_change=allow_change))


def record_class_names(workdir: str, class_names) -> None:
  """Writes WORKDIR/class_names.json (process 0): the label names of the run's dataset, index = label."""
  if jax.process_index() != 0:
    return
  _gfile().makedirs(workdir)
  _write_json(join(workdir, CLASS_NAMES_FILE), json.dumps(list(class_names), indent=0) + '\n')


def read_class_names(workdir: str) -> list[str] | None:
  """The label names a run recorded, or None for a workdir without them."""
  path = join(workdir, CLASS_NAMES_FILE)
  if not _gfile().exists(path):
    return None
  with _gfile().GFile(path) as f:
    return json.load(f)
