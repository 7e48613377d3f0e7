"""train_and_evaluate: the training loop, on a device mesh, and nothing else.

What it builds on: the config is checked whole first (vit_jax/training/preflight.py); the workdir's
lock, config and files (vit_jax/runtime/lock.py, vit_jax/runtime/workdir.py); the model, train state, checkpoints and train step
(vit_jax/training/state.py); batches (vit_jax/data/input_pipeline.py); evaluators (vit_jax/evaluators/); metric writers (vit_jax/training/metrics.py).
"""
import logging
import time

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from vit_jax import augreg, checkpoint, errors, evaluators, io
from vit_jax.data import input_pipeline
from vit_jax.models import flops
from vit_jax.runtime import distributed, goodput
from vit_jax.training import metrics
from vit_jax import tasks
from vit_jax.runtime import preemption
from vit_jax.training import preflight
from vit_jax.runtime import watchdog as watchdog_lib
from vit_jax import sharding
from vit_jax.training import checkpoints as run_checkpoints
from vit_jax.training import state as state_lib
from vit_jax.training import train_step as train_step_lib
from vit_jax.runtime import workdir as workdir_lib
from vit_jax.configs import check
from vit_jax.runtime.lock import Lock

log = logging.getLogger(__name__)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, allow_config_change: bool = False,
                       reevaluate: bool = False) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint); returns the final eval metrics.

  On a preemption notice (SIGTERM, a first Ctrl-C, or JAX's multi-host preemption sync point) it saves a checkpoint
  at the step all processes agree on and returns {'preempted_at_step': step}; the same call then resumes from there.
  A workdir that holds a run of another config is refused unless `allow_config_change` (see vit_jax/runtime/workdir.py), and
  one that another live run holds is refused at once (vit_jax/runtime/lock.py). A run that is already complete is left as it
  is: its last evaluation is returned and nothing is written; with `reevaluate` its checkpoint is evaluated again
  (logged and returned, still nothing written).
  """
  preflight.validate(config, devices=jax.device_count(), process_count=jax.process_count())  # Whole, before any I/O.
  mesh = sharding.make_mesh(config.mesh)
  is_main = jax.process_index() == 0
  lock = Lock(workdir, enabled=is_main)
  clock = goodput.Clock()  # In 'startup' since this process started.
  with preemption.PreemptionWatch() as watch, errors.quiet_faults(), _watchdog(clock, config):
    workdir_lib.check_usable(workdir)  # Then the dataset, before the workdir is made (by the lock).
    info = input_pipeline.get_info(evaluators.primary(config))
    changes = distributed.on_main(lambda: _start(config, workdir, lock, allow_config_change))
    try:
      resolved = preflight.validate(config, num_train=info.num_train)  # Durations in steps.
      checkpoints = run_checkpoints.Checkpoints(workdir, resolved)
      try:
        setup = state_lib.Setup.create(resolved, _num_classes(resolved, info), mesh)
        with jax.set_mesh(mesh):
          if workdir_lib.reached_target(workdir, config, num_train=info.num_train):
            return _complete(setup, checkpoints, workdir, reevaluate)
          train_state = state_lib.restore_or_init(setup, checkpoints)
          start = int(jax.device_get(train_state['step']))
          watch.training(start)
          if is_main:  # The run has started: only now are its files written, so a failed start changes nothing.
            workdir_lib.record_config(config, workdir, changes)
            workdir_lib.record_dataset(workdir, class_names=info.class_names, num_train=info.num_train,
                                       num_eval=info.num_eval)
            _record_vocabulary(resolved, workdir)
            if workdir_lib.drop_records_after(workdir, start):
              log.info('Dropped the metrics.jsonl records after step %d: the resumed run writes them again.', start)
          loop = Loop(setup, checkpoints, workdir, watch, train_state, evaluators.build(resolved, setup.model, mesh),
                      clock)
          try:
            result = loop.run()
            clock.enter('checkpoint')
            if 'preempted_at_step' not in result:
              _export(setup, loop.state, workdir)
          except BaseException:
            loop.record.write(ended='failed')
            raise
          loop.record.write(ended='preempted' if 'preempted_at_step' in result else 'finished')
          if is_main:
            log.info('Where the time went: %s (WORKDIR/%s; `python -m vit_jax.visualize goodput %s` draws it).',
                     goodput.describe(goodput.summary(goodput.read(workdir))), workdir_lib.GOODPUT_FILE, workdir)
          return result
      finally:
        checkpoints.close()
    finally:
      lock.release()


def _watchdog(clock, config) -> watchdog_lib.Watchdog:
  """The hang and lost-peer monitor of this process (vit_jax/runtime/watchdog.py)."""
  return watchdog_lib.Watchdog(clock, config.faults, process_index=jax.process_index(),
                               process_count=jax.process_count(), client=distributed.client())


def _start(config, workdir: str, lock: Lock, allow_config_change: bool):
  """Process 0's start: the lock, the changed-config check, and a pretrained file that is really a checkpoint."""
  lock.acquire()
  try:
    changes = workdir_lib.check_config(config, workdir, allow_change=allow_config_change)
    pretrained = tasks.of(config).fine_tunes_from(config)
    if pretrained and not workdir_lib.holds_run(workdir):
      checkpoint.recognise(augreg.resolve(pretrained, config.augreg_index))
  except BaseException:
    lock.release()
    raise
  return changes


def _record_vocabulary(config, workdir: str) -> None:
  """A run whose captions build its tokenizer's vocabulary (vit_jax/data/captions.py) keeps it as
  WORKDIR/vocab.model."""
  run_captions = tasks.of(config).captions(config)
  vocab = run_captions.vocabulary() if run_captions is not None else None
  if vocab is not None:
    io.write_bytes(workdir_lib.path(workdir, workdir_lib.VOCAB_FILE), vocab)


def _num_classes_of(model) -> int | None:
  return getattr(model, 'num_classes', None)  # A LiT model has no class head.


def _num_classes(config, info) -> int:
  return config.num_classes if config.num_classes > 0 else info.num_classes


def _complete(setup, checkpoints, workdir: str, reevaluate: bool) -> dict[str, float]:
  """A run at its target step: its last evaluation, or with `reevaluate` a new one of its checkpoint. Nothing is
  written, except a params.npz that a run stopped before writing (so that the run is complete: vit_jax/runtime/workdir.py)."""
  latest, config = checkpoints.latest_step(), setup.config
  params_missing = config.export_npz and not io.exists(workdir_lib.path(workdir, workdir_lib.PARAMS_FILE))
  if reevaluate or params_missing:
    train_state = setup.restore(checkpoints, latest)
    if params_missing:
      log.info('The run in %s reached its last step but has no %s yet: writing it.', workdir,
               workdir_lib.PARAMS_FILE)
      _export(setup, train_state, workdir)
    if reevaluate:
      return _evaluate(evaluators.build(config, setup.model, setup.mesh), train_state['params'], latest)
  log.info('The run in %s is complete (step %d of total_steps=%d): nothing to do. Raise config.total_steps to '
           'train on, or pass --reevaluate to evaluate its checkpoint again.', workdir, latest, config.total_steps)
  return workdir_lib.last_eval(workdir)


def _evaluate(evals, params, step: int) -> dict[str, float]:
  result = {}
  for ev in evals:
    result.update(ev.run(params))
  if result:
    log.info('step %d: %s', step, ', '.join(f'{k} {v:.4f}' for k, v in sorted(result.items())
                                            if not k.endswith('num_examples')))
  return result


def _export(setup, train_state, workdir: str) -> None:
  """WORKDIR/params.npz in the release layout (config.export_npz), gathered from every process."""
  if setup.config.export_npz:
    params = jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)),
                          train_state['params'])
    if jax.process_index() == 0:
      checkpoint.save_npz(workdir_lib.path(workdir, workdir_lib.PARAMS_FILE), params)


def _due(step: int, every: int, last: bool) -> bool:
  """The loop's one cadence rule (logging, each evaluator, checkpoints): every `every`-th step, and the last step."""
  return last or step % every == 0


class Loop:
  """The steps after the train state's step up to config.total_steps: train, log, evaluate, save, and stop early on
  a preemption notice. It holds the loop's state: the train state, the writers and the train-time clock."""

  def __init__(self, setup, checkpoints, workdir: str, watch, train_state, evals, clock):
    self.setup, self.config, self.checkpoints, self.watch, self.evals = setup, setup.config, checkpoints, watch, evals
    self.state, self.clock, self.workdir = train_state, clock, workdir
    self.start = int(jax.device_get(train_state['step']))
    self.zero_window = jax.jit(train_step_lib.zero_window, out_shardings=setup.shardings['window'])
    if _due(self.start, self.config.log_every_steps, False):  # Logged at this step (by older versions: not reset).
      self.new_window()
    self.record = goodput.Recorder(workdir, clock, resumed_from=self.start, enabled=jax.process_index() == 0)
    self.record.write(self.start)
    self.profile = check.profile_range(self.config.profile_steps) if jax.process_index() == 0 else None
    self.tracing = False
    self.nonfinite_seen = int(jax.device_get(train_state['nonfinite']['count']))
    is_main = jax.process_index() == 0
    self.writer = metrics.Writer(workdir, enabled=is_main)
    self.progress = metrics.Progress(self.config.total_steps, self.start, enabled=is_main)
    self.speed = metrics.Speed(setup.task.train_flops(self.config, _num_classes_of(setup.model)),
                               jax.device_count(),
                               flops.peak_tflops(jax.devices()[0].device_kind, self.config.dtype))

  def run(self) -> dict[str, float]:
    config, result = self.config, {}
    batches = input_pipeline.device_batches(config, self.setup.batch_sharding, train=True, start_step=self.start,
                                            captions=self.setup.task.captions(config),
                                            image_table=self.image_table())
    train_step = self.setup.train_step()
    try:
      for step in range(self.start + 1, config.total_steps + 1):
        self.clock.enter('input', step)
        batch = next(batches)
        self.profiler(step)
        if step == self.start + 1:  # The first call compiles (said before and after: it takes a while).
          log.info('Compiling the train step...')
          self.clock.enter('compile')
          compiling = time.monotonic()
          train_step.lower(self.state, batch).compile()  # The call below reuses it.
          # Processes start their first collective together, however long each one compiled (gloo gives a peer 30 s).
          distributed.barrier(f'compiled-{step}', timeout_s=config.faults.hang_first_s)
        else:
          self.clock.enter('train')
        self.state, stats = train_step(self.state, batch)  # No host sync here.
        if step == self.start + 1:
          self.clock.enter('train')
          log.info('Compiled the train step in %.1f s.', time.monotonic() - compiling)
          self.progress.resume(self.start)  # The compilation is not a train step's time (ETA and img/s).
        self.progress.step(step)
        self.checkpoints.check()  # A failed asynchronous save stops the run at the next step (no waiting).
        last = step == config.total_steps
        if _due(step, config.log_every_steps, last):
          self.log(step, stats)
          self.record.write(step)
        due = [ev for ev in self.evals if _due(step, ev.every_steps, last)]
        if due:
          self.clock.enter('eval')
          result = _evaluate(due, self.state['params'], step)
          self.writer.write_scalars(step, {k: v for k, v in result.items() if not k.endswith('num_examples')})
          self.progress.resume(step)  # Evaluation is not a train step's time.
          self.record.write(step)
        saved = _due(step, config.checkpoint_every_steps, last)
        if saved:
          self.clock.enter('checkpoint')
          self.save(step)
          self.progress.resume(step)
          self.record.write(step)
        if self.watch.reached(step):
          self.clock.enter('checkpoint')
          if not saved:
            self.save(step)
          self.checkpoints.wait()
          self.record.write(step)
          self.progress.close()  # Before the last line: a bar drawn after it would stand below it.
          log.warning('%s: saved a checkpoint at step %d in %s; rerun the same command to resume.',
                      'Stopped by Ctrl-C' if self.watch.interrupted else 'Preempted', step,
                      self.checkpoints.directory)
          return {'preempted_at_step': step}
    finally:
      self.progress.close()
      self.writer.close()
      self.profiler(None)
    self.clock.enter('checkpoint')
    self.checkpoints.wait()
    return result

  def image_table(self):
    """The task's embedding of every training image, made once (a LiT run's
    config.lit.precompute_image), else None."""
    if not self.setup.task.precomputes_images(self.config):
      return None
    self.clock.enter('input', self.start + 1)
    setup = self.setup
    return setup.task.image_table(setup.model, self.config, self.state['params'], setup.mesh)

  def profiler(self, step: int | None) -> None:
    """Starts the jax.profiler trace of config.profile_steps at its first step, stops it at its end (step None: the
    loop ended), into WORKDIR/profile (process 0's devices)."""
    if self.profile is None:
      return
    first, end = self.profile
    if step == first or (step == self.start + 1 and first < step < end):
      jax.profiler.start_trace(workdir_lib.path(self.workdir, workdir_lib.PROFILE_DIR))
      self.tracing = True
    elif self.tracing and (step is None or step >= end):
      jax.block_until_ready(self.state)
      jax.profiler.stop_trace()
      self.tracing = False
      log.info('Wrote the profile of steps %d-%d to %s: view it with `tensorboard --logdir %s` (Profile tab) or '
               'https://ui.perfetto.dev.', first, min(end, self.config.total_steps + 1) - 1,
               workdir_lib.path(self.workdir, workdir_lib.PROFILE_DIR), self.workdir)

  def log(self, step: int, stats) -> None:
    self.check_finite()
    sums = jax.device_get(self.state['window'])  # Over the steps since the last log step (see the train step).
    self.new_window()
    steps, seconds = self.progress.time.take()  # Train steps only, since the last log step.
    img_per_sec = steps * self.config.batch_size / seconds if seconds > 0 else 0.0
    scalars = {'train/learning_rate': float(jax.device_get(stats['learning_rate'])), **self.speed.scalars(img_per_sec)}
    if sums['steps']:
      scalars['train/loss'] = sums['loss'] / sums['steps']
      scalars['train/grad_norm'] = sums['grad_norm'] / sums['steps']
    if self.nonfinite_seen:
      scalars['train/nonfinite_steps'] = self.nonfinite_seen
    self.writer.write_scalars(step, scalars)
    self.progress.report(step, scalars.get('train/loss', float('nan')), img_per_sec, scalars.get('train/mfu'))

  def new_window(self) -> None:
    """Starts a new metric window (the train step sums into state['window']; the log cadence lives here only)."""
    self.state = {**self.state, 'window': self.zero_window()}

  def check_finite(self) -> None:
    """Applies config.nonfinite_policy to the updates dropped since the last check (a host sync: call rarely)."""
    count, last_bad = (int(x) for x in jax.device_get((self.state['nonfinite']['count'],
                                                       self.state['nonfinite']['last_step'])))
    if count == self.nonfinite_seen:
      return
    if self.config.nonfinite_policy == 'stop':
      raise train_step_lib.NonFiniteError(
          f'Non-finite loss or gradient norm at step {last_bad} ({count - self.nonfinite_seen} such step(s) since '
          f'the last check); those updates were not applied and nothing was saved. The last good checkpoint is step '
          f'{self.checkpoints.latest_step()} in {self.checkpoints.directory} (rerunning resumes from it). Lower the '
          'learning rate, check the data, or set config.nonfinite_policy=skip to drop such updates and go on.')
    log.warning('Dropped %d update(s) with a non-finite loss or gradient norm (the last at step %d); %d in all.',
                count - self.nonfinite_seen, last_bad, count)
    self.nonfinite_seen = count

  def save(self, step: int) -> None:
    self.check_finite()  # Never save over a good checkpoint after a non-finite step under 'stop'.
    self.checkpoints.save(step, self.state)
