"""The training system (vit_jax/training/train.py and vit_jax/training/state.py): train step,
gradient accumulation, end-to-end runs with resume, exact eval, fine-tuning from a pretrained file;
a finished run left alone, steps after a crash recorded once, non-finite steps stopped or skipped, a
save killed half-way."""

import errno
import json
import logging
import os
import signal
import threading
import time

import fake_gcs
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tiny

from vit_jax import checkpoint, errors, evaluators, sharding
from vit_jax import io as vit_io
from vit_jax.data import input_pipeline, preprocess
from vit_jax.evaluators import common as evaluate
from vit_jax.models import flops
from vit_jax.runtime import dispatch
from vit_jax.runtime import workdir as workdir_lib
from vit_jax.training import checkpoints as run_checkpoints
from vit_jax.training import metrics, optim, state, train
from vit_jax.training import train_step as train_step_lib

REPO = tiny.REPO


def _setup(config):
  mesh, train_state, step, _ = tiny.train_setup(config)
  return mesh, state.build_model(config, 10), train_state, step


def _batch(n=16, size=16, seed=0):
  rng = np.random.default_rng(seed)
  return {
    'image': rng.uniform(-1, 1, (n, size, size, 3)).astype(np.float32),
    'label': rng.integers(0, 10, n).astype(np.int32),
  }


def test_one_train_step_starts_at_log_num_classes_and_updates_params():
  config = tiny.train_config(**{'schedule.warmup_steps': 0})
  mesh, _, state, step = _setup(config)
  before = jax.device_get(state['params'])
  with jax.set_mesh(mesh):
    state, stats = step(state, _batch())
  assert int(state['step']) == 1
  # Zero-init head: uniform softmax.
  np.testing.assert_allclose(float(stats['loss']), np.log(10), rtol=1e-6)
  np.testing.assert_allclose(float(stats['learning_rate']), 1e-3, rtol=1e-6)
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state['params'], before)
  # Adam's first step: lr * sign(grad).
  assert moved['head']['kernel'] == pytest.approx(1e-3, rel=1e-3)
  assert moved['embedding']['kernel'] == 0.0  # Behind a zero head, the first gradient is zero...
  with jax.set_mesh(mesh):
    state, _ = step(state, _batch(seed=1))
  assert (
    np.abs(np.asarray(state['params']['embedding']['kernel']) - before['embedding']['kernel']).max()
    > 0
  )


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


def test_on_the_cpu_the_train_step_is_compiled_at_o1_unless_xla_flags_set_a_level(monkeypatch):
  mesh = sharding.make_mesh(tiny.train_config().mesh)
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  assert state.cpu_compiler_options(mesh, 1) == {'xla_backend_optimization_level': 1}
  monkeypatch.setenv('XLA_FLAGS', '--xla_backend_optimization_level=0')
  assert state.cpu_compiler_options(mesh, 1) is None


def test_on_the_cpu_only_a_small_models_init_is_compiled_at_o0(monkeypatch):
  # -O0 shortens the init's compile but slows its run by about 30 ns a parameter: a ViT-B/16's
  # init would take longer (Setup.init).
  config = tiny.train_config()
  setup = state.Setup.create(config, 10, sharding.make_mesh(config.mesh))
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  levels = []
  real = state.cpu_compiler_options
  monkeypatch.setattr(
    state, 'cpu_compiler_options', lambda mesh, level: levels.append(level) or real(mesh, level)
  )
  for bound in (state.INIT_O0_MAX_PARAMS, 1):  # The tiny model is under the first, over the second.
    monkeypatch.setattr(state, 'INIT_O0_MAX_PARAMS', bound)
    with jax.set_mesh(setup.mesh):
      setup.init()
  assert levels == [0]


def test_a_train_step_at_o1_gives_the_bits_of_the_default_level():
  # Why the CPU's train step is compiled at -O1 (Setup.train_step): a shorter compile, the same
  # numbers as XLA's default level (2), dropout and mixup included.
  config = tiny.train_config(**{'model.transformer.dropout_rate': 0.1, 'mixup_p': 0.2})
  mesh = sharding.make_mesh(config.mesh)
  setup = state.Setup.create(config, 10, mesh)
  results = []
  with jax.set_mesh(mesh):
    batches = [jax.device_put(_batch(seed=i), setup.batch_sharding) for i in range(3)]
    for level in (1, 2):
      train_state = setup.init()
      step = setup.train_step(donate=False).lower(train_state, batches[0])
      step = step.compile({'xla_backend_optimization_level': level})
      for batch in batches:
        train_state, _ = step(train_state, batch)
      results.append(jax.device_get(train_state['params']))
  jax.tree.map(np.testing.assert_array_equal, *results)


def test_gradient_accumulation_equals_one_large_batch():
  outs = []
  for accum in (1, 2):
    config = tiny.train_config(
      **{
        'accum_steps': accum,
        'optimizer.name': 'sgd',
        'schedule.warmup_steps': 0,
        'schedule.base_lr': 0.1,
        'optimizer.grad_clip_norm': 0.0,
      }
    )
    mesh, _, state, step = _setup(config)
    with jax.set_mesh(mesh):
      for i in range(2):
        state, stats = step(state, _batch(seed=i))
    outs.append((float(stats['loss']), float(stats['grad_norm']), jax.device_get(state['params'])))
  assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-5)
  assert outs[0][1] == pytest.approx(outs[1][1], rel=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), outs[0][2], outs[1][2]
  )


def test_exact_eval_counts_each_example_once_when_batch_does_not_divide(tmp_path):
  # 9 test images, eval batch 8.
  root = tiny.image_folder(tmp_path, train_per_class=2, test_per_class=3)
  config = tiny.train_config(
    **{'dataset': 'image_folder', 'image_folder': root, 'eval_batch_size': 8}
  )
  mesh, model, state, _ = _setup(config)
  shard = sharding.batch_sharding(mesh)
  with jax.set_mesh(mesh):
    ds = input_pipeline.eval_dataset(config, local_batch_size=8)
    batches = list(ds)
    params = jax.device_get(state['params'])
    params['head']['kernel'] = np.random.default_rng(0).normal(size=params['head']['kernel'].shape)
    result = evaluate.evaluate(
      jax.jit(evaluate.make_eval_step(evaluate.classifier_logits(model))),
      params,
      (input_pipeline.make_global_batch(b, shard) for b in batches),
      evaluate.zeros(model.num_classes),
    )
  real = [(b['image'][b['mask'] > 0], b['label'][b['mask'] > 0]) for b in batches]
  images = np.concatenate([r[0] for r in real])
  labels = np.concatenate([r[1] for r in real])
  logits = np.asarray(model.apply({'params': params}, preprocess.to_float(images)))
  assert len(batches) == 2 and len(labels) == 9 and result['num_examples'] == 9
  assert result['accuracy'] == pytest.approx(np.mean(logits.argmax(-1) == labels), abs=1e-7)
  log_probs = (
    logits
    - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    - logits.max(-1, keepdims=True)
  )
  assert result['loss'] == pytest.approx(-np.mean(log_probs[np.arange(9), labels]), rel=1e-5)
  label_logits = logits[np.arange(9), labels][:, None]
  assert result['top5'] == pytest.approx(np.mean((logits > label_logits).sum(-1) < 5), abs=1e-7)


def test_evaluation_runs_one_jitted_program_per_batch_and_nothing_eager(tmp_path, caplog):
  # Eager ops on global arrays between the eval steps are each a small multi-process program of
  # their own; with another thread dispatching, processes could run them in different orders and
  # wait forever (issue 31).
  # 9 test images: 2 batches of 8.
  root = tiny.image_folder(tmp_path, train_per_class=2, test_per_class=3)
  config = tiny.train_config(
    **{'dataset': 'image_folder', 'image_folder': root, 'eval_batch_size': 8}
  )
  mesh, model, train_state, _ = _setup(config)
  entry = {'type': 'classification', 'prefix': 'val/'}
  evaluator = evaluators.make('val', entry, config, model, mesh)
  with jax.set_mesh(mesh):
    evaluator.run(train_state['params'])  # Compiles what an evaluation runs.
    jax.clear_caches()
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
      result = evaluator.run(train_state['params'])
  compiled = sorted({m.split()[1] for m in caplog.messages if m.startswith('Compiling ')})
  assert compiled == ['jit(eval_step)', 'jit(zeros)'], caplog.messages
  assert result['val/num_examples'] == 9


def test_profile_steps_write_a_trace_and_goodput_accounts_for_the_wall_time(tmp_path, monkeypatch):
  from vit_jax.runtime import goodput  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path / 'run')
  data_dir = tiny.fake_tfds('cifar10', tmp_path / 'tfds', {'train': 32, 'test': 32})
  spies = []

  class Spy(dispatch.RunAhead):
    def __init__(self):
      super().__init__(wait=lambda x: self.waited.append(jax.block_until_ready(x)))
      self.waited = []
      spies.append(self)

  monkeypatch.setattr(dispatch, 'RunAhead', Spy)
  train.train_and_evaluate(tiny.train_config(tfds_data_dir=data_dir, profile_steps='2:4'), workdir)
  # The loop's (the first made): 4 steps, 2 in flight, so it waited for the losses of steps 1 and 2.
  waited = spies[0].waited
  assert len(waited) == 2 and all(isinstance(x, jax.Array) for x in waited)
  traces = [
    os.path.join(d, f)
    for d, _, files in os.walk(os.path.join(workdir, workdir_lib.PROFILE_DIR))
    for f in files
    if f.endswith('.xplane.pb')
  ]
  # What TensorBoard's profile plugin and Perfetto open.
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
  (attempt,) = goodput.read(workdir)
  assert attempt['ended'] == 'finished' and (attempt['first_step'], attempt['last_step']) == (0, 4)
  assert sum(attempt['phases'].values()) == pytest.approx(
    attempt['end'] - attempt['start'], rel=0.02
  )
  for part in ('startup', 'compile', 'train', 'eval', 'checkpoint'):
    assert attempt['phases'][part] > 0, part


COMPILE_THREAD = 'vit_jax-compile-train-step'  # vit_jax/training/loop.py, FirstStep.


def test_the_train_step_compiles_once_on_a_thread_while_the_state_is_made(
  tmp_path, monkeypatch, caplog
):
  # The first batch's compile starts before the state's init and the init runs while it compiles;
  # the loop's call then reuses it (a batch or state spec that differed from the call's would
  # trace and compile the step a second time).
  data_dir = tiny.fake_tfds('cifar10', tmp_path / 'tfds', {'train': 32, 'test': 32})
  threads_at_init = []
  real_init = state.Setup.init

  def init(setup):
    threads_at_init.append({t.name for t in threading.enumerate()})
    return real_init(setup)

  monkeypatch.setattr(state.Setup, 'init', init)
  # (jax.log_compiles() would set it for this thread only.)
  jax.config.update('jax_log_compiles', True)
  try:
    with caplog.at_level(logging.WARNING):
      train.train_and_evaluate(tiny.train_config(tfds_data_dir=data_dir), str(tmp_path / 'run'))
  finally:
    jax.config.update('jax_log_compiles', False)
  traced = [m for m in caplog.messages if m.startswith('Finished tracing train_step')]
  compiled = [m for m in caplog.messages if m.startswith('Compiling jit(train_step)')]
  assert len(traced) == 1 and len(compiled) == 1, caplog.messages
  assert len(threads_at_init) == 1 and COMPILE_THREAD in threads_at_init[0]
  assert COMPILE_THREAD not in {t.name for t in threading.enumerate()}


def test_a_train_step_that_fails_to_compile_is_the_runs_error(tmp_path, monkeypatch):
  def make_train_step(*args, **kwargs):
    def train_step(state, batch):
      raise ValueError('this train step cannot be traced')

    return train_step

  monkeypatch.setattr(train_step_lib, 'make_train_step', make_train_step)
  data_dir = tiny.fake_tfds('cifar10', tmp_path / 'tfds', {'train': 32, 'test': 32})
  with pytest.raises(ValueError, match='cannot be traced'):
    train.train_and_evaluate(tiny.train_config(tfds_data_dir=data_dir), str(tmp_path / 'run'))
  assert COMPILE_THREAD not in {t.name for t in threading.enumerate()}


def test_end_to_end_cifar10_writes_metrics_checkpoints_and_resumes(tmp_path):
  workdir = str(tmp_path / 'run')
  data_dir = tiny.fake_tfds('cifar10', tmp_path / 'tfds', {'train': 32, 'test': 32})
  config = tiny.train_config(tfds_data_dir=data_dir)
  result = train.train_and_evaluate(config, workdir)
  records = workdir_lib.read_metrics(workdir)
  assert tiny.logged_steps(records, 'train/loss') == [2, 4]
  assert tiny.logged_steps(records, 'eval/accuracy') == [4]
  assert 0.0 <= result['eval/accuracy'] <= 1.0 and 0.0 <= result['eval/top5'] <= 1.0
  assert {'train/learning_rate', 'train/img_per_sec'} <= set(records[0])
  per_image = flops.train_flops(config.model, config.image_size, 10)
  assert records[0]['train/img_per_sec_per_device'] == pytest.approx(
    records[0]['train/img_per_sec'] / 8
  )
  assert records[0]['train/tflops_per_device'] == pytest.approx(
    records[0]['train/img_per_sec_per_device'] * per_image / 1e12
  )
  assert 'train/mfu' not in records[0]  # No known peak for a CPU.
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  assert json.load(open(os.path.join(workdir, 'config.json')))['total_steps'] == 4
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))

  # The same run with more steps resumes at step 4: nothing before it is recomputed or lost.
  train.train_and_evaluate(tiny.train_config(total_steps=6, tfds_data_dir=data_dir), workdir)
  records = workdir_lib.read_metrics(workdir)
  assert tiny.logged_steps(records, 'train/loss') == [2, 4, 6]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['4', '6']
  params = checkpoint.read_npz(os.path.join(workdir, 'params.npz'))
  assert params['head/kernel'].shape == (32, 10)


def test_end_to_end_image_folder_and_resume_restores_state(tmp_path):
  root = tiny.image_folder(tmp_path)
  workdir = str(tmp_path / 'run')
  config = tiny.train_config(
    **{'dataset': 'image_folder', 'image_folder': root, 'total_steps': 2, 'eval_every_steps': 2}
  )
  result = train.train_and_evaluate(config, workdir)
  assert result['eval/num_examples'] == 6
  first = checkpoint.read_npz(os.path.join(workdir, 'params.npz'))
  assert first['head/kernel'].shape == (32, 3)
  assert workdir_lib.read_class_names(workdir) == ['cat', 'dog', 'eel']  # For predict and export.
  # total_steps already reached: the rerun restores the checkpoint, evaluates it and exports the
  # same params.
  again = train.train_and_evaluate(config, workdir)
  assert again['eval/accuracy'] == result['eval/accuracy']
  second = checkpoint.read_npz(os.path.join(workdir, 'params.npz'))
  for k in first:
    np.testing.assert_array_equal(first[k], second[k])


def test_finetune_from_pretrained_npz_starts_from_its_weights(tmp_path):
  root = tiny.image_folder(tmp_path)
  source = state.build_model(tiny.train_config(), 7)
  # 2x2 grid: resampled to 4x4.
  params = source.init(jax.random.key(5), jnp.zeros((1, 8, 8, 3)))['params']
  checkpoint.save_npz(str(tmp_path / 'pre.npz'), params)
  config = tiny.train_config(
    **{
      'dataset': 'image_folder',
      'image_folder': root,
      'total_steps': 1,
      'schedule.base_lr': 0.0,
      'pretrained_path': str(tmp_path / 'pre.npz'),
    }
  )
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  out = checkpoint.read_npz(str(tmp_path / 'run' / 'params.npz'))
  np.testing.assert_array_equal(out['embedding/kernel'], params['embedding']['kernel'])
  posemb = params['Transformer']['posembed_input']['pos_embedding']
  np.testing.assert_allclose(
    out['Transformer/posembed_input/pos_embedding'],
    checkpoint.interpolate_posembed(posemb, 17, True),
    rtol=1e-6,
  )
  np.testing.assert_array_equal(out['head/kernel'], np.zeros((32, 3)))  # New head for 3 classes.


def test_a_finetune_from_a_gcs_npz_reads_the_file_once(tmp_path, monkeypatch):
  # A ViT-L release file is 1.2 GB: the checks before training (preflight, the start's "is it a
  # checkpoint") read its first bytes only, and loading it reads it once (it was read whole four
  # times).
  fake_gcs.install(tmp_path / 'gcs')
  source = state.build_model(tiny.train_config(), 7)
  params = source.init(jax.random.key(5), jnp.zeros((1, 16, 16, 3)))['params']
  npz = 'gs://bucket/pre.npz'
  checkpoint.save_npz(npz, params)
  size = len(vit_io.read_bytes(npz))
  reads = []
  for name in ('read_bytes', 'read_head'):

    def spy(path, *args, original=getattr(vit_io, name), name=name):
      data = original(path, *args)
      if str(path) == npz:
        reads.append((name, len(data)))
      return data

    monkeypatch.setattr(vit_io, name, spy)
  config = tiny.train_config(
    **{
      'dataset': 'image_folder',
      'image_folder': tiny.image_folder(tmp_path),
      'total_steps': 1,
      'schedule.base_lr': 0.0,
      'pretrained_path': npz,
    }
  )
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert [n for n, _ in reads].count('read_bytes') == 1 and sum(
    n for _, n in reads
  ) < size + 2048, reads
  out = checkpoint.read_npz(str(tmp_path / 'run' / 'params.npz'))
  np.testing.assert_array_equal(out['embedding/kernel'], params['embedding']['kernel'])


def test_training_never_imports_tensorflow_even_when_it_prepares_the_dataset(tmp_path, digits_dir):
  code, imported, err = tiny.imports_tensorflow(
    'vit_jax.main', tiny.tiny_main_args(tmp_path / 'w', digits_dir)
  )
  assert code == 0, err[-3000:]
  # TensorFlow is for preparing TFDS datasets only (vit_jax/data/datasets/build.py).
  assert not imported
  # Preparing sklearn_digits imports it, in a child process (build.py), not the trainer.
  new = tmp_path / 'new'
  code, imported, err = tiny.imports_tensorflow(
    'vit_jax.main', tiny.tiny_main_args(tmp_path / 'w2', new)
  )
  assert code == 0 and not imported, err[-3000:]
  assert (new / 'sklearn_digits').is_dir()


def test_total_epochs_0_with_total_steps_is_complete_for_the_trainer_and_the_launchers(
  tmp_path, digits_dir
):
  from launch import record  # pylint: disable=g-import-not-at-top

  workdir = str(tmp_path / 'w')
  # The README's recipe override.
  args = tiny.tiny_main_args(workdir, digits_dir, steps=3, total_epochs=0.0)
  assert tiny.run_main(args).returncode == 0
  assert record.status(record.read(workdir)) == 'finished' and workdir_lib.is_complete(workdir)
  again = tiny.run_main(args)
  assert (
    again.returncode == 0 and 'is complete (step 3 of total_steps=3): nothing to do' in again.stderr
  )
  # Raised: trains on.
  assert record.status(record.read(workdir), overrides={'total_steps': '5'}) != 'finished'


# --------------------------------------------------------------------------------------------------
# A run stopped and resumed: finished, crashed, non-finite, killed mid-save.


def test_rerunning_a_finished_run_writes_nothing(tmp_path, caplog):
  root = tiny.image_folder(tmp_path)
  workdir = str(tmp_path / 'run')
  first = train.train_and_evaluate(tiny.folder_config(root), workdir)
  before = tiny.snapshot(workdir)
  with caplog.at_level(logging.INFO, logger='vit_jax'):
    again = train.train_and_evaluate(tiny.folder_config(root), workdir)
    evaluated = train.train_and_evaluate(tiny.folder_config(root), workdir, reevaluate=True)
  assert f'The run in {workdir} is complete (step 7 of total_steps=7): nothing to do' in caplog.text
  assert again['eval/accuracy'] == evaluated['eval/accuracy'] == first['eval/accuracy']
  assert again['step'] == 7
  assert tiny.snapshot(workdir) == before


def test_steps_trained_again_after_a_crash_are_recorded_once(tmp_path, monkeypatch):
  root = tiny.image_folder(tmp_path)
  workdir = str(tmp_path / 'run')
  config = tiny.folder_config(root, log_every_steps=1, checkpoint_every_steps=2)

  def crash_at(k, batch):
    # Drawn as step 6 starts: steps 1-5 ran and were logged, the last checkpoint is step 4.
    if k == 7:
      raise RuntimeError('simulated crash')
    return batch

  with monkeypatch.context() as m:
    tiny.on_train_batch(m, crash_at)
    with pytest.raises(RuntimeError, match='simulated crash'):
      train.train_and_evaluate(config, workdir)
  # Step 5 ran but was never saved.
  assert max(r['step'] for r in workdir_lib.read_metrics(workdir)) == 5
  train.train_and_evaluate(config, workdir)
  steps = [r['step'] for r in workdir_lib.read_metrics(workdir) if 'train/loss' in r]
  assert steps == list(range(1, 8))


@pytest.mark.parametrize('full', ['metrics.jsonl', 'event file'])
def test_a_full_disk_under_the_metrics_says_where_the_rerun_resumes(tmp_path, monkeypatch, full):
  root = tiny.image_folder(tmp_path)
  workdir = str(tmp_path / 'run')
  config = tiny.folder_config(root, log_every_steps=1, checkpoint_every_steps=2)
  metrics_file = os.path.join(workdir, workdir_lib.METRICS_FILE)

  def fills(path, data) -> bool:
    """The disk fills with step 5's record in `full`."""
    if full == 'metrics.jsonl':
      return path == metrics_file and b'"step": 5,' in data
    events = os.path.basename(path).startswith(workdir_lib.EVENTS_PREFIX)
    return events and workdir_lib.read_metrics(workdir)[-1]['step'] == 5

  class OnAFullDisk:
    def __init__(self, f, path):
      self.f = f
      self.path = path

    def write(self, data):
      if fills(self.path, bytes(data)):
        self.f.write(bytes(data)[:10])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # As a write to an open file does.
      return self.f.write(data)

    def __getattr__(self, name):
      return getattr(self.f, name)

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.f.close()

  def open_on_a_full_disk(path, mode='r', **kw):
    return OnAFullDisk(open(path, mode, **kw), path)  # noqa: SIM115

  with monkeypatch.context() as m:
    m.setattr(vit_io, 'open', open_on_a_full_disk, raising=False)
    with pytest.raises(errors.UserError) as failed:
      train.train_and_evaluate(config, workdir)
  path = (
    metrics_file
    if full == 'metrics.jsonl'
    else vit_io.glob(os.path.join(workdir, workdir_lib.EVENTS_PREFIX + '*'))[0]
  )
  assert str(failed.value) == (
    f'Training stopped at step 5: No space left on device ({path}): free some space (or use '
    'another location) and rerun the same command. The last good checkpoint is step 4; '
    'rerunning the same command resumes from it.'
  )
  assert workdir_lib.checkpoint_steps(workdir) == [2, 4]
  # Not half a record: the files read, and metrics.jsonl ends at step 4 or 5 (its rerun writes step
  # 5 on).
  assert workdir_lib.read_metrics(workdir)[-1]['step'] == (4 if full == 'metrics.jsonl' else 5)
  train.train_and_evaluate(config, workdir)
  steps = [r['step'] for r in workdir_lib.read_metrics(workdir) if 'train/loss' in r]
  assert steps == list(range(1, 8))


def test_a_workdir_that_is_a_file_is_a_clear_error(tmp_path):
  (tmp_path / 'f').write_text('not a dir')
  with pytest.raises(
    workdir_lib.WorkdirError, match=r'is a file, not a directory; give --workdir a directory'
  ):
    train.train_and_evaluate(tiny.train_config(), str(tmp_path / 'f'))


def _poison(at_steps):
  def fn(k, batch):
    if k in at_steps:
      # Float images pass as they are.
      batch = dict(batch, image=np.full(batch['image'].shape, np.nan, np.float32))
    return batch

  return fn


def test_nonfinite_stop_names_the_step_and_last_good_checkpoint_and_saves_nothing_after(
  tmp_path, monkeypatch
):
  root = tiny.image_folder(tmp_path)
  workdir = str(tmp_path / 'run')
  tiny.on_train_batch(monkeypatch, _poison({5}))
  with pytest.raises(
    train_step_lib.NonFiniteError, match=r'at step 5 .*last good checkpoint is step 4'
  ):
    train.train_and_evaluate(
      tiny.folder_config(root, checkpoint_every_steps=2, async_checkpoints=False), workdir
    )
  assert ocp.CheckpointManager(os.path.join(workdir, 'checkpoints')).all_steps() == [2, 4]
  assert [r['step'] for r in workdir_lib.read_metrics(workdir) if 'train/loss' in r] == [2, 4]


def test_nonfinite_skip_drops_the_update_counts_it_and_goes_on(tmp_path, monkeypatch):
  root = tiny.image_folder(tmp_path)
  workdir = str(tmp_path / 'run')
  tiny.on_train_batch(monkeypatch, _poison({3, 6}))
  train.train_and_evaluate(
    tiny.folder_config(root, nonfinite_policy='skip', checkpoint_every_steps=1, keep=10), workdir
  )
  records = [r for r in workdir_lib.read_metrics(workdir) if 'train/loss' in r]
  assert [r['step'] for r in records] == [2, 4, 6, 7]
  assert [r.get('train/nonfinite_steps', 0) for r in records] == [0, 1, 2, 2]
  # The logged learning rate is the one the optimizer applies: its count stops at each dropped
  # update (steps 3 and 6), so steps 2, 4, 6, 7 ran at the schedule's values for counts 1, 2, 4, 4
  # (not 1, 3, 5, 6).
  schedule = optim.make_schedule(tiny.folder_config(root, nonfinite_policy='skip'))
  np.testing.assert_allclose(
    [r['train/learning_rate'] for r in records],
    [float(schedule(c)) for c in (1, 2, 4, 4)],
    rtol=1e-6,
  )
  assert all(np.isfinite(r['train/loss']) and np.isfinite(r['train/grad_norm']) for r in records)
  assert all(np.isfinite(v).all() for v in tiny.exported_params(workdir).values())
  restore = ocp.StandardCheckpointer().restore
  kernels = {
    s: np.asarray(
      restore(os.path.join(workdir, 'checkpoints', str(s), 'default'))['params']['head']['kernel']
    )
    for s in (2, 3, 4)
  }
  np.testing.assert_array_equal(kernels[3], kernels[2])  # Step 3's update was dropped...
  assert np.abs(kernels[4] - kernels[3]).max() > 0  # ... and step 4's applied.


def test_a_failed_asynchronous_save_stops_the_run_at_the_next_step(tmp_path, monkeypatch):
  """Orbax reports an asynchronous save's failure when its thread ends; the loop asks after every
  step (without waiting), so the run stops at the next step, not at the next log step or save."""
  root = tiny.image_folder(tmp_path)
  saved, steps = [], []
  real_save, real_step = ocp.CheckpointManager.save, metrics.Progress.step
  monkeypatch.setattr(
    ocp.CheckpointManager,
    'save',
    lambda self, step, **kw: saved.append(step) or real_save(self, step, **kw),
  )

  def check_for_errors(self):
    if saved:
      raise OSError(28, 'No space left on device')

  monkeypatch.setattr(ocp.CheckpointManager, 'check_for_errors', check_for_errors)
  monkeypatch.setattr(
    metrics.Progress, 'step', lambda self, step: steps.append(step) or real_step(self, step)
  )
  config = tiny.folder_config(root, checkpoint_every_steps=2, log_every_steps=7)
  with pytest.raises(
    run_checkpoints.SaveError,
    match=r'Saving the checkpoint of step 2 .* failed: No space left on device',
  ):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  # Stopped after step 3: not at the next save (4) or log step (7).
  assert saved == [2] and steps == [1, 2, 3]


# --------------------------------------------------------------------------------------------------
# The real command: SIGKILL while an async save is in flight, then SIGTERM, then the finish.

_MAIN_FLAGS = [
  '--config.dataset=image_folder',
  '--config.image_size=16',
  '--config.model.hidden_size=256',
  '--config.model.transformer.num_layers=4',
  '--config.model.transformer.mlp_dim=1024',
  '--config.model.transformer.num_heads=4',
  '--config.model.transformer.dropout_rate=0.0',
  '--config.batch_size=8',
  '--config.eval_batch_size=8',
  '--config.total_steps=400',
  '--config.log_every_steps=1',
  '--config.eval_every_steps=1000',
  '--config.checkpoint_every_steps=1',
  '--config.keep=2',
  '--config.optimizer.name=adamw',
  '--config.schedule.warmup_steps=1',
  '--config.prefetch=1',
]


def _start_main(tmp_path, root, workdir, total_steps):
  args = [
    f'--config={REPO}/configs/default.py',
    f'--workdir={workdir}',
    f'--config.image_folder={root}',
    *_MAIN_FLAGS,
    f'--config.total_steps={total_steps}',
  ]
  log = open(tmp_path / 'main.log', 'a', encoding='utf-8')
  return tiny.start_main(args, cwd=tmp_path, devices=2, log=log)


def _in_flight(ckpt_dir):
  return [n for n in os.listdir(ckpt_dir) if not n.isdigit()] if os.path.isdir(ckpt_dir) else []


def test_sigkill_during_async_save_falls_back_to_last_complete_checkpoint(tmp_path):
  root = tiny.image_folder(tmp_path, train_per_class=8)
  workdir = str(tmp_path / 'run')
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  # Every step saves ~40 MB (params + Adam moments) asynchronously; kill the process while a save is
  # unfinished.
  killed_mid_save = []
  for _ in range(5):
    proc = _start_main(tmp_path, root, workdir, 400)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
      partial = _in_flight(ckpt_dir)
      if partial and any(n.isdigit() for n in os.listdir(ckpt_dir)):
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_mid_save = [n for n in _in_flight(ckpt_dir) if n in partial]
        break
      time.sleep(0.002)
    assert proc.poll() is not None, 'no async save was seen in time'
    if killed_mid_save:
      break
  assert killed_mid_save, 'never caught a save in flight'
  complete = sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())
  manager = ocp.CheckpointManager(ckpt_dir)
  assert manager.latest_step() == complete[-1]  # The half-written one is not a checkpoint.
  manager.close()
  # The one rule that resume and completion both use agrees.
  assert workdir_lib.latest_step(workdir) == complete[-1]

  # Rerun: it resumes from the last complete checkpoint; a SIGTERM makes it save and exit cleanly.
  proc = _start_main(tmp_path, root, workdir, 400)
  deadline = time.monotonic() + 240
  while time.monotonic() < deadline and not any(
    r['step'] > complete[-1] + 1
    for r in (
      workdir_lib.read_metrics(workdir)
      if os.path.exists(os.path.join(workdir, 'metrics.jsonl'))
      else []
    )
  ):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=120) == 0
  log = (tmp_path / 'main.log').read_text(encoding='utf-8')
  assert f'Resuming from {ckpt_dir} at step {complete[-1]}' in log
  assert 'Preempted: saved a checkpoint at step' in log
  stopped = ocp.CheckpointManager(ckpt_dir).latest_step()
  assert stopped > complete[-1]

  # And the finish, with the total shortened (a resumable change).
  proc = _start_main(tmp_path, root, workdir, stopped + 2)
  assert proc.wait(timeout=240) == 0, (tmp_path / 'main.log').read_text(encoding='utf-8')[-3000:]
  steps = [r['step'] for r in workdir_lib.read_metrics(workdir) if 'train/loss' in r]
  assert steps[-1] == stopped + 2 and set(range(1, stopped + 3)) <= set(steps)
  assert all(np.isfinite(v).all() for v in tiny.exported_params(workdir).values())
