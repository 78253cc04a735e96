"""
A variant of flash_decode.py for a same-run A/B (tools/decode_tma_ab.py): whole key blocks loaded through host-side
TMA descriptors (USE_TMA). No torch op; call _decode_attn.

Attention of a few new queries against a longer key/value cache, in Triton: the kernel that generation decodes with.

Public surface:
    flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens, softmax_scale=None, num_splits=None)
                                                              the fused kernel, forward only
    attention_with_kvcache_ref(q, k_cache, v_cache, cache_seqlens, softmax_scale=None)
                                                              the plain fp32 reference the tests use

Shapes follow FlashAttention's flash_attn_with_kvcache: q is (B, Tq, H, D), the caches are (B, S, H, D) for a cache
of S positions, and cache_seqlens is a (B,) int32 tensor on the GPU holding, per batch row, how many cache
positions are filled, the Tq new keys included (the caller writes them into the cache first). Query i of row b
sits at position cache_seqlens[b] - Tq + i and sees keys 0 ... cache_seqlens[b] - Tq + i: the causal mask aligned
to the bottom right, as in flash_attn_with_kvcache and torch's causal_lower_right. The lengths are read on the GPU,
so one call captured in a CUDA graph serves every step of a generation while the lengths tensor advances.

Split-KV (flash-decoding): one new query per row leaves B * H programs, which at batch 1 fill a tenth of an H200.
So the keys of each row are cut into num_splits runs, one program each; each program writes its normalised partial
output and log-sum-exp, and the last program of a (row, head) to finish, found with an atomic counter, merges the
partials by their log-sum-exps. Merging inside the same kernel saves the second launch, which at 8k cached tokens
costs about a third of the attention's own time. All inputs are read through their strides (the last dim must have
unit stride), so k and v can be views of one packed cache.
"""
import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from flash_kernel import LOG2E, SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS, interpreter_problem, interpreting

MAX_SPLITS = 64  # the merge holds one [MAX_SPLITS, HEAD_DIM] fp32 tile; 64 x 128 is 64 registers a thread
# The default split: about PROGRAMS_PER_SM programs per multiprocessor, but at least MIN_BLOCKS_PER_SPLIT key
# blocks in each, since every split pays a fixed cost (q load, partial store, the atomic) that a short run of keys
# does not amortise; rounded down to a power of two, so the merge's [SPLITS_POW2, HEAD_DIM] tile has no idle rows.
# From a sweep on an H200 at H=12, D=64 (results/generation.md): batch 1 was fastest at 8 splits for 1k cached
# tokens and at 22-32 from 8k on (33 ran 2-3% slower than 32); batch 8 at 4 splits from 1k to 32k.
PROGRAMS_PER_SM = 3
MIN_BLOCKS_PER_SPLIT = 2


# ----------------------------------------------------------------------------------------------------------------
# Reference


def attention_with_kvcache_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    softmax_scale: Optional[float] = None,
) -> torch.Tensor:
    """Matmul, bottom-right causal mask over each row's filled cache, softmax, matmul, in fp32. Returns fp32
    (B, Tq, H, D); holds the full (B, H, Tq, S) score matrix."""
    B, Tq, H, D = q.shape
    S = k_cache.shape[1]
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(D)
    qf, kf, vf = [t.float().transpose(1, 2) for t in (q, k_cache, v_cache)]  # (B, H, T, D)
    att = (qf @ kf.transpose(-2, -1)) * scale  # (B, H, Tq, S)
    last_key = cache_seqlens.to(q.device).long()[:, None] - Tq + torch.arange(Tq, device=q.device)  # (B, Tq)
    visible = torch.arange(S, device=q.device)[None, None, :] <= last_key[:, :, None]  # (B, Tq, S)
    att = att.masked_fill(~visible[:, None], float("-inf"))
    return (torch.softmax(att, dim=-1) @ vf).transpose(1, 2)  # (B, Tq, H, D)


# ----------------------------------------------------------------------------------------------------------------
# Kernel


@triton.jit
def _decode_inner(
    acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, q_pos, lo, hi, L, qk_scale, K_DESC, V_DESC, b, h,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
):
    # Sweeps key blocks [lo, hi). MASKED blocks may hold keys past the row's filled length L or after a query's
    # position: they are loaded under a bounds mask and their scores set to -inf. Unmasked blocks are visible to
    # every query row of the program, so they need neither.
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        if MASKED:
            k = tl.load(k_ptrs + start_n * stride_kt, mask=cols[None, :] < L, other=0.0)  # [HEAD_DIM, BLOCK_N]
        elif USE_TMA:
            k = tl.trans(K_DESC.load([b, start_n, h, 0]).reshape([BLOCK_N, q.shape[1]]))
        else:
            k = tl.load(k_ptrs + start_n * stride_kt)  # [HEAD_DIM, BLOCK_N]
        s = tl.dot(q, k, input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_N], unscaled
        if MASKED:
            s = tl.where(cols[None, :] <= q_pos[:, None], s, float("-inf"))
        # qk_scale > 0, so the row max can be taken before scaling and the scale and shift fold into one FMA
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)  # [BLOCK_M], log2 units
        if MASKED:
            # a row may see no key of this split at all (Tq > 1): shift by 0 then, so exp2 gives 0, not NaN
            m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])  # [BLOCK_M, BLOCK_N]
        alpha = tl.math.exp2(m_i - m_new)  # [BLOCK_M]
        l_i = l_i * alpha + tl.sum(p, 1)
        if MASKED:
            v = tl.load(v_ptrs + start_n * stride_vt, mask=cols[:, None] < L, other=0.0)  # [BLOCK_N, HEAD_DIM]
        elif USE_TMA:
            v = V_DESC.load([b, start_n, h, 0]).reshape([BLOCK_N, q.shape[1]])
        else:
            v = tl.load(v_ptrs + start_n * stride_vt)  # [BLOCK_N, HEAD_DIM]
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)  # [BLOCK_M, HEAD_DIM]
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _decode_merge(
    O_PART, LSE_PART, O, part_base, o_base, stride_ot, row_lo, row_hi, Tq,
    NUM_SPLITS, HEAD_DIM: tl.constexpr, SPLITS_POW2: tl.constexpr,
):
    # Merges the NUM_SPLITS partial outputs of query rows [row_lo, row_hi) of one (batch, head), one row at a time:
    # out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M), M = max_s lse_s. All splits of a row in one
    # [SPLITS_POW2, HEAD_DIM] load, so the row costs one memory round trip, not NUM_SPLITS. .cg reads from L2,
    # where the other programs' stores are, past this multiprocessor's L1.
    offs_s = tl.arange(0, SPLITS_POW2)
    offs_d = tl.arange(0, HEAD_DIM)
    for row in range(row_lo, row_hi):
        lse = tl.load(LSE_PART + part_base + offs_s * Tq + row, mask=offs_s < NUM_SPLITS, other=float("-inf"),
                      cache_modifier=".cg")  # [SPLITS_POW2]
        o = tl.load(O_PART + (part_base + offs_s[:, None] * Tq + row) * HEAD_DIM + offs_d[None, :],
                    mask=offs_s[:, None] < NUM_SPLITS, other=0.0, cache_modifier=".cg")  # [SPLITS_POW2, HEAD_DIM]
        m = tl.max(lse, 0)
        w = tl.math.exp2(lse - tl.where(m == float("-inf"), 0.0, m))  # [SPLITS_POW2]; 0 for empty splits
        out = tl.sum(o * w[:, None], 0) / tl.sum(w, 0)  # [HEAD_DIM]
        tl.store(O + o_base + row * stride_ot + offs_d, out.to(O.dtype.element_ty))


@triton.jit
def _decode_fwd_kernel(
    Q, K, V, SEQLENS, O, O_PART, LSE_PART, LOCKS, K_DESC, V_DESC,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    H, Tq, S, qk_scale, NUM_SPLITS,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLITS_POW2: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_TMA: tl.constexpr,
):
    # grid: (NUM_SPLITS, cdiv(Tq, BLOCK_M), B * H). Each program takes query rows [m0, m0 + BLOCK_M) of one
    # (batch, head) against the split-th of NUM_SPLITS equal runs of whole key blocks of BLOCK_N (runs cut from the
    # keys these rows need, so every split has work whatever the row's length). Tiles: q [BLOCK_M, HEAD_DIM],
    # k [HEAD_DIM, BLOCK_N], v [BLOCK_N, HEAD_DIM], acc [BLOCK_M, HEAD_DIM] in fp32.
    # NUM_SPLITS is a run-time value, so one compiled kernel serves every count with the same next power of two,
    # SPLITS_POW2. SPLITS_POW2 == 1: the program writes O. Otherwise it writes its normalised partial output and
    # log-sum-exp (base 2) to O_PART / LSE_PART, (B * H, NUM_SPLITS, Tq, HEAD_DIM) and (B * H, NUM_SPLITS, Tq) in
    # fp32, and bumps LOCKS[bh, m-block]; the program that bumps it last merges the partials into O and resets it.
    split = tl.program_id(0)
    pid_m = tl.program_id(1)
    bh = tl.program_id(2)
    b = bh // H
    h = bh % H
    L = tl.minimum(tl.load(SEQLENS + b), S)  # the clamp keeps a bad length from reading past the cache
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_pos = L - Tq + offs_m  # [BLOCK_M], each query's position: it sees keys [0, q_pos]

    kv_end = tl.minimum(L, L - Tq + m0 + BLOCK_M)  # the block's last row sees keys < kv_end
    blocks_per_split = tl.cdiv(tl.cdiv(kv_end, BLOCK_N), NUM_SPLITS)
    lo = split * blocks_per_split * BLOCK_N
    hi = tl.minimum(lo + blocks_per_split * BLOCK_N, kv_end)
    # keys up to the block's first query are visible to all its rows: whole blocks of those need no mask
    full_end = tl.maximum(lo, tl.minimum(hi, (L - Tq + m0 + 1) // BLOCK_N * BLOCK_N))

    q_ptrs = Q + b.to(tl.int64) * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :]
    k_ptrs = K + b.to(tl.int64) * stride_kb + h * stride_kh + offs_n[None, :] * stride_kt + offs_d[:, None]
    v_ptrs = V + b.to(tl.int64) * stride_vb + h * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :]
    q = tl.load(q_ptrs, mask=offs_m[:, None] < Tq, other=0.0)  # [BLOCK_M, HEAD_DIM]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    acc, l_i, m_i = _decode_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, q_pos, lo, full_end,
                                  L, qk_scale, K_DESC, V_DESC, b, h, BLOCK_N, False, DOT_PRECISION, USE_TMA)
    acc, l_i, m_i = _decode_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, q_pos, full_end, hi,
                                  L, qk_scale, K_DESC, V_DESC, b, h, BLOCK_N, True, DOT_PRECISION, USE_TMA)

    o_base = b.to(tl.int64) * stride_ob + h * stride_oh
    if SPLITS_POW2 == 1:
        acc = acc * (1.0 / l_i)[:, None]
        o_ptrs = O + o_base + offs_m[:, None] * stride_ot + offs_d[None, :]
        tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=offs_m[:, None] < Tq)
    else:
        # an empty split (l = 0) stores o = 0 and lse = -inf, which the merge weighs by 0
        has_keys = l_i > 0.0
        acc = acc * (1.0 / tl.where(has_keys, l_i, 1.0))[:, None]
        lse = tl.where(has_keys, m_i + tl.math.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))  # [BLOCK_M]
        part_base = (bh.to(tl.int64) * NUM_SPLITS + split) * Tq
        tl.store(O_PART + (part_base + offs_m[:, None]) * HEAD_DIM + offs_d[None, :], acc, mask=offs_m[:, None] < Tq)
        tl.store(LSE_PART + part_base + offs_m, lse, mask=offs_m < Tq)
        # every thread's stores come before the (single-thread) atomic, whose release makes them visible to the
        # program that sees the count complete; its acquire orders that program's loads after all of them
        tl.debug_barrier()
        lock = LOCKS + bh * tl.num_programs(1) + pid_m
        if tl.atomic_add(lock, 1, sem="acq_rel", scope="gpu") == NUM_SPLITS - 1:
            tl.store(lock, 0)  # every other split has already counted: ready for the next call
            _decode_merge(O_PART, LSE_PART, O, bh.to(tl.int64) * NUM_SPLITS * Tq, o_base, stride_ot,
                          m0, tl.minimum(m0 + BLOCK_M, Tq), Tq, NUM_SPLITS, HEAD_DIM, SPLITS_POW2)


# ----------------------------------------------------------------------------------------------------------------
# Launcher


def _config(Tq: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages). BLOCK_M is the 16 rows a tensor-core dot needs at least (one
    query pads to 16; the dot is not what bounds decoding, the key and value bytes are), more for longer Tq."""
    block_m = min(64, max(16, triton.next_power_of_2(Tq)))
    if dtype == torch.float32:  # 4-byte tiles and FMA dots: keep them small
        return block_m, 32, 4, 2
    return block_m, 64, 4, 3


@functools.cache
def _multiprocessors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _default_num_splits(programs: int, key_blocks: int, multiprocessors: int) -> int:
    """Splits that give about PROGRAMS_PER_SM programs per multiprocessor, with MIN_BLOCKS_PER_SPLIT key blocks of
    the cache's capacity in each, rounded down to a power of two. One where programs without splits already fill
    the GPU."""
    want = PROGRAMS_PER_SM * multiprocessors // programs
    n = max(1, min(want, key_blocks // MIN_BLOCKS_PER_SPLIT, MAX_SPLITS))
    return 1 << (n.bit_length() - 1)


# one zeroed int32 counter per (batch, head, query block) of a split call, per device and stream; each call leaves
# its counters at 0 again. Two calls running at the same time on two streams would share counters: hence the stream
# in the key. (Two graphs captured on one stream and replayed concurrently on two others would still share them.)
_LOCKS: dict = {}


def _locks(device: torch.device, n: int) -> torch.Tensor:
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    key = (device, stream)
    locks = _LOCKS.get(key)
    if locks is None or locks.numel() < n:
        locks = _LOCKS[key] = torch.zeros(max(n, 1024), dtype=torch.int32, device=device)
    return locks


def _decode_attn(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    softmax_scale: float,
    num_splits: int,
    config: Optional[tuple[int, int, int, int]] = None,
    use_tma: bool = True,
) -> torch.Tensor:
    """The launch, without input checks. config = (BLOCK_M, BLOCK_N, num_warps, num_stages) overrides _config,
    for tuning sweeps."""
    B, Tq, H, D = q.shape
    S = k_cache.shape[1]
    BLOCK_M, BLOCK_N, num_warps, num_stages = config or _config(Tq, q.dtype)
    m_blocks = triton.cdiv(Tq, BLOCK_M)
    o = torch.empty((B, Tq, H, D), dtype=q.dtype, device=q.device)
    if num_splits > 1:
        o_part = torch.empty((B * H, num_splits, Tq, D), dtype=torch.float32, device=q.device)
        lse_part = torch.empty((B * H, num_splits, Tq), dtype=torch.float32, device=q.device)
        locks = _locks(q.device, B * H * m_blocks)
    else:  # never read: any tensor will do
        o_part = lse_part = locks = o
    block = [1, BLOCK_N, 1, D]
    k_desc = TensorDescriptor(k_cache, list(k_cache.shape), list(k_cache.stride()), block)
    v_desc = TensorDescriptor(v_cache, list(v_cache.shape), list(v_cache.stride()), block)
    _decode_fwd_kernel[(num_splits, m_blocks, B * H)](
        q, k_cache, v_cache, cache_seqlens, o, o_part, lse_part, locks, k_desc, v_desc,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        H, Tq, S, softmax_scale * LOG2E, num_splits,
        HEAD_DIM=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, SPLITS_POW2=triton.next_power_of_2(num_splits),
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # fp32 in, fp32 accuracy out
        USE_TMA=use_tma, num_warps=num_warps, num_stages=num_stages,
    )
    return o


