"""`tsr push` / `tsr pull` with the real huggingface_hub client (and datasets) against a Hub on 127.0.0.1.

The store is a real one: iteration 1 of the loop on the tiny random llama (as in test_loop.py), built once.
huggingface_hub reads HF_ENDPOINT when it is imported, and another test module may have imported it already, so
in-process calls get the endpoint from builder.hub.transport (which reads it per call); subprocesses (the console
script, `load_dataset`) get it the usual way, from their environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from builder.store import Store
from tests.hub_server import HubServer
from tests.test_loop import TINY_PROFILE
from tests.tiny_model import make_tiny_model

TOKEN = "hf_" + secrets.token_hex(16)  # the "user's" token: it must reach the server and nowhere else
REPO = "tester/tsr-pairs"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    server = HubServer(tmp_path_factory.mktemp("hub")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A store with iteration 1's tsr pairs (D1 and D2) on the tiny model and a win rate of M_f1 against it."""
    from builder.cli import cli

    folder = tmp_path_factory.mktemp("source")
    root, profile = folder / "tsr-data", folder / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    model = make_tiny_model(folder / "tiny")
    runner = CliRunner()
    for args in (["models", "add", str(model), "--name", "tiny", "--role", "m0"],
                 ["pairs", "--iter", "1", "--m0", "tiny", "--profile", str(profile)],
                 ["eval", "winrate", "--a", "Mf1-tsr", "--b", "tiny", "--judge", "tiny", "--prompts", "3", "--limit",
                  "2", "--max-new-tokens", "4", "--bootstrap", "50", "--profile", str(profile)]):
        result = runner.invoke(cli, ["--data", str(root), *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return root


def use_hub(patch: pytest.MonkeyPatch, hub: HubServer) -> None:
    """This process talks to `hub` with TOKEN from HF_TOKEN, and retries without long waits."""
    import huggingface_hub.constants

    import builder.hub

    patch.setenv("HF_ENDPOINT", hub.url)
    patch.setenv("HF_HUB_DISABLE_XET", "1")
    patch.setenv("HF_TOKEN", TOKEN)
    patch.setenv("NO_PROXY", "127.0.0.1,localhost")
    patch.delenv("HF_HUB_OFFLINE", raising=False)
    patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    patch.setattr(builder.hub, "BACKOFF_SECONDS", 0.01)


@pytest.fixture(autouse=True)
def hub_env(hub, monkeypatch):
    use_hub(monkeypatch, hub)


@pytest.fixture(scope="module")
def pushed(hub, source):
    """REPO after one push of everything in `source`: the push's output and the commit it made."""
    from builder.cli import cli

    with pytest.MonkeyPatch.context() as patch:
        use_hub(patch, hub)
        result = CliRunner().invoke(cli, ["--data", str(source), "push", REPO], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output, hub.head(REPO).oid


def pair_versions(root: Path) -> dict[str, str]:
    """phase -> pair version of the store at `root`."""
    return {m.config["phase"]: m.version for m in Store.open(root).manifests(table="pairs")}


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under `root` with its sha256, and every folder: the verify cache and the lock included."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
            for p in sorted(root.rglob("*"))}


def test_push_uploads_tables_card_manifests_and_tags(hub, source, pushed):
    output, commit = pushed
    store = Store.open(source)
    manifests = store.manifests()
    assert f"pushed {len(manifests)} version(s) to {REPO}" in output
    files = hub.head(REPO).files
    for manifest in manifests:
        assert f"manifests/{manifest.version}.json" in files
        for item in manifest.files:
            inside = item["path"].removeprefix("tables/")  # tables/snapshots -> data/snapshots
            assert f"data/{inside}" in files
    for name in ("README.md", "tsr-hub.json", "data/stats/stats.parquet", "data/versions/versions.parquet"):
        assert name in files
    card = hub.read(REPO, "README.md").decode()
    configs = {c["config_name"]: c for c in yaml.safe_load(card.split("---")[1])["configs"]}
    versions = pair_versions(source)
    assert {"pairs-tsr-iter1", "pairs-tsr-iter1-d1", "prompts", "generations", "judgments", "pairs", "snapshots",
            "runs", "evals", "stats", "versions"} == set(configs)
    assert configs["pairs-tsr-iter1"]["data_files"][0]["path"] == f"data/pairs-tsr-iter1/train-{versions['d2']}.parquet"
    assert configs["pairs-tsr-iter1"].get("default") is True
    # Each pair version's row carries the 95% bootstrap interval of its mean gap over prompts.
    from builder.intervals import interval_seed
    from tests.test_stats import _plain_bootstrap

    for phase, config in (("d2", "pairs-tsr-iter1"), ("d1", "pairs-tsr-iter1-d1")):
        gaps = store.read("pairs", versions=[versions[phase]]).sort_by("prompt_id").column("gap").to_pylist()
        assert len(gaps) >= 2
        low, high = _plain_bootstrap(gaps, interval_seed(versions[phase], "gap"))
        row = next(line for line in card.splitlines() if line.startswith(f"| `{config}` |"))
        assert row.split(" | ")[8] == f"[{low:.3f}, {high:.3f}]"
    # The card shows the store's plots, uploaded beside it as real PNGs.
    for name in ("gap.png", "scores.png"):
        assert f"](plots/{name})" in card
        assert (hub.blobs / files[f"plots/{name}"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # One commit on top of the repo's first, and a tag per pair version on it.
    assert [c.title for c in hub.repo(REPO).history(hub.head(REPO))][1:] == ["initial commit"]
    assert hub.repo(REPO).tags == {f"pairs-tsr-iter1-{versions['d2'][:8]}": commit,
                                   f"pairs-tsr-iter1-d1-{versions['d1'][:8]}": commit}
    stats = pq.read_table(hub.blobs / files["data/stats/stats.parquet"]).to_pylist()
    assert {(s["kind"], s["config"]) for s in stats} >= {("pairs", "pairs-tsr-iter1"), ("table", "generations")}
    assert hub.authorizations == {f"Bearer {TOKEN}"}  # HF_TOKEN, one of huggingface_hub's usual sources


def test_push_again_makes_no_commit(tsr, hub, source, pushed):
    _, commit = pushed
    out = tsr("--data", str(source), "push", REPO).output
    assert "no new commit" in out
    assert hub.head(REPO).oid == commit and len(hub.repo(REPO).commits) == 2
    # A subset the repo has already: nothing either.
    out = tsr("--data", str(source), "push", REPO, "--pairs", pair_versions(source)["d1"][:8]).output
    assert "no new commit" in out and hub.head(REPO).oid == commit


def test_pull_into_an_empty_store(tsr, hub, source, pushed, data_root):
    hub.fail_next(1, 502, match="/resolve/")  # a transient download failure is retried
    out = tsr("pull", REPO).output
    count = len(Store.open(source).manifests())
    assert f"{count} version(s) restored, 0 already present" in out
    # Installed through the store's write path, which records the checksums of what it placed.
    assert (data_root / "_cache" / "verified.json").is_file() and not list((data_root / "_intents").iterdir())
    for manifest in Store.open(source).manifests():
        name = f"manifests/{manifest.version}.json"
        assert (data_root / name).read_bytes() == (source / name).read_bytes()
    assert f"{sum(len(m.files) for m in Store.open(source).manifests())} files match" in tsr(
        "versions", "verify").output
    pairs = tsr("sql", "select count(*) as n from pairs", "--format", "csv").output
    assert pairs.split() == ["n", str(sum(m.rows for m in Store.open(source).manifests(table="pairs")))]
    from train.data import pair_frame

    assert pair_frame(Store.open(data_root), pair_versions(source)["d2"]).height == Store.open(source).manifest(
        pair_versions(source)["d2"]).rows
    assert "0 version(s) restored" in tsr("pull", REPO).output  # again: nothing to do
    # The pulled copy has the very same versions: pushing it back sends nothing.
    commits = len(hub.repo(REPO).commits)
    assert "no new commit" in tsr("push", REPO).output and len(hub.repo(REPO).commits) == commits


def test_pull_a_tag_and_refuse_a_conflicting_local_version(tsr, hub, source, pushed, data_root):
    import pyarrow as pa

    from schemas.tables import PROMPTS

    prompts = Store.open(source).manifests(table="prompts")[0]
    store = Store.open(data_root, create=True)
    with store.writing():  # the same version id, different rows: a local version that differs
        store.write_version(version=prompts.version, stage="prompts.import", code_version=1, table="prompts",
                            data=pa.Table.from_pylist([{"prompt_id": "x", "text": "local", "source": "mine.jsonl",
                                                        "set_version": prompts.version, "chunk": 1, "position": 0}],
                                                      schema=PROMPTS),
                            partition={"set": prompts.version})
    before = tree_digest(data_root)
    tag = f"pairs-tsr-iter1-{pair_versions(source)['d2'][:8]}"
    result = tsr("pull", f"{REPO}@{tag}", expect=1)
    assert "different content" in result.output and prompts.version in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert tree_digest(data_root) == before


def test_a_push_leaves_the_store_byte_identical(tsr, tmp_path, hub, source):
    """Every file and folder of the store, the verify cache included, is the same after a push and a subset push.
    The copy has no verify cache, so the push checksums every file: a verify that recorded them would write one."""
    import shutil

    store = tmp_path / "copy"
    shutil.copytree(source, store, symlinks=True)
    shutil.rmtree(store / "_cache")
    before = tree_digest(store)
    assert "pushed" in tsr("--data", str(store), "push", "tester/read-only").output
    assert "pushed" in tsr("--data", str(store), "push", "tester/read-only-subset", "--pairs",
                           pair_versions(store)["d1"][:8]).output
    assert tree_digest(store) == before


@pytest.fixture(scope="module")
def two_methods(tmp_path_factory, source) -> Path:
    """`source` plus iteration 1's SR pairs (from the same M0, reusing its generations and judgments)."""
    import shutil

    from builder.cli import cli

    root = tmp_path_factory.mktemp("two-methods") / "tsr-data"
    shutil.copytree(source, root, symlinks=True)
    profile = source.parent / "tiny.yaml"
    result = CliRunner().invoke(cli, ["--data", str(root), "pairs", "--iter", "1", "--method", "sr", "--m0", "tiny",
                                      "--profile", str(profile)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return root


def test_the_card_of_a_subset_push_shows_only_what_was_pushed(tsr, hub, two_methods, monkeypatch):
    import builder.plots

    drawn: list[set[str]] = []  # the pair versions behind each plot, as the plotting functions receive them
    for name in ("bar_chart", "score_histograms"):
        original = getattr(builder.plots, name)

        def record(frame, *args, _original=original, **kwargs):
            drawn.append(set(frame["pair_version"].to_list()))
            return _original(frame, *args, **kwargs)

        monkeypatch.setattr(builder.plots, name, record)
    repo = "tester/sr-only"
    store = Store.open(two_methods)
    sr = next(m.version for m in store.manifests(table="pairs") if m.config["method"] == "sr")
    kept_back = [m.version for m in store.manifests(table="pairs") if m.version != sr]
    out = tsr("--data", str(two_methods), "push", repo, "--pairs", sr[:10]).output
    assert "pushed" in out and all(v not in out for v in kept_back)
    files = hub.head(repo).files
    card = hub.read(repo, "README.md").decode()
    configs = {c["config_name"] for c in yaml.safe_load(card.split("---")[1])["configs"]}
    assert {c for c in configs if c.startswith("pairs-")} == {"pairs-sr-iter1"}
    assert all(v not in card for v in kept_back) and "pairs-tsr" not in card
    stats = pq.read_table(hub.blobs / files["data/stats/stats.parquet"]).to_pylist()
    assert [s["version"] for s in stats if s["kind"] == "pairs"] == [sr]
    # The plots are drawn from the pushed pair version alone (before, from every pair version of the store).
    assert drawn == [{sr}, {sr}]
    assert "](plots/gap.png)" in card and "plots/gap.png" in files and "plots/scores.png" in files


@pytest.mark.parametrize("command", ["pull", "push"])
def test_a_refused_token_names_the_access_it_needs(tsr, hub, source, pushed, command):
    """A pull needs read access, a push write access: a 401 says which, in one line."""
    access = {"pull": "read", "push": "write"}[command]
    args = ["pull", REPO] if command == "pull" else ["--data", str(source), "push", "tester/refused"]
    match = "/api/datasets/" if command == "pull" else "/commit/"
    # A token the Hub rejects, then a 401 the client reads as "no such repo" (what the Hub says of a private repo
    # the token may not see).
    hub.fail_next(1, 401, match=match, message="Invalid credentials in Authorization header")
    refused = tsr(*args, expect=1).output
    hub.fail_next(1, 401, match=match, message="Repository not found", code="RepoNotFound")
    hidden = tsr(*args, expect=1).output
    other = "write" if access == "read" else "read"
    assert "not authorized (HTTP 401)" in refused and "no such dataset repo" in hidden
    for output in (refused, hidden):
        assert len(output.strip().splitlines()) == 1 and f"{access} access" in output
        assert f"{other} access" not in output


def test_load_dataset_gives_conversational_pairs(tmp_path, hub, source, pushed):
    versions = pair_versions(source)
    script = f"""
import json
from datasets import load_dataset
by_name = load_dataset({REPO!r}, "pairs-tsr-iter1", split="train")
by_tag = load_dataset({REPO!r}, "pairs-tsr-iter1", split="train", revision="pairs-tsr-iter1-{versions['d2'][:8]}")
raw_pairs = load_dataset({REPO!r}, "pairs", split="train")
print(json.dumps({{"columns": by_name.column_names, "rows": by_name.to_list(), "tag_rows": by_tag.num_rows,
                  "raw_pairs": raw_pairs.num_rows}}))
"""
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_DATASETS_CACHE=str(tmp_path / "datasets"))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["columns"][:3] == ["prompt", "chosen", "rejected"]
    assert {"pair_id", "chosen_score", "rejected_score", "chosen_generation_id", "chosen_snapshot_id",
            "method", "iteration", "phase"} <= set(found["columns"])
    assert found["raw_pairs"] == sum(m.rows for m in Store.open(source).manifests(table="pairs"))
    rows = found["rows"]
    assert len(rows) == found["tag_rows"] == Store.open(source).manifest(versions["d2"]).rows > 0
    for row in rows:
        assert [m["role"] for m in row["prompt"]] == ["user"]
        assert [m["role"] for m in row["chosen"]] == [m["role"] for m in row["rejected"]] == ["assistant"]
        assert row["pair_version"] == versions["d2"] and row["chosen_score"] > row["rejected_score"]


@pytest.mark.parametrize("mode", ["500", "drop"])
def test_a_commit_that_fails_midway_changes_nothing(tsr, hub, source, mode):
    repo = f"tester/fails-{mode}"
    tsr("--data", str(source), "push", repo, "--tables", "prompts")
    head, tags, local = hub.head(repo).oid, dict(hub.repo(repo).tags), tree_digest(source)
    hub.fail_commits(mode)
    try:
        result = tsr("--data", str(source), "push", repo, expect=1)
    finally:
        hub.fail_commits(None)
    lines = result.output.strip().splitlines()  # one retry warning, then one error line
    assert len(lines) == 2 and "(after 4 attempts)" in lines[-1]
    assert lines[-1].startswith(f"Error: push to {repo} failed") and all("retrying" in line for line in lines[:-1])
    assert hub.head(repo).oid == head and hub.repo(repo).tags == tags  # no new commit, no tag
    assert tree_digest(source) == local
    # Once the Hub answers again, the same command pushes what is missing.
    assert "pushed" in tsr("--data", str(source), "push", repo).output
    assert len(hub.repo(repo).history(hub.head(repo))) == 3


def test_transient_failures_are_retried_and_a_lost_answer_is_not_committed_twice(tsr, hub, source):
    repo = "tester/flaky"
    hub.fail_next(2, 503, match="/commit/")
    hub.fail_next(1, 429, match="/tag/")
    result = tsr("--data", str(source), "push", repo)
    assert "retrying" in result.output and "pushed" in result.output
    assert len(hub.repo(repo).history(hub.head(repo))) == 2 and len(hub.repo(repo).tags) == 2
    # The commit lands but its answer never arrives: the retry finds it there instead of committing again.
    repo = "tester/lost"
    tsr("--data", str(source), "push", repo, "--tables", "prompts")
    hub.fail_commits("lost")
    try:
        result = tsr("--data", str(source), "push", repo)
    finally:
        hub.fail_commits(None)
    assert "pushed" in result.output
    assert len(hub.repo(repo).history(hub.head(repo))) == 3


def test_the_token_is_never_printed_or_written(tmp_path, hub, source):
    from tests.conftest import tsr_env

    env = tsr_env(source, HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_TOKEN=TOKEN, HF_HOME=str(tmp_path / "hf"),
                  NO_PROXY="127.0.0.1,localhost")
    env.pop("HF_HUB_OFFLINE", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "builder", *args], env=env, capture_output=True, text=True,
                              timeout=120, check=False)

    d2 = pair_versions(source)["d2"]
    pushed = run("push", "tester/subset", "--pairs", d2[:10], "--private")
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert hub.repo("tester/subset").private
    # A server whose error echoes the Authorization header: the message is scrubbed before it is shown.
    hub.fail_next(1, 400, match="/repos/create", message="bad request, got header {authorization}")
    failed = run("push", "tester/leaky")
    assert failed.returncode == 1 and "***" in failed.stderr
    pulled = run("--data", str(tmp_path / "pulled"), "pull", "tester/subset")
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    # --pairs pushed the pair version with its lineage: a pulled copy can build the DPO rows on its own.
    from train.data import pair_frame

    assert pair_frame(Store.open(tmp_path / "pulled"), d2).height == Store.open(source).manifest(d2).rows

    for process in (pushed, failed, pulled):
        assert TOKEN not in process.stdout + process.stderr
    token = TOKEN.encode()
    for folder in (source, tmp_path / "pulled", hub.folder, tmp_path / "hf"):
        for path in folder.rglob("*"):
            assert not path.is_file() or token not in path.read_bytes(), path


def test_scrub_removes_tokens_headers_and_url_credentials():
    from builder.hub import scrub

    text = scrub(f"401 for https://user:pw@hub.example/api?token=abc Authorization: Bearer {TOKEN} x", [TOKEN])
    assert TOKEN not in text and "pw@" not in text and "abc" not in text and text.endswith(" x")
    assert scrub("secret hf_abcdefghijklmnop") == "secret ***"


def test_bad_input_is_one_line(tsr, source):
    assert "bad repo id" in tsr("--data", str(source), "push", "no-namespace", expect=1).output
    assert "unknown table" in tsr("--data", str(source), "push", REPO, "--tables", "nope", expect=1).output
    assert "not a pair version" in tsr("--data", str(source), "push", REPO, "--pairs",
                                       Store.open(source).manifests(table="prompts")[0].version, expect=1).output
