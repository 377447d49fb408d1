"""The short report the loop prints when it ends: pairs, drops, scores and time per stage."""

from __future__ import annotations

from builder.loop import IterationResult, Loop
from builder.store import Store


def loop_summary(store: Store, loop: Loop, result: IterationResult, seconds: float) -> str:
    lines = [f"iteration {result.iteration} ({result.method}): final pairs {result.final_pairs}",
             f"  policy M_{result.iteration - 1}: {result.policy.snapshot_id} ({result.policy.name})"]
    if result.future is not None:
        lines.append(f"  future M_f: {result.future.snapshot_id} (temporary)")
    for n in sorted(loop.results):
        for phase, version in loop.results[n].pair_versions.items():
            stats = store.manifest(version).stats
            lines.append(
                f"  iter {n} {phase:<3} {version}: {stats['kept']} pairs kept of {stats['prompts']} prompts, "
                f"{stats.get('tie', 0)} ties dropped, {stats.get('no_scored_current', 0)} without a scored sample, "
                f"{stats['unparsable']} unscored of {stats['samples']} judgments "
                f"({stats.get('parse_errors', 0)} without a parsable `Score: N`, scored by "
                f"{_by(stats.get('scored_by', {}))}); mean chosen "
                f"{_fmt(stats['mean_chosen'])}, mean rejected {_fmt(stats['mean_rejected'])}, "
                f"gap {_fmt(stats['mean_gap'])}"
            )
    work = loop.work
    lines.append(f"  computed: {work['generated']} generations, {work['judged']} judgments, "
                 f"{work['trained']} trained models (everything else reused)")
    timing = ", ".join(f"{name} {value:.1f}s" for name, value in sorted(loop.seconds.items()))
    lines.append(f"  time: {timing or 'nothing to compute'}; total {seconds:.1f}s")
    return "\n".join(lines)


def _by(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "-"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
