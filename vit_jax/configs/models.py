"""google-research/vision_transformer's model-config API, backed by our single preset registry.

`MODEL_CONFIGS[name]` (locked ConfigDicts), `AUGREG_CONFIGS[augreg_name]` (the models with AugReg
checkpoints, keyed as their file names start, e.g. 'B_16', 'R_Ti_16', 'R26_S_32'), and one getter
per preset: `get_b16_config()`, `get_r50_b16_config()`, `get_testing_config()`,
`get_mixer_b16_config()`, ... Each getter returns a new unlocked ConfigDict, as in the reference.
The tables themselves are `vit_jax.configs.presets.PRESETS` and `MIXER_PRESETS` (Mixers have no
AugReg checkpoints, so they are in MODEL_CONFIGS only), and the LiT image-text models'
(`get_lit_b16b_config()`, ...; `presets.LIT_PRESETS`).
"""

import ml_collections

from vit_jax.configs import presets

# Left out of AUGREG_CONFIGS as in the reference, plus our own extra sizes.
_NOT_AUGREG = ('testing', 'ViT-L_32', 'R50+ViT-B_16', 'ViT-H_14', 'ViT-g_14', 'ViT-22B_14')


def augreg_name(model_name: str) -> str:
  """'R+ViT-Ti_16' -> 'R_Ti_16': how AugReg file names spell a model (usable in paths and URLs
  unescaped)."""
  return model_name.replace('ViT-', '').replace('+', '_')


def _getter(name: str):
  def get_config() -> ml_collections.ConfigDict:
    return presets.get_model_config(name)

  get_config.__name__ = f'get_{presets.getter_suffix(name)}_config'
  get_config.__doc__ = f'Returns the {name} configuration.'
  return get_config


MODEL_CONFIGS: dict[str, ml_collections.ConfigDict] = {}
AUGREG_CONFIGS: dict[str, ml_collections.ConfigDict] = {}
for _name in presets.MODEL_NAMES + tuple(presets.LIT_PRESETS):
  _get = _getter(_name)
  globals()[_get.__name__] = _get
  MODEL_CONFIGS[_name] = _get().lock()
  if _name not in _NOT_AUGREG and _name in presets.PRESETS:
    AUGREG_CONFIGS[augreg_name(_name)] = MODEL_CONFIGS[_name]
del _name, _get
