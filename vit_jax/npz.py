"""Release `.npz` files: what a path is, reading any known layout into our names, writing the
release layout. `vit_jax.checkpoint` (the public path) re-exports these names and fits a file to a
model.

`load` (the whole tree, head included: inference) and `checkpoint.load_pretrained` (into a model's
init: fine-tuning) accept:
  * the original release files (pre-Linen names `MultiHeadDotProductAttention_1`, `LayerNorm_2`,
    `MlpBlock_3`);
  * Linen-layout files (big_vision's, and files written by older versions of this package);
  * `opt/target/` or `params/` prefixes; GroupNorm params stored as (1, 1, 1, C); bfloat16 stored as
    2-byte void;
  * big_vision files (top-level `pos_embedding` added before the class token, which has none; none
    at all for sincos2d models; a `MAPHead_0` head under its own names; stacked
    `Transformer/encoderblock/...` when saved from a scanned model);
  * MLP-Mixer release files (gs://mixer_models/..., `MixerBlock_{i}/...`: the names of
    models.MlpMixer as they are).
Files are read into our model's per-layer (Linen) names; `save_npz` writes the released files'
names, which their readers expect (timm's `_load_weights`), or big_vision's (SigLIP's two-tower
files: `img/pos_embedding`, stacked `txt/Encoder_0/encoderblock/...` in SigLIP 2's, read too). A
scanned model (`scan=True`) loads them by stacking the blocks along a leading layer axis and saves
them unstacked (`stack_blocks` /
`unstack_blocks`).
"""

import io as bytes_io
import logging
import re
from typing import Any

import jax
import numpy as np

from vit_jax import errors, io, utils
from vit_jax.runtime import workdir

log = logging.getLogger(__name__)

# Pre-Linen block children (the released files' names) -> Linen names (our model's), and back.
_PRE_LINEN = {
  'MultiHeadDotProductAttention_1': 'MultiHeadDotProductAttention_0',
  'LayerNorm_2': 'LayerNorm_1',
  'MlpBlock_3': 'MlpBlock_0',
}
_RELEASE = {linen: release for release, linen in _PRE_LINEN.items()}
_PREFIXES = ('opt/target/', 'params/')
# A block of an encoder: a ViT's (`Transformer`), or a text tower's (`Encoder_0`, big_vision's text
# transformer), at the top or inside a two-tower model's tower (`img/`, `txt/`).
_ENCODER = r'((?:[^/]+/)?(?:Transformer|Encoder_0))'
_BLOCK = re.compile(_ENCODER + r'/encoderblock_(\d+)/(.+)')
_STACKED_BLOCK = re.compile(_ENCODER + r'/encoderblock/(.+)')
STACKED = 'Transformer/encoderblock/'  # The prefix of a scanned model's stacked blocks.


class CheckpointError(errors.UserError, ValueError):
  """A checkpoint that cannot be read or does not fit the model."""


# Leading bytes of files that people mistake for checkpoints -> what they are.
_NOT_NPZ = (
  (b'\xff\xd8\xff', 'a JPEG image'),
  (b'\x89PNG', 'a PNG image'),
  (b'GIF8', 'a GIF image'),
  (b'\x93NUMPY', 'a single .npy array'),
  (b'\x1f\x8b', 'a gzip file'),
  (b'{', 'JSON text'),
  (b'[', 'JSON text'),
)
_ORBAX_MARKERS = ('_CHECKPOINT_METADATA', '_METADATA', workdir.COMMIT_FILE)


def describe_file(path: str) -> str:
  """What `path` is, for 'is not a checkpoint' messages: 'a JPEG image', 'text', 'a folder', ..."""
  if io.isdir(path):
    return 'a folder'
  head = io.read_head(path, 512)
  for magic, what in _NOT_NPZ:
    if head.startswith(magic):
      return what
  if not head:
    return 'an empty file'
  try:
    head.decode('utf-8')
    return 'text'
  except UnicodeDecodeError:
    return 'not an .npz file'


def recognise(path: str) -> str:
  """'npz' for a release-layout .npz file, 'orbax' for an Orbax checkpoint folder (one step of a
  run), else a CheckpointError that says what the path is instead; it opens only the file's first
  bytes or the folder's names."""
  if not io.exists(path):
    raise CheckpointError(f'Checkpoint {path!r} does not exist.')
  if io.isdir(path):
    names = set(io.listdir(path))
    if names & set(_ORBAX_MARKERS):
      return 'orbax'
    params = workdir.PARAMS_FILE
    hint = (
      f" It looks like a run's workdir: use its {params}."
      if params in names
      else f" It looks like a run's checkpoints folder: use the run's {params}."
      if any(n.isdigit() for n in names)
      else ''
    )
    raise CheckpointError(
      f'{path!r} is a folder, not a checkpoint (an .npz file in the release layout).{hint}'
    )
  if io.read_head(path, 4) != b'PK\x03\x04':  # An .npz is a zip archive.
    raise CheckpointError(
      f'{path!r} is not a checkpoint: it is {describe_file(path)}, not an .npz file of arrays (the '
      'release layout, e.g. gs://vit_models/imagenet21k/ViT-B_16.npz).'
    )
  return 'npz'


def read_npz(path: str) -> dict[str, np.ndarray]:
  """Reads a flat {name: array} dict from a local or gs:// `.npz`, refusing pickled objects."""
  recognise(path)
  try:
    with np.load(bytes_io.BytesIO(io.read_bytes(path)), allow_pickle=False) as npz:
      flat = {}
      for name in npz.files:
        try:
          flat[name] = npz[name]
        except ValueError as e:  # Object arrays: only loadable by unpickling, which can run code.
          raise CheckpointError(
            f'Checkpoint {path!r} holds pickled objects (array {name!r}), which are refused for '
            'safety; only plain numeric arrays are loaded.'
          ) from e
  except CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (a damaged zip: the reader's own message)
    raise CheckpointError(
      f'Checkpoint {path!r} is not a readable .npz file: {type(e).__name__}: {e}'
    ) from e
  return {name: _to_numeric(name, arr) for name, arr in flat.items()}


def _to_numeric(name: str, arr: np.ndarray) -> np.ndarray:
  # bfloat16 saved without a registered dtype.
  if arr.dtype.kind == 'V' and arr.dtype.itemsize == 2:
    return arr.view(jax.numpy.bfloat16).astype(np.float32)
  if arr.dtype.kind not in 'fiub':
    raise CheckpointError(f'Array {name!r} has non-numeric dtype {arr.dtype}.')
  return arr


def stack_blocks(flat: dict[str, Any]) -> dict[str, Any]:
  """Per-layer `Transformer/encoderblock_{i}/...` arrays -> stacked `Transformer/encoderblock/...`
  (scanned layout); the same for a text tower's `Encoder_0/encoderblock_{i}` and inside a two-tower
  model's towers (`img/Transformer/...`, `txt/Encoder_0/...`).

  The new leading axis is the layer, in layer order; other keys pass unchanged.
  """
  out = {}
  blocks = {}
  for name, arr in flat.items():
    match = _BLOCK.fullmatch(name)
    if match:
      blocks.setdefault((match.group(1), match.group(3)), {})[int(match.group(2))] = arr
    else:
      out[name] = arr
  for (encoder, rest), layers in blocks.items():
    out[f'{encoder}/encoderblock/{rest}'] = np.stack([layers[i] for i in sorted(layers)])
  return out


def unstack_blocks(flat: dict[str, Any]) -> dict[str, Any]:
  """The inverse of `stack_blocks`: stacked `.../encoderblock/...` arrays -> per-layer keys."""
  out = {}
  for name, arr in flat.items():
    match = _STACKED_BLOCK.fullmatch(name)
    if match:
      encoder, rest = match.groups()
      out.update({f'{encoder}/encoderblock_{i}/{rest}': arr[i] for i in range(arr.shape[0])})
    else:
      out[name] = arr
  return out


def _rename_block_children(flat: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
  """`flat` with the children of each `.../encoderblock_N/` renamed by `renames` (a ViT's, and a LiT
  model's towers)."""

  def rename(parts):
    i = next(
      (i for i, part in enumerate(parts[:-2]) if re.fullmatch(r'encoderblock_\d+', part)), None
    )
    return '/'.join(
      parts
      if i is None
      else parts[: i + 1] + [renames.get(parts[i + 1], parts[i + 1])] + parts[i + 2 :]
    )

  return {rename(name.split('/')): arr for name, arr in flat.items()}


def release_names(flat: dict[str, Any]) -> dict[str, Any]:
  """Our per-layer (Linen) names -> the released ViT files' (`MultiHeadDotProductAttention_1`,
  `LayerNorm_2`...)."""
  return _rename_block_children(flat, _RELEASE)


def big_vision_names(flat: dict[str, Any]) -> dict[str, Any]:
  """Our per-layer (Linen) names -> big_vision's: the position embedding at the top of the ViT (or
  of a two-tower model's `img/` tower) as `pos_embedding`, for the patches only (a class token's row
  is added into `cls`, the same sums); everything else as it is."""
  out = dict(flat)
  for tower in ('', 'img/'):
    posemb = out.pop(f'{tower}Transformer/posembed_input/pos_embedding', None)
    if posemb is None:
      continue
    if f'{tower}cls' in out:
      out[f'{tower}cls'] = out[f'{tower}cls'] + posemb[:, :1]
      posemb = posemb[:, 1:]
    out[f'{tower}pos_embedding'] = posemb
  return out


# save_npz's layouts: the released ViT and LiT files', or big_vision's (SigLIP's two_towers).
LAYOUTS = {'release': release_names, 'big_vision': big_vision_names}


def save_npz(path: str, params, layout: str = 'release') -> None:
  """Writes params as a flat float32 `.npz`: in the released ViT files' layout (`release_names`),
  which the reference code, timm and this package read, or with layout='big_vision' in big_vision's
  (`big_vision_names`: what its two_towers.load and vit.load read, SigLIP's files). A scanned
  model's blocks are written per layer, as the unrolled model's."""
  if layout not in LAYOUTS:
    raise ValueError(f'Unknown layout {layout!r}; valid: {", ".join(LAYOUTS)}.')
  flat = {
    name: np.asarray(jax.device_get(v), dtype=np.float32)
    for name, v in utils.flatten_dict(params).items()
  }
  flat = LAYOUTS[layout](unstack_blocks(flat))
  buf = bytes_io.BytesIO()
  np.savez(buf, **flat)
  io.write_bytes(path, buf.getvalue())


def _canonical_names(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Strips prefixes, unstacks scanned blocks, renames pre-Linen blocks, reshapes old GroupNorm
  params."""
  stripped = {}
  for name, arr in flat.items():
    for prefix in _PREFIXES:
      if name.startswith(prefix):
        name = name[len(prefix) :]
    stripped[name] = arr
  out = {}
  for name, arr in _rename_block_children(unstack_blocks(stripped), _PRE_LINEN).items():
    parts = name.split('/')
    if (
      re.fullmatch(r'(gn_root|gn_proj|gn\d)', parts[-2] if len(parts) > 1 else '') and arr.ndim == 4
    ):
      arr = arr.reshape(-1)
    out['/'.join(parts)] = arr
  return out


def _from_big_vision(flat: dict[str, np.ndarray], tower: str = '') -> dict[str, np.ndarray]:
  """big_vision adds `pos_embedding` to the patches only; prepend a zero row for the class token if
  it has one. `tower` is '' for a ViT, 'img/' for a two-tower model's image tower."""
  posemb = flat.pop(f'{tower}pos_embedding')
  if f'{tower}cls' in flat:
    posemb = np.concatenate([np.zeros_like(posemb[:, :1]), posemb], axis=1)
  flat[f'{tower}Transformer/posembed_input/pos_embedding'] = posemb
  return flat


def canonical_flat(path: str) -> dict[str, np.ndarray]:
  """The file's arrays under the per-layer release (Linen) names of our unscanned model, whatever
  its layout (a two-tower model's image tower, big_vision's SigLIP files, included)."""
  flat = _canonical_names(read_npz(path))
  for tower in ('', 'img/'):
    if f'{tower}pos_embedding' in flat:
      log.info('Reading %s as a big_vision checkpoint.', path)
      flat = _from_big_vision(flat, tower)
  return flat


def load(path: str) -> dict:
  """The parameter tree of a `.npz` checkpoint (local or gs://), head and all, ready for
  `model.apply`.

  Any known layout (see the module doc: pre-Linen, Linen, big_vision, stacked blocks) comes out in
  the per-layer release names of `VisionTransformer(scan=False)`, so a fine-tuned file can be used
  for inference as it is: `model.apply({'params': checkpoint.load(path)}, images, train=False)`. For
  fine-tuning on a new task use `checkpoint.load_pretrained`, which also replaces the head and
  resamples position embeddings.
  """
  return utils.unflatten_dict(canonical_flat(path))
