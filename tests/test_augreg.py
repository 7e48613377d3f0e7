"""vit_jax/augreg.py: AugReg checkpoints by name, from the release's index.csv (read as
`checkpoint.augreg_index`, the name vision_transformer gives it), and a fine-tuning run that starts
from an `augreg:` name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny

from vit_jax import augreg, checkpoint
from vit_jax.training import state, train

INDEX_COLUMNS = (
  'name,ds,epochs,lr,aug,wd,do,sd,best_val,final_val,final_test,'
  'adapt_ds,adapt_lr,adapt_steps,adapt_resolution,adapt_final_val,'
  'adapt_final_test,params,infer_samples_per_sec,filename,adapt_filename'
)


def _index(tmp_path):
  rows = []
  for model, name in (('B_16', 'B/16'), ('R_Ti_16', 'R+Ti/16')):
    for ds, aug, final_val in (
      ('i21k', 'medium1', 0.50),
      ('i21k', 'medium2', 0.48),
      ('i1k', 'medium2', 0.79),
    ):
      up = f'{model}-{ds}-300ep-lr_0.001-aug_{aug}-wd_0.1-do_0.0-sd_0.0'
      for adapt_ds, res, adapt_val in (
        ('cifar100', 224, 0.91),
        ('cifar100', 384, 0.93 - final_val / 10),
      ):
        down = f'{up}--{adapt_ds}-steps_10k-lr_0.01-res_{res}'
        rows.append(
          f'{name},{ds},300,0.001,{aug},0.1,0.0,0.0,{final_val},{final_val},{final_val},{adapt_ds},'
          f'0.01,10000,{res},{adapt_val},{adapt_val},86000000,300.0,{up},{down}'
        )
  (tmp_path / 'index.csv').write_text(INDEX_COLUMNS + '\n' + '\n'.join(rows) + '\n')
  return str(tmp_path / 'index.csv')


def test_augreg_index_and_names(tmp_path):
  index = _index(tmp_path)
  df = checkpoint.augreg_index(index)
  assert tuple(df.columns) == tuple(INDEX_COLUMNS.split(',')) and len(df) == 12
  up = 'B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0'
  folder = str(tmp_path)
  assert augreg.resolve(f'augreg:{up}', index) == f'{folder}/{up}.npz'
  assert augreg.resolve('augreg:B_16', index) == f'{folder}/{up}.npz'  # Best i21k by final_val.
  assert augreg.resolve('augreg:ViT-B_16', index) == f'{folder}/{up}.npz'  # Preset names work too.
  assert augreg.resolve('augreg:R+ViT-Ti_16:aug=="medium2" and ds=="i21k"', index) == (
    f'{folder}/R_Ti_16-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0.npz'
  )
  assert augreg.resolve('augreg:B_16:adapt_ds=="cifar100" and adapt_resolution==384', index) == (
    f'{folder}/B_16-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0'
    '--cifar100-steps_10k-lr_0.01-res_384.npz'
  )
  assert augreg.resolve('/ckpt/ViT-B_16.npz', index) == '/ckpt/ViT-B_16.npz'
  with pytest.raises(
    ValueError, match=r"No AugReg checkpoint of model 'L_16'.*\['B_16', 'R_Ti_16'\]"
  ):
    augreg.resolve('augreg:L_16', index)
  with pytest.raises(ValueError, match='selects no checkpoint'):
    augreg.resolve('augreg:B_16:aug=="strong2"', index)


def test_finetune_from_an_augreg_name(tmp_path):
  config = tiny.train_config(dataset=tiny.image_folder(tmp_path), total_steps=1, eval_every_steps=1)
  model = state.build_model(config, 3)
  params = model.init(jax.random.key(9), jnp.zeros((1, 16, 16, 3)))['params']
  name = 'B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0'
  checkpoint.save_npz(str(tmp_path / f'{name}.npz'), params)
  config.pretrained_path, config.augreg_index = 'augreg:B_16', _index(tmp_path)
  config.schedule.base_lr = 0.0
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  got = checkpoint.load(str(tmp_path / 'run' / 'params.npz'))
  np.testing.assert_array_equal(got['embedding']['kernel'], params['embedding']['kernel'])
