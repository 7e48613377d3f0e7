"""The ImageNet-21k TFDS builder on a small generated archive of the official structure (nested
tars)."""

import io
import tarfile

import numpy as np
from PIL import Image
import pytest
import simplejpeg
import tensorflow_datasets as tfds

from vit_jax.configs import common
from vit_jax.data import sources
from vit_jax.data.datasets import imagenet21k

SYNSETS = imagenet21k.goog_synsets()
CHOSEN = (SYNSETS[5], SYNSETS[1], SYNSETS[12000])  # Archive order differs from the label order.


def _image(mode, fmt='JPEG', seed=0):
  rng = np.random.default_rng(seed)
  rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
  out = io.BytesIO()
  rgb.convert(mode).save(out, fmt)
  return out.getvalue()


def _archive(path, gz=False):
  """Per-synset tars inside one tar: 3 good JPEGs each, plus a CMYK JPEG, a PNG named .JPEG, a
  grayscale JPEG and a corrupt file in the first synset."""

  def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))

  with tarfile.open(path, 'w:gz' if gz else 'w') as outer:
    for s, synset in enumerate(CHOSEN):
      inner_bytes = io.BytesIO()
      with tarfile.open(fileobj=inner_bytes, mode='w') as inner:
        for i in range(3):
          add(inner, f'{synset}_{i}.JPEG', _image('RGB', seed=10 * s + i))
        if s == 0:
          add(inner, f'{synset}_cmyk.JPEG', _image('CMYK'))
          add(inner, f'{synset}_png.JPEG', _image('RGB', 'PNG'))
          add(inner, f'{synset}_gray.JPEG', _image('L'))
          add(inner, f'{synset}_corrupt.JPEG', b'\xff\xd8\xff\xe0 this is not an image')
      add(outer, f'{"winter21_whole/" if gz else ""}{synset}.tar', inner_bytes.getvalue())
  return path


def _build(tmp_path, config='goog', gz=False, name='data'):
  manual = tmp_path / f'manual_{name}'
  manual.mkdir()
  _archive(manual / ('winter21_whole.tar.gz' if gz else 'fall11_whole.tar'), gz=gz)
  builder = tfds.builder(f'imagenet21k/{config}', data_dir=str(tmp_path / name))
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
  return builder


def _records(builder, split='full'):
  config = common.get_config()
  config.dataset, config.tfds_data_dir = (
    f'imagenet21k/{builder.builder_config.name}',
    str(builder.data_dir_root),
  )
  return sources.open_split(config, split).records


def test_counts_labels_in_googles_order_and_faulty_files(tmp_path):
  builder = _build(tmp_path)
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  assert (
    builder.info.features['label'].num_classes == 21_843
    and 'n03931044' in builder.info.features['label'].names
  )
  assert builder.info.splits['full'].num_examples == 9 + 3  # The corrupt file is skipped...
  assert builder.info.metadata['skipped_count'] == 1  # ... and counted, by name.
  assert builder.info.metadata['skipped_files'] == [f'{CHOSEN[0]}/{CHOSEN[0]}_corrupt.JPEG']
  records = _records(builder)
  labels = sorted(records[i]['label'] for i in range(len(records)))
  assert labels == sorted(
    [SYNSETS.index(CHOSEN[0])] * 6 + [SYNSETS.index(CHOSEN[1])] * 3 + [SYNSETS.index(CHOSEN[2])] * 3
  )
  stored = {records[i]['image'] for i in range(len(records))}
  assert _image('RGB', seed=10) in stored  # Good JPEGs are stored byte for byte (no re-encoding).
  for i in range(len(records)):  # Every record is an RGB JPEG that the fast decoder reads.
    data = records[i]['image']
    assert simplejpeg.decode_jpeg_header(data)[2] == 'YCbCr'
    assert simplejpeg.decode_jpeg(data).shape == (24, 32, 3)


def test_held_out_slices_partition_a_fixed_shuffled_order(tmp_path):
  a, b = _build(tmp_path, name='a'), _build(tmp_path, name='b')
  names = lambda builder, split: [r['file_name'] for r in builder.as_data_source(split=split)]
  assert names(a, 'full') == names(b, 'full')  # Deterministic.
  full = names(a, 'full')
  assert full != sorted(full)  # Shuffled, not in archive order.
  parts = names(a, 'full[:2]') + names(a, 'full[2:4]') + names(a, 'full[4:]')
  assert parts == full and len(set(full)) == 12
  assert imagenet21k.HELD_OUT == {
    'test': 'full[:25600]',
    'validation': 'full[25600:51200]',
    'train': 'full[51200:]',
  }


def test_present_config_and_winter21_gz_archive(tmp_path):
  builder = _build(tmp_path, config='present', gz=True)
  assert builder.info.features['label'].names == sorted(CHOSEN)
  assert builder.info.splits['full'].num_examples == 12


def test_missing_archive_is_a_clear_error(tmp_path):
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'notes.txt').write_text('no archive here')
  builder = tfds.builder('imagenet21k', data_dir=str(tmp_path / 'data'))
  with pytest.raises(
    AssertionError, match='No ImageNet-21k archive in .*fall11_whole.tar, winter21_whole.tar.gz'
  ):
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'empty'))
    )
