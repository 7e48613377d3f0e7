"""Random-access data sources: `open_split(config, split)` -> records {'image': encoded bytes,
'label': int} by index.

Sources (`config.dataset`):
* a TFDS name, read from `config.tfds_data_dir` through `tfds.data_source` (ArrayRecord files: any
  record in O(1)). `sklearn_digits` (vit_jax.data.datasets) is built locally on first use. Another
  dataset that is not prepared is downloaded (`download=True`) when the network answers; offline, or
  when preparing fails, it is a `DatasetNotPreparedError` within seconds, with the `tfds build`
  command (and, for datasets with manual downloads, the files to place in `config.tfds_manual_dir`).
  A dataset prepared only as TFRecord (sequential files) is refused with the command that rebuilds
  it as ArrayRecord (`--file_format=array_record`).
* 'image_folder' (or a `config.dataset` that is itself a directory):
  `<root>/<split>/<class>/<image>` (an image is a file with one of vit_jax.io.IMAGE_EXTENSIONS, in
  the class folder or any folder below it: `vit_jax.io.image_files`); classes are the sorted
  subfolders of the train split's folder. A split may be sliced like a TFDS split ('train[:98%]',
  'train[100:200]', 'train+test'): the files of a split folder are in a fixed pseudo-random order
  (by a hash of their path relative to the folder) before slicing, so a slice is a random subset
  that is the same on every machine. Every file of a split is decoded once (in parallel threads)
  when the split is first opened: undecodable ones are an error that names them, or with
  `config.on_bad_image='skip'` are left out (logged once).

Reading a prepared TFDS dataset needs no TensorFlow (array_record and TFDS's NumPy decoding);
TensorFlow is imported only to *prepare* one, in vit_jax/data/datasets/build.py.
"""

import concurrent.futures
import dataclasses
import functools
import hashlib
import logging
import os
import socket
import types
from typing import Any, Sequence

import numpy as np

from vit_jax import errors
from vit_jax import io
from vit_jax.data import preprocess

# (what config.on_bad_image takes)
from vit_jax.configs.choices import BAD_IMAGE_POLICIES  # noqa: F401

# (their owner)
from vit_jax.configs.dataset_names import IMAGE_FOLDER, LOCAL_TFDS_DATASETS, suggest_dataset  # noqa: F401

# TFDS tries its GCS mirror first; unreachable = offline.
DOWNLOAD_PROBE = ('storage.googleapis.com', 443)

log = logging.getLogger(__name__)


class DatasetNotPreparedError(errors.UserError, RuntimeError):
  """A TFDS dataset is not in its data_dir (or not readable by index) and could not be prepared
  here."""


class DataError(errors.UserError, ValueError):
  """A dataset that cannot be used as it is: an unknown name, a missing split or class, undecodable
  images."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train: int  # Examples in config.train_split (all processes).
  num_eval: int  # Examples in config.eval_split (all processes).
  # Label i's name: TFDS label names, an image folder's class folders, or 'i'.
  class_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset: `records[i]` is {'image': encoded bytes, 'label': int}."""

  records: Sequence[dict[str, Any]]
  num_classes: int
  class_names: tuple[str, ...]


def read_many(records, indices) -> list[dict[str, Any]]:
  """records[i] for each of `indices`, in order; in one batched read where the source has one
  (ArrayRecord)."""
  many = getattr(records, 'read_many', None)
  return many(indices) if many is not None else [records[i] for i in indices]


class _Decoded:
  """Records whose images were decoded once into memory: {'image': uint8 [H, W, 3], 'label': int}
  (and 'text')."""

  def __init__(self, images, labels, texts=None):
    self._images, self._labels, self._texts = images, labels, texts

  def __len__(self):
    return len(self._labels)

  def __getitem__(self, index):
    record = {'image': self._images[index], 'label': int(self._labels[index])}
    if self._texts is not None:
      record['text'] = self._texts[index]
    return record


def decoded(records, budget_bytes: int):
  """`records` with their images decoded once into memory, by the same `preprocess.decode` that
  every example would apply (so every example is the same either way), when their pixels take at
  most `budget_bytes`; else `records` themselves. JPEGs are never decoded ahead: a JPEG's training
  crop is decoded at a reduced DCT scale (see vit_jax/data/preprocess.py), so its pixels depend on
  the crop. What this saves is the per-image decode and read: the cost that dominates small images
  (digits, CIFAR)."""
  if budget_bytes <= 0 or len(records) == 0:
    return records
  first = records[0]['image']
  height, width = preprocess.image_shape(first)
  if preprocess.is_jpeg(first) or len(records) * height * width * 3 > budget_bytes:
    return records
  every = read_many(records, range(len(records)))
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    images = list(pool.map(lambda r: preprocess.decode(r['image']), every))
  if sum(image.nbytes for image in images) > budget_bytes:
    return records
  log.info(
    'Decoded %d images (%.1f MiB) into memory once.',
    len(images),
    sum(i.nbytes for i in images) / 2**20,
  )
  texts = [r['text'] for r in every] if 'text' in every[0] else None
  return _Decoded(images, np.array([r['label'] for r in every], np.int64), texts)


# --------------------------------------------------------------------------------------------------
# TFDS.


class _TfdsRecords:
  """A TFDS data source as {'image': bytes, 'label': int} records (picklable, for worker processes);
  with `text_feature` (a LiT run's config.lit.text_feature, e.g. 'captions/text') also 'text': the
  record's captions, a tuple of str, and 'label' 0 when the dataset has none."""

  def __init__(self, source, text_feature: str = ''):
    self._source, self._text_feature = source, text_feature

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
  name, data_dir = builder.name, config.tfds_data_dir or builder.data_dir_root
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
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # (the package registers the builders)
  from vit_jax.data.datasets import build  # pylint: disable=g-import-not-at-top

  # Once: adding the same filter again does nothing.
  logging.getLogger('absl').addFilter(_NO_VARIANT_FOLDER_NOISE)
  try:
    builder = tfds.builder(config.dataset, data_dir=config.tfds_data_dir)
  except tfds.core.DatasetNotFoundError as e:
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
        build.prepare(
          builder, download_config=tfds.download.DownloadConfig(manual_dir=config.tfds_manual_dir)
        )
      # (network, missing manual files, ...: the same advice)
      except Exception as e:  # pylint: disable=broad-except
        reason = f'preparing it failed with {type(e).__name__}: {" ".join(str(e).split())[:300]}'
        raise DatasetNotPreparedError(_not_prepared_message(builder, config, reason)) from None
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
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

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


# --------------------------------------------------------------------------------------------------
# Image folders.


def folder_root(config) -> str | None:
  """The image folder a config reads: config.image_folder for 'image_folder', or config.dataset when
  it is the path of a directory (vision_transformer's convention); None for a TFDS dataset."""
  if config.dataset == IMAGE_FOLDER:
    return config.image_folder
  if config.dataset and io.isdir(config.dataset):
    return config.dataset
  return None


def _subfolders(path: str) -> list[str]:
  return [n for n in io.listdir(path) if io.isdir(io.join(path, n))]


def _split_folder(root: str, name: str) -> str:
  path = io.join(root, name)
  if not io.isdir(path):
    present = ', '.join(_subfolders(root)) if io.isdir(root) else f'{root} does not exist either'
    raise DataError(
      f'Image folder split {name!r} is missing: {path} is not a directory (splits are subfolders '
      f'of {root}: {present or "none"}).'
    )
  return path


@functools.lru_cache(maxsize=16)
def folder_classes(root: str, train_split: str) -> tuple[str, ...]:
  """The class names of an image folder: the sorted subfolders of its train split's folder."""
  path = _split_folder(root, _folder_names(train_split)[0])
  classes = _subfolders(path)
  if not classes:
    raise DataError(f'Image folder {path} has no class subfolders.')
  return tuple(classes)


def _folder_names(split: str) -> list[str]:
  """The split folders a (possibly sliced) split names: 'train[:98%]+test' -> ['train', 'test']."""
  names = []
  for part in split.split('+'):
    name = part.split('[', 1)[0].strip()
    if not name:
      raise DataError(
        f'Bad split {split!r}: expected name, name[slice] or a + of them (e.g. train[:98%]).'
      )
    if name not in names:
      names.append(name)
  return names


def _order_key(root: str, path: str) -> str:
  return hashlib.sha1(os.path.relpath(path, root).encode()).hexdigest()


@functools.lru_cache(maxsize=32)
def _folder_files(root: str, name: str, classes: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
  """((path, label), ...) of one split folder in the fixed pseudo-random order of the module doc."""
  path = _split_folder(root, name)
  unknown = sorted(set(_subfolders(path)) - set(classes))
  if unknown:
    raise DataError(
      f'Image folder {path} has classes that the train folder lacks: '
      f'{[io.join(path, c) for c in unknown]}.'
    )
  files, counts = [], {}
  for label, class_name in enumerate(classes):
    class_dir = io.join(path, class_name)
    if not io.isdir(class_dir):
      continue  # An eval split may lack classes.
    found = io.image_files(class_dir)  # Nested subfolders too (class/2019/x.jpg).
    if not found:
      raise DataError(
        f'Image folder class {class_dir} holds no '
        f'{"/".join(io.IMAGE_EXTENSIONS)} files (in it or in its subfolders).'
      )
    files += [(f, label) for f in found]
    counts[class_name] = len(found)
  log.info(
    'Image folder %s: %d images in %d classes (%s).',
    path,
    len(files),
    len(counts),
    ', '.join(f'{c}: {n}' for c, n in counts.items()),
  )
  return tuple(sorted(files, key=lambda f: _order_key(path, f[0])))


def _decodable(path: str) -> bool:
  try:
    preprocess.decode(io.read_bytes(path))
    return True
  # (any decoding failure means: not an image we can use)
  except Exception:  # pylint: disable=broad-except
    return False


@functools.lru_cache(maxsize=32)
def _checked_files(root: str, name: str, classes: tuple[str, ...], on_bad_image: str):
  """`_folder_files` less undecodable images: an error naming them ('error'), or left out with one
  warning."""
  files = _folder_files(root, name, classes)
  with concurrent.futures.ThreadPoolExecutor(
    max_workers=min(32, (os.cpu_count() or 1) * 2)
  ) as pool:
    ok = list(pool.map(_decodable, [p for p, _ in files]))
  bad = sorted(p for (p, _), good in zip(files, ok) if not good)
  if not bad:
    return files
  listed, more = bad[:10], f' and {len(bad) - 10} more' if len(bad) > 10 else ''
  where = io.join(root, name)
  if on_bad_image == 'error':
    raise DataError(
      f'Image folder {where} holds {len(bad)} file(s) that cannot be decoded as an image: '
      f'{listed}{more}. Remove or repair them, or set config.on_bad_image=skip to leave them out.'
    )
  log.warning(
    'Image folder %s: skipping %d undecodable file(s) (config.on_bad_image=skip): %s%s',
    where,
    len(bad),
    listed,
    more,
  )
  return tuple(f for f, good in zip(files, ok) if good)


class _FolderRecords:
  """(path, label) pairs read as {'image': bytes, 'label': int} records (picklable, for worker
  processes)."""

  def __init__(self, files):
    self._files = tuple(files)

  def __len__(self):
    return len(self._files)

  def __getitem__(self, index):
    path, label = self._files[index]
    return {'image': io.read_bytes(path), 'label': label}

  def path(self, index) -> str:
    return self._files[index][0]


def _folder_split(config, root: str, split: str) -> Split:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  classes = folder_classes(root, config.train_split)
  per_folder = {
    name: _checked_files(root, name, classes, config.on_bad_image) for name in _folder_names(split)
  }
  sizes = {
    n: types.SimpleNamespace(num_examples=len(f), shard_lengths=[len(f)])
    for n, f in per_folder.items()
  }
  absolute = tfds.core.ReadInstruction.from_spec(split).to_absolute(sizes)
  files = []
  for part in absolute:
    files += per_folder[part.splitname][part.from_ : part.to]
  return Split(_FolderRecords(files), len(classes), classes)


# --------------------------------------------------------------------------------------------------


def open_split(config, split: str, *, download: bool = True) -> Split:
  """The records of `split` of config.dataset (see module doc)."""
  root = folder_root(config)
  if root is None:
    return _tfds_split(config, split, download)
  if config.dataset != IMAGE_FOLDER:
    _log_folder_once(config.dataset)
  return _folder_split(config, root, split)


@functools.cache
def _log_folder_once(path: str) -> None:
  log.info('config.dataset %r is a directory: reading it as an image folder.', path)


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
