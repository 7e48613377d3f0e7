"""train_and_evaluate: a run from its config and workdir, read straight down.

What it builds on: the config is checked whole first (vit_jax/configs/check.py,
vit_jax/training/preflight.py); the workdir's lock, config and files (vit_jax/runtime/lock.py,
vit_jax/runtime/workdir.py); the model, train state, checkpoints and train step
(vit_jax/training/state.py); batches (vit_jax/data/input_pipeline.py); evaluators
(vit_jax/evaluators/); the loop (vit_jax/training/loop.py) and the one clock
(vit_jax/runtime/goodput.py).
"""

import contextlib
import functools
import logging

import jax
import ml_collections

from vit_jax import augreg, checkpoint, errors, evaluators, io, sharding, tasks
from vit_jax.data import input_pipeline
from vit_jax.runtime import distributed, goodput, preemption
from vit_jax.runtime import watchdog as watchdog_lib
from vit_jax.runtime import workdir as workdir_lib
from vit_jax.runtime.lock import Lock
from vit_jax.training import checkpoints as run_checkpoints
from vit_jax.training import loop as loop_lib
from vit_jax.training import preflight
from vit_jax.training import state as state_lib

log = logging.getLogger(__name__)


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  allow_config_change: bool = False,
  reevaluate: bool = False,
  full_dumps: bool = False,
) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming from its latest checkpoint); returns the final eval
  metrics.

  On a preemption notice (SIGTERM, a first Ctrl-C, or JAX's multi-host preemption sync point) it
  saves a checkpoint at the step all processes agree on and returns {'preempted_at_step': step}; the
  same call then resumes from there. A workdir that holds a run of another config is refused unless
  `allow_config_change` (see vit_jax/runtime/workdir.py), and one that another live run holds is
  refused at once (vit_jax/runtime/lock.py). A run that is already complete is left as it is: its
  last evaluation is returned and nothing is written; with `reevaluate` its checkpoint is evaluated
  again (logged and returned, still nothing written). The stack dump of a hung process goes to the
  workdir's stacks.<process>.txt (vit_jax/runtime/watchdog.py), to stderr with `full_dumps`.
  """
  # The config is checked whole, before any I/O.
  preflight.validate(config, devices=jax.device_count(), process_count=jax.process_count())
  mesh = sharding.make_mesh(config.mesh)
  lock = Lock(workdir, enabled=jax.process_index() == 0)
  clock = goodput.Clock()  # In 'startup' since this process started.
  with contextlib.ExitStack() as cleanup:  # Undone last to first: mesh, checkpoints, lock, ...
    watch = cleanup.enter_context(preemption.PreemptionWatch())
    cleanup.enter_context(errors.quiet_faults())
    cleanup.enter_context(_watchdog(clock, config, workdir, full_dumps))
    workdir_lib.check_usable(workdir)  # Then the dataset, before the workdir is made (by the lock).
    info = input_pipeline.get_info(evaluators.primary(config))
    changes = distributed.on_main(lambda: _start(config, workdir, lock, allow_config_change))
    cleanup.callback(lock.release)
    # The config as given is what the workdir records (below, once the run has started); the config
    # with its durations in steps is the one config from here on.
    record_config = functools.partial(workdir_lib.record_config, config, workdir, changes)
    config = preflight.validate(config, num_train=info.num_train)  # Durations in steps.
    checkpoints = run_checkpoints.Checkpoints(workdir, config)
    cleanup.callback(checkpoints.close)
    setup = state_lib.Setup.create(config, _num_classes(config, info), mesh)
    cleanup.enter_context(jax.set_mesh(mesh))
    if workdir_lib.reached_target(workdir, config, num_train=info.num_train):
      return _complete(setup, checkpoints, workdir, reevaluate)
    first_step = None
    if not setup.task.precomputes_images(config):  # (Its batches need the train state.)
      # The batches, and the train step compiling on a thread while the state is made.
      first_step = loop_lib.FirstStep(setup, checkpoints.latest_step() or 0)
    train_state = state_lib.restore_or_init(setup, checkpoints)
    start = int(jax.device_get(train_state['step']))
    watch.training(start)
    _record_run(config, workdir, info, start, record_config)
    evals = evaluators.build(config, setup.model, mesh)
    return loop_lib.Loop(
      setup, checkpoints, workdir, watch, train_state, evals, clock, first_step
    ).run()


def _record_run(config, workdir: str, info, start: int, record_config) -> None:
  """Process 0 writes the run's files once it has started (only then, so that a failed start changes
  nothing): the config as given (`record_config`), the dataset, the vocabulary; and drops the
  metrics of the steps after `start`."""
  if jax.process_index() != 0:
    return
  record_config()
  workdir_lib.record_dataset(
    workdir, class_names=info.class_names, num_train=info.num_train, num_eval=info.num_eval
  )
  _record_vocabulary(config, workdir)
  if workdir_lib.drop_records_after(workdir, start):
    log.info(
      'Dropped the metrics.jsonl records after step %d: the resumed run writes them again.', start
    )


def _watchdog(clock, config, workdir: str, full_dumps: bool) -> watchdog_lib.Watchdog:
  """The hang and lost-peer monitor of this process (vit_jax/runtime/watchdog.py); a hang's stack
  dump goes to the workdir (stderr with `full_dumps`)."""
  return watchdog_lib.Watchdog(
    clock,
    config.faults,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    client=distributed.client(),
    dump_to=None if full_dumps else workdir_lib.stacks_path(workdir, jax.process_index()),
  )


def _start(config, workdir: str, lock: Lock, allow_config_change: bool):
  """Process 0's start: the lock, the changed-config check, and a pretrained file that is really a
  checkpoint."""
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


def _num_classes(config, info) -> int:
  return config.num_classes if config.num_classes > 0 else info.num_classes


def _complete(setup, checkpoints, workdir: str, reevaluate: bool) -> dict[str, float]:
  """A run at its target step: its last evaluation, or with `reevaluate` a new one of its
  checkpoint. Nothing is written, except a params.npz that a run stopped before writing (so that the
  run is complete: vit_jax/runtime/workdir.py)."""
  latest = checkpoints.latest_step()
  config = setup.config
  params_missing = config.export_npz and not io.exists(
    workdir_lib.path(workdir, workdir_lib.PARAMS_FILE)
  )
  if reevaluate or params_missing:
    train_state = setup.restore(checkpoints, latest)
    if params_missing:
      log.info(
        'The run in %s reached its last step but has no %s yet: writing it.',
        workdir,
        workdir_lib.PARAMS_FILE,
      )
      loop_lib.export(setup, train_state, workdir)
    if reevaluate:
      evals = evaluators.build(config, setup.model, setup.mesh)
      return loop_lib.evaluate(evals, train_state['params'], latest)
  log.info(
    'The run in %s is complete (step %d of total_steps=%d): nothing to do. Raise '
    'config.total_steps to train on, or pass --reevaluate to evaluate its checkpoint again.',
    workdir,
    latest,
    config.total_steps,
  )
  return workdir_lib.last_eval(workdir)
