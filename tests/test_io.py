"""vit_jax/io.py: local paths and gs:// (a local stand-in: tests/fake_gcs.py) through one API,
atomic writes."""

import os
import subprocess
import sys

import fake_gcs
import fsspec
import pytest
import tiny

from vit_jax import errors, io


@pytest.fixture(params=['local', 'gs'])
def root(request, tmp_path):
  if request.param == 'local':
    return str(tmp_path / 'local')
  fake_gcs.install(tmp_path / 'gcs')
  return 'gs://bucket/run'


def test_write_read_append_list_glob_walk_rename_remove(root):
  io.write_text(io.join(root, 'a.txt'), 'one\n')
  io.append_text(io.join(root, 'a.txt'), 'two\n')
  io.write_bytes(io.join(root, 'sub', 'x.PNG'), b'\x89PNG')
  io.write_bytes(io.join(root, 'sub', 'deeper', 'y.jpg'), b'\xff\xd8')
  assert io.read_text(io.join(root, 'a.txt')) == 'one\ntwo\n'
  assert io.read_text_or_none(io.join(root, 'missing.txt')) is None
  assert io.listdir(root) == ['a.txt', 'sub']
  assert (
    io.isdir(io.join(root, 'sub'))
    and io.isfile(io.join(root, 'a.txt'))
    and not io.isfile(io.join(root, 'sub'))
  )
  assert io.glob(io.join(root, 'sub', '*.PNG')) == [io.join(root, 'sub', 'x.PNG')]
  walked = {folder: files for folder, _, files in io.walk(root)}
  assert walked[io.join(root, 'sub', 'deeper')] == ['y.jpg'] and walked[root] == ['a.txt']
  io.rename(io.join(root, 'a.txt'), io.join(root, 'b.txt'))
  with pytest.raises(FileExistsError):
    io.rename(io.join(root, 'b.txt'), io.join(root, 'sub', 'x.PNG'))
  io.remove(io.join(root, 'b.txt'))
  assert not io.exists(io.join(root, 'b.txt'))
  with pytest.raises(FileNotFoundError):
    io.read_bytes(io.join(root, 'b.txt'))
  assert io.mtime(io.join(root, 'sub', 'x.PNG')) > 0


def test_a_local_write_is_atomic_and_leaves_no_temporary_file(tmp_path, monkeypatch):
  path = str(tmp_path / 'f.json')
  io.write_text(path, 'old')

  def fail(*args):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(os, 'replace', fail)
  with pytest.raises(OSError, match='No space left'):
    io.write_text(path, 'new')
  assert open(path).read() == 'old' and os.listdir(tmp_path) == ['f.json']


def test_paths_keep_their_scheme():
  assert io.join('gs://b/run/', 'checkpoints', '5') == 'gs://b/run/checkpoints/5'
  assert io.parent('gs://b/run/x.npz') == 'gs://b/run' and io.basename('gs://b/run/') == 'run'
  assert io.abspath('gs://b/x') == 'gs://b/x' and os.path.isabs(io.abspath('x'))


def test_one_list_of_image_extensions_includes_bmp():
  assert all(
    io.is_image_file(f'a{ext.upper()}')
    for ext in ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')
  )
  assert not io.is_image_file('notes.txt')


class _Unreachable(fsspec.AbstractFileSystem):
  protocol = ('gs', 'gcs')

  def __init__(self, *args, **kwargs):  # pylint: disable=unused-argument
    super().__init__()

  def _open(self, path, mode='rb', **kwargs):
    raise RuntimeError('401 Anonymous caller does not have storage.objects.get access')

  def info(self, path, **kwargs):
    raise RuntimeError('401 Anonymous caller does not have storage.objects.get access')

  def exists(self, path, **kwargs):  # As gcsfs: only "not found" means False; other failures raise.
    self.info(path)


def test_an_unreachable_bucket_is_a_storage_error_naming_the_path(monkeypatch):
  from etils.epath import backend  # pylint: disable=g-import-not-at-top

  for protocol in _Unreachable.protocol:
    fsspec.register_implementation(protocol, _Unreachable, clobber=True)
  backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
  try:
    with pytest.raises(
      io.StorageError, match=r'Cannot use gs://b/x.txt: RuntimeError: 401 .*credentials'
    ):
      io.read_bytes('gs://b/x.txt')
    with pytest.raises(io.StorageError, match='Cannot use gs://b/run'):
      io.exists('gs://b/run')
  finally:
    fake_gcs.install('/nonexistent')  # Leave gs:// to the fake, not this failing one.


def test_a_storage_error_is_one_line_at_the_error_boundary(tmp_path, capsys):
  fake_gcs.install(tmp_path / 'gcs', unreachable=['locked'])
  try:
    assert errors.run(lambda: io.read_head('gs://locked/ViT-L_16.npz', 4), prog='vit_jax.main') == 1
  finally:
    fake_gcs.install(tmp_path / 'gcs')
  err = capsys.readouterr().err
  assert err.startswith(
    'vit_jax.main: error: Cannot use gs://locked/ViT-L_16.npz: RuntimeError: 403 Forbidden'
  )
  assert 'Traceback' not in err and len(err.splitlines()) == 1


def test_read_head_reads_the_first_bytes_and_create_new_creates_once(root):
  path = io.join(root, 'sub', 'f.bin')
  assert io.create_new(path, b'0123456789') and not io.create_new(path, b'other')
  assert io.read_head(path, 4) == b'0123' and io.read_head(path, 100) == b'0123456789'
  io.append_bytes(path, b'ab')
  assert io.read_bytes(path) == b'0123456789ab'
  with pytest.raises(FileNotFoundError):
    io.read_head(io.join(root, 'nope'), 4)
  assert sorted(io.listdir(io.join(root, 'sub'))) == ['f.bin']  # No temporary file left behind.


def test_an_append_to_a_full_disk_fails_whole_and_names_the_file(tmp_path):
  mount = tmp_path / 'small'
  tiny.mount_tmpfs(mount, '64k')
  try:
    path = str(mount / 'metrics.jsonl')
    io.append_text(path, 'one\n')
    with pytest.raises(OSError) as failed:
      io.append_bytes(path, b'x' * (1 << 20))  # Fills the disk part way, then fails.
    assert errors.fault(failed.value) == (
      f'No space left on device ({path}): free some space (or use another location) and rerun '
      'the same command.'
    )
    assert io.read_text(path) == 'one\n'  # Not half a record.
    with pytest.raises(OSError, match='No space left on device') as failed:
      io.write_bytes(str(mount / 'big.bin'), b'x' * (1 << 20))
    assert failed.value.filename == str(mount / 'big.bin')
    with pytest.raises(OSError, match='No space left on device'):
      io.create_new(str(mount / 'new.bin'), b'x' * (1 << 20))
    assert sorted(os.listdir(mount)) == ['metrics.jsonl']  # No temporary file left behind.
  finally:
    tiny.umount(mount)


def test_unsupported_schemes_are_a_storage_error():
  with pytest.raises(io.StorageError, match='https://example.com/cat.jpg'):
    io.read_bytes('https://example.com/cat.jpg')


def test_importing_io_imports_neither_tensorflow_nor_jax():
  code = (
    'import sys, vit_jax.io; print(sorted(m for m in ("tensorflow", "jax") if m in sys.modules))'
  )
  assert (
    subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    == '[]\n'
  )
