"""Evaluators: named classification splits, few-shot probes on pre-logits features, durations in epochs."""
import pytest

import tiny
from vit_jax import evaluators, sharding
from vit_jax.training import metrics, train
from vit_jax.configs import durations
from vit_jax.runtime import workdir as workdir_lib
from vit_jax.training import state


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('tfds')
  tiny.fake_tfds('cifar10', d, {'train': 60, 'test': 20})
  return str(d)


def test_parse_splits():
  assert evaluators.parse_splits('test') == [('eval', 'test')]
  assert evaluators.parse_splits('minival=train[99%:], val=validation') == [
      ('minival', 'train[99%:]'), ('val', 'validation')]
  for bad, match in (('', 'empty'), ('a=x,b', 'not name=split'), ('a=x,a=y', 'repeats a name')):
    with pytest.raises(ValueError, match=match):
      evaluators.parse_splits(bad)


def test_named_splits_and_fewshot_run_on_their_cadences(tmp_path, data_dir):
  config = tiny.train_config(**{
      'tfds_data_dir': data_dir, 'async_checkpoints': False, 'total_steps': 4, 'eval_every_steps': 2,
      'eval_split': 'minival=train[:10],val=test', 'fewshot.datasets': 'cifar10:train:test',
      'fewshot.shots': (1, 3), 'fewshot.seeds': 2, 'fewshot.every_steps': 4})
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  records = workdir_lib.read_metrics(str(tmp_path / 'run'))
  by_step = {r['step']: r for r in records if 'eval/accuracy' in r}
  assert sorted(by_step) == [2, 4]
  assert {'eval/accuracy', 'eval/loss', 'eval/top5', 'eval/val/accuracy', 'eval/val/loss'} <= set(by_step[2])
  assert 'fewshot/cifar10_1shot' not in by_step[2]  # Its cadence is 4.
  assert {'fewshot/cifar10_1shot', 'fewshot/cifar10_3shot'} <= set(by_step[4])
  assert result['eval/num_examples'] == 10 and result['eval/val/num_examples'] == 20
  assert all(0.0 <= result[k] <= 1.0 for k in ('fewshot/cifar10_1shot', 'fewshot/cifar10_3shot'))


def test_fewshot_bad_dataset_spec_is_clear():
  config = tiny.train_config(**{'fewshot.datasets': 'cifar10:train'})
  with pytest.raises(ValueError, match="'cifar10:train' is not name:train_split:test_split"):
    evaluators.build(config, state.build_model(config, 10), sharding.make_mesh(config.mesh))


def test_durations_in_epochs_and_examples():
  config = tiny.train_config(batch_size=16, total_epochs=2.0, **{'schedule.warmup_examples': 48})
  resolved = durations.resolved(config, num_train=100)
  assert (resolved.total_steps, resolved.schedule.warmup_steps) == (12, 3)  # round(200 / 16), 48 / 16.
  assert config.total_steps == 4  # The original is left as it was.
  assert durations.resolved(tiny.train_config(total_steps=7), 100).total_steps == 7
  config.total_examples = 10
  with pytest.raises(ValueError, match='are both set'):
    durations.resolved(config, 100)
