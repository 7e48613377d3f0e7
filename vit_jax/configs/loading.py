"""Reading configs: a command line's `--config=FILE[:ARGS]` and its `--config.KEY=VALUE` overrides
(ml_collections' config_flags, as vit_jax.main parses them), one override from a sweep, and a run's
stored config.json over the current defaults (vit_jax/configs/common.py)."""

import ast
import logging

from absl import flags
import ml_collections
from ml_collections import config_flags

from vit_jax.configs import check, common, fields, presets

log = logging.getLogger(__name__)

# The defaults of a stored model's fields that no preset gives, per family (presets.family; a ViT's:
# the default).
FAMILY_DEFAULTS = {'mixer': 'Mixer-B_16', 'lit': 'LiT-B16B'}
# The defaults of a SigLIP-shaped model of its own name (configs/siglip.py): one with an
# `npz_layout`.
SIGLIP_DEFAULT = 'SigLIP-B_16-224'


def _tuples(value):
  """JSON lists -> tuples, recursively (config values hold tuples: patch sizes, mesh axes,
  shots)."""
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def _overlay(
  node: ml_collections.ConfigDict, stored: dict, prefix: str, dropped: list[str]
) -> None:
  for key, value in stored.items():
    if key not in node:
      dropped.append(prefix + key)
    elif isinstance(node[key], ml_collections.ConfigDict) and isinstance(value, dict):
      _overlay(node[key], value, f'{prefix}{key}.', dropped)
    elif isinstance(value, dict):  # A subtree over a None default (a hybrid's model.resnet).
      node[key] = ml_collections.ConfigDict(_tuples(value))
    else:
      node[key] = _tuples(value)


def from_dict(stored: dict) -> ml_collections.ConfigDict:
  """A config saved as JSON (a run's config.json) over the current defaults, locked: a field it
  lacks keeps its default, a field the code no longer has is left out (logged). The model's defaults
  are its preset's when `model.model_name` names a preset of the stored model's family
  (presets.family), else that family's default: the default model's, or FAMILY_DEFAULTS' (a
  SigLIP-shaped LiT model's, SIGLIP_DEFAULT).
  config.evals is taken whole (the run's own entries)."""
  config = common.get_config()
  stored = dict(stored)
  config.evals = ml_collections.ConfigDict(_tuples(stored.pop('evals', {})))
  model = dict(stored.pop('model', {}))
  family = presets.family(model)
  name = model.get('model_name')
  if (
    name in presets.MODEL_NAMES + tuple(presets.LIT_PRESETS)
    and presets.family(presets.get_model_config(name)) == family
  ):
    config.model = presets.get_model_config(name)
  elif family == 'lit' and 'npz_layout' in model:
    config.model = presets.get_model_config(SIGLIP_DEFAULT)
  elif family != 'vit':
    config.model = presets.get_model_config(FAMILY_DEFAULTS[family])
  if family == 'lit':  # The text tower's fields depend on the tower: taken whole.
    config.model.text = ml_collections.ConfigDict(
      _tuples(model.pop('text', config.model.text.to_dict()))
    )
  dropped = []
  _overlay(config.model, model, 'model.', dropped)
  _overlay(config, stored, '', dropped)
  if dropped:
    log.info(
      'Fields of the stored config that this version does not have (left out): %s.',
      ', '.join(dropped),
    )
  return config


def override(config: ml_collections.ConfigDict, key: str, value) -> None:
  """Sets the dotted field `key` in place. A string for a field that is not a string (a
  --config.KEY=VALUE or --sweep value) is read as a Python literal first, as the command line reads
  it: '32' -> 32, '(16, 16)' -> (16, 16)."""
  *parents, leaf = key.split('.')
  node = config
  for part in parents:
    node = node[part]
  if isinstance(value, str) and not isinstance(node.get(leaf), str):
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass
  node[leaf] = value


def from_command_line(spec: str, override_args=()) -> ml_collections.ConfigDict:
  """The config that `python -m vit_jax.main --config=SPEC ARGS...` gets (`override_args` are its
  --config.KEY=VALUE arguments), parsed by the same ml_collections config_flags, locked. Raises
  check.UnknownFieldError for an unknown field (with the field to use) or a model field of the other
  family (a ViT's on a Mixer), check.ConfigError for an override or a config file that does not
  parse (naming it)."""
  unknown = [
    a.split('=', 1)[0][len('--config.') :] for a in override_args if a.startswith('--config.')
  ]
  unknown = [name for name in unknown if not check.is_known(name)]
  if unknown:
    raise check.UnknownFieldError('\n'.join(check.unknown_message(name) for name in unknown))
  values = flags.FlagValues()
  argv = ['vit_jax.main', f'--config={spec}', *override_args]
  try:
    config_flags.DEFINE_config_file(
      'config', spec, '', flag_values=values, lock_config=True, sys_argv=argv
    )
    values(argv)
    return values.config
  # (config_flags raises many kinds; all are the input's fault)
  except Exception as e:  # pylint: disable=broad-except
    root = e
    while root.__cause__ or root.__context__:
      root = root.__cause__ or root.__context__
    names = [
      a.split('=', 1)[0][len('--config.') :]
      for a in override_args
      if a.startswith('--config.model.')
    ]
    other = fields.other_family(from_command_line(spec).model, names) if names else []
    if other:  # A known field of the other model family (a ViT's on a Mixer config, say): say so.
      raise check.UnknownFieldError('\n'.join(other)) from e
    text = ' '.join(str(e).split())
    cause = ' '.join(str(root).split())
    raise check.ConfigError(
      text if cause in text else f'{text}: {type(root).__name__}: {cause}'
    ) from e
