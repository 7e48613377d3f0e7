"""Offline default: a small hybrid ViT on scikit-learn's handwritten digits (see
vit_jax/configs/default.py).

`python -m vit_jax.main` with no flags runs this config into ./runs/default. The body lives in the
package, so an installed vit_jax (no clone) has it too.
"""

from vit_jax.configs.default import get_config  # noqa: F401
