"""`python -m vit_jax.main` as a user runs it: every mistake and fault is one line with its exit status, before any
work is wasted, and nothing written before is lost."""
import os
import signal
import time

import numpy as np
from PIL import Image

import tiny
from vit_jax import workdir as workdir_lib


def _last_line(proc):
  err = proc.stderr.strip()
  assert 'Traceback' not in err, err[-3000:]
  return err.splitlines()[-1]


def test_no_flags_help_and_a_bad_value_on_the_command_line(tmp_path):
  proc = tiny.run_main(['--workdir', tmp_path / 'w', '--config.model.patches.size=4'])
  assert proc.returncode == 2
  assert _last_line(proc) == ('main.py: Bad config: config.model.patches.size=(4,) must be a pair of positive integers '
                              '(height, width), e.g. (16, 16); on the command line --config.model.patches.size="(16, '
                              '16)".')
  assert not (tmp_path / 'w').exists()  # Nothing written: no empty checkpoints/ folder.
  proc = tiny.run_main(['--workdir', tmp_path / 'w', '--config.schedule.warmup_steps=5000'])
  assert proc.returncode == 2 and 'warmup_steps=5000 is more than config.total_steps=1200' in _last_line(proc)


def _folder(root, *, bad=(), extra_test_class=None):
  rng = np.random.default_rng(0)
  for split, n in (('train', 3), ('test', 2)):
    for label, name in enumerate(('a', 'b')):
      os.makedirs(root / split / name)
      for i in range(n):
        Image.fromarray((rng.uniform(0, 1, (8, 8, 3)) * 120 + 60 * label).astype(np.uint8)).save(
            root / split / name / f'{i}.png')
  for name, data in bad:
    (root / 'train' / 'a' / name).write_bytes(data)
  if extra_test_class:
    os.makedirs(root / 'test' / extra_test_class)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / 'test' / extra_test_class / '0.png')
  return str(root)


def test_bad_image_files_and_a_class_the_train_folder_lacks_are_one_line(tmp_path):
  jpeg = (tmp_path / 'x.jpg')
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(jpeg)
  folder = _folder(tmp_path / 'images', bad=[('cut.jpg', jpeg.read_bytes()[:100]), ('notes.jpg', b'not an image')])
  proc = tiny.run_main(tiny.tiny_main_args(tmp_path / 'w', tmp_path / 'tfds', dataset=folder))
  assert proc.returncode == 1
  line = _last_line(proc)
  assert 'holds 2 file(s) that cannot be decoded as an image' in line and 'cut.jpg' in line and 'notes.jpg' in line
  folder = _folder(tmp_path / 'images2', extra_test_class='zebra')
  proc = tiny.run_main(tiny.tiny_main_args(tmp_path / 'w2', tmp_path / 'tfds', dataset=folder))
  assert proc.returncode == 1 and 'has classes that the train folder lacks' in _last_line(proc)


def test_a_pretrained_path_that_is_not_a_checkpoint_stops_before_the_dataset(tmp_path):
  (tmp_path / 'config.json').write_text('{"model": {}}')
  started = time.monotonic()
  proc = tiny.run_main(tiny.tiny_main_args(tmp_path / 'w', tmp_path / 'tfds', dataset='cifar10',
                                           pretrained_path=tmp_path / 'config.json'))
  assert proc.returncode == 1
  assert 'is not a checkpoint: it is JSON text, not an .npz file' in _last_line(proc)
  assert not (tmp_path / 'tfds').exists() and not (tmp_path / 'w').exists()  # Before any data or workdir.
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
  assert _last_line(proc).startswith(f'vit_jax.main: error: Cannot write to the workdir {mount}/w: Read-only file '
                                     'system')


def test_a_full_disk_stops_at_the_first_failed_save_and_the_rerun_resumes(tmp_path, digits_dir):
  mount = tmp_path / 'small'
  tiny.mount_tmpfs(mount, '2500k')  # A checkpoint of this model is ~0.8 MB with Adam's moments: 2 or 3 fit.
  workdir = mount / 'w'
  args = tiny.tiny_main_args(workdir, digits_dir, steps=8, checkpoint_every_steps=2, keep=5, eval_every_steps=8)
  try:
    proc = tiny.run_main(args)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = _last_line(proc)
    failed = int(line.split('Saving the checkpoint of step ')[1].split()[0])
    assert failed in (4, 6, 8) and 'failed: No space left on device: free some space' in line
    assert f'The last good checkpoint is step {failed - 2}; rerunning the same command resumes from it.' in line
    assert workdir_lib.checkpoint_steps(str(workdir)) == list(range(2, failed, 2))
    # It stopped at the next log or save step: the asynchronous save fails in the background.
    assert failed <= max(r['step'] for r in workdir_lib.read_metrics(str(workdir))) <= failed + 2
    tiny.remount(mount, 'size=64m')  # Space freed.
    proc = tiny.run_main(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Resuming from' in proc.stderr and f'at step {failed - 2}' in proc.stderr
    steps = [r['step'] for r in workdir_lib.read_metrics(str(workdir)) if 'train/loss' in r]
    assert steps == list(range(1, 9))  # Each step once: the records after step 2 were written again.
  finally:
    tiny.umount(mount)


def test_ctrl_c_while_the_dataset_is_prepared_says_so_and_exits_130(tmp_path):
  log = open(tmp_path / 'main.log', 'w+', encoding='utf-8')
  proc = tiny.start_main(tiny.tiny_main_args(tmp_path / 'w', tmp_path / 'tfds'), log=log)
  deadline = time.monotonic() + 120
  while 'Preparing TFDS dataset' not in open(tmp_path / 'main.log').read() and time.monotonic() < deadline:
    assert proc.poll() is None, open(tmp_path / 'main.log').read()[-3000:]
    time.sleep(0.1)
  proc.send_signal(signal.SIGINT)
  assert proc.wait(timeout=120) == 130
  text = open(tmp_path / 'main.log').read()
  assert 'Traceback' not in text, text[-3000:]
  assert text.strip().splitlines()[-1] == (
      'vit_jax.main: aborted by Ctrl-C before training started (while preparing the data or the model): nothing was '
      'trained or lost; rerun the same command to start again.')
  assert not os.path.exists(tmp_path / 'w' / workdir_lib.LOCK_FILE)  # Released.
