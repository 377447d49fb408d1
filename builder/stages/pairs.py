"""Pair stage: join generations with their judgments into pools, apply the pair rules, materialize a pair version.

The rules themselves (SPEC.md, golden cases) are pure table functions in builder/stages/pair_rules.py; this module
only gathers their input from the store and writes their output with lineage.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from builder.fingerprint import content_hash, stage_fingerprint
from builder.stages.base import Plan, Stage, rows_as_given, run_stage
from builder.stages.pair_rules import PairBuild
from builder.store import Store, now_utc
from schemas.tables import PAIRS

STAGE = "pairs"
CODE_VERSION = 1


@dataclass(frozen=True)
class Pool:
    """One pool of a pair build: its name (current, past, future) and the judgments that score its samples."""

    name: str
    judgment_ids: list[str]


def scored_frame(store: Store, pools: list[Pool]) -> pl.DataFrame:
    """The pair rules' input: prompt_id, pool, sample_index, generation_id, snapshot_id, score (null = unparsable)."""
    wanted = pl.DataFrame(
        {
            "judgment_id": [jid for pool in pools for jid in pool.judgment_ids],
            "pool": [pool.name for pool in pools for _ in pool.judgment_ids],
        }
    )
    judgments = pl.from_arrow(
        store.read("judgments").select(["judgment_id", "generation_id", "score", "scored_by", "parse_error"])
    )
    generations = pl.from_arrow(
        store.read("generations").select(["generation_id", "prompt_id", "sample_index", "snapshot_id"])
    )
    assert isinstance(judgments, pl.DataFrame) and isinstance(generations, pl.DataFrame)
    frame = wanted.join(judgments, on="judgment_id", how="left").join(generations, on="generation_id", how="left")
    missing = frame.filter(pl.col("generation_id").is_null() | pl.col("prompt_id").is_null()).height
    if missing:
        raise RuntimeError(f"{missing} judgments or generations of the pools are not in the store")
    # scored_by and parse_error ride along for the stats; the pair rules read only their declared columns.
    return frame.select(
        "prompt_id", "pool", pl.col("sample_index").cast(pl.Int32), "generation_id", "snapshot_id",
        pl.col("score").cast(pl.Float64), "scored_by", "parse_error",
    )


PAIRS_STAGE = Stage(name=STAGE, code_version=CODE_VERSION, table="pairs", partition=("method", "iteration", "phase"),
                    id_column="pair_id", reads=("pair_id", "prompt_id", "chosen_generation_id",
                                                "rejected_generation_id"), compute=rows_as_given)


def materialize(
    store: Store,
    *,
    build: PairBuild,
    method: str,
    iteration: int,
    phase: str,
    judge_id: str,
    policy_id: str,
    scored: pl.DataFrame,
    parents: list[str],
) -> str:
    """Write one pair version (or find it) and return its id."""
    # `policy` is M_i: the snapshot these pairs train (and the DPO reference).
    config = {"method": method, "iteration": iteration, "phase": phase, "judge": judge_id, "policy": policy_id,
              "inputs": content_hash(sorted(scored["generation_id"].to_list() + [str(s) for s in scored["score"]]))}
    # The judge is the snapshot these rows come from, but not part of the id: the config names it already.
    version = stage_fingerprint(STAGE, CODE_VERSION, config, parents)

    def rows() -> pa.Table:
        created = now_utc()
        return build.pairs.with_columns(
            pl.col("prompt_id").map_elements(lambda pid: content_hash([version, pid]), return_dtype=pl.String)
            .alias("pair_id"),
            pl.lit(version).alias("pair_version"),
            pl.lit(method).alias("method"),
            pl.lit(iteration, dtype=pl.Int32).alias("iteration"),
            pl.lit(phase).alias("phase"),
            pl.lit(judge_id).alias("judge_id"),
            pl.lit(created, dtype=pl.Datetime("us", "UTC")).alias("created_at"),
        ).select(PAIRS.names).to_arrow()

    def stats(_rows: pa.Table) -> dict:
        pairs, scores = build.pairs, scored["score"]
        return {
            **build.counts(),
            "prompts": scored["prompt_id"].n_unique(),
            "samples": scored.height,
            "unparsable": int(scores.is_null().sum()),
            # Recorded, not hidden: how many judge replies had no parsable `Score: N` (forced mode may have scored
            # them).
            "parse_errors": int(scored["parse_error"].is_not_null().sum()),
            "scored_by": _counts(scored["scored_by"].fill_null("none")),
            "mean_chosen": _mean(pairs["chosen_score"]),
            "mean_rejected": _mean(pairs["rejected_score"]),
            "mean_gap": _mean(pairs["gap"]),
            "chosen_from": _counts(pairs["chosen_pool"]),
            "rejected_from": _counts(pairs["rejected_pool"]),
        }

    plan = Plan(config=config, parents=parents, partition_value=(method, str(iteration), phase),
                snapshot_id=judge_id, version=version, rows=rows, extra_stats=stats)
    return run_stage(store, PAIRS_STAGE, plan).version


def _mean(column: pl.Series) -> float | None:
    return None if column.is_empty() else round(float(column.mean()), 6)  # type: ignore[arg-type]


def _counts(column: pl.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in column.value_counts().iter_rows()}
