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
    _intents/<id>.json                           what a writer is about to place (cleared when it is committed)
    _cache/verified.json                         checksums already verified (size, mtime, ctime, inode)
    _tmp/                                        files being written; never read

Crash safety: every file is written under _tmp, fsynced and renamed into place; the manifest is renamed in last,
so a SIGKILL at any point leaves either the whole version or none of it visible. Readers only see files that a
manifest lists, and its sha256 checksums catch files that were truncated or changed afterwards.

Cleanup deletes only what tsr itself wrote: before a writer renames a file or model folder into place it records an
intent naming the paths, and clears it once the version (or the snapshot row) is committed. The next writer removes
the paths of unfinished intents and `_tmp/`, nothing else: an unlisted file or an unregistered model folder that no
intent names is left where it is, with a warning, and `tsr versions verify` reports it.
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


_MANIFEST_KEYS = {"version": str, "table": str, "stage": str, "rows": int, "files": list, "created_at": str,
                  "config_json": str, "stats_json": str, "parents": list}
_FILE_KEYS = {"path": str, "rows": int, "bytes": int, "sha256": str}
_MODEL_FILE_KEYS = {"path": str, "bytes": int, "sha256": str}


def check_manifest(data: Any, where: str) -> dict[str, Any]:
    """`data` as a manifest, or a one-line TsrError naming `where` and the first field at fault.

    File paths must lie inside the table's own folder (model files inside snapshots/<id>/), so a planted or
    damaged manifest can never make a reader, verify or push touch anything outside the store.
    """
    if not isinstance(data, dict):
        raise TsrError(f"{where}: not a temporal-sr manifest (a JSON object is expected)")
    for key, kind in _MANIFEST_KEYS.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise TsrError(f"{where}: not a temporal-sr manifest ({key!r} is missing or not a {kind.__name__})")
    if data["table"] not in TABLE_DIRS:
        raise TsrError(f"{where}: unknown table {data['table']!r}")
    folder = TABLE_DIRS[data["table"]]
    for entry in data["files"]:
        _check_entry(entry, _FILE_KEYS, folder, where)
    for entry in data.get("model_files") or []:
        _check_entry(entry, _MODEL_FILE_KEYS, "snapshots", where)
    return data


def _check_entry(entry: Any, keys: dict[str, type], folder: str, where: str) -> None:
    if not isinstance(entry, dict) or any(not isinstance(entry.get(k), t) for k, t in keys.items()):
        raise TsrError(f"{where}: a file entry lacks {', '.join(keys)}: {str(entry)[:80]}")
    parts = Path(entry["path"]).parts
    if (Path(entry["path"]).is_absolute() or ".." in parts or "\\" in entry["path"]
            or tuple(parts[: len(Path(folder).parts)]) != Path(folder).parts):
        raise TsrError(f"{where}: file path {entry['path']!r} lies outside the table folder {folder}/")


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The data root: an explicit path, else $TSR_HOME, else ./tsr-data."""
    if root is not None and not str(root).strip():
        raise TsrError("--data is empty: give the store's folder")
    return Path(root or os.environ.get("TSR_HOME") or DEFAULT_ROOT)


class Store:
    """A data root. Open it with `Store.open`; write through `write_version` inside `writing()`."""

    def __init__(self, root: Path, *, pending_marker: dict[str, Any] | None = None):
        self.root = root
        self._manifests: dict[str, Manifest] | None = None
        # A store opened with create=True that does not exist yet: its folder and store.json appear with the first
        # write, so a command that fails before writing anything leaves no store behind.
        self._pending_marker = pending_marker
        self._created_dirs: list[Path] = []
        self._writing = False
        self._cache_updates: dict[str, list] = {}

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
        # A folder holding only a lock is a store another process is creating right now (see `writing`).
        if path.is_dir() and any(p.name != ".lock" for p in path.iterdir()):
            raise TsrError(f"{path} is not a temporal-sr store (no store.json) and is not empty; pick another --data")
        if not create:
            raise TsrError(f"no store at {path}: import prompts first (tsr prompts import FILE) or pass --data")
        meta = {
            "format": STORE_FORMAT,
            "format_version": STORE_FORMAT_VERSION,
            "schema_version": SCHEMA_VERSION,
            "hash": HASH_TAG,
            "created_at": _now_iso(),
            # Ranks of a training on several nodes check that they all see this store (train/distributed.py).
            "store_id": uuid.uuid4().hex,
        }
        return cls(path, pending_marker=meta)

    @classmethod
    def init(cls, root: str | os.PathLike | None = None) -> Store:
        """Open the store at `root`, creating it (folder and store.json) now if it does not exist."""
        store = cls.open(root, create=True)
        store._materialize()
        return store

    def _materialize(self) -> None:
        """Create the store's folder and store.json now, before its first file (a no-op for an existing store)."""
        if self._pending_marker is None:
            return
        meta, self._pending_marker = self._pending_marker, None
        self._make_root()
        self._write_atomic(self.root / "store.json", (json.dumps(meta, indent=2) + "\n").encode("utf-8"))

    def replace_marker(self, meta: dict[str, Any]) -> None:
        """Rewrite store.json (a writer only: under the write lock)."""
        if not self._writing:
            raise RuntimeError("store.json is rewritten only inside writing()")
        self._write_atomic(self.root / "store.json", (json.dumps(meta, indent=2) + "\n").encode("utf-8"))

    def _make_root(self) -> None:
        missing = [p for p in [self.root, *self.root.parents] if not p.exists()]
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TsrError(f"cannot create the store folder {self.root}: {exc.strerror or exc}") from None
        self._created_dirs += [p for p in missing if p not in self._created_dirs]

    @contextlib.contextmanager
    def writing(self) -> Iterator[Store]:
        """Hold the store's write lock, clear leftovers of killed writers, check the store, then write.

        A command that fails inside leaves the store as it found it: the checksum cache is only updated when the
        block ends normally, and a store that was to be created is not created if nothing was written. A block
        inside another of the same Store (a step that locks for itself, called by a command that already holds
        the lock) just goes on under the outer one.
        """
        if self._writing:
            yield self
            return
        if self._pending_marker is not None:
            self._make_root()
        lock_path = self.root / ".lock"
        try:
            lock = open(lock_path, "a+")  # noqa: SIM115 (closed in the finally below)
        except OSError as exc:
            raise TsrError(f"cannot write to the store {self.root}: {exc.strerror or exc} ({lock_path})") from None
        ok = False
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TsrError(f"another tsr process is writing to {self.root}; wait for it to finish") from None
            self._writing = True
            try:
                if self._pending_marker is None:
                    self._remove_orphans()
                    self.verify()  # cached: a stat per file; a damaged store takes no new writes
                yield self
                ok = True
            finally:
                self._writing = False
                if ok:
                    self._flush_cache()
                self._cache_updates = {}
                fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            lock.close()
            if self._pending_marker is not None:  # nothing was written: leave no store behind
                with contextlib.suppress(OSError):
                    lock_path.unlink()
                for folder in self._created_dirs:
                    with contextlib.suppress(OSError):
                        folder.rmdir()
                self._created_dirs = []

    # ---- manifests --------------------------------------------------------------------------------------------

    def manifests(self, *, table: str | None = None, stage: str | None = None) -> list[Manifest]:
        """All complete versions, oldest first, optionally of one table or stage."""
        if self._manifests is None:
            self._manifests = {}
            folder = self.root / "manifests"
            if folder.exists() and not folder.is_dir():
                raise TsrError(f"{folder}: not a folder (the store's manifests are missing)")
            for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
                try:
                    data = json.loads(path.read_text("utf-8"))
                except (OSError, ValueError) as exc:
                    raise TsrError(f"{path}: unreadable manifest ({_first_line(exc)})") from None
                check_manifest(data, str(path))
                if data["version"] != path.stem:
                    raise TsrError(f"{path}: manifest of version {data['version']!r} under another file name")
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
        model_files: list[dict[str, Any]] | None = None,
    ) -> Manifest:
        """Materialize `data` as version `version` of `table`. A version that exists already is a no-op.

        `model_files` (snapshots only): size and sha256 of each file of the model folder, for `verify`.
        """
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
        with self.placing([relative.as_posix()], version=version):
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
            if model_files:
                manifest["model_files"] = model_files
            # Last step, and the completion marker: the version now exists.
            self._write_atomic(self.root / "manifests" / f"{version}.json", _manifest_bytes(manifest))
        self._manifests = None
        return Manifest(manifest)

    def install_version(self, manifest_bytes: bytes, files: dict[str, Path]) -> Manifest:
        """Place a version another store made (pulled from the Hub) exactly as it was made: each file the manifest
        lists, copied byte for byte from `files` (manifest path -> local file), then the manifest itself, last.

        The same write path as `write_version`: files are copied under _tmp, checked there against the manifest's
        size and sha256, renamed into place under an intent, and the manifest is the completion marker. A writer
        only (inside `writing()`); a version that exists already is a no-op.
        """
        if not self._writing:
            raise RuntimeError("versions are installed only inside writing()")
        try:
            data = json.loads(manifest_bytes)
        except ValueError:
            raise TsrError("the manifest to install is not valid JSON") from None
        check_manifest(data, "the manifest to install")
        existing = self.manifest(data["version"])
        if existing is not None:
            return existing
        with self.placing([entry["path"] for entry in data["files"]], version=data["version"]):
            for entry in data["files"]:
                tmp = self._tmp_path(Path(entry["path"]).suffix)
                shutil.copyfile(files[entry["path"]], tmp)
                _fsync_file(tmp)
                if tmp.stat().st_size != entry["bytes"] or file_sha256(str(tmp)) != entry["sha256"]:
                    raise TsrError(f"{files[entry['path']]}: does not match the manifest of version "
                                   f"{data['version']} (size or sha256)")
                target = self.root / entry["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)
                _fsync_dir(target.parent)
                self.remember_verified(entry["path"], entry["sha256"])
            self._write_atomic(self.root / "manifests" / f"{data['version']}.json", manifest_bytes)
        self._manifests = None
        return Manifest(data)

    # ---- intents: what a writer is about to place, so a cleanup removes only what tsr wrote ------------------

    @contextlib.contextmanager
    def placing(self, paths: list[str], *, version: str | None = None,
                snapshot_id: str | None = None) -> Iterator[None]:
        """Record that `paths` (relative to the root) are about to be placed, until the block commits them.

        The intent is done when `version`'s manifest exists or `snapshot_id` has a row in the snapshots table;
        a writer killed inside the block leaves the intent behind, and the next writer removes those paths.
        A path that already holds something no intent of ours made is moved aside first, never overwritten.
        """
        intent = self.begin_intent(paths, version=version, snapshot_id=snapshot_id)
        yield
        self.end_intent(intent)

    def begin_intent(self, paths: list[str], *, version: str | None = None,
                     snapshot_id: str | None = None) -> Path:
        """Write an intent (see `placing`) and return its file, for a writer that commits it later."""
        self._materialize()
        for relative in paths:
            self._set_aside_if_unknown(relative)
        intent = {"paths": paths, "version": version, "snapshot_id": snapshot_id, "created_at": _now_iso()}
        path = self.root / "_intents" / f"{uuid.uuid4().hex}.json"
        self._write_atomic(path, json.dumps(intent).encode("utf-8"))
        return path

    def end_intent(self, path: Path) -> None:
        path.unlink()

    def _set_aside_if_unknown(self, relative: str) -> None:
        target = self.root / relative
        if not (target.exists() or target.is_symlink()):
            return
        listed = {f["path"] for m in self.manifests() for f in m.files}
        if relative in listed or (relative.startswith("snapshots/") and relative.split("/")[1] in set(
                self.read("snapshots", verify=False).column("snapshot_id").to_pylist())):
            return
        aside = self.root / "_quarantine" / _now_iso().replace(":", "") / relative
        aside.parent.mkdir(parents=True, exist_ok=True)
        os.replace(target, aside)
        _warn(f"{target} was in the way of a new version and is not listed by any manifest; moved it to {aside}")

    def _intended_paths(self) -> set[str]:
        paths: set[str] = set()
        folder = self.root / "_intents"
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                paths.update(str(p) for p in json.loads(path.read_text("utf-8"))["paths"])
        return paths

    def _finish_intents(self) -> None:
        """Remove what unfinished intents placed (a writer was killed before committing it), then the intents."""
        folder = self.root / "_intents"
        if not folder.is_dir():
            return
        registered: set[str] | None = None
        for path in sorted(folder.glob("*.json")):
            try:
                intent = json.loads(path.read_text("utf-8"))
                paths = [str(p) for p in intent["paths"]]
            except (OSError, ValueError, KeyError, TypeError):
                _warn(f"{path}: unreadable intent, left in place")
                continue
            done = intent.get("version") is not None and self.manifest(intent["version"]) is not None
            if intent.get("snapshot_id") is not None:
                if registered is None:
                    registered = set(self.read("snapshots", verify=False).column("snapshot_id").to_pylist())
                done = intent["snapshot_id"] in registered
            if not done:
                for relative in paths:
                    target = self.root / relative
                    if Path(relative).is_absolute() or ".." in Path(relative).parts:
                        continue  # never outside the store, whatever the file says
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    elif target.exists() or target.is_symlink():
                        target.unlink()
            path.unlink()

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
        self.remember_verified(entry["path"], entry["sha256"])
        return entry

    def write_local_file(self, name: str, payload: bytes) -> None:
        """Replace a store-local file at the root that no version lists and no push sends (endpoints.json)."""
        self._write_atomic(self.root / name, payload)

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
        return self.tmp_dir() / f"{uuid.uuid4().hex}{suffix}"

    def tmp_dir(self) -> Path:
        """The store's scratch folder (emptied by the next writer); creates the store if it is still pending."""
        if self._pending_marker is not None:  # _materialize clears it before writing, so this cannot recurse
            self._materialize()
        folder = self.root / "_tmp"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _remove_orphans(self) -> None:
        """Clear what killed writers left: `_tmp/`, the paths of unfinished intents, staging of finished versions.

        Only paths tsr itself recorded are deleted. Anything else unknown (a Parquet file no manifest lists, a
        model folder without a snapshot row, junk in `_staging/`) stays where it is, with a warning.
        """
        shutil.rmtree(self.root / "_tmp", ignore_errors=True)
        self._finish_intents()
        staging = self.root / "_staging"
        if staging.is_dir():
            for folder in staging.iterdir():
                # A version whose manifest exists was committed; its staged batches are copies of its rows.
                if folder.is_dir() and not folder.is_symlink() and self.manifest(folder.name) is not None:
                    shutil.rmtree(folder)
        unknown = self.unknown_items()
        if unknown:
            shown = "; ".join(f"{path} ({why})" for path, why in unknown[:2])
            more = f" and {len(unknown) - 2} more" if len(unknown) > 2 else ""
            _warn(f"{len(unknown)} item(s) in the store that tsr did not write, left in place (tsr versions verify "
                  f"lists them): {shown}{more}")

    def unknown_items(self) -> list[tuple[Path, str]]:
        """Paths under the store that no manifest, snapshot row or writer accounts for, with what each is."""
        found: list[tuple[Path, str]] = []
        # What a running writer is placing right now is accounted for by its intent (verify runs during writes).
        listed = {f["path"] for m in self.manifests() for f in m.files} | self._intended_paths()
        for folder in sorted(set(TABLE_DIRS.values())):
            base = self.root / folder
            if not base.is_dir():
                continue
            for path in sorted(base.rglob("*.parquet")):
                relative = path.relative_to(self.root).as_posix()
                if relative not in listed:
                    found.append((path, "a Parquet file that no manifest lists"))
        models = self.root / "snapshots"
        if models.is_dir():
            registered = set(self.read("snapshots", verify=False).column("snapshot_id").to_pylist())
            for folder in sorted(models.iterdir()):
                if folder.name not in registered and f"snapshots/{folder.name}" not in listed:
                    found.append((folder, "a model folder with no row in the snapshots table"))
        staging = self.root / "_staging"
        if staging.is_dir():
            for entry in sorted(staging.iterdir()):
                parts = list(entry.iterdir()) if entry.is_dir() and not entry.is_symlink() else [entry]
                if any(not (p.is_file() and p.name.startswith("batch-") and p.suffix == ".parquet") for p in parts):
                    found.append((entry, "not a staged batch folder of tsr's"))
        return found

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

    def verify(self, *, tables: list[str] | None = None, full: bool = False, models: bool = False) -> int:
        """Check every listed file against its manifest's size and sha256; return how many were checked.

        With `models`, the files of every local model folder are checked too, against the sizes and checksums
        recorded when the model was added or trained. Checksums already verified are cached in
        _cache/verified.json under the file's size, mtime, ctime and inode: restoring a changed file's mtime
        cannot fool it, since the kernel sets ctime on every change. `full` ignores the cache. Only a writer
        updates the cache, and only when it finishes: reading never changes the store.
        """
        cache = {} if full else self._verified_cache()
        checked = 0
        for manifest in self.manifests():
            if tables is not None and manifest.table not in tables:
                continue
            for entry in manifest.files:
                self._verify_file(entry, f"version {manifest.version}, manifests/{manifest.version}.json", cache)
                checked += 1
        if models:
            checked += self.verify_models(cache=cache)
        return checked

    def verify_models(self, snapshot_ids: list[str] | None = None, *, cache: dict | None = None) -> int:
        """Check the recorded files of local model folders (all, or `snapshot_ids`); return how many."""
        cache = self._verified_cache() if cache is None else cache
        checked = 0
        for manifest in self.manifests(table="snapshots"):
            recorded = manifest.data.get("model_files") or []
            if not recorded or (snapshot_ids is not None and manifest.data.get("snapshot_id") not in snapshot_ids):
                continue
            folder = self.root / Path(recorded[0]["path"]).parts[0] / Path(recorded[0]["path"]).parts[1]
            if not folder.is_dir():
                continue  # weights not in this store (a pull brings tables, not models): see missing_models
            for entry in recorded:
                self._verify_file(entry, f"model snapshot {manifest.data.get('snapshot_id')}", cache)
                checked += 1
        return checked

    def missing_models(self) -> list[str]:
        """Snapshots with recorded weights whose model folder is absent (pulled from the Hub, or deleted)."""
        return [m.data["model_files"][0]["path"].split("/")[1] for m in self.manifests(table="snapshots")
                if m.data.get("model_files") and not (self.root / m.data["model_files"][0]["path"]).parent.is_dir()]

    def _verify_file(self, entry: dict[str, Any], owner: str, cache: dict) -> None:
        path = self.root / entry["path"]
        where = f"{path} ({owner})"
        try:
            stat = path.lstat()
        except FileNotFoundError:
            raise TsrError(f"{where}: file is missing from the store") from None
        if not path.is_file() or path.is_symlink():
            raise TsrError(f"{where}: not a regular file")
        if stat.st_size != entry["bytes"]:
            raise TsrError(
                f"{where}: file is corrupt or truncated ({stat.st_size} bytes, manifest says {entry['bytes']})"
            )
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, entry["sha256"]]
        if cache.get(entry["path"]) == stamp:
            return
        try:
            digest = file_sha256(str(path))
        except OSError as exc:
            raise TsrError(f"{where}: unreadable ({exc.strerror or exc})") from None
        if digest != entry["sha256"]:
            raise TsrError(f"{where}: file is corrupt (sha256 differs from the manifest)")
        cache[entry["path"]] = stamp
        if self._writing:
            self._cache_updates[entry["path"]] = stamp

    def remember_verified(self, relative: str, sha256: str) -> None:
        """Cache the checksum of a file this writer just placed (computed while writing it)."""
        stat = (self.root / relative).lstat()
        self._cache_updates[relative] = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, sha256]

    def _verified_cache(self) -> dict[str, list]:
        try:
            cache = json.loads((self.root / "_cache" / "verified.json").read_text("utf-8"))
        except (OSError, ValueError):
            cache = {}
        if not isinstance(cache, dict):
            cache = {}
        cache.update(self._cache_updates)
        return cache

    def _flush_cache(self) -> None:
        if not self._cache_updates:
            return
        cache = self._verified_cache()
        with contextlib.suppress(OSError):  # the cache is an optimisation; a full disk must not fail the write
            self._write_atomic(self.root / "_cache" / "verified.json", json.dumps(cache).encode("utf-8"))

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


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


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
