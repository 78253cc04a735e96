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
from test_flash_kernel import ABS, TOL, assert_close, ours_fwd_bwd, qkv_like_the_model, ref_fwd_bwd

HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
needs_hopper = pytest.mark.skipif(not HOPPER or flash_kernel.flash_hopper is None,
                                  reason="needs a Hopper GPU (H100, H200) and a Triton with Gluon")


def hopper_fwd(q, k, v, scale):
    B, H, T, D = q.shape
    o = flash_kernel._empty_bhtd(B, H, T, D, q)
    lse = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    flash_kernel.flash_hopper.attn_fwd(q, k, v, o, lse, scale * flash_kernel.LOG2E)
    return o, lse


def triton_fwd(q, k, v, scale, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(flash_kernel, "flash_hopper", None)
        return flash_kernel._attn_fwd(q, k, v, None, True, scale, 0.0)


def check_hopper_forward(q, k, v, monkeypatch):
    # o against the fp32 reference with test_flash_kernel's tolerances, lse against the Triton forward's
    B, H, T, D = q.shape
    scale = 1 / math.sqrt(D)
    o, lse = hopper_fwd(q, k, v, scale)
    want = torch.stack([attention_ref(q[b], k[b], v[b]) for b in range(B)])
    err = (o.float() - want).norm().item()
    bound = TOL[q.dtype] * want.norm().item() + ABS[q.dtype] * math.sqrt(want.numel())
    assert torch.isfinite(o).all() and err <= bound, f"o: err {err:.3e} > {bound:.3e}"
    # lse is fp32 in both kernels, and the same arithmetic in another order: the row sum l adds up to T terms,
    # each add off by at most 2^-24 relative, so log2(l) can differ by T * 2^-24 * log2(e) (5e-7 at T=1, 1.8e-4
    # at T=2048); measured <= 2e-6
    _, lse_triton = triton_fwd(q, k, v, scale, monkeypatch)
    assert (lse - lse_triton).abs().max().item() <= T * 2.0**-24 * math.log2(math.e) + 1e-6


@needs_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("B,H,T", [(1, 1, 1), (2, 3, 77), (1, 2, 128), (2, 2, 129), (1, 2, 1000), (1, 1, 2048)],
                         ids=str)
@pytest.mark.parametrize("strided", [True, False], ids=["model_views", "dense"])
def test_forward_matches_reference_and_triton(B, H, T, D, dtype, strided, monkeypatch):
    # Every T, not only those the dispatch sends here: ragged tails (TMA zero-fills rows past T), one tile, a
    # diagonal tile that is also the first.
    q, k, v = qkv_like_the_model(B, H, T, D, dtype, device="cuda")
    if not strided:
        q, k, v = (t.detach().contiguous() for t in (q, k, v))
    check_hopper_forward(q, k, v, monkeypatch)


@needs_hopper
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("programs", [1, 5])
def test_forward_with_few_programs(D, programs, monkeypatch):
    # The forward's grid is persistent: each program takes items (row tile, head) one after another, carrying
    # its K/V ring, Q buffers and turn barriers across them. A GPU has enough SMs that the shapes above give most
    # programs one item; here 1 or 5 programs take 2 * 3 * 8 items of 1 to 8 key tiles each, with the 6 heads in
    # two sections, of 4 heads and of 2
    monkeypatch.setattr(flash_kernel.flash_hopper, "_num_sms", lambda device: programs)
    monkeypatch.setattr(flash_kernel.flash_hopper, "_heads_per_section", lambda q: 4)
    check_hopper_forward(*qkv_like_the_model(2, 3, 1000, D, torch.bfloat16, device="cuda"), monkeypatch)


@needs_hopper
def test_flash_attn_dispatch(monkeypatch):
    # Long causal calls without dropout go to the Hopper forward; short ones, dropout and non-causal do not
    calls = []
    real = flash_kernel.flash_hopper.attn_fwd
    monkeypatch.setattr(flash_kernel.flash_hopper, "attn_fwd", lambda *a: calls.append(1) or real(*a))
    T = flash_kernel.flash_hopper.MIN_T[128]
    q, k, v = qkv_like_the_model(1, 2, T, 128, torch.bfloat16, device="cuda")
    flash_attn(q, k, v)
    assert len(calls) == 1
    flash_attn(q, k, v, dropout_p=0.1)
    flash_attn(q, k, v, causal=False)
    flash_attn(q[:, :, : T // 2], k[:, :, : T // 2], v[:, :, : T // 2])
    flash_attn(q.float(), k.float(), v.float())
    assert len(calls) == 1
    # the backward has its own threshold
    bwd_calls = []
    real_bwd = flash_kernel.flash_hopper.attn_bwd
    monkeypatch.setattr(flash_kernel.flash_hopper, "attn_bwd", lambda *a: bwd_calls.append(1) or real_bwd(*a))
    T = flash_kernel.flash_hopper.MIN_T_BWD[128]
    q, k, v = qkv_like_the_model(1, 2, T, 128, torch.bfloat16, device="cuda")
    flash_attn(q, k, v).sum().backward()
    assert len(bwd_calls) == 1
    q, k, v = qkv_like_the_model(1, 2, T // 2, 128, torch.bfloat16, device="cuda")
    flash_attn(q, k, v).sum().backward()
    assert len(bwd_calls) == 1


@needs_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("B,H,T", [(1, 1, 1), (2, 3, 77), (1, 2, 128), (2, 2, 129), (1, 2, 1000)], ids=str)
def test_backward_matches_reference(B, H, T, D, dtype, monkeypatch):
    # The Hopper backward at every T (the dispatch uses it from MIN_T_BWD on), through flash_attn, on the model's
    # strided views; the tolerances are test_flash_kernel's
    monkeypatch.setattr(flash_kernel.flash_hopper, "MIN_T_BWD", {64: 1, 128: 1})
    calls = []
    real = flash_kernel.flash_hopper.attn_bwd
    monkeypatch.setattr(flash_kernel.flash_hopper, "attn_bwd", lambda *a: calls.append(1) or real(*a))
    q, k, v = qkv_like_the_model(B, H, T, D, dtype, device="cuda")
    do = torch.randn(q.shape, device="cuda", dtype=dtype)
    assert_close(ours_fwd_bwd(q, k, v, do, causal=True), ref_fwd_bwd(q, k, v, do, causal=True), dtype,
                 f"Hopper backward B={B} H={H} T={T} D={D} {dtype}")
    assert calls == [1]


@needs_hopper
@pytest.mark.parametrize("D", [64, 128])
def test_gradients_through_the_hopper_kernels(D):
    # At a length where flash_attn sends both passes to the Hopper kernels, with a ragged last tile
    hopper = flash_kernel.flash_hopper
    T = max(hopper.MIN_T[D], hopper.MIN_T_BWD[D]) + 100
    q, k, v = qkv_like_the_model(1, 2, T, D, torch.bfloat16, device="cuda")
    assert hopper.supported(q, k, v, True, 0.0) and hopper.supported(q, k, v, True, 0.0, hopper.MIN_T_BWD, q)
    do = torch.randn(q.shape, device="cuda", dtype=q.dtype)
    assert_close(ours_fwd_bwd(q, k, v, do, causal=True), ref_fwd_bwd(q, k, v, do, causal=True), torch.bfloat16,
                 f"T={T} D={D} through the Hopper forward")


@needs_hopper
@pytest.mark.parametrize("D", [64, 128])
def test_packed_gradient_through_the_hopper_kernels(D):
    # flash_attn_qkvpacked, where its backward's TMA stores write dk and dv into strided views of one dqkv
    hopper = flash_kernel.flash_hopper
    T = max(hopper.MIN_T[D], hopper.MIN_T_BWD[D]) + 100
    g = torch.Generator(device="cpu").manual_seed(4)
    packed = torch.randn(1, T, 3, 2, D, generator=g).to(device="cuda", dtype=torch.bfloat16).requires_grad_()
    do = torch.randn(1, T, 2, D, generator=g).to(device="cuda", dtype=torch.bfloat16)
    calls = []
    real = hopper.attn_bwd
    with pytest.MonkeyPatch.context() as m:
        m.setattr(hopper, "attn_bwd", lambda *a: calls.append(1) or real(*a))
        y = flash_kernel.flash_attn_qkvpacked(packed)
        y.backward(do)
    assert calls == [1]
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
