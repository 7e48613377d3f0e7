"""Test helpers for launch/: a fake `gcloud` on PATH with a scripted scenario, a tiny git clone to
ship, the `gcs` fixture (gs:// served from a local folder), and a `launch.tpu launch` of one run
(its arguments, the scripts it sends, the `fake` gcloud and `clone` fixtures)."""

import json
import os
import pathlib
import subprocess
import sys
import tempfile

from etils.epath import backend
import fake_gcs
from fsspec.registry import _registry as fsspec_registry  # pylint: disable=protected-access
import pytest

from launch import gcloud, tpu

HERE = pathlib.Path(__file__).resolve().parent
_JOB_LINE = 'vit_jax-job:'  # What the status script prints on a worker.


class FakeGcloud:
  """`gcloud` on PATH that records every call; `script` sets the answers (see
  tests/fake_gcloud.py)."""

  def __init__(self, tmp_path, monkeypatch):
    bin_dir = tmp_path / 'fake_bin'
    bin_dir.mkdir()
    gcloud = bin_dir / 'gcloud'
    gcloud.write_text(f'#!/bin/sh\nexec {sys.executable} {HERE / "fake_gcloud.py"} "$@"\n')
    gcloud.chmod(0o755)
    self.log, self.scenario = tmp_path / 'gcloud_calls.jsonl', tmp_path / 'gcloud_scenario.json'
    self.env = {
      'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
      'FAKE_GCLOUD_LOG': str(self.log),
      'FAKE_GCLOUD_SCENARIO': str(self.scenario),
    }
    for k, v in self.env.items():
      monkeypatch.setenv(k, v)
    self.script([])

  def script(self, rules) -> None:
    """rules: [(patterns, [response, ...])]; a response is a dict, or a string (stdout, exit 0)."""
    data = [[list(p), [r if isinstance(r, dict) else {'stdout': r} for r in rs]] for p, rs in rules]
    self.scenario.write_text(json.dumps(data))
    pathlib.Path(str(self.scenario) + '.state').unlink(missing_ok=True)

  def calls(self) -> list[list[str]]:
    if not self.log.exists():
      return []
    return [json.loads(line) for line in self.log.read_text().splitlines()]


def workers(*states) -> str:
  """The output of the status script on len(states) workers."""
  return ''.join(f'{_JOB_LINE} {s}\n' for s in states)


def git_clone(path: pathlib.Path) -> str:
  """A one-commit git repository at `path`; returns its commit."""
  path.mkdir()
  (path / 'setup.py').write_text('# stand-in\n')
  git = ['git', '-C', str(path), '-c', 'user.email=t@example.com', '-c', 'user.name=t']
  subprocess.run(['git', 'init', '-q', str(path)], check=True)
  subprocess.run([*git, 'add', '.'], check=True)
  subprocess.run([*git, 'commit', '-q', '-m', 'x'], check=True)
  return subprocess.run(
    [*git, 'rev-parse', 'HEAD'], check=True, capture_output=True, text=True
  ).stdout.strip()


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  """gs://BUCKET/PATH served from tmp_path/gcs/BUCKET/PATH, in this process and the ones it starts
  (fake_gcs.py)."""
  root = tmp_path / 'gcs'
  # Put back whatever served gs:// before, after the test.
  for protocol in fake_gcs.FakeGCS.protocol:
    monkeypatch.setitem(fsspec_registry, protocol, fsspec_registry.get(protocol))
  fake_gcs.install(root)
  for key, value in fake_gcs.env(root).items():
    monkeypatch.setenv(key, value)
  yield root
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access


# --------------------------------------------------------------------------------------------------
# One run launched by `launch.tpu launch` on the TPU VM vit-s16 (v4-32, spot) in us-central2-b of
# my-proj.

ARGS = ['--config=configs/default.py', '--workdir=gs://bucket/runs/s16', '--config.total_steps=10']
RUN_ARGS = ['--distributed=on', *ARGS]
WHERE = ['--zone=us-central2-b', '--project=my-proj']
VM = ['compute', 'tpus', 'tpu-vm']
STATUS = gcloud.status_script()
FINISHED = gcloud.record_script('status', 'gs://bucket/runs/s16')
CHECKPOINT = gcloud.launch_script('outcome', 'checkpoint', 'gs://bucket/runs/s16')


@pytest.fixture
def fake(tmp_path, monkeypatch):
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))  # The code archive goes here.
  return FakeGcloud(tmp_path, monkeypatch)


@pytest.fixture
def clone(tmp_path):
  path = tmp_path / 'clone'
  return str(path), git_clone(path)


def tpu_flags(clone, *extra, zones='us-central2-b'):
  return [
    '--name=vit-s16',
    '--accelerator=v4-32',
    f'--zones={zones}',
    '--project=my-proj',
    '--spot',
    f'--code_dir={clone[0]}',
    '--poll=0',
    '--retry_interval=0',
    *extra,
  ]


def tpu_launch(clone, *extra, zones='us-central2-b', args=ARGS):
  return tpu.main(['launch', *tpu_flags(clone, *extra, zones=zones), '--', *args])


def shipped_archive(calls, tmp_path) -> str:
  """The local archive that the launch shipped: in a private folder of the temporary directory, gone
  afterwards."""
  local = pathlib.Path(next(c[4] for c in calls if c[3] == 'scp'))
  assert local.parent.parent == tmp_path and local.parent.name.startswith('vit_jax-launch-'), local
  assert not local.parent.exists()
  return str(local)


def without_polls(calls):
  return [c for c in calls if not (c[3] == 'describe' or STATUS in c[-1])]
