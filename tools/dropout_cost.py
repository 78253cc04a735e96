"""
What attention dropout costs at the char model's shape (B=64, H=6, T=256, D=64, bf16): fwd+bwd replayed from a
CUDA graph, as in a CUDA-graphed training step, with dropout_p 0 and 0.2, ours against SDPA's own choice.

    python tools/dropout_cost.py

dropout_cost() returns the times; main prints them.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench import graph_ms  # noqa: E402
from flash_kernel import flash_attn  # noqa: E402
from utils import require_gpu  # noqa: E402

B, H, T, D = 64, 6, 256, 64


def dropout_cost(ps: tuple = (0.0, 0.2)) -> list:
    """(dropout_p, ours ms, SDPA ms) per p: fwd+bwd from a CUDA graph."""
    q, k, v = [torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3)]
    do = torch.randn_like(q)
    rows = []
    for p in ps:
        ours = graph_ms(lambda q, k, v: flash_attn(q, k, v, dropout_p=p), q, k, v, do)
        sdpa = graph_ms(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True), q, k, v,
                        do)
        rows.append((p, ours, sdpa))
    return rows


def main():
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    require_gpu('tools/dropout_cost.py')
    print(f"{torch.cuda.get_device_name()} | fwd+bwd from a CUDA graph, ms, B={B} H={H} T={T} D={D} bf16 causal")
    for p, ours, sdpa in dropout_cost():
        print(f"dropout_p={p}: ours {ours:.3f}  sdpa {sdpa:.3f}  ours/sdpa speed {sdpa / ours:.2f}x")


if __name__ == "__main__":
    main()
