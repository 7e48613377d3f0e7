"""Prepare a dataset for a cheaper input pipeline: its images re-encoded with the shorter side at
most --max_side.

  python -m vit_jax.tools.shrink_images --src=DIR --dst=DIR2 [--max_side=256] [--quality=90]
  python -m vit_jax.tools.shrink_images --tfds=imagenet2012 --data_dir=$TFDS
      --splits=train,validation --dst=DIR2

Decoding a JPEG costs about its pixel count, and training crops a 224 px view out of it anyway, so
storing images at a bounded shorter side (as FFCV does for ImageNet) cuts the CPU per image: see
benchmarks/RESULTS.md for the measured effect. DST is an image folder
(DST/<split>/<class>/<name>.jpg) that `config.dataset=DST` trains on; a TFDS split's classes come
from its label names. Images already small enough are copied as they are (no re-encoding); the
others are resized with an antialiased filter (PIL's) and written as JPEG at --quality. Grey, CMYK
and PNG images become RGB JPEGs. Files that cannot be decoded are listed and left out. Runs in
--threads threads; prints a summary line.
"""

import argparse
import concurrent.futures
import io as bytes_io
import os
import sys

from PIL import Image

from vit_jax import cli, io


def shrink(data: bytes, max_side: int, quality: int) -> bytes:
  """The image's bytes as they should be stored: as they are when its shorter side is at most
  `max_side` and it is a JPEG, else re-encoded as an RGB JPEG with the shorter side `max_side` (or
  as it was, if smaller)."""
  with Image.open(bytes_io.BytesIO(data)) as image:
    short = min(image.size)
    if short <= max_side and image.format == 'JPEG' and image.mode == 'RGB':
      return data
    image = image.convert('RGB')
    if short > max_side:
      scale = max_side / short
      image = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.BILINEAR,
        reducing_gap=3.0,
      )
    out = bytes_io.BytesIO()
    image.save(out, format='JPEG', quality=quality)
    return out.getvalue()


def _folder_items(src: str):
  """(relative output path without extension, reader) of every image of an image folder."""
  for root, _, names in io.walk(src):
    for name in names:
      if io.is_image_file(name):
        path = io.join(root, name)
        relative = path[len(src.rstrip('/')) + 1 :]
        yield os.path.splitext(relative)[0], (lambda p=path: io.read_bytes(p))


def _tfds_items(name: str, data_dir: str | None, splits: list[str]):
  from vit_jax.configs import common  # noqa: PLC0415
  from vit_jax.data import sources  # noqa: PLC0415

  config = common.get_config()
  config.dataset = name
  config.tfds_data_dir = data_dir
  for split in splits:
    opened = sources.open_split(config, split, download=False)
    names = opened.class_names
    for i in range(len(opened.records)):
      yield (
        f'{split}/{names[int(opened.records[i]["label"])]}/{i:08d}',
        (lambda s=opened, j=i: s.records[j]['image']),
      )


def run(items, dst: str, *, max_side: int, quality: int, threads: int) -> dict:
  """Writes every (name, reader) of `items` as DST/<name>.jpg; returns counts and bytes before and
  after."""
  stats = {'images': 0, 'kept': 0, 'bytes_in': 0, 'bytes_out': 0, 'failed': []}

  def one(item):
    name, read = item
    data = read()
    try:
      out = shrink(data, max_side, quality)
    except Exception as e:  # pylint: disable=broad-except  (listed and left out, as training would)
      return name, len(data), None, f'{type(e).__name__}: {e}'
    io.write_bytes(io.join(dst, f'{name}.jpg'), out)
    return name, len(data), out, None

  with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
    for name, size, out, error in pool.map(one, items):
      if error:
        stats['failed'].append(f'{name}: {error}')
        continue
      stats['images'] += 1
      stats['bytes_in'] += size
      stats['bytes_out'] += len(out)
  return stats


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m vit_jax.tools.shrink_images',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--src', help='An image folder (local or gs://).')
  source.add_argument('--tfds', help='A prepared TFDS dataset (ArrayRecord), e.g. imagenet2012.')
  parser.add_argument('--data_dir', help="The TFDS data_dir of --tfds (default: TFDS's).")
  parser.add_argument(
    '--splits', default='train', help='Splits of --tfds, comma separated (default: train).'
  )
  parser.add_argument('--dst', required=True, help='The image folder to write (local or gs://).')
  parser.add_argument(
    '--max_side', type=int, default=256, help='Largest shorter side kept (default 256).'
  )
  parser.add_argument(
    '--quality', type=int, default=90, help='JPEG quality of re-encoded images (default 90).'
  )
  parser.add_argument('--threads', type=int, default=os.cpu_count() or 1)
  cli.add_verbose(parser)
  args = parser.parse_args(argv)
  if args.max_side < 1 or not 1 <= args.quality <= 100:
    parser.error(
      f'--max_side ({args.max_side}) must be positive and --quality ({args.quality}) in 1..100.'
    )

  def work():
    items = (
      _folder_items(args.src)
      if args.src
      else _tfds_items(
        args.tfds, args.data_dir, [s.strip() for s in args.splits.split(',') if s.strip()]
      )
    )
    stats = run(items, args.dst, max_side=args.max_side, quality=args.quality, threads=args.threads)
    for line in stats['failed']:
      print(f'left out {line}', file=sys.stderr)
    print(
      f'{stats["images"]} images to {args.dst} ({stats["bytes_in"] / 2**20:.1f} MiB -> '
      f'{stats["bytes_out"] / 2**20:.1f} MiB); {len(stats["failed"])} left out.'
    )
    return 1 if stats['failed'] else 0

  return cli.run(work, prog=parser.prog, argv=argv)


if __name__ == '__main__':
  sys.exit(main())
