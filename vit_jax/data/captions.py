"""Image-text data for LiT training (config.lit): the caption of each training example, the prompts
of the zero-shot classifier, and the tokenizer that turns both into the text tower's tokens.

An image folder with a captions file (config.lit.captions: lines `<path relative to the
folder><TAB><caption>`; an image with several lines has several captions), or a TFDS dataset with a
caption feature (config.lit.text_feature, e.g. 'captions/text' of coco_captions), is image-text data
as it is: the example at position i gets one of its image's captions, drawn by (seed, i). Otherwise
a classification dataset becomes image-text data through caption templates (config.lit.templates: 'a
photo of a {}.'): the example at global position i gets template k(seed, i) with its class name
(config.lit.class_names, else the dataset's), so its caption, like its image, is a pure function of
(seed, i) and resuming is exact. The zero-shot evaluator and vit_jax.predict embed every template
with every class name (`prompt_texts`; the classifier's rule is vit_jax/tasks/contrastive.py's).

The tokenizer is the model's (config.model.pp.tokenizer_name) over config.lit.vocab_path, or, when
that is empty, over a SentencePiece word vocabulary trained on the captions themselves (every
template with every class name): the same bytes on every process and at every resume, since the
training is deterministic; the run stores it as WORKDIR/vocab.model for prediction. A run's
vocabulary is its train split's (`of_run`): with a captions file, the train captions are in it too,
and evaluating another split tokenizes with it.
"""

import dataclasses
import functools
import io as bytes_io
import os
from typing import Sequence

import numpy as np

from vit_jax import errors, io
from vit_jax.data import image_folders, sources, splits, tokenizers

TEMPLATES = {
  'photo': ('a photo of a {}.',),
  'ensemble': (
    'a photo of a {}.',
    'a photo of the {}.',
    'a photo of a small {}.',
    'a photo of a large {}.',
    'a close-up photo of a {}.',
    'a cropped photo of a {}.',
    'a blurry photo of a {}.',
    'a bright photo of a {}.',
    'a dark photo of a {}.',
    'a drawing of a {}.',
    'a painting of a {}.',
    'a rendering of a {}.',
  ),
}


class PromptError(errors.UserError, ValueError):
  """Prompt templates that cannot be used."""


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
  """The templates, each with exactly one '{}' for the class name; a PromptError naming the first
  that has not."""
  templates = tuple(templates)
  if not templates:
    raise PromptError('No prompt templates: give at least one, e.g. "a photo of a {}.".')
  for t in templates:
    if t.count('{}') != 1:
      raise PromptError(
        f'Prompt template {t!r} must hold exactly one {{}} where the class name goes.'
      )
  return templates


def read_templates(spec: str) -> tuple[str, ...]:
  """--templates: a built-in set's name (TEMPLATES), else a file (local or gs://) with one template
  per line."""
  if spec in TEMPLATES:
    return TEMPLATES[spec]
  if not io.isfile(spec):
    raise PromptError(
      f'--templates={spec!r} is neither a built-in set ({", ".join(TEMPLATES)}) nor a file.'
    )
  return check_templates([line.strip() for line in io.read_text(spec).splitlines() if line.strip()])


def prompt_texts(names: Sequence[str], templates: Sequence[str]) -> list[str]:
  """Every class name in every template, class-major: the zero-shot classifier's texts (the order
  that vit_jax/tasks/contrastive.py's `class_embeddings` reads)."""
  return [t.format(n) for n in names for t in templates]


# Folded into the seed for the template (or caption) draw of each example.
CAPTION_STREAM = 0x636170


class CaptionsError(errors.UserError, ValueError):
  """A captions file that cannot be used with its image folder."""


def of_run(config) -> 'Captions':
  """The captions of a run's train split: its vocabulary and tokenizer are the ones every part of
  the run (training, the evaluators, WORKDIR/vocab.model) shares."""
  split = sources.open_split(config, config.train_split)
  return Captions.create(config, split.class_names, split.records)


def read_captions_file(path: str) -> dict[str, tuple[str, ...]]:
  """{relative image path: its captions} of a captions file (module doc); blank lines and '#' lines
  are skipped."""
  out: dict[str, list[str]] = {}
  for number, line in enumerate(io.read_text(path).splitlines(), start=1):
    if not line.strip() or line.startswith('#'):
      continue
    image, tab, caption = line.partition('\t')
    if not tab or not image.strip() or not caption.strip():
      raise CaptionsError(
        f'{path} line {number} is not "<image path><TAB><caption>": {line[:120]!r}.'
      )
    out.setdefault(os.path.normpath(image.strip()), []).append(caption.strip())
  if not out:
    raise CaptionsError(f'{path} holds no captions (lines "<image path><TAB><caption>").')
  return {k: tuple(v) for k, v in out.items()}


def record_texts(config, records, chunk: int = 256) -> tuple[tuple[str, ...], ...]:
  """The captions of each record of a split: a TFDS dataset's config.lit.text_feature, read from the
  records, or an image folder's (`records.path(i)`) from config.lit.captions, with an error naming
  the images that have none."""
  if config.lit.text_feature:
    return tuple(
      r['text']
      for start in range(0, len(records), chunk)
      for r in splits.read_many(records, range(start, min(start + chunk, len(records))))
    )
  root = image_folders.folder_root(config)
  if root is None or not hasattr(records, 'path'):
    raise CaptionsError(
      f'config.lit.captions={config.lit.captions!r} goes with an image folder, but '
      f'config.dataset={config.dataset!r} is not one.'
    )
  by_image = read_captions_file(config.lit.captions)
  relative = [os.path.normpath(os.path.relpath(records.path(i), root)) for i in range(len(records))]
  missing = [r for r in relative if r not in by_image]
  if missing:
    raise CaptionsError(
      f'{len(missing)} image(s) of {root} have no caption in {config.lit.captions}, e.g. '
      f'{missing[:5]}: give each image a line "<path relative to {root}><TAB><caption>".'
    )
  return tuple(by_image[r] for r in relative)


def class_names(config, dataset_names: Sequence[str]) -> tuple[str, ...]:
  """config.lit.class_names (comma separated, in label order) when set, else the dataset's names."""
  if not config.lit.class_names:
    return tuple(dataset_names)
  names = tuple(n.strip() for n in str(config.lit.class_names).split(','))
  if len(names) != len(dataset_names) or not all(names):
    raise PromptError(
      f'config.lit.class_names={config.lit.class_names!r} gives {len(names)} names, but '
      f'{config.dataset} has {len(dataset_names)} classes ({", ".join(dataset_names)}): give one '
      'non-empty name per class, comma separated, in label order.'
    )
  return names


@functools.cache
def _trained_vocabulary(sentences: tuple[str, ...], vocab_size: int) -> bytes:
  import sentencepiece  # noqa: PLC0415  (only LiT needs it)

  out = bytes_io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
    sentence_iterator=iter(sentences),
    model_writer=out,
    vocab_size=vocab_size,
    model_type='word',
    hard_vocab_limit=False,
    character_coverage=1.0,
    num_threads=1,
    minloglevel=2,
  )
  return out.getvalue()


def vocabulary(templates: Sequence[str], names: Sequence[str], vocab_size: int) -> bytes:
  """A SentencePiece word model (serialised) of every template with every class name, at most
  `vocab_size` pieces."""
  return _trained_vocabulary(tuple(prompt_texts(names, templates)), vocab_size)


@dataclasses.dataclass(frozen=True)
class Captions:
  """The captions and tokens of a LiT run's classification data (module doc)."""

  templates: tuple[str, ...]
  names: tuple[str, ...]
  tokenizer_name: str
  max_len: int
  vocab_path: str
  vocab_size: int
  seed: int
  # Each record's captions (a captions file), else None.
  texts: tuple[tuple[str, ...], ...] | None = None

  @classmethod
  def create(cls, config, dataset_names: Sequence[str], records=None) -> 'Captions':
    """The captions of `config`; with config.lit.captions, those of `records` (an image-folder
    split's)."""
    texts = record_texts(config, records) if config.lit.captions and records is not None else None
    return cls(
      read_templates(config.lit.templates),
      class_names(config, dataset_names),
      config.model.pp.tokenizer_name,
      int(config.model.pp.max_len),
      config.lit.vocab_path,
      int(config.model.text.get('vocab_size', 0)),
      config.seed,
      texts,
    )

  def vocabulary(self) -> bytes | None:
    """The trained vocabulary (module doc), or None when config.lit.vocab_path names one. It covers
    the templates with the class names, and the captions of the records when there are."""
    if self.vocab_path:
      return None
    extra = tuple(sorted({t for texts in self.texts for t in texts})) if self.texts else ()
    prompts = tuple(prompt_texts(self.names, self.templates))
    return _trained_vocabulary(prompts + extra, self.vocab_size)

  @functools.cached_property
  def tokenizer(self):
    if self.vocab_path:
      return tokenizers.get_tokenizer(self.tokenizer_name)(
        vocab_path=self.vocab_path, max_len=self.max_len
      )
    return tokenizers.SentencepieceTokenizer(
      vocab_path='', max_len=self.max_len, proto=self.vocabulary()
    )

  def caption(self, label: int, position: int, texts: Sequence[str] | None = None) -> str:
    """The caption of the training example at global `position` (class `label`, captions `texts` if
    it has any): one of its captions, else a template with its class name; drawn by (seed,
    position)."""
    choices = texts if texts else self.templates
    draw = np.random.default_rng([self.seed, CAPTION_STREAM, int(position)]).integers(len(choices))
    return choices[draw] if texts else choices[draw].format(self.names[int(label)])

  def tokens(
    self,
    labels: Sequence[int],
    positions: Sequence[int],
    records: Sequence[int] | None = None,
    texts: Sequence[Sequence[str] | None] | None = None,
  ) -> np.ndarray:
    """int32 [n, max_len]: the tokens of the captions of the examples at `positions` (their
    `labels`, and their captions: `texts` as the records hold them (a TFDS caption feature), else
    those of `records` in `self.texts`)."""
    if texts is None:
      texts = [self.texts[r] for r in records] if self.texts is not None else [None] * len(labels)
    return self.tokenizer(
      [self.caption(label, p, t) for label, p, t in zip(labels, positions, texts)]
    )

  def prompts(self) -> np.ndarray:
    """int32 [classes * templates, max_len]: the tokens of `prompt_texts`, the zero-shot
    classifier's texts."""
    return self.tokenizer(prompt_texts(self.names, self.templates))
