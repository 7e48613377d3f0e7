"""Training input pipeline: CPU time per image against a plain baseline, RandAugment's extra cost, resume time.

  python benchmarks/input_throughput.py [--num_images=256 --batch=32 --batches=24 --threads=2 --processes=0]
      [--resume_examples=20000] [--model_img_per_sec=X --host_cores=C]

Writes `--num_images` seeded JPEGs of ImageNet-like sizes and bytes (400..500 x 333..375 px, smooth random content
with texture and grain, quality 90: ~105 KB each, as ILSVRC-2012 train averages) as an image folder in a temp dir,
each under `--copies` names (hard links), so the dataset has a realistic length for the shuffle.
On the same files, in the same run, it measures CPU seconds per image (this process and any worker processes,
images / CPU seconds, robust to other load on the machine) of:
  baseline     a plain tf.data chain with `--threads` threads: read, decode the whole JPEG, sample an Inception box
               (tf.image.sample_distorted_bounding_box), slice, bilinear resize to 224, random flip, scale to
               [-1, 1], batch (google-research/vision_transformer's train preprocessing);
  ours         the trainer's own `vit_jax.input_pipeline.train_dataset` (crop + flip, 224 px, uint8 batches: the
               scaling to [-1, 1] happens on the accelerator);
  ours + RA    the same with RandAugment(2, 15) (AugReg's medium levels).
The ratio baseline / ours is the speed-up in CPU per image. Then, on an ArrayRecord TFDS dataset of
`--resume_examples` examples built here, the wall time from `train_dataset(start_step=s)` to its first batch, for
s = 0 and for the last step of the first epoch: resuming reads nothing before the step, so the two are alike.
Finally, per target (--model_img_per_sec, or two reasoned defaults), the cores that rate needs at our CPU per image.
Prints one JSON object.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import psutil
import tensorflow as tf
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tests'))
from vit_jax import flops, input_pipeline, models  # noqa: E402  pylint: disable=g-import-not-at-top
from vit_jax.configs import augmentation, common  # noqa: E402  pylint: disable=g-import-not-at-top

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
  """A random 400..500 x 333..375 RGB image: four octaves of bicubic-upsampled noise plus grain (~105 KB as JPEG)."""
  h, w = int(rng.uniform(333, 375)), int(rng.uniform(400, 500))
  pixels = np.full((h, w, 3), 128.0, np.float32)
  for cells, amplitude in ((3, 60), (12, 35), (48, 20), (160, 45)):
    coarse = rng.uniform(0, 255, (max(2, cells * h // w), cells, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
    pixels += amplitude * (smooth / 127.5 - 1)
  pixels += rng.normal(0, 24, pixels.shape)
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_image_folder(root: str, num_images: int, num_classes: int = 10, seed: int = 0, copies: int = 1) -> float:
  """Writes root/train/<class>/<i>.jpg, each of the `num_images` distinct files under `copies` names (hard links: a
  dataset of realistic length at little cost); returns the mean file size in KB."""
  rng = np.random.default_rng(seed)
  total = 0
  for i in range(num_images):
    folder = os.path.join(root, 'train', f'class_{i % num_classes}')
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f'{i}.jpg')
    imagenet_like_jpeg(rng).save(path, 'JPEG', quality=90)
    total += os.path.getsize(path)
    for c in range(1, copies):
      os.link(path, os.path.join(folder, f'{i}_{c}.jpg'))
  return total / num_images / 1024


def make_config(root: str, image_size: int, threads: int, processes: int):
  config = common.get_config()
  config.dataset = input_pipeline.IMAGE_FOLDER
  config.image_folder = root
  config.image_size = image_size
  config.input_threads = threads
  config.input_processes = processes
  config.eval_split = 'train[:1]'  # The folder has no test split; nothing here evaluates.
  return config


def _cpu_seconds() -> float:
  """CPU seconds of this process and of its (living and finished) child processes."""
  me = psutil.Process()
  total = sum(me.cpu_times()[:2]) + sum(me.cpu_times()[2:4])
  for child in me.children(recursive=True):
    try:
      total += sum(child.cpu_times()[:2])
    except psutil.NoSuchProcess:
      pass
  return total


def _measure(batches_iter, batch: int, batches: int, warmup: int) -> dict:
  for _ in range(warmup):
    next(batches_iter)
  cpu, start = _cpu_seconds(), time.perf_counter()
  for _ in range(batches):
    next(batches_iter)
  wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
  images = batch * batches
  return {'images': images, 'img_per_sec': images / wall, 'cpu_ms_per_image': 1e3 * cpu / images,
          'cores_busy': cpu / wall}


def baseline_dataset(root: str, size: int, batch: int, threads: int) -> tf.data.Dataset:
  """The plain tf.data chain of the module doc."""
  files = sorted(tf.io.gfile.glob(os.path.join(root, 'train', '*', '*.jpg')))
  np.random.default_rng(0).shuffle(files)

  def prepare(path, seed):
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), seed=seed, area_range=(0.05, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0.0, use_image_if_no_bounding_boxes=True)
    image = tf.image.resize(tf.slice(image, begin, crop), [size, size])
    image = tf.image.stateless_random_flip_left_right(image, seed)
    return image / 127.5 - 1.0

  seeds = tf.data.Dataset.range(1 << 62).map(lambda i: tf.stack([i, i]))
  ds = tf.data.Dataset.zip((tf.data.Dataset.from_tensor_slices(files).repeat(), seeds))
  ds = ds.map(prepare, num_parallel_calls=threads).batch(batch, drop_remainder=True)
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  return ds.prefetch(2).with_options(options)


def resume_times(num_examples: int, batch: int) -> dict:
  """Wall seconds to the first batch at step 0 and at the last step of the first epoch (ArrayRecord TFDS data)."""
  import tiny  # pylint: disable=g-import-not-at-top  (the tests' helper that prepares a TFDS dataset for real)
  with tempfile.TemporaryDirectory() as data_dir:
    tiny.fake_tfds('cifar10', data_dir, {'train': num_examples, 'test': 10})
    config = common.get_config()
    config.dataset, config.tfds_data_dir, config.image_size = 'cifar10', data_dir, 32
    input_pipeline.get_info(config)  # Opens the dataset once, as the trainer does before its first batch.
    out = {'examples': num_examples, 'batch': batch}
    for name, step in (('step_0', 0), ('end_of_epoch_1', num_examples // batch - 1)):
      start = time.perf_counter()
      next(iter(input_pipeline.train_dataset(config, local_batch_size=batch, start_step=step)))
      out[f'{name}_seconds'] = time.perf_counter() - start
      out[f'{name}_step'] = step
  return out


def default_targets() -> list[dict]:
  """The TARGETS rows: ViT-B/16 img/s at 40% MFU on each machine, and its host's cores."""
  train_flops = flops.train_flops(models.get_model_config(TARGET_MODEL), 224, 1000)
  rows = []
  for name, devices, kind, cores in TARGETS:
    rate = devices * TARGET_MFU * flops.peak_tflops(kind, 'bfloat16') * 1e12 / train_flops
    rows.append({'target': name, 'basis': f'{TARGET_MODEL} 224 px, {devices} x {TARGET_MFU:.0%} MFU bf16 on {kind}',
                 'img_per_sec': rate, 'host_cores': cores})
  return rows


def cores_needed(target: dict, cpu_ms_per_image: float) -> dict:
  """How many cores `target['img_per_sec']` takes, and whether the host has them to spare (INPUT_SHARE)."""
  needed = target['img_per_sec'] * cpu_ms_per_image / 1e3
  low, high = target['host_cores']
  verdict = 'yes' if needed <= INPUT_SHARE * low else 'largest hosts only' if needed <= INPUT_SHARE * high else 'no'
  return {**target, 'cores_needed': needed, 'fraction_of_host_cores': [needed / high, needed / low],
          'host_can_feed': verdict}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--num_images', type=int, default=256)
  parser.add_argument('--copies', type=int, default=16, help='Names per distinct file (the dataset\'s length).')
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--batches', type=int, default=24, help='Timed batches per pipeline.')
  parser.add_argument('--warmup', type=int, default=3, help='Untimed batches first.')
  parser.add_argument('--threads', type=int, default=2, help='Threads of every pipeline.')
  parser.add_argument('--processes', type=int, default=0, help='Worker processes of ours (config.input_processes).')
  parser.add_argument('--resume_examples', type=int, default=20_000, help='0 skips the resume measurement.')
  parser.add_argument('--model_img_per_sec', type=float, default=None, help='A target rate instead of the defaults.')
  parser.add_argument('--host_cores', type=int, default=None, help='Physical cores of that target host.')
  args = parser.parse_args(argv)
  runs = {}
  with tempfile.TemporaryDirectory() as root:
    kb = write_image_folder(root, args.num_images, copies=args.copies)
    config = make_config(root, args.image_size, args.threads, args.processes)
    input_pipeline.get_info(config)  # The folder's one-off decodability check, outside the timing.
    timed = lambda ds: _measure(iter(ds), args.batch, args.batches, args.warmup)
    runs['baseline'] = timed(baseline_dataset(root, args.image_size, args.batch, args.threads).as_numpy_iterator())
    runs['ours'] = timed(input_pipeline.train_dataset(config, local_batch_size=args.batch))
    runs['ours_randaugment_2_15'] = timed(input_pipeline.train_dataset(
        augmentation.apply_level(config, 'medium1'), local_batch_size=args.batch))
  ours = runs['ours']['cpu_ms_per_image']
  result = {'cpu_count': os.cpu_count(), 'num_images': args.num_images, 'mean_jpeg_kb': kb,
            'image_size': args.image_size, 'threads': args.threads, 'processes': args.processes, 'runs': runs,
            'cpu_ratio_baseline_over_ours': runs['baseline']['cpu_ms_per_image'] / ours,
            'randaugment_extra_cpu_ms_per_image': runs['ours_randaugment_2_15']['cpu_ms_per_image'] - ours}
  if args.resume_examples:
    result['resume'] = resume_times(args.resume_examples, args.batch)
  targets = default_targets()
  if args.model_img_per_sec is not None:
    cores = args.host_cores or os.cpu_count()
    targets = [{'target': 'given', 'basis': '--model_img_per_sec', 'img_per_sec': args.model_img_per_sec,
                'host_cores': (cores, cores)}]
  result['targets'] = [cores_needed(t, ours) for t in targets]
  print(json.dumps(result))


if __name__ == '__main__':
  main()
