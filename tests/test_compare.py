"""compare.py on the CPU: every implementation trains with the same seed and data, and the report is written;
a run that runs out of memory shows as OOM instead of stopping the comparison; --wandb_log groups the runs and
logs the table (checked with the real wandb package, offline). A comparison that cannot run stops before any
training with one `error:` line; a run that stops on a mistake is one line and a row of the report; the exit
status says whether the comparison is complete."""
import json
import os
import types

import pytest
import torch

import compare
import flash_kernel
from helpers import ROOT, char_data, tiny_config  # noqa: F401 (fixture)
from train import TrainConfig
from utils import ConfigError

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


CPU_OOM = RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you "
                       "tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize('error', [torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB"),
                                   CPU_OOM], ids=['gpu', 'cpu'])
def test_out_of_memory_is_reported_not_raised(error, tmp_path, monkeypatch, char_data, capsys):
    """Regression: the CPU's allocator says "can't allocate memory", which showed as a traceback and "failed"."""
    def oom(cfg):
        raise error

    monkeypatch.setattr(compare, 'train', oom)
    path = tmp_path / 'naive.json'
    compare._run_one(tiny_config(tmp_path, char_data), str(path))
    result = json.loads(path.read_text())
    assert result == {'status': 'OOM', 'error': str(error).splitlines()[0]}
    err = capsys.readouterr().err
    assert err.startswith('attn=sdpa: out of memory (') and err.count('\n') == 1, err  # one line, no traceback
    if error is CPU_OOM:
        return
    table = compare.markdown_table({'triton': {'status': 'ok', 'tokens_per_sec': 10.0, 'ms_per_iter': 1.0},
                                    'naive': result}, 'header')
    assert '| naive | **OOM** | – | – | – | – | – | – | – |' in table
    assert '| triton | ok | – | – | 1.00 | 10 | – | 1.000x | – |' in table
    assert '\n- naive: OOM: CUDA out of memory. Tried to allocate 64.00 GiB' in table  # why, under the table


def test_a_run_that_stops_on_a_mistake_is_one_line(tmp_path, monkeypatch, char_data, capsys):
    """Regression: a ConfigError raised inside one run (train's own checks) printed a full traceback."""
    def refuse(cfg):
        raise ConfigError("out_dir 'x' is not writable (Permission denied): fix its permissions")  # lock_out_dir's

    monkeypatch.setattr(compare, 'train', refuse)
    path = tmp_path / 'sdpa.json'
    compare._run_one(tiny_config(tmp_path, char_data), str(path))
    reason = "out_dir 'x' is not writable (Permission denied): fix its permissions"
    assert capsys.readouterr().err == f"error: attn=sdpa: {reason}\n"
    assert json.loads(path.read_text()) == {'status': 'failed', 'error': reason}


def test_a_bug_in_a_run_keeps_its_traceback(tmp_path, monkeypatch, char_data, capsys):
    def bug(cfg):
        raise IndexError("list index out of range")

    monkeypatch.setattr(compare, 'train', bug)
    path = tmp_path / 'sdpa.json'
    compare._run_one(tiny_config(tmp_path, char_data), str(path))
    assert 'Traceback' in capsys.readouterr().err  # a bug report, not a user's mistake
    assert json.loads(path.read_text()) == {'status': 'failed', 'error': 'IndexError: list index out of range'}


def _no_run(*args, **kwargs):
    pytest.fail("a run started: the comparison should have been refused before any training")


def test_triton_on_cpu_without_the_interpreter_is_refused_before_any_run(tmp_path, monkeypatch, char_data):
    """Regression: triton's run failed with a traceback inside the comparison, the other runs trained on, and
    compare.py exited 0. Now the device check train makes runs for every implementation before the first run."""
    monkeypatch.delenv('TRITON_INTERPRET', raising=False)  # read when the check runs, as in a fresh process
    monkeypatch.setattr(compare, 'run_one', _no_run)
    report = tmp_path / 'report'
    with pytest.raises(SystemExit) as e:
        compare.main([f'--report_dir={report}', '--impls=sdpa,triton', f'--data_dir={char_data}', *TINY,
                      '--max_iters=2'])
    message = str(e.value.code)
    assert message.startswith("error: triton cannot run in this comparison: attn='triton' needs a CUDA GPU")
    assert '\n' not in message and 'TRITON_INTERPRET=1' in message and 'leave triton out with --impls=sdpa' in message
    assert not report.exists()  # no run directory, no report: nothing started


def test_settings_every_run_shares_are_refused_once_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setattr(compare, 'run_one', _no_run)
    with pytest.raises(SystemExit) as e:
        compare.main([f'--report_dir={tmp_path / "report"}', '--impls=sdpa,naive', *TINY, '--dtype=float16'])
    # the config's mistake, not an implementation's: no implementation named
    assert str(e.value.code) == ("error: dtype='float16' needs a CUDA device (its loss scaling is CUDA-only here); "
                                 "use dtype='float32' or 'bfloat16'")
    assert not (tmp_path / 'report').exists()


@pytest.mark.parametrize('under, expected', [
    ('afile', "is a file, not a directory"),
    ('afile/report', "cannot be made or written (Not a directory)"),
])
def test_a_report_dir_that_cannot_be_written_is_refused_before_any_run(tmp_path, monkeypatch, under, expected):
    """Regression: os.makedirs(report_dir) raised with a traceback (FileExistsError, NotADirectoryError)."""
    monkeypatch.setattr(compare, 'run_one', _no_run)
    (tmp_path / 'afile').write_text('a regular file')
    report_dir = tmp_path / under
    with pytest.raises(SystemExit) as e:
        compare.main([f'--report_dir={report_dir}', '--impls=sdpa', *TINY])
    message = str(e.value.code)
    assert message.startswith(f"error: --report_dir={str(report_dir)!r} {expected}") and '\n' not in message
    assert os.listdir(tmp_path) == ['afile']  # nothing made beside it


def test_when_no_run_finishes_the_report_says_why_and_the_exit_status_is_1(tmp_path, capfd):
    """Regression: with the data missing every run failed (each with a traceback) and compare.py exited 0."""
    empty = tmp_path / 'no-data'
    empty.mkdir()
    report = tmp_path / 'report'
    with pytest.raises(SystemExit) as e:
        compare.main([f'--report_dir={report}', '--impls=sdpa,naive', f'--data_dir={empty}', *TINY,
                      '--max_iters=2'])
    assert str(e.value.code) == (f"error: no implementation finished (sdpa failed, naive failed): {report}/compare.md "
                                 f"says why, under the table")
    err = capfd.readouterr().err  # the runs' processes write to the same stderr
    assert 'Traceback' not in err
    for impl in ('sdpa', 'naive'):
        assert f"error: attn={impl}: train.bin and val.bin and meta.pkl not found in {empty}" in err
    results = json.loads((report / 'compare.json').read_text())['results']
    assert {r['status'] for r in results.values()} == {'failed'}
    assert all(r['error'].startswith('train.bin and val.bin and meta.pkl not found') for r in results.values())
    table = (report / 'compare.md').read_text()
    assert '| sdpa | **failed** |' in table
    assert '\n- naive: failed: train.bin and val.bin and meta.pkl not found' in table  # why, under the table


def test_one_failed_run_keeps_the_others_and_the_exit_status_is_1(tmp_path, char_data, capfd):
    report = tmp_path / 'report'
    report.mkdir()
    (report / 'naive').write_text('in the way of the naive run\'s out_dir')
    with pytest.raises(SystemExit) as e:
        compare.main([f'--report_dir={report}', '--impls=sdpa,naive', f'--data_dir={char_data}', *TINY,
                      '--max_iters=2', '--eval_interval=2', '--lr_decay_iters=2'])
    assert str(e.value.code).startswith("error: not every run finished (naive failed): ")
    assert 'Traceback' not in capfd.readouterr().err
    results = json.loads((report / 'compare.json').read_text())['results']
    assert results['sdpa']['status'] == 'ok' and results['naive']['status'] == 'failed'
    assert 'is a file, not a directory' in results['naive']['error']


@pytest.mark.parametrize('statuses, problem', [
    (['ok', 'ok'], ''),
    (['ok', 'OOM'], ''),  # running out of memory is a result the comparison reports
    (['ok', 'failed'], 'not every run finished (naive failed)'),
    (['OOM', 'failed'], 'no implementation finished (sdpa OOM, naive failed)'),
    (['OOM', 'OOM'], 'no implementation finished (sdpa OOM, naive OOM)'),
], ids=str)
def test_the_exit_status_policy(statuses, problem):
    assert compare.failures({impl: {'status': s} for impl, s in zip(('sdpa', 'naive'), statuses)}) == problem


def test_a_training_config_file_is_taken_as_the_readme_shows(char_data, tmp_path):
    """Regression: every config sets out_dir, and refusing out_dir from config files refused all of them."""
    compare.main([str(ROOT / 'config' / 'train_shakespeare_char_cpu.py'), '--impls=sdpa',
                  f'--report_dir={tmp_path / "report"}', f'--data_dir={char_data}', *TINY, '--max_iters=2',
                  '--eval_interval=2', '--lr_decay_iters=2'])
    assert json.loads((tmp_path / 'report' / 'compare.json').read_text())['results']['sdpa']['status'] == 'ok'


def test_a_comparison_runs_again_into_its_own_report_dir(char_data, tmp_path):
    """Its runs replace the last comparison's checkpoints there, which a plain train.py run would refuse to do."""
    args = [f'--report_dir={tmp_path / "report"}', '--impls=sdpa', f'--data_dir={char_data}', *TINY,
            '--max_iters=2', '--eval_interval=2', '--lr_decay_iters=2']
    for _ in range(2):
        compare.main(args)
        assert json.loads((tmp_path / 'report' / 'compare.json').read_text())['results']['sdpa']['status'] == 'ok'


@pytest.mark.parametrize('args,expected', [
    (['--impls=sdpa,sdpa'], "--impls takes a comma-separated subset of ('triton', 'sdpa', 'naive'), each once, got "
                            "['sdpa', 'sdpa']"),
    (['--impls=sdpa', '--out_dir=elsewhere'], "compare.py does not use out_dir: each run goes into "
                                              "report_dir/<impl>; give --report_dir instead"),
], ids=['duplicate', 'out_dir'])
def test_settings_compare_would_drop_are_refused(args, expected, tmp_path):
    """Regression: --impls=sdpa,sdpa trained sdpa twice into one directory for one row, and --out_dir was ignored."""
    with pytest.raises(SystemExit) as e:
        compare.main([f'--report_dir={tmp_path / "report"}', *args, *TINY])
    assert str(e.value.code) == f"error: {expected}"
    assert not (tmp_path / 'report').exists()


def test_a_checkpoint_no_comparison_wrote_is_not_replaced(char_data, tmp_path, capfd):
    """Regression: a train.py out_dir named like an implementation inside report_dir lost its checkpoint to the
    comparison's run. Only runs whose result file (report_dir/<impl>.json) a comparison wrote are replaced."""
    from helpers import tiny_config
    from train import train
    train(tiny_config(tmp_path / 'report' / 'sdpa', char_data, max_iters=2, eval_interval=2))
    kept = (tmp_path / 'report' / 'sdpa' / 'ckpt.pt').read_bytes()
    with pytest.raises(SystemExit) as e:
        compare.main([f'--report_dir={tmp_path / "report"}', '--impls=sdpa', f'--data_dir={char_data}', *TINY,
                      '--max_iters=2', '--eval_interval=2', '--lr_decay_iters=2'])
    assert 'no implementation finished (sdpa failed)' in str(e.value.code)
    assert 'holds a trained model, which this run (init_from=scratch) would replace' in capfd.readouterr().err
    assert (tmp_path / 'report' / 'sdpa' / 'ckpt.pt').read_bytes() == kept


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


def test_a_run_killed_before_its_result_stays_the_comparisons(tmp_path, monkeypatch, char_data):
    """Regression: a run's result file was deleted as the run started, so once a run was interrupted or killed, the
    next comparison into the same report_dir refused that run's own checkpoint as another's."""
    class Killed:  # a child process killed before it wrote a result (Ctrl-C, the host's OOM killer)
        exitcode = -9

        def __init__(self, target, args):
            pass

        def start(self):
            pass

        def join(self):
            pass

    monkeypatch.setattr(compare, 'mp', types.SimpleNamespace(get_context=lambda method: types.SimpleNamespace(
        Process=Killed)))
    cfg = tiny_config(tmp_path / 'unused', char_data)
    assert compare.run_one(cfg, 'naive', str(tmp_path)) == {'status': 'failed', 'error': 'process exited with code -9'}
    assert compare.run_config(cfg, 'naive', str(tmp_path)).overwrite  # the next comparison may replace it
