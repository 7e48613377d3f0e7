"""LiT / SigLIP training on the main entry point (vit_jax/tasks/image_text.py: the contrastive loss,
the config rules; vit_jax/data/captions.py, vit_jax/evaluators/zeroshot.py): a locked image tower
from a ViT file stays bitwise as it was, the text tower learns until zero-shot accuracy is far above
chance, the captions and vocabulary are pure functions of the config, and a run resumes bitwise
after SIGTERM."""

import json
import os
import pathlib
import signal

import numpy as np
from PIL import Image
import pytest
import tiny

from vit_jax import checkpoint, predict
from vit_jax.configs import check, common, presets
from vit_jax.data import captions, input_pipeline
from vit_jax.inference import zeroshot
from vit_jax.runtime import workdir as workdir_lib
from vit_jax.training import preflight, train

DIGITS = 'zero,one,two,three,four,five,six,seven,eight,nine'


def lit_config(tfds_dir, image_init, **overrides):
  """A tiny LiT run on the digits: the 8-px image tower of `image_init` (tiny.vit_config(patch=2)),
  a 1-layer text tower, 4 templates."""
  config = common.get_config()
  config.model = presets.get_model_config('LiT-L16Ti')
  config.model.model_name = 'tiny-lit'
  config.model.image = tiny.vit_config(patch=2)
  config.model.out_dim = (None, 32)
  config.model.text = {
    'width': 32,
    'num_layers': 1,
    'mlp_dim': 64,
    'num_heads': 2,
    'vocab_size': 48,
  }
  config.model.pp.size, config.model.pp.max_len = 8, 8
  config.update(
    dataset='sklearn_digits',
    tfds_data_dir=tfds_dir,
    image_size=8,
    batch_size=64,
    eval_batch_size=64,
    total_steps=60,
    log_every_steps=10,
    eval_every_steps=60,
    checkpoint_every_steps=30,
    prefetch=1,
    input_threads=2,
  )
  config.pp.crop, config.pp.flip = 'resize', False
  config.optimizer.name, config.optimizer.weight_decay = 'adamw', 1e-4
  config.schedule.base_lr, config.schedule.warmup_steps = 3e-3, 5
  config.lit.image_init, config.lit.class_names = image_init, DIGITS
  config.lit.templates = 'photo'
  return tiny.override(config, overrides)


@pytest.fixture(scope='module')
def image_tower(digits_dir, tmp_path_factory):
  """A tiny ViT trained on the digits (the image tower to lock), as a run's params.npz."""
  root = tmp_path_factory.mktemp('vit')
  config = tiny.train_config(
    **{
      'dataset': 'sklearn_digits',
      'tfds_data_dir': digits_dir,
      'image_size': 8,
      'model': tiny.vit_config(patch=2),
      'pp.crop': 'resize',
      'pp.flip': False,
      'batch_size': 64,
      'eval_batch_size': 64,
      'total_steps': 200,
      'log_every_steps': 100,
      'eval_every_steps': 200,
      'checkpoint_every_steps': 200,
      'schedule.base_lr': 3e-3,
    }
  )
  result = train.train_and_evaluate(config, str(root / 'vit'))
  assert result['eval/accuracy'] > 0.5
  return str(root / 'vit' / workdir_lib.PARAMS_FILE)


def test_a_locked_lit_run_learns_to_classify_zero_shot_and_leaves_the_image_tower_as_it_was(
  digits_dir, image_tower, tmp_path
):
  workdir = str(tmp_path / 'lit')
  result = train.train_and_evaluate(lit_config(digits_dir, image_tower), workdir)
  # Softmax: no bias.
  assert 'b' not in checkpoint.read_npz(workdir_lib.path(workdir, workdir_lib.PARAMS_FILE))
  assert result['eval/num_examples'] == 360
  assert result['eval/accuracy'] > 0.5, result  # Chance is 0.1.
  exported = checkpoint.read_npz(workdir_lib.path(workdir, workdir_lib.PARAMS_FILE))
  tower = checkpoint.read_npz(image_tower)
  image_keys = {k for k in tower if not k.startswith('head/')}
  assert {k for k in exported if k.startswith('img/')} == {f'img/{k}' for k in image_keys}
  for key in image_keys:  # Locked: bitwise the file's.
    np.testing.assert_array_equal(exported[f'img/{key}'], tower[key])
  assert any(k.startswith('txt/Encoder_0/encoderblock_0/') for k in exported) and 't' in exported
  assert os.path.exists(workdir_lib.path(workdir, workdir_lib.VOCAB_FILE))
  records = [json.loads(line) for line in open(workdir_lib.path(workdir, workdir_lib.METRICS_FILE))]
  losses = tiny.by_step(records, 'train/loss')
  assert losses[60] < losses[10] * 0.7, losses


def test_the_run_classifies_like_the_zero_shot_predictor_of_its_exported_file(
  digits_dir, image_tower, tmp_path
):
  """The evaluator's accuracy equals vit_jax/inference/zeroshot.py's classifier on the exported
  params.npz and vocab.model."""
  workdir = str(tmp_path / 'lit')
  config = lit_config(
    digits_dir, image_tower, total_steps=20, eval_every_steps=20, checkpoint_every_steps=20
  )
  result = train.train_and_evaluate(config, workdir)
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  from vit_jax.data import input_pipeline, preprocess

  model = models.LitModel(**config.model)
  variables = model.load_variables(workdir_lib.path(workdir, workdir_lib.PARAMS_FILE))
  vocab = workdir_lib.path(workdir, workdir_lib.VOCAB_FILE)
  logits = zeroshot.classifier(
    model,
    variables,
    model.get_tokenizer(vocab),
    DIGITS.split(','),
    zeroshot.TEMPLATES['photo'],
    batch_size=64,
  )
  batches = list(input_pipeline.eval_dataset(config, local_batch_size=64))
  correct = count = 0
  for b in batches:
    keep = b['mask'] > 0
    pred = logits(preprocess.to_float(b['image'][keep])).argmax(axis=1)
    correct, count = correct + int((pred == b['label'][keep]).sum()), count + int(keep.sum())
  assert count == 360 and result['eval/accuracy'] == pytest.approx(correct / count, abs=1.5 / 360)

  # vit_jax.predict on the run: its vocabulary, class names and templates; the same labels as the
  # classifier's.
  first = batches[0]
  paths = []
  for i in range(8):
    paths.append(str(tmp_path / f'{i}.png'))
    Image.fromarray(first['image'][i]).save(paths[-1])
  out = str(tmp_path / 'predictions.json')
  assert predict.main(['--workdir', workdir, '--top_k', '1', '--output', out, *paths]) == 0
  got = [r['predictions'][0]['label'] for r in json.load(open(out))]
  want = logits(preprocess.to_float(first['image'][:8])).argmax(axis=1)
  assert got == [DIGITS.split(',')[c] for c in want]
  from vit_jax.inference import trained as inference  # pylint: disable=g-import-not-at-top

  with pytest.raises(
    workdir_lib.WorkdirError, match='holds a LiT image-text run, which has no class head'
  ):
    inference.load_run(workdir)  # What export and visualize read: one line, not a KeyError.


def test_an_unlocked_run_trains_both_towers_and_the_sigmoid_loss_has_its_bias(
  digits_dir, image_tower, tmp_path
):
  loss = 'sigmoid'  # The locked runs above train with the softmax loss, which has no bias.
  workdir = str(tmp_path / loss)
  config = lit_config(
    digits_dir,
    image_tower,
    loss=loss,
    total_steps=10,
    eval_every_steps=10,
    checkpoint_every_steps=10,
    **{'lit.locked_image': False},
  )
  train.train_and_evaluate(config, workdir)
  exported = checkpoint.read_npz(workdir_lib.path(workdir, workdir_lib.PARAMS_FILE))
  tower = checkpoint.read_npz(image_tower)
  moved = [
    k
    for k in tower
    if not k.startswith('head/') and not np.array_equal(exported[f'img/{k}'], tower[k])
  ]
  assert len(moved) > len(tower) // 2
  assert exported['b'].shape == (1,) and exported['b'][0] != -10.0  # Trained from its init.


def test_captions_and_vocabulary_are_pure_functions_of_the_config(digits_dir):
  config = lit_config(digits_dir, '', **{'lit.templates': 'ensemble'})
  a = captions.Captions.create(config, [str(i) for i in range(10)])
  b = captions.Captions.create(config, [str(i) for i in range(10)])
  assert [a.caption(3, p) for p in range(50)] == [b.caption(3, p) for p in range(50)]
  # Every template drawn.
  assert len({a.caption(3, p) for p in range(200)}) == len(zeroshot.TEMPLATES['ensemble'])
  assert all('three' in a.caption(3, p) for p in range(20))
  captions._trained_vocabulary.cache_clear()
  assert a.vocabulary() == b.vocabulary()  # Trained again: the same bytes.
  tokens = a.tokens([3, 3], [0, 0])
  assert tokens.shape == (2, 8) and (tokens[0] == tokens[1]).all()
  assert a.prompts().shape == (10 * len(zeroshot.TEMPLATES['ensemble']), 8)
  with pytest.raises(
    zeroshot.PromptError, match='gives 3 names, but sklearn_digits has 10 classes'
  ):
    captions.Captions.create(
      lit_config(digits_dir, '', **{'lit.class_names': 'a,b,c'}), [str(i) for i in range(10)]
    )


def test_lit_configs_are_checked_whole(digits_dir):
  config = lit_config(
    digits_dir,
    '',
    accum_steps=2,
    mixup_p=0.2,
    image_size=16,
    scan_layers=True,
    **{'model.out_dim': (None, 48), 'lit.templates': ''},
  )
  with pytest.raises(check.ConfigError) as e:
    preflight.validate(config)
  text = str(e.value)
  for expected in (
    'config.accum_steps=2',
    'config.mixup_p=0.2',
    'config.image_size=16 differs from',
    'image embeddings of size 32 and text embeddings of size 48',
    'image_init is empty',
    'config.lit.templates is empty',
    'config.scan_layers=True',
  ):
    assert expected in text, text
  config = lit_config(digits_dir, '', **{'model.pp.tokenizer_name': 'bert'})
  with pytest.raises(check.ConfigError, match='give vocab_path'):
    preflight.validate(config)
  config = lit_config(digits_dir, '')
  config.model.image.unlock()
  with pytest.raises(check.UnknownFieldError, match='model.image.hidden_dim'):
    config.model.image.hidden_dim = 3
    preflight.validate(config)
  assert preflight.validate(lit_config(digits_dir, 'x.npz')) is not None


def test_a_lit_run_resumes_bit_for_bit_after_sigterm(
  digits_dir, image_tower, tmp_path, monkeypatch
):
  """Captions drawn per (seed, position), the text tower's, temperature's and bias's updates, the
  optimizer state that a locked tower does not have: the resumed run is the same run."""
  config = lambda: lit_config(
    digits_dir,
    image_tower,
    loss='sigmoid',
    total_steps=9,
    log_every_steps=2,
    eval_every_steps=9,
    checkpoint_every_steps=4,
    **{'lit.templates': 'ensemble'},
  )
  whole, parts = str(tmp_path / 'whole'), str(tmp_path / 'parts')
  train.train_and_evaluate(config(), whole)

  def sigterm_at(k, batch):
    if k == 7:
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  with monkeypatch.context() as m:
    tiny.on_train_batch(m, sigterm_at)
    assert train.train_and_evaluate(config(), parts) == {'preempted_at_step': 6}
  train.train_and_evaluate(config(), parts)
  a, b = tiny.exported_params(whole), tiny.exported_params(parts)
  assert sorted(a) == sorted(b) and 'b' in a
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert tiny.comparable(workdir_lib.read_metrics(parts)) == tiny.comparable(
    workdir_lib.read_metrics(whole)
  )


def _captioned_folder(tmp_path):
  """tiny.image_folder with a captions file: two captions per image (its class and its split and
  number)."""
  root = tiny.image_folder(tmp_path, train_per_class=6, test_per_class=3)
  lines = ['# image<TAB>caption']
  for path in sorted(pathlib.Path(root).rglob('*.*')):
    relative = path.relative_to(root)
    split, name, number = relative.parts[0], relative.parts[1], path.stem
    lines += [
      f'{relative}\ta picture of a {name}',
      f'{relative}\t{name} number {number} of the {split} set',
    ]
  (pathlib.Path(root) / 'captions.tsv').write_text('\n'.join(lines) + '\n')
  return root


def test_an_image_folder_with_captions_trains_on_them_and_is_scored_by_exact_retrieval(tmp_path):
  root = _captioned_folder(tmp_path)
  config = lit_config(
    '',
    '',
    dataset='image_folder',
    image_folder=root,
    image_size=16,
    total_steps=6,
    batch_size=16,
    eval_batch_size=8,
    eval_every_steps=6,
    checkpoint_every_steps=6,
    log_every_steps=3,
    **{
      'model.image': tiny.vit_config(),
      'model.pp.size': 16,
      'lit.locked_image': False,
      'lit.image_init': '',
      'lit.class_names': '',
      'lit.captions': f'{root}/captions.tsv',
    },
  )
  stream = captions.Captions.create(
    config, ('cat', 'dog', 'eel'), input_pipeline.open_split(config, 'train').records
  )
  assert len(stream.texts) == 18 and all(len(t) == 2 for t in stream.texts)
  drawn = {stream.caption(0, p, stream.texts[5]) for p in range(40)}
  assert drawn == set(stream.texts[5])  # The record's own captions, both drawn.

  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(config, workdir)
  keys = {f'retrieval/{d}/recall@{k}' for d in ('img2txt', 'txt2img') for k in (1, 5, 10)}
  assert keys <= set(result) and 'eval/accuracy' in result

  # The same recall, computed directly from the exported model over the 9 test images and their 18
  # captions.
  from vit_jax import models  # pylint: disable=g-import-not-at-top
  from vit_jax.data import preprocess
  from vit_jax.tasks import contrastive

  model = models.LitModel(**config.model)
  variables = model.load_variables(workdir_lib.path(workdir, workdir_lib.PARAMS_FILE))
  test = input_pipeline.open_split(config, 'test')
  texts = captions.record_texts(config, test.records)
  images = np.stack(
    [preprocess.eval_image(test.records[i]['image'], image_size=16) for i in range(len(texts))]
  )
  tokenizer = model.get_tokenizer(workdir_lib.path(workdir, workdir_lib.VOCAB_FILE))
  zimg = model.apply(variables, images=preprocess.to_float(images))[0]
  ztxt = model.apply(variables, tokens=tokenizer([t for ts in texts for t in ts]))[1]
  want = contrastive.recall_at_k(zimg, ztxt, [i for i, ts in enumerate(texts) for _ in ts])
  # Equal, but for a near-tie that rounding may flip (the evaluator embeds in sharded batches of 8,
  # this all at once): at most one image or one caption apart.
  got = {k: result[f'retrieval/{k}'] for k in want}
  assert all(abs(got[k] - want[k]) <= 1 / 9 + 1e-9 for k in want), (got, want)
  assert sum(got[k] != want[k] for k in want) <= 2, (got, want)

  bad = tmp_path / 'bad.tsv'
  bad.write_text('train/cat/0.jpg\ta cat\n')
  with pytest.raises(captions.CaptionsError, match=r'image\(s\) of .* have no caption in'):
    captions.record_texts(tiny.override(config, {'lit.captions': str(bad)}), test.records)


def test_two_processes_train_and_evaluate_a_lit_run_as_one_process_does(tmp_path):
  """2 processes x 2 devices against 1 process x 4: the same losses (the contrastive loss over the
  global batch), the same zero-shot accuracy and retrieval recall (each test image once, 9 images
  over 2 processes: padding too)."""
  root = _captioned_folder(tmp_path)
  common = [
    f'--config={tiny.REPO}/configs/lit.py',
    '--config.dataset=image_folder',
    f'--config.image_folder={root}',
    f'--config.lit.captions={root}/captions.tsv',
    '--config.lit.class_names=',
    '--config.lit.templates=photo',
    '--config.lit.image_init=',
    '--config.lit.locked_image=False',
    '--config.image_size=16',
    '--config.model.pp.size=16',
    '--config.model.image.patches.size=(4, 4)',
    '--config.model.image.hidden_size=32',
    '--config.model.image.transformer.num_layers=1',
    '--config.model.image.transformer.mlp_dim=64',
    '--config.model.image.transformer.num_heads=2',
    '--config.model.image.transformer.dropout_rate=0.0',
    '--config.model.out_dim=(None, 32)',
    '--config.model.text.num_layers=1',
    '--config.batch_size=16',
    '--config.eval_batch_size=8',
    '--config.total_steps=4',
    '--config.log_every_steps=1',
    '--config.eval_every_steps=4',
    '--config.checkpoint_every_steps=4',
    '--config.schedule.warmup_steps=1',
  ]
  w1, w2 = tmp_path / 'w1', tmp_path / 'w2'
  ((rc, out),) = tiny.run_mains(tmp_path, 'single', 4, [common + [f'--workdir={w1}']])
  assert rc == 0, out[-3000:]
  port = tiny.free_port()
  results = tiny.run_mains(
    tmp_path,
    'multi',
    2,
    [
      common
      + [
        f'--workdir={w2}',
        f'--coordinator_address=127.0.0.1:{port}',
        '--num_processes=2',
        f'--process_id={i}',
      ]
      for i in range(2)
    ],
    port,
  )
  for i, (rc, out) in enumerate(results):
    assert rc == 0, f'process {i}:\n{out[-3000:]}'
  one, two = workdir_lib.read_metrics(str(w1)), workdir_lib.read_metrics(str(w2))
  np.testing.assert_allclose(
    list(tiny.by_step(two, 'train/loss').values()),
    list(tiny.by_step(one, 'train/loss').values()),
    rtol=1e-5,
  )
  assert len(tiny.by_step(one, 'train/loss')) == 4
  last = lambda records: next(r for r in records if 'eval/accuracy' in r)
  a, b = last(one), last(two)
  keys = [k for k in a if k.startswith(('eval/accuracy', 'retrieval/'))]
  assert len(keys) == 7 and 'retrieval/txt2img/recall@5' in keys
  for key in keys:
    # Every image and caption counted once: multiples of 1/9 (images) and 1/18 (captions). The two
    # runs' weights differ by rounding (the losses agree to 1e-5), which can flip a near-tie of this
    # barely trained model's similarities: at most one image (1/9) apart.
    for value in (a[key], b[key]):
      assert round(value * 18, 6) == round(value * 18), (key, value)
    assert abs(b[key] - a[key]) <= 1 / 9 + 1e-9, (key, a[key], b[key])


def test_a_tfds_dataset_with_a_caption_feature_trains_on_it_and_is_scored_by_retrieval(tmp_path):
  """coco_captions, prepared from random examples of its real features (tiny.fake_tfds):
  captions/text read without TensorFlow, no class labels (so no zero-shot), retrieval over every
  test image's two captions."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  data_dir = tiny.fake_tfds('coco_captions', tmp_path / 'tfds', sizes={'train': 24, 'test': 6})
  corpus = tmp_path / 'corpus.txt'
  corpus.write_text('\n'.join(f'example {i}' for i in range(300)))
  spm.SentencePieceTrainer.train(
    input=str(corpus),
    model_prefix=str(tmp_path / 'sp'),
    vocab_size=40,
    hard_vocab_limit=False,
    minloglevel=2,
  )
  config = lit_config(
    data_dir,
    '',
    dataset='coco_captions',
    eval_split='test',
    image_size=16,
    total_steps=6,
    batch_size=8,
    eval_batch_size=8,
    eval_every_steps=6,
    checkpoint_every_steps=6,
    log_every_steps=2,
    **{
      'model.image': tiny.vit_config(),
      'model.pp.size': 16,
      'lit.locked_image': False,
      'lit.class_names': '',
      'lit.text_feature': 'captions/text',
      'lit.vocab_path': str(tmp_path / 'sp.model'),
    },
  )
  test = input_pipeline.open_split(config, 'test')
  texts = captions.record_texts(config, test.records)
  assert test.num_classes == 0 and len(texts) == 6 and all(len(t) == 2 for t in texts)
  assert texts[0][0].startswith('example ')
  train_texts = {
    t
    for ts in captions.record_texts(config, input_pipeline.open_split(config, 'train').records)
    for t in ts
  }
  tokenizer = captions.of_run(config).tokenizer
  allowed = {tuple(row) for row in tokenizer(sorted(train_texts))}
  run_captions = captions.of_run(config)
  stream = input_pipeline.train_dataset(config, local_batch_size=8, captions=run_captions)
  batch = tiny.take(stream, 1)[0]
  # Each example's own caption feature, tokenized.
  assert all(tuple(row) in allowed for row in batch['tokens'])
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  image = tmp_path / 'x.png'
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(image)
  # No classes: one line says --classes.
  assert predict.main(['--workdir', str(tmp_path / 'run'), str(image)]) == 1
  assert predict.main(['--workdir', str(tmp_path / 'run'), '--classes=cat,dog', str(image)]) == 0
  assert 'eval/accuracy' not in result
  for way, n in (('img2txt', 6), ('txt2img', 12)):  # 6 images, 12 captions: each counted once.
    recalls = [result[f'retrieval/{way}/recall@{k}'] for k in (1, 5, 10)]
    assert recalls == sorted(recalls) and all(round(r * n, 6) == round(r * n) for r in recalls), (
      recalls
    )
  # 6 images: every one is among a text's 10 nearest.
  assert result['retrieval/txt2img/recall@10'] == 1.0
  with pytest.raises(
    check.ConfigError, match="text_feature='captions/text' needs config.lit.vocab_path"
  ):
    preflight.validate(tiny.override(config, {'lit.vocab_path': ''}))


def test_lit_training_and_zero_shot_prediction_never_import_tensorflow(
  digits_dir, image_tower, tmp_path
):
  workdir = tmp_path / 'lit'
  args = [
    # The image tower is tiny.vit_config's plain ViT.
    f'--config={tiny.REPO}/configs/lit.py:model=vit',
    f'--workdir={workdir}',
    f'--config.tfds_data_dir={digits_dir}',
    f'--config.lit.image_init={image_tower}',
    '--config.model.image.hidden_size=32',
    '--config.model.image.transformer.num_layers=2',
    '--config.model.image.transformer.mlp_dim=64',
    '--config.model.image.transformer.num_heads=2',
    '--config.model.image.transformer.dropout_rate=0.0',
    '--config.model.image.patches.size=(2, 2)',
    '--config.model.out_dim=(None, 32)',
    '--config.total_steps=4',
    '--config.log_every_steps=2',
    '--config.eval_every_steps=4',
    '--config.checkpoint_every_steps=4',
    '--config.schedule.warmup_steps=1',
  ]
  code, imported, err = tiny.imports_tensorflow('vit_jax.main', args)
  assert code == 0 and not imported, err[-3000:]
  image = tmp_path / 'digit.png'
  Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(image)
  code, imported, err = tiny.imports_tensorflow(
    'vit_jax.predict', [f'--workdir={workdir}', str(image)]
  )
  assert code == 0 and not imported, err[-3000:]


def test_a_text_tower_and_temperature_start_from_a_lit_file(digits_dir, image_tower, tmp_path):
  """config.lit.text_init: a LiT .npz (here a finished run's params.npz) gives the text tower and t;
  with a zero learning rate they come out as they went in, while a file of another text tower is
  refused by name."""
  first = str(tmp_path / 'first')
  train.train_and_evaluate(
    lit_config(
      digits_dir, image_tower, total_steps=10, eval_every_steps=10, checkpoint_every_steps=10
    ),
    first,
  )
  source = checkpoint.read_npz(workdir_lib.path(first, workdir_lib.PARAMS_FILE))
  second = str(tmp_path / 'second')
  config = lit_config(
    digits_dir,
    image_tower,
    total_steps=2,
    eval_every_steps=2,
    checkpoint_every_steps=2,
    **{
      'lit.text_init': workdir_lib.path(first, workdir_lib.PARAMS_FILE),
      'schedule.base_lr': 0.0,
      'schedule.warmup_steps': 0,
    },
  )
  train.train_and_evaluate(config, second)
  got = checkpoint.read_npz(workdir_lib.path(second, workdir_lib.PARAMS_FILE))
  text = [k for k in source if k.startswith('txt/') or k == 't']
  assert len(text) > 10
  for key in text:
    np.testing.assert_array_equal(got[key], source[key], err_msg=key)
  wider = lit_config(
    digits_dir,
    image_tower,
    **{'lit.text_init': workdir_lib.path(first, workdir_lib.PARAMS_FILE), 'model.text.width': 48},
  )
  with pytest.raises(
    checkpoint.CheckpointMismatchError, match=r'The text tower \(txt/, t\) of .* does not fit'
  ):
    train.train_and_evaluate(wider, str(tmp_path / 'third'))


def test_precomputing_the_locked_tower_trains_as_running_it_every_step(
  digits_dir, image_tower, tmp_path
):
  """config.lit.precompute_image: the batches carry the embeddings, not the images, and the run's
  text tower, t and losses equal those of the run that applies the locked tower in every step (to
  float rounding)."""
  runs = {}
  for precompute in (False, True):
    workdir = str(tmp_path / str(precompute))
    train.train_and_evaluate(
      lit_config(
        digits_dir,
        image_tower,
        total_steps=12,
        eval_every_steps=12,
        checkpoint_every_steps=12,
        log_every_steps=4,
        **{'lit.precompute_image': precompute},
      ),
      workdir,
    )
    runs[precompute] = (
      checkpoint.read_npz(workdir_lib.path(workdir, workdir_lib.PARAMS_FILE)),
      tiny.by_step(workdir_lib.read_metrics(workdir), 'train/loss'),
    )
  (plain, plain_loss), (pre, pre_loss) = runs[False], runs[True]
  assert list(pre_loss) == [4, 8, 12]
  np.testing.assert_allclose(list(pre_loss.values()), list(plain_loss.values()), rtol=1e-5)
  for key in plain:
    np.testing.assert_allclose(pre[key], plain[key], rtol=1e-4, atol=1e-6, err_msg=key)
  config = lit_config(digits_dir, image_tower, **{'lit.precompute_image': True})
  table = np.zeros((1437, 32), np.float32)
  stream = input_pipeline.train_dataset(
    config, local_batch_size=8, captions=captions.of_run(config), image_table=table
  )
  batch = tiny.take(stream, 1)[0]
  assert 'image' not in batch and batch['zimg'].shape == (8, 32) and batch['tokens'].shape == (8, 8)
  with pytest.raises(
    check.ConfigError, match='precompute_image=True embeds each training image once'
  ):
    flipped = {'lit.precompute_image': True, 'pp.flip': True}
    preflight.validate(lit_config(digits_dir, image_tower, **flipped))


def test_a_locked_towers_optimizer_state_holds_only_the_text_tower_sharded_like_it(digits_dir):
  """No moments for the locked image tower; under FSDP the text tower's moments take its parameters'
  shardings (sharding.follow_params matches the partial subtree by name)."""
  import jax  # pylint: disable=g-import-not-at-top

  from vit_jax import sharding  # pylint: disable=g-import-not-at-top
  from vit_jax.training import state

  config = lit_config(
    digits_dir, 'x.npz', sharding_strategy='fsdp', fsdp_min_size=0, mesh=(('fsdp', -1),)
  )
  setup = state.Setup.create(config, 0, sharding.make_mesh(config.mesh))
  params = {
    jax.tree_util.keystr(p): s.spec
    for p, s in jax.tree_util.tree_flatten_with_path(setup.shardings['params'])[0]
  }
  moments = {
    jax.tree_util.keystr(p): s.spec
    for p, s in jax.tree_util.tree_flatten_with_path(setup.shardings['opt_state'])[0]
    if '.mu[' in jax.tree_util.keystr(p)
  }
  names = {k.split('.mu', 1)[1] for k in moments}
  assert names == {k for k in params if not k.startswith("['img']")}  # The text tower and t only.
  # Really sharded ...
  assert {moments[k] for k in moments if 'kernel' in k} != {jax.sharding.PartitionSpec()}
  for key, spec in moments.items():
    assert spec == params[key.split('.mu', 1)[1]], key  # ... as the parameters are.
