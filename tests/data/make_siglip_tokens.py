"""Writes siglip_tokens.json beside this file: the token ids that big_vision's own text
preprocessing gives for SigLIP and SigLIP 2 on hard cases, the fixture of tests/test_tokenizers.py.

big_vision's pp strings are the demo colabs' (configs/proj/image_text/SigLIP_demo.ipynb and
SigLIP2_demo.ipynb), run through its pp builder with two small vocabularies made here (the real
c4_en, mc4 and Gemma files are not downloadable where the tests run):
  t5_like.model     unigram, NFKC, dummy prefix; pad 0, '</s>' 1, '<unk>' 2, no BOS: the T5
                    vocabularies' conventions (c4_en, mc4), for the 'siglip' kind.
  gemma_like.model  BPE, no normalisation, no dummy prefix, whitespace kept, digits split, byte
                    fallback; '<pad>' 0, '</s>' 1, '<s>' 2, '<unk>' 3: the Gemma tokenizer's
                    conventions, for the 'siglip2' kind.
`--train` retrains both (deterministic: one thread, a fixed corpus) before writing the ids.

Needs big_vision (a checkout on PYTHONPATH), TensorFlow, tensorflow_text and sentencepiece. Made
with big_vision 0127fb6b (2025-05-19), tensorflow-cpu 2.21.0, tensorflow-text 2.21.1 (installed
with `pip install --no-deps --target DIR tensorflow-text==2.21.1`, DIR on PYTHONPATH) and
sentencepiece 0.2.3, Python 3.13:
  PYTHONPATH=DIR:BIG_VISION python tests/data/make_siglip_tokens.py [--train] [--out PATH]
"""

import argparse
import json
import pathlib
import re

HERE = pathlib.Path(__file__).resolve().parent
LONG = (
  'a picture of a laptop with the lockscreen on, a cup of cappucino, salt and pepper grinders. The '
  'view through the window reveals lake Zürich and the Alps in the background of the city.'
)
CASES = [
  '',
  ' ',
  'a photo of a cat',
  'A Photo Of A CAT',
  'UPPER lower MiXeD 123',
  '  leading and trailing spaces  ',
  '\ttab\nnew line\r\n',
  'double  space',
  'Hello, world! (x) "quoted" - dash... ?;: [a] {b} <c> @#$%^&*_+=~`|\\/',
  'Zürich',
  'ÉCOLE élève ÀÖÜ Straße İstanbul',
  'ΑΘΗΝΑ αθήνα Москва корова',
  'ＡＢＣ ｆｕｌｌ ｗｉｄｔｈ',
  'e\u0301 vs é',
  '一只躺在沙滩上的牛',
  'ロックバンドの写真',
  'วัวอยู่ที่ชายหาด',
  'a cow 🐄 on the beach 🏖️ 👩\u200d👩\u200d👧',
  'room 12345 and 3.14',
  '</s> <pad> <s> <unk>',
  LONG,
  LONG.upper(),
  *(' '.join(['a'] * n) for n in (5, 6, 7, 8, 14, 15, 16, 17)),
]
LENGTHS = (1, 8, 16, 64)
# kind -> (vocabulary, big_vision's pp string as the demo colab has it, its output key).
FAMILIES = {
  'siglip': (
    't5_like.model',
    'tokenize(max_len={n}, model="{model}", eos="sticky", pad_value=1, inkey="text")',
    'labels',
  ),
  'siglip2': (
    'gemma_like.model',
    'lower(key="text")|tok(length={n}, model="gemma(model=\'{model}\')", bos="no", eos="sticky", '
    'key="text")',
    'text',
  ),
}
CORPUS = [
  'a photo of a cat',
  'a photo of a dog on the beach',
  'a cow in a tuxedo',
  'a cow on the beach',
  'the view through the window reveals a lake and the alps',
  'a cup of cappucino, salt and pepper grinders',
  'a picture of a laptop with the lockscreen on',
  'autumn in toronto. autumn in singapore! hello, world?',
  'zürich école élève straße à ö ü',
  'une vache sur la plage; eine kuh am strand',
  'корова на пляже, москва',
  'αθήνα',
  '一只躺在沙滩上的牛',
  'ロックバンドの写真',
  'room 12345 and 3.14 or 2024',
  'a cow 🐄 on the beach',
  '"quoted" (x) [a] - dash ...',
]


def train(path: pathlib.Path, **options) -> None:
  import sentencepiece  # noqa: PLC0415  (only this script trains)

  text = '\n'.join(CORPUS * 8)
  sentencepiece.SentencePieceTrainer.train(
    sentence_iterator=iter(text.split('\n')),
    model_prefix=str(path.with_suffix('')),
    hard_vocab_limit=False,
    character_coverage=1.0,
    num_threads=1,
    minloglevel=2,
    **options,
  )
  path.with_suffix('.vocab').unlink()


def train_both() -> None:
  train(
    HERE / 't5_like.model',
    model_type='unigram',
    vocab_size=200,
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
  )
  train(
    HERE / 'gemma_like.model',
    model_type='bpe',
    vocab_size=400,
    pad_id=0,
    eos_id=1,
    bos_id=2,
    unk_id=3,
    byte_fallback=True,
    normalization_rule_name='identity',
    add_dummy_prefix=False,
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    split_digits=True,
    user_defined_symbols=['<mask>'],
  )


def big_vision_ids(kind: str, model: str, n: int, texts) -> list[list[int]]:
  """big_vision's ids of `texts` by the pp string of `kind`, with vocabulary file `model`."""
  from big_vision.pp import builder  # noqa: PLC0415
  import big_vision.pp.ops_general  # noqa: F401, PLC0415  (registers its ops)
  import big_vision.pp.ops_text  # noqa: F401, PLC0415
  import big_vision.pp.proj.paligemma.ops  # noqa: F401, PLC0415

  _, pp, key = FAMILIES[kind]
  fn = builder.get_preprocess_fn(pp.format(n=n, model=model), log_data=False)
  return [[int(i) for i in fn({'text': t})[key].numpy()] for t in texts]


def fixture(data_dir: pathlib.Path = HERE) -> dict:
  import sentencepiece  # noqa: PLC0415
  import tensorflow as tf  # noqa: PLC0415  (the reference's own ops)
  import tensorflow_text  # noqa: PLC0415

  ids = {
    kind: {str(n): big_vision_ids(kind, str(data_dir / vocab), n, CASES) for n in LENGTHS}
    for kind, (vocab, _, _) in FAMILIES.items()
  }
  return {
    'versions': {
      'tensorflow': tf.__version__,
      'tensorflow_text': tensorflow_text.__version__,
      'sentencepiece': sentencepiece.__version__,
    },
    'vocabularies': {kind: vocab for kind, (vocab, _, _) in FAMILIES.items()},
    'pp': {kind: pp for kind, (_, pp, _) in FAMILIES.items()},
    'cases': CASES,
    'ids': ids,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--train', action='store_true', help='retrain the two vocabularies first')
  parser.add_argument('--out', default=str(HERE / 'siglip_tokens.json'))
  args = parser.parse_args()
  if args.train:
    train_both()
  text = json.dumps(fixture(), ensure_ascii=False, indent=1)
  # One line per row of ids.
  text = re.sub(r'\[[\d,\s]*\]', lambda m: json.dumps(json.loads(m.group(0))), text)
  pathlib.Path(args.out).write_text(text + '\n')


if __name__ == '__main__':
  main()
