"""Image-text training (LiT, SigLIP): a LitModel (an image tower and a text tower,
vit_jax/models/lit.py) trained with a contrastive loss over the global batch
(vit_jax/tasks/contrastive.py: config.loss 'softmax' is LiT's, 'sigmoid' SigLIP's with the model's
bias `b`, computed dense or chunked round the ring of devices as config.lit.sigmoid_impl says) on
image-caption pairs (vit_jax/data/captions.py, config.lit), and evaluated zero-shot (and by
retrieval where the data has captions).

The image tower comes from config.lit.image_init and, locked (config.lit.locked_image, LiT's "locked
image tuning"), gets no updates and no optimizer state; with config.lit.precompute_image it is
applied once to every training image before the first step, and the batches carry those embeddings
instead of the images. A run has no class head: it classifies zero-shot (vit_jax.predict), and
export and visualize refuse it.
"""

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import augreg, checkpoint, io, models, sharding, utils
from vit_jax.configs import check, choices, presets
from vit_jax.data import captions as captions_lib
from vit_jax.data import input_pipeline, preprocess, splits
from vit_jax.models import flops
from vit_jax.runtime import workdir as workdir_lib
from vit_jax.tasks import contrastive

log = logging.getLogger(__name__)

# The locked image tower's parameters (config.lit.locked_image): no updates, no optimizer state.
LOCKED = (r'img/.*',)


class ImageText:
  """The image-text task (vit_jax/tasks/__init__.py: Task has each method's contract)."""

  name = 'image_text'
  zero_shot = True

  def claims(self, model_config) -> bool:
    """A LiT model's config (presets.family: it has a text tower)."""
    return presets.family(model_config) == 'lit'

  def problems(self, config) -> list[str]:
    """The rules of image-text training (config.lit, and what a contrastive loss rules out); the
    model's own fields are vit_jax/configs/check.py's."""
    model = config.model
    lit = config.lit
    problems = []
    if config.accum_steps != 1:
      problems.append(
        f'config.accum_steps={config.accum_steps}: the contrastive loss compares every image with '
        'every text of the global batch, so it cannot be split into micro-batches; set it to 1.'
      )
    if config.mixup_p:
      problems.append(
        f'config.mixup_p={config.mixup_p}: mixup mixes class labels, and image-text training has '
        'none; set it to 0.'
      )
    if config.fewshot.datasets:
      problems.append(
        'config.fewshot.datasets is set, but a LiT run evaluates zero-shot on config.eval_split; '
        "set fewshot.datasets to ''."
      )
    if not isinstance(lit.locked_image, bool):
      problems.append(f'config.lit.locked_image={lit.locked_image!r} must be True or False.')
    elif lit.locked_image and not lit.image_init:
      problems.append(
        'config.lit.locked_image=True but config.lit.image_init is empty: a locked image tower '
        "must come from a trained ViT (a release .npz or a run's params.npz); set image_init or "
        'locked_image=False.'
      )
    reads_built_vocabulary = (model.pp.tokenizer_name, model.text_model) == (
      'sentencepiece',
      'text_transformer',
    )
    if not lit.vocab_path and not reads_built_vocabulary:
      problems.append(
        'config.lit.vocab_path is empty, so the run builds a SentencePiece vocabulary of its '
        'captions, which the text_transformer tower with the sentencepiece tokenizer reads; for '
        f'text_model={model.text_model!r} / tokenizer {model.pp.tokenizer_name!r} give vocab_path '
        "(e.g. the release's gs://vit_models/lit/LiT-B16B.txt)."
      )
    if lit.precompute_image is True and not (
      lit.locked_image is True
      and config.pp.crop == 'resize'
      and config.pp.flip is False
      and config.pp.randaugment_layers == 0
    ):
      problems.append(
        'config.lit.precompute_image=True embeds each training image once, so the image tower must '
        "be locked (lit.locked_image=True) and each image the same every epoch: pp.crop='resize', "
        'pp.flip=False, pp.randaugment_layers=0.'
      )
    if lit.captions and lit.text_feature:
      problems.append(
        f"config.lit.captions={lit.captions!r} (an image folder's captions file) and "
        f"config.lit.text_feature={lit.text_feature!r} (a TFDS dataset's) are both set: give one."
      )
    if lit.text_feature and not lit.vocab_path:
      problems.append(
        f'config.lit.text_feature={lit.text_feature!r} needs config.lit.vocab_path: a vocabulary '
        'is built only from templates or a captions file, not by reading every caption of a TFDS '
        'split.'
      )
    if not str(lit.templates).strip():
      problems.append(
        "config.lit.templates is empty: give 'photo', 'ensemble' or a file of templates."
      )
    check.number(problems, 'lit.temperature_init', lit.temperature_init, low=0, low_open=True)
    check.number(problems, 'lit.bias_init', lit.bias_init)
    check.choice(problems, 'lit.sigmoid_impl', lit.sigmoid_impl, choices.SIGMOID_IMPLS)
    if lit.sigmoid_impl == 'chunked' and config.loss != 'sigmoid':
      problems.append(
        f"config.lit.sigmoid_impl='chunked' computes the sigmoid loss, but config.loss="
        f"{config.loss!r}; set loss='sigmoid', or sigmoid_impl='auto'."
      )
    return problems

  def file_problems(self, config) -> list[str]:
    """The towers' files (config.lit.image_init and text_init; AugReg names are resolved later)
    that vit_jax cannot read, and a config.lit.vocab_path that is not a file."""
    problems = []
    for field in ('image_init', 'text_init'):
      path = config.lit[field]
      if path and not path.startswith(augreg.PREFIX):
        try:
          checkpoint.recognise(path)
        except checkpoint.CheckpointError as e:
          problems.append(f'config.lit.{field}: {e}')
    if config.lit.vocab_path and not io.isfile(config.lit.vocab_path):
      problems.append(
        f'config.lit.vocab_path={config.lit.vocab_path!r} is not a file (a BERT vocab.txt or a '
        "SentencePiece .model; '' builds one from the captions)."
      )
    return problems

  def build_model(self, config, num_classes: int):
    """A LitModel: no class head (`num_classes` is not used); the sigmoid loss sets its bias `b`."""
    del num_classes
    return models.LitModel(
      **{
        **config.model,  # (a SigLIP preset's own temperature_init and bias_init are replaced)
        'temperature_init': config.lit.temperature_init,
        'bias_init': config.lit.bias_init if config.loss == 'sigmoid' else None,
      }
    )

  def init_params(self, model, rng, image_size: int):
    """Initialised from one zero image and one text of zeros."""
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    tokens = jnp.zeros((1, model.pp['max_len']), jnp.int32)
    return model.init(rng, images=images, tokens=tokens)['params']

  def loss_fn(self, model, config):
    """The contrastive loss of the batch's images (or their precomputed embeddings, batch['zimg'])
    and captions (batch['tokens']). A locked image tower is applied under stop_gradient, so no
    backward pass runs through it."""

    def loss(params, batch, rng):
      del rng  # No dropout.
      if config.lit.locked_image:
        params = {**params, 'img': jax.lax.stop_gradient(params['img'])}
      if config.lit.precompute_image:  # Only the text tower runs.
        _, ztxt, out = model.apply({'params': params}, tokens=batch['tokens'])
        zimg = batch['zimg']
      else:
        zimg, ztxt, out = model.apply(
          {'params': params}, images=batch['image'], tokens=batch['tokens']
        )
      if config.loss == 'sigmoid':
        t, b = out['t'][0], out['b'][0]
        return contrastive.sigmoid_loss(zimg, ztxt, t, b, impl=config.lit.sigmoid_impl)
      return contrastive.softmax_loss(zimg, ztxt, out['t'][0])

    return loss

  def frozen(self, config) -> tuple[str, ...]:
    return LOCKED if config.lit.locked_image else ()

  def train_flops(self, config, num_classes: int | None) -> float:
    """3 x the text tower's forward, and the image tower's forward once when it is locked (no
    backward), else 3 x, and not at all when its embeddings are precomputed; the similarities
    (B x B per batch) are not counted."""
    del num_classes
    model = config.model
    lit = config.lit
    image = flops.forward_flops(model.image, config.image_size, flops.out_dims(model)[0])
    scale = 0.0 if lit.precompute_image else 1.0 if lit.locked_image else 3.0
    return scale * image + 3.0 * flops.text_forward_flops(model)

  def default_evals(self, config) -> tuple[str, ...]:
    """Zero-shot classification (where the data has classes); retrieval where it has captions."""
    return (
      ('zeroshot', 'retrieval') if config.lit.captions or config.lit.text_feature else ('zeroshot',)
    )

  def image_model(self, model_config):
    return model_config.image

  def follow_image_model(self, config) -> None:
    """model.pp.size (its preprocessing's) := config.image_size and, without an image head, the
    text head's size := the image tower's width."""
    model = config.model
    model.pp.size = config.image_size
    if not isinstance(model.out_dim[0], int):
      model.out_dim = (None, model.image.representation_size or model.image.hidden_size)

  def example_batch(self, config, batch_size: int, rng, num_classes: int) -> dict:
    """Images in [-1, 1], labels and random tokens of the text tower's vocabulary."""
    size = config.image_size
    max_len = config.model.pp.max_len
    vocab_size = config.model.text.get('vocab_size', models.bert.VOCAB_SIZE)
    return {
      'image': rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32),
      'label': rng.integers(0, num_classes, batch_size).astype(np.int32),
      'tokens': rng.integers(1, vocab_size, (batch_size, max_len)).astype(np.int32),
    }

  def fine_tunes_from(self, config) -> str:
    del config  # The towers come from config.lit.image_init and text_init (`load_pretrained`).
    return ''

  def needs_pretrained(self, config) -> bool:
    return bool(config.lit.image_init or config.lit.text_init)

  def load_pretrained(self, config, params):
    """config.lit.image_init (a ViT .npz: its head dropped, position embeddings resampled to
    config.image_size) as the image tower and config.lit.text_init (a LiT .npz) as the text tower
    and `t`."""
    params = dict(params)
    if config.lit.image_init:
      path = augreg.resolve(config.lit.image_init, config.augreg_index)
      log.info('Image tower from %s.', path)
      params['img'] = checkpoint.load_pretrained(
        pretrained_path=path,
        init_params=params['img'],
        model_config=config.model.image,
        image_size=config.image_size,
      )
    if config.lit.text_init:
      log.info('Text tower from %s.', config.lit.text_init)
      have = {
        k: v
        for k, v in checkpoint.canonical_flat(config.lit.text_init).items()
        if k == 't' or k.startswith('txt/')
      }
      checkpoint.check_fits(
        have,
        utils.flatten_dict({'txt': params['txt'], 't': params['t']}),
        source=f'The text tower (txt/, t) of {config.lit.text_init}',
      )
      params.update(utils.unflatten_dict(have))
    return params

  def captions(self, config):
    """The train split's captions (`captions.of_run`: the run's parts share its vocabulary)."""
    return captions_lib.of_run(config)

  def precomputes_images(self, config) -> bool:
    return bool(config.lit.precompute_image)

  def image_table(self, model, config, params, mesh, chunk: int = 256) -> np.ndarray:
    """float32 [records, dim]: the locked image tower's normalised embedding of every record of
    config.train_split, in record order, from the deterministic training example (the config rules
    ask for a 'resize' crop, no flip and no RandAugment), so a step with these equals a step that
    runs the tower. The same on every process (each computes all of it)."""
    start = time.monotonic()
    split = input_pipeline.open_split(config, config.train_split)
    records = splits.decoded(split.records, config.input_cache_mib * 2**20)
    example = input_pipeline.TrainExample(config)
    embed = jax.jit(
      lambda p, images: model.apply({'params': p}, images=preprocess.to_float(images))[0],
      out_shardings=sharding.replicated(mesh),
    )
    rows = []
    for first in range(0, len(records), chunk):
      batch = [
        example(r, None)['image']
        for r in splits.read_many(records, range(first, min(first + chunk, len(records))))
      ]
      images = np.zeros((chunk,) + batch[0].shape, np.uint8)
      images[: len(batch)] = batch
      rows.append(
        np.asarray(embed(params, jax.device_put(images, sharding.replicated(mesh))))[: len(batch)]
      )
    table = np.concatenate(rows).astype(np.float32)
    log.info(
      'Embedded the %d training images with the locked image tower once, in %.1f s.',
      len(table),
      time.monotonic() - start,
    )
    return table

  def no_class_head(self, workdir: str) -> str:
    return (
      f'{workdir} holds a LiT image-text run, which has no class head: classify with it zero-shot '
      f'(python -m vit_jax.predict --workdir={workdir} IMAGES), or read its '
      f'{workdir_lib.PARAMS_FILE} with vit_jax.models.LitModel.load_variables.'
    )


TASK = ImageText()
