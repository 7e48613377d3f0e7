"""vit_jax: Vision Transformers in JAX/Flax."""

import setuptools

setuptools.setup(
  name='vit_jax',
  version='0.1.0',
  description='Vision Transformers in JAX/Flax: release-checkpoint compatible training at scale.',
  # No top-level `configs` package.
  packages=setuptools.find_packages(include=['vit_jax', 'vit_jax.*']),
  package_data={'vit_jax.data.datasets': ['imagenet21k_goog_synsets.txt']},
  python_requires='>=3.11,<3.14',
  install_requires=[
    'absl-py>=2.1,<3',
    'flax>=0.12.7,<0.13',
    # gs:// for vit_jax.io (through etils.epath and fsspec), without TensorFlow.
    'gcsfs>=2024.6',
    'grain>=0.2.16,<0.3',  # Random-access input pipelines (index shuffle, worker processes).
    # tensorflow-datasets needs it to prepare datasets but does not declare it.
    'importlib_resources>=6',
    # The last three minor releases (docs/install.md: Supported versions); on Python 3.11, 0.10.
    'jax>=0.10.0,!=0.12.1,<0.13',  # 0.12.1 hangs a resumed multi-process CPU run (docs/install.md).
    'matplotlib>=3.8,<4',  # vit_jax.visualize and launch.sweep results: figures.
    'ml-collections>=1.0,<2',
    'numpy>=2.0,<3',
    'opencv-python-headless>=4.8,<6',  # Fast bilinear resizes of training crops.
    'optax>=0.2.8,<0.3',
    'pandas>=2,<4',  # The AugReg checkpoint index.
    'orbax-checkpoint>=0.11.36,<0.13',
    'pillow>=10',
    'scikit-learn>=1.5,<2',
    # vit_jax.export: Hugging Face model files, written from NumPy (no torch needed).
    'safetensors>=0.4,<1',
    'scipy>=1.14,<2',
    # LiT's SentencePiece tokenizer (vit_jax/data/tokenizers.py), without TensorFlow Text.
    'sentencepiece>=0.2,<0.3',
    'simplejpeg>=1.7,<2',  # libjpeg-turbo with DCT-domain downscaling.
    'tensorboard>=2.18,<3',
    "tensorflow-cpu>=2.20,<2.22; platform_machine == 'x86_64'",
    "tensorflow>=2.20,<2.22; platform_machine != 'x86_64'",
    'tensorflow-datasets>=4.9.10,<5',
    # LiT's BERT WordPiece tokenizer (vit_jax/data/tokenizers.py), without TensorFlow Text.
    'tokenizers>=0.19,<1',
    'tqdm>=4.66,<5',
  ],
  extras_require={
    # ruff: pinned, so its format is stable.
    'test': [
      'pytest>=8,<10',
      'pytest-xdist>=3.5,<4',
      'ruff==0.17.6',
      # tests/test_notebooks.py: runs docs/notebooks/*.ipynb in a kernel of the test's Python.
      'nbclient>=0.10,<1',
      'nbformat>=5.10,<6',
      'ipykernel>=6.29,<8',
    ],
    'tpu': ['jax[tpu]>=0.10.0,!=0.12.1,<0.13'],  # Cloud TPU VMs (libtpu).
    # NVIDIA GPUs: CUDA 13 wheels, what JAX's install guide leads with.
    'cuda': ['jax[cuda13]>=0.10.0,!=0.12.1,<0.13'],
    # NVIDIA GPUs whose driver is too old for CUDA 13.
    'cuda12': ['jax[cuda12]>=0.10.0,!=0.12.1,<0.13'],
  },
)
