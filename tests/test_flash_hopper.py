"""
The Hopper kernels (flash_hopper.py, Gluon) against the fp32 reference and the Triton kernels, and the dispatch
that decides which of the two flash_attn runs. Gluon has no interpreter: the kernel tests need a Hopper GPU
(tests/test_compiled_kernels.py checks what it compiles to on any machine).
"""
import math

import pytest
import torch

import flash_kernel
from flash_kernel import attention_ref, flash_attn
from helpers import ABS, TOL, assert_close, grad_like, launched_kernels, ours_fwd_bwd, qkv_like_the_model, ref_fwd_bwd

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
needs_hopper = pytest.mark.skipif(not HOPPER or flash_kernel.flash_hopper is None,
                                  reason="needs a Hopper GPU (H100, H200) and a Triton with Gluon")


def hopper_from(kind: str, D: int) -> int:
    """The shortest T at which flash_kernel.TUNED sends a bf16 pass ("fwd" or "bwd") to the Hopper kernels."""
    return min(from_t for k, dtypes, dims, from_t, backend, _ in flash_kernel.TUNED
               if (k, backend) == (kind, "hopper") and torch.bfloat16 in dtypes and D in dims)


def kernels_of(fn) -> set:
    """Which attention kernels fn() launches: "hopper fwd", "triton fwd", "hopper bwd", "triton bwd"."""
    names = launched_kernels(fn)
    found = {"hopper fwd": "_attn_fwd_hopper_kernel", "triton fwd": "_attn_fwd_kernel",
             "hopper bwd": "_attn_bwd_hopper_kernel", "triton bwd": "_attn_bwd_kernel"}
    return {which for which, kernel in found.items() if any(kernel in name for name in names)}


def check_hopper_forward(q, k, v, **launch):
    # o against the fp32 reference with the Triton kernels' tolerances, lse against the Triton forward's.
    # launch: flash_hopper._attn_fwd's own arguments (programs, heads_per_section, groups)
    B, H, T, D = q.shape
    scale = 1 / math.sqrt(D)
    o = flash_kernel._empty_bhtd(B, H, T, D, q)
    lse = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    flash_kernel.flash_hopper._attn_fwd(q, k, v, o, lse, scale * flash_kernel.LOG2E, **launch)
    want = torch.stack([attention_ref(q[b], k[b], v[b]) for b in range(B)])
    err = (o.float() - want).norm().item()
    bound = TOL[q.dtype] * want.norm().item() + ABS[q.dtype] * math.sqrt(want.numel())
    assert torch.isfinite(o).all() and err <= bound, f"o: err {err:.3e} > {bound:.3e}"
    # lse is fp32 in both kernels, and the same arithmetic in another order: the row sum l adds up to T terms,
    # each add off by at most 2^-24 relative, so log2(l) can differ by T * 2^-24 * log2(e) (5e-7 at T=1, 1.8e-4
    # at T=2048); measured <= 2e-6
    _, lse_triton = flash_kernel._attn_fwd(q, k, v, None, True, scale, 0.0, "triton")
    assert (lse - lse_triton).abs().max().item() <= T * 2.0**-24 * math.log2(math.e) + 1e-6


@needs_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("B,H,T", [(1, 1, 1), (2, 3, 77), (1, 2, 128), (2, 2, 129), (1, 2, 1000), (1, 1, 2048)],
                         ids=str)
@pytest.mark.parametrize("strided", [True, False], ids=["model_views", "dense"])
def test_forward_matches_reference_and_triton(B, H, T, D, dtype, strided):
    # Every T, not only those the dispatch sends here: ragged tails (TMA zero-fills rows past T), one tile, a
    # diagonal tile that is also the first.
    q, k, v = qkv_like_the_model(B, H, T, D, dtype, device="cuda")
    if not strided:
        q, k, v = (t.detach().contiguous() for t in (q, k, v))
    check_hopper_forward(q, k, v)


@needs_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("B,H,T", [(1, 1, 1), (2, 3, 77), (1, 2, 128), (2, 2, 129), (1, 2, 193), (1, 2, 1000),
                                   (1, 1, 2048)], ids=str)
def test_three_group_forward_matches_reference_and_triton(B, H, T, dtype):
    # Head dim 64's forward from flash_hopper.FWD_THREE_GROUPS_FROM_T on, at every T: 192-row items whose last
    # one or two key tiles are masked, rows of a group that see none of a tile's keys, an item of one row (193)
    q, k, v = qkv_like_the_model(B, H, T, 64, dtype, device="cuda")
    check_hopper_forward(q, k, v, groups=3)


@needs_hopper
def test_long_forward_takes_three_groups():
    # Head dim 64 switches to three groups at FWD_THREE_GROUPS_FROM_T: the launch without a groups argument there
    T = flash_kernel.flash_hopper.FWD_THREE_GROUPS_FROM_T
    assert flash_kernel.flash_hopper._fwd_groups(64, T) == 3 and flash_kernel.flash_hopper._fwd_groups(64, T - 1) == 2
    q, k, v = qkv_like_the_model(1, 1, T, 64, torch.bfloat16, device="cuda")
    check_hopper_forward(q, k, v)


@needs_hopper
@pytest.mark.parametrize("D,groups", [(64, 2), (64, 3), (128, 2)])
@pytest.mark.parametrize("programs", [1, 5])
def test_forward_with_few_programs(D, groups, programs):
    # The forward's grid is persistent: each program takes items (row tile, head) one after another, carrying
    # its K/V ring, Q buffers and turn barriers across them. A GPU has enough SMs that the shapes above give most
    # programs one item; here 1 or 5 programs take 2 * 3 * 8 items of 1 to 8 key tiles each (2 * 3 * 6 with three
    # groups), with the 6 heads in two sections, of 4 heads and of 2
    q, k, v = qkv_like_the_model(2, 3, 1000, D, torch.bfloat16, device="cuda")
    check_hopper_forward(q, k, v, programs=programs, heads_per_section=4, groups=groups)


@needs_hopper
def test_launches_reuse_one_compiled_kernel_per_key():
    # flash_hopper._Launcher compiles once per (device, dtype, constexprs, options) and launches the compiled kernel
    # after that: calls with other lengths and head counts, 1 among them (a value Triton would specialize on if the
    # kernels let it), take the same kernel and stay correct, forward and backward
    fh = flash_kernel.flash_hopper
    for B, H, T in [(1, 2, 1000), (1, 1, 1), (2, 1, 16), (1, 3, 77)]:
        q, k, v = (t.detach() for t in qkv_like_the_model(B, H, T, 128, torch.float16, device="cuda"))
        check_hopper_forward(q, k, v)
        do = grad_like(q)
        o, lse = flash_kernel._attn_fwd(q, k, v, None, True, 128 ** -0.5, 0.0, "hopper")
        dq, dk, dv = flash_kernel._attn_bwd(do, q, k, v, o, lse, None, True, 128 ** -0.5, 0.0, "hopper")
        assert_close([o, dq, dk, dv], ref_fwd_bwd(q, k, v, do, causal=True), torch.float16,
                     f"Hopper kernels through their launcher, B={B} H={H} T={T}")
    for launch in (fh._launch_fwd, fh._launch_bwd):
        keys = [key for key in launch.compiled if key[1] == torch.float16 and ("HEAD_DIM", 128) in key]
        assert len(keys) == 1, keys


@needs_hopper
def test_flash_attn_dispatch():
    # Long causal calls without dropout go to the Hopper forward; short ones, dropout, non-causal and fp32 do not,
    # unless a caller forces a backend. Tiles of the caller's run the Triton kernels.
    T = hopper_from("fwd", 128)
    q, k, v = (t.detach() for t in qkv_like_the_model(1, 2, T, 128, torch.bfloat16, device="cuda"))
    short = [t[:, :, : T // 2] for t in (q, k, v)]
    assert kernels_of(lambda: flash_attn(q, k, v)) == {"hopper fwd"}
    assert kernels_of(lambda: flash_attn(q, k, v, dropout_p=0.1)) == {"triton fwd"}
    assert kernels_of(lambda: flash_attn(q, k, v, causal=False)) == {"triton fwd"}
    assert kernels_of(lambda: flash_attn(*short)) == {"triton fwd"}
    assert kernels_of(lambda: flash_attn(q.float(), k.float(), v.float())) == {"triton fwd"}
    assert kernels_of(lambda: flash_attn(*short, _backend="hopper")) == {"hopper fwd"}
    assert kernels_of(lambda: flash_attn(q, k, v, _backend="triton")) == {"triton fwd"}
    assert kernels_of(lambda: flash_attn(q, k, v, _fwd_config=(64, 64, 4, 3))) == {"triton fwd"}
    with pytest.raises(ValueError, match="_backend='hopper' cannot run this call"):
        flash_attn(q, k, v, dropout_p=0.1, _backend="hopper")
    # the backward has its own threshold
    T = hopper_from("bwd", 128)
    q, k, v = qkv_like_the_model(1, 2, T, 128, torch.bfloat16, device="cuda")
    assert "hopper bwd" in kernels_of(lambda: flash_attn(q, k, v).sum().backward())
    q, k, v = qkv_like_the_model(1, 2, T // 2, 128, torch.bfloat16, device="cuda")
    assert "triton bwd" in kernels_of(lambda: flash_attn(q, k, v).sum().backward())
    assert "hopper bwd" in kernels_of(lambda: flash_attn(q, k, v, _backend="hopper").sum().backward())


@needs_hopper
@pytest.mark.parametrize("forward", ["triton", "hopper"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("B,H,T", [(1, 1, 1), (2, 3, 77), (1, 2, 128), (2, 2, 129), (1, 2, 1000)], ids=str)
def test_backward_matches_reference(B, H, T, D, dtype, forward):
    # The Hopper backward at every T (the dispatch uses it from TUNED's length on), after either forward, through
    # the launchers, on the model's strided views; the tolerances are the Triton kernels'
    q, k, v = (t.detach() for t in qkv_like_the_model(B, H, T, D, dtype, device="cuda"))
    do = grad_like(q)
    scale = 1 / math.sqrt(D)
    o, lse = flash_kernel._attn_fwd(q, k, v, None, True, scale, 0.0, forward)
    dq, dk, dv = flash_kernel._attn_bwd(do, q, k, v, o, lse, None, True, scale, 0.0, "hopper")
    assert_close([o, dq, dk, dv], ref_fwd_bwd(q, k, v, do, causal=True), dtype,
                 f"Hopper backward after the {forward} forward, B={B} H={H} T={T} D={D} {dtype}")


@needs_hopper
@pytest.mark.parametrize("D", [64, 128])
def test_gradients_through_the_hopper_kernels(D):
    # At a length where flash_attn sends both passes to the Hopper kernels, with a ragged last tile
    T = max(hopper_from("fwd", D), hopper_from("bwd", D)) + 100
    q, k, v = qkv_like_the_model(1, 2, T, D, torch.bfloat16, device="cuda")
    do = grad_like(q)
    got = []
    assert kernels_of(lambda: got.extend(ours_fwd_bwd(q, k, v, do, causal=True))) == {"hopper fwd", "hopper bwd"}
    assert_close(got, ref_fwd_bwd(q, k, v, do, causal=True), torch.bfloat16,
                 f"T={T} D={D} through the Hopper kernels")


@needs_hopper
@pytest.mark.parametrize("D", [64, 128])
def test_packed_gradient_through_the_hopper_kernels(D):
    # flash_attn_qkvpacked, where its backward's TMA stores write dk and dv into strided views of one dqkv
    T = max(hopper_from("fwd", D), hopper_from("bwd", D)) + 100
    g = torch.Generator(device="cpu").manual_seed(4)
    packed = torch.randn(1, T, 3, 2, D, generator=g).to(device="cuda", dtype=torch.bfloat16).requires_grad_()
    do = torch.randn(1, T, 2, D, generator=g).to(device="cuda", dtype=torch.bfloat16)
    y = flash_kernel.flash_attn_qkvpacked(packed)
    assert kernels_of(lambda: y.backward(do)) == {"hopper bwd"}
    q, k, v = [t.transpose(1, 2) for t in packed.detach().unbind(2)]
    want = ref_fwd_bwd(q, k, v, do.transpose(1, 2), causal=True)
    got = [y.detach().transpose(1, 2)] + [t.transpose(1, 2) for t in packed.grad.unbind(2)]
    assert_close(got, want, torch.bfloat16, f"packed T={T} D={D} through the Hopper kernels")


def test_dispatch_refuses_what_the_kernel_does_not_do():
    # Runs anywhere: the conditions that need no GPU
    if flash_kernel.flash_hopper is None:
        pytest.skip("this Triton has no Gluon")
    supported = flash_kernel.flash_hopper.supported
    q = torch.zeros(1, 1, 16384, 64, dtype=torch.bfloat16)
    assert not supported(q, q, q, True, 0.0)  # CPU tensors
    assert not supported(q, q, q, False, 0.0)
    assert not supported(q, q, q, True, 0.1)


def test_dq_acc_rows_are_a_permutation_within_groups_of_8():
    # The backward's fp32 dQ buffer holds row r of dQ in row _dq_acc_row(r): every row must land on a row of its own
    # group of 8, no two on the same
    if flash_kernel.flash_hopper is None:
        pytest.skip("this Triton has no Gluon")
    rows = torch.arange(64)
    moved = flash_kernel.flash_hopper._dq_acc_row(rows)
    assert torch.equal(moved // 8, rows // 8)
    assert torch.equal(moved.sort().values, rows)
    assert not torch.equal(moved, rows)


@pytest.mark.parametrize("transposed", [False, True], ids=["BHTD", "BHDT"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("layout", ["dense", "model_views", "packed"])
def test_dq_cast_scales_and_converts_into_any_layout(layout, dtype, transposed):
    # The backward's last step, a plain Triton kernel (runs under the interpreter too): dq = scale * acc from the
    # fp32 buffer, (B, H, T rounded up to 8, D) with its rows in _dq_acc_row's order or, as the head-dim-64 backward
    # fills it, (B, H, D, T rounded up to 8) with its rows (D) in that order, into dq's own dtype and strides, a
    # ragged last block of rows included. Exact: one fp32 multiply and one rounding, as torch does them
    if flash_kernel.flash_hopper is None:
        pytest.skip("this Triton has no Gluon")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter converts fp32 to bf16 by truncation, not rounding; bf16 runs on the GPU")
    B, H, T, D = 2, 3, flash_kernel.flash_hopper.DQ_CAST_ROWS + 13, 64
    t_acc = (T + 7) // 8 * 8
    acc = torch.randn((B, H, D, t_acc) if transposed else (B, H, t_acc, D), device=device)
    if layout == "dense":
        dq = torch.empty(B, H, T, D, device=device, dtype=dtype)
    elif layout == "model_views":
        dq = torch.empty(B, T, H, D, device=device, dtype=dtype).transpose(1, 2)
    else:  # dq as a view of flash_attn_qkvpacked's (B, T, 3, H, D) gradient
        dq = torch.empty(B, T, 3, H, D, device=device, dtype=dtype)[:, :, 0].transpose(1, 2)
    flash_kernel.flash_hopper._dq_cast(acc, dq, 0.3, transposed)
    if transposed:
        cols = flash_kernel.flash_hopper._dq_acc_row(torch.arange(D, device=device))
        want = acc[:, :, cols, :T].transpose(2, 3)
    else:
        want = acc[:, :, flash_kernel.flash_hopper._dq_acc_row(torch.arange(T, device=device))]
    assert torch.equal(dq, torch.mul(want, 0.3).to(dtype))
