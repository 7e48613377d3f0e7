"""vit_jax/models/lit.py, models/bert.py, tokenizers.py: vision_transformer's LiT models with its
API, parameter counts, file layout and tokenization, without flaxformer or TensorFlow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from vit_jax import checkpoint, models, models_lit, utils
from vit_jax.configs import models as config_models
from vit_jax.data import tokenizers
from vit_jax.models import bert

# vision_transformer's vit_jax/models_test.py MODEL_SIZES, its LiT entries (images and tokens of its
# configs).
REFERENCE_SIZES = {
  'LiT-B16B': 195_871_489,
  'LiT-B16B_2': 195_280_897,
  'LiT-L16L': 638_443_521,
  'LiT-L16S': 331_140_353,
  'LiT-L16Ti': 311_913_089,
}


@pytest.mark.parametrize('name', sorted(REFERENCE_SIZES))
def test_parameter_count_equals_the_reference(name):
  model = models.get_model(name)
  assert isinstance(model, models_lit.LitModel) and model.pp.max_len == 16
  images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
  tokens = jax.ShapeDtypeStruct((2, model.pp.max_len), jnp.int32)
  variables = jax.eval_shape(
    lambda i, t: model.init(jax.random.key(0), images=i, tokens=t), images, tokens
  )
  assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables)) == REFERENCE_SIZES[name]
  zimg, ztxt, _ = jax.eval_shape(
    lambda v, i, t: model.apply(v, images=i, tokens=t), variables, images, tokens
  )
  assert zimg.shape == ztxt.shape == (2, model.out_dim[1])


def test_the_reference_config_api():
  config = config_models.MODEL_CONFIGS['LiT-L16S']
  assert (
    config.text_model,
    config.text.width,
    config.text.vocab_size,
    config.pp.tokenizer_name,
  ) == ('text_transformer', 384, 16_000, 'sentencepiece')
  fresh = config_models.get_lit_b16b_2_config()
  assert (fresh.model_name, tuple(fresh.out_dim), fresh.image.hidden_size) == (
    'LiT-B16B_2',
    (None, 768),
    768,
  )
  assert models.get_model('LiT-L16Ti').vocab_path == 'gs://vit_models/lit/LiT-L16Ti.model'
  assert models.get_model('LiT-B16B').vocab_path == 'gs://vit_models/lit/LiT-B16B.txt'


def test_the_bert_tower_has_flaxformers_parameter_tree():
  encoder = bert.BertEncoder(
    hidden_size=4,
    intermediate_dim=5,
    num_hidden_layers=1,
    num_attention_heads=2,
    vocab_size=10,
    max_length=11,
  )
  ids = jnp.ones((1, 3), jnp.int32)
  params = encoder.init(jax.random.key(0), ids, ids, ids * 0, ids)['params']
  shapes = {k: v.shape for k, v in utils.flatten_dict(params).items()}
  layer = 'encoder_block/layer_sequence/layers_0/'
  assert shapes == {
    'embedder/embedders_token_ids/embedding': (10, 4),
    'embedder/embedders_position_ids/embedding': (11, 4),
    'embedder/embedders_segment_ids/embedding': (2, 4),
    'layer_norm/scale': (4,),
    'layer_norm/bias': (4,),
    **{
      f'{layer}attention_block/attention_layer/{n}/{p}': s
      for n in ('query', 'key', 'value')
      for p, s in (('kernel', (4, 4)), ('bias', (4,)))
    },
    f'{layer}attention_block/dense_layer/kernel': (4, 4),
    f'{layer}attention_block/dense_layer/bias': (4,),
    f'{layer}attention_block/layer_norm/scale': (4,),
    f'{layer}attention_block/layer_norm/bias': (4,),
    f'{layer}mlp_block/mlp/dense_layer/kernel': (4, 5),
    f'{layer}mlp_block/mlp/dense_layer/bias': (5,),
    f'{layer}mlp_block/dense_layer/kernel': (5, 4),
    f'{layer}mlp_block/dense_layer/bias': (4,),
    f'{layer}mlp_block/layer_norm/scale': (4,),
    f'{layer}mlp_block/layer_norm/bias': (4,),
  }


def _numpy_bert(p, tokens, heads):
  """Post-LN BERT as flaxformer computes it (bert.py's module doc), written out in NumPy."""

  def norm(x, name):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-12) * p[f'{name}/scale'] + p[f'{name}/bias']

  def dense(x, name):
    return x @ p[f'{name}/kernel'] + p[f'{name}/bias']

  n, length = tokens.shape
  x = (
    p['embedder/embedders_token_ids/embedding'][tokens]
    + p['embedder/embedders_position_ids/embedding'][:length]
    + p['embedder/embedders_segment_ids/embedding'][0]
  )
  x = norm(x, 'layer_norm')
  for i in range(sum(k.endswith('attention_layer/query/kernel') for k in p)):
    layer = f'encoder_block/layer_sequence/layers_{i}/'
    att = layer + 'attention_block/'
    q, k, v = (
      dense(x, att + f'attention_layer/{m}').reshape(n, length, heads, -1)
      for m in ('query', 'key', 'value')
    )
    logits = np.einsum('bqhd,bkhd->bhqk', q / np.sqrt(q.shape[-1]), k)
    logits = np.where((tokens != 0)[:, None, None, :], logits, -1e10)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    y = np.einsum('bhqk,bkhd->bqhd', w, v).reshape(n, length, -1)
    x = norm(x + dense(y, att + 'dense_layer'), att + 'layer_norm')
    h = dense(x, layer + 'mlp_block/mlp/dense_layer')
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
    x = norm(x + dense(h, layer + 'mlp_block/dense_layer'), layer + 'mlp_block/layer_norm')
  return x


def test_the_bert_tower_computes_post_ln_bert_with_padding_masked():
  encoder = bert.BertEncoder(
    hidden_size=16,
    intermediate_dim=24,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=30,
    max_length=8,
  )
  tokens = np.array([[2, 7, 9, 4, 0, 0], [2, 11, 0, 0, 0, 0]], np.int32)
  positions, segments = np.tile(np.arange(6, dtype=np.int32), (2, 1)), np.zeros_like(tokens)
  params = encoder.init(jax.random.key(1), tokens, positions, segments, tokens != 0)['params']
  got = encoder.apply({'params': params}, tokens, positions, segments, tokens != 0)
  flat = {k: np.asarray(v, np.float64) for k, v in utils.flatten_dict(params).items()}
  np.testing.assert_allclose(got, _numpy_bert(flat, tokens, heads=4), atol=2e-5)
  # Padding changes nothing for the real tokens: a longer pad gives the same [CLS] encoding.
  longer = np.pad(tokens, ((0, 0), (0, 2)))
  more = encoder.apply(
    {'params': params},
    longer,
    np.tile(np.arange(8, dtype=np.int32), (2, 1)),
    np.zeros_like(longer),
    longer != 0,
  )
  np.testing.assert_allclose(more[:, 0], got[:, 0], atol=1e-5)


def _tiny_lit(text_model='text_transformer'):
  text = (
    {'width': 16, 'num_layers': 1, 'mlp_dim': 32, 'num_heads': 2, 'vocab_size': 40}
    if text_model == 'text_transformer'
    else {'config': 'base'}
  )
  return models_lit.LitModel(
    image=tiny.vit_config(),
    text_model=text_model,
    text=text,
    pp={'tokenizer_name': 'sentencepiece', 'size': 16, 'max_len': 6},
    out_dim=(None, 32),
    model_name='tiny-lit',
  )


def test_a_saved_lit_model_has_the_release_layout_and_loads_back_to_the_same_embeddings(tmp_path):
  model = _tiny_lit()
  images = jax.random.uniform(jax.random.key(2), (3, 16, 16, 3), minval=-1, maxval=1)
  tokens = jnp.array([[5, 6, 7, 1, 1, 1], [9, 1, 1, 1, 1, 1], [3, 4, 5, 6, 7, 1]], jnp.int32)
  variables = model.init(jax.random.key(3), images=images, tokens=tokens)
  zimg, ztxt, out = model.apply(variables, images=images, tokens=tokens)
  np.testing.assert_allclose(np.linalg.norm(zimg, axis=1), 1, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(ztxt, axis=1), 1, rtol=1e-5)
  assert float(out['t'][0]) == 1.0 and zimg.shape == ztxt.shape == (3, 32)

  path = str(tmp_path / 'tiny-lit.npz')
  checkpoint.save_npz(path, variables['params'])
  with np.load(path) as f:
    names = set(f.files)
  assert {
    'img/Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel',
    'txt/Encoder_0/encoderblock_0/MlpBlock_3/Dense_0/kernel',
    'txt/Embed_0/embedding',
    'txt/pos_embedding',
    'txt/head/kernel',
    't',
  } <= names
  loaded = model.load_variables(path)
  again = model.apply(loaded, images=images, tokens=tokens)
  np.testing.assert_array_equal(again[0], zimg)
  np.testing.assert_array_equal(again[1], ztxt)
  zimg_only, none, _ = model.apply(loaded, images=images)  # One tower alone, as for few-shot.
  assert none is None
  np.testing.assert_array_equal(zimg_only, zimg)


def test_bert_tokenizer_puts_cls_first_lowercases_strips_accents_and_pads_with_zeros(tmp_path):
  vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', 'hello', ',', 'world', '!', 'play', '##ing', 'cafe']
  path = tmp_path / 'vocab.txt'
  path.write_text('\n'.join(vocab) + '\n')
  tok = tokenizers.get_tokenizer('bert')(vocab_path=str(path), max_len=6)
  ids = {t: i for i, t in enumerate(vocab)}
  got = tok(['Héllo, WORLD!', 'playing Café zebra', 'hello hello hello hello hello hello hello'])
  assert got.dtype == np.int32 and got.shape == (3, 6)
  assert got[0].tolist() == [ids['[CLS]'], ids['hello'], ids[','], ids['world'], ids['!'], 0]
  assert got[1].tolist() == [ids['[CLS]'], ids['play'], ids['##ing'], ids['cafe'], ids['[UNK]'], 0]
  # Cut to max_len - 1 pieces after [CLS].
  assert got[2].tolist() == [ids['[CLS]']] + [ids['hello']] * 5


def test_sentencepiece_tokenizer_keeps_eos_last_and_pads_with_it(tmp_path):
  spm = pytest.importorskip('sentencepiece')
  corpus = tmp_path / 'corpus.txt'
  corpus.write_text(
    '\n'.join(
      [
        'a photo of a cat',
        'a photo of a dog',
        'a picture of a small bird',
        'the cat sat on the mat',
        'a dog and a cat',
      ]
      * 20
    )
  )
  spm.SentencePieceTrainer.train(
    input=str(corpus),
    model_prefix=str(tmp_path / 'sp'),
    vocab_size=30,
    hard_vocab_limit=False,
    model_type='unigram',
    minloglevel=2,
  )
  processor = spm.SentencePieceProcessor(model_file=str(tmp_path / 'sp.model'))
  tok = tokenizers.get_tokenizer('sentencepiece')(vocab_path=str(tmp_path / 'sp.model'), max_len=8)
  eos = processor.piece_to_id('</s>')
  got = tok(['a cat', 'a photo of a small bird on the mat and a dog'])
  short = processor.encode('a cat')
  assert got[0].tolist() == short + [eos] * (8 - len(short))
  long = processor.encode('a photo of a small bird on the mat and a dog')
  assert len(long) > 8 and got[1].tolist() == long[:7] + [eos]  # Cut, and '</s>' is still last.


def test_bad_vocabulary_files_are_named(tmp_path):
  (tmp_path / 'v.txt').write_text('a\nb\n')
  with pytest.raises(tokenizers.TokenizerError, match='is not a BERT vocabulary'):
    tokenizers.get_tokenizer('bert')(vocab_path=str(tmp_path / 'v.txt'), max_len=4)
  with pytest.raises(tokenizers.TokenizerError, match='is not a SentencePiece model'):
    tokenizers.get_tokenizer('sentencepiece')(vocab_path=str(tmp_path / 'v.txt'), max_len=4)
  with pytest.raises(ValueError, match="Unknown tokenizer 'gpt'; valid: bert, sentencepiece"):
    tokenizers.get_tokenizer('gpt')
