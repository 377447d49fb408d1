"""Issue 15, item 4: every profile setting and numeric flag is checked before the first write.

Each bad input goes through the CLI and must give a non-zero exit, at most two lines of output, no traceback, and
leave the data root as it was: not created when it did not exist, byte-identical when it did. Nothing here loads a
model: every failure must come before one would load.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

from builder.config import (
    LR_SCHEDULERS,
    SECTIONS,
    UNSUPPORTED_SCHEDULERS,
    GenerateConfig,
    JudgeConfig,
    LoopConfig,
    SFTConfig,
    TrainConfig,
    load_profile,
    profile_path,
    result_fields,
)
from builder.errors import TsrError


def tree_hashes(root: Path) -> dict[str, str] | None:
    """sha256 of every file under `root` (None: root does not exist)."""
    if not root.exists():
        return None
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_refused(result, *fragments: str) -> None:
    output = result.output
    assert result.exit_code != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, output
    for fragment in fragments:
        assert fragment in output, output


@pytest.fixture
def refused(tsr, data_root, tmp_path):
    """Run a bad command twice: on a missing data root (must stay missing) and on an existing store (must stay
    byte-identical)."""

    def check(args: list[str], *fragments: str) -> None:
        assert not data_root.exists()
        assert_refused(tsr(*args, expect=None), *fragments)
        assert not data_root.exists(), f"{args} created {data_root}"
        prompts = tmp_path / "seed-prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": f"Prompt {i}"}) + "\n" for i in range(3)), "utf-8")
        tsr("prompts", "import", str(prompts), "--chunks", "1")
        before = tree_hashes(data_root)
        assert_refused(tsr(*args, expect=None), *fragments)
        assert tree_hashes(data_root) == before, f"{args} changed the store"

    return check


# ---- profile settings -----------------------------------------------------------------------------------------

BAD_SETTINGS = [
    # generate
    ("generate: {k: two}", "generate.k must be an integer, got 'two'"),
    ("generate: {k: 2.5}", "generate.k must be an integer, got 2.5"),
    ("generate: {k: true}", "generate.k must be an integer, got true"),
    ("generate: {k: null}", "generate.k must be an integer, got null"),
    ("generate: {k: 0}", "generate.k must be at least 1, got 0"),
    ("generate: {k: -3}", "generate.k must be at least 1"),
    ("generate: {k: [1, 2]}", "generate.k must be an integer, got a list"),
    ("generate: {temperature: hot}", "generate.temperature must be a number, got 'hot'"),
    ("generate: {temperature: -1}", "generate.temperature must be >= 0, got -1"),
    ("generate: {temperature: .nan}", "generate.temperature must be a finite number"),
    ("generate: {temperature: .inf}", "generate.temperature must be a finite number"),
    ("generate: {temperature: false}", "generate.temperature must be a number, got false"),
    ("generate: {top_p: 0}", "generate.top_p must be in (0, 1], got 0"),
    ("generate: {top_p: 1.5}", "generate.top_p must be in (0, 1], got 1.5"),
    ("generate: {max_new_tokens: 0}", "generate.max_new_tokens must be at least 1"),
    ("generate: {seed: abc}", "generate.seed must be an integer, got 'abc'"),
    ("generate: {seed: -1}", "generate.seed must be in [0, 4294967295], got -1"),
    ("generate: {seed: 1.5}", "generate.seed must be an integer"),
    ("generate: {batch_size: 0}", "generate.batch_size must be at least 1"),
    ("generate: {backend: vlm}", "generate.backend must be one of hf, vllm, openai, got 'vlm' (did you mean 'vllm'?)"),
    ("generate: {backend: openai}", "generate.backend openai needs generate.base_url (the server's API root)"),
    ("generate: {backend: 3}", "generate.backend must be a string, got 3"),
    # judge
    ("judge: {temperature: -1}", "judge.temperature must be >= 0, got -1"),
    ("judge: {samples: 0}", "judge.samples must be at least 1"),
    ("judge: {samples: '2'}", "judge.samples must be an integer, got '2'"),
    ("judge: {mode: forcd}", "judge.mode must be one of generate, forced, auto, got 'forcd' (did you mean 'forced'?)"),
    ("judge: {max_new_tokens: -1}", "judge.max_new_tokens must be at least 0"),
    ("judge: {mode: generate, max_new_tokens: 0}", "judge.max_new_tokens 0 leaves generate mode"),
    ("judge: {template: 5}", "judge.template must be a string, got 5"),
    ("judge: {seed: x}", "judge.seed must be an integer"),
    ("judge: {batch_size: 0}", "judge.batch_size must be at least 1"),
    # train
    ("train: {beta: -1}", "train.beta must be > 0, got -1"),
    ("train: {beta: 0}", "train.beta must be > 0, got 0"),
    ("train: {learning_rate: fast}", "train.learning_rate must be a number, got 'fast'"),
    ("train: {learning_rate: 0}", "train.learning_rate must be > 0"),
    ("train: {epochs: 0}", "train.epochs must be > 0"),
    ("train: {max_length: 0}", "train.max_length must be at least 1"),
    ("train: {global_batch: 0}", "train.global_batch must be at least 1"),
    ("train: {per_device_batch: 0}", "train.per_device_batch must be at least 1"),
    ("train: {lr_scheduler: cosin}", "train.lr_scheduler must be one of linear, cosine"),
    ("train: {lr_scheduler: cosine_with_min_lr}", "'cosine_with_min_lr' needs scheduler arguments"),
    ("train: {lr_scheduler: polynomial, learning_rate: 1.0e-8}", "polynomial schedule"),
    ("train: {warmup_ratio: 1.5}", "train.warmup_ratio must be in [0, 1), got 1.5"),
    ("train: {lora_r: -1}", "train.lora_r must be at least 0"),
    ("train: {seed: abc}", "train.seed must be an integer"),
    ("train: {bf16: maybe}", "train.bf16 must be one of auto, true, false, mixed, got 'maybe'"),
    ("train: {gradient_checkpointing: sometimes}", "train.gradient_checkpointing must be true or false"),
    ("train: {gradient_checkpointing: 1}", "train.gradient_checkpointing must be true or false, got 1"),
    # sft
    ("sft: {max_length: 0}", "sft.max_length must be at least 1"),
    ("sft: {learning_rate: -1.0e-5}", "sft.learning_rate must be > 0"),
    ("sft: {epochs: three}", "sft.epochs must be a number"),
    ("sft: {lr_scheduler: nope}", "sft.lr_scheduler must be one of"),
    # loop
    ("loop: {chunks: 0}", "loop.chunks must be at least 1, got 0"),
    ("loop: {chunks: '5'}", "loop.chunks must be an integer, got '5'"),
    ("loop: {prompts_per_iteration: -1}", "loop.prompts_per_iteration must be at least 1, got -1"),
    ("loop: {prompts_per_iteration: 0}", "loop.prompts_per_iteration must be at least 1"),
    ("loop: {sr_k: -1}", "loop.sr_k must be at least 1, got -1"),
    ("loop: {sr_k: 2.0}", "loop.sr_k must be an integer"),
    # unknown keys and sections, with the nearest valid name
    ("generate: {temprature: 1.0}", "unknown generate setting 'temprature' (did you mean 'temperature'?)"),
    ("train: {learningrate: 1.0e-5}", "unknown train setting 'learningrate' (did you mean 'learning_rate'?)"),
    ("generate: {zzz: 1}", "unknown generate setting 'zzz'; known: k, temperature"),
    ("generat: {k: 2}", "unknown section 'generat' (did you mean 'generate'?)"),
    ("model: {name: x}", "unknown section 'model'; known: generate, judge, train, loop, sft"),
    ("1: {k: 2}", "unknown section '1'"),
    # sections that are not mappings, files that are not profiles
    ("generate: [1, 2]", "the generate section must be a mapping of settings"),
    ("generate:\n  - k: 2\n", "the generate section must be a mapping of settings"),
    ("train: 5", "the train section must be a mapping of settings (key: value), got 5"),
    ("loop: text", "the loop section must be a mapping of settings (key: value), got 'text'"),
    ("[1, 2]", "a profile is a mapping of sections"),
    ("just words", "a profile is a mapping of sections"),
    ("generate: {k: 2", "invalid YAML"),
    # YAML itself keeps the last of two equal keys; a profile that says two things is refused
    ("train:\n  beta: 0.1\n  beta: 0.2", "invalid YAML ('beta' given twice (line 3))"),
    ("train: {beta: 0.1}\ntrain: {beta: 0.2}", "invalid YAML ('train' given twice (line 2))"),
]


@pytest.mark.parametrize(("text", "message"), BAD_SETTINGS, ids=[t for t, _ in BAD_SETTINGS])
def test_bad_profile_setting_is_one_line_before_the_store(refused, tmp_path, text, message):
    profile = tmp_path / "bad.yaml"
    profile.write_text(text + "\n", "utf-8")
    refused(["generate", "--snapshot", "some-model", "--profile", str(profile)], str(profile), message)


@pytest.mark.parametrize("command", [
    ["judge", "--snapshot", "some-model"],
    ["pairs", "--iter", "1"],
    ["train", "--iter", "1"],
    ["eval", "winrate", "--a", "x", "--b", "y", "--judge", "z", "--prompts", "1"],
    ["sft"],
])
def test_every_profile_command_checks_its_profile_first(refused, tmp_path, command):
    profile = tmp_path / "bad.yaml"
    profile.write_text("train: {beta: -1}\n", "utf-8")
    refused([*command, "--profile", str(profile)], f"profile {profile}: train.beta must be > 0, got -1")


@pytest.mark.parametrize("command", [["pairs", "--iter", "1"], ["train", "--iter", "2"]])
def test_loop_commands_check_the_judge_template_first(refused, tmp_path, command):
    profile = tmp_path / "template.yaml"
    missing = tmp_path / "no-such-rubric.txt"
    profile.write_text(f"judge: {{template: {json.dumps(str(missing))}}}\n", "utf-8")
    refused([*command, "--profile", str(profile)], f"{missing}: no such judge template")


def test_stats_rescoring_judge_checks_its_profile_first(refused, tmp_path):
    profile = tmp_path / "bad.yaml"
    profile.write_text("judge: {samples: 0}\n", "utf-8")
    refused(["stats", "--judge", "x", "--profile", str(profile)], "judge.samples must be at least 1")


def test_flag_that_breaks_a_rule_says_so(refused):
    refused(["judge", "--snapshot", "x", "--mode", "generate", "--judge-max-new-tokens", "0"],
            "with command-line flags", "judge.max_new_tokens 0 leaves generate mode")


# ---- profile files --------------------------------------------------------------------------------------------


def _profile_file(tmp_path: Path, kind: str) -> tuple[str, list[str]]:
    if kind == "non-utf8":
        path = tmp_path / "latin1.yaml"
        path.write_bytes(b"# caf\xe9\ngenerate: {k: 2}\n")
        return str(path), [str(path), "line 1: not UTF-8 text"]
    if kind == "folder-yaml":
        path = tmp_path / "folder.yaml"
        path.mkdir()
        return str(path), [str(path), "is a folder, not a profile file"]
    if kind == "folder":
        path = tmp_path / "profiles"
        path.mkdir()
        return str(path) + "/", [str(path), "is a folder, not a profile file"]
    if kind == "missing":
        path = tmp_path / "missing.yaml"
        return str(path), [str(path), "no such profile file", "shipped: cpu-demo, paper"]
    if kind == "unknown-name":
        return "papr", ["no profile 'papr' (did you mean 'paper'?)", "shipped: cpu-demo, paper"]
    if kind == "name-with-slash":
        return "profiles/paper", ["profiles/paper", "no such profile file", "shipped: cpu-demo, paper"]
    if kind == "parent-dir":
        return "../paper", ["../paper", "shipped: cpu-demo, paper"]
    if kind == "empty-name":
        return "", ["empty profile name", "shipped: cpu-demo, paper"]
    raise AssertionError(kind)


FILE_KINDS = ["non-utf8", "folder-yaml", "folder", "missing", "unknown-name", "name-with-slash", "parent-dir",
              "empty-name"]


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_bad_profile_file_is_one_line_naming_it(refused, tmp_path, kind):
    profile, fragments = _profile_file(tmp_path, kind)
    refused(["generate", "--snapshot", "some-model", "--profile", profile], *fragments)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads a file without permissions")
def test_unreadable_profile_is_one_line(refused, tmp_path):
    path = tmp_path / "secret.yaml"
    path.write_text("generate: {k: 2}\n", "utf-8")
    path.chmod(0)
    try:
        refused(["generate", "--snapshot", "x", "--profile", str(path)], str(path), "cannot read")
    finally:
        path.chmod(0o644)


def test_unreadable_profile_message(tmp_path, monkeypatch):
    path = tmp_path / "secret.yaml"
    path.write_text("generate: {k: 2}\n", "utf-8")

    def denied(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(TsrError, match=re.escape(f"{path}: cannot read the profile (Permission denied)")):
        load_profile(str(path))


# ---- numeric flags --------------------------------------------------------------------------------------------

GEN = ["generate", "--snapshot", "some-model"]
JUDGE = ["judge", "--snapshot", "some-model"]
WINRATE = ["eval", "winrate", "--a", "x", "--b", "y", "--judge", "z"]

BAD_FLAGS = [
    (["prompts", "import", "PROMPTS", "--chunks", "0"], "'--chunks': 0 is not in the range x>=1"),
    (["prompts", "import", "PROMPTS", "--chunks", "-2"], "'--chunks'"),
    (["prompts", "import", "PROMPTS", "--chunk-size", "0"], "'--chunk-size': 0 is not in the range x>=1"),
    (["prompts", "import", "PROMPTS", "--chunks", "abc"], "'abc' is not a valid integer"),
    (["prompts", "import", "PROMPTS", "--seed", "-1"], "'--seed'"),
    ([*GEN, "--sample-offset", "-5"], "'--sample-offset': -5 is not in the range x>=0"),
    ([*GEN, "-k", "0"], "'-k': 0 is not in the range x>=1"),
    ([*GEN, "-k", "2.5"], "'-k': '2.5' is not a valid integer"),
    ([*GEN, "--batch-size", "0"], "'--batch-size'"),
    ([*GEN, "--chunk", "0"], "'--chunk': 0 is not in the range x>=1"),
    ([*GEN, "--chunk", "6"], "--chunk 6: the default prompts are split into 5 chunks"),
    ([*GEN, "--temperature", "-1"], "'--temperature'"),
    ([*GEN, "--temperature", "nan"], "'--temperature': 'nan' is not a finite number"),
    ([*GEN, "--temperature", "hot"], "'hot' is not a valid number"),
    ([*GEN, "--top-p", "0"], "'--top-p'"),
    ([*GEN, "--top-p", "1.5"], "'--top-p'"),
    ([*GEN, "--max-new-tokens", "0"], "'--max-new-tokens'"),
    ([*GEN, "--seed", "-1"], "'--seed'"),
    ([*GEN, "--seed", "abc"], "'--seed'"),
    ([*JUDGE, "--samples", "0"], "'--samples': 0 is not in the range x>=1"),
    ([*JUDGE, "--judge-temperature", "-0.5"], "'--judge-temperature'"),
    ([*JUDGE, "--judge-max-new-tokens", "-1"], "'--judge-max-new-tokens'"),
    ([*JUDGE, "--sample-offset", "-1"], "'--sample-offset'"),
    ([*JUDGE, "--chunk", "9"], "--chunk 9: the default prompts are split into 5 chunks"),
    (["pairs", "--iter", "0"], "'--iter': 0 is not in the range x>=1"),
    (["pairs", "--iter", "-1"], "'--iter'"),
    (["pairs", "--iter", "6"], "--iter 6: the default prompts are split into 5 chunks"),
    (["pairs", "--iter", "one"], "'one' is not a valid integer"),
    (["train", "--iter", "0"], "'--iter': 0 is not in the range x>=1"),
    (["train", "--iter", "-3"], "'--iter'"),
    (["train", "--iter", "7"], "--iter 7: the default prompts are split into 5 chunks"),
    ([*WINRATE, "--prompts", "1", "--limit", "0"], "'--limit': 0 is not in the range x>=1"),
    ([*WINRATE, "--prompts", "1", "--bootstrap", "0"], "'--bootstrap'"),
    ([*WINRATE, "--prompts", "1", "--judge-temperature", "-1"], "'--judge-temperature'"),
    ([*WINRATE, "--prompts", "1", "--judge-max-new-tokens", "-1"], "'--judge-max-new-tokens'"),
    ([*WINRATE, "--prompts", "1", "--max-new-tokens", "0"], "'--max-new-tokens'"),
    ([*WINRATE, "--prompts", "0"], "--prompts 0: chunks count from 1"),
    ([*WINRATE, "--prompts", "8"], "--prompts 8: the default prompts are split into 5 chunks"),
    ([*WINRATE, "--prompts", "-1"], "--prompts -1: neither a chunk number"),
    ([*WINRATE, "--prompts", "no-such-file.jsonl"], "neither a chunk number (1, 2, ...) nor a prompts file"),
    (["eval", "ifeval", "--snapshot", "x", "--prompts", "PROMPTS", "--batch-size", "0"], "'--batch-size'"),
    (["eval", "ifeval", "--snapshot", "x", "--prompts", "PROMPTS", "--temperature", "-1"], "'--temperature'"),
    (["stats", "--iter", "0"], "'--iter': 0 is not in the range x>=1"),
    (["stats", "--diagnostics", "--batch-size", "0"], "'--batch-size'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_before_the_store(refused, tmp_path, args, message):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "A"}\n{"prompt": "B"}\n', "utf-8")
    refused([str(prompts) if a == "PROMPTS" else a for a in args], message)


# ---- what must keep working -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["paper", "cpu-demo"])
def test_shipped_profiles_load(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile_path(name).read_text("utf-8")
    assert load_profile(str(profile_path(name))) == profile  # the same file by path


def test_shipped_profiles_keep_their_values_and_types():
    demo, paper = load_profile("cpu-demo"), load_profile("paper")
    # ints in float fields stay ints: fingerprints of stored work do not change
    assert result_fields(demo.train)["epochs"] == 1 and type(demo.train.epochs) is int
    assert (paper.generate.k, paper.loop.sr_k, paper.generate.backend, paper.train.bf16) == (7, 4, "vllm", "true")
    assert (demo.loop.chunks, demo.loop.prompts_per_iteration, demo.train.learning_rate) == (5, 8, 1e-4)
    assert load_profile(None) == load_profile(None, {}) and load_profile(None).name == "defaults"


def test_good_profile_and_flags_layer(tmp_path):
    path = tmp_path / "ok.yml"
    path.write_text("generate: {k: 3, temperature: 0}\njudge: {mode: forced, max_new_tokens: 0}\nloop:\n"
                    "train: {bf16: false, epochs: 0.5}\n", "utf-8")
    profile = load_profile(str(path), {"generate": {"k": 4, "seed": None}})
    assert (profile.generate.k, profile.generate.temperature, profile.generate.seed) == (4, 0, 0)
    assert profile.judge.max_new_tokens == 0 and profile.loop == LoopConfig()
    assert profile.train.bf16 == "false" and profile.train.epochs == 0.5  # YAML's bare false means "false"


@pytest.mark.parametrize(("cls", "kwargs", "message"), [
    (GenerateConfig, {"k": 0}, "generate.k must be at least 1"),
    (GenerateConfig, {"temperature": "hot"}, "generate.temperature must be a number"),
    (JudgeConfig, {"samples": True}, "judge.samples must be an integer, got true"),
    (TrainConfig, {"beta": -0.1}, "train.beta must be > 0"),
    (SFTConfig, {"max_length": 0}, "sft.max_length must be at least 1"),
    (LoopConfig, {"sr_k": 0}, "loop.sr_k must be at least 1"),
])
def test_direct_construction_is_checked(cls, kwargs, message):
    with pytest.raises(TsrError, match=re.escape(message)):
        cls(**kwargs)


def test_direct_construction_keeps_working():
    assert GenerateConfig(temperature=0.0, max_new_tokens=16).k == 2
    assert TrainConfig(learning_rate=0.05, global_batch=2, per_device_batch=2, warmup_ratio=0.0).beta == 0.1
    assert JudgeConfig(mode="generate").template is None and LoopConfig(prompts_per_iteration=None).sr_k is None
    for cls in SECTIONS.values():
        cls()  # every default passes its own rules


def test_scheduler_names_match_transformers():
    """Every SchedulerType value of the installed transformers is either accepted or refused with a reason (read
    from the source, so torch is not imported)."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("transformers is not installed")
    source = Path(next(iter(spec.submodule_search_locations))) / "trainer_utils.py"
    tree = ast.parse(source.read_text("utf-8"))
    scheduler = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "SchedulerType")
    values = {n.value.value for n in scheduler.body
              if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)}
    assert set(LR_SCHEDULERS) <= values
    assert values <= set(LR_SCHEDULERS) | set(UNSUPPORTED_SCHEDULERS)


def test_every_field_declares_a_checked_type():
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.type.split("|")[0].strip() in ("int", "float", "str", "bool"), (section, f.name)
            assert "help" in f.metadata and "result" in f.metadata, (section, f.name)
