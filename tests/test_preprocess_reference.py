"""vit_jax/preprocess.py: vision_transformer's `vit_jax.preprocess` path (get_tokenizer, the
tokenizer classes, PreprocessImages, get_pp) called with the reference's signatures, giving our
tokenizers' ids and the reference's image values, without TensorFlow."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import tiny

from vit_jax import models_lit, preprocess
from vit_jax.data import preprocess as data_preprocess
from vit_jax.data import tokenizers

VOCAB = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'a', 'photo', 'of', 'the', 'cat', 'dog', '.']
IDS = {t: i for i, t in enumerate(VOCAB)}
# A grey level in [-1, 1]: the reference truncates its float resize to uint8, ours rounds.
GREY_LEVEL = 2 / 255


@pytest.fixture
def vocab_path(tmp_path):
  path = tmp_path / 'vocab.txt'
  path.write_text('\n'.join(VOCAB) + '\n')
  return str(path)


@pytest.fixture
def sp_path(tmp_path):
  spm = pytest.importorskip('sentencepiece')
  corpus = tmp_path / 'corpus.txt'
  corpus.write_text('\n'.join(['a photo of a cat', 'a photo of a dog', 'the cat and the dog'] * 20))
  spm.SentencePieceTrainer.train(
    input=str(corpus),
    model_prefix=str(tmp_path / 'sp'),
    vocab_size=24,
    hard_vocab_limit=False,
    model_type='unigram',
    minloglevel=2,
  )
  return str(tmp_path / 'sp.model')


def tf_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """tf.image.resize(image, (height, width), 'bilinear') in NumPy, float64: half-pixel centres, no
  antialiasing, each source index clamped to the image."""

  def taps(out: int, size: int):
    x = (np.arange(out) + 0.5) * (size / out) - 0.5
    low = np.floor(x)
    frac = x - low
    low = low.astype(int)
    return np.clip(low, 0, size - 1), np.clip(low + 1, 0, size - 1), frac

  y0, y1, fy = taps(height, image.shape[0])
  x0, x1, fx = taps(width, image.shape[1])
  image = image.astype(np.float64)
  rows = image[y0] * (1 - fy)[:, None, None] + image[y1] * fy[:, None, None]
  return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def reference_images(images, size: int, crop: bool) -> np.ndarray:
  """The reference's PreprocessImages: resize (the shorter side to `size` with `crop`, then the
  central square), truncated to uint8, then x / 255 * 2 - 1."""
  out = []
  for image in images:
    h, w = image.shape[:2]
    if crop:
      ratio = np.float32(size) / np.float32(min(h, w))
      h, w = (int(np.round(np.float32(v) * ratio)) for v in (h, w))
      resized = tf_bilinear(image, h, w)
      top, left = (h - size) // 2, (w - size) // 2
      resized = resized[top : top + size, left : left + size]
    else:
      resized = tf_bilinear(image, size, size)
    out.append(resized.astype(np.uint8).astype(np.float32) / 255 * 2 - 1)
  return np.stack(out)


def test_get_tokenizer_gives_the_reference_classes_made_with_its_keywords(vocab_path, sp_path):
  bert = preprocess.get_tokenizer('bert')
  assert bert is preprocess.BertTokenizer is tokenizers.BertTokenizer
  tokenizer = bert(vocab_path=vocab_path, max_len=6)
  assert tokenizer.cls_token == IDS['[CLS]'] and dataclasses.is_dataclass(tokenizer)
  with pytest.raises(dataclasses.FrozenInstanceError):
    tokenizer.max_len = 8  # Frozen, as the reference's.
  got = tokenizer(['A photo of the CAT.', 'a dog', 'a photo of a photo of a cat'])
  assert got.dtype == np.int32 and got.shape == (3, 6)
  ids = lambda *words: [IDS[w] for w in words]
  assert got.tolist() == [
    ids('[CLS]', 'a', 'photo', 'of', 'the', 'cat'),
    ids('[CLS]', 'a', 'dog') + [0, 0, 0],
    ids('[CLS]', 'a', 'photo', 'of', 'a', 'photo'),
  ]
  np.testing.assert_array_equal(
    got,
    tokenizers.BertTokenizer(vocab_path, 6)(
      ['A photo of the CAT.', 'a dog', 'a photo of a photo of a cat']
    ),
  )

  sentencepiece = preprocess.get_tokenizer('sentencepiece')
  assert sentencepiece is preprocess.SentencepieceTokenizer is tokenizers.SentencepieceTokenizer
  tokenizer = sentencepiece(vocab_path=sp_path, max_len=8)
  texts = ['a cat', 'a photo of the cat and the dog and a photo of a dog']
  got = tokenizer(texts)
  assert got.dtype == np.int32 and got.shape == (2, 8)
  assert got[0, -1] == got[1, -1] == tokenizer.eos_token  # '</s>' last, also the padding.
  np.testing.assert_array_equal(got, tokenizers.get_tokenizer('sentencepiece')(sp_path, 8)(texts))
  with pytest.raises(ValueError, match="Unknown tokenizer 'gpt'; valid: bert, sentencepiece"):
    preprocess.get_tokenizer('gpt')


def test_the_tensorflow_graph_ops_say_what_to_call_instead(vocab_path):
  with pytest.raises(
    NotImplementedError,
    match=r'BertTokenizer.preprocess_tf: TensorFlow .* call '
    r'the instance on a list of texts',
  ):
    preprocess.BertTokenizer(vocab_path=vocab_path, max_len=4).preprocess_tf('a cat')
  with pytest.raises(NotImplementedError, match=r'call the instance on a list of uint8 images'):
    preprocess.PreprocessImages(size=8).preprocess_tf(np.zeros((8, 8, 3), np.uint8))


@pytest.mark.parametrize('crop', [False, True])
@pytest.mark.parametrize('shape', [(30, 40), (40, 30), (9, 13), (16, 16)])
def test_preprocess_images_gives_the_reference_values_within_one_grey_level(shape, crop):
  rng = np.random.default_rng(shape[0] * 100 + shape[1])
  images = [rng.integers(0, 256, (*shape, 3), np.uint8) for _ in range(2)]
  smooth = np.linspace(0, 255, shape[0] * shape[1] * 3).reshape(*shape, 3).astype(np.uint8)
  images.append(smooth)  # Up (9 x 13) and down (30 x 40) with both kinds of content.
  got = preprocess.PreprocessImages(size=16, crop=crop)(images)
  want = reference_images(images, 16, crop)
  assert got.dtype == np.float32 and got.shape == want.shape == (3, 16, 16, 3)
  assert got.min() >= -1 and got.max() <= 1
  diff = got - want
  assert diff.min() >= -1e-6 and diff.max() <= GREY_LEVEL + 1e-6  # Rounding, not truncation.
  assert np.abs(diff).mean() <= GREY_LEVEL  # About half the values are one grey level up.


def test_preprocess_images_crops_the_centre_of_the_shorter_side_resize():
  image = np.zeros((30, 40, 3), np.uint8)
  image[:, 20:] = 255  # Left half black, right half white.
  # The shorter side 30 -> 16, the other round(40 * 16 / 30) = 21; columns 2..17 of those 21 kept.
  got = preprocess.PreprocessImages(size=16, crop=True)([image])[0]
  want = data_preprocess.resize(image, (16, 21))[:, 2:18]
  np.testing.assert_array_equal(got, want.astype(np.float32) / 127.5 - 1)
  assert preprocess.PreprocessImages(16, True) == preprocess.PreprocessImages(size=16, crop=True)


def test_get_pp_preprocesses_one_example_and_adds_tokens(vocab_path):
  pp = preprocess.get_pp(tokenizer_name='bert', vocab_path=vocab_path, max_len=5, size=8, crop=True)
  image = np.random.default_rng(0).integers(0, 256, (12, 10, 3), np.uint8)
  features = {'image': image, 'text': 'a photo of the dog', 'label': 3}
  out = pp(features)
  assert set(out) == {'image', 'text', 'tokens', 'label'} and out['label'] == 3
  assert features['image'] is image and 'tokens' not in features  # A copy; the input is unchanged.
  np.testing.assert_array_equal(out['image'], preprocess.PreprocessImages(8, crop=True)([image])[0])
  assert out['tokens'].dtype == np.int32
  assert out['tokens'].tolist() == [IDS[w] for w in ('[CLS]', 'a', 'photo', 'of', 'the')]
  assert pp({'text': 'a cat'})['tokens'].tolist() == [IDS['[CLS]'], IDS['a'], IDS['cat'], 0, 0]
  assert set(pp({'image': image})) == {'image'}  # No text, no tokens.


def test_a_lit_models_get_pp_is_the_reference_get_pp_of_its_settings(sp_path):
  model = models_lit.LitModel(
    image=tiny.vit_config(),
    text_model='text_transformer',
    text={},
    pp={'tokenizer_name': 'sentencepiece', 'size': 16, 'max_len': 6},
    out_dim=(None, 32),
    model_name='tiny-lit',
  )
  example = {'image': np.full((20, 24, 3), 200, np.uint8), 'text': 'a photo of a cat'}
  ours = model.get_pp(crop=True, vocab_path=sp_path)(example)
  theirs = preprocess.get_pp(
    tokenizer_name='sentencepiece', vocab_path=sp_path, max_len=6, size=16, crop=True
  )(example)
  assert set(ours) == set(theirs)
  for key in ours:
    np.testing.assert_array_equal(ours[key], theirs[key])
  assert models_lit.PreprocessImages is preprocess.PreprocessImages


def test_the_reference_path_runs_without_importing_tensorflow(vocab_path):
  code = (
    'import sys\n'
    'import numpy as np\n'
    'from vit_jax import preprocess\n'
    f'pp = preprocess.get_pp(tokenizer_name="bert", vocab_path={vocab_path!r}, max_len=4, '
    'size=8)\n'
    'out = pp({"image": np.zeros((10, 12, 3), np.uint8), "text": "a cat"})\n'
    'print(out["image"].shape, out["tokens"].tolist(), "tensorflow" in sys.modules)\n'
  )
  done = subprocess.run(
    [sys.executable, '-c', code],
    cwd=tiny.REPO,
    env=tiny.main_env(),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.split('\n')[-2] == f'(8, 8, 3) {[IDS["[CLS]"], IDS["a"], IDS["cat"], 0]} False'
