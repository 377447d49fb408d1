"""Generation stage: (snapshot, prompts, sample indices, sampling settings, seed) -> generations rows.

Each row's id hashes the snapshot, prompt, sample index and sampling settings, and each sample's seed is derived
from the base seed, the prompt and the sample index: the same request always means the same row and the same
text. Rows that exist already (under any version) are reused, finished batches are staged as they complete, so a
killed run resumes where it stopped and never generates a row twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from builder.backends.base import Generator, GenRequest, SamplingSettings
from builder.config import GenerateConfig, result_fields
from builder.fingerprint import content_hash
from builder.stages.base import LOCAL, Executor, ModelSource, Plan, Stage, run_stages
from builder.store import Store

if TYPE_CHECKING:
    from builder.config import Profile
    from builder.snapshot import Snapshot

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


@dataclass(frozen=True)
class GenerateParams:
    snapshot_id: str
    cfg: GenerateConfig


def generate_batch(generator: Generator, items: list[dict], params: GenerateParams) -> list[dict]:
    """One batch of (prompt, sample index) items -> generation rows, each sampled with its own seed."""
    cfg = params.cfg
    requests = [GenRequest(key=item["generation_id"], messages=[{"role": "user", "content": item["text"]}],
                           seed=item["seed"]) for item in items]
    by_key = {item["generation_id"]: item for item in items}
    rows = []
    for batch in generator.generate(requests, sampling_settings(cfg)):
        for result in batch:
            item = by_key[result.key]
            rows.append({
                "generation_id": result.key, "snapshot_id": params.snapshot_id, "prompt_id": item["prompt_id"],
                "sample_index": item["sample_index"], "text": result.text, "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens, "finish_reason": result.finish_reason,
                "temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens,
                "seed": item["seed"], "backend": generator.name,
            })
    return rows


GENERATE = Stage(name=STAGE, code_version=CODE_VERSION, table="generations", partition=("snapshot",),
                 id_column="generation_id", reads=("generation_id", "prompt_id", "text", "sample_index", "seed"),
                 compute=generate_batch, computed_stat="generated", token_column="completion_tokens")


@dataclass(frozen=True)
class SampleRequest:
    """Samples to draw from one snapshot: every prompt (columns prompt_id, text) times every sample index."""

    prompts: pl.DataFrame
    prompt_set: str  # the prompt-set version the prompts come from (the generations' parent)
    sample_indices: Sequence[int]
    label: str = "generate"


def generate(
    store: Store,
    *,
    snapshot_id: str,
    prompts: pl.DataFrame,
    prompt_set: str,
    sample_indices: Sequence[int],
    cfg: GenerateConfig,
    load_generator: Callable[[], Generator],
    spec=None,
    executor: Executor = LOCAL,
    label: str = "generate",
) -> GenerationSet:
    """Materialize generations of `snapshot_id` for every prompt (columns prompt_id, text) and sample index.

    `load_generator` is only called when something is missing, so a fully cached call loads no model; `spec`
    (a ModelSpec) lets an executor load the model in its own workers.
    """
    (result,) = generate_together(store, snapshot_id=snapshot_id, cfg=cfg, load_generator=load_generator, spec=spec,
                                  executor=executor,
                                  requests=[SampleRequest(prompts, prompt_set, sample_indices, label)])
    return result


def generate_together(
    store: Store,
    *,
    snapshot_id: str,
    requests: Sequence[SampleRequest],
    cfg: GenerateConfig,
    load_generator: Callable[[], Generator],
    spec=None,
    executor: Executor = LOCAL,
) -> list[GenerationSet]:
    """`generate` for several requests of one snapshot, their missing rows sampled in shared batches; each request
    gets the version it would get alone."""
    plans = [_plan(snapshot_id, request, cfg) for request in requests]
    runs = run_stages(store, GENERATE, plans, ModelSource(load_generator, spec), executor)
    return [GenerationSet(run.version, [item["generation_id"] for item in plan.items], generated=run.computed,
                          reused=run.reused) for plan, run in zip(plans, runs)]


def _plan(snapshot_id: str, request: SampleRequest, cfg: GenerateConfig) -> Plan:
    prompts = request.prompts
    items = [
        {"generation_id": generation_id(snapshot_id, pid, index, cfg), "prompt_id": pid, "text": text,
         "sample_index": index, "seed": sample_seed(cfg.seed, snapshot_id, pid, index)}
        for pid, text in zip(prompts["prompt_id"].to_list(), prompts["text"].to_list())
        for index in request.sample_indices
    ]
    ids = [item["generation_id"] for item in items]
    config = {**result_fields(cfg), "sample_indices": list(request.sample_indices), "prompts": content_hash(ids)}
    return Plan(items=items, config=config, parents=[request.prompt_set], partition_value=snapshot_id,
                snapshot_id=snapshot_id, params=GenerateParams(snapshot_id, cfg), batch_size=cfg.batch_size,
                label=request.label, extra_stats=lambda rows: {
                    "completion_tokens": sum(rows.column("completion_tokens").to_pylist()), "backend": cfg.backend})


def generate_chunk(store: Store, settings: Profile, snapshot_ref: str, chunk: int, prompt_set: str | None,
                   sample_offset: int = 0) -> tuple[GenerationSet, Snapshot]:
    """Generate (or find) K samples per prompt of a chunk, under the profile's executor (`tsr generate`)."""
    from builder.backends.loading import stage_models
    from builder.snapshot import get_snapshot
    from builder.stages.prompts import prompt_chunk, resolve_prompt_set

    snap = get_snapshot(store, snapshot_ref)
    set_version = resolve_prompt_set(store, prompt_set, settings.loop.chunks)
    prompts = prompt_chunk(store, set_version, chunk, settings.loop.prompts_per_iteration)
    executor, spec = stage_models(store, settings)
    result = generate(store, snapshot_id=snap.snapshot_id, prompts=prompts, prompt_set=set_version,
                      sample_indices=list(range(sample_offset, sample_offset + settings.generate.k)),
                      cfg=settings.generate, load_generator=lambda: spec(snap).load(), spec=lambda: spec(snap),
                      executor=executor)
    return result, snap
