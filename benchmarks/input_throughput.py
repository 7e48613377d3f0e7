"""Training input pipeline against a plain tf.data chain doing the same work, and the host CPUs each
accelerator needs.

  python benchmarks/input_throughput.py [--threads=2 --batches=20]
      [--only=digits,cifar_png_224,...] [--markdown]

Each workload runs twice in the same process, one after the other on the same data: `tf.data` (a
plain chain: read, decode, the same crop and resize, flip, batch; `--threads` threads, intra-op
parallelism 1) and `ours` (`vit_jax.data.input_pipeline.train_dataset` with
`config.input_threads=--threads`). Figures: CPU milliseconds per image (this process's CPU seconds,
all threads, over the images: robust to other load on a shared machine) and images per second.
`ratio` is tf.data's CPU per image over ours (> 1: ours is cheaper).

Workloads (generated here, seeded):
  digits              scikit-learn's 8x8 digits as the TFDS dataset `sklearn_digits` (PNG records in
                      ArrayRecord), the main job's preprocessing (8 px, no crop, no flip). tf.data
                      gets the same PNG bytes from memory; ours reads the ArrayRecord split (decoded
                      once into memory: config.input_cache_mib).
  cifar_png_224       32x32 PNG files (an image folder), Inception crop and flip at 224 px
                      (fine-tuning on CIFAR).
  imagenet_jpeg_224   JPEGs of ImageNet's sizes and bytes (400-500 x 333-375 px, ~105 KB), Inception
                      crop and flip at 224 px; `_ra` adds RandAugment(2, 15) (AugReg's medium
                      levels; tf.data: keras_cv's RandAugment with 2 ops at magnitude 0.5, its
                      nearest equivalent: skipped without keras-cv).
  shrunk256_jpeg_224  the same JPEGs stored at shorter side 256 (vit_jax/tools/shrink_images.py),
                      both pipelines.
Then the host budget: for ViT-S/16, B/16 and L/16 at 224 px trained at 40% MFU (bfloat16), the vCPUs
per host that feeding its accelerators takes at our measured CPU per image (this VM's vCPUs),
against what the hosts have. Prints one JSON object (and with --markdown the tables for
benchmarks/RESULTS.md).
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(
  0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests')
)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
import tensorflow as tf  # noqa: E402  (the baseline; vit_jax never imports it to train)

from vit_jax import models  # noqa: E402
from vit_jax.configs import augmentation, common, default  # noqa: E402
from vit_jax.data import input_pipeline, sources
from vit_jax.models import flops
from vit_jax.tools import shrink_images  # noqa: E402

MFU = 0.4
BUDGET_MODELS = ('ViT-S_16', 'ViT-B_16', 'ViT-L_16')
# (machine, accelerators per host, device kind for the peak, vCPUs per host).
HOSTS = (
  ('TPU v4 (4 chips)', 4, 'TPU v4', 240),
  ('TPU v5e (8 chips)', 8, 'TPU v5 lite', 224),
  ('TPU v5p (4 chips)', 4, 'TPU v5p', 208),
  ('TPU v6e (4 chips)', 4, 'TPU v6 lite', 180),
  ('8x H100 (a3-highgpu-8g)', 8, 'H100', 208),
  ('8x H200 (a3-ultragpu-8g)', 8, 'H200', 224),
)
# Of a host's vCPUs, what the input pipeline may take; the rest run the loop, the OS, the runtime.
INPUT_SHARE = 0.5


def _cpu() -> float:
  return time.process_time()  # Every thread of this process, at a fine resolution.


def measure(batches, batch: int, count: int, warmup: int) -> dict:
  it = iter(batches)
  for _ in range(warmup):
    next(it)
  cpu = _cpu()
  start = time.perf_counter()
  for _ in range(count):
    next(it)
  wall, cpu = time.perf_counter() - start, _cpu() - cpu
  return {'cpu_ms_per_image': 1e3 * cpu / (batch * count), 'img_per_sec': batch * count / wall}


def _tf_options(threads: int) -> tf.data.Options:
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  return options


def tf_chain(
  data: tf.data.Dataset,
  decode,
  size: int,
  batch: int,
  threads: int,
  *,
  crop: bool,
  flip: bool,
  randaugment=None,
) -> tf.data.Dataset:
  """The plain chain: decode, an Inception box (or none), bilinear resize, flip, [RandAugment],
  uint8, batch."""

  def prepare(item, seed):
    image = decode(item)
    if crop:
      begin, box, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros([1, 0, 4]),
        seed=seed,
        area_range=(0.05, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3),
        min_object_covered=0.0,
        use_image_if_no_bounding_boxes=True,
      )
      image = tf.slice(image, begin, box)
    image = tf.image.resize(image, [size, size])
    if flip:
      image = tf.image.stateless_random_flip_left_right(image, seed)
    if randaugment is not None:
      image = randaugment(image)
    return tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)

  seeds = tf.data.Dataset.range(1 << 62).map(lambda i: tf.stack([i, i]))
  ds = tf.data.Dataset.zip((data.repeat(), seeds)).map(prepare, num_parallel_calls=threads)
  return (
    ds.batch(batch, drop_remainder=True)
    .prefetch(2)
    .with_options(_tf_options(threads))
    .as_numpy_iterator()
  )


def _files(root: str, ext: str) -> tf.data.Dataset:
  files = sorted(tf.io.gfile.glob(os.path.join(root, 'train', '*', f'*.{ext}')))
  np.random.default_rng(0).shuffle(files)
  return tf.data.Dataset.from_tensor_slices(files)


def imagenet_like(rng: np.random.Generator) -> Image.Image:
  """A random 400..500 x 333..375 RGB image: four octaves of bicubic-upsampled noise plus grain
  (~105 KB as JPEG)."""
  h = int(rng.uniform(333, 375))
  w = int(rng.uniform(400, 500))
  pixels = np.full((h, w, 3), 128.0, np.float32)
  for cells, amplitude in ((3, 60), (12, 35), (48, 20), (160, 45)):
    coarse = rng.uniform(0, 255, (max(2, cells * h // w), cells, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
    pixels += amplitude * (smooth / 127.5 - 1)
  pixels += rng.normal(0, 24, pixels.shape)
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_folder(root: str, count: int, make, ext: str, *, classes: int = 10) -> float:
  """root/train/<class>/<i>.<ext> of `count` images from make(rng); the mean file size in KB."""
  rng = np.random.default_rng(0)
  total = 0
  for i in range(count):
    folder = os.path.join(root, 'train', f'class_{i % classes}')
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f'{i}.{ext}')
    make(rng).save(path, **({'quality': 90} if ext == 'jpg' else {}))
    total += os.path.getsize(path)
  return total / count / 1024


def folder_config(root: str, size: int, threads: int, *, randaugment: bool = False):
  config = common.get_config()
  config.update(dataset=root, image_size=size, input_threads=threads, eval_split='train[:1]')
  return augmentation.apply_level(config, 'medium1') if randaugment else config


def _keras_cv_randaugment():
  try:
    import keras_cv  # noqa: PLC0415
  except ImportError:
    return None
  return keras_cv.layers.RandAugment(value_range=(0, 255), augmentations_per_image=2, magnitude=0.5)


def workloads(tmp: str, args):
  """(name, note, tf.data iterator factory, our config, batch) per workload of the module doc."""
  b = args.batch
  t = args.threads
  data_dir = os.path.join(tmp, 'tfds')
  digits = default.get_config()
  digits.update(tfds_data_dir=data_dir, input_threads=t)
  records = sources.open_split(digits, 'train').records
  pngs = tf.data.Dataset.from_tensor_slices([records[i]['image'] for i in range(len(records))])
  yield (
    'digits',
    '8x8 PNG, no crop',
    lambda: tf_chain(
      pngs, lambda x: tf.io.decode_png(x, channels=3), 8, 128, t, crop=False, flip=False
    ),
    digits,
    128,
  )
  cifar = os.path.join(tmp, 'cifar')
  write_folder(
    cifar,
    args.num_images * 4,
    lambda rng: Image.fromarray(rng.integers(0, 255, (32, 32, 3)).astype(np.uint8)),
    'png',
  )
  read_png = lambda p: tf.io.decode_png(tf.io.read_file(p), channels=3)
  yield (
    'cifar_png_224',
    '32x32 PNG -> 224, crop + flip',
    lambda: tf_chain(_files(cifar, 'png'), read_png, 224, b, t, crop=True, flip=True),
    folder_config(cifar, 224, t),
    b,
  )
  jpegs = os.path.join(tmp, 'imagenet')
  kb = write_folder(jpegs, args.num_images, imagenet_like, 'jpg')
  read_jpeg = lambda p: tf.io.decode_jpeg(tf.io.read_file(p), channels=3)
  yield (
    'imagenet_jpeg_224',
    f'~{kb:.0f} KB JPEG -> 224, crop + flip',
    lambda: tf_chain(_files(jpegs, 'jpg'), read_jpeg, 224, b, t, crop=True, flip=True),
    folder_config(jpegs, 224, t),
    b,
  )
  ra = _keras_cv_randaugment()
  if ra is not None:
    yield (
      'imagenet_jpeg_224_ra',
      'the same + RandAugment(2, 15)',
      lambda: tf_chain(
        _files(jpegs, 'jpg'), read_jpeg, 224, b, t, crop=True, flip=True, randaugment=ra
      ),
      folder_config(jpegs, 224, t, randaugment=True),
      b,
    )
  shrunk = os.path.join(tmp, 'shrunk')
  stats = shrink_images.run(
    shrink_images._folder_items(jpegs),
    shrunk,
    max_side=256,
    quality=90,  # pylint: disable=protected-access
    threads=os.cpu_count() or 1,
  )
  yield (
    'shrunk256_jpeg_224',
    f'shorter side 256 (~{stats["bytes_out"] / stats["images"] / 1024:.0f} KB) -> 224',
    lambda: tf_chain(_files(shrunk, 'jpg'), read_jpeg, 224, b, t, crop=True, flip=True),
    folder_config(shrunk, 224, t),
    b,
  )


def resume_times(num_examples: int, batch: int) -> dict:
  """Wall seconds to the first batch at step 0 and at the last step of the first epoch (ArrayRecord
  TFDS data, not decoded ahead: config.input_cache_mib=0)."""
  # (the tests' helper that prepares a TFDS dataset for real)
  import tiny  # noqa: PLC0415

  with tempfile.TemporaryDirectory() as data_dir:
    tiny.fake_tfds('cifar10', data_dir, {'train': num_examples, 'test': 10})
    config = common.get_config()
    config.update(dataset='cifar10', tfds_data_dir=data_dir, image_size=32, input_cache_mib=0)
    # Opens the dataset once, as the trainer does before its first batch.
    input_pipeline.get_info(config)
    out = {'examples': num_examples, 'batch': batch}
    for name, step in (('step_0', 0), ('end_of_epoch_1', num_examples // batch - 1)):
      start = time.perf_counter()
      next(iter(input_pipeline.train_dataset(config, local_batch_size=batch, start_step=step)))
      out[f'{name}_seconds'] = time.perf_counter() - start
      out[f'{name}_step'] = step
  return out


def host_budget(cpu_ms: dict[str, float]) -> list[dict]:
  """vCPUs per host that each model's 40% MFU rate needs at `cpu_ms` ({preprocessing: CPU ms per
  image})."""
  rows = []
  for model in BUDGET_MODELS:
    train_flops = flops.train_flops(models.get_model_config(model), 224, 1000)
    for machine, chips, kind, vcpus in HOSTS:
      rate = chips * MFU * flops.peak_tflops(kind, 'bfloat16') * 1e12 / train_flops
      row = {'model': model, 'host': machine, 'img_per_sec_per_host': rate, 'host_vcpus': vcpus}
      for name, ms in cpu_ms.items():
        row[f'vcpus_{name}'] = rate * ms / 1e3
      rows.append(row)
  return rows


def markdown(result) -> str:
  lines = [
    '| workload | what | tf.data CPU ms/img | ours CPU '
    'ms/img | ratio | tf.data img/s | ours img/s |',
    '|---|---|---:|---:|---:|---:|---:|',
  ]
  for r in result['rows']:
    lines.append(
      f'| {r["name"]} | {r["note"]} | {r["tf.data"]["cpu_ms_per_image"]:.3f} | '
      f'{r["ours"]["cpu_ms_per_image"]:.3f} | {r["ratio"]:.2f} | {r["tf.data"]["img_per_sec"]:.0f} '
      f'| {r["ours"]["img_per_sec"]:.0f} |'
    )
  kinds = [k[len('vcpus_') :] for k in result['budget'][0] if k.startswith('vcpus_')]
  lines += [
    '',
    '| model | host | img/s per host at 40% MFU | host vCPUs | '
    + ' | '.join(f'vCPUs needed, {k}' for k in kinds)
    + ' |',
    '|---|---|---:|---:|' + '---:|' * len(kinds),
  ]
  for r in result['budget']:
    cells = []
    for k in kinds:
      need = r[f'vcpus_{k}']
      mark = '' if need <= INPUT_SHARE * r['host_vcpus'] else ' **input-bound**'
      cells.append(f'{need:.0f}{mark}')
    lines.append(
      f'| {r["model"]} | {r["host"]} | {r["img_per_sec_per_host"]:,.0f} | {r["host_vcpus"]} | '
      + ' | '.join(cells)
      + ' |'
    )
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
    '--num_images', type=int, default=256, help='ImageNet-like JPEGs (4x as many 32x32 PNGs).'
  )
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--batches', type=int, default=20, help='Timed batches per pipeline.')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--only', default='', help='Comma-separated workload names (default: all).')
  parser.add_argument('--markdown', action='store_true', help='Also print the tables as Markdown.')
  parser.add_argument(
    '--resume_examples',
    type=int,
    default=0,
    help='Also time the first batch at step 0 and at the end of the first epoch of a TFDS dataset '
    'of this many examples (0: skip).',
  )
  args = parser.parse_args(argv)
  only = {n for n in args.only.split(',') if n}
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for name, note, baseline, config, batch in workloads(tmp, args):
      if only and name not in only:
        continue
      # The one-off work (a folder's decodability check) outside the timing.
      input_pipeline.get_info(config)
      theirs = measure(baseline(), batch, args.batches, args.warmup)
      ours = measure(
        input_pipeline.train_dataset(config, local_batch_size=batch),
        batch,
        args.batches,
        args.warmup,
      )
      rows.append(
        {
          'name': name,
          'note': note,
          'tf.data': theirs,
          'ours': ours,
          'ratio': theirs['cpu_ms_per_image'] / ours['cpu_ms_per_image'],
        }
      )
      print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  cpu = {r['name']: r['ours']['cpu_ms_per_image'] for r in rows}
  kinds = {
    k: cpu[v]
    for k, v in (
      ('plain', 'imagenet_jpeg_224'),
      ('randaugment', 'imagenet_jpeg_224_ra'),
      ('shrunk256', 'shrunk256_jpeg_224'),
    )
    if v in cpu
  }
  result = {
    'threads': args.threads,
    'load_average': os.getloadavg(),
    'rows': rows,
    'budget': host_budget(kinds) if kinds else [],
  }
  if args.resume_examples:
    result['resume'] = resume_times(args.resume_examples, args.batch)
  print(json.dumps(result))
  if args.markdown:
    print(markdown(result))


if __name__ == '__main__':
  main()
