"""Durations as steps, epochs or examples: one helper turns them into steps.

`total_steps` may instead be given as `total_epochs` (passes over the train split) or
`total_examples`, and `schedule.warmup_steps` as `schedule.warmup_epochs` or
`schedule.warmup_examples`. At most one of the epochs/examples forms may be set (not None and not 0)
per duration; when one is set it replaces the steps value (epochs use the train split's size, both
round to the nearest step with the global batch size). So a config in epochs runs for a number of
steps given on the command line with `--config.total_epochs=0 --config.total_steps=N`.
"""

import copy

# duration -> (the steps field, its alternatives), as dotted config paths.
DURATIONS = {
  'total': ('total_steps', 'total_epochs', 'total_examples'),
  'warmup': ('schedule.warmup_steps', 'schedule.warmup_epochs', 'schedule.warmup_examples'),
}


def value(config, path: str):
  """config['a']['b'] for path 'a.b' (a ConfigDict or a plain dict)."""
  for part in path.split('.'):
    config = config[part]
  return config


def _set(config, path, value):
  *parents, leaf = path.split('.')
  for part in parents:
    config = config[part]
  config[leaf] = value


def both_forms_problem(config, duration: str) -> str | None:
  """The one rule on a duration's forms: its epochs and examples fields are not both set."""
  steps_field, epochs_field, examples_field = DURATIONS[duration]
  epochs = value(config, epochs_field)
  examples = value(config, examples_field)
  if epochs and examples:
    return (
      f'config.{epochs_field}={epochs} and config.{examples_field}={examples} are both set; give '
      f'one (or config.{steps_field}).'
    )
  return None


def given_as(config, duration: str, *, resolved: bool = False) -> tuple[str, object]:
  """(field, value) of the form `duration` is given in: its epochs or examples field when set, else
  its steps field (always the steps field of a `resolved` config)."""
  steps_field, epochs_field, examples_field = DURATIONS[duration]
  for field in () if resolved else (epochs_field, examples_field):
    if value(config, field):
      return field, value(config, field)
  return steps_field, value(config, steps_field)


def warmup_problem(config, *, resolved: bool = False) -> str | None:
  """The one rule between the durations: the warmup fits in the run. Compared where both are given
  in the same form (steps, epochs or examples); in different forms, once `resolved` into steps."""
  (total_field, total), (warmup_field, warmup) = (
    given_as(config, d, resolved=resolved) for d in ('total', 'warmup')
  )
  same_form = DURATIONS['total'].index(total_field) == DURATIONS['warmup'].index(warmup_field)
  numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (total, warmup))
  if same_form and numbers and warmup > total:
    return (
      f'config.{warmup_field}={warmup} is more than '
      f'config.{total_field}={total}: the warmup must fit in the run.'
    )
  return None


def steps_of(config, duration: str, num_train: int) -> int:
  """The number of steps that `duration` ('total' or 'warmup') of `config` stands for."""
  steps_field, epochs_field, examples_field = DURATIONS[duration]
  if problem := both_forms_problem(config, duration):
    raise ValueError(problem)
  # 0 = unset.
  epochs = value(config, epochs_field) or None
  examples = value(config, examples_field) or None
  if epochs is not None:
    if num_train <= 0:
      raise ValueError(f'config.{epochs_field} needs the train split size, which is {num_train}.')
    examples = epochs * num_train
  if examples is not None:
    if examples < 0:
      raise ValueError(f'The {duration} duration must not be negative, got {examples} examples.')
    return int(round(examples / config['batch_size']))
  return int(value(config, steps_field))


def resolved(config, num_train: int):
  """A copy of `config` whose steps fields hold every duration in steps (the original is left as it
  was)."""
  out = copy.deepcopy(config)
  for duration, (steps_field, _, _) in DURATIONS.items():
    _set(out, steps_field, steps_of(config, duration, num_train))
  return out
