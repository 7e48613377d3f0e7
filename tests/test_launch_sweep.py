"""launch.sweep: expansion (product, zip, chain, get_sweep, --sweep), run names, the local backend
end to end (a real 2x2 sweep, 2 at a time, then `results` and a rerun that skips), one GPU per run,
and the results table."""

import csv
import datetime
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

from launch_fakes import FakeGcloud, gcs  # noqa: F401  (gcs: a fixture)
import pytest
import tiny

from launch import hyper, record, results, shell, sweep, sweep_local
from vit_jax.runtime import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = [
  '--config.model.hidden_size=32',
  '--config.model.transformer.num_layers=1',
  '--config.model.transformer.mlp_dim=64',
  '--config.model.transformer.num_heads=2',
  '--config.batch_size=16',
  '--config.log_every_steps=1',
  '--config.eval_every_steps=2',
  '--config.checkpoint_every_steps=2',
  '--config.schedule.warmup_steps=1',
]


def test_helpers_combine_runs():
  lr, steps = (
    hyper.sweep('config.schedule.base_lr', [0.1, 0.2]),
    hyper.sweep('total_steps', [5, 10]),
  )
  assert hyper.product([lr, steps]) == [
    {'schedule.base_lr': 0.1, 'total_steps': 5},
    {'schedule.base_lr': 0.1, 'total_steps': 10},
    {'schedule.base_lr': 0.2, 'total_steps': 5},
    {'schedule.base_lr': 0.2, 'total_steps': 10},
  ]
  assert hyper.zip([lr, steps]) == [
    {'schedule.base_lr': 0.1, 'total_steps': 5},
    {'schedule.base_lr': 0.2, 'total_steps': 10},
  ]
  assert hyper.chain([lr, hyper.fixed('seed', 3)]) == [
    {'schedule.base_lr': 0.1},
    {'schedule.base_lr': 0.2},
    {'seed': 3},
  ]
  assert hyper.product([lr, hyper.fixed('config.seed', 3)]) == [
    {'schedule.base_lr': 0.1, 'seed': 3},
    {'schedule.base_lr': 0.2, 'seed': 3},
  ]
  with pytest.raises(ValueError, match='different lengths'):
    hyper.zip([lr, hyper.sweep('seed', [1, 2, 3])])
  with pytest.raises(ValueError, match='same key twice'):
    hyper.product([lr, hyper.sweep('schedule.base_lr', [1])])
  with pytest.raises(ValueError, match='Bad sweep key'):
    hyper.sweep('config.bad key', [1])


def test_command_line_sweeps_are_a_product():
  assert hyper.parse_cli(['config.schedule.base_lr=0.01,0.03', 'config.total_steps=500,1000']) == [
    {'schedule.base_lr': '0.01', 'total_steps': '500'},
    {'schedule.base_lr': '0.01', 'total_steps': '1000'},
    {'schedule.base_lr': '0.03', 'total_steps': '500'},
    {'schedule.base_lr': '0.03', 'total_steps': '1000'},
  ]
  with pytest.raises(ValueError, match='expected KEY=V1,V2'):
    hyper.parse_cli(['config.total_steps'])


def test_get_sweep_of_a_config_file_with_and_without_its_argument(tmp_path):
  path = tmp_path / 'cfg.py'
  path.write_text(
    textwrap.dedent("""
      def get_config(arg='a'):
        return None
      def get_sweep(h, arg='a'):
        return h.zip([h.sweep('config.seed', [1, 2]),
                      h.sweep('config.model.hidden_size', [len(arg), 7])])
  """)
  )
  assert sweep.expand(str(path), []) == [
    {'seed': 1, 'model.hidden_size': 1},
    {'seed': 2, 'model.hidden_size': 7},
  ]
  assert sweep.expand(f'{path}:xyz', [])[0] == {'seed': 1, 'model.hidden_size': 3}
  # --sweep replaces get_sweep.
  assert sweep.expand(str(path), ['config.seed=9']) == [{'seed': '9'}]
  path.write_text('def get_config():\n  return None\n')
  with pytest.raises(ValueError, match='No sweep: pass --sweep'):
    sweep.expand(str(path), [])


def test_vit_config_sweeps_the_published_learning_rates_by_two_durations():
  runs = sweep.expand(f'{REPO}/configs/vit.py:ViT-B_16,cifar10', [])
  assert len(runs) == 8
  assert sorted({r['schedule.base_lr'] for r in runs}) == [0.001, 0.003, 0.01, 0.03]
  assert sorted({r['total_steps'] for r in runs}) == [2_500, 10_000]
  assert {
    r['total_steps'] for r in sweep.expand(f'{REPO}/configs/vit.py:ViT-L_16,oxford_iiit_pet', [])
  } == {500, 2_500}


def test_run_names_are_readable_stable_and_unique():
  assert (
    hyper.run_name({'total_steps': 500, 'schedule.base_lr': 0.01})
    == 'schedule.base_lr=0.01,total_steps=500'
  )
  assert (
    hyper.run_name({'schedule.base_lr': '0.01', 'total_steps': '500'})
    == 'schedule.base_lr=0.01,total_steps=500'
  )
  assert hyper.run_name({}) == 'base'
  odd = hyper.run_name({'dataset': 'a b/c', 'model.patches.size': (4, 4)})
  assert (
    odd == 'dataset=a_b_c,model.patches.size=_4__4_~' + odd.split('~')[1]
    and len(odd.split('~')[1]) == 10
  )
  assert odd == hyper.run_name({'model.patches.size': (4, 4), 'dataset': 'a b/c'})  # Stable.
  names = [
    hyper.run_name(r)
    for r in sweep.expand(f'{REPO}/configs/vit.py:ViT-B_16,cifar10', [])
    + [{'dataset': 'a b'}, {'dataset': 'a_b'}, {'dataset': 'a/b'}, {'x': 'y' * 200}]
  ]
  assert len(set(names)) == len(names)
  assert all(len(n) <= hyper.MAX_NAME + 11 and '/' not in n for n in names)


def test_plan_refuses_a_repeated_run_and_a_key_both_swept_and_fixed(tmp_path):
  with pytest.raises(ValueError, match='lists the run'):
    sweep.plan('c.py', str(tmp_path), [{'seed': 1}, {'seed': '1'}], {})
  with pytest.raises(ValueError, match='both swept and fixed'):
    sweep.plan('c.py', str(tmp_path), [{'seed': 1}], {'seed': '2'})
  runs = sweep.plan('c.py', str(tmp_path), [{'seed': 1}], {'total_steps': '5'})
  assert runs[0].args == (
    '--config=c.py',
    f'--workdir={tmp_path}/seed=1',
    '--config.total_steps=5',
    '--config.seed=1',
  )


def test_dry_run_lists_runs_and_commands_and_writes_nothing(tmp_path, capsys):
  sweep_dir = tmp_path / 'sw'
  assert (
    sweep.main(
      [
        '--config=configs/default.py',
        f'--sweep_dir={sweep_dir}',
        '--sweep',
        'config.seed=1,2',
        '--dry-run',
        '--gpus=',
        '--config.total_steps=3',
        '--config.schedule.warmup_steps=1',
      ]
    )
    == 0
  )
  out = capsys.readouterr().out
  assert '# 2 runs in' in out and '#   seed=1: to run' in out
  commands = [line for line in out.splitlines() if not line.startswith('#')]
  assert [c.split()[1:] for c in commands] == [
    [
      '-m',
      'vit_jax.main',
      '--config=configs/default.py',
      f'--workdir={sweep_dir}/seed={i}',
      '--config.total_steps=3',
      '--config.schedule.warmup_steps=1',
      f'--config.seed={i}',
    ]
    for i in (1, 2)
  ]
  assert not sweep_dir.exists()


def _sweep(tmp_path, digits_dir, *extra):
  env = {
    **os.environ,
    'XLA_FLAGS': f'--xla_force_host_platform_device_count=1 {tiny.FAST_COMPILE_XLA_FLAGS}',
    'PYTHONPATH': str(REPO),
  }
  return subprocess.run(
    [
      sys.executable,
      '-m',
      'launch.sweep',
      f'--config={REPO}/configs/default.py',
      f'--sweep_dir={tmp_path / "sw"}',
      '--sweep',
      'config.schedule.base_lr=0.001,0.003',
      '--sweep',
      'config.total_steps=2,4',
      '--parallel=2',
      '--gpus=',
      f'--config.tfds_data_dir={digits_dir}',
      *TINY,
      *extra,
    ],
    capture_output=True,
    text=True,
    env=env,
    cwd=tmp_path,
    timeout=600,
  )


def test_local_sweep_runs_two_at_a_time_then_results_then_a_rerun_skips(tmp_path, digits_dir):
  """A real 2x2 sweep of the offline default config (~1 min: 4 processes, 2 at a time)."""
  done = _sweep(tmp_path, digits_dir)
  assert done.returncode == 0, done.stderr[-3000:]
  sweep_dir = tmp_path / 'sw'
  spec = json.loads((sweep_dir / 'sweep.json').read_text())
  names = [r['name'] for r in spec['runs']]
  assert names == [
    f'schedule.base_lr={lr},total_steps={s}' for lr in ('0.001', '0.003') for s in (2, 4)
  ]
  spans = []
  for run in spec['runs']:
    workdir = pathlib.Path(run['workdir'])
    config = json.loads((workdir / 'config.json').read_text())
    assert (str(config['schedule']['base_lr']), str(config['total_steps'])) == (
      run['overrides']['schedule.base_lr'],
      run['overrides']['total_steps'],
    )
    rec = record.read(str(workdir))
    assert record.status(rec) == 'finished' and rec.step == config['total_steps']
    launch = rec.launch
    assert launch['returncode'] == 0 and launch['command'][-2:] == [
      f'--config.schedule.base_lr={run["overrides"]["schedule.base_lr"]}',
      f'--config.total_steps={run["overrides"]["total_steps"]}',
    ]
    spans.append(
      (
        datetime.datetime.fromisoformat(launch['started']),
        datetime.datetime.fromisoformat(launch['ended']),
      )
    )
  most = max(sum(a <= t < b for a, b in spans) for t, _ in spans)
  assert most == 2, spans  # Two at a time, never more.

  assert sweep.main(['results', str(sweep_dir)]) == 0
  with open(sweep_dir / 'results.csv', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  assert sorted(r['run'] for r in rows) == sorted(names) and {r['status'] for r in rows} == {
    'finished'
  }
  accuracies = [float(r['final eval/accuracy']) for r in rows]
  assert accuracies == sorted(accuracies, reverse=True)
  table = (sweep_dir / 'results.md').read_text().splitlines()
  assert (
    table[0].startswith('| run | schedule.base_lr | total_steps | status | step |')
    and len(table) == 6
  )
  assert (sweep_dir / 'results.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

  pids = [
    json.loads((pathlib.Path(r['workdir']) / 'launch.json').read_text())['pid']
    for r in spec['runs']
  ]
  again = _sweep(tmp_path, digits_dir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert '4 finished (skipped), 0 to run' in again.stderr and 'Nothing to run' in again.stderr
  assert [
    json.loads((pathlib.Path(r['workdir']) / 'launch.json').read_text())['pid']
    for r in spec['runs']
  ] == pids


def test_local_backend_gives_each_run_its_own_gpu(tmp_path):
  # Each run holds its GPU as a directory while it runs (mkdir is atomic): a GPU given to two live
  # runs is a clash. Which free GPU a later run gets depends on which run ends first, so only the
  # first two are fixed.
  fake_python = tmp_path / 'python'
  fake_python.write_text(
    '#!/bin/sh\nd="$(dirname "$0")"; g="$CUDA_VISIBLE_DEVICES"\n'
    'mkdir "$d/busy-$g" || echo "$g" >> "$d/clashes.txt"\n'
    'echo "$g" >> "$d/gpus.txt"; sleep 0.3; rmdir "$d/busy-$g"\n'
  )
  fake_python.chmod(0o755)
  runs = sweep.plan('c.py', str(tmp_path / 'sw'), [{'seed': i} for i in range(4)], {})
  codes = sweep_local.run_local(
    runs,
    parallel=0,
    gpus=['0', '1'],
    runner=shell.Runner(echo=False),
    python=str(fake_python),
    poll_s=0.05,
  )
  assert codes == {r.name: 0 for r in runs}
  assert not (tmp_path / 'clashes.txt').exists()
  used = (tmp_path / 'gpus.txt').read_text().split()
  assert len(used) == 4 and set(used) == {'0', '1'}
  recorded = [
    json.loads((pathlib.Path(r.workdir) / 'launch.json').read_text())['gpu'] for r in runs
  ]
  assert recorded[:2] == ['0', '1'] and sorted(recorded) == sorted(used)


def _workdir(
  sweep_dir, name, *, metrics=(), config=None, launch=None, checkpoints=(), num_train=None
):
  """A run's workdir as the trainer leaves it: config.json, metrics, checkpoints (with params.npz
  once any exist, as a complete run has), dataset.json, and the launcher's launch.json."""
  path = sweep_dir / name
  path.mkdir(parents=True)
  if config:
    (path / workdir_lib.CONFIG_FILE).write_text(json.dumps(config))
  if metrics:
    (path / workdir_lib.METRICS_FILE).write_text(''.join(json.dumps(m) + '\n' for m in metrics))
  if launch:
    (path / workdir_lib.LAUNCH_FILE).write_text(json.dumps(launch))
  for step in checkpoints:
    (path / workdir_lib.CHECKPOINTS_DIR / str(step)).mkdir(parents=True)
    (path / workdir_lib.PARAMS_FILE).write_bytes(b'')
  if num_train:
    workdir_lib.record_dataset(str(path), class_names=['a'], num_train=num_train, num_eval=1)
  return {'name': name, 'overrides': {'seed': int(name[1:])}, 'workdir': str(path)}


def test_results_reads_each_status_keeps_the_last_record_of_a_step_and_sorts(tmp_path):
  sweep_dir = tmp_path / 'sw'
  cfg = {'total_steps': 4, 'batch_size': 8}
  runs = [
    _workdir(
      sweep_dir,
      's1',
      config=cfg,
      launch={'returncode': 0},
      checkpoints=[4],
      metrics=[
        {'step': 2, 'train/loss': 2.0},
        {'step': 2, 'eval/accuracy': 0.5, 'eval/loss': 1.5},
        # Repeated step 4: the later record counts.
        {'step': 4, 'eval/accuracy': 0.4, 'eval/loss': 1.9},
        {'step': 4, 'train/loss': 1.0},
        {'step': 4, 'eval/accuracy': 0.7, 'eval/loss': 1.2},
      ],
    ),
    _workdir(
      sweep_dir,
      's2',
      config=cfg,
      launch={'host': socket.gethostname(), 'pid': os.getpid()},
      metrics=[{'step': 2, 'eval/accuracy': 0.6, 'eval/loss': 1.1}],
    ),
    _workdir(
      sweep_dir,
      's3',
      config=cfg,
      launch={'returncode': 1},
      metrics=[{'step': 1, 'train/loss': 3.0}],
    ),
    _workdir(
      sweep_dir,
      's4',
      config=cfg,
      launch={'returncode': 0},
      metrics=[{'step': 2, 'eval/accuracy': 0.2, 'eval/loss': 2.0}],
    ),
    {'name': 's5', 'overrides': {'seed': 5}, 'workdir': str(sweep_dir / 's5')},
    _workdir(
      sweep_dir,
      's6',
      config={'total_epochs': 1.0, 'total_steps': 4, 'batch_size': 8},
      checkpoints=[9],
      # 72 / 8 = 9 steps.
      num_train=72,
      metrics=[{'step': 9, 'eval/accuracy': 0.1, 'eval/loss': 2.5}],
    ),
  ]
  (sweep_dir / 'sweep.json').write_text(json.dumps({'config': 'c.py', 'fixed': {}, 'runs': runs}))
  # 6 s of 10 training.
  (sweep_dir / 's1' / workdir_lib.GOODPUT_FILE).write_text(
    json.dumps(
      {
        'attempts': [
          {
            'start': 100.0,
            'end': 110.0,
            'first_step': 0,
            'last_step': 4,
            'ended': 'finished',
            'phases': {'startup': 3.0, 'compile': 1.0, 'train': 6.0},
          }
        ]
      }
    )
  )
  rows = results.write(str(sweep_dir))
  assert [(r['run'], r['status']) for r in rows] == [
    ('s1', 'finished'),
    ('s2', 'running'),
    ('s4', 'stopped'),
    ('s6', 'finished'),
    ('s3', 'failed'),
    ('s5', 'not started'),
  ]
  s1 = rows[0]
  assert (
    s1['step'],
    s1['final eval/accuracy'],
    s1['best eval/accuracy'],
    s1['final eval/loss'],
    s1['best eval/loss'],
    s1['final train/loss'],
  ) == (4, 0.7, 0.7, 1.2, 1.2, 1.0)
  text = (sweep_dir / 'results.csv').read_text().splitlines()
  assert (
    text[0] == 'run,seed,status,step,final eval/accuracy,best eval/accuracy,final eval/loss,best '
    'eval/loss,final train/loss,goodput'
  )
  assert text[1] == 's1,1,finished,4,0.7000,0.7000,1.2000,1.2000,1.0000,0.6000'
  assert text[-1] == 's5,5,not started,0,,,,,,'
  by_loss = results.write(str(sweep_dir), metric='eval/loss', out=str(tmp_path / 'out'))
  assert [r['run'] for r in by_loss][:3] == ['s2', 's1', 's4'] and (
    tmp_path / 'out' / 'results.png'
  ).exists()


def test_results_of_a_dir_without_a_sweep_is_a_clear_error(tmp_path, capsys):
  assert sweep.main(['results', str(tmp_path)]) == 2
  assert f'No sweep.json in {tmp_path}' in capsys.readouterr().err


def test_a_sweep_dir_of_another_config_is_refused(tmp_path, capsys):
  args = [f'--sweep_dir={tmp_path}', '--sweep', 'config.seed=1', '--gpus=']
  sweep.record_sweep(str(tmp_path), 'configs/vit.py', {}, [], 'local', shell.Runner())
  assert sweep.main(['--config=configs/default.py', *args]) == 2
  assert 'holds a sweep of --config=configs/vit.py' in capsys.readouterr().err


def test_slurm_backend_submits_one_array_job(tmp_path, capsys):
  assert (
    sweep.main(
      [
        '--config=configs/default.py',
        f'--sweep_dir={tmp_path}/sw',
        '--sweep',
        'config.seed=1,2,3',
        '--backend=slurm',
        '--gpus_per_node=4',
        '--parallel=2',
        '--dry-run',
      ]
    )
    == 0
  )
  out = capsys.readouterr().out
  assert '#SBATCH --array=0-2%2' in out and '#SBATCH --gpus-per-node=4' in out
  assert (
    f'  2) WORKDIR={tmp_path}/sw/seed=3; ARGS=(--config=configs/default.py '
    f'--workdir={tmp_path}/sw/seed=3 --config.seed=3) ;;' in out
  )
  assert out.rstrip().endswith(f'sbatch --parsable {tmp_path}/sw/slurm.sbatch')


def test_results_of_a_gcs_sweep_are_read_and_written_through_vit_jax_io(tmp_path, monkeypatch, gcs):
  fake = FakeGcloud(tmp_path, monkeypatch)  # On PATH to see any gcloud call.
  spec = {
    'config': 'c.py',
    'fixed': {},
    'runs': [{'name': 'seed=1', 'overrides': {'seed': 1}, 'workdir': 'gs://b/sw/seed=1'}],
  }
  (gcs / 'b' / 'sw' / 'seed=1').mkdir(parents=True)
  (gcs / 'b' / 'sw' / 'sweep.json').write_text(json.dumps(spec))
  (gcs / 'b' / 'sw' / 'seed=1' / 'config.json').write_text(json.dumps({'total_steps': 2}))
  (gcs / 'b' / 'sw' / 'seed=1' / 'metrics.jsonl').write_text(
    '{"step": 2, "eval/accuracy": 0.5, "eval/loss": 1.0}\n'
  )
  (gcs / 'b' / 'sw' / 'seed=1' / 'checkpoints' / '2').mkdir(parents=True)
  (gcs / 'b' / 'sw' / 'seed=1' / 'checkpoints' / '2' / workdir_lib.COMMIT_FILE).write_text('')
  (gcs / 'b' / 'sw' / 'seed=1' / 'params.npz').write_bytes(b'')
  rows = results.write('gs://b/sw')
  assert [(r['run'], r['status'], r['final eval/accuracy']) for r in rows] == [
    ('seed=1', 'finished', 0.5)
  ]
  assert (
    (gcs / 'b' / 'sw' / 'results.csv')
    .read_text()
    .splitlines()[1]
    .startswith('seed=1,1,finished,2,0.5000')
  )
  assert (gcs / 'b' / 'sw' / 'results.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert fake.calls() == []


def test_local_backend_starts_the_others_once_the_first_run_has_its_config(tmp_path):
  """The first run prepares the dataset alone: parallel runs never build one dataset at the same
  time."""
  fake_python = tmp_path / 'python'
  fake_python.write_text(
    '#!/bin/sh\nfor a; do case "$a" in --workdir=*) w="${a#--workdir=}";; '
    'esac; done\ndate +%s.%N > "$w/started"; sleep 0.5; echo {} > '
    '"$w/config.json"; date +%s.%N > "$w/configured"; sleep 0.3\n'
  )
  fake_python.chmod(0o755)
  runs = sweep.plan('c.py', str(tmp_path / 'sw'), [{'seed': i} for i in range(3)], {})
  sweep_local.run_local(
    runs, parallel=3, gpus=[], runner=shell.Runner(echo=False), python=str(fake_python), poll_s=0.05
  )
  times = [
    {n: float((pathlib.Path(r.workdir) / n).read_text()) for n in ('started', 'configured')}
    for r in runs
  ]
  assert all(t['started'] >= times[0]['configured'] for t in times[1:])
  assert abs(times[1]['started'] - times[2]['started']) < 0.4  # Then together.


@pytest.mark.parametrize(
  'sweep_flag, said',
  [
    (
      'schedule.base_lrr=0.1,0.2',
      "run schedule.base_lrr=0.1: Unknown config field 'schedule.base_lrr'",
    ),
    (
      'total_steps=abc,2000',
      'run total_steps=abc: flag --config.total_steps=abc: '
      "invalid literal for int() with base 10: 'abc'",
    ),
    (
      'schedule.base_lr=fast',
      'run schedule.base_lr=fast: flag --config.schedule.base_lr=fast: '
      "could not convert string to float: 'fast'",
    ),
    (
      'schedule.decay_type=cosin',
      "run schedule.decay_type=cosin: config.schedule.decay_type='cosin' is not one of",
    ),
  ],
)
def test_every_run_of_a_sweep_is_validated_before_anything_starts_dry_run_included(
  tmp_path, capsys, sweep_flag, said
):
  code = sweep.main(
    [
      '--config=configs/default.py',
      f'--sweep_dir={tmp_path}/sw',
      '--dry-run',
      '--sweep',
      sweep_flag,
    ]
  )
  err = capsys.readouterr().err
  assert code == 2 and said in err and 'nothing was started' in err
  assert not (tmp_path / 'sw').exists()


def test_a_run_that_breaks_its_tasks_rules_is_refused_before_anything_starts(tmp_path, capsys):
  """The runs are validated as vit_jax.main validates them (vit_jax/training/preflight.py): a LiT
  run's objective rules (vit_jax/tasks/image_text.py) too."""
  sweep_dir = f'--sweep_dir={tmp_path}/sw'
  args = ['--config=configs/lit.py', sweep_dir, '--dry-run', '--sweep', 'accum_steps=1,2']
  code = sweep.main(args)
  err = capsys.readouterr().err
  assert code == 2 and 'run accum_steps=2: config.accum_steps=2: the contrastive loss' in err
  assert 'nothing was started' in err and not (tmp_path / 'sw').exists()
