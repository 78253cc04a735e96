"""
Nsight Compute's raw CSV as a Markdown table: one row per profiled kernel in launch order, with its duration, the
cycles its warps spend per issued instruction and the largest stall reasons in them, issue activity, tensor-pipe and
MUFU activity, instructions executed and registers per thread (the columns of results/ncu_t4096.md), and the
kernel's clock cycles and mean SM clock where the report has them (sm__cycles_elapsed.max and .avg.per_second).

    ncu -i attn.ncu-rep --page raw --csv > attn.csv
    python tools/ncu_table.py attn.csv [--reasons 6]

A metric the report does not hold (its section was not collected) shows as "-".
"""
import csv
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils import ArgumentParser  # noqa: E402

STALL = re.compile(r"smsp__average_warps_issue_stalled_(\w+)_per_issue_active\.ratio")
# the duration's unit as the units row names it: the long names, or the short ones some Nsight Compute versions print
TO_MS = {"second": 1e3, "msecond": 1.0, "usecond": 1e-3, "nsecond": 1e-6, "s": 1e3, "ms": 1.0, "us": 1e-3, "ns": 1e-6}
# the clock's unit (cycles per ...) to GHz
TO_GHZ = {"cycle/second": 1e-9, "cycle/msecond": 1e-6, "cycle/usecond": 1e-3, "cycle/nsecond": 1.0, "Hz": 1e-9,
          "KHz": 1e-6, "MHz": 1e-3, "GHz": 1.0, "Ghz": 1.0}
# (header, metric name prefix): the first column of the report whose name starts with the prefix
PERCENTS = [("issue active %", "smsp__issue_active.avg.pct_of_peak_sustained_active"),
            ("tensor pipe %", "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"),
            ("MUFU (XU) %", "sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active")]


def read(path: str) -> tuple[list, dict, list]:
    """(column names, {name: unit}, rows as dicts) of `ncu --page raw --csv`: a header, a row of units (its ID
    cell empty), then one row per kernel launch."""
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    if not lines or "Kernel Name" not in lines[0]:
        raise SystemExit(f"error: {path} is not Nsight Compute's raw CSV: make it with "
                         f"`ncu -i REPORT.ncu-rep --page raw --csv > {path}`")
    names, body = lines[0], lines[1:]
    units = {}
    if body and not body[0][names.index("ID")]:
        units, body = dict(zip(names, body[0])), body[1:]
    return names, units, [dict(zip(names, line)) for line in body]


def number(text: str) -> float:
    try:
        return float(text.replace(",", ""))  # ncu may group thousands with commas
    except ValueError:
        return float("nan")


def short_name(name: str) -> str:
    """A kernel's name without its argument list; for a long generated name (CuTe DSL's run to hundreds of
    characters) its longest CamelCase word, such as the kernel's class, where it has one."""
    name = name.split("(")[0].strip()
    if len(name) <= 60:
        return name
    words = re.findall(r"(?:[A-Z][a-z0-9]+){2,}", name)
    if words:
        return max(words, key=len)
    return name[:57] + "..."


def table(names: list, units: dict, rows: list, reasons: int = 6) -> str:
    stalls = {m.group(1): name for name in names if (m := STALL.fullmatch(name))}

    def metric(row, column):
        return number(row.get(column, "nan")) if column else float("nan")

    # the stall reasons with the most warp cycles over all kernels (cycles per instruction x instructions), so the
    # long kernels choose them, not a short fill with a huge ratio; without instruction counts in the report, the
    # ratios summed. "selected" (issuing, not waiting) left out
    weights = [metric(row, "smsp__inst_executed.sum") for row in rows]

    def stalled_cycles(reason):
        cycles = (metric(row, stalls[reason]) * (w if w == w else 1.0) for row, w in zip(rows, weights))
        return sum(c for c in cycles if c == c)

    top = sorted((r for r in stalls if r != "selected"), key=stalled_cycles, reverse=True)[:reasons]
    percent_cols = [(head, next((n for n in names if n.startswith(prefix)), None)) for head, prefix in PERCENTS]
    scale = TO_MS.get(units.get("gpu__time_duration.sum", "nsecond"), float("nan"))

    head = (["ID", "kernel", "ms", "warp cycles per issued instruction"] + [f"stalled: {r}" for r in top]
            + [h for h, _ in percent_cols] + ["instructions (M)", "registers", "cycles (M)", "SM GHz"])
    ghz = TO_GHZ.get(units.get("sm__cycles_elapsed.avg.per_second", "cycle/second"), float("nan"))
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        values = [(metric(row, "gpu__time_duration.sum") * scale, ".3f"),
                  (sum(metric(row, c) for c in stalls.values()) if stalls else float("nan"), ".2f")]
        values += [(metric(row, stalls[r]), ".2f") for r in top]
        values += [(metric(row, column), ".1f") for _, column in percent_cols]
        values += [(metric(row, "smsp__inst_executed.sum") / 1e6, ".0f"),
                   (metric(row, "launch__registers_per_thread"), ".0f"),
                   (metric(row, "sm__cycles_elapsed.max") / 1e6, ".3f"),
                   (metric(row, "sm__cycles_elapsed.avg.per_second") * ghz, ".2f")]
        cells = [row["ID"], short_name(row["Kernel Name"])]
        cells += ["-" if value != value else format(value, spec) for value, spec in values]  # NaN: not collected
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", help="the output of `ncu -i REPORT --page raw --csv`")
    parser.add_argument("--reasons", type=int, default=6, help="how many stall reasons to show (the largest)")
    args = parser.parse_args()
    if not os.path.isfile(args.csv):
        parser.error(f"no file {args.csv!r}")
    print(table(*read(args.csv), reasons=args.reasons))


if __name__ == "__main__":
    main()
