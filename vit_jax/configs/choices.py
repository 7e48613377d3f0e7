"""The values that config fields accept, and the pure readings of a config that need no JAX (the
mesh's axis sizes, the evaluation and few-shot split syntax).

The modules that act on a field import its tuple from here (vit_jax/models/vit.py's classifiers,
optim.py's optimizers, ...), and configs/check.py validates against the same tuples, so the check
and the code cannot disagree and validating a config loads no JAX.
"""

import copy
import math
from typing import Sequence

# Models (vit_jax/models/).
CLASSIFIERS = ('token', 'gap', 'map', 'unpooled', 'token_unpooled')
POSEMBS = ('learn', 'sincos2d')
ATTENTIONS = ('plain', 'xla', 'cudnn')
REMAT_POLICIES = ('none', 'full', 'dots')
TEXT_MODELS = ('bert', 'text_transformer')  # A LiT model's text towers (vit_jax/models/lit.py).
TOKENIZERS = ('bert', 'sentencepiece', 'siglip', 'siglip2')  # vit_jax/data/tokenizers.py's.

# Training (state.py, optim.py, losses.py): `dtype` (compute) and `optimizer.accumulator_dtype` take
# DTYPES.
DTYPES = ('float32', 'bfloat16')
NONFINITE_POLICIES = ('stop', 'skip')
OPTIMIZERS = ('sgd', 'adam', 'adamw')
DECAY_TYPES = ('cosine', 'linear', 'constant', 'rsqrt')
LOSSES = ('softmax', 'sigmoid')
# How image-text training computes the sigmoid loss (config.lit.sigmoid_impl;
# vit_jax/tasks/contrastive.py): 'auto' picks 'chunked' where the batch is split over > 1 device.
SIGMOID_IMPLS = ('auto', 'chunked', 'dense')

# Data (preprocess.py, sources.py).
TRAIN_CROPS = ('inception', 'pad_crop', 'resize')
EVAL_RESIZES = ('square', 'shorter_side')
BAD_IMAGE_POLICIES = ('error', 'skip')

# The device mesh (sharding.py).
AXES = ('data', 'fsdp', 'model')
BATCH_AXES = ('data', 'fsdp')
STRATEGIES = ('replicate', 'fsdp', 'tp', 'fsdp+tp')

# Evaluators (vit_jax/evaluators/, one file per type, registered there by these names): the fields
# of every config.evals entry, and each type's own options (the keywords its evaluator takes;
# configs/evals.py checks them).
EVAL_FIELDS = ('type', 'prefix', 'every_steps')
EVAL_OPTIONS = {
  'classification': ('split',),
  'zeroshot': ('split',),
  'retrieval': ('split',),
  'fewshot': ('datasets', 'shots', 'seeds', 'l2_reg'),
}
EVAL_TYPES = tuple(EVAL_OPTIONS)


def mesh_shape(
  mesh_config: Sequence[Sequence], num_devices: int
) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """Resolves config.mesh, [(name, size), ...] with at most one -1, into (names, sizes) ordered
  data, fsdp, model."""
  axes = dict((str(name), int(size)) for name, size in mesh_config)
  unknown = sorted(set(axes) - set(AXES))
  if unknown or len(axes) != len(list(mesh_config)):
    raise ValueError(
      'config.mesh has unknown or repeated axes '
      f'{unknown or list(mesh_config)}; valid axes: {AXES}.'
    )
  free = [n for n, s in axes.items() if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in axes.values()):
    raise ValueError(
      f'config.mesh {list(mesh_config)}: sizes must be positive, with at most one -1.'
    )
  fixed = math.prod(s for s in axes.values() if s != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(
        f'config.mesh {list(mesh_config)}: {num_devices} devices do not divide by {fixed}.'
      )
    axes[free[0]] = num_devices // fixed
  if math.prod(axes.values()) != num_devices:
    raise ValueError(
      f'config.mesh {list(mesh_config)} uses {math.prod(axes.values())} devices, '
      f'but there are {num_devices}.'
    )
  names = tuple(n for n in AXES if n in axes)
  return names, tuple(axes[n] for n in names)


def parse_splits(spec: str) -> list[tuple[str, str]]:
  """config.eval_split: 'test' -> [('eval', 'test')]; 'minival=train[99%:],val=validation' ->
  [('minival', ...), ('val', ...)]."""
  parts = [p.strip() for p in spec.split(',') if p.strip()]
  if not parts:
    raise ValueError(
      "config.eval_split is empty: give a split ('test') or named splits "
      "('minival=train[99%:],val=validation')."
    )
  if len(parts) == 1 and '=' not in parts[0]:
    return [('eval', parts[0])]
  out = []
  for part in parts:
    name, sep, split = part.partition('=')
    if not sep or not name.strip() or not split.strip():
      raise ValueError(
        f'config.eval_split part {part!r} is not name=split (e.g. minival=train[99%:]).'
      )
    out.append((name.strip(), split.strip()))
  names = [n for n, _ in out]
  if len(set(names)) != len(names):
    raise ValueError(f'config.eval_split repeats a name: {names}.')
  return out


def parse_fewshot_datasets(spec: str, field: str = 'fewshot.datasets') -> list[tuple[str, ...]]:
  """config.fewshot.datasets (or the `datasets` of a few-shot evaluator, config.<field>):
  'cifar100:train:test,dtd:train[:50%]:test' -> [('cifar100', 'train', 'test'), ...]."""
  out = []
  for part in (p.strip() for p in spec.split(',') if p.strip()):
    fields = part.split(':')
    if len(fields) != 3 or not all(fields):
      raise ValueError(
        f'config.{field} entry {part!r} is not name:train_split:test_split '
        '(e.g. cifar100:train:test).'
      )
    out.append(tuple(fields))
  return out


def with_split(config, split: str, **fields):
  """A copy of `config` whose eval_split is the single split `split` (and other top-level `fields`
  set)."""
  config = copy.deepcopy(config)
  config.eval_split = split
  for key, value in fields.items():
    config[key] = value
  return config
