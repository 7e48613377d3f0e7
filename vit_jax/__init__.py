"""Vision Transformers in JAX/Flax."""

import time as _time

# When this process first imported vit_jax: vit_jax/runtime/goodput.py's start, at the latest.
IMPORTED_AT = _time.time()
