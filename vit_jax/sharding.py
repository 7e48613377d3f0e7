"""Device mesh and shardings: the one place that decides where arrays live.

Mesh axes (`config.mesh`, a list of (name, size) pairs, -1 = the remaining devices):
  data  - batch split; parameters replicated.
  fsdp  - batch split too, and large parameters (and their optimiser state) sharded over it.
  model - tensor parallel (Megatron): attention heads and MLP hidden units (for an MLP-Mixer, the
          hidden units of its token-mixing MLPs, tokens_mlp_dim, and of its channel-mixing MLPs,
          channels_mlp_dim).
The batch is split over ('data', 'fsdp'). `model` is the last mesh axis, so jax.make_mesh gives it
the most closely connected devices.

Parameter specs come from one regex-over-name rule set (`TP_RULES`, via utils.tree_rules), then FSDP
shards the largest still-free divisible dimension of every array of at least `fsdp_min_size`
elements. A scanned encoder's stacked blocks (`Transformer/encoderblock/...`, leading layer axis)
are laid out per layer exactly like the unrolled blocks, with the layer axis replicated in front.
"""

import math
import re

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from vit_jax import utils

# (their owner)
from vit_jax.configs.choices import AXES, BATCH_AXES, STRATEGIES, mesh_shape  # noqa: F401

# Megatron-style tensor parallelism, by parameter name -> PartitionSpec.
TP_RULES = (
  # (D, heads, hd)
  (r'.*MultiHeadDotProductAttention_0/(query|key|value)/kernel', P(None, 'model', None)),
  (r'.*MultiHeadDotProductAttention_0/(query|key|value)/bias', P('model', None)),  # (heads, hd)
  (r'.*MultiHeadDotProductAttention_0/out/kernel', P('model', None, None)),  # (heads, hd, D)
  # Every MLP: a ViT block's (and a MAP head's), and an MLP-Mixer block's token- and
  # channel-mixing MLPs.
  # (in, hidden)
  (r'.*(MlpBlock_0|token_mixing|channel_mixing)/Dense_0/kernel', P(None, 'model')),
  (r'.*(MlpBlock_0|token_mixing|channel_mixing)/Dense_0/bias', P('model')),
  # (hidden, out)
  (r'.*(MlpBlock_0|token_mixing|channel_mixing)/Dense_1/kernel', P('model', None)),
)
# Parameters of a scanned encoder (VisionTransformer(scan=True)): the rules above describe one
# layer.
STACKED = re.compile(r'(.*/)?Transformer/encoderblock/.+')


def make_mesh(mesh_config=(('data', -1),), devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  names, sizes = mesh_shape(mesh_config, len(devices))
  # Auto axes: XLA propagates shardings through the model from the parameter and batch shardings.
  return jax.make_mesh(
    sizes, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names), devices=devices
  )


def batch_axes(mesh) -> tuple[str, ...]:
  return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_size_per_step(mesh) -> int:
  """How many shards the batch dimension is split into (mesh None: the abstract mesh of the current
  context, one shard outside any)."""
  if mesh is None:
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
      return 1
  return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) dimension split over the data-parallel axes; everything else replicated."""
  return NamedSharding(mesh, P(batch_axes(mesh) or None))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fsdp_spec(shape, spec: P, fsdp_size: int, min_size: int) -> P:
  if fsdp_size == 1 or math.prod(shape) < min_size:
    return spec
  entries = list(spec) + [None] * (len(shape) - len(spec))
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if entries[dim] is None and shape[dim] % fsdp_size == 0:
      entries[dim] = 'fsdp'
      return P(*entries)
  return spec


def param_specs(params, mesh, strategy: str = 'replicate', fsdp_min_size: int = 2**18):
  """PartitionSpecs for a (possibly abstract) parameter tree under `strategy` (see module doc)."""
  if strategy not in STRATEGIES:
    raise ValueError(f'Unknown sharding strategy {strategy!r}; valid: {", ".join(STRATEGIES)}.')
  use_tp = 'tp' in strategy.split('+')
  use_fsdp = 'fsdp' in strategy.split('+')
  for axis, used in (('model', use_tp), ('fsdp', use_fsdp)):
    if used and axis not in mesh.axis_names:
      raise ValueError(
        f'Strategy {strategy!r} needs a {axis!r} mesh axis; config.mesh has {mesh.axis_names}.'
      )
  specs = utils.tree_rules(params, TP_RULES if use_tp else (), default=P())
  fsdp_size = mesh.shape['fsdp'] if use_fsdp else 1

  def finish(name, x, spec):
    stacked = bool(STACKED.fullmatch(name))
    spec = _fsdp_spec(x.shape[1:] if stacked else x.shape, spec, fsdp_size, fsdp_min_size)
    if stacked:
      # Layer axis unsharded: else each scan step would gather its layer from other devices.
      spec = P(None, *spec)
    for dim, axis in enumerate(spec):
      if axis is not None and x.shape[dim] % mesh.shape[axis]:
        raise ValueError(
          f'{name} of shape {x.shape} cannot be split over mesh axis {axis!r} of size '
          f'{mesh.shape[axis]} (dimension {dim}); choose a mesh size that divides it.'
        )
    return spec

  names = utils.tree_names(params)
  return jax.tree.map(finish, names, params, specs, is_leaf=lambda s: isinstance(s, P))


def to_shardings(specs, mesh):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P))


def follow_params(tree, params_shardings, mesh):
  """Shardings for an optimiser-state tree: any subtree shaped like the params takes the params'
  shardings. A subtree that holds only some of the params (optax.multi_transform's moments of a LiT
  model's trained text tower, without its locked image tower) takes theirs by name: every leaf of
  the subtree at a parameter's path."""
  param_struct = jax.tree.structure(params_shardings)
  by_path = {
    tuple(path): s for path, s in jax.tree_util.tree_flatten_with_path(params_shardings)[0]
  }

  def partial_params(node):
    leaves = jax.tree_util.tree_flatten_with_path(node)[0]
    if not leaves or any(
      isinstance(leaf, (jax.ShapeDtypeStruct, jax.Array)) and not leaf.shape for _, leaf in leaves
    ):
      return None
    out = []
    for path, _ in leaves:
      if tuple(path) not in by_path:
        return None
      out.append(by_path[tuple(path)])
    return jax.tree.unflatten(jax.tree.structure(node), out)

  def walk(node):
    if jax.tree.structure(node) == param_struct:
      return params_shardings
    if isinstance(node, dict) and (found := partial_params(node)) is not None:
      return found
    if isinstance(node, (jax.ShapeDtypeStruct, jax.Array, np.ndarray)) or np.isscalar(node):
      return replicated(mesh)
    children, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda n: n is not node)
    if treedef.num_leaves == 0 or (len(children) == 1 and children[0] is node):
      return jax.tree.map(lambda _: replicated(mesh), node)
    return jax.tree.unflatten(treedef, [walk(c) for c in children])

  return walk(tree)


def constrain(x, *dims):
  """Sharding constraint on an activation, a no-op outside a mesh context (jax.set_mesh).

  `dims` names each dimension: 'batch' (over data and fsdp), 'model', or None. Axes the mesh lacks,
  or that do not divide the dimension (e.g. the batch of 1 at init), are left unsharded.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = []
  for size, dim in zip(x.shape, dims):
    axes = tuple(
      a for a in (BATCH_AXES if dim == 'batch' else (dim,) if dim else ()) if a in mesh.axis_names
    )
    shards = math.prod(mesh.shape[a] for a in axes)
    spec.append(axes if axes and size % shards == 0 else None)
  return jax.lax.with_sharding_constraint(x, P(*spec))
