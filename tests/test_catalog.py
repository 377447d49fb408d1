"""The bad-input catalog: every case is a mistake a new user (or a careless or hostile one) makes through the CLI.

Each case asserts the promise of the README's "Safety" section: a non-zero exit, a message of at most two lines
and no traceback, and a store whose every file is byte-identical before and after (no store at all where none
existed). The SQL cases also check that nothing appeared, or was read, outside the store.

The cases run in-process (click's CliRunner) against a copy of one small real store: a tiny random llama as M0 and
`tsr pairs --iter 1`, so every table has rows and the model folder is real.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.tiny_model import make_tiny_model

TINY_PROFILE = """
generate: {k: 2, temperature: 1.0, top_p: 1.0, max_new_tokens: 6, backend: hf, batch_size: 4}
judge: {mode: auto, samples: 1, temperature: 1.0, max_new_tokens: 4, batch_size: 8}
train: {learning_rate: 0.01, beta: 0.1, epochs: 1, global_batch: 2, per_device_batch: 2, warmup_ratio: 0.0,
        max_length: 512, bf16: "false", gradient_checkpointing: false}
loop: {chunks: 5, prompts_per_iteration: 3}
"""


def invoke(*args: str):
    from builder.cli import cli

    return CliRunner().invoke(cli, list(args))


def tree_hashes(root: Path) -> dict[str, str] | None:
    """sha256 of every file under `root` (None if there is no such folder)."""
    if not root.exists():
        return None
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture(scope="module")
def base_store(tmp_path_factory) -> tuple[Path, Path]:
    """(store, profile): a real store made by the loop on a tiny model, built once and copied per case."""
    base = tmp_path_factory.mktemp("catalog")
    model = make_tiny_model(base / "tiny-model")
    profile = base / "tiny.yaml"
    profile.write_text(TINY_PROFILE)
    root = base / "store"
    for args in (["models", "add", str(model), "--name", "tiny", "--role", "m0"],
                 ["pairs", "--iter", "1", "--m0", "tiny", "--profile", str(profile)]):
        result = invoke("--data", str(root), *args)
        assert result.exit_code == 0, result.output
    return root, profile


@dataclass
class Env:
    """What a case sees: its own copy of the store, a scratch folder outside it, and the tiny profile."""

    root: Path
    scratch: Path
    profile: Path

    def file(self, name: str, content: str | bytes) -> str:
        path = self.scratch / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def profile_with(self, yaml_text: str, name: str = "bad.yaml") -> str:
        return self.file(name, yaml_text)

    def manifests(self, table: str) -> list[dict]:
        found = [json.loads(p.read_text()) for p in sorted((self.root / "manifests").glob("*.json"))]
        return [m for m in found if m["table"] == table]

    def data_file(self, table: str) -> Path:
        return self.root / self.manifests(table)[0]["files"][0]["path"]

    def model_folder(self) -> Path:
        """The folder of the snapshot named tiny (M0)."""
        manifest = next(m for m in self.manifests("snapshots") if json.loads(m["config_json"])["name"] == "tiny")
        return self.root / "snapshots" / manifest["snapshot_id"]


@dataclass
class Case:
    group: str
    name: str
    args: Callable[[Env], list[str]]
    damage: Callable[[Env], None] | None = None  # done to the store before the "before" hashes
    fresh: bool = False  # run against a data root that does not exist yet
    outside: Callable[[Env], list[Path]] = field(default=lambda env: [])  # must not exist afterwards
    forbidden: tuple[str, ...] = ()  # text that must not show in the output (a file read outside the store)


def restore_mtime_after(path: Path, change: Callable[[bytearray], None]) -> None:
    """Change a file's content without changing its size, then put its old mtime back."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    change(data)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def flip_middle(data: bytearray) -> None:
    data[len(data) // 2] ^= 0x01


def sql(query: str) -> Callable[[Env], list[str]]:
    return lambda env: ["sql", query]


def plant_manifest(content: str, name: str = "planted") -> Callable[[Env], None]:
    return lambda env: (env.root / "manifests" / f"{name}.json").write_text(content)


def prompts(content: str | bytes, name: str = "prompts.jsonl", *extra: str) -> Callable[[Env], list[str]]:
    return lambda env: ["prompts", "import", env.file(name, content), *extra]


def with_profile(yaml_text: str, command: str = "generate") -> Callable[[Env], list[str]]:
    if command == "generate":
        return lambda env: ["generate", "--snapshot", "tiny", "--profile", env.profile_with(yaml_text)]
    return lambda env: ["pairs", "--iter", "2", "--m0", "tiny", "--profile", env.profile_with(yaml_text)]


def tiny_model_broken(how: Callable[[Path], None]) -> Callable[[Env], list[str]]:
    def args(env: Env) -> list[str]:
        folder = make_tiny_model(env.scratch / "model", seed=1)
        how(folder)
        return ["models", "add", str(folder), "--name", "broken"]
    return args


def _random_safetensors(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(os.urandom(weights.stat().st_size))


def _remote_code_config(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="totally-new-arch", auto_map={"AutoModelForCausalLM": "modeling_new.NewModel"})
    (folder / "config.json").write_text(json.dumps(config))


def _pickle_only(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def _link_outside(folder: Path) -> None:
    secret = folder.parent / "secret.txt"
    secret.write_text("top secret")
    (folder / "notes.txt").symlink_to(secret)


def _no_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)


def _replace_by_symlink(path: Path, elsewhere: Path) -> None:
    shutil.move(path, elsewhere)
    path.symlink_to(elsewhere)


def _hold_lock(env: Env) -> None:
    handle = open(env.root / ".lock", "a+")  # noqa: SIM115 (held until the test process ends the case)
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _HELD_LOCKS.append(handle)


_HELD_LOCKS: list = []

GOOD_PROMPTS = "".join(f'{{"prompt": "question {n}"}}\n' for n in range(6))

CASES = [
    # ---- files ------------------------------------------------------------------------------------------------
    Case("files", "missing-file", lambda env: ["prompts", "import", str(env.scratch / "nope.jsonl")]),
    Case("files", "directory-as-file", lambda env: ["prompts", "import", str(env.scratch)]),
    Case("files", "empty-file", prompts("")),
    Case("files", "invalid-json-line", prompts('{"prompt": "a"}\n{"prompt": \n')),
    Case("files", "non-utf8-jsonl", prompts(b'{"prompt": "caf\xe9"}\n')),
    Case("files", "top-level-array", prompts('[{"prompt": "a"}]\n', "p.json")),
    Case("files", "unterminated-csv-quote", prompts('prompt\n"first\nsecond\nthird\n', "p.csv")),
    Case("files", "unknown-extension", prompts("prompt\n", "p.docx")),
    Case("files", "parquet-that-is-not", prompts(b"not parquet at all", "p.parquet")),
    Case("files", "no-text-column", prompts('{"question_text": "a"}\n')),
    Case("files", "blank-prompt", prompts('{"prompt": "   "}\n')),
    Case("files", "all-duplicates", prompts('{"prompt": "a"}\n{"prompt": "A"}\n{"prompt": " a "}\n')),
    Case("files", "ift-bad-row", lambda env: ["ift", "import", env.file("ift.jsonl", '{"prompt": "a"}\n')]),
    Case("files", "eft-bad-score", lambda env: ["eft", "import", env.file(
        "eft.jsonl", '{"prompt": "q", "response": "r", "justification": "j", "score": 9}\n')]),
    Case("files", "ifeval-bad-kwargs", lambda env: ["eval", "ifeval", "--snapshot", "tiny", "--prompts", env.file(
        "ife.jsonl", '{"key": 1, "prompt": "Write.", "instruction_id_list": ["length_constraints:number_words"], '
                     '"kwargs": [{"relation": "sideways", "num_words": "many"}]}\n')]),
    Case("files", "judge-template-non-utf8", lambda env: [
        "judge", "--snapshot", "tiny", "--template", env.file("t.txt", b"{prompt} {response} \xff\xfe")]),
    Case("files", "judge-template-directory", lambda env: ["judge", "--snapshot", "tiny", "--template",
                                                          str(env.scratch)]),
    Case("files", "sft-template-non-utf8", lambda env: [
        "sft", "--template", env.file("t.txt", b"{prompt} {response} \xff\xfe")]),
    Case("files", "winrate-template-non-utf8", lambda env: [
        "eval", "winrate", "--a", "tiny", "--b", "tiny", "--prompts", "1", "--judge", "tiny", "--template",
        env.file("pair.txt", b"{prompt} {response_1} {response_2} \xff")]),
    Case("files", "sql-out-missing-folder", lambda env: [
        "sql", "select 1 as x", "--out", str(env.scratch / "no" / "such" / "out.csv")],
        outside=lambda env: [env.scratch / "no"]),
    Case("files", "sql-out-onto-folder", lambda env: ["sql", "select 1 as x", "--out", str(env.scratch)]),
    Case("files", "stats-out-missing-folder", lambda env: [
        "stats", "--out", str(env.scratch / "missing" / "stats.txt")], outside=lambda env: [env.scratch / "missing"]),

    # ---- profiles ---------------------------------------------------------------------------------------------
    Case("profiles", "k-string", with_profile("generate: {k: two}")),
    Case("profiles", "k-null", with_profile("generate: {k: null}")),
    Case("profiles", "k-float", with_profile("generate: {k: 2.5}")),
    Case("profiles", "k-bool", with_profile("generate: {k: true}")),
    Case("profiles", "temperature-word", with_profile("generate: {temperature: hot}")),
    Case("profiles", "learning-rate-word", with_profile("train: {learning_rate: fast}", "pairs")),
    Case("profiles", "section-as-list", with_profile("generate:\n  - k\n  - 2\n")),
    Case("profiles", "non-utf8-profile", lambda env: ["generate", "--snapshot", "tiny", "--profile",
                                                     env.file("bad.yaml", b"generate: {k: 2}\n# \xff\xfe\n")]),
    Case("profiles", "batch-size-zero", with_profile("generate: {batch_size: 0}")),
    Case("profiles", "max-length-zero", with_profile("train: {max_length: 0}", "pairs")),
    Case("profiles", "beta-negative", with_profile("train: {beta: -1}", "pairs")),
    Case("profiles", "judge-temperature-negative", with_profile("judge: {temperature: -1}", "pairs")),
    Case("profiles", "seed-string", with_profile("generate: {seed: abc}")),
    Case("profiles", "chunks-zero", with_profile("loop: {chunks: 0}")),
    Case("profiles", "prompts-per-iteration-negative", with_profile("loop: {prompts_per_iteration: -1}")),
    Case("profiles", "sr-k-negative", lambda env: ["pairs", "--iter", "1", "--method", "sr", "--m0", "tiny",
                                                  "--profile", env.profile_with("loop: {sr_k: -1}")]),
    Case("profiles", "unknown-key", with_profile("generate: {temprature: 1.0}")),
    Case("profiles", "unknown-section", with_profile("generation: {k: 2}")),
    Case("profiles", "missing-profile-name", lambda env: ["generate", "--snapshot", "tiny", "--profile", "nope"]),
    Case("profiles", "profile-is-a-directory", lambda env: ["generate", "--snapshot", "tiny", "--profile",
                                                           str(env.scratch / "dir.yaml")],
         damage=lambda env: (env.scratch / "dir.yaml").mkdir()),

    # ---- store damage -----------------------------------------------------------------------------------------
    Case("store damage", "empty-manifest", sql("select count(*) from prompts"), damage=plant_manifest("{}")),
    Case("store damage", "planted-manifest-unknown-table", sql("select 1"), damage=plant_manifest(json.dumps(
        {"version": "planted", "table": "secrets", "stage": "x", "rows": 0, "files": [], "created_at": "2026",
         "config_json": "{}", "stats_json": "{}", "parents": []}))),
    Case("store damage", "manifest-path-outside-store", lambda env: ["versions", "verify"],
         damage=plant_manifest(json.dumps(
             {"version": "planted", "table": "prompts", "stage": "x", "rows": 0, "created_at": "2026",
              "config_json": "{}", "stats_json": "{}", "parents": [],
              "files": [{"path": "prompts/../../../../etc/passwd", "rows": 0, "bytes": 1, "sha256": "x"}]}))),
    Case("store damage", "manifest-not-json", sql("select 1"), damage=plant_manifest("{not json")),
    Case("store damage", "truncated-data-file", sql("select count(*) from judgments"),
         damage=lambda env: env.data_file("judgments").write_bytes(env.data_file("judgments").read_bytes()[:-9])),
    Case("store damage", "same-size-change-mtime-restored", sql("select count(*) from generations"),
         damage=lambda env: restore_mtime_after(env.data_file("generations"), flip_middle)),
    Case("store damage", "deleted-pairs-file-then-pairs", lambda env: [
        "pairs", "--iter", "1", "--m0", "tiny", "--profile", str(env.profile)],
        damage=lambda env: env.data_file("pairs").unlink()),
    Case("store damage", "deleted-weight-file", lambda env: ["versions", "verify"],
         damage=lambda env: (env.model_folder() / "model.safetensors").unlink()),
    Case("store damage", "weights-changed-mtime-restored", lambda env: ["versions", "verify"],
         damage=lambda env: restore_mtime_after(env.model_folder() / "model.safetensors", flip_middle)),
    Case("store damage", "unlisted-model-folder", lambda env: ["versions", "verify"],
         damage=lambda env: shutil.copytree(env.model_folder(), env.root / "snapshots" / "f00dfeed")),
    Case("store damage", "unlisted-parquet-file", lambda env: ["versions", "verify"],
         damage=lambda env: shutil.copy(env.data_file("pairs"), env.data_file("pairs").parent / "part-x.parquet")),
    Case("store damage", "manifests-folder-is-a-file", lambda env: ["versions", "verify"],
         damage=lambda env: shutil.rmtree(env.root / "manifests") or (env.root / "manifests").write_text("x")),
    Case("store damage", "data-file-replaced-by-symlink", sql("select count(*) from pairs"),
         damage=lambda env: _replace_by_symlink(env.data_file("pairs"), env.scratch / "moved.parquet")),
    Case("store damage", "newer-store-format", sql("select 1"), damage=lambda env: (env.root / "store.json").write_text(
        json.dumps({"format": "temporal-sr-store", "format_version": 99}))),
    Case("store damage", "junk-in-staging", lambda env: ["versions", "verify"],
         damage=lambda env: (env.root / "_staging" / "not-a-version").mkdir(parents=True) or (
             env.root / "_staging" / "not-a-version" / "notes.txt").write_text("mine")),
    Case("store damage", "store-marker-garbage", sql("select 1"),
         damage=lambda env: (env.root / "store.json").write_text("garbage")),
    Case("store damage", "generate-from-damaged-weights", lambda env: ["generate", "--snapshot", "tiny", "--chunk",
                                                                       "3", "--profile", str(env.profile)],
         damage=lambda env: restore_mtime_after(env.model_folder() / "model.safetensors", flip_middle)),

    # ---- SQL ----------------------------------------------------------------------------------------------------
    Case("SQL", "copy-wipes-manifests", lambda env: [
        "sql", (f"COPY (SELECT 1 AS p, 2 AS x) TO '{env.root / 'manifests'}' (FORMAT parquet, PARTITION_BY (p), "
               "OVERWRITE)")]),
    Case("SQL", "copy-over-listed-file", lambda env: [
        "sql", f"COPY (SELECT 1 AS x) TO '{env.data_file('pairs')}' (FORMAT parquet)"]),
    Case("SQL", "copy-outside", lambda env: ["sql", f"COPY (SELECT 1 AS x) TO '{env.scratch / 'leak.csv'}'"],
         outside=lambda env: [env.scratch / "leak.csv"]),
    Case("SQL", "read-text-passwd", sql("select * from read_text('/etc/passwd')"), forbidden=("root:",)),
    Case("SQL", "read-csv-passwd", sql("select * from read_csv('/etc/passwd')"), forbidden=("root",)),
    Case("SQL", "bare-path-scan", sql("select * from '/etc/passwd'"), forbidden=("root:",)),
    Case("SQL", "glob-root", sql("select * from glob('/etc/*')"), forbidden=("/etc/passwd",)),
    Case("SQL", "read-blob", sql("select * from read_blob('/etc/hostname')")),
    Case("SQL", "attach", lambda env: ["sql", f"ATTACH '{env.scratch / 'x.db'}' AS x"],
         outside=lambda env: [env.scratch / "x.db"]),
    Case("SQL", "export-database", lambda env: ["sql", f"EXPORT DATABASE '{env.scratch / 'dump'}'"],
         outside=lambda env: [env.scratch / "dump"]),
    Case("SQL", "install-extension", sql("INSTALL httpfs")),
    Case("SQL", "load-extension", sql("LOAD httpfs")),
    Case("SQL", "set-external-access", sql("SET enable_external_access = true")),
    Case("SQL", "pragma-profiling-output", lambda env: [
        "sql", f"PRAGMA profiling_output = '{env.scratch / 'prof.json'}'"], outside=lambda env: [
        env.scratch / "prof.json"]),
    Case("SQL", "create-secret", sql("CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')")),
    Case("SQL", "create-table", sql("CREATE TABLE t AS SELECT 1")),
    Case("SQL", "drop-view", sql("DROP VIEW pairs")),
    Case("SQL", "delete-from-view", sql("DELETE FROM pairs")),
    Case("SQL", "explain-analyze-copy", lambda env: [
        "sql", f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{env.scratch / 'e.csv'}'"],
        outside=lambda env: [env.scratch / "e.csv"]),
    Case("SQL", "select-then-copy", lambda env: [
        "sql", f"SELECT 1; COPY (SELECT 1) TO '{env.scratch / 'm.csv'}'"], outside=lambda env: [env.scratch / "m.csv"]),
    Case("SQL", "checkpoint-call", sql("CHECKPOINT")),
    Case("SQL", "syntax-error", sql("SELEKT 1")),
    Case("SQL", "unknown-named-query", lambda env: ["sql", "--query", "no_such_query"]),

    # ---- models -------------------------------------------------------------------------------------------------
    Case("models", "no-tokenizer", tiny_model_broken(_no_tokenizer)),
    Case("models", "random-bytes-safetensors", tiny_model_broken(_random_safetensors)),
    Case("models", "remote-code-model-type", tiny_model_broken(_remote_code_config)),
    Case("models", "symlink-out-of-folder", tiny_model_broken(_link_outside)),
    Case("models", "pickle-only", tiny_model_broken(_pickle_only)),
    Case("models", "no-config", tiny_model_broken(lambda f: (f / "config.json").unlink())),
    Case("models", "missing-local-path", lambda env: ["models", "add", str(env.scratch / "no" / "model")]),
    Case("models", "relative-missing-path", lambda env: ["models", "add", "./missing-model-folder"]),
    Case("models", "fresh-store-bad-model", tiny_model_broken(_no_tokenizer), fresh=True),

    # ---- concurrency --------------------------------------------------------------------------------------------
    Case("concurrency", "second-writer-refused", prompts(GOOD_PROMPTS, "p.jsonl", "--chunks", "1"),
         damage=_hold_lock),
    Case("concurrency", "second-loop-refused", lambda env: ["pairs", "--iter", "1", "--m0", "tiny", "--profile",
                                                           str(env.profile)], damage=_hold_lock),

    # ---- CLI arguments ------------------------------------------------------------------------------------------
    Case("CLI arguments", "chunk-size-zero", prompts(GOOD_PROMPTS, "p.jsonl", "--chunk-size", "0")),
    Case("CLI arguments", "chunks-zero", prompts(GOOD_PROMPTS, "p.jsonl", "--chunks", "0")),
    Case("CLI arguments", "sample-offset-negative", lambda env: ["generate", "--snapshot", "tiny",
                                                                "--sample-offset", "-5"]),
    Case("CLI arguments", "pairs-iter-zero-fresh", lambda env: ["pairs", "--iter", "0"], fresh=True),
    Case("CLI arguments", "pairs-iter-zero", lambda env: ["pairs", "--iter", "0", "--m0", "tiny"]),
    Case("CLI arguments", "train-iter-zero", lambda env: ["train", "--iter", "0"]),
    Case("CLI arguments", "generate-k-zero", lambda env: ["generate", "--snapshot", "tiny", "-k", "0"]),
    Case("CLI arguments", "generate-unknown-snapshot", lambda env: ["generate", "--snapshot", "nobody"]),
    Case("CLI arguments", "generate-chunk-zero", lambda env: ["generate", "--snapshot", "tiny", "--chunk", "0"]),
    Case("CLI arguments", "generate-chunk-too-big", lambda env: ["generate", "--snapshot", "tiny", "--chunk", "99"]),
    Case("CLI arguments", "versions-list-unknown-table", lambda env: ["versions", "list", "--table", "nonsense"]),
    Case("CLI arguments", "sql-no-query", lambda env: ["sql"]),
    Case("CLI arguments", "models-add-both", lambda env: ["models", "add", "x", "--default"]),
    Case("CLI arguments", "train-unknown-pairs", lambda env: ["train", "--pairs", "ffffffff"]),
    Case("CLI arguments", "winrate-bootstrap-zero", lambda env: ["eval", "winrate", "--a", "tiny", "--b", "tiny",
                                                                "--prompts", "1", "--judge", "tiny",
                                                                "--bootstrap", "0"]),
    Case("CLI arguments", "pairs-unknown-m0-fresh", lambda env: ["pairs", "--iter", "1", "--m0", "nobody"],
         fresh=True),
    Case("CLI arguments", "unknown-subcommand", lambda env: ["prompts", "add", "p.jsonl"],
         forbidden=("--help) (see",)),
    Case("CLI arguments", "empty-data-root", lambda env: ["--data", "", "prompts", "list"]),
    Case("CLI arguments", "push-unreachable-hub", lambda env: ["push", "me/x", "--tables", "prompts"]),
    Case("CLI arguments", "data-root-is-a-file", lambda env: ["--data", env.file("plain.txt", "x"), "sql",
                                                              "select 1"]),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.group}:{c.name}" for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(case: Case, base_store, tmp_path, monkeypatch):
    base, profile = base_store
    root = tmp_path / "store"
    if not case.fresh:
        shutil.copytree(base, root, symlinks=True)
    env = Env(root=root, scratch=tmp_path / "scratch", profile=profile)
    env.scratch.mkdir()
    monkeypatch.chdir(env.scratch)  # relative paths a case names resolve outside the store
    monkeypatch.setattr("builder.hub.BACKOFF_SECONDS", 0.01)  # the Hub cases meet a closed port: no waiting
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    try:
        if case.damage:
            case.damage(env)
        before = tree_hashes(root)
        result = invoke("--data", str(root), *case.args(env))
    finally:
        while _HELD_LOCKS:
            _HELD_LOCKS.pop().close()
    output = result.output.strip()
    assert result.exit_code != 0, f"exit 0:\n{output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output
    assert 1 <= len(output.splitlines()) <= 2, output
    assert tree_hashes(root) == before, "the store changed"
    for path in case.outside(env):
        assert not path.exists(), f"{path} was created outside the store"
    for text in case.forbidden:
        assert text not in output


def test_a_path_with_a_line_break_keeps_the_error_on_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("--data", "two\nlines", "prompts", "list")
    assert result.exit_code == 1 and result.output.strip() == (
        "Error: no store at two\\nlines: import prompts first (tsr prompts import FILE) or pass --data")


def test_catalog_covers_every_group():
    groups = {c.group for c in CASES}
    assert groups == {"files", "profiles", "store damage", "SQL", "models", "concurrency", "CLI arguments"}
    assert len(CASES) >= 60


def test_manifest_wipe_copy_then_a_write_keeps_every_file(base_store, tmp_path):
    """The severe finding: a COPY over manifests/ and then any writing command used to delete the whole store."""
    base, _profile = base_store
    root = tmp_path / "store"
    shutil.copytree(base, root, symlinks=True)
    files_before = {p for p in (tree_hashes(root) or {}) if not p.startswith(("_cache/", "_intents/"))}
    wipe = f"COPY (SELECT 1 AS p, 2 AS x) TO '{root / 'manifests'}' (FORMAT parquet, PARTITION_BY (p), OVERWRITE)"
    refused = invoke("--data", str(root), "sql", wipe)
    assert refused.exit_code != 0 and "refused" in refused.output
    written = invoke("--data", str(root), "prompts", "import", str(_write(tmp_path / "new.jsonl", GOOD_PROMPTS)),
                     "--chunks", "1")
    assert written.exit_code == 0, written.output
    after = tree_hashes(root) or {}
    assert files_before <= set(after), sorted(files_before - set(after))
    verified = invoke("--data", str(root), "versions", "verify", "--full")
    assert verified.exit_code == 0 and "files match" in verified.output, verified.output


def test_lost_manifests_never_cost_a_model_or_data_file(base_store, tmp_path):
    """Even with manifests really gone (a partial copy, a bad sync), a writer deletes nothing it cannot account for."""
    base, _ = base_store
    root = tmp_path / "store"
    shutil.copytree(base, root, symlinks=True)
    kept = {p for p in (tree_hashes(root) or {}) if p.startswith(("snapshots/", "pairs/", "generations/"))}
    for manifest in (root / "manifests").glob("*.json"):
        manifest.unlink()
    written = invoke("--data", str(root), "prompts", "import", str(_write(tmp_path / "new.jsonl", GOOD_PROMPTS)),
                     "--chunks", "1")
    assert written.exit_code == 0, written.output
    assert "left in place" in written.output
    assert kept <= set(tree_hashes(root) or {})
    verified = invoke("--data", str(root), "versions", "verify")
    assert verified.exit_code != 0 and "unknown item(s)" in verified.output


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_read_only_commands_change_nothing(base_store, tmp_path):
    """Queries, stats, listings and verify leave every byte of the store as it was (no cache written either)."""
    base, _ = base_store
    root = tmp_path / "store"
    shutil.copytree(base, root, symlinks=True)
    shutil.rmtree(root / "_cache", ignore_errors=True)  # a cold cache: reads must still not write one
    before = tree_hashes(root)
    for args in (["sql", "select count(*) as n from pairs"], ["sql", "--query", "pair_stats"], ["stats"],
                 ["versions", "list"], ["versions", "verify"], ["versions", "verify", "--full"],
                 ["models", "list"], ["prompts", "list"]):
        result = invoke("--data", str(root), *args)
        assert result.exit_code == 0, (args, result.output)
    assert tree_hashes(root) == before


@pytest.mark.parametrize("query", [
    "select count(*) as n from pairs", "with x as (select * from pairs) select count(*) from x", "FROM pairs LIMIT 1",
    "DESCRIBE pairs", "SUMMARIZE judgments", "SHOW TABLES", "EXPLAIN select * from pairs",
    "EXPLAIN ANALYZE select count(*) from generations", "PIVOT pairs ON phase USING count(*) GROUP BY method",
    "UNPIVOT (select 1 as a, 2 as b) ON a, b", "select 1; select 2 as two", "VALUES (1), (2)",
])
def test_the_sandbox_still_answers_reads(base_store, query):
    base, _ = base_store
    before = tree_hashes(base)
    result = invoke("--data", str(base), "sql", query)
    assert result.exit_code == 0, result.output
    assert tree_hashes(base) == before
