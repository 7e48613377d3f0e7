"""config.evals: the evaluators of a run (big_vision's shape; vit_jax/evaluators/ builds them),
name -> entry {type, prefix, every_steps, and the options of its type}. An empty config.evals gives
the evaluation of eval_split and fewshot (vit_jax/evaluators/__init__.py's `default_evals`).

`problems` is this field's part of the config check (vit_jax/configs/check.py runs it): each entry's
type is one of choices.EVAL_TYPES (the closest named for a typo), its options are its type's
(choices.EVAL_OPTIONS), its cadence is at least one step, its prefix a string, no two entries of one
type share a prefix (their metrics would overwrite each other), and each option's value is valid;
config.fewshot.datasets is not left unprobed by entries without a few-shot one.
`fewshot_problems` is the one rule of few-shot options: config.fewshot's and a few-shot entry's.
"""

from vit_jax.configs import choices
from vit_jax.configs.values import choice, closest, number

# A few-shot entry's options; each one it does not give is config.fewshot's.
FEWSHOT_OPTIONS = ('datasets', 'shots', 'seeds', 'l2_reg')
EXAMPLE = "dict(type='classification', prefix='val/', every_steps=500, split='validation')"


def fewshot_problems(problems: list[str], name: str, options) -> None:
  """The few-shot probes' options (config.<name>.datasets, shots, seeds, l2_reg): the datasets
  parse, and when there are any, the shots, the seeds and the ridge regularisation are valid."""
  datasets = options['datasets']
  if not isinstance(datasets, str):
    problems.append(
      f"config.{name}.datasets={datasets!r} must be a string 'name:train_split:test_split,...'."
    )
    return
  try:
    choices.parse_fewshot_datasets(datasets, f'{name}.datasets')
  except ValueError as e:
    problems.append(str(e))
  if datasets:
    number(problems, f'{name}.seeds', options['seeds'], low=1, integer=True)
    number(problems, f'{name}.l2_reg', options['l2_reg'], low=0, low_open=True)
    shots = options['shots']
    if (
      not isinstance(shots, (tuple, list))
      or not shots
      or not all(isinstance(k, int) and k >= 1 for k in shots)
    ):
      problems.append(
        f'config.{name}.shots={shots!r} must be positive integers, e.g. (1, 5, 10, 25).'
      )


def _one_split(split) -> bool:
  return isinstance(split, str) and bool(split.strip()) and not set(split) & set(',=')


def _options(problems: list[str], config, where: str, kind: str, entry) -> None:
  """The values of an entry's own options (`kind` its type, config.<where> the entry)."""
  if 'split' in entry and not _one_split(entry['split']):
    problems.append(
      f"config.{where}.split={entry['split']!r} must be one split, e.g. 'test' or "
      "'train[99%:]' (absent: the first split of config.eval_split)."
    )
  if kind == 'fewshot':
    options = {key: entry.get(key, config.fewshot[key]) for key in FEWSHOT_OPTIONS}
    fewshot_problems(problems, where, options)
    if options['datasets'] == '':
      problems.append(
        f"config.{where} is a 'fewshot' entry without datasets: give it datasets "
        "('name:train_split:test_split,...'), or set config.fewshot.datasets."
      )
  if kind == 'retrieval' and not (config.lit.captions or config.lit.text_feature):
    problems.append(
      f"config.{where} is a 'retrieval' entry, which scores captions: set config.lit.captions "
      "(an image folder's) or config.lit.text_feature (a TFDS dataset's)."
    )


def problems(config) -> list[str]:
  """What is wrong with the entries of config.evals (module doc), one line each."""
  out = []
  prefixes = {}
  for name, entry in config.evals.items():
    where = f'evals.{name}'
    if not hasattr(entry, 'items') or 'type' not in entry:
      shown = entry.to_dict() if hasattr(entry, 'to_dict') else entry
      out.append(f'config.{where}={shown!r} must be an entry with a type, e.g. {EXAMPLE}.')
      continue
    kind = entry['type']
    if kind not in choices.EVAL_OPTIONS:
      choice(out, f'{where}.type', kind, choices.EVAL_TYPES)
      continue
    valid = choices.EVAL_FIELDS + choices.EVAL_OPTIONS[kind]
    for key in entry.keys():
      if key not in valid:
        out.append(
          f'config.{where}.{key} is not an option of a {kind!r} evaluator, which takes '
          f'{", ".join(valid)}{closest(key, valid)}.'
        )
    if 'every_steps' in entry:
      number(out, f'{where}.every_steps', entry['every_steps'], low=1, integer=True)
    prefix = entry.get('prefix', f'{name}/')
    if not isinstance(prefix, str):
      out.append(f'config.{where}.prefix={prefix!r} must be a string, e.g. {name + "/"!r}.')
    elif (kind, prefix) in prefixes:
      out.append(
        f'config.{where} and config.evals.{prefixes[kind, prefix]} are both {kind!r} entries '
        f'with prefix {prefix!r}: their metrics would overwrite each other; give each its own '
        'prefix.'
      )
    else:
      prefixes[kind, prefix] = name
    _options(out, config, where, kind, entry)
  types = [entry.get('type') for entry in config.evals.values() if hasattr(entry, 'get')]
  if types and config.fewshot.datasets and 'fewshot' not in types:
    out.append(
      f'config.fewshot.datasets={config.fewshot.datasets!r} is set, but config.evals has no '
      "'fewshot' entry to probe them (its entries replace the default evaluators): add "
      "dict(type='fewshot'), or set fewshot.datasets to ''."
    )
  return out
