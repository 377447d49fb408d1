"""Embedding stage: (generations, snapshot, text kind) -> the mean last-layer hidden state of each text.

The similarity diagnostic's input (`tsr stats --diagnostics --similarity-snapshot S`). An embedding's id hashes
the generation, the snapshot and the text kind, so each is computed once under any version; finished batches
are staged so a killed run resumes. By default each response is encoded alone (`response`); with `chat`, prompt
and response go through the chat template.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from builder.errors import TsrError
from builder.fingerprint import content_hash
from builder.stages.base import LOCAL, Executor, ModelSource, Plan, Stage, run_stage
from builder.store import Store

STAGE = "embed"
CODE_VERSION = 1
TEXT_KINDS = ("response", "chat")


@dataclass(frozen=True)
class EmbeddingSet:
    version: str
    computed: int
    reused: int


@dataclass(frozen=True)
class EmbedParams:
    snapshot_id: str
    text_kind: str


def check_text_kind(text_kind: str) -> None:
    if text_kind not in TEXT_KINDS:
        raise TsrError(f"unknown text kind {text_kind!r}; use {' or '.join(TEXT_KINDS)}")


def embedding_id(generation_id: str, snapshot_id: str, text_kind: str) -> str:
    return content_hash({"generation": generation_id, "snapshot": snapshot_id, "text": text_kind})


def embed_batch(generator: Any, items: list[dict], params: EmbedParams) -> list[dict]:
    """One batch of generations -> their mean hidden states (a Generator with `hidden_state_means`)."""
    if params.text_kind == "chat":
        texts = [generator.render([{"role": "user", "content": item["prompt"]}], item["text"]) for item in items]
    else:
        texts = [item["text"] for item in items]
    means = generator.hidden_state_means(texts)
    return [{"embedding_id": item["embedding_id"], "generation_id": item["generation_id"],
             "snapshot_id": params.snapshot_id, "text_kind": params.text_kind, "mean_hidden": mean}
            for item, mean in zip(items, means)]


EMBED = Stage(name=STAGE, code_version=CODE_VERSION, table="embeddings", partition=("snapshot",),
              id_column="embedding_id", reads=("embedding_id", "generation_id", "prompt", "text"),
              compute=embed_batch)


def embed(
    store: Store,
    *,
    snapshot_id: str,
    generation_ids: Sequence[str],
    text_kind: str = "response",
    load_generator: Callable[[], Any],
    batch_size: int = 16,
    spec=None,
    executor: Executor = LOCAL,
    label: str = "embed",
) -> EmbeddingSet:
    """Materialize the mean last-layer hidden state of every generation under `snapshot_id` (cached, resumable).

    `load_generator` returns an object with `hidden_state_means(texts)` (HFGenerator) and, for `chat`,
    `render(messages, continuation)`; it is only called when something is missing.
    """
    check_text_kind(text_kind)
    if batch_size < 1:
        raise TsrError(f"batch size must be at least 1, got {batch_size}")
    ids = sorted(set(generation_ids))
    generations = pl.from_arrow(store.read("generations").select(["generation_id", "prompt_id", "text", "version"]))
    prompts = pl.from_arrow(store.read("prompts").select(["prompt_id", "text"]))
    assert isinstance(generations, pl.DataFrame) and isinstance(prompts, pl.DataFrame)
    wanted = pl.DataFrame({"generation_id": ids}, schema={"generation_id": pl.String}).with_columns(
        pl.col("generation_id").map_elements(lambda gid: embedding_id(gid, snapshot_id, text_kind),
                                             return_dtype=pl.String).alias("embedding_id")
    ).join(generations, on="generation_id", how="left", maintain_order="left").join(
        prompts.unique("prompt_id").rename({"text": "prompt"}), on="prompt_id", how="left", maintain_order="left")
    if wanted["text"].null_count():
        raise TsrError(f"{wanted['text'].null_count()} generation(s) to embed are not in {store.root}")
    if text_kind == "chat" and wanted["prompt"].null_count():
        raise TsrError(f"{wanted['prompt'].null_count()} prompt(s) of generations to embed are not in {store.root}")
    plan = Plan(items=wanted.select("embedding_id", "generation_id", "prompt", "text").to_dicts(),
                config={"text_kind": text_kind, "generations": content_hash(ids)},
                parents=sorted(set(wanted["version"].to_list())), partition_value=snapshot_id,
                snapshot_id=snapshot_id, params=EmbedParams(snapshot_id, text_kind), batch_size=batch_size,
                label=label)
    run = run_stage(store, EMBED, plan, ModelSource(load_generator, spec), executor)
    return EmbeddingSet(run.version, computed=run.computed, reused=run.reused)
