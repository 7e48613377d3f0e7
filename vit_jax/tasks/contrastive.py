"""Image-text objectives and metrics over a global batch of paired embeddings (LiT, SigLIP).

Embeddings are L2-normalised, [B, D] for images and for texts, pair i being image i with text i. The
losses take the whole global batch: under `jax.jit` with the batch sharded over a mesh, XLA gathers
what each device needs, so the value is the same on 1 device, 8 devices or several processes.
  * `softmax_loss` (LiT, CLIP): logits = t * zimg . ztxt^T; the mean of the image->text and
    text->image cross-entropies with the matching pair as the label.
  * `sigmoid_loss` (SigLIP): logits = t * zimg . ztxt^T + b; every pair is a binary problem,
    positive on the diagonal: -sum(log sigmoid(label * logits)) / B.
The zero-shot classifier, the one rule that the evaluator (vit_jax/evaluators/zeroshot.py, jitted)
and predict (vit_jax/inference/zeroshot.py, NumPy float64) both use: each class name is put in every
prompt template, a class's embedding is the normalised mean of its prompts' (normalised) text
embeddings (`class_embeddings`), and an image's logits are t * zimg . zclass^T (`zeroshot_logits`).
Metrics (NumPy, on the host, over a whole split):
  * `recall_at_k`: image->text and text->image retrieval (a caption's image given by
    `image_of_text`, so an image may have several captions);
  * `zeroshot_accuracy`: the share of images whose nearest class embedding is their label's.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def similarities(zimg, ztxt, t, b=0.0):
  """[B_img, B_txt] float32 logits t * zimg . ztxt^T + b."""
  return t * jnp.einsum('id,jd->ij', zimg.astype(jnp.float32), ztxt.astype(jnp.float32)) + b


def softmax_loss(zimg, ztxt, t):
  """LiT's contrastive loss (module doc): a scalar, the mean of both directions' cross-entropies."""
  logits = similarities(zimg, ztxt, t)
  image_to_text = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=1)))
  text_to_image = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=0)))
  return (image_to_text + text_to_image) / 2


def sigmoid_loss(zimg, ztxt, t, b):
  """SigLIP's loss (module doc): a scalar, summed over all B x B pairs and divided by B."""
  logits = similarities(zimg, ztxt, t, b)
  labels = 2.0 * jnp.eye(logits.shape[0], logits.shape[1]) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / logits.shape[0]


def recall_at_k(zimg, ztxt, image_of_text=None, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """{'img2txt/recall@k', 'txt2img/recall@k'}: the share of images with one of their captions among
  their k nearest texts, and of texts whose image is among their k nearest images.
  `image_of_text[j]` is text j's image (default: text j belongs to image j)."""
  zimg, ztxt = np.asarray(zimg, np.float64), np.asarray(ztxt, np.float64)
  owner = np.arange(len(ztxt)) if image_of_text is None else np.asarray(image_of_text)
  if owner.shape != (len(ztxt),) or owner.min(initial=0) < 0 or owner.max(initial=0) >= len(zimg):
    raise ValueError(
      f'image_of_text must give each of the {len(ztxt)} texts an image in [0, {len(zimg)}).'
    )
  sim = zimg @ ztxt.T  # [images, texts]
  # Rank of the best match: how many candidates score strictly higher (ties go to the match).
  own = owner[None, :] == np.arange(len(zimg))[:, None]  # [images, texts]: text j is image i's.
  best_own_text = np.where(own, sim, -np.inf).max(axis=1)
  img_rank = (sim > best_own_text[:, None]).sum(axis=1)
  txt_rank = (sim.T > sim[owner, np.arange(len(ztxt))][:, None]).sum(axis=1)
  out = {}
  for k in ks:
    out[f'img2txt/recall@{k}'] = float(np.mean(img_rank < k))
    out[f'txt2img/recall@{k}'] = float(np.mean(txt_rank < k))
  return out


def class_embeddings(ztxt, num_classes: int):
  """[classes, D]: each class's embedding, the normalised mean of its prompts' embeddings `ztxt`
  [classes * prompts, D] (class-major: vit_jax/data/captions.py's `prompt_texts`). NumPy arrays
  give NumPy (in their dtype); JAX arrays, traced ones too, give JAX."""
  xp = jnp if isinstance(ztxt, jax.Array) else np
  z = ztxt.reshape(num_classes, -1, ztxt.shape[-1]).mean(axis=1)
  return z / xp.maximum(xp.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def zeroshot_logits(zimg, zclass, temperature, bias=0.0):
  """[images, classes]: temperature * zimg . zclass^T + bias (the model's exp(t), and its `b` with
  the sigmoid loss; a softmax over the classes gives the probabilities, or with SigLIP's bias each
  logit's sigmoid), in the arrays' own kind and dtype."""
  return temperature * zimg @ zclass.T + bias


def zeroshot_accuracy(zimg, zclass, labels) -> float:
  """The share of images whose most similar class embedding (`zclass` [classes, D]) is their
  label's."""
  logits = zeroshot_logits(np.asarray(zimg, np.float64), np.asarray(zclass, np.float64), 1.0)
  return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))
