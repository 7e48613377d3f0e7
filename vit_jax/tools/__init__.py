"""Command-line helpers that need no accelerator (e.g. `python -m vit_jax.tools.memory_plan`)."""
