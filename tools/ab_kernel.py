"""
A/B of the kernels: this tree's flash_kernel.py and flash_hopper.py against the same two files at another git
revision (or in another folder), in one process on one GPU, so that a change's effect is measured against its own
baseline in the same run. A developer's tool; the A/B numbers in docs/design.md come from it.

    python tools/ab_kernel.py REV [--sweep]        # e.g. HEAD~1
    python tools/ab_kernel.py FOLDER [--sweep]     # a folder with the old flash_kernel.py (and flash_hopper.py)

Times the launchers (_attn_fwd, _attn_bwd) with do_bench, median ms, bf16 causal, dropout off and at 0.2; with
--sweep, dropout off over bench.py's sweep (B*T = 16384, hidden 2048, T = 512 ... 16384) instead. load_old()
imports the old files, compare() returns the times; main prints them.
"""
import argparse
import atexit
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import triton  # noqa: E402

import flash_kernel as new  # noqa: E402
from utils import require_gpu  # noqa: E402

SHAPES = [(64, 6, 256, 64), (12, 12, 1024, 64), (4, 32, 4096, 64), (1, 32, 16384, 64), (4, 16, 4096, 128), (1, 16, 16384, 128)]
SWEEP = [(16384 // T, 2048 // D, T, D) for D in (64, 128) for T in (512, 1024, 2048, 4096, 8192, 16384)]


def _old_file(source: str, name: str) -> Optional[str]:
    # The text of `name` in folder `source`, or at git revision `source`; None where it has no such file
    if os.path.isdir(source):
        path = os.path.join(source, name)
        return open(path).read() if os.path.isfile(path) else None
    run = subprocess.run(["git", "-C", ROOT, "show", f"{source}:{name}"], capture_output=True, text=True)
    return run.stdout if run.returncode == 0 else None


def load_old(source: str):
    """flash_kernel.py (with the flash_hopper.py it imports) from a folder or as of a git revision, imported as a
    module of its own: its torch ops under another namespace, its Hopper kernels from its own flash_hopper. The
    files go to a temporary folder (triton.jit reads a kernel's source from its module's file), removed at exit."""
    kernel = _old_file(source, "flash_kernel.py")
    if kernel is None:
        raise SystemExit(f"error: no flash_kernel.py in {source!r} (a folder or a git revision of this repo)")
    folder = tempfile.mkdtemp(prefix="ab_kernel_")
    atexit.register(shutil.rmtree, folder, True)
    kernel = kernel.replace('"flashgpt"', '"flashgpt_ab_old"').replace("flashgpt::", "flashgpt_ab_old::")
    hopper = _old_file(source, "flash_hopper.py")  # None before the Hopper kernels
    if hopper is not None:
        kernel = kernel.replace("import flash_hopper\n", "import flash_hopper_ab_old as flash_hopper\n")
        with open(os.path.join(folder, "flash_hopper_ab_old.py"), "w") as f:
            f.write(hopper)
    with open(os.path.join(folder, "flash_kernel_ab_old.py"), "w") as f:
        f.write(kernel)
    sys.path.insert(0, folder)
    try:
        return importlib.import_module("flash_kernel_ab_old")
    finally:
        sys.path.remove(folder)


def time_ms(fk, B, H, T, D, p) -> tuple:
    """(forward ms, backward ms) of module fk's launchers."""
    q, k, v, do = [torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    seed = torch.randint(0, 2**62, (1,), dtype=torch.int64, device="cuda") if p > 0 else None
    s = D ** -0.5
    o, lse = fk._attn_fwd(q, k, v, seed, True, s, p)
    fwd = triton.testing.do_bench(lambda: fk._attn_fwd(q, k, v, seed, True, s, p), warmup=25, rep=100,
                                  return_mode="median")
    bwd = triton.testing.do_bench(lambda: fk._attn_bwd(do, q, k, v, o, lse, seed, True, s, p), warmup=25, rep=100,
                                  return_mode="median")
    return fwd, bwd


def compare(old, shapes: list, dropouts: tuple) -> list:
    """Old against this tree's kernels at each (B, H, T, D) and dropout_p: one dict of ms per point."""
    rows = []
    for B, H, T, D in shapes:
        for p in dropouts:
            fo, bo = time_ms(old, B, H, T, D, p)
            fn, bn = time_ms(new, B, H, T, D, p)
            rows.append(dict(B=B, H=H, T=T, D=D, p=p, fwd_old=fo, fwd_new=fn, bwd_old=bo, bwd_new=bn))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", help="a git revision (e.g. HEAD~1) or a folder with the old flash_kernel.py")
    parser.add_argument("--sweep", action="store_true", help="bench.py's sweep, dropout off")
    args = parser.parse_args()
    require_gpu('tools/ab_kernel.py')
    old = load_old(args.old)
    print(f"{torch.cuda.get_device_name()} | triton {triton.__version__} | bf16 causal | median ms, {args.old} -> "
          "this tree (new/old speed)")
    print("| B,H,T,D | dropout | fwd old | fwd new | fwd speedup | bwd old | bwd new | bwd speedup |")
    print("|---|---|---|---|---|---|---|---|")
    for shape in SWEEP if args.sweep else SHAPES:
        for r in compare(old, [shape], (0.0,) if args.sweep else (0.0, 0.2)):
            print(f"| {r['B']},{r['H']},{r['T']},{r['D']} | {r['p']} | {r['fwd_old']:.3f} | {r['fwd_new']:.3f} | "
                  f"{r['fwd_old'] / r['fwd_new']:.2f}x | {r['bwd_old']:.3f} | {r['bwd_new']:.3f} | "
                  f"{r['bwd_old'] / r['bwd_new']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
