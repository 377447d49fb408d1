"""The dataset card, the repo's README.md: YAML configs for `load_dataset`, what the repo holds, and its plots.

The card describes the repo as the push leaves it (its index), nothing else: the tables list the pushed versions,
and the plots are drawn from the repo's pair versions only, so a subset push never publishes the scores of pairs
the user kept back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from builder.errors import TsrError
from builder.hub.index import INDEX_FILE, manifest_file, pair_entries, sha256, tables_in
from builder.hub.tables import table_glob
from builder.hub.transport import Warn
from builder.plots import Plot, card_markdown, write_plots
from builder.stats import FINAL_PHASE
from builder.store import Manifest, Store

TITLE = "Temporal Self-Rewarding preference data"


def card_plots(store: Store, index: dict, folder: Path, warn: Warn) -> tuple[list[Plot], list[str]]:
    """The gap and score plots of the repo's pair versions, and which versions they show.

    Only versions this store holds as the repo has them (same manifest checksum) can be drawn: in a repo that
    several stores pushed to, the others' versions are listed on the card but not plotted (the card says so).
    No plots where matplotlib is missing or no pair version of a final phase is there to draw.
    """
    shown = _held_as_pushed(store, index)
    configs = [store.manifest(v).config for v in shown]
    if not any(FINAL_PHASE.get(c["method"]) == c["phase"] for c in configs):
        warn("no plots in the dataset card: no pair version of a final phase (the pairs that train the next "
             "model) to draw")
        return [], []
    try:
        return write_plots(_Published(store, shown), folder), shown
    except TsrError as exc:  # matplotlib is missing (the message says what to install)
        warn(f"no plots in the dataset card: {exc}")
        return [], []


def card_intervals(store: Store, index: dict) -> dict[str, tuple[float | None, float | None]]:
    """pair version -> the 95% bootstrap interval over prompts of its mean gap (builder/intervals.py), for the repo's
    pair versions this store holds as the repo has them (the others are shown without one)."""
    from builder.stats import diagnostics

    shown = _held_as_pushed(store, index)
    if not shown:
        return {}
    rows = diagnostics(_Published(store, shown), versions=shown).to_pylist()
    return {row["pair_version"]: (row["gap_ci_low"], row["gap_ci_high"]) for row in rows}


def _held_as_pushed(store: Store, index: dict) -> list[str]:
    """The repo's pair versions this store holds as the repo has them (same manifest checksum)."""
    return [version for version, _, _ in pair_entries(index) if _same_manifest(store, index, version)]


def _same_manifest(store: Store, index: dict, version: str) -> bool:
    path = manifest_file(store, version)
    return path.is_file() and sha256(path.read_bytes()) == index["versions"][version]["manifest_sha256"]


class _Published(Store):
    """The local store as the repo shows it: only the given versions are listed, so a query, and a plot drawn
    from it, sees those and nothing else. For reading only."""

    def __init__(self, store: Store, versions: Sequence[str]):
        super().__init__(store.root)
        self._shown = set(versions)

    def manifests(self, *, table: str | None = None, stage: str | None = None) -> list[Manifest]:
        return [m for m in super().manifests(table=table, stage=stage) if m.version in self._shown]

    def manifest(self, version: str) -> Manifest | None:
        return super().manifest(version) if version in self._shown else None


def dataset_card(index: dict, repo_id: str, plots: Sequence[Plot] = (), plotted: Sequence[str] = (),
                 intervals: dict[str, tuple[float | None, float | None]] | None = None):
    """The card for `index`: huggingface_hub's DatasetCard, its metadata a DatasetCardData with the configs;
    `intervals` (`card_intervals`) go beside the mean gaps."""
    from huggingface_hub import DatasetCard, DatasetCardData

    data = DatasetCardData(pretty_name=TITLE, task_categories=["text-generation"],
                           tags=["dpo", "preference", "temporal-sr", "self-rewarding"], configs=_configs(index))
    body = _body(index, repo_id, intervals or {})
    if plots:
        body += "\n" + card_markdown(list(plots), "plots/") + "\n"
        if len(plotted) < len(index["pairs"]):
            body += (f"The plots show {len(plotted)} of the {len(index['pairs'])} pair versions: those of the store "
                     "that pushed last (the others were pushed from another store).\n")
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _configs(index: dict) -> list[dict[str, Any]]:
    """One `load_dataset` config per pair version (the newest final one is the default), per table, stats and
    versions."""
    pairs = pair_entries(index)
    finals = [p["config"] for _, m, p in pairs if FINAL_PHASE.get(json.loads(m["config_json"])["method"])
              == json.loads(m["config_json"])["phase"]]
    configs: list[dict[str, Any]] = []
    for _, _, pushed in pairs:
        config: dict[str, Any] = {"config_name": pushed["config"],
                                  "data_files": [{"split": "train", "path": pushed["path"]}]}
        if finals and pushed["config"] == finals[-1]:
            config["default"] = True
        configs.append(config)
    for table in tables_in(index):
        configs.append({"config_name": table, "data_files": [{"split": "train", "path": table_glob(table)}]})
    configs.append({"config_name": "stats", "data_files": [{"split": "train", "path": "data/stats/stats.parquet"}]})
    configs.append({"config_name": "versions",
                    "data_files": [{"split": "train", "path": "data/versions/versions.parquet"}]})
    return configs


def _body(index: dict, repo_id: str, intervals: dict[str, tuple[float | None, float | None]]) -> str:
    tables = tables_in(index)
    pairs = pair_entries(index)
    lines = [
        f"# {TITLE}", "",
        "Preference pairs from a Temporal Self-Rewarding loop (Wang et al., 2025) and every row they came from:",
        "prompts, generations, judgments, model snapshots and training runs, pushed by temporal-sr as versioned",
        "Parquet. Each pair version is a config in TRL's conversational preference format (`prompt`, `chosen`,",
        "`rejected` as chat messages), with the lineage of every pair (scores, generation ids, snapshots, pools).",
        "",
        "## Pair versions", "",
        "| config | method | iteration | phase | pairs | mean chosen | mean rejected | mean gap | gap 95% CI | tag |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for version, manifest, pushed in pairs:
        config, stats = json.loads(manifest["config_json"]), json.loads(manifest["stats_json"])
        lines.append(f"| `{pushed['config']}` | {config.get('method')} | {config.get('iteration')} | "
                     f"{config.get('phase')} | {pushed['rows']} | {_num(stats.get('mean_chosen'))} | "
                     f"{_num(stats.get('mean_rejected'))} | {_num(stats.get('mean_gap'))} | "
                     f"{_interval(intervals.get(version))} | `{pushed['tag']}` |")
    example = pairs[-1][2]["config"] if pairs else "pairs-tsr-iter1"
    lines += [
        "", ("Gap 95% CI: percentile bootstrap interval of the mean gap over the version's prompts (2,000 resamples, "
             "seeded by the version); blank for fewer than two pairs, or for a version another store pushed."),
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


def _interval(bounds: tuple[float | None, float | None] | None) -> str:
    return "" if bounds is None or bounds[0] is None else f"[{bounds[0]:.3f}, {bounds[1]:.3f}]"
