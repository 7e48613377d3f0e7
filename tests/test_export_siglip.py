"""vit_jax/export_siglip.py: a SigLIP model (big_vision's file, tests/data/siglip2_tiny.npz) as a
Hugging Face SiglipModel with our embeddings, t and b; refusals name what cannot be expressed."""

import json
import os

import numpy as np
import pytest
import tiny

from vit_jax import export, export_siglip, models
from vit_jax.configs import presets


def test_the_tensors_and_config_have_siglips_names_and_shapes():
  model = tiny.siglip()
  variables = model.load_variables(os.path.join(tiny.DATA, 'siglip2_tiny.npz'))
  tensors = export_siglip.hf_state_dict(model, variables['params'])
  assert tensors['vision_model.head.attention.in_proj_weight'].shape == (24, 8)
  assert tensors['vision_model.embeddings.position_embedding.weight'].shape == (4, 8)
  assert tensors['text_model.encoder.layers.1.self_attn.q_proj.weight'].shape == (8, 8)
  assert tensors['text_model.embeddings.token_embedding.weight'].shape == (50, 8)
  np.testing.assert_allclose(tensors['logit_bias'], tiny.siglip_expected('siglip2_tiny')['b'])
  config = export_siglip.hf_config(model)
  assert (config['vision_config']['image_size'], config['text_config']['projection_size']) == (
    16,
    8,
  )


def test_models_siglip_cannot_express_are_refused_by_name():
  model = tiny.siglip()
  bad = model.clone(image={**model.image, 'classifier': 'token'}, out_dim=(8, None))
  problems = export_siglip.unsupported(bad)
  assert any("'map'" in p for p in problems) and any('no text head' in p for p in problems)
  assert any('an image head' in p for p in problems)
  assert export_siglip.unsupported(models.get_model('SigLIP2-g-opt_16-384')) == []
  assert export_siglip.unsupported(models.get_model('SigLIP-So400m_16-256-i18n')) == [
    'no text head (out_dim[1] is None); SiglipModel has one'
  ]


def test_transformers_reads_the_export_with_equal_embeddings(tmp_path, monkeypatch):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  model = tiny.siglip()
  monkeypatch.setitem(presets.SIGLIP_PRESETS, 'SigLIP-tiny', None)
  monkeypatch.setattr(models, 'get_model', lambda name, **kw: model)
  out = tmp_path / 'hf'
  ckpt = os.path.join(tiny.DATA, 'siglip2_tiny.npz')
  assert export.main(['hf', '--model=SigLIP-tiny', f'--checkpoint={ckpt}', f'--out={out}']) == 0
  assert json.loads((out / 'config.json').read_text())['architectures'] == ['SiglipModel']
  want = tiny.siglip_expected('siglip2_tiny')
  hf = transformers.SiglipModel.from_pretrained(str(out)).eval()
  with torch.no_grad():
    pixels = torch.from_numpy(want['images']).permute(0, 3, 1, 2)
    zimg = hf.get_image_features(pixel_values=pixels)
    ztxt = hf.get_text_features(input_ids=torch.from_numpy(want['tokens']).long())

  # get_*_features are before normalisation (a tensor, or in Transformers 5 an output whose
  # pooler_output it is); ours (and big_vision's) after.
  def norm(z):
    z = getattr(z, 'pooler_output', z)
    return (z / z.norm(dim=-1, keepdim=True)).numpy()

  np.testing.assert_allclose(norm(zimg), want['zimg'], atol=1e-5)
  np.testing.assert_allclose(norm(ztxt), want['ztxt'], atol=1e-5)
  np.testing.assert_allclose(hf.logit_scale.exp().detach().numpy(), want['t'], rtol=1e-6)
  np.testing.assert_allclose(hf.logit_bias.detach().numpy(), want['b'], rtol=1e-6)
