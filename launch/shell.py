"""Running commands (or, in a dry run, printing them one per line), the clone's commit, the
launchers' arguments.

Commands are argv lists, never strings for a local shell: a user's value is one argv element and
stays inert. Where a remote shell reads a command (ssh), the caller builds it with
`shlex.join`/`shlex.quote`.
"""

import dataclasses
import os
import shlex
import subprocess
import sys
from typing import TextIO

from vit_jax import io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # The clone that holds launch/.


class CommandError(RuntimeError):
  """A command exited non-zero; the message names it and ends with its stderr, `brief` says it in
  one line."""

  def __init__(self, argv, returncode, stderr):
    tail = '\n'.join((stderr or '').strip().splitlines()[-15:])
    super().__init__(
      f'Command failed (exit {returncode}): {shlex.join(argv)}' + (f'\n{tail}' if tail else '')
    )
    self.argv = argv
    self.returncode = returncode
    self.stderr = stderr or ''
    self.shown = stderr is None  # Its output went to the terminal (not captured).

  @property
  def brief(self) -> str:
    """'`gcloud compute tpus tpu-vm ssh NAME` exited 255: <its last line of stderr>'."""
    words = []
    for word in self.argv:
      if word.startswith('-') or len(words) == 6:
        break
      words.append(word)
    last = (
      self.stderr.strip().splitlines()
      or ['(its output is above)' if self.shown else '(no error output)']
    )[-1]
    return f'`{shlex.join(words)}` exited {self.returncode}: {last.strip()}'


def shell_line(argv, stdin: str | None = None) -> str:
  """The command as one line a POSIX shell runs unchanged (stdin, if any, piped in with printf, line
  by line)."""
  line = shlex.join(argv)
  if stdin is None:
    return line
  *lines, last = stdin.split('\n')
  feed = [f"printf '%s\\n' {' '.join(shlex.quote(x) for x in lines)}"] if lines else []
  feed += [f'printf %s {shlex.quote(last)}'] if last or not lines else []
  return f'{feed[0]} | {line}' if len(feed) == 1 else f'{{ {"; ".join(feed)}; }} | {line}'


@dataclasses.dataclass
class Runner:
  """Runs commands; with `dry_run`, prints each one instead (to `out`) and pretends it succeeded
  with no output.

  `run` is for what a subcommand does (printed in a dry run); `query` is for read-only look-ups that
  decide what to do, and always runs. With `echo`, each command that `run` executes is shown on
  stderr as `+ command`.
  """

  dry_run: bool = False
  echo: bool = True
  out: TextIO = dataclasses.field(default_factory=lambda: sys.stdout)

  def run(
    self,
    argv,
    *,
    stdin: str | None = None,
    check: bool = True,
    capture: bool = True,
    quiet: bool = False,
  ) -> subprocess.CompletedProcess:
    argv = [str(a) for a in argv]
    if self.dry_run:
      print(shell_line(argv, stdin), file=self.out, flush=True)
      return subprocess.CompletedProcess(argv, 0, '', '')
    if self.echo and not quiet:
      print('+ ' + shlex.join(argv), file=sys.stderr, flush=True)
    return self._execute(argv, stdin, check, capture)

  def query(self, argv, *, check: bool = False) -> subprocess.CompletedProcess:
    return self._execute([str(a) for a in argv], None, check, True)

  def note(self, text: str) -> None:
    """A comment: `# text` among the commands of a dry run, else a line on stderr."""
    print(f'# {text}', file=self.out if self.dry_run else sys.stderr, flush=True)

  @staticmethod
  def _execute(argv, stdin, check, capture):
    try:
      done = subprocess.run(
        argv,
        input=stdin,
        text=True,
        check=False,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
      )
    except FileNotFoundError as e:
      raise CommandError(argv, 127, f'{argv[0]}: not found on PATH ({e}).') from None
    if check and done.returncode != 0:
      raise CommandError(argv, done.returncode, done.stderr)
    return done


def git_commit(repo: str = REPO) -> str:
  """HEAD's commit of the clone `repo`; a clear error when it is not a git clone."""
  done = Runner().query(['git', '-C', repo, 'rev-parse', 'HEAD'])
  if done.returncode != 0:
    raise CommandError(
      done.args, done.returncode, f'{repo} is not a git clone with a commit: {done.stderr.strip()}'
    )
  return done.stdout.strip()


def git_dirty(repo: str = REPO) -> bool:
  """Whether tracked files differ from HEAD (those changes are not in a `git archive` of HEAD)."""
  return bool(
    Runner()
    .query(['git', '-C', repo, 'status', '--porcelain', '--untracked-files=no'])
    .stdout.strip()
  )


def main_command(args, *, python: str = 'python') -> list[str]:
  """The training command every launcher runs: `python -m vit_jax.main ARGS`."""
  return [python, '-m', 'vit_jax.main', *args]


def workdir_of(main_args) -> str:
  """The --workdir of vit_jax.main arguments (required: a launched run is its workdir)."""
  for i, arg in enumerate(main_args):
    if arg.startswith('--workdir='):
      return arg.split('=', 1)[1]
    if arg == '--workdir' and i + 1 < len(main_args):
      return main_args[i + 1]
  raise ValueError(
    'Give the run a --workdir among the vit_jax.main arguments after '
    '"--" (gs://BUCKET/PATH on Cloud TPU, a shared path on SLURM): a '
    'run resumes from its workdir and records its launch there.'
  )


# Where a launched job's compilation cache goes (config.compilation_cache_dir's default reads this
# variable): beside its workdir, shared by the job's hosts, its restarts and the runs beside it (a
# sweep's). A launcher sets it unless the user's environment for the job gives it ('' turns it off).
CACHE_ENV = 'JAX_COMPILATION_CACHE_DIR'
CACHE_NAME = 'jax_cache'


def shared_cache_dir(workdir: str) -> str:
  """<the workdir's parent>/jax_cache: a launched job's compilation cache (CACHE_ENV)."""
  return io.join(io.parent(workdir), CACHE_NAME)


def split_args(argv) -> tuple[list[str], list[str]]:
  """(the launcher's own arguments, vit_jax.main's): the two sides of the first '--'."""
  argv = list(argv)
  if '--' not in argv:
    return argv, []
  i = argv.index('--')
  return argv[:i], argv[i + 1 :]


def parse_env(items) -> dict[str, str]:
  """['KEY=VALUE', ...] (from --env flags) -> {KEY: VALUE}; a clear error for anything else."""
  out = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep or not key.isidentifier():
      raise ValueError(f'Bad --env {item!r}: expected KEY=VALUE.')
    out[key] = value
  return out
