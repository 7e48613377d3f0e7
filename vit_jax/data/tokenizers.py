"""The text towers' tokenizers, without TensorFlow: the same token ids and padding as
vision_transformer's TensorFlow Text tokenizers (LiT: its vit_jax/data/preprocess.py) and as
big_vision's text preprocessing (SigLIP and SigLIP 2: its pp/ops_text.py and
pp/proj/paligemma/ops.py, as its demo colabs call them), from the released vocabulary files (local
or gs://). The kinds (TOKENIZERS):

  'bert'           WordPiece over a vocabulary .txt (one token per line), through Hugging Face
                   `tokenizers`: lower case, accents stripped, split on whitespace, punctuation and
                   CJK characters, as TensorFlow Text's BertTokenizer(lower_case=True). Each text
                   gives [CLS] + its first max_len - 1 word pieces, padded with zeros (the text
                   tower masks token 0).
  'sentencepiece'  a SentencePiece .model, through `sentencepiece`: the text's pieces and '</s>';
                   longer than max_len, cut to max_len - 1 pieces and '</s>' ("sticky" EOS), else
                   padded with '</s>' to max_len, so the last token is always '</s>' (the tower
                   reads the last).
  'siglip'         SigLIP (c4_en 32k or mc4 250k vocabulary): as 'sentencepiece' after lower-casing
                   A-Z (ASCII only, as tf.strings.lower), padded with id 1 (the T5 vocabularies'
                   '</s>').
  'siglip2'        SigLIP 2 (the Gemma 256k vocabulary): as 'siglip', padded with the vocabulary's
                   '<pad>' (Gemma's 0); no BOS.
A tokenizer is a frozen dataclass made as `cls(vocab_path=..., max_len=...)`, as the reference's;
called on a sequence of texts, it returns int32 [len(texts), max_len]. The reference's TensorFlow
`preprocess_tf` raises a NotImplementedError that says to call the tokenizer instead.
"""

import dataclasses
import functools
import string
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
  """SentencePiece with a sticky '</s>' last (module doc). `vocab_path`: a .model file (local or
  gs://) or a name of VOCABULARIES; `proto`: the serialised model itself, instead of reading it.
  `lower`: A-Z become a-z first (ASCII only, as TensorFlow's tf.strings.lower that big_vision
  calls: 'É' and 'Ａ' stay). `pad_value`: the padding after '</s>', an id or a piece of the
  vocabulary (as big_vision's). `eos_token` and `pad_token` are the ids."""

  vocab_path: str
  max_len: int
  proto: bytes | None = dataclasses.field(default=None, repr=False, compare=False)
  lower: bool = False
  pad_value: int | str = '</s>'
  eos_token: int = dataclasses.field(init=False)
  pad_token: int = dataclasses.field(init=False)
  _sp: Any = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    import sentencepiece  # noqa: PLC0415  (only the image-text models need it)

    sp = sentencepiece.SentencePieceProcessor()
    path = VOCABULARIES.get(self.vocab_path, self.vocab_path)
    try:
      sp.LoadFromSerializedProto(self.proto if self.proto is not None else io.read_bytes(path))
    except (RuntimeError, OSError) as e:
      raise TokenizerError(f'{path} is not a SentencePiece model ({e}).') from e
    pad = self.pad_value
    if isinstance(pad, str):
      pad = sp.piece_to_id(pad)
      if sp.id_to_piece(pad) != self.pad_value:
        raise TokenizerError(f'{path} has no piece {self.pad_value!r} to pad with.')
    if sp.eos_id() < 0:
      raise TokenizerError(f'{path} has no end-of-sentence piece (its eos_id is -1).')
    object.__setattr__(self, 'eos_token', sp.eos_id())  # Frozen: set once, here.
    object.__setattr__(self, 'pad_token', int(pad))
    object.__setattr__(self, '_sp', sp)

  def __call__(self, texts) -> np.ndarray:
    texts = [t.decode('utf-8') if isinstance(t, bytes) else str(t) for t in texts]
    if self.lower:
      texts = [t.translate(_ASCII_LOWER) for t in texts]
    out = np.full((len(texts), self.max_len), self.pad_token, np.int32)
    for row, ids in zip(out, self._sp.encode(texts)):
      ids = [*ids, self.eos_token]
      if len(ids) > self.max_len:  # Cut, keeping '</s>' last.
        ids = ids[: self.max_len - 1] + ids[-1:]
      row[: len(ids)] = ids
    return out

  def preprocess_tf(self, text):
    """The reference's TensorFlow graph op: not here (raises, saying what to call instead)."""
    raise _no_tensorflow(self)


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
# big_vision's names of the image-text vocabularies (its pp/ops_text.py and pp/proj/paligemma/
# ops.py), accepted as a vocab_path.
VOCABULARIES = {
  'c4_en': 'gs://t5-data/vocabs/cc_en.32000/sentencepiece.model',  # SigLIP (English), 32k.
  'mc4': 'gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model',  # SigLIP i18n, 250k.
  'gemma': 'gs://big_vision/gemma_tokenizer.model',  # SigLIP 2, 256k.
}
TOKENIZERS = {
  'bert': BertTokenizer,
  'sentencepiece': SentencepieceTokenizer,
  # big_vision's `tokenize(max_len=.., model=.., eos="sticky", pad_value=1)` (its lower=True
  # default), as the SigLIP demo tokenizes for the c4_en and mc4 vocabularies.
  'siglip': functools.partial(SentencepieceTokenizer, lower=True, pad_value=1),
  # big_vision's `lower|tok(length=.., model="gemma", bos="no", eos="sticky")`, as the SigLIP 2
  # demo: padded with the vocabulary's '<pad>' (Gemma's 0), no BOS.
  'siglip2': functools.partial(SentencepieceTokenizer, lower=True, pad_value='<pad>'),
}


def get_tokenizer(name: str):
  """The tokenizer class of `name` (a key of TOKENIZERS), as vision_transformer's
  preprocess.get_tokenizer: made as `get_tokenizer(name)(vocab_path=..., max_len=...)`."""
  if name not in TOKENIZERS:
    raise ValueError(f'Unknown tokenizer {name!r}; valid: {", ".join(TOKENIZERS)}.')
  return TOKENIZERS[name]
