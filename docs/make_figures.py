"""Regenerates the figures of docs/after_training.md from real runs: python docs/make_figures.py.

1. Writes a small image folder, runs/shapes_data/{train,test}/{circle,square,triangle}/*.png: one
   filled shape of random size, position and colour on a noisy background of another colour, 32x32
   px (seeded; 1,500 train and 100 test images per class).
2. Trains the offline default's plain ViT (CONFIG: 3 layers, width 128; Hugging Face's ViT takes
   it, and not the default's hybrid stem) on it at 32 px with 4x4 patches, at two learning rates
   (runs/shapes and runs/shapes_lr3e-3), with the same `python -m vit_jax.main` a user runs.
3. Runs the after-training tools on them as a user would (predict, visualize attention and curves,
   export hf) and copies the pictures into docs/.
Takes about 15 minutes on the 2-core development machine (two runs of 1,500 steps at ~190 img/s).
"""

import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join('runs', 'shapes_data')
CLASSES = ('circle', 'square', 'triangle')
SIZE = 32


def shape_image(rng: np.random.Generator, kind: str) -> Image.Image:
  """One shape of class `kind` on a noisy background; colours drawn apart so the shape stays
  visible."""
  background, colour = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
  while np.abs(background - colour).sum() < 200:
    colour = rng.integers(0, 256, 3)
  pixels = np.clip(background + rng.normal(0, 25, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
  image = Image.fromarray(pixels)
  radius = rng.uniform(4, 9)
  cx, cy = rng.uniform(radius + 1, SIZE - radius - 1, 2)
  box = (cx - radius, cy - radius, cx + radius, cy + radius)
  draw = ImageDraw.Draw(image)
  fill = tuple(int(c) for c in colour)
  if kind == 'circle':
    draw.ellipse(box, fill=fill)
  elif kind == 'square':
    draw.rectangle(box, fill=fill)
  else:
    angle = rng.uniform(0, 2 * np.pi)
    corners = [
      (
        cx + radius * np.cos(angle + k * 2 * np.pi / 3),
        cy + radius * np.sin(angle + k * 2 * np.pi / 3),
      )
      for k in range(3)
    ]
    draw.polygon(corners, fill=fill)
  return image


def write_shapes(
  root: str, *, train_per_class: int = 1500, test_per_class: int = 100, seed: int = 0
) -> None:
  rng = np.random.default_rng(seed)
  for split, n in (('train', train_per_class), ('test', test_per_class)):
    for kind in CLASSES:
      folder = os.path.join(root, split, kind)
      os.makedirs(folder, exist_ok=True)
      for i in range(n):
        shape_image(rng, kind).save(os.path.join(folder, f'{i:03d}.png'))


# The model: the main job's plain-ViT variant, which every export takes (`export hf` below).
CONFIG = 'configs/default.py:model=vit'


def run(*args: str) -> None:
  print('$', ' '.join(args), flush=True)
  subprocess.run([sys.executable, *args], check=True, cwd=ROOT)


def train(workdir: str, base_lr: float) -> None:
  run(
    '-m',
    'vit_jax.main',
    f'--config={CONFIG}',
    f'--workdir={workdir}',
    f'--config.dataset={DATA}',
    f'--config.image_size={SIZE}',
    '--config.model.patches.size=(4,4)',
    '--config.model.transformer.dropout_rate=0.0',
    '--config.total_steps=1500',
    '--config.batch_size=64',
    '--config.eval_batch_size=304',
    '--config.eval_every_steps=250',
    '--config.log_every_steps=50',
    '--config.checkpoint_every_steps=500',
    '--config.pp.flip=True',
    f'--config.schedule.base_lr={base_lr}',
    '--config.schedule.warmup_steps=100',
  )


def main() -> None:
  os.chdir(ROOT)
  if not os.path.isdir(DATA):
    write_shapes(DATA)
  train('runs/shapes', 1e-3)
  train('runs/shapes_lr3e-3', 3e-3)
  examples = [os.path.join(DATA, 'test', kind, '000.png') for kind in CLASSES]
  run('-m', 'vit_jax.predict', '--workdir=runs/shapes', '--top_k=2', *examples)
  run('-m', 'vit_jax.visualize', 'attention', '--workdir=runs/shapes', *examples)
  run(
    '-m',
    'vit_jax.visualize',
    'curves',
    'runs/shapes',
    'runs/shapes_lr3e-3',
    '--out=docs/curves.png',
  )
  run('-m', 'vit_jax.export', 'hf', '--workdir=runs/shapes', '--out=runs/shapes_hf')
  for kind in CLASSES:
    shutil.copy(f'runs/shapes/attention/{kind}_000_rollout.png', f'docs/attention_{kind}.png')
  shutil.copy('runs/shapes/attention/circle_000_heads.png', 'docs/attention_heads.png')


if __name__ == '__main__':
  main()
