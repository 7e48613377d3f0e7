"""vit_jax/tasks/: the registry picks a config's task by its model, and each task owns what its
objective needs (the config rules, the frozen parameters, the FLOPs count, the default evaluators, a
run without a class head)."""

import numpy as np
import pytest
import tiny

from vit_jax import tasks
from vit_jax.configs import check, common, loading, presets
from vit_jax.models import flops
from vit_jax.tasks import classification, image_text


def _lit(**overrides):
  """configs/lit.py: a tiny LiT run on the digits (its files are not read here)."""
  return tiny.override(loading.from_command_line('configs/lit.py'), overrides)


@pytest.mark.parametrize(
  'name', ['ViT-B_16', 'R50+ViT-B_16', 'Mixer-B_16', 'LiT-B16B', 'LiT-L16Ti']
)
def test_each_preset_has_the_task_of_its_family(name):
  config = common.get_config()
  config.model = presets.get_model_config(name)
  want = image_text.TASK if name.startswith('LiT') else classification.TASK
  assert tasks.of(config) is tasks.for_model(config.model) is want


def test_the_objective_rules_are_the_tasks_and_the_model_fields_the_config_checks():
  config = _lit(accum_steps=2, mixup_p=0.5, image_size=32, **{'lit.templates': ''})
  problems = image_text.TASK.problems(config)
  assert [p.split(':')[0].split('=')[0] for p in problems] == [
    'config.accum_steps',
    'config.mixup_p',
    'config.lit.templates is empty',
  ]
  model = check.problems(
    config
  )  # The model's own rule (its preprocessing size), not the objective's.
  assert len(model) == 1 and model[0].startswith(
    'config.image_size=32 differs from config.model.pp.size='
  )
  assert classification.TASK.problems(tiny.train_config(mixup_p=0.5)) == []


def test_the_sigmoid_loss_impl_is_checked():
  assert image_text.TASK.problems(_lit(loss='sigmoid', **{'lit.sigmoid_impl': 'chunked'})) == []
  (bad,) = image_text.TASK.problems(_lit(**{'lit.sigmoid_impl': 'chunk'}))
  assert bad == (
    "config.lit.sigmoid_impl='chunk' is not one of 'auto', 'chunked', 'dense' "
    "(did you mean 'chunked'?)."
  )
  (softmax,) = image_text.TASK.problems(_lit(**{'lit.sigmoid_impl': 'chunked'}))
  assert softmax.startswith("config.lit.sigmoid_impl='chunked' computes the sigmoid loss, but")


def test_the_locked_tower_is_the_frozen_part_only_when_locked():
  assert image_text.TASK.frozen(_lit()) == (r'img/.*',)
  assert image_text.TASK.frozen(_lit(**{'lit.locked_image': False})) == ()
  assert classification.TASK.frozen(tiny.train_config()) == ()


def test_an_image_text_example_counts_its_towers_as_they_run():
  """Text: forward and backward (3x); the image tower: 3x unlocked, 1x locked, 0x precomputed."""
  config = _lit()
  image = flops.forward_flops(
    config.model.image, config.image_size, flops.out_dims(config.model)[0]
  )
  text = flops.text_forward_flops(config.model)
  assert image > 0 and text > 0
  count = lambda **o: image_text.TASK.train_flops(_lit(**o), None)
  assert count() == image + 3 * text
  assert count(**{'lit.locked_image': False}) == 3 * image + 3 * text
  assert count(**{'lit.precompute_image': True}) == 3 * text
  vit = tiny.train_config()
  assert classification.TASK.train_flops(vit, 10) == 3 * flops.forward_flops(
    vit.model, vit.image_size, 10
  )


def test_default_evaluators_follow_the_objective_and_the_data():
  assert classification.TASK.default_evals(tiny.train_config()) == ('classification',)
  assert image_text.TASK.default_evals(_lit()) == ('zeroshot',)
  assert image_text.TASK.default_evals(_lit(**{'lit.captions': 'captions.tsv'})) == (
    'zeroshot',
    'retrieval',
  )


def test_an_image_text_run_classifies_zero_shot_and_says_why_it_has_no_class_head():
  assert image_text.TASK.zero_shot and not classification.TASK.zero_shot
  assert image_text.TASK.no_class_head('runs/lit').startswith(
    'runs/lit holds a LiT image-text run, which has no class head: classify with it zero-shot'
  )
  assert classification.TASK.no_class_head('runs/vit') == ''


def test_an_example_batch_holds_what_the_train_step_reads():
  rng = np.random.default_rng(0)
  lit = image_text.TASK.example_batch(_lit(), 4, rng, 10)
  assert {k: (v.shape, v.dtype.name) for k, v in lit.items()} == {
    'image': ((4, 16, 16, 3), 'float32'),  # The main job's 16 px.
    'label': ((4,), 'int32'),
    'tokens': ((4, 8), 'int32'),
  }  # configs/lit.py's max_len.
  vit = classification.TASK.example_batch(tiny.train_config(), 4, rng, 10)
  assert sorted(vit) == ['image', 'label'] and vit['label'].max() < 10


def test_an_image_tower_resized_takes_its_model_along():
  config = _lit()
  tower = image_text.TASK.image_model(config.model)
  tower.hidden_size = 48
  config.image_size = 16
  image_text.TASK.follow_image_model(config)
  assert config.model.pp.size == 16 and tuple(config.model.out_dim) == (None, 48)
  vit = tiny.train_config()
  assert classification.TASK.image_model(vit.model) is vit.model
