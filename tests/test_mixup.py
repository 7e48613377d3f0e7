"""Mixup in the train step: a >= 0.5, labels sum to 1, partners only within a device's shard, off at
p = 0."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from vit_jax import sharding
from vit_jax.tasks import losses
from vit_jax.training import train
from vit_jax.training import train_step as train_step_lib


def test_mixup_pairs_each_example_with_the_next_of_its_shard():
  images = jnp.arange(8, dtype=jnp.float32).reshape(8, 1, 1, 1)
  targets = jax.nn.one_hot(jnp.arange(8) % 4, 4)
  mixed, soft = train_step_lib.mixup(images, targets, jax.random.key(0), 0.5, num_shards=2)
  a = float(soft[0].max())
  assert a >= 0.5
  # Rolled by one inside each half: shard 0 is 0..3, shard 1 is 4..7.
  partner = np.array([3, 0, 1, 2, 7, 4, 5, 6])
  np.testing.assert_allclose(
    np.asarray(mixed).ravel(), a * np.arange(8) + (1 - a) * partner, rtol=1e-6
  )
  np.testing.assert_allclose(np.asarray(soft).sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(
    np.asarray(soft), a * np.eye(4)[np.arange(8) % 4] + (1 - a) * np.eye(4)[partner % 4], rtol=1e-6
  )


def test_mixup_weight_is_at_least_half_for_every_key():
  for seed in range(50):
    _, soft = train_step_lib.mixup(
      jnp.zeros((4, 1)), jax.nn.one_hot(jnp.arange(4), 4), jax.random.key(seed), 0.2, 1
    )
    assert 0.5 <= float(soft[0, 0]) <= 1.0


def test_soft_labels_in_the_losses():
  logits = jnp.array([[2.0, -1.0, 0.5]])
  hard = losses.per_example_loss(logits, jnp.array([0]))
  soft = losses.per_example_loss(logits, jnp.array([[1.0, 0.0, 0.0]]))
  np.testing.assert_allclose(hard, soft)
  mixed = losses.per_example_loss(logits, jnp.array([[0.7, 0.3, 0.0]]))
  np.testing.assert_allclose(
    mixed, 0.7 * hard + 0.3 * losses.per_example_loss(logits, jnp.array([1])), rtol=1e-6
  )


def _step_outputs(mixup_p, *batches):
  """The gradient norm of one train step (from the init) on each batch."""
  config = tiny.train_config(mixup_p=mixup_p, mesh=(('data', 8),))
  mesh, state, step, shard = tiny.train_setup(config)
  with jax.set_mesh(mesh):
    return [float(step(state, jax.device_put(batch, shard))[1]['grad_norm']) for batch in batches]


def test_train_step_with_mixup_on_the_mesh_and_off_at_zero():
  batch = tiny.random_batch(0)
  uint8 = dict(batch, image=np.round((batch['image'] + 1) * 127.5).astype(np.uint8))
  (plain,), (on, on_uint8) = _step_outputs(0.0, batch), _step_outputs(0.8, batch, uint8)
  assert on != plain  # p > 0 changes the gradients.
  assert np.isfinite(on_uint8)  # uint8 batches become float on the device.


def test_mixup_partners_stay_inside_each_device_shard_under_jit():
  mesh = sharding.make_mesh((('data', 8),))
  shard = sharding.batch_sharding(mesh)
  images = jnp.arange(16, dtype=jnp.float32).reshape(16, 1)
  with jax.set_mesh(mesh):
    fn = jax.jit(
      lambda x, t: train_step_lib.mixup(
        x, t, jax.random.key(1), 0.5, sharding.batch_size_per_step(None)
      )
    )
    mixed, soft = fn(
      jax.device_put(images, shard), jax.device_put(jax.nn.one_hot(jnp.arange(16), 16), shard)
    )
  a = float(soft[0].max())
  # Shards of 2: each example with the other of its pair.
  partner = np.arange(16).reshape(8, 2)[:, ::-1].ravel()
  np.testing.assert_allclose(
    np.asarray(mixed).ravel(), a * np.arange(16) + (1 - a) * partner, rtol=1e-6
  )
