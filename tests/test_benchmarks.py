"""The benchmarks run end to end on tiny sizes: train_throughput.py passes its options to the
variant processes, and each script prints the figures it documents."""

import json
import os
import subprocess
import sys

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import dropout_masks  # pylint: disable=g-import-not-at-top,wrong-import-position
import first_step  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = [
  '--model=ViT-Ti_16',
  '--hidden=32',
  '--layers=1',
  '--heads=2',
  '--mlp=64',
  '--patch=4',
  '--image_size=16',
  '--batch=8',
]


def _run(script, *args) -> str:
  """The stdout of `python SCRIPT ARGS` run from the repository (it must exit 0)."""
  return subprocess.run(
    [sys.executable, script, *args],
    cwd=ROOT,
    check=True,
    stdout=subprocess.PIPE,
    text=True,
    timeout=900,
  ).stdout


# The main job on a tiny model, 2 steps (main_seeds.py and first_step.py pass them on).
TINY_MAIN = [
  '--config.model.hidden_size=32',
  '--config.model.transformer.num_layers=1',
  '--config.model.transformer.mlp_dim=64',
  '--config.batch_size=16',
  '--config.total_steps=2',
  '--config.eval_every_steps=2',
  '--config.schedule.warmup_steps=1',
]


def test_train_throughput_prints_positive_figures_for_a_tiny_model():
  out = _run(
    'benchmarks/train_throughput.py',
    *TINY,
    '--steps=2',
    '--warmup=1',
    '--peak_tflops=1',
    '--no_baseline',
  )
  line = json.loads(out.strip().splitlines()[-1])
  assert (
    line['variant'] == 'baseline' and line['peak_source'] == 'flag' and line['device_count'] >= 1
  )
  for key in (
    'compile_s',
    'img_per_sec',
    'img_per_sec_per_device',
    'model_tflops_per_device',
    'mfu',
    'host_peak_rss_mib',
  ):
    assert line[key] > 0, key


def test_variant_command_line_round_trips_the_options():
  args = train_throughput.parse_args(
    [*TINY, '--scan', '--remat=dots', '--attention=xla', '--dtype=bfloat16']
  )
  options = train_throughput.variant_options(args)
  child = train_throughput.parse_args(train_throughput.child_argv(args, 'fast', options, 2.0)[2:])
  assert train_throughput.variant_options(child) == options
  assert (child.variant, child.no_baseline, child.peak_tflops, child.hidden, child.patch) == (
    'fast',
    True,
    2.0,
    32,
    4,
  )
  baseline = train_throughput.parse_args(
    train_throughput.child_argv(args, 'baseline', train_throughput.BASELINE, None)[2:]
  )
  assert (
    train_throughput.variant_options(baseline) == train_throughput.BASELINE
    and baseline.hidden == 32
  )


def test_input_throughput_prints_both_pipelines_and_the_host_budget():
  out = _run(
    'benchmarks/input_throughput.py',
    '--num_images=8',
    '--batch=4',
    '--batches=2',
    '--warmup=1',
    '--only=digits,imagenet_jpeg_224',
    '--markdown',
  )
  result = json.loads(next(line for line in out.splitlines() if line.startswith('{"threads"')))
  assert [r['name'] for r in result['rows']] == ['digits', 'imagenet_jpeg_224']
  for row in result['rows']:
    assert (
      row['ratio'] > 0 and row['ours']['img_per_sec'] > 0 and row['tf.data']['cpu_ms_per_image'] > 0
    )
  assert len(result['budget']) == 18 and all(r['vcpus_plain'] > 0 for r in result['budget'])
  assert '| digits | 8x8 PNG, no crop |' in out and '| ViT-B_16 | TPU v4 (4 chips) |' in out


def test_train_throughput_times_a_lit_step_beside_its_image_tower_as_a_classifier():
  out = _run(
    'benchmarks/train_throughput.py',
    '--model=LiT-L16Ti',
    *TINY[1:],
    '--text_layers=1',
    '--steps=2',
    '--warmup=1',
    '--peak_tflops=1',
  )
  baseline, lit = (json.loads(line) for line in out.strip().splitlines()[-2:])
  assert (baseline['variant'], baseline['model'], lit['variant'], lit['model']) == (
    'image_classifier',
    'ViT-L_16',
    'lit',
    'LiT-L16Ti',
  )
  assert (
    lit['step_ratio_vs_image_classifier'] == lit['step_s_median'] / baseline['step_s_median'] > 0
  )
  assert 0 < lit['train_gflops_per_image'] and lit['mfu'] > 0


def test_sigmoid_loss_memory_prints_both_losses_and_the_chunked_one_holds_less():
  out = _run(
    'benchmarks/sigmoid_loss_memory.py',
    '--batches=64,128',
    '--dim=16',
    '--steps=1',
  )
  rows = [json.loads(line) for line in out.splitlines() if line.startswith('{')]
  assert [(r['batch'], r['impl']) for r in rows] == [
    (64, 'dense'),
    (64, 'chunked'),
    (128, 'dense'),
    (128, 'chunked'),
  ]
  assert all(r['devices'] == 8 and r['step_s'] > 0 and r['temp_bytes'] > 0 for r in rows)
  for dense, chunked in (rows[:2], rows[2:]):
    assert chunked['temp_bytes'] < dense['temp_bytes']
    assert chunked['total_bytes'] < dense['total_bytes']
  assert '| 128 | 16 |' in out  # The table: global batch, per device.


def test_main_seeds_reports_each_seeds_final_accuracy_and_times(tmp_path, digits_dir):
  out = _run(
    'benchmarks/main_seeds.py',
    '--seeds=1',
    f'--root={tmp_path}',
    '--markdown',
    '--',
    f'--config.tfds_data_dir={digits_dir}',
    *TINY_MAIN,
  )
  row, summary = (json.loads(line) for line in out.strip().splitlines()[:2])
  assert (row['seed'], row['step'], row['num_examples']) == (1, 2, 360)
  assert 0 <= row['accuracy'] <= 1 and row['correct'] == round(360 * row['accuracy'])
  assert row['wall_s'] > 0 and row['cpu_s'] > 0
  assert json.loads((tmp_path / 'seed1' / 'config.json').read_text())['seed'] == 1
  assert (
    summary['seeds'] == [1]
    and summary['accuracy_min'] == summary['accuracy_max'] == (row['accuracy'])
  )
  assert f'| 1 | {100 * row["accuracy"]:.2f}% ({row["correct"]}/360) |' in out


def test_dropout_masks_times_both_implementations(capsys):
  cache_was_on = jax.config.jax_enable_compilation_cache
  try:
    dropout_masks.main(
      ['--batch=4', '--tokens=5', '--width=8', '--mlp=16', '--layers=2', '--steps=2']
    )
  finally:
    jax.config.update('jax_enable_compilation_cache', cache_was_on)
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r.get('implementation') for r in rows] == ['flax', 'vit_jax', None]
  for row in rows[:2]:
    assert row['sites'] == 7 and row['units'] == 4 * 5 * (8 * 5 + 16 * 2)
    assert row['compile_s'] > 0 and row['ms_per_step'] > 0
  assert (
    rows[2]['step_ratio_flax_over_vit_jax'] > 0 and rows[2]['compile_ratio_flax_over_vit_jax'] > 0
  )


def test_first_step_summary_has_no_compile_ratio_when_the_cold_compile_ended_in_the_start_up():
  rows = [
    {'kind': 'cold', 'run': 1, 'startup_s': 12.0, 'compile_s': 0.0, 'first_step_s': 12.0},
    {'kind': 'warm', 'run': 1, 'startup_s': 6.0, 'compile_s': 0.1, 'first_step_s': 6.1},
  ]
  summary = first_step.summarize(rows)
  assert summary['warm_over_cold'] == 0.51 and summary['warm_over_cold_compile'] is None
  assert 'cold_over_baseline' not in summary


def test_first_step_times_a_baseline_commit_then_cold_then_warm_on_the_cold_runs_cache(
  tmp_path, digits_dir
):
  out = _run(
    'benchmarks/first_step.py',
    '--runs=1',
    '--baseline=HEAD',
    f'--root={tmp_path}',
    '--markdown',
    '--',
    f'--config.tfds_data_dir={digits_dir}',
    *TINY_MAIN,
  )
  lines = out.strip().splitlines()
  rows = [json.loads(line) for line in lines[:3]]
  summary = json.loads(lines[3])
  assert [(r['kind'], r['run']) for r in rows] == [('baseline', 1), ('cold', 1), ('warm', 1)]
  for r in rows:
    # (A compile that ended during the start-up leaves 0.0 s: the step compiles on a thread.)
    assert r['startup_s'] > 0 and r['compile_s'] >= 0
    assert r['first_step_s'] == round(r['startup_s'] + r['compile_s'], 1)
    # Each run logged its own goodput line into its own workdir.
    assert (tmp_path / f'{r["kind"]}1' / 'goodput.json').exists()
  baseline, cold, warm = rows
  assert summary['cold_over_baseline'] == round(cold['first_step_s'] / baseline['first_step_s'], 2)
  assert summary['warm_over_cold'] == round(warm['first_step_s'] / cold['first_step_s'], 2)
  assert summary['warm_over_cold_compile'] == (
    round(warm['compile_s'] / cold['compile_s'], 2) if cold['compile_s'] else None
  )
  # The cold runs filled their caches, which the warm run read (it has none of its own).
  assert os.listdir(tmp_path / 'cache-cold1') and os.listdir(tmp_path / 'cache-baseline1')
  assert not any(p.name.startswith('cache-warm') for p in tmp_path.iterdir())
  assert lines[5] == '|---|---|---|---|'
  assert lines[6].startswith(f'| 1 | {baseline["startup_s"]:.1f} + {baseline["compile_s"]:.1f} = ')
  # The baseline's worktree is gone, from the folder and from git's list.
  assert not (tmp_path / 'baseline-src').exists()
  worktrees = subprocess.run(
    ['git', 'worktree', 'list'], cwd=ROOT, capture_output=True, text=True, check=True
  ).stdout
  assert 'baseline-src' not in worktrees
