"""
The Hopper kernels (flash_hopper.py) against the Triton kernels they replace and against cuDNN, forward and
backward apart, in one run on one Hopper GPU: the measurements behind flash_hopper.MIN_T and MIN_T_BWD.

    python tools/hopper_ab.py [--out hopper_ab.md]

Each pass is timed alone (triton.testing.do_bench, median, as bench.py). The backward rows include what each
path runs besides its kernel (the delta pass, and for the Hopper kernel zeroing the fp32 dQ buffer and casting it).
Before timing a shape, both paths' outputs are compared with each other (bf16, one rounding apart at most).
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
from utils import git_commit  # noqa: E402

SHAPES = [(64, 6, 256, 64), (12, 12, 1024, 64)] + [(16384 // T, 2048 // D, T, D) for D in (64, 128)
                                                    for T in (512, 1024, 2048, 4096, 8192, 16384)]


def bench(fn):
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def run(hopper: bool, fn, *args):
    # flash_kernel's launchers with the Hopper kernels on at every T, or off
    hop = fk.flash_hopper
    saved = hop.MIN_T, hop.MIN_T_BWD
    everywhere = {64: 1, 128: 1}
    try:
        if hopper:
            hop.MIN_T, hop.MIN_T_BWD = everywhere, everywhere
        else:
            fk.flash_hopper = None
        return fn(*args)
    finally:
        fk.flash_hopper = hop
        hop.MIN_T, hop.MIN_T_BWD = saved


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    args = parser.parse_args()
    assert fk.flash_hopper is not None and torch.cuda.get_device_capability()[0] == 9, "needs a Hopper GPU"
    lines = [f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | bf16 "
             f"causal | commit {git_commit()}", "",
             "| shape | fwd: triton ms | hopper ms | cuDNN ms | hopper/triton | hopper/cuDNN | bwd: triton ms | "
             "hopper ms | cuDNN ms | hopper/triton | hopper/cuDNN |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for B, H, T, D in SHAPES:
        q, k, v, do = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        scale = 1 / math.sqrt(D)
        fwd = lambda hopper: run(hopper, fk._attn_fwd, q, k, v, None, True, scale, 0.0)  # noqa: E731
        (o, lse), (o_h, lse_h) = fwd(False), fwd(True)
        bwd = lambda hopper: run(hopper, fk._attn_bwd, do, q, k, v, o, lse, None, True, scale, 0.0)  # noqa: E731
        for a, b in zip((o, lse) + bwd(False), (o_h, lse_h) + bwd(True)):
            err = ((a.float() - b.float()).norm() / b.float().norm()).item()
            assert err < 2e-2, f"the Hopper and Triton kernels disagree at {(B, H, T, D)}: {err:.2e}"
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            cudnn_f = bench(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
            out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True)
            cudnn_b = bench(lambda: torch.autograd.grad(out, (qq, kk, vv), do, retain_graph=True))
        tf, hf, tb, hb = bench(lambda: fwd(False)), bench(lambda: fwd(True)), bench(lambda: bwd(False)), bench(
            lambda: bwd(True))
        line = (f"| B={B} H={H} T={T} D={D} | {tf:.3f} | {hf:.3f} | {cudnn_f:.3f} | {tf / hf:.2f}x | "
                f"{cudnn_f / hf:.2f}x | {tb:.3f} | {hb:.3f} | {cudnn_b:.3f} | {tb / hb:.2f}x | {cudnn_b / hb:.2f}x |")
        lines.append(line)
        print(line, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write("`python tools/hopper_ab.py`\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
