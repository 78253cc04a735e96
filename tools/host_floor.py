"""
The host floor of our eager call: what one forward+backward costs when it is built the way flash_attn is (a Python
autograd.Function whose forward launches one Triton kernel and whose backward launches two, with the same
allocations) but every kernel is one block that copies 16 values. Beside it flash_attn, cuDNN and FlashAttention-2
through SDPA, at the shapes where bench.py's eager rows are host-bound. If the skeleton alone is not faster than
cuDNN's whole call, no kernel launched this way can be (docs/design.md, "Host floor of an eager call").

    python tools/host_floor.py [--out host_floor.md]

Protocol as bench.py (do_bench warmup=25, rep=100, median, grad_to_none); the providers take turns for 7 rounds,
because the host's speed drifts within a run, and each cell is the median over rounds (min-max in brackets).
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from bench import PROVIDERS, header  # noqa: E402

SHAPES = [(64, 6, 256, 64), (12, 12, 1024, 64), (32, 32, 512, 64), (32, 16, 512, 128)]  # B, H, T, D
ROUNDS = 7


@triton.jit
def _copy_one_block(X, Y, BLOCK: tl.constexpr):
    # grid (1,): a launch that does next to nothing, so what is timed is the host's side of it
    i = tl.arange(0, BLOCK)
    tl.store(Y + i, tl.load(X + i))


def _empty_launch(x: torch.Tensor, y: torch.Tensor) -> None:
    _copy_one_block[(1,)](x, y, BLOCK=16)


def _no_launch(x: torch.Tensor, y: torch.Tensor) -> None:
    pass


def skeleton(launch):
    """flash_attn's autograd shape with `launch` in place of each kernel: one in the forward, two in the backward
    (the delta pass and the backward), and the same six allocations."""
    class _Skeleton(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            B, H, T, D = q.shape
            o = torch.empty((B, T, H, D), dtype=q.dtype, device=q.device).transpose(1, 2)
            lse = torch.empty((B, H, T), dtype=torch.float32, device=q.device)
            launch(q, o)
            ctx.save_for_backward(q, k, v, o, lse)
            return o

        @staticmethod
        def backward(ctx, do):
            q, k, v, o, lse = ctx.saved_tensors
            delta = torch.empty_like(lse)
            dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
            launch(do, delta)
            launch(q, dq)
            return dq, dk, dv

    return _Skeleton.apply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="also write the Markdown table to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("host_floor.py needs a CUDA GPU.")
    fns = {"skeleton, no launch": skeleton(_no_launch), "skeleton, 3 empty launches": skeleton(_empty_launch),
           "flash_attn": PROVIDERS["ours"], "cuDNN": PROVIDERS["cuDNN"], "flash (FA2)": PROVIDERS["flash"]}
    lines = [header(), "", "eager fwd+bwd, ms: median over rounds (min-max)", "",
             "| shape | " + " | ".join(fns) + " |", "|---" * (len(fns) + 1) + "|"]
    for B, H, T, D in SHAPES:
        q, k, v = [torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
        do = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)
        times = {name: [] for name in fns}
        for _ in range(ROUNDS):
            for name, fn in fns.items():
                times[name].append(triton.testing.do_bench(lambda: fn(q, k, v).backward(do), warmup=25, rep=100,
                                                           grad_to_none=[q, k, v], return_mode="median"))
        cells = [f"{statistics.median(t):.3f} ({min(t):.3f}-{max(t):.3f})" for t in times.values()]
        lines.append(f"| B={B} H={H} T={T} D={D} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    report = "\n".join(lines)
    print("\n" + report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
