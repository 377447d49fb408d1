"""The served backend against a loopback server that answers with the response shapes vLLM documents for its
OpenAI-compatible API (chat completions; completions with `logprobs`), through the real `openai` client."""

from __future__ import annotations

import math

import pytest

from builder.backends.base import GenRequest, SamplingSettings
from builder.errors import TsrError

pytest.importorskip("openai")
from builder.backends.served import ServedGenerator, digit_distribution
from tests.vllm_standin import serve_in_thread

SAMPLING = SamplingSettings(temperature=1.0, top_p=1.0, max_new_tokens=16)


@pytest.fixture
def server():
    httpd = serve_in_thread()
    yield httpd
    httpd.shutdown()


def generator(server, **options) -> ServedGenerator:
    return ServedGenerator(f"http://127.0.0.1:{server.server_port}/v1", "smol", max_retries=options.pop("retries", 2),
                           **options)


def requests(k: int = 2) -> list[GenRequest]:
    return [GenRequest(key=f"p{p}-{i}", messages=[{"role": "user", "content": f"prompt {p}"}], seed=100 * p + i)
            for p in range(3) for i in range(k)]


def test_every_sample_is_its_own_request_with_its_own_seed(server):
    batches = list(generator(server, batch_size=4, max_in_flight=2).generate(requests(), SAMPLING))
    assert [len(b) for b in batches] == [4, 2]
    results = {r.key: r for batch in batches for r in batch}
    assert results["p1-1"].text.startswith("sample 101. Score: ") and results["p1-1"].completion_tokens == 4
    assert results["p1-1"].finish_reason == "length" and results["p1-1"].prompt_tokens == 7
    sent = [body for path, body in server.requests]
    assert sorted(b["seed"] for b in sent) == [0, 1, 100, 101, 200, 201]
    assert all(b["n"] == 1 and b["max_tokens"] == 16 and b["temperature"] == 1.0 for b in sent)


def test_a_greedy_server_is_refused_not_stored(server):
    server.behaviour = "greedy"
    with pytest.raises(TsrError, match=r"returned identical samples of one prompt at temperature 1.0.*do_sample"):
        list(generator(server).generate(requests(), SAMPLING))


def test_forced_mode_reads_the_digits_from_vllm_logprobs(server):
    server.fixed_logprobs = {"4": math.log(0.5), " 3": math.log(0.3), "5": math.log(0.1), "The": math.log(0.1)}
    (probs,) = generator(server).digit_probs(["rendered prompt ... Score: "])
    assert probs == pytest.approx([0, 0, 0, 0.3 / 0.9, 0.5 / 0.9, 0.1 / 0.9])
    path, body = server.requests[0]
    assert path.endswith("/completions") and body["logprobs"] == 20 and body["max_tokens"] == 1


def test_a_server_without_logprobs_names_itself_and_suggests_generate_mode(server):
    server.behaviour = "no-logprobs"
    with pytest.raises(TsrError, match=r"returned no log-probabilities: forced mode needs them; use --mode generate"):
        generator(server).digit_probs(["x"])


def test_a_5xx_is_retried_by_the_client(server):
    server.behaviour = "fail-once"
    (batch,) = list(generator(server).generate(requests(1)[:1], SAMPLING))
    assert batch[0].text.startswith("sample 0.") and len(server.requests) == 2


def test_failures_are_one_line(server):
    server.behaviour = "malformed"
    with pytest.raises(TsrError) as malformed:
        list(generator(server, retries=0).generate(requests(1)[:1], SAMPLING))
    port = server.server_port
    server.shutdown()
    server.server_close()
    with pytest.raises(TsrError, match=r"is unreachable") as down:
        list(ServedGenerator(f"http://127.0.0.1:{port}/v1", "smol", max_retries=0).generate(requests(1)[:1], SAMPLING))
    for error in (malformed.value, down.value):
        assert len(str(error).splitlines()) == 1 and f"127.0.0.1:{port}" in str(error)


def test_digit_distribution_counts_both_spellings_and_is_uniform_without_digits():
    assert digit_distribution({"2": math.log(0.25), " 2": math.log(0.25)}) == [0, 0, 1, 0, 0, 0]
    assert digit_distribution({"The": 0.0}) == pytest.approx([1 / 6] * 6)


def test_tsr_generate_and_judge_through_a_server(server, tsr, tmp_path, data_root):
    """The stages' rows through the openai backend: same schema and lineage as any backend, `backend` = openai."""
    import polars as pl

    from builder.store import Store
    from tests.tiny_model import make_tiny_model

    make_tiny_model(tmp_path / "tiny")
    tsr("models", "add", str(tmp_path / "tiny"), "--name", "tiny", "--role", "m0")
    profile = tmp_path / "served.yaml"
    profile.write_text("generate: {k: 2, max_new_tokens: 8}\nloop: {prompts_per_iteration: 2}\n"
                       "judge: {mode: generate, max_new_tokens: 8}\n")
    url = f"http://127.0.0.1:{server.server_port}/v1"
    out = tsr("judge", "--snapshot", "tiny", "--profile", str(profile), "--backend", "openai", "--base-url", url)
    assert "4 judged" in out.output
    store = Store.open(data_root)
    generations = pl.from_arrow(store.read("generations"))
    assert generations.height == 4 and set(generations["backend"]) == {"openai"}
    assert generations["text"].str.starts_with("sample ").all()
    (manifest,) = store.manifests(table="generations")
    assert manifest.stats["backend"] == "openai"  # a throughput setting: in the stats, not the version id
    # The server is asked for the snapshot's folder, the name `vllm serve FOLDER` and `transformers serve` give it.
    (snapshot_id,) = set(generations["snapshot_id"])
    assert {body["model"] for _, body in server.requests} == {str(data_root / "snapshots" / snapshot_id)}
    judgments = pl.from_arrow(store.read("judgments"))
    assert judgments.height == 4 and set(judgments["mode"]) == {"generate"}
    assert "match their manifests" in tsr("versions", "verify").output
