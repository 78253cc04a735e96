"""
The Hopper kernels (flash_hopper.py) against the Triton kernels they replace and against cuDNN, forward and
backward apart, in one run on one Hopper GPU: the measurements behind the "hopper" rows of flash_kernel.TUNED.

    python tools/hopper_ab.py [--out hopper_ab.md]

Each pass is timed alone (triton.testing.do_bench, median, as bench.py). The backward rows include what each
path runs besides its kernel (the delta pass, and for the Hopper kernel zeroing the fp32 dQ buffer and casting it).
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
from utils import git_commit, require_gpu  # noqa: E402

SHAPES = [(64, 6, 256, 64), (12, 12, 1024, 64)] + [(16384 // T, 2048 // D, T, D) for D in (64, 128)
                                                    for T in (512, 1024, 2048, 4096, 8192, 16384)]


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def measure(shapes: list = SHAPES) -> list:
    """For each (B, H, T, D): the Triton and Hopper kernels' and cuDNN's forward and backward, ms, as one dict."""
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
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            cudnn_f = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
            out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True)
            cudnn_b = bench(lambda: torch.autograd.grad(out, (qq, kk, vv), do, retain_graph=True))
        rows.append(dict(B=B, H=H, T=T, D=D, fwd_triton=bench(lambda: fwd("triton")), fwd_hopper=bench(
            lambda: fwd("hopper")), fwd_cudnn=cudnn_f, bwd_triton=bench(lambda: bwd("triton")),
            bwd_hopper=bench(lambda: bwd("hopper")), bwd_cudnn=cudnn_b))
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args = parser.parse_args()
    require_gpu('tools/hopper_ab.py')
    lines = [f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | bf16 "
             f"causal | commit {git_commit()}", "",
             "| shape | fwd: triton ms | hopper ms | cuDNN ms | hopper/triton | hopper/cuDNN | bwd: triton ms | "
             "hopper ms | cuDNN ms | hopper/triton | hopper/cuDNN |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for shape in SHAPES:
        (r,) = measure([shape])
        tf, hf, cf, tb, hb, cb = (r[key] for key in ("fwd_triton", "fwd_hopper", "fwd_cudnn", "bwd_triton",
                                                     "bwd_hopper", "bwd_cudnn"))
        line = (f"| B={r['B']} H={r['H']} T={r['T']} D={r['D']} | {tf:.3f} | {hf:.3f} | {cf:.3f} | {tf / hf:.2f}x | "
                f"{cf / hf:.2f}x | {tb:.3f} | {hb:.3f} | {cb:.3f} | {tb / hb:.2f}x | {cb / hb:.2f}x |")
        lines.append(line)
        print(line, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("`python tools/hopper_ab.py`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
