"""Zero-shot classification accuracy of a LiT model on one split: the text tower embeds every class
name in every caption template (vit_jax/data/captions.py, the run's own templates and names), and
each image is classified by the zero-shot rule of vit_jax/tasks/contrastive.py (`class_embeddings`,
`zeroshot_logits`; predict's too). Counted exactly as classification is
(vit_jax/evaluators/common.py: padded batches with a mask, totals on device), so the metrics are
accuracy, top5 (>= 5 classes), loss (the softmax cross-entropy of exp(t) * zimg . zclass) and
num_examples.
"""

import functools

import jax
import numpy as np

from vit_jax import sharding
from vit_jax.data import captions as captions_lib
from vit_jax.data import input_pipeline
from vit_jax.evaluators import common as evaluate
from vit_jax.tasks import contrastive


def has_classes(config) -> bool:
  """Whether the run's data has class labels to classify zero-shot (image-text data from TFDS may
  have none)."""
  return input_pipeline.get_info(config).num_classes >= 2


class ZeroShotEvaluator:
  """Zero-shot accuracy (and the rest of classification's metrics) on `split` (default: the first
  split of config.eval_split)."""

  def __init__(self, *, config, model, mesh, split: str = ''):
    self._config = evaluate.one_split(config, split)
    self._batch_shard = sharding.batch_sharding(mesh)
    replicated = sharding.replicated(mesh)
    self._replicated = replicated
    captions = captions_lib.of_run(self._config)
    num_classes = len(captions.names)
    self._prompts = captions.prompts()

    def class_embeddings(params, prompts):
      ztxt = model.apply({'params': params}, tokens=prompts)[1]
      return contrastive.class_embeddings(ztxt, num_classes)

    def logits(params_and_classes, images):
      params, zclass = params_and_classes
      zimg, _, out = model.apply({'params': params}, images=images)
      return contrastive.zeroshot_logits(zimg, zclass, out['t'][0])

    self._classes = jax.jit(class_embeddings, out_shardings=replicated)
    self._step = jax.jit(evaluate.make_eval_step(logits), out_shardings=replicated)
    self._zeros = jax.jit(functools.partial(evaluate.zeros, num_classes), out_shardings=replicated)

  def run(self, params) -> dict[str, float]:
    prompts = jax.device_put(np.asarray(self._prompts), self._replicated)
    zclass = self._classes(params, prompts)
    batches = input_pipeline.device_batches(self._config, self._batch_shard, train=False)
    return evaluate.evaluate(self._step, (params, zclass), batches, self._zeros())
