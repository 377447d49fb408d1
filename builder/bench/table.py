"""`make bench`: every benchmark that has an obvious alternative, measured in the same run, in one table.

Each row is one figure of tsr and the same work done the obvious other way on the same inputs, their ratio
(the alternative's time over tsr's: above 1 means tsr is faster) and the limit it is held to.

    python -m builder.bench.table [--only judge,generate,train,pairs,stats] [--data tsr-data]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    what: str
    tsr: str  # tsr's figure, with its unit
    alternative: str  # what it is compared with
    baseline: str  # the alternative's figure
    ratio: float  # alternative's time / tsr's time
    limit: str  # what the issue holds the figure to ("" when none)
    ok: bool  # the limit holds (and both sides gave the same result where that is checked)


# name -> module; each module has measure(**options) -> list[dict] with Row's fields
BENCHMARKS = {
    "judge": "builder.bench.judge",
    "generate": "builder.bench.generate",
    "train": "builder.bench.dpo",
    "pairs": "builder.bench.pairs",
    "stats": "builder.bench.stats",
}


def render(rows: list[Row]) -> str:
    header = ("what", "tsr", "alternative", "alternative's figure", "ratio", "limit", "ok")
    cells = [header] + [(r.what, r.tsr, r.alternative, r.baseline, f"{r.ratio:.2f}x", r.limit or "-",
                         "yes" if r.ok else "NO") for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated: " + ", ".join(BENCHMARKS))
    parser.add_argument("--data", default="tsr-data", help="store that holds (or receives) the embedded model")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")

    print(f"{os.cpu_count()} CPUs; benchmarks: {', '.join(names)}", flush=True)
    rows: list[Row] = []
    for name in names:
        started = time.perf_counter()
        module = importlib.import_module(BENCHMARKS[name])
        options = {"data": args.data} if "data" in module.measure.__code__.co_varnames else {}
        measured = [Row(**row) for row in module.measure(**options)]
        rows.extend(measured)
        print(f"[{name} done in {time.perf_counter() - started:.0f} s]", flush=True)
        print(render(measured), flush=True)
    print("\n" + render(rows))
    if not all(row.ok for row in rows):
        print("some figures miss their limit (ok = NO)", file=sys.stderr)


if __name__ == "__main__":
    main()
