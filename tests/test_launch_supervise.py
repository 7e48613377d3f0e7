"""The supervisor against a fake `gcloud` that fails: no node outlives a launch that fails after
creating it (set-up, ssh on one worker, an unexpected error, a create that failed but made the
node), a delete that fails prints its command, and each end of the job is a failure or a preemption
by the rule of launch/outcome.py."""

# (fixtures)
from launch_fakes import (
  CHECKPOINT,
  FINISHED,
  RUN_ARGS,
  STATUS,
  VM,
  WHERE,
  clone,
  fake,  # noqa: F401
  shipped_archive,
  tpu_launch,
  without_polls,
  workers,
)
import pytest

from launch import gcloud
from launch import node as node_lib

SETUP = 'uv venv'  # A fragment of the set-up script.
RUN = gcloud.run_script(RUN_ARGS)
LOG = gcloud.logs_script(follow=False, lines=30, prefix=False)
UNRESOLVABLE = {
  'rc': 1,
  'stderr': 'vit_jax set-up: ...\n  x No solution found when '
  'resolving dependencies: jax[tpu]==9.9 is unavailable\n',
}
SSH_255 = {
  'rc': 255,
  'stderr': 'ERROR: (gcloud.compute.tpus.tpu-vm.ssh) [/usr/bin/ssh] '
  'exited with return code [255] on worker 2.\n',
}


def _kinds(queued):
  """(the queued flag, the describe answer of an up node, the exact delete command line)."""
  if queued:
    return (
      ['--queued'],
      'ACTIVE\n',
      (
        'gcloud compute tpus queued-resources delete vit-s16 '
        '--zone=us-central2-b --project=my-proj --force --quiet'
      ),
    )
  return (
    [],
    'READY\n',
    'gcloud compute tpus tpu-vm delete vit-s16 --zone=us-central2-b --project=my-proj --quiet',
  )


def _count(calls, fragment):
  return sum(fragment in c[-1] for c in calls)


@pytest.mark.parametrize('queued', [False, True])
def test_a_set_up_that_keeps_failing_is_retried_within_the_failure_budget_then_the_node_deleted(
  fake, clone, capfd, tmp_path, queued
):
  flags, up, delete = _kinds(queued)
  fake.script([(['describe'], [up]), ([SETUP], [UNRESOLVABLE])])
  assert tpu_launch(clone, '--max_failures=2', *flags) == 1
  calls = fake.calls()
  # The first try and 2 retries; never started.
  assert _count(calls, SETUP) == 3 and _count(calls, RUN) == 0
  assert ' '.join(['gcloud', *calls[-1]]) == delete
  err = capfd.readouterr().err  # The set-up's own output goes straight to the terminal.
  assert (
    'past --max_failures=2' in err
    and err.count('No solution found when resolving dependencies') == 3
  )
  assert 'exited 1: (its output is above)' in err
  shipped_archive(calls, tmp_path)  # Removed.


def test_ssh_failing_on_one_worker_when_starting_is_a_failure_retried_after_a_stop(
  fake, clone, capsys
):
  fake.script(
    [
      (['describe'], ['READY\n']),
      ([RUN], [SSH_255, '']),
      ([STATUS], [workers('exited 0', 'exited 0')]),
      ([FINISHED], ['']),
    ]
  )
  assert tpu_launch(clone) == 0
  calls = without_polls(fake.calls())
  runs = [i for i, c in enumerate(calls) if RUN in c[-1]]
  # The job is stopped on every worker first.
  assert len(runs) == 2 and 'libtpu_lockfile' in calls[runs[1] - 1][-1]
  assert calls[-1][3] == 'delete'
  assert (
    'Failure 1/2: `gcloud compute tpus tpu-vm ssh vit-s16` exited 255' in capsys.readouterr().err
  )


@pytest.mark.parametrize('queued', [False, True])
@pytest.mark.parametrize('finishes', [False, True])
def test_a_delete_that_fails_prints_the_exact_delete_command(fake, clone, capsys, queued, finishes):
  flags, up, delete = _kinds(queued)
  fake.script(
    [
      (['describe'], [up]),
      ([SETUP], [UNRESOLVABLE if not finishes else '']),
      ([STATUS], [workers('exited 0')]),
      ([FINISHED], ['']),
      (
        ['delete vit-s16'],
        [{'rc': 1, 'stderr': 'ERROR: PERMISSION_DENIED: tpu.nodes.delete denied\n'}],
      ),
    ]
  )
  assert tpu_launch(clone, '--max_failures=0', *flags) == 1
  calls = fake.calls()
  assert calls[-1][3] == 'delete' and _count(calls, RUN) == finishes
  err = capsys.readouterr().err
  assert (
    ('Finished:' in err) == finishes and 'Could not delete' in err and 'PERMISSION_DENIED' in err
  )
  assert f'\n  {delete}\n' in err


def test_an_unexpected_error_deletes_the_node_then_raises(fake, clone, monkeypatch):
  fake.script([(['describe'], ['READY\n'])])

  def bug(self):
    raise RuntimeError('a bug')

  monkeypatch.setattr(node_lib.Tpu, 'job_states', bug)
  with pytest.raises(RuntimeError, match='a bug'):
    tpu_launch(clone)
  assert fake.calls()[-1] == [*VM, 'delete', 'vit-s16', *WHERE, '--quiet']


@pytest.mark.parametrize('made', [True, False])
def test_a_create_that_failed_but_made_the_node_deletes_it(fake, clone, capsys, made):
  fake.script(
    [
      (
        ['create'],
        [{'rc': 1, 'stderr': 'ERROR: (gcloud.compute.tpus.tpu-vm.create) Operation timed out\n'}],
      ),
      (
        ['describe'],
        ['CREATING\n' if made else {'rc': 1, 'stderr': 'ERROR: NOT_FOUND: vit-s16\n'}],
      ),
    ]
  )
  assert tpu_launch(clone) == 1
  assert [c[3] for c in fake.calls()] == ['create', 'describe'] + (['delete'] if made else [])
  assert 'Operation timed out' in capsys.readouterr().err


@pytest.mark.parametrize(
  'code,line',
  [
    (
      1,
      'E1130 04:18:52.366534 140086438026112 main.py:99] '
      'WorkdirError: The workdir /tmp/a is a file',
    ),
    (
      2,
      "vit_jax.main: error: Unknown config field 'learning_rate': did you mean schedule.base_lr?",
    ),
    (130, 'W1130 04:18:52.366534 140086438026112 main.py:104] Aborted by a second Ctrl-C'),
  ],
)
def test_a_job_that_exits_with_a_user_error_is_a_failure_showing_its_one_line_error(
  fake, clone, capsys, code, line
):
  log = (
    '=== 2026-11-30T04:00:00Z vit_jax.main --old-attempt\nE1130 03:00:00.000000 1 main.py:99] '
    f'OldError: before\n=== 2026-11-30T04:18:50Z vit_jax.main {" ".join(RUN_ARGS)}\nI1130 '
    '04:18:52.362956 140086438026112 main.py:91] JAX 0.10.2: process 0 of 4\n' + line + '\n'
  )
  fake.script(
    [
      (['describe'], ['READY\n']),
      ([STATUS], [workers(f'exited {code}', 'exited 0')]),
      ([LOG], [log]),
    ]
  )
  assert tpu_launch(clone, '--max_failures=1') == 1
  calls = without_polls(fake.calls())
  assert _count(calls, RUN) == 2 and sum(c[3] == 'create' for c in calls) == 1
  assert f'launch.record exit gs://bucket/runs/s16 {code}' in calls[-2][-1]
  err = capsys.readouterr().err
  shown = line.split('] ', 1)[-1] if code == 1 else line
  assert err.count(shown) == 2 and 'JAX 0.10.2' not in err and 'OldError' not in err
  assert f'exit status {code}' in err and 'past --max_failures=1' in err


def test_a_job_that_exits_0_before_its_first_checkpoint_is_a_failure(fake, clone, capsys):
  fake.script(
    [
      (['describe'], ['READY\n']),
      ([STATUS], [workers('exited 0')]),
      ([FINISHED], [{'rc': 3}]),
      ([CHECKPOINT], ['vit_jax-checkpoint: none\n']),
      ([LOG], ['Flags from main.py: --workdir ...\n']),
    ]
  )
  assert tpu_launch(clone, '--max_failures=1') == 1
  calls = without_polls(fake.calls())
  assert _count(calls, RUN) == 2 and sum(c[3] == 'create' for c in calls) == 1
  err = capsys.readouterr().err
  assert (
    'before its first checkpoint' in err
    and 'past --max_failures=1' in err
    and 'Preemption' not in err
  )


@pytest.mark.parametrize('strange,creates', [(2, 1), (3, 2)])
def test_a_node_state_the_launcher_does_not_know_is_polled_again_before_it_counts_as_lost(
  fake, clone, capsys, strange, creates
):
  fake.script(
    [
      (['describe'], ['READY\n'] + ['MAINTENANCE\n'] * strange + ['READY\n']),
      ([STATUS], [workers('running'), workers('exited 0')]),
      ([FINISHED], ['']),
    ]
  )
  assert tpu_launch(clone) == 0
  calls = without_polls(fake.calls())
  assert (
    sum(c[3] == 'create' for c in calls) == creates
    and sum(c[3] == 'delete' for c in calls) == creates
  )
  assert (
    'in state MAINTENANCE, which the launcher does not know: polling again (1/3)'
    in capsys.readouterr().err
  )


def test_a_job_killed_by_sigterm_on_a_node_that_is_then_lost_is_a_preemption(fake, clone, capsys):
  fake.script(
    [
      (['describe'], ['READY\n', 'PREEMPTED\n', 'READY\n']),
      ([STATUS], [workers('exited 143', 'exited 143'), workers('exited 0', 'exited 0')]),
      ([FINISHED], ['']),
    ]
  )
  assert tpu_launch(clone, '--max_failures=0') == 0
  calls = without_polls(fake.calls())
  assert sum(c[3] == 'create' for c in calls) == 2 and _count(calls, RUN) == 2
  err = capsys.readouterr().err
  assert 'Preemption 1/20: TPU VM state PREEMPTED' in err and 'Failure' not in err


def test_a_job_whose_process_0_was_killed_is_rerun_on_the_node_and_finishes(fake, clone, capsys):
  # kill -9 of worker 0's vit_jax.main (the OOM killer, say): the other workers' processes lost
  # their coordinator, and each said so in one line and exited 75 (vit_jax/runtime/aborts.py), so
  # the job is rerun at once on the same node and resumes from its checkpoint.
  lost = (
    'vit_jax.main: error: process 3 of 4 lost the coordinator (process 0): its JAX distributed '
    'service stopped answering (died or unreachable); JAX aborted it: exiting with status 75 '
    '(restartable): rerun the same command on all processes to resume from the last checkpoint.'
  )
  fake.script(
    [
      (['describe'], ['READY\n']),
      (
        [STATUS],
        [
          workers('running', 'running', 'running', 'running'),
          workers('exited 137', 'exited 75', 'exited 75', 'exited 75'),
          workers('exited 0', 'exited 0', 'exited 0', 'exited 0'),
        ],
      ),
      (
        [LOG],
        [f'=== 2026-12-07T04:00:00Z vit_jax.main {" ".join(RUN_ARGS)}\nstep 15/40\n{lost}\n'],
      ),
      ([FINISHED], ['']),
    ]
  )
  assert tpu_launch(clone, '--max_failures=0') == 0
  calls = without_polls(fake.calls())
  assert sum(c[3] == 'create' for c in calls) == 1 and _count(calls, RUN) == 2
  err = capsys.readouterr().err
  assert 'exit status 75, a process of the job was lost (restartable): ' + lost in err, err
  assert 'Failure' not in err
