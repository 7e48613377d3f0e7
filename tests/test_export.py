"""vit_jax.export: the Hugging Face ViTForImageClassification layout, checked without and (if
installed) with torch."""

import json
import os

import numpy as np
import pytest
import tiny

from vit_jax import checkpoint, export, models, utils
from vit_jax.configs import common
from vit_jax.inference import trained as inference

HIDDEN, HEADS, LAYERS = 32, 2, 2


def _trained(posemb='learn'):
  """A tiny model with a random (non-zero) head and peaked attention, as `inference` would load it
  (with every model field a run's config.json has)."""
  config = common.get_config()
  config.model = tiny.vit_config()
  config.model.posemb = posemb
  config.model.transformer.drop_path_rate = 0.1  # Training only: exported as if absent.
  config.image_size = 16
  model = models.VisionTransformer(num_classes=3, **config.model)
  params = tiny.params_with_head(model, qk_scale=3.0)
  return inference.Trained(config, model, params, ['cat', 'dog', 'eel'], 'test')


@pytest.fixture(scope='module')
def trained():
  return _trained()


def test_fixed_sincos_position_embeddings_become_the_hf_table():
  sincos = _trained('sincos2d')
  assert 'Transformer' not in sincos.params or 'posembed_input' not in sincos.params['Transformer']
  with pytest.raises(ValueError, match='image_size'):
    export.hf_state_dict(sincos.params, sincos.config.model)
  table = export.hf_state_dict(sincos.params, sincos.config.model, 16)[
    'vit.embeddings.position_embeddings'
  ]
  assert table.shape == (1, 17, 32)
  np.testing.assert_array_equal(table[0, 0], 0.0)  # The class token gets none.
  np.testing.assert_allclose(
    table[0, 1:], models.vit.posemb_sincos_2d(4, 4, 32).reshape(16, 32), rtol=1e-6
  )


def test_tensor_names_shapes_and_transposes(trained):
  p = utils.flatten_dict(trained.params)
  sd = export.hf_state_dict(trained.params, trained.config.model)
  block = {
    'layernorm_before.weight': (32,),
    'layernorm_before.bias': (32,),
    'layernorm_after.weight': (32,),
    'layernorm_after.bias': (32,),
    'intermediate.dense.weight': (64, 32),
    'intermediate.dense.bias': (64,),
    'output.dense.weight': (32, 64),
    'output.dense.bias': (32,),
    'attention.output.dense.weight': (32, 32),
    'attention.output.dense.bias': (32,),
  }
  block.update(
    {
      f'attention.attention.{n}.{w}': (32, 32) if w == 'weight' else (32,)
      for n in ('query', 'key', 'value')
      for w in ('weight', 'bias')
    }
  )
  expected = {f'vit.encoder.layer.{i}.{k}': v for i in range(LAYERS) for k, v in block.items()}
  expected.update(
    {
      'vit.embeddings.cls_token': (1, 1, 32),
      'vit.embeddings.position_embeddings': (1, 17, 32),
      'vit.embeddings.patch_embeddings.projection.weight': (32, 3, 4, 4),
      'vit.embeddings.patch_embeddings.projection.bias': (32,),
      'vit.layernorm.weight': (32,),
      'vit.layernorm.bias': (32,),
      'classifier.weight': (3, 32),
      'classifier.bias': (3,),
    }
  )
  assert {k: v.shape for k, v in sd.items()} == expected
  assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in sd.values())
  # Conv2d weight [out, in, kh, kw] from our kernel [kh, kw, in, out].
  np.testing.assert_array_equal(
    sd['vit.embeddings.patch_embeddings.projection.weight'][5, 2, 1, 3],
    p['embedding/kernel'][1, 3, 2, 5],
  )
  # Linear [out, in]; query/key/value outputs are (head, head_dim) flattened head-major, as HF
  # splits them.
  attn = 'Transformer/encoderblock_1/MultiHeadDotProductAttention_0/'
  head_dim = HIDDEN // HEADS
  np.testing.assert_array_equal(
    sd['vit.encoder.layer.1.attention.attention.key.weight'][1 * head_dim + 3, 7],
    p[attn + 'key/kernel'][7, 1, 3],
  )
  np.testing.assert_array_equal(
    sd['vit.encoder.layer.1.attention.attention.key.bias'][head_dim + 3], p[attn + 'key/bias'][1, 3]
  )
  np.testing.assert_array_equal(
    sd['vit.encoder.layer.1.attention.output.dense.weight'][7, head_dim + 3],
    p[attn + 'out/kernel'][1, 3, 7],
  )
  np.testing.assert_array_equal(
    sd['vit.encoder.layer.0.intermediate.dense.weight'],
    p['Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel'].T,
  )
  np.testing.assert_array_equal(sd['classifier.weight'], p['head/kernel'].T)
  np.testing.assert_array_equal(sd['vit.layernorm.weight'], p['Transformer/encoder_norm/scale'])


def test_a_scanned_model_exports_the_same_tensors(trained):
  stacked = utils.unflatten_dict(checkpoint.stack_blocks(utils.flatten_dict(trained.params)))
  a = export.hf_state_dict(trained.params, trained.config.model)
  b = export.hf_state_dict(stacked, trained.config.model)
  assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
  'config, message',
  [
    (tiny.hybrid_config(), 'hybrid ResNet stem'),
    (tiny.vit_config('gap'), "classifier='gap'"),
    (tiny.vit_config('token_unpooled'), "classifier='token_unpooled'"),
    (tiny.vit_config(representation_size=16), r'pre-logits layer \(representation_size=16\)'),
  ],
  ids=['hybrid', 'gap', 'unpooled', 'pre_logits'],
)
def test_what_hf_vit_cannot_express_is_refused_by_name(config, message, trained):
  with pytest.raises(
    export.UnsupportedModelError, match='Cannot export to ViTForImageClassification: .*' + message
  ):
    # Refused for the config, before any tensor is converted.
    export.hf_state_dict(trained.params, config)


def test_unknown_model_fields_and_stray_parameters_are_refused(trained):
  config = tiny.vit_config()
  config.register_tokens = 4  # A field this export does not know: never silently dropped.
  with pytest.raises(
    export.UnsupportedModelError, match='model.register_tokens=4, which this export does not'
  ):
    export.hf_state_dict(trained.params, config)
  config = tiny.vit_config()
  config.posemb = 'rope'
  with pytest.raises(
    export.UnsupportedModelError, match="posemb='rope': HF ViT adds one position embedding"
  ):
    export.hf_state_dict(trained.params, config)
  params = {**trained.params, 'extra': {'kernel': np.zeros((2, 2))}}
  with pytest.raises(
    export.UnsupportedModelError, match=r"no place for the parameters \['extra/kernel'\]"
  ):
    export.hf_state_dict(params, trained.config.model)
  # Dropout: training only.
  assert not export.unsupported(tiny.vit_config(dropout=0.1), trained.params)


def test_config_and_preprocessor_reproduce_our_model_and_input_scaling():
  config = export.hf_config(
    tiny.vit_config(), image_size=16, num_classes=3, class_names=['cat', 'dog', 'eel']
  )
  assert config['layer_norm_eps'] == 1e-6 and config['hidden_act'] == 'gelu_pytorch_tanh'
  assert (
    config['hidden_size'],
    config['num_hidden_layers'],
    config['num_attention_heads'],
    config['intermediate_size'],
    config['image_size'],
    config['patch_size'],
  ) == (32, 2, 2, 64, 16, 4)
  assert (
    config['id2label'] == {'0': 'cat', '1': 'dog', '2': 'eel'} and config['label2id']['eel'] == 2
  )
  assert export.hf_config(tiny.vit_config(), image_size=16, num_classes=2)['id2label'] == {
    '0': '0',
    '1': '1',
  }
  pre = export.preprocessor_config(16)
  x = np.arange(256.0)
  np.testing.assert_allclose(
    (x * pre['rescale_factor'] - pre['image_mean'][0]) / pre['image_std'][0],
    x / 127.5 - 1.0,
    atol=1e-12,
  )
  assert pre['size'] == {'height': 16, 'width': 16} and pre['resample'] == 2  # Bilinear.
  cropped = export.preprocessor_config(224, 0.875)
  assert cropped['size'] == {'height': 256, 'width': 256} and cropped['crop_size'] == {
    'height': 224,
    'width': 224,
  }


def test_export_cli_writes_a_loadable_folder_from_a_run(fitted_run, tmp_path):
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top

  workdir, _ = fitted_run
  out = str(tmp_path / 'hf')
  assert export.main(['hf', f'--workdir={workdir}', f'--out={out}']) == 0
  assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors', 'preprocessor_config.json']
  tensors = safetensors_numpy.load_file(os.path.join(out, 'model.safetensors'))
  params = checkpoint.read_npz(os.path.join(workdir, 'params.npz'))
  np.testing.assert_array_equal(tensors['classifier.weight'], params['head/kernel'].T)
  config = json.load(open(os.path.join(out, 'config.json')))
  assert config['id2label'] == {'0': 'cat', '1': 'dog', '2': 'eel'} and config['architectures'] == [
    'ViTForImageClassification'
  ]


@pytest.mark.parametrize('posemb', ['learn', 'sincos2d'])
def test_transformers_vit_gives_our_logits(posemb, tmp_path):
  trained = _trained(posemb)
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from PIL import Image  # pylint: disable=g-import-not-at-top

  from vit_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top

  export.export_hf(trained, str(tmp_path))
  hf, info = transformers.ViTForImageClassification.from_pretrained(
    str(tmp_path), output_loading_info=True
  )
  assert not any(info.values()), info  # No missing, unexpected or mismatched tensors.
  pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
  images = np.stack([inference.model_input(p, trained.config) for p in pixels])
  ours = np.asarray(trained.model.apply({'params': trained.params}, images, train=False))
  with torch.no_grad():
    theirs = hf.eval()(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).logits.numpy()
  error = np.abs(theirs - ours).max() / np.abs(ours).max()
  print(f'max |HF - ours| / max |ours| = {error:.2e}')
  assert error < 1e-4 and np.ptp(ours) > 1.0
  # The image processor turns uint8 pixels (here already at the model's size) into exactly our
  # inputs.
  processor = transformers.AutoImageProcessor.from_pretrained(str(tmp_path))
  processed = processor(images=[Image.fromarray(p) for p in pixels], return_tensors='np')[
    'pixel_values'
  ]
  np.testing.assert_allclose(processed.transpose(0, 2, 3, 1), images, atol=1e-6)
  assert hf.config.id2label[2] == 'eel'


@pytest.mark.parametrize(
  'crop,resize', [(1.0, 'square'), (0.875, 'square'), (0.875, 'shorter_side')]
)
def test_transformers_image_processor_gives_our_eval_inputs(crop, resize, tmp_path):
  pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from PIL import Image  # pylint: disable=g-import-not-at-top

  from vit_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top

  with open(tmp_path / 'preprocessor_config.json', 'w') as f:
    json.dump(export.preprocessor_config(24, crop, resize), f)
  processor = transformers.AutoImageProcessor.from_pretrained(str(tmp_path))
  config = tiny.train_config(
    **{'image_size': 24, 'pp.eval_crop_fraction': crop, 'pp.eval_resize': resize}
  )
  rng = np.random.default_rng(1)
  for shape in ((60, 80, 3), (75, 50, 3)):  # Smooth images, so a pixel's shift moves values little.
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize(shape[1::-1], Image.BICUBIC))
    ours = inference.model_input(image, config)
    theirs = processor(images=[Image.fromarray(image)], return_tensors='np')['pixel_values'][
      0
    ].transpose(1, 2, 0)
    assert theirs.shape == ours.shape
    # Rounding of uint8 resizes; a pixel's shift of the crop.
    tolerance = 2 / 127.5 if resize == 'square' else 0.25
    np.testing.assert_allclose(theirs, ours, atol=tolerance)
