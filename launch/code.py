"""The code a TPU launch ships to its workers: a `git archive` of one commit of the clone (with
`pip:SPEC`, only its configs/ and launch/; the package comes from SPEC), packed once per launch into
a private temporary folder.

Contracts:
  * Private: each `packed` gets a folder of its own (tempfile.mkdtemp, mode 0700), so parallel
    launches of one commit (a sweep's vm_per_run launchers) never share, overwrite or delete each
    other's archive.
  * Removed: the folder goes when the `with` block ends, however it ends (finished, error, Ctrl-C).
  * Pinned: the archive is made before any node exists and reused for every node of the launch, so a
    node created again after a preemption gets the same commit, and a clone that is not a git
    repository, or a bad --code, fails before anything is paid for.
"""

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
from typing import Iterator

from launch import shell

FOLDER_PREFIX = 'vit_jax-launch-'


def archive_name(commit: str) -> str:
  """The archive's file name, locally and in each worker's home (the setup script removes it after
  unpacking)."""
  return f'vit_jax-{commit[:12]}.tar.gz'


@dataclasses.dataclass(frozen=True)
class Code:
  commit: str
  archive: str  # The local file; gone once `packed` has returned.
  pip_spec: str | None = None

  @property
  def name(self) -> str:
    return os.path.basename(self.archive)

  @property
  def marker(self) -> str:
    """What a worker's ~/vit_jax/.installed holds once this code is installed
    (gcloud.setup_script)."""
    return self.commit + (f' {self.pip_spec}' if self.pip_spec else '')


def pip_spec_of(code: str) -> str | None:
  """The SPEC of --code=pip:SPEC, None for 'git'; a ValueError naming the valid forms for anything
  else."""
  if code == 'git':
    return None
  if code.startswith('pip:') and code[len('pip:') :].strip():
    return code[len('pip:') :]
  raise ValueError(
    f"Bad --code {code!r}: 'git' (ship HEAD) or 'pip:SPEC' (e.g. pip:'vit_jax[tpu] @ git+URL')."
  )


@contextlib.contextmanager
def packed(code: str, code_dir: str, runner: shell.Runner) -> Iterator[Code]:
  """Packs HEAD of `code_dir` (see the module doc) and yields it; removes the archive and its folder
  afterwards.

  In a dry run nothing is made: the `git archive` command is printed with a placeholder folder.
  """
  pip_spec = pip_spec_of(code)
  commit = shell.git_commit(code_dir)
  if pip_spec is None and shell.git_dirty(code_dir):
    print(
      f'Warning: {code_dir} has uncommitted changes; they are '
      f'not shipped (a git archive of HEAD {commit[:12]} is).',
      file=sys.stderr,
    )
  folder = (
    os.path.join(tempfile.gettempdir(), FOLDER_PREFIX + 'XXXXXXXX')
    if runner.dry_run
    else tempfile.mkdtemp(prefix=FOLDER_PREFIX)
  )
  try:
    result = Code(commit, os.path.join(folder, archive_name(commit)), pip_spec)
    runner.run(
      [
        'git',
        '-C',
        code_dir,
        'archive',
        '--format=tar.gz',
        '-o',
        result.archive,
        commit,
        *(['configs', 'launch'] if pip_spec else []),
      ]
    )
    yield result
  finally:
    if not runner.dry_run:
      shutil.rmtree(folder, ignore_errors=True)
