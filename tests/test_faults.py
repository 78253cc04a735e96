"""train.py under bad settings and faults: each is refused or stopped with one `error:` line that says what to do,
and nothing already saved is lost (divergence, unwritable or shared out_dir, a hung DDP rank)."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import triton

from helpers import ROOT, char_data, load_script, tiny_config  # noqa: F401 (fixture)
from train import TrainConfig, TrainingError, lock_out_dir, main, train
from utils import CheckpointError, ConfigError, load_checkpoint, parse_config, save_checkpoint

# (command-line override, what the error must say): the key, the value given and the valid range
BAD_SETTINGS = [
    ('--grad_clip=-1.0', r"grad_clip must be >= 0 \(0 turns clipping off\), got -1\.0"),
    ('--learning_rate=-0.001', r"learning_rate must be in \(0, 1e6\], got -0\.001"),
    ('--learning_rate=1e39', r"learning_rate must be in \(0, 1e6\], got 1e\+39"),
    ('--min_lr=-1e-4', r"min_lr must be >= 0, got -0\.0001"),
    ('--min_lr=0.1', r"min_lr must be <= learning_rate=0\.001, got 0\.1"),
    ('--weight_decay=-0.1', r"weight_decay must be >= 0, got -0\.1"),
    ('--beta1=1.0', r"beta1 must be in \[0, 1\), got 1\.0"),
    ('--beta2=1.5', r"beta2 must be in \[0, 1\), got 1\.5"),
    ('--dropout=2', r"dropout must be in \[0, 1\), got 2\.0"),
    ('--n_layer=0', r"n_layer must be a positive integer, got 0"),
    ('--n_embd=32', r"n_embd \(32\) must be divisible by n_head \(6\)"),
    ('--device=foo', r"device must be 'cpu', 'cuda' or 'cuda:N', got 'foo'"),
    ('--eval_iters=0', r"eval_iters must be >= 1, got 0"),
    ('--max_iters=-5', r"max_iters must be >= 0, got -5"),
    ('--warmup_iters=6000', r"warmup_iters must be <= lr_decay_iters=5000 .*, got 6000"),
    ('--ddp_timeout=0', r"ddp_timeout must be in \(0, 1e9\] seconds, got 0\.0"),
    ('--ddp_timeout=1e10', r"ddp_timeout must be in \(0, 1e9\] seconds, got 10000000000\.0"),
    ('--backend=mpi', r"backend must be one of \('nccl', 'gloo'\), got 'mpi'"),
    # nan and inf are numbers on the command line as in a config file: the range check names them
    ('--learning_rate=nan', r"learning_rate must be in \(0, 1e6\], got nan"),
    ('--grad_clip=inf', r"grad_clip must be >= 0 \(0 turns clipping off\), got inf"),
    ('--dataset=', r"dataset must be a folder name under data/ \(or give --data_dir\), got ''"),
]


@pytest.mark.parametrize('arg,message', BAD_SETTINGS, ids=[a for a, _ in BAD_SETTINGS])
def test_bad_setting_names_key_value_and_range(arg, message):
    with pytest.raises(ConfigError, match=message):
        parse_config([arg], TrainConfig)


def test_nan_in_a_config_file_is_refused(tmp_path):
    (tmp_path / 'c.py').write_text("learning_rate = float('nan')\n")
    with pytest.raises(ConfigError, match=r"learning_rate must be in \(0, 1e6\], got nan"):
        parse_config([str(tmp_path / 'c.py')], TrainConfig)


def run_train(*args, timeout=120):
    return subprocess.run([sys.executable, 'train.py', *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_bad_setting_on_the_command_line_is_one_error_line(tmp_path):
    """Regression: GPTConfig's own checks (n_embd % n_head, dropout, n_layer) ended in a traceback."""
    r = run_train('--n_embd=30', '--n_head=4', f'--out_dir={tmp_path}')
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: n_embd (30) must be divisible by n_head (4): each head gets n_embd // n_head channels"]
    assert list(tmp_path.iterdir()) == []  # checked before any work


def test_divergence_stops_the_run_and_keeps_the_good_checkpoint(char_data, tmp_path):
    """Regression: a resume with --learning_rate=1e3 went on to max_iters with a NaN loss, exited 0, and replaced
    ckpt.pt with an all-NaN model."""
    train(tiny_config(tmp_path, char_data, max_iters=4, eval_interval=4))
    good = (tmp_path / 'ckpt.pt').read_bytes()
    with pytest.raises(SystemExit) as stop:  # sys.exit(message): the message on stderr, exit status 1
        main([str(ROOT / 'config' / 'train_shakespeare_char_cpu.py'), f'--data_dir={char_data}',
              f'--out_dir={tmp_path}', '--init_from=resume', '--learning_rate=1e3', '--min_lr=1.0', '--max_iters=40',
              '--eval_interval=4', '--log_interval=1', '--eval_iters=2', '--batch_size=8'])
    # whichever comes first stops it: a non-finite gradient norm at a step, or an exploded loss at an eval
    assert re.fullmatch(r"error: training diverged (at iter \d+: loss \S+, gradient norm (nan|inf)|before iter \d+: "
                        r"the eval losses are .*, above 8\.35, far above the 4\.17 of guessing uniformly\.) .*last "
                        r"checkpoint .* left as it is\. Try a lower --learning_rate \(now 1000\).*", stop.value.code)
    assert (tmp_path / 'ckpt.pt').read_bytes() == good


@pytest.mark.parametrize('how', ['--overwrite=True', '--init_from=resume'])
def test_a_diverging_run_leaves_out_dir_describing_its_checkpoint(char_data, tmp_path, how):
    """Regression: a run that diverged before its first save kept ckpt.pt, but had written its own settings
    (learning_rate=1000) to config.json at the start, and, replacing the run with --overwrite=True, had emptied
    metrics.jsonl: out_dir no longer described the checkpoint it holds."""
    train(tiny_config(tmp_path, char_data, max_iters=4, eval_interval=4))
    kept = {name: (tmp_path / name).read_bytes() for name in ('ckpt.pt', 'config.json', 'metrics.jsonl')}
    with pytest.raises(SystemExit) as stop:
        main([str(ROOT / 'config' / 'train_shakespeare_char_cpu.py'), f'--data_dir={char_data}',
              f'--out_dir={tmp_path}', how, '--learning_rate=1e3', '--min_lr=1.0', '--warmup_iters=0',
              '--max_iters=40', '--eval_interval=4', '--log_interval=1', '--eval_iters=2', '--batch_size=8'])
    assert 'training diverged' in stop.value.code, stop.value.code
    assert (tmp_path / 'ckpt.pt').read_bytes() == kept['ckpt.pt']
    assert (tmp_path / 'config.json').read_bytes() == kept['config.json']
    metrics = (tmp_path / 'metrics.jsonl').read_bytes()
    if how == '--overwrite=True':  # the replacing run's rows wait for its first save, which never came
        assert metrics == kept['metrics.jsonl']
    else:  # a resume adds to the checkpoint's history (its rows up to iteration 4): what happened after, for a look
        rows = [json.loads(line) for line in metrics.decode().splitlines()]
        before = [json.loads(line) for line in kept['metrics.jsonl'].decode().splitlines()]
        assert [r for r in rows if r['iter'] < 4] == [r for r in before if r['iter'] < 4]
        assert [r['iter'] for r in rows if r['iter'] >= 4][0] == 4 and rows[-1] != before[-1]


def test_a_resume_after_a_failed_resume_logs_each_iteration_once(char_data, tmp_path):
    """Regression: a resume appended to metrics.jsonl after the rows of a resume that had diverged past the
    checkpoint (and after the saving run's own row at the checkpoint's iteration), so iterations 4, 5, ... were
    there two or three times, with different losses."""
    train(tiny_config(tmp_path, char_data, max_iters=4, eval_interval=4))
    with pytest.raises(TrainingError, match='training diverged'):
        train(tiny_config(tmp_path, char_data, max_iters=40, eval_interval=4, learning_rate=1e3, min_lr=1.0,
                          init_from='resume'))
    (tmp_path / 'metrics.jsonl').open('a').write('{"iter": 7, "lr"')  # and half a row, from a run killed mid-write
    train(tiny_config(tmp_path, char_data, max_iters=8, eval_interval=4, init_from='resume'))
    iters = [json.loads(line)['iter'] for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert iters == list(range(9))  # steps 0-7 and the eval at 8, once each


def test_a_replacing_run_takes_over_out_dir_at_its_first_save(char_data, tmp_path):
    """--overwrite=True: once the new run has saved, config.json and metrics.jsonl are its own, from its first row."""
    train(tiny_config(tmp_path, char_data, max_iters=4, eval_interval=4))
    cfg = tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2, seed=7, overwrite=True)
    train(cfg)
    assert json.loads((tmp_path / 'config.json').read_text()) == dataclasses.asdict(cfg)
    rows = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    assert [r['iter'] for r in rows] == [0, 1, 2]  # eval and step at 0, step 1, eval 2: this run's alone


def test_a_replacing_run_that_saves_nothing_says_so(char_data, tmp_path, capsys):
    """--overwrite=True with max_iters=0 (or a run that never beats its first eval, always_save_checkpoint off):
    nothing replaces the old run's files, and the run says so instead of dropping its figures without a word."""
    train(tiny_config(tmp_path, char_data, max_iters=4, eval_interval=4))
    kept = {name: (tmp_path / name).read_bytes() for name in ('ckpt.pt', 'config.json', 'metrics.jsonl')}
    capsys.readouterr()
    train(tiny_config(tmp_path, char_data, max_iters=0, overwrite=True, always_save_checkpoint=False))
    out = capsys.readouterr().out
    assert "note: max_iters=0: nothing to train; the model is evaluated once and nothing is saved" in out
    assert (f"note: this run saved no checkpoint, so {tmp_path} keeps the checkpoint, config.json and metrics.jsonl "
            f"of the run it would have replaced") in out
    assert {name: (tmp_path / name).read_bytes() for name in kept} == kept


def test_a_two_token_vocabulary_is_not_divergence_at_step_0(tmp_path):
    """Regression: text alternating ' ' and '\\n' (a vocabulary of 2) stopped at step 0, before any training, as
    diverged: the untrained model's 1.42 was above twice ln(2) = 1.39. (An untrained model favours repeating its
    input token, which this text never does.)"""
    prep = load_script('data/shakespeare_char/prepare.py')
    text = ' \n' * 10_000
    prep.prepare(text, str(tmp_path / 'data'))
    main([str(ROOT / 'config' / 'train_shakespeare_char_cpu.py'), f"--data_dir={tmp_path / 'data'}",
          f"--out_dir={tmp_path / 'out'}", '--max_iters=4', '--eval_interval=2', '--eval_iters=1', '--batch_size=8'])
    assert load_checkpoint(str(tmp_path / 'out'), 'cpu')['iter_num'] == 4


def test_an_exploded_but_finite_model_never_replaces_the_checkpoint(char_data, tmp_path):
    """Regression: with always_save_checkpoint and no clipping, a resume at --learning_rate=1e3 saved models with
    val loss 2.3e6 and 1.7e8 (finite weights) over the good checkpoint before its loss reached inf. An eval loss
    above twice ln(65) = 8.35 (what guessing uniformly scores) is divergence: the run stops, nothing is saved."""
    train(tiny_config(tmp_path, char_data, max_iters=4, eval_interval=4))
    good = (tmp_path / 'ckpt.pt').read_bytes()
    with pytest.raises(SystemExit) as stop:
        main([str(ROOT / 'config' / 'train_shakespeare_char_cpu.py'), f'--data_dir={char_data}',
              f'--out_dir={tmp_path}', '--init_from=resume', '--learning_rate=1e3', '--min_lr=1.0', '--max_iters=40',
              '--grad_clip=0', '--always_save_checkpoint=True', '--eval_interval=4', '--log_interval=100',
              '--eval_iters=2', '--batch_size=8'])
    assert 'training diverged' in stop.value.code and 'left as it is' in stop.value.code, stop.value.code
    assert (tmp_path / 'ckpt.pt').read_bytes() == good


def test_a_checkpoint_with_non_finite_weights_is_never_written(char_data, tmp_path):
    train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))
    good = (tmp_path / 'ckpt.pt').read_bytes()
    weights = {'w': torch.ones(3), 'b': torch.tensor([1.0, float('nan')])}
    with pytest.raises(CheckpointError, match=r"refusing to save .*ckpt\.pt: the model's weights hold NaN or inf "
                                              r"\(b\); the checkpoint there was left as it is"):
        save_checkpoint({'model': weights}, str(tmp_path))
    assert (tmp_path / 'ckpt.pt').read_bytes() == good


def test_unwritable_out_dir_is_refused_before_training(char_data, tmp_path):
    """Regression: an unwritable out_dir failed only at the first save, after the training time was spent."""
    (tmp_path / 'a_file').write_text('')
    with pytest.raises(ConfigError, match=r"out_dir .*a_file/out.* lies under .*a_file, which is a file, not a "
                                          r"directory: choose another --out_dir"):
        train(tiny_config(tmp_path / 'a_file' / 'out', char_data))


def test_two_runs_cannot_share_an_out_dir_and_a_killed_run_leaves_no_lock(char_data, tmp_path):
    """Regression: two runs into one out_dir raced on ckpt.pt.tmp. The lock is an flock, which the OS drops
    when its holder dies, so a run killed with SIGKILL does not block the next."""
    holder = subprocess.Popen(
        [sys.executable, '-c', textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(ROOT)!r})
            from train import lock_out_dir
            with lock_out_dir({str(tmp_path)!r}):
                print('locked', flush=True)
                time.sleep(600)
            """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        with pytest.raises(ConfigError, match=rf"another training run \(pid {holder.pid} on .*\) is writing to "
                                              rf".*: wait for it to end, or use another --out_dir"):
            train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))
        assert not (tmp_path / 'ckpt.pt').exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / 'train.lock').exists()  # what the killed run left behind does not block:
    assert train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))['iter_num'] == 2


def test_the_lock_is_held_within_one_process_too(char_data, tmp_path):
    with lock_out_dir(str(tmp_path)):
        with pytest.raises(ConfigError, match=r"another training run \(pid \d+"):
            train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))
    train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))  # released with the with block


def test_triton_bf16_under_the_interpreter_is_refused(tmp_path, monkeypatch):
    """Triton's interpreter computes bf16 dot products wrongly: such a run trained silently on garbage attention."""
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    with pytest.raises(ConfigError, match=r"attn='triton' with dtype='bfloat16' under TRITON_INTERPRET=1.*"
                                          r"--dtype=float32"):
        train(TrainConfig(out_dir=str(tmp_path), device='cpu', attn='triton', dtype='bfloat16'))
    assert list(tmp_path.iterdir()) == []


def test_an_interpreter_that_cannot_run_the_kernel_is_refused(tmp_path, monkeypatch):
    """Triton 3.6's interpreter with numpy 2.4 fails inside the first kernel call: the run stops before any work
    with flash_kernel.interpreter_problem's message, which says what to install."""
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    monkeypatch.setattr(triton, '__version__', '3.6.0')
    monkeypatch.setattr(np, '__version__', '2.4.1')
    with pytest.raises(ConfigError, match=r"attn='triton' on 'cpu' runs in Triton's interpreter, and Triton 3\.6\.0's "
                                          r"interpreter cannot run with numpy 2\.4\.1: pip install 'numpy<2\.4'"):
        train(TrainConfig(out_dir=str(tmp_path), device='cpu', attn='triton', dtype='float32'))
    assert list(tmp_path.iterdir()) == []


# rank 1 stops answering at its third optimizer step, as a hung process would (a deadlock, a stuck file system)
HANG_ONE_RANK = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
import train

real_step, calls = train.train_step, []

def train_step(*args, **kwargs):
    calls.append(1)
    if os.environ['RANK'] == '1' and len(calls) == 3:
        if {fault!r} == 'hang':
            time.sleep(600)
        os.kill(os.getpid(), signal.SIGKILL)
    return real_step(*args, **kwargs)

train.train_step = train_step
train.main(sys.argv[1:])
"""


@pytest.mark.parametrize('fault', ['hang', 'kill'])
def test_a_hung_ddp_rank_ends_the_run_with_a_message_on_every_rank(fault, char_data, tmp_path):
    """Regression: a hung rank blocked the others for gloo's default 30 minutes, with nothing logged; a killed one
    left the other with a traceback from inside the backward."""
    script = tmp_path / 'hang_one_rank.py'
    script.write_text(HANG_ONE_RANK.format(root=str(ROOT), fault=fault))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(script),
           'config/train_shakespeare_char_cpu.py', '--device=cpu', '--backend=gloo', f'--data_dir={char_data}',
           f'--out_dir={tmp_path / "out"}', '--gradient_accumulation_steps=2', '--n_layer=1', '--n_embd=16',
           '--n_head=2', '--block_size=8', '--batch_size=2', '--max_iters=20', '--eval_interval=10',
           '--eval_iters=1', '--log_interval=1', '--ddp_timeout=10']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    if fault == 'hang':
        assert "error: rank 0 of 2 waited ddp_timeout=10 s for the other processes" in out, out[-3000:]
        assert "error: rank 1 of 2 was stopped by the launcher (SIGTERM)" in out, out[-3000:]
    else:  # rank 1 is gone; rank 0 finds out from the backend, or is stopped by the launcher first
        assert ("error: rank 0 of 2 lost its connection to another process" in out
                or "error: rank 0 of 2 was stopped by the launcher (SIGTERM)" in out), out[-3000:]
        assert "[rank0]: Traceback" not in out, out[-3000:]


def test_a_run_from_scratch_never_replaces_a_trained_checkpoint(char_data, tmp_path):
    """Regression: a second run from scratch into an out_dir replaced its checkpoint at the first save (with only
    a note printed), and emptied its metrics.jsonl at the start."""
    train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))
    kept = {name: (tmp_path / name).read_bytes() for name in ('ckpt.pt', 'metrics.jsonl', 'config.json')}
    with pytest.raises(ConfigError, match=r"ckpt\.pt holds a trained model, which this run \(init_from=scratch\) "
                                          r"would replace: continue it with --init_from=resume, train into another "
                                          r"--out_dir, or replace it with --overwrite=True"):
        train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2, seed=7))
    assert {name: (tmp_path / name).read_bytes() for name in kept} == kept
    train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2, seed=7, overwrite=True))
    assert (tmp_path / 'ckpt.pt').read_bytes() != kept['ckpt.pt']


def test_resume_with_nothing_left_to_train_says_so(char_data, tmp_path):
    """Regression: resuming with max_iters at or below the checkpoint's iteration evaluated once and exited 0."""
    train(tiny_config(tmp_path, char_data, max_iters=4, eval_interval=2))
    with pytest.raises(ConfigError, match=r"max_iters=3, and the checkpoint in .* is at iteration 4 already: raise "
                                          r"--max_iters to train on, or evaluate it with --eval_only=True"):
        train(tiny_config(tmp_path, char_data, max_iters=3, init_from='resume'))


def test_ckpt_pt_that_is_a_directory_is_named(char_data, tmp_path):
    """Regression: training from scratch failed at the first save with IsADirectoryError (a traceback) after the
    training time was spent, and resume said there was no checkpoint."""
    (tmp_path / 'ckpt.pt').mkdir()
    with pytest.raises(ConfigError, match=r"ckpt\.pt is a directory, where checkpoints are saved: move it out of the "
                                          r"way, or choose another --out_dir"):
        train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))
    with pytest.raises(CheckpointError, match=r"ckpt\.pt is a directory, not a checkpoint"):  # what sample.py loads
        load_checkpoint(str(tmp_path), 'cpu')


def test_out_dir_that_is_a_file_is_named(char_data, tmp_path):
    (tmp_path / 'a_file').write_text('keep me')
    with pytest.raises(ConfigError, match=r"out_dir .*a_file' is a file, not a directory: choose another --out_dir"):
        train(tiny_config(tmp_path / 'a_file', char_data))
    assert (tmp_path / 'a_file').read_text() == 'keep me'


def test_a_save_that_fails_leaves_the_checkpoint_and_no_temporary_file(char_data, tmp_path):
    """Regression: a full disk during a save ended in an OSError traceback and left a partial ckpt.pt.tmp. Here the
    write fails because ckpt.pt.tmp is a directory; a full disk fails at the same point of save_checkpoint."""
    train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))
    good = (tmp_path / 'ckpt.pt').read_bytes()
    (tmp_path / 'ckpt.pt.tmp').mkdir()
    ckpt = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    with pytest.raises(CheckpointError, match=r"could not save .*ckpt\.pt \(Is a directory\); the checkpoint there "
                                              r"was left as it is: free space or fix the directory"):
        save_checkpoint(ckpt, str(tmp_path))
    assert (tmp_path / 'ckpt.pt').read_bytes() == good


def test_a_checkpoint_with_non_finite_weights_is_not_loaded(char_data, tmp_path):
    """Regression: sample.py printed empty samples from a NaN model, and resume blamed the learning rate."""
    train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))
    ckpt = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    ckpt['model']['lm_head.weight'] = torch.full_like(ckpt['model']['lm_head.weight'], float('nan'))
    torch.save(ckpt, tmp_path / 'ckpt.pt')  # bypassing save_checkpoint, which refuses it
    with pytest.raises(CheckpointError, match=r"holds NaN or inf weights \((transformer\.wte\.weight|lm_head\.weight)"
                                              r".*diverged.*restore an earlier copy"):
        train(tiny_config(tmp_path, char_data, max_iters=4, init_from='resume'))


def test_a_checkpoint_whose_model_args_do_not_fit_its_weights_is_one_line(char_data, tmp_path, capsys):
    """Regression: resume printed load_state_dict's multi-line RuntimeError (sample.py already made it one line)."""
    train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))
    ckpt = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    ckpt['model_args']['n_embd'] = 64
    ckpt['model_args']['n_mystery'] = 1
    torch.save(ckpt, tmp_path / 'ckpt.pt')
    with pytest.raises(SystemExit) as stop:
        main([f'--out_dir={tmp_path}', f'--data_dir={char_data}', '--init_from=resume', '--device=cpu',
              '--compile=False', '--attn=sdpa', '--max_iters=4'])
    assert re.fullmatch(r"error: checkpoint .*ckpt\.pt does not hold a model this repo can build \(TypeError: .*"
                        r"n_mystery.*\): restore it from a copy", stop.value.code)


@pytest.mark.parametrize('setting,expected', [
    (dict(seed=2**64), "seed must be in [0, 2**32), got 18446744073709551616"),
    (dict(seed=-1), "seed must be in [0, 2**32), got -1"),
    (dict(n_head=0), "n_head must be a positive integer, got 0"),
], ids=str)
def test_settings_that_crashed_are_one_line(setting, expected, tmp_path):
    """Regression: a seed past 2**64 overflowed inside torch.manual_seed, and n_head=0 divided by zero."""
    with pytest.raises(ConfigError) as e:
        TrainConfig(out_dir=str(tmp_path), device='cpu', attn='sdpa', **setting)
    assert expected in str(e.value)


def test_a_model_too_big_for_the_device_is_refused_before_it_is_built(char_data, tmp_path):
    """Regression: n_layer=100000000 was still building its model after two minutes; n_embd=4194304 ended in the
    CPU allocator's traceback. The weights, gradients and AdamW state alone (16 bytes a parameter) are checked
    against the memory first: 12 * 1e8 * 32**2 = 1,228.8B parameters need 18,311 GiB, more than any machine has."""
    with pytest.raises(ConfigError, match=r"n_layer=100000000, n_embd=32 makes about 1,228\.8B parameters, whose "
                                          r"weights, gradients and AdamW state alone need 18,311 GiB, and this cpu has "
                                          r"[\d,]+ GiB: make the model smaller"):
        train(tiny_config(tmp_path, char_data, n_layer=100_000_000))
    with pytest.raises(ConfigError, match=r"n_layer=2, n_embd=4194304 makes about 422,212\.8B parameters"):
        train(tiny_config(tmp_path, char_data, n_embd=4194304))
    assert not (tmp_path / 'metrics.jsonl').exists()


def test_the_cpu_running_out_of_memory_is_one_line(monkeypatch):
    """torch's CPU allocator raises a plain RuntimeError; main names it and what to lower."""
    import train as train_module

    def out_of_memory(cfg):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 70368744177664 bytes.")
    monkeypatch.setattr(train_module, 'train', out_of_memory)
    with pytest.raises(SystemExit) as stop:
        main(['--device=cpu'])
    assert re.fullmatch(r"error: the CPU ran out of memory \(.*can't allocate memory.*\): lower --batch_size .*",
                        stop.value.code)


@pytest.mark.parametrize('body,expected', [
    ('import sys\nsys.exit(0)\n', "called exit(0): a config file only assigns settings"),
    ('import sys\nsys.exit(3)\n', "called exit(3)"),
], ids=['exit0', 'exit3'])
def test_a_config_file_that_exits_is_refused(body, expected, tmp_path):
    """Regression: a config file calling sys.exit ended the program silently (exit 0: nothing trained)."""
    (tmp_path / 'cfg.py').write_text(body)
    with pytest.raises(ConfigError) as e:
        parse_config([str(tmp_path / 'cfg.py')], TrainConfig)
    assert expected in str(e.value)


def test_a_config_path_that_is_a_directory_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"config file .* is a directory: give the path of a \.py file in it"):
        parse_config([str(tmp_path)], TrainConfig)


@pytest.mark.parametrize('name,body,expected', [
    ('yaml_style.py', 'seed: 7\ndropout: 0.0\n', "line 1 sets nothing (`seed: 7`): write key = value"),
    ('conf.yaml', 'seed: 7\n', "is not a .py file: a config file is Python, key = value per line"),
    ('conf.py', '{"seed": 7, "dropout": 0.0}\n', "line 1 is an expression that sets nothing: write key = value"),
    ('nested.py', 'if True:\n    max_iters: 3\n', "line 2 sets nothing (`max_iters: 3`): write key = value"),
], ids=['yaml-in-py', 'yaml', 'json-in-py', 'nested'])
def test_a_config_file_that_sets_nothing_is_refused(name, body, expected, tmp_path):
    """Regression: YAML's `key: value` in a .py file is an annotation, and a JSON dict an expression: both ran,
    set nothing, and the run trained with the defaults (seed 1337, dropout 0.2) and exit 0."""
    (tmp_path / name).write_text(body)
    with pytest.raises(ConfigError) as e:
        parse_config([str(tmp_path / name)], TrainConfig)
    assert expected in str(e.value)


def test_out_dir_that_is_the_dataset_directory_is_refused(char_data):
    """Regression: the checkpoint and config.json went in beside train.bin, and prepare.py then refused to remake
    that dataset (a directory that holds a model)."""
    with pytest.raises(ConfigError, match=r"out_dir is the dataset's directory \(.*\): give the run a directory of "
                                          r"its own, e.g. --out_dir=out-shakespeare_char"):
        tiny_config(char_data, char_data)
    with pytest.raises(ConfigError, match=r"out_dir is the dataset's directory"):  # data/<dataset> when data_dir=''
        TrainConfig(out_dir=str(ROOT / 'data' / 'shakespeare_char'), device='cpu', attn='sdpa')


def test_eval_only_needs_a_model_to_evaluate(tmp_path):
    """Regression: --eval_only=True with init_from='scratch' evaluated a random model and exited 0."""
    with pytest.raises(ConfigError, match=r"eval_only=True evaluates a trained model, and init_from='scratch' has "
                                          r"none: add --init_from=resume"):
        TrainConfig(out_dir=str(tmp_path), device='cpu', attn='sdpa', eval_only=True)


@pytest.mark.parametrize('edit,expected', [
    (lambda c: c.update(iter_num='4'), r"is damaged \(iter_num is a str\)"),
    (lambda c: c.update(best_val_loss=None), r"is damaged \(best_val_loss is a NoneType\)"),
    (lambda c: c['rng'][0].update(torch=torch.zeros(7, dtype=torch.uint8)), r"holds a random state this torch cannot "
                                                                            r"restore"),
    (lambda c: c['model_args'].update(vocab_size='x'), r"ckpt\.pt does not hold a model this repo can build "
                                                       r"\(ValueError: vocab_size must be a positive integer, "
                                                       r"got 'x'\)"),
    (lambda c: c['model_args'].update(n_head=5), r"ckpt\.pt does not hold a model this repo can build \(ValueError: "
                                                 r"n_embd \(32\) must be divisible by n_head \(5\)"),
    (lambda c: c['optimizer']['state'][0].update(exp_avg=torch.zeros(3)), r"holds optimizer state that does not fit "
                                                                          r"its model \(ValueError: exp_avg of shape "
                                                                          r"\(3,\) for a parameter of shape"),
], ids=['iter_num', 'best_val_loss', 'rng', 'vocab_size', 'n_head', 'optimizer'])
def test_a_damaged_checkpoint_is_one_line_on_resume(edit, expected, char_data, tmp_path):
    """Regression: each ended in a TypeError or RuntimeError traceback, one of them only after the first eval; n_head
    that does not divide n_embd was blamed on the run's settings, and AdamW moments of the wrong shape failed at the
    first step."""
    train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))
    ckpt = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    edit(ckpt)
    torch.save(ckpt, tmp_path / 'ckpt.pt')
    kept = (tmp_path / 'ckpt.pt').read_bytes()
    with pytest.raises(CheckpointError, match=expected):
        train(tiny_config(tmp_path, char_data, max_iters=4, init_from='resume'))
    assert (tmp_path / 'ckpt.pt').read_bytes() == kept


def test_ctrl_c_during_a_save_keeps_the_checkpoint_and_leaves_no_temporary_file(char_data, tmp_path, monkeypatch):
    """Regression: Ctrl-C inside torch.save printed a traceback (its zip writer fails on its way out, "unexpected
    pos") and left a half-written ckpt.pt.tmp behind."""
    train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))
    kept = (tmp_path / 'ckpt.pt').read_bytes()

    def interrupted_save(obj, f):
        f.write(b'half a checkpoint')
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 17")

    monkeypatch.setattr(torch, 'save', interrupted_save)
    with pytest.raises(SystemExit) as stop:
        main([f'--out_dir={tmp_path}', f'--data_dir={char_data}', '--init_from=resume', '--device=cpu',
              '--compile=False', '--attn=sdpa', '--max_iters=4', '--eval_interval=2', '--eval_iters=2',
              '--batch_size=8', '--always_save_checkpoint=True'])
    assert stop.value.code == (f"interrupted: {tmp_path / 'ckpt.pt'} is complete (saves are atomic, and one cut short "
                               f"leaves the last): continue from it with --init_from=resume")
    assert (tmp_path / 'ckpt.pt').read_bytes() == kept and not (tmp_path / 'ckpt.pt.tmp').exists()


def test_ctrl_c_before_any_save_says_nothing_was_saved(tmp_path, monkeypatch):
    """Regression: it advised --init_from=resume, which then found no checkpoint."""
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(sys.modules['train'], 'train', interrupted)
    with pytest.raises(SystemExit) as stop:
        main([f'--out_dir={tmp_path}', '--device=cpu', '--attn=sdpa'])
    assert stop.value.code == f"interrupted: no checkpoint was saved in {tmp_path}"


def test_resume_names_the_settings_that_differ_from_the_checkpoints_run(char_data, tmp_path, capsys):
    """Regression: a resume without the saving run's config file trained on at the defaults without a word."""
    train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))
    capsys.readouterr()
    train(tiny_config(tmp_path, char_data, max_iters=4, eval_interval=2, init_from='resume', batch_size=4,
                      dropout=0.1))
    out = capsys.readouterr().out
    assert "resume: settings that differ from the checkpoint's run: batch_size 8 -> 4, dropout 0.0 -> 0.1\n" in out


def test_resume_takes_this_runs_adamw_settings(char_data, tmp_path):
    """Regression: a resume kept the checkpoint's betas and weight decay without a word, while its config.json (and
    the next checkpoint's config) recorded the new ones."""
    train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))
    train(tiny_config(tmp_path, char_data, max_iters=4, eval_interval=2, init_from='resume', beta1=0.5, beta2=0.6,
                      weight_decay=0.7))
    groups = load_checkpoint(str(tmp_path), 'cpu')['optimizer']['param_groups']
    assert [(tuple(g['betas']), g['weight_decay']) for g in groups] == [((0.5, 0.6), 0.7), ((0.5, 0.6), 0.0)]


def test_a_checkpoint_that_is_not_a_dict_is_one_line(tmp_path):
    """Regression: a ckpt.pt holding a bare tensor failed inside Tensor.__contains__."""
    torch.save(torch.zeros(3), tmp_path / 'ckpt.pt')
    with pytest.raises(CheckpointError, match=r"ckpt\.pt holds a Tensor, not a checkpoint"):
        load_checkpoint(str(tmp_path), 'cpu')


def test_a_checkpoint_too_big_for_memory_is_not_called_corrupt(char_data, tmp_path, monkeypatch):
    """Regression: a sound checkpoint that the machine had no memory to load was called corrupt, with the advice
    to restore it from a copy or train again."""
    train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))

    def no_memory(*args, **kwargs):  # what torch's CPU allocator raises
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1048576 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(torch, 'load', no_memory)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(tmp_path), 'cpu')
    assert re.fullmatch(r"not enough memory on cpu to load checkpoint .*ckpt\.pt \(0 MiB; .*can't allocate memory.*\): "
                        r"the file was left as it is; free memory and try again", str(e.value)), str(e.value)


def test_a_checkpoint_without_optimizer_state_resumes_with_a_fresh_optimizer(char_data, tmp_path, capsys):
    """Regression: KeyError: 'optimizer'. A checkpoint stripped for sharing (or nanoGPT's) holds weights only."""
    train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))
    ckpt = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    del ckpt['optimizer']
    torch.save(ckpt, tmp_path / 'ckpt.pt')
    assert train(tiny_config(tmp_path, char_data, max_iters=4, init_from='resume'))['iter_num'] == 4
    assert "holds no optimizer state: AdamW starts afresh from its weights" in capsys.readouterr().out


@pytest.mark.parametrize('env,expected', [
    ({'RANK': '0'}, r"RANK is set, so this is one process of a distributed run, but RANK=0, LOCAL_RANK=\(unset\), "
                    r"WORLD_SIZE=\(unset\): start it with torchrun"),
    ({'RANK': 'abc', 'LOCAL_RANK': '0', 'WORLD_SIZE': '1'}, r"but RANK=abc, LOCAL_RANK=0, WORLD_SIZE=1"),
    ({'RANK': '0', 'LOCAL_RANK': '0', 'WORLD_SIZE': '0'}, r"RANK=0, LOCAL_RANK=0, WORLD_SIZE=0 do not describe a "
                                                          r"process of a distributed run"),
], ids=['rank-only', 'not-a-number', 'no-world'])
def test_torchrun_variables_set_by_hand_are_one_line(env, expected, char_data, tmp_path, monkeypatch):
    """Regression: RANK without WORLD_SIZE was a KeyError, RANK=abc a ValueError, WORLD_SIZE=0 a ZeroDivisionError."""
    for key in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE'):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=expected):
        train(tiny_config(tmp_path, char_data, backend='gloo'))


def test_a_process_group_that_cannot_form_is_one_line(char_data, tmp_path, monkeypatch):
    """Regression: without MASTER_ADDR (torchrun sets it), init_process_group's ValueError was a traceback."""
    for key, value in {'RANK': '0', 'LOCAL_RANK': '0', 'WORLD_SIZE': '1'}.items():
        monkeypatch.setenv(key, value)
    for key in ('MASTER_ADDR', 'MASTER_PORT'):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(TrainingError, match=r"rank 0 could not join the other processes \(.*MASTER_ADDR.*\): start "
                                            r"every process with torchrun"):
        train(tiny_config(tmp_path, char_data, backend='gloo'))


def test_a_config_file_may_import_and_define_helpers(tmp_path):
    """Regression of the stricter config files: `from math import sqrt` and a helper function were taken for
    unknown settings. A config file may compute its values; only its assignments are settings."""
    (tmp_path / 'cfg.py').write_text('"""a config"""\nfrom math import sqrt\n\n\ndef half(x):\n    return x // 2\n\n\n'
                                     'n_embd = int(sqrt(4096)) * 6\nbatch_size = half(64)\nprint("read")\n')
    cfg = parse_config([str(tmp_path / 'cfg.py')], TrainConfig)
    assert (cfg.n_embd, cfg.batch_size) == (384, 32)


def test_eval_only_leaves_the_runs_settings_and_checkpoint(char_data, tmp_path):
    """Regression: a look with --eval_only rewrote config.json, which then no longer described the trained run."""
    train(tiny_config(tmp_path, char_data, max_iters=2, eval_interval=2))
    kept = {name: (tmp_path / name).read_bytes() for name in ('ckpt.pt', 'config.json')}
    result = train(tiny_config(tmp_path, char_data, max_iters=2, init_from='resume', eval_only=True))
    assert result['val_loss'] is not None
    assert {name: (tmp_path / name).read_bytes() for name in kept} == kept


def test_a_split_shorter_than_the_context_says_what_to_do(char_data, tmp_path):
    with pytest.raises(ConfigError, match=r"the val split has 111540 tokens, not more than block_size=200000: lower "
                                          r"--block_size, or prepare a longer text into "):
        train(tiny_config(tmp_path, char_data, block_size=200_000))


def test_a_resume_without_a_checkpoint_leaves_no_out_dir_behind(char_data, tmp_path):
    """Regression: --init_from=resume into a directory that did not exist said "no checkpoint", after making the
    directory and its train.lock."""
    out = tmp_path / 'never-trained'
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*never-trained/ckpt\.pt: train one first"):
        train(tiny_config(out, char_data, init_from='resume'))
    assert not out.exists()
