"""
Attention under sustained load: each provider's calls back to back for a few seconds, alone, while nvidia-smi samples
the SM clock, the power draw and whether the clock is held down by the power cap. Prints, per window, the median ms per
call, the mean clock and power over the window (its first half second left out) and the joules per call they imply;
then the same calls timed as bench.py times them (do_bench, an L2 flush before each call). A developer's tool:
docs/design.md ("Cycles by the counters") reads its numbers.

    python tools/sustained.py [--seconds 4] [--rounds 2] [--providers ours FA4 cuDNN]

Shapes are bench.py's (B*T = 16384, hidden 2048, causal bf16, the model's (B, T, H, D) views); FA4 joins where
flash_attn.cute imports. nvidia-smi's clock is a sample every 25 ms, not the clock a kernel effectively runs at (it
read our forward up to 12% above that): for cycles per call, count them with tools/ncu_attention.py under ncu.
"""
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import triton  # noqa: E402

import bench  # noqa: E402
from utils import ArgumentParser, check_writable, require_gpu  # noqa: E402

# (label, B, H, T, D, pass): the sweep's points where ours and FA4 differ most
POINTS = [("D=64 T=16384", 1, 32, 16384, 64, "fwd"), ("D=64 T=16384", 1, 32, 16384, 64, "fwd+bwd"),
          ("D=64 T=4096", 4, 32, 4096, 64, "fwd"), ("D=64 T=4096", 4, 32, 4096, 64, "fwd+bwd"),
          ("D=128 T=4096", 4, 16, 4096, 128, "fwd+bwd"), ("D=128 T=1024", 16, 16, 1024, 128, "fwd+bwd")]
SMI_FIELDS = ["clocks.sm", "power.draw.instant", "clocks_event_reasons.sw_power_cap"]


def make_call(fn, q, k, v, do, mode):
    if mode == "fwd":
        def call():
            with torch.no_grad():
                fn(q, k, v)
    else:
        def call():  # autograd.grad: fresh gradients each call, no accumulation kernel
            torch.autograd.grad(fn(q, k, v), (q, k, v), do)
    return call


def run_window(call, seconds):
    """(start, end, ms per call of each batch of 10 calls) over `seconds` of calls back to back."""
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    start, stop_at, times = datetime.datetime.now(), time.time() + seconds, []
    while time.time() < stop_at:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(10):
            call()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 10)
    return start, datetime.datetime.now(), times


def read_samples(path):
    """[(time, clock MHz, power W, power-capped)] from nvidia-smi's CSV."""
    samples = []
    for line in open(path):
        parts = [p.strip() for p in line.split(",")]
        try:
            when = datetime.datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f")
            samples.append((when, float(parts[1]), float(parts[2]), parts[3] == "Active"))
        except (ValueError, IndexError):  # a header or a cut-off last line
            continue
    return samples


def main():
    ap = ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each window")
    ap.add_argument("--rounds", type=int, default=2, help="windows per provider and point, providers in turn")
    ap.add_argument("--providers", nargs="+", default=["ours", "FA4"])
    ap.add_argument("--log", default="sustained_smi.csv", help="where nvidia-smi's samples go")
    args = ap.parse_args()
    unknown = [p for p in args.providers if p not in bench.PROVIDERS and p != "FA4"]
    if unknown:
        ap.error(f"unknown provider(s) {', '.join(unknown)}: choose from {', '.join(bench.PROVIDERS)} or FA4")
    if not (args.seconds > 0 and args.rounds >= 1):
        ap.error("--seconds must be above 0 and --rounds at least 1")
    require_gpu("tools/sustained.py")
    if shutil.which("nvidia-smi") is None:
        raise SystemExit("error: tools/sustained.py samples the clock with nvidia-smi, which is not on PATH")
    check_writable(args.log)
    fns = {p: bench.PROVIDERS[p] for p in args.providers if p in bench.PROVIDERS}
    if "FA4" in args.providers:
        fa4, note = bench.fa4_provider()
        print(note)
        if fa4 is not None:
            fns["FA4"] = fa4

    log = open(args.log, "w")
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp," + ",".join(SMI_FIELDS),
                            "--format=csv,noheader,nounits", "-lms", "25"], stdout=log, stderr=subprocess.STDOUT)
    time.sleep(1.0)
    windows = []  # (label, mode, provider, start, end, times, do_bench ms)
    for label, B, H, T, D, mode in POINTS:
        q, k, v, do = bench.inputs(B, H, T, D)
        for _ in range(args.rounds):
            for name, fn in fns.items():
                call = make_call(fn, q, k, v, do, mode)
                start, end, times = run_window(call, args.seconds)
                bench_ms = triton.testing.do_bench(call, warmup=25, rep=100, return_mode="median")
                windows.append((label, mode, name, start, end, times, bench_ms))
                print(f"{label} {mode} {name}: {statistics.median(times):.3f} ms sustained, "
                      f"{bench_ms:.3f} ms by do_bench", flush=True)
                time.sleep(1.0)
        del q, k, v, do
    smi.terminate()
    smi.wait()
    log.close()

    samples = read_samples(args.log)
    print(f"\n{torch.cuda.get_device_name()}, {len(samples)} samples of nvidia-smi\n")
    print("| point | pass | provider | ms/call | SM clock MHz | power W | power-capped | J/call | do_bench ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, mode, name, start, end, times, bench_ms in windows:
        inside = [s for s in samples if start + datetime.timedelta(seconds=0.5) <= s[0] <= end]
        ms = statistics.median(times)
        if not inside:
            print(f"| {label} | {mode} | {name} | {ms:.3f} | no samples | | | | {bench_ms:.3f} |")
            continue
        clock = statistics.mean(s[1] for s in inside)
        power = statistics.mean(s[2] for s in inside)
        capped = sum(s[3] for s in inside) / len(inside)
        print(f"| {label} | {mode} | {name} | {ms:.3f} | {clock:.0f} | {power:.0f} | {capped:.0%} "
              f"| {power * ms / 1000:.3f} | {bench_ms:.3f} |")


if __name__ == "__main__":
    main()
