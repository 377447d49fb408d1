"""`tsr plot` and `tsr report`: real, non-blank PNGs of the expected size; one self-contained HTML file."""

from __future__ import annotations

import base64
import re
import struct
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import polars as pl
import pytest

from builder import plots, stats
from builder.store import Store
from tests.test_stats import J_KEY, build_store, embed_all

pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from the PNG header (the IHDR chunk always comes first)."""
    assert data[:8] == PNG_SIGNATURE, "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_real_png(data: bytes, size: tuple[int, int]) -> None:
    assert png_size(data) == size
    from PIL import Image  # matplotlib depends on Pillow, so it is here whenever plots are

    image = Image.open(BytesIO(data))
    image.load()  # decodes every pixel: a truncated or corrupt file fails here
    assert image.size == size
    colors = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is None or len(colors) > 10, "the image is (nearly) blank"


@pytest.fixture
def store(data_root) -> Store:
    store = build_store(data_root)
    embed_all(store)
    return store


def test_plots_are_real_images_of_the_expected_size(store, tmp_path):
    written = plots.write_plots(store, tmp_path / "plots", snapshot_id="m0")
    assert [p.name for p in written] == ["gap", "similarity", "scores"]
    sizes = {"gap": (800, 450), "similarity": (800, 450), "scores": (2 * 400, 2 * 300)}  # sr, tsr x iterations 1, 2
    for plot in written:
        assert plot.path.parent == tmp_path / "plots"
        assert_real_png(plot.path.read_bytes(), sizes[plot.name])
    # the gap chart and the similarity chart draw different numbers, so they differ
    assert written[0].path.read_bytes() != written[1].path.read_bytes()


def test_plot_cli(tsr, store, tmp_path):
    out = tmp_path / "pngs"
    listed = tsr("plot", "--out", str(out), "--method", "tsr").output.split()
    assert listed == [str(out / "gap.png"), str(out / "scores.png")]  # no --snapshot: no similarity plot
    assert_real_png((out / "scores.png").read_bytes(), (400, 300))  # tsr has iteration 1 only
    assert_real_png((out / "gap.png").read_bytes(), (800, 450))
    listed = tsr("plot", "--out", str(out), "--snapshot", "m0").output.split()
    assert [Path(p).name for p in listed] == ["gap.png", "similarity.png", "scores.png"]


def test_plot_with_a_fixed_judge_uses_its_gap(store, tmp_path, monkeypatch):
    drawn = {}
    original = plots.bar_chart

    def spy(frame, value, path, **kwargs):
        drawn[path.name] = frame.select("method", "iteration", value).rows()
        return original(frame, value, path, **kwargs)

    monkeypatch.setattr(plots, "bar_chart", spy)
    written = plots.write_plots(store, tmp_path, judge=J_KEY, snapshot_id="m0")
    assert "rescored by judge J" in written[0].title
    # final pairs: sr 1 (sr1), sr 2 (sr2, none kept), tsr 1 (tsrd2); figures as in test_stats
    assert drawn["gap.png"] == [("sr", 1, pytest.approx(1.0)), ("sr", 2, None), ("tsr", 1, pytest.approx(4.0))]
    assert drawn["similarity.png"][2] == ("tsr", 1, pytest.approx(1.0, rel=1e-6))


def test_plot_on_a_store_without_pairs(tsr, data_root, tmp_path):
    Store.init(data_root)
    result = tsr("plot", "--out", str(tmp_path / "p"), expect=1)
    assert result.output.startswith("Error: no pairs in") and len(result.output.splitlines()) == 1


def test_card_markdown(store, tmp_path):
    written = plots.write_plots(store, tmp_path)
    card = plots.card_markdown(written)
    assert "![Chosen - rejected score gap (each method's own judge)](plots/gap.png)" in card
    assert "(plots/scores.png)" in card and "similarity" not in card


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_report_is_one_self_contained_file(tsr, store, tmp_path):
    out = tmp_path / "report.html"
    assert tsr("report", "--out", str(out), "--snapshot", "m0").output.strip() == str(out)
    text = out.read_text("utf-8")
    parser = _Collector()
    parser.feed(text)
    tags = parser.tags
    # nothing is fetched from elsewhere: no scripts, stylesheets or remote images
    assert not [t for t, _ in tags if t in ("script", "link", "iframe")]
    images = [attrs["src"] for tag, attrs in tags if tag == "img"]
    assert len(images) == 3 and all(src.startswith("data:image/png;base64,") for src in images)
    sizes = [(800, 450), (800, 450), (800, 600)]
    for src, size in zip(images, sizes):
        assert_real_png(base64.b64decode(src.split(",", 1)[1]), size)
    for heading in ("Versions", "Lineage", "Pair statistics", "Vanishing-gap diagnostics", "Plots"):
        assert f"<h2>{heading}</h2>" in text
    # every version is listed; the stats tables carry the figures of test_stats
    for manifest in store.manifests():
        assert f">{manifest.version}<" in text
    assert "<td>4.300</td>" in text and "<td>0.354</td>" in text  # sr1's mean chosen, its similarity
    # the lineage graph is well-formed SVG with one box per snapshot and pair version, and its edges
    svg = ET.fromstring(re.search(r"<svg.*?</svg>", text, re.DOTALL).group(0))
    ns = "{http://www.w3.org/2000/svg}"
    boxes = [g.find(f"{ns}title").text for g in svg.iter(f"{ns}g")]
    assert sorted(boxes) == sorted(["m0", "mf", "J", "m1", "sr1", "sr2", "tsrd1", "tsrd2"])
    edges = sorted(line.find(f"{ns}title").text for line in svg.iter(f"{ns}line"))
    assert edges == sorted(["built pairs"] * 4 + ["parent"] * 2 + ["trained"] * 2 + ["phase 1 -> 2"])


def test_report_with_a_judge_and_a_snapshot_opens_with_figure_1(store, tmp_path, monkeypatch):
    import tempfile

    from builder.report import write_report

    made = []  # where each temporary file or folder was made: the PNGs are drawn in memory, never through a file

    def recording(original):
        def record(*args, **kwargs):
            made.append(kwargs.get("dir"))
            return original(*args, **kwargs)

        return record

    for name in ("mkdtemp", "mkstemp"):
        monkeypatch.setattr(tempfile, name, recording(getattr(tempfile, name)))
    out = write_report(store, tmp_path / "report.html", snapshot_id="m0", judge=J_KEY)
    assert made == [tmp_path]  # the report's own file, written beside it and renamed
    text = out.read_text("utf-8")
    start, end = text.index("<h2>Figure 1: score gap and similarity</h2>"), text.index("<h2>Plots</h2>")
    section = text[start:end]
    image = re.search(r'src="data:image/png;base64,([^"]+)"', section).group(1)
    assert_real_png(base64.b64decode(image), (1100, 450))
    # final pairs rescored by J (as in test_stats): sr 1 (1.0), sr 2 (none kept), tsr 1 (4.0); tsr against sr at
    # iteration 1: the two kept pairs for different prompts, so there is nothing to pair
    rows = re.findall(r"<tr>(.*?)</tr>", section, re.DOTALL)[1:]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]
    assert [(c[0], c[1], c[3]) for c in cells] == [("1", "sr", "1.000"), ("1", "tsr", "4.000"), ("2", "sr", "-")]
    assert cells[0][-1] == "baseline"
    assert cells[1][-1] == "gap: no prompt has a value for both methods; similarity: no prompt has a value for both methods"


def test_report_on_a_store_without_pairs(tsr, data_root, tmp_path):
    Store.init(data_root)
    out = tmp_path / "empty.html"
    tsr("report", "--out", str(out))
    text = out.read_text("utf-8")
    assert "No pairs yet: nothing to plot." in text and "No snapshots or pair versions yet." in text


# ---- end to end on the tiny model: the HF hidden states and a fixed judge -----------------------------------------


@pytest.mark.slow
def test_diagnostics_on_a_loop_store(tsr, data_root, tmp_path):
    from tests.test_loop import TINY_PROFILE
    from tests.tiny_model import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny")
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    tsr("models", "add", str(model), "--name", "tiny", "--role", "m0")
    tsr("pairs", "--iter", "1", "--method", "tsr", "--m0", "tiny", "--profile", str(profile))
    store = Store.open(data_root)
    judged = pl.from_arrow(store.read("judgments")).height

    # the data is stdout; the stages' progress lines go to stderr, which click's `output` interleaves
    out = tsr("stats", "--snapshot", "tiny", "--judge", "tiny", "--profile", str(profile), "--format", "csv").stdout
    frame = pl.read_csv(out.encode())
    assert frame["phase"].to_list() == ["d1", "d2"] and frame["pairs"].sum() > 0
    # M0 judged iteration 1 with these very settings, so rescoring by it reuses every judgment: same gap
    assert Store.open(data_root).read("judgments").num_rows == judged
    assert frame["rescored_pairs"].to_list() == frame["pairs"].to_list()
    for gap, rescored in zip(frame["mean_gap"], frame["rescored_gap"]):
        assert rescored == pytest.approx(gap)
    assert frame["embedded_pairs"].to_list() == frame["pairs"].to_list()
    assert all(-1.0 <= s <= 1.0 for s in frame["similarity"])
    embedded = pl.from_arrow(Store.open(data_root).read("embeddings"))
    assert embedded["mean_hidden"].list.len().unique().to_list() == [16]  # the tiny model's hidden size

    report = tmp_path / "report.html"
    tsr("report", "--out", str(report), "--snapshot", "tiny", "--judge", "tiny", "--profile", str(profile))
    assert Store.open(data_root).read("embeddings").num_rows == embedded.height  # cached, not recomputed
    assert report.read_text("utf-8").count("data:image/png;base64,") == 4  # Figure 1, gap, similarity, scores


def test_bars_carry_the_bootstrap_interval_as_whiskers(store, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    whiskers = []
    original = Axes.bar

    def spy(self, xs, ys, *args, **kwargs):
        whiskers.append((list(ys), kwargs.get("yerr")))
        return original(self, xs, ys, *args, **kwargs)

    monkeypatch.setattr(Axes, "bar", spy)
    plots.write_plots(store, tmp_path)
    rows = stats.final_rows(stats.diagnostics(store)).filter(pl.col("mean_gap").is_not_null())
    sr1 = rows.filter(pl.col("pair_version") == "sr1").row(0, named=True)
    (sr_bars, sr_whiskers), (tsr_bars, _) = whiskers[:2]  # gap.png: SR's bars, then TSR's
    assert sr_bars == [pytest.approx(sr1["mean_gap"])]
    assert sr_whiskers == [[pytest.approx(sr1["mean_gap"] - sr1["gap_ci_low"])],
                           [pytest.approx(sr1["gap_ci_high"] - sr1["mean_gap"])]]
    assert tsr_bars == [pytest.approx(3.5)]


def _four_iterations_of_two_methods(root: Path) -> Store:
    """Pair versions and snapshots of SR and TSR for 4 iterations each (TSR: D1, D2 and M_f), chained like a loop
    store: M_{i-1} built iteration i's pairs, M_i trained on its final pairs."""
    from builder.snapshot import Snapshot, register
    from schemas.tables import PAIRS
    from tests.test_stats import _T0, _write

    store = Store.open(root, create=True)
    with store.writing():
        register(store, Snapshot("m0", "SmolLM2-135M-Instruct", "m0", hub_repo="x/m0"))
        for method, phases in (("sr", ["sr"]), ("tsr", ["d1", "d2"])):
            policy = "m0"
            for n in range(1, 5):
                for phase in phases:
                    version = f"{method}-{n}-{phase}"
                    rows = [{"pair_id": f"{version}-{p}", "pair_version": version, "method": method, "iteration": n,
                             "phase": phase, "prompt_id": f"p{p}", "chosen_generation_id": f"c{p}",
                             "rejected_generation_id": f"r{p}", "chosen_score": 4.0, "rejected_score": 1.0 + p / 4,
                             "gap": 3.0 - p / 4, "chosen_pool": "current", "rejected_pool": "past",
                             "chosen_sample_index": 0, "rejected_sample_index": 3, "chosen_snapshot_id": policy,
                             "rejected_snapshot_id": "m0", "judge_id": policy, "created_at": _T0} for p in range(6)]
                    _write(store, "pairs", rows, PAIRS, version,
                           {"method": method, "iteration": str(n), "phase": phase}, stage="pairs",
                           config={"method": method, "iteration": n, "phase": phase, "judge": policy,
                                   "policy": policy},
                           parents=[f"{method}-{n}-d1"] if phase == "d2" else [], snapshot_id=policy,
                           stats={"kept": len(rows)})
                    if phase == "d1":
                        register(store, Snapshot(f"mf-{method}-{n}", f"Mf{n}-{method}", "future", hub_repo="x/f",
                                                 temporary=True, parent_snapshot_id=policy, pair_version=version))
                trained = f"m{n}-{method}"
                register(store, Snapshot(trained, f"M{n}-{method}", "iteration", hub_repo=f"x/{trained}",
                                         parent_snapshot_id=policy, pair_version=f"{method}-{n}-{phases[-1]}"))
                policy = trained
    return Store.open(root)


def find_chromium() -> str:
    """Debian's headless Chromium, or a skip that says why."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    return chromium


def page_widths(chromium: str, html: str, folder: Path) -> tuple[int, int]:
    """(the page's scroll width, the window's width) of `html` opened at 1280 x 900 px, read by a probe that runs
    once the page has loaded."""
    import subprocess

    probe = ('<script>window.addEventListener("load", () => { const page = document.documentElement; '
             'document.body.setAttribute("data-widths", page.scrollWidth + " " + window.innerWidth); });</script>')
    probed = folder / "probed.html"
    probed.write_text(html.replace("</body>", probe + "</body>"), "utf-8")
    dumped = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
         f"--user-data-dir={folder / 'profile'}", "--window-size=1280,900", "--dump-dom", probed.as_uri()],
        capture_output=True, text=True, timeout=120, check=True).stdout
    scroll_width, inner_width = map(int, re.search(r'data-widths="(\d+) (\d+)"', dumped).groups())
    return scroll_width, inner_width


def test_the_report_fits_a_laptop_screen_in_headless_chromium(tsr, tmp_path):
    """1280 px wide: the lineage graph (8 columns, over 2,000 px at its natural size) and the 25-column tables
    stay inside the page; the page never scrolls sideways."""
    chromium = find_chromium()
    store = _four_iterations_of_two_methods(tmp_path / "store")
    report = tmp_path / "report.html"
    tsr("--data", str(store.root), "report", "--out", str(report))
    text = report.read_text("utf-8")
    width = int(re.search(r'<svg [^>]*class="lineage" width="(\d+)"', text).group(1))
    assert width > 1280  # the case this test is about: a graph wider than the screen
    scroll_width, inner_width = page_widths(chromium, text, tmp_path)
    assert inner_width == 1280 and scroll_width <= inner_width
    assert text.index("<h2>Plots</h2>") < text.index("<h2>Versions</h2>")  # the figures come first
