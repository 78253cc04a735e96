"""
Which tiles each NVIDIA GPU generation runs, and the shared memory they take, found by compiling the kernels for
it on any machine (no GPU needed). flash_kernel._launch_fitting steps down from the H100-tuned tiles when Triton
says a kernel does not fit the GPU; this tool replays that step-down with the compiler's own numbers.

    python tools/shared_memory.py [--archs 80,86,90] [--dtypes bf16,fp32] [--head-dims 64,128] [--lengths 1024,16384]

Prints a table: arch, its shared-memory limit per block, dtype, head dim, T, kernel, the tuned config, the config
it runs and the shared memory that one takes; fitted_tiles() returns its rows. fp16 takes what bf16 takes, and
sm_89 (RTX 40xx) what sm_86 does. Each configuration takes a few seconds to compile on a CPU. Run it without
TRITON_INTERPRET: under the interpreter the kernels are not compilable objects.
"""
import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from triton.runtime.errors import OutOfResources  # noqa: E402

import flash_kernel as fk  # noqa: E402
from compile_sm90 import compile_config  # noqa: E402

# Shared memory a block can opt in to (CUDA C++ Programming Guide, compute capabilities table): A100, RTX 30xx,
# RTX 40xx, H100. Triton refuses to launch a kernel that needs more.
LIMITS = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@functools.lru_cache(maxsize=None)
def shared_bytes(kind, config, arch, dtype, D):
    return compile_config(kind, config, D, arch=arch, dtype=dtype).metadata.shared


def fitted(kind, tuned, arch, dtype, D):
    """The config _launch_fitting settles on for this GPU, found with a launch that only compiles."""
    chosen = []

    def launch(*config):
        need = shared_bytes(kind, config, arch, dtype, D)
        if need > LIMITS[arch]:
            raise OutOfResources(need, LIMITS[arch], "shared memory")
        chosen.append(config)

    fk._launch_fitting(launch, tuned, (kind, f"sm_{arch}", dtype, D, False), cache={})
    return chosen[0]


def fitted_tiles(archs: list, dtypes: list, head_dims: list, lengths: list) -> list:
    """One row per arch (compute capability, e.g. 90), dtype name (of DTYPES), head dim, T and kernel: {"arch":
    "sm_90", "limit": its shared memory per block, "dtype", "D", "T", "kind": "fwd" | "bwd", "tuned": the tuned
    config, "runs": the one _launch_fitting runs there, "shared": the bytes that one takes}."""
    rows = []
    for arch in archs:
        for name in dtypes:
            for D in head_dims:
                for T in lengths:
                    for kind in ("fwd", "bwd"):
                        tuned = fk._choice(kind, DTYPES[name], D, T)[1]
                        runs = fitted(kind, tuned, arch, name, D)
                        rows.append(dict(arch=f"sm_{arch}", limit=LIMITS[arch], dtype=name, D=D, T=T, kind=kind,
                                         tuned=tuned, runs=runs, shared=shared_bytes(kind, runs, arch, name, D)))
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--archs", default="80,86,90", help=f"compute capabilities, of {sorted(LIMITS)}")
    parser.add_argument("--dtypes", default="bf16,fp32", help=f"of {list(DTYPES)}")
    parser.add_argument("--head-dims", default="64,128")
    parser.add_argument("--lengths", default="1024,16384", help="T; the tuned tiles change with it")
    args = parser.parse_args()
    try:
        archs, lengths = [int(a) for a in args.archs.split(",")], [int(t) for t in args.lengths.split(",")]
        head_dims = [int(d) for d in args.head_dims.split(",")]
    except ValueError:
        parser.error("--archs, --head-dims and --lengths take comma-separated whole numbers")
    dtypes = args.dtypes.split(",")
    for name, values, known in (("--archs", archs, sorted(LIMITS)), ("--dtypes", dtypes, list(DTYPES)),
                                ("--head-dims", head_dims, list(fk.SUPPORTED_HEAD_DIMS))):
        if not set(values) <= set(known):
            parser.error(f"{name} takes values of {known}, got {values}")
    if min(lengths) < 1:
        parser.error(f"--lengths must be >= 1, got {lengths}")
    print("| arch | limit | dtype | head dim | T | kernel | tuned | runs | shared bytes |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = fitted_tiles(archs, dtypes, head_dims, lengths)
    for r in rows:
        print(f"| {r['arch']} | {r['limit']} | {r['dtype']} | {r['D']} | {r['T']} | {r['kind']} | {r['tuned']} | "
              f"{r['runs']} | {r['shared']} |")


if __name__ == "__main__":
    main()
