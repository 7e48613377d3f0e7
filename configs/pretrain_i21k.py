"""Pretraining on ImageNet-21k, AugReg's recipe:
`--config=configs/pretrain_i21k.py:<model>[,aug=<level>][,epochs=<n>]`.

"How to train your ViT? Data, Augmentation, and Regularization in Vision Transformers" (Steiner et
al., 2021), as the released ImageNet-21k checkpoints were trained: Adam (first moment in bfloat16),
lr 1e-3 with 10k linear warmup steps then cosine to 0, gradient clipping at norm 1, decoupled weight
decay, global batch 4096, sigmoid cross-entropy over the 21,843 classes with the head bias
initialised to -10, `token` pooling with learned position embeddings, 224 px, 300 epochs (or 90 with
`epochs=90`; or 30). The AugReg level (RandAugment + mixup) defaults to the one the paper picked per
model. Evaluation: exact accuracy on big_vision's held-out validation slice, and 10-shot-style
linear probes (1, 5, 10, 25 shots) on cifar100, pets, dtd and caltech101 as TFDS datasets.

Data: the `imagenet21k` TFDS builder of vit_jax/datasets (see the README's Pretraining section for
the build).
"""

from vit_jax import models
from vit_jax.configs import args, augmentation, common, recipes
from vit_jax.data.datasets import imagenet21k

# Model -> AugReg level of the released checkpoints (Table 7 of the paper, as in the issue).
DEFAULT_AUG = {
  'ViT-Ti_16': 'none',
  'ViT-S_32': 'none',
  'ViT-S_16': 'light1',
  'ViT-B_32': 'light2',
  'ViT-B_16': 'light2',
  'ViT-L_16': 'medium2',
}
EPOCHS = ('300', '90', '30')
ARGS = args.Grammar(
  'configs/pretrain_i21k.py',
  positional=('model',),
  keywords=('aug', 'epochs'),
  valid={'aug': tuple(augmentation.AUGREG_LEVELS), 'epochs': EPOCHS},
)


def get_config(arg: str = 'ViT-B_16'):
  options = ARGS.parse(arg)
  model = options['model']
  config = common.get_config()
  config.model = models.get_model_config(model)  # Raises with the valid names.
  config.model.transformer.dropout_rate = 0.0
  config.model.head_bias_init = -10.0  # With the sigmoid loss: start at p = 4.5e-5 per class.
  if 'aug' not in options and model not in DEFAULT_AUG:
    raise ValueError(
      f'No default AugReg level for {model} (known: {", ".join(DEFAULT_AUG)}); add aug=<level>, '
      f'one of {", ".join(augmentation.AUGREG_LEVELS)}.'
    )
  augmentation.apply_level(config, options.get('aug', DEFAULT_AUG.get(model)))

  config.dataset = 'imagenet21k'
  config.train_split = imagenet21k.HELD_OUT['train']
  config.eval_split = f'val={imagenet21k.HELD_OUT["validation"]}'
  config.image_size = 224
  config.pp.crop = 'inception'
  config.pp.flip = True
  config.pp.eval_resize = 'shorter_side'
  config.pp.eval_crop_fraction = 0.875  # Resize to 256, central crop 224.
  config.loss = 'sigmoid'

  config.batch_size = 4096
  config.eval_batch_size = 4096
  config.total_epochs = float(options.get('epochs', '300'))
  recipes.adam_pretraining(config)  # lr 1e-3, 10k warmup, cosine; wd 1e-4 in big_vision's terms.
  config.optimizer.accumulator_dtype = 'bfloat16'  # Adam's first moment.

  config.fewshot.datasets = (
    'cifar100:train:test,oxford_iiit_pet:train:test,dtd:train:test,caltech101:train:test'
  )
  config.fewshot.every_steps = 10_000
  config.log_every_steps = 100
  config.eval_every_steps = 5_000
  config.checkpoint_every_steps = 1_000
  config.keep = 3
  return config
