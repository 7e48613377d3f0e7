"""Classification losses (per example, float32) over integer labels or soft targets (e.g. from
mixup)."""

import jax
import jax.numpy as jnp

from vit_jax.configs.choices import LOSSES  # noqa: F401  (what config.loss takes)


def targets(labels, num_classes: int, label_smoothing: float = 0.0):
  """Targets [B, C], smoothed: (1 - s) * y + s / num_classes, where y is one-hot of integer labels
  [B] or the soft targets [B, C] given."""
  y = (
    labels.astype(jnp.float32)
    if labels.ndim == 2
    else jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  )
  return y * (1.0 - label_smoothing) + label_smoothing / num_classes


def per_example_loss(logits, labels, *, kind: str = 'softmax', label_smoothing: float = 0.0):
  """Softmax cross-entropy, or sigmoid cross-entropy summed over classes (ImageNet-21k style)."""
  logits = logits.astype(jnp.float32)
  y = targets(labels, logits.shape[-1], label_smoothing)
  if kind == 'softmax':
    return -jnp.sum(y * jax.nn.log_softmax(logits), axis=-1)
  if kind == 'sigmoid':
    return jnp.sum(jnp.logaddexp(0.0, logits) - y * logits, axis=-1)  # log(1 + e^x) - y x
  raise ValueError(f'Unknown loss {kind!r}; valid: {", ".join(LOSSES)}.')
