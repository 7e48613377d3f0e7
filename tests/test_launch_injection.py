"""Values with spaces, quotes, `;`, `$(...)` and backticks stay inert in every command the launchers
run or print: gcloud argv, the scripts the TPU workers' shells read, the sbatch script, sweep
commands, the SkyPilot run block. Remote scripts are executed here with bash (as ssh's remote shell
would) against a stand-in python."""

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import tempfile

from launch_fakes import FakeGcloud, git_clone, workers
import pytest

from launch import gcloud, shell, sky, slurm, sweep, sweep_local, tpu


def _nasty(tmp_path) -> list[str]:
  marker = tmp_path / 'pwned'
  return [
    f'$(touch {marker})',
    f'`touch {marker}`',
    f'x; touch {marker}',
    "it's",
    'say "hi" a  b',
    f"'; touch {marker}; '",
    f'a\\" && touch {marker} #',
  ]


def _main_args(tmp_path):
  nasty = _nasty(tmp_path)
  return [
    f'--config=configs/default.py:{nasty[3]}',
    f'--workdir=gs://bucket/{nasty[4]}/{nasty[0]}',
  ] + [f'--config.note{i}={v}' for i, v in enumerate(nasty)]


@pytest.fixture
def sandbox(tmp_path):
  """A worker's home: ~/vit_jax/.venv/bin/python and fake uv/sudo/srun/scontrol/python that log argv
  and env."""
  home = tmp_path / 'home'
  bin_dir = home / 'bin'
  (home / 'vit_jax' / '.venv' / 'bin').mkdir(parents=True)
  bin_dir.mkdir()
  log = home / 'calls.jsonl'
  recorder = (
    f'#!{shutil.which("python3")}\nimport json, os, sys\nopen({str(log)!r}, '
    f'"a").write(json.dumps({{"argv": [os.path.basename(sys.argv[0])] + sys.argv[1:], "NASTY": '
    f'os.environ.get("NASTY")}}) + "\\n")\n'
  )
  for path in [home / 'vit_jax' / '.venv' / 'bin' / 'python'] + [
    bin_dir / n for n in ('uv', 'sudo', 'srun', 'scontrol', 'python')
  ]:
    path.write_text(recorder)
    path.chmod(0o755)
  env = {'HOME': str(home), 'PATH': f'{bin_dir}:/usr/bin:/bin', 'SLURM_JOB_ID': '7'}

  def run(script):
    done = subprocess.run(
      ['bash', '-c', script], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    return done

  def calls():
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

  return home, run, calls


def test_tpu_commands_keep_every_value_inert(tmp_path, monkeypatch, sandbox, capsys):
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
  fake = FakeGcloud(tmp_path, monkeypatch)
  clone = tmp_path / 'clone'
  git_clone(clone)
  nasty, main_args = _nasty(tmp_path), _main_args(tmp_path)
  workdir = main_args[1].split('=', 1)[1]
  flags = [
    '--name=vit-s16',
    f'--zones={nasty[2]}',
    f'--project={nasty[0]}',
    f'--accelerator={nasty[1]}',
    f'--version={nasty[4]}',
    f'--create_arg={nasty[5]}',
    f'--code_dir={clone}',
    '--poll=0',
  ]
  fake.script(
    [
      (['describe'], ['READY\n']),
      ([gcloud.status_script()], [workers('exited 0')]),
      (['launch.record status'], ['']),
    ]
  )
  assert tpu.main(['launch', *flags, '--', *main_args]) == 0
  calls = fake.calls()
  assert all(f'--project={nasty[0]}' in c and f'--zone={nasty[2]}' in c for c in calls)
  assert (
    calls[0][5:7] == [f'--accelerator-type={nasty[1]}', f'--version={nasty[4]}']
    and calls[0][-1] == nasty[5]
  )

  home, run, recorded = sandbox
  # The launch's own archive is gone: make the same one on the worker.
  scp = next(c for c in calls if c[3] == 'scp')
  subprocess.run(
    [
      'git',
      '-C',
      str(clone),
      'archive',
      '--format=tar.gz',
      '-o',
      str(home / scp[5].split(':', 1)[1]),
      'HEAD',
    ],
    check=True,
  )
  for call in calls:
    command = next((a[len('--command=') :] for a in call if a.startswith('--command=')), None)
    if command is not None:
      done = run(command)
      assert done.returncode == 0, (command, done.stderr)
  for _ in range(100):  # The job runs detached.
    if (home / 'vit_jax_run' / 'exit_code').exists():
      break
    subprocess.run(['sleep', '0.1'], check=True)
  got = recorded()
  main_call = next(c['argv'] for c in got if 'vit_jax.main' in c['argv'])
  assert main_call == ['python', '-m', 'vit_jax.main', '--distributed=on', *main_args]
  write = next(c['argv'] for c in got if 'write' in c['argv'])
  assert write[-2] == workdir and json.loads(write[-1])['command'][3:] == [
    '--distributed=on',
    *main_args,
  ]
  assert next(c['argv'] for c in got if 'status' in c['argv'])[-1] == workdir
  assert not (tmp_path / 'pwned').exists()

  capsys.readouterr()
  assert tpu.main(['launch', '--dry-run', *flags, '--', *main_args]) == 0
  printed = [
    shlex.split(line) for line in capsys.readouterr().out.splitlines() if line.startswith('gcloud')
  ]
  # Each printed line is the very argv that runs (launch.json's timestamp and the private
  for line in printed:
    if line[4] == 'scp':  # folder of the archive aside).
      line[5] = scp[4]
    if 'launch.record write' not in line[-1]:
      assert line[1:] in calls, line
  assert not (tmp_path / 'pwned').exists()


def test_pip_setup_keeps_the_spec_inert_when_installing_and_when_installed(tmp_path, sandbox):
  home, run, recorded = sandbox
  nasty = _nasty(tmp_path)
  spec = f'vit_jax[tpu] @ git+https://example.com/{nasty[0]}{nasty[1]}{nasty[2]}{nasty[5]}'
  marker = f'abc {spec}'
  subprocess.run(['tar', '-czf', str(home / 'code.tar.gz'), '-T', '/dev/null'], check=True)
  script = gcloud.setup_script('code.tar.gz', marker, pip_spec=spec)
  first, second = run(script), run(script)
  assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
  assert first.stdout.strip() == f'vit_jax set-up: installed {marker}'
  assert second.stdout.strip() == f'vit_jax set-up: already at {marker}'
  assert [c['argv'] for c in recorded()] == [
    ['uv', 'pip', 'install', '-q', '--python', '.venv/bin/python', spec]
  ]
  assert (home / 'vit_jax' / '.installed').read_text() == marker + '\n'
  assert not (tmp_path / 'pwned').exists()


def test_sbatch_script_keeps_every_value_inert(tmp_path, sandbox):
  nasty, main_args = _nasty(tmp_path), _main_args(tmp_path)
  workdir = f'/shared/{nasty[4]}/{nasty[0]}'
  main_args[1] = f'--workdir={workdir}'
  parser = __import__('argparse').ArgumentParser()
  slurm.add_flags(parser)
  args = parser.parse_args(['--venv=', f'--env=NASTY={nasty[5]}'])
  home, run, recorded = sandbox
  done = run(slurm.script(args, [(workdir, main_args)], str(tmp_path / 'logs')))
  assert done.returncode == 0, done.stderr
  got = recorded()
  # srun runs each task's wrapper, which runs the trainer with the arguments as they are: run it.
  wrapper = got[0]['argv'][-len(main_args) - 4 :]
  assert wrapper[:2] == ['bash', '-c'] and wrapper[3:] == ['vit_jax.main', *main_args]
  status = tmp_path / 'status'
  status.mkdir()
  task = subprocess.run(
    wrapper,
    env={
      **os.environ,
      'PATH': f'{home}/bin:/usr/bin:/bin',
      'VIT_JAX_STEP_STATUS': str(status),
      'SLURM_PROCID': '0',
    },
    check=False,
  )
  assert task.returncode == 0 and (status / '0').read_text() == '0\n'
  assert recorded()[-1]['argv'] == ['python', '-m', 'vit_jax.main', *main_args]
  assert got[0]['NASTY'] == nasty[5]
  assert ['python', '-m', 'launch.record', 'exit', workdir, '0'] == got[-1]['argv']
  array = run(
    slurm.script(
      args, [(workdir, main_args), ('/w', ['--workdir=/w'])], str(tmp_path / 'logs')
    ).replace('"$SLURM_ARRAY_TASK_ID"', '0')
  )
  assert array.returncode == 0 and recorded()[-1]['argv'][-2] == workdir
  assert not (tmp_path / 'pwned').exists()


def test_sweep_commands_keep_every_value_inert(tmp_path, capsys):
  nasty = _nasty(tmp_path)
  sweep_dir = tmp_path / 'sw'
  # Two string fields.
  argv = [
    '--config=configs/default.py',
    f'--sweep_dir={sweep_dir}',
    '--gpus=',
    '--sweep',
    f'config.tfds_data_dir={nasty[0]},{nasty[2]}',
    f'--config.image_folder={nasty[5]}',
  ]
  assert sweep.main([*argv, '--dry-run']) == 0
  lines = [
    shlex.split(line) for line in capsys.readouterr().out.splitlines() if not line.startswith('#')
  ]
  runs = sweep.plan(
    'configs/default.py',
    str(sweep_dir),
    [{'tfds_data_dir': nasty[0]}, {'tfds_data_dir': nasty[2]}],
    {'image_folder': nasty[5]},
  )
  assert [line[1:] for line in lines] == [['-m', 'vit_jax.main', *r.args] for r in runs]
  assert all('/' not in r.name and '`' not in r.name and '$' not in r.name for r in runs)
  fake_python = tmp_path / 'python'
  fake_python.write_text(
    f'#!/bin/sh\nprintf "%s\\n" "$@" >> {shlex.quote(str(tmp_path / "args.txt"))}\n'
  )
  fake_python.chmod(0o755)
  sweep_local.run_local(
    runs, parallel=1, gpus=[], runner=shell.Runner(echo=False), python=str(fake_python), poll_s=0.05
  )
  assert (tmp_path / 'args.txt').read_text().splitlines() == [
    a for r in runs for a in ['-m', 'vit_jax.main', *r.args]
  ]
  assert not (tmp_path / 'pwned').exists()


@pytest.mark.parametrize('accelerators', ['tpu-v4-32', 'H100:8'])
def test_skypilot_run_block_keeps_every_value_inert(tmp_path, sandbox, accelerators):
  yaml = pytest.importorskip('yaml')
  main_args = _main_args(tmp_path)
  task = yaml.safe_load(
    sky.task_yaml(main_args, accelerators=accelerators, envs={'NASTY': _nasty(tmp_path)[5]})
  )
  home, run, recorded = sandbox
  done = run(f'cd {shlex.quote(str(home / "vit_jax"))}\n' + task['run'])
  assert done.returncode == 0, done.stderr
  distributed = ['--distributed=on'] if accelerators.startswith('tpu') else []
  assert recorded()[-1]['argv'] == ['python', '-m', 'vit_jax.main', *distributed, *main_args]
  assert task['envs']['NASTY'] == _nasty(tmp_path)[5]
  assert not (tmp_path / 'pwned').exists()
