"""
Causal flash attention in Triton: forward, backward and attention dropout, registered as torch ops.

Public surface:
    flash_attn(q, k, v, causal=True, softmax_scale=None, dropout_p=0.0)  the fused kernel, differentiable
    flash_attn_qkvpacked(qkv, causal=True, softmax_scale=None, dropout_p=0.0)
                                                                           the same on one (B, T, 3, H, D) tensor
    attention_ref(q, k, v, causal=True, softmax_scale=None, ...)          the plain fp32 reference the tests use
    dropout_mask(seed, B, H, T, dropout_p)                                 the keep-mask a call with `seed` applies
    interpreting()                                     whether Triton runs kernels through its interpreter (on CPU)
    interpreter_problem()                              why that interpreter cannot run them here, or None

q, k, v are (B, H, T, D) CUDA tensors read through their strides (the last dim must have unit stride), so views
of a fused qkv projection (`qkv.split(...)` + `.view(B, T, H, D).transpose(1, 2)`) go in without a copy. The output is
(B, H, T, D) laid out in memory as (B, T, H, D), which makes the model's transpose back to (B, T, C) free.
flash_attn_qkvpacked takes the qkv projection's output itself, as the model does: its backward writes dq, dk and
dv into one gradient for qkv, where separate q, k, v would leave autograd a concatenation (a copy) to make.

The forward keeps only O and the per-row log-sum-exp (in base 2); the backward recomputes the probabilities tile
by tile, FlashAttention-2 style, in one launch after a small pass for rowsum(dO * O): program j computes dK/dV
for key block j (sweeping the query blocks that see it) and then dQ for query block j, so no T x T matrix is
ever stored, nothing needs atomics, and under the causal mask every program does the same amount of work.

Dropout draws its mask from Philox keyed on (seed, row, column, batch*head): the backward regenerates exactly the
same mask, and the seed comes from torch's generator, so torch.manual_seed makes a run reproducible.

On Hopper GPUs the launchers hand long causal fp16/bf16 calls without dropout to flash_hopper.py's warp-specialized
Gluon kernels (flash_hopper.supported says which calls they can take, the table TUNED from which length on they are
worth it); they fill the same o, lse and gradients, so either forward pairs with either backward.

Tests and tools choose what runs through arguments, never by changing this module's state: flash_attn and
flash_attn_qkvpacked take `_backend` ("hopper", "triton", or None for TUNED's choice), `_fwd_config` and
`_bwd_config` (the Triton kernels' tiles, as in TUNED; None for TUNED's), and the launchers take the same.
"""
import functools
import math
import numbers
import os
import re
from typing import Optional

import numpy as np
import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

try:  # the Hopper forward is written in Gluon, which older Triton versions do not have
    import flash_hopper
except ImportError:
    flash_hopper = None

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634  # the kernels work in base 2: exp(x) = exp2(x * log2(e))
DROPOUT_BITS = 16  # a probability is kept when 16 random bits >= dropout_p * 2**16 (p resolves to 1.5e-5);
                  # _keep_bits cuts each 32-bit Philox word into two such draws
MASK_BLOCK = 32  # dropout_mask's tiles are MASK_BLOCK x MASK_BLOCK: the narrowest _dropout_keep draws (32 columns)
DELTA_BLOCK = 64  # rows per program of the backward's first pass, rowsum(dO * O): it only streams O and dO once
BACKENDS = ("hopper", "triton")  # what `_backend` may force; None leaves the choice to TUNED


# ----------------------------------------------------------------------------------------------------------------
# Reference


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    softmax_scale: Optional[float] = None,
    dropout_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Matmul, mask, softmax, (dropout), matmul in fp32. Returns fp32; holds the full T x T matrix."""
    T, D = q.shape[-2], q.shape[-1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    att = (q.float() @ k.float().transpose(-2, -1)) * scale  # (B, H, T, T)
    if causal:
        future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        att = att.masked_fill(future, float("-inf"))
    att = torch.softmax(att, dim=-1)
    if dropout_mask is not None:
        att = att * dropout_mask / (1.0 - dropout_p)
    return att @ v.float()  # (B, H, T, D)


# ----------------------------------------------------------------------------------------------------------------
# Kernels


@triton.jit
def _keep_bits(word, DROP_THRESHOLD, SHIFT: tl.constexpr):
    # The keep decisions of a word's two 16-bit draws, as bits SHIFT and SHIFT + 1
    lo = ((word & 0xFFFF).to(tl.int32) >= DROP_THRESHOLD).to(tl.int32)
    hi = ((word >> 16).to(tl.int32) >= DROP_THRESHOLD).to(tl.int32)
    return (lo << SHIFT) | (hi << (SHIFT + 1))


@triton.jit
def _dropout_packed(seed, bh, rows, start_col, DROP_THRESHOLD, N_COLS: tl.constexpr):
    # Keep decisions for query rows `rows` and key columns start_col + [0, N_COLS), start_col and N_COLS multiples
    # of 32, packed 8 to a word: [len(rows), N_COLS // 8] int32. One Philox call per (row, group, batch*head)
    # under the call's seed gives 4 x 32 random bits: eight 16-bit draws for the group's 8 columns. A draw is a
    # function of (row, column) alone, so the forward, the backward and dropout_mask see the same mask whatever
    # their tiling. Column c = 32a + 8n + 2q + h belongs to group 4a + q and takes bit 2n + h of its word: those
    # are the 8 columns one thread holds in the tensor cores' accumulator layout (see _dropout_keep). Philox is
    # integer work on the CUDA cores; one call per column made dropout cost more than the attention itself.
    # 7 rounds, not the customary 10: Philox4x32 passes TestU01's BigCrush from 7 rounds (Salmon et al., SC'11).
    tl.static_assert(N_COLS % 32 == 0)
    R: tl.constexpr = rows.shape[0]
    G: tl.constexpr = N_COLS // 8
    r = tl.broadcast_to(rows[:, None], (R, G))
    g = tl.broadcast_to((start_col // 8 + tl.arange(0, G))[None, :], (R, G))
    zero = r * 0
    w0, w1, w2, w3 = tl.philox(seed, r, g, zero + bh, zero, n_rounds=7)
    packed = _keep_bits(w0, DROP_THRESHOLD, 0) | _keep_bits(w1, DROP_THRESHOLD, 2)
    return packed | _keep_bits(w2, DROP_THRESHOLD, 4) | _keep_bits(w3, DROP_THRESHOLD, 6)


@triton.jit
def _bit_of_column(N_COLS: tl.constexpr):
    c = tl.arange(0, N_COLS)
    return ((c // 8) % 4) * 2 + c % 2  # column 32a + 8n + 2q + h -> bit 2n + h of its group's word


@triton.jit
def _dropout_keep(seed, bh, rows, start_col, DROP_THRESHOLD, N_COLS: tl.constexpr):
    # Keep-mask [len(rows), N_COLS] for a tile with query rows. The broadcast and reshape below put each word
    # in the thread whose accumulator holds its 8 columns, so Triton lays it out with no shuffle between threads.
    R: tl.constexpr = rows.shape[0]
    A: tl.constexpr = N_COLS // 32
    packed = tl.reshape(_dropout_packed(seed, bh, rows, start_col, DROP_THRESHOLD, N_COLS), (R, A, 4))
    spread = tl.broadcast_to(packed[:, :, None, :, None], (R, A, 4, 4, 2))  # [R, a, n, q, h]
    spread = tl.reshape(spread, (R, N_COLS))
    return ((spread >> _bit_of_column(N_COLS)[None, :]) & 1) != 0


@triton.jit
def _dropout_keep_t(seed, bh, rows, start_col, DROP_THRESHOLD, N_COLS: tl.constexpr):
    # The same mask transposed, [N_COLS, len(rows)], for the dK/dV pass's tile (keys on rows). There a thread
    # holds 2 of a word's 8 columns, so computing the words where they are used repeats each Philox call on 4
    # threads. Instead each call runs once and the packed words (2 per thread in the shipped tile) cross
    # threads through shared memory. Triton's layout pass would otherwise recompute Philox in the consumer's
    # layout to save that one shuffle; a sum over a size-1 axis is a reduction, which it does not recompute
    # through (docs/design.md, "Dropout: the transposed dK/dV pass").
    R: tl.constexpr = rows.shape[0]
    A: tl.constexpr = N_COLS // 32
    packed = _dropout_packed(seed, bh, rows, start_col, DROP_THRESHOLD, N_COLS)
    packed = tl.sum(packed[:, :, None], 2)  # [R, N_COLS // 8], unchanged; pins Philox to its own layout
    packed = tl.reshape(tl.trans(packed), (A, 4, R))
    spread = tl.broadcast_to(packed[:, None, :, None, :], (A, 4, 4, 2, R))  # [a, n, q, h, R]
    spread = tl.reshape(spread, (N_COLS, R))
    return ((spread >> _bit_of_column(N_COLS)[:, None]) & 1) != 0


@triton.jit
def _dropout_mask_kernel(Mask, SEED, T, DROP_THRESHOLD, BLOCK: tl.constexpr):
    # grid: (cdiv(T, BLOCK), cdiv(T, BLOCK), B * H); each program writes one [BLOCK, BLOCK] tile of the keep-mask
    bh = tl.program_id(2)
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    seed = tl.load(SEED)
    keep = _dropout_keep(seed, bh, rows, tl.program_id(1) * BLOCK, DROP_THRESHOLD, BLOCK)  # [BLOCK, BLOCK]
    ptrs = Mask + bh.to(tl.int64) * T * T + rows[:, None] * T + cols[None, :]
    tl.store(ptrs, keep.to(tl.int8), mask=(rows[:, None] < T) & (cols[None, :] < T))


@triton.jit
def _mask(x, q_idx, k_idx, T, CAUSAL: tl.constexpr, FILL: tl.constexpr):
    # x with FILL where a query may not see a key: a later key under the causal mask, a key past T without it. The
    # query and key indices broadcast to x's shape, so a tile with keys on rows passes them transposed. Causal needs
    # no bounds test: a key past T comes after every query row that is stored.
    if CAUSAL:
        return tl.where(q_idx >= k_idx, x, FILL)
    return tl.where(k_idx < T, x, FILL)


@triton.jit
def _key_blocks(start_m, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, T, CAUSAL: tl.constexpr):
    # (full_end, masked_end) for query rows [start_m, start_m + BLOCK_M): key blocks in [0, full_end) need no
    # mask, those in [full_end, masked_end) do. Causal: the keys before the row block are all visible and < T,
    # the diagonal block is masked. Otherwise only the ragged tail past the last whole block is.
    if CAUSAL:
        return start_m, tl.minimum(start_m + BLOCK_M, T)
    return (T // BLOCK_N) * BLOCK_N, T


@triton.jit
def _attn_fwd_inner(
    acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt,
    offs_m, lo, hi, T, qk_scale, seed, bh, DROP_THRESHOLD,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Sweeps key blocks [lo, hi). MASKED blocks may hold keys past T or (causal) after the query: they are loaded
    # under a bounds mask and their scores set to -inf; the blocks before them need neither.
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        if MASKED:
            k = tl.load(k_ptrs + start_n * stride_kt, mask=cols[None, :] < T, other=0.0)  # [HEAD_DIM, BLOCK_N]
        else:
            k = tl.load(k_ptrs + start_n * stride_kt)  # [HEAD_DIM, BLOCK_N]
        s = tl.dot(q, k, input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N], unscaled
        if MASKED:
            s = _mask(s, offs_m[:, None], cols[None, :], T, CAUSAL, float("-inf"))
        # qk_scale > 0, so the row max can be taken before scaling, and the scale and the shift fold into one FMA
        # per score: the softmax's CUDA-core work, not the tensor cores, bounds this loop at head dim 64
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)  # [BLOCK_M], log2 units
        p = tl.math.exp2(s * qk_scale - m_new[:, None])  # [BLOCK_M, BLOCK_N]
        alpha = tl.math.exp2(m_i - m_new)  # [BLOCK_M]
        l_i = l_i * alpha + tl.sum(p, 1)  # the normaliser counts dropped entries too: dropout acts after softmax
        acc = acc * alpha[:, None]
        if DROPOUT:
            keep = _dropout_keep(seed, bh, offs_m, start_n, DROP_THRESHOLD, BLOCK_N)
            p = tl.where(keep, p, 0.0)
        if MASKED:
            v = tl.load(v_ptrs + start_n * stride_vt, mask=cols[:, None] < T, other=0.0)  # [BLOCK_N, HEAD_DIM]
        else:
            v = tl.load(v_ptrs + start_n * stride_vt)  # [BLOCK_N, HEAD_DIM]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)  # [BLOCK_M, HEAD_DIM]
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE, SEED,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_ob, stride_oh, stride_ot,
    H, T, qk_scale, DROP_THRESHOLD, drop_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # grid: (cdiv(T, BLOCK_M), B * H). Each program computes O and the log-sum-exp for query rows
    # [start_m, start_m + BLOCK_M) of one (batch, head), sweeping key blocks of BLOCK_N. BLOCK_M % BLOCK_N == 0.
    # Causal work grows with the row index, so program 0 takes the last row block: long programs start first.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)

    q_ptrs = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :]
    k_ptrs = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh + offs_n[None, :] * stride_kt + offs_d[:, None]
    v_ptrs = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :]
    q = tl.load(q_ptrs, mask=offs_m[:, None] < T, other=0.0)  # [BLOCK_M, HEAD_DIM]
    seed = tl.load(SEED) if DROPOUT else 0

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    full_end, masked_end = _key_blocks(start_m, BLOCK_M, BLOCK_N, T, CAUSAL)
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, offs_m, 0, full_end, T, qk_scale,
        seed, bh, DROP_THRESHOLD, BLOCK_N, False, CAUSAL, DROPOUT, DOT_PRECISION,
    )
    acc, l_i, m_i = _attn_fwd_inner(
        acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, offs_m, full_end, masked_end, T, qk_scale,
        seed, bh, DROP_THRESHOLD, BLOCK_N, True, CAUSAL, DROPOUT, DOT_PRECISION,
    )

    row_scale = 1.0 / l_i  # one division per row, not one per element
    if DROPOUT:
        row_scale = row_scale * drop_scale
    acc = acc * row_scale[:, None]
    o_ptrs = O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=offs_m[:, None] < T)
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, m_i + tl.math.log2(l_i), mask=offs_m < T)


@triton.jit
def _attn_bwd_delta_kernel(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_ot,
    stride_dob, stride_doh, stride_dot,
    H, T,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    # grid: (cdiv(T, BLOCK_M), B * H). Each program writes delta = rowsum(O * dO) for BLOCK_M rows: the term
    # of dS = P * (dP - delta) that needs all of a row, computed once instead of in every key block.
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = offs_m[:, None] < T
    o = tl.load(O + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :], mask=rows, other=0.0)
    do = tl.load(DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :], mask=rows, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # [BLOCK_M]
    tl.store(DELTA + bh.to(tl.int64) * T + offs_m, delta, mask=offs_m < T)


@triton.jit
def _attn_bwd_dkdv_inner(
    dk, dv, k, v, q_ptrs, do_ptrs, lse_ptrs, delta_ptrs, stride_qt, stride_dot,
    offs_n, start_n, lo, hi, T, qk_scale, seed, bh, DROP_THRESHOLD, drop_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL_MASK: tl.constexpr, BOUNDS: tl.constexpr, DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Sweeps query blocks [lo, hi) for one key block, keys on rows so that dV += P^T dO and dK += dS^T Q are
    # plain dots. BOUNDS blocks may run past T: their rows load as zero with lse = +inf, so P is 0 there.
    # CAUSAL_MASK blocks overlap the diagonal.
    offs_m = tl.arange(0, BLOCK_M)
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        rows = start_m + offs_m  # [BLOCK_M]
        if BOUNDS:
            qT = tl.load(q_ptrs + start_m * stride_qt, mask=rows[None, :] < T, other=0.0)  # [HEAD_DIM, BLOCK_M]
            lse = tl.load(lse_ptrs + start_m, mask=rows < T, other=float("inf"))  # [BLOCK_M]
        else:
            qT = tl.load(q_ptrs + start_m * stride_qt)  # [HEAD_DIM, BLOCK_M]
            lse = tl.load(lse_ptrs + start_m)  # [BLOCK_M]
        sT = tl.dot(k, qT, input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_N, BLOCK_M]
        pT = tl.math.exp2(sT - lse[None, :])  # [BLOCK_N, BLOCK_M]
        if CAUSAL_MASK:
            pT = _mask(pT, rows[None, :], offs_n[:, None], T, True, 0.0)  # [BLOCK_N, BLOCK_M]: keys on rows
        if BOUNDS:
            do = tl.load(do_ptrs + start_m * stride_dot, mask=rows[:, None] < T, other=0.0)  # [BLOCK_M, HEAD_DIM]
            delta = tl.load(delta_ptrs + start_m, mask=rows < T, other=0.0)  # [BLOCK_M]
        else:
            do = tl.load(do_ptrs + start_m * stride_dot)  # [BLOCK_M, HEAD_DIM]
            delta = tl.load(delta_ptrs + start_m)  # [BLOCK_M]
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # [BLOCK_N, BLOCK_M]
        if DROPOUT:
            keep = _dropout_keep_t(seed, bh, rows, start_n, DROP_THRESHOLD, BLOCK_N)  # [BLOCK_N, BLOCK_M]
            dv = tl.dot(tl.where(keep, pT * drop_scale, 0.0).to(do.dtype), do, dv, input_precision=DOT_PRECISION)
            dpT = tl.where(keep, dpT * drop_scale, 0.0)
        else:
            dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=DOT_PRECISION)  # [BLOCK_N, HEAD_DIM]
        dsT = pT * (dpT - delta[None, :])  # [BLOCK_N, BLOCK_M]
        dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=DOT_PRECISION)  # [BLOCK_N, HEAD_DIM]
    return dk, dv


@triton.jit
def _attn_bwd_dq_inner(
    dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kt, stride_vt,
    offs_m, lo, hi, T, qk_scale, seed, bh, DROP_THRESHOLD, drop_scale,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, DROPOUT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Sweeps key blocks [lo, hi) for one query block: dQ += dS K. MASKED as in the forward.
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        if MASKED:
            kT = tl.load(k_ptrs + start_n * stride_kt, mask=cols[None, :] < T, other=0.0)  # [HEAD_DIM, BLOCK_N]
            vT = tl.load(v_ptrs + start_n * stride_vt, mask=cols[None, :] < T, other=0.0)  # [HEAD_DIM, BLOCK_N]
        else:
            kT = tl.load(k_ptrs + start_n * stride_kt)  # [HEAD_DIM, BLOCK_N]
            vT = tl.load(v_ptrs + start_n * stride_vt)  # [HEAD_DIM, BLOCK_N]
        s = tl.dot(q, kT, input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
        p = tl.math.exp2(s - lse[:, None])  # [BLOCK_M, BLOCK_N]
        if MASKED:
            p = _mask(p, offs_m[:, None], cols[None, :], T, CAUSAL, 0.0)
        dp = tl.dot(do, vT, input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N]
        if DROPOUT:
            keep = _dropout_keep(seed, bh, offs_m, start_n, DROP_THRESHOLD, BLOCK_N)
            dp = tl.where(keep, dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])  # [BLOCK_M, BLOCK_N]
        dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=DOT_PRECISION)  # [BLOCK_M, HEAD_DIM]
    return dq


@triton.jit
def _attn_bwd_kernel(
    Q, K, V, DO, DQ, DK, DV, LSE, DELTA, SEED,
    stride_qb, stride_qh, stride_qt,
    stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot,
    stride_dqb, stride_dqh, stride_dqt,
    stride_dkb, stride_dkh, stride_dkt,
    stride_dvb, stride_dvh, stride_dvt,
    H, T, qk_scale, sm_scale, DROP_THRESHOLD, drop_scale,
    HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, BLOCK_M1: tl.constexpr, BLOCK_N2: tl.constexpr,
    CAUSAL: tl.constexpr, DROPOUT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    # grid: (cdiv(T, BLOCK), B * H). Program j of a (batch, head) does two jobs, one after the other:
    #   1. dK, dV for key rows [j*BLOCK, (j+1)*BLOCK), sweeping the query blocks (of BLOCK_M1) that see them;
    #   2. dQ for query rows [j*BLOCK, (j+1)*BLOCK), sweeping the key blocks (of BLOCK_N2) they see.
    # Each accumulates in fp32 registers and is written once: no atomics, no T x T buffer. Under the causal mask
    # job 1 shrinks with j while job 2 grows, so every program does the same work, and one launch does both.
    # BLOCK % BLOCK_M1 == 0 and BLOCK % BLOCK_N2 == 0, so the diagonal starts on a sub-block boundary.
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    start = tl.program_id(0) * BLOCK
    offs = start + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, HEAD_DIM)
    in_bounds = offs[:, None] < T
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    do_base = DO + b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
    lse_base = LSE + bh.to(tl.int64) * T
    delta_base = DELTA + bh.to(tl.int64) * T
    seed = tl.load(SEED) if DROPOUT else 0

    # 1. dK, dV for this key block
    k = tl.load(k_base + offs[:, None] * stride_kt + offs_d[None, :], mask=in_bounds, other=0.0)  # [BLOCK, HEAD_DIM]
    v = tl.load(v_base + offs[:, None] * stride_vt + offs_d[None, :], mask=in_bounds, other=0.0)  # [BLOCK, HEAD_DIM]
    offs_m1 = tl.arange(0, BLOCK_M1)
    q_ptrs = q_base + offs_m1[None, :] * stride_qt + offs_d[:, None]  # [HEAD_DIM, BLOCK_M1]
    do_ptrs = do_base + offs_m1[:, None] * stride_dot + offs_d[None, :]  # [BLOCK_M1, HEAD_DIM]
    dk = tl.zeros([BLOCK, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK, HEAD_DIM], dtype=tl.float32)
    full_rows_end = (T // BLOCK_M1) * BLOCK_M1  # query blocks before this need no bounds mask
    if CAUSAL:
        # query blocks before this key block see none of it; the ones overlapping it need the causal mask
        dk, dv = _attn_bwd_dkdv_inner(
            dk, dv, k, v, q_ptrs, do_ptrs, lse_base + offs_m1, delta_base + offs_m1, stride_qt, stride_dot, offs, start,
            start, start + BLOCK, T, qk_scale, seed, bh, DROP_THRESHOLD, drop_scale,
            BLOCK_M1, BLOCK, True, True, DROPOUT, DOT_PRECISION,
        )
        lo = start + BLOCK
    else:
        lo = 0
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, q_ptrs, do_ptrs, lse_base + offs_m1, delta_base + offs_m1, stride_qt, stride_dot, offs, start,
        lo, full_rows_end, T, qk_scale, seed, bh, DROP_THRESHOLD, drop_scale,
        BLOCK_M1, BLOCK, False, False, DROPOUT, DOT_PRECISION,
    )
    dk, dv = _attn_bwd_dkdv_inner(
        dk, dv, k, v, q_ptrs, do_ptrs, lse_base + offs_m1, delta_base + offs_m1, stride_qt, stride_dot, offs, start,
        tl.maximum(lo, full_rows_end), T, T, qk_scale, seed, bh, DROP_THRESHOLD, drop_scale,
        BLOCK_M1, BLOCK, False, True, DROPOUT, DOT_PRECISION,
    )
    dk = dk * sm_scale  # S = scale * Q K^T, so dK = scale * dS^T Q
    dk_ptrs = DK + b.to(tl.int64) * stride_dkb + h.to(tl.int64) * stride_dkh + offs[:, None] * stride_dkt + offs_d[None, :]
    dv_ptrs = DV + b.to(tl.int64) * stride_dvb + h.to(tl.int64) * stride_dvh + offs[:, None] * stride_dvt + offs_d[None, :]
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=in_bounds)
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=in_bounds)

    # 2. dQ for this query block
    q = tl.load(q_base + offs[:, None] * stride_qt + offs_d[None, :], mask=in_bounds, other=0.0)  # [BLOCK, HEAD_DIM]
    do = tl.load(do_base + offs[:, None] * stride_dot + offs_d[None, :], mask=in_bounds, other=0.0)  # [BLOCK, HEAD_DIM]
    lse = tl.load(lse_base + offs, mask=offs < T, other=float("inf"))  # [BLOCK]
    delta = tl.load(delta_base + offs, mask=offs < T, other=0.0)  # [BLOCK]
    offs_n2 = tl.arange(0, BLOCK_N2)
    k_ptrs = k_base + offs_n2[None, :] * stride_kt + offs_d[:, None]  # [HEAD_DIM, BLOCK_N2]
    v_ptrs = v_base + offs_n2[None, :] * stride_vt + offs_d[:, None]  # [HEAD_DIM, BLOCK_N2]
    dq = tl.zeros([BLOCK, HEAD_DIM], dtype=tl.float32)
    full_end, masked_end = _key_blocks(start, BLOCK, BLOCK_N2, T, CAUSAL)
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kt, stride_vt, offs, 0, full_end, T, qk_scale,
        seed, bh, DROP_THRESHOLD, drop_scale, BLOCK_N2, False, CAUSAL, DROPOUT, DOT_PRECISION,
    )
    dq = _attn_bwd_dq_inner(
        dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kt, stride_vt, offs, full_end, masked_end, T, qk_scale,
        seed, bh, DROP_THRESHOLD, drop_scale, BLOCK_N2, True, CAUSAL, DROPOUT, DOT_PRECISION,
    )
    dq = dq * sm_scale
    dq_ptrs = DQ + b.to(tl.int64) * stride_dqb + h.to(tl.int64) * stride_dqh + offs[:, None] * stride_dqt + offs_d[None, :]
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=in_bounds)


# ----------------------------------------------------------------------------------------------------------------
# Tuned choices: which kernels run a call, and with which tiles
#
# One table says it all. A "triton" row gives the Triton kernels' tiles from its T on, until the next row of its
# pass, dtype and head dim: (BLOCK_M, BLOCK_N, num_warps, num_stages) for the forward, (BLOCK, BLOCK_M1, BLOCK_N2,
# num_warps, num_stages) for the backward. A "hopper" row sends the calls from its T on that have at least its number
# of (batch, head) pairs and that flash_hopper.supported accepts (a Hopper GPU, causal, no dropout, TMA-aligned
# strides) to the Hopper kernels, whose tiles are their own; the calls it does not take run the Triton row's tiles.
# The numbers come from an H100 in bf16 (BENCHMARKS.md has the runs): tools/tune_blocks.py times every tile
# candidate, tools/hopper_ab.py the two kernels against each other. On an H100 the tiles need up to 128 KB of shared
# memory (of 227 KB per block); a GPU with less, such as an RTX 3090 or 4090 (99 KB), runs the next smaller tiles
# that fit (_smaller).

_HALF = (torch.float16, torch.bfloat16)
_FP32 = (torch.float32,)
_ALL_D = SUPPORTED_HEAD_DIMS
TUNED = (
    # pass  dtypes  head dims     from T  backend   Triton tiles (None for the Hopper kernels, whose tiles are fixed)
    #
    # tune_blocks.py: up to 4096 keys, 64-row query blocks give more programs to fill the H100's 132 SMs
    ("fwd", _HALF, (16, 32, 64), 1,      "triton", (64, 64, 4, 3)),
    # tune_blocks.py: past 4096 keys, 128-row query blocks
    ("fwd", _HALF, (16, 32, 64), 4097,   "triton", (128, 64, 8, 3)),
    # tune_blocks.py: as at head dim 64, with the switch at 2048 keys
    ("fwd", _HALF, (128,),       1,      "triton", (64, 64, 4, 3)),
    # tune_blocks.py: past 2048 keys, 128-row query blocks
    ("fwd", _HALF, (128,),       2049,   "triton", (128, 64, 8, 3)),
    # hopper_ab.py and bench.py: the shortest T at which the Hopper forward beats the Triton one, eagerly too since
    # its launches skip Triton's argument binding (docs/design.md, "Which kernel runs where"; at the GPT-2 model's
    # shape 0.069 against 0.076 ms). Below it a program has few key tiles, and what it pays once (setting up three
    # partitions, loading Q, the epilogue) is not won back
    ("fwd", _HALF, (64, 128),    1024,   "hopper", None),
    # tune_blocks.py: best or within 2% of the best at every swept shape, D=64 and 128, T=256 to 16384
    ("bwd", _HALF, _ALL_D,       1,      "triton", (64, 32, 64, 4, 2)),
    # bench.py (docs/design.md, "Which kernel runs where"): at T=1024 the Hopper backward is the faster (1.08x at
    # head dim 64 with B=16, H=32; 1.13x at 128; 1.03x at the GPT-2 model's shape, in GPU time), but its fp32 dQ
    # buffer would raise those calls' peak memory from 260 to 388 MiB (73 -> 109 at the GPT-2 shape), and T=1024
    # keeps the smaller footprint it has always had; below 1024 its dQ reductions and launches cost more than the
    # Triton backward's second pass
    ("bwd", _HALF, (64, 128),    2048,   "hopper", None),
    # not swept: fp32's 4-byte elements and FMA (not tensor-core) dots take small tiles
    ("fwd", _FP32, _ALL_D,       1,      "triton", (64, 32, 4, 2)),
    # not swept, as the row above
    ("bwd", _FP32, _ALL_D,       1,      "triton", (64, 32, 32, 4, 2)),
)
FWD_CONFIG = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")  # what a forward config's numbers are
BWD_CONFIG = ("BLOCK", "BLOCK_M1", "BLOCK_N2", "num_warps", "num_stages")


def _index(table: tuple) -> dict:
    # TUNED as {(pass, dtype, head dim): (the T from which the Hopper kernels take a call or None, ((from T,
    # tiles), ...) longest first)} so that a call looks its choice up in one dict access; a pass, dtype and head
    # dim have one Hopper row at most
    index = {}
    for kind, dtypes, head_dims, from_t, backend, tiles in table:
        for dtype in dtypes:
            for D in head_dims:
                hopper_from, rows = index.get((kind, dtype, D), (None, ()))
                if backend == "hopper":
                    hopper_from = from_t
                else:
                    rows = tuple(sorted(rows + ((from_t, tiles),), reverse=True))
                index[kind, dtype, D] = (hopper_from, rows)
    return index


_CHOICES = _index(TUNED)


def _choice(kind: str, dtype: torch.dtype, D: int, T: int) -> tuple[bool, tuple]:
    """TUNED's choice for one pass ("fwd" or "bwd") of a call: (whether the Hopper kernels take it where they can,
    the Triton kernels' tiles)."""
    hopper_from, rows = _CHOICES[kind, dtype, D]
    hopper = hopper_from is not None and T >= hopper_from
    for from_t, tiles in rows:
        if T >= from_t:
            return hopper, tiles
    raise AssertionError(f"TUNED has no {kind} row for {dtype}, head dim {D}, T={T}")


def _smaller(config: tuple) -> Optional[tuple]:
    """The next configuration to try on a GPU that cannot run `config`: one pipeline stage fewer, then (at one
    stage, four warps) every block size that equals the largest halved, down to 32 (dropout draws its mask in
    groups of 32 columns). The block sizes are powers of two, so the kernels' divisibility rules
    (BLOCK_M % BLOCK_N, BLOCK % BLOCK_M1, BLOCK % BLOCK_N2) still hold. None when nothing smaller is left."""
    *blocks, num_warps, num_stages = config
    if num_stages > 1:
        return (*blocks, num_warps, num_stages - 1)
    largest = max(blocks)
    if largest <= 32:
        return None
    return (*[b // 2 if b == largest else b for b in blocks], 4, 1)


# (kernel, device, dtype, head dim, dropout, tuned config) -> the configuration that this GPU runs
_FITTING: dict = {}


def _launch_fitting(launch, config: tuple, key: tuple, cache: dict = _FITTING) -> None:
    # Triton raises OutOfResources before launching a kernel that needs more shared memory (or threads) than the
    # GPU has, so stepping down is safe; the step is remembered in `cache`, and later calls go straight to what fits.
    key = (*key, config)
    config = cache.get(key, config)
    while True:
        try:
            launch(*config)
            return
        except OutOfResources as err:
            smaller = _smaller(config)
            if smaller is None:
                raise RuntimeError(f"flash_attn: this GPU cannot run even the kernel's smallest tiles ({err}); "
                                   "use attn='sdpa' or attn='naive'") from err
            config = cache[key] = smaller


# ----------------------------------------------------------------------------------------------------------------
# Launchers


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 products: a user who asks for fp32 asks for its accuracy, not tf32's ~1e-3
    return "ieee" if dtype == torch.float32 else "tf32"


def _empty_bhtd(B: int, H: int, T: int, D: int, like: torch.Tensor) -> torch.Tensor:
    # (B, H, T, D) laid out as (B, T, H, D): the model's transpose back to (B, T, C) is then free
    return torch.empty((B, T, H, D), dtype=like.dtype, device=like.device).transpose(1, 2)


def _empty_grad(t: torch.Tensor) -> torch.Tensor:
    # A gradient in its input's layout when that is dense (autograd would copy a leaf's gradient into it
    # otherwise); for strided views of a qkv projection, (B, T, H, D), which the split's backward concatenates
    # without a transpose. (flash_attn_qkvpacked writes into one dqkv instead.)
    if t.is_contiguous():
        return torch.empty(t.shape, dtype=t.dtype, device=t.device)
    return _empty_bhtd(*t.shape, like=t)


def _drop_threshold(dropout_p: float) -> int:
    return int(round(dropout_p * (1 << DROPOUT_BITS)))


def _hopper_takes(backend: Optional[str], tuned: bool, q, k, v, causal, dropout_p, do=None) -> bool:
    # Whether a pass runs on the Hopper kernels: TUNED's choice where they can run the call (backend None), never
    # ("triton"), or always ("hopper", refusing a call they cannot run rather than quietly running another kernel)
    if backend is None:
        return tuned and flash_hopper is not None and flash_hopper.supported(q, k, v, causal, dropout_p, do)
    if backend == "triton":
        return False
    if backend != "hopper":
        raise ValueError(f"flash_attn: _backend must be one of {BACKENDS} or None, got {backend!r}")
    if flash_hopper is None or not flash_hopper.supported(q, k, v, causal, dropout_p, do):
        raise ValueError("flash_attn: _backend='hopper' cannot run this call: the Hopper kernels need a Hopper GPU, "
                         "a Triton with Gluon, fp16 or bf16, head dim 64 or 128, causal, no dropout and 16-byte "
                         "aligned strides")
    return True


def _run_fwd_kernel(q, k, v, o, lse, seed, causal, softmax_scale, dropout_p,
                    BLOCK_M, BLOCK_N, num_warps, num_stages) -> None:
    # One launch of the Triton forward with these tiles; Triton raises OutOfResources where they do not fit
    B, H, T, D = q.shape
    _attn_fwd_kernel[(triton.cdiv(T, BLOCK_M), B * H)](
        q, k, v, o, lse, seed if seed is not None else lse,  # without dropout the seed is never read
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        H, T, softmax_scale * LOG2E, _drop_threshold(dropout_p), 1.0 / (1.0 - dropout_p),
        HEAD_DIM=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, CAUSAL=causal, DROPOUT=dropout_p > 0,
        DOT_PRECISION=_dot_precision(q.dtype), num_warps=num_warps, num_stages=num_stages,
    )


def _run_bwd_kernel(dq, dk, dv, do, q, k, v, lse, delta, seed, causal, softmax_scale, dropout_p,
                    BLOCK, BLOCK_M1, BLOCK_N2, num_warps, num_stages) -> None:
    # One launch of the Triton backward with these tiles, as _run_fwd_kernel
    B, H, T, D = q.shape
    _attn_bwd_kernel[(triton.cdiv(T, BLOCK), B * H)](
        q, k, v, do, dq, dk, dv, lse, delta, seed if seed is not None else lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        dq.stride(0), dq.stride(1), dq.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2),
        dv.stride(0), dv.stride(1), dv.stride(2),
        H, T, softmax_scale * LOG2E, softmax_scale, _drop_threshold(dropout_p), 1.0 / (1.0 - dropout_p),
        HEAD_DIM=D, BLOCK=BLOCK, BLOCK_M1=BLOCK_M1, BLOCK_N2=BLOCK_N2, CAUSAL=causal, DROPOUT=dropout_p > 0,
        DOT_PRECISION=_dot_precision(q.dtype), num_warps=num_warps, num_stages=num_stages,
    )


def _attn_fwd(q, k, v, seed, causal, softmax_scale, dropout_p, backend=None, config=None):
    """o (B, H, T, D) and lse (B, H, T). backend: None (TUNED's choice), "hopper" or "triton"; config: the Triton
    forward's tiles (FWD_CONFIG), run as given (None: TUNED's, stepped down where they do not fit)."""
    B, H, T, D = q.shape
    o = _empty_bhtd(B, H, T, D, q)
    lse = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    hopper, tiles = _choice("fwd", q.dtype, D, T)
    if config is None and _hopper_takes(backend, hopper, q, k, v, causal, dropout_p):
        flash_hopper._attn_fwd(q, k, v, o, lse, softmax_scale * LOG2E)  # same o and lse, warp-specialized
        return o, lse
    launch = functools.partial(_run_fwd_kernel, q, k, v, o, lse, seed, causal, softmax_scale, dropout_p)
    if config is None:
        _launch_fitting(launch, tiles, ("fwd", q.device, q.dtype, D, dropout_p > 0))
    else:
        launch(*config)
    return o, lse


def _attn_bwd(do, q, k, v, o, lse, seed, causal, softmax_scale, dropout_p, backend=None, config=None):
    dq, dk, dv = _empty_grad(q), _empty_grad(k), _empty_grad(v)
    _attn_bwd_into(dq, dk, dv, do, q, k, v, o, lse, seed, causal, softmax_scale, dropout_p, backend, config)
    return dq, dk, dv


def _attn_bwd_packed(do, qkv, o, lse, seed, causal, softmax_scale, dropout_p, backend=None, config=None):
    dqkv = torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)  # (B, T, 3, H, D)
    _attn_bwd_into(*_unpack(dqkv), do, *_unpack(qkv), o, lse, seed, causal, softmax_scale, dropout_p, backend, config)
    return dqkv


def _unpack(qkv: torch.Tensor) -> list:
    # (B, T, 3, H, D) -> q, k, v as (B, H, T, D) views
    return [t.transpose(1, 2) for t in qkv.unbind(2)]


def _attn_bwd_into(dq, dk, dv, do, q, k, v, o, lse, seed, causal, softmax_scale, dropout_p, backend, config):
    # backend and config as in _attn_fwd, config being the Triton backward's tiles (BWD_CONFIG)
    B, H, T, D = q.shape
    if do.stride(-1) != 1:  # autograd can hand us an expanded or transposed gradient; rare, so a copy is fine
        do = do.contiguous()
    delta = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
    _attn_bwd_delta_kernel[(triton.cdiv(T, DELTA_BLOCK), B * H)](
        o, do, delta,
        o.stride(0), o.stride(1), o.stride(2),
        do.stride(0), do.stride(1), do.stride(2),
        H, T, HEAD_DIM=D, BLOCK_M=DELTA_BLOCK,
    )
    hopper, tiles = _choice("bwd", q.dtype, D, T)
    if config is None and _hopper_takes(backend, hopper, q, k, v, causal, dropout_p, do):
        flash_hopper._attn_bwd(do, q, k, v, lse, delta, dq, dk, dv, softmax_scale, softmax_scale * LOG2E)
        return
    launch = functools.partial(_run_bwd_kernel, dq, dk, dv, do, q, k, v, lse, delta, seed, causal, softmax_scale,
                               dropout_p)
    if config is None:
        _launch_fitting(launch, tiles, ("bwd", q.device, q.dtype, D, dropout_p > 0))
    else:
        launch(*config)


# ----------------------------------------------------------------------------------------------------------------
# torch ops (opaque to torch.compile, so the model compiles without graph breaks) and the autograd Function.
#
# The ops are defined with the plain torch.library API and only a backend kernel: calling one is a C++ dispatch
# to the launcher. torch.library.custom_op with register_autograd does the same job but runs several Python
# layers per call, which measured 0.2 ms per forward+backward on the H100 host (tools/overhead.py) - more than
# the kernels themselves take at the char model's shape. Autograd lives in _FlashAttention, which torch.compile
# traces like any autograd.Function. `backend` and `config` are the launchers' own (None: TUNED's choice); the
# dispatcher parses them in C++, like the other arguments.

_lib = torch.library.Library("flashgpt", "DEF")
_lib.define(
    "attn_fwd(Tensor q, Tensor k, Tensor v, Tensor? seed, bool causal, float softmax_scale, float dropout_p, "
    "str? backend=None, int[]? config=None) -> (Tensor, Tensor)"
)
_lib.define(
    "attn_bwd(Tensor do, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor? seed, bool causal, "
    "float softmax_scale, float dropout_p, str? backend=None, int[]? config=None) -> (Tensor, Tensor, Tensor)"
)
_lib.define(
    "attn_bwd_packed(Tensor do, Tensor qkv, Tensor o, Tensor lse, Tensor? seed, bool causal, float softmax_scale, "
    "float dropout_p, str? backend=None, int[]? config=None) -> Tensor"
)
for _device in ("CUDA", "CPU"):  # CPU: only reachable with TRITON_INTERPRET=1 (flash_attn checks)
    _lib.impl("attn_fwd", _attn_fwd, _device)
    _lib.impl("attn_bwd", _attn_bwd, _device)
    _lib.impl("attn_bwd_packed", _attn_bwd_packed, _device)


@torch.library.register_fake("flashgpt::attn_fwd")
def _(q, k, v, seed, causal, softmax_scale, dropout_p, backend=None, config=None):
    B, H, T, D = q.shape
    return _empty_bhtd(B, H, T, D, q), q.new_empty((B, H, T), dtype=torch.float32)


@torch.library.register_fake("flashgpt::attn_bwd")
def _(do, q, k, v, o, lse, seed, causal, softmax_scale, dropout_p, backend=None, config=None):
    return _empty_grad(q), _empty_grad(k), _empty_grad(v)


@torch.library.register_fake("flashgpt::attn_bwd_packed")
def _(do, qkv, o, lse, seed, causal, softmax_scale, dropout_p, backend=None, config=None):
    return torch.empty(qkv.shape, dtype=qkv.dtype, device=qkv.device)


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, seed, causal, softmax_scale, dropout_p, backend, fwd_config, bwd_config):
        o, lse = torch.ops.flashgpt.attn_fwd(q, k, v, seed, causal, softmax_scale, dropout_p, backend, fwd_config)
        ctx.save_for_backward(q, k, v, o, lse, seed)
        ctx.causal, ctx.softmax_scale, ctx.dropout_p = causal, softmax_scale, dropout_p
        ctx.backend, ctx.bwd_config = backend, bwd_config
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, seed = ctx.saved_tensors
        dq, dk, dv = torch.ops.flashgpt.attn_bwd(do, q, k, v, o, lse, seed, ctx.causal, ctx.softmax_scale,
                                                 ctx.dropout_p, ctx.backend, ctx.bwd_config)
        return dq, dk, dv, None, None, None, None, None, None, None


class _FlashAttentionQKVPacked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qkv, seed, causal, softmax_scale, dropout_p, backend, fwd_config, bwd_config):
        o, lse = torch.ops.flashgpt.attn_fwd(*_unpack(qkv), seed, causal, softmax_scale, dropout_p, backend,
                                             fwd_config)
        ctx.save_for_backward(qkv, o, lse, seed)
        ctx.causal, ctx.softmax_scale, ctx.dropout_p = causal, softmax_scale, dropout_p
        ctx.backend, ctx.bwd_config = backend, bwd_config
        return o.transpose(1, 2)  # (B, T, H, D), contiguous

    @staticmethod
    def backward(ctx, do):
        qkv, o, lse, seed = ctx.saved_tensors
        dqkv = torch.ops.flashgpt.attn_bwd_packed(do.transpose(1, 2), qkv, o, lse, seed, ctx.causal,
                                                  ctx.softmax_scale, ctx.dropout_p, ctx.backend, ctx.bwd_config)
        return dqkv, None, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------------------------
# Public API


def interpreting() -> bool:
    """Whether Triton runs kernels through its interpreter (TRITON_INTERPRET set to anything but "" or "0"), which
    is what lets flash_attn take CPU tensors. Triton reads the variable when a kernel is defined, so set it before
    importing this module."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _version(text: str) -> tuple[int, int]:
    major, minor = re.match(r"(\d+)\.(\d+)", text).groups()
    return int(major), int(minor)


def interpreter_problem(triton_version: str | None = None, numpy_version: str | None = None) -> str | None:
    """Why Triton's interpreter cannot run these kernels with these versions (default: the installed ones), or None
    when it can. Before 3.7 the interpreter turns a loop bound computed from a program id (a 1-element numpy array
    there) into a Python int with int(), which numpy refuses from 2.4 on; every kernel here loops to such a bound."""
    triton_version = triton_version or triton.__version__
    numpy_version = numpy_version or np.__version__
    if _version(triton_version) < (3, 7) and _version(numpy_version) >= (2, 4):
        return (f"Triton {triton_version}'s interpreter cannot run with numpy {numpy_version}: "
                f"pip install 'numpy<2.4' (or a torch whose triton is 3.7 or newer)")
    return None


def _check_off_gpu(q: torch.Tensor, caller: str, instead: str = "") -> None:
    # Tensors off a CUDA GPU run the kernels only in Triton's interpreter: refused when it is off, when it cannot
    # run with this triton and numpy, and in bf16, whose tl.dot the interpreter computes wrongly (relative errors of
    # 1e8 measured) rather than answered. instead: what else the caller could use, ending in ", ".
    if q.device.type == "cuda":
        return
    if not interpreting():
        raise RuntimeError(f"{caller}: tensors are on '{q.device.type}', but the Triton kernel runs on CUDA GPUs "
                           f"only. Move them to a GPU, {instead}or set TRITON_INTERPRET=1 before importing triton to "
                           "run the kernel (slowly) on the CPU.")
    if problem := interpreter_problem():
        raise RuntimeError(f"{caller}: {problem}")
    if q.dtype == torch.bfloat16:
        raise ValueError(f"{caller}: bfloat16 on the CPU runs in Triton's interpreter, which computes bf16 dot "
                         "products wrongly: use float16 or float32 there, or bfloat16 on a GPU")


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, dropout_p: float) -> None:
    if not isinstance(causal, bool):  # bool(None) would quietly run non-causal, bool("False") causal
        raise ValueError(f"flash_attn: causal must be True or False, got {causal!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"flash_attn: {name} must be a 4-d tensor shaped (B, H, T, D), got {got}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(
            f"flash_attn: q, k, v must have the same shape (B, H, T, D) (causal self-attention), got "
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    B, H, T, D = q.shape
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"flash_attn: head dim {D} is not supported; supported head dims are {SUPPORTED_HEAD_DIMS}")
    if T == 0 or B == 0 or H == 0:
        raise ValueError(f"flash_attn: empty input of shape {tuple(q.shape)}")
    if B * H > 65535:  # (batch, head) pairs are the grid's second axis, which CUDA caps at 65535
        raise ValueError(f"flash_attn: B * H = {B * H} is more than 65535; split the batch into smaller calls")
    for name, t in (("q", q), ("k", k), ("v", v)):
        # element offsets within one (batch, head) are 32-bit in the kernels; past that they would wrap silently
        if (T - 1) * t.stride(2) + D > 2**31 - 1:
            raise ValueError(f"flash_attn: {name} with T={T} and row stride {t.stride(2)} is too long for the "
                             "kernels' 32-bit offsets; use a shorter sequence or a narrower tensor")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"flash_attn: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"flash_attn: dtype {q.dtype} is not supported; use one of {SUPPORTED_DTYPES}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"flash_attn: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    _check_off_gpu(q, "flash_attn", instead="use attn='sdpa' or attn='naive', ")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1:
            raise ValueError(
                f"flash_attn: {name} must have unit stride in its last (head) dim, got strides {t.stride()}; "
                "call .contiguous() on it first"
            )
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"flash_attn: dropout_p must be in [0, 1), got {dropout_p}")
    if _drop_threshold(dropout_p) >= 1 << DROPOUT_BITS:  # every probability would be dropped
        raise ValueError(f"flash_attn: dropout_p={dropout_p} rounds to 1 at the kernels' {DROPOUT_BITS}-bit "
                         f"resolution: use dropout_p < {1 - 2.0 ** -(DROPOUT_BITS + 1)}")


def _draw_seed(device: torch.device) -> torch.Tensor:
    # From torch's generator for `device`, so torch.manual_seed makes dropout reproducible. It stays a device
    # tensor (no host sync) and torch.compile traces the draw like any other random op.
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)


def _check_choices(backend: Optional[str], fwd_config, bwd_config, q: torch.Tensor, k: torch.Tensor,
                   v: torch.Tensor, causal: bool, dropout_p: float) -> None:
    # The private overrides, checked once up front (and only when one is given, so a plain call pays nothing)
    if backend not in (None, *BACKENDS):
        raise ValueError(f"flash_attn: _backend must be one of {BACKENDS} or None, got {backend!r}")
    for name, config, fields in (("_fwd_config", fwd_config, FWD_CONFIG), ("_bwd_config", bwd_config, BWD_CONFIG)):
        if config is None:
            continue
        if backend == "hopper":
            raise ValueError(f"flash_attn: {name} sets the Triton kernels' tiles; the Hopper kernels' are fixed")
        if len(config) != len(fields) or not all(isinstance(n, int) and n > 0 for n in config):
            raise ValueError(f"flash_attn: {name} must be {len(fields)} positive ints {fields}, got {config!r}")
    if backend == "hopper":  # the forward's conditions; the backward checks dO's strides when it has it
        _hopper_takes(backend, True, q, k, v, causal, dropout_p)


def flash_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    softmax_scale: Optional[float] = None,
    dropout_p: float = 0.0,
    *,
    _backend: Optional[str] = None,
    _fwd_config: Optional[tuple] = None,
    _bwd_config: Optional[tuple] = None,
) -> torch.Tensor:
    """Fused (causal) attention softmax(q k^T * scale) v over (B, H, T, D) tensors; differentiable.

    softmax_scale defaults to 1/sqrt(D). dropout_p drops attention probabilities (after the softmax, kept ones
    scaled by 1/(1-p)) with a mask drawn from torch's RNG. Head dims 16, 32, 64, 128; fp16, bf16, fp32
    (accumulation is fp32 in every case). Returns (B, H, T, D) in q's dtype.

    For tests and tuning: _backend forces "hopper" or "triton" kernels (None: TUNED's choice); _fwd_config and
    _bwd_config run that pass on the Triton kernels with these tiles (FWD_CONFIG, BWD_CONFIG), as given.
    """
    _check_inputs(q, k, v, causal, dropout_p)
    if _backend is not None or _fwd_config is not None or _bwd_config is not None:
        _check_choices(_backend, _fwd_config, _bwd_config, q, k, v, causal, dropout_p)
    scale = _scale(softmax_scale, q)
    seed = _draw_seed(q.device) if dropout_p > 0 else None
    return _FlashAttention.apply(q, k, v, seed, causal, scale, float(dropout_p), _backend, _fwd_config,
                                 _bwd_config)


def flash_attn_qkvpacked(
    qkv: torch.Tensor,
    causal: bool = True,
    softmax_scale: Optional[float] = None,
    dropout_p: float = 0.0,
    *,
    _backend: Optional[str] = None,
    _fwd_config: Optional[tuple] = None,
    _bwd_config: Optional[tuple] = None,
) -> torch.Tensor:
    """flash_attn on q, k, v packed in one (B, T, 3, H, D) tensor, such as the qkv projection's output viewed
    that way; returns (B, T, H, D). The gradient comes back as one (B, T, 3, H, D) tensor written by the kernel,
    where separate q, k, v would leave autograd three gradients to concatenate. The private arguments are
    flash_attn's.
    """
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != 5 or qkv.shape[2] != 3:
        got = tuple(qkv.shape) if isinstance(qkv, torch.Tensor) else type(qkv).__name__
        raise ValueError(f"flash_attn_qkvpacked: qkv must be a 5-d tensor shaped (B, T, 3, H, D), got {got}")
    q, k, v = _unpack(qkv)
    _check_inputs(q, k, v, causal, dropout_p)
    if _backend is not None or _fwd_config is not None or _bwd_config is not None:
        _check_choices(_backend, _fwd_config, _bwd_config, q, k, v, causal, dropout_p)
    scale = _scale(softmax_scale, q)
    seed = _draw_seed(qkv.device) if dropout_p > 0 else None
    return _FlashAttentionQKVPacked.apply(qkv, seed, causal, scale, float(dropout_p), _backend, _fwd_config,
                                          _bwd_config)


def _scale(softmax_scale: Optional[float], q: torch.Tensor, caller: str = "flash_attn") -> float:
    # 1/sqrt(D) by default; numbers.Real takes Python's and numpy's floats and ints, not a string or a tensor
    if softmax_scale is None:
        return 1.0 / math.sqrt(q.shape[-1])
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real) or not (
            softmax_scale > 0 and math.isfinite(softmax_scale)):
        raise ValueError(f"{caller}: softmax_scale must be a positive finite number or None, got {softmax_scale!r}")
    return float(softmax_scale)


def dropout_mask(seed: torch.Tensor, B: int, H: int, T: int, dropout_p: float) -> torch.Tensor:
    """The (B, H, T, T) bool keep-mask that a flash_attn call whose seed tensor is `seed` applies."""
    mask = torch.empty((B, H, T, T), dtype=torch.int8, device=seed.device)
    grid = (triton.cdiv(T, MASK_BLOCK), triton.cdiv(T, MASK_BLOCK), B * H)
    _dropout_mask_kernel[grid](mask, seed, T, _drop_threshold(dropout_p), BLOCK=MASK_BLOCK)
    return mask.bool()
