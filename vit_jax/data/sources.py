"""Random-access data sources: `open_split(config, split)` -> a `Split` (vit_jax/data/splits.py):
records {'image': encoded bytes, 'label': int} by index.

Sources (`config.dataset`):
* a TFDS name, read from `config.tfds_data_dir` through `tfds.data_source` (ArrayRecord files: any
  record in O(1)). `sklearn_digits` (vit_jax.data.datasets) is built locally on first use. Another
  dataset that is not prepared is downloaded (`download=True`) when the network answers; offline, or
  when preparing fails, it is a `DatasetNotPreparedError` within seconds, with the `tfds build`
  command (and, for datasets with manual downloads, the files to place in `config.tfds_manual_dir`).
  A dataset prepared only as TFRecord (sequential files) is refused with the command that rebuilds
  it as ArrayRecord (`--file_format=array_record`).
* 'image_folder' (or a `config.dataset` that is itself a directory):
  `<root>/<split>/<class>/<image>`, read by vit_jax/data/image_folders.py.

Reading a prepared TFDS dataset needs no TensorFlow (array_record and TFDS's NumPy decoding);
TensorFlow is imported only to *prepare* one, in a child process (vit_jax/data/datasets/build.py).
"""

import dataclasses
import logging
import socket
from typing import Any

import numpy as np

from vit_jax import errors
from vit_jax.configs.dataset_names import IMAGE_FOLDER, LOCAL_TFDS_DATASETS, suggest_dataset
from vit_jax.data import image_folders
from vit_jax.data.splits import DataError, Split

# TFDS tries its GCS mirror first; unreachable = offline.
DOWNLOAD_PROBE = ('storage.googleapis.com', 443)


class DatasetNotPreparedError(errors.UserError, RuntimeError):
  """A TFDS dataset is not in its data_dir (or not readable by index) and could not be prepared
  here."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train: int  # Examples in config.train_split (all processes).
  num_eval: int  # Examples in config.eval_split (all processes).
  # Label i's name: TFDS label names, an image folder's class folders, or 'i'.
  class_names: tuple[str, ...]


class _TfdsRecords:
  """A TFDS data source as {'image': bytes, 'label': int} records (picklable, for worker processes);
  with `text_feature` (a LiT run's config.lit.text_feature, e.g. 'captions/text') also 'text': the
  record's captions, a tuple of str, and 'label' 0 when the dataset has none."""

  def __init__(self, source, text_feature: str = ''):
    self._source = source
    self._text_feature = text_feature

  def __len__(self):
    return len(self._source)

  def _record(self, raw) -> dict[str, Any]:
    record = {'image': raw['image'], 'label': int(raw['label']) if 'label' in raw else 0}
    if self._text_feature:
      value = raw
      for part in self._text_feature.split('/'):
        value = value[part]
      record['text'] = tuple(
        v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(value)
      )
    return record

  def __getitem__(self, index):
    return self._record(self._source[index])

  def read_many(self, indices):
    return [self._record(r) for r in self._source.__getitems__(list(indices))]


def _reachable(address=DOWNLOAD_PROBE, timeout: float = 3.0) -> bool:
  try:
    socket.create_connection(address, timeout=timeout).close()
    return True
  except OSError:
    return False


def _not_prepared_message(builder, config, reason: str) -> str:
  name = builder.name
  data_dir = config.tfds_data_dir or builder.data_dir_root
  lines = [f'TFDS dataset {name!r} is not prepared in data_dir={data_dir} and {reason}.']
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    manual = config.tfds_manual_dir or '<config.tfds_manual_dir>'
    lines += [
      f'{name} needs files that you download yourself: '
      f'{" ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())}',
      f'Place them in {manual}, then prepare it:',
      f'  tfds build {name} --data_dir={data_dir} --manual_dir={manual} --file_format=array_record',
    ]
  else:
    lines += [
      f'Prepare it on a machine with internet access, then copy {data_dir}/{name} here:',
      f'  tfds build {name} --data_dir={data_dir} --file_format=array_record',
    ]
  return '\n'.join(lines)


class _NoVariantFolderNoise(logging.Filter):
  """Drops TFDS's warnings about the version folders of a dataset that is not prepared ('Variant
  folder .../cifar10/3.0.2 has no dataset_info.json', about a folder that need not exist): our own
  error says it better."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith('Variant folder')


_NO_VARIANT_FOLDER_NOISE = _NoVariantFolderNoise()


def _tfds_builder(config, download: bool):
  """The prepared builder of config.dataset; prepares it when possible (see module doc)."""
  import tensorflow_datasets as tfds  # noqa: PLC0415  (heavy: loaded when a TFDS dataset is read)

  # (the package registers the builders; `build` prepares one in a child process)
  from vit_jax.data.datasets import build  # noqa: PLC0415

  # Once: adding the same filter again does nothing.
  logging.getLogger('absl').addFilter(_NO_VARIANT_FOLDER_NOISE)
  try:
    builder = tfds.builder(config.dataset, data_dir=config.tfds_data_dir)
  except tfds.core.DatasetNotFoundError:
    # No network.
    guess = suggest_dataset(config.dataset, tfds.list_builders(with_community_datasets=False))
    raise DataError(
      f'Unknown dataset {config.dataset!r}'
      + (f': did you mean {guess!r}? ' if guess else ': ')
      + 'config.dataset must be a TFDS name (see tfds.list_builders()), one of '
      f'{LOCAL_TFDS_DATASETS}, {IMAGE_FOLDER!r}, or the path of an image folder '
      '(DIR/train/<class>/*.jpg).'
    ) from None
  if not builder.is_prepared():
    if config.dataset in LOCAL_TFDS_DATASETS:
      build.prepare(builder)
    elif not download:
      raise DatasetNotPreparedError(
        _not_prepared_message(builder, config, 'downloading is off (download=False)')
      )
    elif not builder.MANUAL_DOWNLOAD_INSTRUCTIONS and not _reachable():
      raise DatasetNotPreparedError(
        _not_prepared_message(
          builder,
          config,
          f'the network is unreachable from here (no answer from {DOWNLOAD_PROBE[0]} in 3 s)',
        )
      )
    else:
      try:
        build.prepare(builder, manual_dir=config.tfds_manual_dir)
      # (network, missing manual files, ...: the same advice)
      except build.BuildError as e:
        reason = f'preparing it failed with {str(e)[:300]}'
        raise DatasetNotPreparedError(_not_prepared_message(builder, config, reason)) from None
    # (another process prepared it: read what it wrote)
    builder = tfds.builder(config.dataset, data_dir=config.tfds_data_dir)
  formats = {builder.info.file_format} | set(
    getattr(builder.info, 'alternative_file_formats', ()) or ()
  )
  if tfds.core.FileFormat.ARRAY_RECORD not in formats:
    data_dir = config.tfds_data_dir or builder.data_dir_root
    raise DatasetNotPreparedError(
      f'TFDS dataset {builder.name!r} in {builder.data_dir} is prepared as '
      f'{builder.info.file_format.value}, which can only be read in sequence; vit_jax reads '
      'records by index (an exact resume at any step takes O(1)). Prepare it as ArrayRecord once '
      f'(into another data_dir, or after moving the old copy away):\n  tfds build {builder.name} '
      f'--data_dir={data_dir} --file_format=array_record'
      + (' --manual_dir=<config.tfds_manual_dir>' if builder.MANUAL_DOWNLOAD_INSTRUCTIONS else '')
    )
  return builder


def _tfds_split(config, split: str, download: bool) -> Split:
  import tensorflow_datasets as tfds  # noqa: PLC0415  (heavy: loaded when a TFDS dataset is read)

  builder = _tfds_builder(config, download)
  features = builder.info.features
  text = config.lit.text_feature if 'lit' in config else ''
  if 'image' not in features or ('label' not in features and not text):
    raise DataError(
      f'TFDS dataset {config.dataset!r} needs features "image" and "label", has {list(features)}.'
    )
  if text and text.split('/')[0] not in features:
    raise DataError(
      f'config.lit.text_feature={text!r}: TFDS dataset {config.dataset!r} has no such feature (its '
      f'features: {list(features)}; e.g. captions/text for coco_captions).'
    )
  source = builder.as_data_source(split=split, decoders={'image': tfds.decode.SkipDecoding()})
  if 'label' not in features:  # Image-text data without classes.
    return Split(_TfdsRecords(source, text), 0, ())
  label = features['label']
  names = tuple(label.names) if label.names else tuple(str(i) for i in range(label.num_classes))
  return Split(_TfdsRecords(source, text), label.num_classes, names)


def open_split(config, split: str, *, download: bool = True) -> Split:
  """The records of `split` of config.dataset (see module doc)."""
  root = image_folders.folder_root(config)
  if root is None:
    return _tfds_split(config, split, download)
  return image_folders.folder_split(config, root, split)


def get_info(config, *, download: bool = True) -> DatasetInfo:
  """Number of classes and of examples in config.train_split and config.eval_split, and the class
  names."""
  train = open_split(config, config.train_split, download=download)
  evaluation = open_split(config, config.eval_split, download=download)
  return DatasetInfo(
    num_classes=train.num_classes,
    num_train=len(train.records),
    num_eval=len(evaluation.records),
    class_names=train.class_names,
  )
