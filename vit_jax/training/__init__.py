"""The training run: state, train step, optimizer, run checkpoints, metric writers, the loop."""
