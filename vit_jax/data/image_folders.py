"""Image-folder sources: 'image_folder' (config.image_folder) or a `config.dataset` that is itself a
directory, read as records {'image': encoded bytes, 'label': int} by index (vit_jax/data/splits.py).

`<root>/<split>/<class>/<image>` (an image is a file with one of vit_jax.io.IMAGE_EXTENSIONS, in
the class folder or any folder below it: `vit_jax.io.image_files`); classes are the sorted
subfolders of the train split's folder. A split may be sliced like a TFDS split ('train[:98%]',
'train[100:200]', 'train+test'): the files of a split folder are in a fixed pseudo-random order
(by a hash of their path relative to the folder) before slicing, so a slice is a random subset
that is the same on every machine. Every file of a split is decoded once (in parallel threads)
when the split is first opened: undecodable ones are an error that names them, or with
`config.on_bad_image='skip'` are left out (logged once).
"""

import concurrent.futures
import functools
import hashlib
import logging
import os
import types

from vit_jax import io

# (what config.on_bad_image takes)
from vit_jax.configs.choices import BAD_IMAGE_POLICIES  # noqa: F401
from vit_jax.configs.dataset_names import IMAGE_FOLDER
from vit_jax.data import preprocess
from vit_jax.data.splits import DataError, Split

log = logging.getLogger(__name__)


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
  files = []
  counts = {}
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
  listed = bad[:10]
  more = f' and {len(bad) - 10} more' if len(bad) > 10 else ''
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


def folder_split(config, root: str, split: str) -> Split:
  """The records of `split` of the image folder `root` (see module doc)."""
  import tensorflow_datasets as tfds  # noqa: PLC0415  (heavy: only its split-slicing grammar)

  if config.dataset != IMAGE_FOLDER:
    _log_folder_once(config.dataset)
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


@functools.cache
def _log_folder_once(path: str) -> None:
  log.info('config.dataset %r is a directory: reading it as an image folder.', path)
