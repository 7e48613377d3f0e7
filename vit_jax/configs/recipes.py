"""What the pretraining recipes share: the AugReg / "better plain ViT baselines" optimiser and
schedule."""


def adam_pretraining(config, *, base_lr: float = 1e-3, warmup_steps: int = 10_000):
  """Adam (b1 0.9, b2 0.999) with decoupled weight decay, gradient clipping at norm 1, linear warmup
  then cosine to 0.

  Weight decay in AdamW terms: the per-step decay is lr(step) * 0.1 = 1e-4 times the schedule factor
  at lr 1e-3, i.e. big_vision's `wd=1e-4`, which big_vision multiplies by the schedule factor only
  (not by the lr).
  """
  opt, sched = config.optimizer, config.schedule
  opt.name, opt.b1, opt.b2, opt.weight_decay, opt.grad_clip_norm = (
    'adamw',
    0.9,
    0.999,
    1e-4 / base_lr,
    1.0,
  )
  sched.base_lr, sched.warmup_steps, sched.decay_type, sched.end_lr = (
    base_lr,
    warmup_steps,
    'cosine',
    0.0,
  )
  return config
