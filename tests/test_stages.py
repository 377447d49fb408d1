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


def _counting_loader(folder, batch_size, calls):
    """The tiny model's hf generator, counting the requests of every `generate` call."""
    from builder.backends.hf import HFGenerator

    def load():
        generator = HFGenerator(str(folder), batch_size=batch_size)
        generate = generator.generate

        def counted(requests, sampling):
            calls.append(len(requests))
            return generate(requests, sampling)

        generator.generate = counted
        return generator

    return load


def _store_with_prompts(tsr, root, tiny_model, tmp_path):
    """A store holding the tiny model and 8 prompts in 2 chunks; returns (store, snapshot, prompt-set version)."""
    from builder.snapshot import get_snapshot

    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text("".join(f'{{"prompt": "Question number {i}?"}}\n' for i in range(8)))
    tsr("--data", str(root), "models", "add", str(tiny_model), "--name", "tiny", "--role", "m0")
    tsr("--data", str(root), "prompts", "import", str(prompts_file), "--chunks", "2")
    store = Store.open(root)
    (prompt_set,) = store.manifests(table="prompts")
    return store, get_snapshot(store, "tiny"), prompt_set.version


def test_plans_of_one_model_share_batches_and_keep_their_own_versions(tsr, tiny_model, tmp_path):
    """generate_together and judge_together: one pass for every request, and each request's version, ids and rows
    exactly those it gets alone; a failure mid-pass loses no finished batch."""
    from builder.config import load_profile
    from builder.stages.generate import SampleRequest, generate, generate_together
    from builder.stages.judge import judge, judge_together
    from builder.stages.prompts import prompt_chunk

    profile = tmp_path / "p.yaml"
    profile.write_text(PROFILE.replace("batch_size: 2", "batch_size: 24").replace("batch_size: 4}", "batch_size: 16}"))
    settings = load_profile(str(profile))
    results = {}
    for name in ("together", "alone"):
        store, snapshot, prompt_set = _store_with_prompts(tsr, tmp_path / name, tiny_model, tmp_path)
        with store.writing():
            chunks = [prompt_chunk(store, prompt_set, n, 4) for n in (1, 2)]
            requests = [SampleRequest(chunks[0], prompt_set, [0, 1], "current"),
                        SampleRequest(chunks[0], prompt_set, [2, 3], "past 1"),
                        SampleRequest(chunks[1], prompt_set, [2, 3], "past 2")]
            calls: list[int] = []
            load = _counting_loader(tiny_model, 24, calls)
            common = {"snapshot_id": snapshot.snapshot_id, "cfg": settings.generate, "load_generator": load}
            if name == "together":
                sets = generate_together(store, requests=requests, **common)
                assert calls == [24]  # 3 requests x 4 prompts x 2 samples, one batch
                judged = judge_together(store, judge_id=snapshot.snapshot_id, cfg=settings.judge,
                                        generation_sets=[s.generation_ids for s in sets[:2]],
                                        labels=["judge current", "judge past"], load_generator=load)
                assert calls[1:] == [16]  # both pools in one batch of judgments
            else:
                sets = [generate(store, prompts=r.prompts, prompt_set=r.prompt_set, sample_indices=r.sample_indices,
                                 **common) for r in requests]
                assert calls == [8, 8, 8]
                judged = [judge(store, judge_id=snapshot.snapshot_id, cfg=settings.judge, generation_ids=s.generation_ids,
                                load_generator=load) for s in sets[:2]]
        results[name] = (sets, judged, store)
    (sets, judged, together), (sets_alone, judged_alone, alone) = results["together"], results["alone"]
    assert [s.version for s in sets] == [s.version for s in sets_alone]
    assert [j.version for j in judged] == [j.version for j in judged_alone]
    assert _texts(together.root) == _texts(alone.root)
    batched = {m.version: m.stats.get("batched_with") for m in together.manifests(table="generations")}
    assert batched[sets[0].version] == [sets[1].version, sets[2].version]
    assert all("batched_with" not in m.stats for m in alone.manifests(table="generations"))


def test_a_failure_mid_pass_keeps_the_finished_batches(tsr, tiny_model, tmp_path):
    from builder.config import load_profile
    from builder.stages.generate import SampleRequest, generate_together
    from builder.stages.prompts import prompt_chunk

    settings = load_profile(None)
    settings.generate.batch_size = 4
    settings.generate.max_new_tokens = 4
    store, snapshot, prompt_set = _store_with_prompts(tsr, tmp_path / "store", tiny_model, tmp_path)
    calls: list[int] = []
    load = _counting_loader(tiny_model, 4, calls)

    def failing():
        generator = load()
        generate = generator.generate

        def fail_on_third(requests, sampling):
            if len(calls) == 2:
                raise RuntimeError("the machine went away")
            return generate(requests, sampling)

        generator.generate = fail_on_third
        return generator

    with store.writing():
        requests = [SampleRequest(prompt_chunk(store, prompt_set, n, 4), prompt_set, [0, 1], f"chunk {n}")
                    for n in (1, 2)]
        with pytest.raises(RuntimeError, match="went away"):
            generate_together(store, snapshot_id=snapshot.snapshot_id, requests=requests, cfg=settings.generate,
                              load_generator=failing)
        assert store.read("generations").num_rows == 0  # no version is visible before it is whole
        sets = generate_together(store, snapshot_id=snapshot.snapshot_id, requests=requests, cfg=settings.generate,
                                 load_generator=load)
    assert [s.generated for s in sets] == [0, 8]  # chunk 1's two staged batches were kept, not sampled again
    assert calls[2:] == [4, 4]
    rows = pl.from_arrow(store.read("generations"))
    assert rows.height == 16 and rows["generation_id"].is_unique().all()
