"""Durations as steps, epochs or examples: one helper turns them into steps.

`total_steps` may instead be given as `total_epochs` (passes over the train split) or `total_examples`, and
`schedule.warmup_steps` as `schedule.warmup_epochs` or `schedule.warmup_examples`. At most one of the epochs/examples
forms may be set (not None and not 0) per duration; when one is set it replaces the steps value (epochs use the train
split's size, both round to the nearest step with the global batch size). So a config in epochs runs for a number of
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


def steps_of(config, duration: str, num_train: int) -> int:
  """The number of steps that `duration` ('total' or 'warmup') of `config` stands for."""
  steps_field, epochs_field, examples_field = DURATIONS[duration]
  epochs, examples = value(config, epochs_field) or None, value(config, examples_field) or None  # 0 = unset.
  if epochs is not None and examples is not None:
    raise ValueError(f'config.{epochs_field}={epochs} and config.{examples_field}={examples} are both set; give one '
                     f'(or config.{steps_field}).')
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
  """A copy of `config` whose steps fields hold every duration in steps (the original is left as it was)."""
  out = copy.deepcopy(config)
  for duration, (steps_field, _, _) in DURATIONS.items():
    _set(out, steps_field, steps_of(config, duration, num_train))
  return out
