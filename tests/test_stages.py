"""Generation and judging stages on a tiny random llama: schemas, lineage, resume after a kill, the judge cache,
the parse / forced / auto paths and a reward-model judge."""

from __future__ import annotations

import subprocess
import sys

import polars as pl
import pytest

from builder.store import Store
from schemas.tables import GENERATIONS, JUDGMENTS
from tests.conftest import tsr_env
from tests.tiny_model import make_tiny_model

PROFILE = """
generate: {k: 3, temperature: 1.0, top_p: 0.9, max_new_tokens: 6, backend: hf, batch_size: 2}
judge: {mode: auto, samples: 1, temperature: 1.0, max_new_tokens: 4, batch_size: 4}
loop: {chunks: 5, prompts_per_iteration: 4}
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def profile(tmp_path):
    path = tmp_path / "stages.yaml"
    path.write_text(PROFILE)
    return str(path)


def _tsr(root, *args, crash=None):
    extra = {"TSR_CRASH_AT": crash} if crash else {}
    return subprocess.run([sys.executable, "-m", "builder", "--data", str(root), *args],
                          env=tsr_env(root, **extra), capture_output=True, text=True, timeout=300, check=False)


def _texts(root) -> dict[str, str]:
    table = pl.from_arrow(Store.open(root).read("generations"))
    return dict(zip(table["generation_id"], table["text"]))


def test_generate_rows_lineage_and_resume_after_kill(tiny_model, profile, tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for root in (clean, killed):
        assert _tsr(root, "models", "add", str(tiny_model), "--name", "tiny", "--role", "m0").returncode == 0
    assert _tsr(clean, "generate", "--snapshot", "tiny", "--profile", profile).returncode == 0

    # Killed after its second staged batch, then resumed with another batch size (a throughput knob).
    dead = _tsr(killed, "generate", "--snapshot", "tiny", "--profile", profile, crash="generate.after-batch#2")
    assert dead.returncode == -9
    store = Store.open(killed)
    assert store.read("generations").num_rows == 0  # nothing visible before the version completes
    resumed = _tsr(killed, "generate", "--snapshot", "tiny", "--profile", profile, "--batch-size", "3")
    assert resumed.returncode == 0, resumed.stderr
    assert "8 generated, 4 reused" in resumed.stdout  # the 4 staged rows were not generated again

    texts = _texts(killed)
    assert len(texts) == 12 and texts == _texts(clean)  # same ids, same texts for the same seeds

    generations = Store.open(killed).read("generations")
    assert generations.schema == GENERATIONS
    rows = pl.from_arrow(generations)
    assert sorted(rows["sample_index"].unique()) == [0, 1, 2]
    assert rows["prompt_id"].n_unique() == 4 and rows["seed"].n_unique() == 12
    assert set(rows["finish_reason"]) <= {"stop", "length"} and (rows["completion_tokens"] <= 6).all()
    assert (rows["temperature"] == 1.0).all() and (rows["top_p"] == 0.9).all() and set(rows["backend"]) == {"hf"}

    again = _tsr(killed, "generate", "--snapshot", "tiny", "--profile", profile)
    assert "0 generated, 12 reused" in again.stdout


def test_judge_modes_cache_and_forced_fallback(tsr, tiny_model, profile, data_root):
    tsr("models", "add", str(tiny_model), "--name", "tiny", "--role", "m0")
    first = tsr("judge", "--snapshot", "tiny", "--profile", profile).output
    assert "12 judged, 0 reused" in first
    assert "12 judged" not in tsr("judge", "--snapshot", "tiny", "--profile", profile).output  # cached
    assert "0 judged, 12 reused" in tsr("judge", "--snapshot", "tiny", "--profile", profile).output

    store = Store.open(data_root)
    judgments = store.read("judgments")
    assert judgments.schema == JUDGMENTS
    auto = pl.from_arrow(judgments)
    # A random model never writes `Score: N`: every auto judgment falls back to forced, and says why.
    assert auto.height == 12 and set(auto["scored_by"]) == {"forced"} and auto["parse_error"].null_count() == 0
    assert ((auto["score"] >= 0) & (auto["score"] <= 5)).all()
    for probs, score in zip(auto["digit_probs"], auto["score"]):
        assert abs(sum(probs) - 1) < 1e-6 and abs(sum(i * p for i, p in enumerate(probs)) - score) < 1e-6

    # generate mode keeps unparsable judgments as null scores with a parse error: none is dropped.
    tsr("judge", "--snapshot", "tiny", "--profile", profile, "--mode", "generate")
    # forced mode with no justification reads the digits right after "Score:".
    tsr("judge", "--snapshot", "tiny", "--profile", profile, "--mode", "forced", "--judge-max-new-tokens", "0")
    rows = pl.from_arrow(Store.open(data_root).read("judgments"))
    generated = rows.filter(pl.col("mode") == "generate")
    assert generated.height == 12 and generated["score"].null_count() == 12
    assert generated["parse_error"].null_count() == 0 and generated["scored_by"].null_count() == 12
    forced = rows.filter(pl.col("mode") == "forced")
    assert forced.height == 12 and set(forced["scored_by"]) == {"forced"} and set(forced["raw_reply"]) == {""}
    assert rows["judgment_id"].is_unique().all()
    assert set(rows["judge_id"]) == {Store.open(data_root).manifests(table="snapshots")[0].data["snapshot_id"]}


def test_a_bad_template_is_one_line(tsr, tiny_model, profile, tmp_path):
    tsr("models", "add", str(tiny_model), "--name", "tiny", "--role", "m0")
    bad = tmp_path / "bad.txt"
    bad.write_text("Rate {response} with {stars}")
    result = tsr("judge", "--snapshot", "tiny", "--profile", profile, "--template", str(bad), expect=1)
    assert str(bad) in result.output and result.output.count("\n") == 1


def test_reward_model_judges_with_raw_rewards(tsr, tiny_model, profile, tmp_path, data_root):
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    folder = tmp_path / "reward"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    tsr("models", "add", str(tiny_model), "--name", "tiny", "--role", "m0")
    tsr("models", "add", str(folder), "--name", "rm", "--role", "reward")
    tsr("judge", "--snapshot", "tiny", "--judge", "rm", "--profile", profile)
    rows = pl.from_arrow(Store.open(data_root).read("judgments"))
    assert rows.height == 12 and set(rows["mode"]) == {"reward"} and set(rows["scored_by"]) == {"reward"}
    assert rows["score"].null_count() == 0 and rows["score"].n_unique() > 1
