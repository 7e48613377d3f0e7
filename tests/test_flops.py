"""vit_jax.models.flops: analytic FLOPs against XLA's own count, a hand count, and the peak
table."""

import jax
import jax.numpy as jnp
import pytest
import tiny

from vit_jax import models
from vit_jax.models import flops


def _xla_flops(fn, *args) -> float:
  return jax.jit(fn).lower(*args).compile().cost_analysis()['flops']


def _small(config, size=32, batch=2):
  """(model, abstract params, abstract images): XLA's count needs only the shapes."""
  model = models.VisionTransformer(num_classes=10, **config)
  images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(images.shape))['params'])
  return model, params, images


@pytest.mark.parametrize(
  'config',
  [
    tiny.vit_config(hidden=64, layers=2, heads=4, mlp=256, patch=4),
    tiny.hybrid_config((1,), hidden=64, layers=1, heads=4, mlp=256),
  ],
  ids=['vit', 'hybrid'],
)
def test_forward_count_is_within_10_percent_of_xla_cost_analysis(config):
  model, params, images = _small(config)
  xla = _xla_flops(lambda p, x: model.apply({'params': p}, x), params, images)
  analytic = 2 * flops.forward_flops(config, 32, 10)
  # XLA also counts the elementwise ops (GELU, softmax, norms) left out here: ~1.5-4.5% at these
  # sizes.
  assert 0.9 < xla / analytic < 1.1


def test_train_count_is_within_10_percent_of_xla_gradient_cost():
  config = tiny.vit_config(hidden=64, layers=2, heads=4, mlp=256, patch=4)
  model, params, images = _small(config)
  labels = jax.ShapeDtypeStruct((2,), jnp.int32)

  def loss(p, x, y):
    logits = model.apply({'params': p}, x, train=True)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

  xla = _xla_flops(jax.grad(loss), params, images, labels)
  analytic = 2 * flops.train_flops(config, 32, 10)
  # The gradient program is the forward plus two products per product (input and weight gradients),
  # so 3x is the model's count; XLA adds the elementwise forward and backward ops (+) and skips the
  # input gradient of the patch embedding, since the images need none (-1/3 of its ~4% share).
  # Measured: 1.034.
  assert 0.9 < xla / analytic < 1.1


def test_one_layer_model_by_hand():
  config = tiny.vit_config(hidden=32, layers=1, heads=2, mlp=64, patch=4)
  tokens = 2 * 2 + 1  # 8 px / patch 4 = 2x2 patches, plus the class token.
  embedding = 2 * 4 * (4 * 4 * 3) * 32
  projections = 4 * 2 * tokens * 32 * 32
  attention = 2 * 2 * tokens * tokens * 32
  mlp = 2 * 2 * tokens * 32 * 64
  head = 2 * 32 * 10
  assert (
    flops.forward_flops(config, 8, 10) == embedding + projections + attention + mlp + head == 98_048
  )
  assert flops.train_flops(config, (8, 8), 10) == 3 * 98_048
  assert flops.forward_flops(config, 8, 0) == 98_048 - head


def test_vit_b16_matches_the_published_17_6_giga_multiply_adds():
  # DeiT (Touvron et al. 2021), Table 1: ViT-B/16 at 224 px, 17.6 "GFLOPs" counted as multiply-adds.
  macs = flops.forward_flops(models.get_model_config('ViT-B_16'), 224, 1000) / 2
  assert macs == pytest.approx(17.6e9, rel=0.01)


MIXER = {
  'model_name': 'tiny-mixer',
  'patches': {'size': (4, 4)},
  'hidden_dim': 64,
  'num_blocks': 2,
  'tokens_mlp_dim': 32,
  'channels_mlp_dim': 256,
}


def test_mixer_one_block_by_hand():
  config = {**MIXER, 'num_blocks': 1}
  tokens = 2 * 3  # 8 x 12 px / patch 4 = 2 x 3 patches.
  stem = 2 * tokens * (4 * 4 * 3) * 64
  token_mixing = 2 * 2 * 64 * tokens * 32  # Per channel: tokens -> 32 -> tokens.
  channel_mixing = 2 * 2 * tokens * 64 * 256  # Per token: 64 -> 256 -> 64.
  head = 2 * 64 * 10
  assert (
    flops.forward_flops(config, (8, 12), 10)
    == stem + token_mixing + channel_mixing + head
    == 480_512
  )
  assert flops.train_flops(config, (8, 12), 10) == 3 * 480_512
  assert flops.forward_flops(config, (8, 12), None) == 480_512 - head


def test_mixer_forward_count_is_within_10_percent_of_xla_cost_analysis():
  model = models.MlpMixer(num_classes=10, **MIXER)
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(images.shape))['params'])
  xla = _xla_flops(lambda p, x: model.apply({'params': p}, x), params, images)
  assert 0.9 < xla / (2 * flops.forward_flops(MIXER, 32, 10)) < 1.1


@pytest.mark.parametrize('name,gmacs', [('Mixer-B_16', 12.6), ('Mixer-L_16', 44.6)])
def test_mixer_presets_match_the_published_multiply_adds(name, gmacs):
  # timm's model cards (mixer_b16_224, mixer_l16_224): GMACs at 224 px.
  macs = flops.forward_flops(models.get_model_config(name), 224, 1000) / 2
  assert macs == pytest.approx(gmacs * 1e9, rel=0.01)


@pytest.mark.parametrize(
  'kind,dtype,expected',
  [
    ('TPU v5 lite', 'bfloat16', 197.0),  # v5e, not v5p.
    ('TPU v5', 'bfloat16', 459.0),
    ('TPU v4', 'float32', 275.0),
    ('NVIDIA H100 80GB HBM3', 'bfloat16', 989.0),
    ('NVIDIA H100 80GB HBM3', 'float32', 494.5),  # TF32.
    ('NVIDIA H100 PCIe', 'bfloat16', 756.0),
    ('NVIDIA A100-SXM4-40GB', 'bfloat16', 312.0),
    ('cpu', 'float32', None),
    ('NVIDIA H100 80GB HBM3', 'int8', None),
  ],
)
def test_peak_lookup_matches_the_most_specific_entry(kind, dtype, expected):
  assert flops.peak_tflops(kind, dtype) == expected
