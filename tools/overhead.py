"""
Host (CPU) cost of one call at each layer of flash_attn, in microseconds, at the char model's shape: a
developer's probe. At small shapes the host, not the GPU, sets the pace of an eager forward+backward.

    python tools/overhead.py
"""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import flash_kernel as fk  # noqa: E402


def host_us(fn, n=300):
    """Mean host time per call, no synchronisation inside the loop (the GPU runs behind)."""
    for _ in range(10):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    return t


B, H, T, D = 64, 6, 256, 64
q, k, v = [torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
qn, kn, vn = [t.detach() for t in (q, k, v)]
do = torch.randn_like(q)
s = D ** -0.5
o, lse = fk._attn_fwd(qn, kn, vn, None, True, s, 0.0)


def fwd_bwd(fn):
    def run():
        fn(q, k, v).backward(do)
        q.grad = k.grad = v.grad = None
    return run


def cudnn(q, k, v):
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


rows = {
    "torch.empty (B,T,H,D)": lambda: torch.empty((B, T, H, D), device="cuda", dtype=torch.bfloat16),
    "_attn_fwd (allocs + 1 launch)": lambda: fk._attn_fwd(qn, kn, vn, None, True, s, 0.0),
    "_attn_bwd (allocs + 2 launches)": lambda: fk._attn_bwd(do, qn, kn, vn, o, lse, None, True, s, 0.0),
    "torch.ops.flashgpt.attn_fwd": lambda: torch.ops.flashgpt.attn_fwd(qn, kn, vn, None, True, s, 0.0),
    "check_inputs": lambda: fk._check_inputs(q, k, v, 0.0),
    "flash_attn fwd+bwd": fwd_bwd(fk.flash_attn),
    "cuDNN SDPA fwd+bwd": fwd_bwd(cudnn),
}
print(f"host time per call at B={B} H={H} T={T} D={D} bf16 on {torch.cuda.get_device_name()}")
for name, fn in rows.items():
    print(f"{name:36s} {host_us(fn):8.1f} us")

fwd_only = lambda: fk.flash_attn(q, k, v)  # noqa: E731
print(f"{'flash_attn fwd only (grad on)':36s} {host_us(fwd_only):8.1f} us")
with torch.autograd.set_multithreading_enabled(False):
    print(f"{'flash_attn fwd+bwd, 1 autograd thread':36s} {host_us(rows['flash_attn fwd+bwd']):8.1f} us")


class Trivial(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 1

    @staticmethod
    def backward(ctx, g):
        return g


print(f"{'trivial autograd.Function fwd+bwd':36s} {host_us(fwd_bwd(lambda q, k, v: Trivial.apply(q))):8.1f} us")
try:
    print("SDPA's own choice for bf16 causal here:", SDPBackend(torch._fused_sdp_choice(q, k, v, is_causal=True)).name)
except Exception as e:  # a private helper; only informative
    print("SDPA backend choice unknown:", e)


# Where does the extra host time of a backward on autograd's device thread go? Time the launcher itself on the
# main thread, on a plain Python thread, and inside an autograd backward (which runs on autograd's CUDA thread).
def median_us(fn, n=200):
    for _ in range(10):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    return sorted(ts)[n // 2] * 1e6


bwd = lambda: fk._attn_bwd(do, qn, kn, vn, o, lse, None, True, s, 0.0)  # noqa: E731
fwd = lambda: fk._attn_fwd(qn, kn, vn, None, True, s, 0.0)  # noqa: E731
print(f"{'_attn_bwd, main thread':36s} {median_us(bwd):8.1f} us (median of single calls)")
print(f"{'_attn_fwd, main thread':36s} {median_us(fwd):8.1f} us")
for name, fn in (("_attn_bwd", bwd), ("_attn_fwd", fwd)):
    out = {}
    th = threading.Thread(target=lambda: out.setdefault("us", median_us(fn)))
    th.start()
    th.join()
    print(f"{name + ', another Python thread':36s} {out['us']:8.1f} us")

inside = []


class Timed(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        o, lse = fk._attn_fwd(q, k, v, None, True, s, 0.0)
        ctx.save_for_backward(q, k, v, o, lse)
        return o

    @staticmethod
    def backward(ctx, g):
        t0 = time.perf_counter()
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = fk._attn_bwd(g, q, k, v, o, lse, None, True, s, 0.0)
        inside.append(time.perf_counter() - t0)
        return dq, dk, dv


for threads in (True, False):
    inside.clear()
    with torch.autograd.set_multithreading_enabled(threads):
        total = host_us(fwd_bwd(lambda q, k, v: Timed.apply(q, k, v)))
    med = sorted(inside)[len(inside) // 2] * 1e6
    where = "autograd device thread" if threads else "calling thread"
    print(f"Timed fwd+bwd, backward on {where}: {total:.1f} us per fwd+bwd, of which backward body {med:.1f} us")

# Split the device-thread cost: before the backward body starts (the handoff to autograd's thread), the body, and
# after it (the way back), with a cProfile of the body on each thread.
import cProfile  # noqa: E402
import pstats  # noqa: E402

marks = []


class Marked(Timed):
    @staticmethod
    def backward(ctx, g):
        t_enter = time.perf_counter()
        prof = ctx.prof
        prof.enable()
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = fk._attn_bwd(g, q, k, v, o, lse, None, True, s, 0.0)
        prof.disable()
        marks.append([t_enter, time.perf_counter()])
        return dq, dk, dv


for threads in (True, False):
    prof, rows = cProfile.Profile(), []
    with torch.autograd.set_multithreading_enabled(threads):
        for i in range(210):
            out = Marked.apply(q, k, v)
            out.grad_fn.prof = prof
            t0 = time.perf_counter()
            out.backward(do)
            t1 = time.perf_counter()
            t_enter, t_exit = marks[-1]
            if i >= 10:
                rows.append(((t_enter - t0) * 1e6, (t_exit - t_enter) * 1e6, (t1 - t_exit) * 1e6))
            q.grad = k.grad = v.grad = None
    torch.cuda.synchronize()
    med = [sorted(r[j] for r in rows)[len(rows) // 2] for j in range(3)]
    where = "autograd device thread" if threads else "calling thread"
    print(f"backward() on {where}: to body {med[0]:.1f} us, body {med[1]:.1f} us, back {med[2]:.1f} us (medians)")
    pstats.Stats(prof).sort_stats("tottime").print_stats(12)
