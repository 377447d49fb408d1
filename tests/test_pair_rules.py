"""Pair rules: every golden case of shared/golden/pair_rules.json, one prompt at a time and all at once, plus one
hand-built test per rule of SPEC.md."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from builder.stages.pair_rules import (
    NO_SCORED_CURRENT,
    PAIR_COLUMNS,
    TIE,
    PairBuild,
    build_d1,
    build_d2,
    build_sr,
)

PHASES = ("d1", "d2", "sr")
SNAPSHOTS = {"current": "snap-mi", "past": "snap-m0", "future": "snap-mf"}


# The project's golden file lives in shared/golden beside the repo; tests/golden keeps a copy so that a clone on its
# own (CI, a user's machine) runs every case too. test_golden_copy_matches_shared catches the copy drifting.
SHARED_GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "pair_rules.json"
GOLDEN = Path(os.environ.get("TSR_GOLDEN") or (SHARED_GOLDEN if SHARED_GOLDEN.is_file() else
                                                Path(__file__).parent / "golden" / "pair_rules.json"))
CASES: list[dict[str, Any]] = json.loads(GOLDEN.read_text())["cases"]
CASE_PARAMS = [pytest.param(case, id=f"case{n}") for n, case in enumerate(CASES)]


def test_golden_copy_matches_shared() -> None:
    assert CASES, f"{GOLDEN} holds no cases"
    if not SHARED_GOLDEN.is_file():
        pytest.skip("no shared/golden beside this clone to compare the copy with")
    copy = Path(__file__).parent / "golden" / "pair_rules.json"
    assert json.loads(copy.read_text()) == json.loads(SHARED_GOLDEN.read_text()), (
        f"tests/golden/pair_rules.json differs from {SHARED_GOLDEN}: copy the new golden file in")


def scored_rows(
    prompt: str = "p",
    *,
    current: list[float | None] = (),  # type: ignore[assignment]
    past: list[float | None] = (),  # type: ignore[assignment]
    future: list[float | None] = (),  # type: ignore[assignment]
    past_offset: int = 0,
) -> pl.DataFrame:
    """A scored frame for one prompt, one row per listed score; generation ids are "<prompt>/<pool>/<index>".

    `past_offset` shifts the past pool's indices, as in stored data where M0's past samples are K..2K-1.
    """
    rows = []
    for pool, scores, offset in (("current", current, 0), ("past", past, past_offset), ("future", future, 0)):
        for i, score in enumerate(scores):
            index = i + offset
            rows.append((prompt, pool, index, f"{prompt}/{pool}/{index}", SNAPSHOTS[pool], score))
    return pl.DataFrame(
        rows,
        schema={"prompt_id": pl.String, "pool": pl.String, "sample_index": pl.Int32, "generation_id": pl.String,
                "snapshot_id": pl.String, "score": pl.Float64},
        orient="row",
    )


def case_frame(case: dict[str, Any], prompt: str, past_offset: int = 0) -> pl.DataFrame:
    return scored_rows(prompt, current=case["current"], past=case["past"], future=case["future"],
                       past_offset=past_offset)


def build_all(scored: pl.DataFrame) -> dict[str, PairBuild]:
    d1 = build_d1(scored)
    return {"d1": d1, "d2": build_d2(scored, d1), "sr": build_sr(scored)}


def pair_of(build: PairBuild, prompt: str) -> dict[str, Any] | None:
    """The kept pair of `prompt` as a dict, None if it has none (and then it must be in `dropped`)."""
    rows = build.pairs.filter(pl.col("prompt_id") == prompt)
    assert rows.height <= 1
    if rows.height == 0:
        assert build.dropped.filter(pl.col("prompt_id") == prompt).height == 1
        return None
    assert build.dropped.filter(pl.col("prompt_id") == prompt).height == 0
    return rows.row(0, named=True)


def ends(pair: dict[str, Any] | None) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """A pair as ((chosen pool, index), (rejected pool, index)), the shape the golden file uses."""
    if pair is None:
        return None
    return (pair["chosen_pool"], pair["chosen_sample_index"]), (pair["rejected_pool"], pair["rejected_sample_index"])


def assert_case(case: dict[str, Any], builds: dict[str, PairBuild], prompt: str, past_offset: int = 0) -> None:
    for phase in PHASES:
        pair = pair_of(builds[phase], prompt)
        expected = case[phase]
        if expected is None:
            assert pair is None, f"{case['name']}: {phase} should yield no pair, got {ends(pair)}"
            continue
        want = tuple((pool, index + (past_offset if pool == "past" else 0)) for pool, index in
                     (expected["chosen"], expected["rejected"]))
        assert ends(pair) == want, f"{case['name']}: {phase}"
        assert pair is not None
        # The scores and ids travel with the pick, and the gap is the strict difference.
        for side in ("chosen", "rejected"):
            pool, index = want[0] if side == "chosen" else want[1]
            assert pair[f"{side}_score"] == case[pool][index - (past_offset if pool == "past" else 0)]
            assert pair[f"{side}_generation_id"] == f"{prompt}/{pool}/{index}"
            assert pair[f"{side}_snapshot_id"] == SNAPSHOTS[pool]
        assert pair["gap"] == pair["chosen_score"] - pair["rejected_score"] > 0


# --- golden cases --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASE_PARAMS)
def test_golden_case_alone(case: dict[str, Any]) -> None:
    assert_case(case, build_all(case_frame(case, "p")), "p")


@pytest.mark.parametrize("past_offset", [0, 7])
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_golden_case_among_all(case: dict[str, Any], past_offset: int) -> None:
    """Every case as its own prompt in one shuffled frame: the vectorized rules must not mix prompts up."""
    frame = pl.concat([case_frame(c, f"case{n:02d}", past_offset) for n, c in enumerate(CASES)])
    builds = build_all(frame.sample(fraction=1.0, shuffle=True, seed=1))
    assert_case(case, builds, f"case{CASES.index(case):02d}", past_offset)
    for build in builds.values():
        counts = build.counts()
        assert counts["kept"] + counts[NO_SCORED_CURRENT] + counts[TIE] == len(CASES)
        assert build.pairs["prompt_id"].is_sorted() and build.dropped["prompt_id"].is_sorted()


# --- one rule at a time ----------------------------------------------------------------------------------------


def test_null_scores_never_take_part() -> None:
    scored = scored_rows(current=[None, 2, None, 1], past=[None, None], future=[None])
    builds = build_all(scored)
    assert ends(pair_of(builds["d1"], "p")) == (("current", 1), ("current", 3))
    assert ends(pair_of(builds["d2"], "p")) == (("current", 1), ("current", 3))
    assert ends(pair_of(builds["sr"], "p")) == (("current", 1), ("current", 3))


def test_no_scored_current_sample_means_no_pair() -> None:
    scored = pl.concat([
        scored_rows("all-null", current=[None, None], past=[0], future=[5]),
        scored_rows("past-only", past=[0, 1], future=[5]),  # absent from the current pool altogether
        scored_rows("future-only", future=[5]),
    ])
    for phase, build in build_all(scored).items():
        assert build.pairs.is_empty(), phase
        assert build.dropped.rows() == [("all-null", NO_SCORED_CURRENT), ("future-only", NO_SCORED_CURRENT),
                                        ("past-only", NO_SCORED_CURRENT)]


def test_ties_inside_a_pool_go_to_the_lowest_index() -> None:
    scored = scored_rows(current=[1, 4, 1, 4], past=[0, 3, 0], future=[6, 5, 6], past_offset=4)
    # Reversed input order must not change the pick: only sample_index breaks ties.
    for frame in (scored, scored.reverse()):
        builds = build_all(frame)
        assert ends(pair_of(builds["sr"], "p")) == (("current", 1), ("current", 0))
        assert ends(pair_of(builds["d1"], "p")) == (("current", 1), ("past", 4))
        assert ends(pair_of(builds["d2"], "p")) == (("future", 0), ("past", 4))


def test_anchoring_is_strict() -> None:
    scored = pl.concat([
        scored_rows("equal", current=[3, 2], past=[2, 4]),  # past worst only ties: rejected stays current
        scored_rows("below", current=[3, 2], past=[4, 1.5]),  # past worst strictly below: rejected is past
        scored_rows("no-past", current=[3, 2], past=[None]),  # past offers no candidate
    ])
    d1 = build_d1(scored)
    assert ends(pair_of(d1, "equal")) == (("current", 0), ("current", 1))
    assert ends(pair_of(d1, "below")) == (("current", 0), ("past", 1))
    assert ends(pair_of(d1, "no-past")) == (("current", 0), ("current", 1))


def test_the_past_never_supplies_the_chosen() -> None:
    d1 = build_d1(scored_rows(current=[2, 1], past=[5, 0]))
    assert ends(pair_of(d1, "p")) == (("current", 0), ("past", 1))


def test_ties_are_dropped() -> None:
    scored = scored_rows(current=[3, 3, 3], past=[3], future=[3])
    builds = build_all(scored)
    for phase, build in builds.items():
        assert build.pairs.is_empty(), phase
        assert build.dropped.rows() == [("p", TIE)]
        assert build.counts() == {NO_SCORED_CURRENT: 0, TIE: 1, "kept": 0}


def test_a_single_scored_sample_is_a_tie_with_itself() -> None:
    # Chosen and rejected are then the same generation; Phase 2 can still rescue it with a better future.
    builds = build_all(scored_rows(current=[None, 2], future=[3]))
    assert builds["d1"].dropped.rows() == [("p", TIE)]
    assert builds["sr"].dropped.rows() == [("p", TIE)]
    assert ends(pair_of(builds["d2"], "p")) == (("future", 0), ("current", 1))


def test_future_replaces_the_chosen_only_when_strictly_better() -> None:
    scored = pl.concat([
        scored_rows("equal", current=[4, 1], future=[4, 2]),
        scored_rows("better", current=[4, 1], future=[2, 4.000001, 4.000001]),
        scored_rows("worse", current=[4, 1], future=[3.9]),
        scored_rows("none-scored", current=[4, 1], future=[None]),
    ])
    d1 = build_d1(scored)
    d2 = build_d2(scored, d1)
    assert ends(pair_of(d2, "equal")) == (("current", 0), ("current", 1))
    assert ends(pair_of(d2, "better")) == (("future", 1), ("current", 1))
    assert ends(pair_of(d2, "worse")) == (("current", 0), ("current", 1))
    assert ends(pair_of(d2, "none-scored")) == (("current", 0), ("current", 1))


def test_d2_reuses_d1_rejected() -> None:
    scored = pl.concat([
        scored_rows("a", current=[3, 2], past=[1, 4], future=[5]),
        scored_rows("b", current=[4, 2], past=[2], future=[1]),
        scored_rows("tie", current=[2, 2], past=[2, 3], future=[2.5]),  # dropped by D1, rescued by D2
    ])
    d1 = build_d1(scored)
    d2 = build_d2(scored, d1)
    rejected = ["prompt_id", "rejected_generation_id", "rejected_score", "rejected_pool", "rejected_sample_index"]
    kept_in_d1 = d2.pairs.join(d1.pairs.select("prompt_id"), on="prompt_id", how="semi")
    assert kept_in_d1.select(rejected).equals(d1.pairs.select(rejected))
    assert d1.dropped.rows() == [("tie", TIE)]
    assert ends(pair_of(d2, "tie")) == (("future", 0), ("current", 0))
    # The bare pairs frame works as well as the PairBuild.
    assert build_d2(scored, d1.pairs).pairs.equals(d2.pairs)


def test_d2_rejects_a_d1_from_another_input() -> None:
    scored = scored_rows("a", current=[3, 2], past=[1], future=[5])
    other = scored_rows("a", current=[3, 2], past=[2.5], future=[5])  # past worst no longer below: other rejected
    with pytest.raises(ValueError, match="does not match Phase 1"):
        build_d2(scored, build_d1(other))
    with pytest.raises(ValueError, match="does not match Phase 1"):
        build_d2(scored, build_d1(scored).pairs.clear())


def test_continuous_scores_compare_exactly() -> None:
    scored = pl.concat([
        scored_rows("c", current=[3.0, 3.0000001], past=[3.0], future=[3.0000001]),
        scored_rows("r", current=[3.0000001, 3.0], past=[2.9999999], future=[3.0000002]),
    ])
    builds = build_all(scored)
    # 3.0000001 > 3.0: kept as a pair with a tiny but positive gap; past 3.0 only ties the current worst.
    assert ends(pair_of(builds["sr"], "c")) == (("current", 1), ("current", 0))
    assert ends(pair_of(builds["d1"], "c")) == (("current", 1), ("current", 0))
    assert ends(pair_of(builds["d2"], "c")) == (("current", 1), ("current", 0))  # an equal future does not replace
    assert pair_of(builds["sr"], "c")["gap"] == pytest.approx(1e-7)  # type: ignore[index]
    assert ends(pair_of(builds["d1"], "r")) == (("current", 0), ("past", 0))
    assert ends(pair_of(builds["d2"], "r")) == (("future", 0), ("past", 0))


def test_sr_is_best_vs_worst_of_the_current_pool_only() -> None:
    scored = scored_rows(current=[2, 5, 0.5, 3], past=[-1, 0], future=[9])
    sr = build_sr(scored)
    assert ends(pair_of(sr, "p")) == (("current", 1), ("current", 2))
    assert sr.pairs.equals(build_sr(scored.filter(pl.col("pool") == "current")).pairs)


def test_dropped_reasons_and_counts() -> None:
    scored = pl.concat([
        scored_rows("kept", current=[1, 3], past=[0], future=[4]),
        scored_rows("tie", current=[2, 2], past=[2], future=[1]),
        scored_rows("rescued", current=[2, 2], future=[3]),
        scored_rows("null", current=[None], past=[1], future=[2]),
        scored_rows("absent", past=[1, 2]),
    ])
    builds = build_all(scored)
    assert builds["d1"].counts() == {NO_SCORED_CURRENT: 2, TIE: 2, "kept": 1}
    assert builds["d2"].counts() == {NO_SCORED_CURRENT: 2, TIE: 1, "kept": 2}
    assert builds["sr"].counts() == {NO_SCORED_CURRENT: 2, TIE: 2, "kept": 1}
    assert builds["d1"].dropped.rows() == [("absent", NO_SCORED_CURRENT), ("null", NO_SCORED_CURRENT),
                                           ("rescued", TIE), ("tie", TIE)]
    assert builds["d2"].pairs["prompt_id"].to_list() == ["kept", "rescued"]


def test_output_columns_and_types() -> None:
    scored = pl.concat([scored_rows("b", current=[1, 3], past=[0]), scored_rows("a", current=[2, 1])])
    for build in build_all(scored).values():
        assert dict(build.pairs.schema) == PAIR_COLUMNS
        assert build.pairs["prompt_id"].to_list() == ["a", "b"]
        assert build.dropped.columns == ["prompt_id", "reason"]


def test_empty_input() -> None:
    for build in build_all(scored_rows()).values():
        assert build.pairs.is_empty() and build.dropped.is_empty()
        assert dict(build.pairs.schema) == PAIR_COLUMNS
        assert build.counts() == {NO_SCORED_CURRENT: 0, TIE: 0, "kept": 0}


def test_input_types_are_cast() -> None:
    # Integer scores and Int64 indices (as json or a careless join gives them) mean the same thing.
    scored = scored_rows(current=[1, 3], past=[0]).with_columns(
        pl.col("sample_index").cast(pl.Int64), pl.col("score").cast(pl.Int64)
    )
    assert ends(pair_of(build_d1(scored), "p")) == (("current", 1), ("past", 0))


def test_nan_scores_count_as_unscored() -> None:
    scored = scored_rows(current=[float("nan"), 3, 1])
    assert ends(pair_of(build_sr(scored), "p")) == (("current", 1), ("current", 2))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop("snapshot_id"), "lacks columns"),
        (lambda f: f.with_columns(pl.lit("elsewhere").alias("pool")), "unknown pools"),
        (lambda f: pl.concat([f, f.head(1)]), "share a"),
        (lambda f: f.with_columns(pl.lit(None, dtype=pl.String).alias("generation_id")), "nulls outside"),
    ],
)
def test_bad_input_raises(mutate: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_d1(mutate(scored_rows(current=[1, 2])))


# --- against a plain-Python reference ----------------------------------------------------------------------------


def _reference(pools: dict[str, list[float | None]]) -> dict[str, tuple[tuple[str, int], tuple[str, int]] | None]:
    """SPEC's rules written the obvious way, one prompt at a time, as (pool, index) pairs per phase."""

    def pick(pool: str, best: bool) -> tuple[float, str, int] | None:
        scored = [(s, i) for i, s in enumerate(pools[pool]) if s is not None]
        if not scored:
            return None
        score = max(s for s, _ in scored) if best else min(s for s, _ in scored)
        return score, pool, min(i for s, i in scored if s == score)

    def pair(chosen: tuple[float, str, int], rejected: tuple[float, str, int]):
        return ((chosen[1], chosen[2]), (rejected[1], rejected[2])) if chosen[0] > rejected[0] else None

    best, worst = pick("current", True), pick("current", False)
    if best is None or worst is None:
        return dict.fromkeys(PHASES)
    past, future = pick("past", False), pick("future", True)
    rejected = past if past is not None and past[0] < worst[0] else worst
    chosen2 = future if future is not None and future[0] > best[0] else best
    return {"d1": pair(best, rejected), "d2": pair(chosen2, rejected), "sr": pair(best, worst)}


def test_matches_a_plain_python_reference_on_random_prompts() -> None:
    import random

    rng = random.Random(0)
    values: list[float | None] = [None, 0, 1, 2, 3, 3.5, 4, 5]  # few values, so ties are common
    prompts = {
        f"p{n:03d}": {pool: [rng.choice(values) for _ in range(rng.randint(0, 4))] for pool in SNAPSHOTS}
        for n in range(300)
    }
    frame = pl.concat([scored_rows(pid, **pools) for pid, pools in prompts.items()])
    builds = build_all(frame.sample(fraction=1.0, shuffle=True, seed=2))
    for pid, pools in prompts.items():
        if not any(pools.values()):
            continue  # a prompt with no rows is not in the input at all
        got = {phase: ends(pair_of(builds[phase], pid)) for phase in PHASES}
        assert got == _reference(pools), (pid, pools)


# --- against the builders these replaced ---------------------------------------------------------------------------

# Prompt ids of every shape the fast paths care about: short ones, ones of 16+ bytes (sorted by their first 16 bytes),
# long ones sharing those 16 bytes (so the plain string sort must take over), and non-ASCII ones.
_ID_SHAPES = ("p{n}", "{n:020x}", "0123456789abcdef-{n}", "prompt-é-{n}", "préfixe-€-{n:012d}")


def random_scored(seed: int) -> pl.DataFrame:
    """A random scored frame: random K, pools present or absent, null and NaN scores, small integer scores (heavy
    ties) or floats (with -0.0, negatives and infinities), prompts only in the past or the future, stored (K..2K-1)
    or pool-local past indices, missing samples, rows in random order."""
    import random

    rng = random.Random(seed)
    k = rng.randint(1, 6)
    past_offset = rng.choice([0, k])
    pools = [pool for pool in SNAPSHOTS if rng.random() < 0.85] or ["current"]
    if rng.random() < 0.5:
        values: list[float | None] = [None, float("nan"), 0, 1, 2, 3]
    else:
        values = [None, float("nan"), -0.0, 0.0, -1.5, 0.25, 2.5, 2.5000001, 4.75, float("inf"), float("-inf")]
    shape = rng.choice(_ID_SHAPES)
    rows = []
    for n in range(rng.randint(0, 30)):
        prompt = shape.format(n=n * 7919)
        present = [pool for pool in pools if rng.random() < 0.8]
        for pool in present:
            offset = past_offset if pool == "past" else 0
            for index in rng.sample(range(k), rng.randint(0, k)):
                rows.append((prompt, pool, index + offset, f"{prompt}/{pool}/{index + offset}", SNAPSHOTS[pool],
                             rng.choice(values)))
    rng.shuffle(rows)
    return pl.DataFrame(rows, schema={"prompt_id": pl.String, "pool": pl.String, "sample_index": pl.Int32,
                                      "generation_id": pl.String, "snapshot_id": pl.String, "score": pl.Float64},
                        orient="row")


def assert_same_as_reference(scored: pl.DataFrame) -> None:
    from polars.testing import assert_frame_equal

    from tests import pair_rules_reference as reference

    new_d1, old_d1 = build_d1(scored), reference.build_d1(scored)
    builds = {"sr": (build_sr(scored), reference.build_sr(scored)), "d1": (new_d1, old_d1),
              "d2": (build_d2(scored, new_d1), reference.build_d2(scored, old_d1))}
    for phase, (new, old) in builds.items():
        for part in ("pairs", "dropped"):
            try:
                assert_frame_equal(getattr(new, part), getattr(old, part))
            except AssertionError as error:
                raise AssertionError(f"{phase} {part}: {error}") from None


@pytest.mark.parametrize("seed", range(40))
def test_matches_the_reference_builders_on_random_frames(seed: int) -> None:
    assert_same_as_reference(random_scored(seed))


def test_a_hash_collision_falls_back_to_the_prompt_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    # A group key under which most prompts collide: the check must notice, and the pass on the strings must give
    # the reference's result.
    import builder.stages.pair_rules as rules

    monkeypatch.setattr(rules, "_prompt_key", lambda: pl.col("prompt_id").str.len_bytes().cast(pl.UInt64))
    for seed in range(8):
        assert_same_as_reference(random_scored(seed))
    with pytest.raises(ValueError, match="2 rows share a"):
        build_d1(pl.concat([scored_rows("a", current=[1, 2]), scored_rows("b", current=[3]),
                            scored_rows("a", current=[5])]))


def test_wide_sample_indices_are_checked_the_slow_way() -> None:
    # Indices spread over more than 64 values do not fit the duplicate check's bit mask.
    scored = scored_rows(current=[1, 2], past=[0, 3], past_offset=100)
    assert ends(pair_of(build_d1(scored), "p")) == (("current", 1), ("past", 100))
    assert_same_as_reference(scored)
    with pytest.raises(ValueError, match="2 rows share a"):
        build_d1(pl.concat([scored, scored.tail(1)]))


def test_signed_zeros_are_equal_scores() -> None:
    # -0.0 == 0.0, so between them the lowest index wins, in a pool and across pools (the incumbent stays).
    scored = pl.concat([
        scored_rows("a", current=[1, 0.0, -0.0], past=[-0.0], future=[-0.0, 0.0]),
        scored_rows("b", current=[1, -0.0, 0.0], past=[0.0]),
        scored_rows("c", current=[-0.0, 0.0], future=[0.0, 1]),
    ])
    builds = build_all(scored)
    assert ends(pair_of(builds["sr"], "a")) == (("current", 0), ("current", 1))
    assert ends(pair_of(builds["d1"], "b")) == (("current", 0), ("current", 1))
    assert ends(pair_of(builds["d2"], "c")) == (("future", 1), ("current", 0))
    assert_same_as_reference(scored)
