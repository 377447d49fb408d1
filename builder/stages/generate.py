"""Generation stage: (snapshot, prompts, sample indices, sampling settings, seed) -> generations rows.

Each row's id hashes the snapshot, prompt, sample index and sampling settings, and each sample's seed is derived
from the base seed, the prompt and the sample index: the same request always means the same row and the same
text. Rows that exist already (under any version) are reused, finished batches are staged as they complete, so a
killed run resumes where it stopped and never generates a row twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from builder.backends.base import Generator, GenRequest, SamplingSettings
from builder.config import GenerateConfig, result_fields
from builder.faults import crash_point
from builder.fingerprint import content_hash, stage_fingerprint
from builder.progress import Progress
from builder.store import Store, now_utc
from schemas.tables import GENERATIONS

STAGE = "generate"
CODE_VERSION = 1


@dataclass(frozen=True)
class GenerationSet:
    """What a generate call materialized or found: its version and the ids of the rows it stands for."""

    version: str
    generation_ids: list[str]
    generated: int
    reused: int


def sampling_settings(cfg: GenerateConfig) -> SamplingSettings:
    return SamplingSettings(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens)


def sample_seed(base_seed: int, snapshot_id: str, prompt_id: str, sample_index: int) -> int:
    """A per-sample seed that does not depend on batch composition or on which rows a resumed run still needs.

    The snapshot is part of it so that two nearly identical models (M_i and a future model one small DPO step
    ahead) still draw independent samples instead of replaying the same random stream.
    """
    return int(content_hash([base_seed, snapshot_id, prompt_id, sample_index])[:8], 16)


def generation_id(snapshot_id: str, prompt_id: str, sample_index: int, cfg: GenerateConfig) -> str:
    settings = {k: v for k, v in result_fields(cfg).items() if k != "k"}
    return content_hash({"snapshot": snapshot_id, "prompt": prompt_id, "sample": sample_index, **settings})


def existing_ids(store: Store, table: str, id_column: str, partition_snapshot: str) -> set[str]:
    """Ids already materialized in `table` for one snapshot (the table's partition), across versions."""
    versions = [m.version for m in store.manifests(table=table) if m.data.get("snapshot_id") == partition_snapshot]
    if not versions:
        return set()
    return set(store.read(table, versions=versions).column(id_column).to_pylist())


def generate(
    store: Store,
    *,
    snapshot_id: str,
    prompts: pl.DataFrame,
    prompt_set: str,
    sample_indices: Sequence[int],
    cfg: GenerateConfig,
    load_generator: Callable[[], Generator],
    label: str = "generate",
) -> GenerationSet:
    """Materialize generations of `snapshot_id` for every prompt (columns prompt_id, text) and sample index.

    `load_generator` is only called when something is missing, so a fully cached call loads no model.
    """
    wanted = [
        (pid, text, index, generation_id(snapshot_id, pid, index, cfg))
        for pid, text in zip(prompts["prompt_id"].to_list(), prompts["text"].to_list())
        for index in sample_indices
    ]
    ids = [w[3] for w in wanted]
    config = {**result_fields(cfg), "sample_indices": list(sample_indices), "prompts": content_hash(ids)}
    version = stage_fingerprint(STAGE, CODE_VERSION, config, [prompt_set], snapshot_id)
    if store.manifest(version) is not None:
        return GenerationSet(version, ids, generated=0, reused=len(ids))

    done = existing_ids(store, "generations", "generation_id", snapshot_id)
    staged = store.staged(version, "generations")
    done |= set(staged.column("generation_id").to_pylist())
    missing = [w for w in wanted if w[3] not in done]
    started = time.monotonic()
    tokens = 0
    if missing:
        generator = load_generator()
        sampling = sampling_settings(cfg)
        requests = [
            GenRequest(key=gid, messages=[{"role": "user", "content": text}],
                       seed=sample_seed(cfg.seed, snapshot_id, pid, index))
            for pid, text, index, gid in missing
        ]
        by_key = {w[3]: w for w in missing}
        seeds = {r.key: r.seed for r in requests}
        with Progress(label, total=len(requests)) as progress:
            for batch in generator.generate(requests, sampling):
                rows = []
                for result in batch:
                    pid, _, index, gid = by_key[result.key]
                    rows.append(
                        {
                            "generation_id": gid, "snapshot_id": snapshot_id, "prompt_id": pid,
                            "sample_index": index, "text": result.text, "prompt_tokens": result.prompt_tokens,
                            "completion_tokens": result.completion_tokens, "finish_reason": result.finish_reason,
                            "temperature": cfg.temperature, "top_p": cfg.top_p,
                            "max_new_tokens": cfg.max_new_tokens,
                            "seed": seeds[gid], "backend": generator.name,
                            "version": version, "created_at": now_utc(),
                        }
                    )
                    tokens += result.completion_tokens
                store.stage_batch(version, "generations", pa.Table.from_pylist(rows, schema=GENERATIONS))
                progress.update(len(rows), tokens=sum(r["completion_tokens"] for r in rows))
                crash_point("generate.after-batch")
        staged = store.staged(version, "generations")
    store.write_version(
        version=version, stage=STAGE, code_version=CODE_VERSION, table="generations", data=staged,
        partition={"snapshot": snapshot_id}, config=config, parents=[prompt_set], snapshot_id=snapshot_id,
        stats={"requested": len(ids), "generated": len(missing), "reused": len(ids) - len(missing),
               "completion_tokens": tokens, "seconds": round(time.monotonic() - started, 3),
               "backend": cfg.backend},
    )
    store.clear_staged(version)
    return GenerationSet(version, ids, generated=len(missing), reused=len(ids) - len(missing))
