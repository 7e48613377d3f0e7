"""Sweep helpers: a sweep is a list of override dicts, one per run, built from small combinators
(big_vision style).

A config file may define `get_sweep(h)` (or `get_sweep(h, arg)` to receive the config argument, as
`get_config(arg)` does), where `h` is this module:

    def get_sweep(h, arg):
      return h.product([h.sweep('config.schedule.base_lr', [0.001, 0.003, 0.01, 0.03]),
                        h.sweep('config.total_steps', [500, 2500])])

Keys are config fields, with or without the leading `config.`. On the command line, `--sweep
KEY=V1,V2,...` flags combine by `product`. Each run gets a readable name derived from its overrides
only (`run_name`): the same overrides always give the same name, and different overrides different
names.
"""

import builtins
import hashlib
import itertools
import json
import re

_KEY = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$')
_SAFE_VALUE = re.compile(r'^[A-Za-z0-9._+=-]+$')
MAX_NAME = 120


def key(name: str) -> str:
  """'config.schedule.base_lr' -> 'schedule.base_lr'; a clear error for what is not a config field
  path."""
  plain = name[len('config.') :] if name.startswith('config.') else name
  if not _KEY.match(plain):
    raise ValueError(
      f'Bad sweep key {name!r}: expected a config field such as config.schedule.base_lr.'
    )
  return plain


def _merge(dicts) -> dict:
  out = {}
  for d in dicts:
    both = set(out) & set(d)
    if both:
      raise ValueError(f'Sweep parts set the same key twice: {sorted(both)}.')
    out.update(d)
  return out


def sweep(name: str, values) -> list[dict]:
  """One run per value of `name`."""
  values = list(values)
  if not values:
    raise ValueError(f'sweep({name!r}, ...) has no values.')
  return [{key(name): v} for v in values]


def fixed(name: str, value) -> list[dict]:
  """One run setting `name` to `value`: in a product, a value every run shares."""
  return [{key(name): value}]


def product(parts) -> list[dict]:
  """Every combination of one run from each part (the first part varies slowest)."""
  return [_merge(combo) for combo in itertools.product(*parts)]


def zip(parts) -> list[dict]:  # pylint: disable=redefined-builtin
  """Run i merges run i of every part; the parts must have the same length."""
  parts = list(parts)
  lengths = [len(p) for p in parts]
  if len(set(lengths)) > 1:
    raise ValueError(f'zip of sweeps of different lengths {lengths}.')
  return [_merge(combo) for combo in builtins.zip(*parts)]


def chain(parts) -> list[dict]:
  """The runs of each part, one part after the other."""
  return [dict(run) for part in parts for run in part]


def parse_cli(specs) -> list[dict]:
  """['config.a=1,2', 'b=x'] -> product of sweep('a', ['1', '2']) and sweep('b', ['x']) (values stay
  strings)."""
  parts = []
  for spec in specs:
    name, sep, values = spec.partition('=')
    if not sep or not values:
      raise ValueError(
        f'Bad --sweep {spec!r}: expected KEY=V1,V2,... such as config.schedule.base_lr=0.01,0.03.'
      )
    parts.append(sweep(name, [v.strip() for v in values.split(',')]))
  return product(parts)


def format_value(value) -> str:
  """A value as `--config.KEY=VALUE` writes it (what config_flags parses back into the field's
  type)."""
  return value if isinstance(value, str) else repr(value)


def overrides_args(overrides: dict) -> list[str]:
  return [f'--config.{k}={format_value(v)}' for k, v in overrides.items()]


def run_name(overrides: dict) -> str:
  """A readable, unique, deterministic folder name: 'schedule.base_lr=0.01,total_steps=500' (keys
  sorted).

  Values with other characters than [A-Za-z0-9._+=-], or names over MAX_NAME characters, have them
  replaced by '_' (or are cut) and get '~' and a hash of all the overrides appended, so the name
  stays unique.
  """
  if not overrides:
    return 'base'
  pairs = [(k, format_value(overrides[k])) for k in sorted(overrides)]
  safe = [
    (k, v if _SAFE_VALUE.match(v) else re.sub(r'[^A-Za-z0-9._+=-]', '_', v)) for k, v in pairs
  ]
  name = ','.join(f'{k}={v}' for k, v in safe)
  if safe != pairs or len(name) > MAX_NAME:
    digest = hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:10]
    name = f'{name[:MAX_NAME]}~{digest}'
  return name
