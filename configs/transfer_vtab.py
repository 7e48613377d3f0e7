"""A VTAB-1k-style suite: 1,000 training examples per task, of which 800 train and 200 choose the
learning rate, the task's test split reported; 2,500 steps at batch 512, 384 px, SGD with momentum,
learning rates 0.001 / 0.003 / 0.01. The natural and specialised VTAB tasks whose TFDS datasets
carry a plain 'label' (the structured ones derive their labels from other features, which this suite
does not do).

  python -m launch.transfer --pretrained=RUN_DIR --suite=configs/transfer_vtab.py --backend=slurm
      --out=runs/vtab
"""

from vit_jax.configs import transfer


def _vtab(dataset: str, test: str = 'test', source: str = 'train'):
  return transfer.task(
    dataset=dataset,
    train=f'{source}[:800]',
    val=f'{source}[800:1000]',
    test=test,
    steps=2_500,
    warmup=200,
    lrs=(0.001, 0.003, 0.01),
  )


SUITE = transfer.suite(
  name='vtab1k',
  tasks={
    'cifar100': _vtab('cifar100'),
    'caltech101': _vtab('caltech101'),
    'dtd': _vtab('dtd'),
    'oxford_flowers102': _vtab('oxford_flowers102'),
    'oxford_iiit_pet': _vtab('oxford_iiit_pet'),
    'svhn_cropped': _vtab('svhn_cropped'),
    'sun397': _vtab('sun397'),
    'patch_camelyon': _vtab('patch_camelyon'),
    'eurosat': _vtab('eurosat', test='train[80%:]'),
    'resisc45': _vtab('resisc45', test='train[80%:]'),
  },
)
get_config, get_sweep, get_suite = transfer.suite_functions(SUITE)
