"""train_and_evaluate: the training loop, on a device mesh, and nothing else."""
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from vit_jax import augreg, checkpoint, evaluators, flops, input_pipeline, losses, metrics, models, optim, preemption
from vit_jax import preprocess
from vit_jax import sharding, utils
from vit_jax import workdir as workdir_lib
from vit_jax.configs import check as config_check
from vit_jax.configs import durations

log = logging.getLogger(__name__)

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def build_model(config, num_classes: int) -> models.VisionTransformer:
  if config.dtype not in DTYPES:
    raise ValueError(f'Unknown config.dtype {config.dtype!r}; valid: {", ".join(DTYPES)}.')
  return models.VisionTransformer(
      num_classes=num_classes, dtype=DTYPES[config.dtype], scan=config.get('scan_layers', False),
      remat_policy=config.get('remat_policy', 'none'), attention=config.get('attention', 'plain'),
      fused_qkv=config.get('fused_qkv', False), **config.model)


def check_batch_sizes(config, mesh) -> None:
  """Global batch sizes must split evenly over processes, batch shards and accumulation steps."""
  shards, processes = sharding.batch_size_per_step(mesh), jax.process_count()
  for name in ('batch_size', 'eval_batch_size'):
    size = config[name]
    if size <= 0 or size % shards or size % processes:
      raise ValueError(f'config.{name}={size} must be a positive multiple of the {shards} batch shards of the mesh '
                       f'{dict(mesh.shape)} and of the {processes} processes; e.g. {shards * processes * 8}.')
  if config.accum_steps < 1 or config.batch_size % (config.accum_steps * shards):
    raise ValueError(f'config.batch_size={config.batch_size} must divide into accum_steps={config.accum_steps} '
                     f'micro-batches of a multiple of {shards} (the batch shards).')


def check_image_size(config) -> None:
  px = models.token_pixels(config.model)
  if config.image_size <= 0 or config.image_size % px:
    raise ValueError(f'config.image_size={config.image_size} is not a multiple of the {px} px per token of '
                     f'{config.model.get("model_name") or "the model"} (patch size times any ResNet stride); '
                     f'e.g. use {max(px, config.image_size // px * px)}.')


NONFINITE_POLICIES = ('stop', 'skip')
MIXUP_STREAM = 0x6D6978  # Folded into the seed for mixup's keys, apart from dropout's.


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


def make_train_step(model, tx, schedule, config, batch_shard):
  """(state, batch) -> (state, metrics). Dropout keys come from (seed, step[, micro-batch]).

  An update whose loss or gradient norm is not finite is dropped inside the step (the state stays as it was, so a
  non-finite state never exists) and counted in state['nonfinite']; the loop applies config.nonfinite_policy.
  state['window'] sums the finite steps' metrics since the last log step, so a resumed run logs exactly what an
  uninterrupted one would.
  """
  accum = config.accum_steps
  if config.mixup_p < 0:
    raise ValueError(f'config.mixup_p must be >= 0 (0: off), got {config.mixup_p}.')

  def loss_fn(params, images, labels, rng):
    logits = model.apply({'params': params}, images, train=True, rngs={'dropout': rng})
    per_example = losses.per_example_loss(logits, labels, kind=config.loss, label_smoothing=config.label_smoothing)
    return jnp.mean(per_example)

  grad_fn = jax.value_and_grad(loss_fn)

  def train_step(state, batch):
    step = state['step']
    rng = jax.random.fold_in(jax.random.key(config.seed), step)
    batch = {'image': preprocess.to_float(batch['image']), 'label': batch['label']}  # uint8 travels; float here.
    if config.mixup_p > 0:
      num_classes = model.num_classes
      mix_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), MIXUP_STREAM), step)
      batch['image'], batch['label'] = mixup(batch['image'], jax.nn.one_hot(batch['label'], num_classes),
                                             mix_key, config.mixup_p, sharding.batch_size_per_step(None))
    if accum == 1:
      loss, grads = grad_fn(state['params'], batch['image'], batch['label'], rng)
    else:
      # Micro-batch i takes examples i, i + accum, ...: every device holds an equal share of every micro-batch.
      def split(x):
        x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, batch_shard)

      micro = jax.tree.map(split, batch)

      def body(carry, inputs):
        i, images, labels = inputs
        loss, grads = grad_fn(state['params'], images, labels, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (loss, grads)), None

      zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state['params']))
      (loss, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro['image'], micro['label']))
      loss, grads = jax.tree.map(lambda x: x / accum, (loss, grads))
    grad_norm = optax.global_norm(grads)
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
    stats = {'loss': loss, 'grad_norm': grad_norm, 'learning_rate': schedule(step)}
    return new_state, stats

  return train_step


def _checkpoint_manager(config, workdir) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep, save_interval_steps=config.checkpoint_every_steps,
      enable_async_checkpointing=config.async_checkpoints)
  directory = workdir_lib.join(workdir if '://' in workdir else os.path.abspath(workdir), 'checkpoints')
  return ocp.CheckpointManager(directory, options=options, item_handlers=ocp.StandardCheckpointHandler())


class CheckpointMismatchError(ValueError):
  """The run's checkpoint does not fit the model and optimiser of the config (e.g. a changed width)."""


def check_checkpoint_fits(manager, step: int, target) -> None:
  """Raises CheckpointMismatchError naming every array whose stored shape differs from `target`'s (or that one side
  lacks), before a restore is attempted."""
  stored = {utils.path_name(p): tuple(m.shape) for p, m in jax.tree_util.tree_leaves_with_path(
      manager.item_metadata(step)) if hasattr(m, 'shape')}
  wanted = {utils.path_name(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(target)}
  problems = [f'{name}: checkpoint {stored.get(name, "absent")} vs config {wanted.get(name, "absent")}'
              for name in sorted(stored.keys() | wanted.keys(), key=lambda n: (not n.startswith('params/'), n))
              if stored.get(name) != wanted.get(name)]  # Parameters first, then their optimiser state.
  if problems:
    listed = '; '.join(problems[:8]) + (f'; and {len(problems) - 8} more' if len(problems) > 8 else '')
    raise CheckpointMismatchError(
        f'The checkpoint at step {step} in {manager.directory} does not fit the model of this config '
        f'({len(problems)} array(s) differ: {listed}). The config changes the architecture, so this run cannot resume '
        'under it: use a new --workdir (to start from these weights, set config.pretrained_path to its params.npz).')


def state_layout(config, model, tx, mesh):
  """(init function, abstract state, shardings): the train state's shapes and where each array lives."""
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
  return init, abstract, shardings


def init_state(config, model, tx, mesh):
  """Born-sharded train state: each array is created by jit directly in its sharding, never whole on one device."""
  init, _, shardings = state_layout(config, model, tx, mesh)
  return jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed)), shardings


def _load_pretrained(config, state, shardings, tx):
  path = augreg.resolve(config.pretrained_path, config.augreg_index)
  log.info('Fine-tuning from %s.', path)
  params = checkpoint.load_pretrained(pretrained_path=path, init_params=state['params'],
                                      model_config=config.model, image_size=config.image_size)
  opt_state = jax.jit(tx.init, out_shardings=shardings['opt_state'])(params)
  return {**state, 'params': params, 'opt_state': opt_state}


def _restore_or_init(config, model, tx, mesh, manager):
  """(state, shardings): the latest checkpoint restored straight into `mesh`'s shardings (which may differ from the
  mesh it was saved from), else a born-sharded init, fine-tuning from config.pretrained_path if set."""
  latest = manager.latest_step()
  if latest is None:
    state, shardings = init_state(config, model, tx, mesh)
    if config.pretrained_path:
      state = _load_pretrained(config, state, shardings, tx)
    return state, shardings
  log.info('Resuming from %s at step %d.', manager.directory, latest)
  _, abstract, shardings = state_layout(config, model, tx, mesh)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
  check_checkpoint_fits(manager, latest, target)
  return manager.restore(latest, args=ocp.args.StandardRestore(target)), shardings


class NonFiniteError(FloatingPointError):
  """A non-finite loss or gradient norm under config.nonfinite_policy='stop'."""


def check_nonfinite_policy(config) -> None:
  if config.nonfinite_policy not in NONFINITE_POLICIES:
    raise ValueError(f'Unknown config.nonfinite_policy {config.nonfinite_policy!r}; valid: '
                     f'{", ".join(NONFINITE_POLICIES)}.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False,
                       reevaluate: bool = False) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint); returns the final eval metrics.

  On a preemption notice (SIGTERM, a first Ctrl-C, or JAX's multi-host preemption sync point) it saves a checkpoint
  at the step all processes agree on and returns {'preempted_at_step': step}; the same call then resumes from there.
  A workdir that holds a run of another config is refused unless `allow_config_change` (see vit_jax/workdir.py).
  A run that is already complete is left as it is: its last evaluation is returned and nothing is written; with
  `reevaluate` its checkpoint is evaluated again (logged and returned, still nothing written).
  """
  config_check.check_fields(config)  # Before anything is read or written: no field is silently ignored.
  is_main = jax.process_index() == 0
  mesh = sharding.make_mesh(config.mesh)
  check_batch_sizes(config, mesh)
  check_image_size(config)
  check_nonfinite_policy(config)
  changes = workdir_lib.check_config(config, workdir, allow_change=allow_config_change)
  user_config = config  # What config.json records; `config` below has every duration in steps.
  info = input_pipeline.get_info(evaluators.primary(config))
  config = durations.resolved(config, info.num_train)
  manager = _checkpoint_manager(config, workdir)
  latest = manager.latest_step()
  if latest is not None and latest >= config.total_steps and not reevaluate:
    manager.close()
    log.info('The run in %s is complete (step %d of total_steps=%d): nothing to do. Raise config.total_steps to '
             'train on, or pass --reevaluate to evaluate its checkpoint again.', workdir, latest, config.total_steps)
    return metrics.last_eval(workdir)
  num_classes = config.num_classes if config.num_classes > 0 else info.num_classes
  log.info('Dataset %s: %d classes, %d train / %d eval examples. Mesh %s.', config.dataset, num_classes,
           info.num_train, info.num_eval, dict(mesh.shape))
  model = build_model(config, num_classes)
  speed = metrics.Speed(flops.train_flops(config.model, config.image_size, num_classes), jax.device_count(),
                        flops.peak_tflops(jax.devices()[0].device_kind, config.dtype))
  tx, schedule = optim.make_optimizer(config)

  try:  # However the loop ends, an async save already under way completes.
    with jax.set_mesh(mesh), preemption.PreemptionWatch() as watch:
      state, shardings = _restore_or_init(config, model, tx, mesh, manager)
      start_step, nonfinite_seen = (int(x) for x in jax.device_get((state['step'], state['nonfinite']['count'])))
      # The run has started: only now is the config recorded, so a refused or failed start changes nothing.
      workdir_lib.record_config(user_config, workdir, changes)
      workdir_lib.record_class_names(workdir, info.class_names)
      if is_main and not reevaluate and metrics.drop_records_after(workdir, start_step):
        log.info('Dropped the metrics.jsonl records after step %d: the resumed run writes them again.', start_step)
      writer = metrics.create_writer(workdir, is_main and not reevaluate)

      batch_shard = sharding.batch_sharding(mesh)
      micro_shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, *batch_shard.spec))
      train_step = jax.jit(make_train_step(model, tx, schedule, config, micro_shard),
                           in_shardings=(shardings, batch_shard), out_shardings=(shardings, sharding.replicated(mesh)),
                           donate_argnums=0)
      processes = jax.process_count()
      evals = evaluators.build(config, model, mesh)

      def run_evals(step, due=lambda ev: True):
        """Runs the evaluators that are due at `step`; writes and logs their metrics; returns them."""
        result = {}
        for ev in evals:
          if due(ev):
            result.update(ev.run(state['params']))
        if result:
          writer.write_scalars(step, {k: v for k, v in result.items() if not k.endswith('num_examples')})
          log.info('step %d: %s', step, ', '.join(f'{k} {v:.4f}' for k, v in sorted(result.items())
                                                  if not k.endswith('num_examples')))
        return result

      def check_finite():
        """Applies config.nonfinite_policy to the updates dropped since the last check (a host sync: call rarely)."""
        nonlocal nonfinite_seen
        count, last_bad = (int(x) for x in jax.device_get((state['nonfinite']['count'],
                                                           state['nonfinite']['last_step'])))
        if count == nonfinite_seen:
          return
        if config.nonfinite_policy == 'stop':
          raise NonFiniteError(
              f'Non-finite loss or gradient norm at step {last_bad} ({count - nonfinite_seen} such step(s) since the '
              f'last check); those updates were not applied and nothing was saved. The last good checkpoint is step '
              f'{manager.latest_step()} in {manager.directory} (rerunning resumes from it). Lower the learning rate, '
              'check the data, or set config.nonfinite_policy=skip to drop such updates and go on.')
        log.warning('Dropped %d update(s) with a non-finite loss or gradient norm (the last at step %d); %d in all.',
                    count - nonfinite_seen, last_bad, count)
        nonfinite_seen = count

      def save(step):
        check_finite()  # Never save over a good checkpoint after a non-finite step under 'stop'.
        manager.save(step, args=ocp.args.StandardSave(state), force=True)

      if reevaluate and start_step >= config.total_steps:
        return run_evals(start_step)
      result, preempted_at = {}, None
      train_ds = input_pipeline.train_dataset(config, local_batch_size=config.batch_size // processes,
                                              process_index=jax.process_index(), process_count=processes,
                                              start_step=start_step)
      batches = input_pipeline.prefetch_to_device(iter(train_ds), config.prefetch, batch_shard)
      progress = metrics.Progress(config.total_steps, start_step, enabled=is_main)
      try:
        window_start, window_time = start_step, time.monotonic()
        for step in range(start_step + 1, config.total_steps + 1):
          state, stats = train_step(state, next(batches))  # No host sync here.
          progress.step(step)
          last = step == config.total_steps
          if step % config.log_every_steps == 0 or last:
            check_finite()
            window = jax.device_get(state['window'])  # Sums over the steps since the last log step (see the step).
            now = time.monotonic()
            img_per_sec = (step - window_start) * config.batch_size / (now - window_time)
            scalars = {'train/learning_rate': float(jax.device_get(stats['learning_rate'])),
                       **speed.scalars(img_per_sec)}
            if window['steps']:
              scalars['train/loss'] = window['loss'] / window['steps']
              scalars['train/grad_norm'] = window['grad_norm'] / window['steps']
            if nonfinite_seen:
              scalars['train/nonfinite_steps'] = nonfinite_seen
            writer.write_scalars(step, scalars)
            progress.report(step, scalars.get('train/loss', float('nan')), img_per_sec, scalars.get('train/mfu'))
            window_start, window_time = step, time.monotonic()
          ran = run_evals(step, lambda ev: step % ev.every_steps == 0 or last)  # pylint: disable=cell-var-from-loop
          if ran:
            result = ran
            window_time = time.monotonic()  # Keep evaluation out of img/s.
          saved = step % config.checkpoint_every_steps == 0 or last
          if saved:
            save(step)
          if watch.reached(step):
            if not saved:
              save(step)
            preempted_at = step
            break
      finally:
        progress.close()
      manager.wait_until_finished()
      writer.flush()
      if preempted_at is not None:
        log.warning('%s: saved a checkpoint at step %d in %s; rerun the same command to resume.',
                    'Stopped by Ctrl-C' if watch.interrupted else 'Preempted', preempted_at, manager.directory)
        return {'preempted_at_step': preempted_at}
      if config.export_npz:
        params = jax.tree.map(
            lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), state['params'])
        if is_main:
          checkpoint.save_npz(workdir_lib.join(workdir, 'params.npz'), params)
    return result
  finally:
    manager.close()
