"""Vision Transformers in JAX/Flax."""
