"""`tsr experiment`: the paper's Figure 1 in one command, SR against TSR on one prompt set and one store.

Runs each method's loop (`sr` for N iterations, `tsr` and `tsr-past` for M), rescores every final pair with one
fixed judge, embeds every chosen and rejected response under one fixed snapshot, and writes the two-panel figure,
its table and the report. Nothing here computes anything itself: the loops, the rescoring and the embedding are
the content-keyed stages `tsr pairs` and `tsr stats` use, so

- the methods share every row they have in common: TSR's pass over M0 at iteration 1 draws SR's first pool too
  (same samples, same judgments), and TSR-without-future's M_1 is TSR's M_f of iteration 1 (the same DPO run on
  the same D1 from the same M0);
- a kill at any point loses nothing materialized, and a rerun resumes; a rerun of a finished experiment computes
  nothing and rewrites the same figure and table.

The output folder (named by the user) gets figure1.png, figure1.md, figure1.csv, report.html and experiment.json
(which pair version each method and iteration ended on, the judge and snapshot, and what this invocation computed
and how long it took: a rerun that reuses everything records nothing computed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from builder.backends.base import Generator
from builder.config import Profile
from builder.figure1 import Figure1
from builder.snapshot import Snapshot
from builder.stats import JudgeKey
from builder.store import Store

# TSR first: its pass over M0 at iteration 1 draws the current pool SR's iteration 1 reuses and the past pools of
# every later iteration; TSR-without-future then finds its D1 and its M_1 (TSR's M_f of iteration 1) built.
RUN_ORDER = ("tsr", "tsr-past", "sr")
DEFAULT_ITERATIONS = {"sr": 4, "tsr": 2, "tsr-past": 2}  # the paper's Figure 1: SR over 4, TSR over 2
OUTPUTS = ("figure1.png", "figure1.md", "figure1.csv", "report.html", "experiment.json")


@dataclass
class ExperimentResult:
    final_pairs: dict[str, dict[int, str]]  # method -> iteration -> the final pair version
    figure: Figure1
    judge: JudgeKey  # the rescoring judge's scores, as the diagnostics select them
    snapshot_id: str  # the embedding snapshot
    work: dict[str, int] = field(default_factory=dict)  # generated, judged, trained, rescored, embedded
    seconds: dict[str, float] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)


def run_loops(store: Store, settings: Profile, *, m0: Snapshot, prompt_set: str, iterations: dict[str, int],
              generator_factory: Callable[[Snapshot], Generator] | None = None,
              ) -> tuple[dict[str, dict[int, str]], dict[str, int], dict[str, float]]:
    """Each method's pairs up to its last iteration, in RUN_ORDER; (final pair versions, work, seconds)."""
    from builder.loop import Loop

    finals: dict[str, dict[int, str]] = {}
    work = {"generated": 0, "judged": 0, "trained": 0}
    seconds: dict[str, float] = {}
    for method in sorted(iterations, key=RUN_ORDER.index):
        loop = Loop(store, settings, m0=m0, prompt_set=prompt_set, method=method,
                    generator_factory=generator_factory)
        loop.iteration(iterations[method])  # the last first: the loop then plans every M0 pass of the run at once
        loop.release()
        finals[method] = {n: result.final_pairs for n, result in sorted(loop.results.items())}
        for name, count in loop.work.items():
            work[name] += count
        for stage, spent in loop.seconds.items():
            seconds[stage] = seconds.get(stage, 0.0) + spent
    return finals, work, seconds


def run_experiment(store: Store, settings: Profile, *, m0: Snapshot, prompt_set: str, iterations: dict[str, int],
                   judge: Snapshot, snapshot: Snapshot, text_kind: str = "response", profile: str | None = None,
                   executor: str | None = None, batch_size: int = 16,
                   generator_factory: Callable[[Snapshot], Generator] | None = None) -> ExperimentResult:
    """The loops, then the rescoring by `judge` and the embedding under `snapshot` of the experiment's final pairs
    (`profile` and `executor` as `tsr stats` takes them), then the figure's rows. Writes nothing outside the
    store; `write_outputs` writes the files."""
    from builder.diagnostics import prepare
    from builder.figure1 import figure1

    started = time.monotonic()
    finals, work, seconds = run_loops(store, settings, m0=m0, prompt_set=prompt_set, iterations=iterations,
                                      generator_factory=generator_factory)
    versions = sorted(v for by_iteration in finals.values() for v in by_iteration.values())
    measured = time.monotonic()
    prepared = prepare(store, snapshot_ref=snapshot.snapshot_id, text_kind=text_kind,
                       judge_ref=judge.snapshot_id, profile=profile, batch_size=batch_size, executor=executor,
                       versions=versions)
    seconds["rescore and embed"] = time.monotonic() - measured
    work.update(rescored=prepared.rescored, embedded=prepared.embedded)
    assert prepared.judge is not None and prepared.snapshot_id is not None  # both were asked for
    figure = figure1(store, judge=prepared.judge, snapshot_id=prepared.snapshot_id, text_kind=text_kind,
                     versions=versions, judge_name=judge.name, snapshot_name=snapshot.name)
    seconds["total"] = time.monotonic() - started
    return ExperimentResult(finals, figure, prepared.judge, prepared.snapshot_id, work, seconds)


def write_outputs(store: Store, result: ExperimentResult, out: Path, *, record: dict) -> list[Path]:
    """figure1.png, figure1.md, figure1.csv, report.html and experiment.json (`record`, the plan as the user gave
    it, with the final pair versions, the work and the time) in `out` (made if missing), each through a temporary
    file renamed over it."""
    from builder import figure1, plots
    from builder.readers import make_output_dir, write_bytes_atomic, write_text_atomic
    from builder.report import build_report

    out = make_output_dir(Path(out))
    fig = result.figure
    png = plots.figure1_png(fig)
    summary = (f"# Figure 1: {', '.join(_plan(result.final_pairs))}\n\n{fig.title}. Intervals: 95% percentile "
               "bootstrap over prompts (2,000 resamples, seeded by pair version); the reading compares each "
               "method with SR on the prompts both kept a pair for (paired bootstrap) and claims a difference only "
               "where that interval excludes 0.\n\n")
    written = [
        write_bytes_atomic(out / "figure1.png", png),
        write_text_atomic(out / "figure1.md", summary + figure1.markdown(fig)),
        write_text_atomic(out / "figure1.csv", fig.table.write_csv()),
        write_text_atomic(out / "report.html", build_report(store, snapshot_id=result.snapshot_id,
                                                            text_kind=fig.text_kind, judge=result.judge,
                                                            figure=(fig, png))),
    ]
    written.append(write_text_atomic(out / "experiment.json", json.dumps(
        {**record, "final_pairs": {m: {str(n): v for n, v in by.items()} for m, by in result.final_pairs.items()},
         "this_run": {"computed": result.work, "seconds": {k: round(v, 1) for k, v in result.seconds.items()}}},
        indent=2, default=str) + "\n"))
    return written


def _plan(finals: dict[str, dict[int, str]]) -> list[str]:
    from builder.plots import LABELS

    return [f"{LABELS.get(m, m)} x{len(finals[m])}" for m in sorted(finals, key=RUN_ORDER.index)]
