"""launch.tpu against a fake `gcloud` that records its calls and answers from a script: the exact
commands for a pod and a queued resource, zone fallback, recreation after PREEMPTED/SUSPENDED, the
failure budget, Ctrl-C."""

import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

from launch_fakes import (
  ARGS,
  CHECKPOINT,
  FINISHED,
  RUN_ARGS,
  STATUS,
  VM,
  WHERE,
  clone,
  fake,  # noqa: F401
  # (fixtures)
  gcs,
  shipped_archive,
  tpu_flags,
  tpu_launch,
  without_polls,
  workers,
)
import pytest

from launch import gcloud, shell, supervise, sweep, tpu
from launch import node as node_lib

QR = ['compute', 'tpus', 'queued-resources']


def _setup_calls(clone, local, where=WHERE):
  commit = clone[1]
  archive = f'vit_jax-{commit[:12]}.tar.gz'
  assert os.path.basename(local) == archive
  return [
    [*VM, 'scp', local, f'vit-s16:{archive}', *where, '--worker=all'],
    [
      *VM,
      'ssh',
      'vit-s16',
      *where,
      '--worker=all',
      '--command=' + gcloud.setup_script(archive, commit),
    ],
  ]


def _run_calls(where=WHERE):
  return [
    [*VM, 'ssh', 'vit-s16', *where, '--worker=all', '--command=' + gcloud.run_script(RUN_ARGS)]
  ]


def _launch_json(call) -> dict:
  """The launch.json that a `launch.record write` call writes."""
  words = shlex.split(call[-1][len('--command=') :])
  assert words[-3:-1] == ['write', 'gs://bucket/runs/s16'], words
  return json.loads(words[-1])


def _zone(call) -> str:
  return next(a for a in call if a.startswith('--zone='))


def test_launch_on_a_pod_runs_the_exact_commands_and_deletes_at_the_end(fake, clone, tmp_path):
  fake.script(
    [
      (['describe'], ['READY\n']),
      (
        [STATUS],
        [
          workers('running', 'running', 'running', 'running'),
          workers('exited 0', 'exited 0', 'exited 0', 'exited 0'),
        ],
      ),
      ([FINISHED], ['']),
    ]
  )
  assert tpu_launch(clone) == 0
  calls = fake.calls()
  assert calls[0] == [
    *VM,
    'create',
    'vit-s16',
    '--accelerator-type=v4-32',
    '--version=tpu-ubuntu2204-base',
    *WHERE,
    '--spot',
  ]
  assert calls[1:4] == _setup_calls(clone, shipped_archive(calls, tmp_path)) + _run_calls()
  write = calls[4]
  assert write[:8] == [*VM, 'ssh', 'vit-s16', *WHERE, '--worker=0']
  info = _launch_json(write)
  assert info['command'] == ['python', '-m', 'vit_jax.main', *RUN_ARGS]
  assert (info['commit'], info['accelerator'], info['zone'], info['attempt']) == (
    clone[1],
    'v4-32',
    'us-central2-b',
    1,
  )
  polls = calls[5:-2]
  assert [c[3] for c in polls] == ['describe', 'ssh', 'describe', 'ssh']
  assert polls[0] == [*VM, 'describe', 'vit-s16', *WHERE, '--format=value(state)']
  assert polls[1] == [*VM, 'ssh', 'vit-s16', *WHERE, '--worker=all', '--command=' + STATUS]
  assert calls[-2] == [*VM, 'ssh', 'vit-s16', *WHERE, '--worker=0', '--command=' + FINISHED]
  assert calls[-1] == [*VM, 'delete', 'vit-s16', *WHERE, '--quiet']


def test_launch_through_a_queued_resource_waits_for_active_and_deletes_it(fake, clone, tmp_path):
  fake.script(
    [
      ([*QR, 'describe'], ['WAITING_FOR_RESOURCES\n', 'PROVISIONING\n', 'ACTIVE\n']),
      ([STATUS], [workers('exited 0', 'exited 0')]),
      ([FINISHED], ['']),
    ]
  )
  assert tpu_launch(clone, '--queued') == 0
  calls = fake.calls()
  assert calls[0] == [
    *QR,
    'create',
    'vit-s16',
    '--node-id=vit-s16',
    '--accelerator-type=v4-32',
    '--runtime-version=tpu-ubuntu2204-base',
    *WHERE,
    '--spot',
  ]
  assert [c[3] for c in calls[1:4]] == ['describe'] * 3
  assert calls[1] == [*QR, 'describe', 'vit-s16', *WHERE, '--format=value(state.state)']
  assert calls[4:7] == _setup_calls(clone, shipped_archive(calls, tmp_path)) + _run_calls()
  assert calls[-1] == [*QR, 'delete', 'vit-s16', *WHERE, '--force', '--quiet']


def test_create_tries_the_next_zone_after_a_capacity_error(fake, clone, tmp_path):
  where_b = ['--zone=europe-west4-a', '--project=my-proj']
  fake.script(
    [
      (
        ['create', '--zone=us-central2-b'],
        [
          {
            'rc': 1,
            'stderr': 'ERROR: (gcloud.compute.tpus.tpu-vm.create) There is no more capacity in the '
            'zone "us-central2-b"; you can try in another zone\n',
          }
        ],
      ),
      (['describe'], ['READY\n']),
      ([STATUS], [workers('exited 0')]),
      ([FINISHED], ['']),
    ]
  )
  assert tpu_launch(clone, zones='us-central2-b,europe-west4-a') == 0
  calls = fake.calls()
  assert [_zone(c) for c in calls[:2]] == ['--zone=us-central2-b', '--zone=europe-west4-a']
  assert calls[2:5] == _setup_calls(clone, shipped_archive(calls, tmp_path), where_b) + _run_calls(
    where_b
  )
  assert _launch_json(calls[5])['zone'] == 'europe-west4-a'
  assert calls[-1] == [*VM, 'delete', 'vit-s16', *where_b, '--quiet']


def test_create_stops_at_an_error_that_is_not_about_capacity(fake, clone, capsys):
  fake.script(
    [
      (
        ['create'],
        [{'rc': 1, 'stderr': 'ERROR: INVALID_ARGUMENT: accelerator type v9-8 is unknown\n'}],
      )
    ]
  )
  assert tpu.main(['create', '--name=vit-s16', '--zones=a-b1-c,d-e1-f', '--accelerator=v9-8']) == 1
  assert len(fake.calls()) == 1  # The second zone is not tried.
  assert 'accelerator type v9-8 is unknown' in capsys.readouterr().err


def test_create_gives_up_when_no_zone_has_capacity(fake, capsys):
  fake.script([(['create'], [{'rc': 1, 'stderr': 'RESOURCE_EXHAUSTED: insufficient capacity\n'}])])
  assert tpu.main(['create', '--name=vit-s16', '--zones=a-b1-c,d-e1-f']) == 1
  assert [_zone(c) for c in fake.calls()] == ['--zone=a-b1-c', '--zone=d-e1-f']
  assert 'No zone could create TPU VM vit-s16' in capsys.readouterr().err


@pytest.mark.parametrize('queued,lost', [(False, 'PREEMPTED'), (True, 'SUSPENDED')])
def test_launch_recreates_the_node_and_reruns_the_same_command_after_a_preemption(
  fake, clone, tmp_path, queued, lost
):
  up = 'ACTIVE' if queued else 'READY'
  kind = QR if queued else VM
  fake.script(
    [
      ([*kind, 'describe'], [f'{up}\n', f'{lost}\n', f'{up}\n']),
      ([STATUS], [workers('running', 'running'), workers('exited 0', 'exited 0')]),
      ([FINISHED], ['']),
    ]
  )
  flags = ['--queued'] if queued else []
  assert tpu_launch(clone, *flags, zones='us-central2-b,europe-west4-a') == 0
  calls = without_polls(fake.calls())
  create = [c for c in calls if c[3] == 'create']
  # Walks again.
  assert len(create) == 2 and create[0] == create[1] and _zone(create[1]) == '--zone=us-central2-b'
  deletes = [i for i, c in enumerate(calls) if c[3] == 'delete']
  creates = [i for i, c in enumerate(calls) if c[3] == 'create']
  assert len(deletes) == 2 and creates[1] == deletes[0] + 1  # Deleted, then created again.
  runs = [c for c in calls if c[-1].startswith('--command=' + gcloud.run_script(RUN_ARGS))]
  assert len(runs) == 2 and runs[0] == runs[1]  # The identical command, rerun.
  writes = [_launch_json(c) for c in calls if 'launch.record write' in c[-1]]
  assert [w['attempt'] for w in writes] == [1, 2]
  assert sum('uv venv' in c[-1] for c in calls) == 2  # Set up again on the new node.


def test_launch_reruns_on_the_node_when_the_job_stopped_before_its_last_step(fake, clone):
  fake.script(
    [
      (['describe'], ['READY\n']),
      ([STATUS], [workers('exited 0'), workers('exited 0')]),
      ([FINISHED], [{'rc': 3}, {'rc': 0}]),
      ([CHECKPOINT], ['vit_jax-checkpoint: 4\n']),
    ]
  )
  assert tpu_launch(clone) == 0
  calls = without_polls(fake.calls())
  assert sum(c[3] == 'create' for c in calls) == 1
  assert sum(c[-1].startswith('--command=' + gcloud.run_script(RUN_ARGS)) for c in calls) == 2


def test_launch_gives_up_after_the_failure_budget_and_deletes(fake, clone, capsys):
  fake.script(
    [
      (['describe'], ['READY\n']),
      ([STATUS], [workers('exited 1', 'exited 0')]),
      (
        [gcloud.logs_script(follow=False, lines=30, prefix=False)],
        ['Traceback: ValueError: bad\n'],
      ),
    ]
  )
  assert tpu_launch(clone, '--max_failures=2') == 1
  calls = without_polls(fake.calls())
  # First + 2 reruns.
  assert sum(c[-1].startswith('--command=' + gcloud.run_script(RUN_ARGS)) for c in calls) == 3
  # Stopped (and the TPU freed) before each rerun.
  assert sum('libtpu_lockfile' in c[-1] for c in calls) == 2
  # The exit status, for `results`.
  assert 'launch.record exit gs://bucket/runs/s16 1' in calls[-2][-1]
  assert calls[-1] == [*VM, 'delete', 'vit-s16', *WHERE, '--quiet']
  err = capsys.readouterr().err
  assert 'past --max_failures=2' in err and 'Traceback: ValueError: bad' in err


def test_launch_gives_up_after_the_preemption_budget(fake, clone, capsys):
  fake.script([(['describe'], ['PREEMPTED\n'])])
  assert tpu_launch(clone, '--max_preemptions=1') == 1
  calls = fake.calls()
  assert sum(c[3] == 'create' for c in calls) == 2 and calls[-1][3] == 'delete'
  assert 'past --max_preemptions=1' in capsys.readouterr().err


def _supervisor(fake, clone, *, answer, interrupt_at):
  """A Supervisor whose `interrupt_at`-th poll raises KeyboardInterrupt and whose question gets
  `answer`."""
  fake.script([(['describe'], ['ACTIVE\n']), ([STATUS], [workers('running')])])
  polls = []

  def sleep(_):
    polls.append(1)
    if len(polls) == interrupt_at:
      raise KeyboardInterrupt

  def ask(question):
    asked.append(question)
    if isinstance(answer, type) and issubclass(answer, BaseException):
      raise answer
    return answer

  asked = []
  node = gcloud.Node(
    'vit-s16', 'v4-32', ('us-central2-b',), project='my-proj', provisioning='spot', queued=True
  )
  settings = supervise.Settings(poll_s=0, code_dir=clone[0])
  return supervise.Supervisor(
    node_lib.Tpu(node, shell.Runner(echo=False), sleep=sleep), [ARGS], settings, ask=ask
  ), asked


@pytest.mark.parametrize('answer', ['y', '', EOFError])
def test_ctrl_c_asks_then_stops_the_job_and_deletes_the_queued_resource(
  fake, clone, capsys, answer
):
  sup, asked = _supervisor(fake, clone, answer=answer, interrupt_at=3)
  assert sup.launch() == 130
  assert asked and 'Delete queued resource vit-s16 in us-central2-b now?' in asked[0]
  calls = fake.calls()
  assert 'libtpu_lockfile' in calls[-2][-1]  # The job saves a checkpoint first.
  assert calls[-1] == [*QR, 'delete', 'vit-s16', *WHERE, '--force', '--quiet']


@pytest.mark.parametrize('answer', ['n', KeyboardInterrupt])
def test_ctrl_c_answered_no_keeps_the_node_and_prints_how_to_delete_it(fake, clone, capsys, answer):
  sup, _ = _supervisor(fake, clone, answer=answer, interrupt_at=2)
  assert sup.launch() == 130
  assert not any(c[3] == 'delete' for c in fake.calls())
  err = capsys.readouterr().err
  assert 'holds TPU capacity (and quota)' in err
  assert (
    'gcloud compute tpus queued-resources delete vit-s16 '
    '--zone=us-central2-b --project=my-proj --force --quiet' in err
  )


def _interrupting_create(run):
  """Runner.run, but Ctrl-C arrives while the create command runs (after the fake gcloud has seen
  it)."""

  def wrapped(self, argv, **kw):
    done = run(self, argv, **kw)
    if 'create' in argv:
      raise KeyboardInterrupt
    return done

  return wrapped


@pytest.mark.parametrize('exists', [True, False])
def test_ctrl_c_during_create_deletes_the_node_the_server_still_makes(
  fake, clone, capsys, monkeypatch, exists
):
  fake.script(
    [
      (
        ['describe'],
        ['CREATING\n' if exists else {'rc': 1, 'stderr': 'ERROR: NOT_FOUND: vit-s16\n'}],
      )
    ]
  )
  monkeypatch.setattr(shell.Runner, 'run', _interrupting_create(shell.Runner.run))
  node = gcloud.Node('vit-s16', 'v4-32', ('us-central2-b',), project='my-proj', provisioning='spot')
  asked = []
  sup = supervise.Supervisor(
    node_lib.Tpu(node, shell.Runner(echo=False)),
    [ARGS],
    supervise.Settings(poll_s=0, code_dir=clone[0]),
    ask=lambda q: asked.append(q) or 'y',
  )
  assert sup.launch() == 130
  calls = fake.calls()
  assert [c[3] for c in calls] == ['create', 'describe'] + (['delete'] if exists else [])
  assert bool(asked) == exists
  if exists:
    assert calls[-1] == [*VM, 'delete', 'vit-s16', *WHERE, '--quiet']
  else:
    assert 'nothing is left running' in capsys.readouterr().err


def test_ctrl_c_during_the_create_subcommand_prints_how_to_delete_the_node(
  fake, clone, capsys, monkeypatch
):
  fake.script([(['describe'], ['CREATING\n'])])
  monkeypatch.setattr(shell.Runner, 'run', _interrupting_create(shell.Runner.run))
  assert tpu.main(['create', *tpu_flags(clone)[:5]]) == 130
  assert [c[3] for c in fake.calls()] == ['create', 'describe']
  err = capsys.readouterr().err
  assert 'interrupted; TPU VM vit-s16 in us-central2-b exists' in err
  assert (
    'gcloud compute tpus tpu-vm delete vit-s16 --zone=us-central2-b --project=my-proj --quiet'
    in err
  )


def test_sigint_to_a_launch_process_deletes_after_asking(fake, clone, tmp_path):
  """The real thing: `python -m launch.tpu launch` in a process, SIGINT while it polls, 'y' on its
  stdin."""
  fake.script([(['describe'], ['ACTIVE\n']), ([STATUS], [workers('running')])])
  env = {**os.environ, **fake.env, 'PYTHONPATH': shell.REPO}
  proc = subprocess.Popen(
    [
      sys.executable,
      '-m',
      'launch.tpu',
      'launch',
      *tpu_flags(clone),
      '--poll=0.2',
      '--queued',
      '--',
      *ARGS,
    ],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env=env,
    cwd=tmp_path,
  )
  try:
    deadline = time.monotonic() + 60
    while sum(STATUS in ' '.join(c) for c in fake.calls()) < 2 and time.monotonic() < deadline:
      time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate('y\n', timeout=60)
  finally:
    proc.kill()
  assert proc.returncode == 130, out
  assert (
    'Delete queued resource vit-s16 in us-central2-b now?' in out
    and 'Deleted queued resource' in out
  )
  assert fake.calls()[-1] == [*QR, 'delete', 'vit-s16', *WHERE, '--force', '--quiet']


def test_dry_run_prints_commands_and_runs_none(fake, clone, capsys):
  assert tpu_launch(clone, '--dry-run', '--queued', zones='us-central2-b,europe-west4-a') == 0
  assert fake.calls() == []
  lines = capsys.readouterr().out.splitlines()
  commands = [line for line in lines if not line.startswith('#')]
  # Packed before a node is paid for.
  assert commands[0].startswith(f'git -C {clone[0]} archive --format=tar.gz')
  assert commands[1].startswith('gcloud compute tpus queued-resources create vit-s16 ')
  assert any(
    line.startswith(
      '# if us-central2-b has no capacity: gcloud compute tpus queued-resources create'
    )
    for line in lines
  )
  assert (
    commands[-1] == 'gcloud compute tpus queued-resources delete vit-s16 '
    '--zone=us-central2-b --project=my-proj --force --quiet'
  )
  for sub in ('create', 'setup', 'status', 'stop', 'delete', 'logs', 'ssh'):
    capsys.readouterr()
    assert tpu.main([sub, '--dry-run', *tpu_flags(clone)[:5]]) == 0
    assert capsys.readouterr().out.strip(), sub
  assert fake.calls() == []
  tpu.main(['logs', '--dry-run', '--worker=all', '-f', *tpu_flags(clone)[:5]])
  assert '[worker $w]' in capsys.readouterr().out


def test_a_bad_name_or_missing_workdir_is_a_clear_error(fake, clone, capsys):
  assert tpu.main(['create', '--name=Bad Name;x', '--zones=z']) == 2
  assert "Bad TPU name 'Bad Name;x'" in capsys.readouterr().err
  assert tpu.main(['run', '--name=ok', '--zones=z', '--', '--config=configs/default.py']) == 2
  assert 'Give the run a --workdir' in capsys.readouterr().err
  assert fake.calls() == []


def _sweep_flags(clone, *extra):
  return [
    '--config=configs/default.py',
    '--sweep_dir=gs://bucket/sw',
    '--sweep',
    'config.seed=1,2',
    '--gpus=',
    '--backend=tpu',
    '--name=sw',
    '--zones=us-central2-b',
    '--accelerator=v4-8',
    f'--code_dir={clone[0]}',
    '--poll=0',
    *extra,
  ]


def test_sweep_on_one_vm_runs_each_run_in_turn_then_deletes_the_node(fake, clone, gcs):
  fake.script(
    [
      (['describe'], ['READY\n']),
      ([STATUS], [workers('exited 0')]),
      (['launch.record status'], ['']),
    ]
  )
  assert sweep.main(_sweep_flags(clone, '--tpu_mode=one_vm')) == 0
  calls = fake.calls()
  # The sweep dir is read and written through vit_jax.io, not gcloud.
  assert {c[0] for c in calls} == {'compute'}
  assert [
    r['name'] for r in json.loads((gcs / 'bucket' / 'sw' / 'sweep.json').read_text())['runs']
  ] == ['seed=1', 'seed=2']
  tpu_calls = without_polls(calls)
  assert [c[3] for c in tpu_calls].count('create') == 1 and tpu_calls[-1][3] == 'delete'
  runs = [shlex.split(c[-1][len('--command=') :]) for c in tpu_calls if 'setsid' in c[-1]]
  assert [
    next(a for a in shlex.split(r[r.index('-c') + 1]) if a.startswith('--workdir')) for r in runs
  ] == ['--workdir=gs://bucket/sw/seed=1', '--workdir=gs://bucket/sw/seed=2']


def test_sweep_with_a_vm_per_run_launches_a_supervised_node_for_each(fake, clone, capsys, gcs):
  fake.script(
    [
      (['describe'], ['READY\n']),
      ([STATUS], [workers('exited 0')]),
      (['launch.record status'], ['']),
    ]
  )
  assert sweep.main(_sweep_flags(clone, '--dry-run')) == 0
  lines = [
    shlex.split(line) for line in capsys.readouterr().out.splitlines() if not line.startswith('#')
  ]
  assert [line[1:5] for line in lines] == [
    ['-m', 'launch.tpu', 'launch', f'--name=sw-{i}'] for i in (0, 1)
  ]
  assert lines[1][lines[1].index('--') + 1 :] == [
    '--config=configs/default.py',
    '--workdir=gs://bucket/sw/seed=2',
    '--config.seed=2',
  ]
  assert sweep.main(_sweep_flags(clone)) == 0
  calls = [c for c in fake.calls() if c[0] == 'compute']
  assert sorted(c[4] for c in calls if c[3] == 'create') == ['sw-0', 'sw-1']
  assert sorted(c[4] for c in calls if c[3] == 'delete') == ['sw-0', 'sw-1']


def test_run_refuses_a_node_with_a_running_job_and_status_shows_each_worker(fake, clone, capsys):
  fake.script([(['describe'], ['READY\n']), ([STATUS], [workers('running', 'exited 1')])])
  assert tpu.main(['run', *tpu_flags(clone)[:5], '--', *ARGS]) == 2
  assert (
    'A job is running on TPU VM vit-s16 in us-central2-b; stop it first' in capsys.readouterr().err
  )
  assert tpu.main(['status', *tpu_flags(clone)[:5]]) == 0
  assert capsys.readouterr().out.splitlines() == [
    'TPU VM vit-s16 (us-central2-b): READY',
    'job: worker 0 running, worker 1 exited 1',
  ]


@pytest.mark.parametrize('sub', ['launch', 'run'])
def test_a_local_workdir_is_refused_in_one_line_unless_allowed(fake, clone, capsys, sub):
  args, flags = (
    ['--config=configs/default.py', '--workdir=runs/s16'],
    tpu_flags(clone)[: 5 if sub == 'run' else None],
  )
  assert tpu.main([sub, *flags, '--', *args]) == 2
  assert capsys.readouterr().err.splitlines() == [
    f"launch.tpu {sub}: --workdir=runs/s16 is on the TPU VM's own disk, which is deleted with the "
    'node (on a preemption, and at the end): give --workdir=gs://BUCKET/PATH, or pass '
    '--allow_local_workdir for a single-host experiment you accept losing.'
  ]
  assert fake.calls() == []
  assert tpu.main([sub, '--dry-run', '--allow_local_workdir', *flags, '--', *args]) == 0


def test_gcloud_command_lines_are_made_only_by_node_and_gcloud_modules():
  """node.Tpu runs and prints every gcloud command, from launch/gcloud.py's builders; gs:// files go
  through vit_jax.io, never `gcloud storage`."""
  spelled = re.compile(r'gcloud\.(?:create|describe|delete|ssh|scp)\(|[\'"]gcloud[\'"]')
  found = {
    p.name: spelled.findall(p.read_text())
    for p in (pathlib.Path(shell.REPO) / 'launch').glob('*.py')
    if p.name not in ('gcloud.py', 'node.py')
  }
  assert {name: hits for name, hits in found.items() if hits} == {}


def test_the_workers_share_a_compilation_cache_beside_the_workdir():
  assert 'export JAX_COMPILATION_CACHE_DIR=gs://bucket/runs/jax_cache; ' in gcloud.run_script(
    RUN_ARGS
  )
