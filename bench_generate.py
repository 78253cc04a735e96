"""
Generation speed on one GPU, in one run: the model's tokens/s with and without the KV cache for every attention
implementation, the cached decode step eager and compiled by torch.compile (both replayed as a CUDA graph), the
decode kernel alone against SDPA's backends with the memory bandwidth it reaches, and how many greedy bf16 tokens
the cached path shares with the no-cache path.

    python bench_generate.py                  # everything
    python bench_generate.py --quick          # attn=triton, batch 1, short prompts, three cache sizes, no agreement
    python bench_generate.py --out FILE.md    # also write the tables to a Markdown file
    python bench_generate.py --sweep          # only: the decode kernel's time at each num_splits (re-tuning data)

Generation: random-weight models (a step's time does not depend on the weights) at the char model's shape (6x384,
block_size 256, vocab 65) and GPT-2 124M's (12x768, block_size 1024, vocab 50304), bf16 autocast and sampling with
sample.py's defaults (temperature 0.8, top_k 200), random prompts of 16 and 900 tokens (900 only where it fits in
block_size). Each setting is warmed up with a 3-token generation (torch.compile's and the kernels' compilation,
CUDA-graph capture: its time is the warm-up column), then generate(1 token) and generate(NEW_TOKENS) are timed once
each on the wall clock: tokens/s is batch x NEW_TOKENS / the second time, ms/token is the difference of the two over
NEW_TOKENS - 1 (the decode step, without the prefill). Three paths: the cached step eager (captured as a CUDA
graph), the cached step compiled (torch.compile, then captured), and no cache.

Decode kernel: one query per (batch, head) against caches of 1k to 32k tokens at H=12, D=64 (GPT-2's heads), bf16,
every cache position filled. Ours reads the model's cache layout (B, 2, H, S, D); SDPA gets the same K and V
tensors as (B, H, S, D) views with no mask. Each call is checked against the fp32 reference first, then timed as
GPU time: a CUDA graph of 20+ calls replayed (triton.testing.do_bench, median), cycling through enough copies of
the cache that together exceed the L2 cache, so every call reads K and V from device memory as a decode step of a
real model (whose weights flush L2 between layers) does. GB/s counts the K and V bytes read. Beside it, two copy
bandwidths measured in the same run, bytes read plus written: a 1 GiB device-to-device copy (the ceiling), and a
copy of the K and V bytes themselves timed as the kernels are (what a kernel that only moves that much data
reaches, launch and ramp-up included), and a Triton kernel that only reads them (the floor for any kernel that
must read the cache once: a decode kernel does that and the attention besides).
"""
import argparse
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.nn.attention import SDPBackend, sdpa_kernel

import flash_decode
from flash_decode import attention_with_kvcache_ref, flash_attn_with_kvcache
from model import ATTN_IMPLS, GPT, GPTConfig
from utils import ArgumentParser, check_writable, git_commit, require_gpu

MODEL_SHAPES = {
    "char 6x384": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65),
    "GPT-2 12x768": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304),
}
PROMPTS = (16, 900)
BATCHES = (1, 8)
NEW_TOKENS = 120  # 900 + 120 fits in GPT-2's 1024 positions: no re-prefill inside a timed run
TEMPERATURE, TOP_K = 0.8, 200  # sample.py's defaults
CACHE_SIZES = (1024, 2048, 4096, 8192, 16384, 32768)
KERNEL_BATCHES = (1, 8)
H, D = 12, 64
SDPA_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                 "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
# Error against the fp32 reference (rel. L2) above which a provider is reported wrong and not timed: bf16 rounding
# gives ~3e-3 here (tests/test_decode.py); 2e-2 flags real bugs only.
CHECK_TOL = 2e-2
L2_FLUSH_BYTES = 256 * 2**20  # > 4x the H200's 60 MB L2: the cache copies one timed graph cycles through


# ----------------------------------------------------------------------------------------------------------------
# Generation


@dataclass
class GenResult:
    model: str
    attn: str
    kv_cache: bool
    compile: bool  # the cached decode step compiled by torch.compile
    batch: int
    prompt: int
    warmup_s: float  # generate(3 tokens) first: compilation and capture
    first_s: float  # generate(1 token): prefill and one sample
    total_s: float  # generate(NEW_TOKENS)
    new_tokens: int = NEW_TOKENS

    @property
    def tokens_per_s(self) -> float:
        return self.batch * self.new_tokens / self.total_s

    @property
    def ms_per_token(self) -> float:
        return (self.total_s - self.first_s) / (self.new_tokens - 1) * 1e3


def build_model(shape: str, attn: str) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**MODEL_SHAPES[shape], attn=attn, dropout=0.0)).cuda().eval()


def _timed_generate(model: GPT, idx: torch.Tensor, n: int, kv_cache: bool, compile: bool) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model.generate(idx, n, temperature=TEMPERATURE, top_k=TOP_K, kv_cache=kv_cache, compile=compile)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def generation_speed(model: GPT, shape: str, batch: int, prompt: int, kv_cache: bool, compile: bool,
                     new_tokens: int = NEW_TOKENS) -> GenResult:
    idx = torch.randint(0, model.config.vocab_size, (batch, prompt), device="cuda")
    warmup = _timed_generate(model, idx, 3, kv_cache, compile)  # compile, plan, capture
    first = _timed_generate(model, idx, 1, kv_cache, compile)
    total = _timed_generate(model, idx, new_tokens, kv_cache, compile)
    return GenResult(shape, model.config.attn, kv_cache, compile, batch, prompt, warmup, first, total, new_tokens)


PATHS = ((True, False), (True, True), (False, False))  # (kv_cache, compile): cached eager, cached compiled, no cache


def all_generation_speeds(batches=BATCHES, prompts=PROMPTS, attns=ATTN_IMPLS,
                          new_tokens: int = NEW_TOKENS) -> list[GenResult]:
    results = []
    for shape in MODEL_SHAPES:
        for attn in attns:
            model = build_model(shape, attn)
            # batch outermost within a path: the model keeps one decoder, for one batch size and path, so each
            # compiled decoder is built (and compiled) once and serves both prompts
            for kv_cache, compile in PATHS:
                for batch in batches:
                    for prompt in prompts:
                        if prompt + new_tokens > model.config.block_size:
                            continue
                        r = generation_speed(model, shape, batch, prompt, kv_cache, compile, new_tokens)
                        print(f"  {shape} {attn} prompt {prompt} batch {batch} kv_cache={kv_cache} compile={compile}: "
                              f"{r.tokens_per_s:.0f} tokens/s, {r.ms_per_token:.3f} ms/token, "
                              f"warm-up {r.warmup_s:.1f} s", flush=True)
                        results.append(r)
            del model
            torch.cuda.empty_cache()
    return results


@dataclass
class Agreement:
    model: str
    attn: str
    rows: int
    new_tokens: int
    agreeing: int  # tokens, over all rows, before each row's first divergence
    gaps_ulp: list  # at each row's first divergence: the no-cache path's top-2 logit gap, in bf16 ulps


def greedy_agreement(shape: str, attn: str, rows: int = 4, prompt: int = 16, new_tokens: int = 200) -> Agreement:
    """Greedy bf16 tokens with and without the cache (the cached path as generate runs it by default: compiled on a
    GPU), from the same prompts. After a row's first divergence the two continue from different contexts, so only
    the tokens before it count. At the divergence, the gap between the two best logits of the no-cache path says
    whether it was a near-tie (a gap of a few bf16 ulps, which the paths' different summation orders can flip)."""
    model = build_model(shape, attn)
    idx = torch.randint(0, model.config.vocab_size, (rows, prompt), device="cuda",
                        generator=torch.Generator("cuda").manual_seed(1))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        want = model.generate(idx, new_tokens, top_k=1, kv_cache=False)
        got = model.generate(idx, new_tokens, top_k=1, kv_cache=True)
        agreeing, gaps = 0, []
        for r in range(rows):
            diff = (got[r, prompt:] != want[r, prompt:]).nonzero()
            if len(diff) == 0:
                agreeing += new_tokens
                continue
            n = int(diff[0])
            agreeing += n
            with torch.no_grad():
                logits, _ = model(want[r:r + 1, :prompt + n])
            top2 = logits[0, -1].float().topk(2).values
            ulp = 2.0 ** (math.floor(math.log2(abs(top2[0].item()) + 1e-30)) - 7)  # bf16: 8 significant bits
            gaps.append((top2[0] - top2[1]).item() / ulp)
    del model
    torch.cuda.empty_cache()
    return Agreement(shape, attn, rows, new_tokens, agreeing, gaps)


# ----------------------------------------------------------------------------------------------------------------
# The decode kernel alone


@dataclass
class KernelResult:
    cache: int
    batch: int
    provider: str
    us: float = float("nan")
    status: str = "ok"  # ok | wrong (err) | unsupported | <exception name>

    @property
    def kv_bytes(self) -> int:
        return 2 * self.batch * self.cache * H * D * 2  # K and V, bf16

    @property
    def gbps(self) -> float:
        return self.kv_bytes / (self.us * 1e-6) / 1e9


def copy_bandwidth() -> float:
    """Bytes read plus written per second by a 1 GiB device-to-device copy."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=10, rep=100, return_mode="median")
    return 2 * src.numel() / (ms * 1e-3)


@triton.jit
def _read_kernel(X, OUT, N, BLOCK: tl.constexpr):
    # Sums X, program p taking blocks p, p + programs, ...: the grid sweeps memory front to back, one window of
    # programs x BLOCK elements at a time, and does nothing but read.
    # Whole blocks unmasked: with a bounds mask in the loop it ran at 0.55-0.62x this speed on an H200.
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    whole = N // BLOCK * BLOCK
    for start in range(pid * BLOCK, whole, tl.num_programs(0) * BLOCK):
        acc += tl.load(X + start + offs).to(tl.float32)
    if pid == 0:  # the tail
        acc += tl.load(X + whole + offs, mask=whole + offs < N, other=0.0).to(tl.float32)
    tl.store(OUT + pid, tl.sum(acc, 0))


def read_only(x: torch.Tensor) -> torch.Tensor:
    """One partial sum of contiguous x per program: a kernel that reads x once and does nothing else. Two programs
    per multiprocessor, 16384 elements a load, 8 warps: the fastest of 132 to 528 programs x (8192 elements, 4
    warps | 16384, 8) on caches of 8k to 32k tokens at batch 1, one run on an H200 (docs/design.md, "Decode at
    batch 1: the fixed cost")."""
    programs = 2 * flash_decode._multiprocessors(x.device) if x.is_cuda else 4
    out = torch.empty(programs, dtype=torch.float32, device=x.device)
    _read_kernel[(programs,)](x, out, x.numel(), BLOCK=16384, num_warps=8, num_stages=3)
    return out


def _providers() -> dict:
    def ours(q, kv, seqlens):
        return flash_attn_with_kvcache(q, kv[:, 0].transpose(1, 2), kv[:, 1].transpose(1, 2), seqlens)

    def sdpa(backend):
        def fn(q, kv, seqlens):
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(q.transpose(1, 2), kv[:, 0], kv[:, 1]).transpose(1, 2)
        return fn

    return {"ours": ours, **{name: sdpa(b) for name, b in SDPA_BACKENDS.items()}}


def graph_us(calls: list) -> float:
    """GPU time per call: the calls captured back to back in one CUDA graph, replayed; median over replays."""
    for call in calls[:1]:
        call()  # compile and plan outside the capture
    torch.cuda.synchronize()
    reps = len(calls) * math.ceil(20 / len(calls))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(reps):
            calls[i % len(calls)]()
    ms = triton.testing.do_bench(graph.replay, warmup=5, rep=50, return_mode="median")
    return ms * 1e3 / reps


def _decode_inputs(cache: int, batch: int) -> tuple[list, list, torch.Tensor]:
    """Queries (B, 1, H, D) and caches (B, 2, H, S, D), as many copies as it takes to exceed L2, and full lengths."""
    copies = max(1, math.ceil(L2_FLUSH_BYTES / (2 * batch * cache * H * D * 2)))
    g = torch.Generator("cuda").manual_seed(0)
    qs = [torch.randn(batch, 1, H, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(copies)]
    kvs = [torch.randn(batch, 2, H, cache, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(copies)]
    return qs, kvs, torch.full((batch,), cache, dtype=torch.int32, device="cuda")


def decode_kernel_times(cache: int, batch: int) -> list[KernelResult]:
    qs, kvs, seqlens = _decode_inputs(cache, batch)
    want = attention_with_kvcache_ref(qs[0][:1], kvs[0][:1, 0].transpose(1, 2), kvs[0][:1, 1].transpose(1, 2),
                                      seqlens[:1])
    dst = torch.empty_like(kvs[0])
    results = [KernelResult(cache, batch, "copy", graph_us([lambda kv=kv: dst.copy_(kv) for kv in kvs])),
               KernelResult(cache, batch, "read", graph_us([lambda kv=kv: read_only(kv) for kv in kvs]))]
    for name, fn in _providers().items():
        res = KernelResult(cache, batch, name)
        try:
            got = fn(qs[0], kvs[0], seqlens)[:1]
            err = ((got.float() - want).norm() / want.norm()).item()
            if not err < CHECK_TOL:
                res.status = f"wrong ({err:.1e})"
            else:
                res.us = graph_us([lambda q=q, kv=kv: fn(q, kv, seqlens) for q, kv in zip(qs, kvs)])
        except RuntimeError as e:
            msg = str(e)
            res.status = "unsupported" if "No available kernel" in msg or "not supported" in msg.lower() \
                else f"{type(e).__name__}: {msg.splitlines()[0][:60]}"
        torch.cuda.synchronize()
        results.append(res)
    del qs, kvs, dst
    torch.cuda.empty_cache()
    return results


def split_sweep(cache: int, batch: int, splits=(1, 2, 4, 8, 16, 22, 32, 44, 64)) -> dict[int, float]:
    """Our kernel's GPU time per call (us) at each num_splits: the data flash_decode's default split is set from."""
    qs, kvs, seqlens = _decode_inputs(cache, batch)
    times = {}
    for n in splits:
        def call(q, kv, n=n):
            return flash_attn_with_kvcache(q, kv[:, 0].transpose(1, 2), kv[:, 1].transpose(1, 2), seqlens, num_splits=n)
        times[n] = graph_us([lambda q=q, kv=kv: call(q, kv) for q, kv in zip(qs, kvs)])
    del qs, kvs
    torch.cuda.empty_cache()
    return times


# ----------------------------------------------------------------------------------------------------------------
# Tables


def fmt(x: float, spec: str = ".0f") -> str:
    return "–" if x != x else format(x, spec)  # NaN (not measured) shows as a dash


def generation_table(results: list[GenResult]) -> str:
    lines = ["### Generation: tokens/s (batch x new tokens / wall time) and decode ms/token, bf16 autocast", "",
             f"{NEW_TOKENS} new tokens per run, temperature {TEMPERATURE}, top_k {TOP_K}. Cached: the decode step "
             "replayed as a CUDA graph, eager or compiled by torch.compile first; warm-up: the first 3-token "
             "generation of the setting (compilation and capture). The 900-token prompt runs only where it fits in "
             "block_size (not for the char model's 256).", "",
             "| model | prompt | batch | attn | cached tokens/s | compiled tokens/s | no-cache tokens/s | "
             "compiled / cached | cached ms/token | compiled ms/token | no-cache ms/token | "
             "cached prefill + 1 token ms | cached warm-up s | compiled warm-up s |",
             "|---" * 14 + "|"]
    by_key = {(r.model, r.prompt, r.batch, r.attn, r.kv_cache, r.compile): r for r in results}
    settings = {key[:4] for key in by_key}

    def order(key):  # model, prompt, batch, then attn in ATTN_IMPLS order
        return list(MODEL_SHAPES).index(key[0]), key[1], key[2], ATTN_IMPLS.index(key[3])

    def cell(r: GenResult | None, value, spec: str) -> str:
        return fmt(value(r), spec) if r else "–"

    for key in sorted(settings, key=order):
        cached, compiled, old = (by_key.get(key + path) for path in PATHS)
        model, prompt, batch, attn = key
        ratio = compiled.tokens_per_s / cached.tokens_per_s if cached and compiled else float("nan")
        lines.append(f"| {model} | {prompt} | {batch} | {attn} | "
                     + " | ".join([cell(cached, lambda r: r.tokens_per_s, ".0f"),
                                   cell(compiled, lambda r: r.tokens_per_s, ".0f"),
                                   cell(old, lambda r: r.tokens_per_s, ".0f"),
                                   fmt(ratio, ".2f") + ("x" if ratio == ratio else ""),
                                   cell(cached, lambda r: r.ms_per_token, ".3f"),
                                   cell(compiled, lambda r: r.ms_per_token, ".3f"),
                                   cell(old, lambda r: r.ms_per_token, ".2f"),
                                   cell(cached, lambda r: r.first_s * 1e3, ".1f"),
                                   cell(cached, lambda r: r.warmup_s, ".1f"),
                                   cell(compiled, lambda r: r.warmup_s, ".1f")]) + " |")
    return "\n".join(lines)


def kernel_table(results: list[KernelResult], copy_bps: float) -> str:
    others = list(SDPA_BACKENDS)
    lines = [f"### Decode kernel alone: one query per (batch, head), H={H}, D={D}, bf16, GPU time from CUDA-graph "
             f"replay; copy bandwidth {copy_bps / 1e9:.0f} GB/s", "",
             "| cache tokens | batch | K+V MB | ours us | ours GB/s | % of 1 GiB copy | same-size copy GB/s | "
             "% of it | read-only us | read-only / ours | " + " | ".join(f"{p} us" for p in others)
             + " | fastest SDPA / ours |",
             "|---" * (11 + len(others)) + "|"]
    cells = {}
    for r in results:
        cells.setdefault((r.cache, r.batch), {})[r.provider] = r
    for (cache, batch), row in cells.items():
        ours, copy_gbps = row["ours"], 2 * row["copy"].gbps
        sdpa_us = [row[p].us for p in others if row[p].status == "ok"]
        best = min(sdpa_us) if sdpa_us else float("nan")
        lines.append(f"| {cache} | {batch} | {ours.kv_bytes / 1e6:.1f} | {fmt(ours.us, '.1f')} | {fmt(ours.gbps)} | "
                     f"{fmt(100 * ours.gbps * 1e9 / copy_bps)}% | {fmt(copy_gbps)} | "
                     f"{fmt(100 * ours.gbps / copy_gbps)}% | {fmt(row['read'].us, '.1f')} | "
                     f"{fmt(row['read'].us / ours.us, '.2f')} | "
                     + " | ".join(fmt(row[p].us, ".1f") if row[p].status == "ok" else row[p].status for p in others)
                     + f" | {fmt(best / ours.us, '.2f')}x |")
    return "\n".join(lines)


def agreement_table(results: list[Agreement]) -> str:
    lines = ["### Greedy bf16 tokens: cached path against the no-cache path (random-weight models)", "",
             "| model | attn | rows x new tokens | tokens before the first divergence | top-2 logit gap at each "
             "divergence, bf16 ulps |", "|---|---|---|---|---|"]
    for a in results:
        gaps = ", ".join(f"{g:.1f}" for g in a.gaps_ulp) or "none"
        lines.append(f"| {a.model} | {a.attn} | {a.rows} x {a.new_tokens} | {a.agreeing} of {a.rows * a.new_tokens} "
                     f"| {gaps} |")
    return "\n".join(lines)


def sweep_table(rows: dict) -> str:
    """rows: {(cache, batch): {num_splits: us}}"""
    splits = sorted({n for times in rows.values() for n in times})
    lines = [f"### Decode kernel GPU time (us) by num_splits, H={H}, D={D}, bf16; * marks the fastest", "",
             "| cache tokens | batch | default | " + " | ".join(str(n) for n in splits) + " |",
             "|---" * (3 + len(splits)) + "|"]
    for (cache, batch), times in rows.items():
        best = min(times, key=times.get)
        block_n = flash_decode._config(1, torch.bfloat16)[1]
        default = flash_decode._default_num_splits(batch * H, triton.cdiv(cache, block_n),
                                                   flash_decode._multiprocessors(torch.device("cuda")))
        lines.append(f"| {cache} | {batch} | {default} | " + " | ".join(
            fmt(times[n], ".1f") + ("*" if n == best else "") if n in times else "–" for n in splits) + " |")
    return "\n".join(lines)


def header(copy_bps: float) -> str:
    return (f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
            f"commit {git_commit()} | device-to-device copy {copy_bps / 1e9:.0f} GB/s")


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="attn=triton, batch 1, short prompts, three cache sizes, no agreement")
    parser.add_argument("--out", help="also write the Markdown tables to this file")
    parser.add_argument("--sweep", action="store_true", help="only the decode kernel's time at each num_splits")
    args = parser.parse_args()
    require_gpu('bench_generate.py')
    if args.out:
        check_writable(args.out)
    if args.sweep:
        rows = {(cache, batch): split_sweep(cache, batch) for cache in CACHE_SIZES for batch in KERNEL_BATCHES}
        text = header(copy_bandwidth()) + "\n\n" + sweep_table(rows)
        print(text)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text + "\n")
        return
    copy_bps = copy_bandwidth()
    print("decode kernel:", flush=True)
    kernel = []
    for cache in ((1024, 8192, 32768) if args.quick else CACHE_SIZES):
        for batch in KERNEL_BATCHES:
            kernel += decode_kernel_times(cache, batch)
            print(f"  cache {cache} batch {batch}: " + ", ".join(
                f"{r.provider} {r.us:.1f} us" if r.status == "ok" else f"{r.provider} {r.status}"
                for r in kernel[-len(SDPA_BACKENDS) - 3:]), flush=True)
    print("generation:", flush=True)
    gen = all_generation_speeds(batches=(1,) if args.quick else BATCHES, prompts=(16,) if args.quick else PROMPTS,
                                attns=("triton",) if args.quick else ATTN_IMPLS)
    agree = []
    if not args.quick:
        print("greedy agreement:", flush=True)
        for shape in MODEL_SHAPES:
            for attn in ATTN_IMPLS:
                agree.append(greedy_agreement(shape, attn))
                print(f"  {shape} {attn}: {agree[-1].agreeing} of {agree[-1].rows * agree[-1].new_tokens}", flush=True)
    report = "\n\n".join([header(copy_bps), generation_table(gen), kernel_table(kernel, copy_bps)]
                         + ([agreement_table(agree)] if agree else []))
    print("\n" + report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
