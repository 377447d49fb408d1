"""Backends and the judge: the hf backend on a tiny random llama, the vLLM translation on stand-ins, judge parsing
and modes on the scripted fake. Fast: one tiny model per module, no downloads, no vLLM needed."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from builder import judging
from builder.backends.base import (
    SCORE_PREFIX,
    BackendMissing,
    GenRequest,
    SamplingSettings,
    ScoreTokens,
    ScriptedGenerator,
    get_generator,
    score_tokens,
)
from builder.backends.vllm import (
    VLLMGroup,
    digit_params,
    group_requests,
    probs_from_logprobs,
    results_from_output,
)
from builder.errors import TsrError
from tests.tiny_model import make_tiny_model

TEMPLATE = "Rate this.\nQuestion: {prompt}\nAnswer: {response}\nEnd with `Score: <0-5>`."
SAMPLE = SamplingSettings(temperature=1.0, top_p=0.9, max_new_tokens=12)


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny(tiny_folder: Path):
    from builder.backends.hf import HFGenerator

    # float32: batch-composition tests compare sampled text, and fp32 keeps padding's numeric noise negligible
    return HFGenerator(str(tiny_folder), dtype="float32", batch_size=4)


def run(generator, requests, sampling=SAMPLE) -> dict:
    return {r.key: r for batch in generator.generate(requests, sampling) for r in batch}


# ---------------------------------------------------------------------------------------------------------------
# hf backend


def test_generate_shapes_counts_and_batches(tiny):
    requests = [GenRequest(f"k{i}", chat("What is the capital of France?" + " Please." * i), seed=i)
                for i in range(5)]
    batches = list(tiny.generate(requests, SAMPLE))
    assert [len(b) for b in batches] == [4, 1]
    results = {r.key: r for b in batches for r in b}
    assert set(results) == {r.key for r in requests}
    for request in requests:
        result = results[request.key]
        assert result.prompt_tokens == len(tiny.tokenizer.encode(tiny.render(request.messages),
                                                                 add_special_tokens=False))
        assert 1 <= result.completion_tokens <= SAMPLE.max_new_tokens
        assert result.finish_reason in ("stop", "length")
        if result.finish_reason == "length":
            assert result.completion_tokens == SAMPLE.max_new_tokens
    # a random 400-token model almost never writes eos in 12 tokens
    assert any(r.finish_reason == "length" for r in results.values())


def test_stop_on_any_generation_config_eos(tiny_folder, tmp_path):
    """finish_reason is "stop" when any of generation_config's eos ids ends the row; counts include that token."""
    import shutil

    from transformers import GenerationConfig

    from builder.backends.hf import HFGenerator

    folder = tmp_path / "model"
    shutil.copytree(tiny_folder, folder)
    greedy = SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=6)
    first = HFGenerator(str(folder), dtype="float32")
    inputs = first.tokenizer(first.render(chat("Hello")), return_tensors="pt", add_special_tokens=False)
    tokens = first.model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    third = int(tokens[2])
    assert third not in tokens[:2].tolist()
    config = GenerationConfig.from_pretrained(folder)
    config.eos_token_id = [first.tokenizer.eos_token_id, third]
    config.save_pretrained(folder)

    generator = HFGenerator(str(folder), dtype="float32")
    assert generator.eos_token_ids == (first.tokenizer.eos_token_id, third)
    results = run(generator, [GenRequest("s", chat("Hello"), 0),
                              GenRequest("l", chat("Hello, write a much longer poem about the sea"), 0)], greedy)
    # the short row ends early inside a batch whose other row runs on: padding after its eos is not counted
    assert (results["s"].finish_reason, results["s"].completion_tokens) == ("stop", 3)
    assert results["s"].text == first.tokenizer.decode(tokens[:2])
    assert results["l"].completion_tokens <= 6


def test_same_seed_same_text_in_any_batch(tiny):
    target = GenRequest("t", chat("What is the capital of France?"), seed=1234)
    alone = run(tiny, [target])["t"].text
    others = [GenRequest(f"o{i}", chat("Write a poem about the sea" + ", the wind" * (3 * i)), seed=i)
              for i in range(3)]
    for batch in ([others[0], target], [*others, target], [others[2], target, others[1]]):
        assert run(tiny, batch)["t"].text == alone
    twice = run(tiny, [target, GenRequest("u", target.messages, seed=1234)])
    assert twice["u"].text == alone
    assert run(tiny, [GenRequest("t", target.messages, seed=99)])["t"].text != alone


def test_greedy_ignores_seed(tiny):
    greedy = SamplingSettings(temperature=0.0, top_p=1.0, max_new_tokens=8)
    texts = run(tiny, [GenRequest("a", chat("Hello"), 1), GenRequest("b", chat("Hello"), 2)], greedy)
    assert texts["a"].text == texts["b"].text


def test_digit_probs_renormalized_and_batch_independent(tiny):
    texts = [tiny.render(chat("Question " * n), "Fine.\n" + SCORE_PREFIX) for n in (1, 7, 3)]
    probs = tiny.digit_probs(texts)
    assert len(probs) == 3
    for row in probs:
        assert len(row) == 6 and math.isclose(sum(row), 1.0, rel_tol=1e-5) and min(row) > 0
    assert tiny.digit_probs(texts[1:2])[0] == pytest.approx(probs[1], abs=1e-5)


def test_tiny_tokenizer_score_digit_is_one_token(tiny):
    tokens = tiny.score_tokens
    assert tokens.bridge == ()
    assert [tiny.tokenizer.decode([t]) for t in tokens.digits] == [f" {d}" for d in range(6)]


def test_score_tokens_both_conventions():
    # digit merged with its space (" 3"), as GPT-2 style BPEs write it
    merged = {"Score:": [7, 8], **{f"Score: {d}": [7, 8, 20 + d] for d in range(6)}}
    assert score_tokens(merged.__getitem__) == ScoreTokens(bridge=(), digits=(20, 21, 22, 23, 24, 25))
    # digits split off (" " then "3"), as SmolLM2, Llama 3 and Qwen write it
    split = {"Score:": [7, 8], **{f"Score: {d}": [7, 8, 99, 30 + d] for d in range(6)}}
    assert score_tokens(split.__getitem__) == ScoreTokens(bridge=(99,), digits=(30, 31, 32, 33, 34, 35))
    broken = {"Score:": [7, 8], **{f"Score: {d}": [7, 50 + d] for d in range(6)}}
    with pytest.raises(ValueError, match="differently"):
        score_tokens(broken.__getitem__)


def test_hidden_state_means(tiny):
    means = tiny.hidden_state_means(["Paris is the capital of France.", "Score: 3", ""])
    assert [len(m) for m in means] == [16, 16, 16]
    assert means[2] == [0.0] * 16
    assert tiny.hidden_state_means(["Score: 3"])[0] == pytest.approx(means[1], abs=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# judge: parsing


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("Good answer.\nScore: 4", 4),
        ("score: 0", 0),
        ("SCORE: 5", 5),
        ("**Score: 3**", 3),
        ("**Score:** 2", 2),
        ("Score: **1**", 1),
        ("Score: 3.", 3),
        ("**Score: 3.**", 3),
        ("Total score: 4", 4),
        ("Score: 4/5", 4),
        ("Score: 2 points", 2),
        ("Score:5", 5),
        ("Score: 2\nOn reflection...\nScore: 5", 5),  # the last score line wins
        ("Score: 4\nThanks for reading!", 4),  # trailing chatter after the score line
        ("  Score: 1  \n\n", 1),
    ],
)
def test_parse_score_ok(reply, score):
    assert judging.parse_score(reply) == (score, None)


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("", "empty reply"),
        ("   \n", "empty reply"),
        ("A fine answer with no verdict.", "no 'Score: N' line"),
        ("Score: <0-5>", "no 'Score: N' line"),
        ("I would score it 3 because it is good", "no 'Score: N' line"),
        ("Score: 7", "outside 0-5"),
        ("Score: -1", "outside 0-5"),
        ("Score: 8/10", "not on the 0-5 scale"),
        ("Score: 3.5", "not a whole number"),
        ("Score: 4\nScore: 9", "outside 0-5"),  # the last score line decides, even when it is out of range
    ],
)
def test_parse_score_errors(reply, error):
    score, problem = judging.parse_score(reply)
    assert score is None and error in problem


def test_expected_score_and_cut():
    assert judging.expected_score([0, 0, 0, 1, 0, 0]) == 3
    assert judging.expected_score([0.5, 0, 0, 0, 0, 0.5]) == 2.5
    assert judging.cut_at_score("Clear and useful.\n**Score: 9**") == "Clear and useful."
    assert judging.cut_at_score("Helpful. Score") == "Helpful."
    assert judging.cut_at_score("No verdict here.  ") == "No verdict here."
    assert judging.forced_continuation("Good.\nScore: 4") == "Good.\nScore:"
    assert judging.forced_continuation("Score: 4") == "Score:"


def test_template_render_hash_and_check(tmp_path):
    assert judging.render_template(TEMPLATE, "Q {x}", "A") == TEMPLATE.replace("{prompt}", "Q {x}").replace(
        "{response}", "A")
    assert judging.template_hash(TEMPLATE) == judging.template_hash(str(TEMPLATE))
    assert judging.template_hash(TEMPLATE) != judging.template_hash(TEMPLATE + " ")
    path = tmp_path / "rubric.txt"
    path.write_text("{prompt} only", "utf-8")
    with pytest.raises(TsrError, match="response"):
        judging.load_template(path)
    path.write_text("{prompt} {response} {other}", "utf-8")
    with pytest.raises(TsrError, match="placeholders"):
        judging.load_template(path)
    path.write_text(TEMPLATE, "utf-8")
    assert judging.load_template(path) == TEMPLATE


# ---------------------------------------------------------------------------------------------------------------
# judge: modes


ITEMS = [("a", "What is 2+2?", "4", 100), ("b", "Name a colour.", "Blue", 200)]


def test_generate_mode_averages_parsable_samples():
    replies = {("a", 0): "Right.\nScore: 5", ("a", 1): "Score: 4", ("a", 2): "no verdict",
               ("b", 0): "hmm", ("b", 1): "Score: 9", ("b", 2): "still nothing"}
    seen = {}

    def reply(request: GenRequest) -> str:
        item = "a" if "2+2" in request.messages[0]["content"] else "b"
        index = request.seed - (100 if item == "a" else 200)
        seen[(item, index)] = request.key
        return replies[(item, index)]

    fake = ScriptedGenerator(reply)
    a, b = judging.judge(fake, ITEMS, TEMPLATE, "generate", SAMPLE, samples=3)
    assert len(seen) == 6  # seeds seed+0..seed+2
    assert (a.score, a.scored_by, a.judge_samples) == (4.5, "generate", 2)
    assert a.parse_error == "no 'Score: N' line"  # the failing third sample is still reported
    assert a.raw_reply.split(judging.SAMPLE_SEPARATOR) == ["Right.\nScore: 5", "Score: 4", "no verdict"]
    assert (b.score, b.scored_by, b.judge_samples, b.digit_probs) == (None, None, 0, None)
    assert b.parse_error == "no 'Score: N' line"  # the last failure
    assert fake.prob_texts == []
    assert "Question: What is 2+2?\nAnswer: 4" in fake.requests[0].messages[0]["content"]


def test_generate_mode_reports_truncation():
    fake = ScriptedGenerator(lambda r: "word " * 30 + "Score: 3")
    (result,) = judging.judge(fake, ITEMS[:1], TEMPLATE, "generate", SAMPLE)
    assert result.score is None and result.parse_error == "no 'Score: N' line (reply cut at max_new_tokens)"


def test_forced_mode_cuts_reply_and_reads_digits():
    fake = ScriptedGenerator(["Decent answer.\n**Score: 9**", "Short.\nScore: 1"],
                             probs={"Decent": [0, 0, 1, 1, 0, 0], "Short": [0, 0, 0, 0, 0, 1]})
    a, b = judging.judge(fake, ITEMS, TEMPLATE, "forced", SAMPLE)
    assert fake.prob_texts[0].endswith("<|assistant|>\nDecent answer.\nScore:")
    assert (a.score, a.scored_by, a.judge_samples, a.parse_error) == (2.5, "forced", 1, None)
    assert a.digit_probs == [0, 0, 0.5, 0.5, 0, 0] and a.raw_reply == "Decent answer.\n**Score: 9**"
    assert b.score == 5


def test_forced_mode_without_justification():
    fake = ScriptedGenerator([], probs=[1, 0, 0, 0, 0, 1])
    results = judging.judge(fake, ITEMS, TEMPLATE, "forced", SamplingSettings(0.7, 1.0, 0), samples=3)
    assert fake.requests == []  # nothing generated
    assert [r.score for r in results] == [2.5, 2.5] and all(r.judge_samples == 1 for r in results)
    assert fake.prob_texts[0].endswith("<|assistant|>\nScore:") and results[0].raw_reply == ""


def test_forced_mode_averages_sample_distributions():
    fake = ScriptedGenerator(["first", "second"], probs={"first": [1, 0, 0, 0, 0, 0], "second": [0, 0, 0, 0, 0, 1]})
    (result,) = judging.judge(fake, ITEMS[:1], TEMPLATE, "forced", SAMPLE, samples=2)
    assert result.digit_probs == [0.5, 0, 0, 0, 0, 0.5] and result.score == 2.5 and result.judge_samples == 2


def test_auto_mode_uses_parsed_score_else_forced():
    fake = ScriptedGenerator(["Great.\nScore: 5", "Meh, I'd score it low"], probs=[0, 1, 0, 0, 0, 0])
    a, b = judging.judge(fake, ITEMS, TEMPLATE, "auto", SAMPLE)
    assert (a.score, a.scored_by, a.digit_probs) == (5, "generate", None)
    assert (b.score, b.scored_by, b.judge_samples) == (1.0, "forced", 1)
    assert b.parse_error == "no 'Score: N' line"
    assert fake.prob_texts == [fake.render(fake.requests[1].messages, "Meh, I'd\nScore:")]


def test_judge_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        judging.judge(ScriptedGenerator(), ITEMS, TEMPLATE, "vote", SAMPLE)
    with pytest.raises(ValueError, match="max_new_tokens"):
        judging.judge(ScriptedGenerator(), ITEMS, TEMPLATE, "generate", SamplingSettings(0.7, 1.0, 0))


def test_forced_and_auto_on_tiny_model(tiny):
    items = [("x", "What is the capital of France?", "Paris.", 1), ("y", "Write a poem.", "The sea, the sky.", 2)]
    sampling = SamplingSettings(temperature=0.7, top_p=1.0, max_new_tokens=8)
    forced = judging.judge(tiny, items, TEMPLATE, "forced", sampling)
    for result in forced:
        assert result.scored_by == "forced" and 0 <= result.score <= 5
        assert math.isclose(sum(result.digit_probs), 1, rel_tol=1e-5)
        assert result.score == pytest.approx(judging.expected_score(result.digit_probs))
    # the random model never writes a score line, so auto falls back to forced on the same justification
    auto = judging.judge(tiny, items, TEMPLATE, "auto", sampling)
    for got, want in zip(auto, forced):
        assert got.scored_by == "forced" and got.parse_error is not None
        assert got.raw_reply == want.raw_reply and got.score == pytest.approx(want.score, abs=1e-6)
    bare = judging.judge(tiny, items, TEMPLATE, "forced", SamplingSettings(0.7, 1.0, 0))
    assert all(r.raw_reply == "" and r.scored_by == "forced" for r in bare)


# ---------------------------------------------------------------------------------------------------------------
# scripted fake and registry


def test_scripted_generator_queue_and_length():
    fake = ScriptedGenerator(["one two three", "a b c d e f"], batch_size=1)
    batches = list(fake.generate([GenRequest("p", chat("x"), 0), GenRequest("q", chat("y"), 0)],
                                 SamplingSettings(1.0, 1.0, 4)))
    (p,), (q,) = batches
    assert (p.text, p.finish_reason, p.completion_tokens) == ("one two three", "stop", 3)
    assert (q.text, q.finish_reason, q.completion_tokens) == ("a b c d", "length", 4)
    with pytest.raises(IndexError, match="no reply queued"):
        list(fake.generate([GenRequest("r", chat("z"), 0)], SAMPLE))
    fake.enqueue("later")
    assert run(fake, [GenRequest("r", chat("z"), 0)])["r"].text == "later"


def test_scripted_generator_default_is_deterministic():
    fake = get_generator("fake", "ignored")
    assert fake.name == "fake"
    requests = [GenRequest("a", chat("x"), 1), GenRequest("b", chat("x"), 2)]
    first, again = run(fake, requests), run(ScriptedGenerator(), requests)
    assert first["a"].text == again["a"].text != first["b"].text
    assert fake.digit_probs(["t"]) == ScriptedGenerator().digit_probs(["t"])
    assert math.isclose(sum(fake.digit_probs(["t"])[0]), 1)


def test_unknown_backend():
    with pytest.raises(TsrError, match="unknown backend"):
        get_generator("tgi", "x")


def test_backend_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(BackendMissing, match=r"pip install 'temporal-sr\[vllm\]'"):
        get_generator("vllm", "some/model")


# ---------------------------------------------------------------------------------------------------------------
# vLLM translation, with stand-ins for vllm's output classes


@dataclass
class FakeCompletionOutput:
    """Stand-in for vllm.CompletionOutput."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None


@dataclass
class FakeRequestOutput:
    """Stand-in for vllm.RequestOutput."""

    prompt_token_ids: list[int]
    outputs: list[FakeCompletionOutput] = field(default_factory=list)


@dataclass
class FakeLogprob:
    """Stand-in for vllm.logprobs.Logprob."""

    logprob: float


def render_stub(messages: list[dict]) -> str:
    return "P:" + messages[0]["content"]


def test_group_requests_consecutive_seeds_become_one_request():
    requests = [GenRequest(f"a{i}", chat("A"), 10 + i) for i in (2, 0, 1)] + [GenRequest("b0", chat("B"), 5)]
    groups = group_requests(requests, SAMPLE, render_stub)
    assert groups == [
        VLLMGroup("P:A", {"temperature": 1.0, "top_p": 0.9, "max_tokens": 12, "n": 3, "seed": 10},
                  (("a0",), ("a1",), ("a2",))),
        VLLMGroup("P:B", {"temperature": 1.0, "top_p": 0.9, "max_tokens": 12, "n": 1, "seed": 5}, (("b0",),)),
    ]


def test_group_requests_gaps_duplicates_and_greedy():
    requests = [GenRequest("x", chat("A"), 1), GenRequest("y", chat("A"), 7), GenRequest("z", chat("A"), 8),
                GenRequest("x2", chat("A"), 1)]
    groups = group_requests(requests, SAMPLE, render_stub)
    assert [(g.params["seed"], g.n, g.keys) for g in groups] == [(1, 1, (("x", "x2"),)),
                                                                 (7, 2, (("y",), ("z",)))]
    greedy = group_requests(requests, SamplingSettings(0.0, 1.0, 4), render_stub)
    assert [(g.params["seed"], g.n, g.keys) for g in greedy] == [(None, 1, (("x", "y", "z", "x2"),))]


def test_results_from_output_maps_samples_to_keys():
    group = VLLMGroup("P:A", {"n": 2, "seed": 7}, (("y",), ("z", "z2")))
    output = FakeRequestOutput([1, 2, 3], [FakeCompletionOutput(1, "second", [4, 5, 2], "stop"),
                                           FakeCompletionOutput(0, "first", [6, 7, 8, 9], "length")])
    rows = {r.key: r for r in results_from_output(group, output)}
    assert set(rows) == {"y", "z", "z2"}
    assert (rows["y"].text, rows["y"].prompt_tokens, rows["y"].completion_tokens, rows["y"].finish_reason) == (
        "first", 3, 4, "length")
    assert (rows["z2"].text, rows["z2"].completion_tokens, rows["z2"].finish_reason) == ("second", 3, "stop")
    with pytest.raises(RuntimeError, match="n=2"):
        results_from_output(group, FakeRequestOutput([1], output.outputs[:1]))
    aborted = FakeRequestOutput([1], [FakeCompletionOutput(0, "", [], "abort"), output.outputs[0]])
    with pytest.raises(RuntimeError, match="abort"):
        results_from_output(group, aborted)


def test_digit_params_and_probs_from_logprobs():
    tokens = ScoreTokens(bridge=(9,), digits=(30, 31, 32, 33, 34, 35))
    assert digit_params(tokens, processed_logprobs=True)["logprobs"] == 6
    params = digit_params(tokens, processed_logprobs=False)
    assert params["allowed_token_ids"] == [30, 31, 32, 33, 34, 35] and params["max_tokens"] == 1
    # raw logprobs: top tokens of the whole vocabulary; digits absent from them count as 0, the rest renormalize
    raw = {30: FakeLogprob(math.log(0.1)), 33: FakeLogprob(math.log(0.3)), 77: FakeLogprob(math.log(0.5))}
    assert probs_from_logprobs(raw, tokens.digits) == pytest.approx([0.25, 0, 0, 0.75, 0, 0])
    assert probs_from_logprobs({31: -0.5}, tokens.digits) == pytest.approx([0, 1, 0, 0, 0, 0])
