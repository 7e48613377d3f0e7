"""The ViT paper's transfer datasets, with big_vision's transfer recipe (configs/transfer.py there):
SGD with momentum, batch 512, gradient clipping at 1, cosine decay, no weight decay, at 384 px, the
learning rate chosen on a held-out part of the train split among 0.001 / 0.003 / 0.01 / 0.03;
few-shot probes (1/5/10/25 shots, 3 seeds) on big_vision's few-shot datasets. Published figures:
big_vision's expected test accuracies (mean of 5 runs) for the AugReg ViT-B/32 it transfers
("howto-i21k-B/32"), vision_transformer's for its original ImageNet-21k releases, and for any other
AugReg file the index's own fine-tuning results (launch/transfer.py reads them).

  python -m launch.transfer
      --pretrained=gs://vit_models/augreg/B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0.npz \
      --model=ViT-B_32 --suite=configs/transfer_paper.py --backend=slurm --out=runs/transfer_b32
"""

from vit_jax.configs import transfer

AUGREG_B32 = 'B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0'
# The original ImageNet-21k releases (gs://vit_models/imagenet21k/<model>.npz), fine-tuned by
# vision_transformer's own recipe: its README's "Expected ViT results" (the ViT paper's results
# replicated; the dropout 0.0 column).
ORIGINAL_I21K = {
  'R50+ViT-B_16': {'cifar10': 98.72, 'cifar100': 90.88, 'imagenet2012': 83.72},
  'ViT-B_16': {'cifar10': 99.02, 'cifar100': 92.06, 'imagenet2012': 84.53},
  'ViT-B_32': {'cifar10': 98.88, 'cifar100': 92.31, 'imagenet2012': 81.66},
  'ViT-L_16': {'cifar10': 99.13, 'cifar100': 92.91, 'imagenet2012': 84.47},
  'ViT-L_32': {'cifar10': 99.06, 'cifar100': 93.29, 'imagenet2012': 81.89},
}

SUITE = transfer.suite(
  name='paper',
  tasks={
    'cifar10': transfer.task(
      dataset='cifar10',
      train='train[:98%]',
      val='train[98%:]',
      test='test',
      steps=10_000,
      warmup=500,
    ),
    'cifar100': transfer.task(
      dataset='cifar100',
      train='train[:98%]',
      val='train[98%:]',
      test='test',
      steps=10_000,
      warmup=500,
    ),
    'imagenet2012': transfer.task(
      dataset='imagenet2012',
      train='train[:99%]',
      val='train[99%:]',
      test='validation',
      steps=20_000,
      warmup=500,
    ),
    'oxford_iiit_pet': transfer.task(
      dataset='oxford_iiit_pet',
      train='train[:90%]',
      val='train[90%:]',
      test='test',
      steps=500,
      warmup=100,
    ),
    'oxford_flowers102': transfer.task(
      dataset='oxford_flowers102',
      train='train[:90%]',
      val='train[90%:]',
      test='test',
      steps=500,
      warmup=100,
    ),
  },
  fewshot={
    'datasets': (
      'caltech101:train:test,cars196:train:test,cifar100:train:test,dtd:train:test,'
      'oxford_iiit_pet:train:test,uc_merced:train[:1000]:train[1000:]'
    ),
    'shots': (1, 5, 10, 25),
    'seeds': 3,
    'l2_reg': 2.0**10,
    'image_size': 224,
  },
  published={
    (AUGREG_B32, 'cifar10'): 98.55,
    (AUGREG_B32, 'cifar100'): 91.35,
    (AUGREG_B32, 'imagenet2012'): 83.27,
    (AUGREG_B32, 'oxford_iiit_pet'): 93.78,
    (AUGREG_B32, 'oxford_flowers102'): 99.43,
    **{(model, task): value for model, row in ORIGINAL_I21K.items() for task, value in row.items()},
  },
)
get_config, get_sweep, get_suite = transfer.suite_functions(SUITE)
