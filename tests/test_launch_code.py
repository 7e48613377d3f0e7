"""launch/code.py: a launch's code archive is private (parallel launches of one commit never share a
file), made before any node exists, and removed however the launch ends."""

import os
import tempfile

# (fixtures)
from launch_fakes import ARGS, STATUS, FakeGcloud, clone, fake, gcs, tpu_flags, workers
import pytest

from launch import code as code_lib
from launch import shell, sweep, tpu


def test_two_packs_of_one_commit_are_separate_files_removed_when_each_ends(
  clone, tmp_path, monkeypatch
):
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
  runner = shell.Runner(echo=False)
  with code_lib.packed('git', clone[0], runner) as a, code_lib.packed('git', clone[0], runner) as b:
    assert a.archive != b.archive and a.name == b.name == f'vit_jax-{clone[1][:12]}.tar.gz'
    with open(a.archive, 'rb') as fa, open(b.archive, 'rb') as fb:
      assert fa.read() == fb.read()
    with pytest.raises(KeyboardInterrupt), code_lib.packed('git', clone[0], runner) as c:
      raise KeyboardInterrupt
    assert not os.path.exists(os.path.dirname(c.archive)) and os.path.exists(a.archive)
  assert sorted(os.listdir(tmp_path)) == ['clone']


def test_parallel_launches_of_one_commit_ship_private_archives_and_remove_them(
  tmp_path, monkeypatch, clone, gcs
):
  """launch.sweep --backend=tpu starts a `launch.tpu launch` process per run, in parallel, all of
  one commit."""
  tmp = tmp_path / 'tmp'
  tmp.mkdir()
  monkeypatch.setenv('TMPDIR', str(tmp))
  # Its scp fails for a file that is not there (as gcloud's does).
  fake = FakeGcloud(tmp_path, monkeypatch)
  fake.script(
    [
      (['scp'], [{'sleep': 1}]),
      (['describe'], ['READY\n']),
      ([STATUS], [workers('exited 0')]),
      (['launch.record status'], ['']),
    ]
  )
  assert (
    sweep.main(
      [
        '--config=configs/default.py',
        '--sweep_dir=gs://bucket/sw',
        '--sweep',
        'config.seed=1,2',
        '--backend=tpu',
        '--name=sw',
        '--zones=us-central2-b',
        f'--code_dir={clone[0]}',
        '--poll=0',
      ]
    )
    == 0
  )
  scps = [c for c in fake.calls() if c[3] == 'scp']
  assert sorted(c[5].split(':')[0] for c in scps) == ['sw-0', 'sw-1']
  assert scps[0][4] != scps[1][4]  # An archive each, of the same name.
  assert {os.path.basename(c[4]) for c in scps} == {f'vit_jax-{clone[1][:12]}.tar.gz'}
  assert list(tmp.iterdir()) == []  # Both removed.


@pytest.mark.parametrize(
  'flag,status,message',
  [
    ('--code_dir=nogit', 1, 'is not a git clone'),
    ('--code=svn', 2, "Bad --code 'svn': 'git' (ship HEAD) or"),
  ],
)
def test_a_clone_without_git_or_a_bad_code_fails_before_any_node_is_created(
  fake, clone, tmp_path, capsys, flag, status, message
):
  (tmp_path / 'nogit').mkdir()
  flag = flag.replace('nogit', str(tmp_path / 'nogit'))
  assert tpu.main(['launch', *tpu_flags(clone), flag, '--', *ARGS]) == status
  assert fake.calls() == []
  assert message in capsys.readouterr().err
