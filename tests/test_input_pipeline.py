"""vit_jax.data.input_pipeline: the index-based training stream (global shuffle, O(1) exact resume,
the same global batches for any process count), exact padded evaluation, batches to devices; the
local sklearn_digits dataset. The sources it reads (TFDS datasets, image folders) are
tests/test_sources.py's."""

import io

import jax
import numpy as np
from PIL import Image
import pytest
from sklearn import datasets as sk_datasets
import tensorflow_datasets as tfds
import tiny

from vit_jax.data import input_pipeline, sources, splits
from vit_jax.inference import trained as inference

DIGITS_TRAIN, DIGITS_TEST = 1437, 360


def _digits_config(data_dir, **overrides):
  return tiny.data_config(dataset='sklearn_digits', tfds_data_dir=data_dir, **overrides)


def _identity_config(data_dir, **overrides):
  """Train images = the raw 8x8 digits (no crop, no flip, no resize), so examples can be
  recognised."""
  return _digits_config(data_dir, image_size=8, pp__crop='resize', pp__flip=False, **overrides)


def _rows(images, labels):
  """Sorted (image bytes + label) rows: a multiset of examples, comparable with ==."""
  images = np.asarray(images)
  rows = np.concatenate(
    [images.reshape(len(images), -1), np.asarray(labels).reshape(-1, 1)], axis=1
  )
  return rows[np.lexsort(rows.T[::-1])]


def _digits_split(data_dir, split):
  """(uint8 [N, 8, 8], labels) of a split, decoded independently of the pipeline."""
  records = sources.open_split(_digits_config(data_dir), split).records
  images = [np.asarray(Image.open(io.BytesIO(records[i]['image']))) for i in range(len(records))]
  return np.stack(images), np.array([records[i]['label'] for i in range(len(records))])


def _stream(config, steps, batch=8, process_count=1, start=0):
  """The global batches [start, start + steps) assembled from `process_count` processes."""
  parts = [
    tiny.take(
      input_pipeline.train_dataset(
        config,
        local_batch_size=batch // process_count,
        process_index=p,
        process_count=process_count,
        start_step=start,
      ),
      steps,
    )
    for p in range(process_count)
  ]
  return [
    {k: np.concatenate([parts[p][i][k] for p in range(process_count)]) for k in ('image', 'label')}
    for i in range(steps)
  ]


# --------------------------------------------------------------------------------------------------
# sklearn_digits.


def test_digits_builds_with_the_documented_split(digits_dir, tmp_path):
  builder = tfds.builder('sklearn_digits', data_dir=digits_dir)
  assert (
    str(builder.version) == '1.1.0'
    and builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  )
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
    np.testing.assert_array_equal(
      _rows(images, labels), _rows(expected_images[idx], digits.target[idx])
    )
  # A second build stores the same examples in the same order.
  other_dir = str(tmp_path / 'again')
  tfds.builder('sklearn_digits', data_dir=other_dir).download_and_prepare(
    file_format='array_record'
  )
  for a, b in zip(_digits_split(digits_dir, 'test'), _digits_split(other_dir, 'test')):
    np.testing.assert_array_equal(a, b)


def test_digits_is_built_on_first_use(tmp_path):
  info = input_pipeline.get_info(_digits_config(str(tmp_path), train_split='train[:98%]'))
  assert info == input_pipeline.DatasetInfo(
    num_classes=10, num_train=1408, num_eval=DIGITS_TEST, class_names=tuple('0123456789')
  )
  assert tfds.builder('sklearn_digits', data_dir=str(tmp_path)).is_prepared()


# --------------------------------------------------------------------------------------------------
# Training stream.


def test_train_batches_are_uint8_with_labels(digits_dir):
  (batch,) = tiny.take(
    input_pipeline.train_dataset(_digits_config(digits_dir), local_batch_size=8), 1
  )
  assert batch['image'].shape == (8, 16, 16, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (8,) and batch['label'].dtype == np.int32
  assert batch['image'].std() > 10


def test_every_position_of_an_epoch_is_visited_once_and_epochs_differ(digits_dir):
  config = _identity_config(digits_dir, train_split='train[:40]')
  batches = _stream(config, 10)  # Two epochs of 40.
  images, labels = _digits_split(digits_dir, 'train[:40]')
  as_rgb = np.repeat(images[..., None], 3, axis=-1)
  for epoch in (batches[:5], batches[5:]):
    got = np.concatenate([b['image'] for b in epoch]), np.concatenate([b['label'] for b in epoch])
    np.testing.assert_array_equal(_rows(*got), _rows(as_rgb, labels))  # A permutation of the split.
  first = np.concatenate([b['label'] for b in batches[:5]])
  second = np.concatenate([b['label'] for b in batches[5:]])
  assert not np.array_equal(first, second)  # Reshuffled.
  assert not np.array_equal(first, labels)  # Shuffled at all.


# In the first epoch, at an epoch boundary, deep in a later epoch.
@pytest.mark.parametrize('start', [2, 5, 23])
def test_resume_at_step_s_equals_the_uninterrupted_stream(digits_dir, start):
  config = _digits_config(
    digits_dir, train_split='train[:40]', pp__randaugment_layers=2, pp__randaugment_magnitude=15.0
  )  # Crop, flip and RandAugment draws too.
  whole = _stream(config, start + 3)
  resumed = _stream(config, 3, start=start)
  for k in range(3):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(resumed[k][key], whole[start + k][key])


@pytest.mark.parametrize('processes', [2, 4])
def test_global_batches_are_the_same_for_any_process_count(digits_dir, processes):
  config = _digits_config(digits_dir, train_split='train[:40]')
  one = _stream(config, 7)
  many = _stream(config, 7, process_count=processes)
  for a, b in zip(one, many):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_stream_is_a_function_of_the_seed(digits_dir):
  config = _digits_config(digits_dir, train_split='train[:40]')
  a, b = _stream(config, 2), _stream(config, 2)
  c = _stream(_digits_config(digits_dir, train_split='train[:40]', seed=1), 2)
  np.testing.assert_array_equal(a[1]['image'], b[1]['image'])
  assert not np.array_equal(a[1]['image'], c[1]['image'])


class _CountingRecords:
  def __init__(self, records):
    self.records, self.reads = records, 0

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    self.reads += 1
    return self.records[i]


def test_resuming_far_into_training_reads_only_the_batch_it_returns(digits_dir, monkeypatch):
  records = _CountingRecords(sources.open_split(_digits_config(digits_dir), 'train').records)
  monkeypatch.setattr(
    input_pipeline, 'open_split', lambda *a, **k: splits.Split(records, 10, tuple('0123456789'))
  )
  # Read per batch, not decoded ahead.
  config = _digits_config(digits_dir, input_threads=1, input_cache_mib=0)
  # Epoch ~5.6 million.
  it = iter(input_pipeline.train_dataset(config, local_batch_size=8, start_step=10**9))
  next(it)
  # The batch, plus what the reader prefetched: nothing before the start.
  assert records.reads <= 8 + 64


def test_multiprocess_workers_give_the_same_batches(digits_dir):
  config = _digits_config(digits_dir, train_split='train[:40]')
  threads = tiny.take(input_pipeline.train_dataset(config, local_batch_size=8, start_step=3), 3)
  workers = input_pipeline.train_dataset(
    _digits_config(digits_dir, train_split='train[:40]', input_processes=2),
    local_batch_size=8,
    start_step=3,
  )
  it = iter(workers)
  for expected in threads:
    np.testing.assert_array_equal(next(it)['image'], expected['image'])
  it.close()


# --------------------------------------------------------------------------------------------------
# Evaluation.


def test_eval_pads_and_counts_each_example_once(digits_dir):
  config = _identity_config(digits_dir, eval_split='test[:101]')
  per_process = []
  for index in range(2):  # 51 + 50 examples, batches of 16: 4 batches each.
    batches = list(
      input_pipeline.eval_dataset(config, local_batch_size=16, process_index=index, process_count=2)
    )
    assert len(batches) == 4
    for b in batches:
      assert b['image'].shape == (16, 8, 8, 3) and b['image'].dtype == np.uint8
      assert b['label'].dtype == np.int32 and b['mask'].dtype == np.float32
    per_process.append(
      {k: np.concatenate([b[k] for b in batches]) for k in ('image', 'label', 'mask')}
    )
  assert [p['mask'].sum() for p in per_process] == [51.0, 50.0]
  for p in per_process:  # Real examples first, then zero padding.
    n = int(p['mask'].sum())
    assert np.all(p['mask'][:n] == 1) and np.all(p['mask'][n:] == 0)
    assert np.all(p['image'][n:] == 0) and np.all(p['label'][n:] == 0)
  real = [(p['image'][p['mask'] == 1][..., 0], p['label'][p['mask'] == 1]) for p in per_process]
  images, labels = _digits_split(digits_dir, 'test[:101]')
  np.testing.assert_array_equal(
    _rows(np.concatenate([r[0] for r in real]), np.concatenate([r[1] for r in real])),
    _rows(images, labels),
  )


def test_eval_extra_padding_batches_when_processes_differ(digits_dir):
  # 5 examples over 4 processes: 2, 1, 1, 1 -> every process yields one batch of 2.
  config = _identity_config(digits_dir, eval_split='test[:5]')
  masks = [
    [
      b['mask'].tolist()
      for b in input_pipeline.eval_dataset(
        config, local_batch_size=2, process_index=i, process_count=4
      )
    ]
    for i in range(4)
  ]
  assert masks == [[[1.0, 1.0]], [[1.0, 0.0]], [[1.0, 0.0]], [[1.0, 0.0]]]
  masks = [
    [
      b['mask'].tolist()
      for b in input_pipeline.eval_dataset(
        config, local_batch_size=1, process_index=i, process_count=4
      )
    ]
    for i in range(4)
  ]
  assert masks == [[[1.0], [1.0]], [[1.0], [0.0]], [[1.0], [0.0]], [[1.0], [0.0]]]


def test_eval_image_is_the_pipelines_eval_preprocessing(digits_dir):
  config = _digits_config(
    digits_dir, image_size=8, eval_split='test[:4]', pp__eval_crop_fraction=0.5
  )
  (batch,) = list(input_pipeline.eval_dataset(config, local_batch_size=4))
  images, _ = _digits_split(digits_dir, 'test[:4]')
  for image, got in zip(images, batch['image']):
    expected = inference.model_input(image[..., None], config)
    assert expected.dtype == np.float32 and expected.shape == (8, 8, 3)
    np.testing.assert_allclose(expected, got / 127.5 - 1.0, atol=1e-6)
    # fraction 0.5: 16 px, centre 8.
    big = np.asarray(Image.fromarray(image).resize((16, 16), Image.BILINEAR))
    np.testing.assert_array_equal(got[..., 0], big[4:12, 4:12])


# --------------------------------------------------------------------------------------------------
# Bad datasets and arguments.


def test_unknown_dataset_and_bad_arguments(digits_dir):
  with pytest.raises(ValueError, match="Unknown dataset 'no_such_dataset'"):
    input_pipeline.get_info(tiny.data_config(dataset='no_such_dataset'))
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


def test_an_unknown_dataset_name_is_answered_without_the_network(monkeypatch):
  """The suggestion for an unknown name reads TFDS's own builders only: its community registry is
  fetched from GCS (two minutes of timeouts on an offline machine before the error)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  asked = []
  real = tfds.list_builders
  monkeypatch.setattr(
    tfds, 'list_builders', lambda **kw: asked.append(kw) or real(with_community_datasets=False)
  )
  with pytest.raises(ValueError, match="Unknown dataset 'cifar_tem'"):
    input_pipeline.get_info(tiny.data_config(dataset='cifar_tem'))
  assert asked == [{'with_community_datasets': False}]


# --------------------------------------------------------------------------------------------------
# To devices.


def _data_sharding():
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))


def test_make_global_batch_shards_over_data():
  assert jax.device_count() == 8
  sharding = _data_sharding()
  local = {
    'image': np.arange(16 * 2 * 2 * 3, dtype=np.uint8).reshape(16, 2, 2, 3),
    'label': np.arange(16, dtype=np.int32),
  }
  batch = input_pipeline.make_global_batch(local, sharding)
  assert batch['image'].shape == (16 * jax.process_count(), 2, 2, 3)
  for name, array in batch.items():
    assert isinstance(array, jax.Array) and array.sharding == sharding
    for shard in array.addressable_shards:
      assert shard.data.shape[0] == 2
      np.testing.assert_array_equal(np.asarray(shard.data), local[name][shard.index])


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
  ds = input_pipeline.eval_dataset(
    _identity_config(digits_dir, eval_split='test[:20]'), local_batch_size=8
  )
  batches = list(input_pipeline.prefetch_to_device(iter(ds), 2, sharding))
  assert [b['image'].shape for b in batches] == [(8, 8, 8, 3)] * 3
  assert sum(float(b['mask'].sum()) for b in batches) == 20.0


@pytest.mark.parametrize('crop', ['resize', 'pad_crop', 'inception'])
def test_a_split_decoded_once_into_memory_gives_the_same_batches(digits_dir, crop, caplog):
  def batches(cache_mib):
    config = _digits_config(
      digits_dir, input_cache_mib=cache_mib, image_size=8, pp__crop=crop, pp__flip=True
    )
    it = iter(input_pipeline.train_dataset(config, local_batch_size=16, start_step=3))
    return [next(it) for _ in range(2)]

  with caplog.at_level('INFO'):
    cached = batches(16)
  assert 'Decoded 1437 images' in caplog.text
  for a, b in zip(cached, batches(0)):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
