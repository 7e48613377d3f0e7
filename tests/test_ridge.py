"""The few-shot ridge probe: separable features score 100%, random labels near chance, equal to a
direct solve."""

import numpy as np
import pytest

from vit_jax.evaluators import ridge


def _clusters(n_per_class, num_classes, dim, seed, spread=0.3):
  rng = np.random.default_rng(seed)
  centres = rng.normal(0, 3, (num_classes, dim))
  y = np.repeat(np.arange(num_classes), n_per_class)
  return centres[y] + rng.normal(0, spread, (len(y), dim)), y


# Dual (N < D) and primal (N >= D) forms.
@pytest.mark.parametrize('shots,dim', [(5, 64), (40, 16)])
def test_separable_features_score_100_percent(shots, dim):
  x, y = _clusters(shots + 50, 10, dim, seed=0)
  idx = ridge.draw_shots(y, 10, shots, seed=1)
  test = np.setdiff1d(np.arange(len(y)), idx)
  assert len(idx) == 10 * shots
  assert ridge.accuracy(x[idx], y[idx], x[test], y[test], 10, l2=2.0**10) == 1.0


def test_random_labels_score_near_chance():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(2000, 32)), rng.integers(0, 10, 2000)
  acc = ridge.accuracy(x[:1000], y[:1000], x[1000:], y[1000:], 10, l2=2.0**10)
  assert 0.05 < acc < 0.16


@pytest.mark.parametrize('n,dim', [(30, 8), (8, 30)])
def test_weights_equal_a_direct_solve_of_the_same_ridge_problem(n, dim):
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(n, dim)), rng.integers(0, 4, n)
  probe = ridge.fit(x, y, 4, l2=0.5)
  xs = (x - x.mean(0)) / (x.std(0) + ridge.EPS)
  xs = np.concatenate([xs, np.full((n, 1), ridge.BIAS)], axis=1)
  t = 2 * np.eye(4)[y] - 1
  direct = np.linalg.solve(xs.T @ xs + 0.5 * np.eye(dim + 1), xs.T @ t)
  np.testing.assert_allclose(probe['w'], direct, rtol=1e-6, atol=1e-9)


def test_draw_shots_is_seeded_and_per_class():
  y = np.array([0, 1, 0, 1, 0, 2, 1, 0])
  a, b = ridge.draw_shots(y, 3, 2, seed=5), ridge.draw_shots(y, 3, 2, seed=5)
  np.testing.assert_array_equal(a, b)
  assert sorted(y[a].tolist()) == [0, 0, 1, 1, 2]  # Class 2 has one example only.
  many = np.repeat(np.arange(3), 20)
  assert not np.array_equal(
    ridge.draw_shots(many, 3, 5, seed=5), ridge.draw_shots(many, 3, 5, seed=6)
  )
  with pytest.raises(ValueError, match='l2 must be positive'):
    ridge.fit(np.zeros((2, 2)), np.zeros(2, int), 2, l2=0)
