"""`tsr pull`: restore the versions pushed to a repo into a local store, checked before anything is written.

Everything is downloaded and checked against the index and the manifests first. Then, under the store's write
lock, each version is installed through the store's own write path (`Store.install_version`: files under an intent,
the manifest last), so a pull killed midway leaves what the next writer cleans up, never a half version.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq

from builder.errors import TsrError
from builder.fingerprint import file_sha256
from builder.hub.index import INDEX_FILE, REPO_TYPE, hub_path, manifest_file, remote_index, sha256
from builder.hub.transport import Retry, Warn, check_repo_id, hub_errors, known_tokens, make_api, stderr
from builder.store import TABLE_DIRS, Store, check_manifest, resolve_root
from schemas.tables import SCHEMA_VERSION, TABLES


@dataclass
class PullResult:
    repo_id: str
    revision: str
    commit: str
    restored: list[str] = field(default_factory=list)
    present: int = 0  # versions the local store had already, identical


def pull(root: str | os.PathLike | None, ref: str, *, token: str | None = None, warn: Warn = stderr) -> PullResult:
    """Restore the versions pushed to `ref` (REPO_ID or REPO_ID@REVISION) into the store at `root`.

    A local version that differs from the pushed one stops the pull before anything is written.
    """
    repo_id, _, revision = ref.partition("@")
    revision = revision or "main"
    check_repo_id(repo_id)
    local = _open_existing(root)
    api = make_api(token)
    where = f"pull from {ref}"
    with hub_errors(where, api, "read"), tempfile.TemporaryDirectory(prefix="tsr-pull-") as tmp:
        retry = Retry(where, warn, known_tokens(api))
        commit, index, _ = remote_index(api, repo_id, revision, Path(tmp), retry)
        if not index["versions"]:
            raise TsrError(f"{ref} has no temporal-sr versions ({INDEX_FILE} is missing)")
        entries = sorted(index["versions"].items(),
                         key=lambda item: (item[1]["manifest"]["created_at"], item[0]))
        manifests: dict[str, bytes] = {}
        for version, entry in entries:
            path = retry(api.hf_hub_download, repo_id, f"manifests/{version}.json", repo_type=REPO_TYPE,
                         revision=commit, cache_dir=tmp)
            manifests[version] = _check_manifest(version, entry, Path(path).read_bytes())
        present, conflicts = _compare_local(local, manifests)
        if conflicts:
            raise TsrError(_conflict_message(ref, local, conflicts))
        missing = [v for v, _ in entries if v not in present]
        data = {version: json.loads(raw) for version, raw in manifests.items()}
        known = set(manifests) | ({m.version for m in local.manifests()} if local else set())
        for version in missing:
            absent = [p for p in data[version]["parents"] if p not in known]
            if absent:
                raise TsrError(f"{ref}: version {version} names parent(s) {', '.join(absent[:3])} that neither the "
                               "Hub revision nor the local store has")
        downloads: dict[str, Path] = {}
        for version in missing:
            manifest = data[version]
            for item in manifest["files"]:
                path_in_repo = hub_path(manifest["table"], item["path"])
                path = Path(retry(api.hf_hub_download, repo_id, path_in_repo, repo_type=REPO_TYPE, revision=commit,
                                  cache_dir=tmp))
                _check_file(path, item, manifest["table"], f"{ref}: {path_in_repo}")
                downloads[item["path"]] = path
        store = Store.open(root, create=True)
        with store.writing():
            # Again under the lock: another writer may have added a version since the first look.
            present, conflicts = _compare_local(store, manifests)
            if conflicts:
                raise TsrError(_conflict_message(ref, store, conflicts))
            restored = []
            for version in missing:
                if version in present:
                    continue
                store.install_version(manifests[version],
                                      {item["path"]: downloads[item["path"]] for item in data[version]["files"]})
                restored.append(version)
    return PullResult(repo_id, revision, commit, restored=restored, present=len(present))


def _open_existing(root) -> Store | None:
    path = resolve_root(root)
    if (path / "store.json").is_file() or (path.is_dir() and any(path.iterdir())) or path.is_file():
        return Store.open(path)  # a folder that is not a store fails here, before any download
    return None


def _check_manifest(version: str, entry: dict, raw: bytes) -> bytes:
    """A pulled manifest: its checksum matches the index, it names itself, and its files stay in their table."""
    if sha256(raw) != entry.get("manifest_sha256"):
        raise TsrError(f"manifests/{version}.json on the Hub does not match its checksum in {INDEX_FILE}")
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise TsrError(f"manifests/{version}.json on the Hub is not valid JSON") from None
    check_manifest(manifest, f"manifests/{version}.json on the Hub")
    if manifest.get("version") != version:
        raise TsrError(f"manifests/{version}.json on the Hub names version {manifest.get('version')!r}")
    table = manifest.get("table")
    if table not in TABLES:
        raise TsrError(f"manifests/{version}.json on the Hub has unknown table {table!r}")
    if int(manifest.get("schema_version", 0)) > SCHEMA_VERSION:
        raise TsrError(f"version {version} on the Hub has schema version {manifest['schema_version']}, newer than "
                       f"this temporal-sr's {SCHEMA_VERSION}; upgrade")
    folder = PurePosixPath(TABLE_DIRS[table]).parts
    for item in manifest.get("files", []):
        path = PurePosixPath(str(item.get("path", "")))
        if (path.is_absolute() or ".." in path.parts or "\\" in str(path) or path.suffix != ".parquet"
                or path.parts[: len(folder)] != folder):
            raise TsrError(f"manifests/{version}.json on the Hub lists a file outside its table: {str(path)!r}")
    return raw


def _check_file(path: Path, item: dict, table: str, where: str) -> None:
    """A downloaded file: the size and sha256 its manifest names, readable Parquet of the table's schema."""
    size = path.stat().st_size
    if size != item["bytes"] or file_sha256(str(path)) != item["sha256"]:
        raise TsrError(f"{where}: downloaded file does not match its manifest (size or sha256)")
    try:
        parquet = pq.ParquetFile(path)
        schema, rows = parquet.schema_arrow, parquet.metadata.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise TsrError(f"{where}: not a readable Parquet file ({str(exc).splitlines()[0][:200]})") from None
    wrong = [f.name for f in TABLES[table] if f.name not in schema.names or schema.field(f.name).type != f.type]
    if wrong or rows != item["rows"]:
        raise TsrError(f"{where}: does not fit table {table} (columns {wrong}, {rows} rows)")


def _compare_local(store: Store | None, manifests: dict[str, bytes]) -> tuple[set[str], list[str]]:
    """Versions the local store has identical, and those it has with different content (conflicts)."""
    present, conflicts = set(), []
    if store is None:
        return present, conflicts
    listed = {f["path"]: m.version for m in store.manifests() for f in m.files}
    for version, raw in manifests.items():
        local = manifest_file(store, version)
        if local.is_file():
            (present.add(version) if sha256(local.read_bytes()) == sha256(raw) else conflicts.append(version))
            continue
        for item in json.loads(raw)["files"]:
            owner = listed.get(item["path"])
            if owner is not None and owner != version:
                conflicts.append(version)
    return present, conflicts


def _conflict_message(ref: str, store: Store | None, conflicts: list[str]) -> str:
    root = store.root if store else "the local store"
    return (f"{root} has version(s) {', '.join(conflicts[:5])} with different content than {ref}; nothing was "
            "pulled (pull into another --data folder to compare)")
