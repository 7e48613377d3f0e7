"""launch.sky's task YAML (TPU or GPU, spot, managed-job recovery) and vit_jax.main joining a
multi-node SkyPilot cluster from SKYPILOT_NODE_IPS / SKYPILOT_NODE_RANK / SKYPILOT_NUM_NODES (two
real processes)."""

import pathlib

import pytest
import tiny

from launch import sky
from vit_jax import main as vit_main

REPO = pathlib.Path(__file__).resolve().parents[1]
ARGS = ['--config=configs/pretrain_i1k.py:ViT-S_16', '--workdir=gs://bucket/runs/s16']


def test_tpu_task_is_a_spot_managed_job_running_the_command_on_every_host():
  yaml = pytest.importorskip('yaml')
  task = yaml.safe_load(sky.task_yaml(ARGS, accelerators='tpu-v4-32', spot=True, name='s16'))
  assert task['name'] == 's16' and task['num_nodes'] == 1 and task['workdir'] == '.'
  assert task['resources'] == {
    'accelerators': 'tpu-v4-32',
    'use_spot': True,
    'job_recovery': {'strategy': 'EAGER_NEXT_REGION', 'max_restarts_on_errors': 2},
    'accelerator_args': {'runtime_version': 'tpu-ubuntu2204-base', 'tpu_vm': True},
  }
  assert "uv pip install -q --python .venv/bin/python -e '.[tpu]'" in task['setup']
  assert task['run'].splitlines()[-1] == (
    '.venv/bin/python -m vit_jax.main --distributed=on --config=configs/pretrain_i1k.py:ViT-S_16 '
    '--workdir=gs://bucket/runs/s16'
  )


def test_gpu_task_spans_nodes_and_installs_the_cuda_extra(tmp_path):
  yaml = pytest.importorskip('yaml')
  out = tmp_path / 'task.yaml'
  assert (
    sky.main(
      ['--accelerators=H100:8', '--nodes=2', '--recovery=FAILOVER', f'--out={out}', '--', *ARGS]
    )
    == 0
  )
  task = yaml.safe_load(out.read_text())
  assert task['num_nodes'] == 2 and task['resources']['accelerators'] == 'H100:8'
  assert (
    task['resources']['job_recovery']['strategy'] == 'FAILOVER'
    and not task['resources']['use_spot']
  )
  assert "'.[cuda]'" in task['setup'] and '--distributed' not in task['run']
  # The compilation cache beside the workdir, unless --env gives one.
  assert task['envs'] == {'JAX_COMPILATION_CACHE_DIR': 'gs://bucket/runs/jax_cache'}
  given = yaml.safe_load(
    sky.task_yaml(ARGS, accelerators='H100:8', envs={'JAX_COMPILATION_CACHE_DIR': ''})
  )
  assert given['envs'] == {'JAX_COMPILATION_CACHE_DIR': ''}
  assert sky.main(['--accelerators=tpu-v4-32', '--nodes=2', '--', *ARGS]) == 2
  assert sky.main(['--accelerators=H100:8', '--', '--config=c.py']) == 2  # No --workdir.


def test_skypilot_environment_gives_coordinator_process_count_and_rank():
  env = {
    'SKYPILOT_NUM_NODES': '3',
    'SKYPILOT_NODE_RANK': '2',
    'SKYPILOT_NODE_IPS': '10.0.0.5\n10.0.0.6\n10.0.0.7',
  }
  assert vit_main.skypilot_cluster(env) == ('10.0.0.5:8476', 3, 2)
  assert vit_main.skypilot_cluster({**env, 'JAX_COORDINATOR_PORT': '9999'})[0] == '10.0.0.5:9999'
  assert vit_main.skypilot_cluster({**env, 'SKYPILOT_NUM_NODES': '1'}) is None
  assert vit_main.skypilot_cluster({}) is None


def test_two_processes_join_one_run_from_skypilot_variables(tmp_path, digits_dir):
  """Two real processes (~25 s), as SkyPilot starts them on two nodes: only the SKYPILOT_* variables
  tell them."""
  port = tiny.free_port()
  procs = []
  for rank in range(2):
    env = tiny.main_env(
      2,
      SKYPILOT_NUM_NODES='2',
      SKYPILOT_NODE_RANK=str(rank),
      SKYPILOT_NODE_IPS='127.0.0.1\n127.0.0.2',
      JAX_COORDINATOR_PORT=str(port),
      JAX_COORDINATOR_BIND_ADDRESS=f'127.0.0.1:{port}',
    )
    log = open(tmp_path / f'{rank}.log', 'w+', encoding='utf-8')
    procs.append(
      (
        tiny.start_main(
          [
            f'--config={REPO}/configs/default.py',
            f'--config.tfds_data_dir={digits_dir}',
            *tiny.SMALL,
            f'--workdir={tmp_path / "w"}',
          ],
          cwd=tmp_path,
          env=env,
          log=log,
        ),
        log,
      )
    )
  outs = []
  for proc, log in procs:
    try:
      proc.wait(timeout=300)
    finally:
      proc.kill()
    log.seek(0)
    outs.append(log.read())
    log.close()
  assert [p.returncode for p, _ in procs] == [0, 0], '\n'.join(o[-2000:] for o in outs)
  assert 'process 1 of 2, 2 local / 4 global devices (cpu)' in outs[1]
  assert (tmp_path / 'w' / 'params.npz').exists()
