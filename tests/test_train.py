"""The training system: train step, gradient accumulation, end-to-end runs with resume, exact eval, config errors."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny
from vit_jax import checkpoint, evaluate, flops, input_pipeline, metrics, preprocess, sharding, train
from vit_jax import workdir as workdir_lib
from vit_jax import state
from vit_jax.configs import check

REPO = pathlib.Path(__file__).resolve().parents[1]


def _setup(config):
  mesh, train_state, step, _ = tiny.train_setup(config)
  return mesh, state.build_model(config, 10), train_state, step


def _batch(n=16, size=16, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32),
          'label': rng.integers(0, 10, n).astype(np.int32)}


def test_one_train_step_starts_at_log_num_classes_and_updates_params():
  config = tiny.train_config(**{'schedule.warmup_steps': 0})
  mesh, _, state, step = _setup(config)
  before = jax.device_get(state['params'])
  with jax.set_mesh(mesh):
    state, stats = step(state, _batch())
  assert int(state['step']) == 1
  np.testing.assert_allclose(float(stats['loss']), np.log(10), rtol=1e-6)  # Zero-init head: uniform softmax.
  np.testing.assert_allclose(float(stats['learning_rate']), 1e-3, rtol=1e-6)
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state['params'], before)
  assert moved['head']['kernel'] == pytest.approx(1e-3, rel=1e-3)  # Adam's first step: lr * sign(grad).
  assert moved['embedding']['kernel'] == 0.0  # Behind a zero head, the first gradient is zero...
  with jax.set_mesh(mesh):
    state, _ = step(state, _batch(seed=1))
  assert np.abs(np.asarray(state['params']['embedding']['kernel']) - before['embedding']['kernel']).max() > 0


def test_train_steps_are_deterministic_for_a_seed():
  config = tiny.train_config(**{'model.transformer.dropout_rate': 0.1, 'schedule.warmup_steps': 0})
  results = []
  for _ in range(2):
    mesh, _, state, step = _setup(config)
    with jax.set_mesh(mesh):
      for i in range(3):
        state, stats = step(state, _batch(seed=i))
    results.append((float(stats['loss']), np.asarray(state['params']['embedding']['kernel'])))
  assert results[0][0] == results[1][0]
  np.testing.assert_array_equal(results[0][1], results[1][1])


def test_gradient_accumulation_equals_one_large_batch():
  outs = []
  for accum in (1, 2):
    config = tiny.train_config(**{'accum_steps': accum, 'optimizer.name': 'sgd', 'schedule.warmup_steps': 0,
                                  'schedule.base_lr': 0.1, 'optimizer.grad_clip_norm': 0.0})
    mesh, _, state, step = _setup(config)
    with jax.set_mesh(mesh):
      for i in range(2):
        state, stats = step(state, _batch(seed=i))
    outs.append((float(stats['loss']), float(stats['grad_norm']), jax.device_get(state['params'])))
  assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-5)
  assert outs[0][1] == pytest.approx(outs[1][1], rel=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), outs[0][2], outs[1][2])


def test_exact_eval_counts_each_example_once_when_batch_does_not_divide(tmp_path):
  root = tiny.image_folder(tmp_path, train_per_class=2, test_per_class=3)  # 9 test images, eval batch 8.
  config = tiny.train_config(**{'dataset': 'image_folder', 'image_folder': root, 'eval_batch_size': 8})
  mesh, model, state, _ = _setup(config)
  shard = sharding.batch_sharding(mesh)
  with jax.set_mesh(mesh):
    ds = input_pipeline.eval_dataset(config, local_batch_size=8)
    batches = list(ds)
    params = jax.device_get(state['params'])
    params['head']['kernel'] = np.random.default_rng(0).normal(size=params['head']['kernel'].shape)
    result = evaluate.evaluate(jax.jit(evaluate.make_eval_step(model)), params,
                               (input_pipeline.make_global_batch(b, shard) for b in batches))
  real = [(b['image'][b['mask'] > 0], b['label'][b['mask'] > 0]) for b in batches]
  images = np.concatenate([r[0] for r in real])
  labels = np.concatenate([r[1] for r in real])
  logits = np.asarray(model.apply({'params': params}, preprocess.to_float(images)))
  assert len(batches) == 2 and len(labels) == 9 and result['eval/num_examples'] == 9
  assert result['eval/accuracy'] == pytest.approx(np.mean(logits.argmax(-1) == labels), abs=1e-7)
  log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
      -1, keepdims=True)
  assert result['eval/loss'] == pytest.approx(-np.mean(log_probs[np.arange(9), labels]), rel=1e-5)
  label_logits = logits[np.arange(9), labels][:, None]
  assert result['eval/top5'] == pytest.approx(np.mean((logits > label_logits).sum(-1) < 5), abs=1e-7)


def _steps(records, key):
  return [r['step'] for r in records if key in r]


def test_end_to_end_cifar10_writes_metrics_checkpoints_and_resumes(tmp_path):
  workdir = str(tmp_path / 'run')
  data_dir = tiny.fake_tfds('cifar10', tmp_path / 'tfds', {'train': 32, 'test': 32})
  config = tiny.train_config(tfds_data_dir=data_dir)
  result = train.train_and_evaluate(config, workdir)
  records = workdir_lib.read_metrics(workdir)
  assert _steps(records, 'train/loss') == [2, 4]
  assert _steps(records, 'eval/accuracy') == [4]
  assert 0.0 <= result['eval/accuracy'] <= 1.0 and 0.0 <= result['eval/top5'] <= 1.0
  assert {'train/learning_rate', 'train/img_per_sec'} <= set(records[0])
  per_image = flops.train_flops(config.model, config.image_size, 10)
  assert records[0]['train/img_per_sec_per_device'] == pytest.approx(records[0]['train/img_per_sec'] / 8)
  assert records[0]['train/tflops_per_device'] == pytest.approx(
      records[0]['train/img_per_sec_per_device'] * per_image / 1e12)
  assert 'train/mfu' not in records[0]  # No known peak for a CPU.
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  assert json.load(open(os.path.join(workdir, 'config.json')))['total_steps'] == 4
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))

  # The same run with more steps resumes at step 4: nothing before it is recomputed or lost.
  train.train_and_evaluate(tiny.train_config(total_steps=6, tfds_data_dir=data_dir), workdir)
  records = workdir_lib.read_metrics(workdir)
  assert _steps(records, 'train/loss') == [2, 4, 6]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '6']
  params = checkpoint.read_npz(os.path.join(workdir, 'params.npz'))
  assert params['head/kernel'].shape == (32, 10)


def test_end_to_end_image_folder_and_resume_restores_state(tmp_path):
  root = tiny.image_folder(tmp_path)
  workdir = str(tmp_path / 'run')
  config = tiny.train_config(**{'dataset': 'image_folder', 'image_folder': root, 'total_steps': 2,
                                'eval_every_steps': 2})
  result = train.train_and_evaluate(config, workdir)
  assert result['eval/num_examples'] == 6
  first = checkpoint.read_npz(os.path.join(workdir, 'params.npz'))
  assert first['head/kernel'].shape == (32, 3)
  assert workdir_lib.read_class_names(workdir) == ['cat', 'dog', 'eel']  # For predict and export.
  # total_steps already reached: the rerun restores the checkpoint, evaluates it and exports the same params.
  again = train.train_and_evaluate(config, workdir)
  assert again['eval/accuracy'] == result['eval/accuracy']
  second = checkpoint.read_npz(os.path.join(workdir, 'params.npz'))
  for k in first:
    np.testing.assert_array_equal(first[k], second[k])


def test_speed_scalars_give_per_device_tflops_and_mfu_against_the_peak():
  speed = metrics.Speed(train_flops=3e9, num_devices=4, peak_tflops=100.0)
  out = speed.scalars(img_per_sec=8000.0)
  assert out == pytest.approx({'train/img_per_sec': 8000.0, 'train/img_per_sec_per_device': 2000.0,
                               'train/tflops_per_device': 6.0, 'train/mfu': 0.06})
  assert 'train/mfu' not in metrics.Speed(3e9, 4, None).scalars(8000.0)


def test_batch_size_that_does_not_split_over_devices_is_clear_error():
  with pytest.raises(check.ConfigError, match=r'config.batch_size=12 must be a multiple of the 8 batch shards'):
    check.validate(tiny.train_config(batch_size=12), devices=8, files=False)
  with pytest.raises(check.ConfigError, match=r'accum_steps=4'):
    check.validate(tiny.train_config(batch_size=16, accum_steps=4), devices=8, files=False)


def test_image_size_not_multiple_of_patch_is_clear_error():
  with pytest.raises(check.ConfigError, match=r'config.image_size=18 is not a multiple of the 4 px per token'):
    check.validate(tiny.train_config(image_size=18), files=False)


def test_finetune_presets_and_their_errors():
  from configs import vit as vit_configs  # pylint: disable=g-import-not-at-top
  config = vit_configs.get_config('ViT-B_16,cifar10')
  assert (config.schedule.base_lr, config.batch_size, config.total_steps, config.image_size) == (0.01, 512, 10_000, 384)
  assert (config.optimizer.name, config.optimizer.momentum, config.optimizer.grad_clip_norm) == ('sgd', 0.9, 1.0)
  assert (config.schedule.warmup_steps, config.schedule.decay_type) == (500, 'cosine')
  assert vit_configs.get_config('ViT-L_16,imagenet2012').total_steps == 20_000
  assert vit_configs.get_config('ViT-L_16,cifar100').schedule.base_lr == 0.03
  with pytest.raises(ValueError, match=r"'ViT-Q_3'.*ViT-B_16"):
    vit_configs.get_config('ViT-Q_3,cifar10')
  with pytest.raises(ValueError, match=r"'mnist'.*cifar10, cifar100, imagenet2012, oxford_iiit_pet"):
    vit_configs.get_config('ViT-B_16,mnist')


def _run_main(args, tmp_path):
  env = {**os.environ, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-m', 'vit_jax.main', *args], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=300)


def test_main_trains_default_config_with_overrides(tmp_path):
  proc = _run_main([f'--config={REPO}/configs/default.py', f'--workdir={tmp_path}/w',
                    f'--config.tfds_data_dir={tmp_path}/tfds', '--config.total_steps=3', '--config.log_every_steps=1',
                    '--config.eval_every_steps=3', '--config.schedule.warmup_steps=1'], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  records = workdir_lib.read_metrics(f'{tmp_path}/w')
  assert _steps(records, 'train/loss') == [1, 2, 3]
  assert [r['eval/accuracy'] for r in records if 'eval/accuracy' in r][0] >= 0.0
  assert 'step 3/3' in proc.stderr and 'ETA' in proc.stderr


def test_main_rejects_unknown_config_key(tmp_path):
  proc = _run_main([f'--workdir={tmp_path}/w', '--config.batchsize=3'], tmp_path)
  assert proc.returncode != 0
  assert 'batchsize' in proc.stderr
  assert not os.path.exists(f'{tmp_path}/w')


def test_finetune_from_pretrained_npz_starts_from_its_weights(tmp_path):
  root = tiny.image_folder(tmp_path)
  source = state.build_model(tiny.train_config(), 7)
  params = source.init(jax.random.key(5), jnp.zeros((1, 8, 8, 3)))['params']  # 2x2 grid: resampled to 4x4.
  checkpoint.save_npz(str(tmp_path / 'pre.npz'), params)
  config = tiny.train_config(**{'dataset': 'image_folder', 'image_folder': root, 'total_steps': 1,
                                'schedule.base_lr': 0.0, 'pretrained_path': str(tmp_path / 'pre.npz')})
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  out = checkpoint.read_npz(str(tmp_path / 'run' / 'params.npz'))
  np.testing.assert_array_equal(out['embedding/kernel'], params['embedding']['kernel'])
  posemb = params['Transformer']['posembed_input']['pos_embedding']
  np.testing.assert_allclose(out['Transformer/posembed_input/pos_embedding'],
                             checkpoint.interpolate_posembed(posemb, 17, True), rtol=1e-6)
  np.testing.assert_array_equal(out['head/kernel'], np.zeros((32, 3)))  # New head for 3 classes.


def test_training_on_a_prepared_dataset_never_imports_tensorflow(tmp_path, digits_dir):
  code, imported, err = tiny.imports_tensorflow('vit_jax.main', tiny.tiny_main_args(tmp_path / 'w', digits_dir))
  assert code == 0, err[-3000:]
  assert not imported  # TensorFlow is for preparing TFDS datasets only (vit_jax/sources.py).
  code, imported, err = tiny.imports_tensorflow('vit_jax.main', tiny.tiny_main_args(tmp_path / 'w2', tmp_path / 'new'))
  assert code == 0 and imported, err[-3000:]  # Preparing sklearn_digits does import it.


def test_total_epochs_0_with_total_steps_is_complete_for_the_trainer_and_the_launchers(tmp_path, digits_dir):
  from launch import record  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'w')
  args = tiny.tiny_main_args(workdir, digits_dir, steps=3, total_epochs=0.0)  # The README's recipe override.
  assert tiny.run_main(args).returncode == 0
  assert record.status(record.read(workdir)) == 'finished' and workdir_lib.is_complete(workdir)
  again = tiny.run_main(args)
  assert again.returncode == 0 and 'is complete (step 3 of total_steps=3): nothing to do' in again.stderr
  assert record.status(record.read(workdir), overrides={'total_steps': '5'}) != 'finished'  # Raised: trains on.
