"""A trained model for the after-training tools (predict, visualize, export): config, model, params, class names.

Two sources, the same result (`Trained`):
  * a run's workdir (`load_run`): its config.json, the parameters of its latest Orbax checkpoint or of its
    params.npz, whichever was written last (only the parameters are restored: no optimiser state is read), and its
    class_names.json;
  * a release-layout `.npz` with a preset name (`load_npz`): the shared config defaults with that model.
The model is built as the trainer builds it (`train.build_model`), fast paths included, and the parameters are put
in its layout (stacked blocks for `scan_layers`). Images go through the run's own evaluation preprocessing
(`input_pipeline.eval_image`), never a copy of it (`image_batches`).
"""
import argparse
import concurrent.futures
import dataclasses
import json
import logging
import math
import os
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax import checkpoint, input_pipeline, models, preprocess, sources, train, utils
from vit_jax import workdir as workdir_lib

log = logging.getLogger(__name__)

PARAMS_FILE = 'params.npz'
CHECKPOINTS_DIR = 'checkpoints'
# What a folder given as input contributes (an explicitly named file is tried whatever its name).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')


@dataclasses.dataclass
class Trained:
  """A model ready for inference: `model.apply({'params': params}, images, train=False)`."""
  config: ml_collections.ConfigDict  # At least model, image_size, dtype, pp.eval_crop_fraction, loss.
  model: models.VisionTransformer
  params: Any
  class_names: list[str] | None  # Label names in label order, or None (then labels are indices).
  source: str  # Where the parameters came from, for messages.

  @property
  def num_classes(self) -> int:
    return int(self.params['head']['bias'].shape[-1])

  def label(self, index: int) -> str:
    return self.class_names[index] if self.class_names else str(index)


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (heavy; only needed for I/O)
  return tf.io.gfile


def _mtime(path: str) -> float:
  return _gfile().stat(path).mtime_nsec / 1e9


def _inference_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run's config with attention='cudnn' replaced by 'xla' where cuDNN cannot run (the same numbers)."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.get('attention') == 'cudnn' and jax.default_backend() != 'gpu':
    log.info("The run used attention='cudnn'; using 'xla' on this %s backend.", jax.default_backend())
    config.attention = 'xla'
  return config


def _in_model_layout(flat: dict[str, np.ndarray], config) -> dict:
  """Release-layout (per-layer) flat params -> the tree of `build_model(config)` (stacked under scan_layers)."""
  if config.get('scan_layers', False):
    flat = checkpoint.stack_blocks(flat)
  return utils.unflatten_dict(flat)


def _check_fits(model, params, image_size: int, source: str) -> None:
  """Raises a CheckpointError naming every key and shape where `params` differ from the model's parameters."""
  dummy = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  expected = utils.flatten_dict(jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)
                                ['params'])
  have = utils.flatten_dict(params)
  problems = [f'{k}: missing' for k in sorted(expected.keys() - have.keys())]
  problems += [f'{k}: not in the model' for k in sorted(have.keys() - expected.keys())]
  problems += [f'{k}: {tuple(have[k].shape)} vs the model\'s {tuple(v.shape)}' for k, v in sorted(expected.items())
               if k in have and tuple(have[k].shape) != tuple(v.shape)]
  if problems:
    raise checkpoint.CheckpointError(f'The parameters of {source} do not fit the model:\n  ' + '\n  '.join(problems))


def _latest_checkpoint(workdir: str):
  """(manager, step) of the run's latest complete Orbax checkpoint, or (None, None)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  directory = os.path.join(workdir, CHECKPOINTS_DIR)
  if not _gfile().isdir(directory):
    return None, None
  if '://' not in directory:
    directory = os.path.abspath(directory)
  absl_log = logging.getLogger('absl')
  level = absl_log.level
  absl_log.setLevel(logging.ERROR)  # Not Orbax's "Given directory is read only" warning: that is the point.
  try:
    manager = ocp.CheckpointManager(directory, item_handlers=ocp.PyTreeCheckpointHandler(),
                                    options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                                                         save_interval_steps=0))
  finally:
    absl_log.setLevel(level)
  return manager, manager.latest_step()


def _restore_params(manager, step: int, model, image_size: int):
  """The 'params' subtree of a train state saved by the trainer, as NumPy arrays (a partial restore)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  dummy = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  abstract = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)['params']
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
  restored = manager.restore(step, args=ocp.args.PyTreeRestore(
      item={'params': abstract}, restore_args={'params': restore_args}, partial_restore=True))
  return restored['params']


def load_run(workdir: str) -> Trained:
  """The trained model of a run's workdir (see the module doc); a clear error when the workdir holds none."""
  gfile = _gfile()
  config_path = os.path.join(workdir, workdir_lib.CONFIG_FILE)
  if not gfile.exists(config_path):
    raise FileNotFoundError(f'{workdir} holds no {workdir_lib.CONFIG_FILE}: pass the --workdir of a training run '
                            '(python -m vit_jax.main --workdir=...), or --checkpoint=X.npz with --model.')
  with gfile.GFile(config_path, 'r') as f:
    config = _inference_config(ml_collections.ConfigDict(json.load(f)))
  npz_path = os.path.join(workdir, PARAMS_FILE)
  manager, step = _latest_checkpoint(workdir)
  has_npz = gfile.exists(npz_path)
  if step is None and not has_npz:
    raise FileNotFoundError(f'{workdir} holds neither a checkpoint ({CHECKPOINTS_DIR}/<step>) nor {PARAMS_FILE}: '
                            'has the run saved anything yet?')
  use_checkpoint = step is not None and (not has_npz or _mtime(
      os.path.join(str(manager.directory), str(step), '_CHECKPOINT_METADATA')) > _mtime(npz_path))
  if use_checkpoint:
    source = f'{workdir}: checkpoint at step {step}'
    head = manager.item_metadata(step)['params']['head']['bias']
    model = train.build_model(config, int(head.shape[-1]))
    params = _restore_params(manager, step, model, config.image_size)
  else:
    source = npz_path
    flat = checkpoint.read_npz(npz_path)
    model = train.build_model(config, int(flat['head/bias'].shape[-1]))
    params = _in_model_layout(flat, config)
  _check_fits(model, params, config.image_size, source)
  log.info('Loaded %s.', source)
  return Trained(config, model, params, workdir_lib.read_class_names(workdir), source)


def _posemb_for(params: dict, model_config, image_size: int) -> dict:
  """Resamples the position embeddings to `image_size` where the checkpoint was trained at another size."""
  posemb = params['Transformer']['posembed_input']['pos_embedding']
  grid = models.token_grid(model_config, image_size)
  has_class_token = 'cls' in params
  tokens = grid[0] * grid[1] + int(has_class_token)
  if posemb.shape[1] != tokens:
    params['Transformer']['posembed_input']['pos_embedding'] = checkpoint.interpolate_posembed(
        posemb, tokens, has_class_token, new_grid=grid)
  return params


def checkpoint_image_size(params: dict, model_config) -> int:
  """The (square) image size a checkpoint's position embeddings were trained at."""
  n = params['Transformer']['posembed_input']['pos_embedding'].shape[1] - int('cls' in params)
  side = math.isqrt(n)
  if side * side != n:
    raise checkpoint.CheckpointError(f'The checkpoint has {n} position embeddings, not a square grid: pass '
                                     '--image_size.')
  return side * models.token_pixels(model_config)


def load_npz(path: str, *, model_name: str, num_classes: int | None = None, image_size: int | None = None,
             class_names: Sequence[str] | None = None) -> Trained:
  """A release-layout `.npz` (any layout `checkpoint.load` reads) as the preset `model_name`.

  `num_classes`, when given, must equal the checkpoint's head; `image_size` defaults to the size the position
  embeddings were trained at (other sizes resample them, as fine-tuning does).
  """
  from vit_jax.configs import common  # pylint: disable=g-import-not-at-top
  config = common.get_config()
  config.model = models.get_model_config(model_name)
  params = checkpoint.load(path)
  if 'head' not in params:
    raise checkpoint.CheckpointError(f'{path} has no classification head (head/kernel): it cannot classify.')
  head = int(params['head']['bias'].shape[-1])
  if num_classes is not None and num_classes != head:
    raise ValueError(f'--num_classes={num_classes}, but the head of {path} has {head} classes.')
  if class_names is not None and len(class_names) != head:
    raise ValueError(f'{len(class_names)} class names for a head of {head} classes ({path}).')
  config.image_size = image_size or checkpoint_image_size(params, config.model)
  params = _posemb_for(params, config.model, config.image_size)
  model = train.build_model(config, head)
  _check_fits(model, params, config.image_size, path)
  return Trained(config, model, params, list(class_names) if class_names else None, path)


# ----------------------------------------------------------------------------------------------------------------
# Command-line model selection, shared by predict, visualize and export.


def add_model_args(parser: argparse.ArgumentParser) -> None:
  """--workdir, or --checkpoint with --model [--num_classes --image_size --class_names]."""
  group = parser.add_argument_group('model (a run, or a release .npz)')
  group.add_argument('--workdir', help='A training run: its config.json and latest checkpoint or params.npz.')
  group.add_argument('--checkpoint', help='A release-layout .npz (local or gs://), with --model.')
  group.add_argument('--model', help=f'Preset of --checkpoint: {", ".join(models.MODEL_NAMES)}.')
  group.add_argument('--num_classes', type=int, help='Classes of --checkpoint (checked against its head).')
  group.add_argument('--image_size', type=int, help='Input size for --checkpoint (default: what it was trained at).')
  group.add_argument('--class_names', help='For --checkpoint: a JSON list of label names in label order.')


def load_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Trained:
  """The Trained model that `add_model_args`' arguments select; bad arguments or files exit with a one-line error."""
  if bool(args.workdir) == bool(args.checkpoint):
    parser.error('pass exactly one of --workdir=RUN and --checkpoint=X.npz (with --model).')
  if args.workdir:
    extra = [f'--{k}' for k in ('model', 'num_classes', 'image_size', 'class_names') if getattr(args, k)]
    if extra:
      parser.error(f'{", ".join(extra)} go with --checkpoint; a --workdir run has its own.')
  elif args.model not in models.MODEL_NAMES:
    parser.error(f'--checkpoint needs --model, one of: {", ".join(models.MODEL_NAMES)} (got {args.model!r}).')
  try:
    if args.workdir:
      return load_run(args.workdir)
    class_names = None
    if args.class_names:
      with _gfile().GFile(args.class_names, 'r') as f:
        class_names = json.load(f)
    return load_npz(args.checkpoint, model_name=args.model, num_classes=args.num_classes,
                    image_size=args.image_size, class_names=class_names)
  except (FileNotFoundError, ValueError) as e:  # CheckpointError is a ValueError.
    parser.exit(2, f'{parser.prog}: error: {e}\n')


# ----------------------------------------------------------------------------------------------------------------
# Inputs.


def expand_inputs(patterns: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """(image files, [(argument, error)]) from files, folders (searched recursively) and globs, local or gs://."""
  gfile = _gfile()
  files, missing = [], []
  for pattern in patterns:
    if gfile.isdir(pattern):
      found = sorted(os.path.join(root, name) for root, _, names in gfile.walk(pattern) for name in names
                     if name.lower().endswith(IMAGE_EXTENSIONS))
      why = f'the folder holds no {"/".join(IMAGE_EXTENSIONS)} file'
    elif any(c in pattern for c in '*?['):
      found, why = sorted(p for p in gfile.glob(pattern) if not gfile.isdir(p)), 'no file matches'
    else:
      found, why = ([pattern] if gfile.exists(pattern) else []), 'no such file'
    if not found:
      missing.append((pattern, why))
    files += found
  return list(dict.fromkeys(files)), missing


def _read_and_decode(path: str) -> np.ndarray:
  return preprocess.decode(sources.read_bytes(path))


def decode_error(path: str) -> str:
  """Why `path` cannot be read as an image (the decoder's own message), or '' when it can."""
  try:
    _read_and_decode(path)
  except Exception as e:  # pylint: disable=broad-except  (any failure is reported by name, not raised)
    return f'cannot decode as an image: {type(e).__name__}: {" ".join(str(e).split())[:200]}'
  return ''


def _prepared(path: str, config) -> np.ndarray | None:
  try:
    return input_pipeline.eval_image(_read_and_decode(path), config)
  except Exception:  # pylint: disable=broad-except  (reported by `decode_error`)
    return None


def image_batches(paths: Sequence[str], config, batch_size: int) -> Iterator[tuple[list[int], np.ndarray]]:
  """Batches (indices into `paths`, float32 [n, S, S, 3] in [-1, 1]) of the images that decode, in order.

  Each image goes through the run's evaluation preprocessing (`input_pipeline.eval_image`), in a thread pool. Files
  that cannot be read or decoded are left out of the batches: their indices never appear (see `decode_error`).
  """
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    for start in range(0, len(paths), batch_size):
      chunk = list(range(start, min(start + batch_size, len(paths))))
      images = list(pool.map(lambda i: _prepared(paths[i], config), chunk))
      kept = [(i, image) for i, image in zip(chunk, images) if image is not None]
      if kept:
        yield [i for i, _ in kept], np.stack([image for _, image in kept])


def pad_batch(images: np.ndarray, batch_size: int) -> np.ndarray:
  """Pads a short final batch with zeros to `batch_size`, so one compiled shape serves every batch."""
  if len(images) == batch_size:
    return images
  return np.concatenate([images, np.zeros((batch_size - len(images),) + images.shape[1:], images.dtype)])


def setup_cli() -> None:
  """What every after-training command does first: quiet TensorFlow (kept off the GPUs), vit_jax notes on stderr."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  logging.basicConfig(level=logging.WARNING, format='%(message)s')
  logging.getLogger('vit_jax').setLevel(logging.INFO)
