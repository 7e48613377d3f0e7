"""LiT (locked-image tuning) on the bundled digits: the README main job's ViT, locked, and a small
text tower trained from scratch to match it, on captions made from the class names ("a photo of the
digit three."); evaluated zero-shot on the digits test split. Run the main job first (it writes
runs/default/params.npz), then:

  python -m vit_jax.main --config=configs/lit.py --workdir=runs/lit

`--config.loss=sigmoid` trains with SigLIP's sigmoid loss instead of LiT's softmax. For another
dataset, set config.dataset and the splits, config.lit.image_init to a ViT release file (e.g.
gs://vit_models/imagenet21k/ ViT-B_16.npz, with config.model.image = its preset and image_size /
model.pp.size = its resolution) and the templates; with a released LiT text tower, config.model =
get_model_config('LiT-B16B'), config.lit.text_init and config.lit.vocab_path
(gs://vit_models/lit/LiT-B16B.npz and .txt).
"""

import os

from vit_jax.configs import args, default, presets

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'lit_digits_templates.txt')


ARGS = args.Grammar('configs/lit.py', keywords=('model',), valid={'model': default.MODELS})


def get_config(arg: str | None = None):
  """`configs/lit.py:model=vit` locks the tower of a `configs/default.py:model=vit` run (the plain
  ViT)."""
  # The digits data, the image size and the image tower of the main job (of its model `model`).
  config = default.digits(ARGS.parse(arg).get('model', 'hybrid'))
  image = config.model
  # A text_transformer tower with SentencePiece tokens.
  config.model = presets.get_model_config('LiT-L16Ti')
  config.model.model_name = 'LiT-digits'
  config.model.image = image
  # The locked tower's pre-logits; the text head matches them.
  config.model.out_dim = (None, image.hidden_size)
  config.model.text = {
    'width': 64,
    'num_layers': 2,
    'mlp_dim': 128,
    'num_heads': 2,
    'vocab_size': 64,
  }
  config.model.pp.size = config.image_size
  config.model.pp.max_len = 8

  config.lit.image_init = 'runs/default/params.npz'
  config.lit.locked_image = True
  config.lit.templates = TEMPLATES
  config.lit.class_names = ','.join(default.DIGITS)
  config.mixup_p = 0.0
  config.label_smoothing = 0.0

  config.batch_size = 128
  config.total_steps = 400
  config.optimizer.name = 'adamw'
  config.optimizer.weight_decay = 1e-4
  config.schedule.base_lr = 1e-3
  config.schedule.warmup_steps = 50
  config.log_every_steps = 50
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 200
  return config
