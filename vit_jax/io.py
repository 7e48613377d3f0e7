"""Every file access of vit_jax and launch/: local paths and gs:// URLs through one small API of
plain strings.

Built on etils.epath (what Orbax and TFDS use), whose fsspec backend reaches gs:// through gcsfs.
TensorFlow is never imported: epath would pick tf.io.gfile for gs:// whenever TensorFlow is
installed, so EPATH_USE_TF is set to false here, before any path is used (it only steers that
choice). Nothing here needs JAX.

Contracts:
  * `write_bytes` / `write_text` are atomic: a reader sees the old file or the whole new one, never
    a part (a local file is written to a temporary name in the same folder, then renamed; a gs://
    object appears whole on close).
  * `append_bytes` / `append_text` add to the end of a file, all or nothing: a local append that
    fails part way (no space left) is cut back, so the file never ends in half a record. A gs://
    object is rewritten whole, as GCS has no append: for files that grow all run long, write new
    files instead, as vit_jax/training/metrics.py does on gs://.
  * `read_head` reads a file's first bytes and no more (one ranged request on gs://).
  * `create_new` creates a file only where none exists, atomically: of two racing creators exactly
    one succeeds, and the file appears with its whole content or not at all.
  * Failures of a remote store that are not "no such file" (no network, no credentials, no bucket)
    raise `StorageError`, a UserError (one line at the command line's error boundary,
    vit_jax/errors.py) and an OSError whose message names the path and what to check. Local OSErrors
    (no space left, read-only file system, permission denied) pass through, with the path they
    concern (a failed write on an open file has none of its own): the error boundary names them.
  * `IMAGE_EXTENSIONS` is the one list of image file names that training, prediction and the tools
    accept.
"""

import contextlib
import os
from typing import Iterator

# Must precede the first gs:// path (epath caches its choice).
os.environ.setdefault('EPATH_USE_TF', 'false')

from etils import epath  # noqa: E402  (after the setting above)
import fsspec  # noqa: E402  (epath's backend for gs://)

from vit_jax import errors  # noqa: E402

# Remote locations: gcsfs is a dependency (etils.epath knows s3:// and others, without theirs).
SCHEMES = ('gs',)
# Lower-case; every format PIL decodes into RGB (JPEGs through libjpeg-turbo:
# vit_jax/data/preprocess.py).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')


class StorageError(errors.UserError, OSError):
  """A remote location (gs://...) could not be reached or used; the message names it and what to
  check."""


def is_remote(path: str) -> bool:
  return '://' in str(path)


def is_image_file(name: str) -> bool:
  return str(name).lower().endswith(IMAGE_EXTENSIONS)


def join(base: str, *names: str) -> str:
  """base/name/..., keeping a URL's scheme intact."""
  base = str(base)
  if is_remote(base):
    return '/'.join([base.rstrip('/'), *(n.strip('/') for n in names)])
  return os.path.join(base, *names)


def parent(path: str) -> str:
  path = str(path).rstrip('/')
  if is_remote(path):
    scheme, _, rest = path.partition('://')
    return f'{scheme}://{rest.rsplit("/", 1)[0]}' if '/' in rest else path
  return os.path.dirname(path)


def basename(path: str) -> str:
  return (
    str(path).rstrip('/').rsplit('/', 1)[-1]
    if is_remote(path)
    else os.path.basename(str(path).rstrip(os.sep))
  )


@contextlib.contextmanager
def _remote_errors(path: str):
  """Turns a remote store's own exceptions (auth, network, missing bucket) into StorageError naming
  `path`."""
  try:
    yield
  except (FileNotFoundError, IsADirectoryError, NotADirectoryError, FileExistsError, StorageError):
    raise
  # (gcsfs/aiohttp/google-auth raise many kinds)
  except Exception as e:  # pylint: disable=broad-except
    if not is_remote(path) and isinstance(e, OSError):
      raise
    scheme = str(path).partition('://')[0]
    if isinstance(e, NotImplementedError) or scheme not in SCHEMES:
      raise StorageError(
        f'Cannot read {path}: vit_jax reads local paths and '
        f'{", ".join(f"{s}://" for s in SCHEMES)} URLs, not {scheme}://.'
      ) from e
    message = ' '.join(str(e).split())[:300] or type(e).__name__
    raise StorageError(
      f'Cannot use {path}: {type(e).__name__}: {message}. Check the network, the credentials '
      '(gcloud auth application-default login) and the bucket name.'
    ) from e


@contextlib.contextmanager
def _named(path: str):
  """Local OSErrors without a path (a write to an open file) get `path`, for the error boundary."""
  try:
    yield
  except OSError as e:
    if e.filename is None:
      e.filename = path
    raise


def _path(path: str) -> epath.Path:
  return epath.Path(str(path))


def exists(path: str) -> bool:
  with _remote_errors(path):
    return _path(path).exists()


def isdir(path: str) -> bool:
  with _remote_errors(path):
    return _path(path).is_dir()


def isfile(path: str) -> bool:
  with _remote_errors(path):
    return _path(path).is_file()


def listdir(path: str) -> list[str]:
  """The names in a folder, sorted; FileNotFoundError when it is absent."""
  with _remote_errors(path):
    if not is_remote(path):
      return sorted(os.listdir(path))
    if not _path(path).is_dir():
      raise FileNotFoundError(f'No such folder: {path}')
    return sorted(p.name for p in _path(path).iterdir())


def glob(pattern: str) -> list[str]:
  """Paths matching a glob pattern (`*`, `?`, `[...]` in any part), sorted."""
  pattern = str(pattern)
  with _remote_errors(pattern):
    if not is_remote(pattern):
      import glob as glob_lib  # noqa: PLC0415

      return sorted(glob_lib.glob(pattern))
    # epath globs relative to a folder: split at the first part with a wildcard.
    scheme, _, rest = pattern.partition('://')
    parts = rest.split('/')
    first = next((i for i, p in enumerate(parts) if any(c in p for c in '*?[')), len(parts))
    root = f'{scheme}://' + '/'.join(parts[:first])
    relative = '/'.join(parts[first:])
    if not relative:
      return [root] if exists(root) else []
    return sorted(str(p) for p in _path(root).glob(relative))


def walk(path: str) -> Iterator[tuple[str, list[str], list[str]]]:
  """(folder, subfolder names, file names) for `path` and every folder below it, top-down."""
  with _remote_errors(path):
    if not is_remote(path):
      yield from os.walk(path)
      return
    scheme = str(path).partition('://')[0]
    for root, dirs, files in _path(path).walk():
      root = str(root)  # fsspec gives 'bucket/folder': put the scheme back.
      yield (root if is_remote(root) else f'{scheme}://{root}'), sorted(dirs), sorted(files)


def image_files(folder: str) -> list[str]:
  """Every image file (IMAGE_EXTENSIONS) in `folder` and the folders below it, sorted: the one walk
  of an image folder that training, evaluation and prediction share."""
  return sorted(
    join(root, name) for root, _, names in walk(folder) for name in names if is_image_file(name)
  )


def makedirs(path: str) -> None:
  with _remote_errors(path):
    if is_remote(path):
      _path(path).mkdir(parents=True, exist_ok=True)
    else:
      os.makedirs(path, exist_ok=True)


def read_bytes(path: str) -> bytes:
  with _remote_errors(path):
    if not is_remote(path):
      with open(path, 'rb') as f:
        return f.read()
    return _path(path).read_bytes()


def read_head(path: str, size: int) -> bytes:
  """The file's first `size` bytes (all of a shorter file), without reading the rest."""
  with _remote_errors(path):
    if not is_remote(path):
      with open(path, 'rb') as f:
        return f.read(size)
    fs, inner = fsspec.core.url_to_fs(str(path))
    return fs.cat_file(inner, start=0, end=size)


def read_text(path: str) -> str:
  return read_bytes(path).decode('utf-8')


def read_text_or_none(path: str) -> str | None:
  """The file's text, or None when there is no such file."""
  try:
    return read_text(path)
  except FileNotFoundError:
    return None


def write_bytes(path: str, data: bytes) -> None:
  """Writes the whole file atomically (see module doc), creating its folder."""
  path = str(path)
  with _remote_errors(path):
    if is_remote(path):
      _path(path).write_bytes(data)
      return
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.tmp-{os.getpid()}')
    try:
      with _named(path), open(tmp, 'wb') as f:
        f.write(data)
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode('utf-8'))


def append_bytes(path: str, data: bytes) -> None:
  """Adds `data` to the end of the file (creating it and its folder); see the module doc for
  gs://."""
  path = str(path)
  if is_remote(path):
    try:
      old = read_bytes(path)
    except FileNotFoundError:
      old = b''
    write_bytes(path, old + data)
    return
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with _named(path), open(path, 'ab', buffering=0) as f:
    start = f.tell()
    try:
      view = memoryview(data)
      while view:
        view = view[f.write(view) :]
    except OSError:
      f.truncate(start)
      raise


def append_text(path: str, text: str) -> None:
  append_bytes(path, text.encode('utf-8'))


def open_log(path: str):
  """A local file opened for appending text, line-buffered, for a child process's output (which
  needs a real file); a StorageError for a gs:// path, which cannot take one."""
  if is_remote(path):
    raise StorageError(
      f'Cannot write a process log to {path}: a child process '
      'writes its output to a local file; use a local path.'
    )
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  return open(path, 'a', encoding='utf-8', buffering=1)  # pylint: disable=consider-using-with


def create_new(path: str, data: bytes) -> bool:
  """Creates the file with `data` if it does not exist (module doc); True when this call created
  it."""
  path = str(path)
  with _remote_errors(path):
    if is_remote(path):
      fs, inner = fsspec.core.url_to_fs(path)
      try:
        fs.pipe_file(inner, data, mode='create')  # GCS: a write with ifGenerationMatch=0.
        return True
      except FileExistsError:
        return False
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f'.{os.path.basename(path)}.new-{os.getpid()}-{id(data)}')
    try:
      with _named(path), open(tmp, 'wb') as f:
        f.write(data)
      os.link(tmp, path)  # Atomic, and the file appears whole: never an empty or partial one.
      return True
    except FileExistsError:
      return False
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)


def rename(src: str, dst: str, *, overwrite: bool = False) -> None:
  with _remote_errors(src):
    if not overwrite and exists(dst):
      raise FileExistsError(f'{dst} exists.')
    if is_remote(src):
      _path(src).replace(dst) if overwrite else _path(src).rename(dst)
    else:
      os.replace(src, dst)


def remove(path: str) -> None:
  """Removes a file (not a folder); FileNotFoundError when it is absent."""
  with _remote_errors(path):
    if is_remote(path):
      if not exists(path):
        raise FileNotFoundError(f'No such file: {path}')
      _path(path).unlink()
    else:
      os.remove(path)


def mtime(path: str) -> float:
  """Seconds since the epoch of the file's last modification."""
  with _remote_errors(path):
    if not is_remote(path):
      return os.stat(path).st_mtime
    return float(_path(path).stat().mtime)


def abspath(path: str) -> str:
  """An absolute local path, or the URL unchanged (Orbax wants absolute paths)."""
  return str(path) if is_remote(path) else os.path.abspath(path)
