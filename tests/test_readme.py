"""The commands of the README and of every guide in docs/, extracted from their ```bash blocks (and
the README's table of configs) and run as written; and their links, checked.

`python -m vit_jax.main` commands get a tiny model and a few steps appended (later flags win), and
local stand-ins for what they would download: TFDS datasets prepared from random examples
(tiny.fake_tfds), checkpoints written for the config the command builds, the image folders and
photos they name. Each vit_jax command is either run here or listed in COVERED_ELSEWHERE with the
test that runs it; every one of them at least parses. `python -m launch.*` commands drive clouds and
clusters: each is listed in LAUNCH_COVERED with the test that runs it against a fake. A ```bash
block that nothing here runs says so in an HTML comment right before it: `<!-- not run here: why
-->`. A command that breaks, a new one that nothing runs, or a relative link to a missing file or
section fails this file.
"""

import ast
import glob
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
# The README first: a command that several documents show runs once, as the first one has it.
DOCS = ['README.md', *sorted(os.path.relpath(p, ROOT) for p in glob.glob(f'{ROOT}/docs/*.md'))]
NOT_RUN = re.compile(r'<!-- not run here: (\S.*?) -->\s*$')

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
  'configs/pretrain_i1k.py:ViT-S_16': 'test_recipes.py runs configs/pretrain_i1k.py:ViT-S_16 '
  '(test_i1k_recipe_runs_with_both_splits_and_resumes_exactly)',
  'configs/<file>.py': 'a template, not a command',
  'configs/pretrain_i21k.py:ViT-B_16,epochs=90': 'test_recipes.py runs configs/pretrain_i21k.py',
  '--num_processes=2': 'test_multihost.py runs main.py as two processes on loopback',
  '--model=Mixer-B_32': 'test_mixer_training.py predicts with a '
  'release-layout Mixer-B_32 .npz (60M parameters)',
  'vit_jax.tools.shrink_images': 'test_shrink_images.py runs both forms: '
  'an image folder and a TFDS split',
}

# The same for commands that are exactly this (a fragment would match every command).
COVERED_EXACTLY = {
  'python -m vit_jax.main': 'the main job: test_train.py (configs/default.py) and CI'
}

# `python -m launch.*` commands (clouds, clusters, sweeps) -> the test that runs that launcher the
# same way, against fakes of gcloud, gs://, SLURM and SkyPilot, or offline. Keyed by a fragment.
LAUNCH_COVERED = {
  'launch.tpu launch': 'test_launch_tpu.py, test_launch_code.py (a fake gcloud: create, set up, '
  'run, supervise, preempt, delete)',
  'launch.sweep --config=configs/vit.py:ViT-B_16,cifar10 --backend=tpu --tpu_mode=one_vm': (
    'test_launch_tpu.py::test_sweep_on_one_vm_runs_each_run_in_turn_then_deletes_the_node'
  ),
  'launch.sweep results gs://': 'test_launch_sweep.py::'
  'test_results_of_a_gcs_sweep_are_read_and_written_through_vit_jax_io',
  'launch.sweep --config=configs/default.py --sweep_dir=runs/lr_sweep': 'test_launch_sweep.py::'
  'test_local_sweep_runs_two_at_a_time_then_results_then_a_rerun_skips (the same sweep, tiny)',
  'launch.sweep results runs/lr_sweep': 'test_launch_sweep.py (results of the local sweep)',
  'launch.slurm --nodes=2 --gpus_per_node=8': 'test_launch_slurm.py (the script; a 2-task job on a '
  'local SLURM where there is one)',
  'launch.sky --accelerators=H100:8 --nodes=2': 'test_launch_sky.py (the task file)',
  'launch.transfer --pretrained=runs/default --suite=configs/transfer_offline.py': (
    'test_launch_transfer.py::test_the_offline_suite_end_to_end_interrupted_and_resumed'
  ),
  '--suite=configs/transfer_paper.py': 'test_launch_transfer.py plans every run of the paper suite '
  '(its datasets are not here to train on)',
  '--suite=configs/transfer_vtab.py': 'test_launch_transfer.py plans every run of the VTAB suite '
  '(its datasets are not here to train on)',
}

# What a README command reads from elsewhere -> the stand-in path in the test's directory.
DOWNLOADS = {
  'gs://vit_models/imagenet21k/ViT-B_16.npz': 'ckpt/release_i21k_B16.npz',
  'gs://mixer_models/imagenet21k/Mixer-B_16.npz': 'ckpt/release_i21k_Mixer-B16.npz',
  '/ckpt/': 'ckpt/',
  '/data/my_images': 'my_images',
}


def _read(name: str) -> str:
  with open(os.path.join(ROOT, name)) as f:
    return f.read()


def _bash_blocks(text: str) -> list[tuple[str, str | None]]:
  """(block, why it is not run here or None) of each ```bash block."""
  return [
    (m.group(1), (NOT_RUN.search(text[: m.start()]) or [None, None])[1])
    for m in re.finditer(r'```bash\n(.*?)```', text, re.S)
  ]


def _commands_of(block: str) -> list[str]:
  commands = []
  for line in block.replace('\\\n', ' ').splitlines():
    line = re.sub(r'\s+#.*$', '', line).strip()
    if 'python -m vit_jax.' in line or 'python -m launch.' in line:
      commands.append(' '.join(line.split()))
  return commands


def _config_table_commands(text: str) -> list[str]:
  """The commands of the README's table of config files (a row per `configs/*.py`)."""
  rows = [line for line in text.splitlines() if line.startswith('| `configs/')]
  return [c for row in rows for c in re.findall(r'`(python -m (?:vit_jax|launch)\.[^`]*)`', row)]


def doc_commands(*, not_run: bool = False) -> list[str]:
  """Every `python -m vit_jax.*` and `python -m launch.*` command line in the bash blocks of DOCS
  (continuation lines joined, comments cut) and in the README's table of configs, each once; with
  `not_run`, those of the blocks marked as not run here instead."""
  commands = _config_table_commands(_read('README.md')) if not not_run else []
  for name in DOCS:
    for block, why in _bash_blocks(_read(name)):
      if bool(why) == not_run:
        commands += _commands_of(block)
  return list(dict.fromkeys(commands))


def readme_commands() -> list[str]:
  """The `python -m vit_jax.*` commands that run (here or in the test named for them)."""
  return [c for c in doc_commands() if 'python -m vit_jax.' in c]


def _covered(command: str) -> str | None:
  if command in COVERED_EXACTLY:
    return COVERED_EXACTLY[command]
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
    f'--config={make_figures.CONFIG}',
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


SETUPS = {'runs/shapes': _shapes_runs}  # Runs a command reads that no documented command trains.


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
      f'COVERED_ELSEWHERE names {key!r}, which no document has any more'
    )


def test_every_launch_command_names_the_test_that_runs_it():
  commands = [c for c in doc_commands() if 'python -m launch.' in c]
  assert len(commands) >= 8, commands
  for command in commands:
    assert any(key in command for key in LAUNCH_COVERED), (
      f'{command}: no test runs it (add it to LAUNCH_COVERED with the test, or mark its block '
      '<!-- not run here: why -->)'
    )
  for key in LAUNCH_COVERED:
    assert any(key in c for c in commands), f'LAUNCH_COVERED names {key!r}, which no document has'


def test_every_bash_block_is_run_or_says_why_not():
  for name in DOCS:
    for block, why in _bash_blocks(_read(name)):
      assert why or _commands_of(block), (
        f'{name}: nothing runs this block; mark it <!-- not run here: why -->:\n{block}'
      )


def test_every_python_block_is_python():
  blocks = [
    (name, b) for name in DOCS for b in re.findall(r'```python\n(.*?)```', _read(name), re.S)
  ]
  assert len(blocks) >= 4
  for name, block in blocks:
    ast.parse(block, filename=name)  # A SyntaxError names the document and the line.


def github_anchors(text: str) -> set[str]:
  """The anchors GitHub gives the headings of a markdown text: lower case, punctuation dropped
  (letters, digits, '_', '-' and spaces kept), spaces as '-', '-1', '-2', ... for repeats."""
  text = re.sub(r'```.*?```', '', text, flags=re.S)  # (a '# comment' in a code block is no heading)
  anchors, seen = set(), {}
  for heading in re.findall(r'^#{1,6} +(.+?) *#* *$', text, re.M):
    slug = re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')
    anchors.add(slug if slug not in seen else f'{slug}-{seen[slug]}')
    seen[slug] = seen.get(slug, 0) + 1
  return anchors


def test_github_anchors_follow_githubs_rules():
  text = "# A b\n## SLURM: 2 nodes × 8 GPUs\n```\n# not a heading\n```\n## A b\n### `x.py` (it's)\n"
  assert github_anchors(text) == {'a-b', 'slurm-2-nodes--8-gpus', 'a-b-1', 'xpy-its'}


def test_no_relative_link_points_at_a_missing_file_or_section():
  checked = 0
  for name in DOCS:
    text = _read(name)
    prose = re.sub(r'```.*?```', '', text, flags=re.S)
    for target in re.findall(r'\]\(([^)\s]+)\)', prose):
      if re.match(r'[a-z]+:', target):  # http://, https://, mailto:
        continue
      path, _, anchor = target.partition('#')
      full = os.path.normpath(os.path.join(ROOT, os.path.dirname(name), path)) if path else None
      where = f'{name}: ({target})'
      assert full is None or os.path.exists(full), f'{where}: no file {os.path.relpath(full, ROOT)}'
      if anchor:
        linked = _read(os.path.relpath(full, ROOT)) if full else text
        assert anchor in github_anchors(linked), f'{where}: no section #{anchor}'
      checked += 1
  assert checked >= 40, checked


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
  # The documented way to read a run's checkpoint without this package (docs/runs.md): a run on 2
  # devices, read on 1, no warnings.
  (snippet,) = [
    b
    for name in DOCS
    for b in re.findall(r'```python\n(.*?)```', _read(name), re.S)
    if 'ocp.CheckpointManager' in b
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
