"""Declared Arrow schemas of every table in a temporal-sr store.

Writers always pass these schemas; nothing is inferred from data, so a column can never silently change
type between two part files (which would break DuckDB's union of the parts).

Every row carries its lineage: which snapshot made it, with which settings, from which rows.
Bump SCHEMA_VERSION when a change is not purely additive; store.json records the version a store was made with.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

_TS = pa.timestamp("us", tz="UTC")

PROMPTS = pa.schema(
    [
        pa.field("prompt_id", pa.string(), nullable=False),  # content hash of the normalized text
        pa.field("text", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # file the prompt was imported from (name only)
        pa.field("set_version", pa.string(), nullable=False),  # the prompt-set version (also the partition)
        pa.field("chunk", pa.int32(), nullable=False),  # 1-based: iteration N uses chunk N
        pa.field("position", pa.int32(), nullable=False),  # order of first appearance in the source file
    ]
)

GENERATIONS = pa.schema(
    [
        # hash of (snapshot, prompt, sample index, sampling settings, seed): the row's content key
        pa.field("generation_id", pa.string(), nullable=False),
        pa.field("snapshot_id", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("sample_index", pa.int32(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("prompt_tokens", pa.int32(), nullable=False),
        pa.field("completion_tokens", pa.int32(), nullable=False),
        pa.field("finish_reason", pa.string(), nullable=False),  # "stop" or "length"
        pa.field("temperature", pa.float64(), nullable=False),
        pa.field("top_p", pa.float64(), nullable=False),
        pa.field("max_new_tokens", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),  # the per-sample seed actually used
        pa.field("backend", pa.string(), nullable=False),  # "hf", "vllm", "fake"
        pa.field("version", pa.string(), nullable=False),  # the materialized version that wrote the row
        pa.field("created_at", _TS, nullable=False),
    ]
)

JUDGMENTS = pa.schema(
    [
        # hash of (generation, judge snapshot, template hash, mode, judge samples)
        pa.field("judgment_id", pa.string(), nullable=False),
        pa.field("generation_id", pa.string(), nullable=False),
        pa.field("judge_id", pa.string(), nullable=False),  # snapshot id of the judge (or reward model)
        pa.field("template_hash", pa.string(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),  # requested: generate | forced | auto | reward
        pa.field("scored_by", pa.string(), nullable=True),  # which mode produced the score; null if none did
        pa.field("judge_samples", pa.int32(), nullable=False),  # judge replies averaged into the score
        pa.field("score", pa.float64(), nullable=True),  # 0..5; null when unparsable
        pa.field("raw_reply", pa.string(), nullable=False),
        pa.field("parse_error", pa.string(), nullable=True),
        pa.field("digit_probs", pa.list_(pa.float64()), nullable=True),  # P(0..5) after "Score: " (forced)
        pa.field("temperature", pa.float64(), nullable=False),
        pa.field("max_new_tokens", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("version", pa.string(), nullable=False),
        pa.field("created_at", _TS, nullable=False),
    ]
)

PAIRS = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),  # hash of (pair version, prompt)
        pa.field("pair_version", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),  # sr | tsr-past | tsr
        pa.field("iteration", pa.int32(), nullable=False),
        pa.field("phase", pa.string(), nullable=False),  # d1 | d2 | sr
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("chosen_generation_id", pa.string(), nullable=False),
        pa.field("rejected_generation_id", pa.string(), nullable=False),
        pa.field("chosen_score", pa.float64(), nullable=False),
        pa.field("rejected_score", pa.float64(), nullable=False),
        pa.field("gap", pa.float64(), nullable=False),  # chosen_score - rejected_score, always > 0
        pa.field("chosen_pool", pa.string(), nullable=False),  # current | past | future
        pa.field("rejected_pool", pa.string(), nullable=False),
        pa.field("chosen_sample_index", pa.int32(), nullable=False),
        pa.field("rejected_sample_index", pa.int32(), nullable=False),
        pa.field("chosen_snapshot_id", pa.string(), nullable=False),
        pa.field("rejected_snapshot_id", pa.string(), nullable=False),
        pa.field("judge_id", pa.string(), nullable=False),
        pa.field("created_at", _TS, nullable=False),
    ]
)

SNAPSHOTS = pa.schema(
    [
        pa.field("snapshot_id", pa.string(), nullable=False),  # hash of weight files, or hub repo + revision
        pa.field("name", pa.string(), nullable=False),
        pa.field("role", pa.string(), nullable=False),  # m0 | iteration | future | judge | reward | external
        pa.field("path", pa.string(), nullable=True),  # folder relative to the store root, null for hub-only
        pa.field("hub_repo", pa.string(), nullable=True),
        pa.field("hub_revision", pa.string(), nullable=True),
        pa.field("parent_snapshot_id", pa.string(), nullable=True),
        pa.field("pair_version", pa.string(), nullable=True),  # the pairs it was trained on
        pa.field("run_id", pa.string(), nullable=True),  # the training run that made it
        pa.field("temporary", pa.bool_(), nullable=False),  # M_f: generates once, never judges
        pa.field("created_at", _TS, nullable=False),
        # A model behind a server (tsr models add --served): the name the server knows it by, and its revision
        # (given, or reported by the server). Where it is served is the store's endpoints.json, never a table.
        pa.field("served_model", pa.string(), nullable=True),
        pa.field("served_revision", pa.string(), nullable=True),
    ]
)

RUNS = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),  # hash of (kind, data versions, start snapshot, config)
        pa.field("kind", pa.string(), nullable=False),  # dpo | sft
        pa.field("data_versions", pa.list_(pa.string()), nullable=False),
        pa.field("start_snapshot_id", pa.string(), nullable=False),
        pa.field("ref_snapshot_id", pa.string(), nullable=True),
        pa.field("output_snapshot_id", pa.string(), nullable=False),
        pa.field("config_json", pa.string(), nullable=False),  # canonical JSON of the result-changing config
        pa.field("metrics_json", pa.string(), nullable=False),
        pa.field("seconds", pa.float64(), nullable=False),
        pa.field("created_at", _TS, nullable=False),
    ]
)

# Mean last-layer hidden states of generations under one snapshot, cached for the chosen/rejected similarity
# diagnostic (builder/stats.py). Added in schema version 1 without changing any other table.
EMBEDDINGS = pa.schema(
    [
        pa.field("embedding_id", pa.string(), nullable=False),  # hash of (generation, snapshot, text_kind)
        pa.field("generation_id", pa.string(), nullable=False),
        pa.field("snapshot_id", pa.string(), nullable=False),  # the model whose hidden states these are
        pa.field("text_kind", pa.string(), nullable=False),  # response (the text alone) | chat (prompt + response)
        pa.field("mean_hidden", pa.list_(pa.float32()), nullable=False),  # mean over the tokens (empty text: zeros)
        pa.field("version", pa.string(), nullable=False),
        pa.field("created_at", _TS, nullable=False),
    ]
)

# Supervised fine-tuning data for M0 (the papers' SFT model): instruction-following examples (IFT) and
# evaluation fine-tuning examples (EFT). Added in schema version 1 without changing any other table.
_MESSAGE = pa.struct(
    [pa.field("role", pa.string(), nullable=False), pa.field("content", pa.string(), nullable=False)]
)

IFT = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),  # content hash of the messages
        pa.field("set_version", pa.string(), nullable=False),  # the IFT-set version (also the partition)
        # the conversation; the last message is the assistant's completion (the only tokens with loss)
        pa.field("messages", pa.list_(_MESSAGE), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # file name it was imported from
        pa.field("position", pa.int32(), nullable=False),  # order in the source
    ]
)

EFT = pa.schema(
    [
        # content hash of (prompt, response, justification, score)
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("set_version", pa.string(), nullable=False),  # the EFT-set version (also the partition)
        pa.field("prompt", pa.string(), nullable=False),  # the question that was judged
        pa.field("response", pa.string(), nullable=False),  # the answer that was judged
        pa.field("justification", pa.string(), nullable=False),  # the judge's reasoning, without the score line
        pa.field("score", pa.int32(), nullable=False),  # 0..5; the target ends with "Score: <score>"
        pa.field("source", pa.string(), nullable=False),  # file name, or "judgments" for `tsr eft build`
        pa.field("position", pa.int32(), nullable=False),
        pa.field("generation_id", pa.string(), nullable=True),  # built rows: the judged generation
        pa.field("judgment_id", pa.string(), nullable=True),  # built rows: the judgment they come from
        pa.field("judge_id", pa.string(), nullable=True),  # built rows: the judge (snapshot or reward model)
    ]
)

# Evaluation results (builder/evals): one row per pairwise comparison (kind "winrate") or per IFEval prompt (kind
# "ifeval"). Columns of the other kind are null. Added in schema version 1 without changing any other table.
EVALS = pa.schema(
    [
        pa.field("eval_id", pa.string(), nullable=False),  # hash of (kind, generation(s), judge settings | checks)
        pa.field("eval_version", pa.string(), nullable=False),  # the materialized version that wrote the row
        pa.field("kind", pa.string(), nullable=False),  # winrate | ifeval (also the partition)
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("snapshot_id", pa.string(), nullable=False),  # winrate: side A; ifeval: the evaluated model
        pa.field("generation_id", pa.string(), nullable=False),
        pa.field("completion_tokens", pa.int32(), nullable=False),  # length of the response
        pa.field("other_snapshot_id", pa.string(), nullable=True),  # winrate: side B
        pa.field("other_generation_id", pa.string(), nullable=True),
        pa.field("other_completion_tokens", pa.int32(), nullable=True),
        pa.field("judge_id", pa.string(), nullable=True),  # winrate: the fixed judge (LLM or reward model)
        pa.field("judge_mode", pa.string(), nullable=True),  # forced (verdict-token probs) | generate | reward
        pa.field("template_hash", pa.string(), nullable=True),  # forced: the pairwise template's hash
        pa.field("pref_a_first", pa.float64(), nullable=True),  # P(A better) with A shown as response 1
        pa.field("pref_a_second", pa.float64(), nullable=True),  # P(A better) with A shown as response 2
        pa.field("reward_a", pa.float64(), nullable=True),  # reward judge: the two raw rewards
        pa.field("reward_b", pa.float64(), nullable=True),
        pa.field("preference", pa.float64(), nullable=True),  # debiased P(A better): mean of both orders
        pa.field("outcome", pa.string(), nullable=True),  # win | tie | loss, from A's side
        # generate mode: how many of the two orders' replies had no `Score: 1|2` line (counted as no preference)
        pa.field("unparsed_verdicts", pa.int32(), nullable=True),
        pa.field("ifeval_key", pa.string(), nullable=True),  # ifeval: the row's `key`
        pa.field("instruction_ids", pa.list_(pa.string()), nullable=True),
        pa.field("follow_strict", pa.list_(pa.bool_()), nullable=True),  # per instruction
        pa.field("follow_loose", pa.list_(pa.bool_()), nullable=True),
        pa.field("prompt_strict", pa.bool_(), nullable=True),  # every instruction followed
        pa.field("prompt_loose", pa.bool_(), nullable=True),
        pa.field("created_at", _TS, nullable=False),
    ]
)

# A manifest is one JSON file per materialized version; this schema is what `versions` shows in DuckDB.
MANIFEST = pa.schema(
    [
        pa.field("version", pa.string(), nullable=False),  # the fingerprint
        pa.field("stage", pa.string(), nullable=False),
        pa.field("stage_code_version", pa.int32(), nullable=False),
        pa.field("table", pa.string(), nullable=False),
        pa.field("config_json", pa.string(), nullable=False),
        pa.field("parents", pa.list_(pa.string()), nullable=False),
        pa.field("snapshot_id", pa.string(), nullable=True),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field(
            "files",
            pa.list_(
                pa.struct(
                    [
                        pa.field("path", pa.string(), nullable=False),
                        pa.field("rows", pa.int64(), nullable=False),
                        pa.field("bytes", pa.int64(), nullable=False),
                        pa.field("sha256", pa.string(), nullable=False),
                    ]
                )
            ),
            nullable=False,
        ),
        pa.field("stats_json", pa.string(), nullable=False),
        pa.field("created_at", pa.string(), nullable=False),  # ISO 8601, UTC
        pa.field("library_versions_json", pa.string(), nullable=False),
        pa.field("schema_version", pa.int32(), nullable=False),
    ]
)

# The name of each table in the store, its schema, and the hive partition keys of its folder layout.
TABLES: dict[str, pa.Schema] = {
    "prompts": PROMPTS,
    "generations": GENERATIONS,
    "judgments": JUDGMENTS,
    "pairs": PAIRS,
    "snapshots": SNAPSHOTS,
    "runs": RUNS,
    "embeddings": EMBEDDINGS,
    "ift": IFT,
    "eft": EFT,
    "evals": EVALS,
}

PARTITIONS: dict[str, tuple[str, ...]] = {
    "prompts": ("set",),
    "generations": ("snapshot",),
    "judgments": ("judge",),
    "pairs": ("method", "iteration", "phase"),
    "snapshots": (),
    "runs": (),
    "embeddings": ("snapshot",),
    "ift": ("set",),
    "eft": ("set",),
    "evals": ("kind",),
}
