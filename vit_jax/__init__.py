"""Vision Transformers in JAX/Flax."""

import time as _time

# When this process first imported vit_jax: vit_jax/runtime/goodput.py's start, at the latest. The
# same moment on the kernel's clock since boot (Linux), which /proc's process start time counts in:
# the time before the import is measured on that one clock, whatever the wall clock does meanwhile.
IMPORTED_AT = _time.time()
IMPORTED_AFTER_BOOT = (
  _time.clock_gettime(_time.CLOCK_BOOTTIME) if hasattr(_time, 'CLOCK_BOOTTIME') else None
)
