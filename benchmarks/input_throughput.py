"""Training input pipeline throughput per CPU core, and the cores a target accelerator rate needs.

  python benchmarks/input_throughput.py [--num_images=256 --batch=32 --batches=20 --warmup=3 --threads=1,0]
      [--model_img_per_sec=X --host_cores=C]

Writes `--num_images` seeded JPEGs of ImageNet-like sizes and bytes (400..500 x 333..375 px, smooth random content
with texture and grain, quality 90: ~110 KB each, as ILSVRC-2012 train averages) as an image folder in a temp dir,
then reads them with the trainer's own pipeline, `vit_jax.input_pipeline.train_dataset` on an 'image_folder' config
from vit_jax/configs/common.py (decode JPEG, Inception crop, resize to 224, random flip, to float in [-1, 1], batch), as
numpy batches like the train loop. Each entry of --threads (0 = all cores) limits tf.data to that many threads
(private thread pool, one thread per op).

Prints one JSON object: per thread count, img/s (wall), the CPU cores the process kept busy (CPU seconds / wall
seconds) and img/s per busy core (images / CPU seconds; robust to other processes sharing the machine), then, per
target (--model_img_per_sec, or two reasoned defaults), the cores that rate needs at the first thread count's img/s
per busy core and whether it fits in half of the host's cores.
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np
import tensorflow as tf
from PIL import Image

from vit_jax.configs import common
from vit_jax import flops, input_pipeline, models

# Default targets: ViT-B/16 at 224 px trained at 40% MFU (bfloat16), i.e. devices x 0.4 x peak / train FLOPs.
# Host cores: an 8-GPU server has 2 CPUs of 56..96 cores; a TPU v4 VM host has 240 vCPUs (120 cores) for 4 chips.
TARGET_MODEL = 'ViT-B_16'
TARGET_MFU = 0.4
TARGETS = (
    ('8x H100 SXM, one host', 8, 'NVIDIA H100 80GB HBM3', (112, 192)),
    ('TPU v4 VM host, 4 chips', 4, 'TPU v4', (120, 120)),
)
INPUT_SHARE = 0.5  # Of a host's cores, what the input pipeline may take; the rest run the train loop and the OS.


def imagenet_like_jpeg(rng: np.random.Generator) -> Image.Image:
  """A random 400..500 x 333..375 RGB image: four octaves of bicubic-upsampled noise plus grain (~110 KB as JPEG)."""
  h, w = int(rng.uniform(333, 375)), int(rng.uniform(400, 500))
  pixels = np.full((h, w, 3), 128.0, np.float32)
  for cells, amplitude in ((3, 60), (12, 35), (48, 20), (160, 45)):
    coarse = rng.uniform(0, 255, (max(2, cells * h // w), cells, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
    pixels += amplitude * (smooth / 127.5 - 1)
  pixels += rng.normal(0, 24, pixels.shape)
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_image_folder(root: str, num_images: int, num_classes: int = 10, seed: int = 0) -> float:
  """Writes root/train/<class>/<i>.jpg; returns the mean file size in KB."""
  rng = np.random.default_rng(seed)
  total = 0
  for i in range(num_images):
    folder = os.path.join(root, 'train', f'class_{i % num_classes}')
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f'{i}.jpg')
    imagenet_like_jpeg(rng).save(path, 'JPEG', quality=90)
    total += os.path.getsize(path)
  return total / num_images / 1024


def make_config(root: str, num_images: int, image_size: int):
  config = common.get_config()
  config.dataset = input_pipeline.IMAGE_FOLDER
  config.image_folder = root
  config.image_size = image_size
  config.shuffle_buffer = num_images
  return config


def _cpu_seconds() -> float:
  times = os.times()
  return times.user + times.system


def measure(config, threads: int, batch: int, batches: int, warmup: int) -> dict:
  """img/s of the trainer's train_dataset with tf.data limited to `threads` threads."""
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  ds = input_pipeline.train_dataset(config, local_batch_size=batch).with_options(options)
  batches_iter = ds.as_numpy_iterator()
  for _ in range(warmup):
    next(batches_iter)
  cpu, start = _cpu_seconds(), time.perf_counter()
  for _ in range(batches):
    next(batches_iter)
  wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
  images = batch * batches
  return {'threads': threads, 'images': images, 'img_per_sec': images / wall, 'cores_busy': cpu / wall,
          'img_per_sec_per_busy_core': images / cpu}


def default_targets() -> list[dict]:
  """The TARGETS rows: ViT-B/16 img/s at 40% MFU on each machine, and its host's cores."""
  train_flops = flops.train_flops(models.get_model_config(TARGET_MODEL), 224, 1000)
  rows = []
  for name, devices, kind, cores in TARGETS:
    rate = devices * TARGET_MFU * flops.peak_tflops(kind, 'bfloat16') * 1e12 / train_flops
    rows.append({'target': name, 'basis': f'{TARGET_MODEL} 224 px, {devices} x {TARGET_MFU:.0%} MFU bf16 on {kind}',
                 'img_per_sec': rate, 'host_cores': cores})
  return rows


def cores_needed(target: dict, per_core: float) -> dict:
  """How many cores `target['img_per_sec']` takes at `per_core` img/s, and whether the host has them to spare.

  A host can feed the rate when the input pipeline needs at most INPUT_SHARE of its cores (smallest host of the
  range: 'yes'; only the largest: 'largest hosts only').
  """
  needed = target['img_per_sec'] / per_core
  low, high = target['host_cores']
  verdict = 'yes' if needed <= INPUT_SHARE * low else 'largest hosts only' if needed <= INPUT_SHARE * high else 'no'
  return {**target, 'cores_needed': needed, 'fraction_of_host_cores': [needed / high, needed / low],
          'host_can_feed': verdict}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--num_images', type=int, default=256)
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--batches', type=int, default=20, help='Timed batches per thread count.')
  parser.add_argument('--warmup', type=int, default=3, help='Untimed batches first.')
  parser.add_argument('--threads', default='1,0', help='Comma-separated tf.data thread counts; 0 = all cores.')
  parser.add_argument('--model_img_per_sec', type=float, default=None, help='A target rate instead of the defaults.')
  parser.add_argument('--host_cores', type=int, default=None, help='Physical cores of that target host.')
  args = parser.parse_args(argv)
  threads = [int(t) or os.cpu_count() for t in args.threads.split(',')]
  with tempfile.TemporaryDirectory() as root:
    kb = write_image_folder(root, args.num_images)
    config = make_config(root, args.num_images, args.image_size)
    runs = [measure(config, t, args.batch, args.batches, args.warmup) for t in threads]
  per_core = runs[0]['img_per_sec_per_busy_core']
  targets = default_targets()
  if args.model_img_per_sec is not None:
    cores = args.host_cores or os.cpu_count()
    targets = [{'target': 'given', 'basis': '--model_img_per_sec', 'img_per_sec': args.model_img_per_sec,
                'host_cores': (cores, cores)}]
  print(json.dumps({'cpu_count': os.cpu_count(), 'num_images': args.num_images, 'mean_jpeg_kb': kb,
                    'image_size': args.image_size, 'runs': runs, 'per_core_basis': f'threads={threads[0]}',
                    'targets': [cores_needed(t, per_core) for t in targets]}))


if __name__ == '__main__':
  main()
