"""Tiny model configs that keep the suite fast."""

import os

import ml_collections
import numpy as np
from PIL import Image

from vit_jax import models


def vit_config(
  classifier='token',
  *,
  hidden=32,
  layers=2,
  heads=2,
  mlp=64,
  patch=4,
  dropout=0.0,
  representation_size=None,
  resnet=None,
):
  return ml_collections.ConfigDict(
    {
      'model_name': 'tiny',
      'patches': {'size': (patch, patch)},
      'hidden_size': hidden,
      'transformer': {
        'num_layers': layers,
        'mlp_dim': mlp,
        'num_heads': heads,
        'dropout_rate': dropout,
        'attention_dropout_rate': dropout,
        'drop_path_rate': 0.0,
      },
      'classifier': classifier,
      'posemb': 'learn',
      'representation_size': representation_size,
      'head_bias_init': 0.0,
      'resnet': resnet,
    }
  )


def mixer_config(
  *, patch=4, hidden=32, blocks=2, tokens_mlp=32, channels_mlp=64, name='tiny-mixer'
):
  """A tiny MLP-Mixer's model config (MlpMixer's fields; the MLP widths divide over a 'model' axis
  of 4)."""
  return ml_collections.ConfigDict(
    {
      'model_name': name,
      'patches': {'size': (patch, patch)},
      'hidden_dim': hidden,
      'num_blocks': blocks,
      'tokens_mlp_dim': tokens_mlp,
      'channels_mlp_dim': channels_mlp,
    }
  )


def hybrid_config(num_layers=(1, 1), **kw):
  return vit_config(
    patch=1, resnet=ml_collections.ConfigDict({'num_layers': num_layers, 'width_factor': 0.5}), **kw
  )


def train_config(**overrides):
  """A tiny, fast training config (16 px, width 32, depth 2) on cifar10 (give
  tfds_data_dir=fake_tfds(...), or another dataset); keys 'a.b' override nested fields."""
  from vit_jax.configs import common  # pylint: disable=g-import-not-at-top

  config = common.get_config()
  config.model = vit_config()
  config.dataset = 'cifar10'
  config.image_size = 16
  config.pp.crop = 'inception'
  config.batch_size = 16
  config.eval_batch_size = 16
  config.total_steps = 4
  config.optimizer.name = 'adam'
  config.schedule.base_lr = 1e-3
  config.schedule.warmup_steps = 1
  config.log_every_steps = 2
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 2
  config.keep = 2
  config.prefetch = 1
  config.input_threads = 2
  return override(config, overrides)


def data_config(**overrides):
  """The default config at 16 px with 2 input threads, for the input pipeline; keys 'a__b' override
  nested fields."""
  from vit_jax.configs import common  # pylint: disable=g-import-not-at-top

  config = common.get_config()
  config.image_size = 16
  config.input_threads = 2
  return override(config, {k.replace('__', '.'): v for k, v in overrides.items()})


def take(ds, n):
  it = iter(ds)
  return [next(it) for _ in range(n)]


def main_config(path, args=()):
  """The config that `python -m vit_jax.main --config=path args...` would get (absl + config_flags,
  no process)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  values = flags.FlagValues()
  argv = ['main', f'--config={path}', *args]
  config_flags.DEFINE_config_file(
    'config', path, '', flag_values=values, lock_config=True, sys_argv=argv
  )
  values(argv)
  return values.config


def override(config, overrides):
  """Sets {'a.b': value} fields of a ConfigDict in place; returns it."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def image_folder(tmp_path, train_per_class=4, test_per_class=2, classes=('cat', 'dog', 'eel')):
  """Writes DIR/{train,test}/<class>/*.png|jpg of random pixels (brightness by class); returns
  DIR."""
  rng = np.random.default_rng(0)
  for split, n in (('train', train_per_class), ('test', test_per_class)):
    for label, name in enumerate(classes):
      folder = tmp_path / 'images' / split / name
      folder.mkdir(parents=True)
      for i in range(n):
        pixels = (rng.uniform(0, 1, (20, 24, 3)) * 80 + 80 * label).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f'{i}.{"png" if i % 2 else "jpg"}')
  return str(tmp_path / 'images')


def train_setup(config, num_classes=10, params=None):
  """(mesh, state, jitted train step, batch sharding) as the trainer builds them
  (vit_jax.training.state.Setup); `params` replace the init."""
  import jax  # pylint: disable=g-import-not-at-top

  from vit_jax import sharding  # pylint: disable=g-import-not-at-top
  from vit_jax.training import state

  mesh = sharding.make_mesh(config.mesh)
  setup = state.Setup.create(config, num_classes, mesh)
  with jax.set_mesh(mesh):
    train_state = setup.init()
    if params is not None:
      train_state = setup.with_params(train_state, params)
  return mesh, train_state, setup.train_step(donate=False), setup.batch_sharding


def random_batch(seed, n=16, size=16, num_classes=10):
  rng = np.random.default_rng(seed)
  return {
    'image': rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32),
    'label': rng.integers(0, num_classes, n).astype(np.int32),
  }


def pre_linen(flat, prefix='opt/target/'):
  """Flat per-layer names -> the original (pre-Linen) release file's names, under `prefix`."""
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top

  return {prefix + name: v for name, v in checkpoint.release_names(flat).items()}


def fake_tfds(name, data_dir, sizes=None, seed=0, file_format='array_record'):
  """Prepares TFDS dataset `name` in `data_dir` for real (`file_format` files and dataset info) from
  random examples of its features, instead of its download: {'train': 40, 'test': 20} by default.
  Labels cycle 0, 1, 2, ... Returns data_dir."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder(name, data_dir=str(data_dir))
  if builder.is_prepared():
    return str(data_dir)
  rng = np.random.default_rng(seed)

  def value(feature, i):
    # Two items (e.g. coco_captions' captions and objects).
    if isinstance(feature, tfds.features.Sequence):
      return [value(feature.feature, 10 * i + j) for j in range(2)]
    if isinstance(feature, tfds.features.BBoxFeature):
      return tfds.features.BBox(0.1, 0.2, 0.5, 0.6)
    if isinstance(feature, tfds.features.ClassLabel):
      return i % feature.num_classes
    if isinstance(feature, tfds.features.Text):
      return f'example {i}'
    if isinstance(feature, tfds.features.FeaturesDict):
      return {k: value(f, i) for k, f in feature.items()}
    shape = tuple(32 if d is None else d for d in feature.shape)
    dtype = np.dtype(feature.np_dtype)
    if dtype.kind in 'OSU':  # A string tensor (coco_captions' captions/text).
      return f'example {i}'
    if dtype.kind in 'iu':
      return rng.integers(0, 255 if dtype == np.uint8 else 3, shape).astype(dtype)
    if dtype.kind == 'b':
      return rng.integers(0, 2, shape).astype(bool)
    return rng.uniform(0, 1, shape).astype(dtype)

  def examples(n):
    for i in range(n):
      yield i, {k: value(f, i) for k, f in builder.info.features.items()}

  sizes = sizes or {'train': 40, 'test': 20}
  builder._split_generators = lambda dl_manager: {s: examples(n) for s, n in sizes.items()}
  builder.download_and_prepare(file_format=file_format)
  return str(data_dir)


def params_with_head(model, *, size=16, seed=0, qk_scale=1.0):
  """Init params of `model` at `size` px with a random (not zero) head, so logits differ between
  inputs; query and key kernels scaled by `qk_scale` (> 1 makes attention peaked rather than near
  uniform)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from vit_jax import utils  # pylint: disable=g-import-not-at-top

  params = jax.jit(
    lambda: model.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)), train=False)
  )()['params']
  flat = {k: np.asarray(v) for k, v in utils.flatten_dict(params).items()}
  rng = np.random.default_rng(seed)
  flat['head/kernel'] = rng.normal(0, 1, flat['head/kernel'].shape).astype(np.float32)
  flat['head/bias'] = rng.normal(0, 0.1, flat['head/bias'].shape).astype(np.float32)
  for name in flat:
    if name.endswith(('query/kernel', 'key/kernel')):
      flat[name] = flat[name] * qk_scale
  return utils.unflatten_dict(flat)


def fitted_run(root, *, steps=40, **overrides):
  """Trains a tiny model on `image_folder(root)` until it fits the train images; returns (workdir,
  image folder)."""
  from vit_jax.training import train  # pylint: disable=g-import-not-at-top

  folder = image_folder(root)
  workdir = str(root / 'run')
  config = train_config(
    **{
      'dataset': 'image_folder',
      'image_folder': folder,
      'total_steps': steps,
      'eval_every_steps': steps,
      'checkpoint_every_steps': steps,
      'log_every_steps': 10,
      'pp.crop': 'resize',
      'pp.flip': False,
      'schedule.base_lr': 3e-3,
      **overrides,
    }
  )
  train.train_and_evaluate(config, workdir)
  return workdir, folder


def images(seed, n=2, size=32):
  """`n` random images in [-1, 1], float32 [n, size, size, 3], from jax.random.key(seed)."""
  import jax  # pylint: disable=g-import-not-at-top

  return np.asarray(
    jax.random.uniform(jax.random.key(seed), (n, size, size, 3), minval=-1, maxval=1)
  )


# --------------------------------------------------------------------------------------------------
# Runs that are interrupted and resumed: a tiny image-folder run, its training batches as the loop
# draws them, and what it leaves in its workdir.

TIMING_KEYS = (
  'train/img_per_sec',
  'train/img_per_sec_per_device',
  'train/tflops_per_device',
  'train/mfu',
)


def folder_config(root, **overrides):
  """Tiny image-folder run: 7 steps, logs every 2, checkpoints every 4, dropout on (the RNG must
  resume too)."""
  return train_config(
    **{
      'dataset': 'image_folder',
      'image_folder': root,
      'total_steps': 7,
      'log_every_steps': 2,
      'eval_every_steps': 4,
      'checkpoint_every_steps': 4,
      'model.transformer.dropout_rate': 0.1,
      **overrides,
    }
  )


def on_train_batch(monkeypatch, fn):
  """Passes the k-th training batch (1-based) through fn(k, batch) as the loop draws it (eval
  batches untouched).

  With config.prefetch=1 the loop draws batch k + 1 while it starts step k.
  """
  from vit_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top

  real = input_pipeline.prefetch_to_device

  def wrapped(iterator, size, shard):
    def batches():
      for k, batch in enumerate(iterator, start=1):
        yield batch if 'mask' in batch else fn(k, batch)

    return real(batches(), size, shard)

  monkeypatch.setattr(input_pipeline, 'prefetch_to_device', wrapped)


def comparable(records):
  """Metrics records without the timings (which differ between two runs of the same steps)."""
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def exported_params(workdir):
  """The flat params of a finished run (its params.npz)."""
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from vit_jax.runtime import workdir as workdir_lib

  return checkpoint.read_npz(workdir_lib.path(workdir, workdir_lib.PARAMS_FILE))


def snapshot(workdir):
  """{relative path: bytes} of every file under workdir."""
  import pathlib  # pylint: disable=g-import-not-at-top

  out = {}
  for path in pathlib.Path(workdir).rglob('*'):
    if path.is_file():
      out[str(path.relative_to(workdir))] = path.read_bytes()
  return out


# --------------------------------------------------------------------------------------------------
# `python -m vit_jax.main` as a user runs it: one process, or several of one multi-process run
# (SMALL, run_mains).

REPO = __import__('pathlib').Path(__file__).resolve().parents[1]


# XLA's CPU backend at LLVM -O0: the suite's tiny programs compile in about half the CPU time
# (measured: a tiny ViT's init 6.2 -> 3.4 s, its train step 12.5 -> 6.3 s on 8 devices), and the
# suite's time is mostly compiling; they run no slower (dispatch-bound). The HLO passes are the
# same; the last bits of a result can differ from -O3 (e.g. no fused multiply-add), the same in
# every process of the suite. conftest.py sets it for the pytest processes, main_env for those they
# start.
FAST_COMPILE_XLA_FLAGS = '--xla_backend_optimization_level=0'


def main_env(devices=1, **extra):
  """The environment of a `python -m vit_jax.main` process: CPU, `devices` XLA devices, quiet
  TensorFlow."""
  import os  # pylint: disable=g-import-not-at-top

  return {
    **os.environ,
    'JAX_PLATFORMS': 'cpu',
    'CUDA_VISIBLE_DEVICES': '',
    'TF_CPP_MIN_LOG_LEVEL': '2',
    'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices} {FAST_COMPILE_XLA_FLAGS}',
    **extra,
  }


def main_command(*args):
  import sys  # pylint: disable=g-import-not-at-top

  return [sys.executable, '-m', 'vit_jax.main', *map(str, args)]


def run_main(args, *, cwd=REPO, devices=1, timeout=600, env=None):
  """Runs `python -m vit_jax.main ARGS` to the end; the CompletedProcess (text stdout/stderr)."""
  import subprocess  # pylint: disable=g-import-not-at-top

  return subprocess.run(
    main_command(*args),
    cwd=cwd,
    env=env or main_env(devices),
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def start_main(args, *, cwd=REPO, devices=1, log=None, env=None):
  """Starts `python -m vit_jax.main ARGS`; stdout and stderr together to `log` (an open file, or
  subprocess.PIPE for one pipe), else to two pipes; text. The Popen."""
  import subprocess  # pylint: disable=g-import-not-at-top

  out = (
    dict(stdout=log, stderr=subprocess.STDOUT)
    if log
    else dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  )
  return subprocess.Popen(
    main_command(*args), cwd=cwd, env=env or main_env(devices), text=True, **out
  )


def tiny_main_args(workdir, tfds_dir, steps=4, **overrides):
  """Arguments of a fast default run (configs/default.py, 1 layer) in `workdir` with the digits in
  `tfds_dir`."""
  flags = {
    'tfds_data_dir': tfds_dir,
    'total_steps': steps,
    'log_every_steps': 1,
    'eval_every_steps': steps,
    'checkpoint_every_steps': steps,
    'schedule.warmup_steps': 1,
    'model.transformer.num_layers': 1,
    **overrides,
  }
  return [f'--workdir={workdir}', *(f'--config.{k}={v}' for k, v in flags.items())]


SMALL_STEPS = 5
SMALL = [
  '--config.model.hidden_size=32',
  '--config.model.transformer.num_layers=1',
  '--config.model.transformer.mlp_dim=64',
  '--config.model.transformer.num_heads=2',
  '--config.model.transformer.dropout_rate=0.0',
  '--config.batch_size=16',
  '--config.eval_batch_size=16',
  f'--config.total_steps={SMALL_STEPS}',
  '--config.log_every_steps=1',
  f'--config.eval_every_steps={SMALL_STEPS}',
  f'--config.checkpoint_every_steps={SMALL_STEPS}',
  '--config.schedule.warmup_steps=1',
]


def free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top

  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def logged_steps(records, key):
  """The steps of the metrics records that hold `key`."""
  return [r['step'] for r in records if key in r]


def by_step(records, key):
  return {r['step']: r[key] for r in records if key in r}


def run_mains(tmp_path, name, devices, arg_lists, port=None, *, timeout=300, failed_grace=60):
  """Starts one `python -m vit_jax.main` per argument list (each in an empty cwd, `devices` XLA
  devices each) and waits for all; once one fails the others get `failed_grace` seconds to fail too;
  kills any still running at the timeout. The coordinator binds to 127.0.0.1:`port` where given.
  Returns [(returncode, stdout + stderr)]."""
  import os  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top

  # The coordinator listens on all interfaces ([::]) unless told otherwise.
  env = main_env(
    devices, **({} if port is None else {'JAX_COORDINATOR_BIND_ADDRESS': f'127.0.0.1:{port}'})
  )
  procs, logs = [], []
  for i, args in enumerate(arg_lists):
    cwd = tmp_path / f'{name}_cwd{i}'
    cwd.mkdir()
    logs.append(open(tmp_path / f'{name}_{i}.log', 'w+', encoding='utf-8'))
    procs.append(start_main(args, cwd=cwd, env=env, log=logs[-1]))
  deadline = time.monotonic() + timeout
  while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
    # One failed: the others get a minute to fail too.
    if any(p.poll() not in (None, 0) for p in procs):
      deadline = min(deadline, time.monotonic() + failed_grace)
    time.sleep(0.5)
  hung = [i for i, p in enumerate(procs) if p.poll() is None]
  for i in hung:
    procs[i].kill()
    procs[i].wait()
  assert not hung, (
    f'{name}: processes {hung} still running at the deadline (hang); killed. Logs in {tmp_path}.'
  )
  results = []
  for p, log in zip(procs, logs):
    log.seek(0)
    results.append((p.returncode, log.read()))
    log.close()
  for i in range(len(arg_lists)):  # Nothing written outside the workdir.
    assert os.listdir(tmp_path / f'{name}_cwd{i}') == [], f'{name} process {i} wrote into its cwd'
  return results


def mount_tmpfs(path, size):
  """Mounts a tmpfs of `size` (e.g. '12m') at `path` (root only); pytest.skip with the reason where
  not allowed."""
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top

  import pytest  # pylint: disable=g-import-not-at-top

  os.makedirs(path, exist_ok=True)
  done = subprocess.run(
    ['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
    capture_output=True,
    text=True,
  )
  if done.returncode:
    pytest.skip(f'cannot mount a tmpfs here (needs root): {done.stderr.strip()}')


def remount(path, options):
  import subprocess  # pylint: disable=g-import-not-at-top

  subprocess.run(['mount', '-o', f'remount,{options}', str(path)], check=True)


def umount(path):
  import subprocess  # pylint: disable=g-import-not-at-top

  subprocess.run(['umount', '-l', str(path)], check=False)


def imports_tensorflow(module, args, *, cwd=REPO, devices=1, timeout=600, env=None):
  """Runs `python -m MODULE ARGS` and tells whether TensorFlow was imported by its end: (exit
  status, imported, the process's stderr)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top

  code = (
    'import atexit, runpy, sys\n'
    'atexit.register(lambda: print("TENSORFLOW", "tensorflow" in sys.modules, flush=True))\n'
    f'sys.argv = {[module, *map(str, args)]!r}\n'
    f'runpy.run_module({module!r}, run_name="__main__", alter_sys=True)\n'
  )
  done = subprocess.run(
    [sys.executable, '-c', code],
    cwd=cwd,
    env={**main_env(devices), **(env or {})},
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  imported = 'TENSORFLOW True' in done.stdout
  assert imported or 'TENSORFLOW False' in done.stdout, done.stderr[-3000:]
  return done.returncode, imported, done.stderr


# SigLIP fixtures made by big_vision's code (tests/data/make_siglip_fixture.py).
DATA = os.path.join(os.path.dirname(__file__), 'data')


def siglip(scan: bool = False, **pp) -> models.LitModel:
  """The fixtures' model (make_siglip_fixture.py's TOWER, IMAGE_SIZE, PATCH, VOCAB, LENGTH)."""
  image = vit_config('map', hidden=8, layers=2, mlp=16, heads=2, patch=8)
  image.patch_remainder = 'drop'
  return models.LitModel(
    image=image,
    text_model='text_transformer',
    text=dict(width=8, num_layers=2, mlp_dim=16, num_heads=2, vocab_size=50, scan=scan),
    pp={'tokenizer_name': 'sentencepiece', 'size': 16, 'max_len': 6, **pp},
    out_dim=(None, 8),
    model_name='tiny-siglip',
    bias_init=-10.0,
    npz_layout='big_vision',
  )


def siglip_expected(name):
  """tests/data/NAME_expected.npz: big_vision's inputs and outputs of a SigLIP fixture."""
  with np.load(os.path.join(DATA, f'{name}_expected.npz')) as f:
    return dict(f)
