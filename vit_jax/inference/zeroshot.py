"""Zero-shot classification with a LiT model: each class name is put through prompt templates ('a photo of a {}.'),
the text tower embeds every prompt, a class's embedding is the mean of its prompts' normalised embeddings
(normalised again), and an image's logits are exp(t) * zimg . zclass (vit_jax.predict turns them into its records).

`TEMPLATES` (vit_jax/data/captions.py) holds the built-in template sets: 'photo' (one prompt) and 'ensemble' (a dozen
plain variations); a user passes their own as a list (`--templates=FILE`, one per line, each with one '{}').
"""
from typing import Sequence

import numpy as np

# The prompt templates live with the captions (vit_jax/data/captions.py), which training uses too; here for callers.
from vit_jax.data.captions import TEMPLATES, PromptError, check_templates, read_templates  # noqa: F401


def class_embeddings(embed_texts, class_names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
  """[classes, dim]: for each class, the normalised mean of its prompts' normalised text embeddings.
  `embed_texts(list of str) -> [n, dim]` gives normalised embeddings (LiT's ztxt)."""
  templates = check_templates(templates)
  prompts = [t.format(name) for name in class_names for t in templates]
  z = np.asarray(embed_texts(prompts), np.float64).reshape(len(class_names), len(templates), -1).mean(axis=1)
  return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def logits(zimg, zclass, temperature: float) -> np.ndarray:
  """[images, classes]: temperature * zimg @ zclass.T (a softmax over classes gives the probabilities)."""
  return temperature * np.asarray(zimg, np.float64) @ np.asarray(zclass, np.float64).T


def classifier(model, variables, tokenizer, class_names: Sequence[str], templates: Sequence[str], *,
               batch_size: int = 64):
  """`images -> logits [n, classes]` of a LitModel (`model`, its `variables` and `tokenizer`) against `class_names`
  through `templates`, for images [n <= batch_size, S, S, 3] in [-1, 1] (`model.get_image_preprocessing()`)."""
  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax.inference import trained as inference  # pylint: disable=g-import-not-at-top
  embed_text = jax.jit(lambda v, tokens: model.apply(v, tokens=tokens)[1])
  embed_image = jax.jit(lambda v, images: model.apply(v, images=images)[0])

  def embed_texts(texts):
    tokens = tokenizer(texts)
    chunks = [tokens[i:i + batch_size] for i in range(0, len(tokens), batch_size)]
    return np.concatenate([np.asarray(embed_text(variables, inference.pad_batch(c, batch_size)))[:len(c)]
                           for c in chunks])

  zclass = class_embeddings(embed_texts, class_names, templates)
  temperature = float(np.exp(np.asarray(variables['params']['t']).reshape(-1)[0]))
  return lambda images: logits(
      np.asarray(embed_image(variables, inference.pad_batch(images, batch_size)))[:len(images)], zclass, temperature)
