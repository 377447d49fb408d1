"""Benchmark: the pair builders (SR, D1, D2) at scale, against the builders they replaced, same input, same machine.

    python -m builder.bench.pairs [--prompts 1000000] [--k 7] [--no-baseline] [--shuffle]

The input is a synthetic scored frame shaped like the one `builder.stages.pairs.scored_frame` gives the loop:
N prompts x K samples in each of the three pools (current with indices 0..K-1, past with the stored K..2K-1,
future 0..K-1), ids of about 20 characters like the store's, and scores like a forced judge's: continuous in 0..5, about
a quarter of them whole numbers (so ties are common) and 3% null. Rows come pool by pool, each pool prompt by prompt
in sample-index order, as generation and judging write them; --shuffle shuffles the rows within each pool instead
(a worst case for memory locality).

Each side runs in a fresh process of its own, so that one side's allocations cannot hide in the other's peak: it
builds the input, then calls build_sr, build_d1 and build_d2 as the loop does (D2 given D1's result, which it
holds until then; SR's result is written out and dropped first), and reports each builder's wall time and the
process's peak resident memory (VmHWM, the input included). A third process only builds the input, to show the
builders' own share of the peak. The parent then checks that the six frames (pairs and dropped of each builder) of
both sides are equal. The builders being replaced ("before issue 19", kept in tests/pair_rules_reference.py and
loaded from the checkout by path) take 40 s (140 s with --shuffle) and 6 GB at the default size; --no-baseline
skips them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[2] / "tests" / "pair_rules_reference.py"
BUILDERS = ("sr", "d1", "d2")
PARTS = ("pairs", "dropped")
LIMIT_SECONDS, LIMIT_BYTES = 10.0, 3 * 10**9  # all three builders together, and the process's peak
GB = 10**9

def synthetic_scored(prompts: int, k: int, *, seed: int = 0, shuffle: bool = False):
    """The benchmark's input: prompts x k rows per pool, columns of builder.stages.pair_rules.SCORED_COLUMNS.

    Each column is one contiguous array, as the joins of scored_frame leave them. They are built one at a time,
    largest first, so that the input's own peak stays close to its size.
    """
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(seed)
    n = prompts * k  # rows per pool
    columns = {}
    # 19 digits (10^18 + row): distinct, and longer than the 12 bytes polars keeps inline, like the store's ids.
    columns["generation_id"] = (pl.int_range(0, 3 * n, dtype=pl.UInt64, eager=True) + 10**18).cast(pl.String)
    within = np.concatenate([rng.permutation(n).astype(np.uint32) if shuffle else np.arange(n, dtype=np.uint32)
                             for _ in range(3)])  # each pool prompt by prompt, or shuffled
    # Distinct prompt ids of 20 digits that sort in no particular order: the prompt numbers scrambled by a
    # bijection of UInt64 (multiplying by an odd number), zero-padded.
    numbers = pl.int_range(0, prompts, dtype=pl.UInt64, eager=True) * pl.Series([0x9E3779B97F4A7C15], dtype=pl.UInt64)
    columns["prompt_id"] = numbers.cast(pl.String).str.zfill(20).gather(within // k)
    index = within % k
    index[n:2 * n] += k  # the past pool carries its stored indices K..2K-1
    columns["sample_index"] = pl.Series(index, dtype=pl.Int32)
    del within, index
    pool = np.repeat(np.arange(3, dtype=np.uint32), n)  # 0 current, 1 past, 2 future
    columns["pool"] = pl.Series(["current", "past", "future"]).gather(pool)
    columns["snapshot_id"] = pl.Series(["snapshot-m-i-0000000", "snapshot-m-0-0000000",
                                        "snapshot-m-f-0000000"]).gather(pool)
    del pool
    score = rng.uniform(0.0, 5.0, 3 * n)
    whole = rng.random(3 * n, dtype=np.float32) < 0.25
    score[whole] = np.round(score[whole])
    del whole
    score[rng.random(3 * n, dtype=np.float32) < 0.03] = np.nan  # null below; no NaN reaches the builders
    columns["score"] = pl.Series(score).fill_nan(None)
    del score
    return pl.DataFrame({name: columns[name] for name in
                         ("prompt_id", "pool", "sample_index", "generation_id", "snapshot_id", "score")})


def _reference_builders():
    """tests/pair_rules_reference.py, loaded by path (tests/ is not part of the installed package)."""
    if not REFERENCE.is_file():
        raise SystemExit(f"{REFERENCE} is not there (the baseline needs a checkout of the repo); use --no-baseline")
    spec = importlib.util.spec_from_file_location("pair_rules_reference", REFERENCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is being made
    spec.loader.exec_module(module)
    return module


def _peak_bytes() -> int:
    """This process's peak resident memory so far."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _work(side: str, prompts: int, k: int, shuffle: bool, out: Path) -> None:
    """One side, in its own process: build the input, run the builders, write timings, peak and frames to `out`."""
    scored = synthetic_scored(prompts, k, shuffle=shuffle)
    result: dict = {"rows": scored.height, "input_peak": _peak_bytes()}
    if side != "input":
        if side == "new":
            from builder.stages import pair_rules as builders
        else:
            builders = _reference_builders()
        # As the loop holds them: D1's result until D2 is built, no SR result meanwhile (a separate method). Each
        # result is written out (Arrow IPC: the buffers as they are, no encoding) once timed.
        started = time.perf_counter()
        sr = builders.build_sr(scored)
        result["sr"] = time.perf_counter() - started
        _save(sr, out / "sr")
        del sr
        started = time.perf_counter()
        d1 = builders.build_d1(scored)
        result["d1"] = time.perf_counter() - started
        _save(d1, out / "d1")
        started = time.perf_counter()
        d2 = builders.build_d2(scored, d1)
        result["d2"] = time.perf_counter() - started
        result["peak"] = _peak_bytes()
        _save(d2, out / "d2")
    (out / "result.json").write_text(json.dumps(result))


def _save(build, stem: Path) -> None:
    for part in PARTS:
        getattr(build, part).write_ipc(stem.with_name(f"{stem.name}_{part}.arrow"))


def _run(side: str, prompts: int, k: int, shuffle: bool, out: Path) -> dict:
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "builder.bench.pairs", "--worker", side, "--out", str(out),
               "--prompts", str(prompts), "--k", str(k)] + (["--shuffle"] if shuffle else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ.copy())
    if done.returncode != 0:
        raise RuntimeError(f"the {side} side failed:\n{done.stderr or done.stdout}")
    return json.loads((out / "result.json").read_text())


def _same_frames(new: Path, old: Path) -> dict[str, bool]:
    """Per builder: whether both sides gave equal pairs and dropped frames (values, dtypes, column and row order)."""
    import polars as pl
    from polars.testing import assert_frame_equal

    same = {}
    for name in BUILDERS:
        same[name] = True
        for part in PARTS:
            try:
                assert_frame_equal(pl.read_ipc(new / f"{name}_{part}.arrow"),
                                   pl.read_ipc(old / f"{name}_{part}.arrow"))
            except AssertionError:
                same[name] = False
    return same


def _figure(seconds: float, peak: int | None = None, input_peak: int | None = None) -> str:
    text = f"{seconds:.1f} s" if seconds < 100 else f"{seconds:.0f} s"
    if peak is not None:
        text += f", peak {peak / GB:.1f} GB"
    if input_peak is not None:
        text += f" (input alone {input_peak / GB:.1f} GB)"
    return text


def measure(prompts: int = 1_000_000, k: int = 7, *, baseline: bool = True, shuffle: bool = False) -> list[dict]:
    """Time the new builders (and, with `baseline`, the replaced ones) on the synthetic input; one row for all three
    builders together (with the limits of issue 19), then one per builder."""
    with tempfile.TemporaryDirectory(prefix="bench-pairs-") as tmp:
        alone = _run("input", prompts, k, shuffle, Path(tmp) / "input")
        new = _run("new", prompts, k, shuffle, Path(tmp) / "new")
        old = _run("reference", prompts, k, shuffle, Path(tmp) / "reference") if baseline else None
        same = _same_frames(Path(tmp) / "new", Path(tmp) / "reference") if old else dict.fromkeys(BUILDERS, True)
    total = sum(new[name] for name in BUILDERS)
    old_total = sum(old[name] for name in BUILDERS) if old else math.nan
    rows = [{
        "what": f"pair builders SR+D1+D2, {prompts:,} prompts x K={k} ({new['rows']:,} rows)"
                + (", rows shuffled within pools" if shuffle else ""),
        "tsr": _figure(total, new["peak"], alone["input_peak"]),
        "alternative": "present builders (before issue 19)",
        "baseline": _figure(old_total, old["peak"]) if old else "skipped",
        "ratio": old_total / total,
        "limit": f"<= {LIMIT_SECONDS:.0f} s, <= {LIMIT_BYTES / GB:.0f} GB",
        # Without the baseline the results are not compared; the limits still hold or not.
        "ok": total <= LIMIT_SECONDS and new["peak"] <= LIMIT_BYTES and all(same.values()),
    }]
    for name in BUILDERS:
        rows.append({
            "what": f"{name.upper()} alone, same input" + ("" if old else " (results not compared)"),
            "tsr": _figure(new[name]),
            "alternative": "present builder",
            "baseline": _figure(old[name]) if old else "skipped",
            "ratio": old[name] / new[name] if old else math.nan,
            "limit": "",
            "ok": same[name],
        })
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m builder.bench.pairs", description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1_000_000, help="prompts (rows: prompts x k x 3 pools)")
    parser.add_argument("-k", "--k", type=int, default=7, help="samples per prompt and pool")
    parser.add_argument("--no-baseline", action="store_true", help="skip the replaced builders (40-140 s, 6 GB)")
    parser.add_argument("--shuffle", action="store_true", help="shuffle the rows within each pool")
    parser.add_argument("--worker", choices=("input", "new", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _work(args.worker, args.prompts, args.k, args.shuffle, args.out)
        return []
    rows = measure(args.prompts, args.k, baseline=not args.no_baseline, shuffle=args.shuffle)
    for row in rows:
        ratio = "" if math.isnan(row["ratio"]) else f", speed-up {row['ratio']:.1f}x"
        limit = f"\n    limit {row['limit']}" if row["limit"] else ""
        print(f"{row['what']}: {'ok' if row['ok'] else 'NOT OK'}\n    new builders: {row['tsr']}"
              f"\n    {row['alternative']}: {row['baseline']}{ratio}{limit}")
    return rows


if __name__ == "__main__":
    main()
