"""Tasks: what differs between training objectives, and the one place that asks which objective a
config has.

A task owns what its objective needs from the layers below: building the model from the config and
its init inputs, the loss, what a training batch holds (captions, precomputed image embeddings), the
parameters the optimizer freezes, the FLOPs of a training example, the default evaluators, the
config rules of the objective, the pretrained files a fresh run starts from, and what predict,
export and visualize do with a run.

    task = tasks.of(config)            # classification.TASK or image_text.TASK
    model = task.build_model(config, num_classes)

  classification.py  image classification (ViT, hybrid, MLP-Mixer): a class head, cross-entropy;
  image_text.py      image-text (LiT, SigLIP): two towers, a contrastive loss, zero-shot.

Adding an objective is one task file (a class with the methods of `Task`, and its module-level TASK)
put in TASKS below, plus its config. losses.py and contrastive.py hold the losses the tasks use.
"""

from typing import Any, Callable, Protocol

from vit_jax.tasks import classification, image_text


class Task(Protocol):
  """What every task module's TASK provides (classification.py and image_text.py: their rules)."""

  name: str
  zero_shot: bool  # Its runs classify zero-shot, having no class head (vit_jax.predict).

  def claims(self, model_config) -> bool:
    """Whether a config with this model trains this task's objective."""

  def problems(self, config) -> list[str]:
    """The objective's rules that `config` breaks, one line each (beside configs/check.py's)."""

  def file_problems(self, config) -> list[str]:
    """The objective's files (pretrained towers, a vocabulary) that are missing or unreadable."""

  def build_model(self, config, num_classes: int):
    """The Flax model of `config` (`num_classes` for a class head)."""

  def init_params(self, model, rng, image_size: int):
    """`model`'s freshly initialised parameters."""

  def loss_fn(self, model, config) -> Callable[[Any, dict, Any], Any]:
    """(params, batch, dropout rng) -> the scalar loss of a global batch (the train step's)."""

  def frozen(self, config) -> tuple[str, ...]:
    """Regexes of the parameter names that get no updates and no optimizer state."""

  def train_flops(self, config, num_classes: int | None) -> float:
    """FLOPs of one example's training step (vit_jax/models/flops.py's counts)."""

  def default_evals(self, config) -> tuple[str, ...]:
    """The evaluator types a run of `config` gets by default (vit_jax/evaluators/)."""

  def image_model(self, model_config):
    """The model config of the image model (the whole model, or an image tower)."""

  def follow_image_model(self, config) -> None:
    """After config.image_size or the image model's sizes changed: the fields that follow them."""

  def example_batch(self, config, batch_size: int, rng, num_classes: int) -> dict:
    """A random training batch of `batch_size` (numpy), shaped as the input pipeline's."""

  def fine_tunes_from(self, config) -> str:
    """The config.pretrained_path that a fresh run loads, or '' (the task reads none)."""

  def needs_pretrained(self, config) -> bool:
    """Whether a fresh run of `config` starts from files (`load_pretrained`)."""

  def load_pretrained(self, config, params):
    """`params` with the config's pretrained files loaded into them."""

  def captions(self, config):
    """The captions of the run's training examples (vit_jax/data/captions.py), or None."""

  def precomputes_images(self, config) -> bool:
    """Whether training batches hold the images' embeddings, made once (`image_table`)."""

  def image_table(self, model, config, params, mesh):
    """float32 [records, dim]: every training image's embedding (when `precomputes_images`)."""

  def no_class_head(self, workdir: str) -> str:
    """For a `zero_shot` task: the one line that export, visualize and inference.load_run say of
    a run in `workdir` (it has no class head; what to do instead)."""


# The first task that claims a model config is its task; classification claims every image model.
TASKS: tuple[Task, ...] = (image_text.TASK, classification.TASK)


def for_model(model_config) -> Task:
  """The task of a model config: image-text for a LiT model's (two towers), else classification."""
  return next(task for task in TASKS if task.claims(model_config))


def of(config) -> Task:
  """The task that `config` trains (`for_model` of config.model)."""
  return for_model(config.model)
