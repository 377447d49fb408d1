"""`tsr push`: the selected versions, their DPO files, stats, versions, card and index in one commit, then tags.

A push only reads the store: files are checksummed without recording it in the store's verify cache, and
everything the commit needs beyond the store's own files is written to a temporary folder.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from builder.errors import TsrError
from builder.fingerprint import file_sha256
from builder.hub.card import card_intervals, card_plots, dataset_card
from builder.hub.index import (
    INDEX_FILE,
    REPO_TYPE,
    hub_path,
    index_bytes,
    manifest_file,
    remote_index,
    sha256,
)
from builder.hub.select import select_versions
from builder.hub.tables import dpo_table, stats_table, versions_table
from builder.hub.transport import (
    Retry,
    Warn,
    check_repo_id,
    hub_errors,
    known_tokens,
    make_api,
    status,
    stderr,
)
from builder.stats import FINAL_PHASE
from builder.store import Manifest, Store

_Upload = tuple[str, Path, str | None]  # path in the repo, local file, sha256 its manifest names (store files)


@dataclass
class PushResult:
    repo_id: str
    head: str  # the repo's main after the push
    commit: str | None  # the new commit, None when the repo had everything already
    pushed: list[str] = field(default_factory=list)  # versions sent in this push
    present: int = 0  # selected versions the repo had already
    configs: dict[str, str] = field(default_factory=dict)  # pair version -> config name
    tags_created: list[str] = field(default_factory=list)


def push(store: Store, repo_id: str, *, pairs: Sequence[str] = (), tables: Sequence[str] = (),
         private: bool = False, token: str | None = None, warn: Warn = stderr) -> PushResult:
    """Push the selected versions (default: all) to the dataset repo `repo_id` in one commit, then tag pair versions.

    Nothing in the store changes. A failed push leaves the repo at its previous commit (the commit is one request,
    applied whole or not at all); running it again pushes what is missing.
    """
    check_repo_id(repo_id)
    selected = select_versions(store, pairs=pairs, tables=tables)
    # Outside `writing()`, verify only reads: the checksums it computes are not recorded in _cache/verified.json.
    store.verify(tables=sorted({m.table for m in selected}))
    api = make_api(token)
    where = f"push to {repo_id}"
    with hub_errors(where, api, "write"), tempfile.TemporaryDirectory(prefix="tsr-push-") as tmp:
        retry = Retry(where, warn, known_tokens(api))
        retry(api.create_repo, repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        head, index, _ = remote_index(api, repo_id, "main", Path(tmp), retry)
        if private and not getattr(retry(api.repo_info, repo_id, repo_type=REPO_TYPE), "private", True):
            warn(f"{repo_id} exists and is public: --private only applies when the repo is created")
        new, conflicts = [], []
        for manifest in selected:
            entry = index["versions"].get(manifest.version)
            if entry is None:
                new.append(manifest)
            elif entry["manifest_sha256"] != sha256(manifest_file(store, manifest.version).read_bytes()):
                conflicts.append(manifest.version)
        if conflicts:
            raise TsrError(
                f"{repo_id} has version(s) {', '.join(conflicts[:5])} with different content than {store.root} "
                "(made independently?); nothing was pushed. Push to another repo.")
        result = PushResult(repo_id, head=head, commit=None, present=len(selected) - len(new))
        if new:
            uploads = _stage(store, repo_id, new, index, Path(tmp) / "out", warn)
            commit = _commit(api, repo_id, head, uploads, index, new, retry)
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


def _stage(store: Store, repo_id: str, new: list[Manifest], index: dict, staging: Path, warn: Warn) -> list[_Upload]:
    """Add `new` to `index` (in place) and write every derived file of the commit under `staging`; returns every
    upload: (path in repo, local file, the sha256 its manifest names for a store file)."""
    staging.mkdir(parents=True)
    uploads: list[_Upload] = []
    for manifest in new:
        local_manifest = manifest_file(store, manifest.version)
        entry = {
            "table": manifest.table,
            "manifest_path": f"manifests/{manifest.version}.json",
            "manifest_sha256": sha256(local_manifest.read_bytes()),
            "manifest": manifest.data,
            "files": [],
        }
        uploads.append((entry["manifest_path"], local_manifest, None))
        for item in manifest.files:
            path = hub_path(manifest.table, item["path"])
            entry["files"].append({"path": path, "store_path": item["path"], "sha256": item["sha256"],
                                   "bytes": item["bytes"], "rows": item["rows"]})
            uploads.append((path, store.root / item["path"], item["sha256"]))
        index["versions"][manifest.version] = entry
        if manifest.table == "pairs":
            config = _pair_config(manifest, taken={p["config"] for p in index["pairs"].values()})
            rows = dpo_table(store, manifest.version)
            path = f"data/{config}/train-{manifest.version}.parquet"
            local = staging / f"dpo-{manifest.version}.parquet"
            pq.write_table(rows, local, compression="zstd")
            index["pairs"][manifest.version] = {
                "config": config, "tag": _pair_tag(manifest), "path": path, "rows": rows.num_rows,
                "sha256": file_sha256(str(local))}
            uploads.append((path, local, None))
    # Derived files, rebuilt from the whole index (what the repo had plus this push).
    stats, versions, card, index_file = (staging / n for n in ("stats.parquet", "versions.parquet", "README.md",
                                                                INDEX_FILE))
    pq.write_table(stats_table(index), stats, compression="zstd")
    pq.write_table(versions_table(index), versions, compression="zstd")
    plots, plotted = card_plots(store, index, staging / "plots", warn) if index["pairs"] else ([], [])
    intervals = card_intervals(store, index) if index["pairs"] else {}
    dataset_card(index, repo_id, plots, plotted, intervals).save(card)
    index_file.write_bytes(index_bytes(index))
    uploads += [("data/stats/stats.parquet", stats, None), ("data/versions/versions.parquet", versions, None),
                ("README.md", card, None), (INDEX_FILE, index_file, None)]
    uploads += [(f"plots/{plot.path.name}", plot.path, None) for plot in plots]
    return uploads


def _commit(api, repo_id: str, head: str, uploads: list[_Upload], index: dict, new: list[Manifest],
            retry: Retry) -> str:
    """One commit on top of `head`; retried when transient. Returns the new commit's id.

    A commit whose answer was lost may have landed: before it is sent again, a conflict (the branch moved) is
    checked against the repo's index, and an index byte-identical to this push's means it did land.
    """
    from huggingface_hub import CommitOperationAdd

    tables = sorted({m.table for m in new})
    message = f"tsr push: {len(new)} version(s) of {', '.join(tables)}"
    description = "\n".join(f"- {m.table} {m.version}" for m in new)
    expected = index_bytes(index)
    sent = 0

    def attempt() -> str:
        nonlocal sent
        sent += 1
        operations = []
        for path, local, checksum in uploads:
            operation = CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(local))
            # The bytes that go up are the ones the manifest names (the store verified them; this is the upload).
            if checksum is not None and operation.upload_info.sha256.hex() != checksum:
                raise TsrError(f"{local} changed since it was verified (sha256 differs from its manifest)")
            operations.append(operation)
        try:
            info = api.create_commit(repo_id, operations, commit_message=message, commit_description=description,
                                     repo_type=REPO_TYPE, revision="main",
                                     parent_commit=head if re.fullmatch(r"[0-9a-f]{40}", head) else None)
        except Exception as exc:
            if status(exc) in (409, 412):
                # The branch moved. If an earlier try of this very commit landed (its answer lost), that is success.
                if sent > 1:
                    with tempfile.TemporaryDirectory(prefix="tsr-push-check-") as tmp:
                        now, _, raw = remote_index(api, repo_id, "main", Path(tmp), retry)
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
