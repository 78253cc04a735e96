"""
Host (CPU) cost of one call at each layer of flash_attn, in microseconds, at the char model's shape: a
developer's probe. At small shapes the host, not the GPU, sets the pace of an eager forward+backward.

    python tools/overhead.py

layer_costs() and backward_thread_costs() return the numbers; main prints them, then a cProfile of the backward's
body on autograd's device thread and on the calling thread.
"""
import cProfile
import argparse
import os
import pstats
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import flash_kernel as fk  # noqa: E402
from utils import require_gpu  # noqa: E402

B, H, T, D = 64, 6, 256, 64
SCALE = D ** -0.5


def host_us(fn, n=300) -> float:
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


def median_us(fn, n=200) -> float:
    """Median host time of single calls."""
    for _ in range(10):
        fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    torch.cuda.synchronize()
    return sorted(ts)[n // 2] * 1e6


def _inputs():
    q, k, v = [torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    return q, k, v, torch.randn_like(q)


def _fwd_bwd(fn, q, k, v, do):
    def run():
        fn(q, k, v).backward(do)
        q.grad = k.grad = v.grad = None
    return run


def _cudnn(q, k, v):
    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class _Trivial(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 1

    @staticmethod
    def backward(ctx, g):
        return g


def layer_costs() -> dict:
    """{layer: host us per call}: an allocation, the launchers, the op, the input checks, flash_attn and cuDNN's
    whole fwd+bwd, and an autograd.Function that does nothing, for scale."""
    q, k, v, do = _inputs()
    qn, kn, vn = [t.detach() for t in (q, k, v)]
    o, lse = fk._attn_fwd(qn, kn, vn, None, True, SCALE, 0.0)
    costs = {
        "torch.empty (B,T,H,D)": host_us(lambda: torch.empty((B, T, H, D), device="cuda", dtype=torch.bfloat16)),
        "_attn_fwd (allocs + 1 launch)": host_us(lambda: fk._attn_fwd(qn, kn, vn, None, True, SCALE, 0.0)),
        "_attn_bwd (allocs + 2 launches)": host_us(lambda: fk._attn_bwd(do, qn, kn, vn, o, lse, None, True, SCALE,
                                                                       0.0)),
        "torch.ops.flashgpt.attn_fwd": host_us(lambda: torch.ops.flashgpt.attn_fwd(qn, kn, vn, None, True, SCALE,
                                                                                   0.0)),
        "check_inputs": host_us(lambda: fk._check_inputs(q, k, v, True, 0.0)),
        "flash_attn fwd+bwd": host_us(_fwd_bwd(fk.flash_attn, q, k, v, do)),
        "cuDNN SDPA fwd+bwd": host_us(_fwd_bwd(_cudnn, q, k, v, do)),
        "flash_attn fwd only (grad on)": host_us(lambda: fk.flash_attn(q, k, v)),
    }
    with torch.autograd.set_multithreading_enabled(False):
        costs["flash_attn fwd+bwd, 1 autograd thread"] = host_us(_fwd_bwd(fk.flash_attn, q, k, v, do))
    costs["trivial autograd.Function fwd+bwd"] = host_us(_fwd_bwd(lambda q, k, v: _Trivial.apply(q), q, k, v, do))
    # Where does the extra host time of a backward on autograd's device thread go? The launcher itself on the
    # main thread and on a plain Python thread, as medians of single calls
    bwd = lambda: fk._attn_bwd(do, qn, kn, vn, o, lse, None, True, SCALE, 0.0)  # noqa: E731
    fwd = lambda: fk._attn_fwd(qn, kn, vn, None, True, SCALE, 0.0)  # noqa: E731
    costs["_attn_bwd, main thread (median)"] = median_us(bwd)
    costs["_attn_fwd, main thread (median)"] = median_us(fwd)
    for name, fn in (("_attn_bwd", bwd), ("_attn_fwd", fwd)):
        out = {}
        th = threading.Thread(target=lambda: out.setdefault("us", median_us(fn)))
        th.start()
        th.join()
        costs[f"{name}, another Python thread (median)"] = out["us"]
    return costs


class _Timed(torch.autograd.Function):
    # flash_attn's launchers in an autograd.Function whose backward records when its body starts and ends
    marks: list = []

    @staticmethod
    def forward(ctx, q, k, v):
        o, lse = fk._attn_fwd(q, k, v, None, True, SCALE, 0.0)
        ctx.save_for_backward(q, k, v, o, lse)
        return o

    @staticmethod
    def backward(ctx, g):
        t_enter = time.perf_counter()
        prof = getattr(ctx, "prof", None)
        if prof is not None:
            prof.enable()
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = fk._attn_bwd(g, q, k, v, o, lse, None, True, SCALE, 0.0)
        if prof is not None:
            prof.disable()
        _Timed.marks.append((t_enter, time.perf_counter()))
        return dq, dk, dv


def backward_thread_costs(threads: bool, prof=None, n=210) -> dict:
    """Medians, us, of a backward() call's three parts with the backward on autograd's device thread (threads) or
    on the calling thread: the handoff to the body, the body, and the way back. prof, a cProfile.Profile, records
    the body."""
    q, k, v, do = _inputs()
    rows = []
    with torch.autograd.set_multithreading_enabled(threads):
        for i in range(n):
            out = _Timed.apply(q, k, v)
            out.grad_fn.prof = prof
            t0 = time.perf_counter()
            out.backward(do)
            t1 = time.perf_counter()
            t_enter, t_exit = _Timed.marks[-1]
            if i >= 10:
                rows.append(((t_enter - t0) * 1e6, (t_exit - t_enter) * 1e6, (t1 - t_exit) * 1e6))
            q.grad = k.grad = v.grad = None
    torch.cuda.synchronize()
    med = [sorted(r[j] for r in rows)[len(rows) // 2] for j in range(3)]
    return dict(to_body=med[0], body=med[1], back=med[2])


def main():
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    require_gpu('tools/overhead.py')
    print(f"host time per call at B={B} H={H} T={T} D={D} bf16 on {torch.cuda.get_device_name()}")
    for name, us in layer_costs().items():
        print(f"{name:40s} {us:8.1f} us")
    q, k, v, _ = _inputs()
    try:
        print("SDPA's own choice for bf16 causal here:",
              SDPBackend(torch._fused_sdp_choice(q, k, v, is_causal=True)).name)
    except Exception as e:  # a private helper; only informative
        print("SDPA backend choice unknown:", e)
    for threads in (True, False):
        parts = backward_thread_costs(threads)
        where = "autograd device thread" if threads else "calling thread"
        print(f"backward() on {where}: to body {parts['to_body']:.1f} us, body {parts['body']:.1f} us, back "
              f"{parts['back']:.1f} us (medians)")
        prof = cProfile.Profile()
        backward_thread_costs(threads, prof)
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
