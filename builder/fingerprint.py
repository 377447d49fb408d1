"""Content identity: canonical JSON and tagged hashes.

Every key in the store (prompt ids, generation ids, versions) is a hash of canonical JSON, so a rerun computes the
same key for the same work and finds what already exists. The hash algorithm is part of the tag written into
manifests (HASH_TAG), so a later change of algorithm is detectable rather than silently mixing key spaces.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

HASH_TAG = "b2:"  # blake2b, 10-byte digest: 20 hex chars, collision-safe far beyond any store's row count
_DIGEST_BYTES = 10


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values always serialize to equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(value)
    raise TypeError(f"cannot fingerprint a {type(value).__name__}")


def content_hash(value: Any) -> str:
    """Hex digest of a value's canonical JSON (strings are hashed as JSON strings too)."""
    data = canonical_json(value).encode("utf-8")
    return hashlib.blake2b(data, digest_size=_DIGEST_BYTES).hexdigest()


def stage_fingerprint(
    stage: str,
    code_version: int,
    config: dict[str, Any],
    parents: list[str],
    snapshot_id: str | None = None,
) -> str:
    """The version id of one materialization: what ran, with which result-changing settings, on what.

    `config` must hold only settings that change results; throughput knobs (batch size, device, workers) stay
    out, so changing them never invalidates stored work.
    """
    return content_hash(
        {
            "stage": stage,
            "code_version": code_version,
            "config": config,
            "parents": sorted(parents),
            "snapshot": snapshot_id,
        }
    )


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
