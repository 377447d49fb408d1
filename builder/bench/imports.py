"""Benchmark: `tsr prompts import` of a 10,000-line JSONL, end to end, against the obvious alternative.

The alternative is polars reading the JSONL and writing one Parquet file: no validation, dedup, ids, chunks,
checksums or manifest. Prints seconds of both, their ratio, and the no-op second import.

    python -m builder.bench.imports [--lines 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000)
    args = parser.parse_args(argv)
    import polars as pl

    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "prompts.jsonl"
        rng = random.Random(0)
        words = ["explain", "write", "compare", "list", "why", "how", "the", "a", "of", "data", "model", "river",
                 "poem", "code", "bug", "plan"]
        with source.open("w") as handle:
            for i in range(args.lines):
                text = " ".join(rng.choice(words) for _ in range(rng.randint(6, 30)))
                handle.write(json.dumps({"prompt": f"{i}: {text}?", "category": "bench"}) + "\n")
        env = dict(os.environ, TSR_HOME=str(Path(scratch) / "store"))
        command = [sys.executable, "-m", "builder", "prompts", "import", str(source)]

        started = time.perf_counter()
        first = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        tsr_seconds = time.perf_counter() - started
        started = time.perf_counter()
        second = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        noop_seconds = time.perf_counter() - started

        script = (f"import polars as pl; pl.read_ndjson({str(source)!r}).write_parquet("
                  f"{str(Path(scratch) / 'plain.parquet')!r})")
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", script], check=True)
        plain_seconds = time.perf_counter() - started

    print(f"{args.lines} lines, polars {pl.__version__}")
    print(f"tsr prompts import (first):   {tsr_seconds:6.2f}s  {first.stdout.strip()}")
    print(f"tsr prompts import (again):   {noop_seconds:6.2f}s  {second.stdout.strip()}")
    print(f"plain polars jsonl->parquet:  {plain_seconds:6.2f}s")
    print(f"ratio tsr/plain = {tsr_seconds / plain_seconds:.2f} (each includes Python start-up and imports)")


if __name__ == "__main__":
    main()
