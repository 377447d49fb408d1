"""Benchmark: `tsr stats` over a synthetic store of 1,000,000 pairs against the obvious alternatives, same run.

Builds the store under a temporary folder through the real store API (so the layout, schemas and manifests are
exactly what `tsr pairs` writes): 10 pair versions (SR iterations 1-4, TSR-past 1-2, TSR 1-2 with D1 and D2),
their manifests with the pair stage's stats, and one generation row per chosen and rejected response. Then it times,
each end to end in a fresh process (interpreter start-up and imports included):

    tsr stats, cold   the first call: checksums every file of the tables it reads (then cached by size and mtime)
    tsr stats, warm   later calls
    polars / pandas   read the same Parquet files and manifests and compute the same figures in Python

and checks that the alternatives' figures equal `tsr stats --format csv`.

    python -m builder.bench.stats [--pairs 1000000] [--rounds 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (method, iteration, phase) of the synthetic pair versions, in the order a real run would write them
LAYOUT = [("sr", 1, "sr"), ("tsr-past", 1, "d1"), ("tsr", 1, "d1"), ("tsr", 1, "d2"), ("sr", 2, "sr"),
          ("tsr-past", 2, "d1"), ("tsr", 2, "d1"), ("tsr", 2, "d2"), ("sr", 3, "sr"), ("sr", 4, "sr")]

# The figures compared between tsr stats and the alternatives (all numeric columns of pair_stats).
FIGURES = ["prompts", "pairs_kept", "ties_dropped", "no_scored_current", "unparsable", "parse_errors",
           "judged_samples", "chosen_mean", "chosen_median", "rejected_mean", "rejected_median", "gap_mean",
           "gap_median", "chosen_from_m_i", "chosen_from_m_f", "rejected_from_m0", "rejected_from_m_i",
           "chosen_tokens_mean", "rejected_tokens_mean"]

_WORDS = ("the a of to and in is it that for on with as was be by this are or an at from but not have has "
          "answer question model response paris france capital river museum history science art city long short "
          "good weak first second because however therefore example result value number list step code function "
          "data table query score judge chosen rejected pair prompt iteration future past temporal reward")


def _word_blocks(rng) -> object:
    """~7 MB of random words as 1,800 blocks of 4 KiB (a uint8 array of shape (blocks, 4096))."""
    import numpy as np

    base = " ".join(rng.choice(_WORDS.split(), 1_200_000)).encode("ascii")
    return np.frombuffer(base[: len(base) // 4096 * 4096], dtype=np.uint8).reshape(-1, 4096)


def _text_column(rng, lengths, blocks) -> object:
    """A string column with the given lengths (characters), vectorized: rows are consecutive slices of one buffer
    of random word blocks, so Parquet compresses it about as well as prose (3x here), not to nothing."""
    import numpy as np
    import pyarrow as pa

    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = blocks[rng.integers(0, len(blocks), int(offsets[-1]) // 4096 + 1)].tobytes()
    return pa.LargeStringArray.from_buffers(len(lengths), pa.py_buffer(offsets.tobytes()), pa.py_buffer(data))


def build_store(root: Path, n_pairs: int, seed: int = 0) -> dict:
    """Write the synthetic store under `root`; returns sizes for the printout. Vectorized (numpy + polars)."""
    from datetime import datetime, timezone

    import numpy as np
    import polars as pl

    from builder.fingerprint import content_hash
    from builder.store import Store
    from schemas.tables import GENERATIONS, PAIRS

    rng = np.random.default_rng(seed)
    store = Store.open(root, create=True)
    created = datetime.now(timezone.utc)
    per_version = [n_pairs // len(LAYOUT) + (1 if i < n_pairs % len(LAYOUT) else 0) for i in range(len(LAYOUT))]
    generations = 0
    blocks = _word_blocks(rng)
    with store.writing():
        for index, ((method, iteration, phase), n) in enumerate(zip(LAYOUT, per_version)):
            version = content_hash(["bench-pairs", method, iteration, phase, n])
            policy = f"policy-{method}-{iteration}"
            chosen = np.round(rng.uniform(1.0, 5.0, n), 3)
            rejected = np.round(chosen - rng.uniform(0.001, 1.0, n) * chosen, 3)
            rejected = np.where(rejected >= chosen, chosen - 0.001, rejected)
            if phase == "d2":
                chosen_pool = np.where(rng.random(n) < 0.6, "future", "current")
            else:
                chosen_pool = np.full(n, "current")
            if phase == "sr":
                rejected_pool = np.full(n, "current")
            else:
                rejected_pool = np.where(rng.random(n) < 0.7, "past", "current")
            prefix = f"{index:02d}0000000"  # ids of 22 characters, like the store's 20-hex-digit hashes
            row = pl.int_range(0, n, eager=True).cast(pl.String).str.zfill(12).alias("row")
            pairs = pl.DataFrame({
                "row": row,
                "chosen_score": chosen,
                "rejected_score": rejected,
                "chosen_pool": chosen_pool,
                "rejected_pool": rejected_pool,
            }).with_columns(
                pl.concat_str([pl.lit("p" + prefix), pl.col("row")]).alias("pair_id"),
                pl.concat_str([pl.lit("c" + prefix), pl.col("row")]).alias("chosen_generation_id"),
                pl.concat_str([pl.lit("r" + prefix), pl.col("row")]).alias("rejected_generation_id"),
                pl.concat_str([pl.lit("q" + prefix), pl.col("row")]).alias("prompt_id"),
                pl.lit(version).alias("pair_version"), pl.lit(method).alias("method"),
                pl.lit(iteration, pl.Int32).alias("iteration"), pl.lit(phase).alias("phase"),
                (pl.col("chosen_score") - pl.col("rejected_score")).alias("gap"),
                pl.lit(0, pl.Int32).alias("chosen_sample_index"), pl.lit(1, pl.Int32).alias("rejected_sample_index"),
                pl.lit(policy).alias("chosen_snapshot_id"), pl.lit("m0").alias("rejected_snapshot_id"),
                pl.lit("judge").alias("judge_id"), pl.lit(created).dt.cast_time_unit("us").alias("created_at"),
            )
            ties, unscored = int(n * 0.08), int(n * 0.02)
            stats = {"kept": n, "tie": ties, "no_scored_current": unscored, "prompts": n + ties + unscored,
                     "samples": 4 * (n + ties + unscored), "unparsable": int(n * 0.3), "parse_errors": int(n * 0.5),
                     "scored_by": {"forced": n}, "mean_chosen": float(chosen.mean()),
                     "mean_rejected": float(rejected.mean()), "mean_gap": float((chosen - rejected).mean())}
            # generations of this version's chosen and rejected responses, one snapshot partition per version
            gens = pl.concat([
                pairs.select(pl.col("chosen_generation_id").alias("generation_id"), "prompt_id"),
                pairs.select(pl.col("rejected_generation_id").alias("generation_id"), "prompt_id"),
            ])
            m = gens.height
            lengths = rng.integers(40, 1400, m)  # characters; about 4 per token
            gens = gens.with_columns(
                pl.Series("length", lengths), pl.from_arrow(_text_column(rng, lengths, blocks)).cast(pl.String).alias("text"),
            ).with_columns(
                (pl.col("length") // 4).cast(pl.Int32).alias("completion_tokens"),
                pl.lit(f"gen-{index}").alias("snapshot_id"),
                pl.int_range(0, m).cast(pl.Int32).alias("sample_index"),
                pl.lit(30, pl.Int32).alias("prompt_tokens"), pl.lit("stop").alias("finish_reason"),
                pl.lit(1.0).alias("temperature"), pl.lit(1.0).alias("top_p"),
                pl.lit(1024, pl.Int32).alias("max_new_tokens"), pl.int_range(0, m).alias("seed"),
                pl.lit("vllm").alias("backend"), pl.lit(f"gen-v{index}").alias("version"),
                pl.lit(created).dt.cast_time_unit("us").alias("created_at"),
            ).drop("length")
            store.write_version(version=f"gen-v{index}", stage="generate", code_version=1, table="generations",
                                data=gens.select(GENERATIONS.names).to_arrow(),
                                partition={"snapshot": f"gen-{index}"}, snapshot_id=f"gen-{index}")
            store.write_version(version=version, stage="pairs", code_version=1, table="pairs",
                                data=pairs.select(PAIRS.names).to_arrow(),
                                partition={"method": method, "iteration": str(iteration), "phase": phase},
                                config={"method": method, "iteration": iteration, "phase": phase, "judge": "judge",
                                        "policy": policy},
                                parents=[f"gen-v{index}"], snapshot_id="judge", stats=stats)
            generations += m
    size = sum(p.stat().st_size for p in root.rglob("*.parquet"))
    return {"pairs": n_pairs, "versions": len(LAYOUT), "generations": generations, "bytes": size}


# ---- the alternatives: load everything into Python and compute the same figures ------------------------------------


def _manifests(root: Path) -> list[dict]:
    rows = []
    for path in sorted((root / "manifests").glob("*.json")):
        data = json.loads(path.read_text("utf-8"))
        if data["stage"] != "pairs":
            continue
        config, stats = json.loads(data["config_json"]), json.loads(data["stats_json"])
        rows.append({"pair_version": data["version"], "method": config["method"], "iteration": config["iteration"],
                     "phase": config["phase"], "prompts": stats["prompts"], "judged_samples": stats["samples"],
                     "ties_dropped": stats.get("tie", 0), "no_scored_current": stats.get("no_scored_current", 0),
                     "unparsable": stats["unparsable"], "parse_errors": stats["parse_errors"]})
    return rows


def alternative_polars(root: Path):
    import polars as pl

    versions = pl.DataFrame(_manifests(root))
    pairs = pl.read_parquet(root / "pairs" / "**" / "*.parquet", hive_partitioning=False,
                            columns=["pair_version", "chosen_generation_id", "rejected_generation_id", "chosen_score",
                                     "rejected_score", "gap", "chosen_pool", "rejected_pool"])
    gens = pl.read_parquet(root / "generations" / "**" / "*.parquet", hive_partitioning=False,
                           columns=["generation_id", "completion_tokens"])
    joined = pairs.join(gens.rename({"generation_id": "chosen_generation_id", "completion_tokens": "ct"}),
                        on="chosen_generation_id", how="left").join(
        gens.rename({"generation_id": "rejected_generation_id", "completion_tokens": "rt"}),
        on="rejected_generation_id", how="left")
    kept = joined.group_by("pair_version").agg(
        pl.len().alias("pairs_kept"),
        pl.col("chosen_score").mean().alias("chosen_mean"), pl.col("chosen_score").median().alias("chosen_median"),
        pl.col("rejected_score").mean().alias("rejected_mean"),
        pl.col("rejected_score").median().alias("rejected_median"),
        pl.col("gap").mean().alias("gap_mean"), pl.col("gap").median().alias("gap_median"),
        (pl.col("chosen_pool") == "current").sum().alias("chosen_from_m_i"),
        (pl.col("chosen_pool") == "future").sum().alias("chosen_from_m_f"),
        (pl.col("rejected_pool") == "past").sum().alias("rejected_from_m0"),
        (pl.col("rejected_pool") == "current").sum().alias("rejected_from_m_i"),
        pl.col("ct").mean().alias("chosen_tokens_mean"), pl.col("rt").mean().alias("rejected_tokens_mean"),
    )
    return versions.join(kept, on="pair_version", how="left").sort("method", "iteration", "phase")


def alternative_pandas(root: Path):
    import pandas as pd

    versions = pd.DataFrame(_manifests(root))
    pair_files = sorted((root / "pairs").rglob("*.parquet"))
    gen_files = sorted((root / "generations").rglob("*.parquet"))
    pairs = pd.concat([pd.read_parquet(f, columns=["pair_version", "chosen_generation_id", "rejected_generation_id",
                                                   "chosen_score", "rejected_score", "gap", "chosen_pool",
                                                   "rejected_pool"]) for f in pair_files], ignore_index=True)
    gens = pd.concat([pd.read_parquet(f, columns=["generation_id", "completion_tokens"]) for f in gen_files],
                     ignore_index=True).set_index("generation_id")["completion_tokens"]
    pairs["ct"] = pairs["chosen_generation_id"].map(gens)
    pairs["rt"] = pairs["rejected_generation_id"].map(gens)
    pairs["chosen_from_m_i"] = pairs["chosen_pool"] == "current"
    pairs["chosen_from_m_f"] = pairs["chosen_pool"] == "future"
    pairs["rejected_from_m0"] = pairs["rejected_pool"] == "past"
    pairs["rejected_from_m_i"] = pairs["rejected_pool"] == "current"
    kept = pairs.groupby("pair_version").agg(
        pairs_kept=("gap", "size"), chosen_mean=("chosen_score", "mean"), chosen_median=("chosen_score", "median"),
        rejected_mean=("rejected_score", "mean"), rejected_median=("rejected_score", "median"),
        gap_mean=("gap", "mean"), gap_median=("gap", "median"), chosen_from_m_i=("chosen_from_m_i", "sum"),
        chosen_from_m_f=("chosen_from_m_f", "sum"), rejected_from_m0=("rejected_from_m0", "sum"),
        rejected_from_m_i=("rejected_from_m_i", "sum"), chosen_tokens_mean=("ct", "mean"),
        rejected_tokens_mean=("rt", "mean")).reset_index()
    return versions.merge(kept, on="pair_version", how="left").sort_values(["method", "iteration", "phase"])


# ---- timing -------------------------------------------------------------------------------------------------------


def _timed(command: list[str], env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def _compare(ours_csv: Path, theirs_csv: Path) -> float:
    """The largest relative difference over every figure of every pair version."""
    import polars as pl

    ours = pl.read_csv(ours_csv).sort("pair_version")
    theirs = pl.read_csv(theirs_csv).sort("pair_version")
    if ours["pair_version"].to_list() != theirs["pair_version"].to_list():
        raise SystemExit("the alternatives found other pair versions than tsr stats")
    worst = 0.0
    for name in FIGURES:
        for a, b in zip(ours[name].to_list(), theirs[name].to_list()):
            worst = max(worst, abs(float(a) - float(b)) / max(1.0, abs(float(b))))
    return worst


def measure(pairs: int = 1_000_000, rounds: int = 3, keep: Path | None = None) -> list[dict]:
    """`tsr stats` (cold and warm, its own process) against polars and pandas doing the same figures."""
    import importlib.util

    with tempfile.TemporaryDirectory(prefix="tsr-bench-stats-") as scratch:
        root = keep or Path(scratch) / "store"
        started = time.perf_counter()
        info = build_store(root, pairs)
        print(f"synthetic store {root}: {info['pairs']:,} pairs in {info['versions']} pair versions, "
              f"{info['generations']:,} generations, {info['bytes'] / 1e6:.0f} MB of Parquet, built in "
              f"{time.perf_counter() - started:.1f}s; {os.cpu_count()} CPUs", flush=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        tsr = [sys.executable, "-m", "builder", "--data", str(root), "stats"]
        ours_csv, agree = Path(scratch) / "tsr.csv", {}
        cold, _ = _timed([*tsr, "--format", "csv", "--out", str(ours_csv)], env)
        warm = [_timed(tsr, env)[0] for _ in range(rounds)]
        alt = {}
        for name in [n for n in ("polars", "pandas") if importlib.util.find_spec(n) is not None]:
            out = Path(scratch) / f"{name}.csv"
            command = [sys.executable, "-m", "builder.bench.stats", "--alternative", name, "--data", str(root),
                       "--out", str(out)]
            alt[name] = min(_timed(command, env)[0] for _ in range(rounds))
            agree[name] = _compare(ours_csv, out)
    best = min(warm)
    print(f"tsr stats cold {cold:.2f}s, warm best of {rounds} {best:.2f}s (median {statistics.median(warm):.2f}s)")
    return [{
        "what": f"tsr stats over {info['pairs']:,} pairs (warm; cold {cold:.2f} s)",
        "tsr": f"{best:.2f} s", "alternative": f"{name} load + compute, same figures",
        "baseline": f"{seconds:.2f} s (agree to {agree[name]:.1e})", "ratio": seconds / best,
        "limit": "<= 5 s", "ok": max(cold, best) < 5 and agree[name] < 1e-6,
    } for name, seconds in alt.items()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="warm calls of each side; the best counts")
    parser.add_argument("--keep", type=Path, help="build the store here and keep it (default: a temp folder)")
    parser.add_argument("--alternative", choices=["polars", "pandas"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.alternative:  # one alternative run, in its own process (what the benchmark times)
        frame = (alternative_polars if args.alternative == "polars" else alternative_pandas)(args.data)
        frame.write_csv(args.out) if args.alternative == "polars" else frame.to_csv(args.out, index=False)
        return
    from builder.bench.table import Row, render

    print(render([Row(**row) for row in measure(args.pairs, args.rounds, args.keep)]))


if __name__ == "__main__":
    main()
