"""Pair statistics and the paper's two vanishing-gap diagnostics, all as SQL over the store.

Every figure comes from a named query in builder/queries (users read and run the same text with
`tsr sql --query NAME`); this module only filters those queries by method and iteration, joins the diagnostics
together, renders tables, and computes the two inputs a query cannot: hidden-state means (cached in the
`embeddings` table) and rescored judgments by a fixed judge (ordinary judgments, through the judge stage).

    pair_stats       prompts, kept, ties, unparsable, scores, gap, pools, lengths: per pair version
    gap_diagnostics  mean gap per method, iteration and phase (final = the phase that trains M_{i+1})
    rescored_gap     the gap under every judge that scored both sides of the pairs
    pair_similarity  mean cosine of chosen vs rejected mean last-layer hidden states, per embedding snapshot
    score_histogram  chosen and rejected score histograms

Similarity, the choice made here: by default each response is encoded alone (`text_kind="response"`), so the cosine
compares the two answers; with `chat`, prompt + response go through the chat template, and the shared prompt
prefix (identical hidden states under a causal model) pulls every cosine toward 1. Either way the mean is over all
tokens of what was encoded, under one snapshot the user picks (e.g. M0 for every iteration, so iterations compare).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from builder.errors import TsrError
from builder.stages.embed import check_text_kind
from builder.store import Store

METHODS = ("sr", "tsr-past", "tsr")  # display order: baseline first
FINAL_PHASE = {"sr": "sr", "tsr-past": "d1", "tsr": "d2"}  # the pairs that train M_{i+1}
FORMATS = ("table", "csv", "json", "markdown")

# The tables each query reads; only their files are checksummed before a query runs.
_READS = {
    "pair_stats": ["pairs", "generations"],
    "gap_diagnostics": ["pairs"],
    "rescored_gap": ["pairs", "judgments"],
    "pair_similarity": ["pairs", "embeddings"],
    "score_histogram": ["pairs"],
}


@dataclass(frozen=True)
class JudgeKey:
    """The settings that identify one judge's scores in the judgments table (see rescored_gap.sql)."""

    judge_id: str
    template_hash: str
    mode: str
    judge_samples: int
    temperature: float
    max_new_tokens: int


# ---- queries ----------------------------------------------------------------------------------------------------


def run_sql(store: Store, sql: str, params: dict[str, Any] | None = None, *, reads: Sequence[str] = ()) -> pa.Table:
    """Run `sql` over the store's views, checksumming only the files of the tables it reads."""
    import duckdb

    from builder.sql import check_read_only, connect

    store.verify(tables=list(reads))
    con = connect(store, verify=False)
    try:
        check_read_only(con, sql)
        relation = con.sql(sql, params=params or None)
        # duckdb 2 renamed fetch_arrow_table to to_arrow_table; support both (as builder/sql.py does).
        fetch = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table
        return fetch()
    except duckdb.Error as exc:
        raise TsrError(f"SQL error: {str(exc).strip().splitlines()[0]}") from None
    finally:
        con.close()


def named_sql(name: str) -> str:
    """The text of a named query (builder/queries/NAME.sql)."""
    from builder.sql import named_query

    return named_query(name)


def _named(name: str) -> str:
    # A named query is one statement; the newline ends its trailing `-- comment`, if any, inside a subquery.
    return "(\n" + named_sql(name).strip().rstrip(";") + "\n)"


def _filters(method: str | None, iteration: int | None, prefix: str = "",
             versions: Sequence[str] | None = None) -> tuple[str, dict[str, Any]]:
    """A WHERE clause for one method, one iteration and a list of pair versions (each where given)."""
    clauses, params = ["true"], {}
    if versions is not None:
        clauses.append(f"{prefix}pair_version in (select unnest($versions::varchar[]))")
        params["versions"] = list(versions)
    if method is not None:
        clauses.append(f"{prefix}method = $method")
        params["method"] = method
    if iteration is not None:
        clauses.append(f"{prefix}iteration = $iteration")
        params["iteration"] = iteration
    return " and ".join(clauses), params


# The row order of each query's output (the same as the query's own ORDER BY, which a wrapping filter may lose).
_ORDER = {
    "pair_stats": "method, iteration, phase, created_at, pair_version",
    "gap_diagnostics": "method, iteration, phase, created_at, pair_version",
    "rescored_gap": "method, iteration, phase, created_at, pair_version, rescoring_judge_id",
    "pair_similarity": "method, iteration, phase, created_at, pair_version, embedding_snapshot_id, text_kind",
    "score_histogram": "method, iteration, phase, created_at, pair_version, side, bin_start",
}


def query(store: Store, name: str, *, method: str | None = None, iteration: int | None = None) -> pa.Table:
    """One of the stats' named queries, optionally only the rows of one method and/or iteration."""
    where, params = _filters(method, iteration)
    sql = f"select * from {_named(name)} where {where} order by {_ORDER[name]}"
    return run_sql(store, sql, params, reads=_READS[name])


def pair_stats(store: Store, *, method: str | None = None, iteration: int | None = None) -> pa.Table:
    """`pair_stats.sql`: one row per pair version."""
    return query(store, "pair_stats", method=method, iteration=iteration)


def diagnostics(
    store: Store,
    *,
    method: str | None = None,
    iteration: int | None = None,
    snapshot_id: str | None = None,
    text_kind: str = "response",
    judge: JudgeKey | None = None,
    versions: Sequence[str] | None = None,
    intervals: bool = True,
) -> pa.Table:
    """The gap (and, when asked for, the rescored gap and the similarity) per method, iteration and phase; only
    the pair versions in `versions` where given (an experiment's, in a store that holds several runs); without the
    interval columns when `intervals` is False (a caller that only picks versions).

    Columns: method, iteration, phase, final, pairs, mean_gap, gap_ci_low, gap_ci_high, [rescored_pairs,
    rescored_gap, rescored_gap_ci_low, rescored_gap_ci_high, rescored_chosen, rescored_rejected], [embedded_pairs,
    similarity, similarity_ci_low, similarity_ci_high], pair_version, judge_id, created_at. The intervals are 95%
    percentile bootstrap intervals over the pairs (one per prompt) of each version, seeded by the version and the
    figure (builder/intervals.py).
    """
    where, params = _filters(method, iteration, "g.", versions)
    columns = ["g.method", "g.iteration", "g.phase", "g.final", "g.pairs", "g.mean_gap"]
    joins = []
    reads = {"pairs"}
    if judge is not None:
        columns += ["r.rescored_pairs", "r.mean_rescored_gap as rescored_gap",
                    "r.mean_rescored_chosen as rescored_chosen", "r.mean_rescored_rejected as rescored_rejected"]
        joins.append(
            f"left join (select * from {_named('rescored_gap')} where rescoring_judge_id = $judge_id "
            "and template_hash = $template_hash and mode = $mode and judge_samples = $judge_samples "
            "and temperature = $temperature and max_new_tokens = $max_new_tokens) r using (pair_version)"
        )
        params.update(judge_id=judge.judge_id, template_hash=judge.template_hash, mode=judge.mode,
                      judge_samples=judge.judge_samples, temperature=judge.temperature,
                      max_new_tokens=judge.max_new_tokens)
        reads.add("judgments")
    if snapshot_id is not None:
        check_text_kind(text_kind)
        columns += ["coalesce(s.embedded_pairs, 0) as embedded_pairs", "s.mean_similarity as similarity"]
        joins.append(
            f"left join (select * from {_named('pair_similarity')} where embedding_snapshot_id = $snapshot_id "
            "and text_kind = $text_kind) s using (pair_version)"
        )
        params.update(snapshot_id=snapshot_id, text_kind=text_kind)
        reads.add("embeddings")
    columns += ["g.pair_version", "g.judge_id", "g.created_at"]
    sql = (f"select {', '.join(columns)} from {_named('gap_diagnostics')} g {' '.join(joins)} where {where} "
           "order by g.method, g.iteration, g.phase, g.created_at, g.pair_version")
    table = run_sql(store, sql, params, reads=sorted(reads))
    return _with_intervals(store, table, snapshot_id, text_kind, judge) if intervals else table


def _with_intervals(store: Store, table: pa.Table, snapshot_id: str | None, text_kind: str,
                    judge: JudgeKey | None) -> pa.Table:
    """Add the 95% bootstrap interval over prompts (builder/intervals.py) beside the mean gap, the rescored gap and
    the similarity."""
    from builder.intervals import interval_seed, mean_interval

    versions = table.column("pair_version").to_pylist()
    for name, after, values in _figures_per_pair(store, versions, snapshot_id, text_kind, judge):
        bounds = [mean_interval(list(values.get(version, {}).values()), interval_seed(version, name))
                  for version in versions]
        at = table.column_names.index(after) + 1
        table = table.add_column(at, f"{name}_ci_low", pa.array([low for low, _ in bounds], pa.float64()))
        table = table.add_column(at + 1, f"{name}_ci_high", pa.array([high for _, high in bounds], pa.float64()))
    return table


def _figures_per_pair(store: Store, versions: list[str], snapshot_id: str | None, text_kind: str,
                      judge: JudgeKey | None) -> list[tuple[str, str, dict[str, dict[str, float]]]]:
    """(figure, the diagnostics column it is the mean of, pair version -> prompt -> value) for the gap, and the
    rescored gap and the similarity where asked for."""
    figures = [("gap", "mean_gap", _per_pair(store, "select pair_version, prompt_id, gap as value from pairs "
                                                    "where pair_version in (select unnest($versions))",
                                             {"versions": versions}, ["pairs"]))]
    if judge is not None:  # per pair, what rescored_gap.sql averages
        figures.append(("rescored_gap", "rescored_gap", _per_pair(
            store,
            "with scores as (select generation_id, avg(score) as score from judgments where judge_id = $judge_id "
            "and template_hash = $template_hash and mode = $mode and judge_samples = $judge_samples "
            "and temperature = $temperature and max_new_tokens = $max_new_tokens group by generation_id) "
            "select p.pair_version, p.prompt_id, c.score - r.score as value from pairs p "
            "join scores c on c.generation_id = p.chosen_generation_id "
            "join scores r on r.generation_id = p.rejected_generation_id "
            "where p.pair_version in (select unnest($versions)) and c.score is not null and r.score is not null",
            {"versions": versions, **dataclasses.asdict(judge)}, ["pairs", "judgments"])))
    if snapshot_id is not None:
        figures.append(("similarity", "similarity", _per_pair(
            store,
            "select p.pair_version, p.prompt_id, list_cosine_similarity(c.mean_hidden, r.mean_hidden) as value "
            "from pairs p "
            "join embeddings c on c.generation_id = p.chosen_generation_id "
            "join embeddings r on r.generation_id = p.rejected_generation_id "
            "where p.pair_version in (select unnest($versions)) and c.snapshot_id = $snapshot_id "
            "and r.snapshot_id = $snapshot_id and c.text_kind = $text_kind and r.text_kind = $text_kind",
            {"versions": versions, "snapshot_id": snapshot_id, "text_kind": text_kind}, ["pairs", "embeddings"])))
    return figures


def method_differences(store: Store, *, method: str | None = None, iteration: int | None = None,
                       snapshot_id: str | None = None, text_kind: str = "response", judge: JudgeKey | None = None,
                       baseline: str = "sr", versions: Sequence[str] | None = None) -> pa.Table:
    """Each method's final pairs against the baseline's (SR) at the same iteration, prompt by prompt: the mean
    difference of the gap (and of the rescored gap and the similarity where asked for) over the prompts both
    versions have a value for, its 95% paired bootstrap interval (the shared prompts resampled together) and
    whether that interval excludes zero."""
    from builder.intervals import interval_seed, mean_interval

    # the final versions only: their per-prompt values are read below, so no interval of the versions is needed
    final = final_rows(diagnostics(store, iteration=iteration, snapshot_id=snapshot_id, text_kind=text_kind,
                                   judge=judge, versions=versions, intervals=False))
    version_of = {(row["method"], row["iteration"]): row["pair_version"] for row in final.iter_rows(named=True)}
    figures = _figures_per_pair(store, sorted(version_of.values()), snapshot_id, text_kind, judge)
    rows = []
    for (name, n), version in sorted(version_of.items(), key=lambda item: (item[0][1], METHODS.index(item[0][0]))):
        base = version_of.get((baseline, n))
        if name == baseline or base is None or (method is not None and name != method):
            continue
        for figure, _, values in figures:
            ours, theirs = values.get(version, {}), values.get(base, {})
            differences = [ours[p] - theirs[p] for p in sorted(set(ours) & set(theirs))
                           if not (math.isnan(ours[p]) or math.isnan(theirs[p]))]
            low, high = mean_interval(differences, interval_seed(version, base, figure))
            rows.append({
                "iteration": n, "method": name, "baseline": baseline, "figure": figure,
                "shared_prompts": len(differences),
                "mean_difference": sum(differences) / len(differences) if differences else None,
                "ci_low": low, "ci_high": high,
                "excludes_zero": None if low is None else bool(low > 0 or high < 0),
                "pair_version": version, "baseline_pair_version": base,
            })
    schema = pa.schema([("iteration", pa.int64()), ("method", pa.string()), ("baseline", pa.string()),
                        ("figure", pa.string()), ("shared_prompts", pa.int64()), ("mean_difference", pa.float64()),
                        ("ci_low", pa.float64()), ("ci_high", pa.float64()), ("excludes_zero", pa.bool_()),
                        ("pair_version", pa.string()), ("baseline_pair_version", pa.string())])
    return pa.Table.from_pylist(rows, schema=schema)


def _per_pair(store: Store, sql: str, params: dict[str, Any], reads: list[str]) -> dict[str, dict[str, float]]:
    """pair version -> prompt -> the pair's value (`sql` selects pair_version, prompt_id and value), in prompt
    order (a pair version holds one pair per prompt)."""
    rows = run_sql(store, sql + " order by pair_version, prompt_id", params, reads=reads).to_pylist()
    values: dict[str, dict[str, float]] = {}
    for row in rows:
        values.setdefault(row["pair_version"], {})[row["prompt_id"]] = row["value"]
    return values


def final_rows(table: pa.Table) -> pl.DataFrame:
    """The final-phase rows of a diagnostics table, one per method and iteration (the latest pair version wins
    where a data root holds several, e.g. built with different judges)."""
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    if frame.is_empty():
        return frame
    return (frame.filter(pl.col("final")).sort("created_at", "pair_version")
            .unique(["method", "iteration"], keep="last").sort("method", "iteration"))


def pair_generation_ids(store: Store, *, method: str | None = None, iteration: int | None = None,
                        versions: Sequence[str] | None = None) -> list[str]:
    """The chosen and rejected generation ids of the selected pairs, each once, sorted."""
    where, params = _filters(method, iteration, "v.", versions)
    sql = ("with v as (select version as pair_version, config_json ->> 'method' as method, "
           "cast(config_json ->> 'iteration' as integer) as iteration from versions where stage = 'pairs'), "
           "p as (select chosen_generation_id, rejected_generation_id from pairs "
           f"join v using (pair_version) where {where}) "
           "select distinct generation_id from (select chosen_generation_id as generation_id from p "
           "union all select rejected_generation_id from p) order by generation_id")
    return run_sql(store, sql, params, reads=["pairs"]).column("generation_id").to_pylist()


# ---- rendering --------------------------------------------------------------------------------------------------


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _interval(low: Any, high: Any) -> str:
    return "-" if low is None else f"[{_number(low)}, {_number(high)}]"


def _pair(a: Any, b: Any) -> str:
    return f"{_number(a)} / {_number(b)}"


# The terminal table of pair_stats: the figures that matter side by side; csv, json and markdown carry every column.
_STATS_COLUMNS: list[tuple[str, Callable[[dict], str]]] = [
    ("method", lambda r: r["method"]),
    ("iter", lambda r: _number(r["iteration"])),
    ("phase", lambda r: r["phase"]),
    ("prompts", lambda r: _number(r["prompts"])),
    ("kept", lambda r: _number(r["pairs_kept"])),
    ("ties", lambda r: _number(r["ties_dropped"])),
    ("no score", lambda r: _number(r["no_scored_current"])),
    ("unparsable", lambda r: _number(r["unparsable"])),
    ("chosen mean / med", lambda r: _pair(r["chosen_mean"], r["chosen_median"])),
    ("rejected mean / med", lambda r: _pair(r["rejected_mean"], r["rejected_median"])),
    ("gap mean / med", lambda r: _pair(r["gap_mean"], r["gap_median"])),
    ("chosen M_i / M_f", lambda r: f"{r['chosen_from_m_i']} / {r['chosen_from_m_f']}"),
    ("rejected M0 / M_i", lambda r: f"{r['rejected_from_m0']} / {r['rejected_from_m_i']}"),
    ("tokens chosen / rej",
     lambda r: f"{_number(r['chosen_tokens_mean'], 1)} / {_number(r['rejected_tokens_mean'], 1)}"),
    ("version", lambda r: r["pair_version"]),
]

_DIAGNOSTIC_COLUMNS: list[tuple[str, str, Callable[[dict], str]]] = [
    ("method", "method", lambda r: r["method"]),
    ("iter", "iteration", lambda r: _number(r["iteration"])),
    ("phase", "phase", lambda r: r["phase"]),
    ("final", "final", lambda r: _number(r["final"])),
    ("pairs", "pairs", lambda r: _number(r["pairs"])),
    ("gap", "mean_gap", lambda r: _number(r["mean_gap"])),
    ("gap 95% CI", "gap_ci_low", lambda r: _interval(r["gap_ci_low"], r["gap_ci_high"])),
    ("rescored pairs", "rescored_pairs", lambda r: _number(r["rescored_pairs"])),
    ("rescored gap", "rescored_gap", lambda r: _number(r["rescored_gap"])),
    ("rescored 95% CI", "rescored_gap_ci_low",
     lambda r: _interval(r["rescored_gap_ci_low"], r["rescored_gap_ci_high"])),
    ("embedded pairs", "embedded_pairs", lambda r: _number(r["embedded_pairs"])),
    ("similarity", "similarity", lambda r: _number(r["similarity"])),
    ("similarity 95% CI", "similarity_ci_low",
     lambda r: _interval(r["similarity_ci_low"], r["similarity_ci_high"])),
    ("version", "pair_version", lambda r: r["pair_version"]),
]


_DIFFERENCE_COLUMNS: list[tuple[str, Callable[[dict], str]]] = [
    ("iter", lambda r: _number(r["iteration"])),
    ("method", lambda r: r["method"]),
    ("vs", lambda r: r["baseline"]),
    ("figure", lambda r: r["figure"]),
    ("prompts", lambda r: _number(r["shared_prompts"])),
    ("difference", lambda r: _number(r["mean_difference"])),
    ("95% CI", lambda r: _interval(r["ci_low"], r["ci_high"])),
    ("excludes 0", lambda r: "-" if r["excludes_zero"] is None else ("yes" if r["excludes_zero"] else "no")),
]


def terminal_table(table: pa.Table, kind: str) -> str:
    """A fixed-width table for the terminal: `kind` is "stats" (pair_stats), "diagnostics" or "differences"."""
    rows = table.to_pylist()
    if kind == "stats":
        columns = _STATS_COLUMNS
    elif kind == "differences":
        columns = _DIFFERENCE_COLUMNS
    else:
        columns = [(header, fn) for header, name, fn in _DIAGNOSTIC_COLUMNS if name in table.column_names]
    cells = [[fn(row) for _, fn in columns] for row in rows]
    widths = [max([len(header)] + [len(c[i]) for c in cells]) for i, (header, _) in enumerate(columns)]
    left = {"method", "phase", "version", "vs", "figure"}

    def line(values: list[str]) -> str:
        return "  ".join(v.ljust(w) if columns[i][0] in left else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths))).rstrip()

    out = [line([h for h, _ in columns]), line(["-" * w for w in widths])]
    out += [line(c) for c in cells]
    if not rows:
        out.append("(no pair versions in the store)")
    return "\n".join(out) + "\n"


def markdown_table(table: pa.Table, *, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table of every column (floats rounded to `digits`)."""
    names = table.column_names
    lines = ["| " + " | ".join(names) + " |", "|" + "|".join("---" for _ in names) + "|"]
    for row in table.to_pylist():
        lines.append("| " + " | ".join(_number(row[n], digits).replace("|", "\\|") for n in names) + " |")
    return "\n".join(lines) + "\n"


def render(table: pa.Table, fmt: str, *, kind: str = "stats") -> str:
    """Render a stats or diagnostics table as table (terminal), csv, json (one object per line) or markdown."""
    if fmt == "table":
        return terminal_table(table, kind)
    if fmt == "markdown":
        return markdown_table(table)
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    if fmt == "csv":
        return frame.write_csv()
    if fmt == "json":
        return "".join(json.dumps(row, default=str, ensure_ascii=False) + "\n" for row in frame.to_dicts())
    raise TsrError(f"unknown format {fmt!r}; use {', '.join(FORMATS)}")


def write_output(text: str, out: Path | None) -> str | None:
    if out is None:
        return text
    from builder.readers import write_text_atomic

    write_text_atomic(Path(out), text)  # a missing folder or a folder is one line; never a partial file
    return None
