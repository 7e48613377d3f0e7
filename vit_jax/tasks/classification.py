"""Image classification: a ViT, hybrid or MLP-Mixer with a class head, trained with cross-entropy on
the labels (config.loss, label smoothing; mixup's soft targets in the train step), evaluated by
accuracy on config.eval_split, fine-tuned from config.pretrained_path (a release .npz, or an AugReg
name)."""

import logging

import jax.numpy as jnp
import numpy as np

from vit_jax import augreg, checkpoint, models
from vit_jax.models import flops
from vit_jax.tasks import losses

log = logging.getLogger(__name__)


class Classification:
  """The classification task (vit_jax/tasks/__init__.py: Task has each method's contract)."""

  name = 'classification'
  zero_shot = False

  def claims(self, model_config) -> bool:
    del model_config  # Every image model: the last task of TASKS.
    return True

  def problems(self, config) -> list[str]:
    del config  # vit_jax/configs/check.py checks every field that classification reads.
    return []

  def file_problems(self, config) -> list[str]:
    del config  # config.pretrained_path, every task's field, is vit_jax/training/preflight.py's.
    return []

  def build_model(self, config, num_classes: int):
    """An MlpMixer for a Mixer's model config (of the fast paths it takes remat_policy only, the
    config check refuses the others), else a VisionTransformer, with a head of `num_classes`."""
    dtype = jnp.dtype(config.dtype)
    if models.is_mixer(config.model):
      return models.MlpMixer(
        num_classes=num_classes, dtype=dtype, remat_policy=config.remat_policy, **config.model
      )
    return models.VisionTransformer(
      num_classes=num_classes,
      dtype=dtype,
      scan=config.scan_layers,
      remat_policy=config.remat_policy,
      attention=config.attention,
      fused_qkv=config.fused_qkv,
      **config.model,
    )

  def init_params(self, model, rng, image_size: int):
    """Initialised from a batch of one zero image."""
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return model.init(rng, images, train=False)['params']

  def loss_fn(self, model, config):
    """The batch's mean of `losses.per_example_loss` (config.loss, config.label_smoothing) of the
    logits with dropout; batch['label'] holds integer labels or (after mixup) soft targets."""

    def loss(params, batch, rng):
      logits = model.apply({'params': params}, batch['image'], train=True, rngs={'dropout': rng})
      per_example = losses.per_example_loss(
        logits, batch['label'], kind=config.loss, label_smoothing=config.label_smoothing
      )
      return jnp.mean(per_example)

    return loss

  def frozen(self, config) -> tuple[str, ...]:
    del config
    return ()

  def train_flops(self, config, num_classes: int | None) -> float:
    return flops.train_flops(config.model, config.image_size, num_classes)

  def default_evals(self, config) -> tuple[str, ...]:
    del config
    return ('classification',)

  def image_model(self, model_config):
    return model_config

  def follow_image_model(self, config) -> None:
    del config  # The image model is the model.

  def example_batch(self, config, batch_size: int, rng, num_classes: int) -> dict:
    """Images in [-1, 1] and labels."""
    size = config.image_size
    return {
      'image': rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32),
      'label': rng.integers(0, num_classes, batch_size).astype(np.int32),
    }

  def fine_tunes_from(self, config) -> str:
    return config.pretrained_path

  def needs_pretrained(self, config) -> bool:
    return bool(config.pretrained_path)

  def load_pretrained(self, config, params):
    """config.pretrained_path (a release .npz, or 'augreg:...') loaded into `params`: the head
    re-initialised when its classes differ, the position embeddings resampled to
    config.image_size (checkpoint.load_pretrained)."""
    path = augreg.resolve(config.pretrained_path, config.augreg_index)
    log.info('Fine-tuning from %s.', path)
    return checkpoint.load_pretrained(
      pretrained_path=path,
      init_params=params,
      model_config=config.model,
      image_size=config.image_size,
    )

  def captions(self, config):
    del config
    return None

  def precomputes_images(self, config) -> bool:
    del config
    return False

  def image_table(self, model, config, params, mesh):
    raise NotImplementedError('A classification run embeds no images before training.')

  def no_class_head(self, workdir: str) -> str:
    del workdir
    return ''


TASK = Classification()
