"""configs/siglip.py: SigLIP from scratch on the digits (both towers trained, the sigmoid loss with
a learned bias b, big_vision's file layout); a few steps through the trainer save a params.npz in
big_vision's two-tower layout that loads back into the model."""

import os

import jax
import numpy as np
import tiny

from vit_jax import npz, utils
from vit_jax.configs import check, loading, presets
from vit_jax.runtime import workdir as workdir_lib
from vit_jax.tasks import contrastive, image_text
from vit_jax.training import train

# One block per tower (the compilation is most of the test's time).
TINY_TOWERS = {
  'schedule.warmup_steps': 1,
  'model.image.transformer.num_layers': 1,
  'model.text.num_layers': 1,
}


def _config(**overrides):
  return tiny.override(loading.from_command_line('configs/siglip.py'), overrides)


def _config_arg(arg):
  return loading.from_command_line(f'configs/siglip.py:{arg}')


def test_the_recipe_is_siglip_with_both_towers_trained():
  config = _config()
  assert (config.loss, config.lit.locked_image, config.lit.image_init, config.lit.text_init) == (
    'sigmoid',
    False,
    '',
    '',
  )
  assert image_text.TASK.frozen(config) == ()
  assert (config.lit.temperature_init, config.lit.bias_init) == (10.0, -10.0)
  model = config.model
  assert (model.npz_layout, model.image.classifier, model.text.pool_type) == (
    'big_vision',
    'map',
    'last',
  )
  # Its own vocabulary, built from the captions (no gs:// file).
  assert (model.pp.tokenizer_name, model.pp.vocab_path, config.lit.vocab_path) == (
    'sentencepiece',
    '',
    '',
  )
  assert (model.pp.size, model.image.patches.size, config.image_size) == (8, (2, 2), 8)
  assert check.problems(config) == []
  # A run's config.json gives back the same model (predict and evaluate read it).
  stored = workdir_lib.as_dict(config)
  assert loading.from_dict(stored).model.to_dict() == config.model.to_dict()


def test_at_scale_a_siglip_preset_on_caption_data_over_a_pod():
  config = _config_arg('SigLIP-B_16-256,coco_captions')
  assert (config.model.model_name, config.image_size, config.model.pp.tokenizer_name) == (
    'SigLIP-B_16-256',
    256,
    'siglip',
  )
  assert config.lit.vocab_path == 'gs://t5-data/vocabs/cc_en.32000/sentencepiece.model'  # c4_en.
  assert (config.dataset, config.lit.text_feature, config.lit.class_names) == (
    'coco_captions',
    'captions/text',
    '',
  )
  assert (config.loss, config.lit.locked_image, config.lit.image_init) == ('sigmoid', False, '')
  assert (config.batch_size, config.sharding_strategy, config.lit.sigmoid_impl) == (
    32768,
    'fsdp',
    'auto',
  )
  assert check.problems(config, devices=256) == []
  # The chunked loss where the batch is split over several devices (an 8-device 'fsdp' mesh).
  pod = jax.sharding.AbstractMesh((8,), ('fsdp',))
  assert contrastive.sigmoid_impl(config.lit.sigmoid_impl, config.batch_size, pod) == 'chunked'
  # From the release, and big_vision's So400m/14 at 384 px (27 x 27 patches, the rest dropped).
  release = _config_arg('SigLIP2-So400m_14-384,coco_captions,init=release')
  assert (
    release.lit.image_init == release.lit.text_init == presets.release_path('SigLIP2-So400m_14-384')
  )
  assert release.model.pp.tokenizer_name == 'siglip2'
  assert check.problems(release, devices=256) == []


def test_a_few_steps_save_a_big_vision_file_that_loads_back(tmp_path):
  config = _config(
    total_steps=4,
    batch_size=32,
    eval_batch_size=64,
    log_every_steps=2,
    eval_every_steps=4,
    checkpoint_every_steps=4,
    input_threads=2,
    prefetch=1,
    **TINY_TOWERS,
  )
  workdir = str(tmp_path / 'siglip')
  result = train.train_and_evaluate(config, workdir)
  assert 0.0 <= result['eval/accuracy'] <= 1.0  # Zero-shot on the digits test split.
  path = os.path.join(workdir, 'params.npz')
  saved = npz.read_npz(path)
  model = image_text.TASK.build_model(config, num_classes=10)
  init = utils.flatten_dict(image_text.TASK.init_params(model, jax.random.key(0), 8))
  # big_vision's two-tower names (its two_towers.load reads them), not the release files'.
  assert set(saved) == set(npz.big_vision_names(init))
  assert {
    't',
    'b',
    'img/pos_embedding',
    'img/MAPHead_0/probe',
    'img/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel',
    'txt/Embed_0/embedding',
    'txt/pos_embedding',
    'txt/head/kernel',
  } <= set(saved)
  # b and t are trained, as both towers are (Adam moves each by about the learning rate per step).
  assert saved['b'][0] != np.float32(-10.0) and saved['t'][0] != np.float32(np.log(10.0))
  variables = model.load_variables(path)
  loaded = utils.flatten_dict(variables['params'])
  assert {k: v.shape for k, v in loaded.items()} == {k: v.shape for k, v in init.items()}
  images = np.zeros((2, 8, 8, 3), np.float32)
  tokens = np.ones((2, config.model.pp.max_len), np.int32)
  zimg, ztxt, out = model.apply(variables, images=images, tokens=tokens)
  assert zimg.shape == ztxt.shape == (2, 64)
  np.testing.assert_array_equal(out['b'], saved['b'])
