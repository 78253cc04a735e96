"""compare.py on the CPU: every implementation trains with the same seed and data, and the report is written;
a run that runs out of memory shows as OOM instead of stopping the comparison; --wandb_log groups the runs and
logs the table (checked with the real wandb package, offline)."""
import json

import pytest
import torch

import compare
import flash_kernel
from helpers import char_data, tiny_config  # noqa: F401 (fixture)
from train import TrainConfig

# a comparison small enough for the CPU: one optimizer step is one micro-batch of 4 x 16 tokens
TINY = ['--dataset=shakespeare_char', '--device=cpu', '--dtype=float32', '--compile=False', '--n_layer=1',
        '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=4', '--gradient_accumulation_steps=1',
        '--eval_iters=2', '--log_interval=1', '--warmup_iters=0', '--dropout=0.0']


def test_compare_writes_table_plot_and_json(char_data, tmp_path, monkeypatch):
    # The comparison runs on the CPU on every machine, so the Triton kernel runs in its interpreter there. The
    # runs are fresh processes that inherit the environment; on a machine with a GPU, conftest.py leaves the
    # interpreter off for the GPU tests, and attn='triton' on device='cpu' would be refused.
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    if problem := flash_kernel.interpreter_problem():
        pytest.skip(problem)  # the triton run would fail with exactly this message
    report = tmp_path / 'report'
    compare.main([f'--report_dir={report}', f'--data_dir={char_data}', *TINY, '--max_iters=6', '--eval_interval=3',
                  '--lr_decay_iters=6'])
    results = json.loads((report / 'compare.json').read_text())['results']
    assert list(results) == ['triton', 'sdpa', 'naive']
    assert all(r['status'] == 'ok' for r in results.values()), results
    # same seed, same data order, no dropout: the three differ only by fp32 rounding (the kernel's online
    # softmax sums in another order; seen ~1e-6 here), far below the ~0.1 a different batch or init would move it
    vals = [r['best_val_loss'] for r in results.values()]
    assert max(vals) - min(vals) < 1e-4, vals
    table = (report / 'compare.md').read_text()
    for impl in ('triton', 'sdpa', 'naive'):
        assert f'| {impl} | ok |' in table
    assert '| triton | ok |' in table and '| 1.000x |' in table  # ours against ours
    assert (report / 'compare.png').stat().st_size > 10_000


def test_out_of_memory_is_reported_not_raised(tmp_path, monkeypatch, char_data):
    def oom(cfg):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")

    monkeypatch.setattr(compare, 'train', oom)
    path = tmp_path / 'naive.json'
    compare._run_one(tiny_config(tmp_path, char_data), str(path))
    result = json.loads(path.read_text())
    assert result['status'] == 'OOM'
    table = compare.markdown_table({'triton': {'status': 'ok', 'tokens_per_sec': 10.0, 'ms_per_iter': 1.0},
                                    'naive': result}, 'header')
    assert '| naive | **OOM** | – | – | – | – | – | – | – |' in table
    assert '| triton | ok | – | – | 1.00 | 10 | – | 1.000x | – |' in table


def test_unknown_impl_is_refused():
    with pytest.raises(SystemExit) as e:
        compare.main(['--impls=triton,flash2'])
    assert str(e.value.code).startswith('error: ') and 'flash2' in str(e.value.code)
    assert "('triton', 'sdpa', 'naive')" in str(e.value.code)


def test_help_lists_its_own_options_and_the_training_settings(capsys):
    with pytest.raises(SystemExit) as e:
        compare.main(['--help'])
    assert e.value.code == 0
    out = ' '.join(capsys.readouterr().out.split())  # the column widths follow the longest setting name
    assert f"--impls=str default '{','.join(compare.IMPLS)}' the attention implementations to train" in out
    assert "--report_dir=str default 'compare-out'" in out
    assert "training settings, as in train.py" in out and f'--max_iters=int default {TrainConfig.max_iters}' in out


def test_wandb_runs_are_grouped_and_the_table_is_logged(char_data, tmp_path, monkeypatch):
    """The real wandb package, offline: each implementation's run and a summary run share one group, and the
    summary run holds the comparison table with the numbers of compare.json."""
    wandb = pytest.importorskip('wandb')
    from wandb_offline import read_offline_runs

    wandb_dir = tmp_path / 'wandb_dir'
    wandb_dir.mkdir()
    for key, value in {'WANDB_MODE': 'offline', 'WANDB_DIR': str(wandb_dir), 'WANDB_SILENT': 'true',
                       'WANDB_CONFIG_DIR': str(wandb_dir), 'WANDB_CACHE_DIR': str(wandb_dir)}.items():
        monkeypatch.setenv(key, value)  # the run processes inherit these
    report = tmp_path / 'report'
    compare.main([f'--report_dir={report}', '--impls=sdpa,naive', f'--data_dir={char_data}', *TINY,
                  '--max_iters=2', '--eval_interval=2', '--lr_decay_iters=2', '--wandb_log=True',
                  '--wandb_project=cmp-test', '--wandb_run_name=tiny'])
    saved = json.loads((report / 'compare.json').read_text())
    group = saved['wandb_group']
    assert group.startswith('tiny-compare-')

    # the runs in the run processes are on disk once those processes end; the summary run, made in this process,
    # once wandb's service stops, which is what the end of `python compare.py` does
    wandb.teardown()
    runs = {run['name']: run for run in read_offline_runs(wandb_dir)}
    assert set(runs) == {'tiny-sdpa', 'tiny-naive', f'{group}-summary'}
    assert {run['group'] for run in runs.values()} == {group}
    assert {run['project'] for run in runs.values()} == {'cmp-test'}
    for impl in ('sdpa', 'naive'):  # each training run logged its evals
        logged = [row for row in runs[f'tiny-{impl}']['history'] if 'val/loss' in row]
        assert logged and logged[-1]['val/loss'] == pytest.approx(saved['results'][impl]['val_loss'])

    summary = runs[f'{group}-summary']
    assert summary['job_type'] == 'compare' and summary['config']['max_iters'] == 2
    tables = list((summary['dir'] / 'files' / 'media' / 'table').glob('comparison_*.table.json'))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table['columns'] == compare.COLUMNS
    rows = {row[0]: dict(zip(table['columns'], row)) for row in table['data']}
    assert set(rows) == {'sdpa', 'naive'}
    for impl, row in rows.items():
        assert row['status'] == 'ok'
        assert row['best val loss'] == pytest.approx(saved['results'][impl]['best_val_loss'])
        assert summary['summary'][f'{impl}/tokens/s'] == pytest.approx(saved['results'][impl]['tokens_per_sec'])
    assert summary['summary'].get('comparison/_type') == 'table-file', sorted(summary['summary'])
