"""Input pipelines: random-access records -> global positions -> this process's examples -> batches
-> jax.Arrays.

Training (`train_dataset`). The training stream is indexed by a global position i = 0, 1, 2, ...:
  * epoch e = i // N (N examples in config.train_split); the example at i is record perm_e(i % N),
    perm_e a seeded permutation of all N records (Grain's index shuffle: a true global shuffle,
    computed per index in O(1));
  * its augmentation (crop, flip, RandAugment) is drawn from a generator seeded by (seed, i);
so example i is a pure function of (config.seed, i). Global batch b holds positions [b*B, (b+1)*B)
(B = batch_size) and process p of P reads only positions [b*B + p*L, b*B + (p+1)*L) of it (L = B /
P): the sequence of global batches is the same for any number of processes, and starting at step s
reads nothing before position s*B (no skipping). Records are read and decoded by Grain in
`config.input_threads` threads (0: one per CPU core), and optionally in `config.input_processes`
worker processes (Grain's mp_prefetch; the order stays the same).

Evaluation (`eval_dataset`): process p reads records p, p + P, ... of the split once, in order;
padding examples (zeros, mask 0) fill the last batch and extra batches so that every process yields
the same number of batches and each real example (mask 1) counts exactly once; 'index' is each row's
record in the split (-1 for padding).

Batches are numpy dicts {'image': uint8 [L, S, S, 3], 'label': int32 [L] (, 'mask': float32 [L])},
and what the task adds to training's (vit_jax/tasks/image_text.py, LiT): 'tokens': int32 [L,
max_len], each example's caption (vit_jax/data/captions.py), and 'zimg' instead of 'image' when the
locked image tower's embeddings are precomputed (config.lit.precompute_image); images become float
[-1, 1] on the device (`preprocess.to_float` in the train and eval steps). Sources:
vit_jax/data/sources.py.
"""

import collections
import os
import sys
import threading
from typing import Any, Iterable, Iterator

from absl import flags
import grain
import jax
import numpy as np

# (registers sklearn_digits with TFDS)
from vit_jax.data import datasets as _local_datasets  # noqa: F401
from vit_jax.data import preprocess, randaugment, splits
from vit_jax.data.captions import Captions
from vit_jax.data.image_folders import folder_root  # noqa: F401  (a public name, as below)
from vit_jax.data.sources import (  # noqa: F401  (the input pipeline's public names)
  IMAGE_FOLDER,
  DatasetInfo,
  DatasetNotPreparedError,
  get_info,
  open_split,
)


def _seed(config_seed: int, purpose: int) -> int:
  """A 32-bit seed for one use (shuffle, augmentation) derived from config.seed."""
  return int(np.random.SeedSequence([config_seed, purpose]).generate_state(1)[0])


class TrainExample:
  """record, rng -> {'image': uint8 [S, S, 3], 'label': int32}: crop, flip, RandAugment (module doc
  of preprocess)."""

  def __init__(self, config):
    pp = config.pp
    self.size = config.image_size
    self.crop = pp.crop
    self.min_area = pp.inception_min_area
    self.pad = pp.pad_pixels
    self.flip = pp.flip
    self.ra_layers = pp.randaugment_layers
    self.ra_magnitude = pp.randaugment_magnitude
    # Else the rng is not used.
    self.random = self.crop != 'resize' or self.flip or self.ra_layers > 0

  def __call__(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    data = record['image']
    if self.crop == 'inception':
      image = preprocess.decode_inception_crop(data, rng, size=self.size, min_area=self.min_area)
    elif self.crop == 'pad_crop':
      image = preprocess.pad_crop(preprocess.as_image(data), rng, pad=self.pad, size=self.size)
    else:
      image = preprocess.resize(preprocess.as_image(data), self.size)
    if self.flip:
      image = preprocess.random_flip(image, rng)
    if self.ra_layers:
      image = randaugment.randaugment(
        image, rng, num_layers=self.ra_layers, magnitude=self.ra_magnitude
      )
    return {'image': image, 'label': np.int32(record['label'])}


def example_rng(seed: int, position: int, _cache=threading.local()) -> np.random.Generator:
  """The random generator of the example at `position`: Philox keyed by `seed`, counter (0, 0, 0,
  position) (Grain's random_map convention, so the draws are those of earlier versions). One
  generator per thread, reset each time."""
  rng = getattr(_cache, 'rng', None)
  if rng is None or _cache.seed != seed:
    rng = np.random.Generator(np.random.Philox(seed))
    _cache.rng = None
    _cache.seed = seed
    _cache.rng = rng
  state = rng.bit_generator.state
  state['state']['counter'] = np.array([0, 0, 0, position], dtype=np.uint64)
  state['buffer'], state['buffer_pos'], state['has_uint32'], state['uinteger'] = (
    np.zeros(4, np.uint64),
    4,
    0,
    0,
  )
  rng.bit_generator.state = state
  return rng


class TrainStream:
  """Position i -> the example of the module doc: a pure function of (config.seed, i), for any i >=
  0.

  `stream[i]` is one example; `stream.batch(positions)` the examples at `positions` stacked, with
  their records read together (one batched read where the source has one, e.g. ArrayRecord)."""

  def __init__(self, config, records, captions: Captions | None = None, image_table=None):
    if len(records) == 0:
      raise splits.DataError(f'{config.dataset} {config.train_split!r} has no examples.')
    self.records = records
    self.example = TrainExample(config)
    self.captions = captions
    # A locked tower's embedding of each record (config.lit.precompute_image).
    self.image_table = image_table
    self.order = grain.MapDataset.range(len(records)).shuffle(seed=_seed(config.seed, 0)).repeat()
    self.seed = _seed(config.seed, 1)

  def _rng(self, position: int):
    return example_rng(self.seed, int(position)) if self.example.random else None

  def __getitem__(self, position: int) -> dict[str, Any]:
    return self.example(self.records[self.order[position]], self._rng(position))

  def batch(self, positions) -> dict[str, np.ndarray]:
    indices = [self.order[int(p)] for p in positions]
    records = splits.read_many(self.records, indices)
    # The images' embeddings instead of the images (nothing to decode).
    if self.image_table is not None:
      out = {
        'zimg': self.image_table[indices],
        'label': np.array([r['label'] for r in records], np.int32),
      }
    else:
      examples = [self.example(r, self._rng(p)) for r, p in zip(records, positions)]
      out = {
        'image': np.stack([e['image'] for e in examples]),
        'label': np.array([e['label'] for e in examples], np.int32),
      }
    # Image-text training: each example's caption, tokenized (vit_jax/data/captions.py).
    if self.captions is not None:
      # A TFDS caption feature.
      texts = [r['text'] for r in records] if 'text' in records[0] else None
      out['tokens'] = self.captions.tokens(out['label'], positions, indices, texts)
    return out


class _LocalBatch:
  """Local batch b -> positions [b*B + p*L, b*B + (p+1)*L) of the stream: this process's part of
  global batch b."""

  def __init__(self, stream: TrainStream, global_batch: int, local_batch: int, process_index: int):
    self.stream = stream
    self.global_batch = global_batch
    self.local_batch = local_batch
    self.process_index = process_index

  def __call__(self, b: int) -> dict[str, np.ndarray]:
    first = b * self.global_batch + self.process_index * self.local_batch
    return self.stream.batch(range(first, first + self.local_batch))


def _check_process_args(local_batch_size: int, process_index: int, process_count: int):
  if local_batch_size <= 0:
    raise ValueError(f'local_batch_size must be positive, got {local_batch_size}.')
  if not 0 <= process_index < process_count:
    raise ValueError(
      f'process_index must be in [0, process_count={process_count}), got {process_index}.'
    )


def _parallel(config, batches: grain.MapDataset) -> grain.IterDataset:
  """Batches made ahead in config.input_threads threads (and config.input_processes processes), in
  order."""
  threads = config.input_threads or os.cpu_count() or 1
  ds = batches.to_iter_dataset(
    grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2, threads))
  )
  if config.input_processes:
    # Grain reads its absl flags; in the Python API nobody parsed them.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.input_processes))
  return ds


def train_dataset(
  config,
  *,
  local_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  start_step: int = 0,
  download: bool = True,
  captions: Captions | None = None,
  image_table=None,
) -> grain.IterDataset:
  """Endless batches of this process from step `start_step` on (module doc); iterate it for numpy
  dicts. What the task adds (vit_jax/tasks/): with `captions` (the split's,
  vit_jax/data/captions.py) each example's caption as 'tokens'; with `image_table` (float32
  [records, dim]: a locked image tower's embedding of every record of the split, in record order)
  the batches hold 'zimg' rows of it instead of 'image'."""
  _check_process_args(local_batch_size, process_index, process_count)
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}.')
  split = open_split(config, config.train_split, download=download)
  records = splits.decoded(split.records, config.input_cache_mib * 2**20)
  stream = TrainStream(config, records, captions, image_table)
  local = _LocalBatch(stream, local_batch_size * process_count, local_batch_size, process_index)
  return _parallel(config, grain.MapDataset.range(start_step, sys.maxsize).map(local))


class _EvalBatch:
  """Local batch b -> records process_index + k * process_count for k in [b*L, (b+1)*L), with
  padding (zeros, mask 0) past this process's last record."""

  def __init__(
    self, records, config, process_index: int, process_count: int, count: int, local_batch: int
  ):
    self.records = records
    self.process_index = process_index
    self.process_count = process_count
    self.count = count
    self.size = config.image_size
    self.fraction = config.pp.eval_crop_fraction
    self.mode = config.pp.eval_resize
    self.local_batch = local_batch

  def __call__(self, b: int) -> dict[str, np.ndarray]:
    ks = range(b * self.local_batch, min((b + 1) * self.local_batch, self.count))
    indices = [self.process_index + k * self.process_count for k in ks]
    records = splits.read_many(self.records, indices)
    images = np.zeros((self.local_batch, self.size, self.size, 3), np.uint8)
    labels = np.zeros(self.local_batch, np.int32)
    mask = np.zeros(self.local_batch, np.float32)
    index = np.full(self.local_batch, -1, np.int32)
    for j, record in enumerate(records):
      images[j] = preprocess.eval_image(
        record['image'], image_size=self.size, crop_fraction=self.fraction, resize_mode=self.mode
      )
      labels[j], mask[j], index[j] = record['label'], 1.0, indices[j]
    return {'image': images, 'label': labels, 'mask': mask, 'index': index}


def eval_dataset(
  config,
  *,
  local_batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
  download: bool = True,
) -> grain.IterDataset:
  """This process's part of config.eval_split, once, in order, padded (module doc)."""
  _check_process_args(local_batch_size, process_index, process_count)
  records = splits.decoded(
    open_split(config, config.eval_split, download=download).records, config.input_cache_mib * 2**20
  )
  counts = [len(range(p, len(records), process_count)) for p in range(process_count)]
  num_batches = -(-max(counts) // local_batch_size)
  batch = _EvalBatch(
    records, config, process_index, process_count, counts[process_index], local_batch_size
  )
  return _parallel(config, grain.MapDataset.range(num_batches).map(batch))


# --------------------------------------------------------------------------------------------------
# To devices.


def device_batches(
  config,
  mesh_sharding: jax.sharding.Sharding,
  *,
  train: bool,
  start_step: int = 0,
  captions: Captions | None = None,
  image_table=None,
) -> Iterator[dict[str, jax.Array]]:
  """The global batches of training (`train`: config.batch_size, endless, from step `start_step` on)
  or of config.eval_split (config.eval_batch_size, once, padded), on `mesh_sharding`: this process
  reads its share (module doc) and the next config.prefetch batches wait on device. The one way
  training and every evaluator get batches. `captions` and `image_table`: see `train_dataset`."""
  processes = jax.process_count()
  index = jax.process_index()
  if train:
    ds = train_dataset(
      config,
      local_batch_size=config.batch_size // processes,
      process_index=index,
      process_count=processes,
      start_step=start_step,
      captions=captions,
      image_table=image_table,
    )
  else:
    ds = eval_dataset(
      config,
      local_batch_size=config.eval_batch_size // processes,
      process_index=index,
      process_count=processes,
    )
  return prefetch_to_device(iter(ds), config.prefetch, mesh_sharding)


def make_global_batch(
  local_batch: dict[str, Any], sharding: jax.sharding.Sharding
) -> dict[str, jax.Array]:
  """Local numpy arrays [B_local, ...] of every process -> jax.Arrays [B_local * process_count, ...]
  on `sharding`."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def prefetch_to_device(
  iterator: Iterable[dict[str, Any]], size: int, sharding: jax.sharding.Sharding
) -> Iterator[dict[str, jax.Array]]:
  """Yields `make_global_batch` of each local batch; while one is in use, the next `size` are
  already on device."""
  queue = collections.deque()
  for local_batch in iterator:
    queue.append(make_global_batch(local_batch, sharding))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
