"""Test set-up: 8 CPU devices, quiet TensorFlow, no GPU grabbed by TF."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import pytest  # noqa: E402  (after the environment above)


@pytest.fixture(scope='session')
def fitted_run(tmp_path_factory):
  """(workdir, image folder) of a tiny scanned model trained to fit tiny.image_folder: for predict/visualize/export."""
  import tiny  # pylint: disable=g-import-not-at-top
  return tiny.fitted_run(tmp_path_factory.mktemp('fitted'), scan_layers=True)
