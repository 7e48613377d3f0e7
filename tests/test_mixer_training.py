"""MLP-Mixers from a config (issue 23, phase 2): a tiny Mixer trains through train_and_evaluate,
resumes exactly after SIGTERM, fine-tunes from its own params.npz into a new head, predicts; the
attention and Hugging Face tools refuse it with one line; a release-layout Mixer .npz predicts at
the resolution its token-mixing MLP fixes; the reference's mixer_base16_cifar10 recipe is
configs/vit.py:Mixer-B_16,cifar10."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from vit_jax import checkpoint, export, models, predict, sharding, utils, visualize
from vit_jax.configs import check, common, loading
from vit_jax.models import flops
from vit_jax.runtime import workdir as workdir_lib
from vit_jax.training import state, train

ONE_LINE = 2  # The error line, and the empty string after its newline.


def _config(root, **overrides):
  """A tiny Mixer (16 px, patch 4: 16 tokens) on tiny.image_folder: 7 steps, logs every 2,
  checkpoints every 4."""
  return tiny.train_config(
    **{
      'model': tiny.mixer_config(),
      'dataset': 'image_folder',
      'image_folder': root,
      'total_steps': 7,
      'log_every_steps': 2,
      'eval_every_steps': 4,
      'checkpoint_every_steps': 4,
      'remat_policy': 'full',
      **overrides,
    }
  )


@pytest.fixture(scope='module')
def mixer_run(tmp_path_factory):
  """(workdir, image folder, workdir of the same run stopped by SIGTERM at step 3 and resumed)."""
  tmp = tmp_path_factory.mktemp('mixer')
  root = tiny.image_folder(tmp)
  whole, parts = str(tmp / 'whole'), str(tmp / 'parts')
  train.train_and_evaluate(_config(root), whole)

  def sigterm_at(k, batch):
    if k == 4:  # Delivered as the loop starts step 3.
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  with pytest.MonkeyPatch.context() as m:
    tiny.on_train_batch(m, sigterm_at)
    assert train.train_and_evaluate(_config(root), parts) == {'preempted_at_step': 3}
  assert not os.path.exists(os.path.join(parts, 'params.npz'))
  train.train_and_evaluate(_config(root), parts)
  return whole, root, parts


def test_a_tiny_mixer_trains_and_resumes_exactly_after_sigterm(mixer_run):
  whole, _, parts = mixer_run
  a, b = (checkpoint.read_npz(os.path.join(w, 'params.npz')) for w in (whole, parts))
  assert sorted(a) == sorted(b)
  # The release layout: (tokens, hidden).
  assert a['MixerBlock_1/token_mixing/Dense_0/kernel'].shape == (16, 32)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert tiny.comparable(workdir_lib.read_metrics(parts)) == tiny.comparable(
    workdir_lib.read_metrics(whole)
  )
  losses = [r['train/loss'] for r in workdir_lib.read_metrics(whole) if 'train/loss' in r]
  assert len(losses) == 4 and losses[-1] < losses[0]
  last = workdir_lib.last_eval(whole)
  assert last['step'] == 7 and 0 <= last['eval/accuracy'] <= 1


def test_the_logs_count_the_mixers_flops(mixer_run):
  whole = mixer_run[0]
  expected = flops.train_flops(tiny.mixer_config(), 16, 3)
  assert expected == 3 * flops.mixer_forward_flops(tiny.mixer_config(), 16, 3) > 0
  for r in workdir_lib.read_metrics(whole):
    if 'train/tflops_per_device' in r:
      assert r['train/tflops_per_device'] * 1e12 / r[
        'train/img_per_sec_per_device'
      ] == pytest.approx(expected)


def test_its_config_json_restores_the_mixer(mixer_run):
  config = workdir_lib.load_config(mixer_run[0])
  assert config.model.to_dict() == tiny.mixer_config().to_dict() and config.remat_policy == 'full'
  assert check.validate(config) is config


def test_it_fine_tunes_from_its_own_params_npz_into_a_new_head(mixer_run, tmp_path):
  whole = mixer_run[0]
  npz = os.path.join(whole, 'params.npz')
  root = tiny.image_folder(tmp_path, classes=('a', 'b'))
  config = _config(root, pretrained_path=npz, total_steps=2, remat_policy='none')
  setup = state.Setup.create(config, 2, sharding.make_mesh(config.mesh))
  with jax.set_mesh(setup.mesh):
    loaded = utils.flatten_dict(jax.device_get(setup.with_pretrained(setup.init())['params']))
  pretrained = checkpoint.read_npz(npz)
  assert sorted(loaded) == sorted(pretrained)
  for name, value in pretrained.items():
    if name.startswith('head/'):
      np.testing.assert_array_equal(
        loaded[name], np.zeros((32, 2) if name.endswith('kernel') else (2,))
      )
    else:
      np.testing.assert_array_equal(loaded[name], value, err_msg=name)
  result = train.train_and_evaluate(config, str(tmp_path / 'ft'))
  assert result['eval/num_examples'] == 4
  assert checkpoint.read_npz(str(tmp_path / 'ft' / 'params.npz'))['head/kernel'].shape == (32, 2)


def test_predict_on_the_mixer_run_gives_the_models_own_ranking(mixer_run, tmp_path):
  whole, root, _ = mixer_run
  out = str(tmp_path / 'p.json')
  assert (
    predict.main(['--workdir', whole, os.path.join(root, 'test'), '--top_k=3', f'--output={out}'])
    == 0
  )
  records = json.load(open(out))
  assert len(records) == 6
  from vit_jax.inference import trained as inference  # pylint: disable=g-import-not-at-top

  trained = inference.load_run(whole)
  assert isinstance(trained.model, models.MlpMixer)
  images = np.stack([inference.prepare(r['file'], trained.config) for r in records])
  probs = np.asarray(
    jax.nn.softmax(trained.model.apply({'params': trained.params}, images, train=False))
  )
  for r, p in zip(records, probs):
    assert [x['label'] for x in r['predictions']] == [trained.label(i) for i in np.argsort(-p)]
    assert [x['probability'] for x in r['predictions']] == pytest.approx(
      sorted(p, reverse=True), abs=1e-6
    )


def test_attention_maps_of_a_mixer_are_refused_with_one_line(mixer_run, tmp_path, capsys):
  whole, root, _ = mixer_run
  image = os.path.join(root, 'test', 'cat', '0.jpg')
  assert visualize.main(['attention', '--workdir', whole, image, f'--out={tmp_path}/a']) == 1
  err = capsys.readouterr().err
  assert err.split('\n')[0].endswith(
    'tiny-mixer is an MLP-Mixer, which has no attention (its blocks '
    'mix tokens and channels with MLPs), so there are no attention '
    'maps to draw; attention maps are for ViT runs and checkpoints.'
  )
  assert len(err.split('\n')) == ONE_LINE and not os.path.exists(tmp_path / 'a')
  # A release file is refused before it is read: this one does not even exist.
  assert (
    visualize.main(
      ['attention', '--checkpoint', str(tmp_path / 'none.npz'), '--model', 'Mixer-B_16', image]
    )
    == 1
  )
  assert 'Mixer-B_16 is an MLP-Mixer, which has no attention' in capsys.readouterr().err


def test_the_hugging_face_export_refuses_a_mixer_with_its_reason(mixer_run, tmp_path, capsys):
  whole = mixer_run[0]
  assert export.main(['hf', '--workdir', whole, f'--out={tmp_path}/hf']) == 1
  err = capsys.readouterr().err
  assert (
    'Cannot export to ViTForImageClassification: tiny-mixer is an MLP-Mixer, and '
    'ViTForImageClassification is a transformer (attention, a class token, position embeddings) '
    'with no place for token-mixing MLPs.'
  ) in err
  assert len(err.split('\n')) == ONE_LINE and not os.path.exists(tmp_path / 'hf')
  problems = export.unsupported(
    tiny.mixer_config(), checkpoint.read_npz(os.path.join(whole, 'params.npz'))
  )
  assert len(problems) == 1  # The reason, not every field it does not know.


def test_a_release_mixer_npz_predicts_at_the_size_its_token_mixing_mlp_fixes(tmp_path, capsys):
  """Mixer-B_32 (60M parameters, random) as a release file: 49 tokens -> 7 x 32 = 224 px."""
  model = models.get_model('Mixer-B_32', num_classes=4)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))[
    'params'
  ]
  rng = np.random.default_rng(0)
  flat = {
    k: rng.normal(0, 0.02, v.shape).astype(np.float32)
    for k, v in utils.flatten_dict(shapes).items()
  }
  np.savez(tmp_path / 'Mixer-B_32.npz', **flat)
  image = tiny.image_folder(tmp_path) + '/test/dog/1.png'
  out = str(tmp_path / 'p.json')
  assert (
    predict.main(
      [
        '--checkpoint',
        str(tmp_path / 'Mixer-B_32.npz'),
        '--model',
        'Mixer-B_32',
        image,
        '--top_k=4',
        f'--output={out}',
      ]
    )
    == 0
  )
  (record,) = json.load(open(out))
  from vit_jax.inference import trained as inference  # pylint: disable=g-import-not-at-top

  params = utils.unflatten_dict(flat)
  assert inference.checkpoint_image_size(params, models.get_model_config('Mixer-B_32')) == 224
  config = common.get_config()
  config.image_size = 224
  logits = model.apply({'params': params}, inference.prepare(image, config)[None], train=False)
  assert [int(p['label']) for p in record['predictions']] == list(
    np.argsort(-np.asarray(logits[0]))
  )
  capsys.readouterr()
  assert (
    predict.main(
      [
        '--checkpoint',
        str(tmp_path / 'Mixer-B_32.npz'),
        '--model',
        'Mixer-B_32',
        image,
        '--image_size=192',
      ]
    )
    == 1
  )
  assert (
    '--image_size=192, but '
    + str(tmp_path / 'Mixer-B_32.npz')
    + ' is an MLP-Mixer trained at 224 px: its token-mixing MLP is '
    'sized by the number of patches'
  ) in capsys.readouterr().err


def test_the_reference_mixer_cifar10_recipe_is_configs_vit_mixer_b16_cifar10():
  config = loading.from_command_line('configs/vit.py:Mixer-B_16,cifar10')
  assert check.validate(config, devices=8) is config
  assert config.model.to_dict() == models.get_model_config('Mixer-B_16').to_dict()
  assert (config.optimizer.name, config.optimizer.momentum, config.optimizer.grad_clip_norm) == (
    'sgd',
    0.9,
    1.0,
  )
  assert (config.batch_size, config.schedule.base_lr, config.schedule.warmup_steps) == (
    512,
    0.03,
    500,
  )
  assert (config.schedule.decay_type, config.total_steps, config.image_size) == (
    'cosine',
    10_000,
    224,
  )
  assert (config.dataset, config.train_split, config.eval_split) == (
    'cifar10',
    'train[:98%]',
    'test',
  )
  assert loading.from_command_line('configs/vit.py:Mixer-L_16,oxford_iiit_pet').image_size == 224
  with pytest.raises(
    check.ConfigError, match=r"config.attention='xla' chooses how a ViT computes attention"
  ):
    check.validate(
      loading.from_command_line('configs/vit.py:Mixer-B_16,cifar10', ['--config.attention=xla'])
    )


def test_main_trains_a_mixer_from_the_command_line_and_predict_reads_the_run(tmp_path, digits_dir):
  """configs/vit.py:Mixer-B_16,cifar10 shrunk on the command line to the 8 px digits: config.json
  keeps the preset's name with other sizes, and predict rebuilds that model from it."""
  workdir = str(tmp_path / 'w')
  args = tiny.tiny_main_args(
    workdir,
    digits_dir,
    steps=2,
    dataset='sklearn_digits',
    train_split='train',
    image_size=8,
    batch_size=16,
    eval_batch_size=368,
    **{
      'model.patches.size': '(2, 2)',
      'model.hidden_dim': 32,
      'model.num_blocks': 1,
      'model.tokens_mlp_dim': 16,
      'model.channels_mlp_dim': 64,
    },
  )
  args = [f'--config={tiny.REPO}/configs/vit.py:Mixer-B_16,cifar10'] + [
    # tiny_main_args' one ViT field.
    a
    for a in args
    if not a.startswith('--config.model.transformer.')
  ]
  done = tiny.run_main(args)
  assert done.returncode == 0, done.stderr[-3000:]
  assert workdir_lib.last_eval(workdir)['step'] == 2
  stored = workdir_lib.load_config(workdir).model
  assert (stored.model_name, stored.hidden_dim, stored.num_blocks, stored.patches.size) == (
    'Mixer-B_16',
    32,
    1,
    (2, 2),
  )
  assert predict.main(['--workdir', workdir, tiny.image_folder(tmp_path) + '/test/cat/0.jpg']) == 0
