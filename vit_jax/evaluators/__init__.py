"""Evaluators: everything that runs periodically during training, one file per type, registered by
name.

The run's evaluators are the entries of `config.evals` (vit_jax/configs/common.py; checked whole by
vit_jax/configs/evals.py), name -> {type, prefix, every_steps, and the type's own options}, or when
it has none, `default_evals(config)`. `build` makes each entry's evaluator,
REGISTRY[type](config=, model=, mesh=, **options). An evaluator's `run(params)` returns bare metric
names ('accuracy', 'loss', 'img2txt/recall@1', ...); the framework (`Scheduled`) writes them under
the entry's prefix (default '<name>/') and runs them every `every_steps` steps (default
config.eval_every_steps). The training loop runs every evaluator whose cadence divides the step, and
all of them at the last step; it holds no per-evaluator code.

Adding an evaluator: a file here with its class (keyword arguments config, model, mesh and its
options, each with a default; `run(params)`), its name in REGISTRY, and its options under that name
in vit_jax/configs/choices.py's EVAL_OPTIONS (what the config check accepts; a test in
tests/test_evaluators.py holds the two equal).
"""

import dataclasses
from typing import Protocol

from vit_jax import tasks
from vit_jax.configs.choices import EVAL_FIELDS, parse_splits
from vit_jax.evaluators import classification, common, fewshot, retrieval, zeroshot

REGISTRY = {
  'classification': classification.ClassificationEvaluator,
  'zeroshot': zeroshot.ZeroShotEvaluator,
  'retrieval': retrieval.RetrievalEvaluator,
  'fewshot': fewshot.FewShotEvaluator,
}


class Evaluator(Protocol):
  def run(self, params) -> dict[str, float]: ...


@dataclasses.dataclass(frozen=True)
class Scheduled:
  """An entry's evaluator on its cadence, its metrics under its prefix: what the loop runs."""

  name: str
  prefix: str
  every_steps: int
  evaluator: Evaluator

  def run(self, params) -> dict[str, float]:
    return {self.prefix + key: value for key, value in self.evaluator.run(params).items()}


def primary(config):
  """`config` with its first evaluation split as eval_split: what the input pipeline's info and
  counts read."""
  return common.one_split(config)


def default_evals(config) -> dict[str, dict]:
  """The entries of a config without `evals`: the evaluation of eval_split and fewshot, as it always
  was.
    * each split of config.eval_split (one split 'test', or named splits
      'minival=train[99%:],val=validation'): the evaluators of the config's task
      (vit_jax/tasks/: classification, or zero-shot classification for an image-text model when
      the data has classes), every eval_every_steps; the first
      split's metrics are eval/accuracy, eval/top5, eval/loss, eval/num_examples, every other
      split's eval/<name>/accuracy, ...;
    * where the task asks for it (an image-text model with captions), retrieval on each split:
      retrieval/img2txt/recall@1, ... (the other splits': eval/<name>/retrieval/...);
    * the few-shot probes of config.fewshot.datasets, fewshot/<dataset>_<k>shot, every
      fewshot.every_steps (0: every eval_every_steps).
  """
  splits = parse_splits(config.eval_split)
  every = config.eval_every_steps
  kinds = tasks.of(config).default_evals(config)
  out = {}
  for kind in ('classification', 'zeroshot'):
    if kind not in kinds or (kind == 'zeroshot' and not zeroshot.has_classes(config)):
      continue
    for i, (name, split) in enumerate(splits):
      out[name] = {
        'type': kind,
        'prefix': 'eval/' if i == 0 else f'eval/{name}/',
        'every_steps': every,
        'split': split,
      }
  if 'retrieval' in kinds:
    for i, (name, split) in enumerate(splits):
      out[f'{name}_retrieval'] = {
        'type': 'retrieval',
        'prefix': 'retrieval/' if i == 0 else f'eval/{name}/retrieval/',
        'every_steps': every,
        'split': split,
      }
  if config.fewshot.datasets:
    every_fewshot = config.fewshot.every_steps or every
    out['fewshot'] = {'type': 'fewshot', 'prefix': 'fewshot/', 'every_steps': every_fewshot}
  return out


def entries(config) -> dict:
  """The run's evaluator entries, name -> entry: config.evals, or `default_evals` without any."""
  return dict(config.evals) if config.evals else default_evals(config)


def make(name: str, entry, config, model, mesh) -> Scheduled:
  """The evaluator of the entry `name` (its type's, with the entry's options) on its cadence, under
  its prefix."""
  options = {key: value for key, value in entry.items() if key not in EVAL_FIELDS}
  evaluator = REGISTRY[entry['type']](config=config, model=model, mesh=mesh, **options)
  return Scheduled(
    name=name,
    prefix=entry.get('prefix', f'{name}/'),
    every_steps=entry.get('every_steps', config.eval_every_steps),
    evaluator=evaluator,
  )


def build(config, model, mesh) -> list[Scheduled]:
  """The evaluators of `config` for `model` on `mesh` (module doc)."""
  return [make(name, entry, config, model, mesh) for name, entry in entries(config).items()]
