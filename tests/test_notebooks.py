"""The notebooks of docs/notebooks, executed top to bottom as a reader runs them: offline, on the
CPU, in a fresh directory, with a kernel of this Python. A cell that raises fails the test (with the
cell and its error); so does a notebook slower than its budget.

nbclient and ipykernel come with the `test` extra (setup.py); without them the test skips, saying
so.
"""

import glob
import json
import os
import resource
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, 'docs', 'notebooks', '*.ipynb')))
# Wall seconds per cell (the longest trains for about a minute of CPU, and a shared 2-core machine
# can take several times that): a hung cell fails rather than waits.
TIMEOUT_S = 600


def test_there_are_notebooks_and_git_keeps_them_without_outputs():
  assert len(NOTEBOOKS) >= 2, NOTEBOOKS
  for path in NOTEBOOKS:
    with open(path) as f:
      cells = json.load(f)['cells']
    code = [c for c in cells if c['cell_type'] == 'code']
    assert code, path
    assert all(not c['outputs'] and c['execution_count'] is None for c in code), (
      f'{path} holds outputs: strip them (Kernel > Restart & Clear Output) before committing'
    )


def _children_cpu_s() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
  """A kernelspec that runs this interpreter (so the kernel imports this checkout's vit_jax),
  registered in a private Jupyter data dir."""
  pytest.importorskip('nbclient', reason="pip install -e '.[test]' (nbclient runs the notebooks)")
  pytest.importorskip('ipykernel', reason="pip install -e '.[test]' (the notebooks' kernel)")
  spec = tmp_path / 'jupyter' / 'kernels' / 'vit_jax_test'
  spec.mkdir(parents=True)
  argv = [sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}']
  (spec / 'kernel.json').write_text(
    json.dumps({'argv': argv, 'display_name': 'vit_jax test', 'language': 'python'})
  )
  monkeypatch.setenv('JUPYTER_PATH', str(tmp_path / 'jupyter'))
  return 'vit_jax_test'


@pytest.mark.parametrize('path', NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_offline_without_a_cell_error(
  path, kernel_name, tmp_path, monkeypatch, digits_dir
):
  import nbclient
  import nbformat

  # The kernel inherits this environment: the checkout's vit_jax, the CPU, and the digits prepared
  # once for the whole test session (TFDS's default data dir, as a reader's ~/tensorflow_datasets).
  # Figures go to the cells' outputs (the kernel's inline backend), as in Jupyter.
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  # A reader's XLA: one CPU device, compiled at the default optimisation level. Not the suite's 8
  # devices and fast-compile flag (conftest.py): under those the notebooks' training (150 and 100
  # steps) ran slower than it compiled faster, 157 s of kernel CPU for finetune.ipynb against 78 s.
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  monkeypatch.setenv('TFDS_DATA_DIR', digits_dir)
  monkeypatch.delenv('MPLBACKEND', raising=False)
  work = tmp_path / 'work'
  work.mkdir()
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
    notebook,
    kernel_name=kernel_name,
    timeout=TIMEOUT_S,
    resources={'metadata': {'path': str(work)}},
  )
  start, cpu = time.monotonic(), _children_cpu_s()
  try:
    client.execute()  # Shuts the kernel down at the end (so its CPU time counts below).
  except nbclient.exceptions.CellExecutionError as e:
    pytest.fail(f'{os.path.basename(path)}: a cell failed:\n{str(e)[-4000:]}')
  print(
    f'{os.path.basename(path)}: {time.monotonic() - start:.1f} s wall, '
    f'{_children_cpu_s() - cpu:.1f} s CPU (kernel)'
  )
  outputs = [o for c in notebook.cells if c.cell_type == 'code' for o in c.outputs]
  assert any(o.get('data', {}).get('image/png') for o in outputs), 'no figure was drawn'
  # The runs it trained are where its cells say (relative to the notebook's directory).
  assert glob.glob(str(work / 'runs' / '*' / 'params.npz')), os.listdir(work)
