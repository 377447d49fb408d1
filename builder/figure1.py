"""The paper's Figure 1 as numbers: per method and iteration, the final pairs' gap rescored by one fixed judge and
the chosen/rejected similarity under one fixed snapshot, each with its 95% bootstrap interval over prompts, and
each method against SR with a paired interval over the prompts both share.

Everything here reads builder/stats.py (`diagnostics`, `method_differences`): this module only picks the final
rows, puts the differences beside them and says in words what each interval shows; `plots.figure1_png` draws it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from builder import stats
from builder.errors import TsrError
from builder.store import Store

BASELINE = "sr"
FIGURES = {"rescored_gap": "gap", "similarity": "similarity"}  # column -> the table's short name

_TABLE_SCHEMA = {
    "iteration": pl.Int64, "method": pl.String, "pairs": pl.Int64,
    "rescored_pairs": pl.Int64, "rescored_gap": pl.Float64, "rescored_gap_ci_low": pl.Float64,
    "rescored_gap_ci_high": pl.Float64,
    "embedded_pairs": pl.Int64, "similarity": pl.Float64, "similarity_ci_low": pl.Float64,
    "similarity_ci_high": pl.Float64,
    "gap_vs_sr": pl.Float64, "gap_vs_sr_ci_low": pl.Float64, "gap_vs_sr_ci_high": pl.Float64,
    "gap_vs_sr_excludes_zero": pl.Boolean,
    "similarity_vs_sr": pl.Float64, "similarity_vs_sr_ci_low": pl.Float64, "similarity_vs_sr_ci_high": pl.Float64,
    "similarity_vs_sr_excludes_zero": pl.Boolean,
    "shared_prompts": pl.Int64, "reading": pl.String, "pair_version": pl.String,
}


@dataclass(frozen=True)
class Figure1:
    """The figure's rows: one per method and iteration (`table`, ordered by iteration then method)."""

    table: pl.DataFrame
    judge: str  # the rescoring judge's name, as the title shows it
    snapshot: str  # the embedding snapshot's name
    text_kind: str

    @property
    def title(self) -> str:
        return (f"Final pairs rescored by {self.judge}; similarity of mean hidden states ({self.text_kind}) "
                f"under {self.snapshot}")


def figure1(store: Store, *, judge: stats.JudgeKey, snapshot_id: str, text_kind: str = "response",
            versions: Sequence[str] | None = None, judge_name: str | None = None,
            snapshot_name: str | None = None) -> Figure1:
    """The rows of the figure and its table for the final pairs among `versions` (all in the store if None; the
    latest version per method and iteration wins)."""
    final = stats.final_rows(stats.diagnostics(store, snapshot_id=snapshot_id, text_kind=text_kind, judge=judge,
                                               versions=versions))
    if final.is_empty():
        raise TsrError(f"no final pairs in {store.root} to draw Figure 1 from")
    differences = pl.from_arrow(stats.method_differences(store, snapshot_id=snapshot_id, text_kind=text_kind,
                                                         judge=judge, baseline=BASELINE, versions=versions))
    assert isinstance(differences, pl.DataFrame)
    rows = []
    for row in final.sort("iteration", pl.col("method").replace_strict(
            {m: i for i, m in enumerate(stats.METHODS)}, default=len(stats.METHODS))).iter_rows(named=True):
        entry = {name: row.get(name) for name in _TABLE_SCHEMA if name in row}
        mine = differences.filter((pl.col("method") == row["method"]) & (pl.col("iteration") == row["iteration"]))
        for column, short in FIGURES.items():
            found = mine.filter(pl.col("figure") == column)
            if not found.is_empty():
                difference = found.row(0, named=True)
                entry[f"{short}_vs_sr"] = difference["mean_difference"]
                entry[f"{short}_vs_sr_ci_low"] = difference["ci_low"]
                entry[f"{short}_vs_sr_ci_high"] = difference["ci_high"]
                entry[f"{short}_vs_sr_excludes_zero"] = difference["excludes_zero"]
                entry["shared_prompts"] = difference["shared_prompts"]
        has_baseline = not final.filter((pl.col("method") == BASELINE)
                                        & (pl.col("iteration") == row["iteration"])).is_empty()
        entry["reading"] = reading(entry, row["method"], has_baseline)
        rows.append(entry)
    table = pl.DataFrame(rows, schema=_TABLE_SCHEMA)
    return Figure1(table, judge_name or judge.judge_id, snapshot_name or snapshot_id, text_kind)


def _fixed(value: float, *, sign: bool = False) -> str:
    """`value` to 3 decimals, without the "-0.000" a tiny negative number would print as."""
    text = f"{value:+.3f}" if sign else f"{value:.3f}"
    return text.replace("-0.000", "+0.000" if sign else "0.000")


def reading(entry: dict, method: str, has_baseline: bool) -> str:
    """What the paired intervals show for one row, in words: a difference is claimed only where its 95% interval
    excludes zero."""
    if method == BASELINE:
        return "baseline"
    if not has_baseline:
        return "no SR pairs at this iteration to compare with"
    parts = []
    for short, higher, lower in (("gap", "wider gap", "narrower gap"),
                                 ("similarity", "more alike", "less alike")):
        value, low, high = (entry.get(f"{short}_vs_sr{end}") for end in ("", "_ci_low", "_ci_high"))
        if value is None:
            parts.append(f"{short}: no prompt has a value for both methods")
        elif low is None:
            parts.append(f"{short}: {_fixed(value, sign=True)} (too few shared prompts for an interval)")
        else:
            shown = f"{short}: {_fixed(value, sign=True)} [{_fixed(low, sign=True)}, {_fixed(high, sign=True)}]"
            if entry.get(f"{short}_vs_sr_excludes_zero"):
                parts.append(f"{shown} excludes 0, {higher if value > 0 else lower} than SR")
            else:
                parts.append(f"{shown} includes 0, no difference shown")
    return "; ".join(parts)


def markdown(fig: Figure1) -> str:
    """The table as GitHub markdown: the figures with their intervals, and the reading."""

    def number(value) -> str:
        return "-" if value is None else _fixed(value)

    def interval(row: dict, name: str) -> str:
        low, high = row[f"{name}_ci_low"], row[f"{name}_ci_high"]
        return "-" if low is None else f"[{number(low)}, {number(high)}]"

    lines = ["| iter | method | pairs | gap (fixed judge) | 95% CI | similarity | 95% CI | reading vs SR |",
             "|---:|---|---:|---:|---|---:|---|---|"]
    for row in fig.table.iter_rows(named=True):
        lines.append(f"| {row['iteration']} | {row['method']} | {row['pairs']} | {number(row['rescored_gap'])} | "
                     f"{interval(row, 'rescored_gap')} | {number(row['similarity'])} | "
                     f"{interval(row, 'similarity')} | {row['reading']} |")
    return "\n".join(lines) + "\n"
