"""Local TFDS datasets: importing this package registers their builders with TFDS."""

from vit_jax.data.datasets import (
  imagenet21k,  # noqa: F401  (registers `imagenet21k`)
  sklearn_digits,  # noqa: F401  (registers `sklearn_digits`)
)
