"""SFT of M0: IFT/EFT import, EFT built from judged generations, and `tsr sft` on a tiny random llama."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file

from builder import judging
from builder.backends.base import ScriptedGenerator
from builder.config import GenerateConfig, JudgeConfig, load_profile
from builder.snapshot import get_snapshot, list_snapshots
from builder.stages.generate import generate
from builder.stages.judge import judge, template_text
from builder.stages.prompts import Chunking, import_prompts
from builder.stages.sft_data import (
    RUBRIC_LINES,
    agrees,
    build_eft,
    default_eft_path,
    default_ift_path,
    parse_eft,
    parse_ift,
    read_reference,
    reward_to_scores,
    sft_examples,
)
from builder.store import Store
from schemas.tables import EFT, IFT
from tests.test_loop import TINY_PROFILE
from tests.tiny_model import make_tiny_model

# Short template and lengths so the tiny model's 512 positions hold the whole judge prompt and its target.
SHORT_TEMPLATE = "Rate the answer 0-5.\nQ: {prompt}\nA: {response}\nEnd with Score: N."
TINY_SFT_PROFILE = """
sft: {learning_rate: 0.01, epochs: 1, global_batch: 4, per_device_batch: 2, warmup_ratio: 0.0, max_length: 256,
      bf16: "false"}
"""


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def test_shipped_seed_sets():
    conversations = parse_ift(default_ift_path())
    assert len(conversations) >= 32 and all(c[-1]["role"] == "assistant" for c in conversations)
    assert any(len(c) > 2 for c in conversations)
    rows = parse_eft(default_eft_path())
    assert len(rows) >= 64 and {r["score"] for r in rows} == set(range(6))
    # Seed justifications are short, so a judge with the cpu-demo budget (48 tokens) reaches its score line.
    assert max(len(r["justification"].split()) for r in rows) <= 40
    assert not {r["prompt"] for r in rows} & {json.loads(line)["prompt"] for line in
                                              (Path(default_ift_path()).parent / "prompts.jsonl").open()}


def test_ift_import_formats_noop_and_errors(tsr, tmp_path, data_root):
    pairs = _jsonl(tmp_path / "ift.jsonl", [{"prompt": "Hi?", "response": "Hello!"},
                                            {"prompt": "2+2?", "completion": "4"}])
    out = tsr("ift", "import", str(pairs)).output
    assert "imported: 2 examples" in out
    assert "no-op" in tsr("ift", "import", str(pairs)).output
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello!"}]
    parquet = tmp_path / "ift.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": messages}]), parquet)
    assert "1 examples (1 multi-turn)" in tsr("ift", "import", str(parquet)).output
    store = Store.open(data_root)
    table = store.read("ift")
    assert table.schema == IFT and table.num_rows == 3
    assert len(tsr("ift", "list").output.splitlines()) == 2

    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "response": "y"},
                                          {"messages": [{"role": "user", "content": "only a question"}]}])
    result = tsr("ift", "import", str(bad), expect=1)
    assert "bad.jsonl: line 2: the last message must be the assistant's" in result.output
    assert len(result.output.strip().splitlines()) == 1
    wrong = _jsonl(tmp_path / "wrong.jsonl", [{"question": "x"}])
    assert "line 1: expected a 'messages' column" in tsr("ift", "import", str(wrong), expect=1).output


def test_eft_import_and_rendering_through_the_judge_template(tsr, tmp_path, data_root):
    rows = [{"prompt": "2+2?", "response": "4", "justification": "Correct and direct.\nScore: 5", "score": 5},
            {"prompt": "2+2?", "response": "5", "justification": "Wrong.", "score": 1}]
    path = _jsonl(tmp_path / "eft.jsonl", rows)
    out = tsr("eft", "import", str(path)).output
    assert "imported: 2 examples" in out
    store = Store.open(data_root)
    (manifest,) = store.manifests(table="eft")
    table = store.read("eft")
    assert table.schema == EFT
    assert table.column("justification").to_pylist() == ["Correct and direct.", "Wrong."]  # own score line dropped

    template = template_text(JudgeConfig())
    examples = sft_examples(store, None, manifest.version, template)
    assert examples[0]["prompt"][0]["content"] == judging.render_template(template, "2+2?", "4")
    completion = examples[0]["completion"][0]["content"]
    assert completion == "Correct and direct.\nScore: 5" and judging.parse_score(completion) == (5, None)

    for bad, message in [({"score": 6}, "whole number from 0 to 5"), ({"score": "high"}, "whole number"),
                         ({"justification": "Nice. Score: 2", "score": 3}, "ends with score 2 but 'score' is 3"),
                         ({"response": ""}, "column 'response' is empty")]:
        path = _jsonl(tmp_path / "bad.jsonl", [{**rows[1], **bad}])
        result = tsr("eft", "import", str(path), expect=1)
        assert message in result.output and "bad.jsonl: line 1" in result.output


def test_reference_agreement_and_reward_mapping():
    assert agrees([4, 2, 1], [3, 2, 1]) and agrees([4, 2], [1, 1])
    assert not agrees([2, 2], [2, 1]) and not agrees([1, 3], [2, 1])
    assert reward_to_scores([0.1, 0.5, 0.9, 0.3, 0.7, 0.2]) == [0, 3, 5, 2, 4, 1]
    assert reward_to_scores([1.0, 1.0]) == [0, 0]


@pytest.fixture
def judged_store(tmp_path, data_root):
    """Three prompts with two scripted responses each, judged by a scripted 'strong' judge in generate mode."""
    store = Store.open(data_root, create=True)
    prompts = _jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Question {i}?"} for i in range(3)])
    with store.writing():
        prompt_set, _ = import_prompts(store, prompts, chunking=Chunking(chunks=1))
        table = pl.from_arrow(store.read("prompts")).select("prompt_id", "text")
        answers = ScriptedGenerator(lambda r: f"answer {r.key}")  # the key is the generation id
        gens = generate(store, snapshot_id="policy", prompts=table, prompt_set=prompt_set.version,
                        sample_indices=[0, 1], cfg=GenerateConfig(k=2), load_generator=lambda: answers)
        first = set(pl.from_arrow(store.read("generations")).filter(pl.col("sample_index") == 0)["generation_id"])

        def reply(request):
            text = request.messages[0]["content"]
            if "Question 2?" in text:  # the judge wrote no score for this prompt's responses
                return "I am not sure."
            good = any(f"answer {gid}" in text for gid in first)  # sample 0 is the better answer
            return "Helpful and correct.\nScore: 4" if good else "Unhelpful.\nScore: 1"

        judged = judge(store, judge_id="strong-judge", generation_ids=gens.generation_ids,
                       cfg=JudgeConfig(mode="generate"), load_generator=lambda: ScriptedGenerator(reply))
        judge(store, judge_id="reward-model", generation_ids=gens.generation_ids, cfg=JudgeConfig(),
              load_generator=lambda: FakeReward(), reward=True)
    return store, gens, judged


class FakeReward:
    """A reward model that prefers longer texts (every scripted answer has a different length)."""

    def score(self, prompts, texts):
        return [float(len(p) + len(t)) for p, t in zip(prompts, texts)]


def test_eft_build_from_a_reward_model(judged_store):
    store, _, _ = judged_store
    with store.writing():
        manifest, _ = build_eft(store, judge_id="reward-model")
    rows = store.read("eft", versions=[manifest.version]).to_pylist()
    assert manifest.rows == 6 and manifest.config["reward"] is True
    assert {r["justification"] for r in rows} <= set(RUBRIC_LINES)
    assert all(r["justification"] == RUBRIC_LINES[r["score"]] for r in rows)


def test_eft_build_from_a_judge_with_a_reference_ranking(judged_store, tmp_path):
    store, gens, _ = judged_store
    with store.writing():
        manifest, created = build_eft(store, judge_id="strong-judge")
    assert created and manifest.rows == 4 and manifest.stats["scores"]["4"] == 2
    assert manifest.stats["dropped"]["not scored by a written justification"] == 2
    rows = store.read("eft", versions=[manifest.version]).to_pylist()
    assert {(r["justification"], r["score"]) for r in rows} == {("Helpful and correct.", 4), ("Unhelpful.", 1)}
    assert all(r["judge_id"] == "strong-judge" and r["generation_id"] in gens.generation_ids for r in rows)
    assert manifest.data["parents"] == [m.version for m in store.manifests(table="judgments")
                                        if m.data["snapshot_id"] == "strong-judge"]
    with store.writing():
        assert build_eft(store, judge_id="strong-judge")[1] is False  # the same inputs: a no-op

    # The reference agrees on prompt 0 (sample 0 better) and disagrees on prompt 1 (sample 1 better).
    generations = pl.from_arrow(store.read("generations")).sort("prompt_id")
    prompts = pl.from_arrow(store.read("prompts")).select("prompt_id", pl.col("text").alias("question"))
    frame = generations.join(prompts, on="prompt_id")
    reference = []
    for row in frame.iter_rows(named=True):
        better = (row["sample_index"] == 0) == (row["question"] == "Question 0?")
        reference.append({"generation_id": row["generation_id"], "rank": 1 if better else 2})
    ranking = read_reference(_jsonl(tmp_path / "reference.jsonl", reference))
    with store.writing():
        agreed, _ = build_eft(store, judge_id="strong-judge", reference=ranking, reference_name="reference.jsonl")
    kept = store.read("eft", versions=[agreed.version]).to_pylist()
    assert agreed.rows == 2 and {r["prompt"] for r in kept} == {"Question 0?"}
    assert agreed.stats["dropped"]["judge disagrees with the reference (or one response)"] == 2


def test_eft_build_cli_errors(tsr, judged_store, tmp_path):
    result = tsr("eft", "build", "--judge", "nobody", expect=1)
    assert "no snapshot 'nobody'" in result.output
    bad = _jsonl(tmp_path / "ref.jsonl", [{"generation_id": "g1"}])
    assert "expected a 'rank'" in tsr("eft", "build", "--judge", "x", "--reference", str(bad), expect=1).output


def _sft_inputs(tsr, tmp_path, words=("hi",), judged=(("Paris.", "Correct.", 5),)) -> list[str]:
    """A tiny base model and IFT/EFT sets in the store; returns the `tsr sft` arguments that train on them."""
    model = make_tiny_model(tmp_path / "tiny")
    profile = tmp_path / "tiny.yaml"
    profile.write_text(TINY_SFT_PROFILE)
    template = tmp_path / "short.txt"
    template.write_text(SHORT_TEMPLATE)
    tsr("models", "add", str(model), "--name", "base", "--role", "external")
    tsr("ift", "import", str(_jsonl(tmp_path / "ift.jsonl", [{"prompt": f"Say {w}.", "response": f"{w}!"}
                                                                for w in words])))
    tsr("eft", "import", str(_jsonl(tmp_path / "eft.jsonl", [
        {"prompt": "Capital of France?", "response": r, "justification": j, "score": s} for r, j, s in judged])))
    return ["sft", "--base", "base", "--profile", str(profile), "--template", str(template), "--name", "M0-sft"]


def test_sft_trains_registers_lineage_and_is_idempotent(tsr, tmp_path, data_root):
    common = _sft_inputs(tsr, tmp_path, words=("hi", "yes", "no"),
                         judged=[("Paris.", "Correct.", 5), ("Rome.", "Wrong city.", 1), ("A city.", "Vague.", 2)])
    store = Store.open(data_root)
    (ift_set,), (eft_set,) = store.manifests(table="ift"), store.manifests(table="eft")

    args = [*common, "--ift", ift_set.version[:10], "--eft", eft_set.version[:10]]
    out = tsr(*args).output
    assert "trained by run" in out
    store = Store.open(data_root)
    sft = get_snapshot(store, "M0-sft")
    base = get_snapshot(store, "base")
    assert sft.role == "m0" and sft.parent_snapshot_id == base.snapshot_id and sft.pair_version is None
    (run,) = store.read("runs").to_pylist()
    assert run["kind"] == "sft" and run["run_id"] == sft.run_id and run["output_snapshot_id"] == sft.snapshot_id
    assert run["data_versions"] == [ift_set.version, eft_set.version] and run["ref_snapshot_id"] is None
    config = json.loads(run["config_json"])
    assert config["learning_rate"] == 0.01 and config["judge_template"] == judging.template_hash(SHORT_TEMPLATE)
    metrics = json.loads(run["metrics_json"])
    assert metrics["examples"] == 6 and metrics["ift_examples"] == 3 and metrics["eft_examples"] == 3
    assert metrics["steps"] >= 1 and metrics["loss"] is not None
    record = json.loads((store.root / sft.path / "tsr_training.json").read_text())
    assert record["run_id"] == sft.run_id and record["data_versions"] == run["data_versions"]
    (run_manifest,) = store.manifests(table="runs")
    assert run_manifest.data["parents"] == sorted([ift_set.version, eft_set.version])

    before = load_file(str(store.root / base.path / "model.safetensors"))
    after = load_file(str(store.root / sft.path / "model.safetensors"))
    changed = [name for name in before if not (before[name] == after[name]).all()]
    assert len(changed) == len(before), f"unchanged tensors: {set(before) - set(changed)}"

    assert "already trained (no-op)" in tsr(*args).output
    assert len(list_snapshots(Store.open(data_root))) == 2
    assert f"on run {sft.run_id}" in tsr("models", "list").output

    # The SFT result is an M0 like any other: the loop takes it as the past anchor with --m0.
    loop_profile = tmp_path / "loop.yaml"
    loop_profile.write_text(TINY_PROFILE + TINY_SFT_PROFILE)
    tsr("pairs", "--iter", "1", "--method", "sr", "--m0", "M0-sft", "--profile", str(loop_profile))
    store = Store.open(data_root)
    (pairs,) = store.manifests(table="pairs")
    assert pairs.config["policy"] == sft.snapshot_id
    assert set(pl.from_arrow(store.read("generations"))["snapshot_id"]) == {sft.snapshot_id}


@pytest.mark.parametrize("point", [
    "train.before-run-record",  # the SFT model is registered, its run row is not
    "snapshot.before-register",  # the model folder is in the store, not registered
    "store.before-manifest#2",  # the snapshot row's data file is written, its manifest is not
])
def test_sigkill_during_sft_then_rerun_finishes_the_same_run(point, tsr, tmp_path, data_root):
    import subprocess
    import sys

    from tests.conftest import tsr_env

    args = _sft_inputs(tsr, tmp_path)
    before = {m.version for m in Store.open(data_root).manifests()}
    command = [sys.executable, "-m", "builder", *args]
    killed = subprocess.run(command, env=tsr_env(data_root, TSR_CRASH_AT=point), capture_output=True, text=True,
                            timeout=600, check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert before <= {m.version for m in Store.open(data_root).manifests()}  # nothing materialized was lost
    resumed = subprocess.run(command, env=tsr_env(data_root), capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    store = Store.open(data_root)
    sft = get_snapshot(store, "M0-sft")
    (run,) = store.read("runs").to_pylist()
    assert run["run_id"] == sft.run_id and run["output_snapshot_id"] == sft.snapshot_id
    assert {s.name for s in list_snapshots(store)} == {"base", "M0-sft"}
    assert {p.name for p in (data_root / "snapshots").iterdir()} == {s.snapshot_id for s in list_snapshots(store)}
    assert "already trained (no-op)" in tsr(*args).output


def test_sft_flag_errors(tsr):
    assert "--no-ift and --no-eft" in tsr("sft", "--no-ift", "--no-eft", expect=1).output


def test_profiles_carry_the_paper_sft_settings():
    paper = load_profile("paper").sft
    assert (paper.epochs, paper.learning_rate, paper.global_batch, paper.lr_scheduler, paper.warmup_ratio) == (
        3, 2e-6, 32, "cosine", 0.1)
    demo = load_profile("cpu-demo").sft
    assert demo.bf16 == "false" and demo.epochs == 1
    # the recompute of gradient checkpointing (TRL's default) saves no needed memory on the CPU demo's 135M model
    assert demo.gradient_checkpointing is False and load_profile("cpu-demo").train.gradient_checkpointing is False
    assert paper.gradient_checkpointing is True


def test_training_knobs_reach_trl_and_bad_values_fail(tmp_path):
    from trl import SFTConfig as TrlSFTConfig

    from builder.errors import TsrError
    from train.common import trainer_arguments

    arguments = trainer_arguments(TrlSFTConfig, load_profile("cpu-demo").sft, tmp_path)
    assert arguments["gradient_checkpointing"] is False and arguments["per_device_train_batch_size"] == 1
    assert arguments["gradient_accumulation_steps"] == 8  # global batch 8 on one process
    bad = tmp_path / "bad.yaml"
    bad.write_text("sft: {gradient_checkpointing: sometimes}\n")
    message = f"profile {bad}: sft.gradient_checkpointing must be true or false, got 'sometimes'"
    with pytest.raises(TsrError, match=re.escape(message)):
        load_profile(str(bad))
    # DPO's settings go through the same checks
    bad.write_text("train: {warmup_ratio: 1.5}\n")
    with pytest.raises(TsrError, match=re.escape(f"profile {bad}: train.warmup_ratio must be in [0, 1), got 1.5")):
        load_profile(str(bad))
