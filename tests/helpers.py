"""Shared pieces of the test modules (fixtures are imported by name where used; conftest.py is not ours)."""

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / 'shared'
SHAKESPEARE = SHARED / 'data' / 'tinyshakespeare' / 'input.txt'
TIKTOKEN_CACHE = SHARED / 'tiktoken_cache'

requires_shared = pytest.mark.skipif(
    not SHAKESPEARE.is_file(), reason=f"{SHAKESPEARE} is absent: these tests need ../shared beside the repo")
# skip only while the kernel's file has not landed; once it exists, an import error must fail the test
requires_flash_kernel = pytest.mark.skipif(
    not (ROOT / 'flash_kernel.py').is_file(), reason="flash_kernel.py has not landed yet")
# the Triton kernel runs on a GPU, or on CPU tensors through the interpreter (conftest.py sets it up)
TRITON_DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


def load_script(relpath: str):
    """Import a script that is not on a package path (data/*/prepare.py) under a unique module name."""
    path = ROOT / relpath
    spec = importlib.util.spec_from_file_location(relpath.replace('/', '_').removesuffix('.py'), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def char_data(tmp_path_factory) -> str:
    """Tiny Shakespeare prepared at character level into a temporary directory; returns that directory."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"{SHAKESPEARE} is absent: these tests need ../shared beside the repo")
    prep = load_script('data/shakespeare_char/prepare.py')
    out = tmp_path_factory.mktemp('shakespeare_char')
    prep.prepare(SHAKESPEARE.read_text(encoding='utf-8'), str(out))
    return str(out)


def tiny_config(out_dir, data_dir, **overrides):
    """A TrainConfig small enough for a few CPU iterations a second (the interpreter included)."""
    from train import TrainConfig
    settings = dict(
        out_dir=str(out_dir), data_dir=str(data_dir), dataset='shakespeare_char',
        n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=8, dropout=0.0, bias=True,
        gradient_accumulation_steps=1, max_iters=10, eval_interval=5, eval_iters=2, log_interval=1,
        learning_rate=1e-2, warmup_iters=0, lr_decay_iters=10, min_lr=1e-3, beta2=0.99,
        always_save_checkpoint=True, device='cpu', dtype='float32', compile=False, attn='sdpa', seed=1337,
    )
    settings.update(overrides)
    return TrainConfig(**settings)
