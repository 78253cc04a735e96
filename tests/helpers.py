"""Shared pieces of the test modules (fixtures are imported by name where used; conftest.py is not ours)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / 'shared'
SHAKESPEARE = SHARED / 'data' / 'tinyshakespeare' / 'input.txt'
TIKTOKEN_CACHE = SHARED / 'tiktoken_cache'

requires_shared = pytest.mark.skipif(
    not SHAKESPEARE.is_file(), reason=f"{SHAKESPEARE} is absent: these tests need a local copy of input.txt there")
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
        pytest.skip(f"{SHAKESPEARE} is absent: these tests need a local copy of input.txt there")
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


# ---------------------------------------------------------------------------------------------------------------
# The attention kernels (tests/test_flash_kernel.py, tests/test_flash_hopper.py)

# Relative L2 error allowed against the fp32 reference, per input dtype. fp32 runs true fp32 dots (no tf32), so
# only summation order differs: measured <= 5e-7 on the interpreter, 1e-5 leaves 20x. For fp16/bf16 the kernel
# must round P to the input dtype before the P@V dot and round O and the gradients on the way out, which alone
# costs about one unit of the dtype's half-ulp (fp16 2.4e-4, bf16 2e-3; measured 3e-4 for fp16 in the
# interpreter): the tolerance is 8x that half-ulp. On the GPU the tests also hold us to PyTorch's own SDPA error.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# At T=1 the true dq and dk are exactly zero (a softmax over one key has no gradient), so a purely relative check
# divides by zero. What we get there is rounding noise: dS = P * (dP - delta) with delta = rowsum(dO * O) taken
# from the O rounded to the input dtype (as FlashAttention does), so dP - delta is off by about half an ulp of an
# O(1) value. The absolute floor, per element RMS, is that half-ulp: fp16 4.9e-4, bf16 3.9e-3. In fp32 O is not
# rounded and what is left is summation order: dP and delta are two length-D sums of unit-normal products taken in
# different orders, whose rounding errors (u = 2^-24 per add, on partial sums that grow like sqrt(i)) leave them
# about u * D apart, and dq = scale * dS K carries that at the tests' largest scale, 0.3: 0.3 * u * 128 = 2.3e-6 at
# head dim 128. The floor is 3x that. (It was 1e-6, which a GPU run at head dim 64 exceeded at 1.4e-6, 1.2x the
# 1.1e-6 this predicts there: T=1 has only one dS per head, so its RMS does not average out.)
ABS = {torch.float32: 7e-6, torch.float16: 5e-4, torch.bfloat16: 4e-3}


def grad_like(t, seed=0):
    """An upstream gradient for t from its own generator, so that a failing draw is the same draw on every run."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(t.shape, generator=g).to(device=t.device, dtype=t.dtype)


@pytest.fixture
def nan_empty(monkeypatch):
    """torch.empty returns NaN-filled memory, so any output element the kernels fail to write shows up."""
    real_empty = torch.empty

    def poisoned(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", poisoned)


def qkv_like_the_model(B, H, T, D, dtype, device=TRITON_DEVICE, seed=0):
    """q, k, v as the model makes them: views of one (B, T, 3*H*D) projection, so their strides are not dense."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    qkv = torch.randn(B, T, 3 * H * D, generator=g).to(device=device, dtype=dtype)
    q, k, v = qkv.split(H * D, dim=2)
    return [t.view(B, T, H, D).transpose(1, 2).detach().requires_grad_() for t in (q, k, v)]


def rel_err(got, want):
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def ref_fwd_bwd(q, k, v, do, causal, **kw):
    """fp32 reference output and gradients, computed one (batch, head) at a time so long T fits in memory."""
    from flash_kernel import attention_ref

    B, H = q.shape[:2]
    outs = [torch.empty(q.shape, dtype=torch.float32, device=q.device) for _ in range(4)]
    for b in range(B):
        for h in range(H):
            qi, ki, vi = [t[b, h].detach().float().requires_grad_() for t in (q, k, v)]
            mask = kw.get("dropout_mask")
            extra = dict(dropout_mask=mask[b, h], dropout_p=kw["dropout_p"]) if mask is not None else {}
            o = attention_ref(qi, ki, vi, causal=causal, softmax_scale=kw.get("softmax_scale"), **extra)
            o.backward(do[b, h].float())
            for dst, src in zip(outs, (o.detach(), qi.grad, ki.grad, vi.grad)):
                dst[b, h] = src
    return outs


def ours_fwd_bwd(q, k, v, do, causal, **kw):
    """flash_attn's output and gradients; kw goes to flash_attn (dropout_p, softmax_scale, _backend, ...)."""
    from flash_kernel import flash_attn

    o = flash_attn(q, k, v, causal=causal, **kw)
    o.backward(do)
    grads = [q.grad, k.grad, v.grad]
    q.grad = k.grad = v.grad = None
    return [o.detach()] + grads


def assert_close(got, want, dtype, what):
    for name, g, w in zip(("o", "dq", "dk", "dv"), got, want):
        assert torch.isfinite(g).all(), f"{name}: non-finite values (an unwritten tile?) {what}"
        err = (g.float() - w).norm().item()
        bound = TOL[dtype] * w.norm().item() + ABS[dtype] * math.sqrt(w.numel())
        assert err <= bound, f"{name}: err {err:.3e} > {bound:.3e} ({what})"


def launched_kernels(fn) -> list:
    """The names of what torch's profiler saw fn() run on the GPU: the kernels it launched, by name."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events()]


def call_without_interpreter(module: str, function: str, *args):
    """tools/<module>.py's function(*args), run in a fresh Python without TRITON_INTERPRET and returned through
    JSON: under the interpreter (which conftest.py turns on without a GPU) the kernels are not compilable objects,
    and Triton reads the switch when a kernel is defined, so this process cannot turn it off."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (f"import json, sys; sys.path[:0] = [{str(ROOT)!r}, {str(ROOT / 'tools')!r}]; import {module}; "
            f"print(json.dumps({module}.{function}(*json.loads(sys.argv[1]))))")
    run = subprocess.run([sys.executable, "-c", code, json.dumps(args)], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.splitlines()[-1])
