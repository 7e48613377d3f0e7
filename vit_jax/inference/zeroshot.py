"""Zero-shot classification with a LiT model: each class name is put through prompt templates
('a photo of a {}.'), the text tower embeds every prompt, and each image is classified against the
class embeddings by the rule of vit_jax/tasks/contrastive.py (`class_embeddings`, `zeroshot_logits`;
the training's evaluator uses it too), computed here in NumPy float64 (vit_jax.predict turns the
logits into its records).

`TEMPLATES` (vit_jax/data/captions.py) holds the built-in template sets: 'photo' (one prompt) and
'ensemble' (a dozen plain variations); a user passes their own as a list (`--templates=FILE`, one
per line, each with one '{}').
"""

from typing import Sequence

import jax
import numpy as np

# The prompt templates live with the captions (vit_jax/data/captions.py), which training uses too;
# here for callers.
from vit_jax.data.captions import (  # noqa: F401
  TEMPLATES,
  PromptError,
  check_templates,
  prompt_texts,
  read_templates,
)
from vit_jax.inference import trained as inference
from vit_jax.tasks import contrastive


def loss(variables) -> str:
  """'sigmoid' for a model trained with SigLIP's sigmoid loss (it has the bias `b`): each class's
  probability is sigmoid(t * zimg . zclass + b), as big_vision's SigLIP demo computes; else
  'softmax' (over the classes)."""
  return 'sigmoid' if 'b' in variables['params'] else 'softmax'


def classifier(
  model,
  variables,
  tokenizer,
  class_names: Sequence[str],
  templates: Sequence[str],
  *,
  batch_size: int = 64,
):
  """`images -> logits [n, classes]` of a LitModel (`model`, its `variables` and `tokenizer`)
  against `class_names` through `templates`, for images [n <= batch_size, S, S, 3] in [-1, 1]
  (`model.get_image_preprocessing()`). With a sigmoid-loss bias `b` (SigLIP) the logits include it
  (`loss(variables)` is then 'sigmoid': their sigmoids are the probabilities)."""
  embed_text = jax.jit(lambda v, tokens: model.apply(v, tokens=tokens)[1])
  embed_image = jax.jit(lambda v, images: model.apply(v, images=images)[0])

  def embed_texts(texts):
    tokens = tokenizer(texts)
    chunks = [tokens[i : i + batch_size] for i in range(0, len(tokens), batch_size)]
    return np.concatenate(
      [
        np.asarray(embed_text(variables, inference.pad_batch(c, batch_size)))[: len(c)]
        for c in chunks
      ]
    )

  ztxt = embed_texts(prompt_texts(class_names, check_templates(templates)))
  zclass = contrastive.class_embeddings(np.asarray(ztxt, np.float64), len(class_names))
  temperature = float(np.exp(np.asarray(variables['params']['t']).reshape(-1)[0]))
  bias = float(np.asarray(variables['params'].get('b', 0.0)).reshape(-1)[0])

  def logits(images):
    zimg = np.asarray(embed_image(variables, inference.pad_batch(images, batch_size)))[
      : len(images)
    ]
    return contrastive.zeroshot_logits(np.asarray(zimg, np.float64), zclass, temperature, bias)

  return logits
