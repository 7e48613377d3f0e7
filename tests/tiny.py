"""Tiny model configs that keep the suite fast."""
import ml_collections


def vit_config(classifier='token', *, hidden=32, layers=2, heads=2, mlp=64, patch=4, dropout=0.0,
               representation_size=None, resnet=None):
  return ml_collections.ConfigDict({
      'model_name': 'tiny',
      'patches': {'size': (patch, patch)},
      'hidden_size': hidden,
      'transformer': {'num_layers': layers, 'mlp_dim': mlp, 'num_heads': heads, 'dropout_rate': dropout,
                      'attention_dropout_rate': dropout},
      'classifier': classifier,
      'representation_size': representation_size,
      'resnet': resnet,
  })


def hybrid_config(num_layers=(1, 1), **kw):
  return vit_config(patch=1, resnet=ml_collections.ConfigDict({'num_layers': num_layers, 'width_factor': 0.5}),
                    **kw)
