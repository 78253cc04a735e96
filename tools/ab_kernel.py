"""
A/B of the kernels: this tree's flash_kernel.py and flash_hopper.py against the same two files at another git
revision (or in another folder), in one process on one GPU, so that a change's effect is measured against its own
baseline in the same run. A developer's tool; the A/B numbers in docs/design.md come from it.

    python tools/ab_kernel.py REV [--sweep]        # e.g. HEAD~1
    python tools/ab_kernel.py FOLDER [--sweep]     # a folder with the old flash_kernel.py (and flash_hopper.py)
    python tools/ab_kernel.py REV --sweep --variant DIR [--variant DIR ...] [--rounds 2]
    python tools/ab_kernel.py REV --sweep --layout bthd    # the model's (B, T, H, D) views, as bench.py times

Times the launchers (_attn_fwd, _attn_bwd), median ms, bf16 causal, dropout off and at 0.2; with --sweep, dropout
off over bench.py's sweep (B*T = 16384, hidden 2048, T = 512 ... 16384) instead. The calls being compared take
turns, one call each (interleaved_ms): each is timed alone by CUDA events after an L2 flush, as do_bench does, but
all see the GPU's clocks drift alike. With --variant, each folder's flash_hopper.py (and flash_kernel.py, else
this tree's) is timed against REV instead of this tree, all in one process and in turns with REV, in each of
--rounds rounds at each shape; a variant whose outputs leave bench.py's CHECK_TOL of REV's is timed no further.
Inputs are contiguous (B, H, T, D) tensors unless --layout bthd asks for the model's views, the layout bench.py and
the model use: a change to what happens around the kernels (the layouts of buffers, copies) shows only there.

Clock cycles instead of milliseconds, counted by Nsight Compute, which no clock or power state moves (an untouched
kernel reads within about 1% of itself; --control adds a second copy of REV, whose reading against REV is the A/B's
floor; docs/design.md, "Cycles by the counters"):

    ncu --clock-control none --profile-from-start off --metrics sm__cycles_elapsed.max -o ab \\
        -k regex:'^_attn_(fwd|bwd)(_hopper)?_kernel$' \\
        python tools/ab_kernel.py REV --sweep --variant DIR --rounds 2 --control --profile
    ncu -i ab.ncu-rep --page raw --csv > ab.csv
    python tools/ab_kernel.py REV --sweep --variant DIR --rounds 2 --control --cycles ab.csv     # no GPU needed

--profile runs each module's forward and backward once per round at each shape inside a profiler range, dropout off;
--cycles reads back, in that order, the cycles of each pass's main kernel (the Triton or Hopper forward or backward;
not the passes around them) and prints them as millions of cycles, the least over the rounds.
load_old() imports the old files, compare() and compare_variants() return the times, profile_calls() and
cycles_rows() make and read the profile; main prints them.
"""
import argparse
import atexit
import functools
import importlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import triton  # noqa: E402

import flash_kernel as new  # noqa: E402
import bench  # noqa: E402
from bench import CHECK_TOL  # noqa: E402
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


def load_old(source: str, tag: str = "old", tree_kernel: bool = False):
    """flash_kernel.py (with the flash_hopper.py it imports) from a folder or as of a git revision, imported as a
    module of its own, named by `tag`: its torch ops under another namespace, its Hopper kernels from its own
    flash_hopper. tree_kernel: a folder without flash_kernel.py takes this tree's. The files go to a temporary
    folder (triton.jit reads a kernel's source from its module's file), removed at exit."""
    def text(name):
        found = _old_file(source, name)
        return _old_file(ROOT, name) if found is None and tree_kernel and os.path.isdir(source) else found

    kernel = text("flash_kernel.py")
    if kernel is None:
        raise SystemExit(f"error: no flash_kernel.py in {source!r} (a folder or a git revision of this repo)")
    folder = tempfile.mkdtemp(prefix="ab_kernel_")
    atexit.register(shutil.rmtree, folder, True)
    kernel = kernel.replace('"flashgpt"', f'"flashgpt_ab_{tag}"').replace("flashgpt::", f"flashgpt_ab_{tag}::")
    hopper = text("flash_hopper.py")  # None before the Hopper kernels
    if hopper is not None:
        kernel = kernel.replace("import flash_hopper\n", f"import flash_hopper_ab_{tag} as flash_hopper\n")
        with open(os.path.join(folder, f"flash_hopper_ab_{tag}.py"), "w") as f:
            f.write(hopper)
    with open(os.path.join(folder, f"flash_kernel_ab_{tag}.py"), "w") as f:
        f.write(kernel)
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(f"flash_kernel_ab_{tag}")
    finally:
        sys.path.remove(folder)


def inputs(B, H, T, D, layout: str = "bhtd", device: str = "cuda") -> list:
    """q, k, v and the upstream gradient, (B, H, T, D) bf16 in one of bench.LAYOUTS."""
    return [t.detach() for t in bench.inputs(B, H, T, D, layout, device)]


FLUSH_BYTES = 256 * 2**20  # written before each timed call so that none finds its inputs in L2, as do_bench does
REP_MS = 100  # GPU time each call gets in one timing, as do_bench's rep


def interleaved_ms(calls: dict, rep_ms: float = REP_MS, device: str = "cuda") -> dict:
    """{name: [ms, one per repetition]} of each of calls ({name: function}): every repetition runs each call once,
    each starting one place further along the list than in the last (no call always runs first, or just after the
    same other), each timed alone by CUDA events after L2 is flushed. Calls timed back to back share the GPU's clocks
    and temperature as they drift; do_bench runs (100 ms of one call, then 100 ms of the next) did not, and their
    ratios for a kernel left as it was spread 0.87-1.07x (docs/design.md, "The prepared variants, timed"). Meant for
    kernels that differ little: a call's time also depends on the calls beside it, by up to 12% between different
    implementations (docs/design.md, "Providers in turns")."""
    names = list(calls)
    flush = torch.empty(FLUSH_BYTES // 4, dtype=torch.int32, device=device)

    def run(reps):
        events = {name: [] for name in names}
        for i in range(reps):
            for j in range(len(names)):
                name = names[(i + j) % len(names)]
                flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                calls[name]()
                end.record()
                events[name].append((start, end))
        torch.cuda.synchronize()
        return {name: [start.elapsed_time(end) for start, end in pairs] for name, pairs in events.items()}

    estimate = run(5)  # also the warm-up
    per_call = statistics.mean(statistics.median(ms) for ms in estimate.values())
    return run(max(10, round(rep_ms / per_call)))


def time_modules(modules: dict, B, H, T, D, p, tensors: Optional[list] = None, layout: str = "bhtd") -> dict:
    """{name: (forward ms, backward ms)}, medians, of each of modules' launchers ({name: module}) on the same
    `tensors` (inputs()) or fresh ones in `layout`, the modules' calls interleaved (interleaved_ms)."""
    q, k, v, do = tensors or inputs(B, H, T, D, layout)
    seed = torch.randint(0, 2**62, (1,), dtype=torch.int64, device="cuda") if p > 0 else None
    s = D ** -0.5
    fwd, bwd = {}, {}
    for name, fk in modules.items():
        o, lse = fk._attn_fwd(q, k, v, seed, True, s, p)
        fwd[name] = functools.partial(fk._attn_fwd, q, k, v, seed, True, s, p)
        bwd[name] = functools.partial(fk._attn_bwd, do, q, k, v, o, lse, seed, True, s, p)
    fwd, bwd = interleaved_ms(fwd), interleaved_ms(bwd)
    return {name: (statistics.median(fwd[name]), statistics.median(bwd[name])) for name in modules}


def compare(old, shapes: list, dropouts: tuple, layout: str = "bhtd") -> list:
    """Old against this tree's kernels at each (B, H, T, D) and dropout_p: one dict of ms per point."""
    rows = []
    for B, H, T, D in shapes:
        for p in dropouts:
            ms = time_modules({"old": old, "new": new}, B, H, T, D, p, layout=layout)
            (fo, bo), (fn, bn) = ms["old"], ms["new"]
            rows.append(dict(B=B, H=H, T=T, D=D, p=p, fwd_old=fo, fwd_new=fn, bwd_old=bo, bwd_new=bn))
    return rows


def outputs(fk, tensors: list) -> list:
    """o, dq, dk and dv from module fk's launchers, dropout off."""
    q, k, v, do = tensors
    s = q.shape[-1] ** -0.5
    o, lse = fk._attn_fwd(q, k, v, None, True, s, 0.0)
    return [o, *fk._attn_bwd(do, q, k, v, o, lse, None, True, s, 0.0)]


def mismatch(new: list, old: list) -> float:
    """The largest L2 difference between matching tensors relative to old's norm, or absolute where that norm is
    below 1 (dq and dk are zero at T=1); nan or inf where new is not finite."""
    return max(((a.float() - b.float()).norm() / b.float().norm().clamp_min(1.0)).item() for a, b in zip(new, old))


def compare_variants(old, variants: dict, shape: tuple, rounds: int, layout: str = "bhtd") -> tuple[list, dict]:
    """Old against each of {name: module} at one (B, H, T, D), dropout off: in each round old and every variant
    in turns (time_modules) on the same inputs. A variant whose outputs differ from old's by more than bench.py's
    CHECK_TOL is not timed (a fast wrong kernel is no result). Returns one dict of ms per variant and round, and
    {name: error} for the variants left out."""
    B, H, T, D = shape
    tensors = inputs(B, H, T, D, layout)
    want = outputs(old, tensors)
    errors = {name: mismatch(outputs(module, tensors), want) for name, module in variants.items()}
    wrong = {name: err for name, err in errors.items() if not err < CHECK_TOL}
    rows = []
    timed = {"old": old, **{name: module for name, module in variants.items() if name not in wrong}}
    for _ in range(rounds):
        ms = time_modules(timed, B, H, T, D, 0.0, tensors)
        fo, bo = ms.pop("old")
        rows += [dict(variant=name, B=B, H=H, T=T, D=D, p=0.0, fwd_old=fo, fwd_new=fn, bwd_old=bo, bwd_new=bn)
                 for name, (fn, bn) in ms.items()]
    return rows, wrong


def _variant_names(folders: list, control: Optional[str] = None) -> dict:
    # {name: folder}, a folder named by its last path component, which names its modules (load_old's tag; "old" is
    # the baseline's); with control (the baseline's revision or folder) a second copy of the baseline, named control,
    # last: whatever it reads against the baseline is the A/B's floor
    names = {}
    for folder in folders:
        name = os.path.basename(os.path.normpath(folder))
        kernels = [os.path.join(folder, f) for f in ("flash_hopper.py", "flash_kernel.py")]
        if not any(map(os.path.isfile, kernels)) or not re.fullmatch(r"\w+", name) or name in names or name == "old":
            raise SystemExit(f"error: --variant {folder!r} must be a folder with a flash_hopper.py (or "
                             "flash_kernel.py) and a name of letters, digits and _ other than old that no other "
                             "--variant has")
        names[name] = folder
    if control is not None:
        if "control" in names:
            raise SystemExit("error: --control names its copy of the baseline control: rename --variant "
                             f"{names['control']!r}")
        names["control"] = control
    return names


def _label(name: str, folders: dict, old: str) -> str:
    return {"new": "this tree", "control": f"{old} again"}.get(name, folders.get(name, "this tree"))


def _row(r: dict) -> str:
    return (f"| {r['B']},{r['H']},{r['T']},{r['D']} | {r['p']} | {r['fwd_old']:.3f} | {r['fwd_new']:.3f} | "
            f"{r['fwd_old'] / r['fwd_new']:.2f}x | {r['bwd_old']:.3f} | {r['bwd_new']:.3f} | "
            f"{r['bwd_old'] / r['bwd_new']:.2f}x |")


HEADER = ("| B,H,T,D | dropout | fwd old | fwd new | fwd speedup | bwd old | bwd new | bwd speedup |\n"
          "|---|---|---|---|---|---|---|---|")
CYCLES_HEADER = ("| B,H,T,D | dropout | fwd old Mcycles | fwd new Mcycles | fwd old/new | bwd old Mcycles | "
                 "bwd new Mcycles | bwd old/new |\n|---|---|---|---|---|---|---|---|")
# each pass's one kernel that profile_calls() launches and cycles_rows() reads, by kernel name
MAIN_KERNELS = {"_attn_fwd_kernel": "fwd", "_attn_fwd_hopper_kernel": "fwd", "_attn_bwd_kernel": "bwd",
                "_attn_bwd_hopper_kernel": "bwd"}


def profile_calls(modules: dict, shapes: list, rounds: int, layout: str = "bhtd") -> None:
    """Each of modules' ({name: module}) forward, then its backward, once per round at each shape, dropout off,
    between cudaProfilerStart and cudaProfilerStop (after a warm-up outside them), for `ncu --profile-from-start
    off`: the launches, in the order cycles_rows() expects them."""
    for B, H, T, D in shapes:
        q, k, v, do = inputs(B, H, T, D, layout)
        s = D ** -0.5
        saved = {name: fk._attn_fwd(q, k, v, None, True, s, 0.0) for name, fk in modules.items()}  # (o, lse)
        for name, fk in modules.items():
            fk._attn_bwd(do, q, k, v, *saved[name], None, True, s, 0.0)
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        for _ in range(rounds):
            for name, fk in modules.items():
                fk._attn_fwd(q, k, v, None, True, s, 0.0)
                fk._attn_bwd(do, q, k, v, *saved[name], None, True, s, 0.0)
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()


def cycles_rows(path: str, names: list, shapes: list, rounds: int) -> dict:
    """{name: [row]} from Nsight Compute's raw CSV of a profile_calls() run with modules named `names` ("old"
    first): per shape, the least cycles over the rounds of old's and the module's forward and backward kernels, in
    millions, as the keys _row() prints."""
    import ncu_table  # tools/, beside this file

    _, _, kernels = ncu_table.read(path)
    found = []  # (pass, the kernel's row), in launch order
    for k in kernels:
        name = k["Kernel Name"].split("(")[0].strip()
        if name in MAIN_KERNELS:
            found.append((MAIN_KERNELS[name], k))
    want = [(shape, name, kind) for shape in shapes for _ in range(rounds) for name in names
            for kind in ("fwd", "bwd")]
    if len(found) != len(want) or any(got != kind for (got, _), (_, _, kind) in zip(found, want)):
        raise SystemExit(f"error: {path} holds {len(found)} forward and backward kernels where {len(want)} were "
                         f"expected in turn: profile with the same REV, --sweep, --variant and --rounds as given here")
    least = {}
    for (_, k), key in zip(found, want):
        cycles = ncu_table.number(k.get("sm__cycles_elapsed.max", "nan")) / 1e6
        least[key] = min(least.get(key, float("inf")), cycles)
    rows = {name: [] for name in names if name != "old"}
    for shape in shapes:
        B, H, T, D = shape
        for name in rows:
            rows[name].append(dict(B=B, H=H, T=T, D=D, p=0.0, fwd_old=least[(shape, "old", "fwd")],
                                   fwd_new=least[(shape, name, "fwd")], bwd_old=least[(shape, "old", "bwd")],
                                   bwd_new=least[(shape, name, "bwd")]))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", help="a git revision (e.g. HEAD~1) or a folder with the old flash_kernel.py")
    parser.add_argument("--sweep", action="store_true", help="bench.py's sweep, dropout off")
    parser.add_argument("--variant", action="append", default=[], metavar="DIR",
                        help="time this folder's flash_hopper.py (and flash_kernel.py, else this tree's) against OLD "
                             "instead of this tree; give it once per variant")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --variant or --profile: timings (or profiled launches) of each at each shape")
    parser.add_argument("--layout", choices=list(bench.LAYOUTS), default="bhtd",
                        help="bhtd: contiguous (B, H, T, D) inputs (default); bthd: the model's (B, T, H, D) views")
    parser.add_argument("--profile", action="store_true", help="launch each pass once per round for ncu, not time")
    parser.add_argument("--cycles", metavar="CSV", help="read the cycles of a --profile run from ncu's raw CSV")
    parser.add_argument("--control", action="store_true",
                        help="also a second copy of OLD, compared with OLD like a variant: the A/B's floor")
    args = parser.parse_args()
    folders = _variant_names(args.variant, args.old if args.control else None)
    if args.control and not args.variant:
        folders = {"new": ROOT, **folders}  # this tree, as without --control
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    shapes = SWEEP if args.sweep else SHAPES
    if args.cycles:
        if not os.path.isfile(args.cycles):
            parser.error(f"no file {args.cycles!r}")
        names = ["old", *(folders or ["new"])]
        for name, rows in cycles_rows(args.cycles, names, shapes, args.rounds).items():
            print(f"\n### {name}: clock cycles, {args.old} -> {_label(name, folders, args.old)}\n\n{CYCLES_HEADER}")
            print("\n".join(_row(r) for r in rows))
        return
    require_gpu('tools/ab_kernel.py')
    old = load_old(args.old)
    variants = {name: load_old(folder, name, tree_kernel=True) for name, folder in folders.items()}
    if args.profile:
        profile_calls({"old": old, **(variants or {"new": new})}, shapes, args.rounds, args.layout)
        return
    print(f"{torch.cuda.get_device_name()} | triton {triton.__version__} | bf16 causal | {args.layout} | median ms, "
          f"{args.old} -> {', '.join(_label(n, folders, args.old) for n in folders) or 'this tree'} (new/old speed)")
    if not folders:
        print(HEADER)
        for shape in shapes:
            for r in compare(old, [shape], (0.0,) if args.sweep else (0.0, 0.2), args.layout):
                print(_row(r), flush=True)
        return
    rows, wrong = [], {}  # wrong: {name: (shape, error)}, each variant timed up to its first wrong shape
    for shape in shapes:
        found, dropped = compare_variants(old, {n: m for n, m in variants.items() if n not in wrong}, shape,
                                          args.rounds, args.layout)
        rows += found
        wrong.update({name: (shape, err) for name, err in dropped.items()})
        print(f"done: {shape}", file=sys.stderr, flush=True)  # progress, for a run cut short by a timeout
    for name in variants:
        print(f"\n### {name}: {_label(name, folders, args.old)}\n")
        if name in wrong:
            (B, H, T, D), err = wrong[name]
            print(f"wrong at B,H,T,D = {B},{H},{T},{D}: relative error {err:.2e} against {args.old}'s outputs "
                  f"(CHECK_TOL {CHECK_TOL}); timed only before it")
        print(HEADER)
        for r in rows:
            if r["variant"] == name:
                print(_row(r))


if __name__ == "__main__":
    main()
