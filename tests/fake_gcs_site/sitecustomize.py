"""Test processes only: serve gs:// from a local folder when FAKE_GCS_ROOT is set
(tests/fake_gcs.py)."""

import os
import sys

if os.environ.get('FAKE_GCS_ROOT'):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import fake_gcs  # pylint: disable=g-import-not-at-top

  fake_gcs.install(
    os.environ['FAKE_GCS_ROOT'],
    [b for b in os.environ.get('FAKE_GCS_UNREACHABLE', '').split(',') if b],
  )
