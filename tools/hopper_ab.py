"""
The Hopper kernels (flash_hopper.py) against the Triton kernels they replace and against cuDNN, forward and
backward apart, in one run on one Hopper GPU: the measurements behind the "hopper" rows of flash_kernel.TUNED.

    python tools/hopper_ab.py [--graph] [--out hopper_ab.md]

Each pass is timed alone (triton.testing.do_bench, median, as bench.py), eagerly, host cost included; with --graph
as GPU time instead: 20 calls captured in a CUDA graph and replayed (bench_generate.graph_us), what a compiled
training step replayed as CUDA graphs pays (cuDNN's backward is not captured there and shows as a dash). The
backward rows include what each path runs besides its kernel (the delta pass, and for the Hopper kernel zeroing
the fp32 dQ buffer and casting it).
Before timing a shape, both paths' outputs are compared with each other (bf16, one rounding apart at most).
measure() returns the times; main prints them.
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import flash_kernel as fk  # noqa: E402
from bench_generate import fmt, graph_us  # noqa: E402
from utils import check_writable, git_commit, require_gpu  # noqa: E402

SHAPES = [(64, 6, 256, 64), (12, 12, 1024, 64)] + [(16384 // T, 2048 // D, T, D) for D in (64, 128)
                                                    for T in (512, 1024, 2048, 4096, 8192, 16384)]


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def graph_bench(fn) -> float:
    """GPU time per call, ms: bench_generate's CUDA-graph replay of calls back to back."""
    return graph_us([fn]) / 1e3


def measure(shapes: list = SHAPES, graph: bool = False) -> list:
    """For each (B, H, T, D): the Triton and Hopper kernels' and cuDNN's forward and backward, ms, as one dict;
    graph: GPU time from CUDA-graph replay (cuDNN's backward NaN)."""
    assert fk.flash_hopper is not None and torch.cuda.get_device_capability()[0] == 9, "needs a Hopper GPU"
    rows = []
    for B, H, T, D in shapes:
        q, k, v, do = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        scale = 1 / math.sqrt(D)
        fwd = lambda backend: fk._attn_fwd(q, k, v, None, True, scale, 0.0, backend)  # noqa: E731
        (o, lse), (o_h, lse_h) = fwd("triton"), fwd("hopper")
        bwd = lambda backend: fk._attn_bwd(do, q, k, v, o, lse, None, True, scale, 0.0, backend)  # noqa: E731
        for a, b in zip((o, lse) + bwd("triton"), (o_h, lse_h) + bwd("hopper")):
            err = ((a.float() - b.float()).norm() / b.float().norm()).item()
            assert err < 2e-2, f"the Hopper and Triton kernels disagree at {(B, H, T, D)}: {err:.2e}"
        timed = graph_bench if graph else bench
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            cudnn_f = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
            out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True)
            # autograd's backward of cuDNN's attention invalidates a capture: eager only
            cudnn_b = float("nan") if graph else bench(
                lambda: torch.autograd.grad(out, (qq, kk, vv), do, retain_graph=True))
        rows.append(dict(B=B, H=H, T=T, D=D, fwd_triton=timed(lambda: fwd("triton")), fwd_hopper=timed(
            lambda: fwd("hopper")), fwd_cudnn=cudnn_f, bwd_triton=timed(lambda: bwd("triton")),
            bwd_hopper=timed(lambda: bwd("hopper")), bwd_cudnn=cudnn_b))
    return rows


def _ratio(a: float, b: float) -> str:
    return fmt(a / b, ".2f") + ("x" if a == a else "")  # a dash where a was not measured


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--graph", action="store_true", help="GPU time from CUDA-graph replay instead of eager calls")
    parser.add_argument("--out")
    args = parser.parse_args()
    require_gpu('tools/hopper_ab.py')
    if args.out:
        check_writable(args.out)
    timing = "GPU time, CUDA-graph replay" if args.graph else "eager calls"
    lines = [f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | bf16 "
             f"causal | {timing} | commit {git_commit()}", "",
             "| shape | fwd: triton ms | hopper ms | cuDNN ms | hopper/triton | hopper/cuDNN | bwd: triton ms | "
             "hopper ms | cuDNN ms | hopper/triton | hopper/cuDNN |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for shape in SHAPES:
        (r,) = measure([shape], graph=args.graph)
        tf, hf, cf, tb, hb, cb = (r[key] for key in ("fwd_triton", "fwd_hopper", "fwd_cudnn", "bwd_triton",
                                                     "bwd_hopper", "bwd_cudnn"))
        # fmt shows a time not measured (cuDNN's backward in a graph) as a dash
        line = (f"| B={r['B']} H={r['H']} T={r['T']} D={r['D']} | {tf:.4f} | {hf:.4f} | {cf:.4f} | "
                f"{_ratio(tf, hf)} | {_ratio(cf, hf)} | {tb:.4f} | {hb:.4f} | {fmt(cb, '.4f')} | {_ratio(tb, hb)} | "
                f"{_ratio(cb, hb)} |")
        lines.append(line)
        print(line, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"`python tools/hopper_ab.py{' --graph' if args.graph else ''}`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
