"""`imagenet21k`: ImageNet-21k from the official archives, as an ArrayRecord TFDS dataset (random
access).

Build (the archives come from image-net.org after registration; nothing is downloaded here):

  tfds build imagenet21k --imports=vit_jax.data.datasets --manual_dir=DIR
      --file_format=array_record [--data_dir=...]
  # or: tfds.builder('imagenet21k').download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=DIR))

`DIR` holds `fall11_whole.tar` (a tar of per-synset tars `nXXXXXXXX.tar`: ~14.2M images of 21,841
synsets) or `winter21_whole.tar.gz` (the same structure under `winter21_whole/`, gzipped: 19,167
synsets). The archives are streamed: nothing is unpacked to disk.

Configs (label spaces):
  goog     (default) Google's list of 21,843 synsets, in its (sorted) order, so that label ids are
           those of the released ImageNet-21k checkpoints' heads. It has two synsets that fall11
           lacks (n03931044, n09859684): their labels get no examples. The list is
           `imagenet21k_goog_synsets.txt` beside this file, copied unchanged from the `timm` wheel
           (timm 1.0.31, `timm/data/_info/imagenet21k_goog_synsets.txt`).
  present  the sorted synsets present in the archive (one extra pass over the archive to list them).

One split, `full`, in a deterministic pseudo-random order: TFDS orders the examples of a split by a
hash of their key, and the key is the image's path inside the archive
(`nXXXXXXXX/nXXXXXXXX_NNN.JPEG`). The held-out splits are big_vision's slices of it: `full[:25600]`
test, `full[25600:51200]` validation, `full[51200:]` train (`HELD_OUT` below; the recipe configs use
these).

Faulty files of the archive: CMYK and grayscale JPEGs, PNGs named .JPEG and any other image PIL
reads are re-encoded as RGB JPEG (quality 95), so every record is an RGB JPEG that decode-and-crop
reads; files that cannot be decoded at all are skipped, and their number and names are in the
dataset info's metadata (`skipped_count`, `skipped_files`).
"""

import concurrent.futures
import io
import os
import tarfile

from etils import epath
import tensorflow_datasets as tfds

SYNSETS_FILE = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), 'imagenet21k_goog_synsets.txt'
)
ARCHIVES = ('fall11_whole.tar', 'winter21_whole.tar.gz', 'winter21_whole.tar')
HELD_OUT = {'test': 'full[:25600]', 'validation': 'full[25600:51200]', 'train': 'full[51200:]'}
_IN_FLIGHT = 256  # Images checked in parallel while the archive streams on.


def goog_synsets() -> list[str]:
  with open(SYNSETS_FILE, encoding='utf-8') as f:
    return f.read().split()


def to_rgb_jpeg(data: bytes) -> bytes | None:
  """`data` unchanged if it is an RGB (3-component) JPEG that decodes; else re-encoded as an RGB
  JPEG; None when it cannot be decoded at all."""
  from PIL import Image  # noqa: PLC0415
  import simplejpeg  # noqa: PLC0415

  if data[:2] == b'\xff\xd8':
    try:
      _, _, colorspace, _ = simplejpeg.decode_jpeg_header(data)
      if colorspace in ('YCbCr', 'RGB'):
        # Fails on truncated or corrupt data.
        simplejpeg.decode_jpeg(data, fastdct=True, min_factor=8)
        return data
    except ValueError:
      pass
  try:
    with Image.open(io.BytesIO(data)) as image:
      rgb = image.convert('RGB')
    out = io.BytesIO()
    rgb.save(out, 'JPEG', quality=95)
    return out.getvalue()
  # (any decoding failure: the file is skipped and counted)
  except Exception:  # pylint: disable=broad-except
    return None


def _archive(manual_dir) -> epath.Path:
  manual_dir = epath.Path(manual_dir)
  for name in ARCHIVES:
    if (manual_dir / name).exists():
      return manual_dir / name
  raise AssertionError(
    f'No ImageNet-21k archive in {manual_dir}: expected one of {", ".join(ARCHIVES)} (download it '
    'from https://image-net.org after registering).'
  )


def _images(path: epath.Path):
  """(key 'synset/file', synset, bytes) of every image in the nested tars, streamed in archive
  order."""
  with path.open('rb') as f, tarfile.open(fileobj=f, mode='r|*') as outer:
    for member in outer:
      if not member.isfile() or not member.name.endswith('.tar'):
        continue
      synset = os.path.basename(member.name)[: -len('.tar')]
      with tarfile.open(fileobj=outer.extractfile(member), mode='r|*') as inner:
        for image in inner:
          if image.isfile():
            yield (
              f'{synset}/{os.path.basename(image.name)}',
              synset,
              inner.extractfile(image).read(),
            )


def _synsets_present(path: epath.Path) -> list[str]:
  with path.open('rb') as f, tarfile.open(fileobj=f, mode='r|*') as outer:
    return sorted(
      {
        os.path.basename(m.name)[: -len('.tar')]
        for m in outer
        if m.isfile() and m.name.endswith('.tar')
      }
    )


class Imagenet21k(tfds.core.GeneratorBasedBuilder):
  """ImageNet-21k (fall11 or winter21) from its official archives; one `full` split in a fixed
  shuffled order."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Register at https://image-net.org, download fall11_whole.tar (1.3 TB) or '
    'winter21_whole.tar.gz (1.1 TB) and put it in manual_dir.'
  )
  BUILDER_CONFIGS = [
    tfds.core.BuilderConfig(
      name='goog', description="Google's 21,843 synsets: the released checkpoints' labels."
    ),
    tfds.core.BuilderConfig(
      name='present', description='The sorted synsets present in the archive.'
    ),
  ]
  code_path = epath.Path(__file__)

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or tfds.core.FileFormat.ARRAY_RECORD, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    names = goog_synsets() if self.builder_config.name == 'goog' else None
    return self.dataset_info_from_configs(
      description='ImageNet-21k images with their WordNet synset labels.',
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(encoding_format='jpeg'),
          'label': tfds.features.ClassLabel(names=names) if names else tfds.features.ClassLabel(),
          'file_name': tfds.features.Text(),
        }
      ),
      supervised_keys=('image', 'label'),
      homepage='https://image-net.org/',
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    path = _archive(dl_manager.manual_dir)
    if self.builder_config.name == 'present':
      self.info.features['label'].names = _synsets_present(path)
    return {'full': self._generate_examples(path)}

  def _generate_examples(self, path):
    label_of = {name: i for i, name in enumerate(self.info.features['label'].names)}
    skipped = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
      pending = []

      def finished(item):
        key, synset, future = item
        data = future.result()
        if data is None:
          skipped.append(key)
          return None
        return key, {'image': io.BytesIO(data), 'label': label_of[synset], 'file_name': key}

      for key, synset, data in _images(path):
        if synset not in label_of:
          skipped.append(key)
          continue
        pending.append((key, synset, pool.submit(to_rgb_jpeg, data)))
        if len(pending) >= _IN_FLIGHT:
          example = finished(pending.pop(0))
          if example:
            yield example
      for item in pending:
        example = finished(item)
        if example:
          yield example
    self.info.metadata['skipped_count'] = len(skipped)
    self.info.metadata['skipped_files'] = sorted(skipped)[:1000]
