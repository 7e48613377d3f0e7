"""Few-shot probes of a pretrained model outside training (what launch.transfer measures first)."""

import jax

from vit_jax import evaluators, sharding
from vit_jax.training import state


def probe_pretrained(config) -> dict[str, float]:
  """The few-shot probes of `config` (its config.fewshot) on the model of config.pretrained_path,
  outside training: what launch.transfer measures of a pretrained model, under the names that
  training logs (fewshot/<dataset>_<k>shot). The classification head is not used."""
  mesh = sharding.make_mesh(config.mesh)
  setup = state.Setup.create(config, max(config.num_classes, 1), mesh)
  with jax.set_mesh(mesh):
    params = setup.with_pretrained(setup.init())['params']
    entry = evaluators.default_evals(config)['fewshot']
    return evaluators.make('fewshot', entry, config, setup.model, mesh).run(params)
