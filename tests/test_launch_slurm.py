"""launch.slurm: the sbatch script (N nodes x G GPUs, one task per GPU, requeue, the signal before
the time limit, array jobs for sweeps), and a real job on a one-node local SLURM
(launch/setup_local_slurm.sh): 2 tasks x 2 CPU devices join one jax.distributed run whose losses
equal a 1-process run with 4 devices."""

import argparse
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tiny

from launch import outcome, record, slurm
from vit_jax.runtime import workdir as workdir_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SETUP = REPO / 'launch' / 'setup_local_slurm.sh'


def _args(*argv):
  parser = argparse.ArgumentParser()
  slurm.add_flags(parser)
  return parser.parse_args(list(argv))


def test_script_for_two_nodes_of_eight_gpus():
  text = slurm.script(
    _args(
      '--nodes=2',
      '--gpus_per_node=8',
      '--time=12:00:00',
      '--partition=gpu',
      '--venv=/v',
      '--env=NCCL_DEBUG=WARN',
    ),
    [('/shared/w', ['--config=c.py', '--workdir=/shared/w'])],
    '/shared/logs',
  )
  lines = text.splitlines()
  for directive in (
    '--nodes=2',
    '--ntasks-per-node=8',
    '--gpus-per-node=8',
    '--time=12:00:00',
    '--partition=gpu',
    '--requeue',
    '--signal=TERM@300',
    '--output=/shared/logs/%x-%j.out',
    '--open-mode=append',
  ):
    assert f'#SBATCH {directive}' in lines, directive
  assert 'source /v/bin/activate' in lines and 'export NCCL_DEBUG=WARN' in lines
  assert 'ARGS=(--config=c.py --workdir=/shared/w)' in lines
  assert any(
    line.strip().startswith(
      'srun --kill-on-bad-exit=0 --wait=60 --open-mode=append '
      '--output=/shared/logs/%x-%j-%t.out bash -c "$TASK" vit_jax.main "${ARGS[@]}"'
    )
    for line in lines
  )
  assert 'scontrol requeue "$SLURM_JOB_ID" && exit 0' in text and '-lt 20 ]' in text
  assert not any('--array' in line for line in lines)


def test_sweep_is_one_array_job_with_a_run_per_index():
  jobs = [
    (f'/s/r{i}', ['--config=c.py', f'--workdir=/s/r{i}', f'--config.seed={i}']) for i in range(3)
  ]
  text = slurm.script(_args('--gpus_per_node=0', '--tasks_per_node=2'), jobs, '/s', parallel=2)
  assert '#SBATCH --array=0-2%2' in text and '#SBATCH --output=/s/%x-%A_%a.out' in text
  assert '#SBATCH --gpus-per-node' not in text and '#SBATCH --ntasks-per-node=2' in text
  for i in range(3):
    assert (
      f'  {i}) WORKDIR=/s/r{i}; ARGS=(--config=c.py --workdir=/s/r{i} --config.seed={i}) ;;' in text
    )


def test_one_word_directives_and_a_workdir_are_required(capsys):
  with pytest.raises(ValueError, match="Bad --job_name 'a b'"):
    slurm.script(_args('--job_name=a b'), [('/w', ['--workdir=/w'])], '/l')
  with pytest.raises(ValueError, match='one line only'):
    slurm.script(_args('--sbatch_arg=--x=1\nrm -rf /'), [('/w', ['--workdir=/w'])], '/l')
  assert slurm.main(['--dry-run', '--', '--config=c.py']) == 2
  assert 'Give the run a --workdir' in capsys.readouterr().err


def test_dry_run_prints_the_script_and_submits_nothing(tmp_path, capsys):
  assert (
    slurm.main(
      ['--dry-run', f'--log_dir={tmp_path}/logs', '--', '--config=c.py', f'--workdir={tmp_path}/w']
    )
    == 0
  )
  out = capsys.readouterr().out
  assert out.startswith(f'# {tmp_path}/logs/vit_jax.sbatch:\n#!/bin/bash\n')
  assert out.rstrip().endswith(f'sbatch --parsable {tmp_path}/logs/vit_jax.sbatch')
  assert not (tmp_path / 'logs').exists() and not (tmp_path / 'w').exists()


def _local_slurm() -> str | None:
  """None when the local SLURM takes jobs (set up by launch/setup_local_slurm.sh, run here as root),
  else why not."""
  if not shutil.which('sbatch') and os.geteuid() != 0:
    return 'SLURM is not installed and this is not root: run sudo launch/setup_local_slurm.sh'
  if os.geteuid() == 0:
    done = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
      return f'launch/setup_local_slurm.sh failed: {(done.stdout + done.stderr).strip()[-500:]}'
  state = subprocess.run(
    ['sinfo', '-h', '-n', 'localhost', '-o', '%t'], capture_output=True, text=True, check=False
  )
  if not state.stdout.strip().startswith(('idle', 'mix', 'alloc')):
    return f'the local SLURM node is not up (sinfo: {state.stdout.strip() or state.stderr.strip()})'
  return None


def test_two_slurm_tasks_join_one_run_that_reproduces_one_process(tmp_path, digits_dir):
  """The real thing (~45 s): sbatch of a 2-task job on the local SLURM, against a 1-process run with
  4 devices."""
  reason = _local_slurm()
  if reason:
    pytest.skip(reason)
  common = [
    f'--config={REPO}/configs/default.py',
    f'--config.tfds_data_dir={digits_dir}',
    *tiny.SMALL,
  ]
  w1, w2, logs = tmp_path / 'w1', tmp_path / 'w2', tmp_path / 'logs'
  ((rc, out),) = tiny.run_mains(tmp_path, 'single', 4, [common + [f'--workdir={w1}']])
  assert rc == 0, out[-3000:]

  done = subprocess.run(
    [
      sys.executable,
      '-m',
      'launch.slurm',
      '--nodes=1',
      '--tasks_per_node=2',
      '--gpus_per_node=0',
      '--cpus_per_task=1',
      '--time=00:10:00',
      f'--log_dir={logs}',
      f'--venv={sys.prefix}',
      '--job_name=vit_jax_test',
      '--env=XLA_FLAGS=--xla_force_host_platform_device_count=2',
      '--env=JAX_PLATFORMS=cpu',
      '--wait',
      '--',
      *common,
      f'--workdir={w2}',
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=600,
    env={**os.environ, 'PYTHONPATH': str(REPO)},
  )
  task_logs = sorted(logs.glob('vit_jax_test-*-*.out'))
  log_text = '\n'.join(f'--- {p.name}\n{p.read_text()[-3000:]}' for p in sorted(logs.glob('*.out')))
  assert done.returncode == 0, done.stderr[-2000:] + log_text
  assert [p.name.rsplit('-', 1)[1] for p in task_logs] == ['0.out', '1.out'], log_text
  assert 'process 1 of 2, 2 local / 4 global devices (cpu)' in task_logs[1].read_text(), log_text

  one, two = workdir_lib.read_metrics(str(w1)), workdir_lib.read_metrics(str(w2))
  np.testing.assert_allclose(
    list(tiny.by_step(two, 'train/loss').values()),
    list(tiny.by_step(one, 'train/loss').values()),
    rtol=1e-5,
  )
  assert list(tiny.by_step(two, 'train/loss')) == list(range(1, 6))
  assert tiny.by_step(two, 'eval/accuracy') == tiny.by_step(one, 'eval/accuracy')
  info = json.loads((w2 / 'launch.json').read_text())
  assert info['backend'] == 'slurm' and info['returncode'] == 0 and info['job_id'].isdigit()
  assert record.status(record.read(str(w2))) == 'finished'
  assert (logs / 'vit_jax_test.sbatch').read_text().startswith('#!/bin/bash')


def _run_script_with_fake_srun(tmp_path, exits):
  """Runs the sbatch script's body with a fake `srun` and a fake `scontrol`. The fake srun's call i
  plays a step of two tasks whose exit statuses are `exits[i]` (an int: both the same; 'x': a task
  killed before it wrote its status): it writes them where the script's task wrapper would, and
  exits with the first non-zero one, as srun does. Returns (srun calls, exit status, stderr)."""
  bin_dir, logs, workdir = tmp_path / 'bin', tmp_path / 'logs', tmp_path / 'w'
  bin_dir.mkdir(parents=True)
  logs.mkdir()
  calls = tmp_path / 'calls'
  steps = [e if isinstance(e, tuple) else (e, e) for e in exits]
  codes = ' '.join(','.join(map(str, step)) for step in steps)
  (bin_dir / 'srun').write_text(f"""#!/bin/bash
n=$(cat {calls} 2>/dev/null | wc -l); echo call >> {calls}
echo "$JAX_COMPILATION_CACHE_DIR" > {tmp_path}/cache_dir
echo "$@" > {tmp_path}/srun_args
steps=({codes}); IFS=, read -ra tasks <<< "${{steps[$n]}}"; rc=0
for i in "${{!tasks[@]}}"; do
  code=${{tasks[$i]}}
  if [ "$code" = x ]; then code=137; else echo "$code" > "$VIT_JAX_STEP_STATUS/$i"; fi
  if [ "$rc" = 0 ]; then rc=$code; fi
done
exit $rc
""")
  (bin_dir / 'scontrol').write_text('#!/bin/bash\nexit 0\n')
  for f in bin_dir.iterdir():
    f.chmod(0o755)
  text = slurm.script(
    _args('--nodes=1', '--gpus_per_node=2', '--max_restarts=2', '--restart_backoff_s=0'),
    [(str(workdir), ['--config=c.py', f'--workdir={workdir}'])],
    str(logs),
  )
  env = {
    **os.environ,
    'PATH': f'{bin_dir}:{os.path.dirname(sys.executable)}:{os.environ["PATH"]}',
    'SLURM_JOB_NAME': 'job',
    'SLURM_JOB_ID': '7',
    'SLURM_NTASKS': '2',
    'PYTHONPATH': str(REPO),
  }
  done = subprocess.run(['bash', '-c', text], env=env, capture_output=True, text=True, timeout=120)
  assert not (logs / '.status-7').exists()
  return len(calls.read_text().splitlines()), done.returncode, done.stderr


def test_the_script_reruns_a_lost_or_hung_step_but_not_an_error(tmp_path):
  # (A task whose coordinator or collective peer died exits 75 itself: tests/test_aborts.py.)
  calls, _, err = _run_script_with_fake_srun(tmp_path / 'a', [75, 76, 0])
  assert calls == 3 and 'restart 2 of 2' in err
  # Task 0 killed (kill -9, the OOM killer) and its peer lost: srun says 137, the tasks say rerun.
  calls, code, err = _run_script_with_fake_srun(tmp_path / 'b', [(137, 75), 0])
  assert (calls, code) == (2, 0) and 'exit status 75' in err
  # A task ended by srun (--wait) before it wrote its status counts as killed.
  calls, code, _ = _run_script_with_fake_srun(tmp_path / 'f', [(75, 'x'), 0])
  assert (calls, code) == (2, 0)
  # An abort of its own: not rerun.
  calls, code, _ = _run_script_with_fake_srun(tmp_path / 'c', [134, 0])
  assert (calls, code) == (1, 134)
  # A bug or a bad config, also beside a lost peer: not rerun.
  calls, code, _ = _run_script_with_fake_srun(tmp_path / 'd', [1, 0])
  assert (calls, code) == (1, 1)
  calls, code, _ = _run_script_with_fake_srun(tmp_path / 'g', [(1, 75), 0])
  assert (calls, code) == (1, 1)
  calls, code, err = _run_script_with_fake_srun(tmp_path / 'e', [75, 75, 75, 0])
  assert (calls, code) == (3, 75) and '2 restarts spent: giving up' in err


def test_the_task_wrapper_records_the_trainers_status_and_lets_it_save_on_sigterm(tmp_path):
  """The script's task wrapper (TASK) with a fake `python` that saves on SIGTERM (2 s) and exits
  75: SIGTERM to the wrapper and the trainer (as SLURM signals a step) waits for the trainer, whose
  status lands in STATUS_DIR/<SLURM_PROCID>."""
  text = slurm.script(_args('--gpus_per_node=2'), [('/w', ['--workdir=/w'])], '/l')
  (task,) = [line for line in text.splitlines() if line.startswith('TASK=')]
  bin_dir, status = tmp_path / 'bin', tmp_path / 'status'
  bin_dir.mkdir()
  status.mkdir()
  python = bin_dir / 'python'
  python.write_text(
    f'#!/bin/bash\necho "$@" > {tmp_path}/argv\n'
    f"trap 'sleep 2; echo saved > {tmp_path}/saved; exit 75' TERM\n"
    'touch ' + str(tmp_path / 'started') + '\nsleep 60 & wait\n'
  )
  python.chmod(0o755)
  env = {
    **os.environ,
    'PATH': f'{bin_dir}:{os.environ["PATH"]}',
    'VIT_JAX_STEP_STATUS': str(status),
    'SLURM_PROCID': '3',
  }
  wrapper = subprocess.Popen(
    ['bash', '-c', f'{task}\nexec bash -c "$TASK" vit_jax.main --workdir=/w --x="a b"'],
    env=env,
    start_new_session=True,
  )
  deadline = time.time() + 30
  while not (tmp_path / 'started').exists() and time.time() < deadline:
    time.sleep(0.1)
  os.killpg(wrapper.pid, signal.SIGTERM)
  assert wrapper.wait(timeout=30) == 75
  assert (tmp_path / 'saved').read_text() == 'saved\n'
  assert (status / '3').read_text() == '75\n'
  assert (tmp_path / 'argv').read_text() == '-m vit_jax.main --workdir=/w --x=a b\n'


def test_the_tasks_share_a_compilation_cache_beside_the_workdir_unless_env_gives_one(tmp_path):
  _run_script_with_fake_srun(tmp_path, [0])
  assert (tmp_path / 'cache_dir').read_text().strip() == f'{tmp_path}/jax_cache'
  jobs = [('/w', ['--workdir=/w'])]
  given = slurm.script(_args('--env=JAX_COMPILATION_CACHE_DIR=/c'), jobs, '/l')
  assert 'export JAX_COMPILATION_CACHE_DIR=/c' in given.splitlines()
  assert given.count('JAX_COMPILATION_CACHE_DIR') == 1
