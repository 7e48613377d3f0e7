"""What a new user meets: command-line overrides of every field, one-line config errors, a refused resume that
changes nothing, Ctrl-C that saves, a progress bar, finished runs left alone, metrics without repeated steps, clear
workdir errors, the memory plan's verdict."""
import glob
import io
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
from ml_collections.config_dict import FieldReference

import tiny
from test_reliability import _config, _on_train_batch
from vit_jax import metrics, train
from vit_jax import workdir as workdir_lib
from vit_jax.configs import check
from vit_jax.tools import memory_plan

REPO = pathlib.Path(__file__).resolve().parents[1]
# Every config file with the arguments to load it (a file added to configs/ must be listed here).
CONFIG_FILES = {'default.py': [''], 'vit.py': ['ViT-B_16,cifar10', 'R50+ViT-B_16,oxford_iiit_pet'],
                'pretrain_i21k.py': ['ViT-B_16'], 'pretrain_i1k.py': ['ViT-S_16,epochs=150']}
MAIN_FLAGS = ['--config.dataset=image_folder', '--config.image_size=16', '--config.model.hidden_size=32',
              '--config.model.transformer.num_layers=1', '--config.model.transformer.mlp_dim=64',
              '--config.model.transformer.num_heads=2', '--config.batch_size=8', '--config.eval_batch_size=8',
              '--config.total_steps=4', '--config.log_every_steps=2', '--config.eval_every_steps=4',
              '--config.checkpoint_every_steps=2', '--config.schedule.warmup_steps=1', '--config.prefetch=1']


def _field_type(config, name):
  *parents, leaf = name.split('.')
  for p in parents:
    config = config[p]
  raw = config._fields[leaf]  # pylint: disable=protected-access  (the declared type of a None field)
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
  assert sorted(os.path.basename(p) for p in glob.glob(str(REPO / 'configs' / '*.py'))) == sorted(CONFIG_FILES)


@pytest.mark.parametrize('path', [f'{REPO}/configs/{f}' + (f':{a}' if a else '') for f, args in CONFIG_FILES.items()
                                  for a in args])
def test_every_field_of_every_config_file_round_trips_through_the_command_line(path):
  base = tiny.main_config(path)
  fields = check.flat_keys(base)
  assert len(fields) > 50
  for name in fields:
    kind = _field_type(base, name)
    if kind is type(None):  # Only a pure ViT's `model.resnet`: choose a hybrid preset instead.
      assert name == 'model.resnet', name
      continue
    new = _other_value(_get(base, name), kind)
    text = repr(new) if kind is tuple else str(new)
    assert _get(tiny.main_config(path, [f'--config.{name}={text}']), name) == new, name


def test_none_and_wider_typed_fields_take_their_real_type():
  path = f'{REPO}/configs/vit.py:R26+ViT-S_32,cifar10'
  config = tiny.main_config(path, ['--config.model.representation_size=48', '--config.model.resnet.width_factor=0.5',
                         '--config.tfds_data_dir=/data'])
  assert (config.model.representation_size, config.model.resnet.width_factor, config.tfds_data_dir) == (
      48, 0.5, '/data')


def _main(args, cwd, **kw):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}
  return subprocess.run([sys.executable, '-m', 'vit_jax.main', *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300, **kw)


@pytest.mark.parametrize('arg,line', [
    ('--config.learning_rate=0.1', "main.py: Unknown config field 'learning_rate': configs are locked to the fields "
                                   'of vit_jax/configs/common.py; did you mean schedule.base_lr?'),
    ('--config.batch=64', "main.py: Unknown config field 'batch': configs are locked to the fields of "
                          "vit_jax/configs/common.py; use batch_size (vision_transformer calls it 'batch')"),
    ('--config.total_steps=abc', 'main.py: Bad command line (flag --config.total_steps=abc): ValueError: invalid '
                                 "literal for int() with base 10: 'abc'"),
])
def test_a_bad_override_is_one_line_and_exit_status_2(tmp_path, arg, line):
  proc = _main([arg, f'--workdir={tmp_path}/w'], tmp_path)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [line]
  assert not os.path.exists(tmp_path / 'w')


def _snapshot(workdir):
  """{relative path: bytes} of every file under workdir."""
  out = {}
  for path in pathlib.Path(workdir).rglob('*'):
    if path.is_file():
      out[str(path.relative_to(workdir))] = path.read_bytes()
  return out


def test_incompatible_allowed_change_is_one_clear_error_and_changes_nothing(tmp_path):
  root = tiny.image_folder(tmp_path)
  workdir = tmp_path / 'run'
  args = [f'--config={REPO}/configs/default.py', f'--workdir={workdir}', f'--config.image_folder={root}', *MAIN_FLAGS]
  assert _main(args, tmp_path).returncode == 0
  before = _snapshot(workdir)
  proc = _main(args + ['--config.model.hidden_size=48', '--config.total_steps=8', '--allow_config_change'], tmp_path)
  assert proc.returncode == 1
  error = proc.stderr[proc.stderr.index('vit_jax.main: error: '):]
  assert error.startswith('vit_jax.main: error: The checkpoint at step 4 in ') and 'does not fit the model' in error
  assert "'params/Transformer/encoder_norm/bias': checkpoint (32,) vs model (48,)" in error
  assert 'Traceback' not in proc.stderr and 'Event loop is closed' not in proc.stderr
  assert _snapshot(workdir) == before  # config.json untouched: the original command still resumes.
  rerun = _main(args + ['--config.total_steps=6'], tmp_path)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert [r['step'] for r in workdir_lib.read_metrics(str(workdir)) if 'train/loss' in r] == [2, 4, 6]


def test_first_ctrl_c_saves_and_stops_and_the_run_resumes(tmp_path, monkeypatch):
  root = tiny.image_folder(tmp_path)
  workdir = str(tmp_path / 'run')

  def ctrl_c_at(k, batch):
    if k == 4:  # Delivered as the loop starts step 3.
      os.kill(os.getpid(), signal.SIGINT)
    return batch

  with monkeypatch.context() as m:
    _on_train_batch(m, ctrl_c_at)
    assert train.train_and_evaluate(_config(root), workdir) == {'preempted_at_step': 3}
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is back to normal.
  assert workdir_lib.holds_run(workdir) and not os.path.exists(os.path.join(workdir, 'params.npz'))
  result = train.train_and_evaluate(_config(root), workdir)
  assert result['eval/num_examples'] == 6
  assert [r['step'] for r in workdir_lib.read_metrics(workdir) if 'train/loss' in r] == [2, 4, 6, 7]


def test_ctrl_c_on_the_command_line_exits_0_with_a_checkpoint_and_says_how_to_resume(tmp_path):
  root = tiny.image_folder(tmp_path)
  workdir = tmp_path / 'run'
  args = [f'--config={REPO}/configs/default.py', f'--workdir={workdir}', f'--config.image_folder={root}', *MAIN_FLAGS,
          '--config.total_steps=100000', '--config.log_every_steps=1', '--config.checkpoint_every_steps=100000']
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}
  proc = subprocess.Popen([sys.executable, '-m', 'vit_jax.main', *args], cwd=tmp_path, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline and not workdir_lib.read_metrics(str(workdir)):
    time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=240)
  assert proc.returncode == 0, out[-2000:]
  assert 'Ctrl-C: finishing this step, saving a checkpoint and stopping' in out
  assert 'Stopped by Ctrl-C: saved a checkpoint at step' in out and 'rerun the same command to resume' in out
  assert 'Traceback' not in out
  assert workdir_lib.holds_run(str(workdir))


def test_second_ctrl_c_aborts_at_once(tmp_path, monkeypatch):
  root = tiny.image_folder(tmp_path)

  def two_ctrl_c(k, batch):
    if k == 3:
      os.kill(os.getpid(), signal.SIGINT)
      os.kill(os.getpid(), signal.SIGINT)
    return batch

  with monkeypatch.context() as m:
    _on_train_batch(m, two_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
      train.train_and_evaluate(_config(root), str(tmp_path / 'run'))
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


class _Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_bar_advances_every_step_and_log_lines_stand_alone(monkeypatch):
  terminal = _Terminal()
  monkeypatch.setattr(sys, 'stderr', terminal)
  handler = logging.StreamHandler(terminal)
  logging.getLogger().addHandler(handler)
  try:
    progress = metrics.Progress(total_steps=10, start_step=2, enabled=True)
    for step in (3, 4, 5):
      progress.step(step)  # Host-side only: no figures needed.
    assert progress._bar.n == 5  # pylint: disable=protected-access
    progress.report(5, loss=1.2345, img_per_sec=99.0)
    assert 'loss=1.2345' in str(progress._bar)  # pylint: disable=protected-access
    logging.getLogger('vit_jax.test').warning('step 5: eval accuracy 0.5')
    progress.close()
  finally:
    logging.getLogger().removeHandler(handler)
  text = terminal.getvalue()
  line = next(part for part in text.replace('\r', '\n').split('\n') if 'eval accuracy' in part)
  assert line == 'step 5: eval accuracy 0.5'  # On its own line, not glued to the bar.
  assert not handler.filters  # The bar's filter is gone with the bar.


def test_plain_progress_lines_without_a_terminal(caplog):
  progress = metrics.Progress(total_steps=10, start_step=0, enabled=True)
  with caplog.at_level(logging.INFO, logger='vit_jax'):
    progress.step(1)
    progress.report(2, loss=0.5, img_per_sec=10.0)
  progress.close()
  assert 'step 2/10  loss 0.5000  img/s 10.0  ETA' in caplog.text


def test_rerunning_a_finished_run_writes_nothing(tmp_path, caplog):
  root = tiny.image_folder(tmp_path)
  workdir = str(tmp_path / 'run')
  first = train.train_and_evaluate(_config(root), workdir)
  before = _snapshot(workdir)
  with caplog.at_level(logging.INFO, logger='vit_jax'):
    again = train.train_and_evaluate(_config(root), workdir)
    evaluated = train.train_and_evaluate(_config(root), workdir, reevaluate=True)
  assert f'The run in {workdir} is complete (step 7 of total_steps=7): nothing to do' in caplog.text
  assert again['eval/accuracy'] == evaluated['eval/accuracy'] == first['eval/accuracy']
  assert again['step'] == 7
  assert _snapshot(workdir) == before


def test_steps_trained_again_after_a_crash_are_recorded_once(tmp_path, monkeypatch):
  root = tiny.image_folder(tmp_path)
  workdir = str(tmp_path / 'run')
  config = _config(root, log_every_steps=1, checkpoint_every_steps=2)

  def crash_at(k, batch):
    if k == 7:  # Drawn as step 6 starts: steps 1-5 ran and were logged, the last checkpoint is step 4.
      raise RuntimeError('simulated crash')
    return batch

  with monkeypatch.context() as m:
    _on_train_batch(m, crash_at)
    with pytest.raises(RuntimeError, match='simulated crash'):
      train.train_and_evaluate(config, workdir)
  assert max(r['step'] for r in workdir_lib.read_metrics(workdir)) == 5  # Step 5 ran but was never saved.
  train.train_and_evaluate(config, workdir)
  steps = [r['step'] for r in workdir_lib.read_metrics(workdir) if 'train/loss' in r]
  assert steps == list(range(1, 8))


def test_a_workdir_that_is_a_file_is_a_clear_error(tmp_path):
  (tmp_path / 'f').write_text('not a dir')
  with pytest.raises(workdir_lib.WorkdirError, match=r'is a file, not a directory; give --workdir a directory'):
    train.train_and_evaluate(tiny.train_config(), str(tmp_path / 'f'))


def test_memory_plan_verdict_and_largest_batch():
  p = memory_plan.plan('ViT-B_16', 512, 'data:-1', 8, 'replicate', remat='dots')
  largest = memory_plan.max_batch_per_device(p, 3 * memory_plan.GIB)
  assert memory_plan.verdict(p, 80).startswith('fits in 80 GiB per device')
  assert memory_plan.verdict(p, 3) == (
      f'does NOT fit in 3 GiB per device ({p["bytes_per_device"]["total"] / memory_plan.GIB:.2f} GiB); the largest '
      f'per-device batch that fits is {largest} (use config.accum_steps to reach the global batch).')
  assert 0 < largest < 64
  assert memory_plan.hbm_gib('TPU v5p chip') == 95 and memory_plan.hbm_gib('NVIDIA H100 80GB HBM3') == 80
  with pytest.raises(ValueError, match="Unknown device kind 'CPU'"):
    memory_plan.hbm_gib('CPU')
  none, dots, full = (memory_plan.plan('ViT-B_16', 512, 'data:-1', 8, 'replicate', remat=r)['bytes_per_device']
                      ['activations'] for r in ('none', 'dots', 'full'))
  assert full < dots < none
