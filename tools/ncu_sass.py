"""
Nsight Compute's per-instruction source page as Markdown: for each profiled kernel, where its warps' stall samples
fall by reason, the SASS instructions that carry the most of them, and the shared-memory instructions that take more
wavefronts than their ideal (bank conflicts). The tables of results/ncu_h100_bwd_sass.md come from it.

    ncu --section SourceCounters --section WarpStateStats --import-source no -k regex:NAME -o src python ...
    ncu -i src.ncu-rep --page source --csv --print-source sass > src_sass.csv
    python tools/ncu_sass.py src_sass.csv [--top 12] [--by-opcode]

A sample is charged to the instruction its warp waits to issue, so a warp that waits the whole kernel (one that pads
a warpgroup, a loader polling a barrier) shows as one instruction with many samples.
"""
import csv
import os
import sys
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ncu_table import number  # noqa: E402
from utils import ArgumentParser  # noqa: E402

SAMPLES = "Warp Stall Sampling (All Samples)"
EXCESS = "L1 Wavefronts Shared Excessive"


def read(path: str) -> list:
    """[(kernel name, [row as a dict, one per SASS instruction])] from `ncu --page source --csv --print-source sass`,
    which writes each kernel as a "Kernel Name" line, a header and its instructions."""
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    kernels = []
    for i, line in enumerate(lines):
        if line[:1] == ["Kernel Name"] and i + 1 < len(lines):
            kernels.append((line[1], lines[i + 1], []))
        elif kernels and line and line != kernels[-1][1]:
            kernels[-1][2].append(dict(zip(kernels[-1][1], line)))
    if not kernels or SAMPLES not in kernels[0][1]:
        raise SystemExit(f"error: {path} is not Nsight Compute's source page with stall samples: make it with "
                         f"`ncu -i REPORT.ncu-rep --page source --csv --print-source sass > {path}` from a report "
                         "with the SourceCounters section")
    return [(name, rows) for name, _, rows in kernels]


def count(text: str) -> float:
    value = number(text)
    return value if value == value else 0.0  # NaN from "-": not applicable to this instruction


def _reasons_and_total(rows: list) -> tuple:
    """A kernel's stall-reason columns (all samples, not the not-issued ones) and its total samples (1 if none)."""
    reasons = [key for key in rows[0] if key.startswith("stall_") and "Not Issued" not in key] if rows else []
    return reasons, sum(count(row[SAMPLES]) for row in rows) or 1.0


def summary(name: str, rows: list, top: int = 12) -> str:
    """One kernel's Markdown: its samples by reason, its `top` instructions by samples, its bank conflicts."""
    reasons, total = _reasons_and_total(rows)
    by_reason = Counter({reason[6:]: sum(count(row[reason]) for row in rows) for reason in reasons})
    lines = [f"### {name}", "",
             f"{total:.0f} stall samples; by reason: "
             + ", ".join(f"{reason} {100 * n / total:.1f}%" for reason, n in by_reason.most_common(6)), "",
             "| share | instruction | main reasons |", "|---|---|---|"]
    for row in sorted(rows, key=lambda r: -count(r[SAMPLES]))[:top]:
        samples = count(row[SAMPLES])
        main = sorted(((count(row[r]), r[6:]) for r in reasons), reverse=True)[:2]
        source = " ".join(row["Source"].split())
        if "BRA" in source:  # a branch's absolute target address says nothing across runs
            source = source.rsplit(" ", 1)[0]
        lines.append(f"| {100 * samples / total:.1f}% | `{source}` | "
                     + ", ".join(f"{r} {100 * n / max(samples, 1):.0f}%" for n, r in main) + " |")
    conflicted = [row for row in rows if count(row.get(EXCESS, "0")) > 0]
    wavefronts = sum(count(row.get("L1 Wavefronts Shared", "0")) for row in rows)
    if conflicted and wavefronts:
        excess = sum(count(row[EXCESS]) for row in conflicted)
        kinds = Counter(" ".join(row["Source"].split()).split(" ")[0] for row in conflicted)
        lines += ["", "Shared-memory instructions with more wavefronts than their ideal: "
                  + ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
                  + f"; their excess is {100 * excess / wavefronts:.1f}% of the kernel's shared-memory wavefronts."]
    return "\n".join(lines)


def opcode(source: str) -> str:
    """An instruction's base opcode, without predicate or modifiers: `@!P0 MUFU.EX2 R4, R5` -> MUFU."""
    words = [w for w in source.split() if not w.startswith("@")]
    return words[0].split(".")[0] if words else "?"


def by_opcode(rows: list, top: int = 12) -> str:
    """One kernel's stall samples summed by base opcode, most first, with each opcode's two main reasons: where a
    kernel's time goes when no single instruction stands out (the exponentials, the row max, the products)."""
    reasons, total = _reasons_and_total(rows)
    samples, by_reason = Counter(), {}
    for row in rows:
        op = opcode(row["Source"])
        samples[op] += count(row[SAMPLES])
        by_reason.setdefault(op, Counter()).update({r[6:]: count(row[r]) for r in reasons})
    lines = ["| opcode | share | main reasons |", "|---|---|---|"]
    for op, n in samples.most_common(top):
        main = by_reason[op].most_common(2)
        lines.append(f"| `{op}` | {100 * n / total:.1f}% | "
                     + ", ".join(f"{r} {100 * k / max(n, 1):.0f}%" for r, k in main) + " |")
    return "\n".join(lines)


def main():
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", help="the output of `ncu -i REPORT --page source --csv --print-source sass`")
    parser.add_argument("--top", type=int, default=12, help="how many instructions to list per kernel")
    parser.add_argument("--by-opcode", action="store_true", help="also sum each kernel's samples by opcode")
    args = parser.parse_args()
    if not os.path.isfile(args.csv):
        parser.error(f"no file {args.csv!r}")
    kernels = read(args.csv)
    print("\n\n".join(summary(f"{i}. {name}", rows, args.top)
                      + (f"\n\nBy opcode:\n\n{by_opcode(rows, args.top)}" if args.by_opcode else "")
                      for i, (name, rows) in enumerate(kernels, 1)))


if __name__ == "__main__":
    main()
