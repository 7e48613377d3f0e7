"""vit_jax/configs/check.py: a whole config is validated before any I/O, each bad value named with
what is valid; unknown fields (vision_transformer's names among them) are refused with the field to
use, before anything is written."""

import os
import subprocess
import sys

import pytest
import tiny

from vit_jax import models
from vit_jax.configs import check, common
from vit_jax.training import train


def _problem(**overrides):
  with pytest.raises(check.ConfigError) as e:
    check.validate(tiny.train_config(**overrides), devices=8)
  return str(e.value)


def test_a_valid_config_passes_and_is_returned():
  config = tiny.train_config()
  assert check.validate(config, devices=8) is config


@pytest.mark.parametrize(
  'overrides, message',
  [
    (
      {'model.patches.size': (4,)},
      'config.model.patches.size=(4,) must be a pair of positive integers',
    ),
    (
      {'model.patches.size': (4, 0)},
      'config.model.patches.size=(4, 0) must be a pair of positive integers',
    ),
    (
      {'schedule.warmup_steps': 9},
      'config.schedule.warmup_steps=9 is more than config.total_steps=4',
    ),
    (
      {'schedule.decay_type': 'cosin'},
      "config.schedule.decay_type='cosin' is not one of 'cosine', "
      "'linear', 'constant', 'rsqrt' (did you mean 'cosine'?)",
    ),
    (
      {'pp.eval_resize': 'shorter'},
      "config.pp.eval_resize='shorter' is not one of "
      "'square', 'shorter_side' (did you mean 'shorter_side'?)",
    ),
    (
      {'pp.crop': 'random'},
      "config.pp.crop='random' is not one of 'inception', 'pad_crop', 'resize'",
    ),
    ({'pp.eval_crop_fraction': 0.0}, 'config.pp.eval_crop_fraction=0.0 must be in (0, 1]'),
    (
      {'optimizer.name': 'lamb'},
      "config.optimizer.name='lamb' is not one of 'sgd', 'adam', 'adamw'",
    ),
    (
      {'optimizer.accumulator_dtype': 'float16'},
      "config.optimizer.accumulator_dtype='float16' is not one of",
    ),
    ({'optimizer.weight_decay': -0.1}, 'config.optimizer.weight_decay=-0.1 must be >= 0'),
    ({'schedule.rsqrt_timescale': 0}, 'config.schedule.rsqrt_timescale=0 must be > 0'),
    (
      {'nonfinite_policy': 'ignore'},
      "config.nonfinite_policy='ignore' is not one of 'stop', 'skip'",
    ),
    ({'on_bad_image': 'drop'}, "config.on_bad_image='drop' is not one of 'error', 'skip'"),
    ({'dtype': 'float16'}, "config.dtype='float16' is not one of 'float32', 'bfloat16'"),
    ({'mixup_p': -0.1}, 'config.mixup_p=-0.1 must be >= 0'),
    ({'label_smoothing': 1.0}, 'config.label_smoothing=1.0 must be in [0, 1)'),
    (
      {'model.hidden_size': 33},
      'config.model.hidden_size=33 must be a multiple of config.model.transformer.num_heads=2',
    ),
    ({'image_size': 18}, 'config.image_size=18 is not a multiple of the 4 px per token'),
    ({'batch_size': 12}, 'config.batch_size=12 must be a multiple of the 8 batch shards'),
    ({'mesh': (('dat', -1),)}, "unknown or repeated axes ['dat']"),
    ({'dataset': ''}, 'config.dataset is empty'),
    (
      {'dataset': 'image_folder'},
      "config.dataset is 'image_folder' but config.image_folder is empty",
    ),
    ({'eval_split': 'minival=train[99%:],minival=test'}, 'config.eval_split repeats a name'),
    (
      {'fewshot.datasets': 'cifar100:train'},
      "config.fewshot.datasets entry 'cifar100:train' is not name:train_split:test_split",
    ),
    (
      {'total_epochs': 2.0, 'total_examples': 100},
      'config.total_epochs=2.0 and config.total_examples=100 are both set',
    ),
    ({'log_every_steps': 0}, 'config.log_every_steps=0 must be >= 1'),
    (
      {'evals.val': {'type': 'clasification'}},
      "config.evals.val.type='clasification' is not one of 'classification', 'zeroshot', "
      "'retrieval', 'fewshot' (did you mean 'classification'?)",
    ),
    (
      {'evals.val': {'type': 'classification', 'every_steps': 0}},
      'config.evals.val.every_steps=0 must be >= 1',
    ),
    (
      {'evals.val': {'type': 'classification', 'splt': 'test'}},
      "config.evals.val.splt is not an option of a 'classification' evaluator, which takes type, "
      "prefix, every_steps, split (did you mean 'split'?)",
    ),
    (
      {'evals.val': {'type': 'classification', 'split': 'a=test'}},
      "config.evals.val.split='a=test' must be one split",
    ),
    (
      {'evals.probe': {'type': 'fewshot', 'datasets': 'cifar100:train'}},
      "config.evals.probe.datasets entry 'cifar100:train' is not name:train_split",
    ),
    (
      {'evals.probe': {'type': 'fewshot'}},
      "config.evals.probe is a 'fewshot' entry without datasets",
    ),
    (
      {'evals.val': {'type': 'retrieval'}},
      "config.evals.val is a 'retrieval' entry, which scores captions",
    ),
    (
      {'evals.val': {'every_steps': 5}},
      "config.evals.val={'every_steps': 5} must be an entry with a type",
    ),
    (
      {'evals.val': {'type': 'classification'}, 'fewshot.datasets': 'cifar100:train:test'},
      "config.fewshot.datasets='cifar100:train:test' is set, but config.evals has no 'fewshot'",
    ),
  ],
)
def test_each_bad_value_is_named_with_what_is_valid(overrides, message):
  assert message in _problem(**overrides)


def test_evals_entries_pass_and_two_of_a_type_need_their_own_prefixes():
  entries = {
    'evals.val': {'type': 'classification', 'prefix': 'val/', 'every_steps': 2, 'split': 'test'},
    'evals.probe': {'type': 'fewshot', 'datasets': 'cifar100:train:test', 'shots': (1,)},
  }
  check.validate(tiny.train_config(**entries), devices=8)
  text = _problem(**entries, **{'evals.test': {'type': 'classification', 'prefix': 'val/'}})
  assert (
    "config.evals.val and config.evals.test are both 'classification' entries with prefix "
    "'val/': their metrics would overwrite each other"
  ) in text


def test_every_problem_is_listed_at_once():
  text = _problem(**{'schedule.decay_type': 'cos', 'pp.crop': 'x', 'batch_size': 12})
  assert text.startswith('3 config values are wrong:')
  assert 'decay_type' in text and 'pp.crop' in text and 'batch_size=12' in text


def test_unknown_fields_come_first_with_a_suggestion():
  config = tiny.train_config()
  config.unlock()
  config.learning_rate = 0.1
  with pytest.raises(
    check.UnknownFieldError, match="'learning_rate'.*did you mean schedule.base_lr"
  ):
    check.validate(config)


@pytest.mark.parametrize(
  'field,hint',
  [
    ('batch', 'use batch_size'),
    ('pretrained_dir', 'use pretrained_path'),
    ('base_lr', 'use schedule.base_lr'),
    ('learning_rate', 'schedule.base_lr'),
    ('batch_sise', 'batch_size'),
  ],
)
def test_unknown_and_reference_fields_are_refused_with_the_field_to_use(tmp_path, field, hint):
  config = tiny.train_config()
  with pytest.raises(AttributeError, match='locked'):
    setattr(config, field, 64)  # The shared defaults are locked, as the command line's are.
  config.unlock()
  setattr(config, field, 64)
  with pytest.raises(check.UnknownFieldError, match=rf"Unknown config field '{field}'.*{hint}"):
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w')  # Refused before anything is written.


def test_nested_reference_field_is_refused():
  config = common.get_config().unlock()
  config.pp.train = 'train[:98%]'
  with pytest.raises(check.UnknownFieldError, match=r"'pp.train'.*use train_split"):
    check.check_fields(config)
  config = common.get_config()
  config.model = models.get_model_config('R50+ViT-B_16')  # Hybrid-only fields are known.
  check.check_fields(config)


def test_batch_size_that_does_not_split_over_devices_is_clear_error():
  with pytest.raises(
    check.ConfigError, match=r'config.batch_size=12 must be a multiple of the 8 batch shards'
  ):
    check.validate(tiny.train_config(batch_size=12), devices=8)
  with pytest.raises(check.ConfigError, match=r'accum_steps=4'):
    check.validate(tiny.train_config(batch_size=16, accum_steps=4), devices=8)


def test_image_size_not_multiple_of_patch_is_clear_error():
  with pytest.raises(
    check.ConfigError, match=r'config.image_size=18 is not a multiple of the 4 px per token'
  ):
    check.validate(tiny.train_config(image_size=18))


def test_warmup_and_total_in_epochs_are_checked_once_resolved():
  config = tiny.train_config(**{'total_epochs': 1.0, 'schedule.warmup_epochs': 2.0})
  with pytest.raises(
    check.ConfigError, match='warmup_epochs=2.0 is more than config.total_epochs=1.0'
  ):
    check.validate(config)
  resolved = tiny.train_config(**{'total_steps': 3, 'schedule.warmup_steps': 5})
  with pytest.raises(
    check.ConfigError,
    match=r'config.schedule.warmup_steps=5 is more than config.total_steps=3: the warmup must fit',
  ):
    check.validate_durations(resolved)


def _mixer_problem(**overrides):
  return _problem(**{'model': tiny.mixer_config(), **overrides})


def test_a_mixer_config_passes():
  config = tiny.train_config(model=tiny.mixer_config(), remat_policy='dots')
  assert check.validate(config, devices=8) is config


@pytest.mark.parametrize(
  'overrides, message',
  [
    ({'model.num_blocks': 0}, 'config.model.num_blocks=0 must be >= 1'),
    ({'model.hidden_dim': 0}, 'config.model.hidden_dim=0 must be >= 1'),
    ({'model.tokens_mlp_dim': -4}, 'config.model.tokens_mlp_dim=-4 must be >= 1'),
    ({'model.channels_mlp_dim': None}, 'config.model.channels_mlp_dim=None must be an integer'),
    (
      {'model.patches.size': (4,)},
      'config.model.patches.size=(4,) must be a pair of positive integers',
    ),
    (
      {'image_size': 18},
      'config.image_size=18 is not a multiple of the 4x4 patches of tiny-mixer; e.g. use 16',
    ),
    (
      {'model.patches.size': (4, 6), 'image_size': 16},
      'the 4x6 patches of tiny-mixer; e.g. use 12',
    ),
    ({'scan_layers': True}, 'config.scan_layers=True is for ViTs: an MLP-Mixer is built unrolled'),
    (
      {'attention': 'xla'},
      "config.attention='xla' chooses how a ViT computes attention, and an MLP-Mixer has none",
    ),
    (
      {'fused_qkv': True},
      'config.fused_qkv=True fuses the query/key/value matmuls of ViT attention, and an MLP-Mixer',
    ),
  ],
)
def test_each_bad_mixer_value_is_named_with_what_is_valid(overrides, message):
  assert message in _mixer_problem(**overrides)


def test_the_vit_switches_on_a_mixer_are_one_line_each():
  text = _mixer_problem(scan_layers=True, attention='cudnn', fused_qkv=True)
  assert text.startswith('3 config values are wrong:') and len(text.splitlines()) == 4


def test_a_model_field_of_the_other_family_is_named_as_such():
  config = tiny.train_config()
  config.model.unlock()
  config.model.tokens_mlp_dim = 32
  with pytest.raises(
    check.UnknownFieldError,
    match=r'config.model.tokens_mlp_dim is an MLP-Mixer field, but config.model is a ViT \(it has '
    r'no num_blocks or text_model\): start from a Mixer preset',
  ):
    check.validate(config)


def test_validating_a_config_and_a_sweep_loads_no_jax():
  code = (
    'import sys; from vit_jax.configs import check, loading; import launch.sweep; '
    "check.validate(loading.from_command_line('configs/default.py'), devices=8); "
    "check.validate(loading.from_command_line('configs/lit.py'), devices=8); "
    "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'optax', 'orbax', "
    "'grain', 'tensorflow', 'tensorflow_datasets'}))"
  )
  out = subprocess.run(
    [sys.executable, '-c', code],
    capture_output=True,
    text=True,
    check=True,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  assert out.stdout.strip() == '[]', out.stdout + out.stderr
