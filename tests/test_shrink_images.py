"""vit_jax/tools/shrink_images.py: a dataset re-encoded at a bounded shorter side trains like the
original."""

import io

import numpy as np
from PIL import Image
import tiny

from vit_jax.data import input_pipeline
from vit_jax.tools import shrink_images


def _jpeg(w, h, mode='RGB'):
  buffer = io.BytesIO()
  Image.fromarray(np.random.default_rng(w).integers(0, 255, (h, w, 3)).astype(np.uint8)).convert(
    mode
  ).save(buffer, format='JPEG', quality=95)
  return buffer.getvalue()


def test_large_images_shrink_small_jpegs_are_kept_and_bad_files_are_listed(tmp_path, capsys):
  src = tmp_path / 'src'
  for split in ('train', 'test'):
    (src / split / 'a').mkdir(parents=True)
    (src / split / 'a' / 'big.jpg').write_bytes(_jpeg(600, 400))
    (src / split / 'a' / 'small.jpg').write_bytes(_jpeg(120, 90))
    (src / split / 'a' / 'grey.jpeg').write_bytes(_jpeg(300, 500, 'L'))
    Image.fromarray(np.zeros((40, 30, 4), np.uint8)).save(src / split / 'a' / 'alpha.png')
  (src / 'train' / 'a' / 'broken.jpg').write_bytes(b'\xff\xd8 not really')
  dst = tmp_path / 'dst'
  assert shrink_images.main([f'--src={src}', f'--dst={dst}', '--max_side=100', '--threads=2']) == 1
  out = capsys.readouterr()
  assert (
    'left out train/a/broken' in out.err and '8 images to' in out.out and '1 left out' in out.out
  )
  sizes = {p.name: Image.open(p).size for p in (dst / 'train' / 'a').iterdir()}
  assert sizes == {
    'big.jpg': (150, 100),
    'small.jpg': (120, 90),
    'grey.jpg': (100, 167),
    'alpha.jpg': (30, 40),
  }
  assert (dst / 'train' / 'a' / 'small.jpg').read_bytes() == (
    src / 'train' / 'a' / 'small.jpg'
  ).read_bytes()
  assert all(Image.open(p).mode == 'RGB' for p in (dst / 'test' / 'a').iterdir())


def test_a_tfds_split_becomes_an_image_folder_with_its_class_names(tmp_path, capsys):
  data_dir = tiny.fake_tfds('cifar10', tmp_path / 'tfds', {'train': 6, 'test': 3})
  assert (
    shrink_images.main(
      [
        '--tfds=cifar10',
        f'--data_dir={data_dir}',
        '--splits=train,test',
        f'--dst={tmp_path / "dst"}',
      ]
    )
    == 0
  )
  assert '9 images to' in capsys.readouterr().out
  config = tiny.train_config(dataset='cifar10', tfds_data_dir=data_dir)
  names = input_pipeline.get_info(config).class_names
  # Labels 0, 1, ...
  assert sorted(p.name for p in (tmp_path / 'dst' / 'train').iterdir()) == sorted(names[:6])
