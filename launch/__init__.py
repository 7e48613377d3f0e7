"""Launchers that start the same `python -m vit_jax.main ...` on Cloud TPU VMs (tpu), SLURM (slurm),
local slots (sweep) or SkyPilot (sky), from a clone's root: `python -m launch.<tool> --help`. Not an
installed package."""
