"""PNG plots of the pair statistics (matplotlib, Agg backend): the two vanishing-gap diagnostics and score histograms.

    gap.png         mean chosen-minus-rejected gap of the final pairs per iteration, methods side by side
                    (rescored by one fixed judge when one is given, so SR and TSR share a scale)
    similarity.png  mean cosine of chosen vs rejected hidden states per iteration, methods side by side
                    (only with an embedding snapshot)
    scores.png      histograms of chosen and rejected scores, one panel per method (rows) and iteration (columns)
    figure1.png     the paper's Figure 1 (`tsr experiment`): rescored gap and similarity against iteration, one
                    line per method with its interval as a band

Every plotted number comes from the named queries (builder/stats.py). Plots are drawn in memory (the report embeds
the bytes) and written only where the user asks. Sizes are fixed (pixels = inches * DPI), so a card or report can
lay them out: BAR_SIZE for the bar charts, PANEL_SIZE per histogram panel, FIGURE1_SIZE for the two panels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import polars as pl

from builder import stats
from builder.errors import TsrError
from builder.store import Store

if TYPE_CHECKING:
    from builder.figure1 import Figure1

DPI = 100
BAR_SIZE = (8.0, 4.5)  # inches: 800 x 450 pixels
PANEL_SIZE = (4.0, 3.0)  # inches per histogram panel: 400 x 300 pixels
FIGURE1_SIZE = (11.0, 4.5)  # inches: 1100 x 450 pixels, two panels
COLORS = {"sr": "#d62728", "tsr-past": "#ff7f0e", "tsr": "#1f77b4", "chosen": "#2ca02c", "rejected": "#7f7f7f"}
LABELS = {"sr": "SR", "tsr-past": "TSR w/o future", "tsr": "TSR"}
_INSTALL = "pip install 'temporal-sr[plots]'"


@dataclass(frozen=True)
class Plot:
    name: str  # file stem: gap, similarity, scores
    path: Path
    title: str


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise TsrError(f"plots need matplotlib: {_INSTALL}") from None
    matplotlib.use("Agg", force=True)  # files only, never a window; works without a display
    import matplotlib.pyplot as plt

    return plt


def _methods(frame: pl.DataFrame) -> list[str]:
    present = set(frame["method"].to_list()) if not frame.is_empty() else set()
    return [m for m in stats.METHODS if m in present] + sorted(present - set(stats.METHODS))


def canvas(name: str) -> io.BytesIO:
    """An in-memory PNG named like the file it may become: drawing never touches the disk (the report embeds the
    bytes; `write_plots` writes them where the user asked)."""
    target = io.BytesIO()
    target.name = f"{name}.png"
    return target


def _save(plt, fig, target: BinaryIO) -> None:
    try:
        fig.savefig(target, dpi=DPI, format="png")
    finally:
        plt.close(fig)


def bar_chart(frame: pl.DataFrame, value: str, path: BinaryIO, *, title: str, ylabel: str) -> BinaryIO:
    """Grouped bars: x = iteration, one bar per method side by side, each labelled with its value; the whiskers are
    the 95% bootstrap interval over prompts where `frame` has it (`<figure>_ci_low`, `<figure>_ci_high`)."""
    plt = _pyplot()
    rows = frame.filter(pl.col(value).is_not_null())
    methods = _methods(rows)
    iterations = sorted(set(rows["iteration"].to_list())) if not rows.is_empty() else []
    low_column, high_column = (f"{value.removeprefix('mean_')}_ci_{end}" for end in ("low", "high"))
    fig, ax = plt.subplots(figsize=BAR_SIZE, dpi=DPI)
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        own = rows.filter(pl.col("method") == method)
        values = dict(own.select("iteration", value).iter_rows())
        xs = [n + (i - (len(methods) - 1) / 2) * width for n in iterations if n in values]
        ys = [values[n] for n in iterations if n in values]
        whiskers = None
        if low_column in own.columns:
            bounds = {n: (low, high) for n, low, high in own.select("iteration", low_column, high_column).iter_rows()}
            # no interval (fewer than two pairs): no whisker
            whiskers = [[values[n] - (bounds[n][0] if bounds[n][0] is not None else values[n]) for n in iterations
                         if n in values],
                        [(bounds[n][1] if bounds[n][1] is not None else values[n]) - values[n] for n in iterations
                         if n in values]]
        bars = ax.bar(xs, ys, width=width * 0.95, color=COLORS.get(method), label=LABELS.get(method, method),
                      yerr=whiskers, capsize=3, error_kw={"linewidth": 0.8})
        ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=8, padding=2)
    ax.set_xticks(iterations, [str(n) for n in iterations])
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title + ("\n(whiskers: 95% bootstrap interval over prompts)" if low_column in rows.columns else ""),
                 fontsize=10)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.margins(y=0.15)
    if methods:
        ax.legend(frameon=False)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
    fig.tight_layout()
    _save(plt, fig, path)
    return path


def score_histograms(histogram: pl.DataFrame, path: BinaryIO, *, methods: list[str] | None = None,
                     iterations: list[int] | None = None) -> BinaryIO:
    """One panel per method (rows) and iteration (columns): chosen and rejected score counts.

    `methods` and `iterations` default to those in `histogram`; pass them to keep a panel ("no pairs") for an
    iteration that kept none. The score axis is shared and spans at least the rubric's 0..5.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    methods = methods or _methods(histogram)
    iterations = iterations or (sorted(set(histogram["iteration"].to_list())) if not histogram.is_empty() else [1])
    rows, cols = max(1, len(methods)), max(1, len(iterations))
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), dpi=DPI,
                             squeeze=False)
    width = 0.25  # the bin width of score_histogram.sql
    bins = histogram["bin_start"].to_list() if not histogram.is_empty() else []
    low, high = min([0.0, *bins]), max([5.0, *bins]) + width
    for r, method in enumerate(methods or [""]):
        for c, n in enumerate(iterations):
            ax = axes[r][c]
            panel = histogram.filter((pl.col("method") == method) & (pl.col("iteration") == n))
            if panel.is_empty():
                ax.text(0.5, 0.5, "no pairs", transform=ax.transAxes, ha="center", va="center")
            for offset, side in ((0.0, "chosen"), (width / 2, "rejected")):
                part = panel.filter(pl.col("side") == side)
                if not part.is_empty():
                    ax.bar([b + offset for b in part["bin_start"].to_list()], part["pairs"].to_list(),
                           width=width / 2, align="edge", color=COLORS[side], label=side)
            phase = panel["phase"][0] if not panel.is_empty() else ""
            ax.set_title(f"{LABELS.get(method, method)}, iteration {n} {phase}".strip(), fontsize=10)
            ax.set_xlim(low - width, high + width)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("score", fontsize=8)
            ax.set_ylabel("pairs", fontsize=8)
            ax.tick_params(labelsize=8)
            if not panel.is_empty():
                ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    _save(plt, fig, path)
    return path


@dataclass(frozen=True)
class Drawn:
    """A plot drawn in memory: `png` is the image file's bytes."""

    name: str  # file stem: gap, similarity, scores, figure1
    title: str
    png: bytes


def draw_plots(
    store: Store,
    *,
    method: str | None = None,
    snapshot_id: str | None = None,
    text_kind: str = "response",
    judge: stats.JudgeKey | None = None,
) -> list[Drawn]:
    """The gap chart, the similarity chart (with an embedding snapshot) and the score histograms, as PNG bytes."""
    _pyplot()  # fail early, before any query, when matplotlib is missing
    table = stats.diagnostics(store, method=method, snapshot_id=snapshot_id, text_kind=text_kind, judge=judge)
    final = stats.final_rows(table)
    if final.is_empty():
        raise TsrError(f"no pairs in {store.root}{f' for method {method}' if method else ''}: nothing to plot")
    drawn = []
    if judge is not None:
        title = f"Chosen - rejected score gap, rescored by judge {judge.judge_id[:10]}"
        value = "rescored_gap"
    else:
        title = "Chosen - rejected score gap (each method's own judge)"
        value = "mean_gap"
    drawn.append(Drawn("gap", title, bar_chart(final, value, canvas("gap"), title=title,
                                               ylabel="mean score gap").getvalue()))
    if snapshot_id is not None:
        title = f"Chosen / rejected similarity (cosine of mean hidden states, {text_kind}, {snapshot_id[:10]})"
        image = bar_chart(final, "similarity", canvas("similarity"), title=title, ylabel="mean cosine similarity")
        drawn.append(Drawn("similarity", title, image.getvalue()))
    histogram = pl.from_arrow(stats.query(store, "score_histogram", method=method))
    assert isinstance(histogram, pl.DataFrame)
    # the final phase's latest pair version per method and iteration, as in the bar charts
    histogram = histogram.join(final.select("pair_version"), on="pair_version", how="semi")
    title = "Chosen and rejected scores of the final pairs"
    image = score_histograms(histogram, canvas("scores"), methods=_methods(final),
                             iterations=sorted(set(final["iteration"].to_list())))
    drawn.append(Drawn("scores", title, image.getvalue()))
    return drawn


def write_plots(store: Store, out_dir: Path, **options) -> list[Plot]:
    """Write gap.png, similarity.png (with an embedding snapshot) and scores.png into `out_dir` (`draw_plots`'s
    options); each file through a temporary file renamed over it, so a failed write leaves no partial image."""
    from builder.readers import check_output_dir, make_output_dir, write_bytes_atomic

    check_output_dir(Path(out_dir))  # a file as --out, or an unwritable place: one line, before any query
    drawn = draw_plots(store, **options)
    out_dir = make_output_dir(Path(out_dir))  # the user named it: missing parents are made too
    return [Plot(d.name, write_bytes_atomic(out_dir / f"{d.name}.png", d.png), d.title) for d in drawn]


def figure1_png(fig: Figure1) -> bytes:
    """Figure 1 of `tsr experiment` (builder/figure1.py) as PNG bytes, its axes naming the judge and the snapshot."""
    return figure1_panels(fig.table, canvas("figure1"), title=fig.title,
                          gap_label=f"mean score gap (judge {fig.judge})",
                          similarity_label=f"mean cosine similarity ({fig.snapshot})").getvalue()


def figure1_panels(final: pl.DataFrame, target: BinaryIO, *, title: str, gap_label: str,
                   similarity_label: str) -> BinaryIO:
    """The paper's Figure 1: the rescored gap (left) and the chosen/rejected similarity (right) against iteration,
    one line per method, its 95% bootstrap interval over prompts as a band. `final` has one row per method and
    iteration with rescored_gap and similarity and their `_ci_low` / `_ci_high` columns."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=FIGURE1_SIZE, dpi=DPI)
    for ax, value, label in ((axes[0], "rescored_gap", gap_label), (axes[1], "similarity", similarity_label)):
        rows = final.filter(pl.col(value).is_not_null()) if value in final.columns else final.clear()
        for method in _methods(rows):
            own = rows.filter(pl.col("method") == method).sort("iteration")
            xs, ys = own["iteration"].to_list(), own[value].to_list()
            color = COLORS.get(method)
            ax.plot(xs, ys, marker="o", color=color, label=LABELS.get(method, method))
            banded = own.filter(pl.col(f"{value}_ci_low").is_not_null())  # fewer than two pairs: no interval
            if not banded.is_empty():
                ax.fill_between(banded["iteration"].to_list(), banded[f"{value}_ci_low"].to_list(),
                                banded[f"{value}_ci_high"].to_list(), color=color, alpha=0.18, linewidth=0)
        ax.set_xlabel("iteration")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if rows.is_empty():
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        else:
            ax.legend(frameon=False, fontsize=9)
    axes[0].set_title("Chosen - rejected score gap", fontsize=10)
    axes[1].set_title("Chosen / rejected similarity", fontsize=10)
    fig.suptitle(title + "\n(bands: 95% bootstrap interval over prompts)", fontsize=10)
    fig.tight_layout()
    _save(plt, fig, target)
    return target


def card_markdown(plots: list[Plot], prefix: str = "plots/") -> str:
    """A dataset-card section that shows the plots; `prefix` is their folder relative to the card (README.md)."""
    lines = ["## Pair statistics", ""]
    for plot in plots:
        lines += [f"![{plot.title}]({prefix}{plot.path.name})", ""]
    return "\n".join(lines)
