"""Export a SigLIP model (a LitModel in big_vision's two-tower form: presets 'SigLIP-...',
'SigLIP2-...') to the Hugging Face Transformers layout that `SiglipModel` loads; vit_jax/export.py's
command line calls it for a SigLIP --model:

  python -m vit_jax.export hf --model=SigLIP-B_16-224 --checkpoint=webli_en_b16_224_63724782.npz \
      --out=DIR

DIR gets model.safetensors, config.json and preprocessor_config.json (a SiglipImageProcessor: a
bilinear resize to the preset's size, then x / 127.5 - 1, our input, as export.py's ViT export);
then, with PyTorch, `transformers.SiglipModel.from_pretrained(DIR)` gives our image and text
embeddings (`get_image_features`, `get_text_features`, before normalisation), `logit_scale` = t and
`logit_bias` = b. Writing needs only NumPy and `safetensors`. The tokenizer is not written: tokenize
as the preset's `pp` says (vit_jax/data/tokenizers.py) and pass the ids.

The tensor names are those of the SigLIP checkpoints on the Hugging Face Hub (google/siglip-*):
per layer q/k/v/out projections and MLP Linears in (out, in) order, the MAP head's attention as a
torch MultiheadAttention (q, k and v stacked in `in_proj_weight`), layer norms with epsilon 1e-6
(ours) and the tanh GELU (`gelu_pytorch_tanh`). Refused, naming what cannot be expressed: an image
tower without the MAP head or with a head of its own, a text tower not pooled on its last token or
without a head, a BERT text tower, and any parameter left without a place.
"""

import json
import logging

import numpy as np

from vit_jax import errors, io

log = logging.getLogger(__name__)

LAYER_NORM_EPS = 1e-6  # vit_jax.models.vit's LayerNorms (as export.py's ViT export).
HIDDEN_ACT = 'gelu_pytorch_tanh'  # nn.gelu(approximate=True).


class UnsupportedModelError(errors.UserError, ValueError):
  """The model has something that SiglipModel cannot express."""


def _linear(kernel: np.ndarray) -> np.ndarray:
  """A 2-D Dense kernel (in, out) -> a torch Linear weight (out, in)."""
  return np.ascontiguousarray(kernel.T)


def unsupported(model) -> list[str]:
  """What of `model` (a LitModel) SiglipModel cannot express; [] when it can be exported."""
  out_dim = model.out_dim if not isinstance(model.out_dim, int) else (model.out_dim,) * 2
  problems = []
  if model.text_model != 'text_transformer':
    problems.append(f"text_model={model.text_model!r} (SiglipModel's is 'text_transformer')")
  if model.image.get('classifier') != 'map':
    problems.append(f"image.classifier={model.image.get('classifier')!r} (SiglipModel's is 'map')")
  if model.image.get('representation_size') or model.image.get('resnet'):
    problems.append('an image pre-logits layer or ResNet stem')
  if out_dim[0]:
    problems.append(f'an image head (out_dim[0]={out_dim[0]}); SiglipModel has none')
  if not out_dim[1]:
    problems.append('no text head (out_dim[1] is None); SiglipModel has one')
  if model.text.get('pool_type', 'last') != 'last':
    problems.append(f'text.pool_type={model.text["pool_type"]!r} (SiglipModel pools the last)')
  if model.image.get('posemb', 'learn') != 'learn':
    problems.append(f"image.posemb={model.image['posemb']!r} (SiglipModel's is learned)")
  return problems


def _encoder(take, ours: str, hf: str, num_layers: int, hidden: int) -> dict[str, np.ndarray]:
  out = {}
  for i in range(num_layers):
    block = f'{ours}/encoderblock_{i}/'
    layer = f'{hf}.layers.{i}.'
    for norm, name in (('LayerNorm_0', 'layer_norm1'), ('LayerNorm_1', 'layer_norm2')):
      out[f'{layer}{name}.weight'] = take(f'{block}{norm}/scale')
      out[f'{layer}{name}.bias'] = take(f'{block}{norm}/bias')
    out.update(
      _attention(take, f'{block}MultiHeadDotProductAttention_0/', f'{layer}self_attn.', hidden)
    )
    out.update(_mlp(take, f'{block}MlpBlock_0/', f'{layer}mlp.'))
  return out


def _attention(take, ours: str, hf: str, hidden: int) -> dict[str, np.ndarray]:
  out = {}
  for proj in ('query', 'key', 'value'):
    name = f'{hf}{proj[0]}_proj.'
    out[name + 'weight'] = _linear(take(f'{ours}{proj}/kernel').reshape(hidden, hidden))
    out[name + 'bias'] = take(f'{ours}{proj}/bias').reshape(hidden)
  out[f'{hf}out_proj.weight'] = _linear(take(f'{ours}out/kernel').reshape(hidden, hidden))
  out[f'{hf}out_proj.bias'] = take(f'{ours}out/bias')
  return out


def _mlp(take, ours: str, hf: str) -> dict[str, np.ndarray]:
  return {
    f'{hf}{fc}.{kind}': _linear(take(f'{ours}{dense}/kernel'))
    if kind == 'weight'
    else take(f'{ours}{dense}/bias')
    for dense, fc in (('Dense_0', 'fc1'), ('Dense_1', 'fc2'))
    for kind in ('weight', 'bias')
  }


def hf_state_dict(model, params) -> dict[str, np.ndarray]:
  """Our SigLIP parameter tree (per-layer or stacked) -> {SiglipModel tensor name: float32
  array}."""
  from vit_jax import checkpoint, utils  # noqa: PLC0415  (JAX)

  problems = unsupported(model)
  if problems:
    raise UnsupportedModelError(f'Cannot export to SiglipModel: {"; ".join(problems)}.')
  flat = {
    k: np.asarray(v, np.float32)
    for k, v in checkpoint.unstack_blocks(utils.flatten_dict(params)).items()
  }
  used = set()

  def take(name):
    used.add(name)
    return flat[name]

  image, text = model.image, model.text
  width = image['hidden_size']
  v = 'vision_model.'
  out = {
    f'{v}embeddings.patch_embedding.weight': take('img/embedding/kernel').transpose(3, 2, 0, 1),
    f'{v}embeddings.patch_embedding.bias': take('img/embedding/bias'),
    f'{v}embeddings.position_embedding.weight': take(
      'img/Transformer/posembed_input/pos_embedding'
    )[0],
    f'{v}post_layernorm.weight': take('img/Transformer/encoder_norm/scale'),
    f'{v}post_layernorm.bias': take('img/Transformer/encoder_norm/bias'),
    f'{v}head.probe': take('img/MAPHead_0/probe'),
    f'{v}head.layernorm.weight': take('img/MAPHead_0/LayerNorm_0/scale'),
    f'{v}head.layernorm.bias': take('img/MAPHead_0/LayerNorm_0/bias'),
    'text_model.embeddings.token_embedding.weight': take('txt/Embed_0/embedding'),
    'text_model.embeddings.position_embedding.weight': take('txt/pos_embedding')[0],
    'text_model.final_layer_norm.weight': take('txt/Encoder_0/encoder_norm/scale'),
    'text_model.final_layer_norm.bias': take('txt/Encoder_0/encoder_norm/bias'),
    'text_model.head.weight': _linear(take('txt/head/kernel')),
    'text_model.head.bias': take('txt/head/bias'),
    'logit_scale': take('t').reshape(1),
    'logit_bias': take('b').reshape(1),
  }
  layers = image['transformer']['num_layers']
  out.update(_encoder(take, 'img/Transformer', f'{v}encoder', layers, width))
  out.update(
    _encoder(take, 'txt/Encoder_0', 'text_model.encoder', text['num_layers'], text['width'])
  )
  out.update(_mlp(take, 'img/MAPHead_0/MlpBlock_0/', f'{v}head.mlp.'))
  # torch's MultiheadAttention: q, k and v stacked in one in-projection.
  head = _attention(take, 'img/MAPHead_0/MultiHeadDotProductAttention_0/', '', width)
  out[f'{v}head.attention.in_proj_weight'] = np.concatenate(
    [head[f'{p}_proj.weight'] for p in 'qkv']
  )
  out[f'{v}head.attention.in_proj_bias'] = np.concatenate([head[f'{p}_proj.bias'] for p in 'qkv'])
  out[f'{v}head.attention.out_proj.weight'] = head['out_proj.weight']
  out[f'{v}head.attention.out_proj.bias'] = head['out_proj.bias']
  left = sorted(set(flat) - used)
  if left:
    raise UnsupportedModelError(f'Cannot export to SiglipModel: no place for {left}.')
  return {k: np.ascontiguousarray(x, np.float32) for k, x in out.items()}


def hf_config(model) -> dict:
  """The config.json of a SiglipModel equal to `model` (a LitModel)."""
  image, text = model.image, model.text
  transformer = image['transformer']
  common = {'hidden_act': HIDDEN_ACT, 'layer_norm_eps': LAYER_NORM_EPS}
  return {
    'architectures': ['SiglipModel'],
    'model_type': 'siglip',
    'text_config': {
      'model_type': 'siglip_text_model',
      'vocab_size': text['vocab_size'],
      'hidden_size': text['width'],
      'intermediate_size': text['mlp_dim'],
      'num_hidden_layers': text['num_layers'],
      'num_attention_heads': text['num_heads'],
      'max_position_embeddings': model.pp['max_len'],
      'projection_size': model.out_dim[1],
      # The vocabularies' '</s>' (T5's and Gemma's 1), and the padding the tokenizers use:
      # big_vision pads T5's vocabularies with 1 and Gemma's with '<pad>' (0); no BOS.
      'eos_token_id': 1,
      'pad_token_id': 0 if model.pp.get('tokenizer') == 'gemma' else 1,
      'bos_token_id': None,
      **common,
    },
    'vision_config': {
      'model_type': 'siglip_vision_model',
      'hidden_size': image['hidden_size'],
      'intermediate_size': transformer['mlp_dim'],
      'num_hidden_layers': transformer['num_layers'],
      'num_attention_heads': transformer['num_heads'],
      'num_channels': 3,
      'image_size': model.pp['size'],
      'patch_size': image['patches']['size'][0],
      'vision_use_head': True,
      **common,
    },
    'torch_dtype': 'float32',
  }


def export_hf(model, variables, out_dir: str, source: str = '') -> list[str]:
  """Writes model.safetensors, config.json and preprocessor_config.json of a SigLIP `model` (a
  LitModel) and its `variables` into out_dir; returns them."""
  from safetensors import numpy as safetensors_numpy  # noqa: PLC0415

  tensors = hf_state_dict(model, variables['params'])
  size = model.pp['size']
  processor = {  # Bilinear resize, then x / 255 normalised by 0.5, 0.5: our x / 127.5 - 1.
    'image_processor_type': 'SiglipImageProcessor',
    'do_resize': True,
    'size': {'height': size, 'width': size},
    'resample': 2,  # PIL.Image.BILINEAR.
    'do_rescale': True,
    'rescale_factor': 1 / 255,
    'do_normalize': True,
    'image_mean': [0.5, 0.5, 0.5],
    'image_std': [0.5, 0.5, 0.5],
  }
  files = {
    'model.safetensors': safetensors_numpy.save(tensors, metadata={'format': 'pt'}),
    'config.json': json.dumps(hf_config(model), indent=2) + '\n',
    'preprocessor_config.json': json.dumps(processor, indent=2) + '\n',
  }
  written = []
  for name, content in files.items():
    path = io.join(out_dir, name)
    io.write_bytes(path, content if isinstance(content, bytes) else content.encode('utf-8'))
    written.append(path)
  log.info('Exported %s (%d tensors) to %s as a SiglipModel.', source, len(tensors), out_dir)
  return written
