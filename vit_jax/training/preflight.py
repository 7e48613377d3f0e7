"""The checks of a config that need a model, a mesh or files, run after vit_jax/configs/check.py's and before
anything is written: the parameter layout of `config.sharding_strategy` on the mesh (planned from the model's
shapes alone), the pretrained file (`checkpoint.recognise`: its kind, from its first bytes) and the image folder.
Every problem is a ConfigError naming the field, as the schema's are.
"""
import jax

from vit_jax import augreg, checkpoint, io, sharding
from vit_jax.configs import dataset_names
from vit_jax.training import state
from vit_jax.configs import check, choices


def layout_problems(config, devices: int) -> list[str]:
  """The parameter layout of the strategy on a mesh of `devices`, planned from the model's shapes alone (sharding.py's
  own rules, on an abstract mesh): an axis the strategy needs, or a dimension that does not split, is named."""
  if config.sharding_strategy == 'replicate':
    return []
  names, sizes = choices.mesh_shape(config.mesh, devices)
  params = state.abstract_params(state.build_model(config, max(config.num_classes, 1)), config.image_size)
  try:
    sharding.param_specs(params, jax.sharding.AbstractMesh(tuple(sizes), tuple(names)), config.sharding_strategy,
                         config.fsdp_min_size)
  except ValueError as e:
    return [f'config.sharding_strategy={config.sharding_strategy!r} on config.mesh {dict(zip(names, sizes))}: {e}']
  return []


def file_problems(config) -> list[str]:
  """The pretrained files that config.pretrained_path and a LiT run's config.lit.image_init / text_init name (not
  AugReg names, resolved later), its vocabulary, and the image folder: each that is missing or of a kind vit_jax
  cannot read."""
  problems = []
  for field in ('pretrained_path', 'lit.image_init', 'lit.text_init'):
    path = config[field] if '.' not in field else config.lit[field[len('lit.'):]]
    if path and not path.startswith(augreg.PREFIX):
      try:
        checkpoint.recognise(path)
      except checkpoint.CheckpointError as e:
        problems.append(f'config.{field}: {e}')
  if config.lit.vocab_path and not io.isfile(config.lit.vocab_path):
    problems.append(f'config.lit.vocab_path={config.lit.vocab_path!r} is not a file (a BERT vocab.txt or a '
                    "SentencePiece .model; '' builds one from the captions).")
  if config.dataset == dataset_names.IMAGE_FOLDER and config.image_folder and not io.isdir(config.image_folder):
    problems.append(f'config.image_folder={config.image_folder!r} is not a folder (it should hold '
                    'train/<class>/*.jpg).')
  return problems


def validate(config, *, devices: int, process_count: int = 1, files: bool = True):
  """check.validate(config) with the mesh of `devices` and `process_count` processes, then the layout and (unless
  `files=False`) the files; returns the config or raises check.ConfigError listing every problem."""
  check.validate(config, devices=devices, process_count=process_count)
  check.raise_problems(layout_problems(config, devices) + (file_problems(config) if files else []))
  return config
