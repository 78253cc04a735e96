"""
Causal attention on one GPU: our kernels against FlashAttention-4 (when it is installed), PyTorch SDPA's flash,
cuDNN and memory-efficient backends and a naive implementation, forward and forward+backward, in one run.

    python bench.py                      # the full table (FlashAttention-2 sweep at D=64 and 128, model shapes)
    python bench.py --quick              # model shapes and T=1024, 4096 only
    python bench.py --layout bhtd        # contiguous (B, H, T, D) inputs instead of the model's layout
    python bench.py --out bench.md       # also write the tables to a Markdown file

FlashAttention-4 is the CuTe-DSL package `flash_attn.cute` (`pip install flash-attn-4`); where it does not import,
the run says so under its header and goes on without that column.

Protocol: bf16; q, k, v (and dout) from torch.randn in the model's layout, (B, T, H, D) tensors viewed as
(B, H, T, D) with .transpose(1, 2): the memory order of the model's attention and FlashAttention's own (--layout
bhtd: contiguous (B, H, T, D) tensors instead); triton.testing.do_bench(warmup=25, rep=100,
return_mode="median"); fwd+bwd = forward then out.backward(dout) with a fixed random dout; FLOPs forward =
2*B*H*T*T*D (the causal half of 4*B*H*T*T*D), fwd+bwd = 3.5x forward. Sweep: B*T = 16384 tokens, hidden 2048
(H = 2048 / D). Before timing a shape every provider's output and gradients are checked against the fp32
reference on one (batch, head), so nothing wrong gets timed. FA4 is imported and timed after every other provider
at every shape: with flash_attn.cute imported, the others' eager calls cost the host more (BENCHMARKS.md).
measure_everything() and measure() return the data; main prints.
"""
import argparse
import importlib.metadata
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

from flash_kernel import attention_ref, flash_attn
from utils import ArgumentParser, check_writable, git_commit, require_gpu

SWEEP_T = [512, 1024, 2048, 4096, 8192, 16384]
MODEL_SHAPES = [("char model", 64, 6, 256, 64), ("GPT-2 124M", 12, 12, 1024, 64)]  # name, B, H, T, D
# Error against the fp32 reference (rel. L2, one head) above which a provider is reported wrong and not timed.
# bf16 rounding alone gives ~3e-3 on these inputs (see tests/test_flash_kernel.py); 2e-2 flags real bugs only.
CHECK_TOL = 2e-2


def _sdpa(backend):
    def fn(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return fn


def naive(q, k, v):
    T = q.shape[-2]
    att = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, T, T)
    att = att.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(att.float(), dim=-1).to(q.dtype) @ v


PROVIDERS = {
    "ours": flash_attn,
    "flash": _sdpa(SDPBackend.FLASH_ATTENTION),
    "cuDNN": _sdpa(SDPBackend.CUDNN_ATTENTION),
    "mem-eff": _sdpa(SDPBackend.EFFICIENT_ATTENTION),
    "naive": naive,
}
LAYOUTS = {"bthd": "(B, T, H, D) tensors viewed as (B, H, T, D) with .transpose(1, 2), the model's layout",
           "bhtd": "contiguous (B, H, T, D) tensors"}


def fa4_provider() -> tuple[Optional[Callable], str]:
    """FlashAttention-4's causal attention on (B, H, T, D) tensors, as the other providers take them, and a line
    for the header; (None, why) where flash_attn.cute does not import."""
    try:
        from flash_attn.cute import flash_attn_func
    except Exception as e:  # not installed, or installed without what its kernels need
        return None, (f"FA4: skipped, flash_attn.cute does not import ({type(e).__name__}: {str(e)[:100]}); "
                      "pip install flash-attn-4 to compare with it")

    def fa4(q, k, v):
        # FlashAttention takes (B, T, H, D): the transposes are views, free for the model's layout
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
        o = out[0] if isinstance(out, tuple) else out  # (out, lse) in the versions that return both
        return o.transpose(1, 2)

    try:
        version = importlib.metadata.version("flash-attn-4")
    except importlib.metadata.PackageNotFoundError:
        version = "version unknown"
    return fa4, f"FA4: flash_attn.cute.flash_attn_func (flash-attn-4 {version})"


@dataclass
class Result:
    fwd_ms: float = float("nan")
    fwdbwd_ms: float = float("nan")
    peak_mib: float = float("nan")
    graph_ms: float = float("nan")  # fwd+bwd replayed from a CUDA graph (model shapes only)
    status: str = "ok"  # ok | OOM | wrong (err) | unsupported


def check(fn, q, k, v, do) -> float:
    """Largest rel. L2 error of o, dq, dk, dv on head (0, 0) against the fp32 reference."""
    qs, ks, vs = [t.detach().requires_grad_() for t in (q, k, v)]
    o = fn(qs, ks, vs)
    o.backward(do)
    got = [o[0, 0], qs.grad[0, 0], ks.grad[0, 0], vs.grad[0, 0]]
    qr, kr, vr = [t[0, 0].detach().float().requires_grad_() for t in (q, k, v)]
    ref = attention_ref(qr, kr, vr)
    ref.backward(do[0, 0].float())
    want = [ref, qr.grad, kr.grad, vr.grad]
    return max(((g.float() - w).norm() / w.norm()).item() for g, w in zip(got, want))


def graph_ms(fn, q, k, v, do) -> float:
    """fwd+bwd captured once in a CUDA graph and replayed: the GPU's time with the host's launch cost removed,
    which is what a CUDA-graphed training step (train.py's default on one GPU) pays."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graph requires
        for _ in range(3):
            q.grad = k.grad = v.grad = None
            fn(q, k, v).backward(do)
    torch.cuda.current_stream().wait_stream(side)
    q.grad = k.grad = v.grad = None
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn(q, k, v).backward(do)
    return triton.testing.do_bench(g.replay, warmup=25, rep=100, return_mode="median")


def inputs(B, H, T, D, layout="bthd", device="cuda") -> list:
    """q, k, v (requiring grad) and dout, (B, H, T, D) in the given LAYOUTS entry, bf16."""
    if layout == "bthd":
        made = [torch.randn(B, T, H, D, device=device, dtype=torch.bfloat16).transpose(1, 2) for _ in range(4)]
    else:
        made = [torch.randn(B, H, T, D, device=device, dtype=torch.bfloat16) for _ in range(4)]
    return [t.requires_grad_() for t in made[:3]] + made[3:]


def measure(fn, B, H, T, D, graph=False, layout="bthd") -> Result:
    q, k, v, do = inputs(B, H, T, D, layout)
    res = Result()
    try:
        err = check(fn, q, k, v, do)
        if not err < CHECK_TOL:
            return Result(status=f"wrong ({err:.1e})")
        for t in (q, k, v):
            t.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(q, k, v).backward(do)
        torch.cuda.synchronize()
        res.peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
        with torch.no_grad():
            res.fwd_ms = triton.testing.do_bench(lambda: fn(q, k, v), warmup=25, rep=100, return_mode="median")
        # grad_to_none: the backward then writes fresh gradients each time instead of accumulating into old ones
        res.fwdbwd_ms = triton.testing.do_bench(
            lambda: fn(q, k, v).backward(do), warmup=25, rep=100, grad_to_none=[q, k, v], return_mode="median"
        )
        if graph:
            res.graph_ms = graph_ms(fn, q, k, v, do)
    except torch.cuda.OutOfMemoryError:
        res = Result(status="OOM")
    except RuntimeError as e:  # e.g. a backend that refuses this head dim or GPU
        if "No available kernel" not in str(e) and "not supported" not in str(e).lower():
            raise
        res = Result(status="unsupported")
    except (AssertionError, NotImplementedError):  # how FA4 refuses a GPU or shape it has no kernel for
        res = Result(status="unsupported")
    except Exception as e:  # a provider whose fwd+bwd cannot be captured in a CUDA graph keeps its other numbers
        if not graph:
            raise
        print(f"  CUDA graph capture failed: {type(e).__name__}: {str(e)[:120]}")
    del q, k, v, do
    torch.cuda.empty_cache()
    return res


def shapes(quick: bool = False) -> list:
    """(label, B, H, T, D, whether to replay it from a CUDA graph too): the model shapes, then the sweep."""
    sweep_t = [1024, 4096] if quick else SWEEP_T
    found = [(f"{name} B={B} H={H} T={T} D={D}", B, H, T, D, True) for name, B, H, T, D in MODEL_SHAPES]
    for D in (64, 128):
        found += [(f"D={D} T={T} (B={16384 // T} H={2048 // D})", 16384 // T, 2048 // D, T, D, False)
                  for T in sweep_t]
    return found


def measure_all(fns: dict, B, H, T, D, graph=False, layout="bthd") -> dict:
    """{provider: Result} at one shape, for every provider in fns."""
    return {p: measure(fn, B, H, T, D, graph=graph, layout=layout) for p, fn in fns.items()}


def measure_shapes(fns: dict, todo: list, layout: str) -> list:
    """(label, B, H, T, D, {provider: Result}) at every shape in todo (as shapes() gives them), printed as they
    come."""
    rows = []
    for label, B, H, T, D, graph in todo:
        results = measure_all(fns, B, H, T, D, graph=graph, layout=layout)
        rows.append((label, B, H, T, D, results))
        print(f"{label}: " + ", ".join(f"{p} {r.fwdbwd_ms:.3f} ms" if r.status == "ok" else f"{p} {r.status}"
                                       for p, r in results.items()), flush=True)
    return rows


def measure_everything(todo: list, layout: str) -> tuple[list, list]:
    """Rows as measure_shapes gives them, every provider's, FA4's second (after ours) where it imports, and the
    notes on what ran. FA4 is imported only after the others have run at every shape: with flash_attn.cute
    imported, their eager calls cost the host more (ours about 4x at the model shapes)."""
    rows = measure_shapes(PROVIDERS, todo, layout)
    fa4, note = fa4_provider()
    print(f"- {note}", flush=True)
    if fa4 is not None:
        fa4_rows = measure_shapes({"FA4": fa4}, todo, layout)
        rows = [(*shape, {"ours": res["ours"], "FA4": fa4_res["FA4"], **res})
                for (*shape, res), (*_, fa4_res) in zip(rows, fa4_rows)]
    return rows, [note]


def tflops(ms, B, H, T, D, mult):
    return mult * 2 * B * H * T * T * D / (ms * 1e-3) / 1e12


def fmt(x, spec=".0f"):
    return "–" if x != x else format(x, spec)  # NaN (not measured) shows as a dash


def table(title, rows, mode):
    """rows: list of (label, B, H, T, D, {provider: Result}), every row with the same providers, "ours" among them;
    mode 'fwd' or 'fwdbwd'."""
    mult = 1.0 if mode == "fwd" else 3.5
    names = list(rows[0][-1])
    others = [p for p in names if p != "ours"]
    lines = [f"### {title}", ""]
    lines.append("| shape | ours ms | " + " | ".join(f"{p} TFLOP/s" for p in names) + " | "
                 + " | ".join(f"ours/{p}" for p in others) + " |")
    lines.append("|---" * (2 + len(names) + len(others)) + "|")
    for label, B, H, T, D, results in rows:
        ours = getattr(results["ours"], f"{mode}_ms")
        cells = [label, fmt(ours, ".3f")]
        for p in names:
            r = results[p]
            ms = getattr(r, f"{mode}_ms")
            cells.append(fmt(tflops(ms, B, H, T, D, mult)) if r.status == "ok" else r.status)
        for p in others:
            ms = getattr(results[p], f"{mode}_ms")
            cells.append(fmt(ms / ours, ".2f") + "x" if ms == ms and ours == ours else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(rows):
    names = list(rows[0][-1])
    lines = ["### Peak memory of one fwd+bwd above the inputs, MiB", ""]
    lines.append("| shape | " + " | ".join(names) + " |")
    lines.append("|---" * (1 + len(names)) + "|")
    for label, B, H, T, D, results in rows:
        cells = [fmt(r.peak_mib) if r.status == "ok" else r.status for r in results.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def graph_table(rows):
    names = list(rows[0][-1])
    lines = ["### Model shapes, fwd+bwd replayed from a CUDA graph (no host launch cost), ms", ""]
    lines.append("| shape | " + " | ".join(names) + " | " + " | ".join(f"ours/{p}" for p in names if p != "ours") + " |")
    lines.append("|---" * (2 * len(names)) + "|")
    for label, B, H, T, D, results in rows:
        if not label.startswith(tuple(name for name, *_ in MODEL_SHAPES)):
            continue
        ours = results["ours"].graph_ms
        cells = [fmt(r.graph_ms, ".3f") for r in results.values()]
        cells += [fmt(r.graph_ms / ours, ".2f") + "x" if r.graph_ms == r.graph_ms else "–"
                  for p, r in results.items() if p != "ours"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def header() -> str:
    return (f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
            f"bf16 causal | commit {git_commit()}")


def protocol(layout: str, notes: list) -> str:
    """What the inputs were and which providers ran, as a Markdown list for under the header."""
    return "\n".join(f"- {line}" for line in [f"q, k, v, dout: {LAYOUTS[layout]}"] + notes)


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="model shapes and T=1024, 4096 only")
    parser.add_argument("--layout", choices=list(LAYOUTS), default="bthd",
                        help="bthd: the model's (B, T, H, D) views (default); bhtd: contiguous (B, H, T, D)")
    parser.add_argument("--out", help="also write the Markdown tables to this file")
    args = parser.parse_args()
    require_gpu('bench.py')
    if args.out:
        check_writable(args.out)

    print(protocol(args.layout, []), flush=True)
    rows, notes = measure_everything(shapes(args.quick), args.layout)
    report = "\n\n".join([
        header(),
        protocol(args.layout, notes),
        table("Forward, TFLOP/s (ratios: their ms / our ms, >1 means we are faster)", rows, "fwd"),
        table("Forward + backward, TFLOP/s (ratios: their ms / our ms)", rows, "fwdbwd"),
        graph_table(rows),
        memory_table(rows),
    ])
    print("\n" + report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
