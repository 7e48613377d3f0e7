"""vit_jax.preprocess: shapes, seeds and geometry of the tf image ops."""
import numpy as np
import pytest
import tensorflow as tf

from vit_jax import preprocess


def _random_image(h, w, c=3, seed=0):
  return tf.constant(np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8))


def _seed(a, b):
  return tf.constant([a, b], tf.int64)


def test_inception_crop_size_and_dtype():
  out = preprocess.inception_crop(_random_image(40, 60), _seed(0, 1), min_area=0.05, size=16)
  assert out.shape == (16, 16, 3)
  assert out.dtype == tf.uint8
  out = preprocess.inception_crop(_random_image(40, 60), _seed(0, 1), min_area=0.05, size=(12, 20))
  assert out.shape == (12, 20, 3)


def test_inception_crop_is_a_function_of_the_seed():
  image = _random_image(64, 48)
  crop = lambda seed: preprocess.inception_crop(image, seed, min_area=0.05, size=16).numpy()
  np.testing.assert_array_equal(crop(_seed(3, 4)), crop(_seed(3, 4)))
  others = [crop(_seed(s, 7)) for s in range(5)]
  assert sum(not np.array_equal(crop(_seed(3, 4)), o) for o in others) >= 4


def test_inception_crop_with_full_area_is_a_resize():
  image = _random_image(20, 20)
  out = preprocess.inception_crop(image, _seed(0, 0), min_area=1.0, size=20)
  np.testing.assert_array_equal(out.numpy(), image.numpy())


def test_resize_keeps_uint8_and_constant_images():
  image = tf.fill([10, 30, 3], tf.constant(200, tf.uint8))
  out = preprocess.resize(image, 7)
  assert out.shape == (7, 7, 3) and out.dtype == tf.uint8
  assert np.all(out.numpy() == 200)


def test_to_float_range():
  out = preprocess.to_float(tf.constant([[[0, 255, 51]]], tf.uint8)).numpy()
  assert out.dtype == np.float32
  assert out[0, 0, 0] == -1.0 and out[0, 0, 1] == 1.0
  assert out[0, 0, 2] == pytest.approx(-0.6)


def test_central_crop_geometry():
  image = tf.constant(np.arange(64, dtype=np.uint8).reshape(8, 8, 1))
  # fraction 0.5: resize to 8 (identity here), keep the central 4x4.
  out = preprocess.central_crop(image, 4, 0.5).numpy()
  np.testing.assert_array_equal(out, image.numpy()[2:6, 2:6])
  # fraction 1: a plain resize.
  np.testing.assert_array_equal(preprocess.central_crop(image, 8, 1.0).numpy(), image.numpy())
  # Non-square input: resized to 5x5, window [0:4] (offset (5 - 4) // 2 = 0).
  assert preprocess.central_crop(_random_image(10, 30), 4, 0.875).shape == (4, 4, 3)
  with pytest.raises(ValueError, match='fraction'):
    preprocess.central_crop(image, 4, 0.0)


def test_random_flip_is_seeded():
  image = _random_image(4, 6)
  flipped = image.numpy()[:, ::-1]
  outs = [preprocess.random_flip(image, _seed(s, 0)).numpy() for s in range(16)]
  n_flipped = sum(np.array_equal(o, flipped) for o in outs)
  n_same = sum(np.array_equal(o, image.numpy()) for o in outs)
  assert n_flipped + n_same == 16 and n_flipped >= 1 and n_same >= 1
  np.testing.assert_array_equal(preprocess.random_flip(image, _seed(5, 0)).numpy(), outs[5])


def test_to_rgb():
  gray = _random_image(3, 5, c=1)
  rgb = preprocess.to_rgb(gray).numpy()
  assert rgb.shape == (3, 5, 3)
  for c in range(3):
    np.testing.assert_array_equal(rgb[..., c], gray.numpy()[..., 0])
  color = _random_image(3, 5)
  np.testing.assert_array_equal(preprocess.to_rgb(color).numpy(), color.numpy())
  # Channels only known at run time.
  dynamic = tf.function(preprocess.to_rgb, input_signature=[tf.TensorSpec([None, None, None], tf.uint8)])
  assert dynamic(gray).shape == (3, 5, 3)
  assert dynamic(color).shape == (3, 5, 3)
