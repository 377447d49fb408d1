"""The repo's index, tsr-hub.json: every pushed version, its manifest's sha256 and its files; and where store files
go in the repo. Push writes it, pull and the card read it.

    {"format": "temporal-sr-hub", "format_version": 1,
     "versions": {<version>: {"table", "manifest_path", "manifest_sha256", "manifest", "files": [...]}},
     "pairs": {<pair version>: {"config", "tag", "path", "rows", "sha256"}}}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath

from builder.errors import TsrError
from builder.store import TABLE_DIRS, Store
from schemas.tables import TABLES

INDEX_FILE = "tsr-hub.json"
INDEX_FORMAT = "temporal-sr-hub"
INDEX_FORMAT_VERSION = 1
REPO_TYPE = "dataset"


def empty_index() -> dict:
    return {"format": INDEX_FORMAT, "format_version": INDEX_FORMAT_VERSION, "versions": {}, "pairs": {}}


def index_bytes(index: dict) -> bytes:
    return (json.dumps(index, indent=1, sort_keys=True) + "\n").encode("utf-8")


def remote_index(api, repo_id: str, revision: str, tmp: Path, retry) -> tuple[str, dict, bytes | None]:
    """The commit `revision` resolves to, the index there (empty if the repo has none yet) and its raw bytes."""
    from huggingface_hub.errors import RemoteEntryNotFoundError

    commit = retry(api.repo_info, repo_id, repo_type=REPO_TYPE, revision=revision).sha or revision
    try:
        path = retry(api.hf_hub_download, repo_id, INDEX_FILE, repo_type=REPO_TYPE, revision=commit,
                     cache_dir=str(tmp / "index"))
    except RemoteEntryNotFoundError:
        return commit, empty_index(), None
    raw = Path(path).read_bytes()
    try:
        index = json.loads(raw)
    except ValueError:
        raise TsrError(f"{repo_id}: {INDEX_FILE} is not valid JSON") from None
    if index.get("format") != INDEX_FORMAT:
        raise TsrError(f"{repo_id}: {INDEX_FILE} is not a temporal-sr index (format {index.get('format')!r})")
    if index.get("format_version", 0) > INDEX_FORMAT_VERSION:
        raise TsrError(f"{repo_id} was pushed by a newer temporal-sr (index format {index['format_version']}); "
                       "upgrade")
    return commit, index, raw


def tables_in(index: dict) -> dict[str, list[dict]]:
    """table -> its pushed version entries, oldest first, tables in the store's order."""
    found: dict[str, list[dict]] = {}
    for entry in sorted(index["versions"].values(), key=lambda e: (e["manifest"]["created_at"],
                                                                  e["manifest"]["version"])):
        found.setdefault(entry["table"], []).append(entry)
    return {table: found[table] for table in TABLES if table in found}


def pair_entries(index: dict) -> list[tuple[str, dict, dict]]:
    """(version, manifest, pushed pair entry), oldest first."""
    items = [(v, index["versions"][v]["manifest"], p) for v, p in index["pairs"].items()]
    return sorted(items, key=lambda item: (item[1]["created_at"], item[0]))


def hub_path(table: str, store_path: str) -> str:
    """Where a store file goes in the repo: data/<table>/ plus its path inside the table's folder."""
    inside = PurePosixPath(store_path).relative_to(TABLE_DIRS[table])
    return f"data/{table}/{inside.as_posix()}"


def manifest_file(store: Store, version: str) -> Path:
    """The manifest of `version` in the store: the index names its checksum, so it is read byte for byte."""
    return store.root / "manifests" / f"{version}.json"


def sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()
