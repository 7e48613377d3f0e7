"""Analytic FLOPs of the ViT family and of MLP-Mixers, and accelerator peak FLOP/s, for model FLOP
utilisation (MFU).

MFU = (examples per second x `train_flops`) / (devices x peak FLOP/s). The FLOPs are those of the
model, not of the program XLA runs: 2 x the multiply-adds of every matrix product and convolution of
one example; elementwise work (LayerNorm, GroupNorm, GELU, softmax, biases, residual adds, pooling)
is left out, as is remat recomputation.
"""

import math

from vit_jax.configs.presets import BERT_SIZES, has_class_token, is_mixer

# Dense peak TFLOP/s per JAX device: {device kind substring: {compute dtype: TFLOP/s}}. Figures from
# the vendors' spec sheets, without 2:4 sparsity. `peak_tflops` matches the longest key first ('TPU
# v5 lite' before 'TPU v5').
#
# TPUs: a JAX device is one chip on v4 and v5p (megacore: the chip's two TensorCores act as one
# device), on v5e and v6e (one TensorCore per chip); on v2 and v3 it is one TensorCore, half a chip.
# The matrix units multiply bfloat16: a float32 matmul at JAX's default precision runs as one
# bfloat16 pass, so the float32 entry equals the bfloat16 one ('highest' precision takes several
# passes and reaches a fraction of it). NVIDIA GPUs: a JAX device is one GPU. bfloat16 is the dense
# tensor-core peak; float32 is the dense TF32 tensor-core peak, which XLA uses for float32 matmuls
# at JAX's default precision (plain FP32 CUDA cores reach only 19.5 on A100 and 67 on H100 SXM).
PEAK_TFLOPS = {
  # Per TensorCore (45 per chip); bf16 MXU, f32 as one bf16 pass.
  'TPU v2': {'bfloat16': 22.5, 'float32': 22.5},
  # Per TensorCore (123 per chip); bf16 MXU, f32 as one bf16 pass.
  'TPU v3': {'bfloat16': 61.5, 'float32': 61.5},
  # Per chip (megacore); bf16 MXU, f32 as one bf16 pass.
  'TPU v4': {'bfloat16': 275.0, 'float32': 275.0},
  # v5e, per chip; bf16 MXU, f32 as one bf16 pass.
  'TPU v5 lite': {'bfloat16': 197.0, 'float32': 197.0},
  # v5p, per chip (megacore); bf16, f32 as one bf16 pass.
  'TPU v5p': {'bfloat16': 459.0, 'float32': 459.0},
  # v5p as some libtpu versions report it ('TPU v5').
  'TPU v5': {'bfloat16': 459.0, 'float32': 459.0},
  # v6e (Trillium), per chip; f32 as one bf16 pass.
  'TPU v6 lite': {'bfloat16': 918.0, 'float32': 918.0},
  # A100 SXM and PCIe: bf16 dense; f32 = TF32 dense.
  'A100': {'bfloat16': 312.0, 'float32': 156.0},
  'H100 PCIe': {'bfloat16': 756.0, 'float32': 378.0},  # H100 PCIe: bf16 dense; f32 = TF32 dense.
  'H100 NVL': {'bfloat16': 835.0, 'float32': 417.5},  # H100 NVL: bf16 dense; f32 = TF32 dense.
  # H100 SXM ('NVIDIA H100 80GB HBM3'): bf16 dense; f32 = TF32.
  'H100': {'bfloat16': 989.0, 'float32': 494.5},
  'H200 NVL': {'bfloat16': 835.0, 'float32': 417.5},  # H200 NVL: bf16 dense; f32 = TF32 dense.
  # H200 SXM: same tensor cores as H100 SXM; f32 = TF32 dense.
  'H200': {'bfloat16': 989.0, 'float32': 494.5},
}


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  """Dense peak TFLOP/s of one JAX device of `device_kind` (as jax.devices()[0].device_kind) in
  `dtype`.

  `dtype` is 'bfloat16' or 'float32'. None when the device (e.g. a CPU) or the dtype is not in
  PEAK_TFLOPS.
  """
  kind = device_kind.lower()
  for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
    if key.lower() in kind:
      return PEAK_TFLOPS[key].get(dtype)
  return None


def _dense(rows: int, d_in: int, d_out: int) -> float:
  """2 x multiply-adds of a [rows, d_in] x [d_in, d_out] matrix product."""
  return 2.0 * rows * d_in * d_out


def _conv(out_hw, kernel, c_in: int, c_out: int) -> float:
  """A convolution: one dense product per output position, over kernel taps x input channels."""
  return _dense(out_hw[0] * out_hw[1], kernel[0] * kernel[1] * c_in, c_out)


def _same(hw, stride: int) -> tuple[int, int]:
  """Output size of a 'SAME'-padded window op with `stride`."""
  return tuple(-(-s // stride) for s in hw)


def resnet_stem_flops(resnet_config, image_hw) -> tuple[float, tuple[int, int], int]:
  """(FLOPs, output (h, w), output channels) of vit_jax.models.resnet.resnet_stem for one example.

  Root 7x7/2 conv, 3x3/2 max-pool (not counted), then bottleneck units: 1x1 at the input resolution,
  3x3 with the stride, 1x1 to 4x the width, and a 1x1 strided projection where the shape changes.
  All convs use 'SAME' padding.
  """
  width = int(64 * resnet_config.width_factor)
  hw = _same(image_hw, 2)
  flops = _conv(hw, (7, 7), 3, width)
  hw, channels = _same(hw, 2), width
  for i, block_size in enumerate(resnet_config.num_layers):
    features = width * 2**i
    for j in range(block_size):
      stride = 2 if i > 0 and j == 0 else 1
      out_hw = _same(hw, stride)
      flops += _conv(hw, (1, 1), channels, features) + _conv(out_hw, (3, 3), features, features)
      flops += _conv(out_hw, (1, 1), features, 4 * features)
      if channels != 4 * features or stride != 1:
        flops += _conv(out_hw, (1, 1), channels, 4 * features)
      hw = out_hw
      channels = 4 * features
  return flops, hw, channels


def encoder_block_flops(tokens: int, hidden: int, mlp_dim: int) -> float:
  """One pre-LN block: q/k/v/out projections, q k^T and weights v (all heads: heads x head_dim =
  hidden), MLP."""
  projections = 4 * _dense(tokens, hidden, hidden)
  attention = 2 * _dense(tokens, hidden, tokens)
  mlp = 2 * _dense(tokens, hidden, mlp_dim)
  return projections + attention + mlp


def mixer_block_flops(
  tokens: int, hidden: int, tokens_mlp_dim: int, channels_mlp_dim: int
) -> float:
  """One Mixer block: the token-mixing MLP (for each of `hidden` channels: tokens -> tokens_mlp_dim
  -> tokens) and the channel-mixing MLP (for each token: hidden -> channels_mlp_dim -> hidden)."""
  return 2 * _dense(hidden, tokens, tokens_mlp_dim) + 2 * _dense(tokens, hidden, channels_mlp_dim)


def mixer_forward_flops(model_config, image_size, num_classes: int | None) -> float:
  """FLOPs of one example's forward pass through MlpMixer(**model_config): the stem convolution, per
  block the two layers of each of the token-mixing and channel-mixing MLPs, and the head on the
  pooled features (LayerNorm, GELU, biases, residual adds and the token mean are elementwise and not
  counted)."""
  hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  ph, pw = model_config['patches']['size']
  grid = (hw[0] // ph, hw[1] // pw)
  hidden = model_config['hidden_dim']
  block = mixer_block_flops(
    math.prod(grid), hidden, model_config['tokens_mlp_dim'], model_config['channels_mlp_dim']
  )
  flops = _conv(grid, (ph, pw), 3, hidden) + model_config['num_blocks'] * block
  return flops + (_dense(1, hidden, num_classes) if num_classes else 0.0)


def forward_flops(model_config, image_size, num_classes: int | None) -> float:
  """FLOPs (2 x multiply-adds) of one example's forward pass through
  VisionTransformer(**model_config), or through MlpMixer(**model_config) for a Mixer's config
  (`mixer_forward_flops`).

  Counts the matrix products and convolutions: a hybrid's ResNet stem convolutions, the
  patch-embedding conv, per encoder block the q/k/v/out projections, the attention logits q k^T and
  the weighted sum weights v and the two MLP layers, a `map` head's attention pooling and MLP, then
  pre_logits and the head (per token for the unpooled classifiers). Elementwise ops (LayerNorm,
  GroupNorm, GELU, tanh, softmax, biases, residual adds, pooling) are not counted: they are a few
  percent of the total and not what the matrix units' peak measures. `image_size` is an int or (h,
  w); `num_classes` 0 or None means no head.
  """
  if is_mixer(model_config):
    return mixer_forward_flops(model_config, image_size, num_classes)
  hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  flops = 0.0
  channels = 3
  if model_config['resnet'] is not None:
    flops, hw, channels = resnet_stem_flops(model_config.resnet, hw)
  ph, pw = model_config.patches.size
  grid = (hw[0] // ph, hw[1] // pw)
  hidden = model_config.hidden_size
  flops += _conv(grid, (ph, pw), channels, hidden)
  classifier = model_config['classifier']
  tokens = math.prod(grid) + has_class_token(classifier)
  layers = model_config.transformer.num_layers
  flops += layers * encoder_block_flops(tokens, hidden, model_config.transformer.mlp_dim)
  mlp_dim = model_config.transformer.mlp_dim
  # MAPHead: one probe query over all tokens, out projection, MLP on the pooled token.
  if classifier == 'map':
    flops += (
      2 * _dense(1, hidden, hidden)
      + 2 * _dense(tokens, hidden, hidden)
      + 2 * _dense(1, hidden, tokens)
      + 2 * _dense(1, hidden, mlp_dim)
    )
  pooled = tokens if classifier in ('unpooled', 'token_unpooled') else 1
  features = hidden
  if model_config['representation_size'] is not None:
    features = model_config.representation_size
    flops += _dense(pooled, hidden, features)
  if num_classes:
    flops += _dense(pooled, features, num_classes)
  return flops


def text_forward_flops(model_config) -> float:
  """FLOPs of one text's forward pass through a LiT model's text tower (max_len tokens): its encoder
  blocks and its head (the token embedding is a lookup)."""
  tokens = model_config.pp.max_len
  if model_config.text_model == 'bert':
    size = BERT_SIZES[model_config.text.config]
    width = size['hidden_size']
    mlp_dim = size['intermediate_dim']
    layers = size['num_hidden_layers']
  else:
    width = model_config.text.width
    mlp_dim = model_config.text.mlp_dim
    layers = model_config.text.num_layers
  out = out_dims(model_config)[1]
  return layers * encoder_block_flops(tokens, width, mlp_dim) + (
    _dense(1, width, out) if out else 0.0
  )


def out_dims(model_config) -> tuple:
  """A LiT model's (image, text) embedding sizes (its out_dim; None: no head, the tower's width)."""
  out = model_config.out_dim
  return tuple(out) if isinstance(out, (tuple, list)) else (out, out)


def train_flops(model_config, image_size, num_classes: int | None) -> float:
  """FLOPs of one example's training step of an image model: 3 x `forward_flops` (forward, then
  twice that for the backward).

  The backward of each matrix product takes two products of the same size (gradients of the input
  and of the weights), the usual convention for MFU. Not counted: recomputation under remat (the
  model's work is the same with or without it), the optimizer update (per parameter, not per
  example) and elementwise work. An image-text model's count (its towers' `forward_flops` and
  `text_forward_flops`) is its task's: vit_jax/tasks/image_text.py.
  """
  return 3.0 * forward_flops(model_config, image_size, num_classes)
