"""vit_jax/runtime/dispatch.py: how far the host runs ahead of the devices."""

import jax
import jax.numpy as jnp

from vit_jax.evaluators import common as evaluate
from vit_jax.runtime import dispatch


def test_the_host_waits_for_the_step_two_before_the_one_it_dispatched():
  waited = []
  run_ahead = dispatch.RunAhead(limit=2, wait=waited.append)
  for step in range(1, 6):
    run_ahead.add(step)
    assert waited == list(range(1, step - 1))


def test_an_evaluation_stays_two_batches_ahead_and_counts_every_batch(monkeypatch):
  waited = []

  class Spy(dispatch.RunAhead):
    def __init__(self):
      super().__init__(wait=lambda x: waited.append(jax.block_until_ready(x)))

  monkeypatch.setattr(dispatch, 'RunAhead', Spy)

  @jax.jit
  def eval_step(params, batch, totals):
    del params
    return jax.tree.map(jnp.add, totals, {'correct': batch, 'loss': batch, 'count': 2.0})

  totals = {'correct': jnp.zeros(()), 'loss': jnp.zeros(()), 'count': jnp.zeros(())}
  out = evaluate.evaluate(eval_step, None, [jnp.float32(1)] * 5, totals)
  # Five batches, two in flight: it waited for the counts after batches 1, 2 and 3.
  assert [float(x) for x in waited] == [2.0, 4.0, 6.0]
  assert out['num_examples'] == 10 and out['accuracy'] == 0.5
