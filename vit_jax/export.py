"""Export a trained ViT to the Hugging Face Transformers layout that `ViTForImageClassification`
loads.

  python -m vit_jax.export hf --workdir=RUN --out=DIR
  python -m vit_jax.export hf --checkpoint=X.npz --model=ViT-B_16 [--class_names=names.json]
      --out=DIR
  python -m vit_jax.export hf --checkpoint=X.npz --model=SigLIP-B_16-224 --out=DIR   # SiglipModel

DIR gets model.safetensors, config.json and preprocessor_config.json; then, with PyTorch:
  transformers.ViTForImageClassification.from_pretrained(DIR),
      transformers.AutoImageProcessor.from_pretrained(DIR).
Writing needs only NumPy and `safetensors`, not torch or transformers.

The tensors take the names of the checkpoints on the Hugging Face Hub (google/vit-base-patch16-224),
which every Transformers version loads (v5 renames them on load): per layer, query/key/value/output
Linear weights in (out, in) order, the patch embedding as a Conv2d weight (out, in, kh, kw), the
class token, position embeddings, layer norms (epsilon 1e-6, ours) and the classifier. Our MLP's
GELU is the tanh approximation, which the config names `gelu_pytorch_tanh`, so the logits match ours
(tested against transformers to a relative 1e-4).

`preprocessor_config.json` reproduces our input scaling: rescale by 1/255, then mean 0.5 and std 0.5
give x / 127.5 - 1, our [-1, 1]; images are resized bilinearly to the run's image size
(centre-cropped after a resize to image_size / eval_crop_fraction when the run evaluated with a crop
fraction below 1, or after a shorter-side resize for `pp.eval_resize='shorter_side'`). Both sides
resize with PIL's antialiased bilinear filter; Transformers rounds the longer side of a shorter-side
resize down where we round it, which can move the crop by a pixel.

Refused, with what is unsupported named (ViTForImageClassification classifies the final class token
through one Linear and has nothing else): MLP-Mixers (no attention, no class token: nothing of
theirs maps onto it), hybrid ResNet stems, pooling other than the class token (`gap`, unpooled), a
pre-logits layer (`representation_size`), models without a head, and any parameter or model field it
has no place for.
"""

import argparse
import json
import logging
import sys
from typing import Sequence

import numpy as np

from vit_jax import cli, errors, export_siglip, io
from vit_jax.configs import presets

log = logging.getLogger(__name__)

LAYER_NORM_EPS = 1e-6  # vit_jax.models.vit's LayerNorms.
# nn.gelu(approximate=True): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
HIDDEN_ACT = 'gelu_pytorch_tanh'
# Model config fields the export reads (all others must be absent, None, False or 0: see
# `unsupported`).
KNOWN_FIELDS = (
  'model_name',
  'patches',
  'hidden_size',
  'transformer',
  'classifier',
  'representation_size',
  'head_bias_init',
  'resnet',
  'posemb',
)
KNOWN_TRANSFORMER_FIELDS = (
  'num_layers',
  'mlp_dim',
  'num_heads',
  'dropout_rate',
  'attention_dropout_rate',
  'drop_path_rate',
)  # Dropouts and stochastic depth: training only.


class UnsupportedModelError(errors.UserError, ValueError):
  """The model has something that ViTForImageClassification cannot express."""


def unsupported(model_config, params=None) -> list[str]:
  """What keeps a model (config and parameter tree) from being a ViTForImageClassification; [] when
  nothing. Without `params`, what the config alone shows."""
  from vit_jax.configs import presets  # noqa: PLC0415

  if presets.is_mixer(model_config):
    return [
      f'{model_config.get("model_name") or "the model"} is an MLP-Mixer, and '
      'ViTForImageClassification is a transformer (attention, a class token, position embeddings) '
      'with no place for token-mixing MLPs'
    ]
  problems = []
  if model_config['resnet']:
    problems.append('a hybrid ResNet stem (model.resnet): HF ViT embeds raw pixel patches only')
  if model_config['classifier'] != 'token':
    problems.append(
      f'classifier={model_config["classifier"]!r}: HF ViT '
      "classifies the class token only (classifier='token')"
    )
  if model_config['posemb'] not in ('learn', 'sincos2d'):
    problems.append(f'posemb={model_config["posemb"]!r}: HF ViT adds one position embedding table')
  if model_config['representation_size']:
    problems.append(
      f'a pre-logits layer (representation_size={model_config["representation_size"]}): '
      'ViTForImageClassification has no layer between the class token and the classifier (its '
      'ViTModel is built without the pooler)'
    )
  for key, value in model_config.items():
    if key not in KNOWN_FIELDS and value not in (None, False, 0, 0.0, ''):
      problems.append(f'model.{key}={value!r}, which this export does not know how to express')
  for key, value in model_config['transformer'].items():
    if key not in KNOWN_TRANSFORMER_FIELDS and value not in (None, False, 0, 0.0, ''):
      problems.append(
        f'model.transformer.{key}={value!r}, which this export does not know how to express'
      )
  if params is not None and 'head' not in params:
    problems.append('no classification head (head/kernel)')
  return problems


def check_exportable(model_config, params=None) -> None:
  """Raises UnsupportedModelError naming everything `unsupported` finds."""
  problems = unsupported(model_config, params)
  if problems:
    raise UnsupportedModelError(
      'Cannot export to ViTForImageClassification: ' + '; '.join(problems) + '.'
    )


def _linear(kernel: np.ndarray) -> np.ndarray:
  """A 2-D Dense kernel (in, out) -> a torch Linear weight (out, in)."""
  return np.ascontiguousarray(kernel.T)


def _position_embeddings(model_config, image_size, take) -> np.ndarray:
  from vit_jax import models  # noqa: PLC0415

  if model_config['posemb'] == 'learn':
    return take('Transformer/posembed_input/pos_embedding')
  if not image_size:
    raise ValueError("hf_state_dict needs image_size for a model with posemb='sincos2d'.")
  table = models.vit.posemb_sincos_2d(
    *models.token_grid(model_config, image_size), model_config['hidden_size']
  )
  return np.concatenate([np.zeros_like(table[:, :1]), table], axis=1)  # The class token gets none.


def hf_state_dict(params, model_config, image_size: int | None = None) -> dict[str, np.ndarray]:
  """Our parameter tree (per-layer or stacked) -> {HF ViTForImageClassification tensor name: float32
  array}.

  A model with fixed sin-cos position embeddings (posemb='sincos2d', no parameter) gets them as the
  HF table at `image_size` (required then): zeros for the class token, which gets none, then the
  patches' embeddings.

  Raises UnsupportedModelError listing what cannot be expressed, including parameters left without a
  place.
  """
  from vit_jax import checkpoint, utils  # noqa: PLC0415

  check_exportable(model_config, params)
  flat = {
    k: np.asarray(v, np.float32)
    for k, v in checkpoint.unstack_blocks(utils.flatten_dict(params)).items()
  }
  hidden = model_config['hidden_size']
  used = set()

  def take(name):
    used.add(name)
    return flat[name]

  out = {
    'vit.embeddings.cls_token': take('cls'),
    'vit.embeddings.position_embeddings': _position_embeddings(model_config, image_size, take),
    # (kh, kw, in, out) -> (out, in, kh, kw).
    'vit.embeddings.patch_embeddings.projection.weight': take('embedding/kernel').transpose(
      3, 2, 0, 1
    ),
    'vit.embeddings.patch_embeddings.projection.bias': take('embedding/bias'),
    'vit.layernorm.weight': take('Transformer/encoder_norm/scale'),
    'vit.layernorm.bias': take('Transformer/encoder_norm/bias'),
    'classifier.weight': _linear(take('head/kernel')),
    'classifier.bias': take('head/bias'),
  }
  for i in range(model_config['transformer']['num_layers']):
    ours = f'Transformer/encoderblock_{i}/'
    hf = f'vit.encoder.layer.{i}.'
    attn = ours + 'MultiHeadDotProductAttention_0/'
    for norm, name in (('LayerNorm_0', 'layernorm_before'), ('LayerNorm_1', 'layernorm_after')):
      out[f'{hf}{name}.weight'] = take(f'{ours}{norm}/scale')
      out[f'{hf}{name}.bias'] = take(f'{ours}{norm}/bias')
    # kernel (hidden, heads, head_dim), bias (heads, head_dim).
    for proj in ('query', 'key', 'value'):
      out[f'{hf}attention.attention.{proj}.weight'] = _linear(
        take(f'{attn}{proj}/kernel').reshape(hidden, hidden)
      )
      out[f'{hf}attention.attention.{proj}.bias'] = take(f'{attn}{proj}/bias').reshape(hidden)
    out[f'{hf}attention.output.dense.weight'] = _linear(
      take(f'{attn}out/kernel').reshape(hidden, hidden)
    )
    out[f'{hf}attention.output.dense.bias'] = take(f'{attn}out/bias')
    for dense, name in (('Dense_0', 'intermediate.dense'), ('Dense_1', 'output.dense')):
      out[f'{hf}{name}.weight'] = _linear(take(f'{ours}MlpBlock_0/{dense}/kernel'))
      out[f'{hf}{name}.bias'] = take(f'{ours}MlpBlock_0/{dense}/bias')
  left = sorted(set(flat) - used)
  if left:
    raise UnsupportedModelError(
      f'Cannot export to ViTForImageClassification: no place for the parameters {left}.'
    )
  return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def _size(value):
  """An int for a square, else [h, w] (HF's config accepts both)."""
  h, w = (value, value) if isinstance(value, int) else tuple(value)
  return h if h == w else [h, w]


def hf_config(
  model_config,
  *,
  image_size: int,
  num_classes: int,
  class_names: Sequence[str] | None = None,
  loss: str = 'softmax',
) -> dict:
  """The config.json of a ViTForImageClassification equal to our model."""
  transformer = model_config['transformer']
  labels = list(class_names) if class_names else [str(i) for i in range(num_classes)]
  if len(labels) != num_classes:
    raise ValueError(f'{len(labels)} class names for a head of {num_classes} classes.')
  return {
    'architectures': ['ViTForImageClassification'],
    'model_type': 'vit',
    'hidden_size': model_config['hidden_size'],
    'num_hidden_layers': transformer['num_layers'],
    'num_attention_heads': transformer['num_heads'],
    'intermediate_size': transformer['mlp_dim'],
    'hidden_act': HIDDEN_ACT,
    'hidden_dropout_prob': float(transformer['dropout_rate'] or 0.0),
    'attention_probs_dropout_prob': float(transformer['attention_dropout_rate'] or 0.0),
    'layer_norm_eps': LAYER_NORM_EPS,
    'image_size': _size(image_size),
    'patch_size': _size(tuple(model_config['patches']['size'])),
    'encoder_stride': _size(tuple(model_config['patches']['size'])),
    'num_channels': 3,
    'qkv_bias': True,
    'initializer_range': 0.02,
    'id2label': {str(i): name for i, name in enumerate(labels)},
    'label2id': {name: i for i, name in enumerate(labels)},
    'problem_type': 'multi_label_classification'
    if loss == 'sigmoid'
    else 'single_label_classification',
    'torch_dtype': 'float32',
  }


def preprocessor_config(
  image_size: int, eval_crop_fraction: float = 1.0, eval_resize: str = 'square'
) -> dict:
  """An image processor config giving our evaluation inputs (preprocess.central_crop, then x / 127.5
  - 1): a ViTImageProcessor for a plain resize, DeiT's for a square resize and centre crop, CLIP's
  for a shorter-side resize and centre crop (see module doc)."""
  size = {'height': image_size, 'width': image_size}
  config = {
    'image_processor_type': 'ViTImageProcessor',
    'do_resize': True,
    'size': size,
    'resample': 2,  # PIL.Image.BILINEAR.
    'do_rescale': True,
    'rescale_factor': 1 / 255,
    'do_normalize': True,
    'image_mean': [0.5, 0.5, 0.5],
    'image_std': [0.5, 0.5, 0.5],
  }
  from vit_jax.data import preprocess  # noqa: PLC0415

  big = preprocess.eval_resize_size(image_size, eval_crop_fraction)
  # Shorter side to image_size / fraction, keep the centre square.
  if eval_resize == 'shorter_side':
    config.update(
      image_processor_type='CLIPImageProcessor',
      size={'shortest_edge': big},
      do_center_crop=True,
      crop_size=size,
      do_convert_rgb=True,
    )
  elif eval_crop_fraction < 1.0:  # Resize to image_size / fraction, keep the centre.
    config.update(
      image_processor_type='DeiTImageProcessor',
      size={'height': big, 'width': big},
      do_center_crop=True,
      crop_size=size,
    )
  return config


def export_hf(trained, out_dir: str) -> list[str]:
  """Writes model.safetensors, config.json and preprocessor_config.json of `trained` (a
  vit_jax.inference.trained.Trained) into out_dir; returns them."""
  from safetensors import numpy as safetensors_numpy  # noqa: PLC0415

  model_config = trained.config.model
  tensors = hf_state_dict(trained.params, model_config, trained.config.image_size)
  config = hf_config(
    model_config,
    image_size=trained.config.image_size,
    num_classes=trained.num_classes,
    class_names=trained.class_names,
    loss=trained.config.loss,
  )
  crop = trained.config.pp.eval_crop_fraction
  resize = trained.config.pp.eval_resize
  files = {
    'model.safetensors': safetensors_numpy.save(tensors, metadata={'format': 'pt'}),
    'config.json': json.dumps(config, indent=2) + '\n',
    'preprocessor_config.json': json.dumps(
      preprocessor_config(trained.config.image_size, crop, resize), indent=2
    )
    + '\n',
  }
  written = []
  for name, content in files.items():
    path = io.join(out_dir, name)
    io.write_bytes(path, content if isinstance(content, bytes) else content.encode('utf-8'))
    written.append(path)
  log.info(
    'Exported %s (%d tensors, %d parameters) to %s.',
    trained.source,
    len(tensors),
    sum(v.size for v in tensors.values()),
    out_dir,
  )
  return written


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog='python -m vit_jax.export',
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  formats = parser.add_subparsers(dest='format', required=True)
  hf = formats.add_parser(
    'hf', help='Hugging Face Transformers ViTForImageClassification (safetensors).'
  )
  cli.add_model_args(hf)
  hf.add_argument('--out', required=True, help='Output folder (local or gs://).')
  args = parser.parse_args(argv)
  if args.model in presets.SIGLIP_PRESETS and args.checkpoint:  # A SiglipModel (export_siglip.py).
    return cli.run(lambda: _export_siglip(args), prog=hf.prog, argv=argv)
  cli.check_model_args(args, hf)
  return cli.run(lambda: _export(args), prog=hf.prog, argv=argv)


def _export_siglip(args) -> int:
  from vit_jax import models  # noqa: PLC0415  (JAX)

  model = models.get_model(args.model)
  variables = model.load_variables(args.checkpoint)
  for path in export_siglip.export_hf(model, variables, args.out, source=args.checkpoint):
    print(path)
  return 0


def _export(args) -> int:
  # (after the arguments: JAX loads here)
  from vit_jax.inference import trained as inference  # noqa: PLC0415

  check_exportable(inference.model_config_from_args(args))  # Before reading any parameters.
  for path in export_hf(inference.load_from_args(args), args.out):
    print(path)
  return 0


if __name__ == '__main__':
  sys.exit(main())
