"""Building a TFDS dataset (ArrayRecord files): the one place in vit_jax where TensorFlow is
imported, and never in the process that asked for the build.

Training, evaluation and prediction read prepared datasets through TFDS's ArrayRecord data sources
without TensorFlow (vit_jax/data/sources.py); TFDS's builders need it to *write* one. `prepare`
runs the build in a child process (`python -m vit_jax.data.datasets.build NAME DATA_DIR`), which
imports TensorFlow with its logs quiet and the GPUs hidden from it (they are JAX's): the training
process keeps its memory, threads and devices to itself. The child's progress bars go to the
console; its error, if any, comes back as BuildError's message.
"""

import argparse
import logging
import os
import signal
import subprocess
import sys
import tempfile

log = logging.getLogger(__name__)


class BuildError(RuntimeError):
  """The child could not build the dataset; the message is its error, `TypeName: text`."""


def full_name(builder) -> str:
  """What `tfds.builder` takes to make `builder` again: name[/config]:version."""
  config = f'/{builder.builder_config.name}' if builder.builder_config else ''
  return f'{builder.name}{config}:{builder.version}'


def prepare(builder, manual_dir: str | None = None) -> None:
  """Builds `builder`'s dataset as ArrayRecord in a child process (module doc); manual_dir: where
  the files of a dataset that cannot be downloaded were put by hand."""
  log.info('Preparing TFDS dataset %s in %s (once).', builder.name, builder.data_dir)
  with tempfile.TemporaryDirectory(prefix='vit_jax_build_') as tmp:
    error_file = os.path.join(tmp, 'error')
    command = [sys.executable, '-m', __name__, full_name(builder), builder.data_dir_root]
    command += [f'--error_file={error_file}'] + (
      [f'--manual_dir={manual_dir}'] if manual_dir else []
    )
    done = subprocess.run(command, check=False, env={'TF_CPP_MIN_LOG_LEVEL': '2', **os.environ})
    if done.returncode:
      reason = ''
      if os.path.exists(error_file):
        with open(error_file, encoding='utf-8') as f:
          reason = f.read().strip()
      raise BuildError(reason or f'the build process ended with exit status {done.returncode}')


def _build(name: str, data_dir: str, manual_dir: str | None) -> None:
  import tensorflow as tf  # noqa: PLC0415
  import tensorflow_datasets as tfds  # noqa: PLC0415

  from vit_jax.data import datasets  # noqa: F401, PLC0415  (registers the local builders)

  tf.config.set_visible_devices([], 'GPU')
  builder = tfds.builder(name, data_dir=data_dir)
  config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  builder.download_and_prepare(file_format='array_record', download_config=config)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description='Builds a TFDS dataset as ArrayRecord.')
  parser.add_argument('name', help='TFDS name[/config]:version')
  parser.add_argument('data_dir')
  parser.add_argument('--manual_dir')
  parser.add_argument('--error_file', help='where to write the error, if the build fails')
  args = parser.parse_args(argv)
  # Ctrl-C reaches the parent too, which stops: this process just ends (a KeyboardInterrupt raised
  # while TensorFlow's extension modules load would escape through C++ and abort with SIGABRT).
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  logging.basicConfig(level=logging.INFO, format='%(message)s')
  try:
    _build(args.name, args.data_dir, args.manual_dir)
  except Exception as e:  # pylint: disable=broad-except  (handed to the parent, which says it)
    reason = f'{type(e).__name__}: {" ".join(str(e).split())}'
    if args.error_file:
      with open(args.error_file, 'w', encoding='utf-8') as f:
        f.write(reason)
    else:
      print(f'Building {args.name} failed: {reason}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
