"""Classification losses over integer labels (per example, float32)."""
import jax
import jax.numpy as jnp

LOSSES = ('softmax', 'sigmoid')


def targets(labels, num_classes: int, label_smoothing: float = 0.0):
  """One-hot targets, smoothed: (1 - s) * onehot + s / num_classes."""
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return onehot * (1.0 - label_smoothing) + label_smoothing / num_classes


def per_example_loss(logits, labels, *, kind: str = 'softmax', label_smoothing: float = 0.0):
  """Softmax cross-entropy, or sigmoid cross-entropy summed over classes (ImageNet-21k style)."""
  logits = logits.astype(jnp.float32)
  y = targets(labels, logits.shape[-1], label_smoothing)
  if kind == 'softmax':
    return -jnp.sum(y * jax.nn.log_softmax(logits), axis=-1)
  if kind == 'sigmoid':
    return jnp.sum(jnp.logaddexp(0.0, logits) - y * logits, axis=-1)  # log(1 + e^x) - y x
  raise ValueError(f'Unknown loss {kind!r}; valid: {", ".join(LOSSES)}.')
