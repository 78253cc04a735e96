"""
flash_attn against the fp32 reference: output and all three gradients, over hostile shapes, every supported head
dim and dtype, causal and not, with dropout, under torch.compile, and on bad input; flash_attn_qkvpacked against
flash_attn.

Without a GPU this runs the same kernels through Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1)
on fp32 and fp16; bf16 and the large shapes run on the GPU only (the interpreter computes tl.dot on bf16
operands wrongly: seen with triton 3.8 and 3.9).
"""
import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import triton

import flash_kernel
from flash_kernel import dropout_mask, flash_attn, flash_attn_qkvpacked
from helpers import TRITON_DEVICE as DEVICE
from helpers import (assert_close, grad_like, nan_empty, ours_fwd_bwd, qkv_like_the_model,  # noqa: F401 (fixture)
                     ref_fwd_bwd, rel_err)

GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")

# B, H, T, D: ragged on purpose (T=1, 2, one past a block, primes), B*H > 1, and one T spanning several blocks
SHAPES = [(1, 1, 1), (1, 2, 2), (2, 3, 17), (1, 2, 63), (2, 1, 111), (1, 2, 257), (1, 1, 600)]
HEAD_DIMS = [16, 32, 64, 128]
CPU_DTYPES = [torch.float32, torch.float16]
ALL_DTYPES = CPU_DTYPES + [torch.bfloat16]


def _dtypes():
    return [pytest.param(d, id=str(d).removeprefix("torch.")) for d in ALL_DTYPES if GPU or d in CPU_DTYPES]


@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("D", HEAD_DIMS)
@pytest.mark.parametrize("B,H,T", SHAPES, ids=lambda s: str(s))
def test_matches_reference(B, H, T, D, dtype, nan_empty):
    q, k, v = qkv_like_the_model(B, H, T, D, dtype)
    do = grad_like(q)
    got = ours_fwd_bwd(q, k, v, do, causal=True)
    want = ref_fwd_bwd(q, k, v, do, causal=True)
    assert_close(got, want, dtype, f"B={B} H={H} T={T} D={D} {dtype}")


@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("B,H,T,D", [(1, 2, 1, 64), (2, 1, 63, 32), (1, 1, 200, 64), (1, 2, 129, 128)], ids=str)
def test_non_causal_and_custom_scale(B, H, T, D, dtype, nan_empty):
    q, k, v = qkv_like_the_model(B, H, T, D, dtype, seed=1)
    do = grad_like(q)
    got = ours_fwd_bwd(q, k, v, do, causal=False, softmax_scale=0.3)
    want = ref_fwd_bwd(q, k, v, do, causal=False, softmax_scale=0.3)
    assert_close(got, want, dtype, f"non-causal B={B} H={H} T={T} D={D} {dtype}")


def test_contiguous_and_strided_inputs_agree():
    q, k, v = qkv_like_the_model(2, 2, 45, 32, torch.float32)
    dense = [t.detach().contiguous() for t in (q, k, v)]
    assert not q.is_contiguous() and dense[0].is_contiguous()
    torch.testing.assert_close(flash_attn(q, k, v), flash_attn(*dense), rtol=0, atol=0)


def test_output_layout_makes_the_model_transpose_free():
    q, k, v = qkv_like_the_model(2, 3, 10, 16, torch.float32)
    y = flash_attn(q, k, v)
    assert y.shape == q.shape
    assert y.transpose(1, 2).is_contiguous()  # (B, T, H, D) in memory: .view(B, T, C) needs no copy


def test_expanded_upstream_gradient():
    """Regression: y.sum().backward() hands the backward a dO with all-zero strides; it must still be right."""
    q, k, v = qkv_like_the_model(1, 2, 33, 16, torch.float32)
    flash_attn(q, k, v).sum().backward()
    want = ref_fwd_bwd(q, k, v, torch.ones(q.shape, device=q.device), causal=True)
    assert_close([flash_attn(q, k, v).detach(), q.grad, k.grad, v.grad], want, torch.float32, "expanded dO")


# ---------------------------------------------------------------------------------------------------------------
# Packed q, k, v


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("B,H,T,D", [(1, 1, 1, 16), (2, 3, 70, 32), (1, 2, 129, 64)], ids=str)
def test_qkvpacked_is_flash_attn_on_its_views(B, H, T, D, dtype, dropout_p, nan_empty):
    # The same kernels read the same strides and write the same values, only into one gradient tensor instead of
    # three, so output and gradients must be bit-identical to flash_attn on q, k, v views of the same tensor
    g = torch.Generator(device="cpu").manual_seed(3)
    packed = torch.randn(B, T, 3, H, D, generator=g).to(device=DEVICE, dtype=dtype).requires_grad_()
    q, k, v = [t.transpose(1, 2).detach().requires_grad_() for t in packed.detach().unbind(2)]
    do = torch.randn(B, T, H, D, generator=g).to(device=DEVICE, dtype=dtype)
    torch.manual_seed(5)
    y = flash_attn_qkvpacked(packed, dropout_p=dropout_p)
    y.backward(do)
    torch.manual_seed(5)  # the same dropout seed for both calls
    want = ours_fwd_bwd(q, k, v, do.transpose(1, 2), causal=True, dropout_p=dropout_p)
    assert y.shape == (B, T, H, D) and y.is_contiguous()
    assert torch.equal(y, want[0].transpose(1, 2))
    assert torch.equal(packed.grad, torch.stack([t.transpose(1, 2) for t in want[1:]], dim=2))


def test_qkvpacked_gradient_needs_no_concatenation():
    # what the packed call is for: autograd's gradient for qkv is the kernel's own output, with nothing after it
    packed = torch.randn(1, 9, 3, 2, 16, device=DEVICE).requires_grad_()
    y = flash_attn_qkvpacked(packed)
    assert type(y.grad_fn).__name__ == "_FlashAttentionQKVPackedBackward"
    assert y.grad_fn.next_functions[0][0].variable is packed  # straight into the leaf's AccumulateGrad


@pytest.mark.parametrize("shape", [(2, 8, 96), (1, 8, 2, 2, 16), (1, 8, 3, 2)], ids=str)
def test_qkvpacked_refuses_other_shapes(shape):
    with pytest.raises(ValueError, match=r"5-d tensor shaped \(B, T, 3, H, D\)"):
        flash_attn_qkvpacked(_t(*shape))


# ---------------------------------------------------------------------------------------------------------------
# Dropout


@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("B,H,T,D", [(1, 2, 1, 16), (2, 2, 70, 32), (1, 1, 257, 64)], ids=str)
def test_dropout_matches_reference_with_the_same_mask(B, H, T, D, dtype, nan_empty):
    p = 0.3
    q, k, v = qkv_like_the_model(B, H, T, D, dtype, seed=2)
    do = torch.randn(q.shape, device=q.device, dtype=dtype)
    torch.manual_seed(123)
    got = ours_fwd_bwd(q, k, v, do, causal=True, dropout_p=p)
    torch.manual_seed(123)  # the seed flash_attn drew: the same draw from the same generator state
    mask = dropout_mask(flash_kernel._draw_seed(q.device), B, H, T, p)
    want = ref_fwd_bwd(q, k, v, do, causal=True, dropout_mask=mask, dropout_p=p)
    assert_close(got, want, dtype, f"dropout B={B} H={H} T={T} D={D} {dtype}")


def test_dropout_zero_is_bit_identical_to_no_dropout():
    q, k, v = qkv_like_the_model(2, 2, 77, 64, torch.float16)
    do = torch.randn(q.shape, device=q.device, dtype=q.dtype)
    plain = ours_fwd_bwd(q, k, v, do, causal=True)
    zero = ours_fwd_bwd(q, k, v, do, causal=True, dropout_p=0.0)
    for a, b in zip(plain, zero):
        assert torch.equal(a, b)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_keep_rate(p):
    B, H, T = 2, 2, 256
    keep = dropout_mask(flash_kernel._draw_seed(torch.device(DEVICE)), B, H, T, p).float()
    n = keep.numel()
    sigma = math.sqrt(p * (1 - p) / n)  # binomial standard error of the mean keep rate
    assert abs(keep.mean().item() - (1 - p)) < 5 * sigma, f"keep rate {keep.mean().item():.4f}, want {1 - p}"
    # Independent draws agree on a fraction p^2 + (1-p)^2 of entries, not all. The 0.02 bound: each agreement rate
    # below is a mean over >= 65k entries, standard error <= 0.002.
    expected_agree = p * p + (1 - p) ** 2
    # across heads
    agree = (keep[0, 0] == keep[0, 1]).float().mean().item()
    assert abs(agree - expected_agree) < 0.02
    # one Philox call feeds 8 neighbouring columns; each column still gets its own bits, as does each row
    for name, a, b in (("column c, c+1", keep[..., :-1], keep[..., 1:]), ("column c, c+4", keep[..., :-4], keep[..., 4:]),
                       ("row r, r+1", keep[:, :, :-1], keep[:, :, 1:])):
        agree = (a == b).float().mean().item()
        assert abs(agree - expected_agree) < 0.02, f"{name} agree on {agree:.4f}, want {expected_agree:.4f}"


def test_dropout_follows_torch_seed():
    q, k, v = qkv_like_the_model(1, 2, 50, 32, torch.float32)
    torch.manual_seed(0)
    a = flash_attn(q, k, v, dropout_p=0.2)
    b = flash_attn(q, k, v, dropout_p=0.2)
    torch.manual_seed(0)
    c = flash_attn(q, k, v, dropout_p=0.2)
    assert torch.equal(a, c), "same torch seed must give the same output"
    assert not torch.equal(a, b), "a new call must draw a new mask"


# ---------------------------------------------------------------------------------------------------------------
# torch.compile


def test_compiles_without_graph_breaks():
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward through the custom ops."""
    q, k, v = qkv_like_the_model(2, 2, 40, 32, torch.float32)
    do = torch.randn(q.shape, device=q.device)
    eager = ours_fwd_bwd(q, k, v, do, causal=True)
    compiled_attn = torch.compile(flash_attn, fullgraph=True, backend="aot_eager")
    o = compiled_attn(q, k, v)
    o.backward(do)
    for name, a, b in zip(("o", "dq", "dk", "dv"), eager, (o, q.grad, k.grad, v.grad)):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


def test_compiles_with_dropout():
    q, k, v = qkv_like_the_model(1, 2, 40, 32, torch.float32)
    compiled_attn = torch.compile(lambda q, k, v: flash_attn(q, k, v, dropout_p=0.25), fullgraph=True, backend="aot_eager")
    torch.manual_seed(7)
    a = compiled_attn(q, k, v)
    torch.manual_seed(7)
    b = compiled_attn(q, k, v)
    assert torch.equal(a, b)
    a.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def _t(*shape, dtype=torch.float32, device=DEVICE):
    return torch.randn(*shape, dtype=dtype, device=device)


@pytest.mark.parametrize(
    "args,message",
    [
        ((_t(2, 16, 64), _t(2, 16, 64), _t(2, 16, 64)), "4-d tensor"),
        ((_t(1, 2, 8, 32), _t(1, 2, 9, 32), _t(1, 2, 8, 32)), "same shape"),
        ((_t(1, 2, 8, 48), _t(1, 2, 8, 48), _t(1, 2, 8, 48)), "head dim 48 is not supported"),
        ((_t(1, 2, 8, 256), _t(1, 2, 8, 256), _t(1, 2, 8, 256)), "supported head dims are (16, 32, 64, 128)"),
        ((_t(1, 2, 8, 32, dtype=torch.float64),) * 3, "dtype torch.float64 is not supported"),
        ((_t(1, 2, 8, 32), _t(1, 2, 8, 32, dtype=torch.float16), _t(1, 2, 8, 32)), "share a dtype"),
        ((_t(1, 2, 32, 8).transpose(-1, -2),) * 3, "unit stride"),
        ((_t(1, 2, 0, 32),) * 3, "empty input"),
    ],
    ids=["rank", "shapes", "head-dim-48", "head-dim-256", "float64", "mixed-dtypes", "strided-head-dim", "empty"],
)
def test_bad_input_is_refused_clearly(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        flash_attn(*args)


def test_too_many_heads_for_the_grid():
    x = _t(1, 1, 4, 16).expand(65536, 1, 4, 16)  # a view: no memory for 65536 real copies
    with pytest.raises(ValueError, match="more than 65535"):
        flash_attn(x, x, x)


def test_offsets_past_32_bits_are_refused():
    # a row stride of 2**31 elements; on the meta device, which needs no storage (the check comes before the device's)
    x = torch.empty_strided((1, 1, 2, 16), (0, 0, 2**31, 1), device="meta")
    with pytest.raises(ValueError, match="32-bit offsets"):
        flash_attn(x, x, x)


def test_bad_dropout_p():
    x = _t(1, 1, 4, 16)
    with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
        flash_attn(x, x, x, dropout_p=1.0)
    # 0.999999 passed the range check, and its 16-bit threshold rounded to "drop everything": all zeros, always
    with pytest.raises(ValueError, match=r"dropout_p=0.999999 rounds to 1 at the kernels' 16-bit resolution"):
        flash_attn(x, x, x, dropout_p=0.999999)


@pytest.mark.parametrize("causal", [None, "False", 1])
def test_causal_must_be_a_bool(causal):
    """Regression: causal was taken through bool(): None ran non-causal attention, "False" causal."""
    x = _t(1, 1, 4, 16)
    with pytest.raises(ValueError, match=r"causal must be True or False"):
        flash_attn(x, x, x, causal=causal)


@pytest.mark.skipif(GPU, reason="on a GPU machine CPU tensors are refused before their dtype is looked at")
def test_bf16_in_the_interpreter_is_refused():
    """Regression: bf16 CPU tensors ran through the interpreter, whose bf16 dot products are wrong (errors of 8e8)."""
    x = _t(1, 1, 17, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"bfloat16 on the CPU runs in Triton's interpreter"):
        flash_attn(x, x, x)


@pytest.mark.parametrize("scale", [0.0, -0.125, float("nan"), float("inf"), "a", True])  # "a": float()'s own error
def test_bad_softmax_scale(scale):
    x = _t(1, 1, 4, 16)
    with pytest.raises(ValueError, match="flash_attn: softmax_scale must be a positive finite number or None"):
        flash_attn(x, x, x, softmax_scale=scale)


def test_cpu_tensors_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.randn(1, 1, 4, 16)
    with pytest.raises(RuntimeError, match="runs on CUDA GPUs only.*attn='sdpa'"):
        flash_attn(x, x, x)


# ---------------------------------------------------------------------------------------------------------------
# GPUs with less shared memory than an H100: the launchers step down from the tuned tiles


def _step_downs(config):
    chain = [config]
    while (smaller := flash_kernel._smaller(chain[-1])) is not None:
        chain.append(smaller)
    return chain


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("T", [256, 2048, 16384])
@pytest.mark.parametrize("D", HEAD_DIMS)
def test_step_downs_keep_the_kernels_block_rules(D, T, dtype):
    fwd = _step_downs(flash_kernel._choice("fwd", dtype, D, T)[1])
    bwd = _step_downs(flash_kernel._choice("bwd", dtype, D, T)[1])
    for BLOCK_M, BLOCK_N, warps, stages in fwd:
        assert BLOCK_M % BLOCK_N == 0 and BLOCK_N >= 32 and stages >= 1
    for BLOCK, BLOCK_M1, BLOCK_N2, warps, stages in bwd:
        assert BLOCK % BLOCK_M1 == 0 and BLOCK % BLOCK_N2 == 0 and min(BLOCK_M1, BLOCK_N2) >= 32 and stages >= 1
    # each chain ends at the smallest tiles dropout's 32-column mask groups allow, one stage
    assert fwd[-1] == (32, 32, 4, 1) and bwd[-1] == (32, 32, 32, 4, 1)


def test_launch_steps_down_until_it_fits_and_remembers():
    cache = {}
    tried = []

    def launch(*config):  # a GPU on which only 1-stage tiles of at most 32 rows fit
        tried.append(config)
        if config[-1] > 1 or config[0] > 32:
            raise flash_kernel.OutOfResources(1, 0, "shared memory")

    flash_kernel._launch_fitting(launch, (128, 64, 8, 3), ("fwd", "gpu0"), cache)
    assert tried == [(128, 64, 8, 3), (128, 64, 8, 2), (128, 64, 8, 1), (64, 64, 4, 1), (32, 32, 4, 1)]
    tried.clear()
    flash_kernel._launch_fitting(launch, (128, 64, 8, 3), ("fwd", "gpu0"), cache)
    assert tried == [(32, 32, 4, 1)]  # the next call goes straight to what fits
    assert cache == {("fwd", "gpu0", (128, 64, 8, 3)): (32, 32, 4, 1)}

    def never(*config):
        raise flash_kernel.OutOfResources(1, 0, "shared memory")

    with pytest.raises(RuntimeError, match="smallest tiles.*attn='sdpa'"):
        flash_kernel._launch_fitting(never, (32, 16, 4, 1), ("fwd", "gpu1"), cache)


@pytest.mark.parametrize("D", [32, 64])
def test_smallest_step_down_tiles_match_reference(D):
    # The tiles every step-down chain ends at, on both kernels end to end: what a GPU that refuses everything
    # larger runs (the chain itself is test_launch_steps_down_until_it_fits_and_remembers's)
    q, k, v = qkv_like_the_model(1, 2, 100, D, torch.float32)
    do = torch.randn(q.shape, device=q.device)
    got = ours_fwd_bwd(q, k, v, do, causal=True, _fwd_config=(32, 32, 4, 1), _bwd_config=(32, 32, 32, 4, 1))
    assert_close(got, ref_fwd_bwd(q, k, v, do, causal=True), torch.float32, f"smallest tiles, D={D}")


@needs_gpu
def test_gpu_oversized_tiles_step_down_for_real():
    # Tiles no GPU can hold (6 stages of 128 x 128 K and V tiles: over 400 KB of shared memory): Triton itself
    # refuses the launch, and the forward must step down to tiles that run and still be right.
    B, H, T, D = 2, 2, 300, 128
    q, k, v = qkv_like_the_model(B, H, T, D, torch.bfloat16, device="cuda")
    o = flash_kernel._empty_bhtd(B, H, T, D, q)
    lse = torch.empty((B, H, T), dtype=torch.float32, device="cuda")
    launch = functools.partial(flash_kernel._run_fwd_kernel, q, k, v, o, lse, None, True, D ** -0.5, 0.0)
    cache = {}
    flash_kernel._launch_fitting(launch, (128, 128, 8, 6), ("fwd",), cache)
    (fitted,) = cache.values()
    assert fitted[-1] < 6
    want = ref_fwd_bwd(q, k, v, torch.zeros(q.shape, device="cuda"), causal=True)[0]
    assert_close([o], [want], torch.bfloat16, f"forward stepped down to {fitted}")
    # a caller's own tiles run as given: no step-down behind its back
    with pytest.raises(flash_kernel.OutOfResources):
        flash_attn(q, k, v, _fwd_config=(128, 128, 8, 6))


# ---------------------------------------------------------------------------------------------------------------
# Choosing what runs: TUNED and the private arguments


@pytest.mark.parametrize("kind", ["fwd", "bwd"])
def test_tuned_covers_every_supported_call(kind):
    # Every dtype and head dim flash_attn accepts has Triton tiles from T=1 on, of its pass's length; the Hopper
    # kernels take half precision only
    fields = flash_kernel.FWD_CONFIG if kind == "fwd" else flash_kernel.BWD_CONFIG
    for dtype in flash_kernel.SUPPORTED_DTYPES:
        for D in flash_kernel.SUPPORTED_HEAD_DIMS:
            for T in (1, 1023, 1024, 2048, 4096, 4097, 65536):
                hopper, tiles = flash_kernel._choice(kind, dtype, D, T)
                assert len(tiles) == len(fields)
                assert not (hopper and dtype == torch.float32)


def test_a_hopper_row_takes_calls_from_its_length_on():
    # Each Hopper row of TUNED takes the bf16 calls of its pass and head dims from its T on; shorter ones stay on the
    # Triton kernels
    hopper_rows = [(kind, dims, from_t) for kind, dtypes, dims, from_t, backend, _ in flash_kernel.TUNED
                   if backend == "hopper"]
    assert hopper_rows
    covered = [(kind, dtype, D) for kind, dtypes, dims, _, backend, _ in flash_kernel.TUNED if backend == "hopper"
               for dtype in dtypes for D in dims]
    assert len(covered) == len(set(covered)), "two Hopper rows for one pass, dtype and head dim: _index keeps one"
    for kind, dims, from_t in hopper_rows:
        for D in dims:
            assert flash_kernel._choice(kind, torch.bfloat16, D, from_t)[0]
            assert flash_kernel._choice(kind, torch.bfloat16, D, 4 * from_t)[0]
            assert not flash_kernel._choice(kind, torch.bfloat16, D, from_t - 1)[0]


@pytest.mark.parametrize("kwargs,message", [
    (dict(_backend="cuda"), r"_backend must be one of \('hopper', 'triton'\) or None, got 'cuda'"),
    (dict(_fwd_config=(64, 64, 4)), r"_fwd_config must be 4 positive ints"),
    (dict(_bwd_config=(64, 32, 64, 4, 0)), r"_bwd_config must be 5 positive ints"),
    (dict(_backend="hopper", _fwd_config=(64, 64, 4, 3)), r"_fwd_config sets the Triton kernels' tiles"),
    (dict(_backend="hopper"), r"_backend='hopper' cannot run this call"),  # fp32, and no Hopper GPU here
], ids=["unknown-backend", "short-fwd-config", "zero-in-bwd-config", "hopper-with-tiles", "hopper-cannot"])
def test_bad_choices_are_refused_clearly(kwargs, message):
    x = _t(1, 1, 4, 16)
    with pytest.raises(ValueError, match=message):
        flash_attn(x, x, x, **kwargs)


def test_choices_reach_the_kernels():
    # The tuned tiles, passed explicitly, are what a plain call runs: bit-identical results. Other tiles (wider key
    # blocks in both passes, wider query blocks in dK/dV's) sum in another order: still right, but not identical,
    # so the arguments do reach the launchers, through flash_attn_qkvpacked's ops as well as flash_attn's
    q, k, v = qkv_like_the_model(1, 2, 100, 32, torch.float32)
    do = torch.randn(q.shape, device=q.device)
    plain = ours_fwd_bwd(q, k, v, do, causal=True)
    tuned = ours_fwd_bwd(q, k, v, do, causal=True, _backend="triton", _fwd_config=(64, 32, 4, 2),
                         _bwd_config=(64, 32, 32, 4, 2))
    for a, b in zip(plain, tuned):
        assert torch.equal(a, b)
    wide = dict(_fwd_config=(64, 64, 4, 1), _bwd_config=(64, 64, 64, 4, 1))
    other = ours_fwd_bwd(q, k, v, do, causal=True, **wide)
    for name, a, b in zip(("o", "dq", "dk", "dv"), plain, other):
        assert not torch.equal(a, b), f"{name}: the same bits from other tiles"
    assert_close(other, ref_fwd_bwd(q, k, v, do, causal=True), torch.float32, "wide tiles")
    packed = torch.stack([t.detach() for t in (q, k, v)], dim=2).transpose(1, 3).requires_grad_()  # (B, T, 3, H, D)
    y = flash_attn_qkvpacked(packed, **wide)
    y.backward(do.transpose(1, 2))
    assert torch.equal(y, other[0].transpose(1, 2))
    assert torch.equal(packed.grad, torch.stack([t.transpose(1, 2) for t in other[1:]], dim=2))


def test_interpreter_problem_names_the_versions_and_the_fix():
    """Triton before 3.7 with numpy 2.4 or later cannot interpret the kernels (int() of a 1-element array): that pair,
    and only that pair, is named with what to install."""
    problem = flash_kernel.interpreter_problem("3.6.0", "2.4.1")
    assert "Triton 3.6.0" in problem and "numpy 2.4.1" in problem and "pip install 'numpy<2.4'" in problem
    for triton_version, numpy_version in (("3.7.0", "2.4.1"), ("3.6.0", "2.3.5"), ("3.10.0+git1a2b", "2.10.0"),
                                          ("2.3.1", "1.26.4")):
        assert flash_kernel.interpreter_problem(triton_version, numpy_version) is None, (triton_version, numpy_version)
    assert flash_kernel.interpreter_problem("3.6.0", "2.5.0rc1") is not None


def test_a_broken_interpreter_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(np, "__version__", "2.4.1")
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(RuntimeError, match=r"flash_attn: Triton 3\.6\.0's interpreter cannot run with numpy 2\.4\.1"):
        flash_attn(q, q, q)


def test_interpreting_reads_the_switch(monkeypatch):
    for value, expected in (("1", True), ("true", True), ("0", False), ("", False)):
        monkeypatch.setenv("TRITON_INTERPRET", value)
        assert flash_kernel.interpreting() is expected
    monkeypatch.delenv("TRITON_INTERPRET")
    assert flash_kernel.interpreting() is False


# ---------------------------------------------------------------------------------------------------------------
# GPU: bf16 at the model's shapes and long sequences, against the reference and against PyTorch's own error

# (B, H, T, D): the char model, the GPT-2 124M shape, and long sequences at the FlashAttention-2 sweep's widths
GPU_SHAPES = [(64, 6, 256, 64), (12, 12, 1024, 64), (4, 32, 4096, 64), (2, 16, 4096, 128), (1, 4, 16384, 64), (1, 2, 16384, 128)]
# We may be at most this much worse than SDPA's error against the same fp32 reference: the two do the same
# roundings (P to bf16 before P@V, outputs to bf16), so their errors should agree to within run-to-run luck of
# which elements round which way; FlashAttention's own tests allow 2x, we allow 1.25x.
SDPA_FACTOR = 1.25


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("B,H,T,D", GPU_SHAPES, ids=str)
def test_gpu_large_shapes_vs_reference_and_sdpa(B, H, T, D, dtype, nan_empty):
    q, k, v = qkv_like_the_model(B, H, T, D, dtype, device="cuda")
    do = torch.randn(q.shape, device="cuda", dtype=dtype)
    want = ref_fwd_bwd(q, k, v, do, causal=True)
    ours = ours_fwd_bwd(q, k, v, do, causal=True)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    o.backward(do)
    sdpa = [o.detach(), q.grad, k.grad, v.grad]
    assert_close(ours, want, dtype, f"B={B} H={H} T={T} D={D} {dtype}")
    for name, a, b, w in zip(("o", "dq", "dk", "dv"), ours, sdpa, want):
        e_ours, e_sdpa = rel_err(a, w), rel_err(b, w)
        print(f"{name} T={T} D={D}: ours {e_ours:.2e} sdpa {e_sdpa:.2e}")
        assert e_ours <= SDPA_FACTOR * e_sdpa, f"{name}: ours {e_ours:.2e} vs sdpa {e_sdpa:.2e} at T={T} D={D}"


@needs_gpu
def test_gpu_peak_memory_is_linear_in_T():
    """One fwd+bwd at T=16384 (B=1, H=32, D=64): within 1.2x of PyTorch's flash backend's peak."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    B, H, T, D = 1, 32, 16384, 64
    q, k, v = qkv_like_the_model(B, H, T, D, torch.bfloat16, device="cuda")
    do = torch.randn(q.shape, device="cuda", dtype=q.dtype)

    def peak(fn):
        q.grad = k.grad = v.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(q, k, v).backward(do)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    ours = peak(flash_attn)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        theirs = peak(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True))
    print(f"peak extra memory at T={T}: ours {ours / 2**20:.0f} MiB, SDPA flash {theirs / 2**20:.0f} MiB")
    assert ours <= 1.2 * theirs, f"ours {ours / 2**20:.0f} MiB vs flash {theirs / 2**20:.0f} MiB"
