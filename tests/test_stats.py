"""`tsr stats` and the diagnostics on a hand-built store, checked against figures worked out by hand."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from builder import stats
from builder.snapshot import Snapshot, register
from builder.stages.embed import embed
from builder.store import Store
from schemas.tables import GENERATIONS, JUDGMENTS, PAIRS, PROMPTS

_T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)

# generation id -> (snapshot, completion tokens)
GENERATION_ROWS = {
    "g1": ("m0", 10), "g2": ("m0", 20), "g3": ("m0", 30), "g4": ("m0", 40), "g5": ("m0", 50), "g6": ("m0", 60),
    "f1": ("mf", 5), "f2": ("mf", 15),
}

# (pair version, method, iteration, phase, manifest stats, pairs as
#  (prompt, chosen id, chosen score, chosen pool, rejected id, rejected score, rejected pool))
PAIR_VERSIONS = [
    ("sr1", "sr", 1, "sr",
     {"prompts": 4, "samples": 8, "tie": 1, "no_scored_current": 1, "unparsable": 2, "parse_errors": 3},
     [("p1", "g1", 4.0, "current", "g2", 1.0, "current"),
      ("p2", "g3", 4.6, "current", "g4", 3.0, "current")]),
    ("tsrd1", "tsr", 1, "d1",
     {"prompts": 3, "samples": 12, "tie": 0, "no_scored_current": 0, "unparsable": 1, "parse_errors": 1},
     [("q1", "g1", 4.0, "current", "g5", 0.0, "past"),
      ("q2", "g3", 5.0, "current", "g4", 3.0, "current"),
      ("q3", "g2", 2.0, "current", "g6", 1.0, "past")]),
    ("tsrd2", "tsr", 1, "d2",
     {"prompts": 3, "samples": 18, "tie": 0, "no_scored_current": 0, "unparsable": 4, "parse_errors": 5},
     [("q1", "f1", 5.0, "future", "g5", 0.0, "past"),
      ("q3", "f2", 3.0, "future", "g6", 1.0, "past")]),
    ("sr2", "sr", 2, "sr",
     {"prompts": 2, "samples": 4, "tie": 2, "no_scored_current": 0, "unparsable": 0, "parse_errors": 0},
     []),
]

# The fixed judge J (template t): g4 was judged twice under the same settings (two seeds): 4 and 2, mean 3.
J_SCORES = [("g1", 3.0), ("g2", 2.0), ("g3", 4.0), ("g4", 4.0), ("g4", 2.0), ("g5", 1.0), ("g6", None),
            ("f1", 5.0), ("f2", 2.0)]
J_KEY = stats.JudgeKey("J", "t", "generate", 1, 0.7, 48)

# Hidden-state means of each response text under snapshot m0; g6 is empty (a zero vector).
VECTORS = {"text g1": [1.0, 0.0], "text g2": [0.0, 1.0], "text g3": [1.0, 1.0], "text g4": [1.0, 0.0],
           "text g5": [2.0, 0.0], "text g6": [0.0, 0.0], "text f1": [1.0, 0.0], "text f2": [3.0, 4.0]}


def _write(store: Store, table: str, rows: list[dict], schema: pa.Schema, version: str, partition: dict,
           **manifest) -> None:
    store.write_version(version=version, stage=manifest.pop("stage", table), code_version=1, table=table,
                        data=pa.Table.from_pylist(rows, schema=schema), partition=partition, **manifest)


def build_store(root: Path) -> Store:
    """Snapshots m0, mf, J; generations; the four pair versions above; judge J's judgments (and one by
    another template, which must not count)."""
    store = Store.open(root, create=True)
    with store.writing():
        for sid, role in [("m0", "m0"), ("mf", "future"), ("J", "judge"), ("m1", "iteration")]:
            register(store, Snapshot(sid, sid, role, hub_repo=f"x/{sid}", temporary=role == "future",
                                     parent_snapshot_id="m0" if sid in ("mf", "m1") else None,
                                     pair_version={"mf": "tsrd1", "m1": "tsrd2"}.get(sid)))
        prompts = [{"prompt_id": f"prompt-{gid}", "text": f"question {gid}", "source": "hand", "set_version": "set",
                    "chunk": 1, "position": i} for i, gid in enumerate(GENERATION_ROWS)]
        _write(store, "prompts", prompts, PROMPTS, "set", {"set": "set"})
        for snap in ("m0", "mf"):
            rows = [{"generation_id": gid, "snapshot_id": snap, "prompt_id": f"prompt-{gid}", "sample_index": i,
                     "text": f"text {gid}", "prompt_tokens": 3, "completion_tokens": tokens,
                     "finish_reason": "stop", "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 64, "seed": i,
                     "backend": "fake", "version": f"gen-{snap}", "created_at": _T0}
                    for i, (gid, (s, tokens)) in enumerate(GENERATION_ROWS.items()) if s == snap]
            _write(store, "generations", rows, GENERATIONS, f"gen-{snap}", {"snapshot": snap}, snapshot_id=snap)
        for version, method, iteration, phase, counts, pairs in PAIR_VERSIONS:
            rows = [{"pair_id": f"{version}-{p}", "pair_version": version, "method": method, "iteration": iteration,
                     "phase": phase, "prompt_id": p, "chosen_generation_id": c, "rejected_generation_id": r,
                     "chosen_score": cs, "rejected_score": rs, "gap": cs - rs, "chosen_pool": cp,
                     "rejected_pool": rp, "chosen_sample_index": 0, "rejected_sample_index": 1,
                     "chosen_snapshot_id": GENERATION_ROWS[c][0], "rejected_snapshot_id": GENERATION_ROWS[r][0],
                     "judge_id": "m0", "created_at": _T0}
                    for p, c, cs, cp, r, rs, rp in pairs]
            parents = ["tsrd1"] if version == "tsrd2" else []
            _write(store, "pairs", rows, PAIRS, version,
                   {"method": method, "iteration": str(iteration), "phase": phase}, stage="pairs",
                   config={"method": method, "iteration": iteration, "phase": phase, "judge": "m0",
                           "policy": "m0"},
                   parents=parents, snapshot_id="m0", stats={**counts, "kept": len(rows)})
        judgments = [_judgment(gid, score, "t", i) for i, (gid, score) in enumerate(J_SCORES)]
        judgments.append(_judgment("g4", 0.0, "other-template", 99))
        _write(store, "judgments", judgments, JUDGMENTS, "judged-J", {"judge": "J"}, stage="judge", snapshot_id="J")
    return Store.open(root)


def _judgment(gid: str, score: float | None, template: str, seed: int) -> dict:
    return {"judgment_id": f"J-{gid}-{template}-{seed}", "generation_id": gid, "judge_id": "J",
            "template_hash": template, "mode": "generate", "scored_by": None if score is None else "generate",
            "judge_samples": 1, "score": score, "raw_reply": "", "parse_error": None if score is not None else "x",
            "digit_probs": None, "temperature": 0.7, "max_new_tokens": 48, "seed": seed, "version": "judged-J",
            "created_at": _T0}


class FakeEncoder:
    """hidden_state_means from a table of texts; records what it encoded."""

    def __init__(self):
        self.texts: list[str] = []

    def render(self, messages, continuation=""):
        return f"<user>{messages[0]['content']}<assistant>{continuation}"

    def hidden_state_means(self, texts):
        self.texts.extend(texts)
        return [VECTORS.get(t, [1.0, 2.0]) for t in texts]


def embed_all(store: Store, snapshot_id: str = "m0", text_kind: str = "response") -> tuple[FakeEncoder, object]:
    encoder = FakeEncoder()
    with store.writing():
        result = embed(store, snapshot_id=snapshot_id, generation_ids=stats.pair_generation_ids(store),
                             text_kind=text_kind, load_generator=lambda: encoder, batch_size=3)
    return encoder, result


@pytest.fixture
def store(data_root) -> Store:
    return build_store(data_root)


def rows_by_version(table: pa.Table) -> dict[str, dict]:
    return {row["pair_version"]: row for row in table.to_pylist()}


# ---- pair statistics --------------------------------------------------------------------------------------------


def _expected(key, counts, scores, pools, tokens) -> dict:
    names = ["method", "iteration", "phase",
             "prompts", "pairs_kept", "ties_dropped", "no_scored_current", "unparsable", "parse_errors",
             "judged_samples",
             "chosen_mean", "chosen_median", "rejected_mean", "rejected_median", "gap_mean", "gap_median",
             "chosen_from_m_i", "chosen_from_m_f", "rejected_from_m0", "rejected_from_m_i",
             "chosen_tokens_mean", "rejected_tokens_mean"]
    return dict(zip(names, [*key, *counts, *scores, *pools, *tokens], strict=True))


# counts: prompts, kept, ties, no scored current, unparsable, parse errors, judged samples (from the manifests)
# scores: chosen mean, median, rejected mean, median, gap mean, median; pools: chosen M_i, M_f, rejected M0, M_i
# tokens: mean completion tokens of chosen and rejected (generations g1..g6: 10..60, f1 5, f2 15)
EXPECTED_STATS = {
    "sr1": _expected(("sr", 1, "sr"), (4, 2, 1, 1, 2, 3, 8), (4.3, 4.3, 2.0, 2.0, 2.3, 2.3), (2, 0, 0, 2),
                     (20.0, 30.0)),
    "tsrd1": _expected(("tsr", 1, "d1"), (3, 3, 0, 0, 1, 1, 12), (11 / 3, 4.0, 4 / 3, 1.0, 7 / 3, 2.0),
                       (3, 0, 2, 1), (20.0, 50.0)),
    "tsrd2": _expected(("tsr", 1, "d2"), (3, 2, 0, 0, 4, 5, 18), (4.0, 4.0, 0.5, 0.5, 3.5, 3.5), (0, 2, 2, 0),
                       (10.0, 55.0)),
    "sr2": _expected(("sr", 2, "sr"), (2, 0, 2, 0, 0, 0, 4), (None,) * 6, (0, 0, 0, 0), (None, None)),
}


def assert_row(row: dict, expected: dict) -> None:
    for key, value in expected.items():
        if isinstance(value, float):
            assert row[key] == pytest.approx(value, rel=1e-9), key
        else:
            assert row[key] == value, key


def test_pair_stats_match_hand_computed_figures(store):
    table = stats.pair_stats(store)
    assert [r["pair_version"] for r in table.to_pylist()] == ["sr1", "sr2", "tsrd1", "tsrd2"]
    for version, row in rows_by_version(table).items():
        assert_row(row, EXPECTED_STATS[version])
        assert row["judge_id"] == "m0" and row["policy_id"] == "m0"


def test_pair_stats_filters_by_method_and_iteration(store):
    assert [r["pair_version"] for r in stats.pair_stats(store, method="tsr").to_pylist()] == ["tsrd1", "tsrd2"]
    assert [r["pair_version"] for r in stats.pair_stats(store, iteration=2).to_pylist()] == ["sr2"]
    assert [r["pair_version"] for r in stats.pair_stats(store, method="sr", iteration=1).to_pylist()] == ["sr1"]
    assert stats.pair_stats(store, method="tsr-past").num_rows == 0


def test_named_query_is_what_stats_runs(tsr, store):
    via_sql = pl.read_csv(tsr("sql", "--query", "pair_stats", "--format", "csv").stdout.encode())
    via_stats = pl.read_csv(tsr("stats", "--format", "csv").stdout.encode())
    assert via_sql.equals(via_stats)
    assert via_sql.columns[:5] == ["method", "iteration", "phase", "prompts", "pairs_kept"]
    listed = {line.split()[0] for line in tsr("sql", "--list").output.splitlines()}
    assert {"pair_stats", "gap_diagnostics", "rescored_gap", "pair_similarity", "score_histogram",
            "lineage_nodes", "lineage_edges"} <= listed


def test_stats_formats(tsr, store, tmp_path):
    lines = tsr("stats", "--format", "json", "--method", "tsr").stdout.splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["pair_version"] for r in rows] == ["tsrd1", "tsrd2"]
    assert_row(rows[0], EXPECTED_STATS["tsrd1"])

    markdown = tsr("stats", "--format", "markdown", "--iter", "1").stdout.splitlines()
    assert markdown[0].startswith("| method | iteration | phase | prompts | pairs_kept |")
    assert set(markdown[1]) <= {"|", "-"} and len(markdown) == 2 + 3
    assert "| sr | 1 | sr | 4 | 2 | 1 | 1 | 2 | 3 | 8 | 4.300 | 4.300 | 2.000 |" in markdown[2]

    table = tsr("stats").output.splitlines()
    assert table[0].split()[:6] == ["method", "iter", "phase", "prompts", "kept", "ties"]
    sr1 = next(line for line in table if line.rstrip().endswith("sr1"))
    assert "4.300 / 4.300" in sr1 and "2.300 / 2.300" in sr1 and "20.0 / 30.0" in sr1 and "2 / 0" in sr1
    sr2 = next(line for line in table if line.rstrip().endswith("sr2"))
    assert "- / -" in sr2

    out = tmp_path / "stats.csv"
    assert tsr("stats", "--format", "csv", "--out", str(out)).output == ""
    assert pl.read_csv(out).height == 4


def test_stats_on_an_empty_store_and_bad_input(tsr, data_root):
    result = tsr("stats", expect=1)
    assert result.output.startswith("Error: no store at") and len(result.output.splitlines()) == 1
    Store.init(data_root)
    assert "(no pair versions in the store)" in tsr("stats").output
    assert tsr("stats", "--format", "csv").stdout.startswith("method,iteration,phase,prompts")
    bad = tsr("stats", "--snapshot", "nope", expect=1)
    assert bad.output.startswith("Error: no snapshot 'nope'")


# ---- diagnostics ------------------------------------------------------------------------------------------------


def test_gap_diagnostics(store):
    table = stats.diagnostics(store)
    assert table.column_names == ["method", "iteration", "phase", "final", "pairs", "mean_gap", "gap_ci_low",
                                  "gap_ci_high", "pair_version", "judge_id", "created_at"]
    rows = rows_by_version(table)
    assert_row(rows["sr1"], {"final": True, "pairs": 2, "mean_gap": 2.3})
    assert_row(rows["sr2"], {"final": True, "pairs": 0, "mean_gap": None})
    assert_row(rows["tsrd1"], {"final": False, "pairs": 3, "mean_gap": 7 / 3})
    assert_row(rows["tsrd2"], {"final": True, "pairs": 2, "mean_gap": 3.5})
    final = stats.final_rows(table)
    assert final.select("method", "iteration", "pair_version").rows() == [("sr", 1, "sr1"), ("sr", 2, "sr2"),
                                                                          ("tsr", 1, "tsrd2")]


def test_rescored_gap_by_a_fixed_judge(store):
    rows = rows_by_version(stats.diagnostics(store, judge=J_KEY))
    # J: g1 3, g2 2, g3 4, g4 mean(4, 2) = 3, g5 1, g6 unscored, f1 5, f2 2; the other template never counts.
    assert_row(rows["sr1"], {"rescored_pairs": 2, "rescored_gap": ((3 - 2) + (4 - 3)) / 2, "rescored_chosen": 3.5,
                                 "rescored_rejected": 2.5})
    # q3's rejected is unscored by J: left out
    assert_row(rows["tsrd1"], {"rescored_pairs": 2, "rescored_gap": ((3 - 1) + (4 - 3)) / 2})
    assert_row(rows["tsrd2"], {"rescored_pairs": 1, "rescored_gap": 5 - 1})
    assert rows["sr2"]["rescored_pairs"] is None and rows["sr2"]["rescored_gap"] is None
    # Under the other template only g4 was scored: no pair has both sides, so nothing is rescored.
    other = stats.JudgeKey("J", "other-template", "generate", 1, 0.7, 48)
    assert {r["rescored_gap"] for r in stats.diagnostics(store, judge=other).to_pylist()} == {None}


def test_similarity_is_computed_once_and_cached(store):
    encoder, first = embed_all(store)
    assert first.computed == 8 and first.reused == 0
    assert sorted(encoder.texts) == sorted(VECTORS)  # the responses alone, each once
    rows = rows_by_version(stats.diagnostics(store, snapshot_id="m0"))
    half = 1 / math.sqrt(2)
    assert_row(rows["sr1"], {"embedded_pairs": 2})
    assert rows["sr1"]["similarity"] == pytest.approx((0 + half) / 2, rel=1e-6)
    assert rows["tsrd1"]["embedded_pairs"] == 2  # q3's rejected is empty: no cosine
    assert rows["tsrd1"]["similarity"] == pytest.approx((1 + half) / 2, rel=1e-6)
    assert rows["tsrd2"]["embedded_pairs"] == 1 and rows["tsrd2"]["similarity"] == pytest.approx(1.0, rel=1e-6)
    assert rows["sr2"]["embedded_pairs"] == 0 and rows["sr2"]["similarity"] is None

    def never():
        raise AssertionError("the model must not load when everything is cached")

    with store.writing():
        again = embed(store, snapshot_id="m0", generation_ids=stats.pair_generation_ids(store),
                            load_generator=never)
        partly = embed(store, snapshot_id="m0", generation_ids=["g1", "g2"], load_generator=never)
    assert (again.computed, partly.computed, partly.reused) == (0, 0, 2)
    embedded = pl.from_arrow(store.read("embeddings"))
    assert embedded.height == 8 and embedded["embedding_id"].is_unique().all()
    assert {m.data["stage"] for m in store.manifests(table="embeddings")} == {"embed"}
    # Another snapshot or text kind is another cache: none of it mixes into m0's figures.
    chat_encoder, _ = embed_all(store, snapshot_id="m1", text_kind="chat")
    assert chat_encoder.texts[0] == "<user>question f1<assistant>text f1"
    similarity = stats.diagnostics(store, snapshot_id="m1", text_kind="chat").column("similarity").to_pylist()
    assert similarity == [pytest.approx(1.0), None, pytest.approx(1.0), pytest.approx(1.0)]  # one default vector
    assert rows_by_version(stats.diagnostics(store, snapshot_id="m0"))["sr1"]["similarity"] == pytest.approx(
        (0 + half) / 2, rel=1e-6)


def _plain_bootstrap(values: list[float], seed: int, resamples: int = 2000) -> tuple[float, float]:
    """The percentile bootstrap written out in plain Python: the same resample indices (one numpy draw with the
    seed), means as sums, percentiles by linear interpolation between the sorted means."""
    import numpy as np

    picks = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values))).tolist()
    means = sorted(sum(values[i] for i in row) / len(row) for row in picks)

    def percentile(q: float) -> float:
        position = q / 100 * (len(means) - 1)
        below = math.floor(position)
        above = min(below + 1, len(means) - 1)
        return means[below] + (means[above] - means[below]) * (position - below)

    return percentile(2.5), percentile(97.5)


def test_intervals_are_a_seeded_percentile_bootstrap_over_prompts(store):
    from builder.intervals import interval_seed

    embed_all(store)
    rows = rows_by_version(stats.diagnostics(store, snapshot_id="m0"))
    half = 1 / math.sqrt(2)
    # the pairs' gaps and cosines, in the order the interval reads them (prompt order)
    cases = {("tsrd1", "gap"): [4.0, 2.0, 1.0], ("sr1", "gap"): [3.0, 1.6], ("sr1", "similarity"): [0.0, half],
             ("tsrd1", "similarity"): [1.0, half]}  # q3's empty response has no cosine
    for (version, name), values in cases.items():
        low, high = _plain_bootstrap(values, interval_seed(version, name))
        tolerance = 1e-9 if name == "gap" else 1e-6  # cosines come from float32 hidden states
        assert rows[version][f"{name}_ci_low"] == pytest.approx(low, abs=tolerance)
        assert rows[version][f"{name}_ci_high"] == pytest.approx(high, abs=tolerance)
        assert min(values) <= low < high <= max(values)
    # one pair (tsrd2's one cosine) or none (sr2) has no spread: no interval
    assert rows["tsrd2"]["similarity_ci_low"] is None and rows["sr2"]["gap_ci_low"] is None
    assert rows["tsrd2"]["gap_ci_low"] == pytest.approx(_plain_bootstrap([5.0, 2.0], interval_seed("tsrd2", "gap"))[0])
    # under the fixed judge J, tsrd1's pairs rescore to 3 - 1 and 4 - mean(4, 2); q3's unscored side is left out
    rescored = rows_by_version(stats.diagnostics(store, judge=J_KEY))["tsrd1"]
    low, high = _plain_bootstrap([2.0, 1.0], interval_seed("tsrd1", "rescored_gap"))
    assert (rescored["rescored_gap_ci_low"], rescored["rescored_gap_ci_high"]) == (pytest.approx(low),
                                                                                   pytest.approx(high))
    assert 1.0 <= low < high <= 2.0
    # seeded: the same figures on every run, and a row's interval does not depend on the other rows shown
    assert rows_by_version(stats.diagnostics(store, snapshot_id="m0", method="tsr"))["tsrd1"] == rows["tsrd1"]


def test_diagnostics_cli_reuses_cached_embeddings(tsr, store):
    embed_all(store)
    out = tsr("stats", "--snapshot", "m0", "--format", "csv").stdout
    frame = pl.read_csv(out.encode())
    assert frame.columns == ["method", "iteration", "phase", "final", "pairs", "mean_gap", "gap_ci_low",
                             "gap_ci_high", "embedded_pairs", "similarity", "similarity_ci_low",
                             "similarity_ci_high", "pair_version", "judge_id", "created_at"]
    assert frame.filter(pl.col("pair_version") == "tsrd2")["similarity"][0] == pytest.approx(1.0, rel=1e-6)
    table = tsr("stats", "--diagnostics", "--snapshot", "m0", "--method", "sr").output
    assert table.splitlines()[0].split() == ["method", "iter", "phase", "final", "pairs", "gap", "gap", "95%", "CI",
                                             "embedded", "pairs", "similarity", "similarity", "95%", "CI",
                                             "version"]
    assert len(table.splitlines()) == 4


def test_score_histogram(store):
    frame = pl.from_arrow(stats.query(store, "score_histogram", method="sr"))
    assert frame.select("iteration", "side", "bin_start", "pairs").rows() == [
        (1, "chosen", 4.0, 1), (1, "chosen", 4.5, 1), (1, "rejected", 1.0, 1), (1, "rejected", 3.0, 1)]


def _pair_version(store: Store, version: str, method: str, phase: str, gaps: dict[str, float]) -> None:
    rows = [{"pair_id": f"{version}-{p}", "pair_version": version, "method": method, "iteration": 1,
             "phase": phase, "prompt_id": p, "chosen_generation_id": f"c-{version}-{p}",
             "rejected_generation_id": f"r-{version}-{p}", "chosen_score": 1.0 + gap, "rejected_score": 1.0,
             "gap": gap, "chosen_pool": "current", "rejected_pool": "current", "chosen_sample_index": 0,
             "rejected_sample_index": 1, "chosen_snapshot_id": "m0", "rejected_snapshot_id": "m0",
             "judge_id": "m0", "created_at": _T0} for p, gap in gaps.items()]
    _write(store, "pairs", rows, PAIRS, version, {"method": method, "iteration": "1", "phase": phase},
           stage="pairs", config={"method": method, "iteration": 1, "phase": phase, "judge": "m0", "policy": "m0"},
           snapshot_id="m0", stats={"kept": len(rows)})


def test_method_differences_are_paired_over_shared_prompts(tmp_path, tsr):
    from builder.intervals import interval_seed

    store = Store.open(tmp_path / "paired", create=True)
    sr = {"a": 0.5, "b": 1.0, "c": 0.25, "d": 2.0, "e": 1.5}
    tsr_final = {"a": 2.0, "b": 1.5, "c": 1.25, "d": 3.0, "f": 9.0}  # e and f are in one version only
    with store.writing():
        _pair_version(store, "sr-1", "sr", "sr", sr)
        _pair_version(store, "tsr-1-d1", "tsr", "d1", {"a": 5.0})
        _pair_version(store, "tsr-1-d2", "tsr", "d2", tsr_final)
    (row,) = stats.method_differences(store).to_pylist()
    differences = [1.5, 0.5, 1.0, 1.0]  # a, b, c, d: TSR's final (D2) minus SR's, prompt by prompt
    low, high = _plain_bootstrap(differences, interval_seed("tsr-1-d2", "sr-1", "gap"))
    assert row == {"iteration": 1, "method": "tsr", "baseline": "sr", "figure": "gap", "shared_prompts": 4,
                   "mean_difference": pytest.approx(1.0), "ci_low": pytest.approx(low), "ci_high": pytest.approx(high),
                   "excludes_zero": True, "pair_version": "tsr-1-d2", "baseline_pair_version": "sr-1"}
    assert 0.5 <= low <= high <= 1.5
    out = tsr("--data", str(store.root), "stats", "--differences").stdout.splitlines()
    assert out[0].split() == ["iter", "method", "vs", "figure", "prompts", "difference", "95%", "CI", "excludes", "0"]
    assert out[2].split()[:6] == ["1", "tsr", "sr", "gap", "4", "1.000"] and out[2].split()[-1] == "yes"
    assert stats.method_differences(store, method="tsr-past").num_rows == 0  # no tsr-past pairs in this store


def test_the_diagnostics_of_a_list_of_pair_versions(store):
    """An experiment's versions in a store that holds others: only those rows, their generations, their intervals."""
    everything = rows_by_version(stats.diagnostics(store, judge=J_KEY))
    chosen = rows_by_version(stats.diagnostics(store, judge=J_KEY, versions=["sr1", "tsrd2"]))
    assert set(chosen) == {"sr1", "tsrd2"} and len(everything) == 4
    for version, row in chosen.items():
        assert row == everything[version]  # the same figures and intervals, whatever else the store holds
    pairs = pl.from_arrow(store.read("pairs")).filter(pl.col("pair_version").is_in(["sr1", "tsrd2"]))
    assert stats.pair_generation_ids(store, versions=["sr1", "tsrd2"]) == sorted(
        set(pairs["chosen_generation_id"]) | set(pairs["rejected_generation_id"]))
    assert stats.diagnostics(store, versions=[]).num_rows == 0
