"""`python -m vit_jax.main` as a user runs it: a default run with overrides; every mistake and fault
is one line with its exit status, before any work is wasted, and nothing written before is lost;
Ctrl-C saves and says how to resume."""

import os
import signal
import subprocess
import time

import numpy as np
from PIL import Image
import pytest
import tiny

from vit_jax.configs import default
from vit_jax.runtime import workdir as workdir_lib

REPO = tiny.REPO
MAIN_FLAGS = [
  '--config.dataset=image_folder',
  '--config.image_size=16',
  '--config.model.hidden_size=32',
  '--config.model.transformer.num_layers=1',
  '--config.model.transformer.mlp_dim=64',
  '--config.model.transformer.num_heads=2',
  '--config.batch_size=8',
  '--config.eval_batch_size=8',
  '--config.total_steps=4',
  '--config.log_every_steps=2',
  '--config.eval_every_steps=4',
  '--config.checkpoint_every_steps=2',
  '--config.schedule.warmup_steps=1',
  '--config.prefetch=1',
]


def test_main_trains_default_config_with_overrides(tmp_path, digits_dir):
  # (A build of the dataset by vit_jax.main is test_train.py's
  # test_training_never_imports_tensorflow_even_when_it_prepares_the_dataset.)
  proc = tiny.run_main(
    [
      f'--config={REPO}/configs/default.py',
      f'--workdir={tmp_path}/w',
      f'--config.tfds_data_dir={digits_dir}',
      '--config.total_steps=3',
      '--config.log_every_steps=1',
      '--config.eval_every_steps=3',
      '--config.schedule.warmup_steps=1',
    ],
    cwd=tmp_path,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = workdir_lib.read_metrics(f'{tmp_path}/w')
  assert tiny.logged_steps(records, 'train/loss') == [1, 2, 3]
  assert [r['eval/accuracy'] for r in records if 'eval/accuracy' in r][0] >= 0.0
  assert 'step 3/3' in proc.stderr and 'ETA' in proc.stderr


def test_main_rejects_unknown_config_key(tmp_path):
  proc = tiny.run_main(
    [f'--workdir={tmp_path}/w', '--config.batchsize=3'], cwd=tmp_path, timeout=300
  )
  assert proc.returncode != 0
  assert 'batchsize' in proc.stderr
  assert not os.path.exists(f'{tmp_path}/w')


def _last_line(proc):
  err = proc.stderr.strip()
  assert 'Traceback' not in err, err[-3000:]
  return err.splitlines()[-1]


def test_no_flags_help_and_a_bad_value_on_the_command_line(tmp_path):
  proc = tiny.run_main(['--workdir', tmp_path / 'w', '--config.model.patches.size=4'])
  assert proc.returncode == 2
  assert _last_line(proc) == (
    'vit_jax.main: error: config.model.patches.size=(4,) must be a pair of positive integers '
    '(height, width), e.g. (16, 16); on the command line --config.model.patches.size="(16, 16)".; '
    'fix the config file or its --config.* overrides'
  )
  assert not (tmp_path / 'w').exists()  # Nothing written: no empty checkpoints/ folder.
  proc = tiny.run_main(['--workdir', tmp_path / 'w', '--config.schedule.warmup_steps=5000'])
  assert (
    proc.returncode == 2
    and f'warmup_steps=5000 is more than config.total_steps={default.get_config().total_steps}'
    in _last_line(proc)
  )


@pytest.mark.parametrize(
  'arg,line',
  [
    (
      '--config.learning_rate=0.1',
      "vit_jax.main: error: Unknown config field 'learning_rate': configs are locked to the fields "
      'of vit_jax/configs/common.py; did you mean schedule.base_lr?',
    ),
    (
      '--config.batch=64',
      "vit_jax.main: error: Unknown config field 'batch': configs are locked to the fields of "
      "vit_jax/configs/common.py; use batch_size (vision_transformer calls it 'batch')",
    ),
    (
      '--config.total_steps=abc',
      'vit_jax.main: error: bad command line (flag --config.total_steps=abc): ValueError: invalid '
      "literal for int() with base 10: 'abc'",
    ),
  ],
)
def test_a_bad_override_is_one_line_and_exit_status_2(tmp_path, arg, line):
  proc = tiny.run_main([arg, f'--workdir={tmp_path}/w'], cwd=tmp_path, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [line]
  assert not os.path.exists(tmp_path / 'w')


def test_a_rule_of_the_runs_task_is_a_usage_error_too(tmp_path):
  """main checks the config through the one entry point (vit_jax/training/preflight.py): a LiT
  run's objective rule (vit_jax/tasks/image_text.py) is refused like a bad field, before anything is
  written."""
  args = [f'--config={REPO}/configs/lit.py', '--config.mixup_p=0.2', f'--workdir={tmp_path}/w']
  proc = tiny.run_main(args, cwd=tmp_path, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
    'vit_jax.main: error: config.mixup_p=0.2: mixup mixes class labels, and image-text training '
    'has none; set it to 0.; fix the config file or its --config.* overrides'
  ]
  assert not os.path.exists(tmp_path / 'w')


def test_incompatible_allowed_change_is_one_clear_error_and_changes_nothing(tmp_path):
  root = tiny.image_folder(tmp_path)
  workdir = tmp_path / 'run'
  args = [
    f'--config={REPO}/configs/default.py',
    f'--workdir={workdir}',
    f'--config.image_folder={root}',
    *MAIN_FLAGS,
  ]
  assert tiny.run_main(args, cwd=tmp_path, timeout=300).returncode == 0
  before = tiny.snapshot(workdir)
  proc = tiny.run_main(
    args + ['--config.model.hidden_size=48', '--config.total_steps=8', '--allow_config_change'],
    cwd=tmp_path,
    timeout=300,
  )
  assert proc.returncode == 1
  error = proc.stderr[proc.stderr.index('vit_jax.main: error: ') :]
  assert (
    error.startswith('vit_jax.main: error: The checkpoint at step 4 in ')
    and 'does not fit the model' in error
  )
  assert "'params/Transformer/encoder_norm/bias': checkpoint (32,) vs model (48,)" in error
  assert 'Traceback' not in proc.stderr and 'Event loop is closed' not in proc.stderr
  # config.json untouched: the original command still resumes.
  assert tiny.snapshot(workdir) == before
  rerun = tiny.run_main(args + ['--config.total_steps=6'], cwd=tmp_path, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert [r['step'] for r in workdir_lib.read_metrics(str(workdir)) if 'train/loss' in r] == [
    2,
    4,
    6,
  ]


def _folder(root, *, bad=(), extra_test_class=None):
  rng = np.random.default_rng(0)
  for split, n in (('train', 3), ('test', 2)):
    for label, name in enumerate(('a', 'b')):
      os.makedirs(root / split / name)
      for i in range(n):
        Image.fromarray((rng.uniform(0, 1, (8, 8, 3)) * 120 + 60 * label).astype(np.uint8)).save(
          root / split / name / f'{i}.png'
        )
  for name, data in bad:
    (root / 'train' / 'a' / name).write_bytes(data)
  if extra_test_class:
    os.makedirs(root / 'test' / extra_test_class)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / 'test' / extra_test_class / '0.png')
  return str(root)


def test_bad_image_files_and_a_class_the_train_folder_lacks_are_one_line(tmp_path):
  jpeg = tmp_path / 'x.jpg'
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(jpeg)
  folder = _folder(
    tmp_path / 'images', bad=[('cut.jpg', jpeg.read_bytes()[:100]), ('notes.jpg', b'not an image')]
  )
  proc = tiny.run_main(tiny.tiny_main_args(tmp_path / 'w', tmp_path / 'tfds', dataset=folder))
  assert proc.returncode == 1
  line = _last_line(proc)
  assert (
    'holds 2 file(s) that cannot be decoded as an image' in line
    and 'cut.jpg' in line
    and 'notes.jpg' in line
  )
  folder = _folder(tmp_path / 'images2', extra_test_class='zebra')
  proc = tiny.run_main(tiny.tiny_main_args(tmp_path / 'w2', tmp_path / 'tfds', dataset=folder))
  assert proc.returncode == 1 and 'has classes that the train folder lacks' in _last_line(proc)


def test_a_pretrained_path_that_is_not_a_checkpoint_stops_before_the_dataset(tmp_path):
  (tmp_path / 'config.json').write_text('{"model": {}}')
  started = time.monotonic()
  proc = tiny.run_main(
    tiny.tiny_main_args(
      tmp_path / 'w', tmp_path / 'tfds', dataset='cifar10', pretrained_path=tmp_path / 'config.json'
    )
  )
  assert proc.returncode == 1
  assert 'is not a checkpoint: it is JSON text, not an .npz file' in _last_line(proc)
  # Before any data or workdir.
  assert not (tmp_path / 'tfds').exists() and not (tmp_path / 'w').exists()
  assert time.monotonic() - started < 60


def test_a_read_only_workdir_is_one_line(tmp_path, digits_dir):
  mount = tmp_path / 'ro'
  tiny.mount_tmpfs(mount, '4m')
  try:
    tiny.remount(mount, 'ro')
    proc = tiny.run_main(tiny.tiny_main_args(mount / 'w', digits_dir))
  finally:
    tiny.umount(mount)
  assert proc.returncode == 1
  assert _last_line(proc).startswith(
    f'vit_jax.main: error: Cannot write to the workdir {mount}/w: Read-only file system'
  )


def test_a_full_disk_stops_at_the_first_failed_save_and_the_rerun_resumes(tmp_path, digits_dir):
  mount = tmp_path / 'small'
  # A checkpoint of this model is ~0.8 MB with Adam's moments: 2 or 3 fit.
  tiny.mount_tmpfs(mount, '2500k')
  workdir = mount / 'w'
  args = tiny.tiny_main_args(
    workdir, digits_dir, steps=8, checkpoint_every_steps=2, keep=5, eval_every_steps=8
  )
  try:
    proc = tiny.run_main(args)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = _last_line(proc)
    assert 'No space left on device' in line and 'free some space' in line, proc.stderr[-3000:]
    good = int(line.split('The last good checkpoint is step ')[1].split(';')[0])
    assert line.endswith('; rerunning the same command resumes from it.')
    assert workdir_lib.checkpoint_steps(str(workdir)) == list(range(2, good + 1, 2))
    last_record = max(r['step'] for r in workdir_lib.read_metrics(str(workdir)))
    if 'Saving the checkpoint of step ' in line:
      failed = int(line.split('Saving the checkpoint of step ')[1].split()[0])
      assert failed in (4, 6, 8) and failed == good + 2
      # It stopped at the next log or save step: the asynchronous save fails in the background.
      assert failed <= last_record <= failed + 2
    else:  # The save took the last space, and the next write of the run (its metrics) failed.
      assert line.startswith('vit_jax.main: error: Training stopped at step '), line
      stopped = int(line.split('Training stopped at step ')[1].split(':')[0])
      assert f'No space left on device ({workdir}/' in line and good in (2, 4, 6)
      assert good < stopped and last_record <= stopped
    tiny.remount(mount, 'size=64m')  # Space freed.
    proc = tiny.run_main(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Resuming from' in proc.stderr and f'at step {good}' in proc.stderr
    steps = [r['step'] for r in workdir_lib.read_metrics(str(workdir)) if 'train/loss' in r]
    # Each step once: the records after step 2 were written again.
    assert steps == list(range(1, 9))
  finally:
    tiny.umount(mount)


def test_ctrl_c_while_the_dataset_is_prepared_says_so_and_exits_130(tmp_path):
  log = open(tmp_path / 'main.log', 'w+', encoding='utf-8')
  proc = tiny.start_main(tiny.tiny_main_args(tmp_path / 'w', tmp_path / 'tfds'), log=log)
  deadline = time.monotonic() + 120
  while (
    'Preparing TFDS dataset' not in open(tmp_path / 'main.log').read()
    and time.monotonic() < deadline
  ):
    assert proc.poll() is None, open(tmp_path / 'main.log').read()[-3000:]
    time.sleep(0.1)
  proc.send_signal(signal.SIGINT)
  assert proc.wait(timeout=120) == 130
  text = open(tmp_path / 'main.log').read()
  assert 'Traceback' not in text, text[-3000:]
  assert text.strip().splitlines()[-1] == (
    'vit_jax.main: aborted by Ctrl-C before training started (while preparing the data or the '
    'model): nothing was trained or lost; rerun the same command to start again.'
  )
  assert not os.path.exists(tmp_path / 'w' / workdir_lib.LOCK_FILE)  # Released.


def test_ctrl_c_on_the_command_line_exits_0_with_a_checkpoint_and_says_how_to_resume(tmp_path):
  root = tiny.image_folder(tmp_path)
  workdir = tmp_path / 'run'
  args = [
    f'--config={REPO}/configs/default.py',
    f'--workdir={workdir}',
    f'--config.image_folder={root}',
    *MAIN_FLAGS,
    '--config.total_steps=100000',
    '--config.log_every_steps=1',
    '--config.checkpoint_every_steps=100000',
  ]
  proc = tiny.start_main(args, cwd=tmp_path, log=subprocess.PIPE)
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline and not workdir_lib.read_metrics(str(workdir)):
    time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=240)
  assert proc.returncode == 0, out[-2000:]
  assert 'Ctrl-C: finishing this step, saving a checkpoint and stopping' in out
  assert (
    'Stopped by Ctrl-C: saved a checkpoint at step' in out
    and 'rerun the same command to resume' in out
  )
  assert 'Traceback' not in out
  assert workdir_lib.holds_run(str(workdir))


def test_a_missing_config_file_is_named_in_the_one_error_format(tmp_path):
  proc = tiny.run_main(
    ['--config=configs/nope.py:ViT-B_16', f'--workdir={tmp_path}/w'], cwd=tmp_path, timeout=300
  )
  assert proc.returncode == 2
  (line,) = proc.stderr.strip().splitlines()
  assert line.startswith(
    "vit_jax.main: error: --config=configs/nope.py:ViT-B_16: no config file 'configs/nope.py'"
  )
  assert 'e.g. --config=configs/vit.py' in line and 'config_config' not in line
  assert not (tmp_path / 'w').exists()
