"""Few-shot probes of a pretrained model outside training (what launch.transfer measures first)."""
import jax

from vit_jax import sharding
from vit_jax.evaluators.fewshot import FewShotEvaluator
from vit_jax.training import state


def probe_pretrained(config) -> dict[str, float]:
  """The few-shot probes of `config` (its config.fewshot) on the model of config.pretrained_path, outside training:
  what launch.transfer measures of a pretrained model. The classification head is not used."""
  mesh = sharding.make_mesh(config.mesh)
  setup = state.Setup.create(config, max(config.num_classes, 1), mesh)
  with jax.set_mesh(mesh):
    params = setup.with_pretrained(setup.init())['params']
    return FewShotEvaluator(config=config, model=setup.model, mesh=mesh).run(params)
