"""Image-text objectives and metrics over a global batch of paired embeddings (LiT, SigLIP).

Embeddings are L2-normalised, [B, D] for images and for texts, pair i being image i with text i. The
losses take the whole global batch: under `jax.jit` with the batch sharded over a mesh, XLA gathers
what each device needs, so the value is the same on 1 device, 8 devices or several processes.
  * `softmax_loss` (LiT, CLIP): logits = t * zimg . ztxt^T; the mean of the image->text and
    text->image cross-entropies with the matching pair as the label.
  * `sigmoid_loss` (SigLIP): logits = t * zimg . ztxt^T + b; every pair is a binary problem,
    positive on the diagonal: -sum(log sigmoid(label * logits)) / B. `impl='chunked'` computes the
    same value and gradients without the gather, as SigLIP's paper does: under `jax.shard_map` over
    the mesh's batch axes ('data', 'fsdp'), each of the n devices keeps its L = B / n images and
    passes its texts around the ring of devices (`jax.lax.ppermute`, n - 1 times), scoring one
    [L x L] block of logits at a time (the positives: the diagonal of its own block, the first).
    Its gradients are made in the same pass (a custom VJP): each block's text gradient travels with
    the block and goes home with one more ppermute, so a device holds O(L^2 + L * D) of the loss,
    not the [L x B] logits and the gathered [B x D] texts. `impl='auto'` (config.lit.sigmoid_impl)
    picks it where the batch is split over more than one device. Other mesh axes ('model') see the
    embeddings replicated and compute the same value.
The zero-shot classifier, the one rule that the evaluator (vit_jax/evaluators/zeroshot.py, jitted)
and predict (vit_jax/inference/zeroshot.py, NumPy float64) both use: each class name is put in every
prompt template, a class's embedding is the normalised mean of its prompts' (normalised) text
embeddings (`class_embeddings`), and an image's logits are t * zimg . zclass^T (`zeroshot_logits`).
Metrics (NumPy, on the host, over a whole split):
  * `recall_at_k`: image->text and text->image retrieval (a caption's image given by
    `image_of_text`, so an image may have several captions);
  * `zeroshot_accuracy`: the share of images whose nearest class embedding is their label's.
"""

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np

from vit_jax import sharding
from vit_jax.configs.choices import SIGMOID_IMPLS


def similarities(zimg, ztxt, t, b=0.0):
  """[B_img, B_txt] float32 logits t * zimg . ztxt^T + b."""
  return t * jnp.einsum('id,jd->ij', zimg.astype(jnp.float32), ztxt.astype(jnp.float32)) + b


def softmax_loss(zimg, ztxt, t):
  """LiT's contrastive loss (module doc): a scalar, the mean of both directions' cross-entropies."""
  logits = similarities(zimg, ztxt, t)
  image_to_text = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=1)))
  text_to_image = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=0)))
  return (image_to_text + text_to_image) / 2


def sigmoid_loss(zimg, ztxt, t, b, *, impl: str = 'auto', mesh=None):
  """SigLIP's loss (module doc): a scalar, summed over all B x B pairs and divided by B.

  `impl` (SIGMOID_IMPLS, `sigmoid_impl`): 'dense', 'chunked' (the ring over `mesh`'s batch axes;
  raises ValueError without a mesh or with a batch that does not split over them) or 'auto'.
  `mesh`: None takes the current one (jax.set_mesh), as the train step runs."""
  if sigmoid_impl(impl, zimg.shape[0], mesh) == 'dense':
    logits = similarities(zimg, ztxt, t, b)
    labels = 2.0 * jnp.eye(logits.shape[0], logits.shape[1]) - 1.0
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits)) / logits.shape[0]
  f32 = lambda x: jnp.asarray(x, jnp.float32)  # Its transpose gives each input its dtype back.
  return _chunked_sigmoid_loss(f32(zimg), f32(ztxt), f32(t), f32(b), _mesh(mesh))


def _mesh(mesh):
  return jax.sharding.get_abstract_mesh() if mesh is None else mesh


def sigmoid_impl(impl: str, batch_size: int, mesh=None) -> str:
  """'dense' or 'chunked': `impl` itself, or for 'auto' 'chunked' where `mesh` (None: the current
  one) splits the batch over more than one device (sharding.batch_size_per_step), else 'dense'."""
  if impl not in SIGMOID_IMPLS:
    raise ValueError(f'Unknown sigmoid loss impl {impl!r}; valid: {", ".join(SIGMOID_IMPLS)}.')
  mesh = _mesh(mesh)
  shards = 1 if mesh.empty else sharding.batch_size_per_step(mesh)
  if impl == 'auto':
    return 'chunked' if shards > 1 and batch_size % shards == 0 else 'dense'
  if impl == 'chunked' and (mesh.empty or batch_size % shards):
    raise ValueError(
      'The chunked sigmoid loss runs on a device mesh (jax.set_mesh, or mesh=) whose batch axes '
      f'{sharding.BATCH_AXES} split the batch evenly; got a batch of {batch_size} and '
      f'{"no mesh" if mesh.empty else dict(mesh.shape)}.'
    )
  return impl


def _ring(mesh, zimg, ztxt, t, b, *, grads: bool):
  """The chunked sigmoid loss (module doc) of float32 embeddings sharded over `mesh`'s batch axes
  (shard_map): the loss, and with `grads` also its gradients w.r.t. zimg, ztxt, t and b."""
  axes = sharding.batch_axes(mesh)
  n = math.prod(mesh.shape[a] for a in axes)
  psum = lambda x: jax.lax.psum(x, axes) if axes else x

  def shift(x):  # To the next device of the ring.
    return jax.lax.ppermute(x, axes, [(i, (i + 1) % n) for i in range(n)]) if n > 1 else x

  def local(zimg, ztxt, t, b):
    """One device's part: its L images against every block of L texts as the blocks come round;
    its share of the sums, psum'd, / B."""
    num = zimg.shape[0]

    def score(block, own: bool):
      """(loss, (d/dzimg, d/dblock, d/dt, d/db)), summed over this device's images against a block
      of texts; `own`: the device's own block, with the positives on its diagonal."""
      dots = zimg @ block.T
      logits = t * dots + b
      labels = 2.0 * jnp.eye(num) - 1.0 if own else -1.0
      loss = -jnp.sum(jax.nn.log_sigmoid(labels * logits))
      if not grads:
        return loss, ()
      dlogits = -labels * jax.nn.sigmoid(-labels * logits)  # d/dx of -log sigmoid(y x).
      return loss, (
        t * dlogits @ block,
        t * dlogits.T @ zimg,
        jnp.sum(dlogits * dots),
        dlogits.sum(),
      )

    def step(_, carry):  # The next block, with its text gradient so far; this device's part added.
      block, loss, parts = carry
      block = shift(block)
      if grads:
        parts = (parts[0], shift(parts[1]), *parts[2:])
      more, more_parts = score(block, own=False)
      return block, loss + more, jax.tree.map(jnp.add, parts, more_parts)

    loss, parts = score(ztxt, own=True)
    _, loss, parts = jax.lax.fori_loop(1, n, step, (ztxt, loss, parts))
    total = n * num
    if not grads:
      return psum(loss) / total
    dimg, dtxt, dt, db = parts
    # After n - 1 steps a device holds the text gradient of the next device's block: one more shift
    # sends it home.
    return psum(loss) / total, dimg / total, shift(dtxt) / total, psum(dt) / total, psum(db) / total

  batch = P(axes or None)
  return jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(batch, batch, P(), P()),
    out_specs=(P(), batch, batch, P(), P()) if grads else P(),
  )(zimg, ztxt, t, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _chunked_sigmoid_loss(zimg, ztxt, t, b, mesh):
  return _ring(mesh, zimg, ztxt, t, b, grads=False)


def _chunked_fwd(zimg, ztxt, t, b, mesh):
  loss, *grads = _ring(mesh, zimg, ztxt, t, b, grads=True)
  return loss, grads


def _chunked_bwd(mesh, grads, g):
  del mesh
  return tuple(g * x for x in grads)


_chunked_sigmoid_loss.defvjp(_chunked_fwd, _chunked_bwd)


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
