"""
One forward and one forward+backward of each attention at one shape per head dim, for Nsight Compute to profile
side by side: ours, cuDNN's and, where `flash_attn.cute` imports, FlashAttention-4's (bench.py's providers, in its
layouts). On a GPU:

    ncu --clock-control none --profile-from-start off --section SpeedOfLight --section ComputeWorkloadAnalysis \
        --section WarpStateStats --section InstructionStats -o attn python tools/ncu_attention.py
    ncu -i attn.ncu-rep --page raw --csv > attn.csv
    python tools/ncu_table.py attn.csv

Each call runs once unprofiled first (compilation, first-launch work), then once more between cudaProfilerStart and
cudaProfilerStop, so with --profile-from-start off ncu profiles exactly one launch of every kernel of every pass,
in the order this script prints them; tools/ncu_table.py lists them in that order. Compare the kernels'
smsp__average_warps_issue_stalled_*_per_issue_active.ratio (cycles a warp waits per instruction issued, by reason)
and the tensor pipe and MUFU (XU) columns (docs/design.md, "Hopper backward: LSE and delta through shared memory").
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import bench  # noqa: E402
from utils import ArgumentParser, require_gpu  # noqa: E402

DEFAULT_PROVIDERS = "ours,cuDNN,FA4"


def head_dims(text: str) -> list:
    try:
        return [int(d) for d in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"give comma-separated integers such as 64,128, not {text!r}") from None


def passes(fn, q, k, v, do):
    """The forward alone, then forward+backward, as bench.py times them."""
    with torch.no_grad():
        fn(q, k, v)
    for t in (q, k, v):
        t.grad = None
    fn(q, k, v).backward(do)


def main():
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=int, default=4096, help="sequence length; B = 16384 / T, H = 2048 / D")
    parser.add_argument("--head-dims", type=head_dims, default=[64, 128], help="comma-separated head dims")
    parser.add_argument("--providers", default=DEFAULT_PROVIDERS,
                        help=f"comma-separated names from bench.py (default {DEFAULT_PROVIDERS}; FA4 is left out "
                             "with a note where it does not import)")
    parser.add_argument("--layout", choices=sorted(bench.LAYOUTS), default="bthd", help="bench.py's --layout")
    args = parser.parse_args()
    require_gpu("tools/ncu_attention.py")
    wanted = [name for name in args.providers.split(",") if name]
    unknown = [name for name in wanted if name not in bench.PROVIDERS and name != "FA4"]
    if unknown:
        parser.error(f"unknown provider(s) {', '.join(unknown)}: choose from {', '.join(bench.PROVIDERS)} or FA4")
    found = dict(bench.PROVIDERS)
    if "FA4" in wanted:  # imported only when asked for (bench.py says what the import costs the others)
        fa4, note = bench.fa4_provider()
        if fa4 is None:
            print(note)
        else:
            found["FA4"] = fa4
    fns = {name: found[name] for name in wanted if name in found}
    for D in args.head_dims:
        B, H, T = 16384 // args.T, 2048 // D, args.T  # the sweep's shapes: 16384 tokens, hidden 2048
        q, k, v, do = bench.inputs(B, H, T, D, args.layout)
        for fn in fns.values():
            passes(fn, q, k, v, do)  # unprofiled: compilation and first launches
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        for name, fn in fns.items():
            print(f"D={D} T={T} B={B} H={H} {args.layout}: {name} forward, then {name} forward+backward")
            passes(fn, q, k, v, do)
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
