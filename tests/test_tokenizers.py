"""vit_jax/data/tokenizers.py's SigLIP kinds: big_vision's ids (tests/data/siglip_tokens.json, made
by tests/data/make_siglip_tokens.py with big_vision's own ops) from small vocabularies with the T5
and Gemma conventions, and the rules behind them, without TensorFlow."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from vit_jax import io
from vit_jax.configs import choices
from vit_jax.data import tokenizers

DATA = pathlib.Path(__file__).resolve().parent / 'data'
FIXTURE = json.loads((DATA / 'siglip_tokens.json').read_text())
LONG = 'a picture of a laptop with the lockscreen on, a cup of cappucino and the alps ' * 2


def tokenizer(kind: str, max_len: int):
  return tokenizers.get_tokenizer(kind)(
    vocab_path=str(DATA / FIXTURE['vocabularies'][kind]), max_len=max_len
  )


def processor(kind: str):
  return tokenizer(kind, 1)._sp  # The SentencePiece model itself, for the expected pieces.


@pytest.mark.parametrize('kind', ['siglip', 'siglip2'])
@pytest.mark.parametrize('max_len', [1, 8, 16, 64])
def test_siglip_kinds_give_big_visions_ids_on_the_hard_cases(kind, max_len):
  got = tokenizer(kind, max_len)(FIXTURE['cases'])
  assert got.dtype == np.int32 and got.shape == (len(FIXTURE['cases']), max_len)
  want = FIXTURE['ids'][kind][str(max_len)]
  for text, row, ids in zip(FIXTURE['cases'], got.tolist(), want):
    assert row == ids, text


def test_the_fixture_holds_cut_padded_and_exactly_full_rows():
  for kind in ('siglip', 'siglip2'):
    tok = tokenizer(kind, 16)
    lengths = [len(ids) + 1 for ids in tok._sp.encode(FIXTURE['cases'])]
    assert {n > 16 for n in lengths} == {True, False} and 16 in lengths


def test_upper_case_becomes_lower_in_ascii_only():
  """As tf.strings.lower: 'A' -> 'a', but 'É', 'İ' and full-width 'Ａ' are kept."""
  tok = tokenizer('siglip2', 32)
  sp = tok._sp
  got = tok(['A Photo OF ÉCOLE İ ＡＢ'])[0].tolist()
  want = sp.encode('a photo of École İ ＡＢ') + [sp.eos_id()]
  assert got[: len(want)] == want and sp.encode('a photo of école i̇ ａｂ') != want[:-1]


def test_overlong_text_is_cut_to_max_len_with_eos_last():
  for kind in ('siglip', 'siglip2'):
    sp = processor(kind)
    pieces = sp.encode(LONG.lower())
    assert len(pieces) > 16
    assert tokenizer(kind, 16)([LONG])[0].tolist() == pieces[:15] + [sp.eos_id()]


def test_siglip_pads_with_id_1_and_siglip2_with_the_pad_piece():
  sp = processor('siglip2')
  assert (sp.pad_id(), sp.eos_id(), sp.bos_id()) == (0, 1, 2)  # Gemma's.
  cat = sp.encode('a cat')
  assert tokenizer('siglip2', 8)(['A cat'])[0].tolist() == cat + [1] + [0] * (7 - len(cat))
  sp = processor('siglip')
  assert (sp.pad_id(), sp.eos_id(), sp.bos_id()) == (0, 1, -1)  # The T5 vocabularies'.
  cat = sp.encode('a cat')
  assert tokenizer('siglip', 8)(['A cat'])[0].tolist() == cat + [1] * (8 - len(cat))


def test_empty_text_is_eos_then_padding():
  assert tokenizer('siglip2', 4)(['']).tolist() == [[1, 0, 0, 0]]
  assert tokenizer('siglip', 4)(['']).tolist() == [[1, 1, 1, 1]]


def test_bytes_are_read_as_utf8_text():
  tok = tokenizer('siglip2', 16)
  assert tok(['Zürich', b'a photo']).tolist() == tok([b'Z\xc3\xbcrich', 'a photo']).tolist()


def test_big_visions_vocabulary_names_are_read_from_their_urls(monkeypatch):
  reads = []
  proto = (DATA / 'gemma_like.model').read_bytes()
  monkeypatch.setattr(io, 'read_bytes', lambda path: reads.append(path) or proto)
  for name in ('c4_en', 'mc4', 'gemma'):
    tokenizers.get_tokenizer('siglip2')(vocab_path=name, max_len=4)
  assert reads == [
    'gs://t5-data/vocabs/cc_en.32000/sentencepiece.model',
    'gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model',
    'gs://big_vision/gemma_tokenizer.model',
  ]


def test_a_vocabulary_without_the_pad_piece_is_refused(tmp_path):
  spm = pytest.importorskip('sentencepiece')
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(['a photo of a cat', 'a dog'] * 10),
    model_prefix=str(tmp_path / 'sp'),
    vocab_size=16,
    hard_vocab_limit=False,
    minloglevel=2,
  )  # SentencePiece's defaults: no '<pad>'.
  path = str(tmp_path / 'sp.model')
  with pytest.raises(tokenizers.TokenizerError, match=r"sp.model has no piece '<pad>' to pad"):
    tokenizers.get_tokenizer('siglip2')(vocab_path=path, max_len=4)


def test_the_kinds_are_the_configs_choices():
  assert tuple(tokenizers.TOKENIZERS) == choices.TOKENIZERS


@pytest.mark.skipif(
  not (importlib.util.find_spec('tensorflow_text') and importlib.util.find_spec('big_vision')),
  reason='needs tensorflow_text and big_vision (tests/data/make_siglip_tokens.py says how)',
)
def test_big_visions_own_ops_give_the_fixture_and_our_ids(tmp_path):
  """Live: tests/data/make_siglip_tokens.py runs big_vision's pp ops now (TensorFlow, in its own
  process) and gives the committed fixture, which the tokenizers equal (above)."""
  out = tmp_path / 'ids.json'
  script = DATA / 'make_siglip_tokens.py'
  subprocess.run(
    [sys.executable, str(script), '--out', str(out)], check=True, env=dict(os.environ), timeout=600
  )
  live = json.loads(out.read_text())
  assert live['cases'] == FIXTURE['cases'] and live['ids'] == FIXTURE['ids']
