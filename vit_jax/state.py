"""Model and train state from a config: the one place that builds them (train, inference, benchmarks, tests, memory
plan).

  setup = state.Setup.create(config, num_classes, mesh)  # model, optimizer, the state's layout and shardings
  train_state = setup.init()                             # born sharded: each array made by jit in its sharding
  train_state = setup.with_pretrained(train_state)       # fine-tuning: config.pretrained_path loaded into the layout
  checkpoints = state.Checkpoints(workdir, config)       # the run's Orbax checkpoints; failed saves as user errors
  train_state = setup.restore(checkpoints, step)         # after the one "does it fit" check, in this mesh's layout
  step_fn = setup.train_step()                           # jitted, state donated: (state, batch) -> (state, stats)

The train state is {'step', 'params', 'opt_state', 'window' (the metric sums since the last log step), 'nonfinite'
(the count of dropped updates and the last one's step)}: everything a resumed run needs to continue exactly.
"""
import dataclasses
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from vit_jax import augreg, checkpoint, errors, losses, models, optim, preprocess, sharding
from vit_jax import workdir as workdir_lib
from vit_jax.configs import choices
from vit_jax.configs.choices import NONFINITE_POLICIES  # noqa: F401  (what config.nonfinite_policy takes)

log = logging.getLogger(__name__)

DTYPES = {name: jnp.dtype(name) for name in choices.DTYPES}
MIXUP_STREAM = 0x6D6978  # Folded into the seed for mixup's keys, apart from dropout's.


class NonFiniteError(errors.UserError, FloatingPointError):
  """A non-finite loss or gradient norm under config.nonfinite_policy='stop'."""


class SaveError(errors.UserError, OSError):
  """A checkpoint could not be saved (no space left, say); the earlier checkpoints are intact."""


def build_model(config, num_classes: int):
  """The model of `config` (fast paths included) with a head of `num_classes`: an MlpMixer for a Mixer's model
  config (models.is_mixer; of the fast paths it takes remat_policy only, check.validate refuses the others), else
  a VisionTransformer."""
  if models.is_mixer(config.model):
    return models.MlpMixer(num_classes=num_classes, dtype=DTYPES[config.dtype], remat_policy=config.remat_policy,
                           **config.model)
  return models.VisionTransformer(
      num_classes=num_classes, dtype=DTYPES[config.dtype], scan=config.scan_layers, remat_policy=config.remat_policy,
      attention=config.attention, fused_qkv=config.fused_qkv, **config.model)


def abstract_params(model, image_size: int):
  """The model's parameters as ShapeDtypeStructs (nothing is computed)."""
  dummy = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)['params']


# ----------------------------------------------------------------------------------------------------------------
# The train step.


def mixup(images, targets, key, p: float, num_shards: int):
  """AugReg's mixup: a ~ Beta(p, p), a = max(a, 1 - a); each example mixed with the next one of the same shard of
  `num_shards` contiguous shards of the batch (the last with the first), so no data crosses devices:
  a * x + (1 - a) * roll(x), a * y + (1 - a) * roll(y). Returns (images, soft targets)."""
  a = jax.random.beta(key, p, p)
  a = jnp.maximum(a, 1.0 - a)

  def mix(x):
    shards = x.reshape((num_shards, x.shape[0] // num_shards) + x.shape[1:])
    partner = jnp.roll(shards, 1, axis=1).reshape(x.shape)
    return (a * x + (1.0 - a) * partner).astype(x.dtype)

  return mix(images), mix(targets)


def make_train_step(model, tx, schedule, config, micro_shard) -> Callable:
  """(state, batch) -> (state, stats). Dropout keys come from (seed, step[, micro-batch]), mixup's from (seed, step).

  An update whose loss or gradient norm is not finite is dropped inside the step (the state stays as it was, so a
  non-finite state never exists) and counted in state['nonfinite']; the loop applies config.nonfinite_policy.
  state['window'] sums the finite steps' metrics since the last log step, so a resumed run logs exactly what an
  uninterrupted one would. Micro-batch i of config.accum_steps takes examples i, i + accum, ... (`micro_shard` keeps
  every device's share of each micro-batch on that device).
  """
  accum = config.accum_steps

  def loss_fn(params, images, labels, rng):
    logits = model.apply({'params': params}, images, train=True, rngs={'dropout': rng})
    per_example = losses.per_example_loss(logits, labels, kind=config.loss, label_smoothing=config.label_smoothing)
    return jnp.mean(per_example)

  grad_fn = jax.value_and_grad(loss_fn)

  def gradients(params, batch, rng):
    if accum == 1:
      return grad_fn(params, batch['image'], batch['label'], rng)

    def split(x):
      x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
      return jax.lax.with_sharding_constraint(x, micro_shard)

    def body(carry, inputs):
      i, images, labels = inputs
      return jax.tree.map(jnp.add, carry, grad_fn(params, images, labels, jax.random.fold_in(rng, i))), None

    micro = jax.tree.map(split, batch)
    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    sums, _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro['image'], micro['label']))
    return jax.tree.map(lambda x: x / accum, sums)

  def train_step(state, batch):
    step = state['step']
    rng = jax.random.fold_in(jax.random.key(config.seed), step)
    batch = {'image': preprocess.to_float(batch['image']), 'label': batch['label']}  # uint8 travels; float here.
    if config.mixup_p > 0:
      mix_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), MIXUP_STREAM), step)
      batch['image'], batch['label'] = mixup(batch['image'], jax.nn.one_hot(batch['label'], model.num_classes),
                                             mix_key, config.mixup_p, sharding.batch_size_per_step(None))
    loss, grads = gradients(state['params'], batch, rng)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
    window = jax.tree.map(lambda x: jnp.where(step % config.log_every_steps == 0, jnp.zeros_like(x), x),
                          state['window'])  # A new window starts after each log step.
    new_state = {
        'step': step + 1,
        'params': keep(params, state['params']),
        'opt_state': keep(opt_state, state['opt_state']),
        'window': {'loss': window['loss'] + jnp.where(finite, loss, 0.0),
                   'grad_norm': window['grad_norm'] + jnp.where(finite, grad_norm, 0.0),
                   'steps': window['steps'] + finite.astype(jnp.int32)},
        'nonfinite': {'count': state['nonfinite']['count'] + (~finite).astype(jnp.int32),
                      'last_step': jnp.where(finite, state['nonfinite']['last_step'], step + 1)},
    }
    return new_state, {'loss': loss, 'grad_norm': grad_norm,
                       'learning_rate': optim.applied_learning_rate(schedule, state['opt_state'])}

  return train_step


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints.


class Checkpoints:
  """The run's Orbax checkpoints in WORKDIR/checkpoints: saves every config.checkpoint_every_steps (asynchronous when
  config.async_checkpoints), the last config.keep kept; `read_only` for the after-training tools.

  A save that fails (no space left, a read-only disk...) is a SaveError at once when the save is synchronous, else
  at the next `check()`, `save()` or `wait()`: it names the step, the cause and the last good checkpoint, which
  Orbax's write-then-rename leaves intact, so rerunning after fixing the cause resumes from it.
  """

  def __init__(self, workdir: str, config=None, *, read_only: bool = False):
    self.directory = workdir_lib.checkpoints_dir(workdir)
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=config.keep, save_interval_steps=config.checkpoint_every_steps,
                                             enable_async_checkpointing=config.async_checkpoints)
    with _quiet_absl():  # Not Orbax's "Given directory is read only" warning.
      self.manager = ocp.CheckpointManager(self.directory, options=options,
                                           item_handlers=ocp.PyTreeCheckpointHandler() if read_only
                                           else ocp.StandardCheckpointHandler())
    self._saving = None  # The step of a save that may still be running.

  def latest_step(self) -> int | None:
    """The latest finalised checkpoint's step by the run directory's one rule (workdir.finalised_steps), which the
    completion check and the launchers use too; None without one."""
    return (workdir_lib.finalised_steps(self.directory) or [None])[-1]

  def _failed(self, e: Exception):
    step, self._saving = self._saving, None
    cause = errors.fault(e) or f'{type(e).__name__}: {" ".join(str(e).split())[:300]}.'
    good = ([s for s in workdir_lib.finalised_steps(self.directory) if s != step] or [None])[-1]
    last = (f'The last good checkpoint is step {good}; rerunning the same command resumes from it.' if good is not None
            else 'There is no earlier checkpoint.')
    raise SaveError(f'Saving the checkpoint of step {step} in {self.directory} failed: {cause} {last}') from e

  def check(self) -> None:
    """Raises SaveError if an asynchronous save has failed (cheap: no waiting)."""
    try:
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except  (Orbax re-raises the writer's error)
      self._failed(e)

  def save(self, step: int, train_state) -> None:
    self.wait()  # Orbax waits for the previous save anyway; waiting here names the step of a failed one rightly.
    self._saving = step
    try:
      self.manager.save(step, args=ocp.args.StandardSave(train_state), force=True)
    except Exception as e:  # pylint: disable=broad-except
      self._failed(e)

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._failed(e)
    self._saving = None

  def close(self) -> None:
    try:
      self.manager.close()
    except Exception as e:  # pylint: disable=broad-except  (the failure was reported, or is reported now)
      if self._saving is not None:
        self._failed(e)
      log.warning('Closing the checkpoints in %s: %s', self.directory, e)

  def stored_shapes(self, step: int) -> dict:
    return self.manager.item_metadata(step)

  def restore(self, step: int, target):
    return self.manager.restore(step, args=ocp.args.StandardRestore(target))

  def restore_params(self, step: int, abstract):
    """The 'params' subtree of a saved train state as NumPy arrays (a partial restore: no optimizer state read)."""
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
    restored = self.manager.restore(step, args=ocp.args.PyTreeRestore(
        item={'params': abstract}, restore_args={'params': restore_args}, partial_restore=True))
    return restored['params']


class _quiet_absl:  # pylint: disable=invalid-name
  def __enter__(self):
    self._logger = logging.getLogger('absl')
    self._level = self._logger.level
    self._logger.setLevel(logging.ERROR)

  def __exit__(self, *exc):
    self._logger.setLevel(self._level)


# ----------------------------------------------------------------------------------------------------------------
# The state's layout.


@dataclasses.dataclass
class Setup:
  """A config's model, optimizer and train-state layout on a mesh (the module doc shows its use)."""
  config: Any
  model: Any
  tx: optax.GradientTransformation
  schedule: Callable
  mesh: Any
  init_fn: Callable  # rng -> train state.
  abstract: Any  # The train state as ShapeDtypeStructs.
  shardings: Any  # Where each array of the train state lives.

  @classmethod
  def create(cls, config, num_classes: int, mesh) -> 'Setup':
    model = build_model(config, num_classes)
    tx, schedule = optim.make_optimizer(config)
    dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)

    def init(rng):
      params = model.init(rng, dummy, train=False)['params']
      return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params),
              'window': {'loss': jnp.zeros((), jnp.float32), 'grad_norm': jnp.zeros((), jnp.float32),
                         'steps': jnp.zeros((), jnp.int32)},
              'nonfinite': {'count': jnp.zeros((), jnp.int32), 'last_step': jnp.full((), -1, jnp.int32)}}

    abstract = jax.eval_shape(init, jax.random.key(config.seed))
    specs = sharding.param_specs(abstract['params'], mesh, config.sharding_strategy, config.fsdp_min_size)
    param_shardings = sharding.to_shardings(specs, mesh)
    shardings = {'params': param_shardings,
                 'opt_state': sharding.follow_params(abstract['opt_state'], param_shardings, mesh)}
    for scalars in ('step', 'window', 'nonfinite'):
      shardings[scalars] = jax.tree.map(lambda _: sharding.replicated(mesh), abstract[scalars])
    return cls(config, model, tx, schedule, mesh, init, abstract, shardings)

  @property
  def batch_sharding(self):
    return sharding.batch_sharding(self.mesh)

  def init(self):
    return jax.jit(self.init_fn, out_shardings=self.shardings)(jax.random.key(self.config.seed))

  def with_params(self, train_state, params):
    """`train_state` with `params` (placed in the layout) and a fresh optimizer state for them."""
    params = jax.device_put(params, self.shardings['params'])
    opt_state = jax.jit(self.tx.init, out_shardings=self.shardings['opt_state'])(params)
    return {**train_state, 'params': params, 'opt_state': opt_state}

  def with_pretrained(self, train_state):
    """Fine-tuning: config.pretrained_path (a release .npz, or 'augreg:...') loaded into `train_state`."""
    path = augreg.resolve(self.config.pretrained_path, self.config.augreg_index)
    log.info('Fine-tuning from %s.', path)
    params = checkpoint.load_pretrained(pretrained_path=path, init_params=train_state['params'],
                                        model_config=self.config.model, image_size=self.config.image_size)
    return self.with_params(train_state, params)

  def restore(self, checkpoints: Checkpoints, step: int):
    """The checkpoint at `step`, restored straight into this mesh's layout (which may differ from the one it was
    saved from), after checking that it fits the model and optimizer of the config."""
    checkpoint.check_fits(
        checkpoints.stored_shapes(step), self.abstract, source=f'The checkpoint at step {step} in '
        f'{checkpoints.directory}', hint='The config changes the architecture, so this run cannot resume under it: '
        'use a new --workdir (to start from these weights, set config.pretrained_path to its params.npz).')
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), self.abstract,
                          self.shardings)
    return checkpoints.restore(step, target)

  def train_step(self, *, donate: bool = True):
    """The jitted train step on this layout, the state donated (unless `donate=False`: tests reuse states)."""
    batch = self.batch_sharding
    micro = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(None, *batch.spec))
    return jax.jit(make_train_step(self.model, self.tx, self.schedule, self.config, micro),
                   in_shardings=(self.shardings, batch), out_shardings=(self.shardings, sharding.replicated(self.mesh)),
                   donate_argnums=0 if donate else ())


def restore_or_init(setup: Setup, checkpoints: Checkpoints):
  """The latest checkpoint restored, else a born-sharded init, fine-tuning from config.pretrained_path if set."""
  latest = checkpoints.latest_step()
  if latest is not None:
    log.info('Resuming from %s at step %d.', checkpoints.directory, latest)
    return setup.restore(checkpoints, latest)
  train_state = setup.init()
  return setup.with_pretrained(train_state) if setup.config.pretrained_path else train_state
