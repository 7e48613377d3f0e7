"""ViT and MLP-Mixer models: `VisionTransformer`, `MlpMixer`, the preset registry and `get_model`
(vision_transformer's API)."""
from vit_jax.models.mixer import MlpMixer
from vit_jax.models.presets import MODEL_NAMES, get_model_config, is_mixer
from vit_jax.models.vit import CLASSIFIERS, VisionTransformer, token_grid, token_pixels


def model_class(model_config) -> type[VisionTransformer] | type[MlpMixer]:
  """The module class that takes `model_config`'s fields: MlpMixer for a Mixer's config, else VisionTransformer."""
  return MlpMixer if is_mixer(model_config) else VisionTransformer


def get_model(name: str, **kw) -> VisionTransformer | MlpMixer:
  """The model of preset `name` (e.g. 'ViT-B_16', or 'Mixer-B_16': an MlpMixer); `kw` are further arguments such
  as num_classes."""
  config = get_model_config(name)
  return model_class(config)(**config, **kw)


__all__ = ['CLASSIFIERS', 'MODEL_NAMES', 'MlpMixer', 'VisionTransformer', 'get_model', 'get_model_config',
           'is_mixer', 'model_class', 'token_grid', 'token_pixels']
