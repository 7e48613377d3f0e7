"""Exact evaluation: padded batches with a mask, so every example counts once; sums stay on device until the end."""
from typing import Callable, Iterable

import jax
import jax.numpy as jnp

from vit_jax import losses, preprocess


def make_eval_step(model, *, loss: str = 'softmax') -> Callable:
  """(params, batch) -> masked sums {'correct', 'correct_top5', 'loss', 'count'} for one batch."""

  def eval_step(params, batch):
    logits = model.apply({'params': params}, preprocess.to_float(batch['image']), train=False)
    labels, mask = batch['label'], batch['mask']
    num_classes = logits.shape[-1]
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    rank = jnp.sum(logits > label_logit, axis=-1)  # How many classes score strictly above the label.
    sums = {
        'correct': jnp.sum(correct * mask),
        'loss': jnp.sum(losses.per_example_loss(logits, labels, kind=loss) * mask),
        'count': jnp.sum(mask),
    }
    if num_classes >= 5:
      sums['correct_top5'] = jnp.sum((rank < 5).astype(jnp.float32) * mask)
    return sums

  return eval_step


def evaluate(eval_step: Callable, params, batches: Iterable) -> dict[str, float]:
  """Runs `eval_step` over all batches; returns eval/accuracy, eval/top5 (>= 5 classes) and eval/loss."""
  totals = None
  for batch in batches:
    sums = eval_step(params, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError('The evaluation split yielded no batches.')
  totals = jax.device_get(totals)
  count = float(totals['count'])
  if count == 0:
    raise ValueError('The evaluation split has no examples.')
  out = {'eval/accuracy': float(totals['correct']) / count, 'eval/loss': float(totals['loss']) / count}
  if 'correct_top5' in totals:
    out['eval/top5'] = float(totals['correct_top5']) / count
  out['eval/num_examples'] = count
  return out
