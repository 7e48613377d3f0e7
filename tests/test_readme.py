"""The README's commands, extracted from its ```bash blocks and run as written.

`python -m vit_jax.main` commands get a tiny model and a few steps appended (later flags win), and
local stand-ins for what they would download: TFDS datasets prepared from random examples
(tiny.fake_tfds), checkpoints written for the config the command builds, the image folders and
photos they name. Each vit_jax command is either run here or listed in COVERED_ELSEWHERE with the
test that runs it; every one of them at least parses. A README command that breaks, or a new one
that nothing runs, fails this file.
"""

import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Appended to every training command: a tiny model at 32 px, two steps, evaluation and a checkpoint
# at the end.
TINY = [
  '--config.image_size=32',
  '--config.model.hidden_size=32',
  '--config.model.transformer.num_layers=1',
  '--config.model.transformer.mlp_dim=64',
  '--config.model.transformer.num_heads=2',
  '--config.batch_size=8',
  '--config.eval_batch_size=8',
  '--config.total_steps=2',
  '--config.schedule.warmup_steps=1',
  '--config.log_every_steps=1',
  '--config.eval_every_steps=2',
  '--config.checkpoint_every_steps=2',
  '--config.prefetch=1',
  '--config.input_threads=2',
]
# The same for an MLP-Mixer's command: its own model fields (patch 16 at 32 px: 4 tokens).
TINY_MIXER = [a for a in TINY if not a.startswith('--config.model.')] + [
  '--config.model.hidden_dim=32',
  '--config.model.num_blocks=1',
  '--config.model.tokens_mlp_dim=16',
  '--config.model.channels_mlp_dim=64',
]

# The same for a LiT command (configs/lit.py): the image tower's fields, at the digits' 8 px, and a
# 1-layer text tower.
TINY_LIT = [a for a in TINY if not a.startswith(('--config.model.', '--config.image_size'))] + [
  '--config.image_size=8',
  '--config.model.pp.size=8',
  '--config.model.image.hidden_size=32',
  '--config.model.image.transformer.num_layers=1',
  '--config.model.image.transformer.mlp_dim=64',
  '--config.model.image.transformer.num_heads=2',
  '--config.model.out_dim=(None, 32)',
  '--config.model.text.num_layers=1',
]

# vit_jax commands that other tests run (with the same config file and arguments), so running them
# here again would only cost time. Keyed by a fragment of the command.
COVERED_ELSEWHERE = {
  'pip install -e . && python -m vit_jax.main': 'the default run: test_train.py '
  '(configs/default.py) and CI',
  'configs/<file>.py': 'a template, not a command',
  'configs/pretrain_i21k.py:ViT-B_16,epochs=90': 'test_recipes.py runs configs/pretrain_i21k.py',
  '--num_processes=2': 'test_multihost.py runs main.py as two processes on loopback',
  '--model=Mixer-B_32': 'test_mixer_training.py predicts with a '
  'release-layout Mixer-B_32 .npz (60M parameters)',
  'vit_jax.tools.shrink_images': 'test_shrink_images.py runs both forms: '
  'an image folder and a TFDS split',
}

# What a README command reads from elsewhere -> the stand-in path in the test's directory.
DOWNLOADS = {
  'gs://vit_models/imagenet21k/ViT-B_16.npz': 'ckpt/release_i21k_B16.npz',
  'gs://mixer_models/imagenet21k/Mixer-B_16.npz': 'ckpt/release_i21k_Mixer-B16.npz',
  '/ckpt/': 'ckpt/',
  '/data/my_images': 'my_images',
}


def readme_commands() -> list[str]:
  """Every `python -m vit_jax.*` command line in the README's bash blocks, continuation lines
  joined, comments cut."""
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  commands = []
  for block in re.findall(r'```bash\n(.*?)```', text, re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      line = re.sub(r'\s+#.*$', '', line).strip()
      if 'python -m vit_jax.' in line:
        commands.append(' '.join(line.split()))
  return commands


def _covered(command: str) -> str | None:
  return next((why for key, why in COVERED_ELSEWHERE.items() if key in command), None)


def _vit_jax_part(command: str) -> tuple[str, list[str]]:
  """(module, args) of the `python -m vit_jax.X ...` in a command line (after any `&&`)."""
  part = (
    command[command.index('python -m vit_jax.') :].split('&&')[0].split('; done')[0].rstrip(' &')
  )
  words = shlex.split(part)
  return words[2], words[3:]


def _parse(args: list[str]):
  """The config `python -m vit_jax.main args` builds (absl + config_flags, in this process)."""
  path = next((a.split('=', 1)[1] for a in args if a.startswith('--config=')), 'configs/default.py')
  return tiny.main_config(os.path.join(ROOT, path), [a for a in args if a.startswith('--config.')])


def _local(args: list[str]) -> list[str]:
  out = []
  for a in args:
    for remote, local in DOWNLOADS.items():
      a = a.replace(remote, local)
    out.append(a)
  return out


def _flag(args, name):
  return next((a.split('=', 1)[1] for a in args if a.startswith(f'--{name}=')), None)


def _write_checkpoint(path: str, model_config, num_classes: int, image_size: int) -> None:
  """A release-layout .npz of `model_config` with a head of `num_classes` (as a pretrained or
  fine-tuned file)."""
  from vit_jax import checkpoint, models  # pylint: disable=g-import-not-at-top

  model = models.model_class(model_config)(num_classes=num_classes, **model_config)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  checkpoint.save_npz(path, tiny.params_with_head(model, size=image_size))


def _photo(path: str, seed: int) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)


def _prepare(module: str, args: list[str], cwd, tfds_dir: str) -> list[str]:
  """Writes what the command reads (checkpoints, images, datasets); returns its args with the test's
  additions."""
  if module == 'vit_jax.main':
    from vit_jax import models  # pylint: disable=g-import-not-at-top

    family = models.family(_parse(args).model)
    tiny_args = {'mixer': TINY_MIXER, 'lit': TINY_LIT}.get(family, TINY)
    args = [*args, *tiny_args, f'--config.tfds_data_dir={tfds_dir}']
    config = _parse(args)
    if (
      family == 'lit' and config.lit.image_init and not os.path.exists(cwd / config.lit.image_init)
    ):
      _write_checkpoint(
        str(cwd / config.lit.image_init),
        config.model.image,
        num_classes=10,
        # The main job's params.npz, as the command expects it.
        image_size=config.image_size,
      )
    if config.dataset == 'image_folder' and not os.path.isdir(cwd / config.image_folder):
      os.rename(tiny.image_folder(cwd / 'tmp_images'), cwd / config.image_folder)
    elif config.dataset != 'image_folder':
      tiny.fake_tfds(config.dataset, tfds_dir, sizes={'train': 100, 'test': 16})
    if config.pretrained_path and not os.path.exists(cwd / config.pretrained_path):
      _write_checkpoint(
        str(cwd / config.pretrained_path), config.model, num_classes=7, image_size=config.image_size
      )
    return args
  checkpoint_path = _flag(args, 'checkpoint')
  if checkpoint_path:  # A release file of a fine-tuned model, at its size.
    from vit_jax.configs import models as presets  # pylint: disable=g-import-not-at-top

    _write_checkpoint(
      str(cwd / checkpoint_path),
      presets.MODEL_CONFIGS[_flag(args, 'model')],
      num_classes=int(_flag(args, 'num_classes') or 1000),
      image_size=32,
    )
  for a in args if module == 'vit_jax.predict' else ():
    if not a.startswith('--') and '*' not in a and not os.path.exists(cwd / a):
      if a.endswith('/'):
        for i in range(3):
          _photo(str(cwd / a / f'{i}.jpg'), seed=i)
      else:
        _photo(str(cwd / a), seed=9)
  return args


def _shapes_runs(cwd, env) -> None:
  """The runs of docs/make_figures.py that "After training" uses (runs/shapes, runs/shapes_lr3e-3 on
  the generated runs/shapes_data), made the same way but tiny: 4 images per class, 6 steps, and one
  run copied as the other."""
  sys.path.insert(0, os.path.join(ROOT, 'docs'))
  import make_figures  # pylint: disable=g-import-not-at-top

  sys.path.pop(0)
  make_figures.write_shapes(str(cwd / make_figures.DATA), train_per_class=4, test_per_class=2)
  args = [
    '--workdir=runs/shapes',
    f'--config.dataset={make_figures.DATA}',
    *TINY,
    '--config.total_steps=6',
    '--config.eval_every_steps=3',
  ]
  subprocess.run(
    [sys.executable, '-m', 'vit_jax.main', *args],
    cwd=cwd,
    env=env,
    check=True,
    capture_output=True,
    timeout=600,
  )
  # Only its curves are read: the same will do.
  shutil.copytree(cwd / 'runs/shapes', cwd / 'runs/shapes_lr3e-3')


SETUPS = {'runs/shapes': _shapes_runs}  # Runs a README command reads that no README command trains.


def _reads(command: str) -> list[str]:
  _, args = _vit_jax_part(command)
  return [
    a.split('=', 1)[1].split('/params.npz')[0]
    for a in args
    if a.startswith(('--workdir=', '--config.pretrained_path='))
  ] + [a for a in args if a.startswith('runs/')]


def _scenarios() -> list[list[str]]:
  """The runnable commands, grouped so that a command reading another's workdir (or a SETUPS run)
  runs after it, in one directory."""
  groups = []
  for command in readme_commands():
    if _covered(command):
      continue
    group = None
    if not command.startswith('python -m vit_jax.main'):
      group = next(
        (
          g
          for g in groups
          for c in g
          for r in _reads(command)
          if c != command
          and (f'--workdir={r}' in c or any(r.startswith(k) and k in c for k in SETUPS))
        ),
        None,
      )
    if group is not None:
      group.append(command)
    else:
      groups.append([command])
  return groups


def test_every_vit_jax_command_is_run_here_or_elsewhere_and_parses():
  commands = readme_commands()
  assert len(commands) >= 8, commands
  run_here = [c for g in _scenarios() for c in g]
  for command in commands:
    assert command in run_here or _covered(command), command
    module, args = _vit_jax_part(command)
    if module == 'vit_jax.main' and '<file>' not in command:
      config = _parse(args)  # Unknown fields and bad values raise here.
      assert config.total_steps > 0 or config.total_epochs > 0
  for key in COVERED_ELSEWHERE:
    assert any(key in c for c in commands), (
      f'COVERED_ELSEWHERE names {key!r}, which the README no longer has'
    )


@pytest.mark.parametrize('commands', _scenarios(), ids=lambda g: ' ; '.join(g)[:90])
def test_readme_command_runs_as_written(commands, tmp_path):
  env = {
    **os.environ,
    'JAX_PLATFORMS': 'cpu',
    'XLA_FLAGS': '--xla_force_host_platform_device_count=1',
    'PYTHONPATH': os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]),
  }
  tfds_dir = str(tmp_path / 'tfds')
  work = tmp_path / 'work'
  work.mkdir()
  os.symlink(os.path.join(ROOT, 'configs'), work / 'configs')
  for key, setup in SETUPS.items():
    if any(key in command for command in commands):
      setup(work, env)
  for command in commands:
    module, args = _vit_jax_part(command)
    args = _prepare(module, _local(args), work, tfds_dir)
    proc = subprocess.run(
      [sys.executable, '-m', module, *args],
      cwd=work,
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert proc.returncode == 0, f'{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}'
    if module == 'vit_jax.main':
      workdir = work / (_flag(args, 'workdir') or os.path.join('runs', 'vit'))
      assert (workdir / 'params.npz').exists(), sorted(os.listdir(work / 'runs'))
    elif module == 'vit_jax.predict':
      assert re.search(r'\d\.\d', proc.stdout), proc.stdout  # Labels with probabilities.
    elif 'attention' in args:
      assert any(
        f.endswith('_rollout.png') for f in os.listdir(work / _flag(args, 'workdir') / 'attention')
      )
    else:
      assert os.path.exists(work / _flag(args, 'out')), proc.stderr[-3000:]


def test_the_plain_orbax_snippet_restores_a_checkpoint_saved_on_other_devices(tmp_path, digits_dir):
  # The README's way to read a run's checkpoint without this package: a run on 2 devices, read on 1,
  # no warnings.
  with open(os.path.join(ROOT, 'README.md')) as f:
    (snippet,) = [
      b for b in re.findall(r'```python\n(.*?)```', f.read(), re.S) if 'ocp.CheckpointManager' in b
    ]
  workdir = tmp_path / 'runs' / 'default'
  done = tiny.run_main(tiny.tiny_main_args(workdir, digits_dir, steps=2), devices=2)
  assert done.returncode == 0, done.stderr[-3000:]
  read = subprocess.run(
    [sys.executable, '-c', snippet],
    cwd=tmp_path,
    env=tiny.main_env(1),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert read.returncode == 0, read.stderr[-3000:]
  # The step, and the head's kernel (width 128, 10 digits).
  assert read.stdout.split() == ['2', '(128,', '10)']
  assert 'could not be restored' not in read.stderr and 'Topology' not in read.stderr
