"""The one validation of a config: `validate` runs its stages in order, each before anything they
guard is read, downloaded, compiled or written:
  1. the fields and their values (vit_jax/configs/check.py: unknown fields, bad values, the batch
     split over the mesh's `devices`) with the rules of the config's objective (its task's,
     vit_jax/tasks/), in one error;
  2. the durations, once the dataset's size is known (`num_train`: epochs and examples resolved
     into steps);
  3. with `devices`: the parameter layout of `config.sharding_strategy` on their mesh (planned from
     the model's shapes alone) and, unless `files=False`, the files (the pretrained file,
     `checkpoint.recognise`: its kind, from its first bytes; the task's files; the image folder).
Every problem is a ConfigError naming the field, as the schema's are.
"""

import jax

from vit_jax import augreg, checkpoint, io, sharding, tasks
from vit_jax.configs import check, choices, dataset_names, durations
from vit_jax.training import state


def layout_problems(config, devices: int) -> list[str]:
  """The parameter layout of the strategy on a mesh of `devices`, planned from the model's shapes
  alone (sharding.py's own rules, on an abstract mesh): an axis the strategy needs, or a dimension
  that does not split, is named."""
  if config.sharding_strategy == 'replicate':
    return []
  names, sizes = choices.mesh_shape(config.mesh, devices)
  params = state.abstract_params(config, state.build_model(config, max(config.num_classes, 1)))
  mesh = jax.sharding.AbstractMesh(tuple(sizes), tuple(names))
  try:
    sharding.param_specs(params, mesh, config.sharding_strategy, config.fsdp_min_size)
  except ValueError as e:
    return [
      f'config.sharding_strategy={config.sharding_strategy!r} on config.mesh '
      f'{dict(zip(names, sizes))}: {e}'
    ]
  return []


def file_problems(config) -> list[str]:
  """The pretrained file that config.pretrained_path names (not an AugReg name, resolved later),
  the task's files (a LiT run's towers and vocabulary), and the image folder: each that is missing
  or of a kind vit_jax cannot read."""
  problems = []
  path = config.pretrained_path
  if path and not path.startswith(augreg.PREFIX):
    try:
      checkpoint.recognise(path)
    except checkpoint.CheckpointError as e:
      problems.append(f'config.pretrained_path: {e}')
  problems += tasks.of(config).file_problems(config)
  folder = config.image_folder
  if config.dataset == dataset_names.IMAGE_FOLDER and folder and not io.isdir(folder):
    problems.append(
      f'config.image_folder={folder!r} is not a folder (it should hold train/<class>/*.jpg).'
    )
  return problems


def validate(
  config,
  *,
  devices: int | None = None,
  process_count: int = 1,
  num_train: int | None = None,
  files: bool = True,
):
  """The stages of the module doc, in order, for what is given: `devices` (and `process_count`
  processes) for the batch split, the layout and the files; `num_train` for the durations. Returns
  the config, with its durations in steps when `num_train` is given; raises check.UnknownFieldError
  or check.ConfigError listing every problem of the first stage that has any."""
  check.check_fields(config)
  task = tasks.of(config)
  check.raise_problems(
    check.problems(config, devices=devices, process_count=process_count) + task.problems(config)
  )
  if num_train is not None:
    config = check.validate_durations(durations.resolved(config, num_train))
  if devices:
    files_found = file_problems(config) if files else []
    check.raise_problems(layout_problems(config, devices) + files_found)
  return config
