"""A pair version as a conversational preference dataset: prompt / chosen / rejected, in TRL's format."""

from __future__ import annotations

import polars as pl

from builder.errors import TsrError
from builder.store import Store


def pair_frame(store: Store, pair_version: str) -> pl.DataFrame:
    """Pairs of one version joined with their texts: prompt_id, prompt, chosen, rejected and the scores."""
    if store.manifest(pair_version) is None:
        raise TsrError(f"no pair version {pair_version!r} in {store.root}")
    pairs = pl.from_arrow(store.read("pairs", versions=[pair_version]))
    generations = pl.from_arrow(store.read("generations").select(["generation_id", "text"]))
    prompts = pl.from_arrow(store.read("prompts").select(["prompt_id", "text"])).unique("prompt_id")
    assert isinstance(pairs, pl.DataFrame) and isinstance(generations, pl.DataFrame)
    assert isinstance(prompts, pl.DataFrame)
    frame = (
        pairs.join(prompts.rename({"text": "prompt"}), on="prompt_id", how="left")
        .join(generations.rename({"generation_id": "chosen_generation_id", "text": "chosen"}),
              on="chosen_generation_id", how="left")
        .join(generations.rename({"generation_id": "rejected_generation_id", "text": "rejected"}),
              on="rejected_generation_id", how="left")
        .sort("prompt_id")
    )
    broken = frame.filter(pl.any_horizontal(pl.col("prompt", "chosen", "rejected").is_null())).height
    if broken:
        raise TsrError(f"pair version {pair_version}: {broken} pair(s) reference prompts or generations not in "
                       f"{store.root}")
    return frame


def to_conversational(frame: pl.DataFrame) -> list[dict]:
    """Rows in TRL's conversational preference format."""
    return [
        {
            "prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }
        for row in frame.select("prompt", "chosen", "rejected").iter_rows(named=True)
    ]


def load_pairs(store: Store, pair_version: str):
    """A `datasets.Dataset` of one pair version (prompt, chosen, rejected as chat messages)."""
    from datasets import Dataset

    return Dataset.from_list(to_conversational(pair_frame(store, pair_version)))
