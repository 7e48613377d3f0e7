"""Evaluators: config entries (type, prefix, cadence) registered by name, the default entries (the
metric names of a config without entries), named classification splits, few-shot probes on
pre-logits features, durations in epochs."""

import inspect

import pytest
import tiny

from vit_jax import evaluators, sharding
from vit_jax.configs import choices, common, durations, presets
from vit_jax.runtime import workdir as workdir_lib
from vit_jax.training import metrics, state, train


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp('tfds')
  tiny.fake_tfds('cifar10', d, {'train': 60, 'test': 20})
  return str(d)


def test_parse_splits():
  assert evaluators.parse_splits('test') == [('eval', 'test')]
  assert evaluators.parse_splits('minival=train[99%:], val=validation') == [
    ('minival', 'train[99%:]'),
    ('val', 'validation'),
  ]
  for bad, match in (('', 'empty'), ('a=x,b', 'not name=split'), ('a=x,a=y', 'repeats a name')):
    with pytest.raises(ValueError, match=match):
      evaluators.parse_splits(bad)


def test_named_splits_and_fewshot_run_on_their_cadences(tmp_path, data_dir):
  config = tiny.train_config(
    **{
      'tfds_data_dir': data_dir,
      'async_checkpoints': False,
      'total_steps': 4,
      'eval_every_steps': 2,
      'eval_split': 'minival=train[:10],val=test',
      'fewshot.datasets': 'cifar10:train:test',
      'fewshot.shots': (1, 3),
      'fewshot.seeds': 2,
      'fewshot.every_steps': 4,
    }
  )
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  records = workdir_lib.read_metrics(str(tmp_path / 'run'))
  by_step = {r['step']: r for r in records if 'eval/accuracy' in r}
  assert sorted(by_step) == [2, 4]
  assert {'eval/accuracy', 'eval/loss', 'eval/top5', 'eval/val/accuracy', 'eval/val/loss'} <= set(
    by_step[2]
  )
  assert 'fewshot/cifar10_1shot' not in by_step[2]  # Its cadence is 4.
  assert {'fewshot/cifar10_1shot', 'fewshot/cifar10_3shot'} <= set(by_step[4])
  assert result['eval/num_examples'] == 10 and result['eval/val/num_examples'] == 20
  assert all(0.0 <= result[k] <= 1.0 for k in ('fewshot/cifar10_1shot', 'fewshot/cifar10_3shot'))


def test_config_entries_write_their_prefixes_on_their_cadences_not_the_defaults(tmp_path, data_dir):
  val = {'type': 'classification', 'prefix': 'val/', 'every_steps': 1, 'split': 'train[:10]'}
  probe = {
    'type': 'fewshot',
    'prefix': 'probe/',
    'every_steps': 3,
    'datasets': 'cifar10:train:test',
    'shots': (1, 2),
    'seeds': 1,
  }
  config = tiny.train_config(
    **{
      'tfds_data_dir': data_dir,
      'async_checkpoints': False,
      'total_steps': 4,
      'eval_every_steps': 4,
      'evals.val': val,
      'evals.probe': probe,
    }
  )
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  records = workdir_lib.read_metrics(str(tmp_path / 'run'))
  assert tiny.logged_steps(records, 'val/accuracy') == [1, 2, 3, 4]
  assert tiny.logged_steps(records, 'probe/cifar10_1shot') == [3, 4]  # Every 3 steps, and the last.
  written = {k for r in records for k in r}
  assert not [k for k in written if k.startswith(('eval/', 'fewshot/'))]  # No default entries.
  assert result['val/num_examples'] == 10
  assert {'val/accuracy', 'val/loss', 'val/top5'} <= set(result)
  probes = {k for k in result if k.startswith('probe/')}
  assert probes == {'probe/cifar10_1shot', 'probe/cifar10_2shot'}


def test_the_default_entries_give_the_metric_names_of_a_config_without_evals():
  config = tiny.train_config(
    **{
      'eval_split': 'minival=train[99%:],val=validation',
      'eval_every_steps': 50,
      'fewshot.datasets': 'cifar100:train:test',
      'fewshot.every_steps': 0,
    }
  )
  assert evaluators.default_evals(config) == {
    'minival': {
      'type': 'classification',
      'prefix': 'eval/',
      'every_steps': 50,
      'split': 'train[99%:]',
    },
    'val': {
      'type': 'classification',
      'prefix': 'eval/val/',
      'every_steps': 50,
      'split': 'validation',
    },
    'fewshot': {'type': 'fewshot', 'prefix': 'fewshot/', 'every_steps': 50},
  }
  config.fewshot.every_steps = 200
  assert evaluators.default_evals(config)['fewshot']['every_steps'] == 200
  assert evaluators.entries(config) == evaluators.default_evals(config)  # config.evals is empty.


@pytest.mark.parametrize('has_classes', [True, False])
def test_the_default_entries_of_a_lit_run_with_captions(monkeypatch, has_classes):
  config = common.get_config()
  config.model = presets.get_model_config('LiT-L16Ti')
  config.update(eval_split='test', eval_every_steps=20)
  config.lit.captions = 'captions.tsv'
  monkeypatch.setattr(evaluators.zeroshot, 'has_classes', lambda c: has_classes)
  zeroshot = {'eval': {'type': 'zeroshot', 'prefix': 'eval/', 'every_steps': 20, 'split': 'test'}}
  retrieval = {'type': 'retrieval', 'prefix': 'retrieval/', 'every_steps': 20, 'split': 'test'}
  assert evaluators.default_evals(config) == {
    **(zeroshot if has_classes else {}),
    'eval_retrieval': retrieval,
  }
  config.eval_split = 'a=test,b=train[:5]'
  kinds = [(e['type'], e['prefix']) for e in evaluators.default_evals(config).values()]
  classify = [('zeroshot', 'eval/'), ('zeroshot', 'eval/b/')] if has_classes else []
  assert kinds == classify + [('retrieval', 'retrieval/'), ('retrieval', 'eval/b/retrieval/')]


def test_every_registered_evaluator_takes_the_options_the_check_accepts():
  assert tuple(evaluators.REGISTRY) == choices.EVAL_TYPES
  for kind, evaluator in evaluators.REGISTRY.items():
    parameters = inspect.signature(evaluator).parameters
    options = tuple(name for name in parameters if name not in ('config', 'model', 'mesh'))
    assert options == choices.EVAL_OPTIONS[kind], kind
    assert all(parameters[n].default is not inspect.Parameter.empty for n in options), kind


def test_fewshot_bad_dataset_spec_is_clear():
  config = tiny.train_config(**{'fewshot.datasets': 'cifar10:train'})
  with pytest.raises(ValueError, match="'cifar10:train' is not name:train_split:test_split"):
    evaluators.build(config, state.build_model(config, 10), sharding.make_mesh(config.mesh))


def test_durations_in_epochs_and_examples():
  config = tiny.train_config(batch_size=16, total_epochs=2.0, **{'schedule.warmup_examples': 48})
  resolved = durations.resolved(config, num_train=100)
  # round(200 / 16), 48 / 16.
  assert (resolved.total_steps, resolved.schedule.warmup_steps) == (12, 3)
  assert config.total_steps == 4  # The original is left as it was.
  assert durations.resolved(tiny.train_config(total_steps=7), 100).total_steps == 7
  config.total_examples = 10
  with pytest.raises(ValueError, match='are both set'):
    durations.resolved(config, 100)
