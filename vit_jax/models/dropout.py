"""Dropout whose masks are cheap to make: `Dropout` is nn.Dropout with `keep_mask`'s masks.

jax.random.bernoulli (nn.Dropout's) spends one threefry2x32 hash on each unit, and on the CPU JAX
lowers the hash to a loop of 5 iterations over whole arrays. The main job's 10 dropout masks then
took 30% of its train step and 1.7 s of the step's compile. `keep_mask` takes four units from each
hash (16 bits each) and writes the hash out as plain array arithmetic (`threefry2x32`, which equals
JAX's primitive bit for bit), which XLA fuses into one loop: the masks cost a fifth of the time
(benchmarks/RESULTS.md, (n)).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def threefry2x32(key, x0, x1):
  """Threefry-2x32 with 20 rounds (Salmon et al. 2011), the hash of jax.random's default PRNG:
  `key` two uint32 words, `x0` and `x1` uint32 arrays of one shape; returns the two words of the
  hash of each pair (x0, x1). Elementwise, so each device of a mesh hashes only its own part."""
  keys = (key[0], key[1], key[0] ^ key[1] ^ _PARITY)
  x0, x1 = x0 + keys[0], x1 + keys[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = x0 ^ ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r)))
    x0, x1 = x0 + keys[(i + 1) % 3], x1 + keys[(i + 2) % 3] + np.uint32(i + 1)
  return x0, x1


def keep_mask(key, shape, rate: float):
  """Dropout's mask for `shape` at `rate`: (a bool array, True where a unit is kept; the exact
  probability of keeping one). Each unit compares 16 random bits with round(rate * 2**16), so
  the kept fraction is 1 - rate to within 2**-17.

  Hash (row, i) under `key` gives units 4i to 4i+3 of row `row` (the flat index over the leading
  axes) of the last axis, so a mask depends on the key and each unit's position alone, however a
  mesh shards it. A key of another PRNG implementation falls back to jax.random.bernoulli."""
  if str(jax.random.key_impl(key)) != 'threefry2x32':  # Typed or legacy uint32[2] keys alike.
    return jax.random.bernoulli(key, 1.0 - rate, shape), 1.0 - rate
  words = jax.random.key_data(key)
  threshold = round(rate * 2**16)
  lead = tuple(shape[:-1])
  if math.prod(lead) >= 2**32:
    raise ValueError(f'Dropout of shape {shape}: more than 2**32 rows to count.')
  hashes = lead + (-(-shape[-1] // 4),)
  row = jnp.zeros(hashes, jnp.uint32)
  for axis in range(len(lead)):
    stride = np.uint32(math.prod(lead[axis + 1 :]))
    row = row + jax.lax.broadcasted_iota(jnp.uint32, hashes, axis) * stride
  column = jax.lax.broadcasted_iota(jnp.uint32, hashes, len(lead))
  pair = jnp.stack(threefry2x32(words, row, column), axis=-1)
  bits = jax.lax.bitcast_convert_type(pair, jnp.uint16)  # [*lead, hashes, 2 words, 2 halves]
  bits = bits.reshape(lead + (4 * hashes[-1],))[..., : shape[-1]]
  return bits >= np.uint16(threshold), (2**16 - threshold) / 2**16


class Dropout(nn.Module):
  """nn.Dropout: each unit zeroed with probability `rate` and the rest scaled by 1 / (1 - rate);
  the identity when `deterministic`. Its masks are `keep_mask`'s, from the 'dropout' RNG stream."""

  rate: float

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep, keep_prob = keep_mask(self.make_rng('dropout'), x.shape, self.rate)
    return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros_like(x))
