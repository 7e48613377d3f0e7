"""Zero-shot classification accuracy of a LiT model on one split: the text tower embeds every class name in every
caption template (vit_jax/data/captions.py, the run's own templates and names), each class's embedding is the normalised
mean of its prompts' (vit_jax/inference/zeroshot.py's rule), and each image is classified by its nearest class embedding.
Counted exactly as classification is (vit_jax/evaluators/common.py: padded batches with a mask, totals on device), so the
metrics are eval/accuracy, eval/top5 (>= 5 classes) and eval/loss (the softmax cross-entropy of exp(t) * zimg . zclass).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import sharding
from vit_jax.data import input_pipeline
from vit_jax.evaluators import common as evaluate
from vit_jax.data import captions as captions_lib


def class_embeddings(model, params, prompts, num_classes: int):
  """[classes, dim]: the normalised mean of each class's normalised prompt embeddings (prompts class-major)."""
  ztxt = model.apply({'params': params}, tokens=prompts)[1]
  z = ztxt.reshape(num_classes, -1, ztxt.shape[-1]).mean(axis=1)
  return z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def has_classes(config) -> bool:
  """Whether the run's data has class labels to classify zero-shot (image-text data from TFDS may have none)."""
  return input_pipeline.get_info(config).num_classes >= 2


class ZeroShotEvaluator:
  """Zero-shot accuracy on `config.eval_split` (a single split) every `config.eval_every_steps` steps."""

  def __init__(self, *, name: str, prefix: str, config, model, mesh):
    self.name, self.every_steps = name, config.eval_every_steps
    self._prefix, self._config = prefix, config
    self._batch_shard = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)
    self._replicated = replicated
    captions = captions_lib.of_run(config)
    self._num_classes = len(captions.names)
    self._prompts = captions.prompts()

    def logits(params_and_classes, images):
      params, zclass = params_and_classes
      zimg, _, out = model.apply({'params': params}, images=images)
      return out['t'][0] * zimg @ zclass.T

    self._classes = jax.jit(functools.partial(class_embeddings, model, num_classes=self._num_classes),
                            out_shardings=replicated)
    self._step = jax.jit(evaluate.make_eval_step(logits), out_shardings=replicated)
    self._zeros = jax.jit(functools.partial(evaluate.zeros, self._num_classes), out_shardings=replicated)

  def run(self, params) -> dict[str, float]:
    prompts = jax.device_put(np.asarray(self._prompts), self._replicated)
    zclass = self._classes(params, prompts)
    batches = input_pipeline.device_batches(self._config, self._batch_shard, train=False)
    result = evaluate.evaluate(self._step, (params, zclass), batches, self._zeros())
    return {self._prefix + key[len('eval/'):]: value for key, value in result.items()}
