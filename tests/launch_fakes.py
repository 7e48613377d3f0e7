"""Test helpers for launch/: a fake `gcloud` on PATH with a scripted scenario, a tiny git clone to ship, and the `gcs`
fixture (gs:// served from a local folder)."""
import json
import os
import pathlib
import subprocess
import sys

import fake_gcs
import pytest
from etils.epath import backend
from fsspec.registry import _registry as fsspec_registry  # pylint: disable=protected-access

HERE = pathlib.Path(__file__).resolve().parent
STATUS = 'vit_jax-job:'


class FakeGcloud:
  """`gcloud` on PATH that records every call; `script` sets the answers (see tests/fake_gcloud.py)."""

  def __init__(self, tmp_path, monkeypatch):
    bin_dir = tmp_path / 'fake_bin'
    bin_dir.mkdir()
    gcloud = bin_dir / 'gcloud'
    gcloud.write_text(f'#!/bin/sh\nexec {sys.executable} {HERE / "fake_gcloud.py"} "$@"\n')
    gcloud.chmod(0o755)
    self.log, self.scenario = tmp_path / 'gcloud_calls.jsonl', tmp_path / 'gcloud_scenario.json'
    self.env = {'PATH': f'{bin_dir}{os.pathsep}{os.environ["PATH"]}', 'FAKE_GCLOUD_LOG': str(self.log),
                'FAKE_GCLOUD_SCENARIO': str(self.scenario)}
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
  return ''.join(f'{STATUS} {s}\n' for s in states)


def git_clone(path: pathlib.Path) -> str:
  """A one-commit git repository at `path`; returns its commit."""
  path.mkdir()
  (path / 'setup.py').write_text('# stand-in\n')
  git = ['git', '-C', str(path), '-c', 'user.email=t@example.com', '-c', 'user.name=t']
  subprocess.run(['git', 'init', '-q', str(path)], check=True)
  subprocess.run([*git, 'add', '.'], check=True)
  subprocess.run([*git, 'commit', '-q', '-m', 'x'], check=True)
  return subprocess.run([*git, 'rev-parse', 'HEAD'], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def gcs(tmp_path, monkeypatch):
  """gs://BUCKET/PATH served from tmp_path/gcs/BUCKET/PATH, in this process and the ones it starts (fake_gcs.py)."""
  root = tmp_path / 'gcs'
  for protocol in fake_gcs.FakeGCS.protocol:  # Put back whatever served gs:// before, after the test.
    monkeypatch.setitem(fsspec_registry, protocol, fsspec_registry.get(protocol))
  fake_gcs.install(root)
  for key, value in fake_gcs.env(root).items():
    monkeypatch.setenv(key, value)
  yield root
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
