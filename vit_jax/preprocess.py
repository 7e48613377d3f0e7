"""Image preprocessing: pure TensorFlow functions of an image [H, W, C] (and a seed, for the random ones).

Randomness is stateless: a `seed` is an int32/int64 tensor of shape [2] and the output is a deterministic function of
(image, seed). Geometric ops keep the input dtype (uint8 stays uint8, rounded), so `to_float` is the single place where
pixel values change scale.
"""
from typing import Sequence, Union

import tensorflow as tf

Size = Union[int, Sequence[int]]

# Aspect ratios (width / height) of the Inception crop.
INCEPTION_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)


def _hw(size: Size) -> list[int]:
  return [size, size] if isinstance(size, int) else list(size)


def resize(image: tf.Tensor, size: Size) -> tf.Tensor:
  """Bilinear resize to `size` (an int for a square, or (height, width)); keeps the dtype."""
  out = tf.image.resize(image, _hw(size), method='bilinear')
  if image.dtype.is_integer:
    return tf.saturate_cast(tf.round(out), image.dtype)
  return tf.cast(out, image.dtype)


def inception_crop(image: tf.Tensor, seed: tf.Tensor, *, min_area: float, size: Size) -> tf.Tensor:
  """Random crop covering `min_area`..100% of the image with aspect ratio in 3/4..4/3, resized to `size`."""
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image),
      bounding_boxes=tf.zeros([1, 0, 4], tf.float32),
      seed=seed,
      min_object_covered=0.0,
      aspect_ratio_range=INCEPTION_ASPECT_RANGE,
      area_range=(min_area, 1.0),
      use_image_if_no_bounding_boxes=True)
  return resize(tf.slice(image, begin, crop_size), size)


def pad_crop(image: tf.Tensor, seed: tf.Tensor, *, pad: int, size: Size) -> tf.Tensor:
  """Resizes to `size`, zero-pads `pad` pixels on every side, then takes a random `size` window (a random shift)."""
  h, w = _hw(size)
  image = resize(image, (h, w))
  padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  return tf.image.stateless_random_crop(padded, tf.stack([h, w, tf.shape(image)[-1]]), seed)


def central_crop(image: tf.Tensor, size: int, fraction: float) -> tf.Tensor:
  """Resizes to round(size / fraction) square, then keeps the central size x size window.

  `fraction` is the side of the kept window relative to the resized image (0 < fraction <= 1; 1 is a plain resize).
  """
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'central_crop fraction must be in (0, 1], got {fraction}.')
  big = max(size, int(round(size / fraction)))
  offset = (big - size) // 2
  return resize(image, big)[offset:offset + size, offset:offset + size]


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Left-right flip with probability 1/2."""
  return tf.image.stateless_random_flip_left_right(image, seed)


def to_rgb(image: tf.Tensor) -> tf.Tensor:
  """Repeats a single (grayscale) channel three times; other images pass through."""
  channels = image.shape[-1]
  if channels == 1:
    return tf.image.grayscale_to_rgb(image)
  if channels is None:  # Only known at run time.
    return tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image)
  return image


def to_float(image: tf.Tensor) -> tf.Tensor:
  """uint8 0..255 -> float32 -1..1 (0 -> -1, 255 -> 1)."""
  return tf.cast(image, tf.float32) / 127.5 - 1.0
