"""Fine-tuning presets: `--config=configs/vit.py:<model>,<dataset>`, e.g.
`configs/vit.py:ViT-B_16,cifar10`.

The published ViT fine-tuning recipe: SGD with momentum 0.9, global batch 512, gradient clipping at
norm 1.0, 500 warmup steps then cosine decay, at 384 px, with the pretrained head replaced. Set
`--config.pretrained_path` to a release .npz (e.g. gs://vit_models/imagenet21k/ViT-B_16.npz, or a
local copy).

An MLP-Mixer (`configs/vit.py:Mixer-B_16,cifar10`) gets the same recipe at 224 px
(MIXER_IMAGE_SIZE), as vision_transformer's mixer_base16_cifar10.py has it: its token-mixing MLP is
sized by the number of patches, so a pretrained Mixer fine-tunes at the resolution it was trained at
(gs://mixer_models/imagenet21k/Mixer-B_16.npz).

`get_sweep` is the fine-tuning grid for launch.sweep: python -m launch.sweep
--config=configs/vit.py:ViT-B_16,cifar10
"""

from vit_jax import models
from vit_jax.configs import args, common

# dataset -> (train split, eval split, total steps, base learning rate).
DATASETS = {
  'cifar10': ('train[:98%]', 'test', 10_000, 0.03),
  'cifar100': ('train[:98%]', 'test', 10_000, 0.03),
  'imagenet2012': ('train[:99%]', 'validation', 20_000, 0.03),
  'oxford_iiit_pet': ('train[:90%]', 'test', 500, 0.03),
  'oxford_flowers102': ('train', 'test', 500, 0.03),
}
# (model, dataset) pairs whose published learning rate differs from the dataset's.
LEARNING_RATE_EXCEPTIONS = {('ViT-B_16', 'cifar10'): 0.01}
IMAGE_SIZE = 384
MIXER_IMAGE_SIZE = 224  # The release Mixers' resolution (their token-mixing MLPs fix it).
# The sweep: the fine-tuning learning rates of the ViT paper (Table 4) x two durations per dataset,
# its steps above and a shorter one (a longer one for the 500-step datasets).
SWEEP_LEARNING_RATES = (0.001, 0.003, 0.01, 0.03)
SWEEP_STEPS = {
  'cifar10': (2_500, 10_000),
  'cifar100': (2_500, 10_000),
  'imagenet2012': (10_000, 20_000),
  'oxford_iiit_pet': (500, 2_500),
  'oxford_flowers102': (500, 2_500),
}
# The argument, '<model>,<dataset>' (vit_jax/configs/presets.py checks the model's name).
ARGS = args.Grammar(
  'configs/vit.py', positional=('model', 'dataset'), valid={'dataset': tuple(DATASETS)}
)


def get_config(arg: str = 'ViT-B_16,cifar10'):
  parsed = ARGS.parse(arg)
  model = parsed['model']
  dataset = parsed['dataset']
  train_split, eval_split, total_steps, lr = DATASETS[dataset]

  config = common.get_config()
  config.model = models.get_model_config(model)  # Raises with the list of valid names.
  config.dataset = dataset
  config.train_split = train_split
  config.eval_split = eval_split
  config.image_size = MIXER_IMAGE_SIZE if models.is_mixer(config.model) else IMAGE_SIZE
  config.pp.crop = 'inception'
  config.pp.flip = True

  config.batch_size = 512
  config.eval_batch_size = 512
  config.total_steps = total_steps
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.grad_clip_norm = 1.0
  config.optimizer.weight_decay = 0.0
  config.schedule.base_lr = LEARNING_RATE_EXCEPTIONS.get((model, dataset), lr)
  # 50 for 500-step runs.
  config.schedule.warmup_steps = 500 if total_steps >= 5_000 else total_steps // 10
  config.schedule.decay_type = 'cosine'
  config.log_every_steps = 50
  config.eval_every_steps = max(total_steps // 10, 100)
  config.checkpoint_every_steps = 1_000
  return config


def get_sweep(h, arg: str = 'ViT-B_16,cifar10'):
  """8 runs: every learning rate of SWEEP_LEARNING_RATES for each duration of SWEEP_STEPS[dataset]
  (launch/hyper.py)."""
  dataset = ARGS.parse(arg)['dataset']
  return h.product(
    [
      h.sweep('config.schedule.base_lr', SWEEP_LEARNING_RATES),
      h.sweep('config.total_steps', SWEEP_STEPS[dataset]),
    ]
  )
