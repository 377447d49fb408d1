"""Bad files and bad output paths through the CLI: a one-line error, a non-zero exit, and a store left byte-identical
(or no store at all where none existed). Issue 15, the "files" group."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from builder.errors import TsrError
from builder.stages.prompts import Chunking

IFEVAL_OK = {"key": 1, "prompt": "Write about rain.", "instruction_id_list": ["punctuation:no_comma"],
             "kwargs": [{}]}


def _hashes(root: Path) -> dict[str, str] | None:
    """sha256 of every file under the data root except the lock; None when there is no data root."""
    if not root.exists():
        return None
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), "utf-8")
    return path


@pytest.fixture
def good_prompts(tmp_path: Path) -> Path:
    return _jsonl(tmp_path / "good.jsonl", [{"prompt": f"Question number {i}?"} for i in range(6)])


@pytest.fixture
def with_store(tsr, good_prompts):
    """A store that exists before the failing command (so byte-identity is checked on real files)."""
    tsr("prompts", "import", str(good_prompts), "--chunks", "2")


def fails(tsr, data_root: Path, *args: str, expect_in: str | None = None) -> str:
    """Run a command that must fail cleanly and leave the data root exactly as it was; returns the message."""
    before = _hashes(data_root)
    result = tsr(*args, expect=None)
    output = result.output
    assert result.exit_code != 0, output
    assert "Traceback" not in output, output
    assert len(output.strip().splitlines()) <= 2, output
    assert output.strip().startswith("Error:"), output
    assert _hashes(data_root) == before, "the failing command changed the data root"
    if before is None:
        assert not data_root.exists()
    if expect_in is not None:
        assert expect_in in output, output
    return output


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---- 1. CSV with a quote that is never closed ------------------------------------------------------------------


def test_csv_unterminated_quote_names_the_line_it_opened(tsr, data_root, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text('prompt\nFirst question\n"Second, with an open quote\nThird\nFourth\n', "utf-8")
    message = fails(tsr, data_root, "prompts", "import", str(bad), "--chunks", "1")
    assert f"{bad}: line 3:" in message and "never closed" in message


def test_csv_unterminated_quote_in_the_header(tsr, data_root, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text('"prompt\nFirst question\nSecond\n', "utf-8")
    message = fails(tsr, data_root, "prompts", "import", str(bad), "--chunks", "1")
    assert "line 1:" in message and "never closed" in message


def test_csv_multiline_quoted_field_still_imports(tsr, tmp_path):
    good = tmp_path / "ok.csv"
    good.write_text('prompt\n"Sort a list\nin Python"\n"Name three, colours"\nHe said "hi\nLast "one\n', "utf-8")
    assert "4 prompts" in tsr("prompts", "import", str(good), "--chunks", "1").output


# ---- 2. too few distinct prompts for the chunks; --chunk-size 0 --------------------------------------------------


def test_all_duplicates_say_what_happened_not_a_flag_never_given(tsr, data_root, tmp_path):
    dupes = _jsonl(tmp_path / "dupes.jsonl", [{"prompt": "Same?"}] * 7 + [{"prompt": "Other?"}] * 2
                   + [{"prompt": "Third?"}])
    message = fails(tsr, data_root, "prompts", "import", str(dupes))  # the default: 5 chunks
    assert f"{dupes}: 3 distinct prompts (7 duplicates dropped) cannot fill 5 chunks" in message
    assert "pass --chunks N or --chunk-size N" in message
    assert "--chunks 5" not in message


def test_too_many_chunks_with_a_store_leaves_it_unchanged(tsr, data_root, with_store, tmp_path):
    few = _jsonl(tmp_path / "few.jsonl", [{"prompt": "One?"}, {"prompt": "Two?"}])
    fails(tsr, data_root, "prompts", "import", str(few), "--chunks", "3", expect_in="cannot fill 3 chunks")


@pytest.mark.parametrize("flag", ["--chunk-size", "--chunks"])
def test_zero_chunks_or_chunk_size_is_refused(tsr, data_root, good_prompts, flag):
    message = fails(tsr, data_root, "prompts", "import", str(good_prompts), flag, "0")
    assert flag in message and "ZeroDivision" not in message


def test_chunking_rejects_zero_itself():
    for kwargs in ({"chunk_size": 0}, {"chunks": 0}, {"chunks": -2}):
        with pytest.raises(TsrError, match="at least 1"):
            Chunking(**kwargs)


# ---- 3. IFEval rows whose kwargs no checker can take -------------------------------------------------------------


IFEVAL_BAD = {
    "unknown instruction id": ({"instruction_id_list": ["no:such_check"]}, "unknown instruction id"),
    "kwargs the checker rejects": ({"instruction_id_list": ["length_constraints:number_words"],
                                    "kwargs": [{"num_words": 5, "relation": "about"}]},
                                   "length_constraints:number_words"),
    "wrong type": ({"instruction_id_list": ["length_constraints:number_words"],
                    "kwargs": [{"num_words": "many", "relation": "at least"}]}, "num_words"),
    "list given as text": ({"instruction_id_list": ["keywords:existence"], "kwargs": [{"keywords": "rain"}]},
                           "keywords"),
    "unknown kwarg": ({"kwargs": [{"colour": "blue"}]}, "unknown kwargs colour"),
    "unknown language": ({"instruction_id_list": ["language:response_language"], "kwargs": [{"language": "xx"}]},
                         "language:response_language"),
    "argument left to chance": ({"instruction_id_list": ["length_constraints:number_sentences"],
                                 "kwargs": [{"relation": "less than"}]}, "num_sentences"),
    "repeat prompt without the prompt": ({"instruction_id_list": ["combination:repeat_prompt"]},
                                         "combination:repeat_prompt"),
}


@pytest.mark.parametrize("case", list(IFEVAL_BAD))
def test_ifeval_bad_kwargs_fail_before_any_write(tsr, data_root, with_store, tmp_path, case):
    change, expected = IFEVAL_BAD[case]
    path = _jsonl(tmp_path / "ifeval.jsonl", [IFEVAL_OK, {**IFEVAL_OK, "key": 2, "prompt": "Write about snow.",
                                                          **change}])
    message = fails(tsr, data_root, "eval", "ifeval", "--snapshot", "nobody", "--prompts", str(path))
    assert f"{path}: line 2:" in message and expected in message


def test_ifeval_file_that_is_not_jsonl(tsr, data_root, tmp_path):
    path = tmp_path / "ifeval.txt"
    path.write_text(json.dumps(IFEVAL_OK) + "\n", "utf-8")
    fails(tsr, data_root, "eval", "ifeval", "--snapshot", "nobody", "--prompts", str(path), expect_in="JSON Lines")


# ---- 4. templates that are not UTF-8 text, or are folders --------------------------------------------------------


def _template_command(command: str, template: Path) -> list[str]:
    if command == "judge":
        return ["judge", "--snapshot", "nobody", "--template", str(template)]
    if command == "sft":
        return ["sft", "--template", str(template)]
    return ["eval", "winrate", "--a", "x", "--b", "y", "--prompts", "1", "--judge", "j", "--template", str(template)]


@pytest.mark.parametrize("kind", ["latin-1", "folder"])
@pytest.mark.parametrize("command", ["judge", "sft", "winrate"])
def test_bad_template_is_one_line(tsr, data_root, with_store, tmp_path, command, kind):
    template = tmp_path / "template.txt"
    if kind == "folder":
        template.mkdir()
        expected = "is a folder"
    else:
        body = "Note: {prompt} {response}" if command != "winrate" else "{prompt} {response_1} {response_2}"
        template.write_bytes(("Caf\u00e9 " + body).encode("latin-1"))
        expected = "line 1: not UTF-8"
    message = fails(tsr, data_root, *_template_command(command, template))
    assert str(template) in message and expected in message


def test_template_with_an_attribute_placeholder(tsr, data_root, with_store, tmp_path):
    template = tmp_path / "template.txt"
    template.write_text("{prompt.title} {response}", "utf-8")
    fails(tsr, data_root, "judge", "--snapshot", "nobody", "--template", str(template), expect_in=str(template))


# ---- 5. --out into a missing folder, onto a folder, onto a file --------------------------------------------------


@pytest.mark.parametrize("command", [["sql", "select 1 as x", "--format", "csv"],
                                     ["sql", "select 1 as x", "--format", "parquet"],
                                     ["stats"], ["report"]])
def test_out_into_a_missing_folder(tsr, data_root, with_store, tmp_path, command):
    target = tmp_path / "missing" / "result.out"
    message = fails(tsr, data_root, *command, "--out", str(target))
    assert f"folder {target.parent} does not exist" in message
    assert not target.parent.exists()


@pytest.mark.parametrize("command", [["sql", "select 1 as x", "--format", "json"], ["stats"], ["report"]])
def test_out_onto_an_existing_folder(tsr, data_root, with_store, tmp_path, command):
    target = tmp_path / "a-folder"
    target.mkdir()
    fails(tsr, data_root, *command, "--out", str(target), expect_in="is a folder")
    assert list(target.iterdir()) == []
    assert _leftovers(tmp_path) == []


def test_plot_out_onto_a_file(tsr, data_root, with_store, tmp_path):
    target = tmp_path / "plots"
    target.write_text("not a folder", "utf-8")
    fails(tsr, data_root, "plot", "--out", str(target), expect_in="exists and is not a folder")
    assert target.read_text("utf-8") == "not a folder"


def test_plot_out_below_a_file(tsr, data_root, with_store, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x", "utf-8")
    fails(tsr, data_root, "plot", "--out", str(blocker / "plots"), expect_in="is not a folder")


def test_plot_into_a_missing_nested_folder_makes_it(tsr, data_root, tmp_path):
    pytest.importorskip("matplotlib")
    from tests.test_stats import build_store

    build_store(data_root)
    target = tmp_path / "new" / "nested" / "plots"
    out = tsr("plot", "--out", str(target)).output
    assert (target / "gap.png").is_file() and str(target / "scores.png") in out
    assert _leftovers(target) == []


def test_out_writes_whole_files_and_no_temporaries(tsr, with_store, tmp_path):
    csv_out, parquet_out = tmp_path / "r.csv", tmp_path / "r.parquet"
    csv_out.write_text("old contents", "utf-8")  # replaced whole
    tsr("sql", "select count(*) as n from prompts", "--format", "csv", "--out", str(csv_out))
    assert csv_out.read_text("utf-8") == "n\n6\n"
    tsr("sql", "select count(*) as n from prompts", "--format", "parquet", "--out", str(parquet_out))
    import pyarrow.parquet as pq

    assert pq.read_table(parquet_out).column("n").to_pylist() == [6]
    tsr("stats", "--out", str(tmp_path / "stats.txt"))
    assert (tmp_path / "stats.txt").is_file()
    assert _leftovers(tmp_path) == []


# ---- 6. other files that are not what they claim to be -----------------------------------------------------------


def _bad_file(tmp_path: Path, case: str) -> Path:
    if case == "parquet that is not parquet":
        path = tmp_path / "p.parquet"
        path.write_text("prompt\nhello\n", "utf-8")
    elif case == "jsonl holding one array":
        path = tmp_path / "p.jsonl"
        path.write_text(json.dumps([{"prompt": "a"}, {"prompt": "b"}]) + "\n", "utf-8")
    elif case == "pretty-printed json array":
        path = tmp_path / "p.json"
        path.write_text(json.dumps([{"prompt": "a"}], indent=2) + "\n", "utf-8")
    elif case == "empty file":
        path = tmp_path / "p.jsonl"
        path.write_text("", "utf-8")
    elif case == "folder":
        path = tmp_path / "p.jsonl"
        path.mkdir()
    elif case == "binary":
        path = tmp_path / "p.csv"
        path.write_bytes(bytes(range(256)) * 4)
    elif case == "nul bytes in csv":
        path = tmp_path / "p.csv"
        path.write_bytes(b"prompt\nhello\x00world\n")
    elif case == "unknown suffix":
        path = tmp_path / "p.txt"
        path.write_text("hello\n", "utf-8")
    else:
        raise AssertionError(case)
    return path


OTHER_CASES = ["parquet that is not parquet", "jsonl holding one array", "pretty-printed json array", "empty file",
               "folder", "binary", "nul bytes in csv", "unknown suffix"]


@pytest.mark.parametrize("case", OTHER_CASES)
def test_prompt_file_that_is_not_what_it_claims(tsr, data_root, tmp_path, case):
    path = _bad_file(tmp_path, case)
    fails(tsr, data_root, "prompts", "import", str(path), "--chunks", "1", expect_in=str(path))


@pytest.mark.parametrize("case", ["parquet that is not parquet", "jsonl holding one array", "empty file", "folder",
                                  "binary"])
@pytest.mark.parametrize("command", [["ift", "import"], ["eft", "import"], ["eval", "ifeval", "--snapshot", "x",
                                                                             "--prompts"]])
def test_other_importers_on_bad_files(tsr, data_root, with_store, tmp_path, case, command):
    path = _bad_file(tmp_path, case)
    fails(tsr, data_root, *command, str(path), expect_in=str(path))


def test_winrate_prompts_file_is_checked_before_the_store(tsr, data_root, with_store, tmp_path):
    path = _bad_file(tmp_path, "jsonl holding one array")
    fails(tsr, data_root, "eval", "winrate", "--a", "x", "--b", "y", "--prompts", str(path), "--judge", "j",
          expect_in=str(path))


def test_eft_reference_with_a_non_finite_score(tsr, data_root, with_store, tmp_path):
    path = tmp_path / "ref.jsonl"
    path.write_text('{"generation_id": "g1", "score": NaN}\n', "utf-8")
    fails(tsr, data_root, "eft", "build", "--judge", "j", "--reference", str(path), expect_in="finite number")
