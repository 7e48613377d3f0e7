"""vit_jax/inference/zeroshot.py and `vit_jax.predict --model=LiT-... --classes=...`: zero-shot
classification with a LiT model, the class embeddings from prompt templates
(vit_jax/tasks/contrastive.py's rule), and the command line's errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import tiny

from vit_jax import checkpoint, models, predict
from vit_jax.data import captions
from vit_jax.inference import trained as inference
from vit_jax.inference import zeroshot
from vit_jax.models import lit
from vit_jax.tasks import contrastive


def test_a_class_embedding_is_the_normalised_mean_of_its_prompts():
  vectors = {
    'a photo of a cat.': [1.0, 0.0],
    'a drawing of a cat.': [0.0, 1.0],
    'a photo of a dog.': [0.6, 0.8],
    'a drawing of a dog.': [0.6, 0.8],
  }
  texts = captions.prompt_texts(['cat', 'dog'], ['a photo of a {}.', 'a drawing of a {}.'])
  assert texts == [
    'a photo of a cat.',
    'a drawing of a cat.',
    'a photo of a dog.',
    'a drawing of a dog.',
  ]
  z = contrastive.class_embeddings(np.array([vectors[t] for t in texts]), 2)
  np.testing.assert_allclose(z, [[np.sqrt(0.5), np.sqrt(0.5)], [0.6, 0.8]])
  logits = contrastive.zeroshot_logits(np.array([[1.0, 0.0]]), z, temperature=10.0)
  probs = predict.probabilities(logits)
  np.testing.assert_allclose(probs.sum(axis=1), 1.0)
  expected = np.exp(10 * np.array([np.sqrt(0.5), 0.6]))
  np.testing.assert_allclose(probs[0], expected / expected.sum())


@pytest.mark.parametrize(
  'templates, message',
  [
    ((), 'No prompt templates'),
    (('a photo',), "'a photo' must hold exactly one {}"),
    (('{} and {}',), 'exactly one'),
  ],
)
def test_bad_templates_are_named(templates, message):
  with pytest.raises(zeroshot.PromptError, match=message):
    zeroshot.check_templates(templates)


def test_templates_come_from_a_built_in_set_or_a_file(tmp_path):
  assert zeroshot.read_templates('photo') == ('a photo of a {}.',)
  assert len(zeroshot.read_templates('ensemble')) == 12
  path = tmp_path / 't.txt'
  path.write_text('a {} in the wild\n\nart of a {}\n')
  assert zeroshot.read_templates(str(path)) == ('a {} in the wild', 'art of a {}')
  with pytest.raises(zeroshot.PromptError, match='neither a built-in set'):
    zeroshot.read_templates('fancy')


@pytest.fixture(scope='module')
def tiny_lit(tmp_path_factory):
  """A tiny LiT model (tiny ViT, small text transformer), its saved release-layout file and a
  SentencePiece model."""
  spm = pytest.importorskip('sentencepiece')
  root = tmp_path_factory.mktemp('lit')
  (root / 'corpus.txt').write_text(
    '\n'.join(
      ['a photo of a cat', 'a photo of a dog', 'a drawing of a red bird', 'the cat and the dog']
      * 20
    )
  )
  spm.SentencePieceTrainer.train(
    input=str(root / 'corpus.txt'),
    model_prefix=str(root / 'sp'),
    vocab_size=30,
    hard_vocab_limit=False,
    minloglevel=2,
  )
  model = lit.LitModel(
    image=tiny.vit_config(),
    text_model='text_transformer',
    text={'width': 16, 'num_layers': 1, 'mlp_dim': 32, 'num_heads': 2, 'vocab_size': 30},
    pp={'tokenizer_name': 'sentencepiece', 'size': 16, 'max_len': 8},
    out_dim=(None, 32),
    model_name='tiny-lit',
  )
  variables = model.init(
    jax.random.key(0), images=jnp.zeros((1, 16, 16, 3)), tokens=jnp.ones((1, 8), jnp.int32)
  )
  variables = jax.tree.map(lambda x: x, variables)
  params = dict(variables['params'])
  params['t'] = jnp.array([np.log(10.0)], jnp.float32)
  checkpoint.save_npz(str(root / 'tiny-lit.npz'), params)
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), np.uint8)).save(root / f'img{i}.png')
  return model, root


def test_the_classifier_gives_each_image_its_zero_shot_probabilities(tiny_lit):
  model, root = tiny_lit
  variables = model.load_variables(str(root / 'tiny-lit.npz'))
  tokenizer = model.get_tokenizer(str(root / 'sp.model'))
  paths = [str(root / f'img{i}.png') for i in range(3)] + [str(root / 'missing.png')]
  names, templates = ['cat', 'dog', 'bird'], ['a photo of a {}', 'a drawing of a {}']
  logits = zeroshot.classifier(model, variables, tokenizer, names, templates, batch_size=2)
  pp = model.get_image_preprocessing()
  batches = inference.image_batches(
    paths, None, 2, load=lambda p: pp([np.asarray(Image.open(p))])[0]
  )
  records = predict.classify(paths, batches, logits, label=lambda c: names[c], top_k=3)
  assert records[3]['file'].endswith('missing.png') and 'error' in records[3]
  # The same figures from the model directly.
  images = model.get_image_preprocessing()([np.asarray(Image.open(p)) for p in paths[:3]])
  zimg, _, out = model.apply(variables, images=images)
  _, ztxt, _ = model.apply(
    variables, tokens=tokenizer([t.format(n) for n in names for t in templates])
  )
  zclass = np.asarray(ztxt).reshape(3, 2, -1).mean(axis=1)
  zclass /= np.linalg.norm(zclass, axis=1, keepdims=True)
  logits = contrastive.zeroshot_logits(
    np.asarray(zimg, np.float64), zclass.astype(np.float64), float(out['t'][0])
  )
  expected = predict.probabilities(logits)
  assert float(out['t'][0]) == pytest.approx(10.0)
  for record, row in zip(records[:3], expected):
    got = {p['label']: p['probability'] for p in record['predictions']}
    assert list(got) == [names[c] for c in np.argsort(-row, kind='stable')]
    np.testing.assert_allclose([got[n] for n in names], row, rtol=1e-4)


def test_the_command_line_classifies_zero_shot_and_writes_json(
  tiny_lit, monkeypatch, tmp_path, capsys
):
  model, root = tiny_lit
  # The tiny model stands in for the LiT-L16Ti preset.
  monkeypatch.setattr(models, 'get_model', lambda name: model)
  out = tmp_path / 'p.json'
  code = predict.main(
    [
      str(root / 'img0.png'),
      '--checkpoint',
      str(root / 'tiny-lit.npz'),
      '--model=LiT-L16Ti',
      '--classes=cat,dog',
      f'--vocab={root / "sp.model"}',
      '--top_k=2',
      f'--output={out}',
    ]
  )
  assert code == 0
  records = json.loads(out.read_text())
  assert [p['label'] for p in records[0]['predictions']] in (['cat', 'dog'], ['dog', 'cat'])
  assert sum(p['probability'] for p in records[0]['predictions']) == pytest.approx(1.0)
  assert 'img0.png' in capsys.readouterr().out


@pytest.mark.parametrize(
  'args, message',
  [
    (
      ['--model=LiT-B16B', '--checkpoint=x.npz'],
      '--model=LiT-B16B classifies zero-shot: pass --checkpoint',
    ),
    (
      ['--model=ViT-B_16', '--checkpoint=x.npz', '--classes=a,b'],
      '--classes, --templates and --vocab go with a LiT',
    ),
  ],
)
def test_zero_shot_arguments_that_do_not_go_together_exit_2(args, message, capsys):
  with pytest.raises(SystemExit) as e:
    predict.main(['img.png', *args])
  assert e.value.code == 2 and message in capsys.readouterr().err


def test_one_class_or_a_bad_template_is_one_line_exit_1(tiny_lit, monkeypatch, capsys):
  model, root = tiny_lit
  monkeypatch.setattr(models, 'get_model', lambda name: model)
  base = [
    str(root / 'img0.png'),
    '--checkpoint',
    str(root / 'tiny-lit.npz'),
    '--model=LiT-L16Ti',
    f'--vocab={root / "sp.model"}',
  ]
  assert predict.main([*base, '--classes=cat']) == 1
  assert 'zero-shot needs at least two' in capsys.readouterr().err
  assert predict.main([*base, '--classes=cat,dog', '--templates=nope']) == 1
  assert "--templates='nope' is neither a built-in set" in capsys.readouterr().err
