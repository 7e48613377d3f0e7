"""vit_jax/configs/args.py: the one grammar of a config file's argument (`--config=FILE:ARG`), its
errors, and every config file and module that takes an argument reading it with that grammar."""

import glob
import importlib
import inspect
import os

import pytest
import tiny

from configs import pretrain_i1k, transfer_offline
from configs import vit as vit_configs
from vit_jax.configs import args

GRAMMAR = args.Grammar(
  'configs/x.py',
  positional=('model', 'dataset'),
  keywords=('epochs', 'aug'),
  valid={'dataset': ('cifar10', 'pets'), 'epochs': ('90', '300')},
)


def test_values_come_first_in_order_then_keywords_the_last_of_a_key_counting():
  assert GRAMMAR.parse('ViT-B_16,pets') == {'model': 'ViT-B_16', 'dataset': 'pets'}
  assert GRAMMAR.parse(' ViT-B_16 , cifar10,,epochs=90,aug=x,epochs=300,') == {
    'model': 'ViT-B_16',
    'dataset': 'cifar10',
    'epochs': '300',
    'aug': 'x',
  }
  keywords_only = args.Grammar('f.py', keywords=('task',))
  assert keywords_only.parse('') == keywords_only.parse(None) == {}
  assert keywords_only.parse('task=a=b') == {'task': 'a=b'}  # Split at the first '='.


def test_the_usage_line_spells_out_short_choices():
  assert GRAMMAR.usage == 'configs/x.py:<model>,<dataset>[,epochs=90|300][,aug=<aug>]'
  many = args.Grammar('f.py', keywords=('task', 'model'), valid={'task': tuple('abcde')})
  assert many.usage == 'f.py:[task=<task>][,model=<model>]'


@pytest.mark.parametrize(
  'arg, message',
  [
    ('ViT-B_16,mnist', "Bad dataset='mnist' in 'ViT-B_16,mnist'; valid: cifar10, pets."),
    ('ViT-B_16,pets,epochs=45', "Bad epochs='45' in 'ViT-B_16,pets,epochs=45'; valid: 90, 300."),
    (
      'ViT-B_16,pets,lr=1',
      "Bad config argument 'lr=1' in 'ViT-B_16,pets,lr=1'; usage: "
      'configs/x.py:<model>,<dataset>[,epochs=90|300][,aug=<aug>]; keys: epochs, aug.',
    ),
    (
      'ViT-B_16',
      "Missing <dataset> in 'ViT-B_16'; usage: configs/x.py:<model>,<dataset>"
      '[,epochs=90|300][,aug=<aug>]; dataset: cifar10, pets.',
    ),
    ('', "Missing <model> in ''; usage: configs/x.py:"),
    (
      'ViT-B_16,pets,x',
      "Bad config argument 'x' in 'ViT-B_16,pets,x' (2 value(s) at most, then "
      'key=value); usage: configs/x.py:',
    ),
    (
      'ViT-B_16,epochs=90,pets',
      "Bad config argument 'pets' in 'ViT-B_16,epochs=90,pets' (a value "
      'after key=value); usage: configs/x.py:',
    ),
  ],
)
def test_a_bad_argument_is_one_error_naming_it_and_what_is_valid(arg, message):
  with pytest.raises(ValueError) as e:
    GRAMMAR.parse(arg)
  assert str(e.value).startswith(message)


def test_split_spec_splits_at_the_first_colon_as_config_flags_does():
  assert args.split_spec('configs/vit.py:ViT-B_16,cifar10') == (
    'configs/vit.py',
    'ViT-B_16,cifar10',
  )
  assert args.split_spec('configs/x.py:a:b') == ('configs/x.py', 'a:b')
  assert args.split_spec('configs/x.py:') == ('configs/x.py', '')
  assert args.split_spec('configs/x.py') == ('configs/x.py', None)


def test_every_config_file_that_takes_an_argument_reads_it_with_the_grammar():
  for path in sorted(glob.glob(os.path.join(tiny.REPO, 'configs', '*.py'))):
    module = importlib.import_module(f'configs.{os.path.basename(path)[:-3]}')
    if not inspect.signature(module.get_config).parameters:
      continue
    # (The module that defines it: configs/default.py's is the package's.)
    source = inspect.getsource(inspect.getmodule(module.get_config))
    assert 'args.Grammar(' in source or 'transfer.suite_functions(' in source, path
    assert ".split(','" not in source, path  # No second parser.


def test_the_config_files_errors_come_from_the_grammar():
  with pytest.raises(
    ValueError,
    match=r"^Missing <dataset> in 'ViT-B_16'; usage: configs/vit.py:"
    r'<model>,<dataset>; dataset: cifar10, cifar100',
  ):
    vit_configs.get_config('ViT-B_16')
  with pytest.raises(ValueError, match=r"^Bad dataset='mnist' in 'ViT-B_16,mnist'; valid: cifar10"):
    vit_configs.get_sweep(None, 'ViT-B_16,mnist')
  with pytest.raises(
    ValueError,
    match=r"^Bad config argument 'aug=light1' in 'ViT-S_16,aug=light1'"
    r'; usage: configs/pretrain_i1k.py:<model>\[,epochs=90\|150\|300\]; '
    r'keys: epochs.',
  ):
    pretrain_i1k.get_config('ViT-S_16,aug=light1')
  with pytest.raises(
    ValueError,
    match=r"^Bad task='cifar10' in 'task=cifar10'; valid: digits, "
    r'stripes.',
  ):
    transfer_offline.get_config('task=cifar10')
  with pytest.raises(
    ValueError,
    match=r"^Bad config argument 'steps=5' in 'steps=5'; usage: "
    r'configs/transfer_\*.py:\[task=digits\|stripes\]\[,model=<model>\]; '
    r'keys: task',
  ):
    transfer_offline.get_sweep(None, 'steps=5')
  assert transfer_offline.get_config('').dataset == 'sklearn_digits'  # No task: the suite's first.
