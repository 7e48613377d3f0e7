"""Image preprocessing in numpy, OpenCV and PIL: decode (JPEG through libjpeg-turbo, at a reduced
DCT scale where the crop allows), crops, resizes, flips; uint8 in, uint8 out. `to_float` is the one
place where pixel values change scale (to [-1, 1]), and it runs on the device in the train and eval
steps, so batches travel as uint8.

Randomness comes from a `numpy.random.Generator` that the input pipeline seeds from (seed, global
position), so every output is a deterministic function of (encoded image, seed, position).

Train crops (`config.pp.crop`):
  inception  a box of `inception_min_area`..100% of the image area with aspect ratio (w/h) in
             3/4..4/3 (log-uniform), up to 10 draws, else the whole image; resized to `image_size`
             (bilinear, as TF's resize). For a JPEG the header gives the shape first, the box is
             drawn, and the decoder works at the smallest DCT scale (1/1, 1/2, 1/4, 1/8, ...) that
             keeps the box at least `image_size` pixels in both directions.
  pad_crop   resize to `image_size`, zero-pad `pad_pixels` on each side, take a random `image_size`
             window.
  resize     resize to `image_size`.
JPEGs decode with libjpeg-turbo's fast integer IDCT (as TF's default) and its smooth ("fancy")
chroma upsampling: the plain upsampling was ~10% faster but cost ~5 grey levels on colourful images.
Eval (`config.pp.eval_resize`, `config.pp.eval_crop_fraction` = f, S = `image_size`):
  square        resize to round(S / f) square (antialiased), keep the central S x S (f = 1: a plain
                resize);
  shorter_side  resize the shorter side to round(S / f) keeping the aspect ratio (antialiased), keep
                the central S x S: the recipes' 'resize 256, central crop 224' is S = 224, f =
                0.875.
vision_transformer's LiT preprocessing (its vit_jax/preprocess.py; here without TensorFlow):
  PreprocessImages(size, crop)  uint8 images -> float32 [n, size, size, 3] in [-1, 1]
  get_pp(...)                   one example's features: 'image' preprocessed, 'text' -> 'tokens'
"""

import dataclasses
import io
import math

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

# (the values config.pp takes)
from vit_jax.configs.choices import EVAL_RESIZES, TRAIN_CROPS  # noqa: F401
from vit_jax.data import tokenizers

try:  # libjpeg-turbo with DCT-domain scaling; PIL decodes everything when it is missing.
  import simplejpeg
except ImportError:  # pragma: no cover
  simplejpeg = None

INCEPTION_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
_JPEG_MAGIC = b'\xff\xd8'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def is_jpeg(data: bytes) -> bool:
  return bytes(data[:2]) == _JPEG_MAGIC


def image_shape(data: bytes) -> tuple[int, int]:
  """(height, width) from the header only (JPEG) or without decoding the pixels (other formats)."""
  if simplejpeg is not None and is_jpeg(data):
    try:
      h, w, _, _ = simplejpeg.decode_jpeg_header(data)
      return h, w
    except ValueError:
      pass
  with _open(data) as image:
    w, h = image.size
  return h, w


def _open(data: bytes) -> Image.Image:
  """PIL's image of encoded bytes; a ValueError that says what is wrong when it is no image (PIL's
  own message shows a BytesIO's repr)."""
  try:
    return Image.open(io.BytesIO(data))
  except UnidentifiedImageError:
    raise ValueError(
      f'not an image format that can be decoded ({len(data)} bytes starting {bytes(data[:8])!r})'
    ) from None


def decode(data: bytes, *, min_size: tuple[int, int] = (0, 0)) -> np.ndarray:
  """RGB uint8 [H', W', 3] of an encoded image; a JPEG may come out smaller (DCT scaling), but at
  least `min_size` (height, width). Any format PIL reads works (PNG, GIF first frame, CMYK/grayscale
  JPEG, ...)."""
  if simplejpeg is not None and is_jpeg(data):
    try:
      height, width = image_shape(data)
      # Scale by 2 or more, or not at all: libjpeg-turbo's factors between 1 and 2 cost more than a
      # full decode.
      scalable = min(height / max(min_size[0], 1), width / max(min_size[1], 1)) >= 2
      if not scalable:
        min_size = (height, width)
      return simplejpeg.decode_jpeg(
        data,
        colorspace='RGB',
        fastdct=True,
        min_height=min_size[0],
        min_width=min_size[1],
        min_factor=2.0 if scalable else 1.0,
      )
    except ValueError:  # E.g. CMYK, which libjpeg-turbo cannot turn into RGB: PIL can.
      pass
  if bytes(data[:8]) == _PNG_MAGIC:
    image = _decode_png(data)
    if image is not None:
      return image
  with _open(data) as image:
    return np.asarray(image.convert('RGB'))


def _decode_png(data: bytes) -> np.ndarray | None:
  """An 8-bit PNG through OpenCV (3x faster than PIL for small images), as PIL's convert('RGB')
  gives it (alpha dropped, palettes and grey expanded); None for what OpenCV does not give that way
  (16-bit, damaged)."""
  image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
  if image is None or image.dtype != np.uint8:
    return None
  if image.ndim == 2:
    return np.repeat(image[..., None], 3, axis=-1)
  return np.ascontiguousarray(image[..., 2::-1])  # BGR(A) -> RGB.


def sample_inception_box(
  height: int,
  width: int,
  rng: np.random.Generator,
  *,
  min_area: float,
  aspect_range=INCEPTION_ASPECT_RANGE,
  attempts: int = 10,
) -> tuple[int, int, int, int]:
  """(top, left, box height, box width) of an Inception crop (see module doc); the whole image after
  `attempts`."""
  area = height * width
  log_low = math.log(aspect_range[0])
  log_high = math.log(aspect_range[1])
  for _ in range(attempts):
    target = area * rng.uniform(min_area, 1.0)
    aspect = math.exp(rng.uniform(log_low, log_high))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  return 0, 0, height, width


def resize(image: np.ndarray, size, box=None, *, antialias: bool = False) -> np.ndarray:
  """Bilinear resize of uint8 [H, W, 3] (of the window `box` = (top, left, h, w), rounded to pixels,
  if given) to `size` (int or (h, w)). Without `antialias` as TF's bilinear resize (OpenCV,
  half-pixel centres); with it, PIL's antialiased filter (slower: for evaluation)."""
  h, w = (size, size) if isinstance(size, int) else tuple(size)
  if box is not None:
    top, left, bh, bw = (int(round(v)) for v in box)
    image = image[top : top + max(bh, 1), left : left + max(bw, 1)]
  if image.shape[:2] == (h, w):
    return np.ascontiguousarray(image)
  if antialias:
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.BILINEAR))
  out = cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=cv2.INTER_LINEAR)
  return out if out.ndim == 3 else out[..., None]


def as_image(data) -> np.ndarray:
  """RGB uint8 [H, W, 3] of encoded bytes (`decode`) or of decoded pixels (`to_rgb`)."""
  return to_rgb(data) if isinstance(data, np.ndarray) else decode(data)


def decode_inception_crop(
  data, rng: np.random.Generator, *, size: int, min_area: float
) -> np.ndarray:
  """Decode-and-crop: the header's shape, a drawn box, a decode at the smallest DCT scale that keeps
  the box at least `size` px, then the box resized to `size` x `size`. Decoded pixels (`data` an
  array) take the same box."""
  if isinstance(data, np.ndarray):
    top, left, h, w = sample_inception_box(data.shape[0], data.shape[1], rng, min_area=min_area)
    return resize(to_rgb(data), size, box=(top, left, h, w))
  height, width = image_shape(data)
  top, left, h, w = sample_inception_box(height, width, rng, min_area=min_area)
  min_size = (
    (math.ceil(height * size / h), math.ceil(width * size / w)) if is_jpeg(data) else (0, 0)
  )
  image = decode(data, min_size=(min(min_size[0], height), min(min_size[1], width)))
  sy = image.shape[0] / height
  sx = image.shape[1] / width
  box = (top * sy, left * sx, h * sy, w * sx)
  return resize(image, size, box=box)


def pad_crop(image: np.ndarray, rng: np.random.Generator, *, pad: int, size: int) -> np.ndarray:
  image = np.pad(resize(image, size), ((pad, pad), (pad, pad), (0, 0)))
  top, left = rng.integers(0, 2 * pad + 1, 2)
  return image[top : top + size, left : left + size]


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Left-right flip with probability 1/2 (a new contiguous array when flipped)."""
  if rng.random() < 0.5:
    flipped = cv2.flip(np.ascontiguousarray(image), 1)
    return flipped if flipped.ndim == 3 else flipped[..., None]
  return image


def eval_resize_size(image_size: int, crop_fraction: float) -> int:
  """The side the evaluation resize goes to before the central crop: round(S / f), at least S
  (module doc)."""
  return max(image_size, int(round(image_size / crop_fraction)))


def central_crop(image: np.ndarray, size: int, fraction: float, mode: str = 'square') -> np.ndarray:
  """The eval crop of the module doc: uint8 [H, W, 3] -> [size, size, 3]."""
  big = eval_resize_size(size, fraction)
  if mode == 'square':
    image = resize(image, big, antialias=True)
  else:
    h, w = image.shape[:2]
    scale = big / min(h, w)
    image = resize(
      image, (max(size, int(round(h * scale))), max(size, int(round(w * scale)))), antialias=True
    )
  top = (image.shape[0] - size) // 2
  left = (image.shape[1] - size) // 2
  return image[top : top + size, left : left + size]


def eval_image(
  image, *, image_size: int, crop_fraction: float = 1.0, resize_mode: str = 'square'
) -> np.ndarray:
  """THE evaluation preprocessing (config.image_size, config.pp.eval_crop_fraction,
  config.pp.eval_resize) of one image, encoded bytes or decoded [H, W(, C)] uint8: RGB, then
  `central_crop`; uint8 [S, S, 3]. The evaluators, `vit_jax.predict`, the attention maps and the
  Hugging Face export's image processor all follow it."""
  image = decode(image) if isinstance(image, (bytes, bytearray, memoryview)) else to_rgb(image)
  return central_crop(image, image_size, crop_fraction, resize_mode)


def to_rgb(image: np.ndarray) -> np.ndarray:
  """[H, W] or [H, W, 1] grayscale -> [H, W, 3]; RGBA -> RGB; RGB passes."""
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  return image[..., :3]


def to_float(images):
  """uint8 0..255 -> float32 -1..1 (0 -> -1, 255 -> 1); float inputs pass unchanged. Works on numpy
  and jax arrays."""
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 127.5 - 1.0
  return images


@dataclasses.dataclass(frozen=True)
class PreprocessImages:
  """vision_transformer's LiT image preprocessing, called on a sequence of uint8 [H, W, 3] images:
  a bilinear resize (`resize`, as TF's) to size x size, or with `crop` of the shorter side to `size`
  (the other to round(side * size / shorter), in float32 as TF computes it) and then the central
  size x size; values to [-1, 1] (`to_float`). The reference truncates TF's float resize to uint8
  where `resize` rounds: a value here is the reference's or one grey level (2 / 255) above it."""

  size: int
  crop: bool = False

  def _one(self, image) -> np.ndarray:
    image = to_rgb(np.asarray(image, np.uint8))
    if not self.crop:
      return resize(image, self.size)
    shape = np.array(image.shape[:2], np.float32)
    shape = np.round(shape * (np.float32(self.size) / shape.min())).astype(int)
    image = resize(image, tuple(shape.tolist()))
    top, left = (shape - self.size) // 2
    return image[top : top + self.size, left : left + self.size]

  def __call__(self, images) -> np.ndarray:
    return to_float(np.stack([self._one(image) for image in images]))

  def preprocess_tf(self, image):
    """The reference's TensorFlow graph op: not here (raises, saying what to call instead)."""
    raise NotImplementedError(
      'PreprocessImages.preprocess_tf: TensorFlow preprocessing is not supported here (vit_jax '
      'runs without TensorFlow); call the instance on a list of uint8 images instead (NumPy).'
    )


def get_pp(*, tokenizer_name: str, vocab_path: str, max_len: int, size: int, crop: bool = False):
  """vision_transformer's `get_pp`: a function on one example's features (a dict) that returns a
  copy with 'image' (uint8 [H, W, 3]) preprocessed by PreprocessImages(size, crop) and 'text' (a
  str) tokenized into a new 'tokens' (int32 [max_len]) by the tokenizer `tokenizer_name`; a feature
  that is absent is left so, the others pass unchanged."""
  tokenizer = tokenizers.get_tokenizer(tokenizer_name)(vocab_path=vocab_path, max_len=max_len)
  images = PreprocessImages(size=size, crop=crop)

  def pp(features: dict) -> dict:
    features = dict(features)
    if 'image' in features:
      features['image'] = images([features['image']])[0]
    if 'text' in features:
      features['tokens'] = tokenizer([features['text']])[0]
    return features

  return pp
