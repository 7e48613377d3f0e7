"""Writes tests/data/siglip*_tiny*.npz with big_vision's own code (not this package's): tiny SigLIP
two-tower models built by big_vision's `two_towers.Model` (its `vit` image tower with the MAP head,
its `text_transformer` text tower), saved as big_vision saves them, and their outputs on fixed
inputs. tests/test_siglip.py loads the files through vit_jax and compares.

How it was made (once; the files are committed):
  git clone https://github.com/google-research/big_vision /tmp/bv   # (tested at 0127fb6)
  BIG_VISION_DIR=/tmp/bv PYTHONPATH=. python tests/data/make_siglip_fixture.py

Two files, the two layouts of the releases:
  siglip_tiny.npz    SigLIP 1 style: unscanned blocks (`img/Transformer/encoderblock_N`), text
                     pooled on the last token, a text head.
  siglip2_tiny.npz   SigLIP 2 style: scanned blocks (`img/Transformer/encoderblock/...`,
                     `txt/Encoder_0/encoderblock/...`, a leading layer axis).
Each holds the parameters under `params/` (as big_vision's checkpoints do); NAME_expected.npz holds
the inputs (`images`, `tokens`) and big_vision's outputs (`zimg`, `ztxt`, `t` = exp(t), `b`).
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

TOWER = dict(width=8, depth=2, mlp_dim=16, num_heads=2)
IMAGE_SIZE, PATCH, VOCAB, LENGTH, OUT = 16, 8, 50, 6, 8


def model_config(scan: bool) -> dict:
  """big_vision's two_towers config of the tiny model (as its SigLIP demo colabs configure one)."""
  return dict(
    image_model='vit',
    image=dict(**TOWER, patch_size=(PATCH, PATCH), pool_type='map', scan=scan),
    text_model='proj.image_text.text_transformer',
    text=dict(**TOWER, vocab_size=VOCAB, scan=scan),
    out_dim=(None, OUT),
    bias_init=-10.0,
    temperature_init=10.0,
  )


def flatten(tree, prefix=''):
  out = {}
  for k, v in tree.items():
    name = f'{prefix}{k}'
    out.update(flatten(v, name + '/') if hasattr(v, 'items') else {name: np.asarray(v)})
  return out


def main():
  sys.path.insert(0, os.environ['BIG_VISION_DIR'])
  from big_vision.models.proj.image_text import two_towers  # noqa: PLC0415

  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (3, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
  tokens = rng.integers(2, VOCAB, (3, LENGTH)).astype(np.int32)
  tokens[:, -2:] = 1  # Sticky EOS padding (token 1), as big_vision's tokenizers pad.
  here = os.path.dirname(os.path.abspath(__file__))
  for name, scan, seed in (('siglip_tiny', False, 1), ('siglip2_tiny', True, 2)):
    model = two_towers.Model(**model_config(scan))
    params = model.init(jax.random.PRNGKey(seed), jnp.asarray(images), jnp.asarray(tokens))[
      'params'
    ]
    # Perturb t and b from their inits, so the test sees them read.
    params = {**params, 't': params['t'] + 0.25, 'b': params['b'] + 0.5}
    zimg, ztxt, out = model.apply({'params': params}, images, tokens)
    arrays = {f'params/{k}': v for k, v in flatten(params).items()}
    np.savez_compressed(os.path.join(here, f'{name}.npz'), **arrays)
    np.savez_compressed(
      os.path.join(here, f'{name}_expected.npz'),
      images=images,
      tokens=tokens,
      zimg=np.asarray(zimg),
      ztxt=np.asarray(ztxt),
      t=np.asarray(out['t']),
      b=np.asarray(out['b']),
    )
    print(name, len(arrays), 'arrays')


if __name__ == '__main__':
  main()
