"""Pretraining on ImageNet-1k, "Better plain ViT baselines for ImageNet-1k" (Beyer et al., 2022):
`--config=configs/pretrain_i1k.py:<model>[,epochs=90|150|300]` (model default ViT-S_16).

ViT with global average pooling and fixed 2-D sin-cos position embeddings, no dropout,
RandAugment(2, 10) and mixup 0.2, Inception crop 5-100% at 224 px, global batch 1024, Adam (b2
0.999) at lr 1e-3 with 10k linear warmup steps then cosine to 0, gradient clipping at norm 1,
decoupled weight decay, softmax cross-entropy, 90 epochs. Published top-1 on ImageNet-1k validation
for ViT-S/16: 76.5% (90 epochs), 78.5% (150), 80.0% (300).

Splits as the recipe uses them: train `train[:99%]`, minival `train[99%:]`, and the official
`validation`. Data: TFDS `imagenet2012` (manual download), prepared as ArrayRecord (see the README's
Pretraining section).
"""

from vit_jax import models
from vit_jax.configs import args, augmentation, common, recipes

EPOCHS = ('90', '150', '300')
ARGS = args.Grammar(
  'configs/pretrain_i1k.py', positional=('model',), keywords=('epochs',), valid={'epochs': EPOCHS}
)


def get_config(arg: str = 'ViT-S_16'):
  options = ARGS.parse(arg)
  model = options['model']
  config = common.get_config()
  config.model = models.get_model_config(model)
  config.model.classifier = 'gap'
  config.model.posemb = 'sincos2d'
  config.model.transformer.dropout_rate = 0.0
  augmentation.apply_level(config, 'light2')  # RandAugment(2, 10), mixup 0.2.

  config.dataset = 'imagenet2012'
  config.train_split = 'train[:99%]'
  config.eval_split = 'minival=train[99%:],val=validation'
  config.image_size = 224
  config.pp.crop = 'inception'
  config.pp.inception_min_area = 0.05
  config.pp.flip = True
  config.pp.eval_resize = 'shorter_side'
  config.pp.eval_crop_fraction = 0.875  # Resize to 256, central crop 224.
  config.loss = 'softmax'

  config.batch_size = 1024
  config.eval_batch_size = 1024
  config.total_epochs = float(options.get('epochs', '90'))
  recipes.adam_pretraining(config)  # lr 1e-3, 10k warmup, cosine; wd 1e-4 in big_vision's terms.

  config.log_every_steps = 100
  config.eval_every_steps = 2_500
  config.checkpoint_every_steps = 1_000
  config.keep = 3
  return config
