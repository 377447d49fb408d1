"""Share a store on the Hugging Face Hub: push versions to a dataset repo with a card, pull them back.

One dataset repo holds any number of pushed versions:

    README.md                                       dataset card; its YAML `configs` name every table, every pair
                                                    version, `stats` and `versions`, so `load_dataset(repo, config)`
                                                    works without temporal-sr
    tsr-hub.json                                    the index: every pushed version, its manifest's sha256, its files
    manifests/<version>.json                        the store's manifests, byte for byte
    data/<table>/<partition folders>/part-<v>.parquet   the raw tables as the store has them (snapshots, runs too)
    data/<pair config>/train-<v>.parquet            a pair version for DPO: prompt / chosen / rejected as chat
                                                    messages (TRL's conversational format) plus lineage columns
    data/stats/stats.parquet                        one row per table and per pair version
    data/versions/versions.parquet                  every pushed manifest: the lineage (parents, config, files)

A push is one commit (`create_commit`, guarded by `parent_commit`), so a failed push leaves the repo as it was;
each pushed pair version then gets a tag (`pairs-tsr-iter2-<version prefix>`) to load it by name later. Versions
the repo already has (same manifest checksum) are not sent again, and pushing nothing new makes no commit. A pull
downloads and checks everything before it writes a byte, and never overwrites a local version that differs.

The token comes from huggingface_hub's usual sources (HF_TOKEN, the saved login) and is never written anywhere;
error messages are scrubbed of it. Transient failures (connection errors, 408, 429, 5xx) are retried with
exponential backoff.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from builder.errors import TsrError
from builder.fingerprint import file_sha256
from builder.store import TABLE_DIRS, Manifest, Store, check_manifest
from schemas.tables import MANIFEST, PARTITIONS, SCHEMA_VERSION, TABLES

INDEX_FILE = "tsr-hub.json"
INDEX_FORMAT = "temporal-sr-hub"
INDEX_FORMAT_VERSION = 1
REPO_TYPE = "dataset"

# Retries: attempts in all, first wait and its cap (doubling in between). Tests shorten the waits.
RETRY_ATTEMPTS = 4
BACKOFF_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 8.0
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})

# The phase whose pairs train M_{i+1}: those get the plain config name (pairs-tsr-iter2); others carry the phase.
FINAL_PHASE = {"tsr": "d2", "tsr-past": "d1", "sr": "sr"}

_MESSAGES = pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())]))

# A pushed pair version: what a DPO script needs (prompt, chosen, rejected in TRL's conversational format), then
# the lineage of every pair.
DPO_SCHEMA = pa.schema(
    [
        pa.field("prompt", _MESSAGES, nullable=False),
        pa.field("chosen", _MESSAGES, nullable=False),
        pa.field("rejected", _MESSAGES, nullable=False),
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("pair_version", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("iteration", pa.int32(), nullable=False),
        pa.field("phase", pa.string(), nullable=False),
        pa.field("chosen_score", pa.float64(), nullable=False),
        pa.field("rejected_score", pa.float64(), nullable=False),
        pa.field("gap", pa.float64(), nullable=False),
        pa.field("chosen_generation_id", pa.string(), nullable=False),
        pa.field("rejected_generation_id", pa.string(), nullable=False),
        pa.field("chosen_snapshot_id", pa.string(), nullable=False),
        pa.field("rejected_snapshot_id", pa.string(), nullable=False),
        pa.field("chosen_pool", pa.string(), nullable=False),
        pa.field("rejected_pool", pa.string(), nullable=False),
        pa.field("chosen_sample_index", pa.int32(), nullable=False),
        pa.field("rejected_sample_index", pa.int32(), nullable=False),
        pa.field("judge_id", pa.string(), nullable=False),
    ]
)

# data/stats/stats.parquet: one row per table (kind "table") and per pair version (kind "pairs").
STATS_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),
        pa.field("config", pa.string(), nullable=False),
        pa.field("table", pa.string(), nullable=False),
        pa.field("version", pa.string(), nullable=True),
        pa.field("versions", pa.int64(), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("method", pa.string(), nullable=True),
        pa.field("iteration", pa.int32(), nullable=True),
        pa.field("phase", pa.string(), nullable=True),
        pa.field("mean_chosen", pa.float64(), nullable=True),
        pa.field("mean_rejected", pa.float64(), nullable=True),
        pa.field("mean_gap", pa.float64(), nullable=True),
        pa.field("tag", pa.string(), nullable=True),
    ]
)

Warn = Callable[[str], None]
_Upload = tuple[str, Path, str | None]  # path in the repo, local file, sha256 its manifest names (store files)


def _stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


@dataclass
class PushResult:
    repo_id: str
    head: str  # the repo's main after the push
    commit: str | None  # the new commit, None when the repo had everything already
    pushed: list[str] = field(default_factory=list)  # versions sent in this push
    present: int = 0  # selected versions the repo had already
    configs: dict[str, str] = field(default_factory=dict)  # pair version -> config name
    tags_created: list[str] = field(default_factory=list)


@dataclass
class PullResult:
    repo_id: str
    revision: str
    commit: str
    restored: list[str] = field(default_factory=list)
    present: int = 0  # versions the local store had already, identical


# ---- selection ------------------------------------------------------------------------------------------------------


def select_versions(store: Store, *, pairs: Sequence[str] = (), tables: Sequence[str] = ()) -> list[Manifest]:
    """The versions a push sends: everything, or the given tables and pair versions, always with their lineage.

    Lineage is what a pulled copy needs to stand on its own: manifest parents, the versions holding the rows a pair
    version references (reused generations and judgments live in the versions that first made them), and the
    registration (and training run) of every snapshot involved.
    """
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise TsrError(f"unknown table(s) {', '.join(unknown)}; tables are {', '.join(TABLES)}")
    if not pairs and not tables:
        wanted = {m.version for m in store.manifests()}
    else:
        wanted = {m.version for m in store.manifests() if m.table in tables}
        for ref in pairs:
            manifest = store.find_version(ref)
            if manifest.table != "pairs":
                raise TsrError(f"version {manifest.version} is a {manifest.table} version, not a pair version")
            wanted.add(manifest.version)
    if not wanted:
        raise TsrError(f"nothing to push: {store.root} has no versions" + (" of those tables" if tables else ""))
    requires = _Requirements(store)
    todo, selected = list(wanted), set()
    while todo:
        version = todo.pop()
        if version in selected:
            continue
        selected.add(version)
        todo.extend(requires(version) - selected)
    return sorted((store.manifest(v) for v in selected), key=lambda m: (m.data["created_at"], m.version))


class _Requirements:
    """version -> the versions it needs (see select_versions); tables are read once, on first need."""

    def __init__(self, store: Store):
        self.store = store
        self.registration = {m.data.get("snapshot_id"): m.version for m in store.manifests(table="snapshots")}
        self._rows: dict[str, pl.DataFrame] = {}

    def rows(self, table: str, columns: list[str]) -> pl.DataFrame:
        if table not in self._rows:
            frame = pl.from_arrow(self.store.read(table, verify=False).select(columns))
            assert isinstance(frame, pl.DataFrame)
            self._rows[table] = frame
        return self._rows[table]

    def __call__(self, version: str) -> set[str]:
        manifest = self.store.manifest(version)
        if manifest is None:
            raise TsrError(f"a manifest names parent {version}, which is not in {self.store.root}")
        needed = set(manifest.data["parents"])
        snapshots = {manifest.data.get("snapshot_id")}
        if manifest.table == "snapshots":
            row = self.rows("snapshots", ["snapshot_id", "run_id"]).filter(
                pl.col("snapshot_id") == manifest.data.get("snapshot_id"))
            needed |= {r for r in row["run_id"].to_list() if r and self.store.manifest(r) is not None}
        if manifest.table == "pairs":
            pairs = pl.from_arrow(self.store.read("pairs", versions=[version], verify=False))
            assert isinstance(pairs, pl.DataFrame)
            generation_ids = pairs["chosen_generation_id"].to_list() + pairs["rejected_generation_id"].to_list()
            generations = self.rows("generations", ["generation_id", "prompt_id", "version"]).filter(
                pl.col("generation_id").is_in(generation_ids))
            judges = pairs["judge_id"].unique().to_list()
            judgments = self.rows("judgments", ["generation_id", "judge_id", "version"]).filter(
                pl.col("generation_id").is_in(generation_ids) & pl.col("judge_id").is_in(judges))
            prompts = self.rows("prompts", ["prompt_id", "set_version"]).filter(
                pl.col("prompt_id").is_in(pairs["prompt_id"].to_list()))
            needed |= set(generations["version"]) | set(judgments["version"]) | set(prompts["set_version"])
            snapshots |= set(pairs["chosen_snapshot_id"]) | set(pairs["rejected_snapshot_id"])
            snapshots.add(manifest.config.get("policy"))
        needed |= {self.registration[s] for s in snapshots if s in self.registration}
        needed.discard(version)
        return needed


# ---- push -----------------------------------------------------------------------------------------------------------


def push(store: Store, repo_id: str, *, pairs: Sequence[str] = (), tables: Sequence[str] = (),
         private: bool = False, token: str | None = None, warn: Warn = _stderr) -> PushResult:
    """Push the selected versions (default: all) to the dataset repo `repo_id` in one commit, then tag pair versions.

    Nothing in the store changes. A failed push leaves the repo at its previous commit (the commit is one request,
    applied whole or not at all); running it again pushes what is missing.
    """
    _check_repo_id(repo_id)
    selected = select_versions(store, pairs=pairs, tables=tables)
    store.verify(tables=sorted({m.table for m in selected}))
    api = _api(token)
    where = f"push to {repo_id}"
    with _hub_errors(where, api), tempfile.TemporaryDirectory(prefix="tsr-push-") as tmp:
        retry = _Retry(where, warn, _known_tokens(api))
        retry(api.create_repo, repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        head, index, _ = _remote_index(api, repo_id, "main", Path(tmp), retry)
        if private and not getattr(retry(api.repo_info, repo_id, repo_type=REPO_TYPE), "private", True):
            warn(f"{repo_id} exists and is public: --private only applies when the repo is created")
        new, conflicts = [], []
        for manifest in selected:
            entry = index["versions"].get(manifest.version)
            if entry is None:
                new.append(manifest)
            elif entry["manifest_sha256"] != _sha256(_manifest_path(store, manifest.version).read_bytes()):
                conflicts.append(manifest.version)
        if conflicts:
            raise TsrError(
                f"{repo_id} has version(s) {', '.join(conflicts[:5])} with different content than {store.root} "
                "(made independently?); nothing was pushed. Push to another repo.")
        result = PushResult(repo_id, head=head, commit=None, present=len(selected) - len(new))
        if new:
            staging = Path(tmp) / "out"
            operations = _prepare(store, repo_id, new, index, staging)
            commit = _commit(api, repo_id, head, operations, index, new, retry)
            result.commit = result.head = commit
            result.pushed = [m.version for m in new]
        result.configs = {m.version: index["pairs"][m.version]["config"] for m in selected if m.table == "pairs"}
        # Tags last: a tag names a commit that has the data. A rerun creates any a failed push left out.
        existing = {t.name for t in retry(api.list_repo_refs, repo_id, repo_type=REPO_TYPE).tags}
        for manifest in selected:
            if manifest.table != "pairs":
                continue
            tag = index["pairs"][manifest.version]["tag"]
            if tag not in existing:
                retry(api.create_tag, repo_id, tag=tag, revision=result.head, repo_type=REPO_TYPE, exist_ok=True,
                      tag_message=f"pair version {manifest.version}")
                result.tags_created.append(tag)
    return result


def _prepare(store: Store, repo_id: str, new: list[Manifest], index: dict, staging: Path) -> list[_Upload]:
    """Add `new` to `index` (in place) and write every file of the commit: (path in repo, local file, the sha256
    its manifest names for a store file)."""
    from train.data import pair_frame, to_conversational

    staging.mkdir(parents=True)
    files: list[_Upload] = []
    for manifest in new:
        manifest_file = _manifest_path(store, manifest.version)
        entry = {
            "table": manifest.table,
            "manifest_path": f"manifests/{manifest.version}.json",
            "manifest_sha256": _sha256(manifest_file.read_bytes()),
            "manifest": manifest.data,
            "files": [],
        }
        files.append((entry["manifest_path"], manifest_file, None))
        for item in manifest.files:
            hub_path = _hub_path(manifest.table, item["path"])
            entry["files"].append({"path": hub_path, "store_path": item["path"], "sha256": item["sha256"],
                                   "bytes": item["bytes"], "rows": item["rows"]})
            files.append((hub_path, store.root / item["path"], item["sha256"]))
        index["versions"][manifest.version] = entry
        if manifest.table == "pairs":
            config = _pair_config(manifest, taken={p["config"] for p in index["pairs"].values()})
            frame = pair_frame(store, manifest.version)
            rows = [{**conversation, **lineage} for conversation, lineage in
                    zip(to_conversational(frame), frame.select(DPO_SCHEMA.names[3:]).iter_rows(named=True))]
            path = f"data/{config}/train-{manifest.version}.parquet"
            local = staging / f"dpo-{manifest.version}.parquet"
            pq.write_table(pa.Table.from_pylist(rows, schema=DPO_SCHEMA), local, compression="zstd")
            index["pairs"][manifest.version] = {
                "config": config, "tag": _pair_tag(manifest), "path": path, "rows": len(rows),
                "sha256": file_sha256(str(local))}
            files.append((path, local, None))
    # Derived files, rebuilt from the whole index (what the repo had plus this push).
    stats, versions, card, index_file = (staging / n for n in ("stats.parquet", "versions.parquet", "README.md",
                                                                INDEX_FILE))
    pq.write_table(_stats_table(index), stats, compression="zstd")
    pq.write_table(_versions_table(index), versions, compression="zstd")
    plots = _card_plots(store, staging / "plots") if index["pairs"] else []
    card_text = render_card(index, repo_id)
    if plots:
        from builder.plots import card_markdown

        card_text = card_text.rstrip("\n") + "\n\n" + card_markdown(plots, "plots/") + "\n"
    card.write_text(card_text, "utf-8")
    index_file.write_bytes(_index_bytes(index))
    files += [("data/stats/stats.parquet", stats, None), ("data/versions/versions.parquet", versions, None),
              ("README.md", card, None), (INDEX_FILE, index_file, None)]
    files += [(f"plots/{plot.path.name}", plot.path, None) for plot in plots]
    return files


def _card_plots(store: Store, folder: Path) -> list:
    """The gap and score plots of the local store for the card; none where matplotlib or pairs are missing.

    The card's tables describe the whole remote index, the plots the store that pushes: after pushes from
    several stores the plots show the last one."""
    try:
        from builder.plots import write_plots

        return write_plots(store, folder)
    except (ImportError, TsrError) as exc:
        _stderr(f"no plots in the dataset card: {exc}")
        return []


def _commit(api, repo_id: str, head: str, files: list[_Upload], index: dict, new: list[Manifest],
            retry: _Retry) -> str:
    """One commit on top of `head`; retried when transient. Returns the new commit's id."""
    from huggingface_hub import CommitOperationAdd

    tables = sorted({m.table for m in new})
    message = f"tsr push: {len(new)} version(s) of {', '.join(tables)}"
    description = "\n".join(f"- {m.table} {m.version}" for m in new)
    expected = _index_bytes(index)
    sent = 0

    def attempt() -> str:
        nonlocal sent
        sent += 1
        operations = []
        for path, local, sha256 in files:
            operation = CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local))
            # The bytes that go up are the ones the manifest names (the store verified them; this is the upload).
            if sha256 is not None and operation.upload_info.sha256.hex() != sha256:
                raise TsrError(f"{local} changed since it was verified (sha256 differs from its manifest)")
            operations.append(operation)
        try:
            info = api.create_commit(repo_id, operations, commit_message=message, commit_description=description,
                                     repo_type=REPO_TYPE, revision="main",
                                     parent_commit=head if re.fullmatch(r"[0-9a-f]{40}", head) else None)
        except Exception as exc:
            if _status(exc) in (409, 412):
                # The branch moved. If an earlier try of this very commit landed (its answer lost), that is success.
                if sent > 1:
                    with tempfile.TemporaryDirectory(prefix="tsr-push-check-") as tmp:
                        now, _, raw = _remote_index(api, repo_id, "main", Path(tmp), retry)
                    if raw == expected:
                        return now
                raise TsrError(f"{repo_id} changed while pushing (another push?); nothing was pushed by this "
                               "one: run tsr push again") from None
            raise
        return info.oid

    return retry(attempt)


def _pair_name(manifest: Manifest) -> str:
    """`pairs-<method>-iter<N>` for the pairs that train the next model, with `-<phase>` for the others."""
    config = manifest.config
    name = f"pairs-{config['method']}-iter{config['iteration']}"
    if FINAL_PHASE.get(config["method"]) != config["phase"]:
        name += f"-{config['phase']}"
    return name


def _pair_config(manifest: Manifest, taken: set[str]) -> str:
    """A pair version's config: its name, or with its version prefix if another pushed version has the name.
    Once pushed, a version keeps its config name."""
    name = _pair_name(manifest)
    return name if name not in taken else f"{name}-{manifest.version[:8]}"


def _pair_tag(manifest: Manifest) -> str:
    return f"{_pair_name(manifest)}-{manifest.version[:8]}"


# ---- pull -----------------------------------------------------------------------------------------------------------


def pull(root: str | os.PathLike | None, ref: str, *, token: str | None = None, warn: Warn = _stderr) -> PullResult:
    """Restore the versions pushed to `ref` (REPO_ID or REPO_ID@REVISION) into the store at `root`.

    Everything is downloaded and checked against its manifest first; then, under the store's write lock, files are
    moved in and each manifest written last. A local version that differs from the pushed one stops the pull before
    anything is written.
    """
    repo_id, _, revision = ref.partition("@")
    revision = revision or "main"
    _check_repo_id(repo_id)
    local = _open_existing(root)
    api = _api(token)
    where = f"pull from {ref}"
    with _hub_errors(where, api), tempfile.TemporaryDirectory(prefix="tsr-pull-") as tmp:
        retry = _Retry(where, warn, _known_tokens(api))
        commit, index, _ = _remote_index(api, repo_id, revision, Path(tmp), retry)
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
                hub_path = _hub_path(manifest["table"], item["path"])
                path = Path(retry(api.hf_hub_download, repo_id, hub_path, repo_type=REPO_TYPE, revision=commit,
                                  cache_dir=tmp))
                _check_file(path, item, manifest["table"], f"{ref}: {hub_path}")
                downloads[item["path"]] = path
        store = Store.open(root, create=True)
        with store.writing():
            present, conflicts = _compare_local(store, manifests)
            if conflicts:
                raise TsrError(_conflict_message(ref, store, conflicts))
            restored = []
            for version in missing:
                if version in present:
                    continue
                # Under an intent, so a pull killed before the manifest leaves files the next writer may remove.
                with store.placing([item["path"] for item in data[version]["files"]], version=version):
                    for item in data[version]["files"]:
                        _install(store, downloads[item["path"]], store.root / item["path"])
                    # The manifest last: the version exists once it is in place.
                    _install_bytes(store, manifests[version], store.root / "manifests" / f"{version}.json")
                restored.append(version)
    return PullResult(repo_id, revision, commit, restored=restored, present=len(present))


def _open_existing(root) -> Store | None:
    from builder.store import resolve_root

    path = resolve_root(root)
    if (path / "store.json").is_file() or (path.is_dir() and any(path.iterdir())) or path.is_file():
        return Store.open(path)  # a folder that is not a store fails here, before any download
    return None


def _check_manifest(version: str, entry: dict, raw: bytes) -> bytes:
    """A pulled manifest: its checksum matches the index, it names itself, and its files stay in their table."""
    if _sha256(raw) != entry.get("manifest_sha256"):
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
    for item in manifest.get("files", []):
        path = PurePosixPath(str(item.get("path", "")))
        if (path.is_absolute() or ".." in path.parts or "\\" in str(path) or path.suffix != ".parquet"
                or path.parts[: len(PurePosixPath(TABLE_DIRS[table]).parts)] != PurePosixPath(TABLE_DIRS[table]).parts):
            raise TsrError(f"manifests/{version}.json on the Hub lists a file outside its table: {str(path)!r}")
    return raw


def _check_file(path: Path, item: dict, table: str, where: str) -> None:
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
        local = _manifest_path(store, version)
        if local.is_file():
            (present.add(version) if _sha256(local.read_bytes()) == _sha256(raw) else conflicts.append(version))
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


def _install(store: Store, source: Path, target: Path) -> None:
    tmp = store.root / "_tmp" / f"{uuid.uuid4().hex}{target.suffix}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, tmp)
    _fsync(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    _fsync(target.parent)


def _install_bytes(store: Store, payload: bytes, target: Path) -> None:
    tmp = store.root / "_tmp" / f"{uuid.uuid4().hex}{target.suffix}"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(payload)
    _fsync(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    _fsync(target.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- the index and derived files ------------------------------------------------------------------------------------


def _empty_index() -> dict:
    return {"format": INDEX_FORMAT, "format_version": INDEX_FORMAT_VERSION, "versions": {}, "pairs": {}}


def _index_bytes(index: dict) -> bytes:
    return (json.dumps(index, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _remote_index(api, repo_id: str, revision: str, tmp: Path, retry: _Retry) -> tuple[str, dict, bytes | None]:
    """The commit `revision` resolves to, and the index there (empty if the repo has none yet)."""
    from huggingface_hub.errors import RemoteEntryNotFoundError

    commit = retry(api.repo_info, repo_id, repo_type=REPO_TYPE, revision=revision).sha or revision
    try:
        path = retry(api.hf_hub_download, repo_id, INDEX_FILE, repo_type=REPO_TYPE, revision=commit,
                     cache_dir=str(tmp / "index"))
    except RemoteEntryNotFoundError:
        return commit, _empty_index(), None
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


def _tables_in(index: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for entry in sorted(index["versions"].values(), key=lambda e: (e["manifest"]["created_at"],
                                                                  e["manifest"]["version"])):
        found.setdefault(entry["table"], []).append(entry)
    return {table: found[table] for table in TABLES if table in found}


def _pair_entries(index: dict) -> list[tuple[str, dict, dict]]:
    """(version, manifest, pushed pair entry), oldest first."""
    items = [(v, index["versions"][v]["manifest"], p) for v, p in index["pairs"].items()]
    return sorted(items, key=lambda item: (item[1]["created_at"], item[0]))


def _stats_table(index: dict) -> pa.Table:
    rows = []
    for table, entries in _tables_in(index).items():
        rows.append({"kind": "table", "config": table, "table": table, "versions": len(entries),
                     "rows": sum(e["manifest"]["rows"] for e in entries)})
    for version, manifest, pushed in _pair_entries(index):
        config, stats = json.loads(manifest["config_json"]), json.loads(manifest["stats_json"])
        rows.append({"kind": "pairs", "config": pushed["config"], "table": "pairs", "version": version,
                     "versions": 1, "rows": pushed["rows"], "method": config.get("method"),
                     "iteration": config.get("iteration"), "phase": config.get("phase"),
                     "mean_chosen": stats.get("mean_chosen"), "mean_rejected": stats.get("mean_rejected"),
                     "mean_gap": stats.get("mean_gap"), "tag": pushed["tag"]})
    return pa.Table.from_pylist(rows, schema=STATS_SCHEMA)


def _versions_table(index: dict) -> pa.Table:
    rows = []
    for entries in _tables_in(index).values():
        for entry in entries:
            row = dict(entry["manifest"])
            rows.append({name: row.get(name) for name in MANIFEST.names})
    return pa.Table.from_pylist(rows, schema=MANIFEST)


def _table_glob(table: str) -> str:
    return "/".join(["data", table, *("*" for _ in PARTITIONS[table]), "*.parquet"])


def render_card(index: dict, repo_id: str) -> str:
    """The dataset card: YAML configs for `load_dataset`, then what the repo holds and how to use it."""
    tables = _tables_in(index)
    pairs = _pair_entries(index)
    configs: list[dict[str, Any]] = []
    finals = [p["config"] for _, m, p in pairs if FINAL_PHASE.get(json.loads(m["config_json"])["method"])
              == json.loads(m["config_json"])["phase"]]
    for _, _, pushed in pairs:
        config: dict[str, Any] = {"config_name": pushed["config"],
                                  "data_files": [{"split": "train", "path": pushed["path"]}]}
        if finals and pushed["config"] == finals[-1]:
            config["default"] = True
        configs.append(config)
    for table in tables:
        configs.append({"config_name": table, "data_files": [{"split": "train", "path": _table_glob(table)}]})
    configs.append({"config_name": "stats", "data_files": [{"split": "train", "path": "data/stats/stats.parquet"}]})
    configs.append({"config_name": "versions",
                    "data_files": [{"split": "train", "path": "data/versions/versions.parquet"}]})
    meta = {"pretty_name": "Temporal Self-Rewarding preference data", "tags": ["dpo", "preference", "temporal-sr",
            "self-rewarding"], "task_categories": ["text-generation"], "configs": configs}
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=120)
    lines = [
        "---", front.rstrip("\n"), "---", "",
        "# Temporal Self-Rewarding preference data", "",
        "Preference pairs from a Temporal Self-Rewarding loop (Wang et al., 2025) and every row they came from:",
        "prompts, generations, judgments, model snapshots and training runs, pushed by temporal-sr as versioned",
        "Parquet. Each pair version is a config in TRL's conversational preference format (`prompt`, `chosen`,",
        "`rejected` as chat messages), with the lineage of every pair (scores, generation ids, snapshots, pools).",
        "",
        "## Pair versions", "",
        "| config | method | iteration | phase | pairs | mean chosen | mean rejected | mean gap | tag |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for version, manifest, pushed in pairs:
        config, stats = json.loads(manifest["config_json"]), json.loads(manifest["stats_json"])
        lines.append(f"| `{pushed['config']}` | {config.get('method')} | {config.get('iteration')} | "
                     f"{config.get('phase')} | {pushed['rows']} | {_num(stats.get('mean_chosen'))} | "
                     f"{_num(stats.get('mean_rejected'))} | {_num(stats.get('mean_gap'))} | `{pushed['tag']}` |")
    example = pairs[-1][2]["config"] if pairs else "pairs-tsr-iter1"
    lines += [
        "", "```python", "from datasets import load_dataset", "",
        f'pairs = load_dataset("{repo_id}", "{example}", split="train")  # or revision="<tag>" for that version',
        "# trl.DPOTrainer(model=..., args=DPOConfig(...), train_dataset=pairs, processing_class=tokenizer)",
        "```", "",
        "## Tables", "",
        "| config | versions | rows |", "|---|---|---|",
    ]
    for table, entries in tables.items():
        lines.append(f"| `{table}` | {len(entries)} | {sum(e['manifest']['rows'] for e in entries)} |")
    lines += [
        "", ("`stats` has one row per table and pair version; `versions` has every manifest (stage, config, "
             "parents, files with sha256): the lineage."), "",
        "## Lineage", "",
    ]
    for version, manifest, pushed in pairs:
        config = json.loads(manifest["config_json"])
        lines.append(f"- `{pushed['config']}` is pair version `{version}`: policy snapshot `{config.get('policy')}`, "
                     f"judge `{config.get('judge')}`, built from " + ", ".join(
                         f"`{p}`" for p in manifest["parents"]) + ".")
    lines += [
        "", "## Layout", "",
        "```",
        "data/<pair config>/train-<version>.parquet       a pair version, ready for DPO",
        "data/<table>/<partitions>/part-<version>.parquet the store's tables: prompts, generations, judgments,",
        "                                                 pairs, snapshots, runs",
        "data/stats/stats.parquet, data/versions/versions.parquet",
        "manifests/<version>.json                         one per version: config, parents, files and sha256",
        f"{INDEX_FILE}                                     what temporal-sr pushed (checksums of every manifest)",
        "```", "",
        (f"Restore the versions into a local temporal-sr store (checked against the manifests) with "
         f"`tsr pull {repo_id}` (or `{repo_id}@<tag>`)."), "",
    ]
    return "\n".join(lines)


def _num(value) -> str:
    return "" if value is None else f"{value:.3f}"


# ---- Hub access: endpoint, retries, errors --------------------------------------------------------------------------


def _api(token: str | None):
    from huggingface_hub import HfApi

    # HF_ENDPOINT is read here as well as when huggingface_hub is imported, so one process can change it.
    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token, library_name="temporal-sr")


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _check_repo_id(repo_id: str) -> None:
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise TsrError(f"bad repo id {repo_id!r}: expected NAMESPACE/NAME (e.g. your-name/tsr-pairs)")


class _Retry:
    """Call a Hub function, retrying transient failures with exponential backoff."""

    def __init__(self, where: str, warn: Warn, secrets: Sequence[str] = ()):
        self.where, self.warn, self.secrets = where, warn, list(secrets)

    def __call__(self, function: Callable, *args, **kwargs):
        delay = BACKOFF_SECONDS
        for attempt in range(1, RETRY_ATTEMPTS + 1):
            try:
                return function(*args, **kwargs)
            except Exception as exc:
                if attempt == RETRY_ATTEMPTS or not _transient(exc):
                    if attempt > 1:
                        exc.add_note(f"after {attempt} attempts")
                    raise
                # One warning per failing call, not one per attempt: a failure that persists then reads as two
                # lines (this warning and the error), however many attempts it took.
                if attempt == 1:
                    self.warn(f"{self.where}: {_describe(exc, self.secrets)}; retrying up to "
                              f"{RETRY_ATTEMPTS - 1} times with backoff from {delay:g}s")
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_SECONDS)
        raise AssertionError("unreachable")


def _status(exc: BaseException) -> int | None:
    try:
        return exc.response.status_code  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):
        return None


def _transient(exc: BaseException) -> bool:
    """A connection error, a timeout, or an answer that says "try again" (408, 429, 5xx), also as a cause."""
    network: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
    with contextlib.suppress(ImportError):  # huggingface_hub 2.x's HTTP client
        from httpx2 import TransportError

        network += (TransportError,)
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, TsrError):
            return False
        if _status(seen) in TRANSIENT_STATUS or isinstance(seen, network):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


_SECRETS = [
    re.compile(r"hf_[A-Za-z0-9]{6,}"),
    re.compile(r"(?i)\b(authorization|bearer)\b[\s:=]+\S+"),
    re.compile(r"(?i)\b(token|access_token|api_key|password)=[^&\s]+"),
    re.compile(r"://[^/\s@]+@"),
]


def scrub(text: str, secrets: Sequence[str] = ()) -> str:
    """`text` without tokens: the known ones, anything shaped like a Hub token, auth headers, URL credentials."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern in _SECRETS:
        text = pattern.sub(lambda m: "://***@" if m.group(0).startswith("://") else "***", text)
    return text


def _describe(exc: BaseException, secrets: Sequence[str] = ()) -> str:
    """One line: the HTTP status, request and server message of a Hub answer, or the network error."""
    status = _status(exc)
    try:
        request = exc.response.request if status is not None else None  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError for a response without a request
        request = None
    if status is not None and request is not None:
        path = urlsplit(str(request.url)).path
        server = " ".join(str(getattr(exc, "server_message", None) or "").split())
        text = f"HTTP {status} for {request.method} {path}" + (f": {server}" if server else "")
    else:
        text = f"{type(exc).__name__}: " + " ".join(str(exc).split())
    return scrub(text[:400], secrets)


@contextlib.contextmanager
def _hub_errors(where: str, api) -> Iterator[None]:
    """Turn Hub and network errors into one scrubbed TsrError line."""
    try:
        yield
    except TsrError as exc:
        raise TsrError(scrub(str(exc), _known_tokens(api))) from None
    except Exception as exc:  # noqa: BLE001 - any Hub or network failure becomes one scrubbed line
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        if isinstance(exc, RevisionNotFoundError):
            raise TsrError(f"{where} failed: no such revision") from None
        if isinstance(exc, RepositoryNotFoundError):
            raise TsrError(f"{where} failed: no such dataset repo, or no access to it (check your token: "
                           "hf auth login or HF_TOKEN)") from None
        if _status(exc) in (401, 403):
            raise TsrError(f"{where} failed: not authorized (HTTP {_status(exc)}); check your token "
                           "(hf auth login or HF_TOKEN) and its write access") from None
        attempts = next((n for n in getattr(exc, "__notes__", []) if n.startswith("after ")), None)
        suffix = f" ({attempts})" if attempts else ""
        raise TsrError(f"{where} failed: {_describe(exc, _known_tokens(api))}{suffix}") from None


def _known_tokens(api) -> list[str]:
    tokens = [getattr(api, "token", None)]
    with contextlib.suppress(Exception):
        from huggingface_hub import get_token

        tokens.append(get_token())
    return [t for t in tokens if isinstance(t, str) and t]


# ---- small helpers --------------------------------------------------------------------------------------------------


def _hub_path(table: str, store_path: str) -> str:
    """Where a store file goes in the repo: data/<table>/ plus its path inside the table's folder."""
    inside = PurePosixPath(store_path).relative_to(TABLE_DIRS[table])
    return f"data/{table}/{inside.as_posix()}"


def _manifest_path(store: Store, version: str) -> Path:
    return store.root / "manifests" / f"{version}.json"


def _sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()
