"""
A/B of the kernels: this tree's flash_kernel.py against another version of it, in one process on one GPU, so
that a change's effect is measured against its own baseline in the same run. A developer's tool; the numbers in
BENCHMARKS.md's notes come from it.

    git show <rev>:flash_kernel.py > /tmp/old_flash_kernel.py
    python tools/ab_kernel.py /tmp/old_flash_kernel.py [--sweep]

Times the launchers (_attn_fwd, _attn_bwd) with do_bench, median ms, bf16 causal, dropout off and at 0.2; with
--sweep, dropout off over bench.py's sweep (B*T = 16384, hidden 2048, T = 512 ... 16384) instead.
"""
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402

import flash_kernel as new  # noqa: E402

SHAPES = [(64, 6, 256, 64), (12, 12, 1024, 64), (4, 32, 4096, 64), (1, 32, 16384, 64), (4, 16, 4096, 128), (1, 16, 16384, 128)]
SWEEP = [(16384 // T, 2048 // D, T, D) for D in (64, 128) for T in (512, 1024, 2048, 4096, 8192, 16384)]


def load_old(path):
    # the old file registers the same torch.library namespace; give its copy another one
    src = open(path).read().replace('"flashgpt"', '"flashgpt_ab_old"').replace("flashgpt::", "flashgpt_ab_old::")
    # triton.jit reads a kernel's source from its module's file, so the copy is written out, not exec'd
    tmp = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ab_old_flash_kernel.py")
    with open(tmp, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("flash_kernel_old", tmp)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def time_ms(fk, B, H, T, D, p):
    q, k, v, do = [torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    seed = torch.randint(0, 2**62, (1,), dtype=torch.int64, device="cuda") if p > 0 else None
    s = D ** -0.5
    o, lse = fk._attn_fwd(q, k, v, seed, True, s, p)
    fwd = triton.testing.do_bench(lambda: fk._attn_fwd(q, k, v, seed, True, s, p), warmup=25, rep=100, return_mode="median")
    bwd = triton.testing.do_bench(lambda: fk._attn_bwd(do, q, k, v, o, lse, seed, True, s, p), warmup=25, rep=100, return_mode="median")
    return fwd, bwd


old = load_old(sys.argv[1])
sweep = "--sweep" in sys.argv[2:]
print(f"{torch.cuda.get_device_name()} | triton {triton.__version__} | bf16 causal | median ms, old -> new (new/old speed)")
print("| B,H,T,D | dropout | fwd old | fwd new | fwd speedup | bwd old | bwd new | bwd speedup |")
print("|---|---|---|---|---|---|---|---|")
for B, H, T, D in SWEEP if sweep else SHAPES:
    for p in (0.0,) if sweep else (0.0, 0.2):
        fo, bo = time_ms(old, B, H, T, D, p)
        fn, bn = time_ms(new, B, H, T, D, p)
        print(f"| {B},{H},{T},{D} | {p} | {fo:.3f} | {fn:.3f} | {fo / fn:.2f}x | {bo:.3f} | {bn:.3f} | {bo / bn:.2f}x |", flush=True)
