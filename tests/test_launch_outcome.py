"""launch/outcome.py: the rule that sorts a job's end into finished, preempted or failed; the job's
one-line error; the latest finalised checkpoint as a worker reads it (local and gs://)."""

import subprocess
import sys

from launch_fakes import gcs  # noqa: F401  (a fixture)
import pytest

from launch import outcome, shell


def _never():
  raise AssertionError('not needed for this decision')


@pytest.mark.parametrize(
  'states,finished,checkpoint,kind,code',
  [
    (['running', 'running'], _never, _never, None, None),
    (['running', 'exited 0'], _never, _never, None, None),
    (['exited 1', 'running'], _never, _never, 'failed', 1),
    (['exited 0', 'exited 2'], _never, _never, 'failed', 2),
    (['exited 130'], _never, _never, 'failed', 130),
    (['exited 0', 'exited 0'], lambda: True, _never, 'finished', None),
    (['exited 0', 'exited 0'], lambda: False, lambda: 200, 'preempted', None),
    (['exited 0', 'exited 0'], lambda: False, lambda: None, 'failed', None),
    (['none', 'running'], _never, lambda: 200, 'preempted', None),
    (['none', 'exited 0'], _never, lambda: None, 'failed', None),
  ],
)
def test_each_end_of_a_job_is_finished_preempted_or_failed(
  states, finished, checkpoint, kind, code
):
  ending = outcome.classify(
    states, finished=finished, checkpoint=checkpoint, log=lambda: 'E0101 00:00:00.0 1 m.py:1] x'
  )
  assert (ending and ending.kind, ending and ending.code) == (kind, code)
  assert ending is None or not ending.recreate  # Only the node's state says that the node is lost.


@pytest.mark.parametrize(
  'log,line',
  [
    (
      '=== 2026 vit_jax.main a\nE0101 00:00:00.1 7 main.py:9] Old: x\n=== 2026 vit_jax.main '
      'b\nI1130 04:18:52.362956 14 main.py:91] JAX 0.10.2\nE1130 04:18:52.366534 14 main.py:99] '
      'WorkdirError: a file\nW1130 04:18:53.000000 14 x.py:1] a warning after it\n',
      'WorkdirError: a file',
    ),
    (
      "=== 2026 vit_jax.main b\nvit_jax.main: error: Unknown config field 'learning_rate'\n\n",
      "vit_jax.main: error: Unknown config field 'learning_rate'",
    ),
    (
      'Traceback (most recent call last):\n  File "x.py", line 1\nFileNotFoundError: no /a.npz\n',
      'FileNotFoundError: no /a.npz',
    ),
    ('=== 2026 vit_jax.main b\n', '(the log is empty)'),
  ],
)
def test_the_error_line_is_the_last_absl_error_else_the_last_line_of_the_last_attempt(log, line):
  assert outcome.error_line(log) == line


def test_exit_statuses_are_described_by_what_vit_jax_main_means_by_them():
  assert [outcome.describe_exit(c) for c in (1, 2, 130, 143, 139, 3)] == [
    'exit status 1, an error',
    'exit status 2, a bad command line',
    'exit status 130, aborted by a second Ctrl-C',
    'exit status 143, killed by SIGTERM before it could save',
    'exit status 139, killed by signal 11',
    'exit status 3',
  ]


@pytest.mark.parametrize('remote', [False, True])
def test_the_latest_checkpoint_is_the_largest_finalised_step(tmp_path, gcs, remote):  # noqa: F811
  root, workdir = (
    (gcs / 'b' / 'run', 'gs://b/run') if remote else (tmp_path / 'run', str(tmp_path / 'run'))
  )
  assert outcome.latest_checkpoint(workdir) is None
  for step in (5, 10, 20):
    (root / 'checkpoints' / str(step)).mkdir(parents=True)
    if step < 20:
      (root / 'checkpoints' / str(step) / 'commit_success.txt').write_text('')
  (root / 'checkpoints' / '30.orbax-checkpoint-tmp-1').mkdir()
  # Locally Orbax renames a finalised checkpoint to its step; on gs:// only commit_success.txt marks
  # one.
  assert outcome.latest_checkpoint(workdir) == (10 if remote else 20)
  done = subprocess.run(
    [sys.executable, '-m', 'launch.outcome', 'checkpoint', workdir],
    capture_output=True,
    text=True,
    check=True,
    cwd=shell.REPO,
  )
  assert done.stdout == f'vit_jax-checkpoint: {10 if remote else 20}\n'
  assert outcome.parse_checkpoint('banner\n' + done.stdout) == (True, 10 if remote else 20)
  assert outcome.parse_checkpoint('vit_jax-checkpoint: none\n') == (True, None)
  assert outcome.parse_checkpoint('ssh: connection refused\n') == (False, None)


def test_a_slurm_steps_status_comes_from_its_tasks_own(tmp_path):
  def step(*tasks, srun):
    folder = tmp_path / str(len(list(tmp_path.iterdir())))
    folder.mkdir()
    for i, code in enumerate(tasks):
      if code is not None:  # None: killed before it wrote its status.
        (folder / str(i)).write_text(f'{code}\n')
    return outcome.step_status(str(folder), len(tasks), srun)

  assert step(137, 75, 75, 75, srun=137) == 75  # Task 0 killed, the others lost it.
  assert step(75, None, srun=137) == 75
  assert step(76, 76, srun=76) == 76
  assert step(0, 0, srun=0) == 0
  assert step(1, 75, srun=1) == 1  # An error is not rerun, even beside a lost peer.
  assert step(137, 137, srun=137) == 137  # Nobody lost a peer: not a restart.
  assert step(None, None, srun=9) == 9
  assert outcome.main(['step', str(tmp_path / '0'), '4', '137']) == 0
  assert outcome.main(['step', 'x', 'four', '1']) == 2
