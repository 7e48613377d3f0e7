"""Exact classification accuracy, top-5 and loss on one split: padded batches with a mask, so every example counts
once on any number of hosts (vit_jax/evaluate.py)."""
import functools

import jax

from vit_jax import evaluate, input_pipeline, sharding


class ClassificationEvaluator:
  """Evaluates `config.eval_split` (a single split) every `config.eval_every_steps` steps."""

  def __init__(self, *, name: str, prefix: str, config, model, mesh):
    self.name, self.every_steps = name, config.eval_every_steps
    self._prefix, self._config = prefix, config
    self._batch_shard = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)
    self._step = jax.jit(evaluate.make_eval_step(model, loss=config.loss), out_shardings=replicated)
    self._zeros = jax.jit(functools.partial(evaluate.zeros, model), out_shardings=replicated)

  def batches(self):
    config, processes = self._config, jax.process_count()
    ds = input_pipeline.eval_dataset(config, local_batch_size=config.eval_batch_size // processes,
                                     process_index=jax.process_index(), process_count=processes)
    return input_pipeline.prefetch_to_device(iter(ds), config.prefetch, self._batch_shard)

  def run(self, params) -> dict[str, float]:
    result = evaluate.evaluate(self._step, params, self.batches(), self._zeros())
    return {self._prefix + key[len('eval/'):]: value for key, value in result.items()}
