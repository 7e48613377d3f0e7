"""Release `.npz` checkpoints into a model: the one "does this checkpoint fit the model" comparison,
position-embedding resampling, and `load_pretrained` (a release file into a model's init, for
fine-tuning).

This is the path vision_transformer's users call (`checkpoint.load`, `load_pretrained`,
`inspect_params`, `interpolate_posembed`), so it also gives the names of the file format, which
vit_jax/npz.py owns: what a path is (`recognise`), reading any known layout (`read_npz`,
`canonical_flat`, `load`) and writing the release layout (`save_npz`).
"""

import dataclasses
import logging
from typing import Any

import jax
import numpy as np

from vit_jax import utils

# (vision_transformer's checkpoint.get_augreg_df)
from vit_jax.augreg import augreg_index  # noqa: F401
from vit_jax.configs import presets

# The file format's names, at their public path.
from vit_jax.npz import (  # noqa: F401
  LAYOUTS,
  STACKED,
  CheckpointError,
  big_vision_names,
  canonical_flat,
  describe_file,
  load,
  read_npz,
  recognise,
  release_names,
  save_npz,
  stack_blocks,
  unstack_blocks,
)

log = logging.getLogger(__name__)


class CheckpointMismatchError(CheckpointError):
  """A checkpoint whose arrays do not fit the model (another architecture)."""


def _shapes(tree) -> dict[str, tuple]:
  """{'/'-joined name: shape} of a tree or flat dict of arrays, ShapeDtypeStructs or Orbax metadata
  (None for a leaf without a shape)."""
  flat = (
    tree if all(isinstance(k, str) and not hasattr(v, 'items') for k, v in tree.items()) else None
  )
  if flat is None:
    flat = {utils.path_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}
  return {name: tuple(x.shape) if hasattr(x, 'shape') else None for name, x in flat.items()}


@dataclasses.dataclass
class Fit:
  """How a checkpoint's arrays fit a model's: names on one side only, and shapes that differ."""

  missing: list[str]  # In the model, not in the checkpoint.
  extra: list[str]  # In the checkpoint, not in the model.
  mismatched: list[tuple[str, tuple, tuple]]  # (name, checkpoint shape, model shape).

  def lines(self, optional=(), extra_ok: bool = False) -> list[str]:
    """One line per problem; names starting with an `optional` prefix may be missing (e.g. a new
    head), and with `extra_ok` the checkpoint may hold arrays the model does not use."""
    out = [f'{n!r}: checkpoint {a} vs model {b}' for n, a, b in self.mismatched]
    out += [
      f'{n!r}: missing from the checkpoint'
      for n in self.missing
      if not n.startswith(tuple(optional))
    ]
    return out + ([] if extra_ok else [f'{n!r}: not in the model' for n in self.extra])


def compare(have, want) -> Fit:
  """The one "does this checkpoint fit the model" comparison: `have` (the checkpoint) against `want`
  (the model's parameters or state, abstract or concrete), as trees or flat {name: array} dicts.
  Parameters come first in the lists, then anything else (optimizer state)."""
  have, want = _shapes(have), _shapes(want)
  # Stable: else in tree order.
  first = lambda names: sorted(names, key=lambda n: not n.startswith('params/'))
  return Fit(
    missing=first(n for n in want if n not in have),
    extra=first(n for n in have if n not in want),
    mismatched=[(n, have[n], want[n]) for n in first(want) if n in have and have[n] != want[n]],
  )


def check_fits(
  have, want, *, source: str, hint: str = '', optional=(), extra_ok: bool = False
) -> Fit:
  """CheckpointMismatchError naming every array of `source` that does not fit (see `compare` and
  `Fit.lines`), the first 20 listed; returns the Fit when it fits."""
  fit = compare(have, want)
  problems = fit.lines(optional, extra_ok)
  if problems:
    listed = '\n  '.join(problems[:20]) + (
      f'\n  ... and {len(problems) - 20} more' if len(problems) > 20 else ''
    )
    raise CheckpointMismatchError(
      f'{source} does not fit the model ({len(problems)} array(s) differ; is it a checkpoint of '
      f'another architecture?):\n  {listed}' + (f'\n{hint}' if hint else '')
    )
  return fit


def inspect_params(*, params, expected, fail_if_extra: bool = True, fail_if_missing: bool = True):
  """Checks that `params` has the keys of `expected` (a tree, e.g. a model init); returns `params`
  unchanged.

  Missing and extra keys are logged by name; with `fail_if_missing` / `fail_if_extra` either kind is
  a `CheckpointError` (a ValueError) that lists both.
  """
  fit = compare(params, expected)
  if fit.missing:
    log.info('inspect_params: missing keys: %s', fit.missing)
  if fit.extra:
    log.info('inspect_params: extra keys: %s', fit.extra)
  if (fit.missing and fail_if_missing) or (fit.extra and fail_if_extra):
    raise CheckpointError(
      f'The parameters do not match the expected tree: {len(fit.missing)} missing '
      f'{sorted(fit.missing)}; {len(fit.extra)} extra {sorted(fit.extra)}.'
    )
  return params


def _grid_shape(num_tokens: int) -> tuple[int, int]:
  side = int(round(np.sqrt(num_tokens)))
  if side * side != num_tokens:
    raise CheckpointError(
      f'Cannot infer a square grid from {num_tokens} position embeddings; pass the grid shape.'
    )
  return side, side


def _linear_resample(x: np.ndarray, size: int, axis: int) -> np.ndarray:
  """Linear interpolation along `axis` with aligned corners (scipy.ndimage.zoom's order=1
  mapping)."""
  n = x.shape[axis]
  if size == n:
    return x
  pos = np.arange(size) * ((n - 1) / (size - 1)) if size > 1 else np.zeros(1)
  lo = np.clip(np.floor(pos).astype(int), 0, n - 1)
  hi = np.minimum(lo + 1, n - 1)
  frac = (pos - lo).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
  return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac


def interpolate_posembed(
  posemb,
  num_tokens: int,
  has_class_token: bool,
  *,
  old_grid: tuple[int, int] | None = None,
  new_grid: tuple[int, int] | None = None,
) -> np.ndarray:
  """Resamples position embeddings (1, N, D) to `num_tokens` tokens on a new grid.

  Bilinear with aligned corners, equal to `scipy.ndimage.zoom(grid, zoom, order=1)`. The class-token
  row, when `has_class_token`, is kept as is. Grids are square unless `old_grid` / `new_grid` (rows,
  cols) are given.
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
  """Casts to `like`'s dtype and, for (abstract or concrete) sharded arrays, builds the array in
  that sharding."""
  value = np.asarray(value, dtype=like.dtype)
  sharding = getattr(like, 'sharding', None)
  if sharding is None:
    return value
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def load_pretrained(
  *, pretrained_path: str, init_params, model_config, image_size: Any = None, strict: bool = True
):
  """Loads a release `.npz` into the structure of `init_params` for fine-tuning.

  * `head` keeps its fresh init (a new task); `pre_logits` is dropped when the model has no
    representation layer; a `map` pooling head missing from the file (e.g. fine-tuning a 'token'
    checkpoint with 'map') keeps its init.
  * Position embeddings are resampled when the token count differs (grid from `image_size`, square
    by default).
  * Missing and extra keys are logged by name; with `strict`, any missing key other than
    head/pre_logits is an error, and so is any shape that cannot be reconciled (the error names the
    key and both shapes).
  * The result has `init_params`' dtypes and, where `init_params` are sharded jax.Arrays or
    ShapeDtypeStructs, their shardings (nothing is materialised whole on one device).
  * A scanned model (stacked `Transformer/encoderblock/...` in `init_params`) gets the blocks
    stacked.
  * A two-tower file (SigLIP's, LiT's) gives its image tower `img/` (e.g. a SigLIP ViT with the
    MAP head); its text tower, `t` and `b` are ignored.
  * An MLP-Mixer (release files from gs://mixer_models load as they are) has no position embeddings:
    only its head is replaced. Its token-mixing weights fix the number of tokens, so another
    resolution is an error saying so.
  """
  flat = canonical_flat(pretrained_path)
  init_flat = utils.flatten_dict(init_params)
  if any(k.startswith('img/') for k in flat) and not any(k.startswith('img/') for k in init_flat):
    # A two-tower file (LiT, SigLIP): its image tower; the text tower, t and b are not used.
    log.info('Taking the image tower (img/) of the two-tower file %s.', pretrained_path)
    flat = {k[len('img/') :]: v for k, v in flat.items() if k.startswith('img/')}
  if any(name.startswith(STACKED) for name in init_flat):
    flat = stack_blocks(flat)
  posemb = 'Transformer/posembed_input/pos_embedding'
  if (
    posemb in flat and posemb in init_flat and flat[posemb].shape != tuple(init_flat[posemb].shape)
  ):
    new_grid = None
    if image_size is not None:
      new_grid = presets.token_grid(model_config, image_size)
    flat[posemb] = interpolate_posembed(
      flat[posemb],
      init_flat[posemb].shape[1],
      presets.has_class_token(model_config['classifier']),
      new_grid=new_grid,
    )
  # A new task: the head keeps its init.
  flat = {k: v for k, v in flat.items() if not k.startswith('head/')}
  # What may be missing (keeps its init).
  fresh = ('head/', 'pre_logits/', 'MAPHead_0/') if strict else ('',)
  hint = _token_mixing_hint(compare(flat, init_flat).mismatched, flat, init_flat, model_config)
  if hint:
    raise CheckpointMismatchError(hint)
  fit = check_fits(flat, init_flat, source=pretrained_path, optional=fresh, extra_ok=True)
  if fit.missing:
    log.info('Keys in the model but not in %s (left at init): %s', pretrained_path, fit.missing)
  if fit.extra:
    log.info('Keys in %s but not in the model (ignored): %s', pretrained_path, fit.extra)
  out = {}
  for name, init in init_flat.items():
    value = flat.get(name)
    if value is None:
      if isinstance(init, jax.ShapeDtypeStruct):
        raise CheckpointError(
          f'{name!r} keeps its init, but init_params are abstract; pass concrete params.'
        )
      out[name] = init
    else:
      out[name] = _place_like(value, init)
  return utils.unflatten_dict(out)


def _token_mixing_hint(mismatched, flat, init_flat, model_config) -> str:
  """The error for a Mixer checkpoint of another token count ('' unless that is the only mismatch).

  A Mixer's token-mixing MLP is sized by the number of patches, so its weights fix the resolution.
  The reference (vision_transformer's load_pretrained) has no conversion either: it loads the
  weights unchecked and Flax fails on the first apply (ScopeParamShapeError); its Mixer fine-tuning
  config (mixer_base16_cifar10) trains at 224 px, the release resolution.
  """
  key = 'MixerBlock_0/token_mixing/Dense_0/kernel'
  if (
    key not in flat
    or key not in init_flat
    or flat[key].shape[0] == init_flat[key].shape[0]
    or not all('/token_mixing/' in name for name, _, _ in mismatched)
  ):
    return ''
  have = flat[key].shape[0]
  want = init_flat[key].shape[0]
  ph, pw = model_config['patches']['size']
  size = presets.image_size_for_tokens(model_config, have)
  at = f' ({size}x{size} px at patch {ph}x{pw})' if size else ''
  return (
    f'The checkpoint is a Mixer for {have} tokens{at}, but the model has {want}: the token-mixing '
    'MLP is sized by the number of patches, so a Mixer fine-tunes at the resolution it was '
    'trained at (as vision_transformer does: Mixer-B/16 on CIFAR-10 at 224 px). Set the image '
    f'size to give {have} tokens; resizing token-mixing weights is not supported.'
  )
