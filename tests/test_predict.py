"""vit_jax.predict and vit_jax.inference.trained: a trained run classifies image files, whatever the
files."""

import csv
import json
import os

import fake_gcs
import jax
import numpy as np
import pytest
import tiny

from vit_jax import checkpoint, models, predict, utils
from vit_jax.inference import trained as inference


def _images(folder, split='train'):
  return sorted(
    os.path.join(root, f) for root, _, files in os.walk(os.path.join(folder, split)) for f in files
  )


def test_a_fitted_run_predicts_the_labels_of_its_images(fitted_run, tmp_path):
  workdir, folder = fitted_run
  out = str(tmp_path / 'p.json')
  assert (
    predict.main(
      ['--workdir', workdir, os.path.join(folder, 'train'), '--top_k=3', f'--output={out}']
    )
    == 0
  )
  records = json.load(open(out))
  assert [r['file'] for r in records] == _images(folder)
  for r in records:
    # The class folder.
    assert r['predictions'][0]['label'] == os.path.basename(os.path.dirname(r['file']))
    probs = [p['probability'] for p in r['predictions']]
    # 3 of 3 classes.
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-6)
    assert {p['label'] for p in r['predictions']} == {'cat', 'dog', 'eel'}


def test_an_undecodable_file_is_reported_by_name_and_the_others_still_predicted(
  fitted_run, tmp_path, capsys
):
  workdir, folder = fitted_run
  bad = tmp_path / 'notes.png'
  bad.write_text('not an image')
  good = _images(folder, 'test')
  out = str(tmp_path / 'p.csv')
  rc = predict.main(
    [
      '--workdir',
      workdir,
      good[0],
      str(bad),
      good[-1],
      str(tmp_path / 'missing.jpg'),
      '--top_k=2',
      '--batch_size=2',
      f'--output={out}',
    ]
  )
  assert rc == 1
  rows = list(csv.DictReader(open(out)))
  errors = {r['file']: r['error'] for r in rows if r['error']}
  assert sorted(errors) == sorted([str(bad), str(tmp_path / 'missing.jpg')])
  assert errors[str(bad)].startswith(
    'cannot read it as an image: not an image format that can be decoded'
  )
  assert 'BytesIO' not in errors[str(bad)]
  assert errors[str(tmp_path / 'missing.jpg')] == 'no such file'
  ranked = [(r['file'], r['rank'], r['label']) for r in rows if not r['error']]
  assert [(f, k) for f, k, _ in ranked] == [
    (good[0], '1'),
    (good[0], '2'),
    (good[-1], '1'),
    (good[-1], '2'),
  ]
  assert ranked[0][2] == 'cat' and ranked[2][2] == 'eel'
  printed = capsys.readouterr().out
  assert (
    f'{bad}\tERROR cannot read it as an image: not an image format' in printed
    and f'{good[0]}\tcat ' in printed
  )


def test_load_run_takes_the_newer_of_checkpoint_and_params_npz(fitted_run):
  workdir, _ = fitted_run
  npz = os.path.join(workdir, 'params.npz')
  latest = os.path.join(workdir, 'checkpoints', '40', '_CHECKPOINT_METADATA')
  stamp = os.path.getmtime(latest)
  try:
    os.utime(npz, (stamp - 60, stamp - 60))
    from_checkpoint = inference.load_run(workdir)
    os.utime(npz, (stamp + 60, stamp + 60))
    from_npz = inference.load_run(workdir)
  finally:
    os.utime(npz, (stamp + 1, stamp + 1))
  assert 'checkpoint at step 40' in from_checkpoint.source and from_npz.source == npz
  # Stacked blocks, restored as such and stacked from the npz.
  assert from_checkpoint.config.scan_layers
  a, b = utils.flatten_dict(from_checkpoint.params), utils.flatten_dict(from_npz.params)
  assert a.keys() == b.keys() and 'Transformer/encoderblock/LayerNorm_0/scale' in a
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert from_npz.class_names == ['cat', 'dog', 'eel'] and from_npz.num_classes == 3


def test_release_npz_with_a_preset_name(tmp_path):
  model = models.get_model('testing', num_classes=4)
  params = tiny.params_with_head(model, size=32)
  path = str(tmp_path / 'testing.npz')
  checkpoint.save_npz(path, params)
  trained = inference.load_npz(path, model_name='testing', class_names=['a', 'b', 'c', 'd'])
  assert trained.config.image_size == 32  # From the position embeddings' 2x2 grid of 16 px patches.
  images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(
    trained.model.apply({'params': trained.params}, images),
    jax.jit(model.apply)({'params': params}, images),
    rtol=1e-5,
    atol=1e-6,
  )
  assert inference.load_npz(path, model_name='testing', image_size=48).params['Transformer'][
    'posembed_input'
  ]['pos_embedding'].shape == (1, 10, 10)  # Resampled to a 3x3 grid.
  with pytest.raises(ValueError, match='--num_classes=5, but the head of .* has 4 classes'):
    inference.load_npz(path, model_name='testing', num_classes=5)
  with pytest.raises(checkpoint.CheckpointError, match='does not fit the model'):
    inference.load_npz(path, model_name='ViT-Ti_16')


def test_bad_model_arguments_are_one_line_errors(tmp_path, capsys):
  for argv, message in [
    (['x.png'], 'exactly one of --workdir'),
    (['--checkpoint=a.npz', 'x.png'], '--checkpoint needs --model'),
    ([f'--workdir={tmp_path}', '--model=testing', 'x.png'], '--model go with --checkpoint'),
    (['--workdir=w', '--output=p.txt', 'x.png'], 'must end in .json or .csv'),
  ]:
    with pytest.raises(SystemExit) as e:
      predict.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
  assert predict.main([f'--workdir={tmp_path}', 'x.png']) == 1  # Not a run: a user error, one line.
  err = capsys.readouterr().err
  assert (
    'holds no config.json' in err and 'Traceback' not in err and len(err.strip().splitlines()) == 1
  )


def test_expand_inputs_reads_folders_globs_and_files(tmp_path):
  for name in ('a/1.png', 'a/b/2.JPG', 'a/notes.txt', 'c.gif'):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(b'')
  files, missing = inference.expand_inputs(
    [
      str(tmp_path / 'a'),
      str(tmp_path / '*.gif'),
      str(tmp_path / 'a/1.png'),
      str(tmp_path / 'none*.png'),
      str(tmp_path / 'gone.png'),
    ]
  )
  # Once each.
  assert files == [str(tmp_path / 'a/1.png'), str(tmp_path / 'a/b/2.JPG'), str(tmp_path / 'c.gif')]
  assert missing == [
    (str(tmp_path / 'none*.png'), 'no file matches'),
    (str(tmp_path / 'gone.png'), 'no such file'),
  ]


def test_probabilities_softmax_and_sigmoid():
  logits = np.array([[0.0, np.log(3.0)]])
  np.testing.assert_allclose(predict.probabilities(logits), [[0.25, 0.75]])
  np.testing.assert_allclose(predict.probabilities(logits, 'sigmoid'), [[0.5, 0.75]])


def test_predict_never_imports_tensorflow_and_reports_each_unreadable_input(fitted_run, tmp_path):
  workdir, folder = fitted_run
  good = _images(folder, 'test')[0]
  out = tmp_path / 'p.json'
  code, imported, err = tiny.imports_tensorflow(
    'vit_jax.predict',
    [
      '--workdir',
      workdir,
      good,
      'https://example.com/cat.jpg',
      'gs://locked/x.jpg',
      f'--output={out}',
    ],
    env=fake_gcs.env(tmp_path / 'gcs', unreachable=['locked']),
  )
  assert not imported
  assert code == 1 and 'Traceback' not in err, err[-2000:]
  errors = {r['file']: r['error'] for r in json.loads(out.read_text()) if 'error' in r}
  assert errors == {
    'https://example.com/cat.jpg': 'Cannot read https://example.com/cat.jpg: vit_jax reads local '
    'paths and gs:// URLs, not https://.',
    'gs://locked/x.jpg': 'Cannot use gs://locked/x.jpg: RuntimeError: 403 Forbidden: caller does '
    'not have storage.objects.get access to gs://locked/x.jpg. Check the network, the credentials '
    '(gcloud auth application-default login) and the bucket name.',
  }
  assert [r['file'] for r in json.loads(out.read_text()) if 'predictions' in r] == [good]
