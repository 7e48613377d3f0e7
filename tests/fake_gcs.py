"""A local stand-in for gs:// (no network here): gs://BUCKET/PATH is ROOT/BUCKET/PATH on disk.

`install(root)` registers it with fsspec for the 'gs' and 'gcs' protocols, which etils.epath (and so
vit_jax.io) uses for gs:// URLs; paths come back as gcsfs gives them ('BUCKET/PATH'). Processes that
tests start get it from `env(root)`: PYTHONPATH gains tests/fake_gcs_site, whose sitecustomize calls
`install` when FAKE_GCS_ROOT is set. Buckets named in `unreachable` (FAKE_GCS_UNREACHABLE for child
processes) fail as a bucket without access does.
"""

import os

import fsspec
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fake_gcs_site')


class FakeGCS(DirFileSystem):
  protocol = ('gs', 'gcs')
  root = None  # Set by install().
  unreachable = ()

  # (gcsfs options such as finalize_on_close)
  def __init__(self, *args, **kwargs):  # pylint: disable=unused-argument
    os.makedirs(FakeGCS.root, exist_ok=True)
    # GCS has no folders to make.
    super().__init__(path=FakeGCS.root, fs=LocalFileSystem(auto_mkdir=True))

  def _join(self, path):
    for p in [path] if isinstance(path, str) else path:
      if self._strip_protocol(p).split('/', 1)[0] in FakeGCS.unreachable:
        raise RuntimeError(f'403 Forbidden: caller does not have storage.objects.get access to {p}')
    return super()._join(path)

  def pipe_file(self, path, value, mode='overwrite', **kwargs):
    """As GCS: mode='create' (a write with ifGenerationMatch=0) is atomic and FileExistsError when
    the object exists."""
    if mode != 'create':
      return super().pipe_file(path, value, **kwargs)
    local = self._join(path)
    os.makedirs(os.path.dirname(local), exist_ok=True)
    with open(local, 'xb') as f:
      f.write(value)

  @classmethod
  def _strip_protocol(cls, path):
    path = path[0] if isinstance(path, list) else str(path)
    for prefix in ('gs://', 'gcs://'):
      if path.startswith(prefix):
        path = path[len(prefix) :]
    return path.rstrip('/')


def install(root, unreachable=()) -> None:
  from etils.epath import backend  # pylint: disable=g-import-not-at-top

  FakeGCS.root, FakeGCS.unreachable = str(root), tuple(unreachable)
  FakeGCS.clear_instance_cache()
  for protocol in FakeGCS.protocol:
    fsspec.register_implementation(protocol, FakeGCS, clobber=True)
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access


def env(root, unreachable=()) -> dict[str, str]:
  """Environment variables that give a child process the fake, rooted at `root`."""
  path = os.environ.get('PYTHONPATH', '')
  return {
    'FAKE_GCS_ROOT': str(root),
    'FAKE_GCS_UNREACHABLE': ','.join(unreachable),
    'PYTHONPATH': SITE + (os.pathsep + path if path else ''),
  }
