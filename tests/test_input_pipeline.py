"""vit_jax.input_pipeline and the local sklearn_digits TFDS dataset."""
import os
import shutil

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn import datasets as sk_datasets

from vit_jax.configs import common
import tiny
from vit_jax import input_pipeline

DIGITS_TRAIN, DIGITS_TEST = 1437, 360


def _config(**overrides):
  config = common.get_config()
  config.image_size = 16
  config.shuffle_buffer = 4096
  return tiny.override(config, {k.replace('__', '.'): v for k, v in overrides.items()})


@pytest.fixture(scope='session')
def digits_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  tfds.builder('sklearn_digits', data_dir=data_dir).download_and_prepare()
  return data_dir


def _digits_config(data_dir, **overrides):
  return _config(dataset='sklearn_digits', tfds_data_dir=data_dir, **overrides)


def _identity_config(data_dir, **overrides):
  """Train images = the raw 8x8 digits (no crop, no flip, no resize), so examples can be recognised."""
  return _digits_config(data_dir, image_size=8, pp__crop='resize', pp__flip=False, **overrides)


def _raw(images):
  """float32 [-1, 1] RGB batch -> uint8 single channel, undoing to_float."""
  return np.round((images[..., 0] + 1.0) * 127.5).astype(np.uint8)


def _rows(images, labels):
  """Sorted (image bytes + label) rows: a multiset of examples, comparable with ==."""
  rows = np.concatenate([images.reshape(len(images), -1), np.asarray(labels).reshape(-1, 1)], axis=1)
  return rows[np.lexsort(rows.T[::-1])]


def _take(ds, n):
  it = ds.as_numpy_iterator()
  return [next(it) for _ in range(n)]


def _digits_split(data_dir, split):
  ds = tfds.builder('sklearn_digits', data_dir=data_dir).as_dataset(split=split, shuffle_files=False)
  examples = list(ds.as_numpy_iterator())
  return np.stack([e['image'][..., 0] for e in examples]), np.array([e['label'] for e in examples])


# ----------------------------------------------------------------------------------------------------------------
# sklearn_digits.


def test_digits_builds_with_the_documented_split(digits_dir, tmp_path):
  builder = tfds.builder('sklearn_digits', data_dir=digits_dir)
  assert str(builder.version) == '1.0.0'
  assert builder.info.splits['train'].num_examples == DIGITS_TRAIN
  assert builder.info.splits['test'].num_examples == DIGITS_TEST
  assert builder.info.features['label'].names == [str(d) for d in range(10)]
  assert builder.info.features['image'].shape == (8, 8, 1)

  digits = sk_datasets.load_digits()
  expected_images = np.round(digits.images * 255 / 16).astype(np.uint8)
  perm = np.random.default_rng(0).permutation(1797)
  for split, idx in (('train', perm[:DIGITS_TRAIN]), ('test', perm[DIGITS_TRAIN:])):
    images, labels = _digits_split(digits_dir, split)
    assert images.dtype == np.uint8 and images.max() == 255 and images.min() == 0
    np.testing.assert_array_equal(_rows(images, labels), _rows(expected_images[idx], digits.target[idx]))

  # A second build stores the same examples in the same order.
  other_dir = str(tmp_path / 'again')
  tfds.builder('sklearn_digits', data_dir=other_dir).download_and_prepare()
  for split in ('train', 'test'):
    for a, b in zip(_digits_split(digits_dir, split), _digits_split(other_dir, split)):
      np.testing.assert_array_equal(a, b)


def test_digits_is_built_on_first_use(tmp_path):
  info = input_pipeline.get_info(_digits_config(str(tmp_path), train_split='train[:98%]'))
  assert info == input_pipeline.DatasetInfo(num_classes=10, num_train=1408, num_eval=DIGITS_TEST,
                                            class_names=tuple('0123456789'))
  assert tfds.builder('sklearn_digits', data_dir=str(tmp_path)).is_prepared()


# ----------------------------------------------------------------------------------------------------------------
# Training stream.


def test_train_batches(digits_dir):
  config = _digits_config(digits_dir)
  batches = _take(input_pipeline.train_dataset(config, local_batch_size=8), 3)
  for b in batches:
    assert b['image'].shape == (8, 16, 16, 3) and b['image'].dtype == np.float32
    assert b['label'].shape == (8,) and b['label'].dtype == np.int32
    assert -1.0 <= b['image'].min() and b['image'].max() <= 1.0
    assert set(b['label']) <= set(range(10))
  images = np.stack([b['image'] for b in batches])
  assert images.min() == -1.0 and images.max() > 0.9  # Black background, bright strokes.
  # Grayscale repeated into RGB.
  np.testing.assert_array_equal(images[..., 0], images[..., 2])


def test_train_resume_matches_uninterrupted_stream(digits_dir):
  """Batch k after start_step=s equals batch s + k, also across epoch ends (200 / 32: in batches 6 and 12)."""
  config = _digits_config(digits_dir, train_split='train[:200]', pp__inception_min_area=0.3)
  full = _take(input_pipeline.train_dataset(config, local_batch_size=32), 15)
  for start in (2, 6, 7, 12, 13):
    resumed = _take(input_pipeline.train_dataset(config, local_batch_size=32, start_step=start), 2)
    for k, batch in enumerate(resumed):
      np.testing.assert_array_equal(batch['label'], full[start + k]['label'])
      np.testing.assert_array_equal(batch['image'], full[start + k]['image'])
  # Another seed gives another stream.
  config.seed = 1
  other = _take(input_pipeline.train_dataset(config, local_batch_size=32), 1)
  assert np.mean(other[0]['label'] != full[0]['label']) > 0.5


def test_train_epochs_are_permutations_reshuffled_each_epoch(digits_dir):
  config = _identity_config(digits_dir)
  (batch,) = _take(input_pipeline.train_dataset(config, local_batch_size=2 * DIGITS_TRAIN), 1)
  images, labels = _raw(batch['image']), batch['label']
  expected = _rows(*_digits_split(digits_dir, 'train'))
  epochs = [slice(0, DIGITS_TRAIN), slice(DIGITS_TRAIN, None)]
  for e in epochs:
    np.testing.assert_array_equal(_rows(images[e], labels[e]), expected)
  assert np.mean(labels[epochs[0]] != labels[epochs[1]]) > 0.5


def test_two_processes_read_disjoint_halves(digits_dir):
  config = _identity_config(digits_dir)
  counts = (719, 718)  # tfds.even_splits of 1437 in 2.
  parts = []
  for index, count in enumerate(counts):
    (batch,) = _take(input_pipeline.train_dataset(
        config, local_batch_size=count, process_index=index, process_count=2), 1)
    parts.append((_raw(batch['image']), batch['label']))
  union = _rows(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
  np.testing.assert_array_equal(union, _rows(*_digits_split(digits_dir, 'train')))
  # The same halves as the eval pipeline reads, in another order.
  for index, (images, labels) in enumerate(parts):
    batches = list(input_pipeline.eval_dataset(
        _identity_config(digits_dir, eval_split='train'), local_batch_size=1000,
        process_index=index, process_count=2).as_numpy_iterator())
    assert len(batches) == 1
    real = batches[0]['mask'] == 1
    np.testing.assert_array_equal(_rows(_raw(batches[0]['image'][real]), batches[0]['label'][real]),
                                  _rows(images, labels))


def _global_batches(config, batch_size, process_count, n, start_step=0):
  """The first n global batches: each process's local batches concatenated in process order."""
  parts = [_take(input_pipeline.train_dataset(config, local_batch_size=batch_size // process_count,
                                              process_index=p, process_count=process_count,
                                              start_step=start_step), n) for p in range(process_count)]
  return [{k: np.concatenate([part[i][k] for part in parts]) for k in ('image', 'label')} for i in range(n)]


def test_input_shards_make_global_batches_independent_of_process_count(digits_dir):
  # 202 / 4 shards = 51, 51, 50, 50 examples, 16 per shard and step: epochs end inside batches 3 and 6.
  config = _digits_config(digits_dir, train_split='train[:202]', input_shards=4, pp__inception_min_area=0.3)
  single = _global_batches(config, 16 * 4, 1, 8)
  for processes in (2, 4):
    for a, b in zip(single, _global_batches(config, 16 * 4, processes, 8)):
      np.testing.assert_array_equal(a['label'], b['label'])
      np.testing.assert_array_equal(a['image'], b['image'])
  for start in (3, 6):  # Resuming on another process count continues the same global stream.
    for k, b in enumerate(_global_batches(config, 16 * 4, 2, 2, start_step=start)):
      np.testing.assert_array_equal(b['label'], single[start + k]['label'])
      np.testing.assert_array_equal(b['image'], single[start + k]['image'])
  # Shard 2's part of the global batch is the stream of process 2 of 4 with the default one shard per process.
  config.input_shards = 0
  (shard,) = _take(input_pipeline.train_dataset(config, local_batch_size=16, process_index=2, process_count=4), 1)
  np.testing.assert_array_equal(shard['image'], single[0]['image'][32:48])


def test_input_shards_cover_the_split_once_per_epoch(digits_dir):
  config = _identity_config(digits_dir, train_split='train[:1436]', input_shards=4)  # 359 per shard.
  (batch,) = _take(input_pipeline.train_dataset(config, local_batch_size=1436), 1)
  np.testing.assert_array_equal(_rows(_raw(batch['image']), batch['label']),
                                _rows(*_digits_split(digits_dir, 'train[:1436]')))


def test_input_shards_equal_to_process_count_is_the_default(digits_dir):
  for index in range(2):
    default, fixed = (_take(input_pipeline.train_dataset(
        _digits_config(digits_dir, input_shards=k), local_batch_size=8, process_index=index, process_count=2), 2)
                      for k in (0, 2))
    for a, b in zip(default, fixed):
      np.testing.assert_array_equal(a['image'], b['image'])


def test_input_shards_of_image_folder(image_folder):
  config = _config(dataset='image_folder', image_folder=image_folder, input_shards=2)
  one, = _global_batches(config, 6, 1, 1)
  two, = _global_batches(config, 6, 2, 1)
  np.testing.assert_array_equal(one['image'], two['image'])
  np.testing.assert_array_equal(one['label'], two['label'])


def test_bad_input_shards_are_clear_errors(digits_dir):
  with pytest.raises(ValueError, match=r'config.input_shards=3 must be .* multiple of the process count 2'):
    input_pipeline.train_dataset(_digits_config(digits_dir, input_shards=3), local_batch_size=8, process_count=2)
  with pytest.raises(ValueError, match=r'config.input_shards=-2 must be'):
    input_pipeline.train_dataset(_digits_config(digits_dir, input_shards=-2), local_batch_size=8)
  with pytest.raises(ValueError, match=r'local batch size 6 does not split over the 4 input shards of each process '
                                       r'\(config.input_shards=8 over 2 processes\)'):
    input_pipeline.train_dataset(_digits_config(digits_dir, input_shards=8), local_batch_size=6, process_count=2)


# ----------------------------------------------------------------------------------------------------------------
# Evaluation.


def test_eval_pads_and_counts_each_example_once(digits_dir):
  config = _identity_config(digits_dir, eval_split='test[:101]')
  per_process = []
  for index in range(2):  # 51 + 50 examples, batches of 16: 4 batches each.
    batches = list(input_pipeline.eval_dataset(
        config, local_batch_size=16, process_index=index, process_count=2).as_numpy_iterator())
    assert len(batches) == 4
    for b in batches:
      assert b['image'].shape == (16, 8, 8, 3) and b['image'].dtype == np.float32
      assert b['label'].dtype == np.int32 and b['mask'].dtype == np.float32
    per_process.append({k: np.concatenate([b[k] for b in batches]) for k in ('image', 'label', 'mask')})
  assert [p['mask'].sum() for p in per_process] == [51.0, 50.0]
  for p in per_process:  # Real examples first, then zero padding.
    n = int(p['mask'].sum())
    assert np.all(p['mask'][:n] == 1) and np.all(p['mask'][n:] == 0)
    assert np.all(p['image'][n:] == 0) and np.all(p['label'][n:] == 0)
  real = [(_raw(p['image'][p['mask'] == 1]), p['label'][p['mask'] == 1]) for p in per_process]
  images, labels = _digits_split(digits_dir, 'test[:101]')
  np.testing.assert_array_equal(
      _rows(np.concatenate([r[0] for r in real]), np.concatenate([r[1] for r in real])), _rows(images, labels))


def test_eval_extra_padding_batches_when_processes_differ(digits_dir):
  # 5 examples over 4 processes: 2, 1, 1, 1 -> every process yields one batch of 2.
  config = _identity_config(digits_dir, eval_split='test[:5]')
  masks = [[b['mask'].tolist() for b in input_pipeline.eval_dataset(
      config, local_batch_size=2, process_index=i, process_count=4).as_numpy_iterator()] for i in range(4)]
  assert masks == [[[1.0, 1.0]], [[1.0, 0.0]], [[1.0, 0.0]], [[1.0, 0.0]]]
  # Batches of 1: process 0 needs 2 batches, so the others get an all-padding batch.
  masks = [[b['mask'].tolist() for b in input_pipeline.eval_dataset(
      config, local_batch_size=1, process_index=i, process_count=4).as_numpy_iterator()] for i in range(4)]
  assert masks == [[[1.0], [1.0]], [[1.0], [0.0]], [[1.0], [0.0]], [[1.0], [0.0]]]


def test_eval_central_crop(digits_dir):
  config = _digits_config(digits_dir, image_size=8, eval_split='test[:4]', pp__eval_crop_fraction=0.5)
  (batch,) = input_pipeline.eval_dataset(config, local_batch_size=4).as_numpy_iterator()
  images, _ = _digits_split(digits_dir, 'test[:4]')
  resized = tf.image.resize(images[..., None], [16, 16]).numpy()[:, 4:12, 4:12, 0]
  np.testing.assert_array_equal(_raw(batch['image']), np.round(resized).astype(np.uint8))


# ----------------------------------------------------------------------------------------------------------------
# tfds.testing.mock_data.


def test_mock_cifar10():
  config = _config(dataset='cifar10', train_split='train[:50%]')
  with tfds.testing.mock_data(num_examples=10):
    # Mocking ignores split slicing: every split (and every process part) yields all 10 examples.
    info = input_pipeline.get_info(config)
    assert info == input_pipeline.DatasetInfo(num_classes=10, num_train=10, num_eval=10, class_names=tuple('0123456789'))
    batches = _take(input_pipeline.train_dataset(config, local_batch_size=4), 4)  # Crosses an epoch end.
    assert all(b['image'].shape == (4, 16, 16, 3) and b['label'].shape == (4,) for b in batches)
    images = np.stack([b['image'] for b in batches])
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.std() > 0.1
    eval_batches = list(input_pipeline.eval_dataset(config, local_batch_size=4).as_numpy_iterator())
    assert len(eval_batches) == 3
    assert [b['mask'].sum() for b in eval_batches] == [4.0, 4.0, 2.0]
    assert eval_batches[0]['image'].shape == (4, 16, 16, 3)


# ----------------------------------------------------------------------------------------------------------------
# Image folders.


def _write_images(folder, n, seed, size=(12, 10)):
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(n):
    kind = ('png', 'jpeg', 'gray')[i % 3]
    pixels = rng.integers(0, 256, (*size, 1 if kind == 'gray' else 3), dtype=np.uint8)
    if kind == 'jpeg':
      data, name = tf.io.encode_jpeg(pixels).numpy(), f'{i}.JPG'
    else:
      data, name = tf.io.encode_png(pixels).numpy(), f'{i}.png'
    with open(os.path.join(folder, name), 'wb') as f:
      f.write(data)
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
  config = _config(dataset='image_folder', image_folder=image_folder)
  assert input_pipeline.get_info(config) == input_pipeline.DatasetInfo(num_classes=3, num_train=12, num_eval=4,
                                                                                   class_names=('ant', 'bee', 'cat'))
  (batch,) = _take(input_pipeline.train_dataset(config, local_batch_size=12), 1)  # One epoch.
  assert batch['image'].shape == (12, 16, 16, 3)
  assert -1.0 <= batch['image'].min() and batch['image'].max() <= 1.0
  assert sorted(batch['label'].tolist()) == [0] * 3 + [1] * 4 + [2] * 5
  (batch,) = input_pipeline.eval_dataset(config, local_batch_size=6).as_numpy_iterator()
  assert batch['label'].tolist() == [0, 0, 2, 2, 0, 0]
  assert batch['mask'].tolist() == [1, 1, 1, 1, 0, 0]
  # Two processes take alternate files.
  parts = [next(input_pipeline.eval_dataset(config, local_batch_size=2, process_index=i,
                                            process_count=2).as_numpy_iterator()) for i in range(2)]
  assert [p['label'].tolist() for p in parts] == [[0, 2], [0, 2]]
  assert not np.array_equal(parts[0]['image'], parts[1]['image'])


def test_image_folder_errors(image_folder, tmp_path):
  config = _config(dataset='image_folder', image_folder=image_folder)
  _write_images(os.path.join(image_folder, 'test', 'dog'), 1, seed=3)
  with pytest.raises(ValueError, match=r'lacks.*test/dog'):
    input_pipeline.get_info(config)
  os.makedirs(os.path.join(image_folder, 'train', 'dog'))
  with pytest.raises(ValueError, match=r'train/dog holds no'):
    input_pipeline.get_info(config)
  shutil.rmtree(os.path.join(image_folder, 'train', 'dog'))
  shutil.rmtree(os.path.join(image_folder, 'test', 'dog'))
  assert input_pipeline.get_info(config).num_eval == 4
  with pytest.raises(ValueError, match=r'missing.*val'):
    input_pipeline.get_info(_config(dataset='image_folder', image_folder=image_folder, eval_split='val'))
  with pytest.raises(ValueError, match='nowhere/train'):
    input_pipeline.train_dataset(_config(dataset='image_folder', image_folder=str(tmp_path / 'nowhere')),
                                 local_batch_size=2)


# ----------------------------------------------------------------------------------------------------------------
# Errors for TFDS datasets and arguments.


def test_not_prepared_without_download(tmp_path):
  config = _config(dataset='mnist', tfds_data_dir=str(tmp_path))
  with pytest.raises(input_pipeline.DatasetNotPreparedError, match=f'tfds build mnist --data_dir={tmp_path}'):
    input_pipeline.get_info(config, download=False)
  with pytest.raises(input_pipeline.DatasetNotPreparedError):
    input_pipeline.train_dataset(config, local_batch_size=2, download=False)


def test_not_prepared_when_download_fails(tmp_path, monkeypatch):
  calls = []

  def failing_download(self, **kwargs):
    calls.append((self.name, kwargs['download_config'].manual_dir))
    raise ConnectionError('no network')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', failing_download)
  manual = str(tmp_path / 'manual')
  config = _config(dataset='imagenet2012', tfds_data_dir=str(tmp_path), tfds_manual_dir=manual)
  with pytest.raises(input_pipeline.DatasetNotPreparedError) as error:
    input_pipeline.eval_dataset(config, local_batch_size=2)
  assert calls == [('imagenet2012', manual)]
  assert isinstance(error.value.__cause__, ConnectionError)
  message = str(error.value)
  assert 'ConnectionError: no network' in message
  assert f'tfds build imagenet2012 --data_dir={tmp_path}' in message
  assert f'manual_dir={manual}' in message and 'ILSVRC2012_img_train.tar' in message


def test_unknown_dataset_and_bad_arguments(digits_dir):
  with pytest.raises(ValueError, match="Unknown dataset 'no_such_dataset'"):
    input_pipeline.get_info(_config(dataset='no_such_dataset'))
  with pytest.raises(ValueError, match='config.dataset is empty'):
    input_pipeline.get_info(_config())
  config = _digits_config(digits_dir)
  for bad in (0, -4):
    with pytest.raises(ValueError, match='local_batch_size must be positive'):
      input_pipeline.train_dataset(config, local_batch_size=bad)
    with pytest.raises(ValueError, match='local_batch_size must be positive'):
      input_pipeline.eval_dataset(config, local_batch_size=bad)
  with pytest.raises(ValueError, match='process_index'):
    input_pipeline.train_dataset(config, local_batch_size=2, process_index=2, process_count=2)
  with pytest.raises(ValueError, match='start_step'):
    input_pipeline.train_dataset(config, local_batch_size=2, start_step=-1)
  with pytest.raises(ValueError, match='pp.crop'):
    input_pipeline.train_dataset(_digits_config(digits_dir, pp__crop='random'), local_batch_size=2)


# ----------------------------------------------------------------------------------------------------------------
# To devices.


def _data_sharding():
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))


def test_make_global_batch_shards_over_data():
  assert jax.device_count() == 8
  sharding = _data_sharding()
  local = {'image': np.arange(16 * 2 * 2 * 3, dtype=np.float32).reshape(16, 2, 2, 3),
           'label': np.arange(16, dtype=np.int32)}
  batch = input_pipeline.make_global_batch(local, sharding)
  assert batch['image'].shape == (16 * jax.process_count(), 2, 2, 3)
  assert batch['label'].dtype == np.int32
  for name, array in batch.items():
    assert isinstance(array, jax.Array) and array.sharding == sharding
    assert len(array.addressable_shards) == 8
    for shard in array.addressable_shards:
      assert shard.data.shape[0] == 2
      np.testing.assert_array_equal(np.asarray(shard.data), local[name][shard.index])
    np.testing.assert_array_equal(np.asarray(array), local[name])


def test_prefetch_to_device(digits_dir):
  sharding = _data_sharding()
  local = [{'label': np.full((8,), i, np.int32)} for i in range(5)]
  pulled = []

  def source():
    for b in local:
      pulled.append(int(b['label'][0]))
      yield b

  stream = input_pipeline.prefetch_to_device(source(), 2, sharding)
  first = next(stream)
  assert pulled == [0, 1, 2]  # Two batches ahead of the one handed out.
  rest = list(stream)
  assert [int(b['label'][0]) for b in [first] + rest] == [0, 1, 2, 3, 4]
  assert all(b['label'].sharding == sharding for b in rest)
  # From a tf.data pipeline.
  ds = input_pipeline.eval_dataset(_identity_config(digits_dir, eval_split='test[:20]'), local_batch_size=8)
  batches = list(input_pipeline.prefetch_to_device(ds.as_numpy_iterator(), 2, sharding))
  assert [b['image'].shape for b in batches] == [(8, 8, 8, 3)] * 3
  assert sum(float(b['mask'].sum()) for b in batches) == 20.0
