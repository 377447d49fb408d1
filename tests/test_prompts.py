from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from builder.stages.prompts import Chunking, build_prompt_set, normalize, prompt_id
from builder.store import Store
from tests.conftest import tsr_env


def _jsonl(path: Path, texts: list[str], key: str = "prompt") -> Path:
    path.write_text("".join(json.dumps({key: t}) + "\n" for t in texts), "utf-8")
    return path


def _store_state(root: Path) -> dict[str, bytes]:
    """Every file of a store except caches, to prove a failed command changed nothing."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "_cache" not in p.parts and p.name != ".lock"
    }


def test_normalized_text_gives_the_prompt_id():
    assert normalize("  Write   a\tPoem ") == "write a poem"
    assert prompt_id("Write a poem") == prompt_id("write  a poem\n")
    assert prompt_id("Write a poem") != prompt_id("Write a poem!")


def test_dedup_and_disjoint_seeded_chunks():
    texts = [f"question {i}" for i in range(50)] + ["QUESTION 3", "question  7"]
    version, table, stats = build_prompt_set(texts, "x.jsonl", Chunking(chunks=4, seed=1))
    assert stats == {"rows_read": 52, "duplicates": 2, "prompts": 50, "chunks": 4}
    chunks = table.column("chunk").to_pylist()
    assert sorted(set(chunks)) == [1, 2, 3, 4]
    assert max(chunks.count(c) for c in set(chunks)) - min(chunks.count(c) for c in set(chunks)) <= 1
    # The first appearance wins and keeps its original text and position.
    assert table.column("text").to_pylist()[3] == "question 3"
    again, table2, _ = build_prompt_set(texts, "renamed.jsonl", Chunking(chunks=4, seed=1))
    assert again == version and table2.column("chunk").to_pylist() == chunks
    other, table3, _ = build_prompt_set(texts, "x.jsonl", Chunking(chunks=4, seed=2))
    assert other != version and table3.column("chunk").to_pylist() != chunks
    _, by_size, stats = build_prompt_set(texts, "x.jsonl", Chunking(chunk_size=20))
    assert stats["chunks"] == 3 and by_size.column("chunk").to_pylist().count(3) == 10


def test_import_jsonl_csv_parquet_and_query(tsr, tmp_path, data_root):
    texts = ["Explain DNS.", "Write a haiku about rain.", "What is 17 * 23?", "Explain DNS. "]
    _jsonl(tmp_path / "a.jsonl", texts)
    out = tsr("prompts", "import", str(tmp_path / "a.jsonl"), "--chunks", "3").output
    assert "3 prompts in 3 chunks (1 duplicates dropped of 4 rows)" in out
    again = tsr("prompts", "import", str(tmp_path / "a.jsonl"), "--chunks", "3").output
    assert "already imported (no-op)" in again

    (tmp_path / "b.csv").write_text('id,instruction\n1,"Name three, colours"\n2,"Sort a list\nin Python"\n')
    assert "2 prompts" in tsr("prompts", "import", str(tmp_path / "b.csv"), "--chunks", "1").output
    pq.write_table(pa.table({"q": ["One?", "Two?", "Three?"]}), tmp_path / "c.parquet")
    out = tsr("prompts", "import", str(tmp_path / "c.parquet"), "--text-column", "q", "--chunk-size", "2").output
    assert "3 prompts in 2 chunks" in out

    counts = tsr("sql", "select count(*) as n from prompts", "--format", "csv").output
    assert counts == "n\n8\n"
    sets = tsr("sql", "select count(distinct set_version) as n from prompts", "--format", "json").output
    assert json.loads(sets) == {"n": 3}
    assert len(tsr("prompts", "list").output.strip().splitlines()) == 3


BAD_INPUTS = {
    "missing file": (None, [], "no such file"),
    "empty file": ("", [], "file is empty"),
    "wrong column": ('{"prompt": "hi"}\n', ["--text-column", "query"], "no column 'query'"),
    "no prompt column": ('{"q": "hi"}\n', [], "no prompt column among q"),
    "missing column on a later line": ('{"prompt": "hi"}\n{"other": "x"}\n', [], "line 2: missing column"),
    "bad json": ('{"prompt": "hi"}\n{"prompt": \n', [], "line 2: invalid JSON"),
    "non-string": ('{"prompt": "hi"}\n{"prompt": 3}\n', [], "line 2: column 'prompt' is int"),
    "blank text": ('{"prompt": "   "}\n', [], "line 1: column 'prompt' is empty"),
    "bad csv column": ("a,b\n1,2\n", ["--text-column", "c"], "no column 'c'"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_nonzero_and_changes_nothing(case, tsr, tmp_path, data_root):
    content, flags, message = BAD_INPUTS[case]
    tsr("prompts", "import", str(_jsonl(tmp_path / "good.jsonl", ["A prompt", "Another"])), "--chunks", "1")
    before = _store_state(data_root)
    suffix = ".csv" if "csv" in case else ".jsonl"
    path = tmp_path / f"bad{suffix}"
    if content is not None:
        path.write_text(content, "utf-8")
    result = tsr("prompts", "import", str(path), *flags, expect=1)
    assert message in result.output
    assert str(path) in result.output
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ")
    assert _store_state(data_root) == before


def test_non_utf8_names_the_line(tsr, tmp_path, data_root):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    result = tsr("prompts", "import", str(path), expect=1)
    assert "line 2: not UTF-8" in result.output
    assert not data_root.exists()  # bad input creates no store either


def test_unreadable_parquet_input(tsr, tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    assert "not a readable Parquet file" in tsr("prompts", "import", str(path), expect=1).output


def test_data_root_that_is_not_a_store(tsr, tmp_path, monkeypatch):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    good = _jsonl(tmp_path / "p.jsonl", ["A prompt"])
    result = tsr("--data", str(junk), "prompts", "import", str(good), "--chunks", "1", expect=1)
    assert "is not a temporal-sr store" in result.output
    assert sorted(p.name for p in junk.iterdir()) == ["notes.txt"]
    assert "no store at" in tsr("--data", str(tmp_path / "none"), "sql", "select 1", expect=1).output


def test_corrupt_and_truncated_store_files_are_reported(tsr, tmp_path, data_root):
    tsr("prompts", "import", str(_jsonl(tmp_path / "p.jsonl", ["A", "B", "C"])), "--chunks", "1")
    part = next((data_root / "prompts").rglob("*.parquet"))
    part.write_bytes(part.read_bytes()[:-7])
    result = tsr("sql", "select count(*) from prompts", expect=1)
    assert "corrupt or truncated" in result.output and part.name in result.output
    assert result.output.count("\n") == 1
    verify = tsr("versions", "verify", expect=1)
    assert "corrupt or truncated" in verify.output


def test_sql_errors_and_named_queries(tsr, tmp_path):
    tsr("prompts", "import", str(_jsonl(tmp_path / "p.jsonl", ["A", "B"])), "--chunks", "1")
    assert "SQL error" in tsr("sql", "select * from nowhere", expect=1).output
    assert "either a SQL string or --query" in tsr("sql", expect=1).output
    assert "no named query" in tsr("sql", "--query", "nope", expect=1).output
    assert "needs --out" in tsr("sql", "select 1", "--format", "parquet", expect=1).output
    out = tmp_path / "r.parquet"
    tsr("sql", "select prompt_id from prompts", "--format", "parquet", "--out", str(out))
    assert pq.read_table(out).num_rows == 2
    # Empty tables answer queries too.
    assert tsr("sql", "select count(*) as n from pairs", "--format", "csv").output == "n\n0\n"


@pytest.mark.parametrize("point", ["store.before-data-rename", "store.before-manifest"])
def test_sigkill_during_import_keeps_the_old_store_and_a_rerun_completes(point, tmp_path, data_root):
    first = _jsonl(tmp_path / "first.jsonl", ["Old prompt one", "Old prompt two"])
    second = _jsonl(tmp_path / "second.jsonl", [f"New prompt {i}" for i in range(500)])
    tsr_cmd = [sys.executable, "-m", "builder", "prompts", "import"]
    ok = subprocess.run([*tsr_cmd, str(first), "--chunks", "1"], env=tsr_env(data_root), capture_output=True, check=False)
    assert ok.returncode == 0, ok.stderr

    killed = subprocess.run([*tsr_cmd, str(second)], env=tsr_env(data_root, TSR_CRASH_AT=point),
                            capture_output=True, check=False)
    assert killed.returncode == -9
    store = Store.open(data_root)
    assert store.read("prompts").num_rows == 2  # the old version, whole; nothing of the killed one
    assert len(store.manifests()) == 1

    rerun = subprocess.run([*tsr_cmd, str(second)], env=tsr_env(data_root), capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert "500 prompts" in rerun.stdout and "no-op" not in rerun.stdout
    store = Store.open(data_root)
    assert store.read("prompts").num_rows == 502
    assert sorted(p.name for p in (data_root / "prompts").rglob("*.parquet")) == sorted(
        Path(f["path"]).name for m in store.manifests() for f in m.files
    )
