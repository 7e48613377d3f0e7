"""Exact evaluation: padded batches with a mask, so every example counts once; sums stay on device
until the end. What the evaluators share: the split one reads (`one_split`), the counted step and
its totals.

The running totals are added inside the jitted step, so each batch is one program on every process,
dispatched in the same order. (Adding them with eager `jnp.add` outside made each addition its own
small multi-process program; a process that dispatched another thread's collective between them
could wait forever on its peers: issue 31.)
"""

from typing import Callable, Iterable

import jax
import jax.numpy as jnp

from vit_jax.configs.choices import parse_splits, with_split
from vit_jax.data import preprocess
from vit_jax.runtime import dispatch
from vit_jax.tasks import losses


def one_split(config, split: str = ''):
  """`config` with the single split `split` as its eval_split ('': the first split of
  config.eval_split, which the run's dataset info and counts read, and evaluators by default)."""
  return with_split(config, split or parse_splits(config.eval_split)[0][1])


def zeros(num_classes: int) -> dict[str, jax.Array]:
  """The totals before the first batch: {'correct', 'loss', 'count'}, and 'correct_top5' for >= 5
  classes."""
  keys = ('correct', 'loss', 'count') + (('correct_top5',) if num_classes >= 5 else ())
  return {key: jnp.zeros((), jnp.float32) for key in keys}


def classifier_logits(model) -> Callable:
  """(params, images) -> logits of a classifier (a VisionTransformer or MlpMixer) in eval mode."""
  return lambda params, images: model.apply({'params': params}, images, train=False)


def make_eval_step(logits_fn: Callable, *, loss: str = 'softmax') -> Callable:
  """(params, batch, totals) -> totals plus this batch's masked sums (the keys of `zeros`), from
  `logits_fn(params, images)` (`classifier_logits`, or a zero-shot classifier's:
  vit_jax/evaluators/zeroshot.py)."""

  def eval_step(params, batch, totals):
    logits = logits_fn(params, preprocess.to_float(batch['image']))
    labels = batch['label']
    mask = batch['mask']
    num_classes = logits.shape[-1]
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    # How many classes score strictly above the label.
    rank = jnp.sum(logits > label_logit, axis=-1)
    sums = {
      'correct': jnp.sum(correct * mask),
      'loss': jnp.sum(losses.per_example_loss(logits, labels, kind=loss) * mask),
      'count': jnp.sum(mask),
    }
    if num_classes >= 5:
      sums['correct_top5'] = jnp.sum((rank < 5).astype(jnp.float32) * mask)
    return jax.tree.map(jnp.add, totals, sums)

  return eval_step


def evaluate(eval_step: Callable, params, batches: Iterable, totals: dict) -> dict[str, float]:
  """Runs `eval_step` over all batches from `totals` (`zeros(num_classes)`); returns accuracy, top5
  (>= 5 classes), loss and num_examples (bare names: vit_jax/evaluators/__init__.py adds the
  prefix). Nothing but `eval_step` runs on the devices until the end; the host stays at most two
  batches ahead of them (dispatch.RunAhead)."""
  num_batches = 0
  run_ahead = dispatch.RunAhead()
  for batch in batches:
    totals = eval_step(params, batch, totals)
    run_ahead.add(totals['count'])
    num_batches += 1
  if num_batches == 0:
    raise ValueError('The evaluation split yielded no batches.')
  totals = jax.device_get(totals)
  count = float(totals['count'])
  if count == 0:
    raise ValueError('The evaluation split has no examples.')
  out = {'accuracy': float(totals['correct']) / count, 'loss': float(totals['loss']) / count}
  if 'correct_top5' in totals:
    out['top5'] = float(totals['correct_top5']) / count
  out['num_examples'] = count
  return out
