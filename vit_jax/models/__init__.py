"""ViT model family: `VisionTransformer`, the preset registry and `get_model` (vision_transformer's API)."""
from vit_jax.models.presets import MODEL_NAMES, get_model_config
from vit_jax.models.vit import CLASSIFIERS, VisionTransformer, token_grid, token_pixels


def get_model(name: str, **kw) -> VisionTransformer:
  """The VisionTransformer of preset `name` (e.g. 'ViT-B_16'); `kw` are further arguments such as num_classes."""
  return VisionTransformer(**get_model_config(name), **kw)


__all__ = ['CLASSIFIERS', 'MODEL_NAMES', 'VisionTransformer', 'get_model', 'get_model_config', 'token_grid',
           'token_pixels']
