"""LiT image-text models (Locked-image Tuning, https://arxiv.org/abs/2111.07991) as
google-research/vision_transformer has them, without flaxformer or TensorFlow.

`LitModel` takes the reference's config fields (vit_jax/configs/presets.py, LIT_PRESETS: `image`,
`text_model`, `text`, `pp`, `out_dim`, `model_name`) and its parameter tree is the released files':
  img/...   a VisionTransformer (head to out_dim[0], none when None)
  txt/...   'bert': BertModel (vit_jax/models/bert.py, flaxformer's layout), the [CLS] token's
            encoding; 'text_transformer': TextTransformer below, the *last* token's encoding
            (SentencePiece's sticky '</s>')
  t         the log temperature: logits = exp(t) * zimg @ ztxt.T
  b         only with `bias_init` (SigLIP's sigmoid loss, training here): logits = exp(t) * zimg @
            ztxt.T + b
`model.apply(variables, images=..., tokens=...)` -> (zimg, ztxt, out): the L2-normalised embeddings
(None for a tower not called) and `out` with each tower's intermediate values and `t` = exp(t).
"""

import os
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vit_jax import checkpoint, io, utils
from vit_jax.data import preprocess, tokenizers
from vit_jax.models.bert import BertModel
from vit_jax.models.vit import Encoder, VisionTransformer

BASE_PATH = 'gs://vit_models/lit'


class TextTransformer(nn.Module):
  """The reference's small text tower: token embedding, a learned position embedding, a ViT encoder
  (pre-LN blocks, no position embedding of its own) and a head on the last token."""

  num_classes: int
  width: int = 512
  num_layers: int = 12
  mlp_dim: int = 2048
  num_heads: int = 8
  dropout_rate: float = 0.0
  vocab_size: int = 32_000

  @nn.compact
  def __call__(self, x):
    out = {}
    x = out['embedded'] = nn.Embed(num_embeddings=self.vocab_size, features=self.width)(x)
    _, length, width = x.shape
    x = x + self.param(
      'pos_embedding',
      nn.initializers.normal(stddev=1 / np.sqrt(width)),
      (1, length, width),
      x.dtype,
    )
    x = Encoder(
      num_layers=self.num_layers,
      mlp_dim=self.mlp_dim,
      num_heads=self.num_heads,
      dropout_rate=self.dropout_rate,
      learned_posemb=False,
      name='Encoder_0',
    )(x, train=False)
    x = out['pre_logits'] = x[:, -1, :]
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

  def load_variables(self, path: str | None = None, cache: bool = True) -> dict:
    """The variables of a released (or saved) LiT file, for `model.apply`. Without `path`:
    ./<model_name>.npz when it exists, else gs://vit_models/lit/<model_name>.npz (copied to
    ./<model_name>.npz first when `cache`)."""
    if path is None:
      local = f'{self.model_name}.npz'
      path = f'{BASE_PATH}/{self.model_name}.npz'
      if not os.path.exists(local) and cache:
        print('Loading params from cloud:', path)
        io.write_bytes(local, io.read_bytes(path))
      if os.path.exists(local):
        path = local
    return {'params': utils.unflatten_dict(checkpoint.canonical_flat(path))}

  @property
  def vocab_path(self) -> str:
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
