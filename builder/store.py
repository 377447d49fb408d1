"""The versioned Parquet store: hive-partitioned tables, one manifest per materialized version.

Layout under the data root (DuckDB and polars read the table folders as they are):

    store.json                                    format marker and versions
    prompts/set=<version>/part-<version>.parquet
    generations/snapshot=<id>/part-<version>.parquet
    judgments/judge=<id>/part-<version>.parquet
    pairs/method=<m>/iteration=<n>/phase=<p>/part-<version>.parquet
    tables/snapshots/part-<version>.parquet      one row per registered model snapshot
    tables/runs/part-<version>.parquet           one row per training run
    snapshots/<id>/                              model folders (safetensors, tokenizer, config)
    manifests/<version>.json                     written last: a version exists iff its manifest does
    _staging/<version>/batch-*.parquet           finished batches of an unfinished version (resume)
    _tmp/                                        files being written; never read

Crash safety: every file is written under _tmp, fsynced and renamed into place; the manifest is renamed in last,
so a SIGKILL at any point leaves either the whole version or none of it visible. Readers only see files that a
manifest lists, and its sha256 checksums catch files that were truncated or changed afterwards.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from builder.errors import TsrError
from builder.faults import crash_point
from builder.fingerprint import HASH_TAG, canonical_json, file_sha256
from schemas.tables import PARTITIONS, SCHEMA_VERSION, TABLES
from schemas.validate import SchemaError, check_table

STORE_FORMAT = "temporal-sr-store"
STORE_FORMAT_VERSION = 1
DEFAULT_ROOT = "tsr-data"

# Where each table's files live, relative to the root. snapshots/ itself holds model folders, so the two
# small lineage tables sit under tables/.
TABLE_DIRS = {
    "prompts": "prompts",
    "generations": "generations",
    "judgments": "judgments",
    "pairs": "pairs",
    "snapshots": "tables/snapshots",
    "runs": "tables/runs",
    "embeddings": "embeddings",
    "ift": "sft/ift",
    "eft": "sft/eft",
    "evals": "evals",
}


@dataclass(frozen=True)
class Manifest:
    """One materialized version, as recorded in manifests/<version>.json."""

    data: dict[str, Any]

    @property
    def version(self) -> str:
        return self.data["version"]

    @property
    def table(self) -> str:
        return self.data["table"]

    @property
    def stage(self) -> str:
        return self.data["stage"]

    @property
    def rows(self) -> int:
        return self.data["rows"]

    @property
    def files(self) -> list[dict[str, Any]]:
        return self.data["files"]

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.data["config_json"])

    @property
    def stats(self) -> dict[str, Any]:
        return json.loads(self.data["stats_json"])


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The data root: an explicit path, else $TSR_HOME, else ./tsr-data."""
    return Path(root or os.environ.get("TSR_HOME") or DEFAULT_ROOT)


class Store:
    """A data root. Open it with `Store.open`; write through `write_version` inside `writing()`."""

    def __init__(self, root: Path):
        self.root = root
        self._manifests: dict[str, Manifest] | None = None

    # ---- opening ----------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, root: str | os.PathLike | None = None, *, create: bool = False) -> Store:
        path = resolve_root(root)
        marker = path / "store.json"
        if marker.is_file():
            try:
                meta = json.loads(marker.read_text("utf-8"))
            except (OSError, ValueError) as exc:
                raise TsrError(f"{marker}: unreadable store marker ({exc})") from None
            if meta.get("format") != STORE_FORMAT:
                raise TsrError(f"{path} is not a temporal-sr store ({marker} has format {meta.get('format')!r})")
            if meta.get("format_version", 0) > STORE_FORMAT_VERSION:
                raise TsrError(
                    f"{path} was written by a newer temporal-sr (store format {meta['format_version']}); upgrade"
                )
            return cls(path)
        if path.exists() and not path.is_dir():
            raise TsrError(f"data root {path} is a file, not a store folder")
        if path.is_dir() and any(path.iterdir()):
            raise TsrError(f"{path} is not a temporal-sr store (no store.json) and is not empty; pick another --data")
        if not create:
            raise TsrError(f"no store at {path}: import prompts first (tsr prompts import FILE) or pass --data")
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": STORE_FORMAT,
            "format_version": STORE_FORMAT_VERSION,
            "schema_version": SCHEMA_VERSION,
            "hash": HASH_TAG,
            "created_at": _now_iso(),
        }
        store = cls(path)
        store._write_atomic(marker, (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
        return store

    @contextlib.contextmanager
    def writing(self) -> Iterator[Store]:
        """Hold the store's write lock, and clear leftovers of killed writers before writing anything."""
        lock_path = self.root / ".lock"
        with open(lock_path, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TsrError(f"another tsr process is writing to {self.root}; wait for it to finish") from None
            try:
                self._remove_orphans()
                yield self
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # ---- manifests --------------------------------------------------------------------------------------------

    def manifests(self, *, table: str | None = None, stage: str | None = None) -> list[Manifest]:
        """All complete versions, oldest first, optionally of one table or stage."""
        if self._manifests is None:
            self._manifests = {}
            folder = self.root / "manifests"
            for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
                try:
                    data = json.loads(path.read_text("utf-8"))
                except (OSError, ValueError) as exc:
                    raise TsrError(f"{path}: unreadable manifest ({exc})") from None
                self._manifests[data["version"]] = Manifest(data)
        found = [
            m
            for m in self._manifests.values()
            if (table is None or m.table == table) and (stage is None or m.stage == stage)
        ]
        return sorted(found, key=lambda m: (m.data["created_at"], m.version))

    def manifest(self, version: str) -> Manifest | None:
        self.manifests()
        assert self._manifests is not None
        return self._manifests.get(version)

    def find_version(self, prefix: str) -> Manifest:
        """A version by id or unique id prefix (like git's short hashes)."""
        matches = [m for m in self.manifests() if m.version.startswith(prefix)]
        if not matches:
            raise TsrError(f"no version {prefix!r} in {self.root}")
        if len(matches) > 1:
            raise TsrError(f"version prefix {prefix!r} is ambiguous in {self.root}: {len(matches)} matches")
        return matches[0]

    # ---- writing ----------------------------------------------------------------------------------------------

    def write_version(
        self,
        *,
        version: str,
        stage: str,
        code_version: int,
        table: str,
        data: pa.Table,
        partition: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
        parents: list[str] | None = None,
        snapshot_id: str | None = None,
        stats: dict[str, Any] | None = None,
    ) -> Manifest:
        """Materialize `data` as version `version` of `table`. A version that exists already is a no-op."""
        existing = self.manifest(version)
        if existing is not None:
            return existing
        try:
            data = check_table(data, table)
        except SchemaError as exc:
            raise TsrError(str(exc)) from None
        keys = PARTITIONS[table]
        partition = partition or {}
        if set(partition) != set(keys):
            raise ValueError(f"table {table} is partitioned by {keys}, got {sorted(partition)}")
        folder = Path(TABLE_DIRS[table], *(f"{key}={_partition_value(partition[key])}" for key in keys))
        relative = folder / f"part-{version}.parquet"
        file_entry = self._write_parquet(relative, data)
        crash_point("store.before-manifest")
        manifest = {
            "version": version,
            "stage": stage,
            "stage_code_version": code_version,
            "table": table,
            "config_json": canonical_json(config or {}),
            "parents": sorted(parents or []),
            "snapshot_id": snapshot_id,
            "rows": data.num_rows,
            "files": [file_entry],
            "stats_json": canonical_json(stats or {}),
            "created_at": _now_iso(),
            "library_versions_json": canonical_json(library_versions()),
            "schema_version": SCHEMA_VERSION,
        }
        # Last step, and the completion marker: the version now exists.
        self._write_atomic(self.root / "manifests" / f"{version}.json", _manifest_bytes(manifest))
        self._manifests = None
        return Manifest(manifest)

    def _write_parquet(self, relative: Path, data: pa.Table) -> dict[str, Any]:
        target = self.root / relative
        tmp = self._tmp_path(".parquet")
        pq.write_table(data, tmp, compression="zstd")
        _fsync_file(tmp)
        crash_point("store.before-data-rename")
        entry = {
            "path": relative.as_posix(),
            "rows": data.num_rows,
            "bytes": tmp.stat().st_size,
            "sha256": file_sha256(str(tmp)),
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        return entry

    def _write_atomic(self, target: Path, payload: bytes) -> None:
        tmp = self._tmp_path(target.suffix)
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)
        _fsync_dir(target.parent)

    def _tmp_path(self, suffix: str) -> Path:
        folder = self.root / "_tmp"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{uuid.uuid4().hex}{suffix}"

    def _remove_orphans(self) -> None:
        """Delete what killed writers left: temp files, table files no manifest lists, unregistered models.

        A file without a manifest was renamed into place by a writer killed before its manifest; the rerun
        writes it again under the same name, so removing it loses no finished work.
        """
        shutil.rmtree(self.root / "_tmp", ignore_errors=True)
        listed = {f["path"] for m in self.manifests() for f in m.files}
        for folder in TABLE_DIRS.values():
            base = self.root / folder
            if not base.is_dir():
                continue
            for path in base.rglob("*.parquet"):
                if path.relative_to(self.root).as_posix() not in listed:
                    path.unlink()
        models = self.root / "snapshots"
        if models.is_dir():
            registered = set(self.read("snapshots", verify=False).column("snapshot_id").to_pylist())
            for folder in models.iterdir():
                if folder.name not in registered:
                    shutil.rmtree(folder)

    # ---- staged batches (resume inside a version) -------------------------------------------------------------

    def stage_batch(self, version: str, table: str, batch: pa.Table) -> None:
        """Keep one finished batch of an unfinished version, so a killed run resumes after it."""
        batch = check_table(batch, table)
        folder = self.root / "_staging" / version
        folder.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp_path(".parquet")
        pq.write_table(batch, tmp, compression="zstd")
        _fsync_file(tmp)
        os.replace(tmp, folder / f"batch-{uuid.uuid4().hex}.parquet")
        _fsync_dir(folder)

    def staged(self, version: str, table: str) -> pa.Table:
        """The batches staged so far for `version` (an empty table if none)."""
        folder = self.root / "_staging" / version
        parts = sorted(folder.glob("batch-*.parquet")) if folder.is_dir() else []
        tables = []
        for part in parts:
            try:
                tables.append(check_table(pq.read_table(part), table))
            except (OSError, pa.ArrowException, TsrError):  # a torn batch cannot exist, a disk error can
                part.unlink()
        if not tables:
            return TABLES[table].empty_table()
        return pa.concat_tables(tables)

    def clear_staged(self, version: str) -> None:
        shutil.rmtree(self.root / "_staging" / version, ignore_errors=True)

    # ---- reading ----------------------------------------------------------------------------------------------

    def files(self, table: str, *, versions: list[str] | None = None) -> list[Path]:
        wanted = set(versions) if versions is not None else None
        return [
            self.root / entry["path"]
            for manifest in self.manifests(table=table)
            if wanted is None or manifest.version in wanted
            for entry in manifest.files
        ]

    def read(self, table: str, *, versions: list[str] | None = None, verify: bool = True) -> pa.Table:
        """All rows of `table` (or of some of its versions), in the declared schema."""
        if verify:
            self.verify(tables=[table])
        paths = self.files(table, versions=versions)
        if not paths:
            return TABLES[table].empty_table()
        parts = []
        for path in paths:
            try:
                parts.append(pq.read_table(path, schema=TABLES[table], partitioning=None))
            except (OSError, pa.ArrowException) as exc:
                raise TsrError(f"{path}: unreadable Parquet file ({_first_line(exc)})") from None
        return pa.concat_tables(parts)

    def verify(self, *, tables: list[str] | None = None, full: bool = False) -> int:
        """Check every listed file against its manifest's size and sha256; return how many were checked.

        Checksums of files whose size and mtime are unchanged since they last verified are cached in
        _cache/verified.json, so repeated reads of a large store stay cheap; `full` ignores that cache.
        """
        cache_path = self.root / "_cache" / "verified.json"
        try:
            cache = {} if full else json.loads(cache_path.read_text("utf-8"))
        except (OSError, ValueError):
            cache = {}
        checked, changed = 0, False
        for manifest in self.manifests():
            if tables is not None and manifest.table not in tables:
                continue
            for entry in manifest.files:
                path = self.root / entry["path"]
                where = f"{path} (version {manifest.version}, manifests/{manifest.version}.json)"
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    raise TsrError(f"{where}: file is missing from the store") from None
                if stat.st_size != entry["bytes"]:
                    raise TsrError(
                        f"{where}: file is corrupt or truncated ({stat.st_size} bytes, manifest says {entry['bytes']})"
                    )
                stamp = [stat.st_size, stat.st_mtime_ns, entry["sha256"]]
                if cache.get(entry["path"]) != stamp:
                    if file_sha256(str(path)) != entry["sha256"]:
                        raise TsrError(f"{where}: file is corrupt (sha256 differs from the manifest)")
                    cache[entry["path"]] = stamp
                    changed = True
                checked += 1
        if changed:
            with contextlib.suppress(OSError):  # the cache is an optimisation; a read-only store still reads
                self._write_atomic(cache_path, json.dumps(cache).encode("utf-8"))
        return checked

    # ---- model folders ----------------------------------------------------------------------------------------

    def snapshot_dir(self, snapshot_id: str) -> Path:
        return self.root / "snapshots" / snapshot_id


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shaped the data; heavy ones only if this process already imported them."""
    from importlib import metadata

    names = ["temporal-sr", "polars", "pyarrow", "duckdb"]
    names += [n for n in ("torch", "transformers", "trl", "vllm") if n in sys.modules]
    found = {"python": sys.version.split()[0]}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def _partition_value(value: str) -> str:
    text = str(value)
    if not text or "/" in text or "=" in text or text in (".", ".."):
        raise ValueError(f"bad partition value {text!r}")
    return text


def _manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
