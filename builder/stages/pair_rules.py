"""The pair rules of SPEC.md as pure table functions: judged samples in, preference pairs and drop reasons out.

Input (`scored`): one row per judged sample, with columns
    prompt_id, pool ("current" | "past" | "future"), sample_index, generation_id, snapshot_id, score (null = unparsable)
where "current" is M_i's samples, "past" is M0's samples and "future" is M_f's samples, all judged by M_i.

Every rule is made of picks: the best (or worst) scored sample of one pool for each prompt. A builder computes all
the picks it needs in one pass over the scored rows (one group-by on the prompt, see `_pick`), then combines them per
prompt (a challenger from another pool replaces the incumbent only when strictly better) and keeps the strict
improvements. There is no loop over prompts or rows, no sort of the input, no I/O and no store access. The golden
cases (shared/golden/pair_rules.json) are the authority: tests/test_pair_rules.py checks every one of them, and
checks these builders against the plain sort-based ones they replaced (tests/pair_rules_reference.py) on many
random frames.

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
import pyarrow as pa

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

_BEST, _WORST = True, False  # the two kinds of pick


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
    samples, spans = _normalize(scored)
    picks = _pick(samples, spans, [("current", _BEST), ("current", _WORST)])
    return _assemble(samples, picks["prompt_id"], picks["current_best"], picks["current_worst"])


def build_d1(scored: pl.DataFrame) -> PairBuild:
    """TSR Phase 1, anchored rejection (SPEC steps 3-5).

    chosen = M_i's best; rejected = M0's worst if strictly below M_i's worst, else M_i's worst;
    kept only if chosen's score is strictly above rejected's.
    """
    samples, spans = _normalize(scored)
    picks = _pick(samples, spans, [("current", _BEST), ("current", _WORST), ("past", _WORST)])
    chosen, rejected = _phase1(samples, picks)
    return _assemble(samples, picks["prompt_id"], chosen, rejected)


def build_d2(scored: pl.DataFrame, d1: PairBuild | pl.DataFrame) -> PairBuild:
    """TSR Phase 2, future-guided chosen (SPEC steps 8-10).

    chosen = M_f's best if its score is strictly above Phase 1's chosen, else Phase 1's chosen;
    rejected = Phase 1's rejected; kept only if chosen's score is strictly above rejected's.

    What the golden cases fix about the parts SPEC leaves implicit:
    - Phase 2 starts from Phase 1's candidate pair of *every* prompt with a scored M_i sample, including prompts
      that D1 dropped as a tie. Case "phase 1 tie dropped, the future rescues the prompt in phase 2": current
      [2,2,2], past [4,2,3] gives the Phase 1 pair current#0 vs current#0 (a tie, not in D1), and D2 keeps
      future#0 (3) vs current#0 (2). So D2 cannot be built from D1's kept pairs alone: the Phase 1 candidates are
      recomputed from `scored` (in the same pass that finds the future's best), and `d1` is used to check that
      they agree with what Phase 1 actually kept.
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
    samples, spans = _normalize(scored)
    picks = _pick(samples, spans, [("current", _BEST), ("current", _WORST), ("past", _WORST), ("future", _BEST)])
    chosen1, rejected = _phase1(samples, picks)
    _check_d1(d1, _pair_keys(samples, picks["prompt_id"], chosen1, rejected))
    # A prompt without a Phase 1 chosen has no scored M_i sample: the future cannot give it one, since a missing
    # incumbent stays missing.
    chosen = _challenge(samples, chosen1, picks["future_best"], best=True)
    return _assemble(samples, picks["prompt_id"], chosen, rejected)


def _phase1(samples: pl.DataFrame, picks: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    """Phase 1's candidate chosen and rejected rows per prompt, before the strictness filter."""
    # The past challenges M_i's worst for the rejected: this is exactly "M0's worst if strictly below M_i's worst,
    # else M_i's worst". A prompt without a scored current sample gets no rejected either, so a past-only prompt
    # never produces a lone rejected candidate.
    rejected = _challenge(samples, picks["current_worst"], picks["past_worst"], best=False)
    return picks["current_best"], rejected


def _challenge(samples: pl.DataFrame, incumbent: pl.Series, challenger: pl.Series, *, best: bool) -> pl.Series:
    """Per prompt, the challenger's row where its score is strictly better than the incumbent's, else the incumbent's.

    Ties between pools go to the incumbent, and a missing incumbent (null) stays missing: nothing challenges it.
    """
    score = samples["score"]
    theirs, ours = score.gather(challenger), score.gather(incumbent)
    wins = (theirs > ours) if best else (theirs < ours)  # null where either side has no candidate
    return challenger.zip_with(wins.fill_null(False), incumbent).alias(incumbent.name)


def _assemble(samples: pl.DataFrame, prompt_ids: pl.Series, chosen: pl.Series, rejected: pl.Series) -> PairBuild:
    """Each prompt's chosen and rejected samples side by side; keep strict improvements, give the rest a reason.

    `prompt_ids`, `chosen` and `rejected` are aligned per prompt and sorted by prompt_id; `chosen` and `rejected`
    are row numbers into `samples`, null where the prompt has no candidate.
    """
    strict = _strict(samples, chosen, rejected)
    # Only the kept pairs' fields are gathered (the dropped prompts need none).
    columns = {"prompt_id": prompt_ids.filter(strict)}
    for side, rows in (("chosen", chosen.filter(strict)), ("rejected", rejected.filter(strict))):
        for field in _SIDE_FIELDS:
            columns[f"{side}_{field}"] = samples[field].gather(rows)
    pairs = pl.DataFrame(columns).with_columns(
        (pl.col("chosen_score") - pl.col("rejected_score")).alias("gap")
    ).select(list(PAIR_COLUMNS))
    # Without a scored current sample there is no chosen; any other prompt that is not strict is a tie.
    reason = pl.when(chosen.filter(~strict).is_null()).then(pl.lit(NO_SCORED_CURRENT)).otherwise(pl.lit(TIE))
    dropped = pl.DataFrame({"prompt_id": prompt_ids.filter(~strict)}).with_columns(reason.alias("reason"))
    return PairBuild(pairs=pairs, dropped=dropped)


def _strict(samples: pl.DataFrame, chosen: pl.Series, rejected: pl.Series) -> pl.Series:
    """Whether chosen's score is strictly above rejected's (false where either is missing).

    The scores themselves are compared, not their gap, so the rule is "compare as stored" to the letter.
    """
    score = samples["score"]
    return (score.gather(chosen) > score.gather(rejected)).fill_null(False)


def _pair_keys(samples: pl.DataFrame, prompt_ids: pl.Series, chosen: pl.Series, rejected: pl.Series) -> pl.DataFrame:
    """The kept pairs' prompt_id, chosen_generation_id and rejected_generation_id, as `_assemble` would give them."""
    strict = _strict(samples, chosen, rejected)
    ids = samples["generation_id"]
    return pl.DataFrame({"prompt_id": prompt_ids.filter(strict),
                         "chosen_generation_id": ids.gather(chosen.filter(strict)),
                         "rejected_generation_id": ids.gather(rejected.filter(strict))})


def _check_d1(d1: PairBuild | pl.DataFrame, expected: pl.DataFrame) -> None:
    """Raise if the given D1 pairs differ from the ones Phase 1 yields on this input."""
    given = d1.pairs if isinstance(d1, PairBuild) else d1
    keys = ["prompt_id", "chosen_generation_id", "rejected_generation_id"]
    missing = [c for c in keys if c not in given.columns]
    if missing:
        raise ValueError(f"d1 lacks columns {missing}; pass build_d1's result or its pairs frame")
    given, expected = given.select(keys), expected.select(keys)
    # build_d1's own result is sorted like `expected`, so the usual case is one vectorized comparison; a frame in
    # another order (or with repeated rows) is compared as a set.
    if given.equals(expected):
        return
    extra = given.join(expected, on=keys, how="anti").height
    lacking = expected.join(given, on=keys, how="anti").height
    if extra or lacking:
        raise ValueError(
            f"d1 does not match Phase 1 on this scored frame: {extra} of its {given.height} pairs are not "
            f"Phase 1's and {lacking} of Phase 1's {expected.height} pairs are missing from it; "
            "build d1 with build_d1 on the same scored frame"
        )


# --- the pass over the scored rows -----------------------------------------------------------------------------
#
# Why it is done this way: with 1,000,000 prompts x K=7 x 3 pools (21M rows), sorting the rows by prompt_id and
# score, as the first version of these rules did, took 30-60 s per builder and 6 GB. Here a builder makes one
# streaming group-by over the rows, on a 64-bit hash of prompt_id (grouping on the strings themselves costs about
# three times as much), in which every pick is the max or the min of one 128-bit number per row:
#
#     bits 127..64   the score as an unsigned integer with the same order as the float (-0.0 equal to 0.0)
#     bits  63..32   the sample index, reversed for a best pick, so that ties go to the lowest index
#     bits  31..0    the row number, which identifies the sample; its fields are gathered by it afterwards
#
# taken over the rows of the pick's pool (rows of other pools, and unscored ones, give a null that max and min
# skip).
#
# The same group-by checks the input with one more sum, of (a second, independent 64-bit hash of prompt_id) * 2^64
# + 2^(the row's place among the pools' index ranges laid side by side). Without duplicated samples the low half
# is a bit mask with one bit per row, so it counts the rows, and if the group holds one prompt id the high half is
# that count times the id's second hash. A group where this fails holds a duplicated sample or two prompt ids that
# share a 64-bit hash (about one chance in 40 million at 10^6 prompts); the pass is then redone on the prompt_id
# strings themselves, after an exact duplicate check that raises. (A pair of ids that collides in both hashes, one
# chance in ~10^27 at 10^6 prompts, would go unnoticed; the ids themselves are 80-bit content hashes.)

_ROW, _ORDER, _KEY = "_row", "_order", "_key"
_KEYS = {_BEST: "_key_best", _WORST: "_key_worst"}  # each row's 128-bit key for a best and for a worst pick
_U64, _U128 = pl.UInt64, pl.UInt128
_SIGN = 1 << 63
_HIGH = 1 << 64  # multiplier of the high half of a 128-bit key
_CHECK_SEED = 0x5EED  # any seed other than the group key's (0) gives an independent hash
_MASK_BITS = 64


def _prompt_key() -> pl.Expr:
    """The group key of the pass: a 64-bit hash of prompt_id (tests replace it to force hash collisions)."""
    return pl.col("prompt_id").hash()


def _pick(samples: pl.DataFrame, spans: dict[str, tuple[int, int]], picks: list[tuple[str, bool]]) -> pl.DataFrame:
    """One row per prompt of `samples`, sorted by prompt_id: its prompt_id and, per (pool, best) pick, the row
    number in `samples` of that pool's best (or worst) scored sample, null if the pool has no scored sample for it.

    Columns: prompt_id, then "<pool>_best" or "<pool>_worst" (UInt32) per pick. `spans` is each present pool's
    lowest and highest sample index. Raises ValueError on duplicated (prompt_id, pool, sample_index) rows.
    """
    assert samples.height < 1 << 32, "row numbers must fit the low 32 bits of a pick's key"
    # The pools' index ranges fit one UInt64 up to K = 21 with the past pool's stored indices K..2K-1.
    mask = sum(hi - lo + 1 for lo, hi in spans.values()) <= _MASK_BITS
    if not mask:
        _check_duplicates_exactly(samples)  # the bit mask cannot hold the pools' indices: check the slow way
    found = _group(samples, spans, picks, key=_prompt_key(), mask=mask)
    if found is None:
        _check_duplicates_exactly(samples)
        found = _group(samples, spans, picks, key=pl.col("prompt_id"), mask=mask)
        assert found is not None, "grouping on the prompt ids themselves cannot merge two of them"
    return _sort_by_prompt(found)


def _group(samples: pl.DataFrame, spans: dict[str, tuple[int, int]], picks: list[tuple[str, bool]], *,
           key: pl.Expr, mask: bool) -> pl.DataFrame | None:
    """The pass itself (see above), grouped on `key`; None if the check finds a group it cannot vouch for."""
    names = [_pick_name(pool, best) for pool, best in picks]
    if not spans:  # no rows
        return pl.DataFrame(schema={"prompt_id": pl.String, **dict.fromkeys(names, pl.UInt32)})
    # The check's bit for a row: its place among the pools' index ranges laid side by side in one UInt64 (the
    # first present pool needs no test: every row is in one of them), or 1 to count the rows.
    bit: pl.Expr = pl.lit(1, _U64)
    if mask:
        shift: pl.Expr | None = None
        offset = 0
        for pool, (lo, hi) in spans.items():
            here = pl.lit(offset - lo, pl.Int64)
            shift = here if shift is None else pl.when(pl.col("pool") == pool).then(here).otherwise(shift)
            offset += hi - lo + 1
        assert shift is not None
        bit = pl.lit(2, _U64).pow((pl.col("sample_index").cast(pl.Int64) + shift).cast(_U64))
    # (The halves of a 128-bit number are joined with |, which polars 1.34 has for UInt128 and + it has not.)
    check = pl.col("prompt_id").hash(seed=_CHECK_SEED).cast(_U128) * pl.lit(_HIGH, _U128) | bit.cast(_U128)
    # The score's IEEE bits, read from the same buffer as integers (no copy); null scores stay null.
    raw = pl.from_arrow(samples["score"].rechunk().to_arrow().view(pa.uint64()))
    bits = pl.col(_ORDER)
    # Non-negative floats order like their IEEE bits and negative ones in reverse: set the sign bit of the former
    # and flip every bit of the latter (-0.0 then lands on 0.0's value).
    order = pl.when(bits > _SIGN).then(~bits).otherwise(bits | pl.lit(_SIGN, _U64)).cast(_U128) * pl.lit(_HIGH, _U128)
    index = (pl.col("sample_index").cast(pl.Int64) + (1 << 31)).cast(_U64)  # 0 .. 2^32-1, in sample_index's order
    row = pl.col(_ROW).cast(_U64)
    summary = (
        samples.lazy()
        .with_columns(raw.alias(_ORDER))  # type: ignore[union-attr]
        .with_row_index(_ROW)
        # Each row's two keys (see above), once for all the picks; null where the score is.
        .with_columns(
            (order | ((pl.lit((1 << 32) - 1, _U64) - index) * (1 << 32) + row).cast(_U128)).alias(_KEYS[_BEST]),
            (order | (index * (1 << 32) + row).cast(_U128)).alias(_KEYS[_WORST]),
        )
        .group_by(key.alias(_KEY))
        .agg(
            pl.col(_ROW).min().alias("_any"),  # a row of the prompt, which gives it its prompt_id
            check.sum().alias("_check"),
            *[_pick_key(pool, best).alias(name) for name, (pool, best) in zip(names, picks)],
        )
        .collect(engine="streaming")
    )
    ids = samples["prompt_id"].gather(summary["_any"])
    # The group must hold this prompt id alone: then the sum's high half is its row count times the id's second
    # hash (UInt64 arithmetic wraps around like the sum).
    high = summary.select((pl.col("_check") // pl.lit(_HIGH, _U128)).cast(_U64)).to_series()
    low = summary["_check"].cast(_U64, wrap_numerical=True)
    count = low.bitwise_count_ones().cast(_U64) if mask else low
    if not (count * ids.hash(seed=_CHECK_SEED) == high).all():
        return None
    # A pick's row is its key's low 32 bits (null if the pool had no candidate).
    rows = summary.select(pl.col(name).cast(pl.UInt32, wrap_numerical=True) for name in names)
    return rows.insert_column(0, ids.alias("prompt_id"))


def _pick_key(pool: str, best: bool) -> pl.Expr:
    """The aggregation that makes one pick: the max (best) or min (worst) key of the pool's scored rows."""
    key = pl.when(pl.col("pool") == pool).then(pl.col(_KEYS[best]))
    return key.max() if best else key.min()


def _pick_name(pool: str, best: bool) -> str:
    return f"{pool}_{'best' if best else 'worst'}"


def _sort_by_prompt(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` sorted by prompt_id.

    Sorting 10^6 strings takes about a second. When every prompt_id starts with 16 one-byte characters and those
    tell them all apart, as with the store's 20-hex-digit ids, the 16 bytes read as one big-endian UInt128 sort in
    the same order (strings sort bytewise) in a fraction of that; any other input takes the plain sort.
    """
    prefix = frame["prompt_id"].str.head(16).cast(pl.Binary).bin.reinterpret(dtype=_U128, endianness="big")
    if prefix.null_count() == 0:  # null: shorter than 16 bytes, or not one byte per character
        order = prefix.arg_sort()
        ordered = prefix.gather(order)
        if (ordered.slice(1) > ordered.slice(0, max(len(ordered) - 1, 0))).all():
            return frame[order]
    return frame.sort("prompt_id")


def _check_duplicates_exactly(samples: pl.DataFrame) -> None:
    duplicated = samples.select(pl.struct("prompt_id", "pool", "sample_index").is_duplicated().sum()).item()
    if duplicated:
        raise ValueError(f"{duplicated} rows share a (prompt_id, pool, sample_index) with another row")


def _normalize(scored: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, tuple[int, int]]]:
    """Check the input contract and return its columns with the declared types (bad input is a bug: raise), and
    each present pool's lowest and highest sample index.

    Duplicated (prompt_id, pool, sample_index) rows are found by the pass itself (see `_pick`).
    """
    missing = [c for c in SCORED_COLUMNS if c not in scored.columns]
    if missing:
        raise ValueError(f"scored frame lacks columns {missing}; it has {scored.columns}")
    samples = scored.select([pl.col(c).cast(t) for c, t in SCORED_COLUMNS.items()])
    # A NaN score could only come from a broken judge; like a null, it cannot rank against anything. (Only copied
    # when there is one: the column is 170 MB at 21M rows.)
    if samples["score"].is_nan().any():
        samples = samples.with_columns(pl.col("score").fill_nan(None))
    nulls = {c: n for c, n in samples.drop("score").null_count().row(0, named=True).items() if n}
    if nulls:
        raise ValueError(f"scored frame has nulls outside the score column: {nulls}")
    # Comparing short strings is cheaper than hashing every row; the set of pools is computed only to report it.
    stats = samples.select(
        *[(pl.col("pool") == pool).sum().alias(f"{pool}_n") for pool in POOLS],
        *[pl.col("sample_index").filter(pl.col("pool") == pool).min().alias(f"{pool}_lo") for pool in POOLS],
        *[pl.col("sample_index").filter(pl.col("pool") == pool).max().alias(f"{pool}_hi") for pool in POOLS],
    ).row(0, named=True)
    if sum(stats[f"{pool}_n"] for pool in POOLS) != samples.height:
        pools = set(samples["pool"].unique().to_list())
        raise ValueError(f"unknown pools {sorted(pools - set(POOLS))}; expected {list(POOLS)}")
    spans = {pool: (stats[f"{pool}_lo"], stats[f"{pool}_hi"]) for pool in POOLS if stats[f"{pool}_n"]}
    return samples, spans
