"""The evaluation results as one table (the `evals` named query), for `tsr stats --evals` and `tsr report`."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from builder.store import Store


def evals_table(store: Store) -> pa.Table:
    """One row per eval version (builder/queries/evals.sql)."""
    from builder import stats

    return stats.run_sql(store, stats.named_sql("evals"), reads=["evals"])


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def terminal_table(table: pa.Table) -> str:
    """A fixed-width terminal table of the main figures; csv, json and markdown carry every column."""
    columns = [
        ("kind", lambda r: r["kind"]),
        ("A / snapshot", lambda r: r["snapshot_id"][:12]),
        ("B", lambda r: (r["other_snapshot_id"] or "-")[:12]),
        ("judge", lambda r: (r["judge_id"] or "-")[:12]),
        ("prompts", lambda r: str(r["prompts"])),
        ("win / tie / loss", lambda r: "-" if r["win_rate"] is None else
         f"{_num(r['win_rate'])} / {_num(r['tie_rate'])} / {_num(r['loss_rate'])}"),
        ("score [95% CI]", lambda r: "-" if r["score"] is None else
         f"{_num(r['score'])} [{_num(r['score_ci_low'])}, {_num(r['score_ci_high'])}]"),
        ("tokens A / B", lambda r: f"{_num(r['mean_tokens'], 1)} / {_num(r['mean_other_tokens'], 1)}"),
        ("prompt strict / loose", lambda r: f"{_num(r['prompt_strict'])} / {_num(r['prompt_loose'])}"),
        ("instr. strict / loose", lambda r: f"{_num(r['instruction_strict'])} / {_num(r['instruction_loose'])}"),
        ("version", lambda r: r["eval_version"]),
    ]
    rows = table.to_pylist()
    cells = [[fn(row) for _, fn in columns] for row in rows]
    widths = [max([len(header)] + [len(c[i]) for c in cells]) for i, (header, _) in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()

    out = [line([h for h, _ in columns]), line(["-" * w for w in widths])] + [line(c) for c in cells]
    if not rows:
        out.append("(no evaluations in the store: tsr eval winrate, tsr eval ifeval)")
    return "\n".join(out) + "\n"
