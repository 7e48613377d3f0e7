"""The argument of a config file, `--config=FILE:ARG` (ml_collections calls FILE's
`get_config(ARG)`): the one grammar that every config file (configs/*.py) and config module
(vit_jax/configs/transfer.py) reads it with.

  ARG  = part[,part...]   whitespace around a part, and empty parts, are ignored
  part = value            the next positional argument: they come first, in order, all required
       | key=value        a keyword argument, after them (given twice, the last one counts)

A file's `Grammar` names its positional and keyword arguments and, for any of them, the values it
accepts; `Grammar.parse(arg)` gives {name: value} of the arguments given, or a ValueError that names
the bad part and what would be valid: a bad key (the keys), a bad value (the values), a missing or
extra positional argument (the usage line).
"""

import dataclasses
from typing import Mapping

# A keyword's accepted values are spelt out in the usage line when there are at most this many.
USAGE_CHOICES = 4


def split_spec(spec: str) -> tuple[str, str | None]:
  """'configs/vit.py:ViT-B_16,cifar10' -> ('configs/vit.py', 'ViT-B_16,cifar10'); without ':',
  (spec, None): ml_collections' config_flags splits `--config` so (at the first ':')."""
  path, sep, arg = spec.partition(':')
  return path, arg if sep else None


@dataclasses.dataclass(frozen=True)
class Grammar:
  """The arguments of one config file (module doc). `valid` maps a name to the values it accepts
  (any value when absent)."""

  file: str
  positional: tuple[str, ...] = ()
  keywords: tuple[str, ...] = ()
  valid: Mapping[str, tuple] = dataclasses.field(default_factory=dict)

  @property
  def usage(self) -> str:
    """'configs/pretrain_i1k.py:<model>[,epochs=90|150|300]'."""
    out = ','.join(f'<{name}>' for name in self.positional)
    for key in self.keywords:
      values = tuple(map(str, self.valid.get(key, ())))
      value = '|'.join(values) if 0 < len(values) <= USAGE_CHOICES else f'<{key}>'
      out += f'[{"," if out else ""}{key}={value}]'
    return f'{self.file}:{out}'

  def parse(self, arg: str | None) -> dict[str, str]:
    """'ViT-B_16,epochs=90' -> {'model': 'ViT-B_16', 'epochs': '90'} (module doc). None or ''
    gives {} when there is no positional argument."""
    out = {}
    for part in [p.strip() for p in (arg or '').split(',') if p.strip()]:
      key, sep, value = part.partition('=')
      if sep and key not in self.keywords:
        keys = f'; keys: {", ".join(self.keywords)}' if self.keywords else ''
        raise ValueError(f'Bad config argument {part!r} in {arg!r}; usage: {self.usage}{keys}.')
      if not sep:
        if set(out) - set(self.positional) or len(out) == len(self.positional):
          raise ValueError(
            f'Bad config argument {part!r} in {arg!r} ({self._no_value_here(out)}); '
            f'usage: {self.usage}.'
          )
        key = self.positional[len(out)]
        value = part
      valid = tuple(map(str, self.valid.get(key, ())))
      if valid and value not in valid:
        raise ValueError(f'Bad {key}={value!r} in {arg!r}; valid: {", ".join(valid)}.')
      out[key] = value
    missing = [name for name in self.positional if name not in out]
    if missing:
      valid = ', '.join(map(str, self.valid.get(missing[0], ())))
      raise ValueError(
        f'Missing <{missing[0]}> in {arg!r}; usage: {self.usage}'
        f'{f"; {missing[0]}: {valid}" if valid else ""}.'
      )
    return out

  def _no_value_here(self, given: dict) -> str:
    """Why a bare value cannot follow the arguments `given`."""
    if set(given) - set(self.positional):
      return 'a value after key=value'
    if not self.positional:
      return 'key=value only'
    then = ', then key=value' if self.keywords else ''
    return f'{len(self.positional)} value(s) at most{then}'
