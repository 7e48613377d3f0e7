"""The names `config.dataset` takes, checked without TFDS: a TFDS name's form, `image_folder`, a
folder; and the name a near miss means ('cifar-10', 'CIFAR10', 'imagenet' -> cifar10, imagenet2012).
vit_jax/data/sources.py reads them."""

import os
import re

IMAGE_FOLDER = 'image_folder'
LOCAL_TFDS_DATASETS = ('sklearn_digits',)  # Built from local data, never downloaded.
# TFDS names people mean when they write them otherwise ('cifar-10', 'CIFAR10', 'imagenet'):
# suggested for near misses.
COMMON_DATASETS = (
  'cifar10',
  'cifar100',
  'imagenet2012',
  'imagenet21k',
  'imagenet_v2',
  'imagenet_a',
  'imagenet_r',
  'imagenet_sketch',
  'oxford_iiit_pet',
  'oxford_flowers102',
  'caltech101',
  'caltech_birds2011',
  'cars196',
  'dtd',
  'eurosat',
  'resisc45',
  'sun397',
  'svhn_cropped',
  'mnist',
  'fashion_mnist',
  'food101',
  'stanford_dogs',
  'places365_small',
  'patch_camelyon',
  'smallnorb',
  'dsprites',
  'clevr',
  'kitti',
  'diabetic_retinopathy_detection',
  'uc_merced',
  'coco_captions',
  *LOCAL_TFDS_DATASETS,
)
_ALIASES = {
  'imagenet': 'imagenet2012',
  'imagenet1k': 'imagenet2012',
  'in1k': 'imagenet2012',
  'in21k': 'imagenet21k',
  'pets': 'oxford_iiit_pet',
  'flowers': 'oxford_flowers102',
  'svhn': 'svhn_cropped',
  'cub': 'caltech_birds2011',
  'digits': 'sklearn_digits',
}
# A TFDS name: dataset[/config][:version], the dataset part in lower-case snake case.
_TFDS_NAME = re.compile(r'[a-z][a-z0-9_]*(/[A-Za-z0-9_.+-]+)?(:[0-9.*]+)?')


def _squashed(name: str) -> str:
  return re.sub(r'[^a-z0-9]', '', name.lower())


def suggest_dataset(name: str, known=COMMON_DATASETS) -> str | None:
  """The dataset a near miss of `name` means (case, '-', '_' or a known alias apart), from `known`;
  else None."""
  base = name.split(':')[0].split('/')[0]
  squashed = _squashed(base)
  if squashed in _ALIASES:
    return _ALIASES[squashed]
  return next((k for k in known if _squashed(k) == squashed and k != base), None)


def dataset_name_problem(name: str) -> str | None:
  """Why `config.dataset` cannot be a TFDS name (it is none of image_folder or a folder), with the
  name it likely means; None when it has a TFDS name's form. Needs no TFDS: a name of the right form
  is looked up when it is read."""
  if name == IMAGE_FOLDER or name in COMMON_DATASETS or os.path.isdir(name):
    return None
  if _TFDS_NAME.fullmatch(name):
    guess = suggest_dataset(name)
    return f'config.dataset={name!r} is not a TFDS name; did you mean {guess!r}?' if guess else None
  guess = suggest_dataset(name)
  return (
    f"config.dataset={name!r} is not a TFDS name (lower-case letters, digits and '_', as in "
    f'cifar10), {IMAGE_FOLDER!r}, or an existing folder'
    + (f'; did you mean {guess!r}?' if guess else '.')
  )
