"""Transfer suites (configs/transfer_*.py): the datasets a pretrained model is measured on, as
config files that vit_jax.main and launch.sweep read like any other, and that launch.transfer runs
whole.

A suite file defines `SUITE = transfer.suite(tasks=..., fewshot=..., published=...)` and the three
functions of `suite_functions(SUITE)`:
  get_config('task=<name>,model=<preset>')   the fine-tuning config of one task (model fields and
                                             pretrained_path come as --config.* overrides from
                                             launch.transfer);
  get_sweep(h, arg)                          the task's grid: its learning rates x its seeds;
  get_suite()                                the suite itself (tasks, few-shot probes, published
                                             figures).
Each task names its dataset and three splits: train, validation (selection) and test (the reported
figure). A run evaluates 'val=<validation>,test=<test>' (vit_jax/evaluators): eval/accuracy is the
validation accuracy, which selection reads, and eval/test/accuracy the test accuracy, which only the
report reads.
"""

import ml_collections

from vit_jax.configs import args, common, presets

TASK_DEFAULTS = dict(
  dataset='',
  train='train',
  val='',
  test='test',
  steps=500,
  warmup=100,
  image_size=384,
  crop='inception',
  flip=True,
  eval_crop_fraction=1.0,
  lrs=(0.001, 0.003, 0.01, 0.03),
  seeds=1,
  batch_size=512,
  eval_batch_size=512,
  optimizer='sgd',
  grad_clip_norm=1.0,
  mixup_p=0.0,
)


def task(**fields) -> dict:
  """A task's settings over TASK_DEFAULTS (a field not among them is an error naming the valid
  ones)."""
  unknown = sorted(set(fields) - set(TASK_DEFAULTS))
  if unknown:
    raise ValueError(
      f'Unknown transfer task field(s) {unknown}; valid: {", ".join(TASK_DEFAULTS)}.'
    )
  out = {**TASK_DEFAULTS, **fields}
  if not out['dataset'] or not out['val']:
    raise ValueError(f'A transfer task needs dataset and val (the selection split), got {fields}.')
  return out


def suite(
  *, name: str, tasks: dict, fewshot: dict | None = None, published: dict | None = None
) -> dict:
  """A suite: {task name: task(...)}; few-shot probes ({'datasets': 'name:train:test,...', 'shots',
  'seeds', 'l2_reg', 'image_size'}); published figures {(pretrained name, task): test accuracy in
  %}."""
  return {
    'name': name,
    'tasks': dict(tasks),
    'fewshot': dict(fewshot or {}),
    'published': dict(published or {}),
  }


def grammar(the_suite: dict) -> args.Grammar:
  """The argument of a suite's get_config and get_sweep (vit_jax/configs/args.py):
  [task=<name>][,model=<preset>], the task one of the suite's."""
  return args.Grammar(
    'configs/transfer_*.py', keywords=('task', 'model'), valid={'task': tuple(the_suite['tasks'])}
  )


def _task(the_suite: dict, arg: str) -> tuple[dict, dict]:
  """(the parsed argument, the task it names: the suite's first when it names none)."""
  parsed = grammar(the_suite).parse(arg)
  return parsed, the_suite['tasks'][parsed.get('task') or next(iter(the_suite['tasks']))]


def task_config(the_suite: dict, arg: str) -> ml_collections.ConfigDict:
  """The fine-tuning config of the task that `arg` names (module doc), from
  vit_jax/configs/common.py."""
  parsed, t = _task(the_suite, arg)
  config = common.get_config()
  config.model = presets.get_model_config(parsed.get('model') or 'ViT-B_16')
  config.dataset = t['dataset']
  config.train_split = t['train']
  config.eval_split = f'val={t["val"]},test={t["test"]}'
  config.image_size = t['image_size']
  config.pp.crop = t['crop']
  config.pp.flip = t['flip']
  config.pp.eval_crop_fraction = t['eval_crop_fraction']
  config.mixup_p = t['mixup_p']
  config.batch_size = t['batch_size']
  config.eval_batch_size = t['eval_batch_size']
  config.total_steps = t['steps']
  config.schedule.warmup_steps = t['warmup']
  config.schedule.base_lr = t['lrs'][0]
  config.optimizer.name = t['optimizer']
  config.optimizer.grad_clip_norm = t['grad_clip_norm']
  config.optimizer.weight_decay = 0.0
  config.log_every_steps = max(1, t['steps'] // 10)
  config.eval_every_steps = config.checkpoint_every_steps = t['steps']
  config.keep = 1
  return config


def task_sweep(the_suite: dict, h, arg: str) -> list[dict]:
  """The grid of the task `arg` names: its learning rates, times its seeds when it asks for
  several."""
  _, t = _task(the_suite, arg)
  parts = [h.sweep('config.schedule.base_lr', list(t['lrs']))]
  if t['seeds'] > 1:
    parts.append(h.sweep('config.seed', list(range(t['seeds']))))
  return h.product(parts)


def suite_functions(the_suite: dict):
  """(get_config, get_sweep, get_suite) of a suite file (module doc)."""
  return (
    lambda arg='': task_config(the_suite, arg),
    lambda h, arg='': task_sweep(the_suite, h, arg),
    lambda: the_suite,
  )
