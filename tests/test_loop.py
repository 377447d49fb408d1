"""The whole loop on a tiny random llama: `tsr pairs --iter 2 --method tsr`, every table and lineage link."""

from __future__ import annotations

import polars as pl
import pytest

from builder.snapshot import list_snapshots
from builder.store import Store
from tests.tiny_model import make_tiny_model

TINY_PROFILE = """
generate: {k: 2, temperature: 1.0, top_p: 1.0, max_new_tokens: 6, backend: hf, batch_size: 4}
judge: {mode: auto, samples: 1, temperature: 1.0, max_new_tokens: 4, batch_size: 8}
train: {learning_rate: 0.01, beta: 0.1, epochs: 1, global_batch: 2, per_device_batch: 2, warmup_ratio: 0.0,
        max_length: 512, bf16: "false"}
loop: {chunks: 5, prompts_per_iteration: 3}
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def profile(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_PROFILE)
    return str(path)


def frame(store: Store, table: str) -> pl.DataFrame:
    result = pl.from_arrow(store.read(table))
    assert isinstance(result, pl.DataFrame)
    return result


def test_tsr_iteration_2_end_to_end(tsr, tiny_model, profile, data_root):
    tsr("models", "add", str(tiny_model), "--name", "tiny", "--role", "m0")
    out = tsr("pairs", "--iter", "2", "--method", "tsr", "--m0", "tiny", "--profile", profile).output
    assert "iteration 2 (tsr): final pairs" in out and "iter 1 d1" in out and "iter 2 d2" in out

    store = Store.open(data_root)
    snapshots = {s.snapshot_id: s for s in list_snapshots(store)}
    m0 = next(s for s in snapshots.values() if s.role == "m0")
    iteration_models = [s for s in snapshots.values() if s.role == "iteration"]
    futures = [s for s in snapshots.values() if s.role == "future"]
    assert len(iteration_models) == 1 and len(futures) == 2  # M_1, and M_f of iterations 1 and 2
    m1 = iteration_models[0]
    assert all(f.temporary for f in futures) and not m1.temporary
    pair_manifests = {(m.config["iteration"], m.config["phase"]): m for m in store.manifests(table="pairs")}
    assert set(pair_manifests) == {(1, "d1"), (1, "d2"), (2, "d1"), (2, "d2")}
    # Lineage: M_1 = DPO(M0, iteration 1's D2); each M_f = DPO(M_i, that iteration's D1).
    assert m1.parent_snapshot_id == m0.snapshot_id and m1.pair_version == pair_manifests[(1, "d2")].version
    assert {(f.parent_snapshot_id, f.pair_version) for f in futures} == {
        (m0.snapshot_id, pair_manifests[(1, "d1")].version), (m1.snapshot_id, pair_manifests[(2, "d1")].version)}
    runs = frame(store, "runs")
    assert runs.height == 3
    for run in runs.iter_rows(named=True):
        output = snapshots[run["output_snapshot_id"]]
        assert output.run_id == run["run_id"] and run["start_snapshot_id"] == output.parent_snapshot_id
        assert run["ref_snapshot_id"] == run["start_snapshot_id"] and run["data_versions"] == [output.pair_version]
        assert "rewards/margins" in run["metrics_json"]
    for snapshot in snapshots.values():
        assert (data_root / snapshot.path / "model.safetensors").is_file()
    assert {p.name for p in (data_root / "snapshots").iterdir()} == set(snapshots)

    generations = frame(store, "generations")
    assert generations["generation_id"].is_unique().all()
    by_model = generations.group_by("snapshot_id").agg(pl.col("sample_index").unique().sort(), pl.len())
    indices = {row["snapshot_id"]: (row["sample_index"], row["len"]) for row in by_model.iter_rows(named=True)}
    # M0: chunk 1 indices 0..3 (current and past pools), chunk 2 the past pool 2..3 only.
    assert indices[m0.snapshot_id] == ([0, 1, 2, 3], 3 * 4 + 3 * 2)
    assert indices[m1.snapshot_id] == ([0, 1], 6)
    for future in futures:
        assert indices[future.snapshot_id] == ([0, 1], 6)

    # One pass over M0 at iteration 1: the current pool and the past pools of iterations 1 and 2, each its own
    # version; iteration 2 found its past pool materialized. Each iteration's two pools are judged in one pass.
    m0_sets = {m.version for m in store.manifests(table="generations") if m.data.get("snapshot_id") == m0.snapshot_id}
    assert len(m0_sets) == 3
    for manifest in store.manifests(table="generations"):
        if manifest.version in m0_sets:
            assert set(manifest.stats["batched_with"]) == m0_sets - {manifest.version}
    judged_together = [m for m in store.manifests(table="judgments") if "batched_with" in m.stats]
    assert len(judged_together) == 4 and {m.data.get("snapshot_id") for m in judged_together} == {
        m0.snapshot_id, m1.snapshot_id}

    judgments = frame(store, "judgments")
    assert judgments["judgment_id"].is_unique().all() and judgments.height == generations.height
    judged = judgments.join(generations, on="generation_id")
    assert judged.height == judgments.height
    # Self-judging: M_i judges everything of its iteration (M0 in iteration 1, M_1 in iteration 2); M_f never judges.
    assert set(judgments["judge_id"]) == {m0.snapshot_id, m1.snapshot_id}
    assert judgments.filter(pl.col("score").is_null() & pl.col("parse_error").is_null()).height == 0
    assert set(judgments["scored_by"].drop_nulls()) <= {"generate", "forced"}

    pairs = frame(store, "pairs")
    assert pairs.height > 0 and (pairs["gap"] > 0).all()
    checked = pairs.join(generations.select("generation_id", "snapshot_id", "sample_index", "prompt_id"),
                         left_on="chosen_generation_id", right_on="generation_id", suffix="_c").join(
        generations.select("generation_id", "snapshot_id", "sample_index"),
        left_on="rejected_generation_id", right_on="generation_id", suffix="_r")
    assert checked.height == pairs.height
    assert (checked["snapshot_id"] == checked["chosen_snapshot_id"]).all()
    assert (checked["snapshot_id_r"] == checked["rejected_snapshot_id"]).all()
    assert (checked["prompt_id"] == checked["prompt_id_c"]).all()
    past = checked.filter(pl.col("rejected_pool") == "past")
    assert (past["rejected_snapshot_id"] == m0.snapshot_id).all() and (past["sample_index_r"] >= 2).all()
    future_ids = {f.snapshot_id for f in futures}
    assert checked.filter(pl.col("chosen_pool") == "future")["chosen_snapshot_id"].is_in(list(future_ids)).all()
    # D2 reuses D1's rejected for every prompt both kept.
    for n in (1, 2):
        d1 = pairs.filter((pl.col("iteration") == n) & (pl.col("phase") == "d1"))
        d2 = pairs.filter((pl.col("iteration") == n) & (pl.col("phase") == "d2"))
        both = d1.join(d2, on="prompt_id", suffix="_2")
        assert (both["rejected_generation_id"] == both["rejected_generation_id_2"]).all()

    # The manifests list exactly the files on disk, and every file checks out.
    listed = {f["path"] for m in store.manifests() for f in m.files}
    on_disk = {p.relative_to(data_root).as_posix() for p in data_root.rglob("*.parquet")
               if "_staging" not in p.parts and "_cache" not in p.parts}
    assert listed == on_disk
    assert store.verify(full=True) == len(listed)

    # A second run finds everything: no generation, judgment or training, and no new version.
    versions = len(store.manifests())
    again = tsr("pairs", "--iter", "2", "--method", "tsr", "--m0", "tiny", "--profile", profile).output
    assert "computed: 0 generations, 0 judgments, 0 trained models" in again
    assert len(Store.open(data_root).manifests()) == versions

    # SR in the same root shares iteration 1's M0 samples (indices 0..1) and their judgments.
    tsr("pairs", "--iter", "1", "--method", "sr", "--m0", "tiny", "--profile", profile)
    store = Store.open(data_root)
    assert frame(store, "generations").height == generations.height
    assert frame(store, "judgments").height == judgments.height
    sr = frame(store, "pairs").filter(pl.col("method") == "sr")
    assert sr.height > 0 and set(sr["chosen_pool"]) == {"current"}


def _run_pairs(data_root, profile, crash=None):
    import subprocess
    import sys

    from tests.conftest import tsr_env

    extra = {"TSR_CRASH_AT": crash} if crash else {}
    return subprocess.run(
        [sys.executable, "-m", "builder", "pairs", "--iter", "2", "--m0", "tiny", "--profile", profile],
        env=tsr_env(data_root, **extra), capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def clean_run(tiny_model, tmp_path_factory):
    """The versions and snapshots of one uninterrupted run, to compare killed-and-resumed runs against."""
    from click.testing import CliRunner

    from builder.cli import cli

    root = tmp_path_factory.mktemp("clean") / "tsr-data"
    profile = tmp_path_factory.mktemp("profile") / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    runner = CliRunner()
    assert runner.invoke(cli, ["--data", str(root), "models", "add", str(tiny_model), "--name", "tiny",
                               "--role", "m0"]).exit_code == 0
    result = runner.invoke(cli, ["--data", str(root), "pairs", "--iter", "2", "--m0", "tiny", "--profile",
                                 str(profile)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    store = Store.open(root)
    return {m.version for m in store.manifests()}, {s.snapshot_id for s in list_snapshots(store)}


KILL_POINTS = [
    "generate.after-batch#3",  # inside iteration 1's first generation stage, after some batches are staged
    "train.before-run-record",  # M_f of iteration 1 is registered, its run row is not
    "judge.after-batch#4",
    "store.before-data-rename#9",
    "store.before-manifest#12",
    "snapshot.before-register#2",  # M_1's folder is in place but not registered
]


@pytest.mark.parametrize("point", [
    pytest.param(p, marks=() if i < 2 else pytest.mark.slow) for i, p in enumerate(KILL_POINTS)])
def test_sigkill_anywhere_then_rerun_finishes_the_same_run(point, tsr, tiny_model, profile, data_root, clean_run):
    tsr("models", "add", str(tiny_model), "--name", "tiny", "--role", "m0")
    killed = _run_pairs(data_root, profile, crash=point)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = _run_pairs(data_root, profile)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    store = Store.open(data_root)
    versions, snapshot_ids = clean_run
    assert {m.version for m in store.manifests()} == versions
    assert {s.snapshot_id for s in list_snapshots(store)} == snapshot_ids
    assert {p.name for p in (data_root / "snapshots").iterdir()} == snapshot_ids  # no orphaned model folder
    for table, key in [("generations", "generation_id"), ("judgments", "judgment_id"), ("pairs", "pair_id"),
                       ("snapshots", "snapshot_id"), ("runs", "run_id")]:
        ids = frame(store, table)[key]
        assert ids.is_unique().all(), f"duplicate rows in {table}"
    assert not any((data_root / "_staging").glob("*/*.parquet"))


def test_named_queries_over_a_loop_store(tsr, tiny_model, profile, data_root):
    tsr("models", "add", str(tiny_model), "--name", "tiny", "--role", "m0")
    tsr("pairs", "--iter", "1", "--method", "tsr", "--m0", "tiny", "--profile", profile)
    listed = tsr("sql", "--list").output
    assert {"pair_counts", "judge_scoring", "lineage"} <= {line.split()[0] for line in listed.splitlines()}
    counts = pl.read_csv(tsr("sql", "--query", "pair_counts", "--format", "csv").stdout.encode())
    pairs = frame(Store.open(data_root), "pairs")
    assert counts["pairs"].sum() == pairs.height and set(counts["phase"]) == {"d1", "d2"}
    scoring = pl.read_csv(tsr("sql", "--query", "judge_scoring", "--format", "csv").stdout.encode())
    assert scoring["judgments"].sum() == frame(Store.open(data_root), "judgments").height
    lineage = pl.read_csv(tsr("sql", "--query", "lineage", "--format", "csv").stdout.encode())
    assert lineage.height == 2 and lineage.filter(pl.col("role") == "future")["seconds"].is_not_null().all()
