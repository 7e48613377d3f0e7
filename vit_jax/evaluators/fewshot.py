"""Few-shot linear probes on frozen pre-logits features, as big_vision evaluates pretraining.

For each dataset of `datasets` ('name:train_split:test_split', comma separated, e.g.
'cifar100:train:test,dtd:train:test'), the pre-logits features (the model without its head) of both
splits are computed with the evaluation preprocessing, exactly once per example on any number of
hosts (padded, masked batches, gathered to every process). Then for each seed of `seeds` and each k
in `shots`, k training examples per class are drawn (seeded per class) and a closed-form ridge probe
(vit_jax/evaluators/ridge.py, l2 = `l2_reg`) is scored on the whole test split. Metric
`<name>_<k>shot` is the mean test accuracy over the seeds. The same computation runs on every
process, so every process holds the same result. An option not given is config.fewshot's.
"""

import jax
import numpy as np

from vit_jax import sharding
from vit_jax.configs.choices import parse_fewshot_datasets, with_split
from vit_jax.data import input_pipeline, preprocess
from vit_jax.evaluators import ridge


class FewShotEvaluator:
  """The few-shot probes of `datasets` (module doc)."""

  def __init__(self, *, config, model, mesh, datasets=None, shots=None, seeds=None, l2_reg=None):
    given = {'datasets': datasets, 'shots': shots, 'seeds': seeds, 'l2_reg': l2_reg}
    fs = {key: config.fewshot[key] if value is None else value for key, value in given.items()}
    self._datasets = parse_fewshot_datasets(fs['datasets'])
    self._shots = tuple(fs['shots'])
    self._seeds = int(fs['seeds'])
    self._l2 = float(fs['l2_reg'])
    # Its own dataset and splits (an image folder's classes come from its train split).
    self._configs = {
      (name, split): with_split(
        config, split, dataset=name, image_folder='', train_split=train_split
      )
      for name, train_split, test_split in self._datasets
      for split in (train_split, test_split)
    }
    features = model.clone(num_classes=0)  # Pre-logits: the same parameters, the head unused.
    self._batch_shard = sharding.batch_sharding(mesh)

    def encode(params, batch):
      images = preprocess.to_float(batch['image'])
      return features.apply({'params': params}, images, train=False), batch['label'], batch['mask']

    self._encode = jax.jit(encode, out_shardings=sharding.replicated(mesh))

  def _features(self, params, config):
    xs = []
    ys = []
    for batch in input_pipeline.device_batches(config, self._batch_shard, train=False):
      x, y, mask = jax.device_get(self._encode(params, batch))
      keep = mask > 0
      xs.append(np.asarray(x, np.float32)[keep])
      ys.append(np.asarray(y)[keep])
    return np.concatenate(xs), np.concatenate(ys)

  def run(self, params) -> dict[str, float]:
    out = {}
    for name, train_split, test_split in self._datasets:
      num_classes = input_pipeline.open_split(
        self._configs[name, train_split], train_split
      ).num_classes
      train_x, train_y = self._features(params, self._configs[name, train_split])
      test_x, test_y = self._features(params, self._configs[name, test_split])
      for k in self._shots:
        accuracies = []
        for seed in range(self._seeds):
          idx = ridge.draw_shots(train_y, num_classes, k, seed)
          accuracies.append(
            ridge.accuracy(train_x[idx], train_y[idx], test_x, test_y, num_classes, self._l2)
          )
        out[f'{name}_{k}shot'] = float(np.mean(accuracies))
    return out
