"""Exact classification accuracy, top-5 and loss on one split: padded batches with a mask, so every
example counts once on any number of hosts (vit_jax/evaluators/common.py)."""

import functools

import jax

from vit_jax import sharding
from vit_jax.data import input_pipeline
from vit_jax.evaluators import common as evaluate


class ClassificationEvaluator:
  """accuracy, top5 (>= 5 classes), loss and num_examples of a classifier on `split` (default: the
  first split of config.eval_split)."""

  def __init__(self, *, config, model, mesh, split: str = ''):
    self._config = evaluate.one_split(config, split)
    self._batch_shard = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)
    self._step = jax.jit(
      evaluate.make_eval_step(evaluate.classifier_logits(model), loss=config.loss),
      out_shardings=replicated,
    )
    self._zeros = jax.jit(
      functools.partial(evaluate.zeros, model.num_classes), out_shardings=replicated
    )

  def run(self, params) -> dict[str, float]:
    batches = input_pipeline.device_batches(self._config, self._batch_shard, train=False)
    return evaluate.evaluate(self._step, params, batches, self._zeros())
