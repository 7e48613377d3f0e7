"""Model family: `VisionTransformer`, the preset registry and `get_model` (vision_transformer's API).

The preset table needs no JAX; the Flax modules are imported on first use (PEP 562), so configs and launch/ can read
presets without loading JAX.
"""
import importlib

from vit_jax.models.presets import MODEL_NAMES, get_model_config

_FROM_VIT = ('CLASSIFIERS', 'POSEMBS', 'VisionTransformer', 'token_grid', 'token_pixels')
_SUBMODULES = ('vit', 'blocks', 'resnet')


def __getattr__(name):
  if name in _FROM_VIT:
    return getattr(importlib.import_module('vit_jax.models.vit'), name)
  if name in _SUBMODULES:
    return importlib.import_module(f'vit_jax.models.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def get_model(name: str, **kw):
  """The VisionTransformer of preset `name` (e.g. 'ViT-B_16'); `kw` are further arguments such as num_classes."""
  from vit_jax.models.vit import VisionTransformer  # pylint: disable=g-import-not-at-top
  return VisionTransformer(**get_model_config(name), **kw)


__all__ = ['CLASSIFIERS', 'MODEL_NAMES', 'POSEMBS', 'VisionTransformer', 'get_model', 'get_model_config',
           'token_grid', 'token_pixels']
