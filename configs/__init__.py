"""ml_collections config files for vit_jax (also installed, so `--config` files can import `configs.common`)."""
