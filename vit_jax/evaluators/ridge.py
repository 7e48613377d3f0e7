"""Closed-form ridge regression for few-shot linear probes (the few-shot evaluator's math), in numpy
float64.

Given features x (N, D) and integer labels y (N,) of the few-shot train set:
  1. standardise x with the train set's per-feature mean and std (+ 1e-5), the test features with
     the same;
  2. append a constant feature (BIAS, large, so the bias is almost unregularised);
  3. regress targets t = 2 * onehot(y) - 1 (N, C) with l2 regularisation `l2`:
       w = (x^T x + l2 I)^-1 x^T t    (primal, D x D system; used when N >= D)
         = x^T (x x^T + l2 I)^-1 t    (dual, N x N system; used when N < D, the usual few-shot case)
     both solved through one eigendecomposition (np.linalg.eigh) of the smaller Gram matrix;
  4. predict argmax(x_test w).
This is the linear probe of big_vision's few-shot evaluator.
"""

import numpy as np

BIAS = 100.0
EPS = 1e-5


def _standardise(x, mean, std):
  x = (x - mean) / std
  return np.concatenate([x, np.full((len(x), 1), BIAS)], axis=1)


def fit(x: np.ndarray, y: np.ndarray, num_classes: int, l2: float) -> dict:
  """The probe {'w', 'mean', 'std'} of features x [N, D] with labels y [N] (see module doc)."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y)
  if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
    raise ValueError(f'fit needs features [N, D] and N labels, got {x.shape} and {y.shape}.')
  if l2 <= 0:
    raise ValueError(f'l2 must be positive, got {l2}.')
  mean = x.mean(axis=0, keepdims=True)
  std = x.std(axis=0, keepdims=True) + EPS
  xs = _standardise(x, mean, std)
  targets = 2.0 * np.eye(num_classes)[y] - 1.0
  if len(xs) >= xs.shape[1]:  # Primal: (x^T x + l2 I)^-1 x^T t.
    eigs, q = np.linalg.eigh(xs.T @ xs)
    w = q @ ((q.T @ (xs.T @ targets)) / (eigs + l2)[:, None])
  else:  # Dual: x^T (x x^T + l2 I)^-1 t.
    eigs, q = np.linalg.eigh(xs @ xs.T)
    w = xs.T @ (q @ ((q.T @ targets) / (eigs + l2)[:, None]))
  return {'w': w, 'mean': mean, 'std': std}


def predict(probe: dict, x: np.ndarray) -> np.ndarray:
  """Predicted labels [M] of features x [M, D]."""
  return np.argmax(
    _standardise(np.asarray(x, np.float64), probe['mean'], probe['std']) @ probe['w'], axis=1
  )


def accuracy(train_x, train_y, test_x, test_y, num_classes: int, l2: float) -> float:
  """Test accuracy of the ridge probe fitted on (train_x, train_y)."""
  return float(
    np.mean(predict(fit(train_x, train_y, num_classes, l2), test_x) == np.asarray(test_y))
  )


def draw_shots(labels: np.ndarray, num_classes: int, shots: int, seed: int) -> np.ndarray:
  """Indices of `shots` examples per class (fewer where a class has fewer), a seeded draw per
  class."""
  rng = np.random.default_rng(seed)
  labels = np.asarray(labels)
  return np.concatenate(
    [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in range(num_classes)]
  )
