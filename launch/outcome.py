"""How a launched job ended: finished, preempted (it saved and can resume) or failed, and the one
line that says why.

vit_jax.main's exit statuses: 0 when the run is complete, and also when it stopped early to be
resumed (SIGTERM or a first Ctrl-C: it saves a checkpoint, then exits 0); 1 for an error (a user
error is one `E` log line naming the cause; a bug, a traceback); 2 for a bad command line (one line
per bad flag); 130 when a second Ctrl-C aborted it; 75 (a process of the job was lost: also when JAX
or gloo aborted the trainer because its coordinator or a peer died, vit_jax/runtime/aborts.py) and
76 (a process hung), both restartable (vit_jax/runtime/watchdog.py). A shell reports a process
killed by signal N as 128 + N.

The rule (`classify`), for the job on every worker of a node that is up:
  * the workers that exited non-zero all exited restartable (75, 76), or were killed by a signal
    beside one that did (the host that died): preempted, rerun at once from the checkpoint
    (`restartable`);
  * any other worker exited non-zero: failed;
  * every worker exited 0 and the run is complete: finished;
  * every worker exited 0 before the end, or the job vanished from a worker (the VM restarted):
    preempted when the run has a checkpoint to resume from (SIGTERM-with-resume), else failed (it
    ended before its first checkpoint: a `--help` among the arguments, say);
  * otherwise it is still running.
A lost node is a preemption too; the supervisor (launch/supervise.py) decides that from the node's
state.

On a SLURM node, `python -m launch.outcome step STATUS_DIR NUM_TASKS SRUN_STATUS` prints a step's
exit status from its tasks' own (`step_status`: srun itself says 137 when a task was killed, even
beside tasks that lost it and exited 75). On a worker, `python -m launch.outcome checkpoint WORKDIR`
prints the step of the run's latest finalised checkpoint (`vit_jax-checkpoint: STEP`, or `none`), by
the rule of vit_jax/runtime/workdir.py (`latest_step`).
"""

import dataclasses
import re
import sys

from vit_jax import errors, io
from vit_jax.runtime import workdir as workdir_lib

CHECKPOINT_MARK = 'vit_jax-checkpoint:'
# absl's E/F lines: the message after "] ".
_ABSL_ERROR = re.compile(r'^[EF]\d{4} [\d:.]+ +\d+ [^\]]*\] (.*)$')
# gcloud.run_script starts each attempt's output with "=== DATE vit_jax.main ARGS".
_ATTEMPT = '=== '
MEANINGS = {
  1: 'an error',
  2: 'a bad command line',
  130: 'aborted by a second Ctrl-C',
  137: 'killed (SIGKILL)',
  143: 'killed by SIGTERM before it could save',
  errors.EXIT_LOST_PEER: 'a process of the job was lost',
  errors.EXIT_HUNG: 'a process hung',
}


@dataclasses.dataclass(frozen=True)
class Ending:
  kind: str  # 'finished', 'preempted' or 'failed'
  reason: str
  recreate: bool = False  # preempted: the node itself is lost, so it is deleted and created again.
  code: int | None = None  # failed: the job's non-zero exit status, when it had one.


def exit_codes(states) -> list[int]:
  """The exit statuses in per-worker job states ('running', 'exited N', 'none')."""
  return [int(s.split()[1]) for s in states if s.startswith('exited')]


def describe_exit(code: int) -> str:
  meaning = MEANINGS.get(code) or (f'killed by signal {code - 128}' if code > 128 else None)
  return f'exit status {code}' + (f', {meaning}' if meaning else '')


def error_line(log: str) -> str:
  """The job's own one-line error from the end of its log: the last absl error line's message, else
  the last line (a traceback's exception, a bad flag), of the last attempt's output."""
  lines = log.splitlines()
  starts = [i for i, line in enumerate(lines) if line.startswith(_ATTEMPT)]
  lines = [line.strip() for line in lines[starts[-1] + 1 if starts else 0 :] if line.strip()]
  for line in reversed(lines):
    match = _ABSL_ERROR.match(line)
    if match:
      return match.group(1)
  return lines[-1] if lines else '(the log is empty)'


def restartable(codes) -> bool:
  """Whether exit statuses of a job's processes mean "run it again": some exited restartable (75,
  76) and every other non-zero one was killed by a signal (the process that died or was stopped and
  killed)."""
  bad = [c for c in codes if c]
  return any(c in errors.RESTARTABLE for c in bad) and all(
    c in errors.RESTARTABLE or (c > 128 and c != 130) for c in bad
  )


def classify(states, *, finished, checkpoint, log) -> Ending | None:
  """The module doc's rule; None while the job runs. `finished()` (whether the run is complete),
  `checkpoint()` (its latest checkpoint step or None) and `log()` (the end of its log) are called
  only when needed."""
  codes = exit_codes(states)
  if restartable(codes):
    code = next(c for c in codes if c in errors.RESTARTABLE)
    return Ending(
      'preempted', f'the job ended with {describe_exit(code)} (restartable): {error_line(log())}'
    )
  failed = next((c for c in codes if c), None)
  if failed is not None:
    return Ending(
      'failed', f'the job ended with {describe_exit(failed)}: {error_line(log())}', code=failed
    )
  gone = 'none' in states
  if not gone and len(codes) < len(states):
    return None
  if not gone and finished():
    return Ending('finished', 'the run is complete')
  how = (
    'the job is gone from the node (restarted?)'
    if gone
    else 'the job exited 0 before its last step'
  )
  step = checkpoint()
  if step is None:
    return Ending('failed', f'{how}, before its first checkpoint: {error_line(log())}')
  return Ending('preempted', f'{how}; it resumes from its checkpoint at step {step}')


def latest_checkpoint(workdir: str) -> int | None:
  """The step of the run's latest finalised checkpoint (vit_jax.runtime.workdir's rule), None when
  it has none."""
  return workdir_lib.latest_step(workdir)


def parse_checkpoint(output: str) -> tuple[bool, int | None]:
  """(whether `python -m launch.outcome checkpoint` answered, the step or None) from its output."""
  for line in output.splitlines():
    if line.startswith(CHECKPOINT_MARK):
      value = line[len(CHECKPOINT_MARK) :].strip()
      return True, int(value) if value.isdigit() else None
  return False, None


def step_status(status_dir: str, num_tasks: int, srun_status: int) -> int:
  """The exit status of a SLURM step from its tasks' own (STATUS_DIR/<task>, written by each task's
  wrapper in launch/slurm.py's script): the first restartable one when `restartable` says so (a
  task missing its file was killed before it could write it: a signal), else srun's."""
  codes = []
  for task in range(num_tasks):
    try:
      codes.append(int(io.read_text(f'{status_dir}/{task}').strip()))
    except (OSError, ValueError):
      codes.append(128 + 9)
  if restartable(codes):
    return next(c for c in codes if c in errors.RESTARTABLE)
  return srun_status


USAGE = (
  'usage: python -m launch.outcome checkpoint WORKDIR\n'
  '       python -m launch.outcome step STATUS_DIR NUM_TASKS SRUN_STATUS'
)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if len(argv) == 2 and argv[0] == 'checkpoint':
    step = latest_checkpoint(argv[1])
    print(f'{CHECKPOINT_MARK} {"none" if step is None else step}')
    return 0
  if len(argv) == 4 and argv[0] == 'step' and argv[2].isdigit() and argv[3].isdigit():
    print(step_status(argv[1], int(argv[2]), int(argv[3])))
    return 0
  print(USAGE, file=sys.stderr)
  return 2


if __name__ == '__main__':
  sys.exit(main())
