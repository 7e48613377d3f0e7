"""The repository's shape, as shared/DESIGN.md asks: small modules, a short training loop,
TensorFlow only where a dataset is built."""

import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SOURCES = [*REPO.glob('vit_jax/**/*.py'), *REPO.glob('launch/*.py')]


def test_no_module_passes_400_lines():
  long = {
    str(p.relative_to(REPO)): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 400
  }
  assert long == {}


def _train_and_evaluate() -> ast.FunctionDef:
  tree = ast.parse((REPO / 'vit_jax' / 'training' / 'train.py').read_text())
  (fn,) = [
    n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == 'train_and_evaluate'
  ]
  return fn


def test_train_and_evaluate_is_at_most_60_lines():
  fn = _train_and_evaluate()
  assert fn.end_lineno - fn.lineno + 1 <= 60


BLOCKS = (ast.With, ast.AsyncWith, ast.Try, ast.TryStar, ast.For, ast.AsyncFor, ast.While, ast.If)


def nesting_depth(node: ast.AST) -> int:
  """How deep with/try/for/while/if blocks nest inside `node` (an `elif` is one level deeper)."""
  children = ast.iter_child_nodes(node)
  return max((nesting_depth(c) + isinstance(c, BLOCKS) for c in children), default=0)


def test_the_nesting_depth_counts_blocks_inside_blocks():
  fn = ast.parse(
    'def f():\n  with a:\n    try:\n      if b:\n        pass\n    finally:\n'
    '      pass\n  for c in d:\n    pass\n'
  ).body[0]
  assert nesting_depth(fn) == 3


def test_train_and_evaluate_nests_at_most_two_blocks_deep():
  assert nesting_depth(_train_and_evaluate()) <= 2


def test_tensorflow_is_imported_only_where_a_dataset_is_prepared():
  importers = sorted(
    str(p.relative_to(REPO))
    for p in SOURCES
    if re.search(r'^\s*(import tensorflow\b|from tensorflow\b)', p.read_text(), re.M)
  )
  # build.prepare: a TFDS dataset is built there, and only there.
  assert importers == ['vit_jax/data/datasets/build.py']


def test_no_test_module_imports_another():
  """Shared test helpers live in tiny.py, conftest.py and launch_fakes.py; a test module is never
  imported."""
  importers = sorted(
    p.name
    for p in REPO.glob('tests/*.py')
    if re.search(r'^\s*(from|import) test_\w+', p.read_text(), re.M)
  )
  assert importers == []


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix('').parts)
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def import_graph() -> dict[str, set[str]]:
  """module -> the modules of vit_jax/ and launch/ it imports, anywhere in its source (lazy imports
  inside functions too); `from package import name` counts as importing package.name when that is a
  module."""
  modules = {_module_name(p): p for p in SOURCES}
  graph = {}
  for name, path in modules.items():
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          base = '.'.join(
            package.split('.')[: len(package.split('.')) - node.level + 1]
            + ([base] if base else [])
          )
        targets = [
          f'{base}.{a.name}' if f'{base}.{a.name}' in modules else base for a in node.names
        ]
      else:
        continue
      edges |= {t for t in targets if t in modules and t != name}
    graph[name] = edges
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components of more than one module (Tarjan's algorithm), each sorted."""
  index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_cycle_finder_finds_a_lazy_cycle():
  assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
  assert cycles({'a': {'b'}, 'b': set()}) == []


def test_no_import_cycle_in_vit_jax_and_launch_lazy_imports_included():
  graph = import_graph()
  # The graph sees imports.
  assert graph['vit_jax.training.preflight'] >= {'vit_jax.training.state', 'vit_jax.configs.check'}
  assert cycles(graph) == []


def test_the_configs_package_imports_nothing_above_it():
  """configs/ is the layer above the base (io, errors, utils, dataset_names): it never imports
  models, state, checkpoint, the data layer or anything else of vit_jax."""
  base = {
    'vit_jax',
    'vit_jax.errors',
    'vit_jax.io',
    'vit_jax.utils',
    'vit_jax.configs.dataset_names',
  }
  graph = import_graph()
  upward = {
    m: sorted(t for t in targets if not t.startswith('vit_jax.configs') and t not in base)
    for m, targets in graph.items()
    if m.startswith('vit_jax.configs')
  }
  assert {m: t for m, t in upward.items() if t} == {}


# The layers of vit_jax, lowest first (README: Layout). A module imports only from its own layer or
# lower ones.
LAYERS = (
  ('base', ('vit_jax', 'vit_jax.io', 'vit_jax.errors', 'vit_jax.utils')),
  ('configs', ('vit_jax.configs',)),
  ('runtime', ('vit_jax.runtime',)),
  ('data', ('vit_jax.data',)),
  ('building blocks', ('vit_jax.sharding', 'vit_jax.augreg', 'vit_jax.npz', 'vit_jax.checkpoint')),
  ('models', ('vit_jax.models',)),
  ('tasks', ('vit_jax.tasks',)),
  ('evaluators', ('vit_jax.evaluators',)),
  ('training', ('vit_jax.training',)),
  ('inference', ('vit_jax.inference',)),
  (
    'command lines',
    (
      'vit_jax.main',
      'vit_jax.predict',
      'vit_jax.visualize',
      'vit_jax.export',
      'vit_jax.export_siglip',
      'vit_jax.cli',
      'vit_jax.tools',
      'vit_jax.models_lit',
      'vit_jax.preprocess',
    ),
  ),
)


def layer_of(module: str) -> int:
  """The index in LAYERS of the longest prefix that names `module` or a package holding it."""
  matches = [
    (len(prefix), i)
    for i, (_, prefixes) in enumerate(LAYERS)
    for prefix in prefixes
    if module == prefix or module.startswith(prefix + '.')
  ]
  assert matches, f'{module} is in no layer of LAYERS: add it there'
  return max(matches)[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
  return sorted(
    f'{m} ({LAYERS[layer_of(m)][0]}) -> {t} ({LAYERS[layer_of(t)][0]})'
    for m, targets in graph.items()
    if m.startswith('vit_jax')
    for t in targets
    if layer_of(t) > layer_of(m)
  )


def test_the_layer_check_sees_an_upward_import():
  assert upward_imports({'vit_jax.data.sources': {'vit_jax.training.state'}}) == [
    'vit_jax.data.sources (data) -> vit_jax.training.state (training)'
  ]


def test_every_package_imports_only_its_own_layer_or_lower_ones():
  assert upward_imports(import_graph()) == []


def test_at_most_16_modules_stand_at_the_top_of_vit_jax():
  top = sorted(p.name for p in (REPO / 'vit_jax').glob('*.py'))
  assert len(top) <= 16, top


# Asking whether a config is image-text: the old predicate, a family compared with 'lit', or the
# preset table's own test (a model config with a text tower).
IMAGE_TEXT_PREDICATE = re.compile(
  r"""\bis_lit\(|family\([^()]*(\([^()]*\))?[^()]*\)\s*[!=]=\s*['"]lit['"]|"""
  r"""['"]text_model['"]\s+(not\s+)?in\b"""
)


def image_text_askers() -> list[str]:
  """file:line of vit_jax/ outside tasks/ and models/ that asks whether a config is image-text, but
  presets.py, whose `family` is the preset table's fact that the task registry asks."""
  homes = ('vit_jax/tasks/', 'vit_jax/models/', 'vit_jax/configs/presets.py')
  found = []
  for path in REPO.glob('vit_jax/**/*.py'):
    name = str(path.relative_to(REPO))
    if not name.startswith(homes):
      lines = enumerate(path.read_text().splitlines(), 1)
      found += [f'{name}:{n}' for n, line in lines if IMAGE_TEXT_PREDICATE.search(line)]
  return sorted(found)


def test_the_predicate_finder_sees_each_form():
  for line in (
    'if models.is_lit(config.model):',
    "lit = presets.family(config.model) == 'lit'",
    'if family(c.model) != "lit":',
    "if 'text_model' in config.model:",
  ):
    assert IMAGE_TEXT_PREDICATE.search(line), line
  assert not IMAGE_TEXT_PREDICATE.search('family = presets.family(model)')


def test_only_the_task_registry_asks_whether_a_config_is_image_text():
  """What differs between objectives is a task's (vit_jax/tasks/); models/ picks LitModel."""
  assert image_text_askers() == []


def _ruff(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, '-m', 'ruff', *args], cwd=REPO, capture_output=True, text=True
  )


def test_the_tree_is_formatted_and_linted_as_pyproject_toml_says():
  """ruff (the test extra pins it) formats every file and finds nothing: .ci/run checks the same."""
  if _ruff('--version').returncode:
    pytest.skip('ruff is not installed (pip install -e .[test] brings it)')
  formatted = _ruff('format', '--check', '.')
  assert formatted.returncode == 0, formatted.stdout + formatted.stderr
  linted = _ruff('check', '--quiet', '.')
  assert linted.returncode == 0, linted.stdout + linted.stderr


def test_ci_runs_the_formatter_and_the_linter_before_the_tests():
  ci = (REPO / '.ci' / 'run').read_text()
  assert ci.index('ruff format --check') < ci.index('ruff check') < ci.index('run_pytest -q -n 2\n')


def test_lines_are_at_most_100_characters_outside_urls():
  long = [
    f'{p.relative_to(REPO)}:{i}'
    for p in [*SOURCES, *REPO.glob('tests/*.py')]
    for i, line in enumerate(p.read_text().splitlines(), 1)
    if len(line) > 100 and 'http' not in line
  ]
  assert len(long) <= 10, long


def test_the_suite_compiles_fast_in_its_processes_and_in_those_it_starts():
  import tiny

  # conftest.py writes the flag out (it runs before JAX is imported); tiny.main_env passes it on.
  assert tiny.FAST_COMPILE_XLA_FLAGS in os.environ['XLA_FLAGS'].split()
  assert tiny.FAST_COMPILE_XLA_FLAGS in tiny.main_env()['XLA_FLAGS'].split()
  # The shared compilation cache reached JAX in this process too.
  import jax

  assert jax.config.jax_compilation_cache_dir == os.environ['JAX_COMPILATION_CACHE_DIR']
