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

from vit_jax import checkpoint, evaluate, input_pipeline, losses, metrics, models, optim, sharding

log = logging.getLogger(__name__)

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def build_model(config, num_classes: int) -> models.VisionTransformer:
  if config.dtype not in DTYPES:
    raise ValueError(f'Unknown config.dtype {config.dtype!r}; valid: {", ".join(DTYPES)}.')
  return models.VisionTransformer(num_classes=num_classes, dtype=DTYPES[config.dtype], **config.model)


def check_batch_sizes(config, mesh) -> None:
  """Global batch sizes must split evenly over processes, batch shards and accumulation steps."""
  shards, processes = sharding.batch_size_per_step(mesh), jax.process_count()
  for name in ('batch_size', 'eval_batch_size'):
    size = config[name]
    if size <= 0 or size % shards or size % processes:
      raise ValueError(f'config.{name}={size} must be a positive multiple of the {shards} batch shards of the mesh '
                       f'{dict(mesh.shape)} and of the {processes} processes; e.g. {shards * processes * 8}.')
  shards_per_process = (config.input_shards or processes) // processes
  if config.input_shards % processes or config.batch_size // processes % shards_per_process:
    raise ValueError(f'config.input_shards={config.input_shards} must be 0 or a multiple of the {processes} processes '
                     f'whose share ({shards_per_process} per process) divides the per-process batch '
                     f'{config.batch_size // processes}.')
  if config.accum_steps < 1 or config.batch_size % (config.accum_steps * shards):
    raise ValueError(f'config.batch_size={config.batch_size} must divide into accum_steps={config.accum_steps} '
                     f'micro-batches of a multiple of {shards} (the batch shards).')


def check_image_size(config) -> None:
  px = models.token_pixels(config.model)
  if config.image_size <= 0 or config.image_size % px:
    raise ValueError(f'config.image_size={config.image_size} is not a multiple of the {px} px per token of '
                     f'{config.model.get("model_name") or "the model"} (patch size times any ResNet stride); '
                     f'e.g. use {max(px, config.image_size // px * px)}.')


def make_train_step(model, tx, schedule, config, batch_shard):
  """(state, batch) -> (state, metrics). Dropout keys come from (seed, step[, micro-batch])."""
  accum = config.accum_steps

  def loss_fn(params, images, labels, rng):
    logits = model.apply({'params': params}, images, train=True, rngs={'dropout': rng})
    per_example = losses.per_example_loss(logits, labels, kind=config.loss, label_smoothing=config.label_smoothing)
    return jnp.mean(per_example)

  grad_fn = jax.value_and_grad(loss_fn)

  def train_step(state, batch):
    step = state['step']
    rng = jax.random.fold_in(jax.random.key(config.seed), step)
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
    updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    new_state = {'step': step + 1, 'params': params, 'opt_state': opt_state}
    stats = {'loss': loss, 'grad_norm': optax.global_norm(grads), 'learning_rate': schedule(step)}
    return new_state, stats

  return train_step


def _write_config(config, workdir) -> None:
  with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')


def _checkpoint_manager(config, workdir) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep, save_interval_steps=config.checkpoint_every_steps,
      enable_async_checkpointing=config.async_checkpoints)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'), options=options)


def state_layout(config, model, tx, mesh):
  """(init function, abstract state, shardings): the train state's shapes and where each array lives."""
  dummy = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)

  def init(rng):
    params = model.init(rng, dummy, train=False)['params']
    return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params)}

  abstract = jax.eval_shape(init, jax.random.key(config.seed))
  specs = sharding.param_specs(abstract['params'], mesh, config.sharding_strategy, config.fsdp_min_size)
  param_shardings = sharding.to_shardings(specs, mesh)
  shardings = {'step': sharding.replicated(mesh), 'params': param_shardings,
               'opt_state': sharding.follow_params(abstract['opt_state'], param_shardings, mesh)}
  return init, abstract, shardings


def init_state(config, model, tx, mesh):
  """Born-sharded train state: each array is created by jit directly in its sharding, never whole on one device."""
  init, _, shardings = state_layout(config, model, tx, mesh)
  return jax.jit(init, out_shardings=shardings)(jax.random.key(config.seed)), shardings


def _load_pretrained(config, state, shardings, tx):
  params = checkpoint.load_pretrained(pretrained_path=config.pretrained_path, init_params=state['params'],
                                      model_config=config.model, image_size=config.image_size)
  opt_state = jax.jit(tx.init, out_shardings=shardings['opt_state'])(params)
  return {'step': state['step'], 'params': params, 'opt_state': opt_state}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint); returns the final eval metrics."""
  is_main = jax.process_index() == 0
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    _write_config(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  check_batch_sizes(config, mesh)
  check_image_size(config)
  info = input_pipeline.get_info(config)
  num_classes = config.num_classes if config.num_classes > 0 else info.num_classes
  log.info('Dataset %s: %d classes, %d train / %d eval examples. Mesh %s.', config.dataset, num_classes,
               info.num_train, info.num_eval, dict(mesh.shape))
  model = build_model(config, num_classes)
  tx, schedule = optim.make_optimizer(config)
  writer = metrics.create_writer(workdir, is_main)
  manager = _checkpoint_manager(config, workdir)

  with jax.set_mesh(mesh):
    latest = manager.latest_step()
    if latest is not None:  # Restored straight into the (possibly new) mesh's shardings; no init needed.
      log.info('Resuming from %s at step %d.', manager.directory, latest)
      _, abstract, shardings = state_layout(config, model, tx, mesh)
      target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
      state = manager.restore(latest, args=ocp.args.StandardRestore(target))
    else:
      state, shardings = init_state(config, model, tx, mesh)
      if config.pretrained_path:
        log.info('Fine-tuning from %s.', config.pretrained_path)
        state = _load_pretrained(config, state, shardings, tx)
    start_step = int(jax.device_get(state['step']))

    batch_shard = sharding.batch_sharding(mesh)
    micro_shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, *batch_shard.spec))
    train_step = jax.jit(make_train_step(model, tx, schedule, config, micro_shard),
                         in_shardings=(shardings, batch_shard), out_shardings=(shardings, sharding.replicated(mesh)),
                         donate_argnums=0)
    eval_step = jax.jit(evaluate.make_eval_step(model, loss=config.loss),
                        in_shardings=(shardings['params'], batch_shard), out_shardings=sharding.replicated(mesh))

    processes = jax.process_count()

    def eval_batches():
      ds = input_pipeline.eval_dataset(config, local_batch_size=config.eval_batch_size // processes,
                                       process_index=jax.process_index(), process_count=processes)
      return input_pipeline.prefetch_to_device(ds.as_numpy_iterator(), config.prefetch, batch_shard)

    def run_eval(step):
      result = evaluate.evaluate(eval_step, state['params'], eval_batches())
      writer.write_scalars(step, {k: v for k, v in result.items() if k != 'eval/num_examples'})
      log.info('step %d: eval accuracy %.4f, loss %.4f on %d examples', step, result['eval/accuracy'],
                   result['eval/loss'], result['eval/num_examples'])
      return result

    result = {}
    if start_step >= config.total_steps:
      log.info('Already trained for %d >= total_steps=%d steps.', start_step, config.total_steps)
      result = run_eval(start_step)
    else:
      train_ds = input_pipeline.train_dataset(config, local_batch_size=config.batch_size // processes,
                                              process_index=jax.process_index(), process_count=processes,
                                              start_step=start_step)
      batches = input_pipeline.prefetch_to_device(train_ds.as_numpy_iterator(), config.prefetch, batch_shard)
      progress = metrics.Progress(config.total_steps, start_step, enabled=is_main)
      window, window_start, window_time = None, start_step, time.monotonic()
      for step in range(start_step + 1, config.total_steps + 1):
        state, stats = train_step(state, next(batches))
        window = stats if window is None else jax.tree.map(jnp.add, window, stats)  # No host sync here.
        last = step == config.total_steps
        if step % config.log_every_steps == 0 or last:
          window = jax.device_get(window)
          n = step - window_start
          now = time.monotonic()
          img_per_sec = n * config.batch_size / (now - window_time)
          scalars = {'train/loss': window['loss'] / n, 'train/grad_norm': window['grad_norm'] / n,
                     'train/learning_rate': float(jax.device_get(stats['learning_rate'])),
                     'train/img_per_sec': img_per_sec}
          writer.write_scalars(step, scalars)
          progress.report(step, scalars['train/loss'], img_per_sec)
          window, window_start, window_time = None, step, time.monotonic()
        if step % config.eval_every_steps == 0 or last:
          result = run_eval(step)
          window_time = time.monotonic()  # Keep evaluation out of img/s.
        if step % config.checkpoint_every_steps == 0 or last:
          manager.save(step, args=ocp.args.StandardSave(state), force=True)
      progress.close()
    manager.wait_until_finished()
    writer.flush()
    if config.export_npz:
      params = jax.tree.map(
          lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), state['params'])
      if is_main:
        checkpoint.save_npz(os.path.join(workdir, 'params.npz'), params)
  manager.close()
  return result
