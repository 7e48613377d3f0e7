"""What the pretraining recipes share: the AugReg / "better plain ViT baselines" optimiser and
schedule."""


def adam_pretraining(config, *, base_lr: float = 1e-3, warmup_steps: int = 10_000):
  """Adam (b1 0.9, b2 0.999) with decoupled weight decay, gradient clipping at norm 1, linear warmup
  then cosine to 0.

  Weight decay in AdamW terms: the per-step decay is lr(step) * 0.1 = 1e-4 times the schedule factor
  at lr 1e-3, i.e. big_vision's `wd=1e-4`, which big_vision multiplies by the schedule factor only
  (not by the lr).
  """
  opt = config.optimizer
  sched = config.schedule
  opt.name = 'adamw'
  opt.b1 = 0.9
  opt.b2 = 0.999
  opt.weight_decay = 1e-4 / base_lr
  opt.grad_clip_norm = 1.0
  sched.base_lr = base_lr
  sched.warmup_steps = warmup_steps
  sched.decay_type = 'cosine'
  sched.end_lr = 0.0
  return config
