"""Pairwise win rates with a scripted judge: both-order debiasing, the win/tie/loss arithmetic, the bootstrap
interval, caching, a reward-model judge, and the CLI end to end on a tiny random model."""

from __future__ import annotations

import re

import polars as pl
import pytest

from builder.backends.base import ScriptedGenerator
from builder.config import GenerateConfig
from builder.stages.prompts import prompt_id
from builder.stages.winrate import (
    PairwiseJudgeSettings,
    bootstrap_intervals,
    outcome,
    rates,
    winrate,
)
from builder.store import Store
from schemas.tables import EVALS
from tests.tiny_model import make_tiny_model

# prompt -> (A's answer, B's answer, which the scripted judge prefers: "good" content, or always position 1)
CASES = {
    "q0": ("good answer zero", "bad zero"),
    "q1": ("good answer one", "bad one"),
    "q2": ("good answer two", "bad two"),
    "q3": ("good answer three", "bad three"),
    "q4": ("neutral four", "neutral four too"),  # the judge prefers position 1 whatever it holds
    "q5": ("bad five", "good answer five"),
}


def _prompts() -> pl.DataFrame:
    return pl.DataFrame({"prompt_id": [prompt_id(p) for p in CASES], "text": list(CASES)})


def _answerer(snapshot_id: str) -> ScriptedGenerator:
    side = 0 if snapshot_id == "snap-a" else 1
    return ScriptedGenerator(lambda request: CASES[request.messages[0]["content"]][side])


def _judge_probs(text: str) -> list[float]:
    first = re.search(r"<response_1>\n(.*?)\n</response_1>", text, re.DOTALL).group(1)
    second = re.search(r"<response_2>\n(.*?)\n</response_2>", text, re.DOTALL).group(1)
    if "good" in first:
        return [0, 3, 1, 0, 0, 0]  # P(1) = 0.75 of the two verdict digits
    if "good" in second:
        return [5, 1, 3, 0, 0, 0]  # P(2) = 0.75; the other digits do not count
    return [0, 3, 1, 0, 0, 0]  # position bias: always response 1


def _run(store, judge, **extra):
    return winrate(store, snapshot_a="snap-a", snapshot_b="snap-b", judge_id="judge", prompts=_prompts(),
                   prompt_set="set-1", generate_cfg=GenerateConfig(temperature=0.0, max_new_tokens=16),
                   judge_settings=PairwiseJudgeSettings(batch_size=4), load_generator=_answerer,
                   load_judge=lambda: judge, resamples=500, **extra)


def test_both_orders_cancel_position_bias_and_rates_are_exact(data_root):
    store = Store.open(data_root, create=True)
    judge = ScriptedGenerator(probs=_judge_probs)
    with store.writing():
        result = _run(store, judge)
    s = result.summary
    assert (s["win_rate"], s["tie_rate"], s["loss_rate"]) == (4 / 6, 1 / 6, 1 / 6)
    assert s["score"] == pytest.approx(4.5 / 6)
    # mean lengths in completion tokens (the scripted model counts words): A 3,3,3,3,2,2 and B 2,2,2,2,3,3
    assert s["mean_tokens_a"] == pytest.approx(16 / 6) and s["mean_tokens_b"] == pytest.approx(14 / 6)
    # P(response 1 better): 0.5 where content decides (q0-q3, q5), 0.75 where position does (q4)
    assert s["position_1_preference"] == pytest.approx((5 * 0.5 + 0.75) / 6)

    # every pair was judged twice, A first then A second, and each order saw the two answers swapped
    assert len(judge.prob_texts) == 12
    rows = pl.from_arrow(Store.open(data_root).read("evals"))
    assert rows.height == 6 and set(rows["kind"]) == {"winrate"} and set(rows["judge_mode"]) == {"forced"}
    by_prompt = {p: r for p, r in zip(rows["prompt_id"], rows.to_dicts())}
    win = by_prompt[prompt_id("q0")]
    assert (win["pref_a_first"], win["pref_a_second"], win["outcome"]) == (0.75, 0.75, "win")
    biased = by_prompt[prompt_id("q4")]
    assert (biased["pref_a_first"], biased["pref_a_second"]) == (0.75, 0.25)
    assert (biased["preference"], biased["outcome"]) == (0.5, "tie")
    assert by_prompt[prompt_id("q5")]["outcome"] == "loss"
    assert set(rows["snapshot_id"]) == {"snap-a"} and set(rows["other_snapshot_id"]) == {"snap-b"}
    generations = pl.from_arrow(Store.open(data_root).read("generations"))
    assert set(rows["generation_id"]) | set(rows["other_generation_id"]) == set(generations["generation_id"])
    assert Store.open(data_root).read("evals").schema == EVALS

    def no_model(*_):
        raise AssertionError("a cached win rate must not load a model")

    with store.writing():
        again = winrate(store, snapshot_a="snap-a", snapshot_b="snap-b", judge_id="judge", prompts=_prompts(),
                        prompt_set="set-1", generate_cfg=GenerateConfig(temperature=0.0, max_new_tokens=16),
                        judge_settings=PairwiseJudgeSettings(batch_size=4), load_generator=no_model,
                        load_judge=no_model, resamples=500)
    assert again.version == result.version and again.reused == 6 and again.summary["win_rate"] == 4 / 6


def test_outcome_rules():
    assert outcome(0.9, 0.6) == "win" and outcome(0.1, 0.4) == "loss"
    assert outcome(0.9, 0.1) == "tie" and outcome(0.5, 0.9) == "tie"
    assert rates(["win", "win", "tie", "loss"]) == {"win": 0.5, "tie": 0.25, "loss": 0.25, "score": 0.625}


def test_bootstrap_interval():
    assert bootstrap_intervals(["win"] * 10, resamples=200)["win"] == (1.0, 1.0)
    half = ["win"] * 16 + ["loss"] * 16
    intervals = bootstrap_intervals(half, resamples=2000, seed=3)
    low, high = intervals["score"]
    # close to the normal approximation 0.5 +- 1.96 * sqrt(0.25 / 32) = 0.5 +- 0.173
    assert low == pytest.approx(0.5 - 0.173, abs=0.035) and high == pytest.approx(0.5 + 0.173, abs=0.035)
    assert intervals == bootstrap_intervals(half, resamples=2000, seed=3)  # seeded: reproducible
    assert intervals["tie"] == (0.0, 0.0)


class _LengthReward:
    """A reward model that likes long answers."""

    def score(self, prompts, responses):
        return [float(len(r.split())) for r in responses]


def test_reward_judge_compares_rewards(data_root):
    store = Store.open(data_root, create=True)
    with store.writing():
        result = _run(store, _LengthReward(), reward=True)
    rows = pl.from_arrow(Store.open(data_root).read("evals"))
    assert set(rows["judge_mode"]) == {"reward"} and rows["template_hash"].null_count() == 6
    outcomes = dict(zip(rows["prompt_id"], rows["outcome"]))
    # A is longer on q0..q3 (3 vs 2 words), shorter on q4 and q5 (2 vs 3)
    assert [outcomes[prompt_id(p)] for p in CASES] == ["win"] * 4 + ["loss"] * 2
    assert result.summary["win_rate"] == 4 / 6 and result.summary["tie_rate"] == 0
    assert "position_1_preference" not in result.summary


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return make_tiny_model(folder / "a", seed=0), make_tiny_model(folder / "b", seed=1)


def test_cli_winrate_on_tiny_models(tsr, tiny_models, tmp_path, data_root):
    a, b = tiny_models
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "What is the capital of France?"}\n{"prompt": "Write a poem about the sea."}\n'
                       '{"prompt": "Name a colour."}\n')
    tsr("models", "add", str(a), "--name", "tiny-a", "--role", "m0")
    tsr("models", "add", str(b), "--name", "tiny-b")
    out = tsr("eval", "winrate", "--a", "tiny-a", "--b", "tiny-b", "--prompts", str(prompts), "--judge", "tiny-a",
              "--max-new-tokens", "4", "--bootstrap", "100").output
    assert "on 3 prompts" in out and "95% CI" in out and "mean length: A" in out
    rows = pl.from_arrow(Store.open(data_root).read("evals"))
    assert rows.height == 3 and rows["preference"].is_between(0, 1).all()
    assert "0 judged, 3 reused" in tsr("eval", "winrate", "--a", "tiny-a", "--b", "tiny-b", "--prompts",
                                       str(prompts), "--judge", "tiny-a", "--max-new-tokens", "4",
                                       "--bootstrap", "100").output
    listed = tsr("sql", "--query", "evals", "--format", "json").output
    assert '"kind": "winrate"' in listed and '"prompts": 3' in listed
    shown = tsr("stats", "--evals").output
    assert "win / tie / loss" in shown and "winrate" in shown
    assert tsr("stats", "--evals", "--format", "csv").output.startswith("eval_version,kind")
    report = tmp_path / "report.html"
    tsr("report", "--out", str(report))
    text = report.read_text("utf-8")
    (version,) = {m.version for m in Store.open(data_root).manifests(table="evals")}
    assert "<h2>Evaluations</h2>" in text and f">{version}<" in text and "No evaluations yet" not in text
