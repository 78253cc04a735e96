"""train.py end to end on tiny models: each attention implementation, checkpoints and resume, DDP over gloo."""

import gc
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

from helpers import ROOT, TRITON_DEVICE, char_data, tiny_config  # noqa: F401 (fixture)
from train import train
from utils import CheckpointError, load_checkpoint, model_from_checkpoint


@pytest.mark.parametrize('attn', ['sdpa', 'naive', 'triton'])
def test_a_few_iterations_learn(attn, char_data, tmp_path):
    device = TRITON_DEVICE if attn == 'triton' else 'cpu'
    result = train(tiny_config(tmp_path, char_data, attn=attn, device=device, dropout=0.1))
    (it0, train0, val0), *_, (it_end, train_end, val_end) = result['losses']
    assert (it0, it_end) == (0, 10) and result['iter_num'] == 10
    assert math.isfinite(train_end) and math.isfinite(val_end)
    assert train_end < train0 - 0.3 and val_end < val0 - 0.3  # from ~ln(65)=4.17 at init
    assert (tmp_path / 'ckpt.pt').is_file() and not (tmp_path / 'ckpt.pt.tmp').exists()
    assert len(result['timings']) == 9 and result['ms_per_iter'] > 0  # iters 1..9: the first has the warm-up


def test_data_order_and_init_do_not_depend_on_attn(char_data, tmp_path):
    # same seed, no dropout: sdpa and naive see the same batches from the same weights, so their curves agree
    a = train(tiny_config(tmp_path / 'a', char_data, attn='sdpa'))
    b = train(tiny_config(tmp_path / 'b', char_data, attn='naive'))
    for (ia, ta, va), (ib, tb, vb) in zip(a['losses'], b['losses']):
        assert ia == ib and abs(ta - tb) < 1e-4 and abs(va - vb) < 1e-4


def test_resume_continues_from_the_checkpoint(char_data, tmp_path):
    first = train(tiny_config(tmp_path, char_data, max_iters=6, eval_interval=3))
    saved = load_checkpoint(str(tmp_path), 'cpu')
    assert saved['iter_num'] == 6

    resumed = train(tiny_config(tmp_path, char_data, max_iters=9, eval_interval=3, init_from='resume'))
    assert resumed['iter_num'] == 9
    # the resumed run starts at iter 6 with the saved weights: its eval there scores exactly what the first
    # run scored (same weights, same fixed eval batches)
    assert resumed['losses'][0] == first['losses'][-1]
    assert resumed['losses'][-1][0] == 9

    # the loaded weights are the saved ones
    model = model_from_checkpoint(saved, attn='naive')
    for k, v in saved['model'].items():
        assert torch.equal(model.state_dict()[k], v), k
    # and the optimizer went on counting from the saved state
    final = load_checkpoint(str(tmp_path), 'cpu')
    assert final['iter_num'] == 9
    assert all(int(s['step']) == 9 for s in final['optimizer']['state'].values())


def test_corrupt_checkpoint_is_a_clear_error_and_left_alone(char_data, tmp_path):
    (tmp_path / 'ckpt.pt').write_bytes(b'not a checkpoint')
    with pytest.raises(CheckpointError, match=r"ckpt\.pt is corrupt.*left as it is"):
        train(tiny_config(tmp_path, char_data, init_from='resume'))
    assert (tmp_path / 'ckpt.pt').read_bytes() == b'not a checkpoint'


def test_missing_checkpoint_says_train_first(char_data, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint.*train one first"):
        train(tiny_config(tmp_path, char_data, init_from='resume'))


def test_missing_data_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train\.bin and val\.bin and meta\.pkl not found in .*no_data: "
                                                r"prepare the dataset first.*prepare\.py.*shakespeare_char"):
        train(tiny_config(tmp_path / 'out', tmp_path / 'no_data'))


def test_a_distributed_run_frees_its_ddp_wrapper_before_it_returns(char_data, tmp_path, monkeypatch):
    """Regression: the DDP wrapper outlived train() until a garbage collection (a reference cycle kept train()'s
    frame), often the one at interpreter exit, and with it the gloo group it holds; tearing that down there
    sometimes aborted a process after a finished run. A one-process group, automatic collection off."""
    from torch.nn.parallel import DistributedDataParallel
    with socket.socket() as s:  # a free local port for the group's store
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    env = {'RANK': '0', 'LOCAL_RANK': '0', 'WORLD_SIZE': '1', 'MASTER_ADDR': '127.0.0.1', 'MASTER_PORT': str(port)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    gc.collect()
    gc.disable()
    try:
        result = train(tiny_config(tmp_path, char_data, backend='gloo', max_iters=2, eval_interval=2))
        left = [o for o in gc.get_objects() if isinstance(o, DistributedDataParallel)]
    finally:
        gc.enable()
    assert result['iter_num'] == 2
    assert left == []
    assert not torch.distributed.is_initialized()


def test_two_processes_on_cpu_with_gloo(char_data, tmp_path):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           'train.py', 'config/train_shakespeare_char_cpu.py', '--device=cpu', '--backend=gloo',
           f'--data_dir={char_data}', f'--out_dir={tmp_path}', '--gradient_accumulation_steps=2',
           '--n_layer=2', '--n_embd=32', '--n_head=2', '--block_size=16', '--batch_size=4',
           '--max_iters=4', '--eval_interval=2', '--eval_iters=2', '--log_interval=1', '--always_save_checkpoint=True']
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}  # two processes on two cores: one thread each
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert '2 process(es)' in r.stdout and 'step 4:' in r.stdout
    assert r.stdout.count('number of parameters') == 1  # only the master logs
    ckpt = load_checkpoint(str(tmp_path), 'cpu')
    assert ckpt['iter_num'] == 4 and len(ckpt['rng']) == 2  # every rank's random state, for an exact resume

    r = subprocess.run([*cmd, '--init_from=resume', '--max_iters=6'], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'no random state' not in r.stdout and 'step 6:' in r.stdout
    assert load_checkpoint(str(tmp_path), 'cpu')['iter_num'] == 6
