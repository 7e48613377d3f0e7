"""The preset registry: one table of model configurations, the single source of truth for every
preset name.

The names and every field they share with google-research/vision_transformer's
`vit_jax/configs/models.py` have that project's values (dropout included), so a config or checkpoint
name from there means the same model here. `vit_jax.configs.models` (MODEL_CONFIGS,
get_b16_config(), ...) is built from this table.

Extra here: ViT-g/14 ('Scaling Vision Transformers') and ViT-22B/14 (ViT-22B's sizes, built from the
standard pre-LN block) for memory planning and pretraining only (no released .npz exists for them),
and the fields that our VisionTransformer adds (`head_bias_init`, and `resnet=None` for pure ViTs).

MLP-Mixers (`MIXER_PRESETS`, names 'Mixer-...') have the reference's fields exactly (MlpMixer's
arguments: model_name, patches, hidden_dim, num_blocks, tokens_mlp_dim, channels_mlp_dim);
`is_mixer` tells the families apart by those fields, so it works on any model config, a preset's or
a config file's.
"""

import math

import ml_collections
from ml_collections import config_dict

# Width name -> (hidden_size, num_layers, mlp_dim, num_heads).
WIDTHS = {
  'testing': (10, 1, 10, 2),
  'Ti': (192, 12, 768, 3),
  'S': (384, 12, 1536, 6),
  'B': (768, 12, 3072, 12),
  'L': (1024, 24, 4096, 16),
  'H': (1280, 32, 5120, 16),
  'g': (1408, 40, 6144, 16),
  # SigLIP's shape-optimised widths (big_vision's vit.decode_variant).
  'So400m': (1152, 27, 4304, 16),
  'g-opt': (1536, 40, 6144, 16),
  '22B': (6144, 48, 24576, 48),
}

# name -> (width, patch size, ResNet stage sizes or None for a pure ViT, dropout_rate, classifier,
# getter suffix). The getter suffix names vision_transformer's getter: 'b16' -> get_b16_config().
PRESETS = {
  'testing': ('testing', 16, None, 0.1, 'token', 'testing'),
  'testing-unpooled': ('testing', 16, None, 0.1, 'unpooled', 'testing_unpooled'),
  'ViT-Ti_16': ('Ti', 16, None, 0.0, 'token', 'ti16'),
  'ViT-S_16': ('S', 16, None, 0.0, 'token', 's16'),
  'ViT-B_16': ('B', 16, None, 0.0, 'token', 'b16'),
  'ViT-L_16': ('L', 16, None, 0.1, 'token', 'l16'),
  'ViT-H_14': ('H', 14, None, 0.1, 'token', 'h14'),
  'ViT-S_16-gap-norep': ('S', 16, None, 0.0, 'gap', 's16_gap_norep'),
  'ViT-B_16-gap-norep': ('B', 16, None, 0.0, 'gap', 'b16_gap_norep'),
  'ViT-B_8': ('B', 8, None, 0.0, 'token', 'b8'),
  'ViT-S_32': ('S', 32, None, 0.0, 'token', 's32'),
  'ViT-B_32': ('B', 32, None, 0.0, 'token', 'b32'),
  'ViT-L_32': ('L', 32, None, 0.0, 'token', 'l32'),
  'ViT-S_32-gap-norep': ('S', 32, None, 0.0, 'gap', 's32_gap_norep'),
  'ViT-B_32-gap-norep': ('B', 32, None, 0.0, 'gap', 'b32_gap_norep'),
  # Hybrids: patch 1 on the stem's output; the stem down-samples 4 * 2**(stages - 1) (4 for the
  # stem-only R+Ti).
  'R+ViT-Ti_16': ('Ti', 8, (), 0.0, 'token', 'r_ti16'),
  'R50+ViT-B_16': ('B', 1, (3, 4, 9), 0.1, 'token', 'r50_b16'),
  'R26+ViT-B_32': ('B', 1, (2, 2, 2, 2), 0.0, 'token', 'r26_b32'),
  'R26+ViT-S_32': ('S', 1, (2, 2, 2, 2), 0.0, 'token', 'r26_s32'),
  'R50+ViT-L_32': ('L', 1, (3, 4, 6, 3), 0.1, 'token', 'r50_l32'),
  # Ours only.
  'ViT-g_14': ('g', 14, None, 0.0, 'token', 'g14'),
  'ViT-22B_14': ('22B', 14, None, 0.0, 'token', '22b14'),
}
# MLP-Mixer width name -> (hidden_dim, num_blocks, tokens_mlp_dim, channels_mlp_dim) (the Mixer
# paper's Table 1).
MIXER_WIDTHS = {
  'B': (768, 12, 384, 3072),
  'L': (1024, 24, 512, 4096),
}
# name -> (width, patch size, getter suffix), as vision_transformer's configs/models.py has them.
MIXER_PRESETS = {
  'Mixer-B_16': ('B', 16, 'mixer_b16'),
  'Mixer-B_32': ('B', 32, 'mixer_b32'),
  'Mixer-L_16': ('L', 16, 'mixer_l16'),
}
MODEL_NAMES = tuple(PRESETS) + tuple(MIXER_PRESETS)
# LiT image-text models, as vision_transformer's configs/models.py has them: name -> (image preset,
# image out_dim, text out_dim, text_model, text tower fields, tokenizer). pp.size 224 and pp.max_len
# 16 for all.
# The BERT text towers (vit_jax/models/bert.py): flaxformer's BertBaseConfig and BertLargeConfig.
BERT_SIZES = {
  'base': dict(
    hidden_size=768, intermediate_dim=3072, num_hidden_layers=12, num_attention_heads=12
  ),
  'large': dict(
    hidden_size=1024, intermediate_dim=4096, num_hidden_layers=24, num_attention_heads=16
  ),
}
_TEXT_S = {'width': 384, 'num_layers': 12, 'mlp_dim': 1536, 'num_heads': 6, 'vocab_size': 16_000}
_TEXT_TI = {'width': 192, 'num_layers': 12, 'mlp_dim': 768, 'num_heads': 3, 'vocab_size': 16_000}
LIT_PRESETS = {
  'LiT-B16B': ('ViT-B_16', 768, 768, 'bert', {'config': 'base'}, 'bert'),
  'LiT-B16B_2': ('ViT-B_16', None, 768, 'bert', {'config': 'base'}, 'bert'),
  'LiT-L16L': ('ViT-L_16', None, 1024, 'bert', {'config': 'large'}, 'bert'),
  'LiT-L16S': ('ViT-L_16', None, 1024, 'text_transformer', _TEXT_S, 'sentencepiece'),
  'LiT-L16Ti': ('ViT-L_16', None, 1024, 'text_transformer', _TEXT_TI, 'sentencepiece'),
}
# SigLIP and SigLIP 2 (big_vision's two_towers: its ViT with the MAP head and no image head, its
# text transformer pooled on the last token with a head to the image width, `t` and the sigmoid
# loss's `b`): every non-NaFlex release, as big_vision's demo colabs configure them. Names:
# 'SigLIP-<variant>_<patch>-<resolution>[-i18n]', 'SigLIP2-<variant>_<patch>-<resolution>'.
# name -> (image width, patch, resolution, text width, text length, vocabulary (big_vision's
# tokenizer name), text head: True (to the image width) or None (none), file).
_SIGLIP = 'gs://big_vision/siglip/webli_'
_SIGLIP_1 = {
  'SigLIP-B_16-224': ('B', 16, 224, 'B', 64, 'c4_en', True, 'en_b16_224_63724782'),
  'SigLIP-B_16-256': ('B', 16, 256, 'B', 64, 'c4_en', True, 'en_b16_256_60500360'),
  'SigLIP-B_16-384': ('B', 16, 384, 'B', 64, 'c4_en', True, 'en_b16_384_68578854'),
  'SigLIP-B_16-512': ('B', 16, 512, 'B', 64, 'c4_en', True, 'en_b16_512_68580893'),
  'SigLIP-L_16-256': ('L', 16, 256, 'L', 64, 'c4_en', True, 'en_l16_256_60552751'),
  'SigLIP-L_16-384': ('L', 16, 384, 'L', 64, 'c4_en', True, 'en_l16_384_63634585'),
  'SigLIP-So400m_14-224': (
    'So400m',
    14,
    224,
    'So400m',
    16,
    'c4_en',
    True,
    'en_so400m_224_57633886',
  ),
  'SigLIP-So400m_14-384': (
    'So400m',
    14,
    384,
    'So400m',
    64,
    'c4_en',
    True,
    'en_so400m_384_58765454',
  ),
  'SigLIP-B_16-256-i18n': ('B', 16, 256, 'B', 64, 'mc4', True, 'i18n_b16_256_66117334'),
  # (Its text tower has no head, as big_vision's SigLIP demo configures it.)
  'SigLIP-So400m_16-256-i18n': (
    'So400m',
    16,
    256,
    'So400m',
    64,
    'mc4',
    None,
    'i18n_so400m_16_256_78061115',
  ),
}
_SIGLIP_1 = {k: v[:-1] + (f'{_SIGLIP}{v[-1]}.npz',) for k, v in _SIGLIP_1.items()}
# SigLIP 2: the Gemma vocabulary (256k), 64 tokens; g-opt's text tower is So400m's, with a head to
# g-opt's width.
_SIGLIP_2 = {
  f'SigLIP2-{v}_{p}-{r}': (
    v,
    p,
    r,
    'So400m' if v == 'g-opt' else v,
    64,
    'gemma',
    True,
    f'gs://big_vision/siglip2/siglip2_{v.lower()}{p}_{r}.npz',
  )
  for v, p, rs in (
    ('B', 16, (224, 256, 384, 512)),
    ('B', 32, (256,)),
    ('L', 16, (256, 384, 512)),
    ('So400m', 14, (224, 384)),
    ('So400m', 16, (256, 384, 512)),
    ('g-opt', 16, (256, 384)),
  )
  for r in rs
}
SIGLIP_PRESETS = {**_SIGLIP_1, **_SIGLIP_2}
# big_vision's vocabulary sizes, by its tokenizer names.
SIGLIP_VOCAB_SIZES = {'c4_en': 32_000, 'mc4': 250_000, 'gemma': 256_000}
# big_vision's tokenizer names -> the SentencePiece model (its pp/ops_text.py KNOWN_TOKENIZERS).
SIGLIP_VOCABULARIES = {
  'c4_en': 'gs://t5-data/vocabs/cc_en.32000/sentencepiece.model',
  'mc4': 'gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model',
  'gemma': 'gs://big_vision/gemma_tokenizer.model',
}
# The image-text presets (LitModel's): LiT's and SigLIP's.
LIT_PRESETS.update(SIGLIP_PRESETS)


def is_mixer(model_config) -> bool:
  """Whether a model config (ConfigDict or dict) is an MlpMixer's (it has `num_blocks`), not a
  VisionTransformer's."""
  return 'num_blocks' in model_config


def family(model_config) -> str:
  """A model config's family: 'mixer' (`is_mixer`), 'lit' (a LiT image-text model's: it has
  `text_model`) or 'vit' (ViTs and hybrids). Which objective a config trains is its task's
  (vit_jax/tasks/), which asks this."""
  return 'mixer' if is_mixer(model_config) else 'lit' if 'text_model' in model_config else 'vit'


def getter_suffix(name: str) -> str:
  """The suffix of vision_transformer's getter of preset `name`: 'ViT-B_16' -> 'b16'
  (get_b16_config()), 'LiT-B16B' -> 'lit_b16b'."""
  if name in LIT_PRESETS:
    return name.lower().replace('-', '_')
  return MIXER_PRESETS[name][-1] if name in MIXER_PRESETS else PRESETS[name][-1]


def _lit_config(name: str) -> ml_collections.ConfigDict:
  if name in SIGLIP_PRESETS:
    return _siglip_config(name)
  image, image_dim, text_dim, text_model, text, tokenizer = LIT_PRESETS[name]
  return ml_collections.ConfigDict(
    {
      'model_name': name,
      'out_dim': (image_dim, text_dim),
      'image': get_model_config(image),
      'text_model': text_model,
      'text': dict(text),
      'pp': {'tokenizer_name': tokenizer, 'size': 224, 'max_len': 16},
    }
  )


def _siglip_config(name: str) -> ml_collections.ConfigDict:
  """A SigLIP preset's LitModel config (SIGLIP_PRESETS). `pp.tokenizer` is big_vision's vocabulary
  name ('c4_en', 'mc4', 'gemma'), `pp.vocab_path` its SentencePiece model; `npz_layout` 'big_vision'
  saves its files as big_vision's two_towers does."""
  image, patch, size, text, length, vocab, head, _ = SIGLIP_PRESETS[name]
  width, layers, mlp, heads = WIDTHS[text]
  image_config = _vit_config(f'{name}/img', image, patch, None, 0.0, 'map')
  image_config.patch_remainder = 'drop'  # As big_vision's (So400m/14 at 384 px: 27 x 27 patches).
  return ml_collections.ConfigDict(
    {
      'model_name': name,
      'out_dim': (None, image_config.hidden_size if head else None),
      'image': image_config,
      'text_model': 'text_transformer',
      'text': {
        'width': width,
        'num_layers': layers,
        'mlp_dim': mlp,
        'num_heads': heads,
        'vocab_size': SIGLIP_VOCAB_SIZES[vocab],
        'pool_type': 'last',
      },
      # The kind of tokenizer (vit_jax/data/tokenizers.py: big_vision's text preprocessing of
      # SigLIP, 'siglip', and of SigLIP 2, 'siglip2') and big_vision's vocabulary name.
      'pp': {
        'tokenizer_name': 'siglip2' if vocab == 'gemma' else 'siglip',
        'tokenizer': vocab,
        'vocab_path': SIGLIP_VOCABULARIES[vocab],
        'size': size,
        'max_len': length,
      },
      'temperature_init': 10.0,
      'bias_init': -10.0,
      'npz_layout': 'big_vision',
    }
  )


def release_path(name: str) -> str:
  """The released file of an image-text preset: gs://vit_models/lit/NAME.npz for LiT's, big_vision's
  gs:// file for SigLIP's."""
  if name in SIGLIP_PRESETS:
    return SIGLIP_PRESETS[name][-1]
  return f'gs://vit_models/lit/{name}.npz'


def _mixer_config(name: str) -> ml_collections.ConfigDict:
  width, patch, _ = MIXER_PRESETS[name]
  hidden, blocks, tokens_mlp, channels_mlp = MIXER_WIDTHS[width]
  return ml_collections.ConfigDict(
    {
      'model_name': name,
      'patches': {'size': (patch, patch)},
      'hidden_dim': hidden,
      'num_blocks': blocks,
      'tokens_mlp_dim': tokens_mlp,
      'channels_mlp_dim': channels_mlp,
    }
  )


def get_model_config(name: str) -> ml_collections.ConfigDict:
  """The model ConfigDict of a preset, e.g. 'ViT-B_16', 'R50+ViT-B_16' or 'Mixer-B_16'; its fields
  are the arguments of VisionTransformer, or of MlpMixer for a Mixer (see `is_mixer`), or of
  LitModel for a LiT model ('LiT-B16B', ...: `family` 'lit')."""
  if name in MIXER_PRESETS:
    return _mixer_config(name)
  if name in LIT_PRESETS:
    return _lit_config(name)
  if name not in PRESETS:
    raise ValueError(
      f'Unknown model {name!r}; valid names: {", ".join(MODEL_NAMES + tuple(LIT_PRESETS))}.'
    )
  width, patch, resnet_layers, dropout, classifier, _ = PRESETS[name]
  return _vit_config(name, width, patch, resnet_layers, dropout, classifier)


def _vit_config(
  name, width, patch, resnet_layers, dropout, classifier
) -> ml_collections.ConfigDict:
  hidden, layers, mlp, heads = WIDTHS[width]
  config = ml_collections.ConfigDict()
  config.model_name = name
  config.patches = ml_collections.ConfigDict({'size': (patch, patch)})
  config.hidden_size = hidden
  config.transformer = ml_collections.ConfigDict(
    {
      'num_layers': layers,
      'mlp_dim': mlp,
      'num_heads': heads,
      'dropout_rate': dropout,
      # Stochastic depth (the deepest block's rate).
      'attention_dropout_rate': 0.0,
      'drop_path_rate': 0.0,
    }
  )
  config.classifier = classifier  # 'token', 'gap', 'map', 'unpooled' or 'token_unpooled'.
  config.posemb = 'learn'  # Or 'sincos2d' (fixed, no parameter).
  # None; typed, so the command line can set it.
  config.representation_size = config_dict.placeholder(int)
  config.head_bias_init = 0.0  # E.g. -10 with the sigmoid loss (ImageNet-21k pretraining).
  config.resnet = None
  if resnet_layers is not None:
    # A float: 0.5 too.
    config.resnet = ml_collections.ConfigDict({'num_layers': resnet_layers, 'width_factor': 1.0})
  return config


def stem_stride(num_layers) -> int:
  """The total down-sampling factor of the hybrid models' ResNet stem with `num_layers` blocks per
  stage."""
  return 4 * 2 ** max(len(num_layers) - 1, 0)


def _stride(model_config) -> int:
  stem = model_config.get('resnet')
  return 1 if stem is None else stem_stride(tuple(stem['num_layers']))


def token_pixels(model_config) -> int:
  """Input pixels per token side: the patch size times the ResNet stem's stride (square patches)."""
  return _stride(model_config) * model_config['patches']['size'][0]


def token_grid(model_config, image_size) -> tuple[int, int]:
  """The (rows, cols) patch grid that `model_config` produces for `image_size` (int or (h, w))."""
  h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  stride = _stride(model_config)
  ph, pw = model_config['patches']['size']
  return h // (stride * ph), w // (stride * pw)


def has_class_token(classifier: str) -> bool:
  """Whether a ViT with this `classifier` (model.classifier) prepends a class token to the
  patches."""
  return classifier in ('token', 'token_unpooled')


def image_size_for_tokens(model_config, num_tokens: int) -> int | None:
  """The square image size that gives `num_tokens` patch tokens (class token not counted) with
  `model_config`'s patches and stem, or None when `num_tokens` is not a square number."""
  side = math.isqrt(num_tokens)
  return side * token_pixels(model_config) if side * side == num_tokens else None
