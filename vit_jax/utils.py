"""Small tree helpers shared by checkpointing, optimisation and sharding."""

import re
from typing import Any, Sequence

import jax


def _key_name(key) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_name(path) -> str:
  """'/'-joined name of a jax tree path, e.g. 'Transformer/encoder_norm/scale'."""
  return '/'.join(_key_name(k) for k in path)


def tree_names(tree):
  """A tree of the same structure whose leaves are their '/'-joined names."""
  return jax.tree_util.tree_map_with_path(lambda p, _: path_name(p), tree)


def flatten_dict(tree, prefix: str = '') -> dict[str, Any]:
  """Nested dicts -> {'a/b/c': leaf}."""
  out = {}
  for k, v in tree.items():
    name = f'{prefix}{k}'
    if isinstance(v, dict) or hasattr(v, 'items') and not hasattr(v, 'shape'):
      out.update(flatten_dict(v, name + '/'))
    else:
      out[name] = v
  return out


def unflatten_dict(flat: dict[str, Any]) -> dict:
  """{'a/b/c': leaf} -> nested dicts."""
  tree: dict = {}
  for name, v in flat.items():
    node = tree
    *parents, leaf = name.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def tree_rules(tree, rules: Sequence[tuple[str, Any]], default: Any = None):
  """Maps each leaf to the value of the first rule whose regex fully matches the leaf's name.

  The one mechanism behind weight-decay masks, freezing and sharding: `rules` is a list of
  (regex, value) pairs, tried in order; leaves that match none get `default`.
  """
  compiled = [(re.compile(pattern), value) for pattern, value in rules]

  def pick(path, _):
    name = path_name(path)
    for pattern, value in compiled:
      if pattern.fullmatch(name):
        return value
    return default

  return jax.tree_util.tree_map_with_path(pick, tree)
