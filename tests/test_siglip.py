"""SigLIP and SigLIP 2 (vit_jax/models/lit.py, presets.SIGLIP_PRESETS): big_vision's two-tower files
load unchanged and give big_vision's embeddings, t and b; saved files load back in big_vision; the
presets have big_vision's parameter counts; predict gives sigmoid probabilities; the image tower
fine-tunes as a classifier and starts LiT training."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from vit_jax import checkpoint, models, predict, utils
from vit_jax.configs import presets
from vit_jax.models import lit

DATA = tiny.DATA
FIXTURES = ('siglip_tiny', 'siglip2_tiny')  # Made by tests/data/make_siglip_fixture.py.
# big_vision's parameter counts: jax.eval_shape of its own two_towers.Model (big_vision at 0127fb6,
# configured as its SigLIP demo colabs do) on one image and one text of the preset's sizes.
# All 25 presets equal big_vision's (test_every_preset_counts_as_big_visions_own_model, with
# BIG_VISION_DIR); these are checked always.
BIG_VISION_SIZES = {
  'SigLIP-B_16-224': 203_155_970,
  'SigLIP-L_16-256': 652_150_786,
  'SigLIP-So400m_14-224': 877_360_306,
  'SigLIP-B_16-256-i18n': 370_626_050,  # mc4, 250k.
  'SigLIP2-B_16-224': 375_187_970,  # Gemma, 256k.
  'SigLIP2-So400m_16-256': 1_135_670_962,
  'SigLIP2-g-opt_16-256': 1_871_393_906,
}


@pytest.mark.parametrize('name', FIXTURES)
def test_big_vision_files_load_unchanged_and_give_its_embeddings_t_and_b(name):
  want = tiny.siglip_expected(name)
  model = tiny.siglip()
  variables = model.load_variables(os.path.join(DATA, f'{name}.npz'))
  init = jax.eval_shape(
    lambda: model.init(jax.random.key(0), images=want['images'], tokens=want['tokens'])
  )
  checkpoint.check_fits(variables, init, source=name)  # Every array, no more, no less.
  zimg, ztxt, out = model.apply(variables, images=want['images'], tokens=want['tokens'])
  np.testing.assert_allclose(zimg, want['zimg'], atol=2e-6)
  np.testing.assert_allclose(ztxt, want['ztxt'], atol=2e-6)
  np.testing.assert_allclose(out['t'], want['t'], rtol=1e-6)
  np.testing.assert_allclose(out['b'], want['b'], rtol=1e-6)
  assert float(out['b'][0]) == pytest.approx(-9.5) and float(out['t'][0]) > 10


def test_a_saved_model_has_big_vision_names_and_loads_back_to_the_same_embeddings(tmp_path):
  want = tiny.siglip_expected('siglip2_tiny')
  model = tiny.siglip()
  variables = model.load_variables(os.path.join(DATA, 'siglip2_tiny.npz'))
  path = str(tmp_path / 'saved.npz')
  model.save_variables(path, variables)
  with np.load(path) as f:
    names = set(f.files)
  assert {
    'img/pos_embedding',
    'img/MAPHead_0/probe',
    'img/Transformer/encoderblock_1/MultiHeadDotProductAttention_0/query/kernel',
    'txt/Embed_0/embedding',
    'txt/pos_embedding',
    'txt/Encoder_0/encoderblock_1/MlpBlock_0/Dense_0/kernel',
    'txt/head/kernel',
    't',
    'b',
  } <= names
  assert not any('posembed_input' in n or 'MlpBlock_3' in n for n in names)
  before = model.apply(variables, images=want['images'], tokens=want['tokens'])
  again = model.apply(model.load_variables(path), images=want['images'], tokens=want['tokens'])
  np.testing.assert_array_equal(again[0], before[0])
  np.testing.assert_array_equal(again[1], before[1])


def test_a_scanned_text_tower_reads_the_same_files():
  want = tiny.siglip_expected('siglip_tiny')
  model = tiny.siglip(scan=True)
  flat = checkpoint.stack_blocks(checkpoint.canonical_flat(os.path.join(DATA, 'siglip_tiny.npz')))
  assert 'txt/Encoder_0/encoderblock/MlpBlock_0/Dense_0/kernel' in flat
  _, ztxt, _ = model.apply({'params': utils.unflatten_dict(flat)}, tokens=want['tokens'])
  np.testing.assert_allclose(ztxt, want['ztxt'], atol=2e-6)


@pytest.mark.parametrize('pool_type', lit.POOL_TYPES)
def test_every_text_pooling_has_big_vision_parameters(pool_type):
  tower = lit.TextTransformer(8, width=8, num_layers=1, mlp_dim=16, num_heads=2, vocab_size=20)
  tower = tower.clone(pool_type=pool_type)
  tokens = jnp.array([[3, 4, 1, 1]], jnp.int32)
  params = tower.init(jax.random.key(0), tokens)['params']
  assert ('MAPHead_0' in params) == (pool_type == 'map')
  x, out = tower.apply({'params': params}, tokens)
  assert x.shape == (1, 8) and out['pre_logits'].shape == (1, 8)
  with pytest.raises(ValueError, match="Unknown pool_type 'cls'"):
    tower.clone(pool_type='cls').init(jax.random.key(0), tokens)


def _count(model, size, length):
  # Scanned towers: the same parameters (stacked), traced in one block instead of up to 40.
  model = model.clone(image={**model.image, 'scan': True}, text={**model.text, 'scan': True})
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
  params = jax.eval_shape(
    lambda i, t: model.init(jax.random.key(0), images=i, tokens=t), images, tokens
  )['params']
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


@pytest.mark.parametrize('name', sorted(BIG_VISION_SIZES))
def test_presets_have_big_visions_parameter_counts(name):
  model = models.get_model(name)
  assert _count(model, model.pp['size'], model.pp['max_len']) == BIG_VISION_SIZES[name]


def test_presets_list_every_release_with_its_file_and_vocabulary():
  assert len(presets.SIGLIP_PRESETS) == 25 and set(presets.SIGLIP_PRESETS) <= set(
    presets.LIT_PRESETS
  )
  config = presets.get_model_config('SigLIP2-g-opt_16-384')
  assert (config.image.hidden_size, config.image.transformer.num_layers, config.text.width) == (
    1536,
    40,
    1152,
  )
  assert config.out_dim == (None, 1536) and config.text.vocab_size == 256_000
  assert config.pp.tokenizer == 'gemma' and config.pp.max_len == 64 and config.pp.size == 384
  assert config.pp.tokenizer_name == 'siglip2'
  assert presets.get_model_config('SigLIP-B_16-224').pp.tokenizer_name == 'siglip'
  assert presets.release_path('SigLIP2-g-opt_16-384') == (
    'gs://big_vision/siglip2/siglip2_g-opt16_384.npz'
  )
  i18n = presets.get_model_config('SigLIP-B_16-256-i18n')
  assert (i18n.text.vocab_size, i18n.pp.tokenizer) == (250_000, 'mc4')
  assert presets.get_model_config('SigLIP-So400m_14-224').pp.max_len == 16
  assert presets.release_path('SigLIP-So400m_14-384') == (
    'gs://big_vision/siglip/webli_en_so400m_384_58765454.npz'
  )


@pytest.mark.skipif(not os.environ.get('BIG_VISION_DIR'), reason='BIG_VISION_DIR not set')
def test_big_visions_own_code_loads_a_saved_model(tmp_path):
  """big_vision's two_towers.load reads a file saved here, and its model gives our embeddings."""
  sys.path.insert(0, os.environ['BIG_VISION_DIR'])
  from big_vision.models.proj.image_text import two_towers  # noqa: PLC0415  (optional)
  import ml_collections  # noqa: PLC0415

  sys.path.insert(0, DATA)
  import make_siglip_fixture as fixture  # noqa: PLC0415

  want = tiny.siglip_expected('siglip_tiny')
  model = tiny.siglip()
  variables = model.load_variables(os.path.join(DATA, 'siglip_tiny.npz'))
  path = str(tmp_path / 'saved.npz')
  model.save_variables(path, variables)
  config = ml_collections.ConfigDict(fixture.model_config(scan=False))
  bv = two_towers.Model(**config)
  init = bv.init(jax.random.key(0), want['images'], want['tokens'])['params']
  params = two_towers.load(init, path, config)
  zimg, ztxt, out = bv.apply({'params': params}, want['images'], want['tokens'])
  np.testing.assert_allclose(zimg, want['zimg'], atol=2e-6)
  np.testing.assert_allclose(ztxt, want['ztxt'], atol=2e-6)
  np.testing.assert_allclose(out['b'], want['b'])


@pytest.mark.skipif(not os.environ.get('BIG_VISION_DIR'), reason='BIG_VISION_DIR not set')
@pytest.mark.parametrize('name', sorted(presets.SIGLIP_PRESETS))
def test_every_preset_counts_as_big_visions_own_model(name):
  """jax.eval_shape of big_vision's two_towers.Model, configured as its demo colabs do."""
  sys.path.insert(0, os.environ['BIG_VISION_DIR'])
  from big_vision.models.proj.image_text import two_towers  # noqa: PLC0415  (optional)

  image, patch, size, text, length, vocab, head, _ = presets.SIGLIP_PRESETS[name]
  width = presets.WIDTHS[image][0]
  bv = two_towers.Model(
    image=dict(variant=f'{image}/{patch}', pool_type='map'),
    text=dict(variant=text, vocab_size=presets.SIGLIP_VOCAB_SIZES[vocab]),
    out_dim=(None, width if head else None),
    bias_init=-10.0,
  )
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
  theirs = jax.eval_shape(lambda i, t: bv.init(jax.random.key(0), i, t), images, tokens)
  want = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(theirs['params']))
  assert _count(models.get_model(name), size, length) == want


def test_predict_gives_sigmoid_probabilities_of_a_siglip_file(tmp_path, monkeypatch, capsys):
  spm = pytest.importorskip('sentencepiece')
  corpus = tmp_path / 'corpus.txt'
  corpus.write_text('\n'.join(['a photo of a cat', 'a photo of a dog', 'a small bird'] * 20))
  spm.SentencePieceTrainer.train(
    input=str(corpus),
    model_prefix=str(tmp_path / 'sp'),
    vocab_size=30,
    hard_vocab_limit=False,
    minloglevel=2,
  )
  model = tiny.siglip(tokenizer_name='siglip')  # big_vision's SigLIP text preprocessing.
  monkeypatch.setitem(presets.SIGLIP_PRESETS, 'SigLIP-tiny', None)
  monkeypatch.setitem(presets.LIT_PRESETS, 'SigLIP-tiny', None)
  monkeypatch.setattr(models, 'get_model', lambda name, **kw: model)
  image = tmp_path / 'x.png'
  from PIL import Image  # noqa: PLC0415

  Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(image)
  ckpt = os.path.join(DATA, 'siglip_tiny.npz')
  rc = predict.main(
    [
      '--model=SigLIP-tiny',
      f'--checkpoint={ckpt}',
      f'--vocab={tmp_path / "sp.model"}',
      '--classes=cat,dog,bird',
      str(image),
    ]
  )
  assert rc == 0
  # What the demo computes: sigmoid(zimg . ztxt * t + b), one class at a time.
  variables = model.load_variables(ckpt)
  tok = model.get_tokenizer(str(tmp_path / 'sp.model'))
  pixels = model.get_image_preprocessing()([np.asarray(Image.open(image))])
  zimg, ztxt, out = model.apply(
    variables, images=pixels, tokens=tok([f'a photo of a {c}.' for c in ('cat', 'dog', 'bird')])
  )
  probs = 1 / (1 + np.exp(-(np.asarray(zimg) @ np.asarray(ztxt).T * out['t'] + out['b'])))
  printed = capsys.readouterr().out
  for p in probs[0]:
    assert f'{p:.3f}' in printed
  assert probs.max() < 0.5  # Sigmoids: they do not sum to one.


def test_a_classifier_fine_tunes_from_the_image_tower_of_a_siglip_file():
  model_config = tiny.vit_config('map', hidden=8, layers=2, mlp=16, heads=2, patch=8)
  vit = models.VisionTransformer(num_classes=5, **model_config)
  init = vit.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']  # 4 x 4 patches.
  params = checkpoint.load_pretrained(
    pretrained_path=os.path.join(DATA, 'siglip2_tiny.npz'),
    init_params=init,
    model_config=model_config,
  )
  file = checkpoint.canonical_flat(os.path.join(DATA, 'siglip2_tiny.npz'))
  flat = utils.flatten_dict(params)
  np.testing.assert_array_equal(flat['MAPHead_0/probe'], file['img/MAPHead_0/probe'])
  posemb = flat['Transformer/posembed_input/pos_embedding']
  assert posemb.shape == (1, 16, 8)  # Resampled from the file's 2 x 2 grid.
  np.testing.assert_allclose(
    posemb,
    checkpoint.interpolate_posembed(
      file['img/Transformer/posembed_input/pos_embedding'], 16, has_class_token=False
    ),
  )
  np.testing.assert_array_equal(flat['head/kernel'], 0)  # A new head.
  assert not any(k.startswith(('txt/', 'img/')) for k in flat)


def test_lit_training_starts_from_the_image_tower_of_a_siglip_file():
  from vit_jax.configs import common  # noqa: PLC0415
  from vit_jax.tasks import image_text  # noqa: PLC0415

  config = common.get_config()
  config.model = presets.get_model_config('LiT-L16Ti')
  config.model.image = tiny.vit_config('map', hidden=8, layers=2, mlp=16, heads=2, patch=8)
  config.model.text = {'width': 8, 'num_layers': 1, 'mlp_dim': 16, 'num_heads': 2, 'vocab_size': 9}
  config.model.out_dim = (None, 8)
  config.model.pp.size, config.model.pp.max_len = 32, 4
  config.image_size, config.loss = 32, 'sigmoid'
  config.lit.image_init = os.path.join(DATA, 'siglip_tiny.npz')
  task = image_text.TASK
  model = task.build_model(config, 0)
  init = task.init_params(model, jax.random.key(0), 32)
  params = task.load_pretrained(config, init)
  file = checkpoint.canonical_flat(config.lit.image_init)
  img = utils.flatten_dict(params['img'])
  np.testing.assert_array_equal(img['MAPHead_0/probe'], file['img/MAPHead_0/probe'])
  assert img['Transformer/posembed_input/pos_embedding'].shape == (1, 16, 8)  # From 2 x 2.
  # The text tower, t and b keep their init (the file's are not used).
  jax.tree.map(np.testing.assert_array_equal, params['txt'], init['txt'])
  assert float(params['b'][0]) == config.lit.bias_init
