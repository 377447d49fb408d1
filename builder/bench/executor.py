"""Benchmark: the generate stage on the embedded model with `--executor local` against `--executor ray`.

Both run the same stage (cpu-demo settings, prompt chunk 1) from copies of one prepared store, in fresh processes,
so each computes every row. Prints the wall time of each command (Ray's includes starting a local cluster and
loading one model per actor), the stage's own time from its manifest, their ratios, and whether the two stores
hold the same rows.

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


def run_generate(prepared: Path, into: Path, profile: str, executor: str) -> tuple[float, float]:
    """(wall seconds, the stage's own seconds) of one generate command from a copy of the prepared store."""
    from builder.store import Store

    shutil.copytree(prepared, into)
    started = time.perf_counter()
    _tsr(into, "generate", "--snapshot", "SmolLM2-135M-Instruct", "--profile", profile, "--executor", executor)
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
        profile = root / "bench.yaml"
        base = Path(args.profile) if args.profile.endswith((".yaml", ".yml")) else None
        from builder.config import profiles_dir

        text = (base or profiles_dir() / f"{args.profile}.yaml").read_text("utf-8")
        profile.write_text(f"{text}\nexecutor: {{actors: {args.actors}, cpus_per_actor: 1}}\n", "utf-8")
        local_wall, local_stage = run_generate(prepared, root / "local", str(profile), "local")
        ray_wall, ray_stage = run_generate(prepared, root / "ray", str(profile), "ray")
        same = rows(root / "local") == rows(root / "ray")
        count = len(rows(root / "local"))
        print(f"generate, {count} samples of the embedded model ({args.profile}), {os.cpu_count()} cores:")
        print(f"  local (one process, every core)   wall {local_wall:6.1f} s  "
              f"stage {local_stage:6.1f} s")
        print(f"  ray ({args.actors} actors, 1 CPU each)   wall {ray_wall:6.1f} s  stage {ray_stage:6.1f} s")
        print(f"ray / local: {ray_wall / local_wall:.2f}x wall, {ray_stage / local_stage:.2f}x stage; "
              f"rows {'identical' if same else 'DIFFERENT'}")
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
