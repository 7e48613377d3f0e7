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

At scale (WebLI-style image-text data), a config file of your own starts from this one's
get_config() and changes the model, the data and the batch:
- The model: a SigLIP preset (vit_jax.configs.presets.SIGLIP_PRESETS: SigLIP-B_16-256,
  SigLIP-So400m_14-384, SigLIP2-B_16-256, ...), `config.model =
  presets.get_model_config('SigLIP-B_16-256')` and `config.image_size = config.model.pp.size`, with
  its own tokenizer ('siglip', lower-cased, over the c4_en vocabulary: `config.lit.vocab_path =
  config.model.pp.vocab_path`; SigLIP 2's is 'siglip2' over Gemma's). From scratch as here, or from
  the release file: `config.lit.image_init = config.lit.text_init =
  presets.release_path('SigLIP-B_16-256')`, with `config.lit.locked_image = False` still.
- The data: a TFDS dataset with a caption feature, prepared as ArrayRecord (`tfds build
  coco_captions --file_format=array_record --data_dir=...`; vit_jax/data/sources.py reads it
  with random access and no TensorFlow): `config.dataset = 'coco_captions'`,
  `config.lit.text_feature = 'captions/text'` (it needs config.lit.vocab_path; such a split is
  evaluated by retrieval), `config.tfds_data_dir`; or an image folder with a captions file:
  `config.dataset = 'image_folder'`, `config.image_folder`, `config.lit.captions` = a file of lines
  '<image path relative to the folder><TAB><caption>'.
- The batch: SigLIP's 32k over a pod, `config.batch_size = 32768`. Split over several devices, the
  sigmoid loss is computed chunk by chunk around the ring of devices, one [local x local] block of
  logits at a time (config.lit.sigmoid_impl 'auto' picks 'chunked'); big towers also want
  `config.optimizer.accumulator_dtype = 'bfloat16'` and `config.mesh`, `config.sharding_strategy =
  'fsdp'` (docs/scale.md).
"""

import os

from vit_jax.configs import default, presets

DIGITS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'lit_digits_templates.txt')


def get_config():
  # The digits data and image size of the main job.
  config = default.get_config()
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
  config.lit.class_names = ','.join(DIGITS)
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
