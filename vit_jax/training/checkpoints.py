"""A run's Orbax checkpoints (WORKDIR/checkpoints): saving on the run's cadence, asynchronous saves
whose failures stop the run at the next step, restoring into any mesh's layout, and the one "latest
step" rule of the run directory (vit_jax/runtime/workdir.py)."""

import logging

import jax
import numpy as np
import orbax.checkpoint as ocp

from vit_jax import errors
from vit_jax.runtime import workdir as workdir_lib

log = logging.getLogger(__name__)


class SaveError(errors.UserError, OSError):
  """A checkpoint could not be saved (no space left, say); the earlier checkpoints are intact."""


class Checkpoints:
  """The run's Orbax checkpoints in WORKDIR/checkpoints: saves every config.checkpoint_every_steps
  (asynchronous when config.async_checkpoints), the last config.keep kept; `read_only` for the
  after-training tools.

  A save that fails (no space left, a read-only disk...) is a SaveError at once when the save is
  synchronous, else at the next `check()`, `save()` or `wait()`: it names the step, the cause and
  the last good checkpoint, which Orbax's write-then-rename leaves intact, so rerunning after fixing
  the cause resumes from it.
  """

  def __init__(self, workdir: str, config=None, *, read_only: bool = False):
    self.directory = workdir_lib.checkpoints_dir(workdir)
    if read_only:
      options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    else:
      options = ocp.CheckpointManagerOptions(
        max_to_keep=config.keep,
        save_interval_steps=config.checkpoint_every_steps,
        enable_async_checkpointing=config.async_checkpoints,
      )
    with _quiet_absl():  # Not Orbax's "Given directory is read only" warning.
      self.manager = ocp.CheckpointManager(
        self.directory,
        options=options,
        item_handlers=ocp.PyTreeCheckpointHandler()
        if read_only
        else ocp.StandardCheckpointHandler(),
      )
    self._saving = None  # The step of a save that may still be running.

  def latest_step(self) -> int | None:
    """The latest finalised checkpoint's step by the run directory's one rule
    (workdir.finalised_steps), which the completion check and the launchers use too; None without
    one."""
    return (workdir_lib.finalised_steps(self.directory) or [None])[-1]

  def resumes_from(self, failed: int | None = None) -> str:
    """The sentence that tells a stopped run where its rerun resumes: the latest finalised
    checkpoint that is not step `failed`."""
    good = ([s for s in workdir_lib.finalised_steps(self.directory) if s != failed] or [None])[-1]
    if good is None:
      return 'There is no earlier checkpoint.'
    return f'The last good checkpoint is step {good}; rerunning the same command resumes from it.'

  def _failed(self, e: Exception):
    step, self._saving = self._saving, None
    cause = errors.fault(e) or f'{type(e).__name__}: {" ".join(str(e).split())[:300]}.'
    raise SaveError(
      f'Saving the checkpoint of step {step} in {self.directory} failed: {cause} '
      f'{self.resumes_from(step)}'
    ) from e

  def check(self) -> None:
    """Raises SaveError if an asynchronous save has failed (cheap: no waiting)."""
    try:
      self.manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except  (Orbax re-raises the writer's error)
      self._failed(e)

  def save(self, step: int, train_state) -> None:
    # Orbax waits for the previous save anyway; waiting here names the step of a failed one rightly.
    self.wait()
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
    # (the failure was reported, or is reported now)
    except Exception as e:  # pylint: disable=broad-except
      if self._saving is not None:
        self._failed(e)
      log.warning('Closing the checkpoints in %s: %s', self.directory, e)

  def stored_shapes(self, step: int) -> dict:
    return self.manager.item_metadata(step)

  def restore(self, step: int, target):
    return self.manager.restore(step, args=ocp.args.StandardRestore(target))

  def restore_params(self, step: int, abstract):
    """The 'params' subtree of a saved train state as NumPy arrays (a partial restore: no optimizer
    state read)."""
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
    restored = self.manager.restore(
      step,
      args=ocp.args.PyTreeRestore(
        item={'params': abstract}, restore_args={'params': restore_args}, partial_restore=True
      ),
    )
    return restored['params']


class _quiet_absl:  # pylint: disable=invalid-name
  def __enter__(self):
    self._logger = logging.getLogger('absl')
    self._level = self._logger.level
    self._logger.setLevel(logging.ERROR)

  def __exit__(self, *exc):
    self._logger.setLevel(self._level)
