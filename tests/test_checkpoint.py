"""Release .npz import/export: every known layout gives identical logits (fine-tuned files through
`checkpoint.load`, the head included); resampling matches scipy; `inspect_params` names missing and
extra keys."""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import tiny

from vit_jax import checkpoint, models, utils

X = tiny.images(7, size=16)


def _model_and_params(config, num_classes=5, seed=0, size=16):
  """A tiny model with every parameter random (head too), so logits depend on all of them."""
  model = models.VisionTransformer(num_classes=num_classes, **config)
  params = model.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)))['params']
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [
    np.asarray(0.3 * jax.random.normal(k, x.shape), np.float32) for k, x in zip(keys, leaves)
  ]
  return model, jax.tree.unflatten(treedef, leaves)


def _write(path, flat):
  np.savez(path, **flat)
  return str(path)


def _load(path, config, num_classes=5, size=16, **kw):
  model = models.VisionTransformer(num_classes=num_classes, **config)
  init = model.init(jax.random.key(42), jnp.zeros((1, size, size, 3)))['params']
  return (
    model,
    init,
    checkpoint.load_pretrained(pretrained_path=path, init_params=init, model_config=config, **kw),
  )


def _with_head(params, head):
  return {**params, 'head': head}


def test_pre_linen_release_layout_gives_identical_logits(tmp_path):
  cfg = tiny.vit_config()
  model, params = _model_and_params(cfg)
  path = _write(tmp_path / 'release.npz', tiny.pre_linen(utils.flatten_dict(params)))
  _, init, loaded = _load(path, cfg)
  np.testing.assert_array_equal(loaded['head']['kernel'], init['head']['kernel'])  # Fresh head.
  loaded = _with_head(loaded, params['head'])
  np.testing.assert_array_equal(
    model.apply({'params': loaded}, X), model.apply({'params': params}, X)
  )


def test_linen_layout_with_params_prefix_and_bfloat16_void_arrays(tmp_path):
  cfg = tiny.vit_config()
  model, params = _model_and_params(cfg)
  as_bf16 = jax.tree.map(lambda v: np.asarray(v, jnp.bfloat16), params)
  flat = {'params/' + k: v.view(np.dtype('V2')) for k, v in utils.flatten_dict(as_bf16).items()}
  _, _, loaded = _load(_write(tmp_path / 'bf16.npz', flat), cfg)
  expected = jax.tree.map(lambda v: np.asarray(v, np.float32), as_bf16)
  loaded = _with_head(loaded, expected['head'])
  assert loaded['embedding']['kernel'].dtype == np.float32
  np.testing.assert_array_equal(
    model.apply({'params': loaded}, X), model.apply({'params': expected}, X)
  )


@pytest.mark.parametrize('classifier,bv_pool', [('token', 'tok'), ('gap', 'gap')])
def test_big_vision_layout_gives_identical_logits(tmp_path, classifier, bv_pool):
  cfg = tiny.vit_config(classifier)
  model, params = _model_and_params(cfg)
  flat = utils.flatten_dict(params)
  posemb = flat.pop('Transformer/posembed_input/pos_embedding')
  if bv_pool == 'tok':
    # big_vision adds position embeddings to the patches only; its class token gets none. The model
    # that this big_vision file describes therefore equals ours with a zero class-token row.
    flat['pos_embedding'] = posemb[:, 1:]
    params['Transformer']['posembed_input']['pos_embedding'] = np.concatenate(
      [np.zeros_like(posemb[:, :1]), posemb[:, 1:]], axis=1
    )
  else:
    flat['pos_embedding'] = posemb
  # big_vision saved from a scanned encoder stacks the blocks under `encoderblock`.
  for key in [k for k in flat if k.startswith('Transformer/encoderblock_0/')]:
    rest = key.split('/', 2)[2]
    flat['Transformer/encoderblock/' + rest] = np.stack(
      [flat.pop(f'Transformer/encoderblock_{i}/{rest}') for i in range(2)]
    )
  _, _, loaded = _load(
    _write(tmp_path / 'bv.npz', {'params/' + k: v for k, v in flat.items()}), cfg
  )
  loaded = _with_head(loaded, params['head'])
  np.testing.assert_array_equal(
    model.apply({'params': loaded}, X), model.apply({'params': params}, X)
  )


def test_hybrid_with_old_groupnorm_shapes_gives_identical_logits(tmp_path):
  cfg = tiny.hybrid_config((1,))
  model, params = _model_and_params(cfg, size=32)
  flat = {
    k: (v.reshape(1, 1, 1, -1) if '/gn' in '/' + k and v.ndim == 1 else v)
    for k, v in utils.flatten_dict(params).items()
  }
  assert flat['gn_root/scale'].shape == (1, 1, 1, 32)
  _, _, loaded = _load(_write(tmp_path / 'hybrid.npz', tiny.pre_linen(flat)), cfg, size=32)
  loaded = _with_head(loaded, params['head'])
  x = np.asarray(jax.random.uniform(jax.random.key(3), (1, 32, 32, 3), minval=-1, maxval=1))
  np.testing.assert_array_equal(
    model.apply({'params': loaded}, x), model.apply({'params': params}, x)
  )


def _timm_reads(depth: int) -> list[str]:
  """The arrays that timm's `_load_weights` (timm/models/vision_transformer.py) reads from a ViT
  `.npz` without a prefix, which it takes for a vision_transformer release (its `big_vision` branch
  is for `params/` files): `MultiHeadDotProductAttention_1`, `LayerNorm_2` and `MlpBlock_3` in every
  block."""
  names = [
    'embedding/kernel',
    'embedding/bias',
    'cls',
    'Transformer/posembed_input/pos_embedding',
    'Transformer/encoder_norm/scale',
    'Transformer/encoder_norm/bias',
    'head/kernel',
    'head/bias',
  ]
  for i in range(depth):
    block = f'Transformer/encoderblock_{i}/'
    mha = block + 'MultiHeadDotProductAttention_1/'
    names += [block + f'LayerNorm_{n}/{w}' for n in (0, 2) for w in ('scale', 'bias')]
    names += [
      mha + f'{n}/{w}' for n in ('query', 'key', 'value', 'out') for w in ('kernel', 'bias')
    ]
    names += [block + f'MlpBlock_3/Dense_{r}/{w}' for r in (0, 1) for w in ('kernel', 'bias')]
  return names


def test_a_saved_file_has_every_array_that_timm_reads_from_a_release_file(tmp_path):
  # timm, the most used reader of these files, failed on our params.npz with KeyError
  # 'Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel' (issue 30).
  model, params = _model_and_params(tiny.vit_config())
  path = str(tmp_path / 'params.npz')
  checkpoint.save_npz(path, params)
  flat = utils.flatten_dict(params)
  with np.load(path) as f:
    assert sorted(f.files) == sorted(_timm_reads(2))  # Exactly those: nothing under another name.
    assert f['Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel'].shape == (
      32,
      2,
      16,
    )
    np.testing.assert_array_equal(
      f['Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel'],
      flat['Transformer/encoderblock_0/MlpBlock_0/Dense_1/kernel'],
    )
  _, _, loaded = _load(path, tiny.vit_config())
  loaded = _with_head(loaded, params['head'])
  np.testing.assert_array_equal(
    model.apply({'params': loaded}, X), model.apply({'params': params}, X)
  )


def _timm_reads_hybrid(num_layers) -> list[str]:
  """What timm's `_load_weights` reads from a hybrid (R50+ViT) release file on top of the ViT
  arrays: the root convolution and GroupNorm and, per stage and unit, `conv1..3`/`gn1..3` and, in
  the first unit of each stage (where the shape changes), `conv_proj`/`gn_proj`; the release files
  name them so (`R50+ViT-B_16.npz`)."""
  names = ['conv_root/kernel', 'gn_root/scale', 'gn_root/bias']
  for i, units in enumerate(num_layers):
    for j in range(units):
      unit = f'block{i + 1}/unit{j + 1}/'
      names += [unit + f'conv{r}/kernel' for r in (1, 2, 3)]
      names += [unit + f'gn{r}/{w}' for r in (1, 2, 3) for w in ('scale', 'bias')]
      if j == 0:
        names += [unit + 'conv_proj/kernel', unit + 'gn_proj/scale', unit + 'gn_proj/bias']
  return names


def test_a_saved_hybrid_file_has_exactly_the_release_names(tmp_path):
  num_layers = (2, 1)
  cfg = tiny.hybrid_config(num_layers)
  model, params = _model_and_params(cfg, size=32)
  path = str(tmp_path / 'hybrid.npz')
  checkpoint.save_npz(path, params)
  with np.load(path) as f:
    assert sorted(f.files) == sorted(_timm_reads(2) + _timm_reads_hybrid(num_layers))
    assert f['block2/unit1/gn_proj/scale'].shape == (256,)
  _, _, loaded = _load(path, cfg, size=32)
  loaded = _with_head(loaded, params['head'])
  x = tiny.images(3, size=32)
  np.testing.assert_array_equal(
    model.apply({'params': loaded}, x), model.apply({'params': params}, x)
  )


def test_timm_loads_a_saved_hybrid_file_to_our_logits(tmp_path):
  torch = pytest.importorskip('torch')
  hybrid = pytest.importorskip('timm.models.vision_transformer_hybrid')
  vision_transformer = pytest.importorskip('timm.models.vision_transformer')
  from timm.layers import StdConv2dSame  # pylint: disable=g-import-not-at-top
  from timm.models.resnetv2 import ResNetV2  # pylint: disable=g-import-not-at-top

  cfg = tiny.hybrid_config((1, 1))
  model, params = _model_and_params(cfg, size=32)
  path = str(tmp_path / 'hybrid.npz')
  checkpoint.save_npz(path, params)
  # As timm's `_resnetv2` builds the R50 backbone of its `vit_base_r50_s16_*` models, at our tiny
  # width.
  backbone = ResNetV2(
    layers=(1, 1),
    width_factor=0.5,
    num_classes=0,
    global_pool='',
    preact=False,
    stem_type='same',
    conv_layer=functools.partial(StdConv2dSame, eps=1e-8),
  )
  theirs = vision_transformer.VisionTransformer(
    img_size=32,
    patch_size=1,
    embed_dim=32,
    depth=2,
    num_heads=2,
    mlp_ratio=2.0,
    num_classes=5,
    act_layer='gelu_tanh',
    embed_layer=functools.partial(hybrid.HybridEmbed, backbone=backbone),
  )
  vision_transformer._load_weights(theirs, path)  # pylint: disable=protected-access
  x = tiny.images(3, size=32)
  with torch.no_grad():
    logits = theirs.eval()(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())).numpy()
  ours = np.asarray(model.apply({'params': params}, x))
  assert np.abs(logits - ours).max() / np.abs(ours).max() < 1e-4 and np.ptp(ours) > 0.1


def test_timm_loads_a_saved_file_to_our_logits(tmp_path):
  torch = pytest.importorskip('torch')
  vision_transformer = pytest.importorskip('timm.models.vision_transformer')
  model, params = _model_and_params(tiny.vit_config())
  path = str(tmp_path / 'params.npz')
  checkpoint.save_npz(path, params)
  theirs = vision_transformer.VisionTransformer(
    img_size=16,
    patch_size=4,
    embed_dim=32,
    depth=2,
    num_heads=2,
    mlp_ratio=2.0,
    num_classes=5,
    act_layer='gelu_tanh',
  )
  # (what timm's npz loading runs)
  vision_transformer._load_weights(theirs, path)  # pylint: disable=protected-access
  with torch.no_grad():
    logits = theirs.eval()(torch.from_numpy(np.asarray(X).transpose(0, 3, 1, 2).copy())).numpy()
  ours = np.asarray(model.apply({'params': params}, X))
  assert np.abs(logits - ours).max() / np.abs(ours).max() < 1e-4 and np.ptp(ours) > 0.1


def test_save_npz_round_trips(tmp_path):
  cfg = tiny.vit_config(representation_size=8)
  model, params = _model_and_params(cfg)
  path = str(tmp_path / 'sub' / 'export.npz')
  checkpoint.save_npz(path, params)
  with np.load(path) as f:
    # As released.
    assert 'Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel' in f.files
    assert len(f.files) == len(jax.tree.leaves(params))
  _, _, loaded = _load(path, cfg)
  # Sizes match.
  np.testing.assert_array_equal(loaded['pre_logits']['kernel'], params['pre_logits']['kernel'])
  loaded = _with_head(loaded, params['head'])
  np.testing.assert_array_equal(
    model.apply({'params': loaded}, X), model.apply({'params': params}, X)
  )


def test_pre_logits_dropped_when_target_has_no_representation(tmp_path, caplog):
  _, params = _model_and_params(tiny.vit_config(representation_size=8))
  path = str(tmp_path / 'rep.npz')
  checkpoint.save_npz(path, params)
  with caplog.at_level(logging.INFO):
    _, init, loaded = _load(path, tiny.vit_config(), num_classes=3)
  assert 'pre_logits' not in loaded
  assert loaded['head']['kernel'].shape == (32, 3)
  assert 'pre_logits/kernel' in caplog.text  # Extra keys are logged by name.
  np.testing.assert_array_equal(loaded['embedding']['kernel'], params['embedding']['kernel'])


@pytest.mark.parametrize('old,new', [((2, 2), (4, 4)), ((3, 3), (5, 7))])
def test_interpolate_posembed_matches_scipy_zoom(old, new):
  rng = np.random.default_rng(0)
  posemb = rng.normal(size=(1, 1 + old[0] * old[1], 6)).astype(np.float32)
  out = checkpoint.interpolate_posembed(
    posemb,
    1 + new[0] * new[1],
    True,
    new_grid=None if new[0] == new[1] else new,
    old_grid=None if old[0] == old[1] else old,
  )
  grid = posemb[0, 1:].reshape(old + (6,))
  expected = scipy.ndimage.zoom(grid, (new[0] / old[0], new[1] / old[1], 1), order=1)
  assert expected.shape == new + (6,)
  np.testing.assert_array_equal(out[0, 0], posemb[0, 0])  # Class token unchanged.
  np.testing.assert_allclose(out[0, 1:].reshape(new + (6,)), expected, rtol=1e-6, atol=1e-6)


def test_interpolate_posembed_without_class_token():
  posemb = np.arange(4 * 3, dtype=np.float32).reshape(1, 4, 3)
  out = checkpoint.interpolate_posembed(posemb, 9, False)
  expected = scipy.ndimage.zoom(posemb[0].reshape(2, 2, 3), (1.5, 1.5, 1), order=1)
  np.testing.assert_allclose(out[0].reshape(3, 3, 3), expected, rtol=1e-6)


def test_load_at_new_resolution_resamples_posembed(tmp_path):
  cfg = tiny.vit_config()
  _, params = _model_and_params(cfg)  # 16 px, patch 4: 4x4 grid.
  path = str(tmp_path / 'p.npz')
  checkpoint.save_npz(path, params)
  model, _, loaded = _load(path, cfg, size=24)  # 6x6 grid.
  posemb = params['Transformer']['posembed_input']['pos_embedding']
  expected = scipy.ndimage.zoom(posemb[0, 1:].reshape(4, 4, 32), (1.5, 1.5, 1), order=1)
  got = loaded['Transformer']['posembed_input']['pos_embedding']
  np.testing.assert_allclose(got[0, 1:].reshape(6, 6, 32), expected, rtol=1e-5, atol=1e-6)
  assert model.apply({'params': loaded}, np.zeros((1, 24, 24, 3))).shape == (1, 5)


def test_non_square_target_grid_from_image_size(tmp_path):
  cfg = tiny.vit_config()
  _, params = _model_and_params(cfg)
  path = str(tmp_path / 'p.npz')
  checkpoint.save_npz(path, params)
  model = models.VisionTransformer(num_classes=5, **cfg)
  init = model.init(jax.random.key(0), jnp.zeros((1, 12, 28, 3)))['params']
  loaded = checkpoint.load_pretrained(
    pretrained_path=path, init_params=init, model_config=cfg, image_size=(12, 28)
  )
  assert loaded['Transformer']['posembed_input']['pos_embedding'].shape == (1, 1 + 3 * 7, 32)


def test_shape_mismatch_error_names_key_and_shapes(tmp_path):
  _, params = _model_and_params(tiny.vit_config(hidden=32))
  path = str(tmp_path / 'p.npz')
  checkpoint.save_npz(path, params)
  with pytest.raises(
    checkpoint.CheckpointError,
    match=r"(?s)36 array\(s\) differ.*'embedding/kernel'.*\(4, 4, 3, 32\) vs model "
    r"\(4, 4, 3, 48\).*'Transformer/posembed_input/pos_embedding'.*\(1, 17, "
    r'32\) vs model \(1, 17, 48\).*and 16 more',
  ):
    _load(path, tiny.vit_config(hidden=48))


def test_missing_parameters_error_lists_them(tmp_path):
  _, params = _model_and_params(tiny.vit_config(layers=1))
  path = str(tmp_path / 'p.npz')
  checkpoint.save_npz(path, params)
  with pytest.raises(checkpoint.CheckpointError, match=r'encoderblock_1/LayerNorm_0/bias'):
    _load(path, tiny.vit_config(layers=2))


def test_pickled_npz_is_refused(tmp_path):
  path = tmp_path / 'pickled.npz'
  np.savez(path, params=np.array([{'evil': 1}], dtype=object))
  with pytest.raises(checkpoint.CheckpointError, match='pickled objects'):
    checkpoint.read_npz(str(path))


def test_missing_file_is_clear_error(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match='nope.npz.* does not exist'):
    _load(str(tmp_path / 'nope.npz'), tiny.vit_config())


def test_loads_straight_into_sharded_layout(tmp_path):
  cfg = tiny.vit_config()
  model, params = _model_and_params(cfg)
  path = str(tmp_path / 'p.npz')
  checkpoint.save_npz(path, params)
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Explicit,))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  row_split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  init = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  shardings = jax.tree.map(lambda _: replicated, init)
  shardings['Transformer']['encoderblock_0']['MlpBlock_0']['Dense_0']['kernel'] = row_split
  init = jax.tree.map(jax.device_put, init, shardings)
  loaded = checkpoint.load_pretrained(pretrained_path=path, init_params=init, model_config=cfg)
  kernel = loaded['Transformer']['encoderblock_0']['MlpBlock_0']['Dense_0']['kernel']
  assert kernel.sharding == row_split
  assert kernel.addressable_shards[0].data.shape == (4, 64)
  np.testing.assert_array_equal(
    kernel, params['Transformer']['encoderblock_0']['MlpBlock_0']['Dense_0']['kernel']
  )


# --------------------------------------------------------------------------------------------------
# Fine-tuned files (a head of their own) through checkpoint.load, and inspect_params.

FINETUNED_X = tiny.images(3)[:, :16, :16]


def _finetuned(config, num_classes=4):
  model = models.VisionTransformer(num_classes=num_classes, **config)
  params = model.init(jax.random.key(0), FINETUNED_X[:1])['params']
  rng = np.random.default_rng(5)
  return model, jax.tree.map(lambda x: np.asarray(rng.normal(0, 0.3, x.shape), np.float32), params)


@pytest.mark.parametrize('layout', ['linen', 'pre_linen', 'scanned'])
def test_load_gives_the_fine_tuned_files_logits_head_included(tmp_path, layout):
  model, params = _finetuned(tiny.vit_config(representation_size=8))
  flat = utils.flatten_dict(params)
  if layout == 'pre_linen':
    flat = tiny.pre_linen(flat)
  elif layout == 'scanned':
    flat = checkpoint.stack_blocks(flat)
  np.savez(tmp_path / 'ft.npz', **flat)
  loaded = checkpoint.load(str(tmp_path / 'ft.npz'))
  np.testing.assert_array_equal(
    model.apply({'params': loaded}, FINETUNED_X), model.apply({'params': params}, FINETUNED_X)
  )


def test_inspect_params_lists_missing_and_extra_keys():
  _, params = _finetuned(tiny.vit_config())
  expected = {**params, 'pre_logits': {'kernel': 0, 'bias': 0}}
  broken = {k: v for k, v in params.items() if k != 'cls'}
  with pytest.raises(
    ValueError, match=r"1 missing \['cls'\].*2 extra \['pre_logits/bias', 'pre_logits/kernel'\]"
  ):
    checkpoint.inspect_params(
      params={**broken, 'pre_logits': {'kernel': 0, 'bias': 0}}, expected=params
    )
  assert (
    checkpoint.inspect_params(params=params, expected=expected, fail_if_missing=False) is params
  )
  with pytest.raises(ValueError, match='missing'):
    checkpoint.inspect_params(params=params, expected=expected)
