"""SigLIP from scratch on the bundled digits: a tiny two-tower model of SigLIP's shape (big_vision's
ViT with its MAP head, big_vision's text transformer read at its last token), both towers trained,
with SigLIP's sigmoid loss and its learned bias b (exp(t) = 10 and b = -10 at init), on captions
made from the class names ("a photo of the digit three."); evaluated zero-shot on the digits test
split. Offline, a few CPU minutes:

  python -m vit_jax.main --config=configs/siglip.py --workdir=runs/siglip

It saves params.npz in big_vision's two-tower layout (`img/`, `txt/`, `t`, `b`), which
`vit_jax.predict --workdir=runs/siglip IMAGE` reads for zero-shot with sigmoid probabilities, as
for a released SigLIP file. The vocabulary is a SentencePiece word model of the captions
(config.lit.vocab_path '' builds it; the run keeps it as runs/siglip/vocab.model), so the tokenizer
is 'sentencepiece', not the preset's 'siglip' (whose padding id belongs to the T5 vocabularies).

At scale (WebLI-style image-text data), the same file with an argument, a SigLIP preset and a TFDS
dataset with a caption feature:

  python -m vit_jax.main --config=configs/siglip.py:SigLIP-B_16-256,coco_captions \
    --config.tfds_data_dir=/data/tfds --workdir=runs/siglip_b16

- The model: any of presets.SIGLIP_PRESETS (SigLIP-B_16-256, SigLIP-So400m_14-384,
  SigLIP2-B_16-256, ...) at its resolution, with its own tokenizer: 'siglip' (lower-cased) over
  the c4_en vocabulary for SigLIP's English models, 'siglip2' over Gemma's for SigLIP 2
  (config.lit.vocab_path = the preset's pp.vocab_path, on gs://). From scratch, or with
  `init=release` from the released file (config.lit.image_init and text_init; the text tower takes
  the file's txt/ and t, b starts at config.lit.bias_init), both towers trained.
- The data: a TFDS dataset prepared as ArrayRecord (`tfds build coco_captions
  --file_format=array_record --data_dir=/data/tfds`: vit_jax/data/sources.py reads it with random
  access and no TensorFlow), its caption feature `text_feature=` (default 'captions/text', as
  coco_captions'), trained on 'train' and evaluated by retrieval on 'val' (--config.train_split,
  --config.eval_split for others). An image folder with a captions file works the same:
  --config.dataset=image_folder --config.image_folder=DIR --config.lit.captions=FILE (lines
  '<image path relative to the folder><TAB><caption>'; --config.lit.text_feature='').
- The batch: SigLIP's 32k, split over the devices of a pod; the sigmoid loss is then computed chunk
  by chunk around the ring of devices, one [local x local] block of logits at a time
  (config.lit.sigmoid_impl 'auto' picks 'chunked' on a batch split over several devices), the
  parameters and Adam's moments (the first in bfloat16) sharded over the 'fsdp' mesh axis
  (docs/scale.md). AdamW with SigLIP's b2 = 0.95 for large-batch stability, lr 1e-3, and
  big_vision's weight decay 1e-4 (0.1 x lr here: this package's decay is scaled by the learning
  rate), for 100k steps (3.3B examples); set config.total_examples (examples seen) or total_steps
  to your budget.
"""

import os

from vit_jax.configs import args, default, presets

ARGS = args.Grammar(
  'configs/siglip.py',
  positional=('model', 'dataset'),
  keywords=('text_feature', 'init'),
  valid={'model': tuple(presets.SIGLIP_PRESETS), 'init': ('scratch', 'release')},
)
TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'lit_digits_templates.txt')


def get_config(arg: str | None = None):
  """The digits recipe; with ARGS (`MODEL,DATASET[,text_feature=F][,init=release]`), the same at
  scale (module doc)."""
  config = _digits()
  return _at_scale(config, ARGS.parse(arg)) if arg else config


def _digits():
  # The digits data of the main job, at their own 8 px (the main job's 16 px are for its stem).
  config = default.get_config()
  config.image_size = 8
  # SigLIP-B/16's structure (MAP head, text tower pooled at its last token, npz_layout
  # 'big_vision', t and b), shrunk to the 8 x 8 digits.
  config.model = presets.get_model_config('SigLIP-B_16-224')
  config.model.model_name = 'SigLIP-digits'
  image = config.model.image
  image.model_name = 'SigLIP-digits/img'
  image.patches.size = (2, 2)  # 4x4 grid of 2x2 patches.
  image.hidden_size = 64
  image.transformer.update(num_layers=2, mlp_dim=128, num_heads=2)
  config.model.text.update(width=64, num_layers=2, mlp_dim=128, num_heads=2, vocab_size=64)
  # The text head maps to the image tower's width, as SigLIP-B/16's.
  config.model.out_dim = (None, image.hidden_size)
  # A vocabulary trained on the captions (module doc): 'sentencepiece', no gs:// file.
  config.model.pp.update(
    tokenizer_name='sentencepiece', tokenizer='', vocab_path='', size=config.image_size, max_len=8
  )

  # Both towers trained from scratch.
  config.lit.image_init = ''
  config.lit.locked_image = False
  config.lit.templates = TEMPLATES
  config.lit.class_names = ','.join(default.DIGITS)
  # SigLIP's loss and its initial temperature and bias.
  config.loss = 'sigmoid'
  config.lit.temperature_init = 10.0
  config.lit.bias_init = -10.0
  config.mixup_p = 0.0
  config.label_smoothing = 0.0

  config.batch_size = 128
  config.total_steps = 600
  config.optimizer.name = 'adamw'
  config.optimizer.weight_decay = 1e-4
  config.schedule.base_lr = 1e-3
  config.schedule.warmup_steps = 50
  config.log_every_steps = 100
  config.eval_every_steps = 300
  config.checkpoint_every_steps = 300
  return config


def _at_scale(config, options):
  model = options['model']
  config.model = presets.get_model_config(model)
  config.image_size = config.model.pp.size
  config.lit.vocab_path = config.model.pp.vocab_path
  if options.get('init', 'scratch') == 'release':
    config.lit.image_init = presets.release_path(model)
    config.lit.text_init = presets.release_path(model)
  config.dataset = options['dataset']
  config.train_split = 'train'
  config.eval_split = 'val'
  config.lit.text_feature = options.get('text_feature', 'captions/text')
  config.lit.templates = 'photo'
  config.lit.class_names = ''

  config.batch_size = 32 * 1024
  config.eval_batch_size = 4096
  config.mesh = (('fsdp', -1),)
  config.sharding_strategy = 'fsdp'
  config.optimizer.accumulator_dtype = 'bfloat16'
  config.optimizer.b2 = 0.95
  config.optimizer.weight_decay = 0.1
  config.schedule.base_lr = 1e-3
  config.total_steps = 100_000
  config.schedule.warmup_steps = 5000
  config.schedule.decay_type = 'cosine'
  config.log_every_steps = 100
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 1000
  return config
