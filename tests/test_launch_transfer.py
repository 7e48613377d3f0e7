"""launch/transfer.py and launch/transfer_report.py: the offline suite end to end through the local
backend, interrupted and resumed; the learning rate chosen on validation only; the report's figures
equal the runs' own."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tiny

from launch import hyper, transfer, transfer_report
from launch import sweep as sweep_lib
from vit_jax.configs import loading
from vit_jax.runtime import workdir as workdir_lib

SUITE = os.path.join(tiny.REPO, 'configs', 'transfer_offline.py')
FAST = ['--config.total_steps=4', '--config.schedule.warmup_steps=1', '--config.log_every_steps=2']


def _runs(tmp_path, lrs, seeds=(0,)):
  return [
    sweep_lib.Run(
      f'lr={lr},seed={s}', {'schedule.base_lr': lr, 'seed': s}, str(tmp_path / f'{lr}_{s}'), ()
    )
    for lr in lrs
    for s in seeds
  ]


def test_the_learning_rate_is_chosen_on_validation_even_where_test_disagrees(tmp_path, monkeypatch):
  # lr 0.01 is best on validation and worst on test; 0.03 the reverse. The report takes 0.01 and its
  # test figure.
  val = {0.01: (0.90, 0.92), 0.03: (0.80, 0.82)}
  test = {0.01: (0.70, 0.74), 0.03: (0.99, 0.97)}
  runs = _runs(tmp_path, (0.01, 0.03), seeds=(0, 1))
  metrics = {
    r.workdir: {
      transfer_report.VAL: val[r.overrides['schedule.base_lr']][r.overrides['seed']],
      transfer_report.TEST: test[r.overrides['schedule.base_lr']][r.overrides['seed']],
    }
    for r in runs
  }
  monkeypatch.setattr(transfer_report.record, 'status', lambda _: 'finished')
  monkeypatch.setattr(transfer_report.record, 'read', lambda workdir: workdir)
  monkeypatch.setattr(transfer_report.workdir_lib, 'last_eval', lambda workdir: metrics[workdir])
  task = {'dataset': 'd'}
  row = transfer_report.task_row('t', task, runs, published=75.0)
  assert (row['chosen_lr'], row['seeds']) == (0.01, 2)
  assert row['val_accuracy'] == pytest.approx(91.0) and row['test_accuracy'] == pytest.approx(72.0)
  assert row['test_std'] == pytest.approx(2.0) and row['difference'] == pytest.approx(-3.0)
  # `choose` sees validation figures only: handing it the test figures would pick the other learning
  # rate.
  assert transfer_report.choose({lr: list(v) for lr, v in val.items()}) == 0.01
  assert transfer_report.choose({lr: list(v) for lr, v in test.items()}) == 0.03
  monkeypatch.setattr(transfer_report.record, 'status', lambda _: 'running')
  assert transfer_report.task_row('t', task, runs, None)['status'] == 'pending'


def test_suites_plan_valid_runs_and_bad_commands_are_one_line(tmp_path):
  for name in ('transfer_paper.py', 'transfer_vtab.py', 'transfer_offline.py'):
    module, suite = transfer.load_suite(os.path.join(tiny.REPO, 'configs', name))
    for task in suite['tasks']:
      spec = f'{module.__file__}:task={task},model=ViT-B_32'
      sweeps = sweep_lib.expand(spec, [])
      assert len(sweeps) == len(suite['tasks'][task]['lrs']) * suite['tasks'][task]['seeds']
      config = loading.from_command_line(spec, hyper.overrides_args(sweeps[0]))
      assert config.eval_split.startswith('val=') and ',test=' in config.eval_split
  paper = transfer.load_suite(os.path.join(tiny.REPO, 'configs', 'transfer_paper.py'))[1]
  assert (
    paper['published'][('B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0', 'cifar10')]
    == 98.55
  )
  assert paper['published'][('ViT-B_16', 'imagenet2012')] == 84.53
  assert (
    transfer.resolve_pretrained('ViT-B_16', None).path == 'gs://vit_models/imagenet21k/ViT-B_16.npz'
  )

  # An AugReg file's published figures come from the index: per task, the best adapt_final_val at
  # its resolution.
  name = 'B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0'
  index = tmp_path / 'index.csv'
  index.write_text(
    f'filename,adapt_ds,adapt_resolution,adapt_final_val,adapt_final_test\n{name},cifar100,384,'
    f'0.90,0.91\n{name},cifar100,384,0.92,0.89\n{name},cifar100,224,0.99,0.99\n{name},'
    'oxford_iiit_pet,224,0.93,0.94\nother,cifar10,384,0.99,0.99\n'
  )
  got = transfer.published_figures(
    paper, transfer.Pretrained(name, 'x', 'ViT-B_16', {}), str(index)
  )
  assert got[name, 'cifar100'] == pytest.approx(89.0) and got[
    name, 'oxford_iiit_pet'
  ] == pytest.approx(94.0)
  assert (name, 'cifar10') not in got

  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'launch.transfer',
      '--pretrained=x.npz',
      f'--suite={SUITE}',
      f'--out={tmp_path}',
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    env={**os.environ, 'PYTHONPATH': str(tiny.REPO)},
  )
  assert out.returncode == 2 and out.stderr.strip().count('\n') == 0
  assert 'is not a run directory, so --model must name its preset' in out.stderr


def _transfer(tmp_path, pretrained, *extra):
  return [
    sys.executable,
    '-m',
    'launch.transfer',
    f'--pretrained={pretrained}',
    f'--suite={SUITE}',
    f'--out={tmp_path / "out"}',
    *FAST,
    *extra,
  ]


def test_the_offline_suite_end_to_end_interrupted_and_resumed(tmp_path, digits_dir):
  pretrained = tmp_path / 'pretrained'
  done = tiny.run_main(
    tiny.tiny_main_args(
      pretrained,
      digits_dir,
      steps=20,
      **{
        'model.hidden_size': 32,
        'model.transformer.mlp_dim': 64,
        'model.transformer.num_heads': 2,
      },
    )
  )
  assert done.returncode == 0, done.stderr[-3000:]
  env = {**tiny.main_env(1), 'PYTHONPATH': str(tiny.REPO)}
  command = _transfer(tmp_path, pretrained, f'--config.tfds_data_dir={digits_dir}')
  out = tmp_path / 'out'
  first_run = out / 'finetune' / 'digits' / 'schedule.base_lr=0.003'
  proc = subprocess.Popen(
    command,
    cwd=tmp_path,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    start_new_session=True,
  )
  deadline = time.monotonic() + 300
  while (
    not (first_run / workdir_lib.PARAMS_FILE).exists()
    and proc.poll() is None
    and time.monotonic() < deadline
  ):
    time.sleep(0.2)
  os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal: the command and its runs.
  output = proc.communicate(timeout=120)[0]
  assert proc.returncode != 0 and not (out / 'transfer_report.md').exists(), output[-3000:]
  finished_at = (first_run / workdir_lib.PARAMS_FILE).stat().st_mtime

  again = subprocess.run(
    command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
  )
  assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
  assert 'digits: 2 runs' in again.stderr and '1 finished (skipped), 1 to run' in again.stderr
  assert (first_run / workdir_lib.PARAMS_FILE).stat().st_mtime == finished_at  # Not run again.

  with open(out / 'transfer_report.csv') as f:
    rows = {r['task']: r for r in csv.DictReader(f)}
  assert set(rows) == {'digits', 'stripes'} and all(r['status'] == 'done' for r in rows.values())
  for task, row in rows.items():
    chosen = [
      w
      for w in (out / 'finetune' / task).iterdir()
      if w.is_dir() and w.name.startswith(f'schedule.base_lr={float(row["chosen_lr"]):g}')
    ]
    tests = [100 * workdir_lib.last_eval(str(w))['eval/test/accuracy'] for w in chosen]
    assert float(row['test_accuracy']) == pytest.approx(sum(tests) / len(tests), abs=1e-4)
    assert int(row['seeds']) == len(tests) == (2 if task == 'stripes' else 1)
  fewshot = json.loads((out / transfer.FEWSHOT_FILE).read_text())
  assert float(rows['digits']['5-shot']) == pytest.approx(
    100 * fewshot['metrics']['fewshot/sklearn_digits_5shot'], abs=1e-4
  )
  assert (out / 'transfer_report.png').stat().st_size > 1000
  probed_at = (out / transfer.FEWSHOT_FILE).stat().st_mtime
  third = subprocess.run(
    command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
  )
  # Probes reused.
  assert third.returncode == 0 and (out / transfer.FEWSHOT_FILE).stat().st_mtime == probed_at
