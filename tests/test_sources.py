"""vit_jax/data/sources.py: TFDS datasets (sliced splits; a TFRecord-only, an unprepared offline or
a manual-download dataset is one clear error) and image folders (vit_jax/data/image_folders.py:
train/eval, TFDS-style slices, folder errors, undecodable files named or skipped, a folder path
given as the dataset)."""

import logging
import os
import shutil

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds
import tiny

from vit_jax import errors
from vit_jax.configs import check
from vit_jax.data import input_pipeline, sources
from vit_jax.inference import trained as inference
from vit_jax.training import train

# --------------------------------------------------------------------------------------------------
# TFDS datasets (prepared for real from random examples).


@pytest.fixture(scope='module')
def cifar_dir(tmp_path_factory):
  return tiny.fake_tfds(
    'cifar10',
    tmp_path_factory.mktemp('cifar'),
    {'train': 30, 'test': 10},
    file_format='array_record',
  )


def test_tfds_dataset_with_sliced_splits(cifar_dir):
  config = tiny.data_config(dataset='cifar10', tfds_data_dir=cifar_dir, train_split='train[:50%]')
  info = input_pipeline.get_info(config)
  assert (info.num_classes, info.num_train, info.num_eval) == (10, 15, 10)
  # cifar10 names its labels while preparing from its download.
  assert info.class_names == tuple('0123456789')
  # Crosses an epoch end.
  batches = tiny.take(input_pipeline.train_dataset(config, local_batch_size=4), 5)
  assert all(b['image'].shape == (4, 16, 16, 3) for b in batches)
  eval_batches = list(input_pipeline.eval_dataset(config, local_batch_size=4))
  assert [b['mask'].sum() for b in eval_batches] == [4.0, 4.0, 2.0]


def test_a_tfrecord_dataset_is_refused_with_the_command_that_prepares_it(tmp_path):
  data_dir = tiny.fake_tfds('cifar10', tmp_path, {'train': 4, 'test': 4}, file_format='tfrecord')
  with pytest.raises(
    input_pipeline.DatasetNotPreparedError,
    match=rf'(?s)prepared as tfrecord.*tfds build cifar10 --data_dir={data_dir} '
    r'--file_format=array_record',
  ):
    input_pipeline.get_info(tiny.data_config(dataset='cifar10', tfds_data_dir=data_dir))


def test_offline_a_dataset_that_is_not_prepared_fails_at_once(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, '_reachable', lambda *a, **k: False)
  monkeypatch.setattr(
    tfds.core.DatasetBuilder,
    'download_and_prepare',
    lambda *a, **k: pytest.fail('must not try to download'),
  )
  with pytest.raises(input_pipeline.DatasetNotPreparedError) as error:
    input_pipeline.get_info(tiny.data_config(dataset='mnist', tfds_data_dir=str(tmp_path)))
  message = str(error.value)
  assert message.splitlines()[0] == (
    f"TFDS dataset 'mnist' is not prepared in data_dir={tmp_path} and the network is unreachable "
    'from here (no answer from storage.googleapis.com in 3 s).'
  )
  assert f'tfds build mnist --data_dir={tmp_path} --file_format=array_record' in message
  assert 'manual' not in message  # Advice about manual downloads only for datasets that need them.
  assert error.value.__cause__ is None


@pytest.mark.parametrize(
  'name,says',
  [
    (
      'cifar-10',
      "config.dataset='cifar-10' is not a TFDS name (lower-case letters, digits and '_', as in "
      "cifar10), 'image_folder', or an existing folder; did you mean 'cifar10'?",
    ),
    ('cifar_10', "config.dataset='cifar_10' is not a TFDS name; did you mean 'cifar10'?"),
    ('CIFAR100', "did you mean 'cifar100'?"),
    ('imagenet', "config.dataset='imagenet' is not a TFDS name; did you mean 'imagenet2012'?"),
    ('cifar10', "TFDS dataset 'cifar10' is not prepared"),  # Offline.
    ('cifar10_typo', "Unknown dataset 'cifar10_typo'"),
  ],
)
def test_a_refused_dataset_is_one_clear_error_and_leaves_no_workdir(
  name, says, tmp_path, monkeypatch, caplog
):
  monkeypatch.setattr(sources, '_reachable', lambda *a, **k: False)
  workdir = tmp_path / 'run'
  with pytest.raises(Exception) as error, caplog.at_level(logging.INFO):
    train.train_and_evaluate(
      tiny.train_config(dataset=name, tfds_data_dir=str(tmp_path / 'tfds')), str(workdir)
    )
  assert says in str(error.value)
  # TFDS's note about a version folder that does not exist.
  assert 'Variant folder' not in caplog.text
  assert errors.user_error(error.value) is not None  # One line on the command line, no traceback.
  assert not workdir.exists()  # Nothing written, not even the folder.


def test_manual_download_dataset_advice(tmp_path):
  # TFDS's own builder, in the child process that prepares it (build.py): its error comes back.
  manual = str(tmp_path / 'manual')
  config = tiny.data_config(
    dataset='imagenet2012', tfds_data_dir=str(tmp_path), tfds_manual_dir=manual
  )
  with pytest.raises(input_pipeline.DatasetNotPreparedError) as error:
    input_pipeline.eval_dataset(config, local_batch_size=2)
  message = str(error.value)
  assert f'AssertionError: Manual directory {manual} does not exist' in message
  assert f'--manual_dir={manual}' in message and 'ILSVRC2012_img_train.tar' in message
  with pytest.raises(input_pipeline.DatasetNotPreparedError, match='downloading is off'):
    input_pipeline.get_info(config, download=False)


# --------------------------------------------------------------------------------------------------
# Image folders.


def _write_images(folder, n, seed, size=(12, 10)):
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(n):
    kind = ('png', 'jpeg', 'gray')[i % 3]
    pixels = rng.integers(0, 256, size + ((3,) if kind != 'gray' else ()), dtype=np.uint8)
    Image.fromarray(pixels).save(os.path.join(folder, f'{i}.JPG' if kind == 'jpeg' else f'{i}.png'))
  with open(os.path.join(folder, 'notes.txt'), 'w') as f:  # Ignored.
    f.write('not an image')


@pytest.fixture
def image_folder(tmp_path):
  for label, name in enumerate(('ant', 'bee', 'cat')):
    _write_images(tmp_path / 'train' / name, 3 + label, seed=label)
    if name != 'bee':  # An eval split may lack classes.
      _write_images(tmp_path / 'test' / name, 2, seed=10 + label, size=(20, 7))
  return str(tmp_path)


def test_image_folder_train_and_eval(image_folder):
  config = tiny.data_config(dataset='image_folder', image_folder=image_folder)
  assert input_pipeline.get_info(config) == input_pipeline.DatasetInfo(
    num_classes=3, num_train=12, num_eval=4, class_names=('ant', 'bee', 'cat')
  )
  (batch,) = tiny.take(input_pipeline.train_dataset(config, local_batch_size=12), 1)  # One epoch.
  assert batch['image'].shape == (12, 16, 16, 3) and batch['image'].dtype == np.uint8
  assert sorted(batch['label'].tolist()) == [0] * 3 + [1] * 4 + [2] * 5
  (batch,) = list(input_pipeline.eval_dataset(config, local_batch_size=6))
  assert sorted(batch['label'][:4].tolist()) == [0, 0, 2, 2] and batch['mask'].tolist() == [
    1,
    1,
    1,
    1,
    0,
    0,
  ]
  parts = [
    next(
      iter(
        input_pipeline.eval_dataset(config, local_batch_size=2, process_index=i, process_count=2)
      )
    )
    for i in range(2)
  ]
  assert sorted(parts[0]['label'].tolist() + parts[1]['label'].tolist()) == [0, 0, 2, 2]


def test_image_folder_takes_tfds_style_slices(image_folder):
  """The fine-tuning presets' 'train[:98%]' works on folders: a fixed pseudo-random subset of the
  train folder."""
  config = tiny.data_config(
    dataset='image_folder',
    image_folder=image_folder,
    train_split='train[:50%]',
    eval_split='train[50%:]+test',
  )
  info = input_pipeline.get_info(config)
  assert (info.num_train, info.num_eval) == (6, 10)
  first = sources.open_split(config, 'train[:50%]').records
  rest = sources.open_split(config, 'train[50%:]').records
  paths = {first.path(i) for i in range(len(first))} | {rest.path(i) for i in range(len(rest))}
  assert len(paths) == 12  # The two halves partition the folder.
  # Not by class.
  assert len({os.path.basename(os.path.dirname(first.path(i))) for i in range(len(first))}) >= 2


def test_nested_images_count_in_training_evaluation_and_predict_alike(image_folder, caplog):
  # Real datasets are often nested (train/cat/2019/x.jpg); such files used to be left out of
  # training silently.
  _write_images(os.path.join(image_folder, 'train', 'cat', '2019', 'deep'), 2, seed=20)
  _write_images(os.path.join(image_folder, 'test', 'ant', 'more'), 1, seed=21)
  config = tiny.data_config(dataset='image_folder', image_folder=image_folder)
  with caplog.at_level(logging.INFO):
    info = input_pipeline.get_info(config)
  assert (info.num_train, info.num_eval) == (14, 5)
  assert 'train: 14 images in 3 classes (ant: 3, bee: 4, cat: 7)' in caplog.text
  train = sources.open_split(config, 'train').records
  paths = sorted(train.path(i) for i in range(len(train)))
  # predict's files: the same.
  assert paths == inference.expand_inputs([os.path.join(image_folder, 'train')])[0]
  assert sum('2019' in p for p in paths) == 2


def test_image_folder_errors(image_folder, tmp_path):
  config = tiny.data_config(dataset='image_folder', image_folder=image_folder)
  _write_images(os.path.join(image_folder, 'test', 'dog'), 1, seed=3)
  with pytest.raises(ValueError, match=r'lacks.*test/dog'):
    input_pipeline.get_info(config)
  os.makedirs(os.path.join(image_folder, 'train', 'dog'))
  with pytest.raises(ValueError, match=r'train/dog holds no'):
    input_pipeline.get_info(
      tiny.data_config(dataset='image_folder', image_folder=image_folder, train_split='train[:99%]')
    )
  shutil.rmtree(os.path.join(image_folder, 'train', 'dog'))
  shutil.rmtree(os.path.join(image_folder, 'test', 'dog'))
  with pytest.raises(
    ValueError, match=r"split 'val' is missing.*splits are subfolders of .*: test, train"
  ):
    input_pipeline.get_info(
      tiny.data_config(dataset='image_folder', image_folder=image_folder, eval_split='val')
    )
  with pytest.raises(ValueError, match='nowhere/train'):
    input_pipeline.train_dataset(
      tiny.data_config(dataset='image_folder', image_folder=str(tmp_path / 'nowhere')),
      local_batch_size=2,
    )


def test_skip_warning_for_bad_images_is_logged_once(image_folder, caplog):
  with open(os.path.join(image_folder, 'train', 'ant', 'broken.jpg'), 'wb') as f:
    f.write(b'\xff\xd8 not really a jpeg')
  config = tiny.data_config(dataset='image_folder', image_folder=image_folder, on_bad_image='skip')
  with caplog.at_level(logging.WARNING, logger='vit_jax'):
    assert input_pipeline.get_info(config).num_train == 12
    tiny.take(input_pipeline.train_dataset(config, local_batch_size=4), 1)
    input_pipeline.get_info(config)
  assert caplog.text.count('skipping 1 undecodable file(s)') == 1


def test_undecodable_image_is_an_error_naming_the_file_or_is_skipped_and_counted(tmp_path, caplog):
  root = tiny.image_folder(tmp_path)  # 3 classes x 4 train images.
  bad = os.path.join(root, 'train', 'dog', 'broken.jpg')
  with open(bad, 'wb') as f:
    f.write(b'\xff\xd8\xff\xe0 not really a jpeg')
  good = open(os.path.join(root, 'train', 'cat', '0.jpg'), 'rb').read()
  truncated = os.path.join(root, 'train', 'eel', 'truncated.jpg')
  with open(truncated, 'wb') as f:
    f.write(good[: len(good) // 3])
  config = tiny.folder_config(root)
  with pytest.raises(
    ValueError, match=r'2 file\(s\) that cannot be decoded.*broken.jpg.*truncated.jpg'
  ):
    input_pipeline.get_info(config)
  config.on_bad_image = 'skip'
  with caplog.at_level('WARNING'):
    info = input_pipeline.get_info(config)
  assert info.num_train == 12
  assert 'skipping 2 undecodable' in caplog.text and 'broken.jpg' in caplog.text
  batch = next(iter(input_pipeline.train_dataset(config, local_batch_size=12)))
  assert batch['image'].shape == (12, 16, 16, 3) and batch['image'].dtype == np.uint8
  with pytest.raises(
    check.ConfigError, match=r"config.on_bad_image='drop' is not one of 'error', 'skip'"
  ):
    check.validate(tiny.folder_config(root, on_bad_image='drop'))


def test_folder_path_as_dataset_trains_as_an_image_folder(tmp_path, caplog):
  folder = tiny.image_folder(tmp_path)
  config = tiny.train_config(dataset=folder, total_steps=2, eval_every_steps=2)
  with caplog.at_level('INFO', logger='vit_jax'):
    result = train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert result['eval/num_examples'] == 6
  assert 'is a directory: reading it as an image folder' in caplog.text


def test_every_image_extension_of_vit_jax_io_trains_bmp_included(tmp_path):
  from vit_jax.training import train  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for label, name in enumerate(('dark', 'light')):
      os.makedirs(tmp_path / 'f' / split / name)
      for i, ext in enumerate(('bmp', 'BMP', 'webp', 'gif')):
        pixels = (rng.uniform(0, 1, (10, 12, 3)) * 100 + 120 * label).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / 'f' / split / name / f'{i}.{ext}')
  config = tiny.train_config(
    dataset=str(tmp_path / 'f'),
    image_size=8,
    batch_size=8,
    eval_batch_size=8,
    total_steps=2,
    eval_every_steps=2,
    **{'pp.crop': 'resize', 'model.patches.size': (2, 2)},
  )
  assert input_pipeline.get_info(config).num_train == 8
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert result['eval/num_examples'] == 8
