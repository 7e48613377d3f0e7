"""Test set-up: 8 CPU devices, quiet TensorFlow, no GPU grabbed by TF, one XLA compilation cache per
test run."""

import os
import tempfile

# (tiny.FAST_COMPILE_XLA_FLAGS: compiles in half the time. Written here, not imported: tiny imports
# JAX, which reads the variables below when it is imported.)
os.environ.setdefault(
  'XLA_FLAGS', '--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0'
)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Many tests (and the processes they start, which inherit this) compile the same tiny train steps:
# JAX's persistent cache, shared by the xdist workers of one run, compiles each once. Keyed by the
# program and the XLA flags, so a hit is the same executable. config.compilation_cache_dir's default
# reads the same variable (vit_jax/configs/common.py), so every vit_jax.main a test starts uses this
# cache too, never the user's own (~/.cache/vit_jax/jax_cache).
# The first process (xdist's controller): its workers inherit it.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE_WE_MADE = tempfile.mkdtemp(
    prefix='vit_jax_tests_xla_cache_'
  )
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.2')


import shutil  # noqa: E402
import signal  # noqa: E402

# A suite started from a background job (`cmd &` in a script) inherits SIGINT ignored, and so would
# every process it starts. The Ctrl-C tests need it delivered as on a terminal: Python's own handler
# here, the default in children.
signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402  (after the environment above)

# The files whose tests run for a minute or more (multi-process jobs, fault injection, launched
# sweeps): run first, so that the xdist workers (with --dist worksteal, pytest.ini) do not end the
# suite on one of them while the other idles.
LONG_FIRST = (
  'test_notebooks.py',
  'test_faults.py',
  'test_launch_sweep.py',
  'test_lock.py',
  'test_launch_slurm.py',
  'test_multihost.py',
  'test_launch_sky.py',
  'test_sharding.py',
  'test_fastpaths.py',
  'test_main.py',
  'test_lit_training.py',
  'test_launch_transfer.py',
  'test_siglip_recipe.py',
  'test_compilation_cache.py',
)


def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  # Stable: each file keeps its order.
  items.sort(key=lambda item: item.path.name not in LONG_FIRST)


def pytest_unconfigure(config):  # pylint: disable=unused-argument
  if '_CACHE_WE_MADE' in globals():
    shutil.rmtree(_CACHE_WE_MADE, ignore_errors=True)


@pytest.fixture(scope='session')
def fitted_run(tmp_path_factory):
  """(workdir, image folder) of a tiny scanned model trained to fit tiny.image_folder: for
  predict/visualize/export."""
  import tiny  # pylint: disable=g-import-not-at-top

  return tiny.fitted_run(tmp_path_factory.mktemp('fitted'), scan_layers=True)


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
  """A TFDS data_dir with sklearn_digits prepared once (before any process that a test starts reads
  it)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # (registers sklearn_digits)
  from vit_jax.data import datasets  # pylint: disable=g-import-not-at-top,unused-import

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds.builder('sklearn_digits', data_dir=data_dir).download_and_prepare(file_format='array_record')
  return data_dir
