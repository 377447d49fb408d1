"""Benchmark: one cpu-demo DPO run through tsr (`train_dpo`) against raw TRL on the same pairs.

The raw side is what a user of TRL alone writes: DPOTrainer on the model folder with the same DPOConfig, train,
save_pretrained. tsr adds the run id, reading the pair version from the store, staging, adopting the folder as a
snapshot (hashing its files) and recording the run. Each run is its own process, with imports and the pair
dataset loaded before the clock starts on both sides; the sides alternate, and the best of each counts.

    python -m builder.bench.dpo [--rounds 2] [--profile cpu-demo]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run_side(side: str, store: Path, version: str, profile: str, out: Path) -> dict:
    """One training in a fresh process; returns its timings."""
    command = [sys.executable, "-m", "builder.bench.dpo", "--side", side, "--store", str(store), "--pairs", version,
               "--profile", profile, "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
        sys.exit(f"{side} DPO run failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _side(side: str, store_root: Path, version: str, profile: str, out: Path) -> None:
    """Inside the child process: train once and print {"seconds": ...} as the last stdout line."""
    import torch
    import trl  # noqa: F401

    from builder.config import load_profile
    from builder.snapshot import get_snapshot
    from builder.store import Store
    from train.data import load_pairs

    store = Store.open(store_root)
    cfg = load_profile(profile).train
    manifest = store.find_version(version)
    version = manifest.version
    start = get_snapshot(store, manifest.config["policy"])
    if side == "tsr":
        from train.dpo import train_dpo

        started = time.perf_counter()
        with store.writing():
            result = train_dpo(store, version, start, cfg)
        seconds = time.perf_counter() - started
        assert result.trained
        print(json.dumps({"seconds": seconds}))
        return
    from trl import DPOConfig, DPOTrainer

    from train.common import load_tokenizer, trainer_arguments

    dataset = load_pairs(store, version)
    folder = start.folder(store)
    started = time.perf_counter()
    tokenizer = load_tokenizer(folder)
    trainer = DPOTrainer(model=folder, args=DPOConfig(**trainer_arguments(DPOConfig, cfg, out), beta=cfg.beta),
                         train_dataset=dataset, processing_class=tokenizer)
    ready = time.perf_counter()
    trainer.train()
    trained = time.perf_counter()
    trainer.model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    done = time.perf_counter()
    print(json.dumps({"seconds": done - started, "set_up": ready - started, "train": trained - ready,
                      "save": done - trained}))


def measure(rounds: int = 2, profile: str = "cpu-demo") -> list[dict]:
    from builder.bench.train import prepare

    with tempfile.TemporaryDirectory(prefix="tsr-bench-dpo-") as scratch:
        root = Path(scratch)
        prepared, version, pairs = prepare(root, profile)
        times: dict[str, list[dict]] = {"tsr": [], "trl": []}
        for index in range(rounds):
            for side in ("tsr", "trl"):
                copy = root / f"{side}-{index}"
                shutil.copytree(prepared, copy)
                times[side].append(_run_side(side, copy, version, profile, root / f"{side}-{index}-out"))
                shutil.rmtree(copy)
    ours = min(t["seconds"] for t in times["tsr"])
    best_trl = min(times["trl"], key=lambda t: t["seconds"])
    theirs = best_trl["seconds"]
    overhead = ours / theirs - 1
    return [{
        "what": f"one cpu-demo DPO run, {pairs} pairs (best of {rounds})",
        "tsr": f"{ours:.1f} s",
        "alternative": "raw TRL DPOTrainer, same config and pairs",
        "baseline": f"{theirs:.1f} s (set-up {best_trl['set_up']:.1f}, train {best_trl['train']:.1f}, "
                    f"save {best_trl['save']:.1f})",
        "ratio": theirs / ours, "limit": "overhead <= 10%", "ok": overhead <= 0.10,
    }]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", default="cpu-demo")
    parser.add_argument("--side", choices=["tsr", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--pairs", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        _side(args.side, args.store, args.pairs, args.profile, args.out)
        return
    from builder.bench.table import Row, render

    print(render([Row(**row) for row in measure(args.rounds, args.profile)]))


if __name__ == "__main__":
    main()
