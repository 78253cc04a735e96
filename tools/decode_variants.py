"""
Variants of flash_decode's kernel behind compile-time switches, timed against the shipped kernel, cuDNN and
read-only kernels at batch 1 (docs/design.md, "Decode at batch 1: the fixed cost"). An experiment, kept in the
history rather than the tree:

    python tools/decode_variants.py OUT.json

CAP: split boundaries from the cache's capacity, loads unmasked (right for full caches only: an upper bound on
what not waiting for the lengths is worth). NOMERGE: no counter, no merge (wrong output: the merge's cost).
PDL: programmatic dependent launch, the wait before any load. VEC: no tensor cores (Tq = 1 only). ILV: split s
takes key blocks s, s + splits, ... PEEL: with ILV, the first block loaded before the lengths arrive.
"""
import json, os, sys
import torch, triton, triton.language as tl
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from triton.language.extra.cuda import gdc_wait, gdc_launch_dependents
import flash_decode as fd
from flash_decode import _decode_inner, _decode_merge, _locks


@triton.jit
def _vec_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, lo, hi, L, qk_scale, BLOCK_N: tl.constexpr):
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        k = tl.load(k_ptrs + start_n * stride_kt, mask=cols[:, None] < L, other=0.0).to(tl.float32)  # [N, D]
        s = tl.sum(k * q[None, :], 1)  # [N]
        s = tl.where(cols < L, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 0)
        v = tl.load(v_ptrs + start_n * stride_vt, mask=cols[:, None] < L, other=0.0).to(tl.float32)  # [N, D]
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _var_kernel(
    Q, K, V, SEQLENS, O, O_PART, LSE_PART, LOCKS,
    stride_qb, stride_qt, stride_qh, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    stride_ob, stride_ot, stride_oh, H, Tq, S, qk_scale, NUM_SPLITS,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS_POW2: tl.constexpr,
    DOT_PRECISION: tl.constexpr, CAP: tl.constexpr, NOMERGE: tl.constexpr, PDL: tl.constexpr, VEC: tl.constexpr,
    ILV: tl.constexpr = False, PEEL: tl.constexpr = False,
):
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
    split = tl.program_id(0)
    pid_m = tl.program_id(1)
    bh = tl.program_id(2)
    b = bh // H
    h = bh % H
    L = tl.minimum(tl.load(SEQLENS + b), S)
    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    q_pos = L - Tq + offs_m
    if CAP:  # boundaries from the capacity; full cache assumed (experiment only)
        blocks_per_split = tl.cdiv(tl.cdiv(S, BLOCK_N), NUM_SPLITS)
        lo = split * blocks_per_split * BLOCK_N
        hi = tl.minimum(lo + blocks_per_split * BLOCK_N, S)
        full_end = hi
    else:
        kv_end = tl.minimum(L, L - Tq + m0 + BLOCK_M)
        blocks_per_split = tl.cdiv(tl.cdiv(kv_end, BLOCK_N), NUM_SPLITS)
        lo = split * blocks_per_split * BLOCK_N
        hi = tl.minimum(lo + blocks_per_split * BLOCK_N, kv_end)
        full_end = tl.maximum(lo, tl.minimum(hi, (L - Tq + m0 + 1) // BLOCK_N * BLOCK_N))
    o_base = b.to(tl.int64) * stride_ob + h * stride_oh
    if VEC:
        q = tl.load(Q + b.to(tl.int64) * stride_qb + h * stride_qh + offs_d).to(tl.float32)
        k_ptrs = K + b.to(tl.int64) * stride_kb + h * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :]
        v_ptrs = V + b.to(tl.int64) * stride_vb + h * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :]
        acc = tl.zeros([HEAD_DIM], dtype=tl.float32)
        m_i = tl.max(tl.full([1], float("-inf"), tl.float32), 0)
        l_i = tl.sum(tl.zeros([1], tl.float32), 0)
        acc, l_i, m_i = _vec_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, lo, hi, L, qk_scale, BLOCK_N)
        has = l_i > 0.0
        acc = acc * (1.0 / tl.where(has, l_i, 1.0))
        lse = tl.where(has, m_i + tl.math.log2(tl.where(has, l_i, 1.0)), float("-inf"))
        part_base = (bh.to(tl.int64) * NUM_SPLITS + split) * Tq
        tl.store(O_PART + part_base * HEAD_DIM + offs_d, acc)
        tl.store(LSE_PART + part_base, lse)
    else:
        q_ptrs = Q + b.to(tl.int64) * stride_qb + h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :]
        k_ptrs = K + b.to(tl.int64) * stride_kb + h * stride_kh + offs_n[None, :] * stride_kt + offs_d[:, None]
        v_ptrs = V + b.to(tl.int64) * stride_vb + h * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :]
        q = tl.load(q_ptrs, mask=offs_m[:, None] < Tq, other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        if ILV:
            # split s takes key blocks s, s + NUM_SPLITS, ...: at any moment the programs of one head read
            # neighbouring blocks
            kv_end = tl.minimum(L, L - Tq + m0 + BLOCK_M)
            stride = NUM_SPLITS * BLOCK_N
            first = split * BLOCK_N
            if PEEL:
                # the first block's loads do not wait for the lengths (S >= NUM_SPLITS * BLOCK_N)
                k0 = tl.load(k_ptrs + first * stride_kt)
                v0 = tl.load(v_ptrs + first * stride_vt)
                s0 = tl.dot(q, k0, input_precision=DOT_PRECISION)
                cols = first + offs_n
                s0 = tl.where(cols[None, :] <= q_pos[:, None], s0, float("-inf"))
                m_i = tl.max(s0, 1) * qk_scale
                m_i = tl.where(m_i == float("-inf"), 0.0, m_i)
                p0 = tl.math.exp2(s0 * qk_scale - m_i[:, None])
                l_i = tl.sum(p0, 1)
                acc = tl.dot(p0.to(v0.dtype), v0, input_precision=DOT_PRECISION)
                first += stride
            full_blocks = (L - Tq + m0 + 1) // BLOCK_N
            cnt = tl.maximum(full_blocks - first // BLOCK_N + NUM_SPLITS - 1, 0) // NUM_SPLITS
            mid = first + cnt * stride
            for start_n in range(first, mid, stride):
                k = tl.load(k_ptrs + start_n * stride_kt)
                s = tl.dot(q, k, input_precision=DOT_PRECISION)
                m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
                p = tl.math.exp2(s * qk_scale - m_new[:, None])
                alpha = tl.math.exp2(m_i - m_new)
                l_i = l_i * alpha + tl.sum(p, 1)
                v = tl.load(v_ptrs + start_n * stride_vt)
                acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
                m_i = m_new
            for start_n in range(mid, kv_end, stride):
                cols = start_n + offs_n
                k = tl.load(k_ptrs + start_n * stride_kt, mask=cols[None, :] < L, other=0.0)
                s = tl.dot(q, k, input_precision=DOT_PRECISION)
                s = tl.where(cols[None, :] <= q_pos[:, None], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
                m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
                p = tl.math.exp2(s * qk_scale - m_new[:, None])
                alpha = tl.math.exp2(m_i - m_new)
                l_i = l_i * alpha + tl.sum(p, 1)
                v = tl.load(v_ptrs + start_n * stride_vt, mask=cols[:, None] < L, other=0.0)
                acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
                m_i = m_new
        else:
            acc, l_i, m_i = _decode_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, q_pos, lo,
                                          full_end, L, qk_scale, BLOCK_N, False, DOT_PRECISION)
            acc, l_i, m_i = _decode_inner(acc, l_i, m_i, q, k_ptrs, v_ptrs, stride_kt, stride_vt, q_pos, full_end,
                                          hi, L, qk_scale, BLOCK_N, True, DOT_PRECISION)
        has_keys = l_i > 0.0
        acc = acc * (1.0 / tl.where(has_keys, l_i, 1.0))[:, None]
        lse = tl.where(has_keys, m_i + tl.math.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        part_base = (bh.to(tl.int64) * NUM_SPLITS + split) * Tq
        tl.store(O_PART + (part_base + offs_m[:, None]) * HEAD_DIM + offs_d[None, :], acc, mask=offs_m[:, None] < Tq)
        tl.store(LSE_PART + part_base + offs_m, lse, mask=offs_m < Tq)
    if not NOMERGE:
        tl.debug_barrier()
        lock = LOCKS + bh * tl.num_programs(1) + pid_m
        if tl.atomic_add(lock, 1, sem="acq_rel", scope="gpu") == NUM_SPLITS - 1:
            tl.store(lock, 0)
            _decode_merge(O_PART, LSE_PART, O, bh.to(tl.int64) * NUM_SPLITS * Tq, o_base, stride_ot,
                          m0, tl.minimum(m0 + BLOCK_M, Tq), Tq, NUM_SPLITS, HEAD_DIM, SPLITS_POW2)


def var_attn(q, k_cache, v_cache, cache_seqlens, num_splits, block_n=64, warps=4, stages=3,
             cap=False, nomerge=False, pdl=False, vec=False, ilv=False, peel=False):
    B, Tq, H, D = q.shape
    S = k_cache.shape[1]
    BLOCK_M = max(16, triton.next_power_of_2(Tq))
    o = torch.empty((B, Tq, H, D), dtype=q.dtype, device=q.device)
    o_part = torch.empty((B * H, num_splits, Tq, D), dtype=torch.float32, device=q.device)
    lse_part = torch.empty((B * H, num_splits, Tq), dtype=torch.float32, device=q.device)
    locks = _locks(q.device, B * H)
    _var_kernel[(num_splits, triton.cdiv(Tq, BLOCK_M), B * H)](
        q, k_cache, v_cache, cache_seqlens, o, o_part, lse_part, locks,
        q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), o.stride(0), o.stride(1), o.stride(2),
        H, Tq, S, D ** -0.5 * 1.4426950408889634, num_splits,
        HEAD_DIM=D, BLOCK_M=BLOCK_M, BLOCK_N=block_n, SPLITS_POW2=triton.next_power_of_2(num_splits),
        DOT_PRECISION="tf32", CAP=cap, NOMERGE=nomerge, PDL=pdl, VEC=vec, ILV=ilv, PEEL=peel,
        num_warps=warps, num_stages=stages, launch_pdl=pdl,
    )
    return o


@triton.jit
def _read_kernel(K, OUT, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    # each program sums CHUNK contiguous elements in BLOCK pieces: the read floor of this grid
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    base = K + pid.to(tl.int64) * CHUNK
    for i in range(0, CHUNK, BLOCK):
        acc += tl.load(base + i + offs).to(tl.float32)
    tl.store(OUT + pid, tl.sum(acc, 0))


def read_floor(kv, programs, warps=4, stages=3):
    n = kv.numel()
    out = torch.empty(programs, device=kv.device, dtype=torch.float32)
    chunk = n // programs
    _read_kernel[(programs,)](kv, out, CHUNK=chunk, BLOCK=4096, num_warps=warps, num_stages=stages)
    return out


@triton.jit
def _read_ilv_kernel(K, OUT, N, BLOCK: tl.constexpr):
    # grid-stride: program p reads blocks p, p + P, ...: the whole grid sweeps one window of memory at a time
    pid = tl.program_id(0)
    P = tl.num_programs(0)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    for i in range(pid * BLOCK, N, P * BLOCK):
        acc += tl.load(K + i + offs).to(tl.float32)
    tl.store(OUT + pid, tl.sum(acc, 0))


def read_ilv(kv, programs, block=8192, warps=4, stages=3):
    out = torch.empty(programs, device=kv.device, dtype=torch.float32)
    _read_ilv_kernel[(programs,)](kv, out, kv.numel(), BLOCK=block, num_warps=warps, num_stages=stages)
    return out


def main():
    import bench_generate as bg
    from flash_decode import attention_with_kvcache_ref
    rows = []
    for cache, batch in [(1024, 1), (8192, 1), (16384, 1), (32768, 1), (8192, 8), (2048, 1), (4096, 1)]:
        qs, kvs, seqlens = bg._decode_inputs(cache, batch)
        prov = bg._providers()
        want = attention_with_kvcache_ref(qs[0], kvs[0][:, 0].transpose(1, 2), kvs[0][:, 1].transpose(1, 2), seqlens)
        row = {'cache': cache, 'batch': batch}
        dst = torch.empty_like(kvs[0])
        row['copy'] = bg.graph_us([lambda kv=kv: dst.copy_(kv) for kv in kvs])
        ns = 32 if batch == 1 and cache >= 4096 else (8 if batch == 1 else 4)
        row['read_chunk384'] = bg.graph_us([lambda kv=kv: read_floor(kv, 384) for kv in kvs])
        for P in (132, 264, 396, 528):
            for blk, w in ((8192, 4), (16384, 8)):
                row[f'read_ilv{P}/{blk}/w{w}'] = bg.graph_us([lambda kv=kv: read_ilv(kv, P, blk, w) for kv in kvs])
        row['cudnn'] = bg.graph_us([lambda q=q, kv=kv: prov['cudnn'](q, kv, seqlens) for q, kv in zip(qs, kvs)])
        row['ours'] = bg.graph_us([lambda q=q, kv=kv: prov['ours'](q, kv, seqlens) for q, kv in zip(qs, kvs)])
        variants = {
            'base': {}, 'cap': dict(cap=True), 'nomerge': dict(nomerge=True), 'pdl': dict(pdl=True),
            'cap+pdl': dict(cap=True, pdl=True), 'vec': dict(vec=True), 'w2': dict(warps=2), 'w8': dict(warps=8),
            's2': dict(stages=2), 'ilv': dict(ilv=True), 'ilv+peel': dict(ilv=True, peel=True),
            'ilv+nomerge': dict(ilv=True, nomerge=True), 'ilv/s4': dict(ilv=True, stages=4),
            'ilv/s2': dict(ilv=True, stages=2), 'ilv/n128': dict(ilv=True, block_n=128),
            'ilv+peel/w2': dict(ilv=True, peel=True, warps=2), 'ilv/w8': dict(ilv=True, warps=8),
        }
        for name, kw in variants.items():
            for n in sorted({ns, ns * 2, max(1, ns // 2)}):
                key = f"{name} x{n}"
                def call(q, kv, n=n, kw=kw):
                    return var_attn(q, kv[:, 0].transpose(1, 2), kv[:, 1].transpose(1, 2), seqlens, n, **kw)
                try:
                    got = call(qs[0], kvs[0]).float()
                    err = ((got - want).norm() / want.norm()).item()
                    us = bg.graph_us([lambda q=q, kv=kv: call(q, kv) for q, kv in zip(qs, kvs)])
                    ok = 'nomerge' in name or err < 2e-2
                    row[key] = us if ok else float('nan')
                    if not ok:
                        print(key, 'wrong', err)
                except Exception as e:
                    print(key, 'failed', repr(e)[:300])
        rows.append(row)
        print(json.dumps(row), flush=True)
        del qs, kvs; torch.cuda.empty_cache()
    json.dump(rows, open(sys.argv[1], 'w'))
    for r in rows:
        mb = 2 * r['batch'] * r['cache'] * 12 * 64 * 2 / 1e6
        reads = sorted((v, k) for k, v in r.items() if k.startswith('read') and v == v)[:3]
        best = sorted((v, k) for k, v in r.items() if k not in ('cache', 'batch', 'copy', 'cudnn') and not k.startswith('read') and v == v)[:7]
        print(f"cache {r['cache']} b{r['batch']} ({mb:.1f} MB): copy {r['copy']:.1f} cudnn {r['cudnn']:.1f} ours {r['ours']:.1f} | "
              + ", ".join(f"{k} {v:.1f}" for v, k in reads) + " | " + ", ".join(f"{k} {v:.1f}" for v, k in best))


if __name__ == '__main__':
    main()
