"""
The Hopper backward's last step, dq = scale * acc from its fp32 (B, H, T, D) buffer into dq's dtype and layout:
flash_hopper's cast kernel against torch.mul(acc, scale, out=dq), which it replaced, for dq in the model's
(B, T, H, D) views, as a view of flash_attn_qkvpacked's (B, T, 3, H, D) gradient, and dense (B, H, T, D).

    python tools/dq_cast.py

cast_times() returns the times; main prints them.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402

from flash_kernel import flash_hopper  # noqa: E402
from utils import require_gpu  # noqa: E402

# bench.py's sweep size (B*T = 16384, hidden 2048) at both head dims, and the GPT-2 model's shape
SHAPES = [(4, 32, 4096, 64), (4, 16, 4096, 128), (12, 12, 1024, 64)]


def _dq(layout: str, B: int, H: int, T: int, D: int) -> torch.Tensor:
    if layout == "model views":
        return torch.empty(B, T, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    if layout == "packed":
        return torch.empty(B, T, 3, H, D, device="cuda", dtype=torch.bfloat16)[:, :, 0].transpose(1, 2)
    return torch.empty(B, H, T, D, device="cuda", dtype=torch.bfloat16)


def cast_times(shape: tuple) -> list:
    """(layout, torch.mul us, cast kernel us, outputs equal) per dq layout, do_bench medians."""
    acc = torch.randn(*shape, device="cuda")
    rows = []
    for layout in ("model views", "packed", "dense"):
        dq = _dq(layout, *shape)
        old = triton.testing.do_bench(lambda: torch.mul(acc, 0.125, out=dq), warmup=25, rep=100, return_mode="median")
        new = triton.testing.do_bench(lambda: flash_hopper._dq_cast(acc, dq, 0.125), warmup=25, rep=100,
                                      return_mode="median")
        flash_hopper._dq_cast(acc, dq, 0.125)
        rows.append((layout, old * 1e3, new * 1e3, torch.equal(dq, torch.mul(acc, 0.125).to(dq.dtype))))
    return rows


def main():
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    require_gpu('tools/dq_cast.py')
    if flash_hopper is None:
        raise SystemExit("error: tools/dq_cast.py times flash_hopper.py's cast kernel, which needs a Triton with Gluon")
    print(f"{torch.cuda.get_device_name()} | dq = scale * acc, fp32 -> bf16, do_bench median, us")
    print("| B,H,T,D | dq layout | torch.mul | cast kernel | speedup | equal |\n|---|---|---|---|---|---|")
    for shape in SHAPES:
        for layout, old, new, equal in cast_times(shape):
            print(f"| {','.join(map(str, shape))} | {layout} | {old:.1f} | {new:.1f} | {old / new:.2f}x | {equal} |")


if __name__ == "__main__":
    main()
