"""
Causal attention kernels for Hopper GPUs (H100, H200), written in Gluon with warp specialization:
FlashAttention-3's structure, which plain Triton cannot express for these loops (docs/design.md, "Why Hopper gets its
own kernels").

Forward. A program computes 128 query rows of one (batch, head) at a time, on a persistent grid that hands out
these items heaviest first (_tile_coords), with three partitions of warps:
    a load warp          TMA-copies the two 64-row Q tiles once, then K and V tiles into a ring of buffers;
    two softmax groups   each a warpgroup (4 warps) that owns 64 of the rows: S = Q K^T and O += P V on the
                         tensor cores (wgmma), the online softmax on the CUDA cores in between; O goes out
                         through shared memory with a TMA store.
The two groups share the K and V tiles and take turns issuing their products (the `turn` barriers), so one
group's softmax runs while the other's products keep the tensor cores busy. In the Triton forward both
warpgroups of a program run in lockstep behind a barrier, and the tensor cores idle through every softmax
(docs/design.md, "Why Hopper gets its own kernels"). At head dim 64 from T = 8192 an item is 192 rows and three
groups take turns, as in FlashAttention-4's forward (_fwd_groups).

Backward. One program holds 128 keys, 64 per warpgroup with their dK and dV in registers, and sweeps the query
blocks that see them with five products per tile; dQ is added into an fp32 buffer by TMA reductions (docs/design.md,
"Hopper backward: five products, dQ by TMA reduction"). At head dim 64 a third warpgroup makes dQ, off the other
two's critical path (docs/design.md, "Hopper backward, head dim 64: a dQ warpgroup"); at 128 the two groups make its
halves and one more warp sends the reductions (docs/design.md, "Hopper backward, head dim 128: a reduce warp").

Only flash_kernel.py calls this: its launchers call _attn_fwd and _attn_bwd for the calls that supported() says
these kernels can run and that flash_kernel.TUNED says they are worth it for. Everything else runs the Triton
kernels, which are also the reference these are tested against. Gluon has no interpreter, so this file runs on a
Hopper GPU only; its tests skip elsewhere.
"""
import dataclasses
import functools
from typing import Optional

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                                 warpgroup_mma_wait)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
from triton.experimental.gluon.language._core import builtin
from triton._C.libtriton import ir


@builtin
def _tma_add(desc, coord, src, _semantic=None):
    # Add a shared-memory tile into global memory with one TMA reduction (cp.reduce.async.bulk.tensor). Newer
    # Gluon has this as tma.async_atomic_add; triton 3.6 has only the builder call.
    coord = _semantic._convert_to_ir_values(coord, require_i64=False)
    _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, desc.handle, coord, src.handle)


# The two kernels' integer and pointer arguments, which Triton is told not to specialize on (value 1, multiples of
# 16, 16-byte alignment): a compiled kernel then depends only on the dtype, the constexprs and the options, the key
# under which _Launcher keeps it. Compiled for sm_90 with and without those specializations, the kernels' loops are
# as long either way but one (4 instructions shorter without), the whole 0-16 instructions longer without
# (docs/design.md, "Host cost of the Hopper path")
_RUNTIME_INTS = ("BH", "H", "SECTION", "T")
_RUNTIME_POINTERS = ("LSE", "COUNTER", "DELTA")

ROWS = gl.constexpr(64)  # query rows per softmax warpgroup: one wgmma is 64 rows tall
BLOCK_N = gl.constexpr(128)  # keys per K/V tile
# The forward's partitions after softmax group 0, which runs in the kernel's own 4 warps: the other softmax groups
# and the load warp, their warps and registers per thread (setmaxnreg). Two groups, 12 warps: 240 registers for
# each, which holds S, P and O for its 64 rows; the loader only issues TMA copies. Three groups (head dim 64 from
# T = FWD_THREE_GROUPS_FROM_T, _fwd_groups), 16 warps: 160 registers each
FWD_WORKER_WARPS_2 = gl.constexpr((4, 1))
FWD_WORKER_REGS_2 = gl.constexpr((240, 24))
FWD_WORKER_WARPS_3 = gl.constexpr((4, 4, 1))
FWD_WORKER_REGS_3 = gl.constexpr((160, 160, 24))


@gluon.jit
def _tile_count(start_m, T, BLOCK_M: gl.constexpr):
    # The key tiles that rows [start_m, start_m + BLOCK_M) see: up to the last row's, and none past T
    if BLOCK_M == BLOCK_N:  # two groups: the same count, as a 128-row item never reaches past T's tile; without
        # the min the two-group kernels compile to the instructions they were timed with
        return start_m // BLOCK_N + 1
    return gl.minimum(gl.cdiv(T, BLOCK_N), (start_m + BLOCK_M - 1) // BLOCK_N + 1)


@gluon.jit
def _tile_coords(item, BH, n_m, H, SECTION, T, BLOCK_M: gl.constexpr):
    # Work item `item` of the persistent grid: row tile pid_m of head bh. The heads come in sections of SECTION
    # whose K and V fit in L2 together; within a section the items run heaviest first (the last row tile sees the
    # most key tiles), all of the section's heads at one size before the next size. Handed out in this order
    # (_load_partition), the items spread over the programs in about equal shares, and the ones running at a time
    # read the same few heads' K and V, from L2.
    per_section = SECTION * n_m
    section = item // per_section
    rest = item - section * per_section
    heads = gl.minimum(SECTION, BH - section * SECTION)  # the last section may be short
    pid_m = n_m - 1 - rest // heads
    bh = section * SECTION + rest % heads
    return bh // H, bh % H, bh, pid_m * BLOCK_M, _tile_count(pid_m * BLOCK_M, T, BLOCK_M)


@gluon.jit
def _load_partition(q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, item_smem, q_ready, q_free, k_ready, v_ready,
                    k_free, v_free, COUNTER, BH, n_m, H, SECTION, T):
    # The producer: one warp that only issues TMA copies, and the scheduler. A buffer is refilled once every
    # softmax group has released it (the *_free barriers count one arrival per group); TMA completes each copy on its
    # *_ready barrier. Each program starts with item program_id, then takes the next unclaimed one from COUNTER
    # (an atomic add), as the hardware hands out the blocks of a plain grid: programs that drew short items take
    # more of them. The item's number and coordinates go to the softmax groups in item_smem, with its Q tiles.
    # `it` counts key tiles over all of this program's items, so the ring of K/V buffers runs on across them, and
    # the next item's loads start while the softmax groups still finish the last one. Q has two buffers, one per
    # item in flight.
    STAGES: gl.constexpr = k_smem.shape[0]
    GROUPS: gl.constexpr = q_smem.shape[0] // 2
    n_items = n_m * BH
    it = 0
    n = 0
    item = gl.program_id(0)
    while item < n_items:
        # the next item, claimed now and used once this one's loads are out. Relaxed: the number is a ticket, and
        # it reaches the softmax groups through item_smem and an mbarrier, which order it (acq_rel added 2 fences)
        claimed = gl.atomic_add(COUNTER, 1, sem="relaxed")
        b, h, bh, start_m, n_tiles = _tile_coords(item, BH, n_m, H, SECTION, T, GROUPS * ROWS)
        qb = n % 2
        mbarrier.wait(q_free.index(qb), ((n // 2) & 1) ^ 1)  # a fresh barrier passes a wait for the phase before
        _put_item(item_smem, qb, item, b, h, start_m // (GROUPS * ROWS))
        mbarrier.expect(q_ready.index(qb), GROUPS * q_desc.block_type.nbytes)
        for g in gl.static_range(GROUPS):
            tma.async_copy_global_to_shared(q_desc, [b, h, start_m + g * ROWS, 0], q_ready.index(qb),
                                            q_smem.index(GROUPS * qb + g))
        for j in range(n_tiles):
            s = (it + j) % STAGES
            phase = (((it + j) // STAGES) & 1) ^ 1
            mbarrier.wait(k_free.index(s), phase)
            mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [b, h, j * BLOCK_N, 0], k_ready.index(s), k_smem.index(s))
            mbarrier.wait(v_free.index(s), phase)
            mbarrier.expect(v_ready.index(s), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [b, h, j * BLOCK_N, 0], v_ready.index(s), v_smem.index(s))
        it += n_tiles
        n += 1
        item = gl.num_programs(0) + claimed  # every program has item program_id, the counter hands out the rest
    # tell the softmax groups there is no more: an item number past the last
    qb = n % 2
    mbarrier.wait(q_free.index(qb), ((n // 2) & 1) ^ 1)
    _put_item(item_smem, qb, item, 0, 0, 0)
    mbarrier.arrive(q_ready.index(qb), count=1)


@gluon.jit
def _put_item(item_smem, qb, item, b, h, pid_m):
    # One warp writes the item's number and coordinates into shared memory; the mbarrier arrive that follows
    # publishes them. The softmax groups read the coordinates instead of dividing the number out again: those
    # integer divisions sat between an item's start and its first product
    gl.static_assert(gl.num_warps() == 1)
    layout: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
    item_smem.index(4 * qb).store(gl.full([1], item, gl.int32, layout=layout))
    item_smem.index(4 * qb + 1).store(gl.full([1], b, gl.int32, layout=layout))
    item_smem.index(4 * qb + 2).store(gl.full([1], h, gl.int32, layout=layout))
    item_smem.index(4 * qb + 3).store(gl.full([1], pid_m, gl.int32, layout=layout))


@gluon.jit
def _get_item(item_smem, q_ready, n):
    # The softmax groups' side: wait until the loader has put item n (and its Q tiles), and read its number,
    # batch, head and row tile
    qb = n % 2
    mbarrier.wait(q_ready.index(qb), (n // 2) & 1)
    layout: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    item = gl.max(item_smem.index(4 * qb).load(layout), 0)
    b = gl.max(item_smem.index(4 * qb + 1).load(layout), 0)
    h = gl.max(item_smem.index(4 * qb + 2).load(layout), 0)
    pid_m = gl.max(item_smem.index(4 * qb + 3).load(layout), 0)
    return item, b, h, pid_m


@gluon.jit
def _causal(x, q_idx, k_idx, FILL: gl.constexpr):
    # x with FILL where the key comes after the query (and so, for the stored rows, where it is past T); the query
    # and key indices broadcast to x's shape, so a tile with keys on rows passes them transposed
    return gl.where(q_idx >= k_idx, x, FILL)


@gluon.jit
def _softmax_tile(scores, m_i, l_i, rows, start_n, qk_scale, MASKED: gl.constexpr):
    # The Triton forward's online softmax: base 2, the row max taken on the raw scores, one FMA per score. The
    # statistics come back in m_i's layout: a 64-key tile's rows sit on the same threads as a 128-key tile's.
    row_layout: gl.constexpr = m_i.type.layout
    row: gl.constexpr = gl.SliceLayout(1, scores.type.layout)
    m_i = gl.convert_layout(m_i, row)
    if MASKED:  # the diagonal tile: keys after the query (and past T) get no weight
        cols = start_n + gl.arange(0, scores.shape[1], layout=gl.SliceLayout(0, scores.type.layout))
        scores = _causal(scores, gl.convert_layout(rows, row)[:, None], cols[None, :], float("-inf"))
    m_new = gl.maximum(m_i, gl.max(scores, 1) * qk_scale)
    p = gl.exp2(scores * qk_scale - m_new[:, None])
    alpha = gl.convert_layout(gl.exp2(m_i - m_new), row_layout)
    l_new = l_i * alpha + gl.convert_layout(gl.sum(p, 1), row_layout)
    return p, gl.convert_layout(m_new, row_layout), l_new, alpha


@gluon.jit
def _packed(p, dtype: gl.constexpr, BY_HAND: gl.constexpr):
    # P in the products' dtype, two values per register by one cvt each (cvt.rn.bf16x2.f32). The compiler emits
    # that on its own for two softmax groups (where the inline asm cost 300 more SASS instructions per kernel), but
    # with three it converted value by value and swapped the halves of every register after (32 PRMT per step)
    if not BY_HAND:
        return p.to(dtype)
    if dtype == gl.bfloat16:
        return gl.inline_asm_elementwise("cvt.rn.bf16x2.f32 $0, $2, $1;", "=r,r,r", [p], dtype=gl.bfloat16,
                                         is_pure=True, pack=2)
    else:
        return gl.inline_asm_elementwise("cvt.rn.f16x2.f32 $0, $2, $1;", "=r,r,r", [p], dtype=gl.float16,
                                         is_pure=True, pack=2)


@gluon.jit
def _keys(kv_smem, s, KEYS: gl.constexpr):
    # The first KEYS rows of K or V tile s: all of it, or the half of a diagonal tile that group 0's rows see
    tile = kv_smem.index(s).reshape([BLOCK_N, kv_smem.shape[-1]])
    if KEYS < BLOCK_N:
        tile = tile.slice(0, KEYS)
    return tile


@gluon.jit
def _q_operand(q, zero, GROUPS: gl.constexpr):
    # S = Q K^T's A operand: at head dim 64 with two groups Q is held in registers (_softmax_partition), in the
    # layout of the product that zero is the accumulator of; otherwise it is the shared-memory tile
    if q.shape[1] == 64 and GROUPS == 2:
        return gl.convert_layout(q, gl.DotOperandLayout(operand_index=0, parent=zero.type.layout, k_width=2))
    else:
        return q


@gluon.jit
def _first_tile(q, k_smem, k_free, s0, s_zero, m_i, l_i, rows, qk_scale, p_layout: gl.constexpr,
                MASKED: gl.constexpr, GROUPS: gl.constexpr):
    # An item's first key tile (its first s_zero.shape[1] keys): S = Q K_0^T with no other product in flight, its
    # softmax, and P in the register layout of P V's A operand
    q_a = _q_operand(q, s_zero, GROUPS)
    scores = warpgroup_mma(q_a, _keys(k_smem, s0, s_zero.shape[1]).permute((1, 0)), s_zero, use_acc=False)
    mbarrier.arrive(k_free.index(s0), count=1)
    p, m_i, l_i, _ = _softmax_tile(scores, m_i, l_i, rows, 0, qk_scale, MASKED)
    return gl.convert_layout(_packed(p, q.dtype, GROUPS == 3), p_layout), m_i, l_i


@gluon.jit
def _step(q, k_smem, v_smem, k_ready, v_ready, k_free, v_free, turn, r, c, start_n, p, acc, m_i, l_i, rows,
          qk_scale, s_zero, GROUP: gl.constexpr, MASKED: gl.constexpr):
    # One key tile after an item's first, for one softmax group: issue S_j = Q K_j^T and O += P_{j-1} V_{j-1}
    # back to back, hand the turn to the other group, then compute the softmax of S_j while the P V product is
    # still running (in this order here; ptxas moves the wait for P V up to the softmax's start: docs/design.md,
    # "The P V wait pinned after the softmax"). r is the tile's place in the K/V ring and c the group's count of
    # steps so far (the turn barriers' phase), both over all of the program's items.
    STAGES: gl.constexpr = k_smem.shape[0]
    HEAD_DIM: gl.constexpr = k_smem.shape[-1]
    GROUPS: gl.constexpr = turn.shape[0]
    s = r % STAGES
    prev = (r - 1) % STAGES
    # the turn passes round the groups in order; group 0 goes first (a fresh barrier passes a wait for the phase
    # before its first), each other group once the one before it has issued its step c
    mbarrier.wait(turn.index(GROUP), (c & 1) ^ (1 if GROUP == 0 else 0))
    mbarrier.wait(k_ready.index(s), (r // STAGES) & 1)
    q_a = _q_operand(q, s_zero, GROUPS)
    scores = warpgroup_mma(q_a, _keys(k_smem, s, s_zero.shape[1]).permute((1, 0)), s_zero, use_acc=False,
                           is_async=True)
    mbarrier.wait(v_ready.index(prev), ((r - 1) // STAGES) & 1)
    acc = warpgroup_mma(p, v_smem.index(prev).reshape([BLOCK_N, HEAD_DIM]), acc, is_async=True)
    mbarrier.arrive(turn.index((GROUP + 1) % GROUPS), count=1)
    scores = warpgroup_mma_wait(1, deps=(scores, ))  # S_j is done; P_{j-1} V_{j-1} may still run
    mbarrier.arrive(k_free.index(s), count=1)
    p_new, m_i, l_i, alpha = _softmax_tile(scores, m_i, l_i, rows, start_n, qk_scale, MASKED)
    acc = warpgroup_mma_wait(0, deps=(acc, ))
    mbarrier.arrive(v_free.index(prev), count=1)
    acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, acc.type.layout))[:, None]
    return gl.convert_layout(_packed(p_new, p.dtype, GROUPS == 3), p.type.layout), acc, m_i, l_i


@gluon.jit
def _softmax_partition(q_smem, k_smem, v_smem, item_smem, q_ready, q_free, k_ready, v_ready, k_free, v_free, turn,
                       o_desc, LSE, BH, n_m, H, T, qk_scale, GROUP: gl.constexpr):
    # One warpgroup: rows [row0, row0 + 64) of each item's row tile. Each step issues two products back to back,
    # S = Q K_j^T and O += P_{j-1} V_{j-1}, then computes the softmax of S_j while O's product runs. The groups
    # take turns issuing (the `turn` barriers), so one group's softmax runs under the others' products.
    # Worker partitions take no constexpr arguments, so sizes come from the buffers' shapes.
    STAGES: gl.constexpr = k_smem.shape[0]
    HEAD_DIM: gl.constexpr = k_smem.shape[-1]
    GROUPS: gl.constexpr = turn.shape[0]
    BLOCK_M: gl.constexpr = GROUPS * ROWS
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
    row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
    dtype: gl.constexpr = q_smem.dtype
    s_zero = gl.zeros([ROWS, BLOCK_N], gl.float32, layout=s_layout)
    # Two groups: the diagonal tile's keys that the group's rows can see: group 0's rows only its first 64 (the
    # other half is all masked for them), so it computes S, the softmax and P V over that half; group 1's rows see
    # all 128. Three groups: 192 rows reach into two key tiles, both masked whole
    DIAG: gl.constexpr = ROWS * (GROUP + 1) if GROUPS == 2 else BLOCK_N
    d_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, DIAG, 16])
    d_zero = gl.zeros([ROWS, DIAG], gl.float32, layout=d_layout)

    it = 0  # key tiles consumed by earlier items: the K/V ring's position
    n = 0  # earlier items
    item, b, h, pid_m = _get_item(item_smem, q_ready, n)
    while item < n_m * BH:
        bh = b * H + h
        start_m = pid_m * BLOCK_M
        n_tiles = _tile_count(start_m, T, BLOCK_M)
        rows = start_m + GROUP * ROWS + gl.arange(0, ROWS, layout=row_s)
        qb = n % 2
        q = q_smem.index(GROUPS * qb + GROUP).reshape([ROWS, HEAD_DIM])
        if HEAD_DIM == 64 and GROUPS == 2:
            # Q into registers once per item, so that each S = Q K^T reads only K from shared memory (docs/design.md,
            # "Hopper forward, head dim 64: Q in registers"). Three groups' 160 registers have no room for it (ptxas
            # serializes their wgmmas and spills), nor do head dim 128's 32 more
            q = q.load(gl.DotOperandLayout(operand_index=0, parent=s_layout, k_width=2))
        acc = gl.zeros([ROWS, HEAD_DIM], gl.float32, layout=o_layout)

        m_i = gl.full([ROWS], float("-inf"), gl.float32, layout=row_s)
        l_i = gl.zeros([ROWS], gl.float32, layout=row_s)
        s0 = it % STAGES
        last = it + n_tiles - 1
        mbarrier.wait(k_ready.index(s0), (it // STAGES) & 1)
        c0 = it - n  # steps taken in earlier items: each item takes one per key tile after its first
        if GROUPS == 2:
            if n_tiles == 1:  # key tile 0 is the diagonal
                p_d, m_i, l_i = _first_tile(q, k_smem, k_free, s0, d_zero, m_i, l_i, rows, qk_scale,
                                            p_layout, True, GROUPS)
            else:
                p, m_i, l_i = _first_tile(q, k_smem, k_free, s0, s_zero, m_i, l_i, rows, qk_scale,
                                          p_layout, False, GROUPS)
                for j in range(1, n_tiles - 1):
                    p, acc, m_i, l_i = _step(q, k_smem, v_smem, k_ready, v_ready, k_free, v_free, turn, it + j,
                                             c0 + j - 1, j * BLOCK_N, p, acc, m_i, l_i, rows, qk_scale, s_zero,
                                             GROUP, False)
                # the diagonal tile, out of the loop so that the loop carries no mask
                p_d, acc, m_i, l_i = _step(q, k_smem, v_smem, k_ready, v_ready, k_free, v_free, turn, last,
                                           c0 + n_tiles - 2, (n_tiles - 1) * BLOCK_N, p, acc, m_i, l_i, rows,
                                           qk_scale, d_zero, GROUP, True)
        else:
            # key tiles from `masked` on hold keys after some of the item's rows: the last one or two, run masked
            # in a loop of their own so that the main loop carries no mask. Every group runs every tile (a row
            # that sees none of a tile's keys gets no weight from it: key 0, in the first tile, keeps its max finite)
            masked = start_m // BLOCK_N
            if masked == 0:
                p, m_i, l_i = _first_tile(q, k_smem, k_free, s0, s_zero, m_i, l_i, rows, qk_scale,
                                          p_layout, True, GROUPS)
            else:
                p, m_i, l_i = _first_tile(q, k_smem, k_free, s0, s_zero, m_i, l_i, rows, qk_scale,
                                          p_layout, False, GROUPS)
            for j in range(1, masked):
                p, acc, m_i, l_i = _step(q, k_smem, v_smem, k_ready, v_ready, k_free, v_free, turn, it + j,
                                         c0 + j - 1, j * BLOCK_N, p, acc, m_i, l_i, rows, qk_scale, s_zero, GROUP,
                                         False)
            for j in range(gl.maximum(masked, 1), n_tiles):
                p, acc, m_i, l_i = _step(q, k_smem, v_smem, k_ready, v_ready, k_free, v_free, turn, it + j,
                                         c0 + j - 1, j * BLOCK_N, p, acc, m_i, l_i, rows, qk_scale, s_zero, GROUP,
                                         True)
            p_d = p
        mbarrier.wait(v_ready.index(last % STAGES), (last // STAGES) & 1)
        acc = warpgroup_mma(p_d, _keys(v_smem, last % STAGES, DIAG), acc)
        mbarrier.arrive(v_free.index(last % STAGES), count=1)

        # O leaves through this group's Q tile, which no product reads any more, with one TMA store (it writes
        # whole lines and drops rows past T); the tile goes back to the loader once the store has read it
        acc = acc * gl.convert_layout(1.0 / l_i, row_o)[:, None]  # one division per row, not per element
        q_tile = q_smem.index(GROUPS * qb + GROUP)
        q_tile.reshape([ROWS, HEAD_DIM]).store(acc.to(dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(o_desc, [b, h, start_m + GROUP * ROWS, 0], q_tile)
        gl.store(LSE + bh.to(gl.int64) * T + rows, m_i + gl.log2(l_i), mask=rows < T)
        tma.store_wait(0)
        mbarrier.arrive(q_free.index(qb), count=1)
        it += n_tiles
        n += 1
        item, b, h, pid_m = _get_item(item_smem, q_ready, n)


@gluon.jit
def _softmax_partition_1(q_smem, k_smem, v_smem, item_smem, q_ready, q_free, k_ready, v_ready, k_free, v_free, turn,
                         o_desc, LSE, BH, n_m, H, T, qk_scale):
    _softmax_partition(q_smem, k_smem, v_smem, item_smem, q_ready, q_free, k_ready, v_ready, k_free, v_free, turn,
                       o_desc, LSE, BH, n_m, H, T, qk_scale, 1)


@gluon.jit
def _softmax_partition_2(q_smem, k_smem, v_smem, item_smem, q_ready, q_free, k_ready, v_ready, k_free, v_free, turn,
                         o_desc, LSE, BH, n_m, H, T, qk_scale):
    _softmax_partition(q_smem, k_smem, v_smem, item_smem, q_ready, q_free, k_ready, v_ready, k_free, v_free, turn,
                       o_desc, LSE, BH, n_m, H, T, qk_scale, 2)


@gluon.jit(do_not_specialize=_RUNTIME_INTS, do_not_specialize_on_alignment=_RUNTIME_POINTERS)
def _attn_fwd_hopper_kernel(q_desc, k_desc, v_desc, o_desc, LSE, COUNTER, BH, H, SECTION, T, qk_scale,
                            HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, GROUPS: gl.constexpr):
    # A persistent grid, one program per SM up to T=8192 (_attn_fwd): each program takes (row tile, head) items
    # one after another, as _load_partition claims them, so setting up the partitions is paid once per SM, and
    # one item's loads overlap the end of the one before it
    n_m = gl.cdiv(T, GROUPS * ROWS)
    dtype: gl.constexpr = q_desc.dtype
    q_smem = gl.allocate_shared_memory(dtype, [2 * GROUPS] + q_desc.block_type.shape, q_desc.layout)  # 2 items
    k_smem = gl.allocate_shared_memory(dtype, [STAGES] + k_desc.block_type.shape, k_desc.layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES] + v_desc.block_type.shape, v_desc.layout)
    # 2 items x (number, batch, head, row tile)
    item_smem = gl.allocate_shared_memory(gl.int32, [8, 1], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    q_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    q_free = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [GROUPS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_free.index(i), count=GROUPS)  # released by every softmax group
        mbarrier.init(v_free.index(i), count=GROUPS)
    for i in gl.static_range(2):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_free.index(i), count=GROUPS)
    for i in gl.static_range(GROUPS):
        mbarrier.init(turn.index(i), count=1)

    softmax_args = (q_smem, k_smem, v_smem, item_smem, q_ready, q_free, k_ready, v_ready, k_free, v_free, turn,
                    o_desc, LSE, BH, n_m, H, T, qk_scale)
    load_args = (q_desc, k_desc, v_desc, q_smem, k_smem, v_smem, item_smem, q_ready, q_free, k_ready, v_ready, k_free,
                 v_free, COUNTER, BH, n_m, H, SECTION, T)
    if GROUPS == 2:
        gl.warp_specialize([
            (_softmax_partition, softmax_args + (0, )),
            (_softmax_partition_1, softmax_args),
            (_load_partition, load_args),
        ], FWD_WORKER_WARPS_2, FWD_WORKER_REGS_2)
    else:
        gl.warp_specialize([
            (_softmax_partition, softmax_args + (0, )),
            (_softmax_partition_1, softmax_args),
            (_softmax_partition_2, softmax_args),
            (_load_partition, load_args),
        ], FWD_WORKER_WARPS_3, FWD_WORKER_REGS_3)


# ----------------------------------------------------------------------------------------------------------------
# Backward: FlashAttention-3's five products per tile. One program holds 128 keys (64 per softmax warpgroup, with
# their dK and dV in registers) and sweeps the 64-row query blocks that see them: S^T = K Q^T, dP^T = V dO^T,
# dV += P^T dO, dK += dS^T Q, and dQ += dS K, added into an fp32 buffer by TMA reductions (other programs add
# into the same rows; at head dim 64 the dQ warpgroup makes dQ^T = K^T dS^T, see _bwd_dq_partition). The tiles
# are 64 x 64 (head dim 128 comes as two column halves).

TILE = gl.constexpr(64)
# The backward's partitions after MMA group 0 (the kernel's own 4 warps), their warps and registers per thread.
# Head dim 64, 16 warps: MMA group 1, the dQ group and the loader. Each MMA group holds its K and V tiles in 32
# registers, the dQ group K^T in 32 and a 64 x 32 accumulator in 16: with less than 88 for the dQ group ptxas
# serializes every wgmma of the kernel, and the 200 left to each MMA group cost them 1% at most where 196 cost 3%
BWD_WORKER_WARPS_D64 = gl.constexpr((4, 4, 1))
BWD_WORKER_REGS_D64 = gl.constexpr((200, 88, 24))
# Head dim 128, 12 warps: MMA group 1, the loader and the reduce warp, which share the third warpgroup; 240
# registers for each MMA group
BWD_WORKER_WARPS_D128 = gl.constexpr((4, 1, 1))
BWD_WORKER_REGS_D128 = gl.constexpr((240, 24, 24))


@gluon.jit
def _bwd_load_partition(q_desc, k_desc, v_desc, do_desc, q_smem, k_smem, v_smem, do_smem, lse_smem, delta_smem,
                        kv_bar, q_ready, q_free, LSE, DELTA, b, h, bh, T, start_n, start_m, n_steps):
    # K and V once, then each query block's Q and dO tiles, LSE and delta into a ring of STAGES. LSE and delta go
    # through shared memory too: loaded by the softmax groups straight from global memory, their address arithmetic,
    # predicated loads and L2 latency sat on every step's critical path (docs/design.md, "Hopper backward: LSE and
    # delta through shared memory": 1.04-1.10x the backward).
    NCOL: gl.constexpr = k_smem.shape[0] // 2
    STAGES: gl.constexpr = q_smem.shape[0] // NCOL
    vec: gl.constexpr = gl.BlockedLayout([TILE // 32], [32], [1], [0])
    mbarrier.expect(kv_bar, 4 * NCOL * k_desc.block_type.nbytes)
    for g in gl.static_range(2):
        for c in gl.static_range(NCOL):
            tma.async_copy_global_to_shared(k_desc, [b, h, start_n + g * TILE, c * TILE], kv_bar,
                                            k_smem.index(g * NCOL + c))
            tma.async_copy_global_to_shared(v_desc, [b, h, start_n + g * TILE, c * TILE], kv_bar,
                                            v_smem.index(g * NCOL + c))
    for i in range(n_steps):
        s = i % STAGES
        rows = start_m + i * TILE + gl.arange(0, TILE, layout=vec)
        lse = gl.load(LSE + bh.to(gl.int64) * T + rows, mask=rows < T, other=float("inf"))
        delta = gl.load(DELTA + bh.to(gl.int64) * T + rows, mask=rows < T, other=0.0)
        mbarrier.wait(q_free.index(s), ((i // STAGES) & 1) ^ 1)
        lse_smem.index(s).store(lse)
        delta_smem.index(s).store(delta)
        # the arrive in expect() publishes these stores with the TMA copies
        mbarrier.expect(q_ready.index(s), 2 * NCOL * q_desc.block_type.nbytes)
        for c in gl.static_range(NCOL):
            tma.async_copy_global_to_shared(q_desc, [b, h, start_m + i * TILE, c * TILE], q_ready.index(s),
                                            q_smem.index(s * NCOL + c))
            tma.async_copy_global_to_shared(do_desc, [b, h, start_m + i * TILE, c * TILE], q_ready.index(s),
                                            do_smem.index(s * NCOL + c))


@gluon.jit
def _dq_rows(dq):
    # The fp32 dQ tile with row r of every 8 moved to row _dq_acc_row(r) (below), the order in which the staging
    # buffer, and so the fp32 buffer, hold them. Stored in order, a wgmma accumulator's 8-byte stores put rows r and
    # r ^ 1 in one half-warp, and the 128-byte swizzle maps their 32-byte pieces onto the same banks: twice the
    # shared-memory wavefronts (Nsight Compute: the excess was 8% of all the backward's). Rows 0-3 of 8 moved to
    # rows 0, 2, 4, 6 swizzle onto disjoint banks. Free: the move is in each thread's store addresses, not in its
    # registers. (Measured on the 64 x 64 tiles of dQ; the head-dim-64 backward's 64 x 32 tiles of dQ^T, rows being
    # head dims, keep the same move and _dq_cast undoes it on that axis.)
    x = dq.reshape([dq.shape[0] // 8, 2, 4, dq.shape[1]]).permute((0, 2, 1, 3))
    return x.reshape(dq.shape)


@gluon.jit
def _rows(smem, n: gl.constexpr, HEAD_DIM: gl.constexpr):
    # A ring of 64 x 64 column halves seen as n tiles of [64, HEAD_DIM]. A stage's (or a key group's) halves sit
    # side by side, which is the memory order of one [64, HEAD_DIM] tile of the same 128-byte swizzle (its column
    # bit 64 is the highest offset bit), so one wgmma chain can run across the whole head dim.
    layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    return smem._reinterpret(smem.dtype, [n, TILE, HEAD_DIM], layout)


@gluon.jit
def _bwd_mma_partition(q_smem, k_smem, v_smem, do_smem, ds_smem, dq_smem, dq_bar, kv_bar, q_ready, q_free, ds_ready,
                       ds_free, dk_desc, dv_desc, lse_smem, delta_smem, b, h, start_n, start_m, n_steps,
                       qk_scale, sm_scale, GROUP: gl.constexpr):
    NCOL: gl.constexpr = k_smem.shape[0] // 2
    STAGES: gl.constexpr = q_smem.shape[0] // NCOL
    HEAD_DIM: gl.constexpr = NCOL * TILE
    DQ_GROUP: gl.constexpr = NCOL == 1  # head dim 64: dQ is _bwd_dq_partition's job
    # S^T, dP^T and dQ's column halves are 64 x 64; dV and dK are [64 keys, HEAD_DIM], each one wgmma chain
    # across the head dim (at 128, 64 x 128 instructions: half as many as two 64-column halves take)
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, 64, 16])
    wide: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                   instr_shape=[16, HEAD_DIM, 16])
    op_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=wide, k_width=2)
    dtype: gl.constexpr = q_smem.dtype

    keys = start_n + GROUP * TILE + gl.arange(0, TILE, layout=gl.SliceLayout(1, mma))
    cols = gl.arange(0, TILE, layout=gl.SliceLayout(0, mma))
    zero = gl.zeros([TILE, TILE], gl.float32, layout=mma)
    dk = gl.zeros([TILE, HEAD_DIM], gl.float32, layout=wide)
    dv = gl.zeros([TILE, HEAD_DIM], gl.float32, layout=wide)
    q_rows = _rows(q_smem, STAGES, HEAD_DIM)
    do_rows = _rows(do_smem, STAGES, HEAD_DIM)
    mbarrier.wait(kv_bar, 0)
    k = _rows(k_smem, 2, HEAD_DIM).index(GROUP)
    v = _rows(v_smem, 2, HEAD_DIM).index(GROUP)
    if DQ_GROUP:
        # Head dim 64: K and V as the register operand of S^T and dP^T, so those products read only Q and dO from
        # shared memory. With 64 x 64 products every operand read from shared memory takes as long as the product,
        # and the step's other traffic (dS^T, dQ, the loader's tiles) shares the same bandwidth (docs/design.md,
        # "Hopper backward, head dim 64: K and V in registers"). At 128 they would take 64 registers, which two
        # 240-register groups do not have
        k = k.load(op_a)
        v = v.load(op_a)
    # Head dim 64: group 1 starts once group 0 has its first S^T and dP^T, so that each group's exponentials run
    # while the other's products do rather than all at once (docs/design.md, "Hopper backward, head dim 64: half
    # a step apart"). The signal is the first dQ staging barrier, which nothing else uses at 64 (the dQ warpgroup
    # waits on its own TMA reductions)
    if DQ_GROUP and GROUP == 1:
        mbarrier.wait(dq_bar.index(0), 0)

    for i in range(n_steps):
        s = i % STAGES
        buf = i % 2
        mbarrier.wait(q_ready.index(s), (i // STAGES) & 1)
        q = q_rows.index(s)
        do = do_rows.index(s)
        # S^T and dP^T, keys on rows: [64 keys, 64 queries]
        st = warpgroup_mma(k, q.permute((1, 0)), zero, use_acc=False, is_async=True)
        dpt = warpgroup_mma(v, do.permute((1, 0)), zero, use_acc=False, is_async=True)
        rows = start_m + i * TILE + cols  # the queries, on columns
        st, dpt = warpgroup_mma_wait(0, deps=(st, dpt))
        if DQ_GROUP and GROUP == 0:
            mbarrier.arrive(dq_bar.index(0), count=1, pred=i == 0)
        # LSE and delta each as late as it can be: live across the products they would spill
        lse = lse_smem.index(s).load(gl.SliceLayout(0, mma))
        pt = gl.exp2(st * qk_scale - lse[None, :])
        if i < 2:  # the two query blocks that overlap this program's 128 keys
            pt = _causal(pt, rows[None, :], keys[:, None], 0.0)
        delta = delta_smem.index(s).load(gl.SliceLayout(0, mma))
        # dS without the softmax scale (S = scale * Q K^T, so dS = scale * dP'): dK takes it once at the end and
        # dQ in _attn_bwd's conversion, one multiply each instead of one per score
        dst = (pt * (dpt - delta[None, :])).to(dtype)
        # dV += P^T dO and dK += dS^T Q
        dv = warpgroup_mma(gl.convert_layout(pt.to(dtype), op_a), do, dv, is_async=True)
        dk = warpgroup_mma(gl.convert_layout(dst, op_a), q, dk, is_async=True)
        # dQ = dS K needs both groups' dS: swap halves through shared memory, then group g makes dQ's column
        # half g from all 128 keys (at head dim 64 group 0 makes all of dQ)
        mbarrier.wait(ds_free.index(buf), ((i // 2) & 1) ^ 1)
        ds_smem.index(buf * 2 + GROUP).store(dst)
        fence_async_shared()
        mbarrier.arrive(ds_ready.index(buf), count=1)
        # P^T and dS^T leave the registers once dV and dK have them; Q and dO go back to the loader
        dv, dk = warpgroup_mma_wait(0, deps=(dv, dk))
        mbarrier.arrive(q_free.index(s), count=1)
        if GROUP < NCOL and not DQ_GROUP:
            mbarrier.wait(ds_ready.index(buf), (i // 2) & 1)
            dq = warpgroup_mma(ds_smem.index(buf * 2).permute((1, 0)), k_smem.index(GROUP).reshape([TILE, TILE]),
                               zero, use_acc=False, is_async=True)
            dq = warpgroup_mma(ds_smem.index(buf * 2 + 1).permute((1, 0)),
                               k_smem.index(NCOL + GROUP).reshape([TILE, TILE]), dq, is_async=True)
            dq = warpgroup_mma_wait(0, deps=(dq, ))
            # hand the tile to _bwd_reduce_partition through one of this group's two staging buffers, once its
            # reduction from two steps ago has read it (dq_bar: 4 "ready" then 4 "free" barriers)
            idx = GROUP * 2 + buf
            mbarrier.wait(dq_bar.index(4 + idx), ((i // 2) & 1) ^ 1)
            dq_smem.index(idx).reshape([TILE, TILE]).store(_dq_rows(dq))
            fence_async_shared()
            mbarrier.arrive(dq_bar.index(idx), count=1)
        if not DQ_GROUP:
            mbarrier.arrive(ds_free.index(buf), count=1)

    # dK and dV leave as the forward's O does, through shared memory with TMA stores: into the Q and dO ring, once
    # both groups' products have read all of it (each group releases a stage on q_free after its dV and dK)
    for s in gl.static_range(STAGES):
        if s < n_steps:
            last = n_steps - 1 - (n_steps - 1 - s) % STAGES  # the last step that used stage s
            mbarrier.wait(q_free.index(s), (last // STAGES) & 1)
    q_rows.index(GROUP).store((dk * sm_scale).to(dtype))
    do_rows.index(GROUP).store(dv.to(dtype))
    fence_async_shared()
    first_key = start_n + GROUP * TILE
    for c in gl.static_range(NCOL):
        tma.async_copy_shared_to_global(dk_desc, [b, h, first_key, c * TILE], q_smem.index(GROUP * NCOL + c))
        tma.async_copy_shared_to_global(dv_desc, [b, h, first_key, c * TILE], do_smem.index(GROUP * NCOL + c))
    tma.store_wait(0)  # the copies read shared memory, which must outlive them


@gluon.jit
def _bwd_dq_partition(k_smem, ds_smem, dq_smem, kv_bar, ds_ready, ds_free, dq_desc, b, h, start_m, n_steps):
    # Head dim 64: a warpgroup of its own makes dQ from both groups' dS^T and sends it out, so storing the fp32 tile
    # and the TMA reduction leave the other two groups' critical path (docs/design.md, "Hopper backward: five
    # products, dQ by TMA reduction"). It makes dQ^T = K^T dS^T with K^T in registers, so that the product reads only
    # dS^T from shared memory, into the (B, H, D, T) fp32 buffer, 32 queries at a time: a 64 x 64 accumulator left
    # too few registers for the MMA groups (docs/design.md, "Hopper backward, head dim 64: dQ^T with K^T in
    # registers"). At head dim 128 the two groups need all the registers, and each makes half of dQ itself.
    HALF: gl.constexpr = TILE // 2
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HALF, 16])
    op_a: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    zero = gl.zeros([TILE, HALF], gl.float32, layout=mma)
    mbarrier.wait(kv_bar, 0)
    # K^T's columns are the 128 keys: those of group 0's tile, then group 1's
    kt0 = k_smem.index(0).reshape([TILE, TILE]).permute((1, 0)).load(op_a)
    kt1 = k_smem.index(1).reshape([TILE, TILE]).permute((1, 0)).load(op_a)
    for i in range(n_steps):
        buf = i % 2
        mbarrier.wait(ds_ready.index(buf), (i // 2) & 1)
        for half in gl.static_range(2):
            ds0 = ds_smem.index(buf * 2).slice(half * HALF, HALF, dim=1)
            ds1 = ds_smem.index(buf * 2 + 1).slice(half * HALF, HALF, dim=1)
            dqt = warpgroup_mma(kt0, ds0, zero, use_acc=False, is_async=True)
            dqt = warpgroup_mma(kt1, ds1, dqt, is_async=True)
            dqt = warpgroup_mma_wait(0, deps=(dqt, ))
            if half == 1:
                mbarrier.arrive(ds_free.index(buf), count=1)
            tma.store_wait(1)  # two staging buffers, one per half: the reduction sent before the last has read this one
            dq_buf = dq_smem.index(half)
            dq_buf.reshape([TILE, HALF]).store(_dq_rows(dqt))
            fence_async_shared()
            _tma_add(dq_desc, [b, h, 0, start_m + i * TILE + half * HALF], dq_buf)
    tma.store_wait(0)


@gluon.jit
def _bwd_reduce_partition(dq_smem, dq_bar, dq_desc, b, h, start_m, n_steps):
    # Head dim 128: one warp sends both groups' dQ halves into the fp32 buffer with TMA reductions and frees their
    # staging buffers once the reductions have read them, so the groups never wait on a reduction (docs/design.md,
    # "Hopper backward, head dim 128: a reduce warp")
    for i in range(n_steps):
        for g in gl.static_range(2):
            idx = g * 2 + i % 2
            mbarrier.wait(dq_bar.index(idx), (i // 2) & 1)
            _tma_add(dq_desc, [b, h, start_m + i * TILE, g * TILE], dq_smem.index(idx))
        tma.store_wait(2)  # the previous step's two reductions are done: their buffers can be refilled
        if i > 0:
            for g in gl.static_range(2):
                mbarrier.arrive(dq_bar.index(4 + g * 2 + (i - 1) % 2), count=1)
    tma.store_wait(0)


@gluon.jit
def _bwd_mma_partition_1(q_smem, k_smem, v_smem, do_smem, ds_smem, dq_smem, dq_bar, kv_bar, q_ready, q_free, ds_ready,
                         ds_free, dk_desc, dv_desc, lse_smem, delta_smem, b, h, start_n, start_m, n_steps,
                         qk_scale, sm_scale):
    _bwd_mma_partition(q_smem, k_smem, v_smem, do_smem, ds_smem, dq_smem, dq_bar, kv_bar, q_ready, q_free, ds_ready,
                       ds_free, dk_desc, dv_desc, lse_smem, delta_smem, b, h, start_n, start_m, n_steps,
                       qk_scale, sm_scale, 1)


@gluon.jit(do_not_specialize=_RUNTIME_INTS, do_not_specialize_on_alignment=_RUNTIME_POINTERS)
def _attn_bwd_hopper_kernel(q_desc, k_desc, v_desc, do_desc, dq_desc, dk_desc, dv_desc, LSE, DELTA,
                            H, T, qk_scale, sm_scale, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr):
    # grid: (cdiv(T, 128), B * H); program n takes keys [128 n, 128 n + 128) and the query blocks from the
    # diagonal on. Key block 0 has the most query blocks, and it starts first.
    bh = gl.program_id(1)
    b = bh // H
    h = bh % H
    start_n = gl.program_id(0) * 2 * TILE
    start_m = start_n  # the first query block that sees any of these keys
    n_steps = gl.cdiv(T - start_m, TILE)
    NCOL: gl.constexpr = HEAD_DIM // TILE

    dtype: gl.constexpr = q_desc.dtype
    layout: gl.constexpr = q_desc.layout
    k_smem = gl.allocate_shared_memory(dtype, [2 * NCOL] + q_desc.block_type.shape, layout)
    v_smem = gl.allocate_shared_memory(dtype, [2 * NCOL] + q_desc.block_type.shape, layout)
    q_smem = gl.allocate_shared_memory(dtype, [STAGES * NCOL] + q_desc.block_type.shape, layout)
    do_smem = gl.allocate_shared_memory(dtype, [STAGES * NCOL] + q_desc.block_type.shape, layout)
    vec_layout: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, order=[0])
    lse_smem = gl.allocate_shared_memory(gl.float32, [STAGES, TILE], vec_layout)
    delta_smem = gl.allocate_shared_memory(gl.float32, [STAGES, TILE], vec_layout)
    ds_layout: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    ds_smem = gl.allocate_shared_memory(dtype, [4, TILE, TILE], ds_layout)  # 2 buffers x 2 groups
    dq_smem = gl.allocate_shared_memory(gl.float32, [2 * NCOL] + dq_desc.block_type.shape, dq_desc.layout)
    dq_bar = gl.allocate_shared_memory(gl.int64, [8, 1], mbarrier.MBarrierLayout())
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    q_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    q_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    ds_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    ds_free = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    mbarrier.init(kv_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_free.index(i), count=2)
    for i in gl.static_range(2):
        mbarrier.init(ds_ready.index(i), count=2)
        mbarrier.init(ds_free.index(i), count=1 if NCOL == 1 else 2)  # whoever reads dS for dQ frees it
    for i in gl.static_range(8):
        mbarrier.init(dq_bar.index(i), count=1)

    mma_args = (q_smem, k_smem, v_smem, do_smem, ds_smem, dq_smem, dq_bar, kv_bar, q_ready, q_free, ds_ready, ds_free,
                dk_desc, dv_desc, lse_smem, delta_smem, b, h, start_n, start_m, n_steps, qk_scale, sm_scale)
    load_args = (q_desc, k_desc, v_desc, do_desc, q_smem, k_smem, v_smem, do_smem, lse_smem, delta_smem, kv_bar,
                 q_ready, q_free, LSE, DELTA, b, h, bh, T, start_n, start_m, n_steps)
    if NCOL == 1:
        gl.warp_specialize([
            (_bwd_mma_partition, mma_args + (0, )),
            (_bwd_mma_partition_1, mma_args),
            (_bwd_dq_partition, (k_smem, ds_smem, dq_smem, kv_bar, ds_ready, ds_free, dq_desc, b, h, start_m,
                                 n_steps)),
            (_bwd_load_partition, load_args),
        ], BWD_WORKER_WARPS_D64, BWD_WORKER_REGS_D64)
    else:
        gl.warp_specialize([
            (_bwd_mma_partition, mma_args + (0, )),
            (_bwd_mma_partition_1, mma_args),
            (_bwd_load_partition, load_args),
            (_bwd_reduce_partition, (dq_smem, dq_bar, dq_desc, b, h, start_m, n_steps)),
        ], BWD_WORKER_WARPS_D128, BWD_WORKER_REGS_D128)


_GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float32: gl.float32}
HEAD_DIMS = (64, 128)
PERSISTENT_MAX_TILES = 64  # the forward's grid is persistent up to T = 64 * 128 (_attn_fwd)
# K/V tiles in flight in the forward; 3 was no faster (docs/design.md, "Hopper forward: ping-pong warpgroups")
NUM_STAGES = 2
# Q/dO tiles in flight in the backward, by head dim: at 64 a third stage lets MMA group 1 run half a step behind
# group 0 without holding up the loader (docs/design.md, "Hopper backward, head dim 64: half a step apart"); at 128
# there is no shared memory for it
BWD_STAGES = {64: 3, 128: 2}


def supported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, dropout_p: float,
              do: Optional[torch.Tensor] = None) -> bool:
    """Whether these kernels can run a call: a Hopper GPU, fp16 or bf16, head dim 64 or 128, causal, no dropout,
    and addresses and strides that TMA can read (16-byte aligned); do, the backward's upstream gradient, too.
    Whether they are worth it at the call's length is flash_kernel.TUNED's to say."""
    if not (causal and dropout_p == 0 and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)
            and q.shape[-1] in HEAD_DIMS):
        return False
    if _properties(q.device).major != 9:
        return False
    size = q.element_size()
    tensors = (q, k, v) if do is None else (q, k, v, do)
    return all(t.data_ptr() % 16 == 0 and all(st * size % 16 == 0 for st in t.stride()[:-1]) for t in tensors)


def _maxnreg(warpgroups: int) -> int:
    """The kernel's register cap: the whole register file (64K) over its warps, 12 for two warpgroups that do the
    math (and the load warp's group), 16 for three: the forward's three softmax groups, the backward's dQ group at
    head dim 64. warp_specialize then hands out each partition's share with setmaxnreg."""
    return 128 if warpgroups == 3 else 168


BWD_WARPGROUPS = {64: 3, 128: 2}  # the backward's, by head dim: at 64 with the dQ group (BWD_WORKER_WARPS_D64)


# Head dim 64 from this length: three softmax groups on 192-row items, as FlashAttention-4's sm90 forward runs there,
# instead of two on 128. Same-run against two groups on an H200: 9-14% faster at T = 16384, 0-7% at 8192, +2% to
# -6% at 4096 and 7-10% slower at 2048, where the coarser items leave a longer tail (docs/design.md, "Three softmax
# groups again, with P packed by hand")
FWD_THREE_GROUPS_FROM_T = 8192


def _fwd_groups(D: int, T: int) -> int:
    return 3 if D == 64 and T >= FWD_THREE_GROUPS_FROM_T else 2


@functools.lru_cache(maxsize=None)
def _smem_layout(rows: int, cols: int, dtype: torch.dtype) -> gl.NVMMASharedLayout:
    return gl.NVMMASharedLayout.get_default_for([1, 1, rows, cols], _GL_DTYPES[dtype])


@dataclasses.dataclass
class _Descriptor(TensorDescriptor):
    # Gluon's host TensorDescriptor without its checks in Python (__post_init__), which cost twice the rest of
    # making one, on each of the eleven of a forward and backward: supported() has checked the alignment of every
    # tensor these kernels get, and the block shapes and layouts are this file's own
    def __post_init__(self):
        pass


def _descriptor(t: torch.Tensor, rows: int, cols: int = 0) -> TensorDescriptor:
    # 4-d (B, H, T, D) through the tensor's own strides: TMA reads the model's strided views of the qkv
    # projection directly and zero-fills rows past T within each (batch, head). A box is rows x cols (all of D
    # by default).
    cols = cols or t.shape[-1]
    return _Descriptor(t, list(t.shape), list(t.stride()), [1, 1, rows, cols], _smem_layout(rows, cols, t.dtype))


class _Launcher:
    """Launches one of this file's kernels. The first launch of each key goes through Triton's JIT, which compiles
    the kernel; later ones go straight to the compiled kernel, past the JIT's per-launch binding and specialization
    of the arguments: 25-40 us of host time per launch on an H100's host, more than the kernel's own time in a
    short call (docs/design.md, "Host cost of the Hopper path"). The kernels' integer and pointer arguments are not
    specialized (_RUNTIME_INTS), so the key, the device and dtype with the constexprs and options, names one
    compiled kernel."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.compiled = {}

    def __call__(self, grid: tuple, args: tuple, constexprs: dict, **options) -> None:
        # args: the runtime arguments in order, the first a descriptor; constexprs: the ones after them, by name
        key = (torch.cuda.current_device(), args[0].base.dtype, *constexprs.items(), *options.items())
        compiled = self.compiled.get(key)
        if compiled is None:
            self.compiled[key] = self.kernel[grid](*args, **constexprs, **options)
            return
        constants = [constexprs[name] for name in self.kernel.arg_names[len(args):]]
        compiled[grid + (1, ) * (3 - len(grid))](*args, *constants)


_launch_fwd = _Launcher(_attn_fwd_hopper_kernel)
_launch_bwd = _Launcher(_attn_bwd_hopper_kernel)


@functools.lru_cache(maxsize=None)
def _properties(device: torch.device):
    return torch.cuda.get_device_properties(device)  # once per device, not on every call


def _num_sms(device: torch.device) -> int:
    return _properties(device).multi_processor_count


def _heads_per_section(q: torch.Tensor) -> int:
    # Heads whose K and V fill a quarter of L2; at least one. Sections of half of L2 measured 1-4% slower up to
    # T = 8192 and level above (docs/design.md, "Hopper forward: persistent grid")
    B, H, T, D = q.shape
    return max(1, _properties(q.device).L2_cache_size // 4 // (2 * T * D * q.element_size()))


def _attn_fwd(q, k, v, o, lse, qk_scale: float, programs: Optional[int] = None,
              heads_per_section: Optional[int] = None, groups: Optional[int] = None) -> None:
    """Fill o (B, H, T, D) and lse (B, H, T) as flash_kernel's Triton forward does; qk_scale = softmax scale *
    log2(e). o is written by TMA, so like q, k, v it needs 16-byte aligned strides (flash_kernel's always has).
    programs (the persistent grid's size), heads_per_section (_tile_coords' SECTION) and groups (softmax groups,
    2 or 3) default to what this GPU's SMs and L2 and the call's length call for; a test passes others."""
    B, H, T, D = q.shape
    groups = groups or _fwd_groups(D, T)
    n_m = triton.cdiv(T, groups * ROWS.value)
    items = n_m * B * H
    if programs is None:
        # One program per SM while items are short; from T = 16384 (items of up to 128 key tiles) what a program
        # pays once is small, and a program per item measured 3-4% faster (docs/design.md, "Hopper forward:
        # persistent grid")
        programs = min(items, _num_sms(q.device)) if triton.cdiv(T, BLOCK_N.value) <= PERSISTENT_MAX_TILES else items
    if heads_per_section is None:
        heads_per_section = _heads_per_section(q)
    _launch_fwd(
        (programs, ),
        (_descriptor(q, ROWS.value), _descriptor(k, BLOCK_N.value), _descriptor(v, BLOCK_N.value),
         _descriptor(o, ROWS.value), lse, torch.zeros(1, dtype=torch.int32, device=q.device), B * H, H,
         heads_per_section, T, qk_scale),
        dict(HEAD_DIM=D, STAGES=NUM_STAGES, GROUPS=groups), num_warps=4, maxnreg=_maxnreg(groups),
    )


DQ_CAST_ROWS = 64  # rows of one (batch, head) per program of _dq_cast_kernel


def _dq_acc_row(r):
    """The row of the backward's fp32 dQ buffer that holds row r of dQ (_dq_rows): rows keep their group of 8, and
    within it row r goes to 2 (r % 4) + (r // 4) % 2. Works on ints and integer tensors alike."""
    return r // 8 * 8 + 2 * (r % 4) + r // 4 % 2


@triton.jit
def _dq_acc_index(r):
    # _dq_acc_row inside a kernel
    return r // 8 * 8 + 2 * (r % 4) + r // 4 % 2


@triton.jit
def _dq_cast_kernel(ACC, DQ, scale, H, T, T_ACC, stride_qb, stride_qh, stride_qt, HEAD_DIM: tl.constexpr,
                    ROWS: tl.constexpr, TRANSPOSED: tl.constexpr):
    # dq = scale * acc in dq's dtype and layout, acc being the contiguous fp32 buffer the backward's TMA reductions
    # fill: (B, H, T_ACC, D) with its rows in _dq_rows' order, or TRANSPOSED, (B, H, D, T_ACC) with its rows (D) in
    # that order. torch.mul(acc, scale, out=dq) did the same as a permuting copy, non-vectorized, into the model's
    # (B, T, H, D) views: ~2x the time of a copy that reads and writes whole rows
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, HEAD_DIM)
    keep = rows[:, None] < T
    acc_base = ACC + bh.to(tl.int64) * T_ACC * HEAD_DIM
    if TRANSPOSED:
        acc = tl.trans(tl.load(acc_base + _dq_acc_index(cols)[:, None] * T_ACC + rows[None, :], mask=rows[None, :] < T))
    else:
        acc = tl.load(acc_base + _dq_acc_index(rows)[:, None] * HEAD_DIM + cols[None, :], mask=keep)
    dq_ptrs = DQ + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + rows[:, None] * stride_qt + cols[None, :]
    tl.store(dq_ptrs, (acc * scale).to(DQ.dtype.element_ty), mask=keep)


def _dq_cast(acc: torch.Tensor, dq: torch.Tensor, scale: float, transposed: bool = False) -> None:
    """dq = scale * acc, row r of dq from row _dq_acc_row(r) of acc (acc: contiguous (B, H, T rounded up to 8, D)
    fp32; dq: (B, H, T, D), any strides with unit stride in D). transposed: acc is (B, H, D, T rounded up to 8) and
    column d of dq comes from row _dq_acc_row(d) of it."""
    B, H, T, D = dq.shape
    t_acc = acc.shape[3] if transposed else acc.shape[2]
    _dq_cast_kernel[(triton.cdiv(T, DQ_CAST_ROWS), B * H)](
        acc, dq, scale, H, T, t_acc, dq.stride(0), dq.stride(1), dq.stride(2), HEAD_DIM=D, ROWS=DQ_CAST_ROWS,
        TRANSPOSED=transposed, num_warps=4)


def _dq_accumulator(B: int, H: int, T: int, D: int, device) -> tuple:
    """The backward's fp32 dQ buffer, zeroed, its TMA descriptor, and whether it holds dQ^T: at head dim 64 the dQ
    warpgroup adds dQ^T 32 queries at a time (_bwd_dq_partition) into (B, H, D, T) with 64 x 32 boxes; at 128 the
    MMA groups add dQ's column halves into (B, H, T, D) with 64 x 64 boxes. T rounded up to 8: in (B, H, T, D)
    _dq_acc_row moves rows within groups of 8, so a last group cut short by T would lose some; in (B, H, D, T) TMA
    needs rows of a multiple of 16 bytes."""
    transposed = D == 64
    t_acc = triton.cdiv(T, 8) * 8
    acc = torch.zeros((B, H, D, t_acc) if transposed else (B, H, t_acc, D), dtype=torch.float32, device=device)
    tile = TILE.value
    return acc, _descriptor(acc, tile, tile // 2 if transposed else tile), transposed


def _attn_bwd(do, q, k, v, lse, delta, dq, dk, dv, softmax_scale: float, qk_scale: float) -> None:
    """Fill dq, dk, dv as flash_kernel's Triton backward does, from delta = rowsum(dO * O); qk_scale as in
    _attn_fwd. dk and dv are written by TMA, like o in _attn_fwd."""
    B, H, T, D = q.shape
    dq_acc, dq_desc, transposed = _dq_accumulator(B, H, T, D, q.device)
    tile = TILE.value
    _launch_bwd(
        (triton.cdiv(T, 2 * tile), B * H),
        (_descriptor(q, tile, tile), _descriptor(k, tile, tile), _descriptor(v, tile, tile),
         _descriptor(do, tile, tile), dq_desc, _descriptor(dk, tile, tile), _descriptor(dv, tile, tile), lse, delta,
         H, T, qk_scale, softmax_scale),
        dict(HEAD_DIM=D, STAGES=BWD_STAGES[D]), num_warps=4, maxnreg=_maxnreg(BWD_WARPGROUPS[D]),
    )
    _dq_cast(dq_acc, dq, softmax_scale, transposed)  # the scale dS left out (_bwd_mma_partition), and dq's dtype
