"""vit_jax/runtime/workdir.py: the one owner of a run's files, its config over the defaults and the
"complete" rule."""

import json
import os
import pathlib
import re
import subprocess
import sys

import fake_gcs
import pytest
import tiny

from vit_jax.runtime import workdir as workdir_lib
from vit_jax.training import train

REPO = pathlib.Path(__file__).resolve().parents[1]
NAMES = (
  'config.json',
  'class_names.json',
  'dataset.json',
  'metrics.jsonl',
  'params.npz',
  'launch.json',
  'lock.json',
  'commit_success.txt',
)


def test_every_file_name_of_a_run_is_spelled_in_workdir_py_only():
  spelled = {}
  for path in [*REPO.glob('vit_jax/**/*.py'), *REPO.glob('launch/*.py')]:
    if path.name == 'workdir.py':
      continue
    for name in NAMES:
      if re.search(rf"""['"]{re.escape(name)}['"]""", path.read_text()):
        spelled.setdefault(str(path.relative_to(REPO)), []).append(name)
  # Its 'config.json' is the Hugging Face folder's, not a run's.
  spelled.pop('vit_jax/export.py', None)
  spelled.pop('vit_jax/export_siglip.py', None)
  assert spelled == {}


def test_workdir_imports_neither_jax_nor_tensorflow():
  code = (
    'import sys; from vit_jax.runtime import workdir; workdir.load_config; '
    'print(sorted(m for m in ("jax", "flax", "tensorflow") if m in sys.modules))'
  )
  out = subprocess.run(
    [sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=REPO
  ).stdout
  assert out == '[]\n'


def _write_metrics(workdir, records):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, workdir_lib.METRICS_FILE), 'w', encoding='utf-8') as f:
    f.write(''.join(json.dumps(r) + '\n' for r in records))


def test_metrics_merge_last_record_wins_and_drop_after_a_step(tmp_path):
  workdir = str(tmp_path / 'run')
  _write_metrics(
    workdir,
    [
      {'step': 2, 'train/loss': 2.0},
      {'step': 2, 'eval/accuracy': 0.5},
      {'step': 4, 'train/loss': 1.0},
      {'step': 2, 'train/loss': 1.5},
    ],
  )
  assert workdir_lib.merged_metrics(workdir) == {
    2: {'train/loss': 1.5, 'eval/accuracy': 0.5},
    4: {'train/loss': 1.0},
  }
  assert workdir_lib.last_eval(workdir) == {'step': 2, 'eval/accuracy': 0.5}
  assert workdir_lib.drop_records_after(workdir, 2) == 1
  assert [r['step'] for r in workdir_lib.read_metrics(workdir)] == [2, 2, 2]


def test_load_config_is_config_json_over_the_current_defaults(tmp_path):
  config = tiny.train_config(dataset='cifar10')
  stored = workdir_lib.as_dict(config)
  del stored['fewshot']['l2_reg']  # An older run: the code gained this field since.
  stored['input_shards'] = 4  # A field the code dropped.
  del stored['model']['posemb']
  os.makedirs(tmp_path / 'run')
  (tmp_path / 'run' / workdir_lib.CONFIG_FILE).write_text(json.dumps(stored))
  loaded = workdir_lib.load_config(str(tmp_path / 'run'))
  assert loaded.fewshot.l2_reg == 2.0**10 and loaded.model.posemb == 'learn'
  # Tuples, as the code has them.
  assert loaded.model.patches.size == (4, 4) and loaded.mesh == (('data', -1),)
  assert 'input_shards' not in loaded
  with pytest.raises(workdir_lib.WorkdirError, match='holds no config.json'):
    workdir_lib.load_config(str(tmp_path / 'empty'))


@pytest.mark.parametrize(
  'overrides, num_train, target',
  [
    ({'total_steps': 7}, None, 7),
    # The README's recipe override: epochs 0 means unset.
    ({'total_epochs': 0.0, 'total_steps': 9}, None, 9),
    ({'total_epochs': 2.0, 'batch_size': 16}, 40, 5),
    ({'total_epochs': 2.0}, None, None),  # In epochs with the dataset size unknown.
    ({'total_examples': 64, 'batch_size': 16}, None, 4),
  ],
)
def test_target_step(overrides, num_train, target):
  assert workdir_lib.target_step(tiny.train_config(**overrides), num_train) == target


def _complete_run(workdir, steps, *, params=True, num_train=40):
  for step in steps:
    os.makedirs(os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR, str(step)))
  # Unfinished.
  os.makedirs(os.path.join(workdir, workdir_lib.CHECKPOINTS_DIR, '8.orbax-checkpoint-tmp-1'))
  workdir_lib.record_dataset(workdir, class_names=['a', 'b'], num_train=num_train, num_eval=4)
  if params:
    open(os.path.join(workdir, workdir_lib.PARAMS_FILE), 'wb').close()


def test_complete_needs_a_checkpoint_at_the_target_and_the_params(tmp_path):
  workdir = str(tmp_path / 'run')
  _complete_run(workdir, [2, 4])
  assert workdir_lib.checkpoint_steps(workdir) == [2, 4]
  assert workdir_lib.is_complete(workdir, tiny.train_config(total_steps=4))
  # A raised target trains on.
  assert not workdir_lib.is_complete(workdir, tiny.train_config(total_steps=6))
  assert workdir_lib.is_complete(workdir, tiny.train_config(total_epochs=0.0, total_steps=4))
  # 40 * 1.6 / 16 = 4.
  assert workdir_lib.is_complete(workdir, tiny.train_config(total_epochs=1.6, batch_size=16))
  # 8 steps.
  assert not workdir_lib.is_complete(workdir, tiny.train_config(total_epochs=1.6, batch_size=8))
  os.remove(os.path.join(workdir, workdir_lib.PARAMS_FILE))
  assert not workdir_lib.is_complete(workdir, tiny.train_config(total_steps=4))
  assert workdir_lib.is_complete(workdir, tiny.train_config(total_steps=4, export_npz=False))


def test_on_gcs_a_checkpoint_counts_once_committed(tmp_path):
  fake_gcs.install(tmp_path / 'gcs')
  workdir = 'gs://bucket/run'
  from vit_jax import io  # pylint: disable=g-import-not-at-top

  io.write_text(io.join(workdir, workdir_lib.CHECKPOINTS_DIR, '2', workdir_lib.COMMIT_FILE), '')
  # Being written.
  io.write_text(io.join(workdir, workdir_lib.CHECKPOINTS_DIR, '4', '_METADATA'), '{}')
  assert workdir_lib.checkpoint_steps(workdir) == [2]


def test_a_workdir_that_is_a_file_is_a_clear_error(tmp_path):
  (tmp_path / 'f').write_text('x')
  with pytest.raises(
    workdir_lib.WorkdirError, match='is a file, not a directory; give --workdir a directory'
  ):
    workdir_lib.check_usable(str(tmp_path / 'f'))


# --------------------------------------------------------------------------------------------------
# A workdir that holds a run of another config.


def _fake_run(workdir, config):
  workdir_lib.check_and_record_config(config, workdir)
  with open(os.path.join(workdir, workdir_lib.METRICS_FILE), 'w', encoding='utf-8') as f:
    f.write('{"step": 1}\n')


def test_changed_config_is_refused_and_nothing_is_overwritten(tmp_path):
  root = tiny.image_folder(tmp_path)
  workdir = str(tmp_path / 'run')
  _fake_run(workdir, tiny.folder_config(root))
  before = open(os.path.join(workdir, 'config.json'), encoding='utf-8').read()
  with pytest.raises(
    workdir_lib.ConfigChangedError,
    match=r'(?s)schedule.base_lr: 0.001 -> 0.002.*--allow_config_change',
  ):
    train.train_and_evaluate(tiny.folder_config(root, **{'schedule.base_lr': 0.002}), workdir)
  assert open(os.path.join(workdir, 'config.json'), encoding='utf-8').read() == before
  assert sorted(os.listdir(workdir)) == ['config.json', 'metrics.jsonl']


def test_resumable_changes_pass_and_an_allowed_change_keeps_the_old_config(tmp_path):
  workdir = str(tmp_path / 'run')
  _fake_run(workdir, tiny.train_config())
  workdir_lib.check_and_record_config(
    tiny.train_config(total_steps=99, log_every_steps=7, mesh=(('fsdp', -1),)), workdir
  )
  assert sorted(os.listdir(workdir)) == ['config.json', 'metrics.jsonl']
  assert json.load(open(os.path.join(workdir, 'config.json')))['total_steps'] == 99
  workdir_lib.check_and_record_config(tiny.train_config(batch_size=32), workdir, allow_change=True)
  assert json.load(open(os.path.join(workdir, 'config.json')))['batch_size'] == 32
  assert json.load(open(os.path.join(workdir, 'config.1.json')))['total_steps'] == 99


def test_a_workdir_without_a_run_takes_any_config(tmp_path):
  workdir = str(tmp_path / 'run')
  # config.json only: an earlier failed start.
  workdir_lib.check_and_record_config(tiny.train_config(), workdir)
  workdir_lib.check_and_record_config(tiny.train_config(batch_size=32), workdir)
  assert json.load(open(os.path.join(workdir, 'config.json')))['batch_size'] == 32
