"""Two-tower image-text models without flaxformer or TensorFlow: LiT (Locked-image Tuning,
https://arxiv.org/abs/2111.07991) as google-research/vision_transformer has them, and SigLIP /
SigLIP 2 as big_vision's two_towers.py has them (presets 'SigLIP-B_16-224',
'SigLIP2-So400m_14-384', ...: presets.SIGLIP_PRESETS; their released files load unchanged, and
`save_variables` writes big_vision's layout, which its `two_towers.load` reads).

`LitModel` takes the reference's config fields (vit_jax/configs/presets.py, LIT_PRESETS: `image`,
`text_model`, `text`, `pp`, `out_dim`, `model_name`) and its parameter tree is the released files':
  img/...   a VisionTransformer (head to out_dim[0], none when None)
  txt/...   'bert': BertModel (vit_jax/models/bert.py, flaxformer's layout), the [CLS] token's
            encoding; 'text_transformer': TextTransformer below, the *last* token's encoding
            (SentencePiece's sticky '</s>')
  t         the log temperature: logits = exp(t) * zimg @ ztxt.T
  b         only with `bias_init` (SigLIP's sigmoid loss): logits = exp(t) * zimg @ ztxt.T + b,
            sigmoid(logits) the probability that an image and a text match
A SigLIP model is the same tree: `img/` big_vision's ViT with the MAP head (`MAPHead_0`) and no
head, `txt/` the TextTransformer (`Embed_0`, `pos_embedding`, `Encoder_0/encoderblock_N`, `head`).
`model.apply(variables, images=..., tokens=...)` -> (zimg, ztxt, out): the L2-normalised embeddings
(None for a tower not called) and `out` with each tower's intermediate values and `t` = exp(t).
"""

import os
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vit_jax import checkpoint, io, utils
from vit_jax.configs import presets
from vit_jax.data import preprocess, tokenizers
from vit_jax.models.bert import BertModel
from vit_jax.models.vit import Encoder, MAPHead, VisionTransformer

BASE_PATH = 'gs://vit_models/lit'
# TextTransformer's poolings (big_vision's names and aliases).
POOL_TYPES = ('last', 'first', 'gap', 'mean', 'max', 'gmp', 'map')
# How `save_variables` (and a run's params.npz) writes the tree: vision_transformer's LiT files or
# big_vision's two_towers files (SigLIP's).
NPZ_LAYOUTS = ('release', 'big_vision')


class TextTransformer(nn.Module):
  """big_vision's text transformer (models/proj/image_text/text_transformer.py), which LiT's small
  text towers also are: token embedding `Embed_0`, a learned `pos_embedding`, a ViT encoder
  `Encoder_0` (pre-LN blocks, no position embedding of its own; `scan` stacks its blocks as
  big_vision's does), pooling by `pool_type` and a `head` (none when `num_classes` is None).

  `pool_type`: 'last' (the last token: SentencePiece's sticky '</s>'), 'first', 'gap' (or 'mean'),
  'max' (or 'gmp') or 'map' (attention pooling, `MAPHead_0`). big_vision's token embedding is tied
  to its vocabulary logits (`Embed_0.attend`), which no contrastive output uses: not computed."""

  num_classes: int | None
  width: int = 512
  num_layers: int = 12
  mlp_dim: int = 2048
  num_heads: int = 8
  dropout_rate: float = 0.0
  vocab_size: int = 32_000
  pool_type: str = 'last'
  scan: bool = False

  @nn.compact
  def __call__(self, x):
    if self.pool_type not in POOL_TYPES:
      raise ValueError(f'Unknown pool_type {self.pool_type!r}; valid: {", ".join(POOL_TYPES)}.')
    out = {}
    x = out['embedded'] = nn.Embed(num_embeddings=self.vocab_size, features=self.width)(x)
    _, length, width = x.shape
    x = x + self.param(
      'pos_embedding',
      nn.initializers.normal(stddev=1 / np.sqrt(width)),
      (1, length, width),
      x.dtype,
    )
    x = out['transformed'] = Encoder(
      num_layers=self.num_layers,
      mlp_dim=self.mlp_dim,
      num_heads=self.num_heads,
      dropout_rate=self.dropout_rate,
      learned_posemb=False,
      scan=self.scan,
      name='Encoder_0',
    )(x, train=False)
    if self.pool_type == 'last':
      x = x[:, -1, :]
    elif self.pool_type == 'first':
      x = x[:, 0, :]
    elif self.pool_type in ('gap', 'mean'):
      x = x.mean(axis=1)
    elif self.pool_type in ('max', 'gmp'):
      x = x.max(axis=1)
    else:
      x = MAPHead(self.mlp_dim, self.num_heads, name='MAPHead_0')(x, train=False)
    out['pre_logits'] = x
    if self.num_classes:
      x = out['logits'] = nn.Dense(self.num_classes, name='head')(x)
    return x, out


def _normalised(z):
  norm = jnp.linalg.norm(z, axis=1, keepdims=True)
  return norm, z / (norm + 1e-8)


class LitModel(nn.Module):
  """vision_transformer's LitModel (module doc); `models.get_model('LiT-B16B')` builds one from its
  preset."""

  image: Any
  text_model: str
  text: Any
  pp: Any
  out_dim: Any
  model_name: str
  # exp(t) at init (training from scratch; released files hold their t).
  temperature_init: float = 1.0
  # With a value, a parameter `b` (SigLIP's sigmoid-loss bias), out['b'].
  bias_init: float | None = None
  npz_layout: str = 'release'  # NPZ_LAYOUTS: how its files are saved.

  def load_variables(self, path: str | None = None, cache: bool = True) -> dict:
    """The variables of a released (or saved) LiT or SigLIP file, for `model.apply`. Without
    `path`: ./<model_name>.npz when it exists, else the preset's release (`presets.release_path`:
    gs://vit_models/lit/<model_name>.npz, big_vision's gs://big_vision/siglip*/...), copied to
    ./<model_name>.npz first when `cache`."""
    if path is None:
      local = f'{self.model_name}.npz'
      path = presets.release_path(self.model_name)
      if not os.path.exists(local) and cache:
        print('Loading params from cloud:', path)
        io.write_bytes(local, io.read_bytes(path))
      if os.path.exists(local):
        path = local
    return {'params': utils.unflatten_dict(checkpoint.canonical_flat(path))}

  def save_variables(self, path: str, variables) -> None:
    """Writes `variables['params']` as an .npz in this model's `npz_layout` (`checkpoint.save_npz`);
    `load_variables` reads it back."""
    checkpoint.save_npz(path, variables['params'], layout=self.npz_layout)

  @property
  def vocab_path(self) -> str:
    if self.pp.get('vocab_path'):  # A SigLIP preset's: big_vision's vocabulary.
      return self.pp['vocab_path']
    ext = {'bert': 'txt', 'sentencepiece': 'model'}[self.pp['tokenizer_name']]
    return f'{BASE_PATH}/{self.model_name}.{ext}'

  def get_tokenizer(self, vocab_path: str | None = None):
    """The text tower's tokenizer (vit_jax/data/tokenizers.py), from `vocab_path` or the release's
    vocabulary file."""
    return tokenizers.get_tokenizer(self.pp['tokenizer_name'])(
      vocab_path=vocab_path or self.vocab_path, max_len=self.pp['max_len']
    )

  def get_image_preprocessing(self, crop: bool = False):
    """A function: uint8 images [H, W, 3] -> float32 [n, size, size, 3] in [-1, 1]
    (vit_jax/data/preprocess.py's PreprocessImages)."""
    return preprocess.PreprocessImages(size=self.pp['size'], crop=crop)

  def get_pp(self, crop: bool = False, vocab_path: str | None = None):
    """A function on one example's features: 'image' (uint8) is resized as
    `get_image_preprocessing`, and 'text' is tokenized into a new feature 'tokens'; other features
    pass."""
    return preprocess.get_pp(
      tokenizer_name=self.pp['tokenizer_name'],
      vocab_path=vocab_path or self.vocab_path,
      max_len=self.pp['max_len'],
      size=self.pp['size'],
      crop=crop,
    )

  @nn.compact
  def __call__(self, *, images=None, tokens=None):
    zimg = ztxt = None
    out = {}
    out_dims = (
      (self.out_dim, self.out_dim) if isinstance(self.out_dim, int) else tuple(self.out_dim)
    )
    if tokens is not None:
      towers = {'bert': BertModel, 'text_transformer': TextTransformer}
      if self.text_model not in towers:
        raise ValueError(f'Unknown text_model {self.text_model!r}; valid: {", ".join(towers)}.')
      ztxt, out_txt = towers[self.text_model](
        **{'num_classes': out_dims[1], **(self.text or {})}, name='txt'
      )(tokens)
      out.update({f'txt/{k}': v for k, v in out_txt.items()})
      out['txt/norm'], ztxt = _normalised(ztxt)
      out['txt/normalized'] = ztxt
    if images is not None:
      zimg = VisionTransformer(**{**self.image, 'num_classes': out_dims[0]}, name='img')(
        images, train=False
      )
      out['img/norm'], zimg = _normalised(zimg)
      out['img/normalized'] = zimg
    t_init = nn.initializers.constant(float(np.log(self.temperature_init)))
    out['t'] = jnp.exp(self.param('t', t_init, (1,), jnp.float32))
    if self.bias_init is not None:
      out['b'] = self.param('b', nn.initializers.constant(self.bias_init), (1,), jnp.float32)
    return zimg, ztxt, out
