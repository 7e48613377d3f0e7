"""Release `.npz` checkpoints: import (any known layout), export, position-embedding resampling.

`load` (the whole tree, head included: inference) and `load_pretrained` (into a model's init: fine-tuning) accept:
  * the original release files (pre-Linen names `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`);
  * Linen-layout files (AugReg, and `save_npz` output);
  * `opt/target/` or `params/` prefixes; GroupNorm params stored as (1, 1, 1, C); bfloat16 stored as 2-byte void;
  * big_vision files (top-level `pos_embedding` added before the class token, which has none; none at all for
    sincos2d models; a `MAPHead_0` head under its own names; stacked `Transformer/encoderblock/...` when saved from
    a scanned model);
  * MLP-Mixer release files (gs://mixer_models/..., `MixerBlock_{i}/...`: the names of models.MlpMixer as they are).
Files are read into, and written from, the per-layer release names; a scanned model (`scan=True`) loads them by
stacking the blocks along a leading layer axis and saves them unstacked (`stack_blocks` / `unstack_blocks`).
"""
import io
import logging
import re
from typing import Any

import jax
import numpy as np

from vit_jax import utils
from vit_jax.augreg import augreg_index  # noqa: F401  (vision_transformer's checkpoint.get_augreg_df)

log = logging.getLogger(__name__)

# Pre-Linen block children -> Linen names.
_PRE_LINEN = {'MultiHeadDotProductAttention_1': 'MultiHeadDotProductAttention_0', 'LayerNorm_2': 'LayerNorm_1',
              'MlpBlock_3': 'MlpBlock_0'}
_PREFIXES = ('opt/target/', 'params/')
_BLOCK = re.compile(r'Transformer/encoderblock_(\d+)/(.+)')
_STACKED = 'Transformer/encoderblock/'


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or does not fit the model."""


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (heavy; only needed for I/O)
  return tf.io.gfile


def read_npz(path: str) -> dict[str, np.ndarray]:
  """Reads a flat {name: array} dict from a local or gs:// `.npz`, refusing pickled objects."""
  gfile = _gfile()
  if not gfile.exists(path):
    raise FileNotFoundError(f'Checkpoint {path!r} does not exist.')
  with gfile.GFile(path, 'rb') as f:
    data = f.read()
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
      flat = {name: npz[name] for name in npz.files}
  except ValueError as e:
    raise CheckpointError(f'Checkpoint {path!r} holds pickled objects, which are refused for safety; '
                          f'only plain numeric arrays can be loaded ({e}).') from e
  except Exception as e:
    raise CheckpointError(f'Checkpoint {path!r} is not a readable .npz file: {e}') from e
  return {name: _to_numeric(name, arr) for name, arr in flat.items()}


def _to_numeric(name: str, arr: np.ndarray) -> np.ndarray:
  if arr.dtype.kind == 'V' and arr.dtype.itemsize == 2:  # bfloat16 saved without a registered dtype.
    return arr.view(jax.numpy.bfloat16).astype(np.float32)
  if arr.dtype.kind not in 'fiub':
    raise CheckpointError(f'Array {name!r} has non-numeric dtype {arr.dtype}.')
  return arr


def stack_blocks(flat: dict[str, Any]) -> dict[str, Any]:
  """Per-layer `Transformer/encoderblock_{i}/...` arrays -> stacked `Transformer/encoderblock/...` (scanned layout).

  The new leading axis is the layer, in layer order; other keys pass unchanged.
  """
  out, blocks = {}, {}
  for name, arr in flat.items():
    match = _BLOCK.fullmatch(name)
    if match:
      blocks.setdefault(match.group(2), {})[int(match.group(1))] = arr
    else:
      out[name] = arr
  for rest, layers in blocks.items():
    out[_STACKED + rest] = np.stack([layers[i] for i in sorted(layers)])
  return out


def unstack_blocks(flat: dict[str, Any]) -> dict[str, Any]:
  """The inverse of `stack_blocks`: stacked `Transformer/encoderblock/...` arrays -> per-layer keys."""
  out = {}
  for name, arr in flat.items():
    if name.startswith(_STACKED):
      rest = name[len(_STACKED):]
      out.update({f'Transformer/encoderblock_{i}/{rest}': arr[i] for i in range(arr.shape[0])})
    else:
      out[name] = arr
  return out


def save_npz(path: str, params) -> None:
  """Writes params as a flat float32 `.npz` in the release (Linen) layout, readable by any release-file reader.

  A scanned model's stacked blocks are written per layer, so its file equals the unrolled model's.
  """
  flat = {name: np.asarray(jax.device_get(v), dtype=np.float32) for name, v in utils.flatten_dict(params).items()}
  flat = unstack_blocks(flat)
  buf = io.BytesIO()
  np.savez(buf, **flat)
  gfile = _gfile()
  parent = path.rsplit('/', 1)[0] if '/' in path else ''
  if parent:
    gfile.makedirs(parent)
  tmp = path + '.tmp'
  with gfile.GFile(tmp, 'wb') as f:
    f.write(buf.getvalue())
  gfile.rename(tmp, path, overwrite=True)


def _canonical_names(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Strips prefixes, unstacks scanned blocks, renames pre-Linen blocks, reshapes old GroupNorm params."""
  stripped = {}
  for name, arr in flat.items():
    for prefix in _PREFIXES:
      if name.startswith(prefix):
        name = name[len(prefix):]
    stripped[name] = arr
  out = {}
  for name, arr in unstack_blocks(stripped).items():
    parts = name.split('/')
    if len(parts) > 2 and parts[0] == 'Transformer' and parts[1].startswith('encoderblock_'):
      parts[2] = _PRE_LINEN.get(parts[2], parts[2])
    if re.fullmatch(r'(gn_root|gn_proj|gn\d)', parts[-2] if len(parts) > 1 else '') and arr.ndim == 4:
      arr = arr.reshape(-1)
    out['/'.join(parts)] = arr
  return out


def _from_big_vision(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """big_vision adds `pos_embedding` to the patches only; prepend a zero row for the class token if it has one."""
  posemb = flat.pop('pos_embedding')
  if 'cls' in flat:
    posemb = np.concatenate([np.zeros_like(posemb[:, :1]), posemb], axis=1)
  flat['Transformer/posembed_input/pos_embedding'] = posemb
  return flat


def _canonical_flat(path: str) -> dict[str, np.ndarray]:
  """The file's arrays under the per-layer release (Linen) names of our unscanned model, whatever its layout."""
  flat = _canonical_names(read_npz(path))
  if 'pos_embedding' in flat:
    log.info('Reading %s as a big_vision checkpoint.', path)
    flat = _from_big_vision(flat)
  return flat


def load(path: str) -> dict:
  """The parameter tree of a `.npz` checkpoint (local or gs://), head and all, ready for `model.apply`.

  Any known layout (see the module doc: pre-Linen, Linen, big_vision, stacked blocks) comes out in the per-layer
  release names of `VisionTransformer(scan=False)`, so a fine-tuned file can be used for inference as it is:
  `model.apply({'params': checkpoint.load(path)}, images, train=False)`. For fine-tuning on a new task use
  `load_pretrained`, which also replaces the head and resamples position embeddings.
  """
  return utils.unflatten_dict(_canonical_flat(path))


def inspect_params(*, params, expected, fail_if_extra: bool = True, fail_if_missing: bool = True):
  """Checks that `params` has the keys of `expected` (a tree, e.g. a model init); returns `params` unchanged.

  Missing and extra keys are logged by name; with `fail_if_missing` / `fail_if_extra` either kind is a
  `CheckpointError` (a ValueError) that lists both.
  """
  have, want = utils.flatten_dict(params), utils.flatten_dict(expected)
  missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
  if missing:
    log.info('inspect_params: missing keys: %s', missing)
  if extra:
    log.info('inspect_params: extra keys: %s', extra)
  if (missing and fail_if_missing) or (extra and fail_if_extra):
    raise CheckpointError(f'The parameters do not match the expected tree: {len(missing)} missing '
                          f'{missing}; {len(extra)} extra {extra}.')
  return params


def _grid_shape(num_tokens: int) -> tuple[int, int]:
  side = int(round(np.sqrt(num_tokens)))
  if side * side != num_tokens:
    raise CheckpointError(f'Cannot infer a square grid from {num_tokens} position embeddings; pass the grid shape.')
  return side, side


def _linear_resample(x: np.ndarray, size: int, axis: int) -> np.ndarray:
  """Linear interpolation along `axis` with aligned corners (scipy.ndimage.zoom's order=1 mapping)."""
  n = x.shape[axis]
  if size == n:
    return x
  pos = np.arange(size) * ((n - 1) / (size - 1)) if size > 1 else np.zeros(1)
  lo = np.clip(np.floor(pos).astype(int), 0, n - 1)
  hi = np.minimum(lo + 1, n - 1)
  frac = (pos - lo).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
  return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac


def interpolate_posembed(posemb, num_tokens: int, has_class_token: bool, *,
                         old_grid: tuple[int, int] | None = None,
                         new_grid: tuple[int, int] | None = None) -> np.ndarray:
  """Resamples position embeddings (1, N, D) to `num_tokens` tokens on a new grid.

  Bilinear with aligned corners, equal to `scipy.ndimage.zoom(grid, zoom, order=1)`. The class-token row, when
  `has_class_token`, is kept as is. Grids are square unless `old_grid` / `new_grid` (rows, cols) are given.
  """
  posemb = np.asarray(posemb)
  tok, grid = (posemb[:, :1], posemb[0, 1:]) if has_class_token else (posemb[:, :0], posemb[0])
  old_grid = tuple(old_grid or _grid_shape(len(grid)))
  new_grid = tuple(new_grid or _grid_shape(num_tokens - int(has_class_token)))
  if old_grid[0] * old_grid[1] != len(grid):
    raise CheckpointError(f'old_grid {old_grid} does not hold {len(grid)} position embeddings.')
  if new_grid[0] * new_grid[1] + int(has_class_token) != num_tokens:
    raise CheckpointError(f'new_grid {new_grid} does not give {num_tokens} tokens.')
  log.info('Resampling position embeddings from grid %s to %s.', old_grid, new_grid)
  g = grid.reshape(old_grid + (-1,)).astype(np.float64)
  g = _linear_resample(_linear_resample(g, new_grid[0], 0), new_grid[1], 1)
  g = g.reshape(1, new_grid[0] * new_grid[1], -1).astype(posemb.dtype)
  return np.concatenate([tok, g], axis=1)


def _place_like(value: np.ndarray, like):
  """Casts to `like`'s dtype and, for (abstract or concrete) sharded arrays, builds the array in that sharding."""
  value = np.asarray(value, dtype=like.dtype)
  sharding = getattr(like, 'sharding', None)
  if sharding is None:
    return value
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def load_pretrained(*, pretrained_path: str, init_params, model_config, image_size: Any = None,
                    strict: bool = True):
  """Loads a release `.npz` into the structure of `init_params` for fine-tuning.

  * `head` keeps its fresh init (a new task); `pre_logits` is dropped when the model has no representation layer;
    a `map` pooling head missing from the file (e.g. fine-tuning a 'token' checkpoint with 'map') keeps its init.
  * Position embeddings are resampled when the token count differs (grid from `image_size`, square by default).
  * Missing and extra keys are logged by name; with `strict`, any missing key other than head/pre_logits is an
    error, and so is any shape that cannot be reconciled (the error names the key and both shapes).
  * The result has `init_params`' dtypes and, where `init_params` are sharded jax.Arrays or ShapeDtypeStructs,
    their shardings (nothing is materialised whole on one device).
  * A scanned model (stacked `Transformer/encoderblock/...` in `init_params`) gets the blocks stacked.
  * An MLP-Mixer (release files from gs://mixer_models load as they are) has no position embeddings: only its head
    is replaced. Its token-mixing weights fix the number of tokens, so another resolution is an error saying so.
  """
  flat = _canonical_flat(pretrained_path)
  init_flat = utils.flatten_dict(init_params)
  if any(name.startswith(_STACKED) for name in init_flat):
    flat = stack_blocks(flat)
  missing = sorted(k for k in init_flat if k not in flat)
  extra = sorted(k for k in flat if k not in init_flat)
  if missing:
    log.info('Keys in the model but not in %s (left at init): %s', pretrained_path, missing)
  if extra:
    log.info('Keys in %s but not in the model (ignored): %s', pretrained_path, extra)
  hard_missing = [k for k in missing if not k.startswith(('head/', 'pre_logits/', 'MAPHead_0/'))]
  if strict and hard_missing:
    raise CheckpointError(f'{pretrained_path} lacks {len(hard_missing)} parameters of the model (is it a checkpoint of '
                          f'another architecture?): {hard_missing[:20]}'
                          + (f' ... and {len(hard_missing) - 20} more' if len(hard_missing) > 20 else '')
                          + f'. Keys it has but the model lacks: {extra[:20]}.')
  has_class_token = model_config.get('classifier', 'token') in ('token', 'token_unpooled')
  out, mismatched = {}, []
  for name, init in init_flat.items():
    if name.startswith('head/') or name not in flat:
      if isinstance(init, jax.ShapeDtypeStruct):
        raise CheckpointError(f'{name!r} keeps its init, but init_params are abstract; pass concrete params.')
      out[name] = init
      continue
    value = flat[name]
    if name.endswith('posembed_input/pos_embedding') and value.shape != tuple(init.shape):
      new_grid = None
      if image_size is not None:
        from vit_jax.models import token_grid  # pylint: disable=g-import-not-at-top
        new_grid = token_grid(model_config, image_size)
      value = interpolate_posembed(value, init.shape[1], has_class_token, new_grid=new_grid)
    if value.shape != tuple(init.shape):
      mismatched.append(f'{name!r}: checkpoint {value.shape} vs model {tuple(init.shape)}')
      continue
    out[name] = _place_like(value, init)
  if mismatched:
    raise CheckpointError(_token_mixing_hint(mismatched, flat, init_flat, model_config) or (
        f'{pretrained_path} does not fit the model; shape mismatch for {len(mismatched)} parameters (is it a '
        'checkpoint of another architecture?):\n  ' + '\n  '.join(mismatched)))
  return utils.unflatten_dict(out)


def _token_mixing_hint(mismatched, flat, init_flat, model_config) -> str:
  """The error for a Mixer checkpoint of another token count ('' unless that is the only mismatch).

  A Mixer's token-mixing MLP is sized by the number of patches, so its weights fix the resolution. The reference
  (vision_transformer's load_pretrained) has no conversion either: it loads the weights unchecked and Flax fails
  on the first apply (ScopeParamShapeError); its Mixer fine-tuning config (mixer_base16_cifar10) trains at 224 px,
  the release resolution.
  """
  key = 'MixerBlock_0/token_mixing/Dense_0/kernel'
  if (key not in flat or key not in init_flat or flat[key].shape[0] == init_flat[key].shape[0]
      or not all('/token_mixing/' in m for m in mismatched)):
    return ''
  have, want = flat[key].shape[0], init_flat[key].shape[0]
  ph, pw = model_config['patches']['size']
  side = int(round(np.sqrt(have)))
  at = f' ({side * ph}x{side * pw} px at patch {ph}x{pw})' if side * side == have else ''
  return (f'The checkpoint is a Mixer for {have} tokens{at}, but the model has {want}: the token-mixing MLP is '
          'sized by the number of patches, so a Mixer fine-tunes at the resolution it was trained at (as '
          f'vision_transformer does: Mixer-B/16 on CIFAR-10 at 224 px). Set the image size to give {have} tokens; '
          'resizing token-mixing weights is not supported.')
