"""`sklearn_digits`: the 1,797 8x8 handwritten digits bundled with scikit-learn, as a local TFDS
dataset.

Nothing is downloaded: the examples come from `sklearn.datasets.load_digits()`, which ships with
scikit-learn.

* image: (8, 8, 1) uint8, the original 0..16 intensities scaled to 0..255 as `round(v * 255 / 16)`
  (NumPy rounding, half to even: 8 -> 128).
* label: ClassLabel with names '0'..'9'.
* Split (fixed, identical on every build): `perm = numpy.random.default_rng(0).permutation(1797)`;
  train = the examples `perm[:1437]`, test = `perm[1437:]` (1,437 / 360, an 80/20 split).

Build it with `tfds.builder('sklearn_digits',
data_dir=...).download_and_prepare(file_format='array_record')` (`vit_jax.data.sources` does this by
itself when the dataset is not prepared yet).
"""

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

NUM_EXAMPLES = 1797
NUM_TRAIN = 1437
SPLIT_SEED = 0


def split_indices() -> dict[str, np.ndarray]:
  """Indices into `load_digits()` of each split: a seeded permutation, cut at NUM_TRAIN."""
  perm = np.random.default_rng(SPLIT_SEED).permutation(NUM_EXAMPLES)
  return {'train': perm[:NUM_TRAIN], 'test': perm[NUM_TRAIN:]}


def to_uint8(images: np.ndarray) -> np.ndarray:
  """0..16 digit intensities [N, 8, 8] -> uint8 0..255 [N, 8, 8, 1]."""
  return np.round(images * 255.0 / 16.0).astype(np.uint8)[..., None]


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 handwritten digits, with a fixed seeded train/test split."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
    '1.0.0': 'Initial release: 1,437 train / 360 test, split by default_rng(0).',
    '1.1.0': 'The same examples, built as ArrayRecord for random access.',
  }
  # TFDS 4.9.x works out a builder's source file through `importlib_resources`, which it only
  # declares as a dependency for Python < 3.9, so `download_and_prepare` fails on 3.11 without it.
  # Naming the file skips that.
  code_path = epath.Path(__file__)

  def __init__(self, *, file_format=None, **kwargs):
    # ArrayRecord by default: the input pipeline reads records by index.
    super().__init__(file_format=file_format or tfds.core.FileFormat.ARRAY_RECORD, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description='UCI ML hand-written digits as bundled with '
      'scikit-learn (load_digits), 8x8 grayscale.',
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(8, 8, 1)),
          'label': tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
        }
      ),
      supervised_keys=('image', 'label'),
      homepage='https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html',
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {name: self._generate_examples(indices) for name, indices in split_indices().items()}

  def _generate_examples(self, indices):
    # (only needed while building)
    from sklearn import datasets  # noqa: PLC0415

    digits = datasets.load_digits()
    images = to_uint8(digits.images)
    labels = digits.target
    for i in indices:
      yield int(i), {'image': images[i], 'label': int(labels[i])}
