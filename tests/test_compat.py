"""Drop-in for google-research/vision_transformer users: hybrid weight standardisation on trained-scale kernels, the
reference presets and config API, `checkpoint.load` / `inspect_params`, `get_model`, AugReg names, locked configs."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from vit_jax import augreg, checkpoint, models, train, utils
from vit_jax.configs import check as config_check
from vit_jax.configs import common
from vit_jax.configs import models as model_configs
from vit_jax.models import resnet
from vit_jax import state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X = np.asarray(jax.random.uniform(jax.random.key(3), (2, 32, 32, 3), minval=-1, maxval=1))

# ---------------------------------------------------------------------------------------------------------------
# Weight standardisation.


def _reference_standardize(w, eps=1e-5):
  """vision_transformer's models_resnet.weight_standardize, in numpy: (w - mean) / (std + eps) over (kh, kw, in)."""
  w = np.asarray(w, np.float64)
  w = w - w.mean(axis=(0, 1, 2))
  return w / (w.std(axis=(0, 1, 2)) + eps)


def _old_standardize(w, eps=1e-5):
  """The form this code used before: divides by sqrt(var + eps)."""
  w = np.asarray(w, np.float64)
  w = w - w.mean(axis=(0, 1, 2))
  return w / np.sqrt(w.var(axis=(0, 1, 2)) + eps)


def _trained_scale_hybrid():
  """A hybrid with every conv kernel rescaled per output channel to stds of 0.001-0.1 (trained kernels' range)."""
  cfg = tiny.hybrid_config()
  model = models.VisionTransformer(num_classes=5, **cfg)
  params = jax.jit(model.init)(jax.random.key(0), X[:1])['params']
  rng = np.random.default_rng(0)

  def rescale(path, x):
    x = np.asarray(x)
    if utils.path_name(path).endswith('kernel') and x.ndim == 4:
      stds = 10 ** rng.uniform(-3, -1, x.shape[-1])
      return (x - x.mean((0, 1, 2))) / x.std((0, 1, 2)) * stds + rng.normal(0, 0.01, x.shape[-1])
    return x + rng.normal(0, 0.1, x.shape)  # Every other parameter random too (head, GroupNorm scales, ...).

  return model, jax.tree_util.tree_map_with_path(rescale, params)


def _logits_with_prestandardized_kernels(model, params, standardize):
  """Logits of `model` with weight standardisation switched off and the kernels standardised by `standardize`."""
  flat = utils.flatten_dict(params)
  flat = {k: (standardize(v).astype(np.float32) if k.endswith('kernel') and v.ndim == 4 and 'embedding' not in k
              else v) for k, v in flat.items()}
  original = resnet.weight_standardize
  resnet.weight_standardize = lambda w: w
  try:
    return np.asarray(jax.jit(model.apply)({'params': utils.unflatten_dict(flat)}, X))
  finally:
    resnet.weight_standardize = original


def test_weight_standardize_equals_the_reference_formula_on_trained_scale_kernels():
  rng = np.random.default_rng(1)
  for std in (1e-3, 1e-2, 1e-1):
    w = rng.normal(0.01, std, (3, 3, 16, 8)).astype(np.float32)
    np.testing.assert_allclose(resnet.weight_standardize(w), _reference_standardize(w), rtol=1e-4, atol=1e-5)


def test_hybrid_logits_equal_the_reference_standardisation_on_trained_scale_kernels():
  model, params = _trained_scale_hybrid()
  ours = np.asarray(jax.jit(model.apply)({'params': params}, X))
  reference = _logits_with_prestandardized_kernels(model, params, _reference_standardize)
  old = _logits_with_prestandardized_kernels(model, params, _old_standardize)
  scale = np.abs(reference).max()
  np.testing.assert_allclose(ours, reference, atol=1e-4 * scale)
  assert np.abs(old - reference).max() > 1e-2 * scale  # The test can tell the two forms apart.


# ---------------------------------------------------------------------------------------------------------------
# Presets and the config API.

# vision_transformer's vit_jax/configs/models.py: name -> (patch, hidden, mlp, heads, layers, dropout, classifier,
# resnet (num_layers, width_factor) or None). attention_dropout_rate is 0.0 and representation_size None everywhere.
REFERENCE_PRESETS = {
    'testing': (16, 10, 10, 2, 1, 0.1, 'token', None),
    'testing-unpooled': (16, 10, 10, 2, 1, 0.1, 'unpooled', None),
    'ViT-Ti_16': (16, 192, 768, 3, 12, 0.0, 'token', None),
    'ViT-S_16': (16, 384, 1536, 6, 12, 0.0, 'token', None),
    'ViT-B_16': (16, 768, 3072, 12, 12, 0.0, 'token', None),
    'ViT-L_16': (16, 1024, 4096, 16, 24, 0.1, 'token', None),
    'ViT-H_14': (14, 1280, 5120, 16, 32, 0.1, 'token', None),
    'ViT-S_16-gap-norep': (16, 384, 1536, 6, 12, 0.0, 'gap', None),
    'ViT-B_16-gap-norep': (16, 768, 3072, 12, 12, 0.0, 'gap', None),
    'ViT-B_8': (8, 768, 3072, 12, 12, 0.0, 'token', None),
    'ViT-S_32': (32, 384, 1536, 6, 12, 0.0, 'token', None),
    'ViT-B_32': (32, 768, 3072, 12, 12, 0.0, 'token', None),
    'ViT-L_32': (32, 1024, 4096, 16, 24, 0.0, 'token', None),
    'ViT-S_32-gap-norep': (32, 384, 1536, 6, 12, 0.0, 'gap', None),
    'ViT-B_32-gap-norep': (32, 768, 3072, 12, 12, 0.0, 'gap', None),
    'R+ViT-Ti_16': (8, 192, 768, 3, 12, 0.0, 'token', ((), 1)),
    'R50+ViT-B_16': (1, 768, 3072, 12, 12, 0.1, 'token', ((3, 4, 9), 1)),
    'R26+ViT-B_32': (1, 768, 3072, 12, 12, 0.0, 'token', ((2, 2, 2, 2), 1)),
    'R26+ViT-S_32': (1, 384, 1536, 6, 12, 0.0, 'token', ((2, 2, 2, 2), 1)),
    'R50+ViT-L_32': (1, 1024, 4096, 16, 24, 0.1, 'token', ((3, 4, 6, 3), 1)),
}
REFERENCE_GETTERS = {
    'testing': 'testing', 'testing-unpooled': 'testing_unpooled', 'ViT-Ti_16': 'ti16', 'ViT-S_16': 's16',
    'ViT-B_16': 'b16', 'ViT-L_16': 'l16', 'ViT-H_14': 'h14', 'ViT-S_16-gap-norep': 's16_gap_norep',
    'ViT-B_16-gap-norep': 'b16_gap_norep', 'ViT-B_8': 'b8', 'ViT-S_32': 's32', 'ViT-B_32': 'b32', 'ViT-L_32': 'l32',
    'ViT-S_32-gap-norep': 's32_gap_norep', 'ViT-B_32-gap-norep': 'b32_gap_norep', 'R+ViT-Ti_16': 'r_ti16',
    'R50+ViT-B_16': 'r50_b16', 'R26+ViT-B_32': 'r26_b32', 'R26+ViT-S_32': 'r26_s32', 'R50+ViT-L_32': 'r50_l32',
}


@pytest.mark.parametrize('name', sorted(REFERENCE_PRESETS))
def test_preset_fields_equal_the_reference(name):
  patch, hidden, mlp, heads, layers, dropout, classifier, stem = REFERENCE_PRESETS[name]
  config = getattr(model_configs, f'get_{REFERENCE_GETTERS[name]}_config')()
  assert config.model_name == name
  assert tuple(config.patches.size) == (patch, patch)
  assert (config.hidden_size, config.classifier, config.representation_size) == (hidden, classifier, None)
  t = config.transformer
  assert (t.mlp_dim, t.num_heads, t.num_layers, t.dropout_rate, t.attention_dropout_rate) == (
      mlp, heads, layers, dropout, 0.0)
  if stem is None:
    assert config.resnet is None
  else:
    assert (tuple(config.resnet.num_layers), config.resnet.width_factor) == stem
  assert model_configs.MODEL_CONFIGS[name].to_dict() == config.to_dict() == models.get_model_config(name).to_dict()


@pytest.mark.parametrize('name,count', [('testing', 21_390), ('testing-unpooled', 21_370),
                                        ('ViT-B_16-gap-norep', 86_566_120)])
def test_new_preset_parameter_counts(name, count):
  model = models.get_model(name, num_classes=1000)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == count


def test_reference_config_api_and_keyword_inputs():
  assert model_configs.MODEL_CONFIGS['ViT-B_16'].is_locked
  assert sorted(model_configs.AUGREG_CONFIGS)[:3] == ['B_16', 'B_16-gap-norep', 'B_32']
  assert 'R_Ti_16' in model_configs.AUGREG_CONFIGS and 'L_32' not in model_configs.AUGREG_CONFIGS
  model = models.get_model('testing', num_classes=2)
  variables = model.init(jax.random.key(0), inputs=jnp.ones([1, 32, 32, 3]), train=False)  # As the reference.
  assert model.apply(variables, inputs=jnp.ones([3, 32, 32, 3]), train=False).shape == (3, 2)


def test_model_accepts_plain_dict_configs():
  as_dict = tiny.hybrid_config().to_dict()  # E.g. read back from JSON.
  model = models.VisionTransformer(num_classes=3, **as_dict)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  assert jax.jit(model.apply)({'params': params}, jnp.zeros((2, 32, 32, 3))).shape == (2, 3)
  assert models.token_grid(as_dict, 32) == (4, 4)


# ---------------------------------------------------------------------------------------------------------------
# checkpoint.load / inspect_params.


def _finetuned(config, num_classes=4):
  model = models.VisionTransformer(num_classes=num_classes, **config)
  params = model.init(jax.random.key(0), X[:1, :16, :16])['params']
  rng = np.random.default_rng(5)
  return model, jax.tree.map(lambda x: np.asarray(rng.normal(0, 0.3, x.shape), np.float32), params)


@pytest.mark.parametrize('layout', ['linen', 'pre_linen', 'scanned'])
def test_load_gives_the_fine_tuned_files_logits_head_included(tmp_path, layout):
  model, params = _finetuned(tiny.vit_config(representation_size=8))
  flat = utils.flatten_dict(params)
  if layout == 'pre_linen':
    flat = tiny.pre_linen(flat)
  elif layout == 'scanned':
    flat = checkpoint.stack_blocks(flat)
  np.savez(tmp_path / 'ft.npz', **flat)
  loaded = checkpoint.load(str(tmp_path / 'ft.npz'))
  np.testing.assert_array_equal(model.apply({'params': loaded}, X[:, :16, :16]),
                                model.apply({'params': params}, X[:, :16, :16]))


def test_inspect_params_lists_missing_and_extra_keys():
  _, params = _finetuned(tiny.vit_config())
  expected = {**params, 'pre_logits': {'kernel': 0, 'bias': 0}}
  broken = {k: v for k, v in params.items() if k != 'cls'}
  with pytest.raises(ValueError, match=r"1 missing \['cls'\].*2 extra \['pre_logits/bias', 'pre_logits/kernel'\]"):
    checkpoint.inspect_params(params={**broken, 'pre_logits': {'kernel': 0, 'bias': 0}}, expected=params)
  assert checkpoint.inspect_params(params=params, expected=expected, fail_if_missing=False) is params
  with pytest.raises(ValueError, match='missing'):
    checkpoint.inspect_params(params=params, expected=expected)


# ---------------------------------------------------------------------------------------------------------------
# AugReg names.

INDEX_COLUMNS = ('name,ds,epochs,lr,aug,wd,do,sd,best_val,final_val,final_test,adapt_ds,adapt_lr,adapt_steps,'
                 'adapt_resolution,adapt_final_val,adapt_final_test,params,infer_samples_per_sec,filename,'
                 'adapt_filename')


def _index(tmp_path):
  rows = []
  for model, name in (('B_16', 'B/16'), ('R_Ti_16', 'R+Ti/16')):
    for ds, aug, final_val in (('i21k', 'medium1', 0.50), ('i21k', 'medium2', 0.48), ('i1k', 'medium2', 0.79)):
      up = f'{model}-{ds}-300ep-lr_0.001-aug_{aug}-wd_0.1-do_0.0-sd_0.0'
      for adapt_ds, res, adapt_val in (('cifar100', 224, 0.91), ('cifar100', 384, 0.93 - final_val / 10)):
        down = f'{up}--{adapt_ds}-steps_10k-lr_0.01-res_{res}'
        rows.append(f'{name},{ds},300,0.001,{aug},0.1,0.0,0.0,{final_val},{final_val},{final_val},{adapt_ds},0.01,'
                    f'10000,{res},{adapt_val},{adapt_val},86000000,300.0,{up},{down}')
  (tmp_path / 'index.csv').write_text(INDEX_COLUMNS + '\n' + '\n'.join(rows) + '\n')
  return str(tmp_path / 'index.csv')


def test_augreg_index_and_names(tmp_path):
  index = _index(tmp_path)
  df = checkpoint.augreg_index(index)
  assert tuple(df.columns) == tuple(INDEX_COLUMNS.split(',')) and len(df) == 12
  up = 'B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0'
  folder = str(tmp_path)
  assert augreg.resolve(f'augreg:{up}', index) == f'{folder}/{up}.npz'
  assert augreg.resolve('augreg:B_16', index) == f'{folder}/{up}.npz'  # Best i21k by final_val.
  assert augreg.resolve('augreg:ViT-B_16', index) == f'{folder}/{up}.npz'  # Preset names work too.
  assert augreg.resolve('augreg:R+ViT-Ti_16:aug=="medium2" and ds=="i21k"', index) == (
      f'{folder}/R_Ti_16-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0.npz')
  assert augreg.resolve('augreg:B_16:adapt_ds=="cifar100" and adapt_resolution==384', index) == (
      f'{folder}/B_16-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--cifar100-steps_10k-lr_0.01-res_384.npz')
  assert augreg.resolve('/ckpt/ViT-B_16.npz', index) == '/ckpt/ViT-B_16.npz'
  with pytest.raises(ValueError, match=r"No AugReg checkpoint of model 'L_16'.*\['B_16', 'R_Ti_16'\]"):
    augreg.resolve('augreg:L_16', index)
  with pytest.raises(ValueError, match='selects no checkpoint'):
    augreg.resolve('augreg:B_16:aug=="strong2"', index)


def test_finetune_from_an_augreg_name(tmp_path):
  config = tiny.train_config(dataset=tiny.image_folder(tmp_path), total_steps=1, eval_every_steps=1)
  model = state.build_model(config, 3)
  params = model.init(jax.random.key(9), jnp.zeros((1, 16, 16, 3)))['params']
  name = 'B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0'
  checkpoint.save_npz(str(tmp_path / f'{name}.npz'), params)
  config.pretrained_path, config.augreg_index = 'augreg:B_16', _index(tmp_path)
  config.schedule.base_lr = 0.0
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  got = checkpoint.load(str(tmp_path / 'run' / 'params.npz'))
  np.testing.assert_array_equal(got['embedding']['kernel'], params['embedding']['kernel'])


# ---------------------------------------------------------------------------------------------------------------
# Locked configs, reference field names, folders as datasets, packaging.


@pytest.mark.parametrize('field,hint', [('batch', 'use batch_size'), ('pretrained_dir', 'use pretrained_path'),
                                        ('base_lr', 'use schedule.base_lr'), ('learning_rate', 'schedule.base_lr'),
                                        ('batch_sise', 'batch_size')])
def test_unknown_and_reference_fields_are_refused_with_the_field_to_use(tmp_path, field, hint):
  config = tiny.train_config()
  with pytest.raises(AttributeError, match='locked'):
    setattr(config, field, 64)  # The shared defaults are locked, as the command line's are.
  config.unlock()
  setattr(config, field, 64)
  with pytest.raises(config_check.UnknownFieldError, match=rf"Unknown config field '{field}'.*{hint}"):
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w')  # Refused before anything is written.


def test_nested_reference_field_is_refused():
  config = common.get_config().unlock()
  config.pp.train = 'train[:98%]'
  with pytest.raises(config_check.UnknownFieldError, match=r"'pp.train'.*use train_split"):
    config_check.check_fields(config)
  config = common.get_config()
  config.model = models.get_model_config('R50+ViT-B_16')  # Hybrid-only fields are known.
  config_check.check_fields(config)


def test_folder_path_as_dataset_trains_as_an_image_folder(tmp_path, caplog):
  folder = tiny.image_folder(tmp_path)
  config = tiny.train_config(dataset=folder, total_steps=2, eval_every_steps=2)
  with caplog.at_level('INFO', logger='vit_jax'):
    result = train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert result['eval/num_examples'] == 6
  assert 'is a directory: reading it as an image folder' in caplog.text


def test_install_puts_no_top_level_configs_package(tmp_path):
  subprocess.run([sys.executable, 'setup.py', '-q', 'egg_info', f'--egg-base={tmp_path}'], cwd=REPO, check=True,
                 capture_output=True)
  (info,) = list(tmp_path.glob('*.egg-info'))
  assert (info / 'top_level.txt').read_text().split() == ['vit_jax']
