"""
Bulk copies between a thread-block cluster's programs, from Gluon through inline PTX: program r sends 8 KiB tiles
into a ring of S staging slots of program (r + 1) % C (cp.async.bulk.shared::cluster.shared::cta, completing on the
receiver's mbarrier); the receiver adds each tile into an fp32 accumulator (or not: ADD=0) and hands the slot back
with a remote mbarrier arrive on the sender's "empty" barrier. One warpgroup per program sends and receives in turn.
Prints the time of STEPS tiles and the bytes received per SM per cycle, and checks the sums. On a Hopper GPU:

    python tools/dsmem_bulk_probe.py
"""
import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

TILE_BYTES = 8192


@gluon.jit
def _asm0(code: gl.constexpr, tid, a, b):
    # thread-0-only or all-thread PTX with two u32 operands $1, $2 and the thread id $3
    return gl.inline_asm_elementwise(code, "=r,r,r,r", [a, b, tid], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def bulk_kernel(Y, EXTRA, STEPS, C: gl.constexpr, S: gl.constexpr, ADD: gl.constexpr):
    one: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    vec: gl.constexpr = gl.BlockedLayout([16], [32], [4], [0])
    pad = gl.allocate_shared_memory(gl.float32, [64 * 256], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    pad.store(gl.zeros([64 * 256], gl.float32, gl.BlockedLayout([128], [32], [4], [0])))
    tid = gl.arange(0, 128, layout=one)
    z = tid * 0
    base = gl.inline_asm_elementwise("mov.u32 $0, global_smem;", "=r,r", [z], dtype=gl.int32, is_pure=True, pack=1)
    base = base + EXTRA
    rank = gl.inline_asm_elementwise("mov.u32 $0, %cluster_ctarank;", "=r,r", [z], dtype=gl.int32, is_pure=True,
                                     pack=1)
    slots = base                      # S x 8 KiB
    src = base + S * 8192             # 8 KiB to send
    acc = src + 8192                  # 8 KiB accumulator
    bars = acc + 8192                 # full[S], empty[S]: 8 bytes each
    # fill src with rank + 1, acc with 0, init barriers
    j = gl.arange(0, 2048, layout=vec)
    jz = j * 0
    r16 = gl.inline_asm_elementwise("mov.u32 $0, %cluster_ctarank;", "=r,r", [jz], dtype=gl.int32, is_pure=True,
                                    pack=1)
    sbase = gl.inline_asm_elementwise("mov.u32 $0, global_smem;", "=r,r", [jz], dtype=gl.int32, is_pure=True, pack=1)
    sbase = sbase + EXTRA
    srcv = sbase + S * 8192 + j * 4
    accv = sbase + S * 8192 + 8192 + j * 4
    gl.inline_asm_elementwise("st.shared.f32 [$1], $2; mov.u32 $0, 0;", "=r,r,f", [srcv, (r16 + 1).to(gl.float32)],
                              dtype=gl.int32, is_pure=False, pack=1)
    gl.inline_asm_elementwise("st.shared.f32 [$1], $2; mov.u32 $0, 0;", "=r,r,f", [accv, jz.to(gl.float32)],
                              dtype=gl.int32, is_pure=False, pack=1)
    for t in gl.static_range(S):
        _asm0("{ .reg .pred p; setp.eq.u32 p, $3, 0; @p mbarrier.init.shared::cta.b64 [$1], 1; "
              "@p mbarrier.init.shared::cta.b64 [$2], 1; mov.u32 $0, 0; }", tid, bars + t * 8, bars + (S + t) * 8)
    gl.inline_asm_elementwise("fence.mbarrier_init.release.cluster; fence.proxy.async.shared::cta; "
                              "barrier.cluster.arrive.release.aligned; barrier.cluster.wait.acquire.aligned; "
                              "mov.u32 $0, 0;", "=r,r", [z], dtype=gl.int32, is_pure=False, pack=1)
    dst = (rank + 1) % C
    sender = (rank + C - 1) % C
    for i in range(STEPS):
        s = i % S
        ph = (i // S) & 1
        # send: wait for the credit of slot s (the receiver consumed message i - S), then copy
        _asm0("{ .reg .pred p; .reg .pred q; .reg .u32 rs; .reg .u32 rb; setp.eq.u32 p, $3, 0; @!p bra DONE; "
              "WAIT: mbarrier.try_wait.parity.shared::cta.b64 q, [$1], $2; @!q bra WAIT; DONE: mov.u32 $0, 0; }",
              tid, bars + (S + s) * 8 + z, (ph ^ 1) + z)
        gl.inline_asm_elementwise(
            "{ .reg .pred p; .reg .u32 rs; .reg .u32 rb; setp.eq.u32 p, $5, 0; "
            "mapa.shared::cluster.u32 rs, $1, $4; mapa.shared::cluster.u32 rb, $2, $4; "
            "@p cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes [rs], [$3], 8192, [rb]; "
            "mov.u32 $0, 0; }", "=r,r,r,r,r,r",
            [slots + s * 8192, bars + s * 8, src + z, dst + z, tid], dtype=gl.int32, is_pure=False, pack=1)
        # receive: expect the bytes, wait, add, hand the slot back
        _asm0("{ .reg .pred p; .reg .b64 st; setp.eq.u32 p, $3, 0; "
              "@p mbarrier.arrive.expect_tx.shared::cta.b64 st, [$1], $2; mov.u32 $0, 0; }",
              tid, bars + s * 8 + z, z + 8192)
        _asm0("{ .reg .pred q; WAIT: mbarrier.try_wait.parity.shared::cta.b64 q, [$1], $2; @!q bra WAIT; "
              "mov.u32 $0, $3; }", tid, bars + s * 8 + z, ph + z)
        if ADD:
            sv = sbase + s * 8192 + j * 4
            x = gl.inline_asm_elementwise("ld.shared.f32 $0, [$1];", "=f,r", [sv], dtype=gl.float32,
                                          is_pure=False, pack=1)
            a = gl.inline_asm_elementwise("ld.shared.f32 $0, [$1];", "=f,r", [accv], dtype=gl.float32,
                                          is_pure=False, pack=1)
            gl.inline_asm_elementwise("st.shared.f32 [$1], $2; mov.u32 $0, 0;", "=r,r,f", [accv, a + x],
                                      dtype=gl.int32, is_pure=False, pack=1)
        gl.inline_asm_elementwise("bar.sync 1, 128; mov.u32 $0, 0;", "=r,r", [z], dtype=gl.int32, is_pure=False,
                                  pack=1)
        gl.inline_asm_elementwise(
            "{ .reg .pred p; .reg .u32 rb; setp.eq.u32 p, $3, 0; mapa.shared::cluster.u32 rb, $1, $2; "
            "@p mbarrier.arrive.release.cluster.shared::cluster.b64 _, [rb]; mov.u32 $0, 0; }", "=r,r,r,r",
            [bars + (S + s) * 8, sender + z, tid], dtype=gl.int32, is_pure=False, pack=1)
    gl.inline_asm_elementwise("barrier.cluster.arrive.release.aligned; barrier.cluster.wait.acquire.aligned; "
                              "mov.u32 $0, 0;", "=r,r", [z], dtype=gl.int32, is_pure=False, pack=1)
    out = gl.inline_asm_elementwise("ld.shared.f32 $0, [$1];", "=f,r", [accv], dtype=gl.float32, is_pure=False,
                                    pack=1)
    gl.store(Y + gl.program_id(0) * 2048 + j, out)


def main():
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print("| cluster | slots | add | ms | bytes in per SM per cycle at 1.755 GHz | check |")
    for C in (2, 4, 8):
        for S in (2, 4):
            for add in (0, 1):
                clusters, steps = sms // C, 2000
                y = torch.zeros(clusters * C, 2048, device="cuda")
                k = bulk_kernel.warmup(y, 0, steps, C=C, S=S, ADD=add, grid=(clusters, ), num_warps=4)
                off = triton.cdiv(k.metadata.shared, 128) * 128
                k.packed_metadata = (4, C, off + (S + 2) * 8192 + 2 * S * 8)
                run = lambda: k[(clusters, 1, 1)](y, off, steps, C, S, add)
                run(); torch.cuda.synchronize()
                want = torch.tensor([((r - 1) % C + 1) * steps * add for r in range(C)], device="cuda")
                ok = bool((y.view(clusters, C, 2048) == want[None, :, None]).all())
                ms = triton.testing.do_bench(run, warmup=2, rep=20)
                rate = 8192 * steps / (ms * 1e-3) / 1.755e9
                print(f"| {C} | {S} | {add} | {ms:.3f} | {rate:.1f} | {ok} |", flush=True)


if __name__ == "__main__":
    main()
