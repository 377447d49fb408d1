"""One self-contained HTML file for a data root: versions, the lineage graph, the pair statistics and the plots.

Self-contained means no link leaves the file: styles are inline, the lineage graph is inline SVG and the plots are
PNGs embedded as data URIs, so the file can be mailed, attached to an issue or opened offline. Every table comes
from the named queries (builder/queries), like `tsr stats`.
"""

from __future__ import annotations

import base64
import html
import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from builder import stats
from builder.errors import TsrError
from builder.store import Store, now_utc

if TYPE_CHECKING:
    from builder.figure1 import Figure1

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td.text { text-align: left; white-space: normal; min-width: 6em; max-width: 40em; }
code, .mono { font-family: ui-monospace, Menlo, Consolas, monospace; }
.note { color: #666; font-size: 0.85em; } img { max-width: 100%; display: block; margin: 0.5em 0; }
.wide { max-width: 100%; overflow-x: auto; } svg.lineage { max-width: 100%; height: auto; }
"""

# Lineage graph geometry (pixels).
_BOX_W, _BOX_H, _GAP_X, _GAP_Y, _PAD = 200, 44, 70, 18, 10
_EDGE_COLORS = {"built pairs": "#1f77b4", "trained": "#2ca02c", "parent": "#999999", "phase 1 -> 2": "#ff7f0e"}
_NODE_FILL = {"m0": "#fde9c9", "iteration": "#d8ecd8", "future": "#eeeeee", "pairs": "#dbe8f6"}


def _esc(value) -> str:
    return html.escape("" if value is None else str(value))


def html_table(table: pa.Table, *, limit: int | None = None, digits: int = 3) -> str:
    """An HTML table of every column; text columns left-aligned, floats rounded to `digits`."""
    names = table.column_names
    text_columns = {n for n, t in zip(names, table.schema.types)
                    if pa.types.is_string(t) or pa.types.is_large_string(t)}
    rows = table.to_pylist()
    shown = rows if limit is None else rows[:limit]
    # in a box of its own that scrolls sideways, so a table of 25 columns never widens the page
    out = ['<div class="wide"><table><tr>' + "".join(f"<th>{_esc(n)}</th>" for n in names) + "</tr>"]
    for row in shown:
        cells = []
        for n in names:
            cls = ' class="text"' if n in text_columns else ""
            cells.append(f"<td{cls}>{_esc(stats._number(row[n], digits))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table></div>")
    if limit is not None and len(rows) > limit:
        out.append(f'<p class="note">{len(rows) - limit} more rows not shown.</p>')
    if not rows:
        out.append('<p class="note">(none)</p>')
    return "\n".join(out)


def lineage_svg(nodes: list[dict], edges: list[dict]) -> str:
    """Inline SVG of the lineage graph: columns by depth (longest path from a root), arrows coloured by relation."""
    if not nodes:
        return '<p class="note">No snapshots or pair versions yet.</p>'
    ids = [n["node"] for n in nodes]
    known = set(ids)
    edges = [e for e in edges if e["source"] in known and e["target"] in known and e["source"] != e["target"]]
    incoming = defaultdict(list)
    for e in edges:
        incoming[e["target"]].append(e["source"])
    depth: dict[str, int] = {}

    def level(node: str, seen: frozenset = frozenset()) -> int:
        if node not in depth:
            parents = [p for p in incoming[node] if p not in seen]  # lineage has no cycles; this only guards it
            depth[node] = 1 + max((level(p, seen | {node}) for p in parents), default=-1)
        return depth[node]

    columns: dict[int, list[dict]] = defaultdict(list)
    for node in nodes:
        columns[level(node["node"])].append(node)
    where: dict[str, tuple[int, int]] = {}
    for col, members in columns.items():
        for row, node in enumerate(members):
            where[node["node"]] = (_PAD + col * (_BOX_W + _GAP_X), _PAD + row * (_BOX_H + _GAP_Y))
    width = _PAD * 2 + (max(columns) + 1) * (_BOX_W + _GAP_X) - _GAP_X
    height = _PAD * 2 + max(len(m) for m in columns.values()) * (_BOX_H + _GAP_Y) - _GAP_Y + 20
    # scaled down to the page width (viewBox, CSS max-width): the graph grows with every iteration and method
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" width="{width}" height="{height}" '
              f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'),
             "<defs>" + "".join(
                 f'<marker id="arrow{i}" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" '
                 f'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="{color}"/></marker>'
                 for i, color in enumerate(_EDGE_COLORS.values())) + "</defs>"]
    marker = {relation: i for i, relation in enumerate(_EDGE_COLORS)}
    for e in edges:
        (x1, y1), (x2, y2) = where[e["source"]], where[e["target"]]
        color = _EDGE_COLORS.get(e["relation"], "#999999")
        arrow = f' marker-end="url(#arrow{marker[e["relation"]]})"' if e["relation"] in marker else ""
        parts.append(f'<line x1="{x1 + _BOX_W}" y1="{y1 + _BOX_H / 2}" x2="{x2}" y2="{y2 + _BOX_H / 2}" '
                     f'stroke="{color}" stroke-width="1.3"{arrow}><title>{_esc(e["relation"])}</title></line>')
    for node in nodes:
        x, y = where[node["node"]]
        key = "pairs" if node["kind"] == "pairs" else node["detail"]
        fill = _NODE_FILL.get(key, "#ffffff")
        dash = ' stroke-dasharray="4 2"' if node.get("temporary") else ""
        title = f"{node['label']} ({node['detail']})" if node["kind"] == "snapshot" else node["label"]
        parts.append(
            f'<g><title>{_esc(node["node"])}</title>'
            f'<rect x="{x}" y="{y}" width="{_BOX_W}" height="{_BOX_H}" rx="6" fill="{fill}" stroke="#555"{dash}/>'
            f'<text x="{x + 8}" y="{y + 17}" font-weight="bold">{_esc(_clip(title, 30))}</text>'
            f'<text x="{x + 8}" y="{y + 33}" class="mono">{_esc(node["node"][:20])}'
            f'{_esc(" · " + node["detail"]) if node["kind"] == "pairs" else ""}</text></g>')
    legend_y = height - 6
    x = _PAD
    for relation, color in _EDGE_COLORS.items():
        parts.append(f'<text x="{x}" y="{legend_y}" fill="{color}">— {_esc(relation)}</text>')
        x += 120
    parts.append("</svg>")
    return "\n".join(parts)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_report(
    store: Store,
    *,
    snapshot_id: str | None = None,
    text_kind: str = "response",
    judge: stats.JudgeKey | None = None,
    figure: tuple[Figure1, bytes] | None = None,
) -> str:
    """The report's HTML text. With a rescoring judge and an embedding snapshot it opens with Figure 1 (`figure`:
    an experiment's rows and their drawn PNG; else drawn from the store's latest final pairs)."""
    marker = json.loads((store.root / "store.json").read_text("utf-8"))
    versions_summary = stats.run_sql(
        store, 'select stage, "table", count(*) as versions, sum(rows) as rows, min(created_at) as first, '
        'max(created_at) as last from versions group by all order by first')
    versions_all = stats.run_sql(
        store, 'select version, stage, "table", rows, snapshot_id, created_at from versions order by created_at')
    nodes = stats.run_sql(store, stats.named_sql("lineage_nodes"), reads=["snapshots"]).to_pylist()
    edges = stats.run_sql(store, stats.named_sql("lineage_edges"), reads=["snapshots"]).to_pylist()
    snapshots = stats.run_sql(
        store, "select name, snapshot_id, role, temporary, parent_snapshot_id, pair_version, created_at "
        "from snapshots order by created_at", reads=["snapshots"])
    pair_table = stats.pair_stats(store)
    diag = stats.diagnostics(store, snapshot_id=snapshot_id, text_kind=text_kind, judge=judge)

    generated = now_utc().isoformat(timespec="seconds")
    about = (f'Generated {_esc(generated)}; store format {_esc(marker.get("format_version"))}, '
             f'schema {_esc(marker.get("schema_version"))}, created {_esc(marker.get("created_at"))}.')
    body = [f"<h1>temporal-sr report: {_esc(store.root)}</h1>", f'<p class="note">{about}</p>']
    # the diagnostics' plots first: what a reader opens the report for
    if judge is not None and snapshot_id is not None and pair_table.num_rows:
        body += ["<h2>Figure 1: score gap and similarity</h2>",
                 _figure1_html(store, figure, judge=judge, snapshot_id=snapshot_id, text_kind=text_kind)]
    body += ["<h2>Plots</h2>", _plots_html(store, snapshot_id, text_kind, judge, has_pairs=pair_table.num_rows > 0)]
    body += ["<h2>Versions</h2>", html_table(versions_summary),
             "<details><summary>Every version</summary>", html_table(versions_all, limit=2000), "</details>"]
    lineage_note = ("Snapshots (M0, trained iterations, dashed: temporary future models) and pair versions; an "
                    "arrow from a snapshot to pairs means it sampled and judged them, from pairs to a snapshot that "
                    "it was trained on them. Hover a box for its full id.")
    body += ["<h2>Lineage</h2>", f'<p class="note">{lineage_note}</p>', lineage_svg(nodes, edges),
             html_table(snapshots)]
    stats_note = ("One row per pair version (<code>tsr sql --query pair_stats</code>). Chosen from M_i or M_f, "
                  "rejected from M0 or M_i; lengths are completion tokens.")
    body += ["<h2>Pair statistics</h2>", f'<p class="note">{stats_note}</p>', html_table(pair_table)]
    diag_note = ["<code>gap_diagnostics</code>"]
    if judge is not None:
        diag_note.append(f"rescored by judge <code>{_esc(judge.judge_id)}</code> (<code>rescored_gap</code>)")
    if snapshot_id is not None:
        diag_note.append(f"similarity under snapshot <code>{_esc(snapshot_id)}</code>, {_esc(text_kind)} "
                         "(<code>pair_similarity</code>)")
    body += ["<h2>Vanishing-gap diagnostics</h2>", f'<p class="note">{"; ".join(diag_note)}.</p>', html_table(diag)]
    evals = stats.run_sql(store, stats.named_sql("evals"), reads=["evals"])
    evals_note = ("One row per evaluation (<code>tsr sql --query evals</code>): win, tie and loss rates of A against "
                  "B under a fixed judge, both orders (score = win + tie/2, bootstrap 95% interval), and IFEval "
                  "strict/loose accuracy; lengths are completion tokens.")
    body += ["<h2>Evaluations</h2>", f'<p class="note">{evals_note}</p>',
             html_table(evals) if evals.num_rows else
             '<p class="note">No evaluations yet (<code>tsr eval winrate</code>, <code>tsr eval ifeval</code>).</p>']
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>temporal-sr report: {_esc(store.root.name)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def _plots_html(store: Store, snapshot_id, text_kind, judge, *, has_pairs: bool) -> str:
    from builder import plots

    if not has_pairs:
        return '<p class="note">No pairs yet: nothing to plot.</p>'
    try:  # drawn in memory: the report writes nothing but its own file
        drawn = plots.draw_plots(store, snapshot_id=snapshot_id, text_kind=text_kind, judge=judge)
    except TsrError as exc:  # matplotlib missing: the report still has every table
        return f'<p class="note">Plots left out: {_esc(exc)}</p>'
    return "\n".join(_image(d.title, d.png) for d in drawn)


def _image(title: str, png: bytes, *, heading: bool = True) -> str:
    data = base64.b64encode(png).decode("ascii")
    image = f'<img alt="{_esc(title)}" src="data:image/png;base64,{data}">'
    return f"<h3>{_esc(title)}</h3>{image}" if heading else image


def _figure1_html(store: Store, figure: tuple[Figure1, bytes] | None, *, judge: stats.JudgeKey, snapshot_id: str,
                  text_kind: str) -> str:
    """The two panels and the table with the reading of each paired interval."""
    from builder import plots
    from builder.figure1 import figure1

    if figure is not None:
        fig, png = figure
        image = _image(fig.title, png, heading=False)  # the figure's own title says it
    else:
        fig = figure1(store, judge=judge, snapshot_id=snapshot_id, text_kind=text_kind)
        try:
            image = _image(fig.title, plots.figure1_png(fig), heading=False)
        except TsrError as exc:  # matplotlib missing: the table still says it all
            image = f'<p class="note">Figure left out: {_esc(exc)}</p>'
    note = ("Intervals: 95% percentile bootstrap over prompts. The reading compares each method with SR on the "
            "prompts both kept a pair for (paired bootstrap) and claims a difference only where that interval "
            "excludes 0.")
    table = fig.table.select("iteration", "method", "pairs", "rescored_gap", "rescored_gap_ci_low",
                             "rescored_gap_ci_high", "similarity", "similarity_ci_low", "similarity_ci_high",
                             "reading")
    return "\n".join([image, f'<p class="note">{note}</p>', html_table(table.to_arrow())])


def write_report(store: Store, out: Path, **options) -> Path:
    """Write the report to the file `out`: its folder must exist; a temporary file beside it is renamed over it."""
    from builder.readers import check_output_file, write_text_atomic

    out = check_output_file(Path(out))  # before the report is built
    return write_text_atomic(out, build_report(store, **options))
