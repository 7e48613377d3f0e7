"""RandAugment ops against numpy/PIL references of the same rule; shapes, ranges and determinism per
level."""

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
import pytest

from vit_jax.configs import augmentation
from vit_jax.data import randaugment as ra


def _image(h=24, w=24, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


class _Sign:
  """A generator stand-in whose first uniform draw is fixed (picks the sign)."""

  def __init__(self, value):
    self.value = value

  def random(self):
    return self.value


def test_posterize_keeps_the_top_bits():
  x = _image()
  np.testing.assert_array_equal(ra.posterize(x, 4), x & 0xF0)
  # int(10/10 * 4) = 4 bits.
  np.testing.assert_array_equal(ra.apply_op('Posterize', x, 10, None), x & 0xF0)
  np.testing.assert_array_equal(ra.apply_op('Posterize', x, 20, None), x)  # 8 bits: unchanged.


def test_invert_solarize_and_solarize_add():
  x = _image()
  np.testing.assert_array_equal(ra.apply_op('Invert', x, 10, None), 255 - x)
  np.testing.assert_array_equal(ra.apply_op('Solarize', x, 5, None), np.where(x < 128, x, 255 - x))
  # t = 256: no pixel reaches it.
  np.testing.assert_array_equal(ra.apply_op('Solarize', x, 10, None), x)
  np.testing.assert_array_equal(
    ra.apply_op('SolarizeAdd', x, 10, None),
    np.where(x < 128, np.minimum(x.astype(int) + 110, 255), x),
  )


@pytest.mark.parametrize(
  'name,enhancer',
  [
    ('Color', ImageEnhance.Color),
    ('Brightness', ImageEnhance.Brightness),
    ('Contrast', ImageEnhance.Contrast),
  ],
)
def test_enhance_ops_match_pil_enhance(name, enhancer):
  x = _image()
  for magnitude in (0, 5, 10, 15):
    factor = magnitude / 10 * 1.8 + 0.1
    expected = np.asarray(enhancer(Image.fromarray(x)).enhance(factor)).astype(int)
    assert np.abs(ra.apply_op(name, x, magnitude, None).astype(int) - expected).max() <= 1, (
      name,
      magnitude,
    )


def test_contrast_blends_towards_the_mean_gray_level():
  x = np.full((4, 4, 3), 200, np.uint8)
  x[:2] = 40
  mean = int(np.asarray(Image.fromarray(x).convert('L')).mean() + 0.5)
  np.testing.assert_array_equal(ra.contrast(x, 0.0), np.full_like(x, mean))


def test_autocontrast_and_equalize_match_pil():
  x = (_image() // 2 + 40).astype(np.uint8)
  np.testing.assert_array_equal(
    ra.apply_op('AutoContrast', x, 10, None), np.asarray(ImageOps.autocontrast(Image.fromarray(x)))
  )
  np.testing.assert_array_equal(
    ra.apply_op('Equalize', x, 10, None), np.asarray(ImageOps.equalize(Image.fromarray(x)))
  )


def test_sharpness_blends_with_the_smoothed_image_inside_the_border():
  x = _image()
  out = ra.sharpness(x, 0.0)  # Factor 0: the degenerate (smoothed) image, borders kept.
  np.testing.assert_array_equal(out[0], x[0])
  np.testing.assert_array_equal(out[:, -1], x[:, -1])
  kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
  centre = sum(
    kernel[i, j] * x[i : i + 3, j : j + 3][:1, :1].astype(float) for i in range(3) for j in range(3)
  )
  assert np.abs(out[1, 1].astype(float) - centre[0, 0]).max() <= 1
  np.testing.assert_array_equal(ra.sharpness(x, 1.0), x)


def test_rotate_by_90_degrees_is_rot90_inside_the_crop():
  x = _image(16, 16)
  out = ra.apply_op('Rotate', x, 30, _Sign(0.1))  # 30/10 * 30 = 90 degrees, positive sign.
  np.testing.assert_array_equal(out, np.rot90(x))  # Counter-clockwise, as PIL.
  out = ra.apply_op('Rotate', x, 30, _Sign(0.9))
  np.testing.assert_array_equal(out, np.rot90(x, -1))


def test_translate_shifts_content_and_fills_128():
  x = _image(10, 20)
  out = ra.apply_op('TranslateX', x, 0.5, _Sign(0.1))  # 0.5/10 * 100 = 5 px, content moves left.
  np.testing.assert_array_equal(out[:, :15], x[:, 5:])
  assert np.all(out[:, 15:] == 128)
  out = ra.apply_op('TranslateY', x, 0.3, _Sign(0.9))  # -3 px: content moves down.
  np.testing.assert_array_equal(out[3:], x[:-3])
  assert np.all(out[:3] == 128)


def test_shear_x_moves_rows_by_their_index():
  x = _image(8, 40)
  out = ra.shear_x(x, 1.0)  # Output (x, y) takes input (x + y, y).
  for y in range(8):
    np.testing.assert_array_equal(out[y, : 40 - y], x[y, y:])
    assert np.all(out[y, 40 - y :] == 128)
  np.testing.assert_array_equal(
    ra.shear_y(x.transpose(1, 0, 2).copy(), 1.0).transpose(1, 0, 2), out
  )


def test_cutout_fills_a_square_with_128():
  x = _image(20, 20)
  out = ra.cutout(x, 3, (10, 5))
  assert np.all(out[7:13, 2:8] == 128)
  mask = np.ones((20, 20), bool)
  mask[7:13, 2:8] = False
  np.testing.assert_array_equal(out[mask], x[mask])


@pytest.mark.parametrize('level', sorted(augmentation.AUGREG_LEVELS))
def test_every_level_keeps_shape_dtype_range_and_is_deterministic(level):
  layers, magnitude, _ = augmentation.AUGREG_LEVELS[level]
  x = _image(32, 32)
  for seed in range(20):
    out = ra.randaugment(x, np.random.default_rng(seed), num_layers=layers, magnitude=magnitude)
    assert out.shape == x.shape and out.dtype == np.uint8
    again = ra.randaugment(x, np.random.default_rng(seed), num_layers=layers, magnitude=magnitude)
    np.testing.assert_array_equal(out, again)


def test_every_op_runs_at_large_magnitudes_and_unknown_ops_are_errors():
  x = _image(32, 32)
  for name in ra.OPS:
    for magnitude in (0, 15, 20):
      out = ra.apply_op(name, x, magnitude, np.random.default_rng(0))
      assert out.shape == x.shape and out.dtype == np.uint8, name
  with pytest.raises(ValueError, match="Unknown RandAugment op 'Blur'"):
    ra.apply_op('Blur', x, 10, None)


def test_levels_apply_to_a_config():
  from vit_jax.configs import common

  config = augmentation.apply_level(common.get_config(), 'medium2')
  assert (config.pp.randaugment_layers, config.pp.randaugment_magnitude, config.mixup_p) == (
    2,
    15.0,
    0.5,
  )
  with pytest.raises(ValueError, match="Unknown AugReg level 'heavy'"):
    augmentation.apply_level(config, 'heavy')
