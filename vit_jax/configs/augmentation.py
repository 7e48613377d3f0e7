"""AugReg's augmentation levels ("How to train your ViT?") as named presets of RandAugment and
mixup.

| level   | RandAugment (layers, magnitude) | mixup p |
|---------|---------------------------------|---------|
| none    | off                             | off     |
| light1  | (2, 0)                          | off     |
| light2  | (2, 10)                         | 0.2     |
| medium1 | (2, 15)                         | 0.2     |
| medium2 | (2, 15)                         | 0.5     |
| strong1 | (2, 20)                         | 0.5     |
| strong2 | (2, 20)                         | 0.8     |
"""

AUGREG_LEVELS = {
  'none': (0, 0.0, 0.0),
  'light1': (2, 0.0, 0.0),
  'light2': (2, 10.0, 0.2),
  'medium1': (2, 15.0, 0.2),
  'medium2': (2, 15.0, 0.5),
  'strong1': (2, 20.0, 0.5),
  'strong2': (2, 20.0, 0.8),
}


def apply_level(config, level: str):
  """Sets config.pp.randaugment_layers / _magnitude and config.mixup_p to AugReg level `level`;
  returns config."""
  if level not in AUGREG_LEVELS:
    raise ValueError(f'Unknown AugReg level {level!r}; valid: {", ".join(AUGREG_LEVELS)}.')
  config.pp.randaugment_layers, config.pp.randaugment_magnitude, config.mixup_p = AUGREG_LEVELS[
    level
  ]
  return config
