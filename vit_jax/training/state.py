"""Model and train state from a config, as its task (vit_jax/tasks/) says: the one place that
builds them (train, inference, benchmarks, tests, memory plan).

  # Model, optimizer, the state's layout and shardings:
  setup = state.Setup.create(config, num_classes, mesh)
  # Born sharded: each array made by jit in its sharding.
  train_state = setup.init()
  # Fine-tuning: config.pretrained_path loaded into the layout.
  train_state = setup.with_pretrained(train_state)
  # The run's Orbax checkpoints (vit_jax/training/checkpoints.py).
  checkpoints = run_checkpoints.Checkpoints(workdir, config)
  # After the one "does it fit" check, in this mesh's layout.
  train_state = setup.restore(checkpoints, step)
  # vit_jax/training/train_step.py jitted on the layout, state donated.
  step_fn = setup.train_step()

The train state is {'step', 'params', 'opt_state', 'window' (the metric sums since the last log
step), 'nonfinite' (the count of dropped updates and the last one's step)}: everything a resumed run
needs to continue exactly.
"""

import dataclasses
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from vit_jax import checkpoint, sharding, tasks
from vit_jax.configs import choices
from vit_jax.training import checkpoints as run_checkpoints
from vit_jax.training import optim
from vit_jax.training import train_step as train_step_lib

log = logging.getLogger(__name__)

DTYPES = {name: jnp.dtype(name) for name in choices.DTYPES}
# The init's -O0 on the CPU saves about 1 s of compile and costs about 30 ns a parameter to run.
INIT_O0_MAX_PARAMS = 20_000_000


def build_model(config, num_classes: int):
  """The model of `config` (fast paths included), built by its task (vit_jax/tasks/): a
  VisionTransformer or an MlpMixer with a head of `num_classes`, or a LitModel (no class head)."""
  return tasks.of(config).build_model(config, num_classes)


def abstract_params(config, model):
  """The parameters of `config`'s `model` as ShapeDtypeStructs (nothing is computed)."""
  init = tasks.of(config).init_params
  return jax.eval_shape(lambda rng: init(model, rng, config.image_size), jax.random.key(0))


@dataclasses.dataclass
class Setup:
  """A config's model, optimizer and train-state layout on a mesh (the module doc shows its use)."""

  config: Any
  task: Any  # The config's task (vit_jax/tasks/): what its objective builds and computes.
  model: Any
  tx: optax.GradientTransformation
  schedule: Callable
  mesh: Any
  init_fn: Callable  # rng -> train state.
  abstract: Any  # The train state as ShapeDtypeStructs.
  shardings: Any  # Where each array of the train state lives.

  @classmethod
  def create(cls, config, num_classes: int, mesh) -> 'Setup':
    task = tasks.of(config)
    model = task.build_model(config, num_classes)
    tx, schedule = optim.make_optimizer(config, frozen=task.frozen(config))

    def init(rng):
      params = task.init_params(model, rng, config.image_size)
      return {
        'step': jnp.zeros((), jnp.int32),
        'params': params,
        'opt_state': tx.init(params),
        'window': train_step_lib.zero_window(),
        'nonfinite': {'count': jnp.zeros((), jnp.int32), 'last_step': jnp.full((), -1, jnp.int32)},
      }

    abstract = jax.eval_shape(init, jax.random.key(config.seed))
    specs = sharding.param_specs(
      abstract['params'], mesh, config.sharding_strategy, config.fsdp_min_size
    )
    param_shardings = sharding.to_shardings(specs, mesh)
    shardings = {
      'params': param_shardings,
      'opt_state': sharding.follow_params(abstract['opt_state'], param_shardings, mesh),
    }
    for scalars in ('step', 'window', 'nonfinite'):
      shardings[scalars] = jax.tree.map(lambda _: sharding.replicated(mesh), abstract[scalars])
    return cls(config, task, model, tx, schedule, mesh, init, abstract, shardings)

  @property
  def batch_sharding(self):
    return sharding.batch_sharding(self.mesh)

  def state_spec(self):
    """The train state as ShapeDtypeStructs in its layout (to lower, or to restore into)."""
    return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), self.abstract, self.shardings
    )

  def init(self):
    """The train state at config.seed, born in its layout. On the CPU, a model of fewer than
    INIT_O0_MAX_PARAMS parameters has its init compiled at XLA's -O0: it runs once, and its
    compile took 2.8 s of the main job's 5.4 s start-up at the default level, 1.2 s at -O0; a
    larger one's -O0 code runs too long (ViT-B/16: compile 2.6 s and run 3.3 s at -O0, 3.6 s and
    0.6 s at the default level; benchmarks/RESULTS.md, (n))."""
    key = jax.random.key(self.config.seed)
    size = sum(x.size for x in jax.tree.leaves(self.abstract['params']))
    options = cpu_compiler_options(self.mesh, 0) if size < INIT_O0_MAX_PARAMS else None
    return jax.jit(self.init_fn, out_shardings=self.shardings, compiler_options=options)(key)

  def with_params(self, train_state, params):
    """`train_state` with `params` (placed in the layout) and a fresh optimizer state for them."""
    params = jax.device_put(params, self.shardings['params'])
    opt_state = jax.jit(self.tx.init, out_shardings=self.shardings['opt_state'])(params)
    return {**train_state, 'params': params, 'opt_state': opt_state}

  def with_pretrained(self, train_state):
    """A fresh run's start: the task's pretrained files loaded into `train_state`
    (config.pretrained_path, a release .npz or 'augreg:...', for classification; a LiT model's
    towers' files)."""
    params = self.task.load_pretrained(self.config, train_state['params'])
    return self.with_params(train_state, params)

  def restore(self, checkpoints: run_checkpoints.Checkpoints, step: int):
    """The checkpoint at `step`, restored straight into this mesh's layout (which may differ from
    the one it was saved from), after checking that it fits the model and optimizer of the
    config."""
    checkpoint.check_fits(
      checkpoints.stored_shapes(step),
      self.abstract,
      source=f'The checkpoint at step {step} in {checkpoints.directory}',
      hint='The config changes the architecture, so this run cannot resume under it: use a new '
      '--workdir (to start from these weights, set config.pretrained_path to its params.npz).',
    )
    return checkpoints.restore(step, self.state_spec())

  def train_step(self, *, donate: bool = True):
    """The jitted train step on this layout, the state donated (unless `donate=False`: tests reuse
    states). On the CPU it is compiled at XLA's -O1: the same bits as the default level (-O2) in
    the same time a step, its compile 20% shorter (benchmarks/RESULTS.md, (n))."""
    batch = self.batch_sharding
    micro = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(None, *batch.spec))
    loss_fn = self.task.loss_fn(self.model, self.config)
    num_classes = self.model.num_classes if self.config.mixup_p else None  # Mixup's targets.
    step = train_step_lib.make_train_step(
      loss_fn, self.tx, self.schedule, self.config, micro, num_classes=num_classes
    )
    return jax.jit(
      step,
      in_shardings=(self.shardings, batch),
      out_shardings=(self.shardings, sharding.replicated(self.mesh)),
      donate_argnums=0 if donate else (),
      compiler_options=cpu_compiler_options(self.mesh, 1),
    )


def cpu_compiler_options(mesh, level: int) -> dict | None:
  """XLA's optimisation level `level` for a program on `mesh`, when its devices are CPUs and
  XLA_FLAGS sets no level (what it sets wins: the test suite's -O0)."""
  if mesh.devices.flat[0].platform != 'cpu':
    return None
  if 'xla_backend_optimization_level' in os.environ.get('XLA_FLAGS', ''):
    return None
  return {'xla_backend_optimization_level': level}


def needs_pretrained(config) -> bool:
  """Whether a fresh run of `config` starts from files: config.pretrained_path, or a LiT model's
  tower files."""
  return tasks.of(config).needs_pretrained(config)


def restore_or_init(setup: Setup, checkpoints: run_checkpoints.Checkpoints):
  """The latest checkpoint restored, else a born-sharded init, fine-tuning from
  config.pretrained_path if set."""
  latest = checkpoints.latest_step()
  if latest is not None:
    log.info('Resuming from %s at step %d.', checkpoints.directory, latest)
    return setup.restore(checkpoints, latest)
  train_state = setup.init()
  return setup.with_pretrained(train_state) if needs_pretrained(setup.config) else train_state
