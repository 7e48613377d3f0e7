"""The model's fields (config.model and config.image_size), per model family: an MLP-Mixer's, a
ViT's (or hybrid's), a LiT model's towers. Part of the config check (vit_jax/configs/check.py), with
its wording; no JAX."""

import math

from vit_jax.configs import choices, presets
from vit_jax.configs.values import choice as _choice
from vit_jax.configs.values import number as _number


def problems(config, out: list[str]) -> None:
  """Appends to `out` a line for every bad model field of `config`."""
  {'mixer': _mixer, 'lit': _lit, 'vit': _vit}[presets.family(config.model)](config, out)


def _patch_size(model, problems, prefix: str = 'model'):
  """The model's patch size (h, w), or None after naming it in `problems` when it is not a pair of
  positive ints."""
  size = model.patches.size
  if not (
    isinstance(size, (tuple, list))
    and len(size) == 2
    and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
  ):
    problems.append(
      f'config.{prefix}.patches.size={size!r} must be a pair of positive integers (height, width), '
      f'e.g. (16, 16); on the command line --config.{prefix}.patches.size="(16, 16)".'
    )
    return None
  return tuple(size)


def _mixer(config, problems) -> None:
  """An MLP-Mixer's fields, its image size, and the fast paths that only a ViT has."""
  model = config.model
  image_size = config.image_size
  size = _patch_size(model, problems)
  for field in ('hidden_dim', 'num_blocks', 'tokens_mlp_dim', 'channels_mlp_dim'):
    _number(problems, f'model.{field}', model[field], low=1, integer=True)
  if (
    size is not None
    and isinstance(image_size, int)
    and image_size > 0
    and (image_size % size[0] or image_size % size[1])
  ):
    px = math.lcm(*size)
    problems.append(
      f'config.image_size={image_size} is not a multiple of the {size[0]}x{size[1]} '
      f'patches of {model.get("model_name") or "the model"}; e.g. use '
      f'{max(px, image_size // px * px)} (a pretrained Mixer takes the size it was '
      'trained at: its token-mixing MLP is sized by the number of patches).'
    )
  if config.scan_layers is True:
    problems.append(
      'config.scan_layers=True is for ViTs: an MLP-Mixer is built unrolled (a scanned model would '
      "store its blocks stacked, not in the release files' MixerBlock_<i> layout); set it to False."
    )
  if config.attention != 'plain':
    problems.append(
      f'config.attention={config.attention!r} chooses how a ViT computes attention, and an '
      "MLP-Mixer has none; leave it 'plain'."
    )
  if config.fused_qkv is True:
    problems.append(
      'config.fused_qkv=True fuses the query/key/value matmuls of '
      'ViT attention, and an MLP-Mixer has none; set it to False.'
    )


def _model_problems(model, image_size, problems, prefix: str = 'model') -> None:
  """A ViT's fields (config.<prefix>: a LiT model's image tower is config.model.image) and its image
  size."""
  size = _patch_size(model, problems, prefix)
  _number(problems, f'{prefix}.hidden_size', model.hidden_size, low=1, integer=True)
  t = model.transformer
  for field in ('num_layers', 'mlp_dim', 'num_heads'):
    _number(problems, f'{prefix}.transformer.{field}', t[field], low=1, integer=True)
  if (
    isinstance(t.num_heads, int)
    and t.num_heads > 0
    and isinstance(model.hidden_size, int)
    and (model.hidden_size % t.num_heads)
  ):
    problems.append(
      f'config.{prefix}.hidden_size={model.hidden_size} must be a multiple of '
      f'config.{prefix}.transformer.num_heads={t.num_heads}.'
    )
  for field in ('dropout_rate', 'attention_dropout_rate', 'drop_path_rate'):
    _number(problems, f'{prefix}.transformer.{field}', t[field], low=0, high=1, high_open=True)
  _choice(problems, f'{prefix}.classifier', model.classifier, choices.CLASSIFIERS)
  _choice(problems, f'{prefix}.posemb', model.posemb, choices.POSEMBS)
  if model.representation_size is not None:
    _number(
      problems, f'{prefix}.representation_size', model.representation_size, low=1, integer=True
    )
  if model.resnet is not None:
    layers = model.resnet.num_layers
    if not isinstance(layers, (tuple, list)) or not all(
      isinstance(n, int) and n > 0 for n in layers
    ):
      problems.append(
        f'config.{prefix}.resnet.num_layers={layers!r} must be a tuple of positive integers.'
      )
      size = None
    _number(
      problems, f'{prefix}.resnet.width_factor', model.resnet.width_factor, low=0, low_open=True
    )
  if size is not None and isinstance(image_size, int) and image_size > 0:
    px = presets.token_pixels(model)
    # A model that drops the remainder (big_vision's So400m/14 at 384 px) takes any size.
    if image_size % px and model.get('patch_remainder') != 'drop':
      problems.append(
        f'config.image_size={image_size} is not a multiple of the {px} px per token of '
        f'{model.get("model_name") or "the model"} (patch size times any ResNet stride); e.g. use '
        f'{max(px, image_size // px * px)}.'
      )


def _vit(config, problems) -> None:
  _model_problems(config.model, config.image_size, problems)


def _embedding_dim(tower_dim, width):
  return tower_dim if tower_dim is not None else width


def _lit(config, problems) -> None:
  """A LiT model (config.model: image tower, text tower, pp, out_dim) and the fast paths it
  refuses; the rules of image-text training (config.lit) are its task's (tasks/image_text.py)."""
  model = config.model
  _model_problems(model.image, config.image_size, problems, 'model.image')
  _choice(problems, 'model.text_model', model.text_model, choices.TEXT_MODELS)
  _choice(problems, 'model.pp.tokenizer_name', model.pp.tokenizer_name, choices.TOKENIZERS)
  _number(problems, 'model.pp.max_len', model.pp.max_len, low=2, integer=True)
  if config.image_size != model.pp.size:
    problems.append(
      f'config.image_size={config.image_size} differs from '
      f'config.model.pp.size={model.pp.size} (the size its image preprocessing '
      'gives, e.g. in vit_jax.predict): set both to the same value.'
    )
  out_dim = (
    tuple(model.out_dim)
    if isinstance(model.out_dim, (tuple, list))
    else (model.out_dim, model.out_dim)
  )
  if len(out_dim) != 2 or not all(d is None or (isinstance(d, int) and d > 0) for d in out_dim):
    problems.append(
      f'config.model.out_dim={model.out_dim!r} must be (image, text) embedding sizes, each a '
      "positive integer or None (no head: the tower's own width)."
    )
  else:
    image = _embedding_dim(
      out_dim[0], model.image.get('representation_size') or model.image.hidden_size
    )
    text = _embedding_dim(out_dim[1], model.text.get('width', 'the BERT width'))
    if image != text:
      problems.append(
        f'config.model.out_dim={model.out_dim!r} gives image embeddings of size {image} and text '
        f'embeddings of size {text}: they must be equal (set out_dim to (None, {image}) or give '
        'both towers a head of one size).'
      )
  fast = {
    'scan_layers': False,
    'attention': 'plain',
    'fused_qkv': False,
    'remat_policy': 'none',
    'dtype': 'float32',
  }
  for name, default in fast.items():
    if config[name] != default:
      problems.append(
        f'config.{name}={config[name]!r}: a LiT model is built as the released files compute it, '
        f'without the ViT fast paths or another compute dtype; leave it {default!r}.'
      )
