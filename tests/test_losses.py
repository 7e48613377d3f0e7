"""Losses: softmax and sigmoid cross-entropy with label smoothing, against hand-computed values."""

import numpy as np
import pytest

from vit_jax.tasks import losses

LOGITS = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], np.float32)
LABELS = np.array([0, 1])


def _log_softmax(x):
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_softmax_cross_entropy():
  got = np.asarray(losses.per_example_loss(LOGITS, LABELS))
  np.testing.assert_allclose(got, -_log_softmax(LOGITS)[[0, 1], LABELS], rtol=1e-6)


def test_label_smoothing_spreads_target_mass():
  got = np.asarray(losses.per_example_loss(LOGITS, LABELS, label_smoothing=0.3))
  target = np.full((2, 3), 0.1) + 0.7 * np.eye(3)[LABELS]
  np.testing.assert_allclose(got, -(target * _log_softmax(LOGITS)).sum(-1), rtol=1e-6)


def test_sigmoid_cross_entropy_sums_over_classes():
  got = np.asarray(losses.per_example_loss(LOGITS, LABELS, kind='sigmoid'))
  y = np.eye(3)[LABELS]
  p = 1 / (1 + np.exp(-LOGITS))
  np.testing.assert_allclose(got, -(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(-1), rtol=1e-5)


def test_sigmoid_with_negative_head_bias_starts_near_zero_loss_per_negative_class():
  logits = np.full((1, 1000), -10.0, np.float32)  # A zero head with head_bias_init=-10.
  got = float(losses.per_example_loss(logits, np.array([3]), kind='sigmoid')[0])
  assert got == pytest.approx(10.0 + 999 * np.log1p(np.exp(-10.0)), rel=1e-5)


def test_unknown_loss_lists_valid_ones():
  with pytest.raises(ValueError, match=r"'hinge'.*softmax, sigmoid"):
    losses.per_example_loss(LOGITS, LABELS, kind='hinge')
