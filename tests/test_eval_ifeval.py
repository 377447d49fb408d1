"""IFEval-format evaluation: hand-made rows built to pass or fail known checkers, exact accuracies, the offline
NLTK Punkt route, input errors, caching, and the stored rows."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

pytest.importorskip("if_verifiable")
pytest.importorskip("punkt")

from builder.backends.base import ScriptedGenerator
from builder.config import GenerateConfig
from builder.errors import TsrError
from builder.stages.ifeval import check_response, ifeval, read_ifeval
from builder.store import Store
from schemas.tables import EVALS

# key -> (row, the response the scripted model gives, expected strict and loose results per instruction)
CASES = {
    "1": ({"prompt": "Write one line about cats without using any commas.",
           "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
          "Cats are calm and quiet animals.", [True], [True]),
    # three passes, one of them the sentence counter (NLTK Punkt, laid out offline)
    "2": ({"prompt": "Describe dogs in lowercase, in at least 5 words and fewer than 3 sentences.",
           "instruction_id_list": ["change_case:english_lowercase", "length_constraints:number_words",
                                   "length_constraints:number_sentences"],
           "kwargs": [{}, {"relation": "at least", "num_words": 5}, {"relation": "less than", "num_sentences": 3}]},
          "dogs are loyal and friendly companions.", [True, True, True], [True, True, True]),
    # a title, but four sentences where fewer than three were asked for; no loose variant helps
    "3": ({"prompt": "Give your answer a title in double angular brackets and use fewer than 3 sentences.",
           "instruction_id_list": ["detectable_format:title", "length_constraints:number_sentences"],
           "kwargs": [{}, {"relation": "less than", "num_sentences": 3}]},
          "<<Birds>> Birds fly. They sing. They nest. They migrate.", [True, False], [True, False]),
    # a comma in the first line only: strict fails, loose (first line removed) passes
    "4": ({"prompt": "Greet me and then say something without commas.",
           "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
          "Hi, friend\nno commas in this line", [False], [True]),
    # an empty answer follows nothing
    "5": ({"prompt": "Answer in lowercase letters only.",
           "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]},
          "", [False], [False]),
}


@pytest.fixture
def ifeval_file(tmp_path):
    path = tmp_path / "ifeval.jsonl"
    path.write_text("".join(json.dumps({"key": int(key), **row}) + "\n" for key, (row, *_) in CASES.items()))
    return path


def _scripted() -> ScriptedGenerator:
    replies = {row["prompt"]: reply for row, reply, *_ in CASES.values()}
    return ScriptedGenerator(lambda request: replies[request.messages[0]["content"]])


def test_checkers_on_hand_made_rows(ifeval_file, data_root):
    from builder.stages.ifeval import prepare_checkers

    prepare_checkers(Store.open(data_root, create=True))
    rows = {row.key: row for row in read_ifeval(ifeval_file)}
    for key, (_, reply, strict, loose) in CASES.items():
        check = check_response(rows[key], reply)
        assert (check.strict, check.loose) == (strict, loose), key


def test_exact_accuracies_rows_and_cache(ifeval_file, data_root):
    store = Store.open(data_root, create=True)
    cfg = GenerateConfig(temperature=0.0, max_new_tokens=64)
    with store.writing():
        result = ifeval(store, snapshot_id="snap-a", path=ifeval_file, generate_cfg=cfg, load_generator=_scripted)
    s = result.summary
    assert (s["prompts"], s["instructions"]) == (5, 8)
    assert s["prompt_strict"] == 2 / 5  # rows 1 and 2
    assert s["prompt_loose"] == 3 / 5  # rows 1, 2 and 4
    assert s["instruction_strict"] == 5 / 8
    assert s["instruction_loose"] == 6 / 8

    # Punkt was laid out under the store's cache, in NLTK's own punkt_tab format
    assert (data_root / "_cache/nltk_data/tokenizers/punkt_tab/english/ortho_context.tab").is_file()

    table = Store.open(data_root).read("evals")
    assert table.schema == EVALS
    rows = pl.from_arrow(table).sort("ifeval_key")
    assert rows["ifeval_key"].to_list() == ["1", "2", "3", "4", "5"]
    assert rows["prompt_strict"].to_list() == [True, True, False, False, False]
    assert rows["prompt_loose"].to_list() == [True, True, False, True, False]
    assert rows["follow_strict"].to_list()[2] == [True, False] and set(rows["kind"]) == {"ifeval"}
    assert rows["generation_id"].n_unique() == 5 and rows["other_snapshot_id"].null_count() == 5
    generations = pl.from_arrow(Store.open(data_root).read("generations"))
    assert set(generations["generation_id"]) == set(rows["generation_id"])  # ordinary generation rows

    # the same figures through SQL, `tsr stats --evals` and the report
    from builder.evals.summary import evals_table
    from builder.report import build_report

    summary = evals_table(Store.open(data_root)).to_pylist()
    assert len(summary) == 1 and summary[0]["kind"] == "ifeval" and summary[0]["prompts"] == 5
    assert (summary[0]["prompt_strict"], summary[0]["prompt_loose"]) == (2 / 5, 3 / 5)
    assert (summary[0]["instruction_strict"], summary[0]["instruction_loose"]) == (5 / 8, 6 / 8)
    assert summary[0]["win_rate"] is None
    assert "<h2>Evaluations</h2>" in build_report(Store.open(data_root))

    def no_model():
        raise AssertionError("a cached evaluation must not load a model")

    with store.writing():
        again = ifeval(store, snapshot_id="snap-a", path=ifeval_file, generate_cfg=cfg, load_generator=no_model)
    assert again.version == result.version and again.summary["prompt_strict"] == 2 / 5


@pytest.mark.parametrize("line, message", [
    ('{"key": 1, "prompt": "x", "instruction_id_list": ["no:such"], "kwargs": [{}]}', "unknown instruction id"),
    ('{"key": 1, "prompt": "x", "instruction_id_list": ["punctuation:no_comma"]}', "missing kwargs"),
    ('{"key": 1, "prompt": "x", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []}', "kwargs must"),
    ('not json', "invalid JSON"),
    ('["a list"]', "line 1: expected a JSON object"),
    ('', "file is empty"),
])
def test_bad_rows_are_one_line_errors(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(TsrError, match=message):
        read_ifeval(path)


def test_the_shipped_sample_is_valid_for_every_checker(data_root):
    """`make eval`'s default file: 32 rows, 47 instructions, and every checker accepts its kwargs."""
    from importlib import resources

    from builder.stages.ifeval import prepare_checkers

    prepare_checkers(Store.open(data_root, create=True))
    rows = read_ifeval(Path(str(resources.files("builder") / "data" / "ifeval_sample.jsonl")))
    assert len(rows) == 32 and sum(len(r.instruction_ids) for r in rows) == 47
    reply = "Hello world. This reply follows some instructions by chance and most not at all."
    followed = 0
    for row in rows:
        check = check_response(row, reply)  # a checker rejecting its kwargs raises here
        assert len(check.strict) == len(row.instruction_ids), row.key
        followed += sum(check.strict)
    assert 0 < followed < 47  # the checkers ran and judged: some instructions pass by chance, most fail
