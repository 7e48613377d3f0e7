"""What the after-training command lines share, importing nothing heavy so that `--help` and bad
arguments answer at once: the model-selection arguments (a run, or a release .npz), logging, and
running inside the error boundary."""

import argparse
import logging
import sys
from typing import Callable, Sequence

from vit_jax import errors
from vit_jax.configs import presets


def add_model_args(parser: argparse.ArgumentParser) -> None:
  """--workdir, or --checkpoint with --model [--num_classes --image_size --class_names]; and
  --verbose."""
  group = parser.add_argument_group('model (a run, or a release .npz)')
  group.add_argument(
    '--workdir', help='A training run: its config.json and latest checkpoint or params.npz.'
  )
  group.add_argument('--checkpoint', help='A release-layout .npz (local or gs://), with --model.')
  group.add_argument(
    '--model',
    help=f'Preset of --checkpoint: {", ".join(presets.MODEL_NAMES)}; for zero-shot '
    f'(vit_jax.predict --classes) a LiT model: {", ".join(presets.LIT_PRESETS)}.',
  )
  group.add_argument(
    '--num_classes', type=int, help='Classes of --checkpoint (checked against its head).'
  )
  group.add_argument(
    '--image_size', type=int, help='Input size for --checkpoint (default: what it was trained at).'
  )
  group.add_argument(
    '--class_names', help='For --checkpoint: a JSON list of label names in label order.'
  )
  add_verbose(parser)


def add_verbose(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    '--verbose', action='store_true', help='Show the traceback of errors that are not bugs too.'
  )


def check_model_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
  """Exit status 2 with one line for a bad combination of the model arguments."""
  if bool(args.workdir) == bool(args.checkpoint):
    parser.error('pass exactly one of --workdir=RUN and --checkpoint=X.npz (with --model).')
  if args.workdir:
    extra = [
      f'--{k}' for k in ('model', 'num_classes', 'image_size', 'class_names') if getattr(args, k)
    ]
    if extra:
      parser.error(f'{", ".join(extra)} go with --checkpoint; a --workdir run has its own.')
  elif args.model not in presets.MODEL_NAMES:
    parser.error(
      f'--checkpoint needs --model, one of: {", ".join(presets.MODEL_NAMES)} (got {args.model!r}).'
    )


def run(main: Callable[[], int | None], *, prog: str, argv: Sequence[str] | None = None) -> int:
  """`main()` inside the error boundary (vit_jax/errors.py), with vit_jax's notes on stderr and
  library chatter from warnings up."""
  logging.basicConfig(level=logging.WARNING, format='%(message)s')
  logging.getLogger('vit_jax').setLevel(logging.INFO)
  return errors.run(main, prog=prog, argv=list(sys.argv[1:] if argv is None else argv))
