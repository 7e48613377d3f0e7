"""AugReg checkpoints ("How to train your ViT?") by name: the release's `index.csv` and `augreg:`
pretrained paths.

The release lists every pretrained and fine-tuned file in one CSV (default
`gs://vit_models/augreg/index.csv`), one row per fine-tuning run: the pretraining columns (`name`
e.g. 'B/16', `ds` 'i1k'|'i21k'|'i21k_30', `epochs`, `lr`, `aug`, `wd`, `do`, `sd`, `best_val`,
`final_val`, `final_test`, `filename`) and the fine-tuning ones (`adapt_ds`, `adapt_lr`,
`adapt_steps`, `adapt_resolution`, `adapt_final_val`, `adapt_final_test`, `adapt_filename`), plus
`params` and `infer_samples_per_sec`. Files are `<index folder>/<filename>.npz`.

`config.pretrained_path` takes, besides a path to an .npz:
  augreg:FILE          a `filename` or `adapt_filename` of the index (without .npz), e.g.
                       'augreg:B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0';
  augreg:MODEL         the best ImageNet-21k pretraining of MODEL by `final_val`
                       (vision_transformer's choice for `model_or_filename`); MODEL as in file names
                       ('B_16', 'R_Ti_16', 'R26_S_32') or a preset name
                       ('ViT-B_16', 'R26+ViT-S_32');
  augreg:MODEL:QUERY   the best row of MODEL among those a pandas query selects, e.g.
                       'augreg:B_16:ds=="i21k" and aug=="medium2"'. If the query names an `adapt_`
                       column, the best fine-tuned file by `adapt_final_val`, else the best
                       pretrained file by `final_val`.
"""

import io as io_text
import logging
import posixpath

from vit_jax import errors

log = logging.getLogger(__name__)

PREFIX = 'augreg:'
DEFAULT_INDEX = 'gs://vit_models/augreg/index.csv'


class AugRegError(errors.UserError, ValueError):
  """An 'augreg:' name that the index does not resolve, or an index that cannot be read."""


def augreg_index(path: str = DEFAULT_INDEX):
  """The AugReg index as a pandas DataFrame (local or gs:// path)."""
  import pandas as pd  # noqa: PLC0415

  from vit_jax import io  # noqa: PLC0415

  if not io.exists(path):
    raise AugRegError(
      f'AugReg index {path!r} does not exist; the release has it at {DEFAULT_INDEX} '
      '(config.augreg_index names a local copy).'
    )
  return pd.read_csv(io_text.StringIO(io.read_text(path)))


def _model_key(model: str) -> str:
  from vit_jax.configs.models import augreg_name  # noqa: PLC0415

  return augreg_name(model)


def select(df, spec: str) -> str:
  """The file name (no .npz) that `spec` (the part after 'augreg:') picks from the index `df`."""
  model, _, query = spec.partition(':')
  if not query and '-' in model.replace('ViT-', ''):
    names = set(df['filename']) | set(df['adapt_filename'])
    if model not in names:
      raise AugRegError(
        f'AugReg file {model!r} is not in the index ({len(names)} files; e.g. '
        f'{sorted(df["filename"])[0]!r}).'
      )
    return model
  key = _model_key(model)
  rows = df[df['filename'].str.split('-').str[0] == key]
  if rows.empty:
    models = sorted(set(df['filename'].str.split('-').str[0]))
    raise AugRegError(
      f'No AugReg checkpoint of model {model!r} (as {key!r}); models in the index: {models}.'
    )
  adapt = 'adapt_' in query
  query = query or 'ds == "i21k"'
  rows = rows.query(query)
  if rows.empty:
    raise AugRegError(f'The AugReg query {query!r} selects no checkpoint of {key}.')
  column, metric = ('adapt_filename', 'adapt_final_val') if adapt else ('filename', 'final_val')
  best = rows.sort_values(metric, kind='stable').iloc[-1]
  log.info('AugReg %r -> %s (%s %.4f).', spec, best[column], metric, best[metric])
  return best[column]


def resolve(pretrained_path: str, index_path: str = DEFAULT_INDEX) -> str:
  """`pretrained_path` unchanged, or for 'augreg:...' the .npz file it names beside the index."""
  if not pretrained_path.startswith(PREFIX):
    return pretrained_path
  name = select(augreg_index(index_path), pretrained_path[len(PREFIX) :])
  return posixpath.join(posixpath.dirname(index_path), f'{name}.npz')
