"""Evaluators: everything that runs periodically during training, behind one interface.

An evaluator has a `name`, a cadence `every_steps`, and `run(params) -> {metric: value}`; the training loop runs
every evaluator whose cadence divides the step (and all of them at the last step) and never holds per-evaluator
code. `build` makes them from the config:
  * classification (exact accuracy, top-5, loss) on each split of `config.eval_split`, which is one TFDS split
    ('test') or named splits 'minival=train[99%:],val=validation'. The first split's metrics are `eval/accuracy`,
    `eval/top5`, `eval/loss`; every other split's are `eval/<name>/accuracy`, ...;
  * few-shot linear probes (`config.fewshot.datasets`), metrics `fewshot/<dataset>_<k>shot`.
"""
import copy
from typing import Protocol

from vit_jax.evaluators import classification, fewshot


class Evaluator(Protocol):
  name: str
  every_steps: int

  def run(self, params) -> dict[str, float]:
    ...


def parse_splits(spec: str) -> list[tuple[str, str]]:
  """'test' -> [('eval', 'test')]; 'minival=train[99%:],val=validation' -> [('minival', ...), ('val', ...)]."""
  parts = [p.strip() for p in spec.split(',') if p.strip()]
  if not parts:
    raise ValueError("config.eval_split is empty: give a split ('test') or named splits "
                     "('minival=train[99%:],val=validation').")
  if len(parts) == 1 and '=' not in parts[0]:
    return [('eval', parts[0])]
  out = []
  for part in parts:
    name, sep, split = part.partition('=')
    if not sep or not name.strip() or not split.strip():
      raise ValueError(f'config.eval_split part {part!r} is not name=split (e.g. minival=train[99%:]).')
    out.append((name.strip(), split.strip()))
  names = [n for n, _ in out]
  if len(set(names)) != len(names):
    raise ValueError(f'config.eval_split repeats a name: {names}.')
  return out


def with_split(config, split: str, **fields):
  """A copy of `config` whose eval_split is the single split `split` (and other top-level `fields` set)."""
  config = copy.deepcopy(config)
  config.eval_split = split
  for key, value in fields.items():
    config[key] = value
  return config


def primary(config):
  """`config` with its first evaluation split as eval_split: what the input pipeline's info and counts read."""
  return with_split(config, parse_splits(config.eval_split)[0][1])


def build(config, model, mesh) -> list[Evaluator]:
  """The evaluators of `config` for `model` on `mesh` (see module doc)."""
  splits = parse_splits(config.eval_split)
  out = [classification.ClassificationEvaluator(
      name=name, prefix='eval/' if i == 0 else f'eval/{name}/', config=with_split(config, split), model=model,
      mesh=mesh) for i, (name, split) in enumerate(splits)]
  if config.fewshot.datasets:
    out.append(fewshot.FewShotEvaluator(config=config, model=model, mesh=mesh))
  return out
