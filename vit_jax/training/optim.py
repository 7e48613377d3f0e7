"""Learning-rate schedules, the weight-decay mask and the optax optimizer built from a config.

Reads `config.total_steps`, `config.schedule.*` and `config.optimizer.*` (see configs/common.py).

The optimizer is one optax chain:
  clip by global norm -> [L2 decay] -> sgd momentum / adam -> [decoupled decay (adamw)] ->
      -lr(step).

The update at step `count` (0-based, the optimizer's own counter) uses lr = schedule(count), so with
warmup the very first update is scaled by lr(0) == 0.
"""

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from vit_jax import utils

# (the values config takes)
from vit_jax.configs.choices import DECAY_TYPES, DTYPES, OPTIMIZERS  # noqa: F401

ACCUMULATOR_DTYPES = {name: jnp.dtype(name) for name in DTYPES}

# Only Dense / Conv kernels (attention query/key/value/out included) are decayed; biases, norm
# scales, `cls` and `pos_embedding` are not.
WEIGHT_DECAY_RULES = ((r'(.*/)?kernel', True),)
# The label of the parameters a task freezes (`make_optimizer(frozen=...)`; a LiT model's locked
# image tower): no updates, and no optimizer state kept for them. It names their part of the
# optimizer state in checkpoints.
FROZEN = 'locked'


def make_schedule(config) -> optax.Schedule:
  """Returns step -> learning rate: linear warmup, then `schedule.decay_type` until `total_steps`.

  With w = warmup_steps, T = total_steps, s = min(step, T) and p = clip((s - w) / (T - w), 0, 1):
    warmup factor: min(s / w, 1) (1 when w == 0), multiplied into every decay type below;
    'cosine':   end_lr + (base_lr - end_lr) * 0.5 * (1 + cos(pi * p));
    'linear':   base_lr + (end_lr - base_lr) * p;
    'constant': base_lr;
    'rsqrt':    base_lr * sqrt(timescale / max(s, timescale)), on the *global* step s: flat at
                base_lr until step == rsqrt_timescale, then ~ 1/sqrt(step); it ignores end_lr and
                does not restart after warmup (so it is below base_lr at warmup end if w >
                timescale).
  Steps past T keep the value at T. Pure and jit-able; accepts Python ints or int/float arrays. The
  config is one that vit_jax/configs/check.py accepted, with its durations in steps
  (configs/durations.py).
  """
  sched = config.schedule
  total = int(config.total_steps)
  warmup = int(sched.warmup_steps)
  base_lr = float(sched.base_lr)
  end_lr = float(sched.end_lr)
  decay_type = sched.decay_type
  timescale = float(sched.rsqrt_timescale)
  decay_steps = max(total - warmup, 1)

  def schedule(step):
    s = jnp.clip(jnp.asarray(step, jnp.float32), 0.0, float(total))
    progress = jnp.clip((s - warmup) / decay_steps, 0.0, 1.0)
    if decay_type == 'cosine':
      lr = end_lr + (base_lr - end_lr) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
    elif decay_type == 'linear':
      lr = base_lr + (end_lr - base_lr) * progress
    elif decay_type == 'constant':
      lr = jnp.full_like(s, base_lr)
    else:  # rsqrt
      lr = base_lr * jnp.sqrt(timescale / jnp.maximum(s, timescale))
    if warmup > 0:
      lr = lr * jnp.minimum(s / warmup, 1.0)
    return lr

  return schedule


def weight_decay_mask(params):
  """Tree of bools like `params`: True only for leaves named '.../kernel'."""
  return utils.tree_rules(params, WEIGHT_DECAY_RULES, default=False)


def make_optimizer(
  config, *, frozen: Sequence[str] = ()
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optax transformation, learning-rate schedule) for `config.optimizer.name`; the
  parameters whose names match a regex of `frozen` (the task's: vit_jax/tasks/) get no updates and
  no optimizer state.

  - 'sgd': momentum `optimizer.momentum` (no Nesterov), momentum buffer in `accumulator_dtype` (also
    Adam's first moment); weight decay as L2 (wd * param added to the clipped gradient, kernels
    only) before the momentum.
  - 'adam': Adam(b1, b2, eps); weight decay as L2 added to the gradient before Adam, kernels only.
  - 'adamw': decoupled weight decay on kernels only, as optax.adamw(mask=...): wd * param is added
    to the Adam direction and then scaled by the learning rate, so the effective per-step decay is
    lr(step) * weight_decay (not weight_decay alone).
  Gradients are first clipped to global norm `grad_clip_norm` (skipped when <= 0). The mask is a
  callable, so the transformation is built before params exist and works with abstract params. The
  config is one that vit_jax/configs/check.py accepted.
  """
  opt = config.optimizer
  name = opt.name
  schedule = make_schedule(config)
  wd = float(opt.weight_decay)
  decay = [optax.add_decayed_weights(wd, mask=weight_decay_mask)] if wd > 0 else []

  parts = []
  if opt.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(opt.grad_clip_norm)))
  accumulator = ACCUMULATOR_DTYPES[opt.accumulator_dtype]
  adam = lambda: optax.scale_by_adam(
    b1=float(opt.b1), b2=float(opt.b2), eps=float(opt.eps), mu_dtype=accumulator
  )
  if name == 'sgd':
    parts += decay
    parts.append(
      optax.trace(decay=float(opt.momentum), nesterov=False, accumulator_dtype=accumulator)
    )
  elif name == 'adam':
    parts += decay
    parts.append(adam())
  else:  # adamw
    parts.append(adam())
    parts += decay
  parts.append(optax.scale_by_learning_rate(schedule))
  tx = optax.chain(*parts)
  if frozen:
    tx = optax.multi_transform({'train': tx, FROZEN: optax.set_to_zero()}, frozen_labels(frozen))
  return tx, schedule


def frozen_labels(frozen: Sequence[str]):
  """params -> a tree of FROZEN (the names that match a regex of `frozen`) or 'train' like them:
  optax.multi_transform's labels."""
  rules = tuple((pattern, FROZEN) for pattern in frozen)
  return lambda params: utils.tree_rules(params, rules, default='train')


def applied_learning_rate(schedule: optax.Schedule, opt_state):
  """The learning rate that the next update of `opt_state` applies: the schedule at the optimizer's
  own step count (its scale_by_learning_rate state's). Under nonfinite_policy='skip' a dropped
  update leaves that count behind the train state's step, so this, not schedule(step), is what
  training uses."""
  is_schedule_state = lambda x: isinstance(x, optax.ScaleByScheduleState)
  (state,) = [
    s for s in jax.tree.leaves(opt_state, is_leaf=is_schedule_state) if is_schedule_state(s)
  ]
  return schedule(state.count)
