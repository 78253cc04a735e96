"""
Sweep the Triton kernels' block shapes, warps and pipeline stages on this GPU; prints the best per shape. A
developer's tool: its output is what the "triton" rows of flash_kernel.TUNED are written from.

    python tools/tune_blocks.py [--dims 64,128] [--out tune.json]

The forward and the backward are tuned separately, each candidate passed to the launchers as their config (which
runs as given: a candidate that does not fit the GPU shows as inf, not as the time of smaller tiles). Every
candidate is compiled first in parallel worker processes (Triton caches the binaries on disk), so the serial
timing pass that follows spends the GPU's time on timing, not on compiling. sweep() returns the results.
"""
import argparse
import itertools
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402

import flash_kernel as fk  # noqa: E402
from utils import require_gpu  # noqa: E402

# (B, H, T) per head dim: the model shapes and points of the B*T=16384, hidden-2048 sweep
SHAPES = {64: [(64, 6, 256), (12, 12, 1024), (32, 32, 512), (4, 32, 4096), (1, 32, 16384)],
          128: [(32, 16, 512), (16, 16, 1024), (8, 16, 2048), (4, 16, 4096), (1, 16, 16384)]}
FWD = [(bm, bn, w, s) for bm, bn, w, s in itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3, 4)) if bm % bn == 0]
# backward: (BLOCK, BLOCK_M1, BLOCK_N2, num_warps, num_stages)
BWD = list(itertools.product((64, 128), (32, 64), (32, 64), (4, 8), (2, 3)))


def _inputs(B, H, T, D):
    q, k, v = [torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    return q, k, v, torch.randn_like(q)


def _run(kind, cfg, D, B, H, T, bench):
    """Time (or, with bench=False, just compile and run once) one candidate; inf when it does not fit."""
    q, k, v, do = _inputs(B, H, T, D)
    scale = D ** -0.5
    try:
        if kind == "fwd":
            fn = lambda: fk._attn_fwd(q, k, v, None, True, scale, 0.0, "triton", cfg)  # noqa: E731
        else:
            o, lse = fk._attn_fwd(q, k, v, None, True, scale, 0.0, "triton")
            fn = lambda: fk._attn_bwd(do, q, k, v, o, lse, None, True, scale, 0.0, "triton", cfg)  # noqa: E731
        if not bench:
            fn()
            torch.cuda.synchronize()
            return 0.0
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    except triton.runtime.errors.OutOfResources:  # too much shared memory or too many registers: not a candidate
        return float("inf")
    except Exception as e:  # a candidate that fails to compile is reported and skipped, the sweep goes on
        print(f"  {kind} {cfg} D={D}: {type(e).__name__}: {str(e)[:200]}", flush=True)
        return float("inf")


def _compile(job):
    kind, cfg, D = job
    return _run(kind, cfg, D, 1, 2, 256, bench=False)


def sweep(dims: list, kinds: list) -> list:
    """Every candidate of each pass ("fwd", "bwd") at SHAPES[D] for D in dims, timed on this GPU: one dict per
    shape and pass with the four fastest (ms, config) and the shipped config with its time."""
    space = {"fwd": FWD, "bwd": BWD}
    jobs = [(kind, cfg, D) for D in dims for kind in kinds for cfg in space[kind]]
    print(f"compiling {len(jobs)} candidates", flush=True)
    ctx = torch.multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(12, os.cpu_count()), mp_context=ctx) as pool:
        list(pool.map(_compile, jobs))

    results = []
    for D in dims:
        for B, H, T in SHAPES[D]:
            for kind in kinds:
                times = sorted((_run(kind, cfg, D, B, H, T, bench=True), cfg) for cfg in space[kind])
                current = fk._choice(kind, torch.bfloat16, D, T)[1]
                now = next((t for t, c in times if c == current), float("nan"))
                results.append(dict(D=D, B=B, H=H, T=T, kind=kind, best=times[:4], current=[current, now]))
                best = ", ".join(f"{c} {t:.3f}" for t, c in times[:4])
                print(f"D={D} B={B} H={H} T={T} {kind}: {best} | current {current} {now:.3f}", flush=True)
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dims", default="64,128")
    parser.add_argument("--kinds", default="fwd,bwd")
    parser.add_argument("--out")
    args = parser.parse_args()
    if not set(args.kinds.split(",")) <= {"fwd", "bwd"}:
        parser.error(f"--kinds takes fwd, bwd or both, got {args.kinds}")
    require_gpu('tools/tune_blocks.py')
    results = sweep([int(d) for d in args.dims.split(",")], args.kinds.split(","))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
