"""
One forward and one backward of ours and of cuDNN's, at one shape per head dim, for Nsight Compute to profile
(docs/design.md, "Hopper backward: LSE and delta through shared memory"). On a GPU:

    ncu --clock-control none --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats \
        --section InstructionStats -k 'regex:hopper|sdpa|fmha|prop' -o attn python tools/ncu_attention.py
    ncu -i attn.ncu-rep --page raw --csv > attn.csv

then compare the kernels' smsp__average_warps_issue_stalled_*_per_issue_active.ratio (cycles a warp waits per
instruction issued, by reason) and sm__pipe_tensor_cycles_active / sm__inst_executed_pipe_xu (tensor cores, MUFU).
"""
import argparse
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

import flash_kernel as fk  # noqa: E402
from utils import require_gpu  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--T", type=int, default=4096)
    args = parser.parse_args()
    require_gpu('tools/ncu_attention.py')
    for D in (64, 128):
        B, H, T = 16384 // args.T, 2048 // D, args.T  # the sweep's shapes: 16384 tokens, hidden 2048
        q, k, v, do = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        scale = 1 / math.sqrt(D)
        o, lse = fk._attn_fwd(q, k, v, None, True, scale, 0.0)
        fk._attn_bwd(do, q, k, v, o, lse, None, True, scale, 0.0)
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            F.scaled_dot_product_attention(qq, kk, vv, is_causal=True).backward(do)
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
