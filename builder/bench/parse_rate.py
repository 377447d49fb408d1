"""Parse rate of `Score: N` judgments before and after SFT (IFT + EFT), on held-back generations.

    python -m builder.bench.parse_rate --data /tmp/sft-data [--prompts 16] [--k 2] [--chunk 5]

Steps, each a `tsr` command (so every result lands in the store and a rerun reuses it):
  1. the embedded default M0 (`tsr models add --default`);
  2. M0 samples K responses for the first N prompts of a held-back chunk (chunk 5: the loop's last iteration, never
     in the seed sets);
  3. M0 judges them in `generate` mode (self-judging: the "before" figure);
  4. `tsr sft` of M0 on the shipped IFT and EFT seed sets with the cpu-demo profile (timed);
  5. the SFT result judges the same generations in `generate` mode (the "after" figure).
Prints one JSON object: the share of judgments with scored_by == "generate" for each judge, and the SFT seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tsr(data: Path, *args: str) -> str:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "builder", "--data", str(data), *args], capture_output=True,
                            text=True, check=False)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"tsr {' '.join(args)} failed:\n{result.stderr or result.stdout}")
    print(f"[{seconds:7.1f}s] tsr {' '.join(args)}\n          {result.stdout.strip().splitlines()[-1]}",
          file=sys.stderr)
    return result.stdout


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m builder.bench.parse_rate", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="data root (a scratch store is fine)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts of the held-back chunk")
    parser.add_argument("-k", "--k", type=int, default=2, help="responses per prompt (prompts x k >= 32)")
    parser.add_argument("--chunk", type=int, default=5, help="the held-back prompt chunk")
    parser.add_argument("--judge-max-new-tokens", type=int, default=96, help="room for justification + score")
    parser.add_argument("--profile", default="cpu-demo", help="profile of `tsr sft` and of sampling")
    args = parser.parse_args(argv)

    from builder.config import profile_path

    base = profile_path(args.profile).read_text("utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        profile = Path(tmp) / "parse-rate.yaml"
        # The named profile with the held-back prompts' count in place of its loop section.
        loop = f"\nloop: {{chunks: 5, prompts_per_iteration: {args.prompts}}}\n"
        profile.write_text(_without_section(base, "loop") + loop, "utf-8")
        m0 = tsr(args.data, "models", "add", "--default").split()[1]
        common = ["--chunk", str(args.chunk), "-k", str(args.k), "--profile", str(profile), "--mode", "generate",
                  "--judge-max-new-tokens", str(args.judge_max_new_tokens)]
        tsr(args.data, "judge", "--snapshot", m0, *common)
        started = time.monotonic()
        sft_out = tsr(args.data, "sft", "--base", m0, "--profile", args.profile)
        sft_seconds = round(time.monotonic() - started, 1)
        sft = sft_out.split()[1]
        tsr(args.data, "judge", "--snapshot", m0, "--judge", sft, *common)

    query = (
        "select judge_id, count(*) as judgments, count(*) filter (where scored_by = 'generate') as parsed "
        "from judgments j join generations g using (generation_id) "
        f"where j.mode = 'generate' and j.max_new_tokens = {args.judge_max_new_tokens} "
        f"and g.snapshot_id = '{m0}' and j.judge_id in ('{m0}', '{sft}') group by judge_id"
    )
    rows = _query(args.data, query)
    report = {
        "m0": m0, "sft": sft, "sft_seconds": sft_seconds,
        "before": {"parsed": rows[m0]["parsed"], "judgments": rows[m0]["judgments"],
                   "rate": round(rows[m0]["parsed"] / rows[m0]["judgments"], 4)},
        "after": {"parsed": rows[sft]["parsed"], "judgments": rows[sft]["judgments"],
                  "rate": round(rows[sft]["parsed"] / rows[sft]["judgments"], 4)},
    }
    print(json.dumps(report))
    return report


def _query(data: Path, query: str) -> dict[str, dict]:
    from builder.sql import run_query
    from builder.store import Store

    result = run_query(Store.open(data), query)
    return {row["judge_id"]: row for row in result.to_pylist()}


def _without_section(text: str, section: str) -> str:
    """The profile YAML without one top-level section (its header line and the indented lines under it)."""
    kept, skipping = [], False
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            skipping = line.split(":")[0] == section
        if not skipping:
            kept.append(line)
    return "\n".join(kept) + "\n"


if __name__ == "__main__":  # pragma: no cover
    main()
