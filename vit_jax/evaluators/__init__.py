"""Evaluators: everything that runs periodically during training, behind one interface.

An evaluator has a `name`, a cadence `every_steps`, and `run(params) -> {metric: value}`; the training loop runs
every evaluator whose cadence divides the step (and all of them at the last step) and never holds per-evaluator
code. `build` makes those of the config's task (vit_jax/tasks/: its `default_evals`):
  * classification (exact accuracy, top-5, loss) on each split of `config.eval_split`, which is one TFDS split
    ('test') or named splits 'minival=train[99%:],val=validation'. The first split's metrics are `eval/accuracy`,
    `eval/top5`, `eval/loss`; every other split's are `eval/<name>/accuracy`, ...;
  * for a LiT image-text model, zero-shot classification instead (vit_jax/evaluators/zeroshot.py), under the same
    names: `eval/accuracy` is the zero-shot accuracy (when the dataset has classes); with captions
    (config.lit.captions or text_feature) image-text retrieval on each split (vit_jax/evaluators/retrieval.py):
    `retrieval/img2txt/recall@1`, ...;
  * few-shot linear probes (`config.fewshot.datasets`), metrics `fewshot/<dataset>_<k>shot`.
"""
from typing import Protocol

from vit_jax import tasks
from vit_jax.configs.choices import parse_splits, with_split
from vit_jax.evaluators import classification, fewshot, retrieval, zeroshot


class Evaluator(Protocol):
  name: str
  every_steps: int

  def run(self, params) -> dict[str, float]:
    ...


def primary(config):
  """`config` with its first evaluation split as eval_split: what the input pipeline's info and counts read."""
  return with_split(config, parse_splits(config.eval_split)[0][1])


def build(config, model, mesh) -> list[Evaluator]:
  """The evaluators of `config` for `model` on `mesh` (module doc): its task's default ones."""
  splits = parse_splits(config.eval_split)
  kinds = {
    'classification': classification.ClassificationEvaluator,
    'zeroshot': zeroshot.ZeroShotEvaluator,
    'retrieval': retrieval.RetrievalEvaluator,
  }
  out = []
  for kind in tasks.of(config).default_evals(config):
    if kind == 'zeroshot' and not zeroshot.has_classes(config):
      continue
    for i, (name, split) in enumerate(splits):
      prefix = 'eval/' if i == 0 else f'eval/{name}/'
      split_config = with_split(config, split)
      out.append(kinds[kind](name=name, prefix=prefix, config=split_config, model=model, mesh=mesh))
  if config.fewshot.datasets:
    out.append(fewshot.FewShotEvaluator(config=config, model=model, mesh=mesh))
  return out
