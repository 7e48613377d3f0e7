"""A trained model for the after-training tools (predict, visualize, export): config, model, params,
class names.

Two sources, the same result (`Trained`):
  * a run's workdir (`load_run`): its config (config.json over the current defaults:
    vit_jax/runtime/workdir.py), the parameters of its latest Orbax checkpoint or of its params.npz,
    whichever was written last (only the parameters are restored: no optimiser state is read), and
    its class_names.json;
  * a release-layout `.npz` with a preset name (`load_npz`): the shared config defaults with that
    model.
The model is built as the trainer builds it (vit_jax/training/state.py), fast paths included, and
the parameters are put in its layout (stacked blocks for `scan_layers`). Images go through the
evaluation preprocessing (`preprocess.eval_image`, the one function the evaluators use too) in
`image_batches`.
"""

import concurrent.futures
import dataclasses
import json
import logging
import os
from typing import Any, Iterator, Sequence

import jax
import ml_collections
import numpy as np

from vit_jax import checkpoint, io, models, tasks, utils
from vit_jax.data import preprocess
from vit_jax.runtime import workdir as workdir_lib
from vit_jax.training import checkpoints as run_checkpoints
from vit_jax.training import preflight, state

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Trained:
  """A model ready for inference: `model.apply({'params': params}, images, train=False)`."""

  config: ml_collections.ConfigDict  # A whole config (every field; vit_jax/configs/common.py).
  model: Any
  params: Any
  class_names: list[str] | None  # Label names in label order, or None (then labels are indices).
  source: str  # Where the parameters came from, for messages.

  @property
  def num_classes(self) -> int:
    return int(self.params['head']['bias'].shape[-1])

  def label(self, index: int) -> str:
    return self.class_names[index] if self.class_names else str(index)


def _for_this_backend(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run's config with attention='cudnn' replaced by 'xla' where cuDNN cannot run (the same
  numbers)."""
  if config.attention == 'cudnn' and jax.default_backend() != 'gpu':
    log.info(
      "The run used attention='cudnn'; using 'xla' on this %s backend.", jax.default_backend()
    )
    config.attention = 'xla'
  return config


def _in_model_layout(flat: dict[str, np.ndarray], config) -> dict:
  """Release-layout (per-layer) flat params -> the tree of the config's model (stacked under
  scan_layers)."""
  if config.scan_layers:
    flat = checkpoint.stack_blocks(flat)
  return utils.unflatten_dict(flat)


def load_run(workdir: str) -> Trained:
  """The trained model of a run's workdir (see the module doc); a clear error when the workdir holds
  none."""
  config = _for_this_backend(preflight.validate(workdir_lib.load_config(workdir)))
  task = tasks.of(config)
  if task.zero_shot:
    raise workdir_lib.WorkdirError(task.no_class_head(workdir))
  npz_path = workdir_lib.path(workdir, workdir_lib.PARAMS_FILE)
  step = workdir_lib.latest_step(workdir)
  has_npz = io.exists(npz_path)
  if step is None and not has_npz:
    raise workdir_lib.WorkdirError(
      f'{workdir} holds neither a checkpoint ({workdir_lib.CHECKPOINTS_DIR}/<step>) nor '
      f'{workdir_lib.PARAMS_FILE}: has the run saved anything yet?'
    )
  step_dir = io.join(workdir_lib.checkpoints_dir(workdir), str(step))
  if step is not None and (not has_npz or io.mtime(step_dir) > io.mtime(npz_path)):
    source = f'{workdir}: checkpoint at step {step}'
    checkpoints = run_checkpoints.Checkpoints(workdir, read_only=True)
    head = checkpoints.stored_shapes(step)['params']['head']['bias']
    model = state.build_model(config, int(head.shape[-1]))
    params = checkpoints.restore_params(step, state.abstract_params(config, model))
  else:
    source = npz_path
    flat = checkpoint.canonical_flat(npz_path)
    model = state.build_model(config, int(flat['head/bias'].shape[-1]))
    params = _in_model_layout(flat, config)
  checkpoint.check_fits(params, state.abstract_params(config, model), source=source)
  log.info('Loaded %s.', source)
  return Trained(config, model, params, workdir_lib.read_class_names(workdir), source)


def _posemb_for(params: dict, model_config, image_size: int) -> dict:
  """Resamples the position embeddings to `image_size` where the checkpoint was trained at another
  size (a ViT's; an MLP-Mixer has none)."""
  if models.is_mixer(model_config):
    return params
  posemb = params['Transformer']['posembed_input']['pos_embedding']
  grid = models.token_grid(model_config, image_size)
  has_class_token = models.has_class_token(model_config['classifier'])
  tokens = grid[0] * grid[1] + int(has_class_token)
  if posemb.shape[1] != tokens:
    params['Transformer']['posembed_input']['pos_embedding'] = checkpoint.interpolate_posembed(
      posemb, tokens, has_class_token, new_grid=grid
    )
  return params


def checkpoint_image_size(params: dict, model_config) -> int:
  """The (square) image size a checkpoint was trained at: from a ViT's position embeddings, or from
  an MLP-Mixer's token-mixing MLP (its first kernel is (tokens, tokens_mlp_dim)); side =
  sqrt(tokens) x the patch size."""
  if models.is_mixer(model_config):
    n = params['MixerBlock_0']['token_mixing']['Dense_0']['kernel'].shape[0]
    what = 'tokens (token-mixing MLP)'
  else:
    n = params['Transformer']['posembed_input']['pos_embedding'].shape[1] - int(
      models.has_class_token(model_config['classifier'])
    )
    what = 'position embeddings'
  size = models.image_size_for_tokens(model_config, n)
  if size is None:
    raise checkpoint.CheckpointError(
      f'The checkpoint has {n} {what}, not a square grid: pass --image_size.'
    )
  return size


def load_npz(
  path: str,
  *,
  model_name: str,
  num_classes: int | None = None,
  image_size: int | None = None,
  class_names: Sequence[str] | None = None,
) -> Trained:
  """A release-layout `.npz` (any layout `checkpoint.load` reads) as the preset `model_name`.

  `num_classes`, when given, must equal the checkpoint's head; `image_size` defaults to the size the
  checkpoint was trained at (`checkpoint_image_size`); a ViT takes other sizes too (its position
  embeddings are resampled, as fine-tuning does), an MLP-Mixer only that one.
  """
  from vit_jax.configs import common  # noqa: PLC0415

  config = common.get_config()
  config.model = models.get_model_config(model_name)
  config.dataset = 'none'  # A whole config (validated below); the dataset is never read.
  if model_name not in models.MODEL_NAMES:
    raise checkpoint.CheckpointError(
      f'Unknown model {model_name!r}; valid: {", ".join(models.MODEL_NAMES)}.'
    )
  params = checkpoint.load(path)
  if 'head' not in params:
    raise checkpoint.CheckpointError(
      f'{path} has no classification head (head/kernel): it cannot classify.'
    )
  head = int(params['head']['bias'].shape[-1])
  if num_classes is not None and num_classes != head:
    raise checkpoint.CheckpointError(
      f'--num_classes={num_classes}, but the head of {path} has {head} classes.'
    )
  if class_names is not None and len(class_names) != head:
    raise checkpoint.CheckpointError(
      f'{len(class_names)} class names for a head of {head} classes ({path}).'
    )
  # A ViT's position embeddings resample to any size, a Mixer's MLPs do not.
  mixer = models.is_mixer(config.model)
  trained_at = checkpoint_image_size(params, config.model) if mixer or not image_size else None
  if mixer and image_size and image_size != trained_at:
    raise checkpoint.CheckpointError(
      f'--image_size={image_size}, but {path} is an MLP-Mixer trained at '
      f'{trained_at} px: its token-mixing MLP is sized by the number of '
      f'patches, so it only takes {trained_at} px (leave out --image_size).'
    )
  config.image_size = image_size or trained_at
  preflight.validate(config)
  params = _posemb_for(params, config.model, config.image_size)
  model = state.build_model(config, head)
  checkpoint.check_fits(params, state.abstract_params(config, model), source=path)
  return Trained(config, model, params, list(class_names) if class_names else None, path)


# --------------------------------------------------------------------------------------------------
# Command-line model selection (the arguments: vit_jax/cli.py).


def model_config_from_args(args):
  """The model config that `cli.add_model_args`' arguments select, without reading any parameters:
  the run's (its config.json) or the --model preset's. For refusing a model before loading it (e.g.
  a Mixer's attention)."""
  return (
    workdir_lib.load_config(args.workdir).model
    if args.workdir
    else models.get_model_config(args.model)
  )


def load_from_args(args) -> Trained:
  """The Trained model that `cli.add_model_args`' arguments select (checked by
  `cli.check_model_args`)."""
  if args.workdir:
    return load_run(args.workdir)
  class_names = json.loads(io.read_text(args.class_names)) if args.class_names else None
  return load_npz(
    args.checkpoint,
    model_name=args.model,
    num_classes=args.num_classes,
    image_size=args.image_size,
    class_names=class_names,
  )


# --------------------------------------------------------------------------------------------------
# Inputs.


def _why(e: Exception) -> str:
  """One line for an input that cannot be used."""
  if isinstance(e, FileNotFoundError):
    return 'no such file'
  if isinstance(e, IsADirectoryError):
    return 'a folder, not an image file'
  return ' '.join(str(e).split())[:300] or type(e).__name__


def expand_inputs(patterns: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """(image files, [(argument, why it gave none)]) from files, folders (searched recursively for
  io.IMAGE_EXTENSIONS) and globs, local or gs://. An argument that cannot be read at all (an
  unsupported URL, an unreachable bucket) is one of the second list; the others still count."""
  files = []
  missing = []
  for pattern in patterns:
    try:
      if io.isdir(pattern):
        found = io.image_files(pattern)
        why = f'the folder holds no {"/".join(io.IMAGE_EXTENSIONS)} file'
      elif any(c in pattern for c in '*?['):
        found = [p for p in io.glob(pattern) if not io.isdir(p)]
        why = 'no file matches'
      else:
        found = [pattern] if io.exists(pattern) else []
        why = 'no such file'
    # (reported for this argument; the others go on)
    except Exception as e:  # pylint: disable=broad-except
      found = []
      why = _why(e)
    if not found:
      missing.append((pattern, why))
    files += found
  return list(dict.fromkeys(files)), missing


def model_input(image, config) -> np.ndarray:
  """An image (encoded bytes, or decoded uint8 [H, W(, C)]) as a model input of `config`: its
  evaluation preprocessing (`preprocess.eval_image`), float32 [S, S, 3] in [-1, 1]."""
  return preprocess.to_float(
    preprocess.eval_image(
      image,
      image_size=config.image_size,
      crop_fraction=config.pp.eval_crop_fraction,
      resize_mode=config.pp.eval_resize,
    )
  )


def prepare(path: str, config) -> np.ndarray:
  """The image file at `path` as a model input of `config` (`model_input`)."""
  return model_input(io.read_bytes(path), config)


def _prepared(path: str, load) -> np.ndarray | str:
  try:
    return load(path)
  # (any failure is this input's error line, not the command's)
  except Exception as e:  # pylint: disable=broad-except
    return f'cannot read it as an image: {_why(e)}'


def image_batches(
  paths: Sequence[str], config, batch_size: int, *, load=None
) -> Iterator[tuple[list[int], np.ndarray, list[tuple[int, str]]]]:
  """(indices into `paths`, float32 [n, S, S, 3] in [-1, 1], [(index, error)]) per chunk of
  `batch_size` paths, in order: each image prepared by `load(path)` (default: `prepare` for
  `config`) in a thread pool; one that cannot be read or decoded is left out of the batch and named,
  with why, in the errors."""
  load = load or (lambda path: prepare(path, config))
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    for start in range(0, len(paths), batch_size):
      chunk = list(range(start, min(start + batch_size, len(paths))))
      prepared = list(pool.map(lambda i: _prepared(paths[i], load), chunk))
      kept = [(i, x) for i, x in zip(chunk, prepared) if not isinstance(x, str)]
      images = np.stack([x for _, x in kept]) if kept else np.zeros((0,), np.float32)
      yield (
        [i for i, _ in kept],
        images,
        [(i, x) for i, x in zip(chunk, prepared) if isinstance(x, str)],
      )


def pad_batch(images: np.ndarray, batch_size: int) -> np.ndarray:
  """Pads a short final batch with zeros to `batch_size`, so one compiled shape serves every
  batch."""
  if len(images) == batch_size:
    return images
  return np.concatenate(
    [images, np.zeros((batch_size - len(images),) + images.shape[1:], images.dtype)]
  )
