"""
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

from flash_kernel import LOG2E, SUPPORTED_DTYPES, SUPPORTED_HEAD_DIMS, _check_off_gpu, _scale

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
    acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, q_pos, lo, hi, L, qk_scale,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, DOT_PRECISION: tl.constexpr,
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
    Q, K, V, SEQLENS, O, O_PART, LSE_PART, LOCKS,
    stride_qb, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh,
    H, Tq, S, qk_scale, NUM_SPLITS,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    SPLITS_POW2: tl.constexpr, DOT_PRECISION: tl.constexpr,
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
                                  L, qk_scale, BLOCK_N, False, DOT_PRECISION)
    acc, l_i, m_i = _decode_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, q_pos, full_end, hi,
                                  L, qk_scale, BLOCK_N, True, DOT_PRECISION)

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
    _decode_fwd_kernel[(num_splits, m_blocks, B * H)](
        q, k_cache, v_cache, cache_seqlens, o, o_part, lse_part, locks,
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        o.stride(0), o.stride(1), o.stride(2),
        H, Tq, S, softmax_scale * LOG2E, num_splits,
        HEAD_DIM=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, SPLITS_POW2=triton.next_power_of_2(num_splits),
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # fp32 in, fp32 accuracy out
        num_warps=num_warps, num_stages=num_stages,
    )
    return o


# ----------------------------------------------------------------------------------------------------------------
# torch op: opaque to torch.compile, so a compiled decode step calls the launcher from its generated code without a
# graph break. Defined like flash_kernel.py's ops (the plain torch.library API and a backend kernel only: a C++
# dispatch to the launcher, no Python layers per call), in the same namespace; FRAGMENT because flash_kernel.py owns
# the namespace's definition and either module may be imported first. num_splits 0 means "the default": it depends
# on the GPU's multiprocessor count, which the op reads when it runs rather than torch.compile while it traces.

_lib = torch.library.Library("flashgpt", "FRAGMENT")
_lib.define("decode_fwd(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_seqlens, float softmax_scale, "
            "int num_splits) -> Tensor")


def _decode_fwd(q, k_cache, v_cache, cache_seqlens, softmax_scale, num_splits):
    if num_splits == 0:
        B, Tq, H, D = q.shape
        BLOCK_M, BLOCK_N, _, _ = _config(Tq, q.dtype)
        programs = B * H * triton.cdiv(Tq, BLOCK_M)
        key_blocks = triton.cdiv(k_cache.shape[1], BLOCK_N)
        # off the GPU, one: the interpreter runs programs one after another, so splitting only adds work there
        if q.device.type == "cuda":
            num_splits = _default_num_splits(programs, key_blocks, _multiprocessors(q.device))
        else:
            num_splits = 1
    return _decode_attn(q, k_cache, v_cache, cache_seqlens, softmax_scale, num_splits)


for _backend in ("CUDA", "CPU"):  # CPU: only reachable with TRITON_INTERPRET=1 (flash_attn_with_kvcache checks)
    _lib.impl("decode_fwd", _decode_fwd, _backend)


@torch.library.register_fake("flashgpt::decode_fwd")
def _(q, k_cache, v_cache, cache_seqlens, softmax_scale, num_splits):
    return q.new_empty(q.shape)  # (B, Tq, H, D), contiguous, as _decode_attn allocates it


# ----------------------------------------------------------------------------------------------------------------
# Public API


def _check_inputs(q, k_cache, v_cache, cache_seqlens, num_splits) -> None:
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"flash_attn_with_kvcache: {name} must be a 4-d tensor shaped (B, T, H, D), got {got}")
    B, Tq, H, D = q.shape
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"flash_attn_with_kvcache: k_cache {tuple(k_cache.shape)} and v_cache "
                         f"{tuple(v_cache.shape)} must have the same shape (B, S, H, D)")
    Bk, S, Hk, Dk = k_cache.shape
    if (Bk, Hk, Dk) != (B, H, D):
        raise ValueError(f"flash_attn_with_kvcache: q {tuple(q.shape)} and k_cache {tuple(k_cache.shape)} must agree "
                         "in batch, heads and head dim: q is (B, Tq, H, D), the caches (B, S, H, D)")
    if min(B, Tq, H) == 0:
        raise ValueError(f"flash_attn_with_kvcache: empty input q of shape {tuple(q.shape)}")
    if Tq > S:
        raise ValueError(f"flash_attn_with_kvcache: {Tq} queries (Tq) but a cache of only {S} positions: each query "
                         "needs its own key in the cache, so Tq must be <= S")
    if D not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"flash_attn_with_kvcache: head dim {D} is not supported; supported head dims are "
                         f"{SUPPORTED_HEAD_DIMS}")
    if not (q.dtype == k_cache.dtype == v_cache.dtype) or q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"flash_attn_with_kvcache: q, k_cache, v_cache must share one dtype of {SUPPORTED_DTYPES}, "
                         f"got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if not (q.device == k_cache.device == v_cache.device):
        raise ValueError(f"flash_attn_with_kvcache: q, k_cache, v_cache must be on one device, got {q.device}, "
                         f"{k_cache.device}, {v_cache.device}")
    _check_off_gpu(q, "flash_attn_with_kvcache")
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        if t.stride(-1) != 1:
            raise ValueError(f"flash_attn_with_kvcache: {name} must have unit stride in its last (head) dim, got "
                             f"strides {t.stride()}; call .contiguous() on it first")
        # offsets within one batch row are 32-bit in the kernel; past that they would wrap silently
        if (t.shape[1] - 1) * t.stride(1) + (t.shape[2] - 1) * t.stride(2) + D > 2**31 - 1:
            raise ValueError(f"flash_attn_with_kvcache: {name} of shape {tuple(t.shape)} and strides {t.stride()} "
                             "is too large for the kernel's 32-bit offsets within a batch row")
    if B * H > 65535:  # (batch, head) pairs are the grid's third axis, which CUDA caps at 65535
        raise ValueError(f"flash_attn_with_kvcache: B * H = {B * H} is more than 65535; split the batch")
    if not isinstance(cache_seqlens, torch.Tensor) or cache_seqlens.shape != (B,):
        got = tuple(cache_seqlens.shape) if isinstance(cache_seqlens, torch.Tensor) else type(cache_seqlens).__name__
        raise ValueError(f"flash_attn_with_kvcache: cache_seqlens must be a tensor of shape ({B},), one length per "
                         f"batch row, got {got}")
    if cache_seqlens.dtype != torch.int32:
        raise ValueError(f"flash_attn_with_kvcache: cache_seqlens must be int32, got {cache_seqlens.dtype}")
    if cache_seqlens.device != q.device:
        raise ValueError(f"flash_attn_with_kvcache: cache_seqlens is on {cache_seqlens.device} but q is on "
                         f"{q.device}; the kernel reads the lengths on q's device")
    if not cache_seqlens.is_contiguous():
        raise ValueError("flash_attn_with_kvcache: cache_seqlens must be contiguous")
    if num_splits is not None and not (isinstance(num_splits, int) and 1 <= num_splits <= MAX_SPLITS):
        raise ValueError(f"flash_attn_with_kvcache: num_splits must be an int in [1, {MAX_SPLITS}] or None "
                         f"(choose for this GPU), got {num_splits!r}")
    # The lengths' values are on the device: checking them costs a host sync, which a CUDA graph cannot capture and
    # a compiled graph should not contain. Checked on every eager call; inside a capture or a compiled graph the
    # kernel's clamp to S is what keeps reads in bounds.
    if torch.compiler.is_compiling():
        return
    if not (cache_seqlens.is_cuda and torch.cuda.is_current_stream_capturing()):
        lo, hi = int(cache_seqlens.min()), int(cache_seqlens.max())
        if lo < Tq or hi > S:
            raise ValueError(f"flash_attn_with_kvcache: cache_seqlens must lie in [Tq, S] = [{Tq}, {S}] (the filled "
                             f"cache positions, the new keys included), got values in [{lo}, {hi}]")


def flash_attn_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    softmax_scale: Optional[float] = None,
    num_splits: Optional[int] = None,
) -> torch.Tensor:
    """softmax(q k^T * scale) v of q (B, Tq, H, D) against the first cache_seqlens[b] positions of the caches
    (B, S, H, D), causal with the mask aligned to the bottom right; returns (B, Tq, H, D) in q's dtype. Forward only.

    cache_seqlens: (B,) int32 on q's device, the filled positions per row including the Tq new keys, each in
    [Tq, S]. softmax_scale defaults to 1/sqrt(D). num_splits: how many programs share one row's keys (None picks
    from the GPU's multiprocessor count and the shape; 1 turns split-KV off). Head dims 16, 32, 64, 128; fp16,
    bf16, fp32 (accumulation is fp32 in every case). An eager call reads the lengths back to check them (one host
    sync); a call being captured in a CUDA graph or traced by torch.compile skips that check. torch.compile traces
    this function without a graph break: the kernel is the torch op flashgpt::decode_fwd.
    """
    _check_inputs(q, k_cache, v_cache, cache_seqlens, num_splits)
    scale = _scale(softmax_scale, q, caller="flash_attn_with_kvcache")
    return torch.ops.flashgpt.decode_fwd(q, k_cache, v_cache, cache_seqlens, scale, num_splits or 0)
