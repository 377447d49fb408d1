"""Served snapshots (`tsr models add --served`) and the engines tsr starts itself (`generate.serve_command`),
against the vLLM stand-in (tests/vllm_standin.py): in a thread, or as the process a serve_command starts."""

from __future__ import annotations

import json
import shlex
import sys
import urllib.error
import urllib.request
from pathlib import Path

import polars as pl
import pytest

from builder.snapshot import served_snapshot_id
from builder.store import Store
from tests.tiny_model import make_tiny_model
from tests.vllm_standin import serve_in_thread

pytest.importorskip("openai")

STANDIN = f"{shlex.quote(sys.executable)} -m tests.vllm_standin --port {{port}} {{model}}"
PROFILE = """
generate: {k: 2, temperature: 1.0, top_p: 1.0, max_new_tokens: 6, batch_size: 4%s}
judge: {mode: %s, samples: 1, temperature: 1.0, max_new_tokens: 4, batch_size: 8}
train: {learning_rate: 0.01, beta: 0.1, epochs: 1, global_batch: 2, per_device_batch: 2, warmup_ratio: 0.0,
        max_length: 512, bf16: "false", gradient_checkpointing: false}
loop: {chunks: 5, prompts_per_iteration: 3}
"""


@pytest.fixture
def server():
    httpd = serve_in_thread(("smol", "judge-70b"))
    yield httpd
    httpd.shutdown()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def profile(tmp_path: Path, generate: str = "", mode: str = "generate") -> str:
    path = tmp_path / "profile.yaml"
    path.write_text(PROFILE % (generate, mode))
    return str(path)


def url(server, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{server.server_port}/v1"


def store_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_a_served_model_is_keyed_by_its_name_and_revision_never_the_url_or_key(tsr, server, data_root,
                                                                              monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-secret-123")
    out = tsr("models", "add", "--served", url(server), "--model", "judge-70b", "--api-key-env", "JUDGE_KEY").output
    unpinned = served_snapshot_id("judge-70b", None)
    assert f"snapshot {unpinned}  judge-70b  (judge, served by {url(server)})" in out
    assert "reports no revision" in out  # vLLM's model list has none: the user is told to pin it
    moved = tsr("models", "add", "--served", url(server, "localhost"), "--model", "judge-70b",
                "--api-key-env", "JUDGE_KEY").output
    assert unpinned in moved  # another host, same model: same snapshot, the endpoint moves
    endpoints = json.loads((data_root / "endpoints.json").read_text())
    assert endpoints == {unpinned: {"base_url": url(server, "localhost"), "api_key_env": "JUDGE_KEY"}}
    pinned = tsr("models", "add", "--served", url(server), "--model", "judge-70b", "--revision", "abc123").output
    assert served_snapshot_id("judge-70b", "abc123") in pinned and pinned != moved
    assert b"sk-secret-123" not in store_bytes(data_root)
    store = Store.open(data_root)
    assert not any("endpoints.json" in f["path"] for m in store.manifests() for f in m.files)
    listing = tsr("models", "list").output
    assert "[served: judge-70b@unpinned]" in listing and "[served: judge-70b@abc123]" in listing
    assert "match their manifests" in tsr("versions", "verify").output


@pytest.mark.parametrize(("args", "message"), [
    (["--served", "ftp://x/v1", "--model", "smol"], "--served 'ftp://x/v1': not an http(s) URL"),
    (["--served", "http://u:pw@127.0.0.1:1/v1", "--model", "smol"], "the URL holds credentials"),
    (["--served", "{url}", "--model", "gpt-9"], "does not serve model 'gpt-9' (it lists: judge-70b, smol)"),
    (["--served", "http://127.0.0.1:9/v1", "--model", "smol"], "server http://127.0.0.1:9/v1 is unreachable"),
    (["--served", "{url}", "--model", "smol", "--role", "m0"], "--role m0: a served model generates and judges"),
    (["--served", "{url}"], "--served URL and --model NAME go together"),
    (["--served", "{url}", "--model", "smol", "--api-key-env", "not a name"], "not an environment variable name"),
])
def test_a_refused_served_model_is_one_line_and_writes_nothing(tsr, server, data_root, args, message):
    result = tsr("models", "add", *[a.replace("{url}", url(server)) for a in args], expect=1)
    assert result.output.strip().splitlines() == [f"Error: {result.output.strip()[7:]}"]
    assert message in result.output
    assert not data_root.exists()


def test_a_served_judge_judges_the_loop_s_generations(tsr, server, tiny_model, tmp_path, data_root):
    tsr("models", "add", str(tiny_model), "--name", "tiny", "--role", "m0")
    tsr("models", "add", "--served", url(server), "--model", "judge-70b", "--name", "big-judge")
    out = tsr("judge", "--snapshot", "tiny", "--judge", "big-judge", "--profile", profile(tmp_path)).output
    assert "6 judged" in out
    store = Store.open(data_root)
    generations = pl.from_arrow(store.read("generations"))
    assert set(generations["backend"]) == {"hf"}  # the policy is in-process; only the judge is served
    judgments = pl.from_arrow(store.read("judgments"))
    assert set(judgments["judge_id"]) == {served_snapshot_id("judge-70b", None)}
    assert judgments["score"].is_not_null().all() and set(judgments["mode"]) == {"generate"}
    assert {body["model"] for _, body in server.requests} == {"judge-70b"}

    forced = tsr("judge", "--snapshot", "tiny", "--judge", "big-judge", "--profile", profile(tmp_path, mode="forced"),
                 expect=1)
    assert "has no local tokenizer; use --mode generate" in forced.output
    (data_root / "endpoints.json").unlink()  # as after a pull: the data, not where it is served
    before = store_bytes(data_root)
    lost = tsr("judge", "--snapshot", "tiny", "--judge", "big-judge", "--profile", profile(tmp_path), "--samples", "2",
               expect=1)
    assert "this store has no endpoint for it" in lost.output and store_bytes(data_root) == before


def test_the_whole_loop_on_engines_tsr_starts_and_stops(tsr, tiny_model, tmp_path, data_root):
    """`tsr pairs --iter 1` with generate.serve_command: an engine on M0, one on the trained M_f, each stopped."""
    tsr("models", "add", str(tiny_model), "--name", "tiny", "--role", "m0")
    settings = profile(tmp_path, f', backend: openai, serve_command: "{STANDIN}"', mode="forced")
    out = tsr("pairs", "--iter", "1", "--method", "tsr", "--m0", "tiny", "--profile", settings).output
    assert "iter 1 d2" in out
    store = Store.open(data_root)
    generations = pl.from_arrow(store.read("generations"))
    assert set(generations["backend"]) == {"openai"} and generations["snapshot_id"].n_unique() == 2  # M0, M_f
    judgments = pl.from_arrow(store.read("judgments"))
    assert set(judgments["mode"]) == {"forced"} and judgments["score"].n_unique() > 1
    assert pl.from_arrow(store.read("pairs")).height > 0
    logs = sorted((data_root / "_logs").glob("serve-*.log"))
    assert len(logs) >= 2  # M0's engine, M_f's engine (and M0's again to judge M_f)
    for log in logs:  # every engine is gone: its port no longer answers
        port = int(log.stem.rsplit("-", 1)[1])
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
    assert "match their manifests" in tsr("versions", "verify").output


def test_an_engine_that_dies_before_serving_is_one_line_naming_its_log(tsr, tiny_model, tmp_path, data_root):
    tsr("models", "add", str(tiny_model), "--name", "tiny", "--role", "m0")
    engine = tmp_path / "engine.py"
    engine.write_text("import sys\nprint('loading', sys.argv[1])\nsys.exit('no GPU: CUDA unavailable')\n")
    dying = f"{shlex.quote(sys.executable)} {engine} {{model}} {{port}}"
    settings = profile(tmp_path, f', backend: openai, serve_command: "{dying}"')
    result = tsr("generate", "--snapshot", "tiny", "--profile", settings, expect=1)
    (line,) = result.output.strip().splitlines()
    assert "exited with 1 before it served; see" in line and "(last line: no GPU: " in line
    assert not Store.open(data_root).manifests(table="generations")


def test_the_text_path_renders_the_snapshot_s_own_template(tsr, server, tiny_model, tmp_path, data_root):
    from transformers import AutoTokenizer

    tsr("models", "add", str(tiny_model), "--name", "tiny", "--role", "m0")
    settings = profile(tmp_path, f', backend: openai, base_url: "{url(server)}", served_api: completions')
    tsr("generate", "--snapshot", "tiny", "--profile", settings)
    sent = [body for path, body in server.requests]
    assert sent and all("messages" not in body for body in sent)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompts = pl.from_arrow(Store.open(data_root).read("prompts"))
    expected = {tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                              add_generation_prompt=True) for text in prompts["text"]}
    assert {body["prompt"] for body in sent} <= expected


@pytest.mark.parametrize(("generate", "message"), [
    (', backend: openai, serve_command: "vllm serve {model}"', "must contain {port}"),
    (', backend: openai, serve_command: "vllm serve {model} --port {port} --x {gpu}"', "unknown placeholder {gpu}"),
    (', backend: openai, base_url: "http://127.0.0.1:1/v1", serve_command: "x {model} {port}"',
     "exclude each other"),
    (', backend: openai, served_api: text, base_url: "http://127.0.0.1:1/v1"', "served_api"),
])
def test_bad_serving_settings_are_one_line(tsr, tiny_model, tmp_path, data_root, generate, message):
    tsr("models", "add", str(tiny_model), "--name", "tiny", "--role", "m0")
    before = store_bytes(data_root)
    result = tsr("generate", "--snapshot", "tiny", "--profile", profile(tmp_path, generate), expect=None)
    assert result.exit_code != 0
    (line,) = result.output.strip().splitlines()
    assert message in line and store_bytes(data_root) == before


def test_a_win_rate_under_a_served_judge_reads_written_verdicts(tsr, server, tiny_model, tmp_path, data_root):
    """tsr eval winrate --judge <served>: generate mode by default; replies without `Score: 1|2` are counted."""
    other = make_tiny_model(tmp_path / "other", seed=1)
    tsr("models", "add", str(tiny_model), "--name", "tiny-a", "--role", "m0")
    tsr("models", "add", str(other), "--name", "tiny-b")
    tsr("models", "add", "--served", url(server), "--model", "judge-70b", "--name", "big-judge")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(6)))
    out = tsr("eval", "winrate", "--a", "tiny-a", "--b", "tiny-b", "--prompts", str(prompts), "--judge", "big-judge",
              "--max-new-tokens", "4", "--bootstrap", "50").output
    assert "judge big-judge (generate; 6 judged" in out
    rows = pl.from_arrow(Store.open(data_root).read("evals"))
    assert set(rows["judge_mode"]) == {"generate"} and rows.height == 6
    # The stand-in's verdict digit is a hash of the request: count the replies that are not 1 or 2.
    judged = [body for path, body in server.requests if path.endswith("/chat/completions")]
    replies = [reply_text(body) for body in judged]
    unparsed = sum(1 for reply in replies if not reply.endswith(("Score: 1", "Score: 2")))
    assert len(judged) == 12 and rows["unparsed_verdicts"].sum() == unparsed
    assert f"unparsed verdicts: {unparsed} of 12 replies" in out
    assert set(rows["pref_a_first"]) <= {0.0, 0.5, 1.0}
    forced = tsr("eval", "winrate", "--a", "tiny-a", "--b", "tiny-b", "--prompts", str(prompts), "--judge",
                 "big-judge", "--judge-mode", "forced", expect=1)
    assert "has no local tokenizer; use --mode generate" in forced.output


def reply_text(body: dict) -> str:
    """The stand-in's reply to a recorded chat request."""
    from tests.vllm_standin import Replay

    return Replay._text(body, json.dumps(body["messages"]))


def test_an_engine_that_is_not_installed_is_one_line_and_leaves_no_log(tsr, tiny_model, tmp_path, data_root):
    tsr("models", "add", str(tiny_model), "--name", "tiny", "--role", "m0")
    settings = profile(tmp_path, ', backend: openai, serve_command: "no-such-engine-xyz serve {model} --port {port}"')
    result = tsr("generate", "--snapshot", "tiny", "--profile", settings, expect=1)
    assert result.output.strip().splitlines() == [
        f"Error: generate.serve_command: 'no-such-engine-xyz' not found (next to {sys.executable} or on PATH)"]
    assert not list(data_root.glob("_logs/*"))
    assert not Store.open(data_root).manifests(table="generations")
