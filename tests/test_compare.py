"""compare.py on the CPU: every implementation trains with the same seed and data, and the report is written;
a run that runs out of memory shows as OOM instead of stopping the comparison."""
import json

import torch

import compare
from helpers import char_data, tiny_config  # noqa: F401 (fixture)


def test_compare_writes_table_plot_and_json(char_data, tmp_path):
    report = tmp_path / 'report'
    compare.main([f'--report_dir={report}', f'--data_dir={char_data}', '--dataset=shakespeare_char',
                  '--device=cpu', '--dtype=float32', '--compile=False', '--n_layer=1', '--n_head=2', '--n_embd=32',
                  '--block_size=16', '--batch_size=4', '--max_iters=6', '--eval_interval=3', '--eval_iters=2',
                  '--log_interval=1', '--warmup_iters=0', '--lr_decay_iters=6', '--dropout=0.0'])
    results = json.loads((report / 'compare.json').read_text())['results']
    assert list(results) == ['triton', 'sdpa', 'naive']
    assert all(r['status'] == 'ok' for r in results.values())
    # same seed, same data order, no dropout: the three differ only by float rounding
    vals = [r['best_val_loss'] for r in results.values()]
    assert max(vals) - min(vals) < 1e-4, vals
    table = (report / 'compare.md').read_text()
    for impl in ('triton', 'sdpa', 'naive'):
        assert f'| {impl} | ok |' in table
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
    assert '| naive | **OOM** |' in table


def test_unknown_impl_is_refused(capsys):
    try:
        compare.main(['--impls=triton,flash2'])
    except SystemExit as e:
        assert 'flash2' in str(e.code) and "'triton', 'sdpa', 'naive'" in str(e.code)
    else:
        raise AssertionError('an unknown implementation must stop compare.py')


def test_wandb_logging_when_asked(char_data, tmp_path, monkeypatch):
    """--wandb_log=True: each implementation's run logs its evals and throughput under its own run name."""
    import sys
    import types

    from train import train

    calls = []
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(('init', kw)),
                                 log=lambda d: calls.append(('log', d)), finish=lambda: calls.append(('finish', {})))
    monkeypatch.setitem(sys.modules, 'wandb', fake)  # no network here: a stand-in that records the calls
    cfg = compare.run_config(tiny_config(tmp_path, char_data, wandb_log=True, wandb_run_name='cmp', max_iters=4,
                                         eval_interval=2), 'naive', str(tmp_path))
    train(cfg)
    assert calls[0] == ('init', {'project': cfg.wandb_project, 'name': 'cmp-naive', 'config': calls[0][1]['config']})
    logged = [d for kind, d in calls if kind == 'log']
    assert any('val/loss' in d for d in logged) and any('tokens_per_sec' in d for d in logged)
    assert calls[-1][0] == 'finish'
