"""vision_transformer's `vit_jax.models_lit` import path: LiT models (vit_jax/models/lit.py), so
code written for the reference (`from vit_jax import models_lit; models_lit.LitModel(...)`) runs
unchanged."""

from vit_jax.data.preprocess import PreprocessImages  # noqa: F401
from vit_jax.models.bert import BertModel  # noqa: F401
from vit_jax.models.lit import BASE_PATH, LitModel, TextTransformer  # noqa: F401
