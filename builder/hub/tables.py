"""The Parquet files a push derives, beside the store's own: a pair version ready for DPO, stats and versions.

    data/<pair config>/train-<v>.parquet   DPO_SCHEMA: prompt / chosen / rejected as chat messages, then lineage
    data/stats/stats.parquet               STATS_SCHEMA: one row per table and per pair version of the repo
    data/versions/versions.parquet         the store's MANIFEST schema: every pushed manifest (the lineage)

Stats and versions describe the whole repo (its index after the push), not only the versions a push sends.
"""

from __future__ import annotations

import json

import pyarrow as pa

from builder.hub.index import pair_entries, tables_in
from builder.store import Store
from schemas.tables import MANIFEST, PARTITIONS

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


def dpo_table(store: Store, pair_version: str) -> pa.Table:
    """One pair version's rows in DPO_SCHEMA, read from the store (texts joined in from prompts and generations)."""
    from train.data import pair_frame, to_conversational

    frame = pair_frame(store, pair_version)
    rows = [{**conversation, **lineage} for conversation, lineage in
            zip(to_conversational(frame), frame.select(DPO_SCHEMA.names[3:]).iter_rows(named=True))]
    return pa.Table.from_pylist(rows, schema=DPO_SCHEMA)


def stats_table(index: dict) -> pa.Table:
    rows = []
    for table, entries in tables_in(index).items():
        rows.append({"kind": "table", "config": table, "table": table, "versions": len(entries),
                     "rows": sum(e["manifest"]["rows"] for e in entries)})
    for version, manifest, pushed in pair_entries(index):
        config, stats = json.loads(manifest["config_json"]), json.loads(manifest["stats_json"])
        rows.append({"kind": "pairs", "config": pushed["config"], "table": "pairs", "version": version,
                     "versions": 1, "rows": pushed["rows"], "method": config.get("method"),
                     "iteration": config.get("iteration"), "phase": config.get("phase"),
                     "mean_chosen": stats.get("mean_chosen"), "mean_rejected": stats.get("mean_rejected"),
                     "mean_gap": stats.get("mean_gap"), "tag": pushed["tag"]})
    return pa.Table.from_pylist(rows, schema=STATS_SCHEMA)


def versions_table(index: dict) -> pa.Table:
    rows = []
    for entries in tables_in(index).values():
        for entry in entries:
            row = dict(entry["manifest"])
            rows.append({name: row.get(name) for name in MANIFEST.names})
    return pa.Table.from_pylist(rows, schema=MANIFEST)


def table_glob(table: str) -> str:
    """The repo files of a store table, as a `data_files` pattern (one `*` per partition folder)."""
    return "/".join(["data", table, *("*" for _ in PARTITIONS[table]), "*.parquet"])
