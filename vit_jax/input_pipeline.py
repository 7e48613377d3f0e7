"""Input pipelines: random-access records -> global positions -> this process's examples -> batches -> jax.Arrays.

Training (`train_dataset`). The training stream is indexed by a global position i = 0, 1, 2, ...:
  * epoch e = i // N (N examples in config.train_split); the example at i is record perm_e(i % N), perm_e a seeded
    permutation of all N records (Grain's index shuffle: a true global shuffle, computed per index in O(1));
  * its augmentation (crop, flip, RandAugment) is drawn from a generator seeded by (seed, i);
so example i is a pure function of (config.seed, i). Global batch b holds positions [b*B, (b+1)*B) (B = batch_size)
and process p of P reads only positions [b*B + p*L, b*B + (p+1)*L) of it (L = B / P): the sequence of global batches
is the same for any number of processes, and starting at step s reads nothing before position s*B (no skipping).
Records are read and decoded by Grain in `config.input_threads` threads (0: one per CPU core), and optionally in
`config.input_processes` worker processes (Grain's mp_prefetch; the order stays the same).

Evaluation (`eval_dataset`): process p reads records p, p + P, ... of the split once, in order; padding examples
(zeros, mask 0) fill the last batch and extra batches so that every process yields the same number of batches and
each real example (mask 1) counts exactly once.

Batches are numpy dicts {'image': uint8 [L, S, S, 3], 'label': int32 [L] (, 'mask': float32 [L])}; images become
float [-1, 1] on the device (`preprocess.to_float` in the train and eval steps). Sources: vit_jax/sources.py.
"""
import collections
import os
import sys
from typing import Any, Iterable, Iterator

from absl import flags
import grain
import jax
import numpy as np

from vit_jax import datasets as _local_datasets  # noqa: F401  (registers sklearn_digits with TFDS)
from vit_jax import preprocess, randaugment
from vit_jax.sources import (  # noqa: F401  (the input pipeline's public names)
    IMAGE_FOLDER, DatasetInfo, DatasetNotPreparedError, folder_root, get_info, open_split)

def _seed(config_seed: int, purpose: int) -> int:
  """A 32-bit seed for one use (shuffle, augmentation) derived from config.seed."""
  return int(np.random.SeedSequence([config_seed, purpose]).generate_state(1)[0])


class TrainExample:
  """record, rng -> {'image': uint8 [S, S, 3], 'label': int32}: crop, flip, RandAugment (module doc of preprocess)."""

  def __init__(self, config):
    pp = config.pp
    self.size, self.crop, self.min_area, self.pad = config.image_size, pp.crop, pp.inception_min_area, pp.pad_pixels
    self.flip, self.ra_layers, self.ra_magnitude = pp.flip, pp.randaugment_layers, pp.randaugment_magnitude

  def __call__(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    data = record['image']
    if self.crop == 'inception':
      image = preprocess.decode_inception_crop(data, rng, size=self.size, min_area=self.min_area)
    elif self.crop == 'pad_crop':
      image = preprocess.pad_crop(preprocess.decode(data), rng, pad=self.pad, size=self.size)
    else:
      image = preprocess.resize(preprocess.decode(data), self.size)
    if self.flip:
      image = preprocess.random_flip(image, rng)
    if self.ra_layers:
      image = randaugment.randaugment(image, rng, num_layers=self.ra_layers, magnitude=self.ra_magnitude)
    return {'image': image, 'label': np.int32(record['label'])}


def train_stream(config, records) -> grain.MapDataset:
  """Position i -> the example of the module doc: a pure function of (config.seed, i), for any i >= 0."""
  if len(records) == 0:
    raise ValueError(f'{config.dataset} {config.train_split!r} has no examples.')
  ds = grain.MapDataset.source(records).shuffle(seed=_seed(config.seed, 0)).repeat()
  return ds.random_map(TrainExample(config), seed=_seed(config.seed, 1))


class _LocalExample:
  """Local index k -> stream position (k // L) * B + p * L + k % L: this process's part of each global batch."""

  def __init__(self, stream, global_batch: int, local_batch: int, process_index: int):
    self.stream, self.global_batch, self.local_batch, self.process_index = (
        stream, global_batch, local_batch, process_index)

  def __call__(self, k: int):
    batch, offset = divmod(k, self.local_batch)
    return self.stream[batch * self.global_batch + self.process_index * self.local_batch + offset]


def _check_process_args(local_batch_size: int, process_index: int, process_count: int):
  if local_batch_size <= 0:
    raise ValueError(f'local_batch_size must be positive, got {local_batch_size}.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index must be in [0, process_count={process_count}), got {process_index}.')


def _read_options(config, batch_size: int) -> grain.ReadOptions:
  threads = config.input_threads or os.cpu_count() or 1
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2 * batch_size, threads))


def _parallel(config, examples: grain.MapDataset, batch_size: int) -> grain.IterDataset:
  ds = examples.to_iter_dataset(_read_options(config, batch_size))
  if config.input_processes:
    if not flags.FLAGS.is_parsed():  # Grain reads its absl flags; in the Python API nobody parsed them.
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.input_processes))
  return ds.batch(batch_size, drop_remainder=True)


def train_dataset(config, *, local_batch_size: int, process_index: int = 0, process_count: int = 1,
                  start_step: int = 0, download: bool = True) -> grain.IterDataset:
  """Endless batches of this process from step `start_step` on (module doc); iterate it for numpy dicts."""
  _check_process_args(local_batch_size, process_index, process_count)
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  stream = train_stream(config, open_split(config, config.train_split, download=download).records)
  local = _LocalExample(stream, local_batch_size * process_count, local_batch_size, process_index)
  examples = grain.MapDataset.range(start_step * local_batch_size, sys.maxsize).map(local)
  return _parallel(config, examples, local_batch_size)


class _EvalExample:
  """Local index k -> {'image', 'label', 'mask'}: record process_index + k * process_count, or padding past the end."""

  def __init__(self, records, config, process_index: int, process_count: int, count: int):
    self.records, self.process_index, self.process_count, self.count = records, process_index, process_count, count
    self.size, self.fraction, self.mode = config.image_size, config.pp.eval_crop_fraction, config.pp.eval_resize

  def __call__(self, k: int) -> dict[str, Any]:
    if k >= self.count:
      return {'image': np.zeros((self.size, self.size, 3), np.uint8), 'label': np.int32(0),
              'mask': np.float32(0.0)}
    record = self.records[self.process_index + k * self.process_count]
    image = preprocess.eval_image(record['image'], image_size=self.size, crop_fraction=self.fraction,
                                  resize_mode=self.mode)
    return {'image': image, 'label': np.int32(record['label']), 'mask': np.float32(1.0)}


def eval_dataset(config, *, local_batch_size: int, process_index: int = 0, process_count: int = 1,
                 download: bool = True) -> grain.IterDataset:
  """This process's part of config.eval_split, once, in order, padded (module doc)."""
  _check_process_args(local_batch_size, process_index, process_count)
  records = open_split(config, config.eval_split, download=download).records
  counts = [len(range(p, len(records), process_count)) for p in range(process_count)]
  num_batches = -(-max(counts) // local_batch_size)
  example = _EvalExample(records, config, process_index, process_count, counts[process_index])
  return _parallel(config, grain.MapDataset.range(num_batches * local_batch_size).map(example), local_batch_size)


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
