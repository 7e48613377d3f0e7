"""vit_jax/models/dropout.py: its threefry equals JAX's, its masks keep 1 - rate of the units at
random and the same ones however a mesh shards them, and Dropout behaves as nn.Dropout does."""

import jax
from jax.extend.random import threefry2x32_p
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np
import pytest

from vit_jax.models import dropout


def test_threefry_equals_jax_primitive():
  words = jax.random.randint(jax.random.key(0), (3, 1000), 0, 2**31 - 1).astype(jnp.uint32)
  key, x0, x1 = words[0, :2], words[1], words[2] * np.uint32(3)
  ours = jax.jit(dropout.threefry2x32)(key, x0, x1)
  jaxs = threefry2x32_p.bind(key[0], key[1], x0, x1)
  for a, b in zip(ours, jaxs):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('rate', [0.1, 0.2, 0.5, 0.9])
def test_keep_mask_keeps_one_minus_rate(rate):
  mask, keep_prob = dropout.keep_mask(jax.random.key(1), (64, 17, 256), rate)
  assert mask.shape == (64, 17, 256) and mask.dtype == jnp.bool_
  assert abs(keep_prob - (1 - rate)) <= 2**-17
  n = mask.size
  assert abs(float(mask.mean()) - keep_prob) < 5 * np.sqrt(keep_prob * (1 - keep_prob) / n)


def test_keep_mask_units_are_independent():
  # The four units of one hash, neighbouring hashes and neighbouring rows: no correlation.
  mask = np.asarray(dropout.keep_mask(jax.random.key(2), (4096, 64), 0.5)[0], np.float64)
  pairs = [
    (mask[:, 0::4], mask[:, 1::4]),
    (mask[:, 0::4], mask[:, 3::4]),
    (mask[:, 0:-4], mask[:, 4:]),
    (mask[:-1], mask[1:]),
  ]
  for a, b in pairs:
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.01


def test_keep_mask_depends_on_key_and_handles_odd_shapes():
  for shape in [(7,), (3, 5), (2, 4, 17, 17)]:
    a = dropout.keep_mask(jax.random.key(3), shape, 0.5)[0]
    assert a.shape == shape
    np.testing.assert_array_equal(a, dropout.keep_mask(jax.random.key(3), shape, 0.5)[0])
  big = (16, 17, 64)
  a, b = (dropout.keep_mask(jax.random.key(k), big, 0.5)[0] for k in (3, 4))
  assert 0.4 < float((a != b).mean()) < 0.6
  # A legacy uint32 key is the same threefry key.
  legacy = dropout.keep_mask(jax.random.PRNGKey(3), big, 0.5)[0]
  np.testing.assert_array_equal(legacy, a)


def test_keep_mask_is_the_same_on_any_mesh():
  mesh = jax.make_mesh((8,), ('data',))
  shape = (16, 17, 64)
  make = lambda key: dropout.keep_mask(key, shape, 0.3)[0]
  whole = jax.jit(make)(jax.random.key(5))
  for spec in (PartitionSpec('data'), PartitionSpec(None, None, 'data')):
    sharded = jax.jit(make, out_shardings=NamedSharding(mesh, spec))
    np.testing.assert_array_equal(sharded(jax.random.key(5)), whole)
    assert 'all-gather' not in sharded.lower(jax.random.key(5)).compile().as_text()


def test_other_prng_falls_back_to_bernoulli():
  key = jax.random.key(6, impl='rbg')
  mask, keep_prob = dropout.keep_mask(key, (8, 256), 0.25)
  assert keep_prob == 0.75
  np.testing.assert_array_equal(mask, jax.random.bernoulli(key, 0.75, (8, 256)))


def test_dropout_module_scales_kept_units_and_is_identity_at_eval():
  x = jnp.ones((32, 17, 128), jnp.float32)
  layer = dropout.Dropout(0.2)
  out = layer.apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(7)})
  kept = np.asarray(out) != 0
  np.testing.assert_allclose(np.asarray(out)[kept], 1 / 0.8, rtol=1e-5)
  assert abs(float(out.mean()) - 1.0) < 0.02
  assert layer.apply({}, x, deterministic=True) is x
  zeros = dropout.Dropout(1.0).apply({}, x, deterministic=False)
  np.testing.assert_array_equal(zeros, 0)
  bf16 = layer.apply(
    {}, x.astype(jnp.bfloat16), deterministic=False, rngs={'dropout': jax.random.key(7)}
  )
  assert bf16.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(bf16) != 0, kept)
