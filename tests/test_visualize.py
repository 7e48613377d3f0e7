"""vit_jax.visualize: training curves of several runs, and attention-map PNGs of a trained run."""

import json
import os
import subprocess
import sys

import fake_gcs
import numpy as np
from PIL import Image
import pytest
import tiny

from vit_jax import visualize


def _write_metrics(workdir, records):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)


def _train(step, loss, lr=1e-3):
  return {
    'step': step,
    'train/loss': loss,
    'train/learning_rate': lr,
    'train/img_per_sec': 100.0 + step,
  }


def test_a_repeated_step_keeps_its_last_record(tmp_path):
  run = str(tmp_path / 'resumed')
  # Crash after step 20's log, resume from the step-10 checkpoint: steps 20 is trained and logged
  # again.
  _write_metrics(
    run,
    [
      _train(10, 2.0),
      _train(20, 1.5),
      {'step': 20, 'eval/accuracy': 0.4},
      _train(20, 1.4),
      _train(30, 1.0),
      {'step': 30, 'eval/accuracy': 0.6},
    ],
  )
  curves = visualize.read_curves(run)
  np.testing.assert_array_equal(curves['train/loss'][0], [10, 20, 30])
  np.testing.assert_array_equal(curves['train/loss'][1], [2.0, 1.4, 1.0])
  # Eval records share steps with train ones.
  np.testing.assert_array_equal(curves['eval/accuracy'][0], [20, 30])
  np.testing.assert_array_equal(curves['eval/accuracy'][1], [0.4, 0.6])


def test_curves_png_of_two_runs_one_with_a_repeated_step(tmp_path):
  a, b = str(tmp_path / 'lr1e-3'), str(tmp_path / 'lr3e-3')
  _write_metrics(
    a, [_train(s, 2.0 / s) for s in (10, 20, 20, 30)] + [{'step': 30, 'eval/accuracy': 0.8}]
  )
  _write_metrics(b, [_train(s, 1.0 / s, lr=3e-3) for s in (10, 20, 30, 40)])  # No evaluation yet.
  out = str(tmp_path / 'plots' / 'curves.png')
  assert visualize.main(['curves', a, b, f'--out={out}']) == 0
  with Image.open(out) as image:
    image.load()
    assert image.format == 'PNG' and image.size == (1000, 650)
  assert visualize.run_names([a, b]) == ['lr1e-3', 'lr3e-3']
  assert visualize.run_names(['x/run', 'y/run']) == ['x/run', 'y/run']  # Same folder names: paths.


def test_curves_of_a_folder_without_metrics_is_an_error(tmp_path, capsys):
  assert visualize.main(['curves', str(tmp_path), f'--out={tmp_path}/c.png']) == 1
  assert 'has no metrics.jsonl' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    visualize.main(['curves', str(tmp_path), '--names=a,b'])


def _write_goodput(workdir, attempts):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'goodput.json'), 'w') as f:
    json.dump({'attempts': attempts}, f)


def _attempt(start, end, first, last, ended, **phases):
  return {
    'start': start,
    'end': end,
    'first_step': first,
    'last_step': last,
    'ended': ended,
    'phases': phases,
  }


def test_goodput_png_has_a_bar_per_run_and_shows_lost_time_only_where_there_was_some(tmp_path):
  clean, failed = str(tmp_path / 'clean'), str(tmp_path / 'failed')
  _write_goodput(
    clean, [_attempt(0, 100, 0, 40, 'finished', startup=10, compile=10, train=70, checkpoint=10)]
  )
  # As the second attempt leaves it: it resumed from step 20, so the first one's steps 21-30 were
  # lost.
  _write_goodput(
    failed,
    [
      _attempt(0, 60, 0, 30, 'died', startup=10, compile=10, train=30, lost=10),
      _attempt(70, 130, 20, 40, 'finished', startup=10, compile=10, train=40),
    ],
  )
  assert (
    visualize.read_goodput(failed)['lost'] == 10 and visualize.read_goodput(failed)['gap'] == 10
  )
  red = np.array([int(visualize.GOODPUT_COLORS['lost'][i : i + 2], 16) for i in (1, 3, 5)])

  def lost_pixels(path):
    with Image.open(path) as image:
      pixels = np.asarray(image.convert('RGB')).astype(int)
    return int((np.abs(pixels - red).sum(-1) < 10).sum())

  both, one = str(tmp_path / 'both.png'), str(tmp_path / 'one.png')
  assert visualize.main(['goodput', clean, failed, f'--out={both}']) == 0
  assert visualize.main(['goodput', clean, f'--out={one}']) == 0
  assert lost_pixels(both) > 100 and lost_pixels(one) == 0
  assert visualize.main(['goodput', str(tmp_path / 'nothing'), f'--out={one}']) == 1


def test_attention_pngs_of_a_run_decode(fitted_run, tmp_path, capsys):
  workdir, folder = fitted_run
  images = [os.path.join(folder, 'test', c, '0.jpg') for c in ('cat', 'eel')]
  bad = tmp_path / 'broken.jpg'
  bad.write_bytes(b'\xff\xd8 truncated')
  out = str(tmp_path / 'maps')
  assert (
    visualize.main(['attention', f'--workdir={workdir}', *images, str(bad), f'--out={out}']) == 1
  )
  assert sorted(os.listdir(out)) == [
    'cat_0_heads.png',
    'cat_0_rollout.png',
    'eel_0_heads.png',
    'eel_0_rollout.png',
  ]
  for name in os.listdir(out):
    with Image.open(os.path.join(out, name)) as image:
      image.load()
      assert image.format == 'PNG' and min(image.size) > 100
  assert f'{bad}\tERROR cannot read it as an image: not an image format' in capsys.readouterr().out


def test_curves_of_a_gcs_run_read_and_write_through_vit_jax_io(tmp_path):
  root = tmp_path / 'gcs'
  _write_metrics(str(root / 'bucket' / 'run'), [_train(s, 1.0 / s) for s in (10, 20)])
  env = {**tiny.main_env(), **fake_gcs.env(root)}
  done = subprocess.run(
    [
      sys.executable,
      '-m',
      'vit_jax.visualize',
      'curves',
      'gs://bucket/run',
      '--out=gs://bucket/plots/curves.png',
    ],
    cwd=tiny.REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout == 'gs://bucket/plots/curves.png\n'
  assert (root / 'bucket' / 'plots' / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
