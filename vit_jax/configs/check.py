"""Whether a config is valid: `validate` checks every field of a config before anything is read,
downloaded or compiled, and loads no JAX.

It raises UnknownFieldError for fields no part of vit_jax reads (vit_jax/configs/fields.py: which
fields exist, and what to write instead of an unknown one), else ConfigError listing every bad
value: its field, the value, and what would be valid (the tuples of vit_jax/configs/choices.py,
which the modules acting on the fields use too, with the closest one for a typo), shapes such as a
patch size that must be a pair, the entries of config.evals (vit_jax/configs/evals.py), and
cross-field rules (warmup within the total, batch sizes that split over the mesh and the processes,
an image size that the patches tile). An MLP-Mixer takes one of the model fast paths (remat_policy);
scan_layers, attention and fused_qkv are the ViT's and refused for it, each with its reason. The
rules of an objective (image-text training's config.lit) are its task's (vit_jax/tasks/), and what
needs a model, a mesh or files (the parameter layout, the pretrained file, the image folder) is
checked by vit_jax/training/preflight.py, whose `validate` is the one entry point that runs them
all.
"""

import math

from vit_jax import errors
from vit_jax.configs import choices, dataset_names, durations, evals, model_check

# What other modules use of vit_jax/configs/fields.py, through this module (the one place that says
# "valid").
from vit_jax.configs.fields import UnknownFieldError as UnknownFieldError
from vit_jax.configs.fields import check_fields
from vit_jax.configs.fields import flat_keys as flat_keys
from vit_jax.configs.fields import is_known as is_known
from vit_jax.configs.fields import unknown_message as unknown_message

# The value rules, shared with configs/evals.py (one did-you-mean, one range rule).
from vit_jax.configs.values import choice as _choice
from vit_jax.configs.values import number as _number


class ConfigError(errors.UserError, ValueError):
  """A config value that vit_jax cannot use."""


# --------------------------------------------------------------------------------------------------
# Values.


def _durations(config, problems) -> None:
  for duration, (steps, epochs, examples) in durations.DURATIONS.items():
    if problem := durations.both_forms_problem(config, duration):
      problems.append(problem)
    e = durations.value(config, epochs)
    x = durations.value(config, examples)
    for name, v in ((epochs, e), (examples, x)):
      if v is not None:
        _number(problems, name, v, low=0, integer=name == examples)
    _number(
      problems,
      steps,
      durations.value(config, steps),
      low=0 if duration == 'warmup' or e or x else 1,
      integer=True,
    )
  if problem := durations.warmup_problem(config):
    problems.append(problem)


def _optimisation(config, problems) -> None:
  opt = config.optimizer
  sched = config.schedule
  _choice(problems, 'optimizer.name', opt.name, choices.OPTIMIZERS)
  _choice(problems, 'optimizer.accumulator_dtype', opt.accumulator_dtype, choices.DTYPES)
  _choice(problems, 'schedule.decay_type', sched.decay_type, choices.DECAY_TYPES)
  _choice(problems, 'loss', config.loss, choices.LOSSES)
  _choice(problems, 'dtype', config.dtype, choices.DTYPES)
  _choice(problems, 'nonfinite_policy', config.nonfinite_policy, choices.NONFINITE_POLICIES)
  _number(problems, 'label_smoothing', config.label_smoothing, low=0, high=1, high_open=True)
  _number(problems, 'mixup_p', config.mixup_p, low=0)
  _number(problems, 'schedule.base_lr', sched.base_lr, low=0)
  _number(problems, 'schedule.end_lr', sched.end_lr, low=0)
  _number(problems, 'schedule.rsqrt_timescale', sched.rsqrt_timescale, low=0, low_open=True)
  _number(problems, 'optimizer.weight_decay', opt.weight_decay, low=0)
  _number(problems, 'optimizer.momentum', opt.momentum, low=0, high=1, high_open=True)
  _number(problems, 'optimizer.b1', opt.b1, low=0, high=1, high_open=True)
  _number(problems, 'optimizer.b2', opt.b2, low=0, high=1, high_open=True)
  _number(problems, 'optimizer.eps', opt.eps, low=0, low_open=True)
  _number(problems, 'optimizer.grad_clip_norm', opt.grad_clip_norm)


def _data(config, problems) -> None:
  pp = config.pp
  if not config.dataset:
    problems.append(
      f'config.dataset is empty: set a TFDS name (e.g. cifar10), {dataset_names.IMAGE_FOLDER!r} '
      'with config.image_folder, or the path of an image folder.'
    )
  elif name_problem := dataset_names.dataset_name_problem(config.dataset):
    problems.append(name_problem)
  elif config.dataset == dataset_names.IMAGE_FOLDER and not config.image_folder:
    problems.append(
      f'config.dataset is {dataset_names.IMAGE_FOLDER!r} but config.image_folder is empty: set it '
      'to a folder DIR with DIR/train/<class>/*.jpg.'
    )
  if not str(config.train_split).strip():
    problems.append('config.train_split is empty: give a split such as train or train[:98%].')
  try:
    choices.parse_splits(config.eval_split)
  except ValueError as e:
    problems.append(str(e))
  _number(problems, 'image_size', config.image_size, low=1, integer=True)
  _choice(problems, 'pp.crop', pp.crop, choices.TRAIN_CROPS)
  _choice(problems, 'pp.eval_resize', pp.eval_resize, choices.EVAL_RESIZES)
  _choice(problems, 'on_bad_image', config.on_bad_image, choices.BAD_IMAGE_POLICIES)
  _number(problems, 'pp.eval_crop_fraction', pp.eval_crop_fraction, low=0, high=1, low_open=True)
  _number(problems, 'pp.inception_min_area', pp.inception_min_area, low=0, high=1, low_open=True)
  _number(problems, 'pp.pad_pixels', pp.pad_pixels, low=0, integer=True)
  _number(problems, 'pp.randaugment_layers', pp.randaugment_layers, low=0, integer=True)
  _number(problems, 'pp.randaugment_magnitude', pp.randaugment_magnitude, low=0)
  for name in ('prefetch', 'input_threads', 'input_processes', 'input_cache_mib'):
    _number(problems, name, config[name], low=0, integer=True)
  evals.fewshot_problems(problems, 'fewshot', config.fewshot)
  if config.fewshot.datasets:
    _number(problems, 'fewshot.every_steps', config.fewshot.every_steps, low=0, integer=True)


def _loop_and_mesh(config, problems, devices, process_count) -> None:
  for name in (
    'log_every_steps',
    'eval_every_steps',
    'checkpoint_every_steps',
    'keep',
    'accum_steps',
    'batch_size',
    'eval_batch_size',
  ):
    _number(problems, name, config[name], low=1, integer=True)
  _number(problems, 'fsdp_min_size', config.fsdp_min_size, low=0, integer=True)
  if config.num_classes != -1:
    _number(problems, 'num_classes', config.num_classes, low=1, integer=True)
  _choice(problems, 'sharding_strategy', config.sharding_strategy, choices.STRATEGIES)
  try:
    # Without the device count, only the mesh's form is checked: as if it had the devices it names.
    count = devices or math.prod(int(size) for _, size in config.mesh if int(size) > 0)
    names, sizes = choices.mesh_shape(config.mesh, count)
  except (TypeError, ValueError) as e:
    problems.append(
      f"{e} (config.mesh is a tuple of (axis, size) pairs, e.g. (('fsdp', -1),); {devices} devices)"
    )
    return
  if not devices or any(
    p.startswith(('config.batch_size', 'config.eval_batch_size', 'config.accum')) for p in problems
  ):
    return
  shards = math.prod(s for n, s in zip(names, sizes) if n in choices.BATCH_AXES)
  split = True
  for name in ('batch_size', 'eval_batch_size'):
    if config[name] % shards or config[name] % process_count:
      problems.append(
        f'config.{name}={config[name]} must be a multiple of the {shards} batch shards of the mesh '
        f'{dict(zip(names, sizes))} and of the {process_count} processes; e.g. '
        f'{shards * process_count * 8}.'
      )
      split = split and name != 'batch_size'
  if split and config.batch_size % (config.accum_steps * shards):
    problems.append(
      f'config.batch_size={config.batch_size} must divide into accum_steps={config.accum_steps} '
      f'micro-batches of a multiple of {shards} (the batch shards).'
    )


def profile_range(spec: str) -> tuple[int, int] | None:
  """config.profile_steps 'START:END' -> (START, END): the steps START <= step < END are traced; ''
  -> None."""
  if not spec:
    return None
  start, sep, end = str(spec).partition(':')
  try:
    first = int(start)
    last = int(end)
  except ValueError:
    first = last = -1
  if not sep or first < 1 or last <= first:
    raise ConfigError(
      f"config.profile_steps={spec!r} must be 'START:END' with 1 <= START < END (the steps START "
      "to END-1 are traced), e.g. '10:15', or '' for no profile."
    )
  return first, last


def _faults(config, problems) -> None:
  f = config.faults
  for name in ('init_timeout_s', 'heartbeat_timeout_s', 'shutdown_timeout_s', 'peer_timeout_s'):
    _number(problems, f'faults.{name}', f[name], low=1, integer=True)
  for name in ('hang_floor_s', 'hang_first_s'):
    _number(problems, f'faults.{name}', f[name], low=0, low_open=True)
  _number(problems, 'faults.hang_factor', f.hang_factor, low=1)
  _number(problems, 'faults.hang_timeout_s', f.hang_timeout_s, low=0)
  if not problems and f.heartbeat_timeout_s <= f.peer_timeout_s:
    problems.append(
      f'config.faults.heartbeat_timeout_s={f.heartbeat_timeout_s} must be longer than '
      f'faults.peer_timeout_s={f.peer_timeout_s}: our own detection of a lost process must come '
      'first (JAX aborts every process with stack dumps when its heartbeat timeout passes).'
    )
  try:
    profile_range(config.profile_steps)
  except ConfigError as e:
    problems.append(str(e))


def validate(config, *, devices: int | None = None, process_count: int = 1):
  """Checks every field of the config (module doc); returns it. `devices` (the number of JAX
  devices) enables the batch-split checks that need the mesh's size. The whole validation of a run,
  the objective's rules and what needs a model, a mesh or files included, is
  vit_jax/training/preflight.py's `validate`, which starts here."""
  check_fields(config)
  raise_problems(problems(config, devices=devices, process_count=process_count))
  return config


def problems(config, *, devices: int | None = None, process_count: int = 1) -> list[str]:
  """Every bad value of a config whose fields are known (`check_fields`), a line each."""
  out: list[str] = []
  model_check.problems(config, out)
  _durations(config, out)
  _optimisation(config, out)
  _data(config, out)
  out += evals.problems(config)
  _loop_and_mesh(config, out, devices, process_count)
  _faults(config, out)
  for name in ('scan_layers', 'fused_qkv', 'async_checkpoints', 'export_npz', 'pp.flip'):
    value = config.pp.flip if name == 'pp.flip' else config[name]
    if not isinstance(value, bool):
      out.append(f'config.{name}={value!r} must be True or False.')
  _choice(out, 'remat_policy', config.remat_policy, choices.REMAT_POLICIES)
  _choice(out, 'attention', config.attention, choices.ATTENTIONS)
  if not isinstance(config.compilation_cache_dir, str):
    out.append(
      f'config.compilation_cache_dir={config.compilation_cache_dir!r} must be a folder (local or '
      "gs://), or '' for no compilation cache."
    )
  return out


# The value rules, for the rules that the tasks add (vit_jax/tasks/): the same wording.
number = _number
choice = _choice


def raise_problems(problems: list[str]) -> None:
  """A ConfigError listing every problem (one line each), if there are any."""
  if problems:
    raise ConfigError(
      problems[0]
      if len(problems) == 1
      else f'{len(problems)} config values are wrong:\n  ' + '\n  '.join(problems)
    )


def validate_durations(resolved):
  """The durations once resolved into steps (epochs need the dataset's size): a run of at least one
  step, and the warmup within it (durations.warmup_problem, the one rule)."""
  total = resolved.total_steps
  if total < 1:
    raise ConfigError(
      f'The run has {total} steps (config.total_epochs/total_examples in steps at batch size '
      f'{resolved.batch_size}); give a longer duration.'
    )
  if problem := durations.warmup_problem(resolved, resolved=True):
    raise ConfigError(f'{problem} (in steps, resolved from the epochs or examples given)')
  return resolved
