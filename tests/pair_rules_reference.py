"""The pair builders as they were before issue 19, kept verbatim as the reference the fast ones must equal.

tests/test_pair_rules.py checks builder/stages/pair_rules.py against these builders on many random frames, and
builder/bench/pairs.py times both (it loads this file by path). Nothing else imports it; do not change the rules
here: it is the record of what "identical results" means. The original module docstring follows.

The pair rules of SPEC.md as pure table functions: judged samples in, preference pairs and drop reasons out.

Input (`scored`): one row per judged sample, with columns
    prompt_id, pool ("current" | "past" | "future"), sample_index, generation_id, snapshot_id, score (null = unparsable)
where "current" is M_i's samples, "past" is M0's samples and "future" is M_f's samples, all judged by M_i.

Every rule is one small table operation (filter, sort, keep the first row per prompt, join); there is no loop over
prompts or rows, no I/O and no store access. The golden cases (shared/golden/pair_rules.json) are the authority:
tests/test_pair_rules.py checks every one of them.

Rules fixed here (SPEC "Rules the paper leaves open"):
- null scores never take part, so a pool with no scored sample offers no candidate;
- a prompt with no scored sample of M_i (the current pool) yields no pair, whatever the other pools hold;
- ties inside a pool go to the lowest sample index; only the order of sample indices matters, so the past pool may
  carry its stored indices K..2K-1 or pool-local ones 0..K-1;
- a challenger from another pool (past worst for the rejected, future best for the chosen) replaces the incumbent
  only when strictly better: ties between pools go to the incumbent;
- scores compare exactly as stored (no rounding), and a pair is kept only if chosen's score > rejected's.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

POOLS = ("current", "past", "future")

# The input contract; columns are cast to these types, so integer golden scores or Int64 indices are accepted.
SCORED_COLUMNS: dict[str, pl.DataType] = {
    "prompt_id": pl.String(),
    "pool": pl.String(),
    "sample_index": pl.Int32(),
    "generation_id": pl.String(),
    "snapshot_id": pl.String(),
    "score": pl.Float64(),
}
_SAMPLE = tuple(SCORED_COLUMNS)  # column order of a sample row, and of a picked candidate
_SIDE_FIELDS = ("generation_id", "score", "pool", "sample_index", "snapshot_id")  # copied to chosen_* / rejected_*

PAIR_COLUMNS: dict[str, pl.DataType] = {
    "prompt_id": pl.String(),
    "chosen_generation_id": pl.String(),
    "rejected_generation_id": pl.String(),
    "chosen_score": pl.Float64(),
    "rejected_score": pl.Float64(),
    "gap": pl.Float64(),
    "chosen_pool": pl.String(),
    "rejected_pool": pl.String(),
    "chosen_sample_index": pl.Int32(),
    "rejected_sample_index": pl.Int32(),
    "chosen_snapshot_id": pl.String(),
    "rejected_snapshot_id": pl.String(),
}

# Why a prompt yields no pair. No other reason can arise in any phase: a prompt with a scored current sample always
# has a chosen and a rejected (M_i's own best and worst), and in Phase 2 the future only replaces a chosen that is
# already >= the rejected, so its replacement is strictly above it.
NO_SCORED_CURRENT = "no_scored_current"  # M_i has no scored sample for the prompt (or the prompt is not in its pool)
TIE = "tie"  # the chosen's score is not strictly above the rejected's
REASONS = (NO_SCORED_CURRENT, TIE)

_RANK = "_rank"  # pool precedence when scores tie across pools: 0 = incumbent, 1 = challenger


@dataclass(frozen=True)
class PairBuild:
    """The result of one pair rule: kept pairs and, for every other prompt of the input, why it has none.

    Attributes:
        pairs: one row per kept prompt, columns PAIR_COLUMNS, sorted by prompt_id.
        dropped: one row per prompt without a pair, columns prompt_id, reason (one of REASONS), sorted by prompt_id.
    """

    pairs: pl.DataFrame
    dropped: pl.DataFrame

    def counts(self) -> dict[str, int]:
        """Prompts per drop reason (every reason listed, zeros included) plus "kept"."""
        counts = dict.fromkeys(REASONS, 0)
        for reason, n in self.dropped.group_by("reason").len().iter_rows():
            counts[reason] = int(n)
        counts["kept"] = self.pairs.height
        return counts


def build_sr(scored: pl.DataFrame) -> PairBuild:
    """Self-Rewarding: on the current pool alone, chosen = M_i's best, rejected = M_i's worst, ties dropped.

    Rows of the past and future pools are ignored (their prompts still appear in `dropped` if M_i has none).
    """
    samples = _normalize(scored)
    current = _pool(samples, "current", rank=0)
    return _assemble(samples, _pick(current, best=True), _pick(current, best=False))


def build_d1(scored: pl.DataFrame) -> PairBuild:
    """TSR Phase 1, anchored rejection (SPEC steps 3-5).

    chosen = M_i's best; rejected = M0's worst if strictly below M_i's worst, else M_i's worst;
    kept only if chosen's score is strictly above rejected's.
    """
    samples = _normalize(scored)
    return _assemble(samples, *_phase1(samples))


def build_d2(scored: pl.DataFrame, d1: PairBuild | pl.DataFrame) -> PairBuild:
    """TSR Phase 2, future-guided chosen (SPEC steps 8-10).

    chosen = M_f's best if its score is strictly above Phase 1's chosen, else Phase 1's chosen;
    rejected = Phase 1's rejected; kept only if chosen's score is strictly above rejected's.

    What the golden cases fix about the parts SPEC leaves implicit:
    - Phase 2 starts from Phase 1's candidate pair of *every* prompt with a scored M_i sample, including prompts
      that D1 dropped as a tie. Case "phase 1 tie dropped, the future rescues the prompt in phase 2": current
      [2,2,2], past [4,2,3] gives the Phase 1 pair current#0 vs current#0 (a tie, not in D1), and D2 keeps
      future#0 (3) vs current#0 (2). So D2 cannot be built from D1's kept pairs alone: the Phase 1 candidates are
      recomputed from `scored`, and `d1` is used to check that they agree with what Phase 1 actually kept.
    - "Phase 1's best" is D1's chosen, i.e. M_i's best over the current pool only, never the best of all 2K
      samples: in that same case the past holds a 4, yet a future 3 replaces the current 2.
    - The future replaces the chosen only when strictly better (case "a future response equal to the current
      best does not replace it"), and a prompt with no scored M_i sample yields no pair even if the future scores
      (case "no scored current sample: no chosen, no pair, even if the future scores").

    Args:
        scored: the same frame build_d1 was given, plus the future pool's samples.
        d1: build_d1's result on `scored`, or its `pairs` frame.

    Raises:
        ValueError: if `d1` does not hold exactly the pairs Phase 1 yields on `scored` (a different input, or
            judgments that changed in between), since "the same rejected as Phase 1" would then be ill-defined.
    """
    samples = _normalize(scored)
    chosen1, rejected = _phase1(samples)
    _check_d1(d1, _assemble(samples, chosen1, rejected).pairs)
    future = _pool(samples, "future", rank=1).join(chosen1.select("prompt_id"), on="prompt_id", how="semi")
    chosen = _pick(pl.concat([chosen1.with_columns(pl.lit(0, dtype=pl.Int8).alias(_RANK)), future]), best=True)
    return _assemble(samples, chosen, rejected)


def _phase1(samples: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Phase 1's candidate chosen and rejected per prompt, before the strictness filter."""
    current = _pool(samples, "current", rank=0)
    chosen = _pick(current, best=True)
    # Only prompts that have a chosen can pair; restricting the past pool keeps a past-only prompt from
    # producing a lone rejected candidate.
    past = _pool(samples, "past", rank=1).join(chosen.select("prompt_id"), on="prompt_id", how="semi")
    # The worst of current and past together, ties to the current pool: this is exactly "M0's worst if strictly
    # below M_i's worst, else M_i's worst".
    rejected = _pick(pl.concat([current, past]), best=False)
    return chosen, rejected


def _pool(samples: pl.DataFrame, pool: str, *, rank: int) -> pl.DataFrame:
    """The scored samples of one pool, tagged with their precedence when scores tie across pools."""
    return samples.filter(pl.col("pool") == pool, pl.col("score").is_not_null()).with_columns(
        pl.lit(rank, dtype=pl.Int8).alias(_RANK)
    )


def _pick(candidates: pl.DataFrame, *, best: bool) -> pl.DataFrame:
    """The best (or worst) scored sample of each prompt.

    Ties go to the lower pool rank (the incumbent), then to the lowest sample index.
    """
    return (
        candidates.filter(pl.col("score").is_not_null())
        .sort(["prompt_id", "score", _RANK, "sample_index"], descending=[False, best, False, False])
        .unique(subset="prompt_id", keep="first", maintain_order=True)
        .select(_SAMPLE)
    )


def _assemble(samples: pl.DataFrame, chosen: pl.DataFrame, rejected: pl.DataFrame) -> PairBuild:
    """Join each prompt's chosen and rejected, keep strict improvements, and give every other prompt a reason."""
    joined = _side(chosen, "chosen").join(_side(rejected, "rejected"), on="prompt_id", how="inner")
    # Compare the scores themselves rather than the gap, so the rule is "compare as stored" to the letter.
    strict = pl.col("chosen_score") > pl.col("rejected_score")
    pairs = (
        joined.filter(strict)
        .with_columns((pl.col("chosen_score") - pl.col("rejected_score")).alias("gap"))
        .select(list(PAIR_COLUMNS))
        .sort("prompt_id")
    )
    prompts = samples.select("prompt_id").unique()
    dropped = pl.concat(
        [
            prompts.join(chosen, on="prompt_id", how="anti").with_columns(pl.lit(NO_SCORED_CURRENT).alias("reason")),
            joined.filter(~strict).select("prompt_id", pl.lit(TIE).alias("reason")),
        ]
    ).sort("prompt_id")
    return PairBuild(pairs=pairs, dropped=dropped)


def _side(picked: pl.DataFrame, side: str) -> pl.DataFrame:
    """A picked sample's fields renamed to one side of a pair (chosen_* or rejected_*)."""
    return picked.select("prompt_id", *[pl.col(f).alias(f"{side}_{f}") for f in _SIDE_FIELDS])


def _check_d1(d1: PairBuild | pl.DataFrame, expected: pl.DataFrame) -> None:
    """Raise if the given D1 pairs differ from the ones Phase 1 yields on this input."""
    given = d1.pairs if isinstance(d1, PairBuild) else d1
    keys = ["prompt_id", "chosen_generation_id", "rejected_generation_id"]
    missing = [c for c in keys if c not in given.columns]
    if missing:
        raise ValueError(f"d1 lacks columns {missing}; pass build_d1's result or its pairs frame")
    given, expected = given.select(keys), expected.select(keys)
    extra = given.join(expected, on=keys, how="anti").height
    lacking = expected.join(given, on=keys, how="anti").height
    if extra or lacking:
        raise ValueError(
            f"d1 does not match Phase 1 on this scored frame: {extra} of its {given.height} pairs are not "
            f"Phase 1's and {lacking} of Phase 1's {expected.height} pairs are missing from it; "
            "build d1 with build_d1 on the same scored frame"
        )


def _normalize(scored: pl.DataFrame) -> pl.DataFrame:
    """Check the input contract and return its columns with the declared types (bad input is a bug: raise)."""
    missing = [c for c in SCORED_COLUMNS if c not in scored.columns]
    if missing:
        raise ValueError(f"scored frame lacks columns {missing}; it has {scored.columns}")
    samples = scored.select([pl.col(c).cast(t) for c, t in SCORED_COLUMNS.items()])
    # A NaN score could only come from a broken judge; like a null, it cannot rank against anything.
    samples = samples.with_columns(pl.col("score").fill_nan(None))
    nulls = {c: n for c, n in samples.drop("score").null_count().row(0, named=True).items() if n}
    if nulls:
        raise ValueError(f"scored frame has nulls outside the score column: {nulls}")
    pools = set(samples["pool"].unique().to_list())
    if not pools <= set(POOLS):
        raise ValueError(f"unknown pools {sorted(pools - set(POOLS))}; expected {list(POOLS)}")
    duplicated = samples.select(pl.struct("prompt_id", "pool", "sample_index").is_duplicated().sum()).item()
    if duplicated:
        raise ValueError(f"{duplicated} rows share a (prompt_id, pool, sample_index) with another row")
    return samples
