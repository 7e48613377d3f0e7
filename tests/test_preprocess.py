"""vit_jax.data.preprocess: decoding (JPEG at a reduced DCT scale only where the crop allows),
crops, resizes, flips."""

import io

import numpy as np
from PIL import Image
import pytest

from vit_jax.data import preprocess


def _image(h, w, seed=0):
  """A smooth random RGB image (JPEG keeps it close)."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC))


def _encode(image, fmt='JPEG', mode=None):
  buffer = io.BytesIO()
  pil = Image.fromarray(image)
  (pil.convert(mode) if mode else pil).save(buffer, fmt, quality=95)
  return buffer.getvalue()


def test_decode_formats_to_rgb():
  image = _image(30, 40)
  for data in (
    _encode(image),
    _encode(image, 'PNG'),
    _encode(image, mode='CMYK'),
    _encode(image, mode='L'),
    _encode(image, 'PNG', mode='L'),
  ):
    out = preprocess.decode(data)
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
  assert (
    preprocess.image_shape(_encode(image))
    == (30, 40)
    == preprocess.image_shape(_encode(image, 'PNG'))
  )
  np.testing.assert_array_equal(preprocess.decode(_encode(image, 'PNG')), image)
  assert np.abs(preprocess.decode(_encode(image)).astype(int) - image).mean() < 3


def test_jpeg_decodes_at_a_reduced_scale_only_when_the_window_allows():
  data = _encode(_image(400, 600))
  # 1/4 scale still covers the need.
  assert preprocess.decode(data, min_size=(90, 130)).shape == (100, 150, 3)
  # 1/2 would be too small.
  assert preprocess.decode(data, min_size=(210, 200)).shape == (400, 600, 3)
  assert preprocess.decode(_encode(_image(400, 600), 'PNG'), min_size=(90, 130)).shape == (
    400,
    600,
    3,
  )


def test_sample_inception_box_geometry():
  rng = np.random.default_rng(0)
  for _ in range(200):
    top, left, h, w = preprocess.sample_inception_box(60, 80, rng, min_area=0.05)
    assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
    assert 0.05 * 4800 * 0.9 <= h * w <= 4800
    assert 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25
  assert preprocess.sample_inception_box(10, 10, rng, min_area=1.0, aspect_range=(1.0, 1.0)) == (
    0,
    0,
    10,
    10,
  )


def test_decode_inception_crop_is_a_function_of_the_rng_and_matches_a_full_decode():
  data = _encode(_image(300, 400))
  crop = lambda seed: preprocess.decode_inception_crop(
    data, np.random.default_rng(seed), size=32, min_area=0.05
  )
  np.testing.assert_array_equal(crop(3), crop(3))
  assert crop(3).shape == (32, 32, 3) and crop(3).dtype == np.uint8
  assert sum(not np.array_equal(crop(3), crop(s)) for s in range(5)) >= 4
  # The scaled decode gives (nearly) what a full decode, slice and resize give.
  rng = np.random.default_rng(7)
  box = preprocess.sample_inception_box(300, 400, np.random.default_rng(7), min_area=0.05)
  full = preprocess.resize(preprocess.decode(data), 32, box=box)
  assert (
    np.abs(
      preprocess.decode_inception_crop(data, rng, size=32, min_area=0.05).astype(int) - full
    ).mean()
    < 4
  )


def test_resize_keeps_uint8_and_constant_images():
  out = preprocess.resize(np.full((10, 30, 3), 200, np.uint8), 7)
  assert out.shape == (7, 7, 3) and out.dtype == np.uint8 and np.all(out == 200)


def test_to_float_range():
  out = preprocess.to_float(np.array([[[0, 255, 51]]], np.uint8))
  assert out.dtype == np.float32
  assert out[0, 0, 0] == -1.0 and out[0, 0, 1] == 1.0 and out[0, 0, 2] == pytest.approx(-0.6)
  floats = np.zeros((1, 2, 3), np.float32)
  assert preprocess.to_float(floats) is floats


def test_central_crop_geometry():
  image = np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8, 1), 3, axis=-1)
  # A plain resize (identity here).
  np.testing.assert_array_equal(preprocess.central_crop(image, 8, 1.0), image)
  big = preprocess.resize(image, 16, antialias=True)
  np.testing.assert_array_equal(preprocess.central_crop(image, 8, 0.5), big[4:12, 4:12])
  wide = _image(20, 40)
  # Shorter side to 16 -> 16 x 32, centre 8 x 8.
  out = preprocess.central_crop(wide, 8, 0.5, 'shorter_side')
  np.testing.assert_array_equal(out, preprocess.resize(wide, (16, 32), antialias=True)[4:12, 12:20])


def test_pad_crop_and_flip_are_seeded():
  image = _image(16, 16)
  outs = [preprocess.pad_crop(image, np.random.default_rng(s), pad=4, size=16) for s in range(8)]
  assert all(o.shape == (16, 16, 3) for o in outs) and len({o.tobytes() for o in outs}) > 4
  flips = [preprocess.random_flip(image, np.random.default_rng(s)) for s in range(16)]
  n_flipped = sum(np.array_equal(f, image[:, ::-1]) for f in flips)
  assert 1 <= n_flipped <= 15 and n_flipped + sum(np.array_equal(f, image) for f in flips) == 16


def test_to_rgb():
  gray = np.arange(15, dtype=np.uint8).reshape(3, 5)
  assert preprocess.to_rgb(gray).shape == (3, 5, 3)
  np.testing.assert_array_equal(preprocess.to_rgb(gray[..., None])[..., 2], gray)
  rgba = np.zeros((2, 2, 4), np.uint8)
  assert preprocess.to_rgb(rgba).shape == (2, 2, 3)


@pytest.mark.parametrize('mode', ['L', 'RGB', 'RGBA', 'P', 'LA', 'I;16', '1'])
def test_png_decodes_as_pils_rgb_conversion_whatever_its_mode(mode):
  pixels = np.random.default_rng(0).integers(0, 255, (7, 9, 4)).astype(np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels, 'RGBA').convert(mode).save(buffer, format='PNG')
  with Image.open(io.BytesIO(buffer.getvalue())) as reference:
    np.testing.assert_array_equal(
      preprocess.decode(buffer.getvalue()), np.asarray(reference.convert('RGB'))
    )
