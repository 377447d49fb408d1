"""`tsr experiment` end to end on a tiny random llama: SR x3 against TSR and TSR without the future x2, every figure
of the table recomputed here by hand from the stored pairs, judgments and embeddings, every interval against a
plain-Python bootstrap with the same seed; shared rows, a rerun that computes nothing, a kill and a resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from builder.intervals import interval_seed
from builder.store import Store
from tests.test_loop import TINY_PROFILE
from tests.test_plots_report import assert_real_png
from tests.test_stats import _plain_bootstrap
from tests.tiny_model import make_tiny_model

pytest.importorskip("matplotlib")

ARGS = ["--m0", "tiny", "--profile", "{profile}", "--sr-iters", "3", "--tsr-iters", "2"]
OUTPUTS = {"figure1.png", "figure1.md", "figure1.csv", "report.html", "experiment.json"}


def _run(data_root: Path, profile: Path, out: Path, extra: tuple[str, ...] | list[str] = (),
         **env: str) -> subprocess.CompletedProcess:
    from tests.conftest import tsr_env

    args = [a.format(profile=profile) for a in ARGS]
    return subprocess.run([sys.executable, "-m", "builder", "experiment", "--out", str(out), *args, *extra],
                          env=tsr_env(data_root, **env), capture_output=True, text=True, timeout=900, check=False)


def _fresh_store(root: Path, model: Path) -> None:
    from click.testing import CliRunner

    from builder.cli import cli

    result = CliRunner().invoke(cli, ["--data", str(root), "models", "add", str(model), "--name", "tiny",
                                      "--role", "m0"])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """One finished experiment: (data root, output folder, profile, tiny model, stdout)."""
    base = tmp_path_factory.mktemp("experiment")
    model = make_tiny_model(base / "model")
    profile = base / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    root, out = base / "tsr-data", base / "figure1"
    _fresh_store(root, model)
    result = _run(root, profile, out)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, out, profile, model, result.stdout


def _frame(store: Store, table: str, **options) -> pl.DataFrame:
    frame = pl.from_arrow(store.read(table, **options))
    assert isinstance(frame, pl.DataFrame)
    return frame


def _by_hand(store: Store, version: str, m0: str) -> dict[str, dict[str, float]]:
    """prompt -> value of each figure for one pair version, from the stored rows: M0's score of the chosen minus
    its score of the rejected response, and the cosine of their mean hidden states under M0."""
    pairs = _frame(store, "pairs", versions=[version])
    scores = {g: s for g, s, j in _frame(store, "judgments").select("generation_id", "score", "judge_id").rows()
              if j == m0 and s is not None}
    embeddings = _frame(store, "embeddings").filter((pl.col("snapshot_id") == m0)
                                                   & (pl.col("text_kind") == "response"))
    vectors = {g: np.array(v, dtype=np.float64) for g, v in embeddings.select("generation_id", "mean_hidden").rows()}
    gap, similarity = {}, {}
    for prompt, chosen, rejected in pairs.select("prompt_id", "chosen_generation_id",
                                                 "rejected_generation_id").rows():
        if chosen in scores and rejected in scores:
            gap[prompt] = scores[chosen] - scores[rejected]
        a, b = vectors[chosen], vectors[rejected]
        norms = np.linalg.norm(a) * np.linalg.norm(b)
        if norms > 0:  # an empty response has no cosine
            similarity[prompt] = float(a @ b / norms)
    return {"rescored_gap": gap, "similarity": similarity}


def _in_prompt_order(values: dict[str, float]) -> list[float]:
    return [values[p] for p in sorted(values)]


def test_the_figures_are_those_of_the_stored_rows(experiment):
    root, out, _, _, stdout = experiment
    assert {p.name for p in out.iterdir()} == OUTPUTS
    record = json.loads((out / "experiment.json").read_text())
    store = Store.open(root)
    m0 = record["m0"]
    assert record["judge"] == m0 and record["snapshot"] == m0  # the defaults: M0 rescores and embeds
    finals = {method: {int(n): v for n, v in by.items()} for method, by in record["final_pairs"].items()}
    assert {m: sorted(by) for m, by in finals.items()} == {"sr": [1, 2, 3], "tsr": [1, 2], "tsr-past": [1, 2]}
    for method, by in finals.items():
        for n, version in by.items():
            config = store.manifest(version).config
            assert (config["method"], config["iteration"]) == (method, n)
            assert config["phase"] == {"sr": "sr", "tsr": "d2", "tsr-past": "d1"}[method]

    table = pl.read_csv(out / "figure1.csv")
    assert table.height == 7 and table.select("iteration", "method").rows() == [
        (1, "sr"), (1, "tsr-past"), (1, "tsr"), (2, "sr"), (2, "tsr-past"), (2, "tsr"), (3, "sr")]
    values = {(m, n): _by_hand(store, v, m0) for m, by in finals.items() for n, v in by.items()}
    checked_intervals = 0
    for row in table.iter_rows(named=True):
        key = (row["method"], row["iteration"])
        version = finals[row["method"]][row["iteration"]]
        assert row["pair_version"] == version
        assert row["pairs"] == store.manifest(version).rows
        for figure in ("rescored_gap", "similarity"):
            mine = values[key][figure]
            assert row[figure] == pytest.approx(sum(mine.values()) / len(mine), abs=1e-6)
            low, high = _plain_bootstrap(_in_prompt_order(mine), interval_seed(version, figure))
            assert (row[f"{figure}_ci_low"], row[f"{figure}_ci_high"]) == (pytest.approx(low, abs=1e-6),
                                                                             pytest.approx(high, abs=1e-6))
            checked_intervals += 1
        if row["method"] == "sr":
            assert row["reading"] == "baseline" and row["gap_vs_sr"] is None
            continue
        base = finals["sr"][row["iteration"]]
        for figure, short in (("rescored_gap", "gap"), ("similarity", "similarity")):
            ours, theirs = values[key][figure], values[("sr", row["iteration"])][figure]
            shared = sorted(set(ours) & set(theirs))
            differences = [ours[p] - theirs[p] for p in shared]
            assert row[f"{short}_vs_sr"] == pytest.approx(sum(differences) / len(differences), abs=1e-6)
            low, high = _plain_bootstrap(differences, interval_seed(version, base, figure))
            assert row[f"{short}_vs_sr_ci_low"] == pytest.approx(low, abs=1e-6)
            assert row[f"{short}_vs_sr_ci_high"] == pytest.approx(high, abs=1e-6)
            excludes = low > 1e-9 or high < -1e-9
            assert row[f"{short}_vs_sr_excludes_zero"] == excludes
            assert (" excludes 0" if excludes else " includes 0") in row["reading"].split("; ")[
                0 if short == "gap" else 1]
    assert checked_intervals == 14
    # the table printed and written as markdown says the same
    markdown = (out / "figure1.md").read_text()
    rows = markdown[markdown.index("| iter"):]
    assert rows.count("\n") == 9 and rows in stdout  # header, rule and 7 rows
    assert_real_png((out / "figure1.png").read_bytes(), (1100, 450))


def test_the_methods_share_what_they_have_in_common(experiment):
    root, out, *_ = experiment
    store = Store.open(root)
    record = json.loads((out / "experiment.json").read_text())
    finals = record["final_pairs"]
    pairs = _frame(store, "pairs")
    # SR's iteration-1 pairs are drawn from the very samples TSR's M0 pass drew for its current pool
    tsr_d1 = next(m for m in store.manifests(table="pairs")
                  if m.config["method"] == "tsr" and m.config["iteration"] == 1 and m.config["phase"] == "d1")
    current_pool = set(pairs.filter(pl.col("pair_version") == tsr_d1.version)
                       .filter(pl.col("chosen_pool") == "current")["chosen_generation_id"])
    sr1 = pairs.filter(pl.col("pair_version") == finals["sr"]["1"])
    assert sr1.height and set(sr1["chosen_generation_id"]) & current_pool
    generations = _frame(store, "generations")
    m0_rows = generations.filter(pl.col("snapshot_id") == record["m0"])
    assert m0_rows["generation_id"].is_unique().all()
    # chunk 1: the current pool (0..k-1) and the past pool (k..2k-1) once; chunk 2: the past pool only
    assert m0_rows.group_by("sample_index").len().sort("sample_index")["len"].to_list() == [3, 3, 6, 6]
    # TSR without the future trains its M_1 on the pairs TSR's M_f of iteration 1 trained on: the same model, once
    runs = _frame(store, "runs")
    shared = runs.filter(pl.col("metrics_json").str.contains("same_pairs_as_run"))
    assert shared.height == 1
    twin = runs.filter(pl.col("run_id") == json.loads(shared["metrics_json"][0])["same_pairs_as_run"])
    assert twin["output_snapshot_id"].to_list() == shared["output_snapshot_id"].to_list()
    assert twin["data_versions"][0].to_list() == [tsr_d1.version]
    assert shared["data_versions"][0].to_list() == [finals["tsr-past"]["1"]]
    # SR x3 trains M1, M2; TSR x2 trains Mf1, M1, Mf2; TSR w/o future's M1 is shared: 5 DPO trainings
    assert runs.height - shared.height == 5


def test_a_rerun_computes_nothing_and_writes_the_same_figure(experiment, tmp_path):
    root, out, profile, _, _ = experiment
    again = tmp_path / "again"
    result = _run(root, profile, again)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("computed: 0 generations, 0 judgments, 0 trained models, 0 rescored, 0 embedded"
            in result.stdout)
    for name in ("figure1.png", "figure1.md", "figure1.csv"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name
    first, second = (json.loads((folder / "experiment.json").read_text()) for folder in (out, again))
    assert first["final_pairs"] == second["final_pairs"]


def test_killed_mid_experiment_a_rerun_finishes_the_same_experiment(experiment, tmp_path):
    _, out, profile, model, _ = experiment
    root = tmp_path / "tsr-data"
    _fresh_store(root, model)
    # the 4th DPO training dies after its model is registered and before its run row: SR's M_1
    killed = _run(root, profile, tmp_path / "killed", TSR_CRASH_AT="train.before-run-record#4")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (tmp_path / "killed").exists()
    resumed = _run(root, profile, tmp_path / "resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "0 trained models" not in resumed.stdout  # SR's M_2 was still to train
    assert (tmp_path / "resumed" / "figure1.csv").read_bytes() == (out / "figure1.csv").read_bytes()
    runs = _frame(Store.open(root), "runs")
    assert runs["run_id"].is_unique().all() and runs.height == 6


def test_bad_input_is_one_line_and_changes_nothing(tsr, experiment, tmp_path):
    root, _, profile, _, _ = experiment
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    before = _tree(copy)
    cases = [
        (["--sr-iters", "0", "--tsr-iters", "0"], "at least one method"),
        (["--tsr-iters", "6"], "--tsr-iters 6: the default prompts are split into 5 chunks"),
        (["--out", str(profile)], "exists and is not a folder"),
        (["--judge", "nosuch"], "--judge nosuch: no snapshot"),
        (["--snapshot", "nosuch"], "--snapshot nosuch: no snapshot"),
        (["--profile", str(tmp_path / "none.yaml")], "none.yaml"),
    ]
    for extra, message in cases:
        args = ["--data", str(copy), "experiment", "--out", str(tmp_path / "out"), "--m0", "tiny",
                "--profile", str(profile), "--sr-iters", "3", "--tsr-iters", "2", *extra]
        result = tsr(*args, expect=None)
        assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output
        assert result.output.startswith("Error: ") and message in result.output, result.output
        assert _tree(copy) == before, extra
    assert not (tmp_path / "out").exists()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_the_report_opens_with_figure_1(experiment):
    _, out, *_ = experiment
    text = (out / "report.html").read_text()
    figure = text.index("<h2>Figure 1: score gap and similarity</h2>")
    assert figure < text.index("<h2>Plots</h2>") < text.index("<h2>Lineage</h2>")
    section = text[figure:text.index("<h2>Plots</h2>")]
    assert section.count("data:image/png;base64,") == 1 and "reading" in section and "baseline" in section


def test_the_experiment_report_fits_a_laptop_screen_in_headless_chromium(experiment, tmp_path):
    from tests.test_plots_report import find_chromium, page_widths

    chromium = find_chromium()
    _, out, *_ = experiment
    scroll_width, inner_width = page_widths(chromium, (out / "report.html").read_text("utf-8"), tmp_path)
    assert inner_width == 1280 and scroll_width <= inner_width


@pytest.mark.slow
def test_on_a_local_ray_cluster_the_experiment_gives_the_same_figure(experiment, tmp_path):
    """--executor ray: generation, judging, rescoring and embedding in Ray actors (a local cluster); the same
    pairs, figures and intervals as in this process."""
    pytest.importorskip("ray")
    _, out, profile, model, _ = experiment
    root = tmp_path / "tsr-data"
    _fresh_store(root, model)
    result = _run(root, profile, tmp_path / "ray", extra=["--executor", "ray"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "ray" / "figure1.csv").read_bytes() == (out / "figure1.csv").read_bytes()
    record = json.loads((tmp_path / "ray" / "experiment.json").read_text())
    assert record["final_pairs"] == json.loads((out / "experiment.json").read_text())["final_pairs"]
