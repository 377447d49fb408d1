from __future__ import annotations

import json

import pyarrow as pa
import pytest

from builder.errors import TsrError
from builder.store import Store
from schemas.tables import PROMPTS


def _prompts(n: int, version: str = "v1") -> pa.Table:
    return pa.Table.from_pydict(
        {
            "prompt_id": [f"p{i}" for i in range(n)],
            "text": [f"text {i}" for i in range(n)],
            "source": ["t.jsonl"] * n,
            "set_version": [version] * n,
            "chunk": [1] * n,
            "position": list(range(n)),
        },
        schema=PROMPTS,
    )


def _write(store: Store, version: str = "v1", n: int = 3):
    return store.write_version(
        version=version, stage="test", code_version=1, table="prompts", data=_prompts(n, version),
        partition={"set": version}, config={"n": n},
    )


def test_write_version_layout_manifest_and_read_back(data_root):
    store = Store.open(data_root, create=True)
    with store.writing():
        manifest = _write(store)
    assert (data_root / "store.json").is_file()
    part = data_root / "prompts" / "set=v1" / "part-v1.parquet"
    assert part.is_file()
    recorded = json.loads((data_root / "manifests" / "v1.json").read_text())
    assert recorded["rows"] == 3 and recorded["files"][0]["path"] == "prompts/set=v1/part-v1.parquet"
    assert recorded["files"][0]["bytes"] == part.stat().st_size
    assert "pyarrow" in json.loads(recorded["library_versions_json"])
    assert manifest.config == {"n": 3}
    assert store.read("prompts").num_rows == 3


def test_existing_version_is_a_noop(data_root):
    store = Store.open(data_root, create=True)
    with store.writing():
        first = _write(store)
        second = _write(store, n=5)  # same version id: nothing is rewritten
    assert second.data == first.data
    assert Store.open(data_root).read("prompts").num_rows == 3


def test_schema_problems_are_one_line_and_write_nothing(data_root):
    store = Store.open(data_root, create=True)
    bad = _prompts(2).drop_columns(["chunk"])
    with store.writing(), pytest.raises(TsrError, match="table prompts: missing column"):
        store.write_version(version="v1", stage="t", code_version=1, table="prompts", data=bad,
                            partition={"set": "v1"})
    nulls = _prompts(2).set_column(1, "text", pa.array([None, "x"], pa.string()))
    with store.writing(), pytest.raises(TsrError, match="column text has 1 null"):
        store.write_version(version="v1", stage="t", code_version=1, table="prompts", data=nulls,
                            partition={"set": "v1"})
    assert store.manifests() == []
    assert not (data_root / "prompts").exists()


def test_open_rejects_folders_that_are_not_stores(tmp_path):
    with pytest.raises(TsrError, match="no store at"):
        Store.open(tmp_path / "missing")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(TsrError, match="not a temporal-sr store"):
        Store.open(tmp_path / "junk", create=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "store.json").write_text('{"format": "something-else"}')
    with pytest.raises(TsrError, match="not a temporal-sr store"):
        Store.open(tmp_path / "other")


def test_truncated_and_corrupt_files_are_found_through_the_manifest(data_root):
    store = Store.open(data_root, create=True)
    with store.writing():
        _write(store)
    part = data_root / "prompts" / "set=v1" / "part-v1.parquet"
    original = part.read_bytes()
    store.verify()  # caches the good checksum

    part.write_bytes(original[:-10])
    with pytest.raises(TsrError, match="corrupt or truncated"):
        Store.open(data_root).read("prompts")

    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    part.write_bytes(bytes(flipped))
    with pytest.raises(TsrError, match="sha256 differs"):
        Store.open(data_root).read("prompts")

    part.unlink()
    with pytest.raises(TsrError, match="missing from the store"):
        Store.open(data_root).read("prompts")


def test_a_killed_writers_files_are_removed_but_unknown_files_are_kept(data_root, capsys):
    store = Store.open(data_root, create=True)
    with store.writing():
        _write(store)
    # A writer killed after renaming its file in but before its manifest leaves the file and its intent.
    placed = "prompts/set=v9/part-v9.parquet"
    intent = store.begin_intent([placed], version="v9")
    (data_root / placed).parent.mkdir(parents=True)
    (data_root / placed).write_bytes(b"half")
    # Something no tsr writer recorded: a stray file, say from a partial copy of another store.
    stray = data_root / "prompts" / "set=v8" / "part-v8.parquet"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"someone else's")
    (data_root / "_tmp").mkdir(exist_ok=True)
    (data_root / "_tmp" / "x.parquet").write_bytes(b"half")
    with Store.open(data_root).writing():
        pass
    assert not (data_root / placed).exists() and not intent.exists() and not (data_root / "_tmp").exists()
    assert stray.read_bytes() == b"someone else's"
    assert f"left in place (tsr versions verify lists them): {stray} (a Parquet file that no manifest lists)" in (
        capsys.readouterr().err)
    assert [(p, why) for p, why in Store.open(data_root).unknown_items()] == [
        (stray, "a Parquet file that no manifest lists")]


def test_staged_batches_survive_until_cleared(data_root):
    store = Store.open(data_root, create=True)
    store.stage_batch("v1", "prompts", _prompts(2))
    store.stage_batch("v1", "prompts", _prompts(3))
    assert store.staged("v1", "prompts").num_rows == 5
    assert store.staged("v2", "prompts").num_rows == 0
    store.clear_staged("v1")
    assert store.staged("v1", "prompts").num_rows == 0


def test_only_one_writer_at_a_time(data_root):
    store = Store.open(data_root, create=True)
    with store.writing(), pytest.raises(TsrError, match="another tsr process"), \
            Store.open(data_root, create=True).writing():
        pass


def test_find_version_by_prefix(data_root):
    store = Store.open(data_root, create=True)
    with store.writing():
        _write(store, "abc1")
        _write(store, "abd2")
    assert store.find_version("abc").version == "abc1"
    with pytest.raises(TsrError, match="ambiguous"):
        store.find_version("ab")
    with pytest.raises(TsrError, match="no version"):
        store.find_version("zz")


def test_what_a_running_writer_is_placing_is_not_unknown(data_root):
    """verify runs during a write: a file renamed in under an intent, before its manifest, is accounted for."""
    store = Store.open(data_root, create=True)
    with store.writing():
        _write(store)
        placed = "prompts/set=v7/part-v7.parquet"
        intent = store.begin_intent([placed], version="v7")
        (data_root / placed).parent.mkdir(parents=True)
        (data_root / placed).write_bytes(b"being written")
        assert Store.open(data_root).unknown_items() == []
        store.end_intent(intent)
        assert [p for p, _ in Store.open(data_root).unknown_items()] == [data_root / placed]
