"""Which config fields exist: the fields of `common.get_config()` and, under `model.`, those of
every preset of the model's family: a ViT's (so a hybrid's `model.resnet.*` is known although the
default model has `resnet=None`), or an MLP-Mixer's when the model config is one
(`presets.is_mixer`: it has `num_blocks`). A field of the other family is named as such. A field
that google-research/vision_transformer's configs use gets the field to use here instead
(`REFERENCE_NAMES`); any other unknown field gets the closest known names. `check.validate` starts
with `check_fields`; vit_jax/configs/check.py re-exports what callers use.
"""

import difflib
import functools
from typing import Any

from vit_jax import errors
from vit_jax.configs import common, presets

# vision_transformer's config fields -> what to set here.
REFERENCE_NAMES = {
  'batch': 'batch_size',
  'batch_eval': 'eval_batch_size',
  'base_lr': 'schedule.base_lr',
  'decay_type': 'schedule.decay_type',
  'warmup_steps': 'schedule.warmup_steps',
  'grad_norm_clip': 'optimizer.grad_clip_norm',
  'optim_dtype': 'optimizer.accumulator_dtype',
  'pretrained_dir': 'pretrained_path (the .npz file itself, e.g. DIR/ViT-B_16.npz)',
  'model_or_filename': "pretrained_path='augreg:<model or file name>' (see vit_jax/augreg.py)",
  'eval_every': 'eval_every_steps',
  'progress_every': 'log_every_steps',
  'checkpoint_every': 'checkpoint_every_steps',
  'pp.crop': 'image_size',
  'pp.resize': 'image_size with pp.eval_crop_fraction (eval) and pp.crop (train)',
  'pp.train': 'train_split',
  'pp.test': 'eval_split',
  'trainer': 'nothing: vit_jax.main always trains',
}
# Fields that vit_jax had and dropped -> why nothing replaces them.
REMOVED = {
  'input_shards': 'nothing: the global batch sequence is the '
  'same for any process count by construction',
  'shuffle_buffer': 'nothing: every epoch is a global shuffle of all examples',
}
# Common names from other codebases -> ours.
ALIASES = {
  'learning_rate': 'schedule.base_lr',
  'lr': 'schedule.base_lr',
  'weight_decay': 'optimizer.weight_decay',
  'wd': 'optimizer.weight_decay',
  'num_steps': 'total_steps',
  'steps': 'total_steps',
  'warmup': 'schedule.warmup_steps',
  'grad_clip': 'optimizer.grad_clip_norm',
  'model_name': 'model.model_name',
}


class UnknownFieldError(errors.UserError, AttributeError, ValueError):
  """A config holds a field that no part of vit_jax reads."""


def flat_keys(config, prefix: str = '') -> list[str]:
  """Dotted names of every leaf of a (nested) ConfigDict or dict; a None subtree is a leaf."""
  out = []
  for key, value in config.items():
    name = f'{prefix}{key}'
    if hasattr(value, 'items'):
      out += flat_keys(value, name + '.') or [name]
    else:
      out.append(name)
  return out


FAMILIES = ('vit', 'mixer', 'lit')


@functools.cache
def model_fields(family: str) -> frozenset[str]:
  """The `model.` fields (dotted, with the prefix) of every preset of a family (`presets.family`):
  'vit' (ViTs and hybrids), 'mixer', or 'lit' (the LiT presets' fields, with a ViT's fields under
  `model.image.` and both text towers' under `model.text.`)."""
  if family == 'lit':
    fields = {
      f
      for name in presets.LIT_PRESETS
      for f in flat_keys(presets.get_model_config(name), 'model.')
      if not f.startswith('model.image.') or name in presets.SIGLIP_PRESETS
    }
    return frozenset(
      fields
      | {'model.image.' + f[len('model.') :] for f in model_fields('vit')}
      | {'model.text.dropout_rate'}
    )
  configs = [presets.get_model_config(name) for name in presets.MODEL_NAMES]
  return frozenset(
    f for c in configs if presets.family(c) == family for f in flat_keys(c, 'model.')
  )


@functools.cache
def known_fields() -> frozenset[str]:
  """The shared defaults' fields and the `model.` fields of every preset, of every family."""
  return frozenset(set(flat_keys(common.get_config())).union(*(model_fields(f) for f in FAMILIES)))


def is_known(name: str) -> bool:
  """A known leaf (dotted name), or a known subtree that a preset may fill (e.g. model.resnet, None
  by default), or a field of an entry of config.evals (the config names the entries;
  vit_jax/configs/evals.py checks their options)."""
  known = known_fields()
  return name in known or any(k.startswith(name + '.') for k in known) or name.startswith('evals.')


def suggestion(name: str) -> str:
  """What to write instead of the unknown field `name` (dotted), as a phrase."""
  if name in REFERENCE_NAMES:
    return f'use {REFERENCE_NAMES[name]} (vision_transformer calls it {name!r})'
  if name in REMOVED:
    return f'the field was removed; use {REMOVED[name]}'
  leaf = name.rsplit('.', 1)[-1]
  if name in ALIASES or leaf in ALIASES:
    return f'did you mean {ALIASES.get(name) or ALIASES[leaf]}?'
  known = sorted(known_fields())
  by_leaf = {}
  for field in known:
    by_leaf.setdefault(field.rsplit('.', 1)[-1], field)
  close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
  close += [
    by_leaf[k]
    for k in difflib.get_close_matches(leaf, list(by_leaf), n=3, cutoff=0.75)
    if by_leaf[k] not in close
  ]
  if close:
    return 'did you mean ' + ' or '.join(close[:3]) + '?'
  return 'the fields are listed, with comments, in vit_jax/configs/common.py'


def unknown_message(name: str) -> str:
  """One line: the unknown field, that configs are locked, and what to use instead."""
  return (
    f'Unknown config field {name!r}: configs are locked to the fields of '
    f'vit_jax/configs/common.py; {suggestion(name)}'
  )


_FAMILY_NAMES = {
  'vit': ('a ViT', 'it has no num_blocks or text_model'),
  'mixer': ('an MLP-Mixer', 'it has num_blocks'),
  'lit': ('a LiT image-text model', 'it has text_model'),
}
_FAMILY_START = {
  'vit': 'start from a ViT preset (--config=configs/vit.py:ViT-B_16,<dataset>)',
  'mixer': 'start from a Mixer preset (config.model = '
  "vit_jax.models.get_model_config('Mixer-B_16'), or --config=configs/vit.py:Mixer-B_16,<dataset>)",
  'lit': 'start from a LiT config (--config=configs/lit.py)',
}


def family_message(name: str, family: str) -> str:
  """One line: `name` is not a `model.` field of `family` (the config's, `presets.family`), with the
  family whose field it is and how to start from one, or (for a Mixer) the fields it takes."""
  kind, why = _FAMILY_NAMES[family]
  owners = [f for f in FAMILIES if f != family and name in model_fields(f)]
  if family == 'mixer':
    listed = ', '.join(sorted(f[len('model.') :] for f in model_fields(family)))
    return (
      f'config.{name} is a ViT field, but config.model is '
      f'{kind} ({why}), which takes model.{{{listed}}} only.'
    )
  if owners:
    return (
      f'config.{name} is {_FAMILY_NAMES[owners[0]][0]} field, but '
      f'config.model is {kind} ({why}): {_FAMILY_START[owners[0]]}.'
    )
  return f'config.{name} is not a field of config.model, {kind} ({why}).'


def other_family(model_config, names) -> list[str]:
  """A `family_message` for each of the dotted `names` that is not a `model.` field of
  `model_config`'s family."""
  family = presets.family(model_config)
  fields = model_fields(family)
  return [
    family_message(name, family)
    for name in names
    if name.startswith('model.')
    and name not in fields
    and not any(f.startswith(name + '.') for f in fields)
  ]


def check_fields(config: Any) -> None:
  """Raises UnknownFieldError naming every field of `config` that the shared defaults do not define,
  and every `model.` field of the other model family than the config's."""
  unknown = [name for name in flat_keys(config) if not is_known(name)]
  if unknown:
    raise UnknownFieldError('\n'.join(unknown_message(name) for name in unknown))
  if config.get('model') is not None:
    other = other_family(config['model'], flat_keys(config['model'], 'model.'))
    if other:
      raise UnknownFieldError('\n'.join(other))
