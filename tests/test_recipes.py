"""The pretraining recipes: their published settings, and 3 steps end to end on small prepared TFDS
data with their evaluators, resuming exactly after a SIGTERM."""

import os
import signal

import numpy as np
import pytest
import tiny

from configs import pretrain_i1k, pretrain_i21k
from vit_jax import checkpoint
from vit_jax.configs import durations
from vit_jax.runtime import workdir as workdir_lib
from vit_jax.training import train

TINY = {
  'model.hidden_size': 32,
  'model.transformer.num_layers': 1,
  'model.transformer.mlp_dim': 64,
  'model.transformer.num_heads': 2,
  'model.patches.size': (4, 4),
  'image_size': 16,
  'batch_size': 16,
  'eval_batch_size': 16,
  'total_epochs': 0.0,
  'total_steps': 3,
  'schedule.warmup_steps': 1,
  'log_every_steps': 1,
  'eval_every_steps': 3,
  'checkpoint_every_steps': 1,
  'input_threads': 2,
  'prefetch': 1,
}


def test_i21k_recipe_settings():
  config = pretrain_i21k.get_config('ViT-B_16')
  assert (config.dataset, config.train_split, config.eval_split) == (
    'imagenet21k',
    'full[51200:]',
    'val=full[25600:51200]',
  )
  assert (config.batch_size, config.total_epochs, config.loss, config.model.head_bias_init) == (
    4096,
    300,
    'sigmoid',
    -10.0,
  )
  assert (config.model.classifier, config.model.posemb) == ('token', 'learn')
  opt, sched = config.optimizer, config.schedule
  assert (
    opt.name,
    opt.b1,
    opt.b2,
    opt.accumulator_dtype,
    opt.weight_decay,
    opt.grad_clip_norm,
  ) == ('adamw', 0.9, 0.999, 'bfloat16', 0.1, 1.0)
  assert (sched.base_lr, sched.warmup_steps, sched.decay_type, sched.end_lr) == (
    1e-3,
    10_000,
    'cosine',
    0.0,
  )
  # big_vision's wd.
  assert config.optimizer.weight_decay * config.schedule.base_lr == pytest.approx(1e-4)
  # light2.
  assert (config.pp.randaugment_layers, config.pp.randaugment_magnitude, config.mixup_p) == (
    2,
    10.0,
    0.2,
  )
  assert config.fewshot.datasets.split(',') == [
    'cifar100:train:test',
    'oxford_iiit_pet:train:test',
    'dtd:train:test',
    'caltech101:train:test',
  ]
  assert pretrain_i21k.get_config('ViT-L_16').mixup_p == 0.5  # medium2.
  assert pretrain_i21k.get_config('ViT-Ti_16').pp.randaugment_layers == 0  # none.
  assert pretrain_i21k.get_config('ViT-S_16,aug=strong2,epochs=90').total_epochs == 90
  with pytest.raises(ValueError, match=r"Bad epochs='45'.*valid: 300, 90, 30"):
    pretrain_i21k.get_config('ViT-B_16,epochs=45')
  with pytest.raises(ValueError, match=r'No default AugReg level for ViT-H_14.*aug=<level>'):
    pretrain_i21k.get_config('ViT-H_14')


def test_i1k_recipe_settings_and_durations_in_epochs():
  config = pretrain_i1k.get_config('ViT-S_16')
  assert (config.model.classifier, config.model.posemb, config.model.transformer.dropout_rate) == (
    'gap',
    'sincos2d',
    0.0,
  )
  assert (config.train_split, config.eval_split) == (
    'train[:99%]',
    'minival=train[99%:],val=validation',
  )
  assert (config.batch_size, config.total_epochs, config.loss, config.mixup_p) == (
    1024,
    90,
    'softmax',
    0.2,
  )
  assert (config.pp.randaugment_layers, config.pp.randaugment_magnitude) == (2, 10.0)
  # 256 -> 224.
  assert (config.pp.eval_resize, config.pp.eval_crop_fraction) == ('shorter_side', 0.875)
  assert pretrain_i1k.get_config('ViT-S_16,epochs=300').total_epochs == 300
  # 90 epochs of ImageNet-1k's train[:99%] (1,268,355 images) at batch 1024.
  assert durations.resolved(config, 1_268_355).total_steps == round(90 * 1_268_355 / 1024)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('tfds')
  tiny.fake_tfds('imagenet21k', d, {'full': 60})
  tiny.fake_tfds('imagenet2012', d, {'train': 100, 'validation': 20})
  tiny.fake_tfds('cifar100', d, {'train': 200, 'test': 20})
  return str(d)


def _tiny(config, data_dir, **extra):
  return tiny.override(config, {**TINY, 'tfds_data_dir': data_dir, **extra})


def _run_and_resume(tmp_path, make_config):
  whole, parts = str(tmp_path / 'whole'), str(tmp_path / 'parts')
  result = train.train_and_evaluate(make_config(), whole)

  def sigterm_at(k, batch):
    if k == 3:  # As step 2 starts.
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  with pytest.MonkeyPatch.context() as m:
    tiny.on_train_batch(m, sigterm_at)
    assert train.train_and_evaluate(make_config(), parts) == {'preempted_at_step': 2}
  train.train_and_evaluate(make_config(), parts)
  a, b = (checkpoint.read_npz(os.path.join(w, 'params.npz')) for w in (whole, parts))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert tiny.comparable(workdir_lib.read_metrics(parts)) == tiny.comparable(
    workdir_lib.read_metrics(whole)
  )
  return result


def test_i21k_recipe_runs_with_its_evaluators_and_resumes_exactly(tmp_path, data_dir):
  make = lambda: _tiny(
    pretrain_i21k.get_config('ViT-B_16'),
    data_dir,
    train_split='full[20:]',
    eval_split='val=full[10:20]',
    **{
      'fewshot.datasets': 'cifar100:train:test',
      'fewshot.shots': (1, 2),
      'fewshot.every_steps': 3,
    },
  )
  result = _run_and_resume(tmp_path, make)
  assert result['eval/num_examples'] == 10
  assert {'eval/accuracy', 'eval/loss', 'fewshot/cifar100_1shot', 'fewshot/cifar100_2shot'} <= set(
    result
  )


def test_i1k_recipe_runs_with_both_splits_and_resumes_exactly(tmp_path, data_dir):
  result = _run_and_resume(tmp_path, lambda: _tiny(pretrain_i1k.get_config('ViT-S_16'), data_dir))
  # minival, then validation.
  assert result['eval/num_examples'] == 1 and result['eval/val/num_examples'] == 20
