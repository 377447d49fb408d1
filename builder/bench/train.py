"""Benchmark: one cpu-demo DPO training in-process, through `torchrun --nproc_per_node 1`, and on 2 processes.

The launcher's overhead is the torchrun-1 / in-process ratio; the 2-process figure says what data parallelism buys
(or costs) on this machine. All three train the same pair version from copies of one prepared store, so each is a
first training, not a no-op rerun. The pairs are iteration 1 of `tsr-past` on the embedded default model under the
cpu-demo profile, built once in a scratch folder; the run id must not depend on the number of processes, and the
benchmark checks that it does not.

    python -m builder.bench.train [--work DIR] [--profile cpu-demo]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Variant:
    name: str
    launcher: list[str]
    threads: int | None  # OMP threads per process; None keeps torch's default (every core)


def variants() -> list[Variant]:
    cores = os.cpu_count() or 1
    return [
        Variant("in-process", [sys.executable], None),
        Variant("torchrun, 1 process", [str(BIN / "torchrun"), "--nproc_per_node", "1"], None),
        # Two ranks on a small machine share its cores; more threads than cores would have them fight.
        Variant("torchrun, 2 processes", [str(BIN / "torchrun"), "--nproc_per_node", "2"], max(1, cores // 2)),
    ]


def _tsr(data: Path, *args: str) -> None:
    subprocess.run([str(BIN / "tsr"), "--data", str(data), *args], check=True, stdout=subprocess.DEVNULL)


def prepare(root: Path, profile: str) -> tuple[Path, str, int]:
    """A store with the embedded M0 and iteration 1's tsr-past pairs; returns (store, pair version, pair count)."""
    from builder.store import Store

    store_root = root / "prepared"
    _tsr(store_root, "pairs", "--iter", "1", "--method", "tsr-past", "--profile", profile)
    (pairs,) = Store.open(store_root).manifests(table="pairs")
    return store_root, pairs.version, pairs.rows


def train_once(variant: Variant, prepared: Path, version: str, profile: str, into: Path) -> tuple[float, str, Path]:
    """Seconds of one training from a fresh copy of the prepared store, its run id, and the new model file."""
    from builder.snapshot import list_snapshots
    from builder.store import Store

    shutil.copytree(prepared, into)
    env = dict(os.environ)
    if variant.threads is not None:
        env["OMP_NUM_THREADS"] = str(variant.threads)
    command = [*variant.launcher, "-m", "train.dpo", "--data", str(into), "--pairs", version, "--profile", profile]
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode:
        sys.exit(f"{variant.name} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    (snapshot,) = [s for s in list_snapshots(Store.open(into)) if s.run_id is not None]
    return seconds, snapshot.run_id, into / snapshot.path / "model.safetensors"


def max_weight_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    left, right = load_file(str(a)), load_file(str(b))
    return max(float((left[k].float() - right[k].float()).abs().max()) for k in left)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--profile", default="cpu-demo")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tsr-bench-train-", dir=args.work) as scratch:
        root = Path(scratch)
        started = time.perf_counter()
        prepared, version, pair_count = prepare(root, args.profile)
        print(f"prepared {pair_count} pairs ({version[:12]}) on the embedded model in "
              f"{time.perf_counter() - started:.0f} s; {os.cpu_count()} cores", flush=True)
        results = []
        for index, variant in enumerate(variants()):
            seconds, run_id, weights = train_once(variant, prepared, version, args.profile, root / f"run-{index}")
            results.append((variant, seconds, run_id, weights))
            print(f"  {variant.name:<24} {seconds:6.1f} s  ({seconds / max(pair_count, 1):.1f} s per pair)",
                  flush=True)
        base_seconds, base_run, base_weights = results[0][1], results[0][2], results[0][3]
        for variant, seconds, run_id, weights in results[1:]:
            if run_id != base_run:
                sys.exit(f"{variant.name} recorded run {run_id}, in-process {base_run}: the run id must not "
                         "depend on the launcher")
            print(f"{variant.name} / in-process: {seconds / base_seconds:.2f}x time; same run id; "
                  f"largest weight difference {max_weight_difference(base_weights, weights):.3g}")


if __name__ == "__main__":
    main()
