"""The head-dim-64 Hopper backward with dQ summed in a cluster's shared memory, against the Triton backward and the
one with the fp32 dQ buffer: max abs errors against the fp32 reference, then time (triton.testing.do_bench, the
delta pass included) and peak memory; the cluster backward twice, its dQ group taking messages while it waits for dS
("cluster") or not ("no poll"). python tools/cluster_dq_ab.py on a Hopper GPU."""
import sys, os, time
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch, triton
import flash_kernel as fk
import flash_hopper as fh

torch.manual_seed(0)
dev = "cuda"


def make(B, H, T, D=64):
    qkv = torch.randn(B, T, 3, H, D, device=dev, dtype=torch.bfloat16)
    q, k, v = [t.transpose(1, 2) for t in qkv.unbind(2)]
    do = torch.randn(B, T, H, D, device=dev, dtype=torch.bfloat16).transpose(1, 2)
    scale = D ** -0.5
    o, lse = fk._attn_fwd(q, k, v, None, True, scale, 0.0)
    return q, k, v, do, o, lse, scale


def delta_of(o, do):
    B, H, T, D = o.shape
    delta = torch.empty((B, H, T), dtype=torch.float32, device=dev)
    fk._attn_bwd_delta_kernel[(triton.cdiv(T, fk.DELTA_BLOCK), B * H)](
        o, do, delta, o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1), do.stride(2),
        H, T, HEAD_DIM=D, BLOCK_M=fk.DELTA_BLOCK)
    return delta


def grads(q):
    return [torch.empty(q.shape[0], q.shape[2], q.shape[1], q.shape[3], device=dev, dtype=q.dtype).transpose(1, 2)
            for _ in range(3)]


def run(kind, q, k, v, do, o, lse, scale, out):
    dq, dk, dv = out
    if kind in ("cluster", "grid", "nopoll"):
        delta = delta_of(o, do)
        fh._attn_bwd(do, q, k, v, lse, delta, dq, dk, dv, scale, scale * fk.LOG2E, cluster=kind != "grid",
                     poll=kind != "nopoll")
    else:
        fk._attn_bwd_into(dq, dk, dv, do, q, k, v, o, lse, None, True, scale, 0.0, kind, None)


def main():
    print("## correctness (max abs error against the fp32 reference: triton / hopper buffer / cluster)")
    for B, H, T in [(2, 3, 1024), (1, 2, 1000), (1, 3, 640), (1, 1, 384)]:
        q, k, v, do, o, lse, scale = make(B, H, T)
        qf, kf, vf = [t.float().requires_grad_() for t in (q, k, v)]
        ref = torch.nn.functional.scaled_dot_product_attention(qf, kf, vf, is_causal=True)
        ref.backward(do.float())
        line = []
        for kind in ("triton", "grid", "cluster"):
            out = grads(q)
            try:
                run(kind, q, k, v, do, o, lse, scale, out)
                torch.cuda.synchronize()
                errs = [(a.float() - r.grad).abs().max().item() for a, r in zip(out, (qf, kf, vf))]
                line.append(f"{kind} dq {errs[0]:.4f} dk {errs[1]:.4f} dv {errs[2]:.4f}")
            except Exception as e:
                line.append(f"{kind} ERROR {type(e).__name__}: {str(e)[:200]}")
        print(f"B={B} H={H} T={T}: " + " | ".join(line), flush=True)
    print("## timing (ms, do_bench, backward incl. delta), peak MiB above inputs")
    rows = []
    for B, H, T in [(16, 32, 1024), (12, 12, 1024), (32, 32, 512)]:
        q, k, v, do, o, lse, scale = make(B, H, T)
        res = {}
        for kind in ("triton", "grid", "cluster", "nopoll"):
            out = grads(q)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            run(kind, q, k, v, do, o, lse, scale, out)
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            ms = triton.testing.do_bench(lambda: run(kind, q, k, v, do, o, lse, scale, out), warmup=10, rep=100)
            res[kind] = (ms, peak)
        rows.append((B, H, T, res))
        print(B, H, T, res, flush=True)
    print("| B H T | triton ms | grid ms | cluster ms | triton/cluster | grid/cluster | peak MiB t/h/c | no poll ms |")
    print("|---|---|---|---|---|---|---|---|")
    for B, H, T, r in rows:
        print(f"| {B} {H} {T} | {r['triton'][0]:.3f} | {r['grid'][0]:.3f} | {r['cluster'][0]:.3f} | "
              f"{r['triton'][0] / r['cluster'][0]:.3f} | {r['grid'][0] / r['cluster'][0]:.3f} | "
              f"{r['triton'][1]:.0f}/{r['grid'][1]:.0f}/{r['cluster'][1]:.0f} | no poll {r['nopoll'][0]:.3f} |")


if __name__ == "__main__":
    main()
