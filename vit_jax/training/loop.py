"""The training loop: the steps after the train state's step up to config.total_steps, and the end.

Each step: the next batch (phase input), the update (the first one waits for the train step's
compile, under way on a thread since the first batch was at hand: phase compile; FirstStep), then on
their cadences the log line and metrics, the evaluators (phase eval) and a checkpoint (phase
checkpoint); a preemption notice saves and stops. Where the time goes is the clock's
(vit_jax/runtime/goodput.py): the loop says which phase it is in and which step is done; the goodput
record, the progress bar's rate and ETA and the logged img/s derive from it. At the end: the wait
for the last save, params.npz (config.export_npz), and the attempt's last goodput record
('finished', 'preempted', or 'failed' on an exception).
"""

import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

from vit_jax import checkpoint, errors
from vit_jax.configs import check
from vit_jax.data import input_pipeline
from vit_jax.models import flops
from vit_jax.runtime import dispatch, distributed, goodput
from vit_jax.runtime import workdir as workdir_lib
from vit_jax.training import metrics
from vit_jax.training import train_step as train_step_lib

log = logging.getLogger(__name__)


def _due(step: int, every: int, last: bool) -> bool:
  """The loop's one cadence rule (logging, each evaluator, checkpoints): every `every`-th step, and
  the last step."""
  return last or step % every == 0


def evaluate(evals, params, step: int) -> dict[str, float]:
  """Runs `evals` on `params`; logs and returns their metrics."""
  result = {}
  for ev in evals:
    result.update(ev.run(params))
  if result:
    log.info(
      'step %d: %s',
      step,
      ', '.join(
        f'{k} {v:.4f}' for k, v in sorted(result.items()) if not k.endswith('num_examples')
      ),
    )
  return result


def export(setup, train_state, workdir: str) -> None:
  """WORKDIR/params.npz in the release layout (config.export_npz; a SigLIP model's in big_vision's:
  model.npz_layout), gathered from every process."""
  if setup.config.export_npz:
    params = jax.tree.map(
      lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), train_state['params']
    )
    if jax.process_index() == 0:
      checkpoint.save_npz(
        workdir_lib.path(workdir, workdir_lib.PARAMS_FILE),
        params,
        layout=setup.config.model.get('npz_layout', 'release'),
      )


class FirstStep:
  """The loop's start: its batches from `start_step` on, and the train step compiling for the first
  one on a thread meanwhile, so that what comes before the first step (restoring or initialising
  the train state, the writers, the evaluators) runs while XLA compiles. `train_and_evaluate` starts
  it before the train state; a run that needs its train state for its batches (a LiT run's
  precomputed image table) starts it in the loop."""

  def __init__(self, setup, start_step: int, image_table=None):
    self.start_step = start_step
    batches = input_pipeline.device_batches(
      setup.config,
      setup.batch_sharding,
      train=True,
      start_step=start_step,
      captions=setup.task.captions(setup.config),
      image_table=image_table,
    )
    first = next(batches)
    self.batches = itertools.chain([first], batches)
    self.train_step = setup.train_step()
    self._compiled = concurrent.futures.Future()
    # Not a daemon: a process that fails meanwhile exits once the compile is done (XLA compiling at
    # the interpreter's shutdown can crash it).
    threading.Thread(
      target=self._compile, args=(setup, first), name='vit_jax-compile-train-step'
    ).start()

  def _compile(self, setup, batch) -> None:
    try:
      with jax.set_mesh(setup.mesh):
        # The jitted step's call on the real state and batch reuses it.
        self.train_step.lower(setup.state_spec(), batch).compile()
    except BaseException as e:  # Raised in the loop, by `wait`.
      self._compiled.set_exception(e)
    else:
      self._compiled.set_result(None)

  def wait(self) -> None:
    """Returns once the train step's first compile is done (raises what the compile raised)."""
    self._compiled.result()


def _num_classes_of(model) -> int | None:
  return getattr(model, 'num_classes', None)  # A LiT model has no class head.


class Loop:
  """The steps after the train state's step up to config.total_steps (module doc): train, log,
  evaluate, save, and stop early on a preemption notice. It holds the loop's state: the train state,
  the writers and the clock."""

  def __init__(
    self, setup, checkpoints, workdir: str, watch, train_state, evals, clock, first_step=None
  ):
    self.setup = setup
    self.config = setup.config
    self.checkpoints = checkpoints
    self.watch = watch
    self.evals = evals
    self.state = train_state
    self.clock = clock
    self.workdir = workdir
    self.start = int(jax.device_get(train_state['step']))
    # Started before the train state (FirstStep), else in `train`.
    self.first_step = first_step
    if first_step is not None and first_step.start_step != self.start:
      raise ValueError(
        f'The batches start at step {first_step.start_step}, the state at {self.start}.'
      )
    self.zero_window = jax.jit(train_step_lib.zero_window, out_shardings=setup.shardings['window'])
    # Logged at this step (by older versions: not reset).
    if _due(self.start, self.config.log_every_steps, False):
      self.new_window()
    self.record = goodput.Recorder(
      workdir, clock, resumed_from=self.start, enabled=jax.process_index() == 0
    )
    self.record.write(self.start)
    self.profile = (
      check.profile_range(self.config.profile_steps) if jax.process_index() == 0 else None
    )
    self.tracing = False
    self.run_ahead = dispatch.RunAhead()
    self.nonfinite_seen = int(jax.device_get(train_state['nonfinite']['count']))
    is_main = jax.process_index() == 0
    self.writer = metrics.Writer(workdir, enabled=is_main)
    self.progress = metrics.Progress(
      self.config.total_steps, self.start, enabled=is_main, clock=clock
    )
    self.speed = metrics.Speed(
      setup.task.train_flops(self.config, _num_classes_of(setup.model)),
      jax.device_count(),
      flops.peak_tflops(jax.devices()[0].device_kind, self.config.dtype),
    )

  def run(self) -> dict[str, float]:
    """Trains to config.total_steps and exports; returns the last evaluation's metrics, or
    {'preempted_at_step': step} after a preemption notice. The attempt's goodput record ends
    'finished', 'preempted', or 'failed' on an exception; process 0 logs where the time went."""
    try:
      result = self.train()
      self.checkpoints.wait()  # In phase checkpoint: the loop ended there.
      preempted = 'preempted_at_step' in result
      if preempted:
        log.warning(
          '%s: saved a checkpoint at step %d in %s; rerun the same command to resume.',
          'Stopped by Ctrl-C' if self.watch.interrupted else 'Preempted',
          result['preempted_at_step'],
          self.checkpoints.directory,
        )
      else:
        export(self.setup, self.state, self.workdir)
    except BaseException:
      self.record.write(ended='failed')
      raise
    self.record.write(ended='preempted' if preempted else 'finished')
    if jax.process_index() == 0:
      log.info(
        'Where the time went: %s (WORKDIR/%s; `python -m vit_jax.visualize goodput %s` draws it).',
        goodput.describe(goodput.summary(goodput.read(self.workdir))),
        workdir_lib.GOODPUT_FILE,
        self.workdir,
      )
    return result

  def train(self) -> dict[str, float]:
    """The steps (module doc); returns the last evaluation's metrics, or {'preempted_at_step':
    step}. It ends in phase checkpoint, with the writers closed."""
    config = self.config
    result = {}
    self.first_step = self.first_step or FirstStep(self.setup, self.start, self.image_table())
    batches = self.first_step.batches
    train_step = self.first_step.train_step
    step = self.start
    try:
      for step in range(self.start + 1, config.total_steps + 1):
        self.clock.enter('input', step)
        batch = next(batches)
        self.profiler(step)
        self.state, stats = self.update(train_step, batch, step)
        self.run_ahead.add(stats['loss'])  # Two steps ahead at most (no later step consumes it).
        self.clock.tick(step)
        self.progress.step(step)
        self.checkpoints.check()  # A failed asynchronous save stops the run at the next step.
        last = step == config.total_steps
        if _due(step, config.log_every_steps, last):
          self.log(step, stats)
        evals = [ev for ev in self.evals if _due(step, ev.every_steps, last)]
        if evals:
          with self.pause('eval', step):
            result = evaluate(evals, self.state['params'], step)
            self.writer.write_scalars(
              step, {k: v for k, v in result.items() if not k.endswith('num_examples')}
            )
        saved = _due(step, config.checkpoint_every_steps, last)
        if saved:
          with self.pause('checkpoint', step):
            self.save(step)
        if self.watch.reached(step):
          result = self.stop(step, saved)
          break
      self.clock.enter('checkpoint')  # The end: closing the writers, the last save, params.npz.
    except Exception as e:
      self.stopped_by_fault(e, step)
      raise
    finally:
      self.progress.close()  # Before the last lines: a bar drawn after them would stand below.
      self.writer.close()
      self.profiler(None)
    return result

  def stopped_by_fault(self, e: Exception, step: int) -> None:
    """When a write of the run (metrics, event files, a log) failed with an environment fault (no
    space left...), raises it as one line that also says where the rerun resumes. The save under
    way goes first: its own failure, if any, is the one to report."""
    cause = errors.fault(e)
    if cause is None or isinstance(e, errors.UserError):
      return
    self.checkpoints.wait()
    raise errors.UserError(
      f'Training stopped at step {step}: {cause} {self.checkpoints.resumes_from()}'
    ) from e

  @contextlib.contextmanager
  def pause(self, phase: str, step: int):
    """A break in training at `step` (an evaluation, a save): the block runs in `phase`, then the
    goodput record is written and the clock goes back to training (vit_jax/runtime/goodput.py)."""
    with self.clock.phase(phase, step):
      yield
      self.record.write(step)

  def update(self, train_step, batch, step: int):
    """The update of `step`, dispatched, in phase train. The first one waits in phase compile for
    the train step's compile (FirstStep: said before and after, it takes a while); the first stay
    in train after it, which waits for the first step's run, then has the watchdog's first bound."""
    if step > self.start + 1:
      self.clock.enter('train')
      return train_step(self.state, batch)
    log.info('Compiling the train step...')
    self.clock.enter('compile')
    compiling = time.monotonic()
    self.first_step.wait()
    # Processes start their first collective together, however long each one compiled (gloo gives a
    # peer 30 s).
    distributed.barrier(f'compiled-{step}', timeout_s=self.config.faults.hang_first_s)
    out = train_step(self.state, batch)
    self.clock.enter('train')
    log.info('Compiled the train step (waited %.1f s).', time.monotonic() - compiling)
    return out

  def stop(self, step: int, saved: bool) -> dict[str, int]:
    """A preemption notice (or Ctrl-C) at `step`: a checkpoint there unless one was just saved."""
    if not saved:
      with self.pause('checkpoint', step):
        self.save(step)
    return {'preempted_at_step': step}

  def image_table(self):
    """The task's embedding of every training image, made once (a LiT run's
    config.lit.precompute_image), else None."""
    if not self.setup.task.precomputes_images(self.config):
      return None
    self.clock.enter('input', self.start + 1)
    setup = self.setup
    return setup.task.image_table(setup.model, self.config, self.state['params'], setup.mesh)

  def profiler(self, step: int | None) -> None:
    """Starts the jax.profiler trace of config.profile_steps at its first step, stops it at its end
    (step None: the loop ended), into WORKDIR/profile (process 0's devices)."""
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
      log.info(
        'Wrote the profile of steps %d-%d to %s: view it with `tensorboard --logdir %s` (Profile '
        'tab) or https://ui.perfetto.dev.',
        first,
        min(end, self.config.total_steps + 1) - 1,
        workdir_lib.path(self.workdir, workdir_lib.PROFILE_DIR),
        self.workdir,
      )

  def log(self, step: int, stats) -> None:
    """The log step's writes: the train metrics, the progress line, the goodput record."""
    self.check_finite()
    # Over the steps since the last log step (see the train step).
    sums = jax.device_get(self.state['window'])
    self.new_window()
    steps, seconds = self.clock.lap()  # Train steps only, since the last log step (the clock).
    img_per_sec = steps * self.config.batch_size / seconds if seconds > 0 else 0.0
    scalars = {
      'train/learning_rate': float(jax.device_get(stats['learning_rate'])),
      **self.speed.scalars(img_per_sec),
    }
    if sums['steps']:
      scalars['train/loss'] = sums['loss'] / sums['steps']
      scalars['train/grad_norm'] = sums['grad_norm'] / sums['steps']
    if self.nonfinite_seen:
      scalars['train/nonfinite_steps'] = self.nonfinite_seen
    self.writer.write_scalars(step, scalars)
    self.progress.report(
      step, scalars.get('train/loss', float('nan')), img_per_sec, scalars.get('train/mfu')
    )
    self.record.write(step)

  def new_window(self) -> None:
    """Starts a new metric window (the train step sums into state['window']; the log cadence lives
    here only)."""
    self.state = {**self.state, 'window': self.zero_window()}

  def check_finite(self) -> None:
    """Applies config.nonfinite_policy to the updates dropped since the last check (a host sync:
    call rarely)."""
    count, last_bad = (
      int(x)
      for x in jax.device_get(
        (self.state['nonfinite']['count'], self.state['nonfinite']['last_step'])
      )
    )
    if count == self.nonfinite_seen:
      return
    if self.config.nonfinite_policy == 'stop':
      raise train_step_lib.NonFiniteError(
        f'Non-finite loss or gradient norm at step {last_bad} ({count - self.nonfinite_seen} such '
        'step(s) since the last check); those updates were not applied and nothing was saved. The '
        f'last good checkpoint is step {self.checkpoints.latest_step()} in '
        f'{self.checkpoints.directory} (rerunning resumes from it). Lower the learning rate, check '
        'the data, or set config.nonfinite_policy=skip to drop such updates and go on.'
      )
    log.warning(
      'Dropped %d update(s) with a non-finite loss or '
      'gradient norm (the last at step %d); %d in all.',
      count - self.nonfinite_seen,
      last_bad,
      count,
    )
    self.nonfinite_seen = count

  def save(self, step: int) -> None:
    self.check_finite()  # Never save over a good checkpoint after a non-finite step under 'stop'.
    self.checkpoints.save(step, self.state)
