"""The train step: (state, batch) -> (state, stats), the maths of one update (the task's loss,
gradients with accumulation, mixup, the optimizer, dropping a non-finite update) and the metric
window the loop logs. vit_jax/training/state.py builds the state it runs on and jits it on the
mesh's layout."""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from vit_jax import errors, sharding
from vit_jax.data import preprocess
from vit_jax.training import optim

MIXUP_STREAM = 0x6D6978  # Folded into the seed for mixup's keys, apart from dropout's.


class NonFiniteError(errors.UserError, FloatingPointError):
  """A non-finite loss or gradient norm under config.nonfinite_policy='stop'."""


def zero_window() -> dict:
  """An empty metric window (state['window']): the sums of the finite steps' loss and gradient norm,
  and their count."""
  return {
    'loss': jnp.zeros((), jnp.float32),
    'grad_norm': jnp.zeros((), jnp.float32),
    'steps': jnp.zeros((), jnp.int32),
  }


def mixup(images, targets, key, p: float, num_shards: int):
  """AugReg's mixup: a ~ Beta(p, p), a = max(a, 1 - a); each example mixed with the next one of the
  same shard of `num_shards` contiguous shards of the batch (the last with the first), so no data
  crosses devices: a * x + (1 - a) * roll(x), a * y + (1 - a) * roll(y). Returns (images, soft
  targets)."""
  a = jax.random.beta(key, p, p)
  a = jnp.maximum(a, 1.0 - a)

  def mix(x):
    shards = x.reshape((num_shards, x.shape[0] // num_shards) + x.shape[1:])
    partner = jnp.roll(shards, 1, axis=1).reshape(x.shape)
    return (a * x + (1.0 - a) * partner).astype(x.dtype)

  return mix(images), mix(targets)


def make_train_step(
  loss_fn, tx, schedule, config, micro_shard, *, num_classes: int | None = None
) -> Callable:
  """(state, batch) -> (state, stats), minimising `loss_fn(params, batch, dropout rng)` (the task's
  loss: vit_jax/tasks/). Dropout keys come from (seed, step[, micro-batch]), mixup's from (seed,
  step); mixup (config.mixup_p) mixes batch['image'] and the one-hot labels of `num_classes`.

  An update whose loss or gradient norm is not finite is dropped inside the step (the state stays as
  it was, so a non-finite state never exists) and counted in state['nonfinite']; the loop applies
  config.nonfinite_policy. state['window'] sums the finite steps' metrics; the loop reads it on its
  log cadence and starts a new one (`zero_window`), and it is saved with the state, so a resumed run
  logs exactly what an uninterrupted one would. Micro-batch i of config.accum_steps takes examples
  i, i + accum, ... (`micro_shard` keeps every device's share of each micro-batch on that device).
  """
  accum = config.accum_steps
  grad_fn = jax.value_and_grad(loss_fn)

  def gradients(params, batch, rng):
    if accum == 1:
      return grad_fn(params, batch, rng)

    def split(x):
      x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
      return jax.lax.with_sharding_constraint(x, micro_shard)

    def body(carry, inputs):
      i, micro_batch = inputs
      return jax.tree.map(
        jnp.add, carry, grad_fn(params, micro_batch, jax.random.fold_in(rng, i))
      ), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    sums, _ = jax.lax.scan(body, zeros, (jnp.arange(accum), jax.tree.map(split, batch)))
    return jax.tree.map(lambda x: x / accum, sums)

  def train_step(state, batch):
    step = state['step']
    rng = jax.random.fold_in(jax.random.key(config.seed), step)
    if 'image' in batch:
      batch = {**batch, 'image': preprocess.to_float(batch['image'])}  # uint8 travels; float here.
    if config.mixup_p > 0:
      mix_key = jax.random.fold_in(
        jax.random.fold_in(jax.random.key(config.seed), MIXUP_STREAM), step
      )
      targets = jax.nn.one_hot(batch['label'], num_classes)
      shards = sharding.batch_size_per_step(None)
      mixed = mixup(batch['image'], targets, mix_key, config.mixup_p, shards)
      batch['image'], batch['label'] = mixed
    loss, grads = gradients(state['params'], batch, rng)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    window = state['window']
    new_state = {
      'step': step + 1,
      'params': keep(params, state['params']),
      'opt_state': keep(opt_state, state['opt_state']),
      'window': {
        'loss': window['loss'] + jnp.where(finite, loss, 0.0),
        'grad_norm': window['grad_norm'] + jnp.where(finite, grad_norm, 0.0),
        'steps': window['steps'] + finite.astype(jnp.int32),
      },
      'nonfinite': {
        'count': state['nonfinite']['count'] + (~finite).astype(jnp.int32),
        'last_step': jnp.where(finite, state['nonfinite']['last_step'], step + 1),
      },
    }
    return new_state, {
      'loss': loss,
      'grad_norm': grad_norm,
      'learning_rate': optim.applied_learning_rate(schedule, state['opt_state']),
    }

  return train_step
