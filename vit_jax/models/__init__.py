"""ViT model family: `VisionTransformer` and the preset registry."""
from vit_jax.models.vit import CLASSIFIERS, MODEL_NAMES, VisionTransformer, get_model_config, token_grid, token_pixels

__all__ = ['CLASSIFIERS', 'MODEL_NAMES', 'VisionTransformer', 'get_model_config', 'token_grid', 'token_pixels']
