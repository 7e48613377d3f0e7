"""The run directory, its lock, the one clock (goodput), watchdog, preemption, distributed."""
