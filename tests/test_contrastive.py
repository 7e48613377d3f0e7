"""vit_jax/tasks/contrastive.py: LiT's softmax and SigLIP's sigmoid losses against a direct NumPy
computation, the same on 1 device, a batch sharded over 8 devices and 2 processes x 2 devices; the
chunked sigmoid loss (a ring of ppermutes) equal to the dense one, value and gradients, on those
meshes and in a train step; retrieval recall and zero-shot accuracy against hand-computed
figures."""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest
import tiny

from vit_jax import sharding, utils
from vit_jax.configs import check, common, presets
from vit_jax.tasks import contrastive, image_text

B, D, T, BIAS = 8, 6, 10.0, -3.0


def _embeddings(seed=0, n=B):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(2, n, D))
  return [x / np.linalg.norm(x, axis=1, keepdims=True) for x in z]


def _numpy_softmax_loss(zimg, ztxt, t):
  """Written out: for each image, -log of its own text's share of exp(logits); the same for each
  text; averaged."""
  logits = t * zimg @ ztxt.T
  i2t = [-(logits[i, i] - math.log(sum(math.exp(v) for v in logits[i]))) for i in range(len(zimg))]
  t2i = [
    -(logits[j, j] - math.log(sum(math.exp(v) for v in logits[:, j]))) for j in range(len(ztxt))
  ]
  return (np.mean(i2t) + np.mean(t2i)) / 2


def _numpy_sigmoid_loss(zimg, ztxt, t, b):
  total = 0.0
  for i in range(len(zimg)):
    for j in range(len(ztxt)):
      label = 1.0 if i == j else -1.0
      total += math.log1p(math.exp(-label * (t * zimg[i] @ ztxt[j] + b)))
  return total / len(zimg)


def test_the_losses_equal_a_direct_computation():
  zimg, ztxt = _embeddings()
  assert float(contrastive.softmax_loss(zimg, ztxt, T)) == pytest.approx(
    _numpy_softmax_loss(zimg, ztxt, T), rel=1e-5
  )
  assert float(contrastive.sigmoid_loss(zimg, ztxt, T, BIAS)) == pytest.approx(
    _numpy_sigmoid_loss(zimg, ztxt, T, BIAS), rel=1e-5
  )
  # Matching pairs pulled together lower both losses.
  assert contrastive.softmax_loss(zimg, zimg, T) < contrastive.softmax_loss(zimg, ztxt, T)
  assert contrastive.sigmoid_loss(zimg, zimg, T, BIAS) < contrastive.sigmoid_loss(
    zimg, ztxt, T, BIAS
  )


def _sharded_losses(zimg, ztxt, mesh):
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  put = lambda x: jax.make_array_from_process_local_data(shard, np.asarray(x, np.float32))
  zimg, ztxt = put(zimg), put(ztxt)
  fn = jax.jit(
    lambda a, b: (contrastive.softmax_loss(a, b, T), contrastive.sigmoid_loss(a, b, T, BIAS)),
    out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
  )
  return [float(x) for x in fn(zimg, ztxt)]


def test_a_batch_sharded_over_8_devices_gives_the_global_loss():
  assert jax.device_count() == 8
  zimg, ztxt = _embeddings(1, n=16)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  softmax, sigmoid = _sharded_losses(zimg, ztxt, mesh)
  assert softmax == pytest.approx(_numpy_softmax_loss(zimg, ztxt, T), rel=1e-5)
  assert sigmoid == pytest.approx(_numpy_sigmoid_loss(zimg, ztxt, T, BIAS), rel=1e-5)


# Meshes of the 8 devices and the sharding of the embeddings' [B, D] on them.
MESHES = {
  'data8': ((('data', 8),), P('data')),
  'data4xmodel2': ((('data', 4), ('model', 2)), P('data', 'model')),  # D split over 'model' too.
  'data4xfsdp2': ((('data', 4), ('fsdp', 2)), P(('data', 'fsdp'))),
  'model8': ((('model', 8),), P()),  # A ring of one: the batch is not split.
}


def _loss_and_grads(impl, mesh, spec, n=32, seed=2):
  """(loss, grads w.r.t. zimg, ztxt, t and b) of the sigmoid loss on `mesh`, jitted, embeddings
  sharded by `spec`; and the compiled program's text."""
  zimg, ztxt = _embeddings(seed, n=n)
  shard = jax.sharding.NamedSharding(mesh, spec)
  zimg, ztxt = (jax.device_put(np.float32(x), shard) for x in (zimg, ztxt))
  fn = jax.jit(
    jax.value_and_grad(
      lambda *args: contrastive.sigmoid_loss(*args, impl=impl), argnums=(0, 1, 2, 3)
    )
  )
  args = (zimg, ztxt, np.float32(T), np.float32(BIAS))
  with jax.set_mesh(mesh):
    loss, grads = fn(*args)
    hlo = fn.lower(*args).compile().as_text()
  return float(loss), [np.asarray(g) for g in grads], hlo


@pytest.mark.parametrize('name', sorted(MESHES))
def test_the_chunked_sigmoid_loss_and_its_gradients_equal_the_dense_ones(name):
  mesh_config, spec = MESHES[name]
  mesh = sharding.make_mesh(mesh_config)
  dense, dense_grads, dense_hlo = _loss_and_grads('dense', mesh, spec)
  chunked, chunked_grads, chunked_hlo = _loss_and_grads('chunked', mesh, spec)
  assert chunked == pytest.approx(dense, rel=1e-6)
  zimg, ztxt = _embeddings(2, n=32)
  assert dense == pytest.approx(_numpy_sigmoid_loss(zimg, ztxt, T, BIAS), rel=1e-5)
  for got, want in zip(chunked_grads, dense_grads):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.abs(dense_grads[0]).max() > 1e-2 and abs(dense_grads[2]) > 1e-2  # Not vacuous.
  # The dense loss gathers the texts; the chunked one only passes blocks round the ring.
  assert 'collective-permute' not in dense_hlo
  if name == 'model8':
    return
  assert 'all-gather' in dense_hlo and 'collective-permute' in chunked_hlo
  if name != 'data4xmodel2':  # There the model axis's halves of D are gathered first.
    assert 'all-gather' not in chunked_hlo


def test_auto_picks_the_chunked_loss_where_the_batch_is_split_over_devices():
  data8 = sharding.make_mesh((('data', 8),))
  model8 = sharding.make_mesh((('model', 8),))
  assert contrastive.sigmoid_impl('auto', 32, data8) == 'chunked'
  assert contrastive.sigmoid_impl('auto', 32, model8) == 'dense'  # The batch is not split.
  assert contrastive.sigmoid_impl('auto', 30, data8) == 'dense'  # Does not split evenly.
  assert contrastive.sigmoid_impl('auto', 32) == 'dense'  # No mesh.
  with jax.set_mesh(data8):
    assert contrastive.sigmoid_impl('auto', 32) == 'chunked'
  assert contrastive.sigmoid_impl('dense', 32, data8) == 'dense'
  with pytest.raises(ValueError, match='chunked sigmoid loss runs on a device mesh'):
    contrastive.sigmoid_impl('chunked', 32)
  with pytest.raises(ValueError, match='got a batch of 30'):
    contrastive.sigmoid_impl('chunked', 30, data8)
  with pytest.raises(ValueError, match="Unknown sigmoid loss impl 'ring'"):
    contrastive.sigmoid_impl('ring', 32, data8)


_TWO_PROCESSES = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
from vit_jax.tasks import contrastive
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
index, port, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
t, bias = float(sys.argv[4]), float(sys.argv[5])
jax.distributed.initialize(f'127.0.0.1:{port}', 2, index)
zimg, ztxt = np.load(path).astype(np.float32)
rows = slice(index * 8, (index + 1) * 8)  # This process's half of the global batch.
mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
a, b = (jax.make_array_from_process_local_data(shard, x[rows]) for x in (zimg, ztxt))
fn = jax.jit(lambda a, b: (contrastive.softmax_loss(a, b, t),
                          contrastive.sigmoid_loss(a, b, t, bias, impl='dense')),
             out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
losses = [float(x) for x in fn(a, b)]
# The chunked sigmoid loss round the ring of the 4 devices of both processes, and how far its
# gradients are from the dense one's.
grads = {impl: jax.jit(jax.value_and_grad(
    lambda a, b, t, bias: contrastive.sigmoid_loss(a, b, t, bias, impl=impl), argnums=(0, 1, 2, 3)))
    for impl in ('dense', 'chunked')}
with jax.set_mesh(mesh):
  (dense, dense_grads), (chunked, chunked_grads) = (
      grads[impl](a, b, np.float32(t), np.float32(bias)) for impl in ('dense', 'chunked'))
gap = lambda x, y: float(jnp.max(jnp.abs(x - y)))
diffs = jax.tree.map(gap, dense_grads, chunked_grads)
print(json.dumps(losses + [float(chunked), float(dense), max(diffs)]))
"""


def test_two_processes_of_two_devices_give_the_global_loss_dense_and_chunked(tmp_path):
  zimg, ztxt = _embeddings(1, n=16)
  np.save(tmp_path / 'z.npy', np.stack([zimg, ztxt]))
  port = tiny.free_port()
  env = tiny.main_env(2, PYTHONPATH=str(tiny.REPO))
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        '-c',
        _TWO_PROCESSES,
        str(i),
        str(port),
        str(tmp_path / 'z.npy'),
        str(T),
        str(BIAS),
      ],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outs = [p.communicate(timeout=300) for p in procs]
  assert all(p.returncode == 0 for p in procs), '\n'.join(err[-3000:] for _, err in outs)
  for out, _ in outs:
    softmax, sigmoid, chunked, dense, grad_gap = json.loads(out.strip().splitlines()[-1])
    assert softmax == pytest.approx(_numpy_softmax_loss(zimg, ztxt, T), rel=1e-5)
    assert sigmoid == pytest.approx(_numpy_sigmoid_loss(zimg, ztxt, T, BIAS), rel=1e-5)
    assert chunked == pytest.approx(dense, rel=1e-6) and dense == pytest.approx(sigmoid, rel=1e-6)
    assert grad_gap < 1e-6


def test_recall_at_k_by_hand():
  # Three images on the axes; four texts: text 0 and 3 are image 0's captions, text 1 image 1's,
  # text 2 image 2's.
  zimg = np.eye(3)
  ztxt = np.array(
    [
      [0.1, 1.0, 0.0],  # Image 0's, but nearest to image 1.
      [0.0, 1.0, 0.2],  # Image 1's, nearest to it.
      [0.9, 0.0, 0.5],  # Image 2's, nearest to image 0.
      [1.0, 0.0, 0.0],
    ]
  )  # Image 0's, nearest to it.
  got = contrastive.recall_at_k(zimg, ztxt, image_of_text=[0, 1, 2, 0], ks=(1, 2))
  # img2txt: image 0's best own text is text 3 (1.0), and text 2 (0.9) scores lower: rank 0. Image
  # 1: own text 1 (1.0) is beaten by none: rank 0 (text 0 ties at 1.0: ties go to the match). Image
  # 2: own text 2 (0.5), text 1 (0.2) lower: rank 0. txt2img: text 0's image 0 (0.1) below image 1
  # (1.0): rank 1; text 1: rank 0; text 2: image 2 (0.5) below image 0 (0.9): rank 1; text 3: rank
  # 0.
  assert got == {
    'img2txt/recall@1': 1.0,
    'txt2img/recall@1': 0.5,
    'img2txt/recall@2': 1.0,
    'txt2img/recall@2': 1.0,
  }
  assert contrastive.recall_at_k(zimg, zimg, ks=(1,)) == {
    'img2txt/recall@1': 1.0,
    'txt2img/recall@1': 1.0,
  }
  with pytest.raises(ValueError, match='image_of_text'):
    contrastive.recall_at_k(zimg, ztxt, image_of_text=[0, 1, 3, 0])


def test_zeroshot_accuracy_by_hand():
  zclass = np.eye(3)
  zimg = np.array([[0.9, 0.1, 0.0], [0.2, 0.1, 0.8], [0.0, 0.7, 0.3], [0.6, 0.5, 0.0]])
  # The last is nearer class 0.
  assert contrastive.zeroshot_accuracy(zimg, zclass, [0, 2, 1, 1]) == 0.75
  assert contrastive.zeroshot_accuracy(jnp.asarray(zimg), zclass, np.array([0, 2, 1, 0])) == 1.0


def test_the_zero_shot_rule_is_one_in_numpy_and_under_jit():
  """The evaluator's (jitted, float32) and predict's (NumPy, float64) class embeddings and logits
  are one rule."""
  rng = np.random.default_rng(0)
  ztxt = rng.normal(size=(3 * 2, 4))  # 3 classes, 2 prompts each, class-major.
  zimg = rng.normal(size=(5, 4))
  z = contrastive.class_embeddings(ztxt, 3)
  assert isinstance(z, np.ndarray) and z.dtype == np.float64
  np.testing.assert_allclose(z[1], (ztxt[2] + ztxt[3]) / np.linalg.norm(ztxt[2] + ztxt[3]))
  jitted_rule = jax.jit(contrastive.class_embeddings, static_argnums=1)
  jitted = jitted_rule(jnp.asarray(ztxt, jnp.float32), 3)
  np.testing.assert_allclose(jitted, z, rtol=1e-5, atol=1e-6)
  logits = contrastive.zeroshot_logits(zimg, z, 2.0)
  np.testing.assert_allclose(logits, 2.0 * zimg @ z.T)
  jitted_logits = jax.jit(contrastive.zeroshot_logits)(zimg, jitted, 2.0)
  np.testing.assert_allclose(jitted_logits, logits, rtol=1e-5, atol=1e-5)
  assert contrastive.zeroshot_accuracy(zimg, z, logits.argmax(axis=1)) == 1.0


def _siglip_config(impl):
  """A tiny SigLIP run (both towers trained, the sigmoid loss with its bias) on a 4 x 2 data x
  model mesh, the towers tensor parallel."""
  config = common.get_config()
  config.model = presets.get_model_config('LiT-L16Ti')
  config.model.model_name = 'tiny-siglip'
  config.model.image = tiny.vit_config(layers=1)
  config.model.out_dim = (None, 32)
  text = {'width': 32, 'num_layers': 1, 'mlp_dim': 64, 'num_heads': 2, 'vocab_size': 48}
  config.model.text = text
  config.model.pp.size, config.model.pp.max_len = 16, 8
  config.update(dataset='cifar10', image_size=16, loss='sigmoid', batch_size=32)
  config.mesh, config.sharding_strategy = (('data', 4), ('model', 2)), 'tp'
  # SGD: its updates are linear in the gradients (Adam's would blow up the rounding noise of
  # gradients that are 0 in exact arithmetic, such as the attention keys' bias).
  config.optimizer.name, config.schedule.base_lr, config.schedule.warmup_steps = 'sgd', 0.1, 0
  config.lit.locked_image, config.lit.sigmoid_impl = False, impl
  return config


def test_a_sigmoid_train_step_is_the_same_chunked_and_dense():
  """Two steps of the trainer's train step (`_siglip_config`): the same losses and parameters;
  'auto' is the chunked program. (The loss alone is compared on the other meshes above.)"""
  runs = {}
  for impl in ('dense', 'auto'):
    config = _siglip_config(impl)
    assert check.problems(config) == image_text.TASK.problems(config) == []
    mesh, state, step, batch_shard = tiny.train_setup(config)
    losses = []
    with jax.set_mesh(mesh):
      for i in range(2):
        batch = image_text.TASK.example_batch(config, 32, np.random.default_rng(i), 10)
        batch = jax.device_put(batch, batch_shard)
        if i == 0:
          compiled = step.lower(state, batch).compile()
        state, stats = compiled(state, batch)
        losses.append(float(stats['loss']))
    runs[impl] = losses, jax.device_get(state['params']), compiled.as_text()
  (dense, dense_params, dense_hlo), (auto, auto_params, auto_hlo) = runs['dense'], runs['auto']
  assert 'collective-permute' in auto_hlo and 'collective-permute' not in dense_hlo
  np.testing.assert_allclose(auto, dense, rtol=1e-6)
  assert dense[1] < dense[0]  # It trains.
  flat_dense, flat_auto = utils.flatten_dict(dense_params), utils.flatten_dict(auto_params)
  assert flat_auto.keys() == flat_dense.keys() and 'b' in flat_dense
  for name, want in flat_dense.items():
    np.testing.assert_allclose(flat_auto[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
