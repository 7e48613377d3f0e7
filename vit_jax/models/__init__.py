"""ViT and MLP-Mixer models: `VisionTransformer`, `MlpMixer`, the preset registry and `get_model`
(vision_transformer's API).

The preset table is vit_jax/configs/presets.py (no JAX); the Flax modules are imported on first use
(PEP 562), so code that only reads presets does not load JAX.
"""

import importlib

from vit_jax.configs.choices import CLASSIFIERS, POSEMBS
from vit_jax.configs.presets import (
  LIT_PRESETS,
  MODEL_NAMES,
  family,
  get_model_config,
  has_class_token,
  image_size_for_tokens,
  is_mixer,
  token_grid,
  token_pixels,
)

_ATTRIBUTES = {'VisionTransformer': 'vit', 'MlpMixer': 'mixer', 'LitModel': 'lit'}
# presets.family -> the model class of that family.
_FAMILY_CLASSES = {'vit': 'VisionTransformer', 'mixer': 'MlpMixer', 'lit': 'LitModel'}
_SUBMODULES = ('vit', 'blocks', 'dropout', 'resnet', 'mixer', 'lit', 'bert')


def __getattr__(name):
  if name in _ATTRIBUTES:
    return getattr(importlib.import_module(f'vit_jax.models.{_ATTRIBUTES[name]}'), name)
  if name in _SUBMODULES:
    return importlib.import_module(f'vit_jax.models.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def model_class(model_config):
  """The module class that takes `model_config`'s fields: MlpMixer for a Mixer's config, LitModel
  for a LiT model's, else VisionTransformer."""
  return __getattr__(_FAMILY_CLASSES[family(model_config)])


def get_model(name: str, **kw):
  """The model of preset `name` (e.g. 'ViT-B_16'; 'Mixer-B_16': an MlpMixer; 'LiT-B16B': a
  LitModel); `kw` are further arguments such as num_classes."""
  config = get_model_config(name)
  return model_class(config)(**config, **kw)


__all__ = [
  'CLASSIFIERS',
  'LIT_PRESETS',
  'LitModel',
  'MODEL_NAMES',
  'MlpMixer',
  'POSEMBS',
  'VisionTransformer',
  'family',
  'get_model',
  'get_model_config',
  'has_class_token',
  'image_size_for_tokens',
  'is_mixer',
  'model_class',
  'token_grid',
  'token_pixels',
]
