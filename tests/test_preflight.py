"""vit_jax/training/preflight.py: what needs a model, a mesh or files is checked after the schema
and before anything is written; each problem names its field."""

import json

import numpy as np
from PIL import Image
import pytest
import tiny

from vit_jax import checkpoint
from vit_jax.configs import check, loading
from vit_jax.training import preflight


def _problem(**overrides):
  with pytest.raises(check.ConfigError) as e:
    preflight.validate(tiny.train_config(**overrides), devices=8)
  return str(e.value)


def test_a_valid_config_passes_and_is_returned():
  config = tiny.train_config(sharding_strategy='fsdp', mesh=(('fsdp', -1),))
  assert preflight.validate(config, devices=8) is config


def test_the_schema_is_checked_first():
  assert 'config.optimizer.name' in _problem(
    **{'optimizer.name': 'lamb', 'pretrained_path': '/nope.npz'}
  )


@pytest.mark.parametrize(
  'kind, write, said',
  [
    ('text', lambda p: p.write_text('hello'), 'it is text, not an .npz file'),
    (
      'jpeg',
      lambda p: Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(p, format='JPEG'),
      'it is a JPEG image',
    ),
    ('json', lambda p: p.write_text(json.dumps({'model': {}})), 'it is JSON text'),
    ('empty', lambda p: p.write_bytes(b''), 'it is an empty file'),
  ],
)
def test_a_pretrained_path_that_is_not_a_checkpoint_says_what_it_is(tmp_path, kind, write, said):
  path = tmp_path / f'{kind}.npz'
  write(path)
  text = _problem(pretrained_path=str(path))
  assert said in text and 'pickle' not in text


def test_only_a_real_npz_with_object_arrays_gets_the_pickle_refusal(tmp_path):
  path = str(tmp_path / 'pickled.npz')
  np.savez(path, a=np.array([{'x': 1}], dtype=object))
  with pytest.raises(checkpoint.CheckpointError, match="holds pickled objects \\(array 'a'\\)"):
    checkpoint.read_npz(path)
  # It is an .npz: validation lets it through to the loader.
  assert checkpoint.recognise(path) == 'npz'


def test_a_folder_or_a_missing_file_as_pretrained_path(tmp_path):
  (tmp_path / 'run').mkdir()
  (tmp_path / 'run' / 'params.npz').write_bytes(b'PK\x03\x04')
  assert 'is a folder, not a checkpoint' in _problem(pretrained_path=str(tmp_path / 'run'))
  assert 'use its params.npz' in _problem(pretrained_path=str(tmp_path / 'run'))
  assert 'does not exist' in _problem(pretrained_path=str(tmp_path / 'nope.npz'))


def test_a_tensor_parallel_split_that_does_not_divide_is_named_before_anything_is_built():
  text = _problem(
    **{
      'sharding_strategy': 'tp',
      'mesh': (('data', 2), ('model', 4)),
      'model.transformer.num_heads': 2,
    }
  )
  assert "config.sharding_strategy='tp' on config.mesh {'data': 2, 'model': 4}" in text
  assert "cannot be split over mesh axis 'model' of size 4" in text
  assert "needs a 'model' mesh axis" in _problem(sharding_strategy='fsdp+tp', mesh=(('fsdp', -1),))


def test_an_image_folder_that_is_not_a_folder(tmp_path):
  assert 'is not a folder' in _problem(
    dataset='image_folder', image_folder=str(tmp_path / 'missing')
  )
  config = tiny.train_config(dataset='image_folder', image_folder=str(tmp_path / 'missing'))
  assert preflight.validate(config, devices=8, files=False) is config


def test_the_objectives_rules_and_the_fields_are_one_stage_with_one_error():
  """The task's rules (vit_jax/tasks/image_text.py) beside configs/check.py's, listed together."""
  config = loading.from_command_line('configs/lit.py')
  config = tiny.override(config, {'accum_steps': 2, 'optimizer.name': 'lamb'})
  with pytest.raises(check.ConfigError, match="config.optimizer.name='lamb'") as e:
    check.validate(config)  # The configs layer knows the fields, not the objective.
  assert 'accum_steps' not in str(e.value)
  with pytest.raises(check.ConfigError) as e:
    preflight.validate(config)
  lines = str(e.value).splitlines()
  assert lines[0] == '2 config values are wrong:' and "optimizer.name='lamb'" in lines[1]
  assert lines[2].startswith('  config.accum_steps=2: the contrastive loss compares every image')


def test_the_durations_are_checked_and_resolved_once_the_dataset_size_is_known():
  config = tiny.train_config(**{'total_epochs': 2.0, 'batch_size': 16, 'schedule.warmup_steps': 0})
  resolved = preflight.validate(config, num_train=80)
  assert resolved.total_steps == 10 and config.total_epochs == 2.0 and resolved is not config
  with pytest.raises(check.ConfigError, match=r'The run has 0 steps'):
    preflight.validate(tiny.override(config, {'total_epochs': 0.01}), num_train=80)


def test_a_lit_runs_tower_and_vocabulary_files_are_the_tasks_file_checks(tmp_path):
  (tmp_path / 'tower.txt').write_text('hello')
  files = {'lit.image_init': str(tmp_path / 'tower.txt'), 'lit.vocab_path': str(tmp_path / 'v')}
  config = tiny.override(loading.from_command_line('configs/lit.py'), files)
  with pytest.raises(check.ConfigError) as e:
    preflight.validate(config, devices=1)
  text = str(e.value)
  assert 'config.lit.image_init: ' in text and 'it is text, not an .npz file' in text
  assert f'config.lit.vocab_path={str(tmp_path / "v")!r} is not a file' in text
  assert preflight.validate(config, devices=1, files=False) is config
