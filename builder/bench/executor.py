"""Benchmark: the generate stage on the embedded model with `--executor local` against `--executor ray`.

Each run computes the same stage (cpu-demo settings, prompt chunk 1) from a copy of one prepared store, in a fresh
process. Ray runs twice: with the local run's torch thread count per actor (the default: rows bit-identical to
local) and with one thread per actor (throughput; a near-tie token may flip). Prints the wall time of each command
(Ray's includes starting a local cluster and loading one model per actor), the stage's own time from its manifest,
the ratios, and whether the rows equal the local run's; exits 1 if the default Ray run's do not.

    python -m builder.bench.executor [--work DIR] [--profile cpu-demo] [--actors 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def _tsr(data: Path, *args: str, env: dict | None = None) -> None:
    subprocess.run([str(BIN / "tsr"), "--data", str(data), *args], check=True, stdout=subprocess.DEVNULL,
                   env=env)


def run_generate(prepared: Path, into: Path, profile: Path, executor: str) -> tuple[float, float]:
    """(wall seconds, the stage's own seconds) of one generate command from a copy of the prepared store."""
    from builder.store import Store

    shutil.copytree(prepared, into)
    started = time.perf_counter()
    _tsr(into, "generate", "--snapshot", "SmolLM2-135M-Instruct", "--profile", str(profile), "--executor", executor)
    wall = time.perf_counter() - started
    (manifest,) = Store.open(into).manifests(table="generations")
    return wall, manifest.stats["seconds"]


def rows(data: Path) -> list[tuple]:
    import polars as pl

    from builder.store import Store

    frame = pl.from_arrow(Store.open(data).read("generations"))
    return sorted(frame.select("generation_id", "text").rows())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--profile", default="cpu-demo")
    parser.add_argument("--actors", type=int, default=2, help="Ray actors (one CPU and one model each)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tsr-bench-executor-", dir=args.work) as scratch:
        root = Path(scratch)
        prepared = root / "prepared"
        _tsr(prepared, "models", "add", "--default")
        base = Path(args.profile) if args.profile.endswith((".yaml", ".yml")) else None
        from builder.config import profiles_dir

        text = (base or profiles_dir() / f"{args.profile}.yaml").read_text("utf-8")
        local_wall, local_stage = run_generate(prepared, root / "local", _profile(root, text, args.actors, 0),
                                               "local")
        expected = rows(root / "local")
        print(f"generate, {len(expected)} samples of the embedded model ({args.profile}), {os.cpu_count()} cores:")
        print(f"  local (one process, every core)         wall {local_wall:6.1f} s  stage {local_stage:6.1f} s")
        failed = False
        # threads 0: as many per actor as the local run used (rows bit-identical); 1: one per actor (throughput).
        for threads in (0, 1):
            into = root / f"ray-{threads}"
            wall, stage = run_generate(prepared, into, _profile(root, text, args.actors, threads), "ray")
            same = rows(into) == expected
            failed |= threads == 0 and not same
            shown = "local's threads" if threads == 0 else f"{threads} thread"
            print(f"  ray ({args.actors} actors, {shown} each)  wall {wall:6.1f} s  stage {stage:6.1f} s  "
                  f"ray/local {wall / local_wall:.2f}x wall, {stage / local_stage:.2f}x stage; rows "
                  f"{'identical' if same else 'different'}")
        if failed:
            sys.exit(1)


def _profile(root: Path, text: str, actors: int, threads: int) -> Path:
    path = root / f"bench-{threads}.yaml"
    path.write_text(f"{text}\nexecutor: {{actors: {actors}, cpus_per_actor: 1, threads_per_actor: {threads}}}\n",
                    "utf-8")
    return path

if __name__ == "__main__":
    main()
