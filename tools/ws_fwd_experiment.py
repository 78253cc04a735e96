"""Experiment: a warp-specialized forward (TMA descriptor loads for Q, K, V; tl.range(warp_specialize=True)).
python tools/ws_fwd_experiment.py  -> correctness vs the shipped forward, then a timing table."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch
import triton
import triton.language as tl

import flash_kernel as fk


@triton.jit
def _fwd_ws_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    H, T, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WS: tl.constexpr,
):
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    qd = tl.make_tensor_descriptor(Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh, [T, HEAD_DIM], [stride_qt, 1], [BLOCK_M, HEAD_DIM])
    kd = tl.make_tensor_descriptor(K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh, [T, HEAD_DIM], [stride_kt, 1], [BLOCK_N, HEAD_DIM])
    vd = tl.make_tensor_descriptor(V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh, [T, HEAD_DIM], [stride_vt, 1], [BLOCK_N, HEAD_DIM])
    q = qd.load([start_m, 0])
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for start_n in tl.range(0, tl.minimum(start_m + BLOCK_M, T), BLOCK_N, warp_specialize=WS):
        k = kd.load([start_n, 0])
        v = vd.load([start_n, 0])
        s = tl.dot(q, k.T)
        s = tl.where(offs_m[:, None] >= (start_n + offs_n)[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    acc = acc / l_i[:, None]
    o_ptrs = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=offs_m[:, None] < T)
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, m_i + tl.math.log2(l_i), mask=offs_m < T)


def _scratch(size, alignment, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda")


def fwd_ws(q, k, v, scale, BLOCK_M, BLOCK_N, warps, stages, ws=True):
    B, H, T, D = q.shape
    o = fk._empty_bhtd(B, H, T, D, q)
    lse = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    _fwd_ws_kernel[(triton.cdiv(T, BLOCK_M), B * H)](
        q, k, v, o, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        H, T, scale * fk.LOG2E, HEAD_DIM=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, WS=ws,
        num_warps=warps, num_stages=stages,
    )
    return o, lse


if __name__ == "__main__":
    triton.set_allocator(_scratch)
    SHAPES = [(64, 6, 256, 64), (12, 12, 1024, 64)] + [(16384 // T, 2048 // D, T, D) for D in (64, 128) for T in (512, 1024, 2048, 4096, 8192, 16384)]
    CONFIGS = [(128, 128, 4, 2, True), (128, 64, 4, 2, True), (128, 64, 4, 3, True), (128, 128, 8, 2, False)]
    print(torch.cuda.get_device_name(), triton.__version__)
    print("| B,H,T,D | shipped ms | " + " | ".join(f"ws{c[:4]}" for c in CONFIGS) + " |")
    for B, H, T, D in SHAPES:
        q, k, v = [torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
        s = D ** -0.5
        o0, l0 = fk._attn_fwd(q, k, v, None, True, s, 0.0)
        t0 = triton.testing.do_bench(lambda: fk._attn_fwd(q, k, v, None, True, s, 0.0), warmup=25, rep=100, return_mode="median")
        cells = []
        for cfg in CONFIGS:
            try:
                o1, l1 = fwd_ws(q, k, v, s, *cfg)
                err = max((o1.float() - o0.float()).abs().max().item(), (l1 - l0).abs().max().item())
                t1 = triton.testing.do_bench(lambda: fwd_ws(q, k, v, s, *cfg), warmup=25, rep=100, return_mode="median")
                cells.append(f"{t1:.3f} ({t0 / t1:.2f}x, err {err:.1e})")
            except Exception as e:
                cells.append(f"{type(e).__name__}: {str(e)[:80]}")
        print(f"| {B},{H},{T},{D} | {t0:.3f} | " + " | ".join(cells) + " |", flush=True)
