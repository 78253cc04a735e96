"""
The Hopper forward's work order at head dim 64: the head sections (how many heads' items run heaviest first before
the next heads start, flash_hopper._tile_coords) and the grid (one program per SM taking items from a counter, or one
program per item), the shipped choice against others, at the GPT-2 model's shape and bench.py's sweep from T=1024.

    python tools/fwd_sections.py [--rounds 3]

Each variant is flash_hopper._attn_fwd with its `programs` or `heads_per_section` argument set; every variant's output
must equal the shipped one's bit for bit (the order of the items changes, not what a program computes). The variants
take turns within each round, each timed by do_bench (median), so all see the GPU's clocks drift alike. Sections are
named by the share of L2 that their heads' K and V fill; L2/4 is the shipped choice again, so its row is a control:
the spread between two timings of the same order. section_times() returns the times; main prints them with each
variant's speed against the shipped choice (shipped ms / variant ms, above 1 means the variant is faster).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402

from flash_kernel import LOG2E, flash_hopper  # noqa: E402
from utils import require_gpu  # noqa: E402

SHAPES = [(12, 12, 1024), (16, 32, 1024), (8, 32, 2048), (4, 32, 4096), (2, 32, 8192), (1, 32, 16384)]  # B, H, T
D = 64
L2_SHARES = (1, 2, 4, 6, 8, 12, 16, 32)  # sections whose heads' K and V fill L2 / share


def variants(q: torch.Tensor) -> dict:
    """name -> _attn_fwd keyword arguments; "shipped" (no arguments) first."""
    B, H, T, _ = q.shape
    sm = flash_hopper._num_sms(q.device)
    items = triton.cdiv(T, flash_hopper._fwd_groups(D, T) * flash_hopper.ROWS.value) * B * H
    head_bytes = 2 * T * D * q.element_size()  # one head's K and V
    l2 = flash_hopper._properties(q.device).L2_cache_size
    found = {"shipped": {}, "a program per item": dict(programs=items),
             "a program per SM": dict(programs=min(items, sm)), "one section": dict(heads_per_section=B * H)}
    for share in L2_SHARES:
        heads = max(1, l2 // share // head_bytes)
        found[f"sections of L2/{share} ({heads} head{'s' if heads > 1 else ''})"] = dict(heads_per_section=heads)
    # FlashAttention-4's causal scheduler: the largest power of 2 of heads whose K and V fit 50 MiB, one block per item
    heads = 1 << max(0, (50 * 2**20 // head_bytes).bit_length() - 1)
    found[f"FA4's order ({heads} heads, a program per item)"] = dict(programs=items, heads_per_section=heads)
    return found


def section_times(B: int, H: int, T: int, rounds: int) -> dict:
    """name -> [ms per round] for each variant at one shape, bf16, causal, in the model's (B, T, H, D) views."""
    q, k, v = [torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16).transpose(1, 2) for _ in range(3)]
    o = torch.empty_like(q)
    lse = torch.empty((B, H, T), device="cuda")
    scale = D ** -0.5 * LOG2E
    found = variants(q)
    flash_hopper._attn_fwd(q, k, v, o, lse, scale)
    reference = o.clone()
    times = {name: [] for name in found}
    for _ in range(rounds):
        for name, kwargs in found.items():
            o.fill_(float("nan"))
            flash_hopper._attn_fwd(q, k, v, o, lse, scale, **kwargs)
            if not torch.equal(o, reference):
                raise SystemExit(f"error: {name} at B={B} H={H} T={T} does not give the shipped output")
            times[name].append(triton.testing.do_bench(lambda: flash_hopper._attn_fwd(q, k, v, o, lse, scale,
                                                                                      **kwargs),
                                                       warmup=25, rep=100, return_mode="median"))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="timings of each variant at each shape")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    require_gpu('tools/fwd_sections.py')
    if flash_hopper is None or torch.cuda.get_device_capability()[0] != 9:
        raise SystemExit("error: tools/fwd_sections.py times flash_hopper.py's forward, which needs a Hopper GPU "
                         "and a Triton with Gluon")
    print(f"{torch.cuda.get_device_name()} | triton {triton.__version__} | Hopper forward, bf16 causal, D={D}, "
          f"(B, T, H, D) views | do_bench median ms per round; shipped ms / variant ms")
    print("| B,H,T | variant | ms | speed against shipped |\n|---|---|---|---|")
    for B, H, T in SHAPES:
        times = section_times(B, H, T, args.rounds)
        for name, ms in times.items():
            ratios = " ".join(f"{s / m:.3f}" for s, m in zip(times["shipped"], ms))
            print(f"| {B},{H},{T} | {name} | {' '.join(f'{m:.3f}' for m in ms)} | {ratios} |", flush=True)


if __name__ == "__main__":
    main()
