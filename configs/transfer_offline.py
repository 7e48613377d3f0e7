"""The offline transfer suite: what `python -m launch.transfer` measures on a machine with no
internet, for the README's main job (a hybrid ViT on the digits at 16 px) or any model pretrained at
16 px.

  python -m launch.transfer --pretrained=runs/default --suite=configs/transfer_offline.py
      --out=runs/transfer

Tasks: the bundled digits (its train split cut 80/20 into train and validation, the test split
reported) and 'stripes', an image folder of noisy stripes in four orientations that `prepare()`
generates into runs/transfer_data/stripes (the same files on every machine). Few-shot: a ridge probe
on the digits' pre-logits.
"""

import os

import numpy as np

from vit_jax.configs import transfer

STRIPES = 'runs/transfer_data/stripes'
STRIPE_CLASSES = ('horizontal', 'vertical', 'diagonal', 'antidiagonal')

SUITE = transfer.suite(
  name='offline',
  tasks={
    'digits': transfer.task(
      dataset='sklearn_digits',
      train='train[:80%]',
      val='train[80%:]',
      test='test',
      steps=60,
      warmup=10,
      image_size=16,
      crop='resize',
      flip=False,
      lrs=(0.003, 0.03),
      batch_size=64,
      eval_batch_size=64,
    ),
    'stripes': transfer.task(
      dataset=STRIPES,
      train='train[:75%]',
      val='train[75%:]',
      test='test',
      steps=30,
      warmup=5,
      image_size=16,
      crop='resize',
      flip=False,
      lrs=(0.003, 0.03),
      seeds=2,
      batch_size=32,
      eval_batch_size=32,
    ),
  },
  fewshot={
    'datasets': 'sklearn_digits:train:test',
    'shots': (1, 5, 10),
    'seeds': 3,
    'l2_reg': 2.0**10,
    'image_size': 16,
  },
)
get_config, get_sweep, get_suite = transfer.suite_functions(SUITE)


def _stripes(orientation: int, rng) -> np.ndarray:
  y, x = np.mgrid[0:8, 0:8]
  phase = (y, x, x + y, x - y)[orientation] + rng.integers(0, 4)
  image = np.where(phase % 4 < 2, 200, 40) + rng.normal(0, 25, (8, 8))
  return np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def prepare(per_class=(40, 20)) -> None:
  """Writes STRIPES/{train,test}/<orientation>/<i>.png (seeded: the same files everywhere) unless it
  exists."""
  from PIL import Image  # noqa: PLC0415

  if os.path.isdir(STRIPES):
    return
  rng = np.random.default_rng(0)
  for split, n in zip(('train', 'test'), per_class):
    for label, name in enumerate(STRIPE_CLASSES):
      folder = os.path.join(STRIPES, split, name)
      os.makedirs(folder, exist_ok=True)
      for i in range(n):
        Image.fromarray(_stripes(label, rng)).save(os.path.join(folder, f'{i}.png'))
