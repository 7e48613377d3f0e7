"""Image-text retrieval of a LiT model on one captioned split (config.lit.captions): recall@1/5/10
from images to texts and from texts to images (vit_jax/tasks/contrastive.py's `recall_at_k`; an
image with several captions is found by any of them). Every image of the split counts once on any
number of hosts: the padded eval batches carry each row's record index, and the embeddings come back
whole on every process (replicated) before the metric is computed on the host. Metrics:
img2txt/recall@k and txt2img/recall@k.
"""

import jax
import numpy as np

from vit_jax import sharding
from vit_jax.data import captions, input_pipeline, preprocess
from vit_jax.evaluators import common
from vit_jax.tasks import contrastive

KS = (1, 5, 10)


class RetrievalEvaluator:
  """Recall@k both ways on `split`, a captioned split (default: the first of config.eval_split)."""

  def __init__(self, *, config, model, mesh, split: str = ''):
    config = common.one_split(config, split)
    self._config = config
    self._batch_shard = sharding.batch_sharding(mesh)
    self._replicated = sharding.replicated(mesh)
    records = input_pipeline.open_split(config, config.eval_split).records
    texts = captions.record_texts(config, records)
    self._image_of_text = np.array([i for i, image_texts in enumerate(texts) for _ in image_texts])
    self._tokens = captions.of_run(config).tokenizer(
      [t for image_texts in texts for t in image_texts]
    )
    self._num_images = len(texts)
    self._images = jax.jit(
      lambda params, batch: (
        model.apply({'params': params}, images=preprocess.to_float(batch['image']))[0],
        batch['index'],
      ),
      # One program per batch (no eager ops: issue 31).
      out_shardings=self._replicated,
    )
    self._texts = jax.jit(
      lambda params, tokens: model.apply({'params': params}, tokens=tokens)[1],
      out_shardings=self._replicated,
    )

  def _text_embeddings(self, params) -> np.ndarray:
    size = self._config.eval_batch_size
    out = []
    for start in range(0, len(self._tokens), size):
      chunk = self._tokens[start : start + size]
      padded = np.zeros((size,) + chunk.shape[1:], chunk.dtype)
      padded[: len(chunk)] = chunk
      out.append(
        np.asarray(self._texts(params, jax.device_put(padded, self._replicated)))[: len(chunk)]
      )
    return np.concatenate(out)

  def run(self, params) -> dict[str, float]:
    zimg = None
    for batch in input_pipeline.device_batches(self._config, self._batch_shard, train=False):
      z, index = (np.asarray(x) for x in self._images(params, batch))
      if zimg is None:
        zimg = np.zeros((self._num_images, z.shape[1]), np.float32)
      real = index >= 0
      zimg[index[real]] = z[real]
    return contrastive.recall_at_k(zimg, self._text_embeddings(params), self._image_of_text, ks=KS)
