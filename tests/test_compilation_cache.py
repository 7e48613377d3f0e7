"""The persistent compilation cache (vit_jax/runtime/compilation_cache.py): a second process reads
the first one's compiled train step, another device count never reads a wrong entry, a folder that
cannot be used is a warning, and config.compilation_cache_dir's default."""

import json
import logging
import os
import pathlib
import subprocess
import sys

import jax
import pytest
import tiny

from vit_jax.configs import common
from vit_jax.runtime import compilation_cache

_SETTINGS = (
  'jax_compilation_cache_dir',
  'jax_enable_compilation_cache',
  'jax_persistent_cache_min_compile_time_secs',
)


@pytest.fixture
def jax_settings():
  """This test process's cache settings, as they were before the test."""
  before = {name: getattr(jax.config, name) for name in _SETTINGS}
  yield
  for name, value in before.items():
    jax.config.update(name, value)
  compilation_cache.jax_cache.reset_cache()


def _entries(cache_dir, prefix=''):
  return sorted(p.name for p in pathlib.Path(cache_dir).glob(f'{prefix}*-cache'))


def _compile_s(workdir) -> float:
  record = json.loads((pathlib.Path(workdir) / 'goodput.json').read_text())
  return record['attempts'][-1]['phases']['compile']


def test_a_second_process_reads_the_first_ones_compiled_train_step(tmp_path, digits_dir):
  cache = tmp_path / 'jax_cache'
  # As a user runs it: every program cached (not the suite's threshold, conftest.py).
  env = tiny.main_env(1)
  env.pop(compilation_cache.MIN_COMPILE_TIME_ENV, None)
  for name in ('first', 'second'):
    done = tiny.run_main(
      [
        *tiny.tiny_main_args(tmp_path / name, digits_dir, steps=3),
        *tiny.SMALL[:5],
        f'--config.compilation_cache_dir={cache}',
      ],
      env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f'Compilation cache: {cache}' in done.stderr
    if name == 'first':
      written = _entries(cache)
  assert len(_entries(cache, 'jit_train_step-')) == 1
  # Every program of the second run was read, none compiled and written again.
  assert _entries(cache) == written
  assert _compile_s(tmp_path / 'second') < _compile_s(tmp_path / 'first')


_PROGRAM = """
import json, sys
import jax, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from vit_jax.runtime import compilation_cache
compilation_cache.use(sys.argv[1])
events = []
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
def doubled_sum(v):
  return (2 * v).sum()
mesh = jax.make_mesh((jax.device_count(),), ('d',))
x = jax.device_put(jnp.arange(8.0), NamedSharding(mesh, P('d')))
print(json.dumps({
  'devices': jax.device_count(),
  'sum': float(jax.jit(doubled_sum)(x)),
  'hits': events.count('/jax/compilation_cache/cache_hits'),
}))
"""


def _run_program(cache, devices):
  done = subprocess.run(
    [sys.executable, '-c', _PROGRAM, str(cache)],
    env=tiny.main_env(devices, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0'),
    capture_output=True,
    text=True,
    timeout=300,
    cwd=tiny.REPO,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_another_device_count_compiles_its_own_program_and_both_are_right(tmp_path):
  cache = tmp_path / 'jax_cache'
  one = _run_program(cache, 1)
  assert one == {'devices': 1, 'sum': 56.0, 'hits': 0}
  assert len(_entries(cache, 'jit_doubled_sum-')) == 1
  two = _run_program(cache, 2)  # The same program over 2 devices: another key, compiled.
  assert two['devices'] == 2 and two['sum'] == 56.0
  assert len(_entries(cache, 'jit_doubled_sum-')) == 2
  again = _run_program(cache, 2)  # Now read from the cache (JAX's hit counter), still right.
  assert again['sum'] == 56.0 and again['hits'] >= 1
  assert len(_entries(cache, 'jit_doubled_sum-')) == 2


def test_a_folder_that_cannot_be_written_is_a_warning_and_jax_compiles_without_it(
  tmp_path, caplog, jax_settings
):
  (tmp_path / 'a_file').write_text('')
  with caplog.at_level(logging.WARNING):
    assert compilation_cache.use(str(tmp_path / 'a_file' / 'jax_cache')) is None
  assert 'cannot be used' in caplog.text and 'compiling without it' in caplog.text
  assert not jax.config.jax_enable_compilation_cache
  assert float(jax.jit(lambda v: v * 3 + 1)(2.0)) == 7.0


@pytest.mark.parametrize('disk', ['read-only', 'full'])
def test_a_read_only_or_full_cache_folder_is_a_warning_and_the_run_completes(
  tmp_path, digits_dir, disk
):
  mount = tmp_path / 'disk'
  tiny.mount_tmpfs(mount, '4m' if disk == 'read-only' else '16k')
  try:
    if disk == 'read-only':
      tiny.remount(mount, 'ro')
    done = tiny.run_main(
      [
        *tiny.tiny_main_args(tmp_path / 'w', digits_dir, steps=2),
        *tiny.SMALL[:5],
        f'--config.compilation_cache_dir={mount}/jax_cache',
      ]
    )
  finally:
    tiny.umount(mount)
  assert done.returncode == 0, done.stderr[-3000:]
  if disk == 'read-only':
    assert f'The compilation cache {mount}/jax_cache cannot be used (' in done.stderr
    assert 'Read-only file system' in done.stderr
  else:  # Each entry that did not fit: JAX's warning.
    assert 'Error writing persistent compilation cache entry' in done.stderr


def test_use_points_jax_at_the_folder_caches_every_program_and_empty_turns_it_off(
  tmp_path, monkeypatch, jax_settings
):
  monkeypatch.delenv(compilation_cache.MIN_COMPILE_TIME_ENV, raising=False)
  assert compilation_cache.use(str(tmp_path / 'c')) == str(tmp_path / 'c')
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'c')
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
  assert compilation_cache.use('') is None
  assert not jax.config.jax_enable_compilation_cache


def test_an_xla_dump_with_the_cache_on_is_warned_about(tmp_path, monkeypatch, caplog, jax_settings):
  monkeypatch.setenv('XLA_FLAGS', f'--xla_dump_to={tmp_path}/dump')
  with caplog.at_level(logging.WARNING):
    compilation_cache.use(str(tmp_path / 'c'))
  assert "--config.compilation_cache_dir=''" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    compilation_cache.use('')
  assert not caplog.text


def test_the_default_is_jax_variable_else_the_users_cache_folder():
  assert common.default_compilation_cache_dir({'JAX_COMPILATION_CACHE_DIR': '/c'}) == '/c'
  assert common.default_compilation_cache_dir({'JAX_COMPILATION_CACHE_DIR': ''}) == ''
  assert common.default_compilation_cache_dir({'XDG_CACHE_HOME': '/x'}) == '/x/vit_jax/jax_cache'
  assert common.default_compilation_cache_dir({}) == os.path.expanduser(
    '~/.cache/vit_jax/jax_cache'
  )
