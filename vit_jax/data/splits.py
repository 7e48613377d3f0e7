"""What a data source gives: a `Split` (records {'image': encoded bytes, 'label': int} by index,
and its classes), the error for a dataset that cannot be used as it is, and two ways to read
records: `read_many` (a batched read where the source has one) and `decoded` (images decoded once
into memory). The sources themselves: vit_jax/data/sources.py (TFDS, and `open_split` for any
dataset) and vit_jax/data/image_folders.py.
"""

import concurrent.futures
import dataclasses
import logging
import os
from typing import Any, Sequence

import numpy as np

from vit_jax import errors
from vit_jax.data import preprocess

log = logging.getLogger(__name__)


class DataError(errors.UserError, ValueError):
  """A dataset that cannot be used as it is: an unknown name, a missing split or class, undecodable
  images."""


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
    self._images = images
    self._labels = labels
    self._texts = texts

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
