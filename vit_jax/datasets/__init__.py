"""Local TFDS datasets: importing this package registers their builders with TFDS."""
from vit_jax.datasets import sklearn_digits  # noqa: F401  (registers `sklearn_digits`)
