"""The config files and the config API: every field of every file in configs/ round-trips through
the command line, the fine-tuning presets (configs/vit.py), vision_transformer's model presets and
config API (vit_jax/configs/models.py), and configs/ is not installed as a package."""

import glob
import os
import subprocess
import sys

from absl import flags
import jax
import jax.numpy as jnp
from ml_collections.config_dict import ConfigDict, FieldReference
import pytest
import tiny

from vit_jax import models
from vit_jax.configs import check, loading
from vit_jax.configs import models as model_configs
from vit_jax.runtime import workdir as workdir_lib

REPO = tiny.REPO

# Every config file with the arguments to load it (a file added to configs/ must be listed here).
CONFIG_FILES = {
  'default.py': ['', 'model=vit'],
  'vit.py': ['ViT-B_16,cifar10', 'R50+ViT-B_16,oxford_iiit_pet'],
  'pretrain_i21k.py': ['ViT-B_16'],
  'pretrain_i1k.py': ['ViT-S_16,epochs=150'],
  'lit.py': ['', 'model=vit'],
  'siglip.py': ['', 'SigLIP-B_16-256,coco_captions'],
  'transfer_paper.py': ['task=cifar100,model=ViT-B_32'],
  'transfer_vtab.py': ['task=dtd'],
  'transfer_offline.py': ['task=stripes'],
}


def _field_type(config, name):
  *parents, leaf = name.split('.')
  for p in parents:
    config = config[p]
  # (the declared type of a None field)
  raw = config._fields[leaf]  # pylint: disable=protected-access
  return raw.get_type() if isinstance(raw, FieldReference) else type(raw)


def _get(config, name):
  for p in name.split('.'):
    config = config[p]
  return config


def _other_value(value, kind):
  if kind is bool:
    return not value
  if kind is int:
    return (value or 0) + 3
  if kind is float:
    return (value or 0.0) + 0.25
  if kind is str:
    return (value or '') + 'x'
  return value  # Tuples: the same value, given as a string.


def test_every_config_file_is_listed():
  assert sorted(os.path.basename(p) for p in glob.glob(str(REPO / 'configs' / '*.py'))) == sorted(
    CONFIG_FILES
  )


@pytest.mark.parametrize(
  'path',
  [
    f'{REPO}/configs/{f}' + (f':{a}' if a else '') for f, args in CONFIG_FILES.items() for a in args
  ],
)
def test_every_field_of_every_config_file_round_trips_through_the_command_line(path):
  base = tiny.main_config(path)
  fields = check.flat_keys(base)
  assert len(fields) > 50
  for name in fields:
    kind = _field_type(base, name)
    # Only a pure ViT's `model.resnet` (LiT: model.image.resnet): choose a hybrid instead.
    if kind is type(None):
      assert name in ('model.resnet', 'model.image.resnet'), name
      continue
    if kind is ConfigDict:  # Only an empty config.evals: a config file names its entries (below).
      assert name == 'evals', name
      continue
    new = _other_value(_get(base, name), kind)
    text = repr(new) if kind is tuple else str(new)
    assert _get(tiny.main_config(path, [f'--config.{name}={text}']), name) == new, name


EVALS_CONFIG = """from vit_jax.configs import common


def get_config():
  config = common.get_config()
  config.dataset = 'cifar10'
  config.evals.val = dict(type='classification', prefix='val/', every_steps=50, split='train[:10]')
  return config
"""


def test_the_main_jobs_plain_vit_variant_is_its_model_before_the_stem():
  hybrid, plain = (
    tiny.main_config(f'{REPO}/configs/default.py'),
    tiny.main_config(f'{REPO}/configs/default.py:model=vit'),
  )
  assert (hybrid.image_size, tuple(hybrid.model.resnet.num_layers)) == (16, ())
  assert models.token_grid(hybrid.model, hybrid.image_size) == (4, 4)
  assert (plain.image_size, plain.model.resnet, plain.model.patches.size) == (8, None, (2, 2))
  assert models.token_grid(plain.model, plain.image_size) == (4, 4)
  # Everything but the model and its image size is the same recipe.
  rest = lambda c: {k: v for k, v in c.to_dict().items() if k not in ('model', 'image_size')}
  assert rest(hybrid) == rest(plain)
  lit = tiny.main_config(f'{REPO}/configs/lit.py:model=vit')
  assert lit.model.image.resnet is None and lit.image_size == lit.model.pp.size == 8
  with pytest.raises(
    flags.IllegalFlagValueError, match=r"Bad model='vti' in 'model=vti'; valid: hybrid, vit"
  ):
    tiny.main_config(f'{REPO}/configs/default.py:model=vti')


def test_a_config_file_names_its_evaluators_and_they_round_trip(tmp_path):
  path = tmp_path / 'evals_config.py'
  path.write_text(EVALS_CONFIG)
  overrides = ['--config.evals.val.every_steps=7', '--config.evals.val.prefix=v/']
  config = loading.from_command_line(str(path), overrides)
  assert config.evals.to_dict() == {
    'val': {'type': 'classification', 'prefix': 'v/', 'every_steps': 7, 'split': 'train[:10]'}
  }
  check.validate(config)
  stored = workdir_lib.as_dict(config)  # What config.json holds.
  assert loading.from_dict(stored).evals.to_dict() == config.evals.to_dict()
  assert loading.from_dict({'dataset': 'cifar10'}).evals.to_dict() == {}  # A run before evals.


def test_none_and_wider_typed_fields_take_their_real_type():
  path = f'{REPO}/configs/vit.py:R26+ViT-S_32,cifar10'
  config = tiny.main_config(
    path,
    [
      '--config.model.representation_size=48',
      '--config.model.resnet.width_factor=0.5',
      '--config.tfds_data_dir=/data',
    ],
  )
  assert (
    config.model.representation_size,
    config.model.resnet.width_factor,
    config.tfds_data_dir,
  ) == (48, 0.5, '/data')


def test_finetune_presets_and_their_errors():
  from configs import vit as vit_configs  # pylint: disable=g-import-not-at-top

  config = vit_configs.get_config('ViT-B_16,cifar10')
  assert (config.schedule.base_lr, config.batch_size, config.total_steps, config.image_size) == (
    0.01,
    512,
    10_000,
    384,
  )
  assert (config.optimizer.name, config.optimizer.momentum, config.optimizer.grad_clip_norm) == (
    'sgd',
    0.9,
    1.0,
  )
  assert (config.schedule.warmup_steps, config.schedule.decay_type) == (500, 'cosine')
  assert vit_configs.get_config('ViT-L_16,imagenet2012').total_steps == 20_000
  assert vit_configs.get_config('ViT-L_16,cifar100').schedule.base_lr == 0.03
  with pytest.raises(ValueError, match=r"'ViT-Q_3'.*ViT-B_16"):
    vit_configs.get_config('ViT-Q_3,cifar10')
  with pytest.raises(
    ValueError, match=r"'mnist'.*cifar10, cifar100, imagenet2012, oxford_iiit_pet"
  ):
    vit_configs.get_config('ViT-B_16,mnist')


# --------------------------------------------------------------------------------------------------
# vision_transformer's presets and config API.

# vision_transformer's vit_jax/configs/models.py: name -> (patch, hidden, mlp, heads, layers,
# dropout, classifier, resnet (num_layers, width_factor) or None). attention_dropout_rate is 0.0 and
# representation_size None everywhere.
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
  'testing': 'testing',
  'testing-unpooled': 'testing_unpooled',
  'ViT-Ti_16': 'ti16',
  'ViT-S_16': 's16',
  'ViT-B_16': 'b16',
  'ViT-L_16': 'l16',
  'ViT-H_14': 'h14',
  'ViT-S_16-gap-norep': 's16_gap_norep',
  'ViT-B_16-gap-norep': 'b16_gap_norep',
  'ViT-B_8': 'b8',
  'ViT-S_32': 's32',
  'ViT-B_32': 'b32',
  'ViT-L_32': 'l32',
  'ViT-S_32-gap-norep': 's32_gap_norep',
  'ViT-B_32-gap-norep': 'b32_gap_norep',
  'R+ViT-Ti_16': 'r_ti16',
  'R50+ViT-B_16': 'r50_b16',
  'R26+ViT-B_32': 'r26_b32',
  'R26+ViT-S_32': 'r26_s32',
  'R50+ViT-L_32': 'r50_l32',
}


@pytest.mark.parametrize('name', sorted(REFERENCE_PRESETS))
def test_preset_fields_equal_the_reference(name):
  patch, hidden, mlp, heads, layers, dropout, classifier, stem = REFERENCE_PRESETS[name]
  config = getattr(model_configs, f'get_{REFERENCE_GETTERS[name]}_config')()
  assert config.model_name == name
  assert tuple(config.patches.size) == (patch, patch)
  assert (config.hidden_size, config.classifier, config.representation_size) == (
    hidden,
    classifier,
    None,
  )
  t = config.transformer
  assert (t.mlp_dim, t.num_heads, t.num_layers, t.dropout_rate, t.attention_dropout_rate) == (
    mlp,
    heads,
    layers,
    dropout,
    0.0,
  )
  if stem is None:
    assert config.resnet is None
  else:
    assert (tuple(config.resnet.num_layers), config.resnet.width_factor) == stem
  assert (
    model_configs.MODEL_CONFIGS[name].to_dict()
    == config.to_dict()
    == models.get_model_config(name).to_dict()
  )


def test_reference_config_api_and_keyword_inputs():
  assert model_configs.MODEL_CONFIGS['ViT-B_16'].is_locked
  assert sorted(model_configs.AUGREG_CONFIGS)[:3] == ['B_16', 'B_16-gap-norep', 'B_32']
  assert 'R_Ti_16' in model_configs.AUGREG_CONFIGS and 'L_32' not in model_configs.AUGREG_CONFIGS
  model = models.get_model('testing', num_classes=2)
  # As the reference.
  variables = model.init(jax.random.key(0), inputs=jnp.ones([1, 32, 32, 3]), train=False)
  assert model.apply(variables, inputs=jnp.ones([3, 32, 32, 3]), train=False).shape == (3, 2)


# --------------------------------------------------------------------------------------------------
# Packaging.


def test_install_puts_no_top_level_configs_package(tmp_path):
  subprocess.run(
    [sys.executable, 'setup.py', '-q', 'egg_info', f'--egg-base={tmp_path}'],
    cwd=REPO,
    check=True,
    capture_output=True,
  )
  (info,) = list(tmp_path.glob('*.egg-info'))
  assert (info / 'top_level.txt').read_text().split() == ['vit_jax']
