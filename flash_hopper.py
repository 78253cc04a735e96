"""
The causal forward for Hopper GPUs (H100, H200), written in Gluon with warp specialization: FlashAttention-3's
structure, which plain Triton cannot express for this loop (BENCHMARKS.md, notes 13, 16 and 21).

One program computes 128 query rows of one (batch, head) with three partitions of warps:
    a load warp          TMA-copies the two 64-row Q tiles once, then K and V tiles into a ring of STAGES buffers;
    two softmax groups   each a warpgroup (4 warps) that owns 64 of the rows: S = Q K^T and O += P V on the
                         tensor cores (wgmma), the online softmax on the CUDA cores in between.
The two softmax groups share the K and V tiles but do not wait for each other, so while one computes its softmax
the other's matrix products keep the tensor cores busy. In the Triton forward both warpgroups of a program run
in lockstep behind a barrier, and the tensor cores idle through every softmax (note 16).

Only flash_kernel.py calls this, and only where it applies (supported() below); everything else runs the Triton
forward. Gluon has no interpreter, so this file runs on a Hopper GPU only; its tests skip elsewhere.
"""
import functools

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (mbarrier, tma, warpgroup_mma, warpgroup_mma_init,
                                                                 warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

ROWS = gl.constexpr(64)  # query rows per softmax warpgroup: one wgmma is 64 rows tall
BLOCK_M = gl.constexpr(128)  # query rows per program: two warpgroups
BLOCK_N = gl.constexpr(128)  # keys per K/V tile; BLOCK_N == BLOCK_M, so each program has one diagonal tile


@gluon.jit
def _load_partition(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_free, v_free,
                    b, h, start_m, n_tiles):
    # The producer: one warp that only issues TMA copies. A buffer is refilled once both softmax groups have
    # released it (k_free and v_free count 2 arrivals); TMA completes each copy on its *_ready barrier.
    STAGES: gl.constexpr = k_smem.shape[0]
    mbarrier.expect(q_bar, 2 * q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [b, h, start_m, 0], q_bar, q_smem.index(0))
    tma.async_copy_global_to_shared(q_desc, [b, h, start_m + ROWS, 0], q_bar, q_smem.index(1))
    for j in range(n_tiles):
        s = j % STAGES
        phase = ((j // STAGES) & 1) ^ 1  # a fresh barrier passes a wait for the phase before its first
        mbarrier.wait(k_free.index(s), phase)
        mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [b, h, j * BLOCK_N, 0], k_ready.index(s), k_smem.index(s))
        mbarrier.wait(v_free.index(s), phase)
        mbarrier.expect(v_ready.index(s), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [b, h, j * BLOCK_N, 0], v_ready.index(s), v_smem.index(s))


@gluon.jit
def _softmax_tile(scores, m_i, l_i, rows, start_n, qk_scale, MASKED: gl.constexpr):
    # The Triton forward's online softmax: base 2, the row max taken on the raw scores, one FMA per score
    if MASKED:  # the diagonal tile: keys after the query (and past T) get no weight
        cols = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, scores.type.layout))
        scores = gl.where(rows[:, None] >= cols[None, :], scores, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(scores, 1) * qk_scale)
    p = gl.exp2(scores * qk_scale - m_new[:, None])
    alpha = gl.exp2(m_i - m_new)
    return p, m_new, l_i * alpha + gl.sum(p, 1), alpha


@gluon.jit
def _step(q, k_smem, v_smem, k_ready, v_ready, k_free, v_free, turn, j, p, acc, m_i, l_i, rows, qk_scale, s_zero,
          GROUP: gl.constexpr, MASKED: gl.constexpr):
    # Key tile j >= 1 for one softmax group: issue S_j = Q K_j^T and O += P_{j-1} V_{j-1} back to back, hand the
    # turn to the other group, then compute the softmax of S_j while the P V product is still running.
    STAGES: gl.constexpr = k_smem.shape[0]
    HEAD_DIM: gl.constexpr = k_smem.shape[-1]
    s = j % STAGES
    prev = (j - 1) % STAGES
    mbarrier.wait(turn.index(GROUP), ((j - 1) & 1) ^ (1 - GROUP))  # group 0 goes first
    mbarrier.wait(k_ready.index(s), (j // STAGES) & 1)
    scores = warpgroup_mma(q, k_smem.index(s).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)), s_zero,
                           use_acc=False, is_async=True)
    mbarrier.wait(v_ready.index(prev), ((j - 1) // STAGES) & 1)
    acc = warpgroup_mma(p, v_smem.index(prev).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
    mbarrier.arrive(turn.index(1 - GROUP), count=1)
    scores = warpgroup_mma_wait(1, deps=(scores, ))  # S_j is done; P_{j-1} V_{j-1} may still run
    mbarrier.arrive(k_free.index(s), count=1)
    p_new, m_i, l_i, alpha = _softmax_tile(scores, m_i, l_i, rows, j * BLOCK_N, qk_scale, MASKED)
    acc = warpgroup_mma_wait(0, deps=(acc, ))
    mbarrier.arrive(v_free.index(prev), count=1)
    acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, acc.type.layout))[:, None]
    return gl.convert_layout(p_new.to(p.dtype), p.type.layout), acc, m_i, l_i


@gluon.jit
def _softmax_partition(q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_free, v_free, turn, O, LSE,
                       stride_ob, stride_oh, stride_ot, b, h, bh, T, start_m, n_tiles, qk_scale,
                       GROUP: gl.constexpr):
    # One warpgroup: rows [row0, row0 + 64) of the program's tile. Each step issues two products back to back,
    # S = Q K_j^T and O += P_{j-1} V_{j-1}, then computes the softmax of S_j while O's product runs. The two
    # groups take turns issuing (the `turn` barriers), so one group's softmax runs under the other's products.
    # Worker partitions take no constexpr arguments, so sizes come from the buffers' shapes.
    STAGES: gl.constexpr = k_smem.shape[0]
    HEAD_DIM: gl.constexpr = k_smem.shape[-1]
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    dtype: gl.constexpr = q_smem.dtype

    row0 = start_m + GROUP * ROWS
    rows = row0 + gl.arange(0, ROWS, layout=row_s)
    q = q_smem.index(GROUP).reshape([ROWS, HEAD_DIM])
    s_zero = gl.zeros([ROWS, BLOCK_N], gl.float32, layout=s_layout)
    acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, layout=o_layout)
    mbarrier.wait(q_bar, 0)

    # key tile 0
    mbarrier.wait(k_ready.index(0), 0)
    scores = warpgroup_mma(q, k_smem.index(0).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)), s_zero,
                           use_acc=False)
    mbarrier.arrive(k_free.index(0), count=1)
    m_i = gl.full([ROWS], float("-inf"), gl.float32, layout=row_s)
    l_i = gl.zeros([ROWS], gl.float32, layout=row_s)
    if n_tiles == 1:
        p, m_i, l_i, alpha = _softmax_tile(scores, m_i, l_i, rows, 0, qk_scale, True)
    else:
        p, m_i, l_i, alpha = _softmax_tile(scores, m_i, l_i, rows, 0, qk_scale, False)
    p = gl.convert_layout(p.to(dtype), p_layout)

    for j in range(1, n_tiles - 1):
        p, acc, m_i, l_i = _step(q, k_smem, v_smem, k_ready, v_ready, k_free, v_free, turn, j, p, acc, m_i, l_i,
                                 rows, qk_scale, s_zero, GROUP, False)
    if n_tiles > 1:  # the diagonal tile, out of the loop so that the loop carries no mask
        p, acc, m_i, l_i = _step(q, k_smem, v_smem, k_ready, v_ready, k_free, v_free, turn, n_tiles - 1, p, acc,
                                 m_i, l_i, rows, qk_scale, s_zero, GROUP, True)

    last = (n_tiles - 1) % STAGES
    mbarrier.wait(v_ready.index(last), ((n_tiles - 1) // STAGES) & 1)
    acc = warpgroup_mma(p, v_smem.index(last).reshape([BLOCK_N, HEAD_DIM]), acc)
    mbarrier.arrive(v_free.index(last), count=1)

    acc = acc / gl.convert_layout(l_i, row_o)[:, None]
    rows_o = row0 + gl.arange(0, ROWS, layout=row_o)
    cols_o = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
    o_ptrs = (O + b.to(gl.int64) * stride_ob + h.to(gl.int64) * stride_oh + rows_o[:, None] * stride_ot
              + cols_o[None, :])
    gl.store(o_ptrs, acc.to(dtype), mask=rows_o[:, None] < T)
    gl.store(LSE + bh.to(gl.int64) * T + rows, m_i + gl.log2(l_i), mask=rows < T)


@gluon.jit
def _softmax_partition_1(q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_free, v_free, turn, O, LSE,
                         stride_ob, stride_oh, stride_ot, b, h, bh, T, start_m, n_tiles, qk_scale):
    _softmax_partition(q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_free, v_free, turn, O, LSE,
                       stride_ob, stride_oh, stride_ot, b, h, bh, T, start_m, n_tiles, qk_scale, 1)


@gluon.jit
def _attn_fwd_hopper_kernel(q_desc, k_desc, v_desc, O, LSE, stride_ob, stride_oh, stride_ot, H, T, qk_scale,
                            HEAD_DIM: gl.constexpr, STAGES: gl.constexpr):
    # grid: (cdiv(T, BLOCK_M), B * H); the last row tile (the most key tiles) starts first
    pid_m = gl.num_programs(0) - 1 - gl.program_id(0)
    bh = gl.program_id(1)
    b = bh // H
    h = bh % H
    start_m = pid_m * BLOCK_M
    n_tiles = pid_m + 1  # key tiles 0 .. pid_m; the last is the diagonal

    dtype: gl.constexpr = q_desc.dtype
    q_smem = gl.allocate_shared_memory(dtype, [2] + q_desc.block_type.shape, q_desc.layout)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_free.index(i), count=2)  # released by both softmax groups
        mbarrier.init(v_free.index(i), count=2)
    for i in gl.static_range(2):
        mbarrier.init(turn.index(i), count=1)

    softmax_args = (q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_free, v_free, turn, O, LSE,
                    stride_ob, stride_oh, stride_ot, b, h, bh, T, start_m, n_tiles, qk_scale)
    gl.warp_specialize([
        (_softmax_partition, softmax_args + (0, )),
        (_softmax_partition_1, softmax_args),
        (_load_partition, (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, q_bar, k_ready, v_ready, k_free, v_free,
                           b, h, start_m, n_tiles)),
    ], [4, 1], [240, 24])


_GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}
# Shortest T per head dim at which this forward beats the Triton one on an H100, in GPU time (BENCHMARKS.md,
# note 22). Below it a program has few key tiles, and what it pays once (setting up three partitions, loading Q,
# the epilogue) is not won back.
MIN_T = {64: 4096, 128: 1024}
STAGES = {64: 2, 128: 2}


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, dropout_p: float) -> bool:
    """Whether flash_kernel's forward hands this call to the Hopper kernel: a Hopper GPU, fp16 or bf16, head dim
    64 or 128 at T >= MIN_T, causal, no dropout, and addresses and strides that TMA can read (16-byte aligned)."""
    D, T = q.shape[-1], q.shape[-2]
    if not (causal and dropout_p == 0 and q.is_cuda and q.dtype in _GL_DTYPES and T >= MIN_T.get(D, 1 << 62)):
        return False
    if torch.cuda.get_device_capability(q.device)[0] != 9:
        return False
    size = q.element_size()
    return all(t.data_ptr() % 16 == 0 and all(st * size % 16 == 0 for st in t.stride()[:-1]) for t in (q, k, v))


@functools.lru_cache(maxsize=None)
def _smem_layout(rows: int, D: int, dtype: torch.dtype) -> gl.NVMMASharedLayout:
    return gl.NVMMASharedLayout.get_default_for([1, 1, rows, D], _GL_DTYPES[dtype])


def _descriptor(t: torch.Tensor, rows: int) -> TensorDescriptor:
    # 4-d (B, H, T, D) through the tensor's own strides: TMA reads the model's strided views of the qkv
    # projection directly and zero-fills rows past T within each (batch, head)
    D = t.shape[-1]
    return TensorDescriptor(t, list(t.shape), list(t.stride()), [1, 1, rows, D], _smem_layout(rows, D, t.dtype))


def attn_fwd(q, k, v, o, lse, qk_scale: float, stages: int = 0) -> None:
    """Fill o (B, H, T, D) and lse (B, H, T) as flash_kernel's Triton forward does; qk_scale = softmax scale *
    log2(e). stages: K/V buffers in the ring (0: the tuned count)."""
    B, H, T, D = q.shape
    grid = (triton.cdiv(T, BLOCK_M.value), B * H)
    _attn_fwd_hopper_kernel[grid](
        _descriptor(q, ROWS.value), _descriptor(k, BLOCK_N.value), _descriptor(v, BLOCK_N.value), o, lse,
        o.stride(0), o.stride(1), o.stride(2), H, T, qk_scale,
        HEAD_DIM=D, STAGES=stages or STAGES[D], num_warps=4, maxnreg=168,
    )
