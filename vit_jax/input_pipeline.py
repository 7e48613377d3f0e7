"""Input pipelines: a TFDS dataset or an image folder -> per-process tf.data streams -> global jax.Arrays.

Sources (`config.dataset`):
* a TFDS name, read from `config.tfds_data_dir`. `sklearn_digits` (vit_jax.datasets) is built locally on first use;
  other datasets that are not prepared are downloaded (`download=True`, the default) or raise
  `DatasetNotPreparedError` with the command that prepares them.
* 'image_folder': `config.image_folder`/<split>/<class>/*.{jpg,jpeg,png}; classes are the sorted subfolders of the
  train split folder. A `config.dataset` that is itself the path of a directory is read the same way. Every file is decoded once up front (in parallel): undecodable ones are an error that names
  them, or with `config.on_bad_image='skip'` are left out of the split (logged and counted) before any order is
  drawn, so the stream stays a deterministic function of (seed, step).

Eval: each process reads its own part of a split: `tfds.even_splits(split, process_count)[process_index]` for TFDS,
every `process_count`-th file (sorted by class, then name) for folders.

Training reads K = `config.input_shards` (0: one per process) virtual input shards; process p of P owns shards
[p * K/P, (p + 1) * K/P). Shard s holds `tfds.even_splits(split, K)[s]` (every K-th file from s for folders) and is
an independent stream of batches of local_batch_size / (K/P); a process's batch is its shards' batches concatenated
in shard order, so the global batch (processes in order) is the same sequence of examples for every P dividing K.
Each shard's stream is a deterministic function of (config.seed, s), which makes it resumable:
* epoch e is the shard's records shuffled (undecoded) with a seed derived from (seed, s, e);
* the example at position i of epoch e is augmented with the stateless seed derived from (seed, s, e, i);
* `start_step` jumps over `start_step * shard batch size` examples: whole epochs arithmetically, the rest by skipping
  shuffled records before they are decoded. Batch k of a stream started at `start_step` equals batch
  `start_step + k` of a stream started at 0.
(The shuffle seed goes through tf.data, so a TF global seed, `tf.random.set_seed`, would change the order too.)
"""
import collections
import dataclasses
import functools
import logging
import os
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vit_jax import datasets as _local_datasets  # pylint: disable=unused-import  (registers `sklearn_digits`)
from vit_jax import preprocess

IMAGE_FOLDER = 'image_folder'
LOCAL_TFDS_DATASETS = ('sklearn_digits',)  # Built from local data, never downloaded.
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
TRAIN_CROPS = ('inception', 'pad_crop', 'resize')
BAD_IMAGE_POLICIES = ('error', 'skip')
_EPOCHS_END = 2**62  # "Forever", for Dataset.range.

log = logging.getLogger(__name__)


class DatasetNotPreparedError(RuntimeError):
  """A TFDS dataset is not in its data_dir and could not be downloaded here."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  num_classes: int
  num_train: int  # Examples in config.train_split (all processes).
  num_eval: int  # Examples in config.eval_split (all processes).
  class_names: tuple[str, ...]  # Label i's name: TFDS label names, an image folder's class folders, or 'i'.


@dataclasses.dataclass(frozen=True)
class _Source:
  """Undecoded examples of one dataset, split into parts (processes for eval, input shards for training)."""
  num_classes: int
  class_names: tuple[str, ...]
  # (split, part_index, part_count) -> {'image': encoded image or file path, 'label': int}, in a fixed order.
  read: Callable[[str, int, int], tf.data.Dataset]
  # (split, part_index, part_count) -> how many examples `read` yields.
  count: Callable[[str, int, int], int]
  # What `read` yields as 'image' -> uint8 [H, W, C].
  decode: Callable[[tf.Tensor], tf.Tensor]


# ----------------------------------------------------------------------------------------------------------------
# TFDS.


def _not_prepared_message(builder, config, reason: str) -> str:
  name = builder.name
  data_dir = config.tfds_data_dir or tfds.core.constants.DATA_DIR
  manual_dir = config.tfds_manual_dir or '<config.tfds_manual_dir>'
  lines = [
      f'TFDS dataset {name!r} is not prepared in data_dir={data_dir} (no {builder.data_dir}) and {reason}.',
      f'Prepare it on a machine with internet access, then copy {data_dir}/{name} here:',
      f'  tfds build {name} --data_dir={data_dir}',
      f'Datasets with manual downloads (e.g. imagenet2012: ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar) need '
      f'their files placed in manual_dir={manual_dir} (config.tfds_manual_dir) first:',
      f'  tfds build {name} --data_dir={data_dir} --manual_dir={manual_dir}',
  ]
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    lines.append(f'Manual download instructions for {name}: {builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}')
  return '\n'.join(lines)


def _tfds_builder(config, download: bool):
  """The prepared builder of config.dataset; prepares it when possible (see module doc)."""
  try:
    builder = tfds.builder(config.dataset, data_dir=config.tfds_data_dir)
  except tfds.core.DatasetNotFoundError as e:
    raise ValueError(f'Unknown dataset {config.dataset!r}: config.dataset must be a TFDS name (see '
                     f'tfds.list_builders()), one of {LOCAL_TFDS_DATASETS}, {IMAGE_FOLDER!r}, or the path of an image '
                     'folder (DIR/train/<class>/*.jpg).') from e
  if builder.is_prepared():
    return builder
  if config.dataset in LOCAL_TFDS_DATASETS:
    builder.download_and_prepare()
    return builder
  if not download:
    raise DatasetNotPreparedError(_not_prepared_message(builder, config, 'downloading is off (download=False)'))
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=config.tfds_manual_dir))
  except Exception as e:  # Any failure (network, missing manual files, ...) gets the same advice.
    reason = f'preparing it failed with {type(e).__name__}: {e}'
    raise DatasetNotPreparedError(_not_prepared_message(builder, config, reason)) from e
  return builder


def _count_dataset(ds: tf.data.Dataset) -> int:
  n = int(ds.cardinality())
  if n >= 0:
    return n
  return int(ds.reduce(np.int64(0), lambda c, _: c + 1))


def _tfds_source(config, download: bool) -> _Source:
  builder = _tfds_builder(config, download)
  features = builder.info.features
  if 'image' not in features or 'label' not in features:
    raise ValueError(f'TFDS dataset {config.dataset!r} needs features "image" and "label", has {list(features)}.')

  def part(split, index, count):
    return split if count == 1 else tfds.even_splits(split, n=count)[index]

  def read(split, index, count):
    ds = builder.as_dataset(
        split=part(split, index, count), shuffle_files=False,
        decoders={'image': tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(try_autocache=False, skip_prefetch=True))
    return ds.map(lambda ex: {'image': ex['image'], 'label': ex['label']})

  def count(split, index, count):
    # Split metadata for prepared datasets (no pass over the data). It is empty under tfds.testing.mock_data, whose
    # datasets instead declare their (mocked) size as cardinality.
    if builder.info.splits:
      return builder.info.splits[part(split, index, count)].num_examples
    return _count_dataset(read(split, index, count))

  label = features['label']
  names = tuple(label.names) if label.names else tuple(str(i) for i in range(label.num_classes))
  return _Source(label.num_classes, names, read, count, features['image'].decode_example)


# ----------------------------------------------------------------------------------------------------------------
# Image folders.


def _subfolders(path: str) -> list[str]:
  return sorted(n.rstrip('/') for n in tf.io.gfile.listdir(path) if tf.io.gfile.isdir(os.path.join(path, n)))


def _split_folder(root: str, split: str) -> str:
  path = os.path.join(root, split)
  if not tf.io.gfile.isdir(path):
    raise ValueError(f'Image folder split {split!r} is missing: {path} is not a directory.')
  return path


def _folder_classes(root: str, train_split: str) -> list[str]:
  path = _split_folder(root, train_split)
  classes = _subfolders(path)
  if not classes:
    raise ValueError(f'Image folder {path} has no class subfolders.')
  return classes


def _folder_files(root: str, split: str, classes: list[str]) -> tuple[list[str], list[int]]:
  """(paths, labels) of a split folder, sorted by class then file name."""
  path = _split_folder(root, split)
  unknown = sorted(set(_subfolders(path)) - set(classes))
  if unknown:
    raise ValueError(f'Image folder {path} has classes that the train folder lacks: '
                     f'{[os.path.join(path, c) for c in unknown]}.')
  paths, labels = [], []
  for label, name in enumerate(classes):
    class_dir = os.path.join(path, name)
    if not tf.io.gfile.isdir(class_dir):
      continue  # An eval split may lack classes.
    files = sorted(f for f in tf.io.gfile.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise ValueError(f'Image folder class {class_dir} holds no {"/".join(IMAGE_EXTENSIONS)} files.')
    paths += [os.path.join(class_dir, f) for f in files]
    labels += [label] * len(files)
  return paths, labels


def _decode_file(path: tf.Tensor) -> tf.Tensor:
  return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


@functools.lru_cache(maxsize=8)
def _undecodable(paths: tuple[str, ...]) -> tuple[str, ...]:
  """The files among `paths` that the pipeline cannot decode: one parallel tf.data pass that decodes every file."""
  ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string)).enumerate()
  ds = ds.map(lambda i, path: (i, tf.shape(_decode_file(path))[0]), num_parallel_calls=tf.data.AUTOTUNE)
  decoded = {int(i) for i, _ in ds.ignore_errors().as_numpy_iterator()}
  return tuple(p for i, p in enumerate(paths) if i not in decoded)


def _decodable_files(root: str, split: str, classes: list[str], on_bad_image: str) -> tuple[list[str], list[int]]:
  """`_folder_files` less undecodable images: an error naming them ('error'), or skipped with a warning ('skip')."""
  paths, labels = _folder_files(root, split, classes)
  bad = set(_undecodable(tuple(paths)))
  if not bad:
    return paths, labels
  listed = sorted(bad)[:10]
  more = f' and {len(bad) - 10} more' if len(bad) > 10 else ''
  if on_bad_image == 'error':
    raise ValueError(f'Image folder {os.path.join(root, split)} holds {len(bad)} file(s) that cannot be decoded as '
                     f'an image: {listed}{more}. Remove or repair them, or set config.on_bad_image=skip to leave them '
                     'out.')
  log.warning('Image folder %s: skipping %d undecodable file(s) (config.on_bad_image=skip): %s%s',
              os.path.join(root, split), len(bad), listed, more)
  kept = [(p, l) for p, l in zip(paths, labels) if p not in bad]
  return [p for p, _ in kept], [l for _, l in kept]


def folder_root(config) -> str | None:
  """The image folder a config reads: config.image_folder for 'image_folder', or config.dataset when it is the path
  of a directory (vision_transformer's convention); None for a TFDS dataset."""
  if config.dataset == IMAGE_FOLDER:
    return config.image_folder
  if config.dataset and tf.io.gfile.isdir(config.dataset):
    return config.dataset
  return None


def _folder_source(config, root: str) -> _Source:
  if not root:
    raise ValueError(f'config.dataset is {IMAGE_FOLDER!r} but config.image_folder is empty.')
  if config.on_bad_image not in BAD_IMAGE_POLICIES:
    raise ValueError(f'Unknown config.on_bad_image {config.on_bad_image!r}; valid: {", ".join(BAD_IMAGE_POLICIES)}.')
  classes = _folder_classes(root, config.train_split)
  files = functools.cache(lambda split: _decodable_files(root, split, classes, config.on_bad_image))

  def read(split, index, count):
    paths, labels = files(split)
    return tf.data.Dataset.from_tensor_slices({
        'image': tf.constant(paths[index::count], tf.string),
        'label': tf.constant(labels[index::count], tf.int64),
    })

  def count(split, index, count):
    return len(files(split)[0][index::count])

  return _Source(len(classes), tuple(classes), read, count, _decode_file)


def _source(config, download: bool) -> _Source:
  if not config.dataset:
    raise ValueError(f'config.dataset is empty: set a TFDS name or {IMAGE_FOLDER!r}.')
  root = folder_root(config)
  if root is not None:
    if config.dataset != IMAGE_FOLDER:
      log.info('config.dataset %r is a directory: reading it as an image folder.', config.dataset)
    return _folder_source(config, root)
  return _tfds_source(config, download)


# ----------------------------------------------------------------------------------------------------------------
# Pipelines.


def _check_process_args(local_batch_size: int, process_index: int, process_count: int):
  if local_batch_size <= 0:
    raise ValueError(f'local_batch_size must be positive, got {local_batch_size}.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index must be in [0, process_count={process_count}), got {process_index}.')


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options


def _seed_int(key: tf.Tensor) -> tf.Tensor:
  """A stateless seed [2] -> one int64 (tf.data's shuffle takes a single seed)."""
  return tf.random.stateless_uniform([], seed=key, minval=None, maxval=None, dtype=tf.int64)


def _train_image(image: tf.Tensor, key: tf.Tensor, config) -> tf.Tensor:
  """uint8 [H, W, C] -> float32 [S, S, 3] in [-1, 1]: crop, flip; a deterministic function of `key`."""
  crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
  size = config.image_size
  if config.pp.crop == 'inception':
    image = preprocess.inception_crop(image, crop_key, min_area=config.pp.inception_min_area, size=size)
  elif config.pp.crop == 'pad_crop':
    image = preprocess.pad_crop(image, crop_key, pad=config.pp.pad_pixels, size=size)
  else:
    image = preprocess.resize(image, size)
  if config.pp.flip:
    image = preprocess.random_flip(image, flip_key)
  return tf.ensure_shape(preprocess.to_float(preprocess.to_rgb(image)), [size, size, 3])


def eval_image(image: tf.Tensor, config) -> tf.Tensor:
  """uint8 [H, W, C] -> float32 [S, S, 3] in [-1, 1]: the evaluation preprocessing (also what predict uses)."""
  size = config.image_size
  image = preprocess.central_crop(image, size, config.pp.eval_crop_fraction)
  return tf.ensure_shape(preprocess.to_float(preprocess.to_rgb(image)), [size, size, 3])


def get_info(config, *, download: bool = True) -> DatasetInfo:
  """Number of classes and of examples in config.train_split and config.eval_split."""
  source = _source(config, download)
  return DatasetInfo(
      num_classes=source.num_classes,
      num_train=source.count(config.train_split, 0, 1),
      num_eval=source.count(config.eval_split, 0, 1),
      class_names=source.class_names)


def _shards_of_process(config, local_batch_size: int, process_index: int, process_count: int):
  """(input shards K, this process's shard indices, batch size per shard) for config.input_shards."""
  num_shards = config.input_shards or process_count
  if num_shards < 0 or num_shards % process_count:
    raise ValueError(f'config.input_shards={config.input_shards} must be 0 (one per process) or a positive multiple '
                     f'of the process count {process_count}.')
  per_process = num_shards // process_count
  if local_batch_size % per_process:
    raise ValueError(f'The local batch size {local_batch_size} does not split over the {per_process} input shards of '
                     f'each process (config.input_shards={num_shards} over {process_count} processes): '
                     f'config.batch_size must be a multiple of config.input_shards.')
  first = process_index * per_process
  return num_shards, range(first, first + per_process), local_batch_size // per_process


def _shard_stream(config, source: _Source, shard: int, num_shards: int, batch_size: int,
                  start_step: int) -> tf.data.Dataset:
  """Endless batches of one input shard (see module doc), from batch `start_step` on."""
  split = config.train_split
  num_records = source.count(split, shard, num_shards)
  if num_records == 0:
    raise ValueError(f'{config.dataset} {split!r} has no examples for input shard {shard} of {num_shards}.')
  records = source.read(split, shard, num_shards)
  start_epoch, offset = divmod(start_step * batch_size, num_records)
  shard_key = tf.constant([config.seed, shard], tf.int64)
  buffer_size = max(1, min(config.shuffle_buffer, num_records))

  def epoch(e):
    epoch_key = tf.random.experimental.stateless_fold_in(shard_key, e)
    shuffled = records.shuffle(buffer_size, seed=_seed_int(epoch_key), reshuffle_each_iteration=False)
    first = tf.where(e == start_epoch, tf.constant(offset, tf.int64), tf.constant(0, tf.int64))
    shuffled = shuffled.enumerate().skip(first)
    return shuffled.map(lambda i, ex: (tf.random.experimental.stateless_fold_in(epoch_key, i), ex))

  def prepare(key, ex):
    image = _train_image(source.decode(ex['image']), key, config)
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32)}

  ds = tf.data.Dataset.range(start_epoch, _EPOCHS_END).flat_map(epoch)
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size, drop_remainder=True)


def _concat_batches(*batches):
  return {k: tf.concat([b[k] for b in batches], axis=0) for k in batches[0]}


def train_dataset(config, *, local_batch_size: int, process_index: int = 0, process_count: int = 1,
                  start_step: int = 0, download: bool = True) -> tf.data.Dataset:
  """Endless {'image': float32 [B, S, S, 3] in [-1, 1], 'label': int32 [B]} of this process (see module doc)."""
  _check_process_args(local_batch_size, process_index, process_count)
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  if config.pp.crop not in TRAIN_CROPS:
    raise ValueError(f'config.pp.crop must be one of {TRAIN_CROPS}, got {config.pp.crop!r}.')
  num_shards, shards, shard_batch = _shards_of_process(config, local_batch_size, process_index, process_count)
  source = _source(config, download)
  streams = tuple(_shard_stream(config, source, s, num_shards, shard_batch, start_step) for s in shards)
  ds = streams[0] if len(streams) == 1 else tf.data.Dataset.zip(streams).map(_concat_batches)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def eval_dataset(config, *, local_batch_size: int, process_index: int = 0, process_count: int = 1,
                 download: bool = True) -> tf.data.Dataset:
  """This process's part of config.eval_split, once, in order: {'image', 'label', 'mask'} batches.

  Padding examples (zeros, mask 0) fill the last batch and extra batches, so that every process yields
  ceil(max per-process examples / local_batch_size) batches: a multi-process evaluation runs the same number of steps
  everywhere and counts each real example (mask 1) exactly once.
  """
  _check_process_args(local_batch_size, process_index, process_count)
  source = _source(config, download)
  split = config.eval_split
  counts = [source.count(split, p, process_count) for p in range(process_count)]
  num_batches = -(-max(counts) // local_batch_size)
  num_padding = num_batches * local_batch_size - counts[process_index]

  def prepare(ex):
    return {'image': eval_image(source.decode(ex['image']), config),
            'label': tf.cast(ex['label'], tf.int32),
            'mask': tf.constant(1.0, tf.float32)}

  size = config.image_size
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros([size, size, 3], tf.float32),
      'label': tf.constant(0, tf.int32),
      'mask': tf.constant(0.0, tf.float32),
  }).repeat(num_padding)
  ds = source.read(split, process_index, process_count).map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.concatenate(padding).batch(local_batch_size, drop_remainder=True)
  ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches)).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options())


# ----------------------------------------------------------------------------------------------------------------
# To devices.


def make_global_batch(local_batch: dict[str, Any], sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
  """Local numpy arrays [B_local, ...] of every process -> jax.Arrays [B_local * process_count, ...] on `sharding`."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def prefetch_to_device(iterator: Iterable[dict[str, Any]], size: int,
                       sharding: jax.sharding.Sharding) -> Iterator[dict[str, jax.Array]]:
  """Yields `make_global_batch` of each local batch; while one is in use, the next `size` are already on device."""
  queue = collections.deque()
  for local_batch in iterator:
    queue.append(make_global_batch(local_batch, sharding))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
