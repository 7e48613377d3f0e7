"""Shared defaults for every vit_jax config: one table of hyperparameters.

Other config files start from `get_config()` here and override fields; vit_jax/configs/loading.py
reads them (command lines, overrides, a run's stored config.json). Every field that any part of the
code reads is listed here, so a locked config rejects typos on the command line.
"""

import os

import ml_collections
from ml_collections import config_dict

from vit_jax.configs import presets


def default_compilation_cache_dir(env=os.environ) -> str:
  """config.compilation_cache_dir's default: $JAX_COMPILATION_CACHE_DIR when set (JAX's own
  variable; the launchers and the test suite set it), else this user's cache folder,
  $XDG_CACHE_HOME/vit_jax/jax_cache (~/.cache/vit_jax/jax_cache without XDG_CACHE_HOME)."""
  if env.get('JAX_COMPILATION_CACHE_DIR') is not None:
    return env['JAX_COMPILATION_CACHE_DIR']
  cache_home = env.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(cache_home, 'vit_jax', 'jax_cache')


def get_config():
  """Returns the shared defaults (a fine-tuning recipe on an unspecified dataset)."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Model: VisionTransformer's arguments (a preset from vit_jax.configs.presets.get_model_config;
  # override any field).
  config.model = presets.get_model_config('ViT-B_16')
  config.dtype = 'float32'  # Compute dtype: 'float32' or 'bfloat16' (parameters stay float32).
  # Model fast paths (vit_jax/models/vit.py): same results, different speed and memory.
  # nn.scan over the blocks: faster compile when deep; resume with the same value.
  config.scan_layers = False
  # 'none', 'full' (recompute each block in backward) or 'dots' (keep matmul outputs).
  config.remat_policy = 'none'
  # 'plain' (einsum), 'xla' or 'cudnn' (GPU, bf16) via jax.nn.dot_product_attention.
  config.attention = 'plain'
  config.fused_qkv = False  # One matmul for query/key/value (parameters unchanged).
  config.num_classes = -1  # -1: taken from the dataset.
  # Release .npz (local or gs://) to fine-tune from, or 'augreg:<model or file name>[:<query>]'
  # (vit_jax/augreg.py); '' trains from scratch.
  config.pretrained_path = ''
  # Where 'augreg:' names are looked up (or a local copy).
  config.augreg_index = 'gs://vit_models/augreg/index.csv'

  # Data. A TFDS name ('cifar10'), 'image_folder' to read `image_folder`, or the path of an image
  # folder itself.
  config.dataset = ''
  config.image_folder = ''  # DIR with DIR/train/<class>/*.jpg|png and DIR/test/<class>/*.
  config.tfds_data_dir = ml_collections.FieldReference(None, field_type=str)  # None: TFDS default.
  # For datasets like imagenet2012.
  config.tfds_manual_dir = ml_collections.FieldReference(None, field_type=str)
  # Splits (TFDS syntax, slices too: 'train[:98%]'; image folders take the same syntax over their
  # split folders).
  config.train_split = 'train'
  config.eval_split = 'test'
  config.image_size = 384
  # An undecodable image in an image folder: 'error' (names the files) or 'skip'.
  config.on_bad_image = 'error'
  config.prefetch = 2  # Batches prefetched to the devices.
  config.input_threads = 0  # Threads that read and decode examples (0: one per CPU core).
  # Worker processes for that as well (0: none; Grain mp_prefetch, same order).
  config.input_processes = 0
  # A split whose images (not JPEGs) take at most this many MiB decoded is decoded once into memory
  # (per process): small datasets (digits, CIFAR) then cost no decode per example. The examples are
  # the same either way.
  config.input_cache_mib = 256
  config.pp = ml_collections.ConfigDict()
  # Train crop: 'inception' (random area/aspect), 'pad_crop' (random shift), 'resize'.
  config.pp.crop = 'inception'
  config.pp.inception_min_area = 0.05  # Smallest area fraction for the Inception crop.
  config.pp.pad_pixels = 4  # 'pad_crop': zero padding on each side before the random crop.
  config.pp.flip = True  # Random horizontal flip at train time.
  # RandAugment ops per image (0: off); vit_jax/data/randaugment.py.
  config.pp.randaugment_layers = 0
  config.pp.randaugment_magnitude = 10.0  # Their magnitude (AugReg: 10, 15 or 20).
  config.pp.eval_crop_fraction = 1.0  # <1: resize to image_size / fraction, then central crop.
  # 'square' resize, or 'shorter_side' (keep the aspect ratio; antialiased).
  config.pp.eval_resize = 'square'
  # Mixup (on device, in the train step): images and labels mixed with the batch rolled by one
  # within each device's shard, a ~ Beta(p, p) per step, a = max(a, 1 - a); 0 turns it off. Presets:
  # vit_jax/configs/augreg.py.
  config.mixup_p = 0.0

  # Evaluation: `eval_split` is one split ('test') or named splits
  # ('minival=train[99%:],val=validation'), all evaluated exactly every eval_every_steps (the first
  # as eval/*, the others as eval/<name>/*; vit_jax/evaluators). Few-shot linear probes on the
  # pre-logits features (big_vision's): 'name:train_split:test_split,...' ('' = none).
  config.fewshot = ml_collections.ConfigDict()
  config.fewshot.datasets = ''
  config.fewshot.shots = (1, 5, 10, 25)  # Training examples per class.
  config.fewshot.seeds = 3  # Draws of the shots per k; the metric is the mean over them.
  config.fewshot.l2_reg = 2.0**10  # Ridge regularisation.
  config.fewshot.every_steps = 0  # 0: with the evaluation (eval_every_steps).
  # The evaluators, by name (big_vision's `evals`; vit_jax/evaluators/, checked by
  # vit_jax/configs/evals.py). Empty: the evaluation above, as always (eval_split, fewshot;
  # evaluators.default_evals). Else exactly these entries, each {type, prefix, every_steps, and its
  # type's options}, its metrics written as the prefix + the evaluator's names, e.g.
  #   config.evals.val = dict(type='classification', prefix='val/', every_steps=500, split='val')
  # prefix defaults to '<name>/', every_steps to eval_every_steps. The types, options and metrics:
  #   'classification' (split: one split, default eval_split's first): accuracy, top5, loss,
  #       num_examples;
  #   'zeroshot' (a LiT model's classes from its templates; split): the same names;
  #   'retrieval' (a LiT model with lit.captions or lit.text_feature; split): img2txt/recall@1,
  #       txt2img/recall@5, ... (k = 1, 5, 10);
  #   'fewshot' (datasets, shots, seeds, l2_reg; each one absent is config.fewshot's):
  #       <dataset>_<k>shot.
  config.evals = ml_collections.ConfigDict()

  # Loss. 'softmax' or 'sigmoid' (sigmoid cross-entropy, ImageNet-21k style). For a LiT model
  # (config.lit below) the image-text contrastive loss over the global batch: 'softmax' is LiT's,
  # 'sigmoid' is SigLIP's.
  config.loss = 'softmax'
  config.label_smoothing = 0.0

  # Image-text training (LiT, SigLIP), when config.model is a LiT model (configs/lit.py;
  # vit_jax/data/captions.py).
  config.lit = ml_collections.ConfigDict()
  # A ViT .npz (a release file, or a run's params.npz) for the image tower; '' = none.
  config.lit.image_init = ''
  # The image tower gets no gradients and no updates (LiT's "locked image tuning").
  config.lit.locked_image = True
  # The locked tower applied once to every training image before training, then only the text tower
  # runs per step (the training images must then be deterministic: pp.crop='resize', no flip, no
  # RandAugment).
  config.lit.precompute_image = False
  # A LiT .npz whose text tower (and temperature) start the run; '' = from scratch.
  config.lit.text_init = ''
  # The text tower's tokenizer vocabulary (a BERT vocab.txt or a SentencePiece .model, as
  # config.model.pp names); '' builds a SentencePiece word vocabulary of the captions
  # (WORKDIR/vocab.model).
  config.lit.vocab_path = ''
  # Captions of a classification dataset: each image's is one of these templates (drawn per example)
  # with its class name; the same templates give the zero-shot classifier of the evaluation. A
  # built-in set of vit_jax/inference/zeroshot.py ('photo', 'ensemble'), or a file with one template
  # per line, each with '{}'.
  config.lit.templates = 'photo'
  # Or an image folder's own captions: a file of lines '<image path relative to the
  # folder><TAB><caption>' (several lines: several captions); then the eval split is also scored by
  # retrieval (recall@1/5/10 both ways).
  config.lit.captions = ''
  # Or a TFDS dataset's caption feature ('captions/text' for coco_captions; needs vocab_path): the
  # same, evaluated by retrieval only when the dataset has no class labels.
  config.lit.text_feature = ''
  # Names for the classes, comma separated, in label order ('' = the dataset's).
  config.lit.class_names = ''
  # exp(t) at init of a model trained from scratch (a loaded text_init keeps its).
  config.lit.temperature_init = 10.0
  # The sigmoid loss's bias at init (SigLIP's); not used by the softmax loss.
  config.lit.bias_init = -10.0
  # How the sigmoid loss is computed over the global batch (the same value and gradients):
  # 'dense' forms all B x B logits (XLA gathers every device's text embeddings); 'chunked' passes
  # the text embeddings around the ring of the batch's devices, one [local x local] block of logits
  # at a time (SigLIP's); 'auto' is 'chunked' where the batch is split over more than one device.
  config.lit.sigmoid_impl = 'auto'

  # Optimisation.
  config.batch_size = 512  # Global batch, over all devices and processes.
  config.eval_batch_size = 512
  config.accum_steps = 1  # Micro-batches per step; batch_size must divide by it.
  config.total_steps = 10_000
  # Or the same duration in passes over the train split / examples (one of the two; it replaces
  # total_steps).
  config.total_epochs = config_dict.placeholder(float)
  config.total_examples = config_dict.placeholder(int)
  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.name = 'sgd'  # 'sgd' (momentum), 'adam' or 'adamw'.
  config.optimizer.momentum = 0.9  # SGD.
  # SGD momentum / Adam first moment: 'float32' or 'bfloat16'.
  config.optimizer.accumulator_dtype = 'float32'
  config.optimizer.b1 = 0.9  # Adam(W).
  config.optimizer.b2 = 0.999  # Adam(W).
  config.optimizer.eps = 1e-8  # Adam(W).
  # Applied to kernels only (decoupled for adamw, L2 added to grads otherwise).
  config.optimizer.weight_decay = 0.0
  config.optimizer.grad_clip_norm = 1.0  # Clip by global norm; <= 0 disables.
  config.schedule = ml_collections.ConfigDict()
  config.schedule.base_lr = 0.03
  config.schedule.warmup_steps = 500
  # Or in epochs / examples (replaces warmup_steps).
  config.schedule.warmup_epochs = config_dict.placeholder(float)
  config.schedule.warmup_examples = config_dict.placeholder(int)
  config.schedule.decay_type = 'cosine'  # 'cosine', 'linear', 'constant' or 'rsqrt'.
  config.schedule.end_lr = 0.0  # Final value for 'linear' (and floor for 'cosine').
  # 'rsqrt': lr = base_lr * sqrt(timescale / max(step, timescale)).
  config.schedule.rsqrt_timescale = 10_000

  # Devices: mesh axes (name, size), -1 = the rest; see vit_jax/sharding.py.
  config.mesh = (('data', -1),)
  config.sharding_strategy = 'replicate'  # 'replicate', 'fsdp', 'tp' or 'fsdp+tp'.
  config.fsdp_min_size = 2**18  # Arrays with fewer elements stay replicated under FSDP.

  # Loop.
  config.log_every_steps = 100
  config.eval_every_steps = 1_000
  config.checkpoint_every_steps = 1_000
  config.keep = 3  # Checkpoints kept.
  config.async_checkpoints = True  # Save in a background thread while training goes on.
  # A non-finite loss or gradient norm: the update is never applied; 'stop' raises (naming the step
  # and the last good checkpoint) at the next log or save step, 'skip' drops it, counts it
  # (train/nonfinite_steps) and goes on.
  config.nonfinite_policy = 'stop'
  config.export_npz = True  # Write WORKDIR/params.npz (release layout) at the end.
  # A jax.profiler trace of these training steps into WORKDIR/profile ('' for none; 'START:END'
  # steps, END excluded).
  config.profile_steps = ''

  # Faults at scale (vit_jax/runtime/watchdog.py; README, "Faults at scale"): a lost or stuck
  # process ends the job with a restartable exit status (75 lost peer, 76 hung) instead of waiting
  # forever; launchers rerun it.
  config.faults = ml_collections.ConfigDict()
  # jax.distributed.initialize: how long the processes wait for each other.
  config.faults.init_timeout_s = 300
  # JAX's coordination service declares a silent process dead after this.
  config.faults.heartbeat_timeout_s = 100
  # At the end, how long a process waits for the others to finish too.
  config.faults.shutdown_timeout_s = 60
  config.faults.peer_timeout_s = 30  # A process silent this long is lost (< heartbeat_timeout_s).
  # A phase (train step, eval, save) may take max(floor, factor x its longest) s ...
  config.faults.hang_floor_s = 120
  config.faults.hang_factor = 10
  config.faults.hang_first_s = 1800  # ... and its first time (it compiles) this long.
  config.faults.hang_timeout_s = 0  # > 0: this bound for every phase instead.
  # JAX's persistent compilation cache (vit_jax/runtime/compilation_cache.py): every compiled
  # program is kept in this folder (local or gs://) and read back by the next process that compiles
  # it for the same devices and flags (a restart, a resumed run, a sweep's other runs), which then
  # skips compiling. '' turns it off: do that for XLA_FLAGS=--xla_dump_to (a program read from the
  # cache is not compiled, so not dumped). Default: default_compilation_cache_dir().
  config.compilation_cache_dir = default_compilation_cache_dir()
  config.lock()  # Unknown fields are errors (see vit_jax/configs/check.py).
  config.evals.unlock()  # A config file names its entries (config.evals.<name> = dict(...)).
  return config
