"""The repository's shape, as shared/DESIGN.md asks: small modules, a short training loop, TensorFlow only where a
dataset is built."""
import ast
import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = [*REPO.glob('vit_jax/**/*.py'), *REPO.glob('launch/*.py')]


def test_no_module_passes_400_lines():
  long = {str(p.relative_to(REPO)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 400}
  assert long == {}


def test_train_and_evaluate_is_at_most_60_lines():
  tree = ast.parse((REPO / 'vit_jax' / 'train.py').read_text())
  fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == 'train_and_evaluate')
  assert fn.end_lineno - fn.lineno + 1 <= 60


def test_tensorflow_is_imported_only_where_a_dataset_is_prepared():
  importers = sorted(str(p.relative_to(REPO)) for p in SOURCES
                     if re.search(r'^\s*(import tensorflow\b|from tensorflow\b)', p.read_text(), re.M))
  assert importers == ['vit_jax/datasets/build.py']  # build.prepare: a TFDS dataset is built there, and only there.


def test_no_test_module_imports_another():
  """Shared test helpers live in tiny.py, conftest.py and launch_fakes.py; a test module is never imported."""
  importers = sorted(p.name for p in REPO.glob('tests/*.py')
                     if re.search(r'^\s*(from|import) test_\w+', p.read_text(), re.M))
  assert importers == []
