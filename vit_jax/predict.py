"""Classify image files with a trained model: top-k labels with probabilities.

  python -m vit_jax.predict --workdir=runs/default digits/*.png [--top_k=3]
      [--output=predictions.json|.csv]
  python -m vit_jax.predict --checkpoint=ViT-B_16.npz --model=ViT-B_16 [--num_classes=1000] photos/
  python -m vit_jax.predict --checkpoint=LiT-B16B.npz --model=LiT-B16B --classes=cat,dog
      [--templates=ensemble] photos/
  python -m vit_jax.predict --workdir=runs/lit digits/*.png   # A LiT run (configs/lit.py):
      zero-shot on its classes

With a LiT model (--model=LiT-..., vit_jax/models/lit.py) the images are classified zero-shot
against --classes (names, comma separated, or a file with one per line) put through prompt templates
(vit_jax/inference/zeroshot.py; default 'photo'), with the release's tokenizer vocabulary next to
its file on gs://vit_models/lit/ unless --vocab names another. A LiT run (`--workdir`, trained with
configs/lit.py) brings its own: its params.npz, its vocabulary (config.lit.vocab_path or
WORKDIR/vocab.model), its class names and caption templates (--classes and --templates replace
them).

Inputs are image files, folders (searched recursively for vit_jax.io.IMAGE_EXTENSIONS) and globs,
local or gs://. Each image goes through the run's evaluation preprocessing
(`preprocess.eval_image`), in batches of --batch_size. Labels are the run's class names
(WORKDIR/class_names.json) or, without them, class indices. Probabilities are the softmax of the
logits (each logit's sigmoid for a model with SigLIP's bias `b`: a SigLIP file, --model=SigLIP-...,
or a run trained with `loss='sigmoid'`; as big_vision's demo, sigmoid(t * zimg . ztxt + b)). An
input that cannot be read or decoded (a missing file, an unsupported URL, an unreachable bucket, a
file that is not an image) gets an `error` instead of predictions, and the others are still
classified; the command then exits with status 1.
"""

import argparse
import csv
import io as text_io
import json
import logging
import sys
from typing import Sequence

import numpy as np

from vit_jax import cli, errors
from vit_jax.configs import presets

log = logging.getLogger(__name__)

CSV_FIELDS = ('file', 'rank', 'label', 'index', 'probability', 'error')


def probabilities(logits: np.ndarray, loss: str = 'softmax') -> np.ndarray:
  """Class probabilities of float logits [n, classes]: softmax, or per-class sigmoids for the
  sigmoid loss."""
  logits = np.asarray(logits, np.float64)
  if loss == 'sigmoid':
    return 1.0 / (1.0 + np.exp(-logits))
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def predict(trained, paths: Sequence[str], *, top_k: int = 5, batch_size: int = 64) -> list[dict]:
  """One record per path, in order: {'file', 'predictions': [{'label', 'index', 'probability'}] best
  first}, or {'file', 'error'} for a file that cannot be read or decoded. `trained` is a
  vit_jax.inference.trained.Trained."""
  import jax  # noqa: PLC0415

  from vit_jax.inference import trained as inference  # noqa: PLC0415

  if top_k < 1 or batch_size < 1:
    raise ValueError(f'top_k ({top_k}) and batch_size ({batch_size}) must be positive.')
  apply = jax.jit(
    lambda params, images: trained.model.apply({'params': params}, images, train=False)
  )
  params = jax.device_put(trained.params)
  logits = lambda images: np.asarray(apply(params, inference.pad_batch(images, batch_size)))[
    : len(images)
  ]
  return classify(
    paths,
    inference.image_batches(paths, trained.config, batch_size),
    logits,
    label=trained.label,
    top_k=min(top_k, trained.num_classes),
    loss=trained.config.loss,
  )


def classify(
  paths: Sequence[str], batches, logits, *, label, top_k: int, loss: str = 'softmax'
) -> list[dict]:
  """`predict`'s records from `batches` (inference.image_batches of `paths`) and `logits(images) ->
  [n, classes]`; `label(index)` names a class."""
  records: list[dict | None] = [None] * len(paths)
  for indices, images, failed in batches:
    for i, why in failed:
      records[i] = {'file': paths[i], 'error': why}
    if not indices:
      continue
    for i, row in zip(indices, probabilities(logits(images), loss)):
      best = np.argsort(-row, kind='stable')[:top_k]
      records[i] = {
        'file': paths[i],
        'predictions': [
          {'label': label(int(c)), 'index': int(c), 'probability': float(row[c])} for c in best
        ],
      }
  return records


def write_output(records: Sequence[dict], path: str) -> None:
  """Writes records as JSON (a list of records) or CSV (one row per file and rank; errors in their
  own rows)."""
  from vit_jax import io  # noqa: PLC0415

  if path.endswith('.json'):
    io.write_text(path, json.dumps(list(records), indent=1) + '\n')
  elif path.endswith('.csv'):
    out = text_io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, lineterminator='\n')
    writer.writeheader()
    for r in records:
      if 'error' in r:
        writer.writerow({'file': r['file'], 'error': r['error']})
      for rank, p in enumerate(r.get('predictions', ()), 1):
        writer.writerow({'file': r['file'], 'rank': rank, **p})
    io.write_text(path, out.getvalue())
  else:
    raise ValueError(f'--output={path!r}: the file name must end in .json or .csv.')


def format_record(record: dict) -> str:
  if 'error' in record:
    return f'{record["file"]}\tERROR {record["error"]}'
  return (
    record['file']
    + '\t'
    + '  '.join(f'{p["label"]} {p["probability"]:.3f}' for p in record['predictions'])
  )


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m vit_jax.predict',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument('inputs', nargs='+', help='Image files, folders or globs (local or gs://).')
  cli.add_model_args(parser)
  parser.add_argument('--top_k', type=int, default=5, help='Labels per image (default 5).')
  parser.add_argument(
    '--batch_size', type=int, default=64, help='Images per forward pass (default 64).'
  )
  parser.add_argument('--output', help='Also write the results to this .json or .csv file.')
  lit = parser.add_argument_group('zero-shot (with --model=LiT-...)')
  lit.add_argument('--classes', help='Class names, comma separated, or a file with one per line.')
  lit.add_argument(
    '--templates',
    help='Prompt templates: photo, ensemble, or a file with one per line, each with {} for the '
    "class name (default: photo; a LiT run's own).",
  )
  lit.add_argument(
    '--vocab', help="The tokenizer's vocabulary (default: the release's, gs://vit_models/lit/)."
  )
  args = parser.parse_args(argv)
  if args.output and not args.output.endswith(('.json', '.csv')):
    parser.error(f'--output={args.output!r}: the file name must end in .json or .csv.')
  if args.top_k < 1 or args.batch_size < 1:
    parser.error(f'--top_k ({args.top_k}) and --batch_size ({args.batch_size}) must be positive.')
  if args.model in presets.LIT_PRESETS:
    if not args.checkpoint or not args.classes or args.workdir:
      parser.error(
        f'--model={args.model} classifies zero-shot: pass --checkpoint=X.npz (its release file) '
        'and --classes=NAME,NAME,... (or a file of names).'
      )
    return cli.run(lambda: _predict_zero_shot(args), prog=parser.prog, argv=argv)
  if args.workdir and _zero_shot_run(args.workdir):
    return cli.run(lambda: _predict_zero_shot(args), prog=parser.prog, argv=argv)
  if args.classes or args.vocab or args.templates:
    parser.error(
      '--classes, --templates and --vocab go with a LiT model '
      "(--model=LiT-..., e.g. LiT-B16B, or a LiT run's --workdir)."
    )
  cli.check_model_args(args, parser)
  return cli.run(lambda: _predict(args), prog=parser.prog, argv=argv)


def _predict(args) -> int:
  # (after the arguments: JAX loads here)
  from vit_jax.inference import trained as inference  # noqa: PLC0415

  trained = inference.load_from_args(args)
  paths, missing = inference.expand_inputs(args.inputs)
  records = [{'file': p, 'error': why} for p, why in missing]
  records += predict(trained, paths, top_k=args.top_k, batch_size=args.batch_size) if paths else []
  return _report(records, args)


def _zero_shot_run(workdir: str) -> bool:
  """Whether --workdir holds a run whose task classifies zero-shot (a LiT run: vit_jax/tasks/); a
  workdir without a config is the loader's error."""
  from vit_jax import tasks  # noqa: PLC0415  (JAX: loaded after the arguments are checked)
  from vit_jax.runtime import workdir as workdir_lib  # noqa: PLC0415

  try:
    config = workdir_lib.load_config(workdir)
  except errors.UserError:
    return False
  return tasks.of(config).zero_shot


def _class_names(classes: str) -> list[str]:
  from vit_jax import io  # noqa: PLC0415

  names = (
    [n.strip() for n in io.read_text(classes).splitlines() if n.strip()]
    if io.isfile(classes)
    else [n.strip() for n in classes.split(',') if n.strip()]
  )
  if len(names) < 2:
    raise errors.UserError(
      f'--classes={classes!r} gives {len(names)} class name(s); zero-shot needs at least two.'
    )
  return names


def _zero_shot_model(args):
  """(model, variables, tokenizer, class names, templates) of --model/--checkpoint or of a LiT run
  (--workdir)."""
  from vit_jax import io, models  # noqa: PLC0415  (JAX)
  from vit_jax.data import captions  # noqa: PLC0415
  from vit_jax.inference import zeroshot  # noqa: PLC0415
  from vit_jax.runtime import workdir as workdir_lib  # noqa: PLC0415
  from vit_jax.training import state  # noqa: PLC0415

  templates = zeroshot.read_templates(args.templates) if args.templates else None
  names = _class_names(args.classes) if args.classes else None
  if not args.workdir:
    model = models.get_model(args.model)
    return (
      model,
      model.load_variables(args.checkpoint),
      model.get_tokenizer(args.vocab),
      names,
      templates or zeroshot.TEMPLATES['photo'],
    )
  config = workdir_lib.load_config(args.workdir)
  params = workdir_lib.path(args.workdir, workdir_lib.PARAMS_FILE)
  if not io.exists(params):
    raise workdir_lib.WorkdirError(
      f'{args.workdir} has no {workdir_lib.PARAMS_FILE} yet: a LiT run writes it when it finishes '
      '(rerun its command to finish it).'
    )
  model = state.build_model(config, 0)
  run = captions.Captions.create(config, workdir_lib.read_class_names(args.workdir))
  vocab = (
    args.vocab or config.lit.vocab_path or workdir_lib.path(args.workdir, workdir_lib.VOCAB_FILE)
  )
  if not (names or run.names):
    raise errors.UserError(
      f'The LiT run in {args.workdir} was trained on data without classes (captions only): pass '
      'the class names to classify against, --classes=NAME,NAME,... (or a file of names).'
    )
  return (
    model,
    model.load_variables(params),
    model.get_tokenizer(vocab),
    names or list(run.names),
    (templates or run.templates),
  )


def _predict_zero_shot(args) -> int:
  from vit_jax import io  # noqa: PLC0415  (JAX)
  from vit_jax.data import preprocess  # noqa: PLC0415
  from vit_jax.inference import trained as inference  # noqa: PLC0415
  from vit_jax.inference import zeroshot  # noqa: PLC0415

  model, variables, tokenizer, names, templates = _zero_shot_model(args)
  logits = zeroshot.classifier(
    model, variables, tokenizer, names, templates, batch_size=args.batch_size
  )
  pp = model.get_image_preprocessing()
  paths, missing = inference.expand_inputs(args.inputs)
  batches = inference.image_batches(
    paths, None, args.batch_size, load=lambda path: pp([preprocess.decode(io.read_bytes(path))])[0]
  )
  records = [{'file': p, 'error': why} for p, why in missing]
  records += classify(
    paths,
    batches,
    logits,
    label=lambda c: names[c],
    top_k=min(args.top_k, len(names)),
    loss=zeroshot.loss(variables),
  )
  return _report(records, args)


def _report(records, args) -> int:
  for record in records:
    print(format_record(record))
  if args.output:
    write_output(records, args.output)
    log.info('Wrote %d results to %s.', len(records), args.output)
  failed = sum('error' in r for r in records)
  if failed:
    log.warning(
      '%d of %d inputs could not be classified (see their ERROR lines).', failed, len(records)
    )
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
