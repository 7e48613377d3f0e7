"""RandAugment (Cubuk et al. 2019) as big_vision and AugReg use it, on uint8 [H, W, 3] numpy images.

`num_layers` times: one op drawn uniformly from the 16 below and always applied, at the fixed
`magnitude` m (m / 10 scales each op's range; magnitudes above 10, e.g. AugReg's 15 and 20,
extrapolate). Ops marked +- take a random sign. Geometric ops fill uncovered pixels with 128 and
sample the nearest pixel. Every draw comes from the `numpy.random.Generator` given, which the input
pipeline seeds from (seed, global position).

| op           | magnitude rule (m = magnitude)                                       |
|--------------|----------------------------------------------------------------------|
| AutoContrast | per channel, stretch [min, max] to [0, 255] (no magnitude)           |
| Equalize     | per channel histogram equalisation, as PIL (no magnitude)            |
| Invert       | 255 - x (no magnitude)                                               |
| Rotate       | +- m/10 * 30 degrees about the centre                                |
| Posterize    | keep the top int(m/10 * 4) bits (clipped to 0..8)                    |
| Solarize     | x >= t -> 255 - x, t = int(m/10 * 256) (t >= 256: no pixel changes)  |
| SolarizeAdd  | x < 128 -> min(x + int(m/10 * 110), 255)                             |
| Color        | blend with the grayscale image, factor m/10 * 1.8 + 0.1              |
| Contrast     | blend with the mean gray level, factor m/10 * 1.8 + 0.1              |
| Brightness   | blend with black, factor m/10 * 1.8 + 0.1                            |
| Sharpness    | blend with PIL's SMOOTH-filtered image (borders kept), factor as Color |
| ShearX/Y     | +- m/10 * 0.3 shear                                                  |
| TranslateX/Y | +- m/10 * 100 pixels                                                 |
| Cutout       | a (2p x 2p) square of 128 at a uniform centre, p = int(m/10 * 40)    |

Blends compute degenerate + factor * (image - degenerate) in float, clip to 0..255 and truncate to
uint8.

Two ops differ from big_vision's TF version on purpose, where that one has bugs:
  * Contrast: big_vision blends towards (number of pixels / 256), not the mean gray level; here the
    mean gray level (PIL's ImageEnhance.Contrast rule).
  * Solarize: big_vision compares uint8 pixels with a threshold cast to uint8, so t = 256 (m = 10)
    wraps to 0 and inverts every pixel, and t = 384 (m = 15) wraps to 128; here the threshold is
    compared as an integer, so m >= 10 leaves the image unchanged (the op's documented meaning).
"""

import numpy as np
from PIL import Image, ImageFilter, ImageOps

MAX_LEVEL = 10.0
FILL = (128, 128, 128)
OPS = (
  'AutoContrast',
  'Equalize',
  'Invert',
  'Rotate',
  'Posterize',
  'Solarize',
  'Color',
  'Contrast',
  'Brightness',
  'Sharpness',
  'ShearX',
  'ShearY',
  'TranslateX',
  'TranslateY',
  'Cutout',
  'SolarizeAdd',
)


def blend(degenerate: np.ndarray, image: np.ndarray, factor: float) -> np.ndarray:
  out = degenerate.astype(np.float32) + factor * (
    image.astype(np.float32) - degenerate.astype(np.float32)
  )
  return np.clip(out, 0, 255).astype(np.uint8)


def grayscale(image: np.ndarray) -> np.ndarray:
  """ITU-R 601-2 luma as PIL's convert('L'), as uint8 [H, W]."""
  return np.asarray(Image.fromarray(image).convert('L'))


def autocontrast(image: np.ndarray) -> np.ndarray:
  lo = image.min(axis=(0, 1)).astype(np.float32)
  hi = image.max(axis=(0, 1)).astype(np.float32)
  scale = np.where(hi > lo, 255.0 / np.maximum(hi - lo, 1), 1.0)
  offset = np.where(hi > lo, -lo * scale, 0.0)
  return np.clip(image * scale + offset, 0, 255).astype(np.uint8)


def equalize(image: np.ndarray) -> np.ndarray:
  return np.asarray(ImageOps.equalize(Image.fromarray(image)))


def invert(image: np.ndarray) -> np.ndarray:
  return 255 - image


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
  shift = 8 - int(np.clip(bits, 0, 8))
  return ((image >> shift) << shift).astype(np.uint8)


def solarize(image: np.ndarray, threshold: int) -> np.ndarray:
  return np.where(image.astype(np.int32) < threshold, image, 255 - image).astype(np.uint8)


def solarize_add(image: np.ndarray, addition: int, threshold: int = 128) -> np.ndarray:
  added = np.clip(image.astype(np.int32) + addition, 0, 255).astype(np.uint8)
  return np.where(image < threshold, added, image)


def color(image: np.ndarray, factor: float) -> np.ndarray:
  return blend(np.repeat(grayscale(image)[..., None], 3, axis=-1), image, factor)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
  mean = int(grayscale(image).mean() + 0.5)
  return blend(np.full_like(image, mean), image, factor)


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
  return blend(np.zeros_like(image), image, factor)


def sharpness(image: np.ndarray, factor: float) -> np.ndarray:
  smooth = np.asarray(Image.fromarray(image).filter(ImageFilter.SMOOTH)).copy()
  smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1] = (
    image[0],
    image[-1],
    image[:, 0],
    image[:, -1],
  )
  return blend(smooth, image, factor)


def _affine(image: np.ndarray, coefficients) -> np.ndarray:
  """Output pixel (x, y) takes input pixel (a x + b y + c, d x + e y + f) (integer pixel
  coordinates, as TF's image transforms), nearest, filled with 128."""
  a, b, c, d, e, f = coefficients
  # PIL samples at pixel centres (x + 0.5, y + 0.5); shift so that integer coordinates map as above.
  coefficients = (a, b, c - 0.5 * (a + b - 1), d, e, f - 0.5 * (d + e - 1))
  pil = Image.fromarray(image)
  return np.asarray(
    pil.transform(pil.size, Image.AFFINE, coefficients, resample=Image.NEAREST, fillcolor=FILL)
  )


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
  """Counter-clockwise by `degrees` about the centre."""
  return np.asarray(Image.fromarray(image).rotate(degrees, resample=Image.NEAREST, fillcolor=FILL))


def shear_x(image: np.ndarray, level: float) -> np.ndarray:
  return _affine(image, (1.0, level, 0.0, 0.0, 1.0, 0.0))


def shear_y(image: np.ndarray, level: float) -> np.ndarray:
  return _affine(image, (1.0, 0.0, 0.0, level, 1.0, 0.0))


def translate_x(image: np.ndarray, pixels: float) -> np.ndarray:
  """Content moves left by `pixels` (right for negative values)."""
  return _affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0))


def translate_y(image: np.ndarray, pixels: float) -> np.ndarray:
  return _affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels))


def cutout(image: np.ndarray, pad: int, center: tuple[int, int]) -> np.ndarray:
  out = image.copy()
  y, x = center
  out[max(0, y - pad) : y + pad, max(0, x - pad) : x + pad] = FILL
  return out


def apply_op(
  name: str, image: np.ndarray, magnitude: float, rng: np.random.Generator
) -> np.ndarray:
  """Op `name` at `magnitude` (the module doc's rules), drawing its sign or position from `rng`."""
  level = magnitude / MAX_LEVEL
  sign = lambda: 1.0 if rng.random() < 0.5 else -1.0
  enhance = level * 1.8 + 0.1
  if name == 'AutoContrast':
    return autocontrast(image)
  if name == 'Equalize':
    return equalize(image)
  if name == 'Invert':
    return invert(image)
  if name == 'Rotate':
    return rotate(image, sign() * level * 30.0)
  if name == 'Posterize':
    return posterize(image, int(level * 4))
  if name == 'Solarize':
    return solarize(image, int(level * 256))
  if name == 'SolarizeAdd':
    return solarize_add(image, int(level * 110))
  if name == 'Color':
    return color(image, enhance)
  if name == 'Contrast':
    return contrast(image, enhance)
  if name == 'Brightness':
    return brightness(image, enhance)
  if name == 'Sharpness':
    return sharpness(image, enhance)
  if name == 'ShearX':
    return shear_x(image, sign() * level * 0.3)
  if name == 'ShearY':
    return shear_y(image, sign() * level * 0.3)
  if name == 'TranslateX':
    return translate_x(image, sign() * level * 100.0)
  if name == 'TranslateY':
    return translate_y(image, sign() * level * 100.0)
  if name == 'Cutout':
    h, w = image.shape[:2]
    return cutout(image, int(level * 40), (int(rng.integers(0, h)), int(rng.integers(0, w))))
  raise ValueError(f'Unknown RandAugment op {name!r}; valid: {", ".join(OPS)}.')


def randaugment(
  image: np.ndarray, rng: np.random.Generator, *, num_layers: int, magnitude: float
) -> np.ndarray:
  """`num_layers` ops drawn uniformly from OPS, each applied at `magnitude` (see module doc)."""
  for _ in range(num_layers):
    image = apply_op(OPS[int(rng.integers(0, len(OPS)))], image, magnitude, rng)
  return image
