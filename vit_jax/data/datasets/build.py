"""Building a TFDS dataset (ArrayRecord files): the one place in vit_jax where TensorFlow is
imported.

Training, evaluation and prediction read prepared datasets through TFDS's ArrayRecord data sources
without TensorFlow (vit_jax/data/sources.py); TFDS's builders need it to *write* one. It is imported
here only when a dataset is built, with its logs quiet and the GPUs hidden from it (they are JAX's).
"""

import logging
import os

log = logging.getLogger(__name__)


def prepare(builder, **kwargs) -> None:
  """Builds `builder`'s dataset as ArrayRecord; kwargs go to `download_and_prepare` (e.g.
  download_config)."""
  log.info('Preparing TFDS dataset %s in %s (once).', builder.name, builder.data_dir)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  from vit_jax.runtime import preemption  # noqa: PLC0415

  # Ctrl-C waits until TensorFlow is imported: its C++ module set-up calls Python hooks (filelock's
  # audit hook), and a KeyboardInterrupt raised in one escapes through C++ and aborts the process
  # (SIGABRT) instead of stopping it.
  with preemption.interrupts_deferred():
    import tensorflow as tf  # noqa: PLC0415
  tf.config.set_visible_devices([], 'GPU')
  builder.download_and_prepare(file_format='array_record', **kwargs)
