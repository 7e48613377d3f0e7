"""The LiT text towers' tokenizers, without TensorFlow: the same token ids and padding as
vision_transformer's TensorFlow Text tokenizers (its vit_jax/data/preprocess.py), from the released
vocabulary files (local or gs://).

  'bert'           WordPiece over a vocabulary .txt (one token per line), through Hugging Face
                   `tokenizers`: lower case, accents stripped, split on whitespace, punctuation and
                   CJK characters, as TensorFlow Text's BertTokenizer(lower_case=True). Each text
                   gives [CLS] + its first max_len - 1 word pieces, padded with zeros (the text
                   tower masks token 0).
  'sentencepiece'  a SentencePiece .model, through `sentencepiece`: the text's pieces and '</s>',
                   cut to max_len - 1 and padded with '</s>' to max_len, so the last token is always
                   '</s>' (the tower reads the last).
A tokenizer is a frozen dataclass made as `cls(vocab_path=..., max_len=...)`, as the reference's;
called on a sequence of texts, it returns int32 [len(texts), max_len]. The reference's TensorFlow
`preprocess_tf` raises a NotImplementedError that says to call the tokenizer instead.
"""

import dataclasses
from typing import Any

import numpy as np

from vit_jax import errors, io


class TokenizerError(errors.UserError, ValueError):
  """A vocabulary file that cannot serve as one."""


def _no_tensorflow(owner) -> NotImplementedError:
  return NotImplementedError(
    f'{type(owner).__name__}.preprocess_tf: TensorFlow preprocessing is not supported here '
    '(vit_jax runs without TensorFlow); call the instance on a list of texts instead (NumPy).'
  )


@dataclasses.dataclass(frozen=True)
class BertTokenizer:
  """WordPiece with [CLS] first and zero padding (module doc). `cls_token` is [CLS]'s id."""

  vocab_path: str
  max_len: int
  cls_token: int = dataclasses.field(init=False)
  _tokenizer: Any = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    # (only LiT needs it)
    from tokenizers import BertWordPieceTokenizer  # noqa: PLC0415

    vocab = io.read_text(self.vocab_path).split('\n')
    if '[CLS]' not in vocab or '[UNK]' not in vocab:
      raise TokenizerError(
        f'{self.vocab_path} is not a BERT vocabulary: it has no [CLS] or [UNK] '
        'line (a BERT vocab.txt has one token per line, the special tokens '
        'among them).'
      )
    ids = {}
    for i, token in enumerate(vocab):
      ids.setdefault(token, i)  # The first line of a token wins, as list.index finds it.
    ids.pop('', None)
    tokenizer = BertWordPieceTokenizer(
      ids,
      lowercase=True,
      strip_accents=True,
      clean_text=True,
      handle_chinese_chars=True,
      unk_token='[UNK]',
    )
    object.__setattr__(self, 'cls_token', vocab.index('[CLS]'))  # Frozen: set once, here.
    object.__setattr__(self, '_tokenizer', tokenizer)

  def __call__(self, texts) -> np.ndarray:
    out = np.zeros((len(texts), self.max_len), np.int32)
    out[:, 0] = self.cls_token
    for row, encoding in zip(
      out, self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
    ):
      pieces = encoding.ids[: self.max_len - 1]
      row[1 : 1 + len(pieces)] = pieces
    return out

  def preprocess_tf(self, text):
    """The reference's TensorFlow graph op: not here (raises, saying what to call instead)."""
    raise _no_tensorflow(self)


@dataclasses.dataclass(frozen=True)
class SentencepieceTokenizer:
  """SentencePiece with a sticky '</s>' last (module doc). `eos_token` is '</s>''s id, also the
  padding. `proto`: the serialised model itself, instead of reading `vocab_path`."""

  vocab_path: str
  max_len: int
  proto: bytes | None = dataclasses.field(default=None, repr=False, compare=False)
  eos_token: int = dataclasses.field(init=False)
  _sp: Any = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    import sentencepiece  # noqa: PLC0415  (only LiT needs it)

    sp = sentencepiece.SentencePieceProcessor()
    try:
      proto = self.proto if self.proto is not None else io.read_bytes(self.vocab_path)
      sp.LoadFromSerializedProto(proto)
    except (RuntimeError, OSError) as e:
      raise TokenizerError(f'{self.vocab_path} is not a SentencePiece model ({e}).') from e
    object.__setattr__(self, 'eos_token', sp.piece_to_id('</s>'))  # Frozen: set once, here.
    object.__setattr__(self, '_sp', sp)

  def __call__(self, texts) -> np.ndarray:
    out = np.full((len(texts), self.max_len), self.eos_token, np.int32)
    for row, ids in zip(out, self._sp.encode(list(texts))):
      ids = (list(ids) + [self.eos_token])[: self.max_len - 1]
      row[: len(ids)] = ids
    return out

  def preprocess_tf(self, text):
    """The reference's TensorFlow graph op: not here (raises, saying what to call instead)."""
    raise _no_tensorflow(self)


TOKENIZERS = {'bert': BertTokenizer, 'sentencepiece': SentencepieceTokenizer}


def get_tokenizer(name: str):
  """The tokenizer class of `name` ('bert' or 'sentencepiece'), as vision_transformer's
  preprocess.get_tokenizer."""
  if name not in TOKENIZERS:
    raise ValueError(f'Unknown tokenizer {name!r}; valid: {", ".join(TOKENIZERS)}.')
  return TOKENIZERS[name]
